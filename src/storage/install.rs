//! Installing a collection file: streaming an upload (or a backup being
//! restored) into a temporary file beside the collection, checking that it
//! is a collection we can store, and renaming it over the user's collection
//! durably. A rejected or interrupted upload, even a crash, leaves the old
//! collection as it was.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use log::warn;
use rusqlite::Connection;

use super::temp::TempFile;
use crate::error::{OrSyncError, SyncError};
use crate::fsutil::{sidecar, sync_parent};

/// Schema version of the collections we store and serve to current clients.
pub const SCHEMA_VERSION: i64 = 18;

/// Why receiving an upload failed.
#[derive(Debug)]
pub enum ReceiveError {
    /// Reading the request body failed (bad compression, limit, connection).
    Body(io::Error),
    /// Writing the temporary file failed (disk full, permissions).
    Disk(io::Error),
}

/// Streams the upload body into a new temporary file in `dir` (made
/// durable when it is installed).
pub fn receive(dir: &Path, body: &mut dyn Read) -> Result<TempFile, ReceiveError> {
    let (temp, mut file) = TempFile::create(dir, "upload").map_err(ReceiveError::Disk)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReceiveError::Body(e)),
        };
        file.write_all(&buf[..n]).map_err(ReceiveError::Disk)?;
    }
    Ok(temp)
}

/// Checks that an uploaded file is a collection we can store, upgrading a
/// schema-11 upload to 18 in place. The error (a bad request) is the reason,
/// for the log; the client is told [`UPLOAD_CORRUPT`].
pub fn validate(temp: &TempFile) -> Result<(), SyncError> {
    let mut header = [0u8; 16];
    File::open(temp.path())
        .and_then(|mut f| f.read_exact(&mut header))
        .or_bad_request("too short to be a SQLite file")?;
    if &header != b"SQLite format 3\0" {
        return Err(SyncError::bad_request("not a SQLite file"));
    }
    let conn = super::open(temp.path()).or_bad_request("cannot open")?;
    let result = check_collection(&conn, temp.path());
    if let Err((_, e)) = conn.close() {
        warn!("closing checked upload: {e}");
    }
    result
}

fn check_collection(conn: &Connection, path: &Path) -> Result<(), SyncError> {
    // Before the integrity check, which would evaluate index expressions.
    let removed = super::sanitize::sanitize_upload(conn).map_err(SyncError::bad_request)?;
    if !removed.is_empty() {
        warn!(
            "upload {}: removed what Anki does not create and could run code: {}",
            path.display(),
            removed.join(", ")
        );
    }
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .or_bad_request("integrity check failed to run")?;
    if integrity != "ok" {
        return Err(SyncError::bad_request(format!(
            "integrity check: {integrity}"
        )));
    }
    let ver: i64 = conn
        .query_row("select ver from col", [], |r| r.get(0))
        .or_bad_request("no collection in the file")?;
    match ver {
        SCHEMA_VERSION => Ok(()),
        // Legacy clients downgrade to 11 before uploading; no client sends
        // 14 to 17, but the official server takes them, so we do. The temp
        // file is private to this request, so upgrading it in place is
        // atomic with the later rename.
        11 | 14..=17 => super::legacy::upgrade_to_schema18(conn)
            .or_bad_request(format!("upgrading a schema-{ver} upload")),
        other => Err(SyncError::bad_request(format!(
            "unsupported schema version {other}"
        ))),
    }
}

/// Renames a checked collection file over `target` (the user's collection),
/// durably. Every connection to `target` must be closed (the caller holds
/// the user's lock and has closed the collection).
pub fn install(temp: TempFile, target: &Path) -> io::Result<()> {
    temp.persist_with(target, |from, to| {
        retire_stale_wal(to);
        fs::rename(from, to)
    })
}

/// Like [`install`], for a file that is already durable under its own name
/// (a restore staged by `backup restore`).
pub fn replace_collection(target: &Path, from: &Path) -> io::Result<()> {
    retire_stale_wal(target);
    fs::rename(from, target)?;
    sync_parent(target)
}

