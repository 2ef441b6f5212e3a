//! Raw-socket tests of the HTTP surface, for what needs a real socket and
//! process: several requests on one connection, memory under decompression
//! bombs, the body limit. Routing, statuses, framing and the sync methods are
//! tested without a socket next to the code (`src/http/dispatch_tests.rs`).

use std::io::Write;

use crate::support::Server;
use crate::support::http::{Conn, HKEY, call, sync_header};

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

/// Only what an upload decompresses to is limited (3 × the setting), as on
/// the official server: incompressible data of twice the setting is read
/// whole (and refused as no collection), four times the setting is too large.
#[test]
fn uploads_over_the_limit_are_refused() {
    let s = Server::start_ours(&[("user", "pass")], &[("MAX_SYNC_PAYLOAD_MEGS", "1")]);
    let mut c = Conn::open(&s);
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u32 = 1;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let r = call(&mut c, "upload", HKEY, &noise[..2 << 20]);
    assert_eq!(
        r.payload(),
        b"Your upload was corrupt. Please use Check Database, or restore from backup."
    );
    let r = call(&mut c, "upload", HKEY, &noise);
    assert_eq!(r.payload(), b"collection exceeds size limit");
    let mut c2 = Conn::open(&s);
    assert_eq!(
        call(&mut c2, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
}
