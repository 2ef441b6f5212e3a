//! Reading what the server holds after a cut, as the restarted server would
//! find it: collections and backups (SQLite integrity check, notes and the
//! version marker the trials' edits carry), `media.db` rows against the
//! files in `media/`, and temporary files. Databases are read from copies,
//! so the checks never write beside the server's files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::support::data::sha1_hex;

/// Note id to version: the `#v<N>#` marker of the trials' edits (0 without).
pub type Notes = BTreeMap<i64, u64>;

pub fn version_of(fields: &str) -> u64 {
    fields
        .split("#v")
        .skip(1)
        .filter_map(|rest| rest.split_once('#'))
        .filter_map(|(digits, _)| digits.parse().ok())
        .max()
        .unwrap_or(0)
}

fn notes_of(conn: &Connection) -> rusqlite::Result<Notes> {
    let mut stmt = conn.prepare("select id, flds from notes")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, version_of(&r.get::<_, String>(1)?)))
    })?;
    rows.collect()
}

/// A collection as read by the checks.
pub struct Collection {
    pub notes: Notes,
    pub scm: i64,
    /// The checked copy, for the real client to open.
    pub copy: PathBuf,
    /// No tables at all (see `read_collection`).
    pub empty: bool,
}

/// Copies a database with its WAL or hot rollback journal, which SQLite
/// applies when it opens the copy (not the -shm: SQLite rebuilds it).
fn copy_database(path: &Path, copy: &Path) -> Result<(), String> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(sidecar(copy, suffix));
    }
    fs::copy(path, copy).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for suffix in ["-wal", "-journal"] {
        if let Ok(side) = fs::read(sidecar(path, suffix)) {
            fs::write(sidecar(copy, suffix), side).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Copies `path` (see `copy_database`) to `scratch/name`, runs the
/// integrity check and reads the notes.
pub fn read_collection(path: &Path, scratch: &Path, name: &str) -> Result<Collection, String> {
    let copy = scratch.join(name);
    copy_database(path, &copy)?;
    let conn = anki_sync_lite::storage::open(&copy)
        .map_err(|e| format!("{}: does not open: {e}", path.display()))?;
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("{}: integrity check: {e}", path.display()))?;
    if integrity != "ok" {
        return Err(format!("{}: integrity check: {integrity}", path.display()));
    }
    // A database whose first commit a cut undid has no tables: the server
    // starts it again as a new collection (what it held is counted as lost).
    let tables: i64 = conn
        .query_row("select count() from sqlite_master", [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if tables == 0 {
        return Ok(Collection {
            notes: Notes::new(),
            scm: 0,
            copy,
            empty: true,
        });
    }
    let notes = notes_of(&conn).map_err(|e| format!("{}: notes: {e}", path.display()))?;
    let scm = conn
        .query_row("select scm from col", [], |r| r.get(0))
        .map_err(|e| format!("{}: col: {e}", path.display()))?;
    drop(conn);
    Ok(Collection {
        notes,
        scm,
        copy,
        empty: false,
    })
}

/// Opens a device's database, read and write: the client is done with it
/// (its WAL, if any, is read through the -shm, which needs write access).
fn device_db(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("device {}: {e}", path.display()))
}

/// The notes of a device's (closed) collection.
pub fn device_notes(path: &Path) -> Notes {
    let conn = device_db(path);
    notes_of(&conn).unwrap_or_else(|e| panic!("device {}: {e}", path.display()))
}

/// A device's media database (`X.media.db2` beside `X.anki2`): name to
/// (SHA-1, or `None` once deleted; whether the change is still to be sent).
pub fn device_media(collection: &Path) -> BTreeMap<String, (Option<String>, bool)> {
    let db = collection.with_extension("media.db2");
    let mut media = BTreeMap::new();
    if !db.exists() {
        return media; // no media sync yet
    }
    let conn = device_db(&db);
    let mut stmt = conn
        .prepare("select fname, csum, dirty from media")
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let rows = stmt
        .query_map([], |r| {
            let csum: Option<String> = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                (csum.filter(|c| !c.is_empty()), r.get::<_, i64>(2)? != 0),
            ))
        })
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    for row in rows {
        let (name, state) = row.unwrap_or_else(|e| panic!("{}: {e}", db.display()));
        media.insert(name, state);
    }
    media
}

