//! Crash safety (issue 8): the server is killed with SIGKILL in the middle of
//! a full upload, of a normal sync (between `applyChunk` calls and around
//! `finish`) and of a media upload, then restarted on the same `SYNC_BASE`.
//! Afterwards the collection passes SQLite's integrity check and holds either
//! the state from before the crash or the complete new one (never a mix),
//! the media folder matches `media.db`, no temporary file is left, and the
//! real client syncs.
//!
//! The protocol is driven with raw HTTP so the kill lands at a chosen
//! moment: part-way through a body, after a given call, or a random few
//! milliseconds after the last byte of a request. Each test repeats its kind
//! `CRASH_TRIALS` times (default 2; `scripts/crash-trials` runs 20), with
//! moments drawn from `CRASH_SEED` (default: the clock; printed on failure).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::data::sha1_hex;
use crate::support::http::{Conn, HKEY, Reply, zstd};
use crate::support::rng::Rng;
use crate::support::{Account, Server, client_ok};
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;

const USER: (&str, &str) = ("user", "pass");

fn trials() -> usize {
    std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The trials' generator, seeded from `CRASH_SEED` or the clock.
fn rng_from_env(kind: &str) -> Rng {
    let seed = Rng::seed_from_env("CRASH_SEED");
    eprintln!("{kind}: CRASH_SEED={seed}");
    Rng::new(seed)
}

/// Our server on a `SYNC_BASE` that outlives it, so it can be killed and
/// started again on the same data.
struct Crashable {
    base: TempDir,
    server: Option<Server>,
    /// Temporary files found right after each kill (before start-up cleaned them).
    leftovers_seen: usize,
}

impl Crashable {
    fn start() -> Crashable {
        let base = TempDir::new().unwrap();
        let server = Some(Crashable::launch(base.path()));
        Crashable {
            base,
            server,
            leftovers_seen: 0,
        }
    }

    fn launch(base: &Path) -> Server {
        let base = base.to_str().expect("utf-8 base").to_string();
        Server::start_ours(&[USER], &[("SYNC_BASE", &base)])
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    fn account(&self) -> Account<'_> {
        Account {
            server: self.server(),
            user: USER.0,
            password: USER.1,
        }
    }

    fn user_dir(&self) -> PathBuf {
        self.base.path().join(USER.0)
    }

    /// SIGKILL (dropping a `Server` kills it with SIGKILL and reaps it), then
    /// counts the temporary files the crash left behind.
    fn kill(&mut self) {
        let server = self.server.take().expect("server running");
        drop(server);
        self.leftovers_seen += temp_files(&self.user_dir()).len();
    }

    /// Starts a new server on the same `SYNC_BASE`; its start-up must have
    /// removed every temporary file.
    fn restart(&mut self) {
        assert!(self.server.is_none(), "kill first");
        self.server = Some(Crashable::launch(self.base.path()));
        let left = temp_files(&self.user_dir());
        assert!(left.is_empty(), "temporary files after start-up: {left:?}");
    }

    fn port(&self) -> u16 {
        self.server().port()
    }
}

/// `*.tmp` files in a user's folder and its media folder.
fn temp_files(user_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [user_dir.to_path_buf(), user_dir.join("media")] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    found.push(name);
                }
            }
        }
    }
    found
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ------------------------------------------------------------ raw requests

fn header(session: &str) -> String {
    format!(r#"{{"v":11,"k":"{HKEY}","c":"test,1,linux","s":"{session}"}}"#)
}

/// Where to cut an upload of `len` bytes and how many milliseconds later to
/// kill: half the trials cut the body anywhere and kill within 5 ms; the
/// other half send it whole and kill within `upload_ms` (while it is checked,
/// renamed or answered).
fn cut_and_delay(rng: &mut Rng, len: usize, upload_ms: u64) -> (usize, u64) {
    if rng.below(2) == 0 {
        (len, rng.below(upload_ms))
    } else {
        (rng.below(len as u64) as usize, rng.below(5))
    }
}

/// Opens a connection and sends a request head and the first `cut` bytes of
/// a chunked body (all of it, with the terminating chunk, if `cut` is past
/// the end). The caller kills the server while this is in flight.
fn send_partial(port: u16, path: &str, session: &str, body: &[u8], cut: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nanki-sync: {}\r\n\r\n",
        header(session)
    );
    stream.write_all(head.as_bytes()).unwrap();
    let sent = &body[..cut.min(body.len())];
    for chunk in sent.chunks(64 * 1024) {
        // The server may die mid-write; a broken pipe is the point.
        let _ = write!(stream, "{:x}\r\n", chunk.len());
        let _ = stream.write_all(chunk);
        let _ = stream.write_all(b"\r\n");
    }
    if cut >= body.len() {
        let _ = stream.write_all(b"0\r\n\r\n");
    }
    let _ = stream.flush();
    stream
}

