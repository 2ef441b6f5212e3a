//! Raw-socket tests of the HTTP surface: routing, framing, limits, auth and
//! refused uploads, asserting on the exact statuses and bodies a client sees.

use std::io::Write;

use crate::support::Server;
use crate::support::http::{Conn, HKEY, call, sync_header, zstd};

fn server() -> Server {
    Server::start_ours(&[("user", "pass")], &[])
}

fn peak_rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn health_routes_and_methods() {
    let s = server();
    let mut c = Conn::open(&s);
    let r = c.send("GET", "/health", &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = c.send("GET", "//health", &[], b"");
    assert_eq!(r.status, 200);
    // People open the address in a browser: tell them what to type into Anki.
    let r = c.send("GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    let page = String::from_utf8(r.body).unwrap();
    assert!(page.contains("is running"), "{page}");
    assert!(page.contains("http://test/"), "{page}");
    let r = c.send("GET", "/nothing", &[], b"");
    assert_eq!(r.status, 404);
    let r = c.send("GET", "/sync/meta", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST"));
    let r = c.send("POST", "/sync/nosuch", &[], b"");
    assert_eq!(r.status, 400);
    let r = c.send("POST", "/sync/Meta", &[], b"");
    assert_eq!(r.status, 400);
}

#[test]
fn login_and_meta_over_one_connection() {
    let s = server();
    let mut c = Conn::open(&s);
    let r = call(&mut c, "hostKey", "", br#"{"u":"user","p":"pass"}"#);
    assert_eq!(r.payload(), format!(r#"{{"key":"{HKEY}"}}"#).as_bytes());
    for (u, p) in [("user", "wrong"), ("nobody", "pass")] {
        let r = call(
            &mut c,
            "hostKey",
            "",
            format!(r#"{{"u":"{u}","p":"{p}"}}"#).as_bytes(),
        );
        assert_eq!((r.status, r.body.as_slice()), (403, &b"403"[..]));
        assert_eq!(r.header("anki-original-size"), None);
    }
    // A brand-new user: mod 0, usn 0, empty, and a stable scm.
    let first: serde_json::Value =
        serde_json::from_slice(&call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload())
            .unwrap();
    assert_eq!(first["mod"], 0);
    assert_eq!(first["usn"], 0);
    assert_eq!(first["empty"], true);
    assert_eq!(first["cont"], true);
    assert_eq!(first["media_usn"], 0);
    let second: serde_json::Value =
        serde_json::from_slice(&call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload())
            .unwrap();
    assert_eq!(first["scm"], second["scm"]);
    // Protocol version in the body out of range: 501 "client too old".
    assert_eq!(
        call(&mut c, "meta", HKEY, br#"{"v":7,"cv":"x"}"#).status,
        501
    );
}

#[test]
fn bad_requests_get_clear_statuses() {
    let s = server();
    let mut c = Conn::open(&s);
    // Unknown host key.
    let r = call(&mut c, "meta", "0000", br#"{"v":11,"cv":"x"}"#);
    assert_eq!((r.status, r.body.as_slice()), (403, &b"403"[..]));
    // Garbage instead of zstd.
    let header = sync_header(HKEY);
    let r = c.send(
        "POST",
        "/sync/meta",
        &[("anki-sync", &header)],
        b"this is not zstd at all",
    );
    assert_eq!(r.status, 400);
    // Malformed header JSON, a missing key, an unsupported version.
    for h in [
        "{not json".to_string(),
        r#"{"v":11,"k":"","c":""}"#.to_string(),
        format!(r#"{{"v":12,"k":"{HKEY}","c":"x","s":"y"}}"#),
    ] {
        let r = c.send("POST", "/sync/meta", &[("anki-sync", &h)], &zstd(b"{}"));
        assert_eq!(r.status, 400, "{h}");
    }
    // Valid zstd, invalid JSON.
    assert_eq!(call(&mut c, "meta", HKEY, b"{\"v\":").status, 400);
    // The connection still works after all of that.
    assert_eq!(
        call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
}

#[test]
fn decompression_bombs_are_refused_with_flat_memory() {
    let s = server();
    let mut c = Conn::open(&s);
    call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload();
    let before = peak_rss_kib(&s);
    // 1 GiB of zeros, about 40 KB compressed.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let header = sync_header(HKEY);
    // Aimed at a JSON method.
    let r = c.send("POST", "/sync/meta", &[("anki-sync", &header)], &bomb);
    assert_eq!(r.status, 400);
    // A JSON string that would grow without bound.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(br#"{"u":""#).unwrap();
    let letters = vec![b'a'; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&letters).unwrap();
    }
    let string_bomb = enc.finish().unwrap();
    let mut c2 = Conn::open(&s);
    let r = c2.send(
        "POST",
        "/sync/hostKey",
        &[("anki-sync", &sync_header(""))],
        &string_bomb,
    );
    assert_eq!(r.status, 400);
    // Aimed at upload: refused with the text clients show.
    let mut c3 = Conn::open(&s);
    let r = c3.send("POST", "/sync/upload", &[("anki-sync", &header)], &bomb);
    assert_eq!(r.payload(), b"collection exceeds size limit");
    let after = peak_rss_kib(&s);
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // Nothing was installed and the server still answers.
    let mut c4 = Conn::open(&s);
    let meta: serde_json::Value =
        serde_json::from_slice(&call(&mut c4, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload())
            .unwrap();
    assert_eq!(meta["empty"], true);
    let leftovers: Vec<_> = std::fs::read_dir(s.base_dir().join("user"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn corrupt_uploads_leave_the_old_collection_intact() {
    let s = server();
    let mut c = Conn::open(&s);
    call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload();
    // Take the server's fresh collection, mark it, and upload it back.
    let original = call(&mut c, "download", HKEY, br#"{"_pad":null}"#).payload();
    assert!(original.starts_with(b"SQLite format 3\0"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("marked.anki2");
    std::fs::write(&path, &original).unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("update col set crt = 12345", []).unwrap();
        conn.execute_batch("pragma journal_mode = delete").unwrap();
    }
    let marked = std::fs::read(&path).unwrap();
    assert_eq!(call(&mut c, "upload", HKEY, &marked).payload(), b"OK");

    let corrupt = b"Your upload was corrupt. Please use Check Database, or restore from backup.";
    assert_eq!(
        call(&mut c, "upload", HKEY, &[7u8; 10_000]).payload(),
        corrupt
    );
    assert_eq!(
        call(&mut c, "upload", HKEY, &marked[..marked.len() / 2]).payload(),
        corrupt
    );
    let mut header_only = marked.clone();
    header_only[100..].fill(0);
    assert_eq!(
        call(&mut c, "upload", HKEY, &header_only).payload(),
        corrupt
    );
    assert_eq!(call(&mut c, "upload", HKEY, b"").payload(), corrupt);

    // The marked collection is still what the server serves.
    let served = call(&mut c, "download", HKEY, br#"{"_pad":null}"#).payload();
    std::fs::write(&path, &served).unwrap();
    let conn = anki_sync_lite::storage::open(&path).unwrap();
    let crt: i64 = conn
        .query_row("select crt from col", [], |r| r.get(0))
        .unwrap();
    assert_eq!(crt, 12345);
    let integrity: String = conn
        .query_row("pragma quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[test]
fn uploads_over_the_limit_are_refused() {
    let s = Server::start_ours(&[("user", "pass")], &[("MAX_SYNC_PAYLOAD_MEGS", "1")]);
    let mut c = Conn::open(&s);
    // Incompressible data over the 1 MiB compressed budget.
    let mut noise = vec![0u8; 2 << 20];
    let mut x: u32 = 1;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let r = call(&mut c, "upload", HKEY, &noise);
    assert_eq!(r.payload(), b"collection exceeds size limit");
    let mut c2 = Conn::open(&s);
    assert_eq!(
        call(&mut c2, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
}

/// A v11 request carrying session key `session`.
fn call_in(
    conn: &mut Conn,
    method: &str,
    session: &str,
    payload: &[u8],
) -> crate::support::http::Reply {
    let header = format!(r#"{{"v":11,"k":"{HKEY}","c":"test,1,linux","s":"{session}"}}"#);
    conn.send(
        "POST",
        &format!("/sync/{method}"),
        &[("anki-sync", &header)],
        &zstd(payload),
    )
}

#[test]
fn session_keys_and_a_failed_sanity_check_roll_back() {
    let s = server();
    let mut c = Conn::open(&s);
    let meta: serde_json::Value =
        serde_json::from_slice(&call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload())
            .unwrap();
    let usn = meta["usn"].as_i64().unwrap();
    let start = format!(r#"{{"minUsn":{usn},"lnewer":true,"graves":null}}"#);
    // Stateful methods need a session key, and the one that started.
    assert_eq!(call_in(&mut c, "start", "", start.as_bytes()).status, 400);
    assert_eq!(
        call_in(&mut c, "chunk", "s1", br#"{"_pad":null}"#).status,
        409
    );
    assert_eq!(
        call_in(&mut c, "start", "s1", start.as_bytes()).payload(),
        br#"{"cards":[],"notes":[],"decks":[]}"#
    );
    assert_eq!(
        call_in(&mut c, "chunk", "other", br#"{"_pad":null}"#).status,
        409
    );
    // A revlog entry goes in, then the counts disagree: "bad", and rolled back.
    let chunk = br#"{"chunk":{"done":true,"revlog":[[1700000000000,1,0,3,1,0,2500,1000,1]]}}"#;
    assert_eq!(
        call_in(&mut c, "applyChunk", "s1", chunk).payload(),
        b"null"
    );
    let sanity: serde_json::Value = serde_json::from_slice(
        &call_in(
            &mut c,
            "sanityCheck2",
            "s1",
            br#"{"client":[[0,0,0],5,5,5,0,5,5,5]}"#,
        )
        .payload(),
    )
    .unwrap();
    assert_eq!(sanity["status"], "bad");
    assert_eq!(
        call_in(&mut c, "finish", "s1", br#"{"_pad":null}"#).status,
        409
    );
    assert_eq!(
        call_in(&mut c, "abort", "whatever", br#"{"_pad":null}"#).payload(),
        b"null"
    );
    // Nothing was kept: a new sync from scratch sees no revlog at all.
    call_in(
        &mut c,
        "start",
        "s2",
        br#"{"minUsn":0,"lnewer":true,"graves":null}"#,
    )
    .payload();
    let sent: serde_json::Value =
        serde_json::from_slice(&call_in(&mut c, "chunk", "s2", br#"{"_pad":null}"#).payload())
            .unwrap();
    assert!(sent.get("revlog").is_none(), "{sent}");
    // meta from another device ends the sync in progress.
    call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload();
    assert_eq!(
        call_in(&mut c, "chunk", "s2", br#"{"_pad":null}"#).status,
        409
    );
}
