//! The data layout of the old Python ankisyncd (the community server
//! "ankicommunity/anki-sync-server"), read without ever writing to it.
//!
//! ```text
//! <dir>/auth.db                       auth(username, hash); usually beside data_root
//! <dir>/session.db                    session(hkey, skey, username, path), optional
//! <data_root>/<user>/collection.anki2
//! <data_root>/<user>/collection.media/              flat media folder
//! <data_root>/<user>/collection.media.server.db     media(fname, usn, csum)
//! ```
//!
//! `data_root` defaults to `./collections` and `auth.db` to `./auth.db` in
//! ankisyncd's working folder, so `<dir>` may be either that working folder
//! or the data root itself. A user's folder is named after the user.
//!
//! Neither `auth.db` nor `session.db` can be carried over: `hash` is the hex
//! SHA-256 of user name, password and salt followed by the 16-character salt
//! (not a PBKDF2 string, so not usable with `PASSWORDS_HASHED`), and host keys
//! are random MD5 tokens, not the SHA-1 of `name:password` we (and the
//! official server) derive. They are read only to list users and sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::fsutil::sidecar;

pub const COLLECTION_FILE: &str = "collection.anki2";
pub const MEDIA_FOLDER: &str = "collection.media";
pub const MEDIA_DB: &str = "collection.media.server.db";
const AUTH_DB: &str = "auth.db";
const SESSION_DB: &str = "session.db";
/// ankisyncd's default `data_root`, relative to its working folder.
const DATA_ROOT: &str = "collections";

/// Where one ankisyncd installation keeps its data.
#[derive(Debug)]
pub struct Source {
    pub data_root: PathBuf,
    pub auth_db: Option<PathBuf>,
    pub session_db: Option<PathBuf>,
}

/// One user found in the source.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceUser {
    pub name: String,
    /// `data_root/<name>` if that folder exists.
    pub folder: Option<PathBuf>,
    pub in_auth_db: bool,
    /// Devices logged in according to `session.db`.
    pub sessions: u64,
}

/// One row of `collection.media.server.db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldMedia {
    pub fname: String,
    pub usn: i64,
    /// SHA-1 of the content; `None` once the file was deleted.
    pub sha1: Option<Vec<u8>>,
}

impl Source {
    /// Finds the data root and the user databases under `dir`.
    pub fn locate(dir: &Path) -> Result<Source, String> {
        if !dir.is_dir() {
            return Err(format!("{} is not a folder", dir.display()));
        }
        let nested = dir.join(DATA_ROOT);
        let data_root = if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        };
        // The default layout keeps auth.db in the working folder, beside
        // `collections/`; a data root given directly has it in its parent.
        let mut candidates = vec![dir.to_path_buf(), data_root.clone()];
        if let Some(parent) = dir.parent() {
            candidates.push(parent.to_path_buf());
        }
        let find = |name: &str| {
            candidates
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        };
        Ok(Source {
            auth_db: find(AUTH_DB),
            session_db: find(SESSION_DB),
            data_root,
        })
    }

    /// Every user with a folder or an `auth.db` entry, sorted by name.
    /// Problems reading `auth.db` or `session.db` are returned as warnings:
    /// the folders alone are enough to import.
    pub fn users(&self) -> Result<(Vec<SourceUser>, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut folders = BTreeMap::new();
        let entries = fs::read_dir(&self.data_root)
            .map_err(|e| format!("reading {}: {e}", self.data_root.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", self.data_root.display()))?;
            if !entry.path().is_dir() {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) => {
                    folders.insert(name, entry.path());
                }
                Err(raw) => warnings.push(format!(
                    "skipped the folder {raw:?}: its name is not UTF-8, so it cannot be a user name"
                )),
            }
        }
        let auth = match &self.auth_db {
            Some(path) => match auth_users(path) {
                Ok(names) => names,
                Err(e) => {
                    warnings.push(format!(
                        "cannot read the users in {}: {e}; importing every user folder",
                        path.display()
                    ));
                    BTreeSet::new()
                }
            },
            None => BTreeSet::new(),
        };
        let sessions = match &self.session_db {
            Some(path) => session_counts(path).unwrap_or_else(|e| {
                warnings.push(format!("cannot read {}: {e}", path.display()));
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        let names: BTreeSet<&String> = folders.keys().chain(auth.iter()).collect();
        let users = names
            .into_iter()
            .map(|name| SourceUser {
                name: name.clone(),
                folder: folders.get(name).cloned(),
                in_auth_db: auth.contains(name),
                sessions: sessions.get(name).copied().unwrap_or(0),
            })
            .collect();
        Ok((users, warnings))
    }
}

/// Opens a database the import must not change. Read-only is enough for
/// `auth.db` and `session.db`, which ankisyncd keeps in rollback-journal
/// mode and only touches on logins.
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    crate::storage::harden::harden_file(&conn, path)?;
    Ok(conn)
}

fn auth_users(path: &Path) -> rusqlite::Result<BTreeSet<String>> {
    let conn = open_read_only(path)?;
    let mut stmt = conn.prepare("SELECT username FROM auth")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    names.collect()
}

fn session_counts(path: &Path) -> rusqlite::Result<BTreeMap<String, u64>> {
    let conn = open_read_only(path)?;
    let mut stmt = conn.prepare("SELECT username, count(*) FROM session GROUP BY username")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
    rows.collect()
}

/// Copies an SQLite file and whichever of its `-wal` and `-journal` exist
/// to `dest`, so the copy can be opened (and recovered) like the original
/// while the original is never opened at all.
pub fn copy_database(src: &Path, dest: &Path) -> io::Result<()> {
    fs::copy(src, dest)?;
    for suffix in ["-wal", "-journal"] {
        let side = sidecar(src, suffix);
        if side.is_file() {
            fs::copy(&side, sidecar(dest, suffix))?;
        }
    }
    Ok(())
}

/// Reads every row of a copy of `collection.media.server.db`, oldest USN
/// first. `csum` is hex text (as ankisyncd writes it); a 20-byte blob is
/// accepted too; NULL or empty means deleted.
pub fn old_media_rows(copy: &Path) -> Result<Vec<OldMedia>, String> {
    let conn = Connection::open(copy).map_err(|e| e.to_string())?;
    crate::storage::harden::harden_file(&conn, copy).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT fname, usn, csum FROM media ORDER BY usn, fname")
        .map_err(|e| format!("not an ankisyncd media database: {e}"))?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let fname: String = row.get(0).map_err(|e| format!("file name: {e}"))?;
        let usn: i64 = row.get(1).map_err(|e| format!("{fname:?}: usn: {e}"))?;
        let sha1 = match row.get_ref(2).map_err(|e| e.to_string())? {
            ValueRef::Null => None,
            ValueRef::Text([]) => None,
            ValueRef::Text(t) => {
                Some(parse_hex(t).ok_or_else(|| format!("{fname:?}: checksum {t:?} is not hex"))?)
            }
            ValueRef::Blob([]) => None,
            ValueRef::Blob(b) => Some(b.to_vec()),
            other => return Err(format!("{fname:?}: unexpected checksum {other:?}")),
        };
        out.push(OldMedia { fname, usn, sha1 });
    }
    Ok(out)
}