/// A complete v11 request with session key `session`.
fn call(conn: &mut Conn, path: &str, session: &str, payload: &[u8]) -> Reply {
    let header = header(session);
    conn.send("POST", path, &[("anki-sync", &header)], &zstd(payload))
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.payload()).expect("JSON answer")
}

fn pause_ms(ms: u64) {
    thread::sleep(Duration::from_millis(ms));
}

// ------------------------------------------------------------ collection checks

/// What identifies a collection's content: note count, a checksum of note
/// ids and mtimes, card and revlog counts, and the server USN.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    notes: i64,
    note_sum: i64,
    cards: i64,
    revlog: i64,
    usn: i64,
}

fn open_checked(path: &Path) -> Connection {
    let conn = anki_sync_lite::storage::open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{}", path.display());
    conn
}

fn fingerprint_of(conn: &Connection) -> Fingerprint {
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    Fingerprint {
        notes: q("select count() from notes"),
        note_sum: q("select coalesce(sum((id % 1000003) * 7 + mod % 1009), 0) from notes"),
        cards: q("select count() from cards"),
        revlog: q("select count() from revlog"),
        usn: q("select usn from col"),
    }
}

/// Integrity check and fingerprint of a collection file (no server may be
/// writing it).
fn check_collection(path: &Path) -> Fingerprint {
    let conn = open_checked(path);
    let fp = fingerprint_of(&conn);
    conn.close().unwrap();
    fp
}

// ------------------------------------------------------------ full upload

#[test]
fn killed_during_full_upload_keeps_the_old_or_the_whole_new_collection() {
    let mut rng = rng_from_env("full upload");
    let mut s = Crashable::start();
    let work = TempDir::new().unwrap();
    // Two collections to upload in turn, made by the real client.
    let mut files = Vec::new();
    for (i, notes) in [(0u64, 3000u64), (1, 2000)] {
        let path = work.path().join(format!("col{i}.anki2"));
        client_ok(&[
            "make",
            "--path",
            path_str(&path),
            "--notes",
            &notes.to_string(),
            "--seed",
            &(i + 1).to_string(),
        ]);
        let fp = check_collection(&path);
        files.push((zstd(&fs::read(&path).unwrap()), fp));
    }
    let mut conn = Conn::open(s.server());
    let first = fs::read(work.path().join("col0.anki2")).unwrap();
    let clock = Instant::now();
    let reply = call(&mut conn, "/sync/upload", "u0", &first);
    assert_eq!(reply.payload(), b"OK");
    // Kills after the whole body land anywhere in the time an upload takes.
    let upload_ms = clock.elapsed().as_millis() as u64 * 3 / 2 + 1;
    drop(conn);
    let collection = s.user_dir().join("collection.anki2");
    let mut current = 0usize;
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for trial in 0..trials() {
        let next = 1 - current;
        let (body, _) = &files[next];
        // A cut anywhere in the body, or the whole body and a kill a few
        // milliseconds later (while it is checked, renamed or answered).
        let (cut, delay) = cut_and_delay(&mut rng, body.len(), upload_ms);
        let whole = cut == body.len();
        let stream = send_partial(s.port(), "/sync/upload", "up", body, cut);
        pause_ms(delay);
        s.kill();
        drop(stream);
        s.restart();

        let fp = check_collection(&collection);
        let moment = format!("trial {trial}: cut {cut}/{} + {delay} ms", body.len());
        let before = files[current].1.clone();
        let after = files[next].1.clone();
        // A full upload replaces usn too; compare content only.
        let same = |a: &Fingerprint, b: &Fingerprint| {
            (a.notes, a.note_sum, a.cards, a.revlog) == (b.notes, b.note_sum, b.cards, b.revlog)
        };
        if same(&fp, &after) {
            assert!(whole, "{moment}: a partial body was installed");
            current = next;
            *outcomes.entry("new").or_default() += 1;
        } else {
            assert!(
                same(&fp, &before),
                "{moment}: server holds neither the old nor the new collection: {fp:?}"
            );
            *outcomes.entry("old").or_default() += 1;
        }

        // The real client takes the collection from the restarted server.
        let device = work.path().join(format!("device{trial}.anki2"));
        let account = s.account();
        assert_eq!(account.sync(&device), "FULL_DOWNLOAD", "{moment}");
        let got = account
            .run("full-download", Some(&device))
            .unwrap_or_else(|e| panic!("{moment}: {e}"));
        assert_eq!(got["notes"], files[current].1.notes, "{moment}");
        assert_eq!(account.sync(&device), "NO_CHANGES", "{moment}");
    }
    eprintln!(
        "full upload: {} trials, outcomes {outcomes:?}, temp files left by the kills: {}",
        trials(),
        s.leftovers_seen
    );
}

