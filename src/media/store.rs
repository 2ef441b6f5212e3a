//! One user's media store behind its own lock, separate from the collection
//! lock: a media sync never waits for, nor aborts, a collection sync. This
//! file holds the store itself (the lock, `media.db`, the folder); uploads
//! are in `upload.rs`, downloads in `download.rs`.
//!
//! Like the collection, `media.db` is opened on first use and closed when
//! idle: a server at rest holds no database memory and has not even loaded
//! SQLite's code.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use rusqlite::Connection;

use super::CHANGES_PAGE;
use super::db::{self, Change, Meta};
use super::upload::{JOURNAL, recover_interrupted_upload};
use super::zip::ZipError;
use crate::error::SyncError;

/// The flat folder of media files inside a user's folder.
pub const MEDIA_DIR: &str = "media";
pub(super) const COPY_BUFFER: usize = 64 * 1024;

/// A user's media lock, database and folder.
pub struct MediaSlot {
    pub(super) user_dir: PathBuf,
    pub(super) media_dir: PathBuf,
    db: Mutex<MediaDb>,
    /// `meta.last_usn`, readable without the lock (for `/sync/meta`, which
    /// must not wait for a media upload); [`USN_UNKNOWN`] until the
    /// database was first read. Only this server writes `media.db` while it
    /// runs, so the value stays right while the connection is closed.
    pub(super) usn: AtomicI32,
}

const USN_UNKNOWN: i32 = -1;

/// What the media lock guards: the connection, when open.
struct MediaDb {
    conn: Option<Connection>,
    last_used: Instant,
}