/// A WAL left next to the old file (after a crash) would be applied to the
/// new file by SQLite. Fold it into the old file first, then make sure it
/// is gone before the new file takes the name.
fn retire_stale_wal(target: &Path) {
    let wal = sidecar(target, "-wal");
    if wal.exists() {
        match super::open(target).and_then(|c| {
            c.query_row("pragma wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            c.close().map_err(|(_, e)| e)
        }) {
            Ok(()) => {}
            Err(e) => warn!("checkpointing the old collection before replacing it: {e}"),
        }
    }
    for path in [wal, sidecar(target, "-shm")] {
        if path.exists() {
            if let Err(e) = fs::remove_file(&path) {
                warn!("removing {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_with(dir: &Path, bytes: &[u8]) -> TempFile {
        receive(dir, &mut &bytes[..]).unwrap()
    }

    #[test]
    fn rejects_what_is_not_a_collection() {
        let dir = tempfile::tempdir().unwrap();
        let t = temp_with(dir.path(), b"");
        assert!(validate(&t).unwrap_err().to_string().contains("too short"));
        let t = temp_with(dir.path(), &[b'x'; 4096]);
        assert!(
            validate(&t)
                .unwrap_err()
                .to_string()
                .contains("not a SQLite")
        );

        // A valid SQLite file that is not a collection.
        let plain = dir.path().join("plain.db");
        Connection::open(&plain)
            .unwrap()
            .execute_batch("create table t (x)")
            .unwrap();
        let t = temp_with(dir.path(), &fs::read(&plain).unwrap());
        assert!(
            validate(&t)
                .unwrap_err()
                .to_string()
                .contains("no collection")
        );

        // A truncated collection.
        let col = dir.path().join("col.db");
        let c = Connection::open(&col).unwrap();
        c.execute_batch(
            "create table col (ver integer); insert into col values (18);
             create table big (x); ",
        )
        .unwrap();
        for i in 0..2000 {
            c.execute("insert into big values (?)", [format!("{i:0100}")])
                .unwrap();
        }
        drop(c);
        let bytes = fs::read(&col).unwrap();
        let t = temp_with(dir.path(), &bytes[..bytes.len() / 2]);
        assert!(validate(&t).is_err());

        let t = temp_with(dir.path(), &bytes);
        assert!(validate(&t).is_ok());
        // Wrong schema versions.
        Connection::open(&col)
            .unwrap()
            .execute("update col set ver = 13", [])
            .unwrap();
        let t = temp_with(dir.path(), &fs::read(&col).unwrap());
        assert!(
            validate(&t)
                .unwrap_err()
                .to_string()
                .contains("unsupported schema")
        );
    }

    #[test]
    fn schema11_uploads_are_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original.anki2");
        super::super::create_collection(&original, 1_780_000_000_000).unwrap();
        let legacy = dir.path().join("legacy.anki2");
        super::super::legacy::write_schema11_copy(&super::super::open(&original).unwrap(), &legacy)
            .unwrap();

        let t = temp_with(dir.path(), &fs::read(&legacy).unwrap());
        validate(&t).unwrap();
        let conn = super::super::open(t.path()).unwrap();
        assert_eq!(super::super::schema_version(&conn).unwrap(), SCHEMA_VERSION);
        let decks: i64 = conn
            .query_row("select count(*) from decks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decks, 1);

        // Schemas 12, 13 and beyond 18 stay refused, also when the rest would upgrade.
        for ver in [12, 13, 19] {
            let c = super::super::open(&legacy).unwrap();
            c.execute("update col set ver = ?", [ver]).unwrap();
            drop(c);
            let t = temp_with(dir.path(), &fs::read(&legacy).unwrap());
            assert!(validate(&t).is_err(), "schema {ver} accepted");
        }
    }

    #[test]
    fn dropped_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let t = temp_with(dir.path(), b"abc");
            assert!(t.path().exists());
            assert!(t.path().to_string_lossy().ends_with(".tmp"));
            t.path().to_path_buf()
        };
        assert!(!path.exists());
    }

    #[test]
    fn body_and_disk_errors_are_told_apart() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("bad zstd"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            receive(dir.path(), &mut Broken),
            Err(ReceiveError::Body(_))
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            receive(&missing, &mut &b"x"[..]),
            Err(ReceiveError::Disk(_))
        ));
    }
}