fn parse_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_auth(path: &Path, names: &[&str]) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE auth (username VARCHAR PRIMARY KEY, hash VARCHAR)")
            .unwrap();
        for name in names {
            conn.execute(
                "INSERT INTO auth VALUES (?, ?)",
                [*name, "00deadbeef0123456789abcdef"],
            )
            .unwrap();
        }
    }

    #[test]
    fn finds_the_default_layout_and_merges_folders_with_auth_users() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("collections");
        fs::create_dir_all(root.join("alice")).unwrap();
        fs::create_dir_all(root.join("zed")).unwrap();
        fs::write(root.join("stray.txt"), b"x").unwrap();
        write_auth(&dir.path().join("auth.db"), &["alice", "bob"]);
        let conn = Connection::open(dir.path().join("session.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE session (hkey VARCHAR PRIMARY KEY, skey VARCHAR, username VARCHAR, path VARCHAR);
             INSERT INTO session VALUES ('h1', 's1', 'alice', '/x'), ('h2', 's2', 'alice', '/x');",
        )
        .unwrap();
        drop(conn);

        for given in [dir.path().to_path_buf(), root.clone()] {
            let source = Source::locate(&given).unwrap();
            assert_eq!(source.data_root, root);
            assert_eq!(source.auth_db, Some(dir.path().join("auth.db")));
            let (users, warnings) = source.users().unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            let summary: Vec<_> = users
                .iter()
                .map(|u| {
                    (
                        u.name.as_str(),
                        u.folder.is_some(),
                        u.in_auth_db,
                        u.sessions,
                    )
                })
                .collect();
            assert_eq!(
                summary,
                [
                    ("alice", true, true, 2),
                    ("bob", false, true, 0),
                    ("zed", true, false, 0)
                ]
            );
        }
    }

    #[test]
    fn an_unreadable_auth_db_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("alice")).unwrap();
        // The pre-2.0 schema (`user` column) ankisyncd itself refuses.
        let conn = Connection::open(dir.path().join("auth.db")).unwrap();
        conn.execute_batch("CREATE TABLE auth (user VARCHAR PRIMARY KEY, hash VARCHAR)")
            .unwrap();
        drop(conn);
        let (users, warnings) = Source::locate(dir.path()).unwrap().users().unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("auth.db"), "{warnings:?}");
    }

    #[test]
    fn reads_media_rows_with_hex_blob_and_null_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEDIA_DB);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE media (fname TEXT NOT NULL PRIMARY KEY, usn INT NOT NULL, csum TEXT);
             INSERT INTO media VALUES ('b.jpg', 2, NULL), ('a.jpg', 1, '0aFF'),
               ('c.jpg', 3, x'0102');",
        )
        .unwrap();
        drop(conn);
        let rows = old_media_rows(&path).unwrap();
        assert_eq!(
            rows,
            [
                OldMedia {
                    fname: "a.jpg".into(),
                    usn: 1,
                    sha1: Some(vec![0x0a, 0xff])
                },
                OldMedia {
                    fname: "b.jpg".into(),
                    usn: 2,
                    sha1: None
                },
                OldMedia {
                    fname: "c.jpg".into(),
                    usn: 3,
                    sha1: Some(vec![1, 2])
                },
            ]
        );
        assert!(parse_hex(b"abc").is_none());
        assert!(parse_hex(b"zz").is_none());
    }

    #[test]
    fn copies_a_database_with_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.db");
        let conn = Connection::open(&src).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
            .unwrap();
        // The row lives only in the WAL while `conn` stays open.
        assert!(sidecar(&src, "-wal").metadata().unwrap().len() > 0);
        let dest = dir.path().join("copy.db");
        copy_database(&src, &dest).unwrap();
        let copy = Connection::open(&dest).unwrap();
        let x: i64 = copy.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        drop(conn);
    }
}
