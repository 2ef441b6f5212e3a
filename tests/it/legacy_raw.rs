//! Raw-socket tests of the legacy framing (sync v8–10: multipart forms,
//! gzip, plain answers), following the official server's captured answers,
//! plus malformed and hostile forms.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::Server;
use crate::support::http::{Conn, HKEY, Reply};
use flate2::Compression;
use flate2::write::GzEncoder;

const BOUNDARY: &str = "Anki-sync-boundary";

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A multipart form with text fields and an optional `data` file part.
pub(crate) fn form(fields: &[(&str, &str)], data: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    if let Some(data) = data {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    body
}

pub(crate) fn post(conn: &mut Conn, path: &str, body: &[u8]) -> Reply {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    conn.send("POST", path, &[("Content-Type", &ct)], body)
}

fn plain_json(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("anki-original-size"),
        None,
        "legacy answers are plain"
    );
    serde_json::from_slice(&r.body).unwrap()
}

fn server() -> Server {
    Server::start_ours(&[("user", "pass")], &[])
}

fn peak_rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn login_meta_and_download_like_the_official_server() {
    let s = server();
    let mut c = Conn::open(&s);
    let login = gzip(br#"{"u":"user","p":"pass"}"#);
    let r = post(&mut c, "/sync/hostKey", &form(&[("c", "1")], Some(&login)));
    assert_eq!(plain_json(&r)["key"], HKEY);
    // Uncompressed data (c=0 or no c) works too; a wrong password is 403.
    let r = post(
        &mut c,
        "/sync/hostKey",
        &form(&[("c", "0")], Some(br#"{"u":"user","p":"x"}"#)),
    );
    assert_eq!(r.status, 403);
    // Gzip claimed but plain data sent: 400.
    let r = post(
        &mut c,
        "/sync/hostKey",
        &form(&[("c", "1")], Some(br#"{"u":"user","p":"pass"}"#)),
    );
    assert_eq!(r.status, 400);

    let meta = gzip(br#"{"v":10,"cv":"ankidesktop,2.1.56,linux"}"#);
    let r = post(
        &mut c,
        "/sync/meta",
        &form(&[("k", HKEY), ("s", "abc"), ("c", "1")], Some(&meta)),
    );
    let m = plain_json(&r);
    assert_eq!(
        (m["usn"].as_i64(), m["cont"].as_bool()),
        (Some(0), Some(true))
    );
    // `sk` is a synonym of `k`; the data part may come first.
    let body = {
        let mut b = Vec::new();
        write!(
            b,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n"
        )
        .unwrap();
        b.extend_from_slice(&meta);
        write!(
            b,
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"c\"\r\n\r\n1\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"sk\"\r\n\r\n{HKEY}\r\n--{BOUNDARY}--\r\n"
        )
        .unwrap();
        b
    };
    assert_eq!(post(&mut c, "/sync/meta", &body).status, 200);
    // Protocol 7 in the body: "client too old".
    let old = gzip(br#"{"v":7,"cv":"x"}"#);
    let r = post(
        &mut c,
        "/sync/meta",
        &form(&[("k", HKEY), ("s", "abc"), ("c", "1")], Some(&old)),
    );
    assert_eq!(r.status, 501);
    // A stateful method without `s`: 400.
    let start = gzip(br#"{"minUsn":0,"lnewer":false,"graves":null}"#);
    let r = post(
        &mut c,
        "/sync/start",
        &form(&[("k", HKEY), ("c", "1")], Some(&start)),
    );
    assert_eq!(r.status, 400);

    // Download without a data part: a schema-11 file in rollback-journal mode.
    let r = post(
        &mut c,
        "/sync/download",
        &form(&[("k", HKEY), ("c", "1")], None),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("anki-original-size"), None);
    assert!(r.body.starts_with(b"SQLite format 3\0"));
    assert_eq!((r.body[18], r.body[19]), (1, 1), "journal mode DELETE");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.anki2");
    std::fs::write(&path, &r.body).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let ver: i64 = conn
        .query_row("select ver from col", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ver, 11);
    let models: String = conn
        .query_row("select models from col", [], |r| r.get(0))
        .unwrap();
    assert!(models.contains("\"Basic\""), "notetypes are in col.models");
    // The stored collection was not touched: still schema 18, no copies left.
    let stored =
        anki_sync_lite::storage::open(&s.base_dir().join("user/collection.anki2")).unwrap();
    assert_eq!(
        anki_sync_lite::storage::schema_version(&stored).unwrap(),
        18
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.base_dir().join("user"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A garbage upload is refused with the text old clients show.
    let garbage = gzip(&[9u8; 5000]);
    let r = post(
        &mut c,
        "/sync/upload",
        &form(&[("k", HKEY), ("s", "abc"), ("c", "1")], Some(&garbage)),
    );
    assert_eq!(
        r.body,
        b"Your upload was corrupt. Please use Check Database, or restore from backup."
    );
}

#[test]
fn legacy_media_begin() {
    let s = server();
    let mut c = Conn::open(&s);
    let r = c.send(
        "GET",
        &format!("/msync/begin?k={HKEY}&v=ankidesktop%2C2.1.56"),
        &[],
        b"",
    );
    let begin = plain_json(&r);
    assert_eq!(begin["data"]["sk"], HKEY);
    assert_eq!(begin["err"], "");
    assert_eq!(
        c.send("GET", &format!("/msync/begin?k={HKEY}"), &[], b"")
            .status,
        400
    );
    assert_eq!(
        c.send("GET", "/msync/begin?k=nope&v=x", &[], b"").status,
        403
    );
    let r = post(
        &mut c,
        "/msync/begin",
        &form(&[("k", HKEY), ("v", "ankidesktop,2.1.56")], None),
    );
    assert_eq!(plain_json(&r)["data"]["usn"], 0);
    let r = post(
        &mut c,
        "/msync/mediaChanges",
        &form(&[("sk", HKEY)], Some(br#"{"lastUsn":0}"#)),
    );
    assert_eq!(plain_json(&r), serde_json::json!({"data": [], "err": ""}));
}

#[test]
fn malformed_forms_are_refused_and_memory_stays_flat() {
    let s = server();
    let before = peak_rss_kib(&s);
    let meta = gzip(br#"{"v":10,"cv":"x"}"#);
    let good = form(&[("k", HKEY), ("s", "a"), ("c", "1")], Some(&meta));
    // No boundary in the content type / not multipart at all.
    let mut c = Conn::open(&s);
    let r = c.send(
        "POST",
        "/sync/meta",
        &[("Content-Type", "multipart/form-data")],
        &good,
    );
    assert_eq!(r.status, 400);
    let r = c.send(
        "POST",
        "/sync/meta",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 400);
    // Truncated: no closing boundary.
    let mut c = Conn::open(&s);
    assert_eq!(
        post(&mut c, "/sync/meta", &good[..good.len() - 30]).status,
        400
    );
    // A repeated field: the last value wins, as upstream.
    let mut c = Conn::open(&s);
    let repeated = form(
        &[("k", "wrong"), ("k", HKEY), ("s", "a"), ("c", "1")],
        Some(&meta),
    );
    assert_eq!(post(&mut c, "/sync/meta", &repeated).status, 200);
    // A huge text field.
    let big = "x".repeat(100_000);
    let mut c = Conn::open(&s);
    assert_eq!(
        post(&mut c, "/sync/meta", &form(&[("k", &big)], Some(&meta))).status,
        400
    );
    // Bad gzip, and a gzip bomb (400 MiB of zeros, over the 300 MiB cap).
    let mut c = Conn::open(&s);
    let bad = form(
        &[("k", HKEY), ("s", "a"), ("c", "1")],
        Some(b"\x1f\x8bnot really gzip"),
    );
    assert_eq!(post(&mut c, "/sync/meta", &bad).status, 400);
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..400 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let mut c = Conn::open(&s);
    let r = post(
        &mut c,
        "/sync/meta",
        &form(&[("k", HKEY), ("s", "a"), ("c", "1")], Some(&bomb)),
    );
    assert_eq!(r.status, 400);
    let mut c = Conn::open(&s);
    let r = post(
        &mut c,
        "/sync/upload",
        &form(&[("k", HKEY), ("s", "a"), ("c", "1")], Some(&bomb)),
    );
    assert_eq!(r.body, b"collection exceeds size limit");
    let after = peak_rss_kib(&s);
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // A part larger than the whole-form limit (MAX_SYNC_PAYLOAD_MEGS is 1 here).
    drop(s);
    let s = Server::start_ours(&[("user", "pass")], &[("MAX_SYNC_PAYLOAD_MEGS", "1")]);
    let huge = form(&[("k", HKEY), ("c", "0")], Some(&vec![7u8; 3 << 20]));
    let mut raw = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /sync/upload HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    );
    raw.write_all(head.as_bytes()).unwrap();
    let _ = raw.write_all(&huge);
    let mut answer = [0u8; 12];
    raw.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 400");
    // Still serving.
    let mut c = Conn::open(&s);
    assert_eq!(post(&mut c, "/sync/meta", &good).status, 200);
}
