//! `import-ankisyncd` (issue 7): users of the old Python ankisyncd move to
//! this server without a full sync and without downloading media again.
//!
//! The ankisyncd tree is synthetic but built from real data: a first server
//! plays ankisyncd while real clients (two devices) upload, download and sync
//! a collection and media; its collection, media files and media rows are
//! then laid out the way ankisyncd keeps them (`collections/<user>/
//! collection.anki2`, `collection.media/`, `collection.media.server.db`,
//! `auth.db`, `session.db`). After the import, the same devices sync with
//! our server: no full sync, nothing to transfer, and new notes and media
//! travel normally.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::http::{Conn, call};
use crate::support::{Account, Server, client_ok, our_binary};
use anki_sync_lite::storage;
use rusqlite::{Connection, params};
use serde_json::Value;
use sha1::{Digest, Sha1};
use sha2::Sha256;

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");
/// In auth.db, never synced.
const CAROL: (&str, &str) = ("carol", "carol-secret");
/// A host key as ankisyncd hands them out (random MD5 hex).
const OLD_HKEY: &str = "5f4dcc3b5aa765d61d8327deb882cf99";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `scm`, `usn`, `mod` and `ver` of a collection file.
fn col_state(path: &Path) -> (i64, i64, i64, i64) {
    let conn = storage::open(path).unwrap();
    conn.query_row("SELECT scm, usn, mod, ver FROM col", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
}

/// Every file under `dir` with its SHA-1, to show the source is untouched.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), hex(&Sha1::digest(fs::read(&path).unwrap())));
            }
        }
    }
    out
}

/// `auth.db` as ankisyncd's SqliteUserManager writes it: hex SHA-256 of
/// user name, password and a 16-hex-digit salt, then the salt.
fn write_auth_db(path: &Path, users: &[(&str, &str)]) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE auth (username VARCHAR PRIMARY KEY, hash VARCHAR)")
        .unwrap();
    for (i, (name, password)) in users.iter().enumerate() {
        let salt = format!("{:016x}", 0x1234_5678_9abc_0000_u64 + i as u64);
        let hash = hex(&Sha256::digest(
            format!("{name}{password}{salt}").as_bytes(),
        ));
        conn.execute(
            "INSERT INTO auth VALUES (?, ?)",
            params![name, hash + &salt],
        )
        .unwrap();
    }
}

fn write_session_db(path: &Path, sessions: &[(&str, &str)]) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE session (hkey VARCHAR PRIMARY KEY, skey VARCHAR, username VARCHAR, path VARCHAR)",
    )
    .unwrap();
    for (hkey, user) in sessions {
        conn.execute(
            "INSERT INTO session VALUES (?, 'abcd1234', ?, ?)",
            params![hkey, user, format!("/data/collections/{user}")],
        )
        .unwrap();
    }
}

/// Lays out one user's media the way ankisyncd keeps it, from a media
/// store of ours: files in `collection.media/`, rows in
/// `collection.media.server.db` (hex checksum, NULL once deleted).
fn write_ankisyncd_media(store: &Path, user_dir: &Path) {
    let folder = user_dir.join("collection.media");
    fs::create_dir(&folder).unwrap();
    for entry in fs::read_dir(store.join("media")).unwrap().flatten() {
        fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    let ours = Connection::open(store.join("media.db")).unwrap();
    let old = Connection::open(user_dir.join("collection.media.server.db")).unwrap();
    old.execute_batch(
        "CREATE TABLE media (fname TEXT NOT NULL PRIMARY KEY, usn INT NOT NULL, csum TEXT);
         CREATE INDEX idx_media_usn ON media (usn);",
    )
    .unwrap();
    let mut stmt = ours
        .prepare("SELECT fname, usn, csum, size FROM media")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let size: i64 = r.get(3)?;
            let csum: Vec<u8> = r.get(2)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                (size > 0).then(|| hex(&csum)),
            ))
        })
        .unwrap();
    for row in rows {
        let (name, usn, csum) = row.unwrap();
        old.execute(
            "INSERT INTO media VALUES (?, ?, ?)",
            params![name, usn, csum],
        )
        .unwrap();
    }
}

fn media_usn(store: &Path) -> i64 {
    Connection::open(store.join("media.db"))
        .unwrap()
        .query_row("SELECT last_usn FROM meta", [], |r| r.get(0))
        .unwrap()
}