pub(super) fn open_db(user_dir: &Path) -> io::Result<Connection> {
    let path = user_dir.join(db::DB_FILE);
    db::open(&path).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

pub(super) fn read_usn(user_dir: &Path, conn: &Connection) -> io::Result<i32> {
    db::meta(conn)
        .map(|meta| meta.last_usn)
        .map_err(|e| io::Error::other(format!("{}: {e}", user_dir.join(db::DB_FILE).display())))
}

pub(super) fn close_db(user_dir: &Path, conn: Connection) {
    if let Err((_, e)) = conn.close() {
        warn!("closing {}: {e}", user_dir.join(db::DB_FILE).display());
    }
}

pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn bad(message: String) -> SyncError {
    SyncError::bad_request(message)
}

pub(super) fn zip_error(e: ZipError) -> SyncError {
    match e {
        ZipError::Malformed(m) => SyncError::bad_request(format!("upload zip: {m}")),
        ZipError::Io(e) => SyncError::internal("reading the spooled upload").with_source(e),
    }
}

pub(super) fn disk(what: &str, e: io::Error) -> SyncError {
    SyncError::internal(what).with_source(e)
}

impl MediaSlot {
    /// Creates `media/` if needed (as the official server does for every
    /// user at start-up) and finishes or undoes an upload a crash
    /// interrupted (before the user's folder is swept of temporary files:
    /// they may hold contents to put back). `media.db` is created on first use;
    /// it is only opened here when a journal needs its USN, and is closed
    /// again before serving.
    pub fn open(user_dir: &Path) -> io::Result<MediaSlot> {
        let media_dir = user_dir.join(MEDIA_DIR);
        crate::fsutil::create_dir_all_durable(&media_dir)?;
        let mut usn = USN_UNKNOWN;
        if user_dir.join(JOURNAL).exists() {
            let conn = open_db(user_dir)?;
            usn = read_usn(user_dir, &conn)?;
            recover_interrupted_upload(user_dir, usn);
            close_db(user_dir, conn);
        }
        Ok(MediaSlot {
            user_dir: user_dir.to_path_buf(),
            media_dir,
            db: Mutex::new(MediaDb {
                conn: None,
                last_used: Instant::now(),
            }),
            usn: AtomicI32::new(usn),
        })
    }

    /// The current media USN, without waiting for the lock once it is
    /// known (the first call after start-up reads the database).
    pub fn usn(&self) -> Result<i32, SyncError> {
        match self.usn.load(Ordering::SeqCst) {
            USN_UNKNOWN => self.with_db(|conn| Ok(db::meta(conn)?.last_usn)),
            usn => Ok(usn),
        }
    }

    /// Takes the media lock. A panic while it was held dropped any open
    /// transaction (rolling it back), so the connection is still good.
    fn lock(&self) -> MutexGuard<'_, MediaDb> {
        self.db.lock().unwrap_or_else(|poisoned| {
            warn!(
                "media store in {}: recovering after a failed request",
                self.user_dir.display()
            );
            self.db.clear_poison();
            poisoned.into_inner()
        })
    }

    /// Runs `work` under the media lock on the connection, opening it
    /// first if it is closed.
    pub(super) fn with_db<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut guard = self.lock();
        guard.last_used = Instant::now();
        let conn = match guard.conn.take() {
            Some(conn) => conn,
            None => {
                let conn = open_db(&self.user_dir)?;
                let usn = read_usn(&self.user_dir, &conn)?;
                self.usn.store(usn, Ordering::SeqCst);
                conn
            }
        };
        work(guard.conn.insert(conn))
    }

    /// Closes the connection if it was unused for `idle`; skips a busy store.
    /// Whether it closed it.
    pub fn close_idle(&self, idle: Duration) -> bool {
        if let Ok(mut guard) = self.db.try_lock() {
            if guard.last_used.elapsed() >= idle {
                if let Some(conn) = guard.conn.take() {
                    close_db(&self.user_dir, conn);
                    return true;
                }
            }
        }
        false
    }

    /// Closes the connection, waiting for a request that uses it (shutdown).
    pub fn close(&self) {
        if let Some(conn) = self.lock().conn.take() {
            close_db(&self.user_dir, conn);
        }
    }

    pub fn meta(&self) -> Result<Meta, SyncError> {
        self.with_db(|conn| Ok(db::meta(conn)?))
    }

    /// `mediaChanges`: one page of changes after `after`.
    pub fn changes(&self, after: i64) -> Result<Vec<Change>, SyncError> {
        self.with_db(|conn| Ok(db::changes(conn, after, CHANGES_PAGE)?))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::media::upload::tests::upload;
    use std::fs;

    pub(crate) fn slot() -> (tempfile::TempDir, MediaSlot) {
        let dir = tempfile::tempdir().unwrap();
        let slot = MediaSlot::open(dir.path()).unwrap();
        (dir, slot)
    }

    #[test]
    fn database_is_opened_on_first_use_and_closed_when_idle() {
        let (dir, slot) = slot();
        let db_file = dir.path().join(db::DB_FILE);
        let wal = dir.path().join("media.db-wal");
        assert!(!db_file.exists(), "start-up must not open media.db");
        assert_eq!(slot.usn().unwrap(), 0);
        assert!(db_file.exists());
        upload(&slot, &[("a.txt", Some(b"one"))]).unwrap();
        assert!(wal.exists(), "open in WAL mode after a write");
        assert!(!slot.close_idle(Duration::from_secs(3600)));
        assert!(wal.exists(), "used just now: stays open");
        assert!(slot.close_idle(Duration::ZERO));
        assert!(!wal.exists(), "closing checkpoints and removes the WAL");
        assert!(!slot.close_idle(Duration::ZERO), "nothing left open");
        // Reopened on demand, with everything in it.
        assert_eq!(slot.meta().unwrap().last_usn, 1);
        assert_eq!(slot.changes(0).unwrap().len(), 1);
        slot.close();
        assert!(!wal.exists());
        // A restart learns the USN on first use.
        let again = MediaSlot::open(dir.path()).unwrap();
        assert_eq!(again.usn().unwrap(), 1);
    }

    pub(crate) fn on_disk(dir: &Path, name: &str) -> Option<Vec<u8>> {
        fs::read(dir.join(MEDIA_DIR).join(name)).ok()
    }

    pub(crate) fn temp_files_left(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    pub(crate) fn counters(slot: &MediaSlot) -> (i32, i64, i64) {
        let m = slot.meta().unwrap();
        (m.last_usn, m.total_bytes, m.total_nonempty_files)
    }

    #[test]
    fn reopening_keeps_the_store() {
        let (dir, slot) = slot();
        upload(&slot, &[("a.txt", Some(b"aaa"))]).unwrap();
        drop(slot);
        let slot = MediaSlot::open(dir.path()).unwrap();
        assert_eq!(slot.usn().unwrap(), 1);
        assert!(temp_files_left(dir.path()).is_empty());
    }
}
