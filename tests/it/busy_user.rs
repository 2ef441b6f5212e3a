//! Issue 14, item 4: one user's queue does not block everyone. Eight
//! downloads for one user whose client never reads used to hold every
//! worker (one sending under the user's lock, seven waiting for it), so
//! another user's login waited for all of them. Now a user's requests hold
//! a bounded share of the workers and a download does not keep the user's
//! lock while it is sent: other users are answered at once, and the busy
//! user gets a prompt answer the real client understands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::support::http::{HKEY, sync_header, zstd};
use anki_sync_lite::auth::host_key;
use rusqlite::Connection;

/// A request over a new connection; its status and how long the answer
/// took (`None`: no answer within 10 s).
fn request(server: &Server, method: &str, hkey: &str, payload: &[u8]) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut stream = send(server, method, hkey, payload);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = [0u8; 12];
    let status = stream
        .read_exact(&mut line)
        .ok()
        .and_then(|()| std::str::from_utf8(&line[9..12]).ok()?.parse().ok());
    (status, started.elapsed())
}

/// Sends a request over a new connection, without reading the answer.
fn send(server: &Server, method: &str, hkey: &str, payload: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let body = zstd(payload);
    let head = format!(
        "POST /sync/{method} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nanki-sync: {}\r\n\r\n",
        body.len(),
        sync_header(hkey)
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    stream
}

#[test]
fn queued_downloads_of_one_user_do_not_block_the_others() {
    // (All connections come from 127.0.0.1: the per-address cap is lifted.)
    let server = Server::start(
        &[("user", "pass"), ("bob", "pw")],
        &[("SYNC_MAX_CONNECTIONS_PER_IP", "64")],
    );
    // user's collection: 32 MiB that do not compress, more than socket
    // buffers hold, so an unread download blocks its sender.
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::support::http::Conn::open(&server);
    crate::support::http::call(&mut c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload();
    let fresh = crate::support::http::call(&mut c, "download", HKEY, br#"{"_pad":null}"#).payload();
    let path = dir.path().join("big.anki2");
    std::fs::write(&path, fresh).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "create table addon_blobs (b blob);
         insert into addon_blobs select randomblob(1048576) from
           (with recursive n(i) as (select 1 union all select i + 1 from n where i < 32)
            select i from n);
         pragma journal_mode = delete;",
    )
    .unwrap();
    drop(conn);
    let big = std::fs::read(&path).unwrap();
    let mut c = crate::support::http::Conn::open(&server);
    let r = crate::support::http::call(&mut c, "upload", HKEY, &big);
    assert_eq!(r.payload(), b"OK");

    // Eight downloads whose client never reads.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| send(&server, "download", HKEY, br#"{"_pad":null}"#))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // Another user: login and a status check answered at once.
    let bob = host_key("bob", "pw");
    let (status, took) = request(&server, "hostKey", "", br#"{"u":"bob","p":"pw"}"#);
    assert_eq!(status, Some(200), "bob's login took {took:?}");
    assert!(took < Duration::from_secs(3), "bob's login took {took:?}");
    let (status, took) = request(&server, "meta", &bob, br#"{"v":11,"cv":"x"}"#);
    assert_eq!(status, Some(200), "bob's meta took {took:?}");
    assert!(took < Duration::from_secs(3), "bob's meta took {took:?}");
    // The busy user: a prompt answer, either served or "another sync is in
    // progress" (409, which clients show as such).
    let (status, took) = request(&server, "meta", HKEY, br#"{"v":11,"cv":"x"}"#);
    assert!(
        matches!(status, Some(200 | 409)),
        "{status:?} after {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the busy user waited {took:?}"
    );
    drop(stalled);
}
