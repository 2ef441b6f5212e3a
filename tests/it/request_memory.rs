//! Memory under normal-sync bodies (issue 14 item 1). Small requests whose
//! JSON decompresses to many MB are sent to our server, one at a time and
//! eight at once, up to the full decompressed size and under an
//! address-space cap; the server's peak RSS over idle (`VmHWM`, reset before
//! each request) must stay within 16 MiB for one request and 64 MiB for
//! eight, and it must keep serving. A note of 1.5 million characters (a very
//! large HTML table) still syncs both ways with the real client, through
//! either server.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::thread;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

use crate::support::http::{Conn, Reply, zstd};
use crate::support::{Account, Server, client_ok};

const MIB: u64 = 1024 * 1024;
const PASSWORD: &str = "pass";
const SESSION: &str = "memory-test";

/// A figure of `/proc/PID/status`, in bytes.
fn proc_status(server: &Server, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// How far the server's RSS peaks above its current RSS while `f` runs.
fn peak_growth<T>(server: &Server, f: impl FnOnce() -> T) -> (u64, T) {
    let idle = proc_status(server, "VmRSS:");
    // "5" resets the peak (VmHWM) to the current RSS.
    fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").unwrap();
    let out = f();
    let peak = proc_status(server, "VmHWM:");
    (peak.saturating_sub(idle), out)
}

/// One user's v11 requests on one connection.
struct Client {
    conn: Conn,
    hkey: String,
}

impl Client {
    fn login(server: &Server, user: &str) -> Client {
        let mut conn = Conn::open(server);
        let login = json!({ "u": user, "p": PASSWORD }).to_string();
        let reply = send(&mut conn, "hostKey", "", &zstd(login.as_bytes()));
        let key: Value = serde_json::from_slice(&reply.payload()).unwrap();
        Client {
            conn,
            hkey: key["key"].as_str().unwrap().to_string(),
        }
    }

    fn call(&mut self, method: &str, payload: &[u8]) -> Reply {
        send(&mut self.conn, method, &self.hkey, &zstd(payload))
    }

    /// `meta` and `start`: a normal sync in progress, as an attacker with an
    /// account would have it.
    fn begin(&mut self) {
        self.call("meta", br#"{"v":11,"cv":"test"}"#).payload();
        self.call("start", br#"{"minUsn":0,"lnewer":false,"graves":null}"#)
            .payload();
    }

    /// A note row the server stores: the first notetype's id, its number
    /// of fields, and a first field of `chars` characters.
    fn storable_note(&mut self, id: i64, chars: usize) -> Vec<u8> {
        let answer = self
            .call(
                "applyChanges",
                br#"{"changes":{"models":[],"decks":[[],[]],"tags":[]}}"#,
            )
            .payload();
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        let model = &answer["models"][0];
        let mut fields = vec![String::new(); model["flds"].as_array().unwrap().len()];
        fields[0] = "1".repeat(chars);
        let row = json!([
            id,
            format!("g{id}"),
            model["id"],
            1,
            -1,
            "",
            fields.join("\x1f"),
            "",
            "",
            0,
            ""
        ]);
        row.to_string().into_bytes()
    }
}

fn send(conn: &mut Conn, method: &str, hkey: &str, body: &[u8]) -> Reply {
    let header = json!({"v": 11, "k": hkey, "c": "test,1,linux", "s": SESSION}).to_string();
    conn.send(
        "POST",
        &format!("/sync/{method}"),
        &[("anki-sync", &header)],
        body,
    )
}

/// zstd with the largest window our server accepts (4 MiB), which a body
/// that decompresses to more fills completely; `parts` are written one by
/// one, so a body of hundreds of MB is never held here.
fn zstd_parts(parts: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(22).unwrap();
    enc.long_distance_matching(true).unwrap();
    for part in parts {
        enc.write_all(&part).unwrap();
    }
    enc.finish().unwrap()
}

/// An `applyChunk` whose one note row holds `count` zeros (2 bytes each).
fn zeros_row(count: usize) -> Vec<u8> {
    const PIECE: usize = 1 << 20;
    let mut parts = vec![br#"{"chunk":{"done":false,"notes":[["#.to_vec()];
    let mut left = count - 1;
    while left > 0 {
        let n = left.min(PIECE);
        parts.push(b"0,".repeat(n));
        left -= n;
    }
    parts.push(b"0]]}}".to_vec());
    zstd_parts(parts)
}

/// `applyChunk` with one stored note, after 4 MB of skipped keys that fill
/// the zstd window first: the most one request can make us hold.
fn worst_chunk(row: &[u8]) -> Vec<u8> {
    let pad = |i: usize| format!(r#""pad{i}":"{}","#, "2".repeat(2_000_000)).into_bytes();
    zstd_parts([
        br#"{"chunk":{"#.to_vec(),
        pad(0),
        pad(1),
        br#""done":false,"notes":["#.to_vec(),
        row.to_vec(),
        b"]}}".to_vec(),
    ])
}

/// The legacy framing of `payload`: a multipart form, gzip.
fn legacy_form(hkey: &str, payload: &[u8]) -> Vec<u8> {
    const BOUNDARY: &str = "Anki-sync-boundary";
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(payload).unwrap();
    let data = gz.finish().unwrap();
    let mut body = Vec::new();
    for (name, value) in [("k", hkey), ("s", SESSION), ("c", "1")] {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    write!(
        body,
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data\"\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(&data);
    write!(body, "\r\n--{BOUNDARY}--\r\n").unwrap();
    body
}

/// Each client sends its `applyChunk` body at the same time as the others
/// (a thread each); their statuses, in order.
fn apply_chunks_at_once<'b>(
    clients: &mut [Client],
    bodies: impl Iterator<Item = &'b [u8]>,
) -> Vec<u16> {
    thread::scope(|s| {
        let sent: Vec<_> = clients
            .iter_mut()
            .zip(bodies)
            .map(|(c, body)| s.spawn(move || send(&mut c.conn, "applyChunk", &c.hkey, body).status))
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn users(n: usize) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("user{i}"), PASSWORD)).collect()
}

fn start(users: &[(String, &str)], setup: impl FnOnce(&[(&str, &str)]) -> Server) -> Server {
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), *p)).collect();
    setup(&users)
}

/// One request of a test case, sent on the client's connection.
type Request = Box<dyn FnOnce(&mut Client) -> Reply>;

#[test]
fn one_request_stays_within_16_mib_at_the_full_decompressed_size() {
    let server = start(&users(1), |u| Server::start_ours(u, &[]));
    let mut client = Client::login(&server, "user0");
    client.begin();
    let stored = client.storable_note(1, 2_000_000);
    let too_big = client.storable_note(2, 2_200_000);
    let cases: Vec<(&str, Request, u16)> = vec![
        (
            "a note row of 10 million zeros (1.9 KB sent)",
            Box::new(|c: &mut Client| {
                send(&mut c.conn, "applyChunk", &c.hkey, &zeros_row(10_000_000))
            }),
            400,
        ),
        (
            "the same row at the full decompressed size (300 MB)",
            Box::new(|c: &mut Client| {
                send(
                    &mut c.conn,
                    "applyChunk",
                    &c.hkey,
                    &zeros_row(150 * MIB as usize - 20),
                )
            }),
            400,
        ),
        (
            "the 10-million-zero row as a legacy form (multipart, gzip)",
            Box::new(|c: &mut Client| {
                let mut json = br#"{"chunk":{"done":false,"notes":[["#.to_vec();
                json.extend(b"0,".repeat(10_000_000 - 1));
                json.extend(b"0]]}}");
                let body = legacy_form(&c.hkey, &json);
                let ct = "multipart/form-data; boundary=Anki-sync-boundary";
                c.conn
                    .send("POST", "/sync/applyChunk", &[("Content-Type", ct)], &body)
            }),
            400,
        ),
        (
            "a 2,000,000-character note after 4 MB of skipped keys",
            Box::new(move |c: &mut Client| {
                send(&mut c.conn, "applyChunk", &c.hkey, &worst_chunk(&stored))
            }),
            200,
        ),
        (
            "a 2,200,000-character note",
            Box::new(move |c: &mut Client| {
                send(&mut c.conn, "applyChunk", &c.hkey, &worst_chunk(&too_big))
            }),
            413,
        ),
    ];
    let mut figures = Vec::new();
    for (what, request, status) in cases {
        // A refused body ends its sync: each case starts one.
        client.begin();
        let (growth, reply) = peak_growth(&server, || request(&mut client));
        assert_eq!(
            reply.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        if status == 200 {
            client.call("finish", b"{}").payload();
        }
        figures.push(format!("{what}: +{:.1} MiB", growth as f64 / MIB as f64));
        assert!(growth <= 16 * MIB, "{what}: RSS grew by {growth} bytes");
    }
    eprintln!("{}", figures.join("\n"));
    // The stored note is there, whole.
    let mut client = Client::login(&server, "user0");
    client.begin();
    let chunk = client.call("chunk", b"{}").payload();
    let chunk: Value = serde_json::from_slice(&chunk).unwrap();
    let note = chunk["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n[0] == 1)
        .expect("note 1 stored");
    assert_eq!(
        note[6]
            .as_str()
            .unwrap()
            .split('\x1f')
            .next()
            .unwrap()
            .len(),
        2_000_000
    );
    assert!(
        server
            .log()
            .contains("one note row is larger than the limit of 2097152 bytes")
    );
}

#[test]
fn eight_at_once_stay_within_64_mib_and_the_server_keeps_serving() {
    let accounts = users(8);
    let server = start(&accounts, |u| Server::start_ours(u, &[]));
    let mut clients: Vec<Client> = accounts
        .iter()
        .map(|(user, _)| {
            let mut c = Client::login(&server, user);
            c.begin();
            c
        })
        .collect();
    let bodies: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|c| worst_chunk(&c.storable_note(1, 2_000_000)))
        .collect();
    let (growth, statuses) = peak_growth(&server, || {
        apply_chunks_at_once(&mut clients, bodies.iter().map(Vec::as_slice))
    });
    eprintln!(
        "eight 2,000,000-character notes at once: +{:.1} MiB, answers {statuses:?}",
        growth as f64 / MIB as f64
    );
    assert!(growth <= 64 * MIB, "RSS grew by {growth} bytes");
    // Three at a time get the pool; the others wait up to 5 s for a turn.
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 3,
        "{statuses:?}"
    );
    // Eight of the 10-million-zero rows.
    for c in clients.iter_mut() {
        c.begin();
    }
    let bomb = zeros_row(10_000_000);
    let (growth, statuses) = peak_growth(&server, || {
        apply_chunks_at_once(&mut clients, std::iter::repeat(bomb.as_slice()))
    });
    eprintln!(
        "eight 10-million-zero rows at once: +{:.1} MiB",
        growth as f64 / MIB as f64
    );
    assert_eq!(statuses, [400; 8]);
    assert!(growth <= 64 * MIB, "RSS grew by {growth} bytes");
    Client::login(&server, "user3").begin();
}

#[test]
fn under_an_address_space_cap_the_server_refuses_and_keeps_serving() {
    let accounts = users(8);
    // Far below what the old decoder needed for one full-size row (GBs),
    // well above what the server maps when idle.
    let probe = start(&accounts, |u| Server::start_ours(u, &[]));
    let idle = proc_status(&probe, "VmSize:");
    drop(probe);
    let cap = idle + 384 * MIB;
    let server = start(&accounts, |u| {
        Server::start_ours_with_address_space(u, &[], cap)
    });
    let mut client = Client::login(&server, "user0");
    client.begin();
    let hkey = client.hkey.clone();
    let reply = send(
        &mut client.conn,
        "applyChunk",
        &hkey,
        &zeros_row(150 * MIB as usize - 20),
    );
    assert_eq!(reply.status, 400);
    let mut clients: Vec<Client> = accounts
        .iter()
        .map(|(user, _)| {
            let mut c = Client::login(&server, user);
            c.begin();
            c
        })
        .collect();
    let bodies: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|c| worst_chunk(&c.storable_note(1, 2_000_000)))
        .collect();
    let statuses = apply_chunks_at_once(&mut clients, bodies.iter().map(Vec::as_slice));
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let mut again = Client::login(&server, "user5");
    again.begin();
    assert!(
        !server.log().contains("memory allocation"),
        "{}",
        server.log()
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A 1.5-million-character HTML table in one field goes up in `applyChunk`
/// and down in `chunk`, whole, with the real client and either server.
#[test]
fn a_very_large_note_syncs_both_ways_with_the_real_client() {
    let server = Server::start(&[("user", "pass")], &[]);
    let account = Account {
        server: &server,
        user: "user",
        password: "pass",
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.anki2"), dir.path().join("b.anki2"));
    client_ok(&["make", "--path", path_str(&a), "--notes", "20"]);
    assert_eq!(account.sync(&a), "FULL_UPLOAD");
    account.run("full-upload", Some(&a)).unwrap();
    assert_eq!(account.sync(&b), "FULL_DOWNLOAD");
    account.run("full-download", Some(&b)).unwrap();
    let added = client_ok(&[
        "run",
        "--path",
        path_str(&a),
        "--script",
        "big_note",
        "--arg",
        "chars=1500000",
    ]);
    assert!(added["len"].as_u64().unwrap() >= 1_500_000, "{added}");
    let nid = added["nid"].to_string();
    assert_eq!(account.sync(&a), "NO_CHANGES");
    assert_eq!(account.sync(&b), "NO_CHANGES");
    let field = |path: &Path| {
        client_ok(&[
            "run",
            "--path",
            path_str(path),
            "--script",
            "field_of",
            "--arg",
            &format!("nid={nid}"),
        ])
    };
    let on_a = field(&a);
    assert_eq!(
        on_a.as_str().unwrap().len() as u64,
        added["len"].as_u64().unwrap()
    );
    assert_eq!(field(&b), on_a);
}
