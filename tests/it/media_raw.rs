//! Raw-HTTP tests of `/msync/*` (issue 4): exact envelopes and bytes, USN
//! rules, download prefixes, the 400/403/405/409 cases, and refused uploads
//! (unsafe names, too many entries, zip bombs, truncated zips, missing
//! entries) that must leave the media folder and database untouched.
//!
//! Tests that describe the protocol use `Server::start`, so they also run
//! against the official server with `ANKI_SYNC_TEST_SERVER=official`; tests
//! of our stricter rules (all-or-nothing uploads, 400 instead of 500) use
//! `Server::start_ours`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::support::data::sha1_hex;
use crate::support::http::{Conn, HKEY, Reply, call, sync_header, zstd};
use crate::support::{Account, Server};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use serde_json::{Value, json};

/// Opens a connection per request: the official server closes the
/// connection after an error, so requests cannot share one.
struct Client<'a> {
    server: &'a Server,
}

fn media_call(client: &mut Client<'_>, method: &str, hkey: &str, payload: &[u8]) -> Reply {
    let header = sync_header(hkey);
    Conn::open(client.server).send(
        "POST",
        &format!("/msync/{method}"),
        &[("anki-sync", &header)],
        &zstd(payload),
    )
}

/// The `data` of a successful media envelope (checking `err` is `""`).
fn data(reply: &Reply) -> Value {
    let body: Value = serde_json::from_slice(&reply.payload()).unwrap();
    assert_eq!(body["err"], "", "{body}");
    body["data"].clone()
}

/// A hand-made zip: local headers with real CRCs and sizes (unless told to
/// lie), a central directory and an end record.
#[derive(Default)]
struct Zip {
    bytes: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl Zip {
    fn entry(mut self, name: &str, data: &[u8], deflate: bool, declared: Option<u32>) -> Zip {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let payload = if deflate {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.to_vec()
        };
        let size = declared.unwrap_or(data.len() as u32);
        let compressed = if deflate { payload.len() as u32 } else { size };
        let mut fields = Vec::new();
        fields.extend_from_slice(&20u16.to_le_bytes());
        fields.extend_from_slice(&0u16.to_le_bytes());
        fields.extend_from_slice(&(if deflate { 8u16 } else { 0 }).to_le_bytes());
        fields.extend_from_slice(&[0, 0, 0x21, 0]);
        for v in [crc.sum(), compressed, size] {
            fields.extend_from_slice(&v.to_le_bytes());
        }
        fields.extend_from_slice(&(name.len() as u16).to_le_bytes());
        fields.extend_from_slice(&0u16.to_le_bytes());
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        self.bytes.extend_from_slice(&fields);
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(&payload);
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        self.central.extend_from_slice(&fields);
        self.central.extend_from_slice(&[0u8; 10]); // comment, disk, attributes
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count += 1;
        self
    }

    fn stored(self, name: &str, data: &[u8]) -> Zip {
        self.entry(name, data, false, None)
    }

    fn meta(self, meta: Value) -> Zip {
        self.stored("_meta", meta.to_string().as_bytes())
    }

    fn finish(mut self) -> Vec<u8> {
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&self.central);
        self.bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.bytes.extend_from_slice(&[0u8; 4]);
        self.bytes.extend_from_slice(&self.count.to_le_bytes());
        self.bytes.extend_from_slice(&self.count.to_le_bytes());
        self.bytes
            .extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&offset.to_le_bytes());
        self.bytes.extend_from_slice(&0u16.to_le_bytes());
        self.bytes
    }
}

/// A zip of additions named by position, as the client writes them.
fn upload_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = Zip::default();
    let mut meta = Vec::new();
    for (i, (name, content)) in files.iter().enumerate() {
        zip = zip.stored(&i.to_string(), content);
        meta.push(json!([name, i.to_string()]));
    }
    zip.meta(Value::Array(meta)).finish()
}

