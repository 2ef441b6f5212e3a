//! Full sync: a client replaces the server's collection (`upload`) or takes
//! a copy of it (`download`).
//!
//! An upload is streamed to a temporary file next to the collection,
//! checked, and only then renamed over the old file (by the per-user layer,
//! under the user's lock), so a failed, rejected or interrupted upload (even
//! a crash) leaves the old collection as it was. Receiving and checking need
//! no lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use log::warn;
use rusqlite::Connection;

use crate::clock::now_millis;
use crate::error::{OrSyncError, SyncError};
use crate::fsutil::sidecar;
use crate::storage::{self, COLLECTION_FILE, TEMP_SUFFIX};

/// The body of a successful upload: two ASCII bytes, not JSON.
pub const UPLOAD_OK: &str = "OK";
/// Clients show any other upload answer to the user; these are upstream's texts.
pub const UPLOAD_CORRUPT: &str =
    "Your upload was corrupt. Please use Check Database, or restore from backup.";
pub const UPLOAD_TOO_LARGE: &str = "collection exceeds size limit";
pub const UPLOAD_NOT_STORED: &str = "The sync server could not store your collection (its disk may be full). Your collection on the server was not changed.";

/// Schema version of the collections we store and serve to current clients.
pub const SCHEMA_VERSION: i64 = 18;

/// A temporary file that is deleted unless it was installed.
pub struct TempFile {
    path: PathBuf,
    installed: bool,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the checked collection over `target` (see
    /// [`storage::replace_collection`]) and keeps it.
    pub fn replace_collection(mut self, target: &Path) -> io::Result<()> {
        storage::replace_collection(target, &self.path)?;
        self.installed = true;
        Ok(())
    }

    /// Renames the file to `to` (in the same file system) and keeps it.
    pub fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.installed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.installed {
            for path in [
                self.path.clone(),
                sidecar(&self.path, "-wal"),
                sidecar(&self.path, "-shm"),
            ] {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Why receiving an upload failed.
#[derive(Debug)]
pub enum ReceiveError {
    /// Reading the request body failed (bad compression, limit, connection).
    Body(io::Error),
    /// Writing the temporary file failed (disk full, permissions).
    Disk(io::Error),
}

/// Streams the upload body into a new temporary file in `dir`, fsynced.
pub fn receive(dir: &Path, body: &mut dyn Read) -> Result<TempFile, ReceiveError> {
    let path = dir.join(format!(
        "{COLLECTION_FILE}.upload-{}-{:x}{TEMP_SUFFIX}",
        std::process::id(),
        random_u64()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(ReceiveError::Disk)?;
    let temp = TempFile {
        path,
        installed: false,
    };
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
    file.sync_all().map_err(ReceiveError::Disk)?;
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
    let conn = storage::open(temp.path()).or_bad_request("cannot open")?;
    let result = check_collection(&conn, temp.path());
    if let Err((_, e)) = conn.close() {
        warn!("closing checked upload: {e}");
    }
    result
}

fn check_collection(conn: &Connection, path: &Path) -> Result<(), SyncError> {
    // Before the integrity check, which would evaluate index expressions.
    let removed = storage::sanitize::sanitize_upload(conn).map_err(SyncError::bad_request)?;
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
        11 | 14..=17 => storage::legacy::upgrade_to_schema18(conn)
            .or_bad_request(format!("upgrading a schema-{ver} upload")),
        other => Err(SyncError::bad_request(format!(
            "unsupported schema version {other}"
        ))),
    }
}

/// Prepares a collection for a full download: bumps `usn` and sets `mod` to
/// now (as upstream does, so other devices notice), then checkpoints so the
/// main file alone is complete. The caller holds the user's lock until the
/// file has been sent.
pub fn prepare_download(col: &Connection, now_ms: i64) -> Result<(), SyncError> {
    col.execute("update col set usn = usn + 1, mod = ?", [now_ms])?;
    let busy: i64 = col.query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(SyncError::internal(
            "collection is busy; checkpoint incomplete",
        ));
    }
    Ok(())
}

/// For clients before 2.1.57: a schema-11 rendition of the (prepared)
/// collection, written to a private temporary copy in `dir` (the stored
/// schema-18 file is only read). The copy is unlinked as soon as it is open,
/// so it vanishes when sent, even if the server dies mid-way; no lock is
/// needed while sending it.
pub fn legacy_copy(col: &Connection, dir: &Path) -> Result<(File, u64), SyncError> {
    let temp = TempFile {
        path: dir.join(format!(
            "{COLLECTION_FILE}.legacy-{}-{:x}{TEMP_SUFFIX}",
            std::process::id(),
            random_u64()
        )),
        installed: false,
    };
    storage::legacy::write_schema11_copy(col, temp.path())
        .or_internal("writing the schema-11 copy")?;
    let file = File::open(temp.path())?;
    let len = file.metadata()?.len();
    drop(temp);
    Ok((file, len))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        return now_millis() as u64;
    }
    u64::from_le_bytes(bytes)
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
        storage::create_collection(&original, 1_780_000_000_000).unwrap();
        let legacy = dir.path().join("legacy.anki2");
        storage::legacy::write_schema11_copy(&storage::open(&original).unwrap(), &legacy).unwrap();

        let t = temp_with(dir.path(), &fs::read(&legacy).unwrap());
        validate(&t).unwrap();
        let conn = storage::open(t.path()).unwrap();
        assert_eq!(storage::schema_version(&conn).unwrap(), SCHEMA_VERSION);
        let decks: i64 = conn
            .query_row("select count(*) from decks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decks, 1);

        // Schemas 12, 13 and beyond 18 stay refused, also when the rest would upgrade.
        for ver in [12, 13, 19] {
            let c = storage::open(&legacy).unwrap();
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
            assert!(t.path().to_string_lossy().ends_with(TEMP_SUFFIX));
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