// ------------------------------------------------------------ normal sync

/// Drives one raw normal sync that adds `batches` chunks of `per_batch`
/// notes (each with one card), stopping (and returning) before the step
/// `stop_before`: 0 start, 1 applyChanges, 2 + k the (k+1)-th applyChunk,
/// then sanityCheck2, then finish. At `stop_before` past the end, `finish`
/// is sent without waiting for its answer.
struct RawSync {
    conn: Conn,
    session: String,
    usn: i64,
    mid: i64,
    next_id: i64,
}

impl RawSync {
    fn begin(s: &Crashable, session: &str, mid: i64, next_id: i64) -> RawSync {
        let mut conn = Conn::open(s.server());
        let meta = json_of(&call(
            &mut conn,
            "/sync/meta",
            session,
            br#"{"v":11,"cv":"x"}"#,
        ));
        RawSync {
            conn,
            session: session.to_string(),
            usn: meta["usn"].as_i64().unwrap(),
            mid,
            next_id,
        }
    }

    fn step(&mut self, method: &str, payload: Value) -> Reply {
        let body = payload.to_string();
        call(
            &mut self.conn,
            &format!("/sync/{method}"),
            &self.session,
            body.as_bytes(),
        )
    }

    fn chunk_of(&mut self, notes: usize, done: bool) -> Value {
        let mut n = Vec::new();
        let mut c = Vec::new();
        for _ in 0..notes {
            let id = self.next_id;
            self.next_id += 1;
            let flds = format!("crash front {id}\u{1f}back");
            n.push(json!([
                id,
                format!("g{id}"),
                self.mid,
                1_700_000_000,
                self.usn,
                " crash ",
                flds,
                "",
                "",
                0,
                ""
            ]));
            c.push(json!([
                id,
                id,
                1,
                0,
                1_700_000_000,
                self.usn,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                "{}"
            ]));
        }
        json!({"chunk": {"done": done, "notes": n, "cards": c}})
    }
}