/// Reads a Stored-only zip (what both servers send) into (name, bytes).
fn unzip(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |at: usize| u16::from_le_bytes([zip[at], zip[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(zip[at..at + 4].try_into().unwrap()) as usize;
    let end = (0..zip.len() - 21)
        .rev()
        .find(|&i| u32_at(i) == 0x0605_4b50)
        .expect("end record");
    let mut at = u32_at(end + 16);
    let mut out = Vec::new();
    for _ in 0..u16_at(end + 10) {
        assert_eq!(u32_at(at), 0x0201_4b50);
        assert_eq!(u16_at(at + 10), 0, "entries are Stored");
        let size = u32_at(at + 24);
        let name_len = u16_at(at + 28);
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        let local = u32_at(at + 42);
        assert_eq!(u32_at(local + 22), size, "local header carries the size");
        let data_at = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        out.push((name, zip[data_at..data_at + size].to_vec()));
        at += 46 + name_len + u16_at(at + 30) + u16_at(at + 32);
    }
    out
}

/// `downloadFiles` → [(real name, bytes)] in entry order, via `_meta`.
fn download(conn: &mut Client, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    let r = media_call(
        conn,
        "downloadFiles",
        HKEY,
        json!({ "files": names }).to_string().as_bytes(),
    );
    let entries = unzip(&r.payload());
    let meta: serde_json::Map<String, Value> =
        serde_json::from_slice(&entries.iter().find(|(n, _)| n == "_meta").expect("_meta").1)
            .unwrap();
    assert_eq!(meta.len() + 1, entries.len());
    (0..meta.len())
        .map(|i| {
            let key = i.to_string();
            let bytes = entries.iter().find(|(n, _)| *n == key).unwrap().1.clone();
            (meta[&key].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

fn server() -> Server {
    Server::start(&[("user", "pass")], &[])
}

fn user_dir(server: &Server) -> PathBuf {
    server.base_dir().join("user")
}

/// Names and contents of the server's media folder, sorted.
fn media_folder(server: &Server) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(user_dir(server).join("media"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn appendix_a_exchange_byte_for_byte() {
    let s = server();
    let mut c = Client { server: &s };
    let r = media_call(
        &mut c,
        "begin",
        HKEY,
        br#"{"v":"anki,26.09.3 (29bb700b),linux"}"#,
    );
    assert_eq!(data(&r), json!({"usn": 0, "sk": HKEY}));

    let zip = upload_zip(&[
        ("apple.jpg", b"apple-data-1"),
        ("banana.mp3", b"banana-data-22"),
        ("cherry.png", b"cherry-data-333"),
    ]);
    let r = media_call(&mut c, "uploadChanges", HKEY, &zip);
    assert_eq!(r.payload(), br#"{"data":[3,3],"err":""}"#);
    let r = media_call(&mut c, "mediaSanity", HKEY, br#"{"local":3}"#);
    assert_eq!(r.payload(), br#"{"data":"OK","err":""}"#);

    let deletion = Zip::default().meta(json!([["banana.mp3", null]])).finish();
    let r = media_call(&mut c, "uploadChanges", HKEY, &deletion);
    assert_eq!(r.payload(), br#"{"data":[1,4],"err":""}"#);

    let r = media_call(&mut c, "mediaChanges", HKEY, br#"{"lastUsn":0}"#);
    assert_eq!(
        String::from_utf8(r.payload()).unwrap(),
        r#"{"data":[["apple.jpg",1,"2c7088dd743e3a842edc679ab4ab8482f7fec1fb"],["cherry.png",3,"0197091d0b8e181c47d06891c2d0397e7d173007"],["banana.mp3",4,""]],"err":""}"#
    );
    let got = download(&mut c, &["apple.jpg", "cherry.png"]);
    assert_eq!(
        got,
        vec![
            ("apple.jpg".to_string(), b"apple-data-1".to_vec()),
            ("cherry.png".to_string(), b"cherry-data-333".to_vec()),
        ]
    );
    let r = media_call(&mut c, "mediaChanges", HKEY, br#"{"lastUsn":4}"#);
    assert_eq!(r.payload(), br#"{"data":[],"err":""}"#);
    let r = media_call(&mut c, "mediaSanity", HKEY, br#"{"local":2}"#);
    assert_eq!(r.payload(), br#"{"data":"OK","err":""}"#);
    let r = media_call(&mut c, "mediaSanity", HKEY, br#"{"local":3}"#);
    assert_eq!(r.payload(), br#"{"data":"mediaSanity","err":""}"#);

    // The media USN reaches /sync/meta, where clients take it from.
    let r = call(
        &mut Conn::open(&s),
        "meta",
        HKEY,
        br#"{"v":11,"cv":"anki,26.09.3 (29bb700b),linux"}"#,
    );
    let meta: Value = serde_json::from_slice(&r.payload()).unwrap();
    assert_eq!(meta["media_usn"], 4);

    // On disk: the official layout, deleted files gone.
    assert_eq!(
        media_folder(&s),
        vec![
            ("apple.jpg".to_string(), b"apple-data-1".to_vec()),
            ("cherry.png".to_string(), b"cherry-data-333".to_vec()),
        ]
    );
    assert!(user_dir(&s).join("media.db").is_file());
}

#[test]
fn usn_rules_for_no_ops_duplicates_deflate_and_legacy_deletions() {
    let s = server();
    let mut c = Client { server: &s };
    let up = |c: &mut Client, zip: Vec<u8>| data(&media_call(c, "uploadChanges", HKEY, &zip));
    assert_eq!(up(&mut c, upload_zip(&[("a.txt", b"one")])), json!([1, 1]));
    // Identical content, and deleting what never existed: no new USN.
    assert_eq!(up(&mut c, upload_zip(&[("a.txt", b"one")])), json!([1, 1]));
    let zip = Zip::default().meta(json!([["never.txt", null]])).finish();
    assert_eq!(up(&mut c, zip), json!([1, 1]));
    // Added then deleted in one zip: two USNs.
    let zip = Zip::default()
        .stored("0", b"x")
        .meta(json!([["dup.txt", "0"], ["dup.txt", null]]))
        .finish();
    assert_eq!(up(&mut c, zip), json!([2, 3]));
    // Deflate entries (legacy clients) and an entry `_meta` does not name.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let zip = Zip::default()
        .entry("0", &big, true, None)
        .stored("9", b"ignored")
        .entry(
            "_meta",
            json!([["big.bin", "0"]]).to_string().as_bytes(),
            true,
            None,
        )
        .finish();
    assert_eq!(up(&mut c, zip), json!([1, 4]));
    // A legacy deletion is an empty entry name.
    let zip = Zip::default().meta(json!([["a.txt", ""]])).finish();
    assert_eq!(up(&mut c, zip), json!([1, 5]));
    // An empty `_meta` is fine.
    let zip = Zip::default().meta(json!([])).finish();
    assert_eq!(up(&mut c, zip), json!([0, 5]));

    let r = media_call(&mut c, "mediaChanges", HKEY, br#"{"lastUsn":-5}"#);
    assert_eq!(
        data(&r),
        json!([
            ["dup.txt", 3, ""],
            ["big.bin", 4, sha1_hex(&big)],
            ["a.txt", 5, ""]
        ])
    );
    assert_eq!(
        download(&mut c, &["big.bin"]),
        vec![("big.bin".into(), big)]
    );
    let r = media_call(&mut c, "mediaChanges", HKEY, br#"{"lastUsn":999}"#);
    assert_eq!(data(&r), json!([]));
}

#[test]
fn changes_are_paged_by_1000_in_usn_order() {
    let s = server();
    let mut c = Client { server: &s };
    for batch in 0..41 {
        let files: Vec<(String, Vec<u8>)> = (0..25)
            .map(|i| {
                (
                    format!("f{batch:02}-{i:02}.txt"),
                    format!("{batch}/{i}").into_bytes(),
                )
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let r = media_call(&mut c, "uploadChanges", HKEY, &upload_zip(&refs));
        assert_eq!(data(&r), json!([25, (batch + 1) * 25]));
    }
    let mut last = 0;
    let mut pages = Vec::new();
    loop {
        let r = media_call(
            &mut c,
            "mediaChanges",
            HKEY,
            json!({ "lastUsn": last }).to_string().as_bytes(),
        );
        let page = data(&r).as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        let usns: Vec<i64> = page.iter().map(|e| e[1].as_i64().unwrap()).collect();
        assert!(usns.windows(2).all(|w| w[0] < w[1]), "sorted by usn");
        assert_eq!(usns[0], last + 1);
        last = *usns.last().unwrap();
        pages.push(page.len());
    }
    assert_eq!(pages, [1000, 25]);
}

#[test]
fn downloads_are_prefixes_and_conflicts_are_409() {
    let s = server();
    let mut c = Client { server: &s };
    let mib: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8).collect();
    let huge: Vec<u8> = (0..3u32 << 20).map(|i| (i % 239) as u8).collect();
    let zip = upload_zip(&[
        ("apple.jpg", b"apple-data-1"),
        ("big0", &mib),
        ("big1", &mib),
        ("big2", &mib),
    ]);
    assert_eq!(
        data(&media_call(&mut c, "uploadChanges", HKEY, &zip)),
        json!([4, 4])
    );
    let zip = upload_zip(&[("huge.bin", &huge), ("cherry.png", b"cherry-data-333")]);
    assert_eq!(
        data(&media_call(&mut c, "uploadChanges", HKEY, &zip)),
        json!([2, 6])
    );
    let names = |got: Vec<(String, Vec<u8>)>| got.into_iter().map(|g| g.0).collect::<Vec<_>>();
    assert_eq!(
        names(download(&mut c, &["big0", "big1", "big2", "apple.jpg"])),
        ["big0", "big1", "big2"]
    );
    assert_eq!(
        names(download(
            &mut c,
            &["apple.jpg", "big0", "big1", "big2", "cherry.png"]
        )),
        ["apple.jpg", "big0", "big1", "big2"]
    );
    let got = download(&mut c, &["huge.bin", "apple.jpg"]);
    assert_eq!(got, vec![("huge.bin".to_string(), huge)]);
    // Names past the cut-off are not looked up; duplicates are served twice.
    assert_eq!(
        names(download(&mut c, &["huge.bin", "nosuch"])),
        ["huge.bin"]
    );
    assert_eq!(
        names(download(&mut c, &["apple.jpg", "apple.jpg"])),
        ["apple.jpg", "apple.jpg"]
    );
    assert!(download(&mut c, &[]).is_empty());

    let ask = |c: &mut Client, body: Value| {
        media_call(c, "downloadFiles", HKEY, body.to_string().as_bytes()).status
    };
    assert_eq!(ask(&mut c, json!({"files": ["nosuch"]})), 409);
    let names26: Vec<String> = (0..26).map(|_| "apple.jpg".to_string()).collect();
    assert_eq!(ask(&mut c, json!({ "files": names26 })), 400);
    let zip = Zip::default().meta(json!([["cherry.png", null]])).finish();
    assert_eq!(
        data(&media_call(&mut c, "uploadChanges", HKEY, &zip)),
        json!([1, 7])
    );
    assert_eq!(ask(&mut c, json!({"files": ["cherry.png"]})), 409);

    // A file removed from disk behind the server's back: 409, then forgotten.
    fs::remove_file(user_dir(&s).join("media/big1")).unwrap();
    assert_eq!(ask(&mut c, json!({"files": ["big1"]})), 409);
    let listed = data(&media_call(
        &mut c,
        "mediaChanges",
        HKEY,
        br#"{"lastUsn":0}"#,
    ));
    assert!(!listed.to_string().contains("big1"), "{listed}");
    let r = media_call(&mut c, "mediaSanity", HKEY, br#"{"local":4}"#);
    assert_eq!(data(&r), "OK");
    let r = media_call(&mut c, "begin", HKEY, br#"{"v":"x"}"#);
    assert_eq!(data(&r)["usn"], 7, "forgetting takes no USN");
}

#[test]
fn bad_requests_get_the_official_statuses() {
    let s = server();
    let mut c = Client { server: &s };
    for (method, body, status) in [
        ("begin", &b"{}"[..], 400),
        ("begin", br#"{"v":""}"#, 400),
        ("mediaChanges", b"{}", 400),
        ("mediaSanity", br#"{"local":-1}"#, 400),
        ("downloadFiles", b"{}", 400),
    ] {
        let r = media_call(&mut c, method, HKEY, body);
        assert_eq!(
            r.status,
            status,
            "{method} {}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(r.header("anki-original-size"), None);
    }
    let r = media_call(&mut c, "begin", "0000", br#"{"v":"x"}"#);
    assert_eq!(r.status, 403);
    let r = media_call(&mut c, "fooBar", HKEY, b"{}");
    assert_eq!(r.status, 400);
    let header = sync_header(HKEY);
    let r = Conn::open(&s).send("GET", "/msync/mediaChanges", &[("anki-sync", &header)], b"");
    assert_eq!(r.status, 405);
    // Not zstd.
    let r = Conn::open(&s).send(
        "POST",
        "/msync/mediaSanity",
        &[("anki-sync", &header)],
        br#"{"local":0}"#,
    );
    assert_eq!(r.status, 400);
}

/// Each refused upload: (what, zip). Every one also carries a good file
/// first, which must not appear.
fn refused_uploads() -> Vec<(&'static str, Vec<u8>)> {
    let good = |names: &[(&str, Option<&str>)]| {
        let mut zip = Zip::default().stored("0", b"must-not-appear");
        let mut meta = vec![json!(["good.txt", "0"])];
        for (i, (name, content)) in names.iter().enumerate() {
            let entry = (i + 1).to_string();
            match content {
                Some(data) => {
                    zip = zip.stored(&entry, data.as_bytes());
                    meta.push(json!([name, entry]));
                }
                None => meta.push(json!([name, null])),
            }
        }
        zip.meta(Value::Array(meta)).finish()
    };
    let twenty_six: Vec<(String, Option<&str>)> =
        (0..25).map(|i| (format!("n{i}.txt"), Some("x"))).collect();
    let twenty_six: Vec<(&str, Option<&str>)> =
        twenty_six.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let long = "a".repeat(256);
    let whole = good(&[("fine.txt", Some("fine"))]);
    let zeros = vec![0u8; 16 << 20];
    vec![
        ("../x", good(&[("../x", Some("escape"))])),
        ("a/b", good(&[("a/b", Some("sub"))])),
        ("..", good(&[("..", Some("dots"))])),
        (".", good(&[(".", None)])),
        ("empty name", good(&[("", Some("x"))])),
        ("NUL", good(&[("nul\0.txt", Some("x"))])),
        ("backslash", good(&[("a\\b.txt", Some("x"))])),
        ("non-NFC", good(&[("cafe\u{301}.jpg", Some("x"))])),
        ("256 bytes", good(&[(long.as_str(), Some("x"))])),
        ("26 entries", good(&twenty_six)),
        ("empty file", good(&[("empty.txt", Some(""))])),
        (
            "missing entry",
            Zip::default()
                .stored("0", b"must-not-appear")
                .meta(json!([["good.txt", "0"], ["x.txt", "1"]]))
                .finish(),
        ),
        (
            "no _meta",
            Zip::default().stored("0", b"must-not-appear").finish(),
        ),
        (
            "_meta is an object",
            Zip::default()
                .stored("0", b"must-not-appear")
                .meta(json!({"good.txt": "0"}))
                .finish(),
        ),
        (
            "3-element pair",
            Zip::default()
                .stored("0", b"must-not-appear")
                .meta(json!([["good.txt", "0", 1]]))
                .finish(),
        ),
        ("truncated zip", whole[..whole.len() / 2].to_vec()),
        ("not a zip", b"definitely not a zip file".to_vec()),
        (
            // Declares 150 MiB: over the per-file limit, refused unread.
            "zip bomb (declared)",
            Zip::default()
                .stored("0", b"must-not-appear")
                .entry("1", b"tiny", false, Some(150 << 20))
                .meta(json!([["good.txt", "0"], ["bomb.bin", "1"]]))
                .finish(),
        ),
        (
            // Declares 1 KB but inflates to 16 MiB.
            "zip bomb (lying)",
            Zip::default()
                .stored("0", b"must-not-appear")
                .entry("1", &zeros, true, Some(1000))
                .meta(json!([["good.txt", "0"], ["bomb.bin", "1"]]))
                .finish(),
        ),
        (
            // Each under 100 MiB, together far over what one upload may hold.
            "zip bomb (total)",
            Zip::default()
                .stored("0", b"must-not-appear")
                .entry("1", b"tiny", false, Some(90 << 20))
                .entry("2", b"tiny", false, Some(90 << 20))
                .meta(json!([["good.txt", "0"], ["b1.bin", "1"], ["b2.bin", "2"]]))
                .finish(),
        ),
    ]
}

#[test]
fn refused_uploads_change_nothing_and_sync_works_afterwards() {
    let s = Server::start_ours(&[("user", "pass")], &[]);
    let mut c = Client { server: &s };
    let zip = upload_zip(&[("keep.txt", b"keep")]);
    assert_eq!(
        data(&media_call(&mut c, "uploadChanges", HKEY, &zip)),
        json!([1, 1])
    );
    let before = media_folder(&s);
    let changes = |c: &mut Client| data(&media_call(c, "mediaChanges", HKEY, br#"{"lastUsn":0}"#));
    let listed = changes(&mut c);
    for (what, zip) in refused_uploads() {
        let r = media_call(&mut c, "uploadChanges", HKEY, &zip);
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(media_folder(&s), before, "{what}");
        assert_eq!(changes(&mut c), listed, "{what}");
        assert!(temp_files(&user_dir(&s)).is_empty(), "{what}");
        // Nothing escaped the media folder either.
        assert!(!user_dir(&s).join("x").exists() && !s.base_dir().join("x").exists());
    }
    let r = media_call(&mut c, "begin", HKEY, br#"{"v":"x"}"#);
    assert_eq!(data(&r)["usn"], 1);

    // A normal sync by the real client works afterwards, both ways.
    let account = Account {
        server: &s,
        user: "user",
        password: "pass",
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("after.txt"), b"after the refusals").unwrap();
    let col = tmp.path().join("a.anki2");
    let col = col.to_str().unwrap();
    crate::support::client_ok(&["media-add", "--path", col, "--src", src.to_str().unwrap()]);
    account
        .run("media-sync", Some(Path::new(col)))
        .unwrap_or_else(|e| panic!("{e}"));
    let listing = crate::support::client_ok(&["media-list", "--path", col]);
    assert_eq!(
        listing,
        json!({"after.txt": sha1_hex(b"after the refusals"), "keep.txt": sha1_hex(b"keep")})
    );
    let mut after = media_folder(&s);
    after.retain(|(n, _)| n == "after.txt");
    assert_eq!(
        after,
        vec![("after.txt".to_string(), b"after the refusals".to_vec())]
    );
}

#[test]
fn refused_uploads_are_400_on_the_official_server_too_where_it_agrees() {
    // Only the cases the official server also answers with 400 (it answers
    // `""`, `.`, `..` and NUL with 500 and accepts `\`).
    let s = server();
    let mut c = Client { server: &s };
    let official_400 = [
        "../x",
        "a/b",
        "non-NFC",
        "256 bytes",
        "26 entries",
        "empty file",
        "missing entry",
        "no _meta",
        "_meta is an object",
        "3-element pair",
        "truncated zip",
        "not a zip",
        "zip bomb (declared)",
    ];
    for (what, zip) in refused_uploads() {
        if !official_400.contains(&what) {
            continue;
        }
        let r = media_call(&mut c, "uploadChanges", HKEY, &zip);
        assert_eq!(r.status, 400, "{what}");
    }
    let r = media_call(&mut c, "begin", HKEY, br#"{"v":"x"}"#);
    assert_eq!(data(&r)["usn"], 0);
}
