//! Running the binary as an operator would: start-up errors, the health
//! check, clean shutdown, and users not waiting on each other.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::support::http::{Conn, HKEY, call, sync_header};

const BIN: &str = env!("CARGO_BIN_EXE_anki-sync-lite");

fn run_bin(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let base = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("SYNC_BASE", base.path())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn start_up_errors_name_the_problem() {
    // (No users at all is not an error: tests/users.rs.)
    // A malformed PHC string is refused at start-up, naming the variable.
    let out = run_bin(
        &[],
        &[
            ("SYNC_USER1", "alice:$pbkdf2-sha256$i=oops$abc$def"),
            ("PASSWORDS_HASHED", "1"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SYNC_USER1") && err.contains("PHC"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run_bin(&["--port", "99999"], &[("SYNC_USER1", "a:b")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SYNC_PORT"));

    // Which file is this: version, target and features.
    let out = run_bin(&["--version"], &[]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("anki-sync-lite "), "{version}");
    assert!(
        version.contains("\ntarget: ") && version.contains("\nfeatures: "),
        "{version}"
    );
}

#[test]
fn healthcheck_reports_a_running_server() {
    let s = Server::start_ours(&[("user", "pass")], &[]);
    let port = s.port().to_string();
    let env = [("SYNC_HOST", "127.0.0.1"), ("SYNC_PORT", port.as_str())];
    assert!(run_bin(&["--healthcheck"], &env).status.success());
    drop(s);
    assert_eq!(run_bin(&["--healthcheck"], &env).status.code(), Some(1));
}

#[test]
fn hashed_passwords_log_in() {
    // The PHC string the official server derives for "pass".
    let phc = "$pbkdf2-sha256$i=600000,l=32$tonuvYGpksNFQBlEmm3lxg$oQ1sqlkoU7Qn72xNoIq+NHyW3yOOER8EZ6mIJiv5GYc";
    let s = Server::start_ours(&[("user", phc)], &[("PASSWORDS_HASHED", "")]);
    let mut c = Conn::open(&s);
    let r = call(&mut c, "hostKey", "", br#"{"u":"user","p":"pass"}"#);
    let key: serde_json::Value = serde_json::from_slice(&r.payload()).unwrap();
    let expected = anki_sync_lite::auth::host_key("user", phc);
    assert_eq!(key["key"], expected.as_str());
    assert_eq!(
        call(&mut c, "hostKey", "", br#"{"u":"user","p":"nope"}"#).status,
        403
    );
}

#[test]
fn sigterm_finishes_and_closes_collections() {
    let mut s = Server::start_ours(&[("user", "pass")], &[]);
    let mut c = Conn::open(&s);
    assert_eq!(
        call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
    let dir = s.base_dir().join("user");
    assert!(dir.join("collection.anki2").exists());
    let status = s.terminate().expect("server did not stop after SIGTERM");
    assert!(status.success(), "{status:?}");
    // Closed cleanly: SQLite removed the WAL when the connection closed.
    assert!(!dir.join("collection.anki2-wal").exists());
    assert!(s.log().contains("stopped"), "{}", s.log());
}

#[test]
fn one_users_transfer_does_not_delay_another() {
    let s = Server::start_ours(&[("user", "pass"), ("other", "secret")], &[]);
    let other_hkey = anki_sync_lite::auth::host_key("other", "secret");
    // "user" starts a large upload and stalls halfway through its body.
    let mut slow = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let header = sync_header(HKEY);
    write!(
        slow,
        "POST /sync/upload HTTP/1.1\r\nHost: t\r\nanki-sync: {header}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let part = crate::support::http::zstd(&vec![1u8; 1 << 20]);
    write!(slow, "{:x}\r\n", part.len() / 2).unwrap();
    slow.write_all(&part[..part.len() / 2]).unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // "other" logs in, checks and downloads meanwhile, without waiting.
    let started = Instant::now();
    let mut c = Conn::open(&s);
    assert_eq!(
        call(&mut c, "hostKey", "", br#"{"u":"other","p":"secret"}"#).status,
        200
    );
    assert_eq!(
        call(&mut c, "meta", &other_hkey, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
    let file = call(&mut c, "download", &other_hkey, br#"{"_pad":null}"#).payload();
    assert!(file.starts_with(b"SQLite format 3\0"));
    // "user" itself is not blocked by its own unfinished upload either.
    assert_eq!(
        call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
}

#[test]
fn a_client_that_stops_reading_holds_no_lock_and_is_cut_off() {
    use std::io::Read;
    let s = Server::start_ours(&[("user", "pass")], &[("SYNC_TIMEOUT_SECS", "2")]);
    let mut c = Conn::open(&s);
    // Give "user" a collection far larger than the socket buffers.
    let fresh = call(&mut c, "download", HKEY, br#"{"_pad":null}"#).payload();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.anki2");
    std::fs::write(&path, &fresh).unwrap();
    {
        let conn = anki_sync_lite::storage::open(&path).unwrap();
        conn.execute_batch("pragma journal_mode = delete; create table filler (b blob)")
            .unwrap();
        let mut x: u64 = 7;
        for _ in 0..64 {
            let noise: Vec<u8> = (0..(1 << 20))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            conn.execute("insert into filler values (?)", [noise])
                .unwrap();
        }
    }
    let big = std::fs::read(&path).unwrap();
    assert_eq!(call(&mut c, "upload", HKEY, &big).payload(), b"OK");

    // A download whose response is never read holds no lock (it is sent
    // from a private copy, issue 14 item 4): the same user syncs at once...
    let mut stuck = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let body = crate::support::http::zstd(br#"{"_pad":null}"#);
    let head = format!(
        "POST /sync/download HTTP/1.1\r\nHost: t\r\nanki-sync: {}\r\nContent-Length: {}\r\n\r\n",
        sync_header(HKEY),
        body.len()
    );
    stuck.write_all(head.as_bytes()).unwrap();
    stuck.write_all(&body).unwrap();
    let mut first = [0u8; 12];
    stuck.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    let mut c2 = Conn::open(&s);
    assert_eq!(
        call(&mut c2, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).status,
        200
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // ...and after the write timeout the download is cut off, its worker
    // freed, and its log line says why.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.log().contains("(sending the answer failed: ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.log().contains("/sync/download 200") && s.log().contains("(sending the answer failed: "),
        "{}",
        s.log()
    );
    drop(stuck);
}