fn import(source: &Path, base: &Path, env: &[(&str, &str)], force: bool) -> (Output, String) {
    let mut cmd = Command::new(our_binary());
    cmd.arg("import-ankisyncd")
        .arg(source)
        .arg("--base")
        .arg(base);
    if force {
        cmd.arg("--force");
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("SYNC_") || key == "PASSWORDS_HASHED" {
            cmd.env_remove(key);
        }
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// One device: a collection and its media folder in a temp dir.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Device {
        Device {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn col(&self) -> PathBuf {
        self.dir.path().join("col.anki2")
    }

    fn add_media(&self, files: &[(&str, &[u8])]) {
        let src = self.dir.path().join("incoming");
        fs::create_dir_all(&src).unwrap();
        for (name, data) in files {
            fs::write(src.join(name), data).unwrap();
        }
        client_ok(&[
            "media-add",
            "--path",
            path_str(&self.col()),
            "--src",
            path_str(&src),
        ]);
        fs::remove_dir_all(&src).unwrap();
    }

    fn media_sync(&self, account: &Account<'_>) -> Value {
        account
            .run("media-sync", Some(&self.col()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn media(&self) -> Value {
        client_ok(&["media-list", "--path", path_str(&self.col())])
    }

    fn notes(&self) -> i64 {
        client_ok(&["count", "--path", path_str(&self.col())])["notes"]
            .as_i64()
            .unwrap()
    }
}

fn account<'a>(server: &'a Server, (user, password): (&'a str, &'a str)) -> Account<'a> {
    Account {
        server,
        user,
        password,
    }
}

/// What the media sync progress says it moved, as text; "0" counts only.
fn transferred_nothing(progress: &Value) -> bool {
    let text = format!("{} {}", progress["added"], progress["removed"]);
    !text.chars().any(|c| c.is_ascii_digit() && c != '0')
}

#[test]
fn ankisyncd_users_keep_syncing_without_a_full_sync() {
    // ---- "ankisyncd" days: two devices of alice's and one of bob's.
    let mut old_server = Server::start_ours(&[ALICE, BOB], &[]);
    let alice_old = account(&old_server, ALICE);
    let bob_old = account(&old_server, BOB);
    let (a, b, c) = (Device::new(), Device::new(), Device::new());
    client_ok(&["make", "--path", path_str(&a.col()), "--notes", "60"]);
    alice_old.run("full-upload", Some(&a.col())).unwrap();
    a.add_media(&[
        ("apple.jpg", b"apple-data-1"),
        ("banana.mp3", b"banana-data-22"),
        ("caf\u{e9} \u{4e2d}.png", b"cafe-data-333"),
    ]);
    a.media_sync(&alice_old);
    client_ok(&[
        "media-remove",
        "--path",
        path_str(&a.col()),
        "--name",
        "banana.mp3",
    ]);
    a.media_sync(&alice_old);
    alice_old.run("full-download", Some(&b.col())).unwrap();
    b.media_sync(&alice_old);
    assert_eq!(b.media(), a.media());
    assert_eq!(alice_old.sync(&a.col()), "NO_CHANGES");
    assert_eq!(alice_old.sync(&b.col()), "NO_CHANGES");
    client_ok(&[
        "make",
        "--path",
        path_str(&c.col()),
        "--notes",
        "25",
        "--seed",
        "3",
    ]);
    bob_old.run("full-upload", Some(&c.col())).unwrap();
    assert_eq!(bob_old.sync(&c.col()), "NO_CHANGES");
    old_server.terminate().expect("old server stops");

    // ---- Its data in ankisyncd's layout. Bob's collection is the schema
    // 11 an old (pure-Python) ankisyncd kept; alice's is schema 18.
    let old = tempfile::tempdir().unwrap();
    let root = old.path().join("collections");
    let (alice_dir, bob_dir) = (root.join("alice"), root.join("bob"));
    fs::create_dir_all(&alice_dir).unwrap();
    fs::create_dir_all(&bob_dir).unwrap();
    let alice_store = old_server.base_dir().join("alice");
    let bob_store = old_server.base_dir().join("bob");
    let old_alice_col = alice_store.join("collection.anki2");
    let old_bob_col = bob_store.join("collection.anki2");
    storage::open(&old_alice_col)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    fs::copy(&old_alice_col, alice_dir.join("collection.anki2")).unwrap();
    storage::legacy::write_schema11_copy(
        &storage::open(&old_bob_col).unwrap(),
        &bob_dir.join("collection.anki2"),
    )
    .unwrap();
    write_ankisyncd_media(&alice_store, &alice_dir);
    write_auth_db(&old.path().join("auth.db"), &[ALICE, BOB, CAROL]);
    write_session_db(
        &old.path().join("session.db"),
        &[
            (OLD_HKEY, "alice"),
            ("0123456789abcdef0123456789abcdef", "alice"),
        ],
    );
    let alice_state = col_state(&old_alice_col);
    let bob_state = col_state(&old_bob_col);
    let old_media_usn = media_usn(&alice_store);
    assert!(old_media_usn >= 4, "media usn {old_media_usn}");
    assert_eq!(col_state(&bob_dir.join("collection.anki2")).3, 11);
    drop(old_server);

    // ---- The import (carol is already configured).
    let before = snapshot(old.path());
    let base = tempfile::tempdir().unwrap();
    let (out, text) = import(
        old.path(),
        base.path(),
        &[("SYNC_USER1", "carol:carol-secret")],
        false,
    );
    assert!(out.status.success(), "{text}");
    for needle in [
        "alice: imported",
        "bob: imported",
        "upgraded from schema 11 to 18",
        "carol: nothing to import",
        "SYNC_USER2=alice:<alice's password>",
        "SYNC_USER3=bob:<bob's password>",
        "2 device login(s)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(!text.contains("SYNC_USER4"), "{text}");
    assert_eq!(snapshot(old.path()), before, "the source changed");
    let new_alice = base.path().join("alice");
    let with_ver = |s: (i64, i64, i64, i64)| (s.0, s.1, s.2, 18);
    assert_eq!(
        col_state(&new_alice.join("collection.anki2")),
        with_ver(alice_state)
    );
    assert_eq!(
        col_state(&base.path().join("bob/collection.anki2")),
        with_ver(bob_state)
    );
    assert_eq!(media_usn(&new_alice), old_media_usn);

    // A second run refuses to overwrite.
    let (out, text) = import(old.path(), base.path(), &[], false);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("pass --force"), "{text}");

    // ---- Our server on the imported data.
    let server = Server::start_ours(
        &[CAROL, ALICE, BOB],
        &[("SYNC_BASE", path_str(base.path()))],
    );
    let alice = account(&server, ALICE);
    let bob = account(&server, BOB);

    // ankisyncd's host keys mean nothing here: the device must log in.
    let mut conn = Conn::open(&server);
    let reply = call(
        &mut conn,
        "meta",
        OLD_HKEY,
        br#"{"v":11,"cv":"anki,2.1.66,linux"}"#,
    );
    assert_eq!(reply.status, 403);

    // Nothing to do for any device: no full sync, no media transfer.
    assert_eq!(alice.sync(&a.col()), "NO_CHANGES");
    assert_eq!(alice.sync(&b.col()), "NO_CHANGES");
    assert_eq!(bob.sync(&c.col()), "NO_CHANGES");
    let media_before = snapshot(&new_alice.join("media"));
    for device in [&a, &b] {
        let progress = device.media_sync(&alice)["progress"].clone();
        assert!(transferred_nothing(&progress), "{progress}");
    }
    assert_eq!(snapshot(&new_alice.join("media")), media_before);
    assert_eq!(media_usn(&new_alice), old_media_usn);

    // New work travels by normal sync.
    client_ok(&[
        "add-notes",
        "--path",
        path_str(&a.col()),
        "--notes",
        "7",
        "--seed",
        "11",
    ]);
    a.add_media(&[("new.jpg", b"after-the-move")]);
    assert_eq!(alice.sync(&a.col()), "NO_CHANGES");
    a.media_sync(&alice);
    assert_eq!(alice.sync(&b.col()), "NO_CHANGES");
    b.media_sync(&alice);
    assert_eq!(b.notes(), a.notes());
    assert_eq!(b.media(), a.media());
    assert!(b.media()["new.jpg"].is_string());
    assert_eq!(media_usn(&new_alice), old_media_usn + 1);

    client_ok(&[
        "add-notes",
        "--path",
        path_str(&c.col()),
        "--notes",
        "4",
        "--seed",
        "12",
    ]);
    assert_eq!(bob.sync(&c.col()), "NO_CHANGES");
    let fresh = Device::new();
    bob.run("full-download", Some(&fresh.col())).unwrap();
    assert_eq!(fresh.notes(), c.notes());
}

#[test]
fn a_broken_user_fails_alone_with_a_non_zero_exit() {
    let old = tempfile::tempdir().unwrap();
    for user in ["dave", "erin"] {
        let dir = old.path().join("collections").join(user);
        fs::create_dir_all(&dir).unwrap();
        storage::create_collection(&dir.join("collection.anki2"), 1_650_000_000_000).unwrap();
    }
    fs::write(
        old.path().join("collections/dave/collection.anki2"),
        vec![7u8; 4096],
    )
    .unwrap();
    let base = tempfile::tempdir().unwrap();
    let (out, text) = import(old.path(), base.path(), &[], false);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("dave: FAILED"), "{text}");
    assert!(text.contains("erin: imported"), "{text}");
    assert!(text.contains("SYNC_USER1=erin:<erin's password>"), "{text}");
    assert!(!base.path().join("dave/collection.anki2").exists());
    assert!(base.path().join("erin/collection.anki2").is_file());
}
