//! Issue 14, item 5: an uploaded collection cannot run code on the server.
//! A trigger with a recursive query on `UPDATE` of `col` used to make every
//! download spin a core forever (and stop SIGTERM from stopping the
//! server). Now triggers, views and indexes on expressions are removed from
//! uploads (full v11 and legacy) with a log line, add-on tables and plain
//! indexes are kept, files whose Anki tables carry code are refused, and
//! shutdown interrupts database work still running after its grace period.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::legacy_raw::{form, gzip, post};
use crate::support::Server;
use crate::support::http::{Conn, HKEY, call};
use rusqlite::Connection;

const CORRUPT: &[u8] =
    b"Your upload was corrupt. Please use Check Database, or restore from backup.";

/// What the attacker adds: a trigger that never ends once it fires, a view,
/// an index on an expression; and what an add-on adds: a table with a row,
/// plain indexes on it and on `cards`.
const HOSTILE: &str = r#"
    create trigger spin after update on col begin
      select count(*) from (with recursive n(i) as
        (select 1 union all select i + 1 from n) select i from n where i < 0);
    end;
    create view every_note as select * from notes;
    create index notes_by_length on notes (length(flds) * 2);
    create table addon_data (x text);
    insert into addon_data values ('kept by the server');
    create index addon_by_x on addon_data (x);
    create index addon_cards_by_mod on cards (mod);
"#;

fn server() -> Server {
    Server::start_ours(&[("user", "pass")], &[("SYNC_WORKERS", "2")])
}

/// `bytes` written to `dir/name`, changed by `sql`, read back.
fn changed(dir: &Path, name: &str, bytes: &[u8], sql: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let conn = Connection::open(&path).unwrap();
    anki_sync_lite::storage::register_unicase(&conn).unwrap();
    conn.execute_batch(sql).unwrap();
    conn.execute_batch("pragma journal_mode = delete").unwrap();
    drop(conn);
    std::fs::read(&path).unwrap()
}

/// Names of the triggers, views and indexes in a collection file, and the
/// add-on row.
fn objects(dir: &Path, bytes: &[u8]) -> (Vec<String>, String) {
    let path = dir.join("check.anki2");
    std::fs::write(&path, bytes).unwrap();
    let conn = Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("select name from sqlite_schema where type != 'table' and sql is not null order by name")
        .unwrap();
    let names = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let row = conn
        .query_row("select x from addon_data", [], |r| r.get(0))
        .unwrap();
    (names, row)
}

fn assert_cleaned(names: &[String], row: &str) {
    for gone in ["spin", "every_note", "notes_by_length"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} kept: {names:?}");
    }
    for kept in [
        "addon_by_x",
        "addon_cards_by_mod",
        "idx_cards_odid",
        "ix_notes_usn",
    ] {
        assert!(names.iter().any(|n| n == kept), "{kept} removed: {names:?}");
    }
    assert_eq!(row, "kept by the server");
}