/// A backup (`*.anki2.zst`), decompressed into `scratch` and checked.
pub fn read_backup(path: &Path, scratch: &Path) -> Result<Notes, String> {
    let data = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let plain =
        zstd::decode_all(&data[..]).map_err(|e| format!("{}: zstd: {e}", path.display()))?;
    let copy = scratch.join("backup.anki2");
    fs::write(&copy, plain).map_err(|e| e.to_string())?;
    let read = read_collection(&copy, scratch, "backup-checked.anki2")?;
    Ok(read.notes)
}

/// One `media.db` row.
pub struct MediaRow {
    pub sha1: String,
    /// 0: deleted (the row keeps the last checksum).
    pub size: i64,
}

/// `media.db`'s rows and the SHA-1 of each file in `media/`.
pub struct Media {
    pub rows: BTreeMap<String, MediaRow>,
    pub files: BTreeMap<String, String>,
}

pub fn read_media(user_dir: &Path, scratch: &Path) -> Result<Media, String> {
    let mut files = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(user_dir.join("media")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let data = fs::read(entry.path()).map_err(|e| format!("media/{name}: {e}"))?;
            files.insert(name, sha1_hex(&data));
        }
    }
    let db = user_dir.join("media.db");
    let mut rows = BTreeMap::new();
    if db.exists() {
        let copy = scratch.join("media.db");
        copy_database(&db, &copy)?;
        let conn = Connection::open(&copy).map_err(|e| format!("media.db: {e}"))?;
        let integrity: String = conn
            .query_row("pragma integrity_check", [], |r| r.get(0))
            .map_err(|e| format!("media.db: integrity check: {e}"))?;
        if integrity != "ok" {
            return Err(format!("media.db: integrity check: {integrity}"));
        }
        // A database whose first commit a cut undid has no tables yet; the
        // server creates them when it opens it.
        let tables: i64 = conn
            .query_row(
                "select count() from sqlite_master where name = 'media'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| format!("media.db: {e}"))?;
        if tables == 0 {
            return Ok(Media { rows, files });
        }
        let mut stmt = conn
            .prepare("select fname, csum, size from media")
            .map_err(|e| format!("media.db: {e}"))?;
        let read = stmt
            .query_map([], |r| {
                let csum: Vec<u8> = r.get(1)?;
                let sha1 = csum.iter().map(|b| format!("{b:02x}")).collect();
                Ok((
                    r.get::<_, String>(0)?,
                    MediaRow {
                        sha1,
                        size: r.get(2)?,
                    },
                ))
            })
            .map_err(|e| format!("media.db: {e}"))?;
        for row in read {
            let (name, row) = row.map_err(|e| format!("media.db: {e}"))?;
            rows.insert(name, row);
        }
    }
    Ok(Media { rows, files })
}

/// Files anywhere under `base` named like a temporary file: ours end in
/// `.tmp` (or `.tmp-wal`, `.tmp-shm`, `.tmp-journal`: SQLite's side files of
/// a temporary database), the `tempfile` crate's (the official server's)
/// start with `.tmp`.
pub fn temp_files(base: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![base.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push(entry.path());
            } else if [".tmp", ".tmp-wal", ".tmp-shm", ".tmp-journal"]
                .iter()
                .any(|end| name.ends_with(end))
                || name.starts_with(".tmp")
            {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[test]
fn version_markers_are_read_from_fields() {
    assert_eq!(version_of("plain"), 0);
    assert_eq!(version_of("word #v12#\u{1f}back"), 12);
    assert_eq!(version_of("power cut 3.1 #v3#\u{1f}answer"), 3);
    assert_eq!(version_of("#v#x #v7#"), 7);
}