#[test]
fn killed_during_a_normal_sync_commits_all_or_nothing() {
    let mut rng = rng_from_env("normal sync");
    let mut s = Crashable::start();
    let work = TempDir::new().unwrap();
    let device = work.path().join("device.anki2");
    client_ok(&["make", "--path", path_str(&device), "--notes", "300"]);
    assert_eq!(s.account().sync(&device), "FULL_UPLOAD");
    s.account().run("full-upload", Some(&device)).unwrap();
    let collection = s.user_dir().join("collection.anki2");
    let mid: i64 = anki_sync_lite::storage::open(&device)
        .unwrap()
        .query_row("select id from notetypes where name = 'Basic'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut next_id = 1_800_000_000_000i64;
    let mut outcomes = BTreeMap::<String, usize>::new();
    const BATCHES: u64 = 4;
    const PER_BATCH: usize = 60;
    for trial in 0..trials() {
        let before = {
            // The server closes nothing between syncs; reading beside it is
            // safe because no transaction is open.
            let conn = anki_sync_lite::storage::open(&collection).unwrap();
            fingerprint_of(&conn)
        };
        // 0 start, 1 applyChanges, 2.. after k applyChunks, then after
        // sanityCheck2, then (twice as likely) finish sent and a kill 0..15 ms later.
        let stop = rng.below(BATCHES + 5);
        let delay = rng.below(15);
        let session = format!("c{trial}");
        let mut sync = RawSync::begin(&s, &session, mid, next_id);
        let usn = sync.usn;
        let mut stage = "start".to_string();
        if stop >= 1 {
            let r = sync.step(
                "start",
                json!({"minUsn": usn, "lnewer": false, "graves": null}),
            );
            assert_eq!(r.status, 200);
            stage = "applyChanges".into();
        }
        if stop >= 2 {
            let r = sync.step(
                "applyChanges",
                json!({"changes": {"models": [], "decks": [[], []], "tags": []}}),
            );
            assert_eq!(r.status, 200);
            let r = sync.step("chunk", json!({}));
            assert_eq!(json_of(&r)["done"], true);
            let chunks = (stop - 2).min(BATCHES);
            for k in 0..chunks {
                let chunk = sync.chunk_of(PER_BATCH, k + 1 == BATCHES);
                assert_eq!(sync.step("applyChunk", chunk).payload(), b"null");
            }
            stage = format!("after {chunks} applyChunk");
        }
        let added = BATCHES as i64 * PER_BATCH as i64;
        if stop >= BATCHES + 2 {
            let client = json!({"client": [
                [0, 0, 0],
                before.cards + added,
                before.notes + added,
                before.revlog,
                0,
                7,
                5,
                2
            ]});
            let answer = json_of(&sync.step("sanityCheck2", client));
            assert_eq!(answer["status"], "ok", "{answer}");
            stage = "after sanityCheck2".into();
        }
        let finish_sent = stop >= BATCHES + 3;
        let stream = if finish_sent {
            stage = format!("finish + {delay} ms");
            Some(send_partial(
                s.port(),
                "/sync/finish",
                &session,
                &zstd(b"{}"),
                usize::MAX,
            ))
        } else {
            None
        };
        pause_ms(if finish_sent { delay } else { 0 });
        s.kill();
        drop((stream, sync.conn));
        next_id = sync.next_id;
        s.restart();

        let fp = check_collection(&collection);
        let moment = format!("trial {trial}: killed at {stage}");
        let committed = fp.notes == before.notes + added;
        if committed {
            assert!(finish_sent, "{moment}: committed without finish");
            assert_eq!(fp.cards, before.cards + added, "{moment}");
            assert_eq!(fp.usn, before.usn + 1, "{moment}");
        } else {
            assert_eq!(fp, before, "{moment}: partial or changed state");
        }
        *outcomes
            .entry(
                if committed {
                    "committed"
                } else {
                    "rolled back"
                }
                .into(),
            )
            .or_default() += 1;

        // The real client syncs normally and ends up with the server's notes.
        assert_eq!(s.account().sync(&device), "NO_CHANGES", "{moment}");
        let counts = client_ok(&["count", "--path", path_str(&device)]);
        assert_eq!(counts["notes"], fp.notes, "{moment}");
    }
    eprintln!(
        "normal sync: {} trials, outcomes {outcomes:?}, temp files left by the kills: {}",
        trials(),
        s.leftovers_seen
    );
}

// ------------------------------------------------------------ media upload

/// A zip of Stored entries, as clients send media uploads.
fn media_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut meta = Vec::new();
    let mut entries: Vec<(String, &[u8])> = Vec::new();
    for (i, (name, data)) in files.iter().enumerate() {
        entries.push((i.to_string(), data));
        meta.push(json!([name, i.to_string()]));
    }
    let meta = Value::Array(meta).to_string().into_bytes();
    entries.push(("_meta".into(), &meta));
    for (name, data) in &entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let mut fields = Vec::new();
        fields.extend_from_slice(&20u16.to_le_bytes());
        fields.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x21, 0]);
        for v in [crc.sum(), data.len() as u32, data.len() as u32] {
            fields.extend_from_slice(&v.to_le_bytes());
        }
        fields.extend_from_slice(&(name.len() as u16).to_le_bytes());
        fields.extend_from_slice(&0u16.to_le_bytes());
        let offset = out.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&fields);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&fields);
        central.extend_from_slice(&[0u8; 10]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let offset = out.len() as u32;
    let count = entries.len() as u16;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The media store as `media.db` describes it ({name: sha1} of live files,
/// and the USN), after checking that the folder holds exactly those files
/// with those contents.
fn check_media(user_dir: &Path) -> (BTreeMap<String, String>, i64) {
    let db = Connection::open(user_dir.join("media.db")).unwrap();
    let integrity: String = db
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let usn: i64 = db
        .query_row("select last_usn from meta", [], |r| r.get(0))
        .unwrap();
    let mut stmt = db
        .prepare("select fname, csum from media where size > 0")
        .unwrap();
    let listed: BTreeMap<String, String> = stmt
        .query_map([], |r| {
            let sum: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, sum.iter().map(|b| format!("{b:02x}")).collect()))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let on_disk: BTreeMap<String, String> = fs::read_dir(user_dir.join("media"))
        .unwrap()
        .flatten()
        .map(|e| {
            let data = fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                sha1_hex(&data),
            )
        })
        .collect();
    assert_eq!(on_disk, listed, "media folder and media.db disagree");
    (listed, usn)
}

/// 25 files of 4-120 KiB named `PREFIX-i.bin`.
fn media_files(rng: &mut Rng, prefix: &str) -> Vec<(String, Vec<u8>)> {
    (0..25)
        .map(|i| {
            let len = 4096 + rng.below(116 * 1024) as usize;
            (format!("{prefix}-{i}.bin"), rng.bytes(len))
        })
        .collect()
}

/// A kill during a media upload leaves media.db all or nothing and the
/// folder in step with it (the upload's journal lets start-up finish or undo
/// the moves), no temp file survives start-up, and the real client's media
/// sync then downloads exactly what the server holds.
#[test]
fn killed_during_a_media_upload_keeps_folder_and_database_in_step() {
    let mut rng = rng_from_env("media upload");
    let mut s = Crashable::start();
    let work = TempDir::new().unwrap();
    let device = work.path().join("media-device.anki2");
    let mut outcomes = BTreeMap::<&str, usize>::new();
    let files = media_files(&mut rng, "calibrate");
    let clock = Instant::now();
    let r = call(
        &mut Conn::open(s.server()),
        "/msync/uploadChanges",
        "m",
        &media_zip(&files),
    );
    assert_eq!(r.status, 200);
    let upload_ms = clock.elapsed().as_millis() as u64 * 3 / 2 + 1;
    for trial in 0..trials() {
        let (before, usn) = check_media(&s.user_dir());
        let mut files = media_files(&mut rng, &format!("t{trial}"));
        // Replace a few earlier files too.
        files[0].0 = format!("calibrate-{trial}.bin");
        let body = zstd(&media_zip(&files));
        let (cut, delay) = cut_and_delay(&mut rng, body.len(), upload_ms);
        let whole = cut == body.len();
        let stream = send_partial(s.port(), "/msync/uploadChanges", "m", &body, cut);
        pause_ms(delay);
        s.kill();
        drop(stream);
        s.restart();

        let moment = format!("trial {trial}: cut {cut}/{} + {delay} ms", body.len());
        let (after, new_usn) = check_media(&s.user_dir());
        let mut expected = before.clone();
        for (name, data) in &files {
            expected.insert(name.clone(), sha1_hex(data));
        }
        if after == expected {
            assert!(whole, "{moment}: a partial upload was applied");
            assert_eq!(new_usn, usn + 25, "{moment}");
            *outcomes.entry("applied").or_default() += 1;
        } else {
            assert_eq!(after, before, "{moment}: neither before nor after");
            assert_eq!(new_usn, usn, "{moment}");
            *outcomes.entry("not applied").or_default() += 1;
        }

        // The real client's media sync downloads exactly what the server has.
        let account = s.account();
        account
            .run("media-sync", Some(&device))
            .unwrap_or_else(|e| panic!("{moment}: {e}"));
        let listing = client_ok(&["media-list", "--path", path_str(&device)]);
        let listing: BTreeMap<String, String> = serde_json::from_value(listing).unwrap();
        assert_eq!(listing, after, "{moment}: client media after sync");
    }
    eprintln!(
        "media upload: {} trials, outcomes {outcomes:?}, temp files left by the kills: {}",
        trials(),
        s.leftovers_seen
    );
}