/// The new user's collection, as the server created it.
fn fresh_collection(c: &mut Conn) -> Vec<u8> {
    call(c, "meta", HKEY, br#"{"v":11,"cv":"x"}"#).payload();
    download(c).0
}

/// A v11 download, which bumps `col.usn` (firing an `UPDATE` trigger).
fn download(c: &mut Conn) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let bytes = call(c, "download", HKEY, br#"{"_pad":null}"#).payload();
    (bytes, started.elapsed())
}

#[test]
fn code_in_a_v11_upload_is_removed_and_never_runs() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conn::open(&s);
    let fresh = fresh_collection(&mut c);
    let hostile = changed(dir.path(), "hostile.anki2", &fresh, HOSTILE);
    assert_eq!(call(&mut c, "upload", HKEY, &hostile).payload(), b"OK");
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("removed what Anki does not create"))
        .unwrap_or_else(|| panic!("no log line:\n{log}"));
    for what in [
        "trigger spin on col",
        "view every_note",
        "index notes_by_length on notes",
    ] {
        assert!(line.contains(what), "{line}");
    }

    // Every download runs `update col`: it answers at once.
    for _ in 0..3 {
        let (bytes, took) = download(&mut c);
        assert!(took < Duration::from_secs(10), "download took {took:?}");
        let (names, row) = objects(dir.path(), &bytes);
        assert_cleaned(&names, &row);
    }
    // Another user's login meanwhile is answered too.
    let r = call(
        &mut Conn::open(&s),
        "hostKey",
        "",
        br#"{"u":"user","p":"pass"}"#,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn code_in_a_legacy_upload_is_removed() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conn::open(&s);
    let meta = gzip(br#"{"v":10,"cv":"ankidesktop,2.1.56,linux"}"#);
    let fields = [("k", HKEY), ("s", "abc"), ("c", "1")];
    assert_eq!(
        post(&mut c, "/sync/meta", &form(&fields, Some(&meta))).status,
        200
    );
    let r = post(&mut c, "/sync/download", &form(&fields, None));
    assert_eq!(r.status, 200);
    // A schema-11 file, as 2.1.56 uploads it.
    let hostile = changed(dir.path(), "legacy.anki2", &r.body, HOSTILE);
    let r = post(
        &mut c,
        "/sync/upload",
        &form(&fields, Some(&gzip(&hostile))),
    );
    assert_eq!(r.body, b"OK", "{}", String::from_utf8_lossy(&r.body));
    let (bytes, took) = download(&mut Conn::open(&s));
    assert!(took < Duration::from_secs(10), "download took {took:?}");
    let (names, row) = objects(dir.path(), &bytes);
    assert_cleaned(&names, &row);
}

#[test]
fn uploads_whose_tables_carry_code_are_refused() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conn::open(&s);
    let fresh = fresh_collection(&mut c);
    let marked = changed(
        dir.path(),
        "marked.anki2",
        &fresh,
        "update col set crt = 4242",
    );
    assert_eq!(call(&mut c, "upload", HKEY, &marked).payload(), b"OK");
    for (i, sql) in [
        // An Anki table replaced by a view over a copy.
        "alter table notes rename to notes_copy; create view notes as select * from notes_copy;",
        // A generated column, computed on every read.
        "create table addon_gen (x integer, y as (x * 2));",
        // A computed default on a table the server inserts into.
        "drop table graves; create table graves (oid integer not null, type integer not null,
           usn integer not null default (abs(random())), primary key (oid, type)) without rowid;",
    ]
    .into_iter()
    .enumerate()
    {
        let bad = changed(dir.path(), &format!("bad{i}.anki2"), &fresh, sql);
        assert_eq!(
            call(&mut c, "upload", HKEY, &bad).payload(),
            CORRUPT,
            "{sql}"
        );
    }
    // The collection uploaded before is untouched.
    let (bytes, _) = download(&mut c);
    let path = dir.path().join("served.anki2");
    std::fs::write(&path, bytes).unwrap();
    let crt: i64 = Connection::open(&path)
        .unwrap()
        .query_row("select crt from col", [], |r| r.get(0))
        .unwrap();
    assert_eq!(crt, 4242);
}

/// Shutdown stops within a bound even with a request in progress: here a
/// download whose client stopped reading (its worker blocked in a write,
/// holding the user's lock), which used to hold shutdown for the whole send
/// timeout (120 s). After 5 s the server interrupts database work, after 3
/// more it stops without the request.
#[test]
fn shutdown_is_bounded_with_a_request_in_progress() {
    let mut s = server();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conn::open(&s);
    let fresh = fresh_collection(&mut c);
    // 32 MiB that do not compress: more than the socket buffers hold.
    let big = changed(
        dir.path(),
        "big.anki2",
        &fresh,
        "create table addon_blobs (b blob);
         insert into addon_blobs select randomblob(1048576) from
           (with recursive n(i) as (select 1 union all select i + 1 from n where i < 32)
            select i from n);",
    );
    assert_eq!(call(&mut c, "upload", HKEY, &big).payload(), b"OK");

    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let body = crate::support::http::zstd(br#"{"_pad":null}"#);
    let head = format!(
        "POST /sync/download HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nanki-sync: {}\r\n\r\n",
        body.len(),
        crate::support::http::sync_header(HKEY)
    );
    std::io::Write::write_all(&mut stalled, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut stalled, &body).unwrap();
    // Never read: the worker fills the socket buffers and blocks.
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    let status = s.terminate().expect("the server exits within 20 s");
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let log = s.log();
    assert!(
        log.contains("interrupting the database statements"),
        "{log}"
    );
    assert!(log.contains("stopping without 1 request(s)"), "{log}");
    drop(stalled);
}
