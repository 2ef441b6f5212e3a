//! Per-user state and locking. Each user has a folder under `SYNC_BASE`
//! (the official server's layout), one lock and at most one open SQLite
//! connection. Users never wait on each other; one user's requests run one
//! at a time. Connections are opened on demand and closed when idle, so an
//! idle server holds no database memory.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use log::{info, warn};
use rusqlite::Connection;

use crate::collection::state::SyncState;
use crate::media::MediaSlot;
use crate::storage;

/// File name of a user's collection, as the official server names it.
pub const COLLECTION_FILE: &str = "collection.anki2";
/// Temporary files we create end in this, so start-up can clean leftovers.
pub const TEMP_SUFFIX: &str = ".tmp";
/// A normal sync left without a request for this long is rolled back.
const ABANDONED_SYNC: Duration = Duration::from_secs(30 * 60);

/// Everything guarded by a user's lock.
pub struct UserState {
    dir: PathBuf,
    col: Option<Connection>,
    last_used: Instant,
    /// The normal sync in progress, if any; its transaction is open on `col`.
    sync: Option<SyncState>,
}

pub type UserGuard<'a> = MutexGuard<'a, UserState>;

impl UserState {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn collection_path(&self) -> PathBuf {
        self.dir.join(COLLECTION_FILE)
    }

    /// The user's collection, opened (and created, for a first-time user)
    /// on first use.
    pub fn collection(&mut self) -> rusqlite::Result<&mut Connection> {
        self.last_used = Instant::now();
        // A restore staged by `backup restore` takes effect here, under the
        // lock, and never in the middle of a normal sync.
        if self.sync.is_none() {
            crate::backup::apply_pending_restore(self);
        }
        if self.col.is_none() {
            let path = self.collection_path();
            if !path.exists() {
                info!("creating a new collection at {}", path.display());
                storage::create_collection(&path, now_millis())?;
            }
            self.col = Some(storage::open(&path)?);
        }
        match self.col.as_mut() {
            Some(col) => Ok(col),
            None => Err(rusqlite::Error::InvalidQuery),
        }
    }

    /// The open collection together with the sync state, for the normal
    /// sync handlers (opening the collection if needed).
    pub fn sync_parts(&mut self) -> rusqlite::Result<(&mut Connection, &mut Option<SyncState>)> {
        self.collection()?;
        match self.col.as_mut() {
            Some(col) => Ok((col, &mut self.sync)),
            None => Err(rusqlite::Error::InvalidQuery),
        }
    }

    /// Ends any normal sync in progress, rolling back what it applied.
    /// `meta`, full upload/download, `abort` and a new `start` all do this.
    pub fn abort_sync(&mut self) {
        if self.sync.take().is_some() {
            if let Some(col) = &self.col {
                if let Err(e) = col.execute_batch("rollback") {
                    warn!(
                        "rolling back an abandoned sync in {}: {e}",
                        self.dir.display()
                    );
                }
            }
        }
    }

    /// Drops the sync state after its transaction was committed.
    pub fn forget_sync(&mut self) {
        self.sync = None;
    }

    pub fn sync_active(&self) -> bool {
        self.sync.is_some()
    }

    /// Closes the connection (SQLite checkpoints and removes the WAL when the
    /// last connection closes).
    pub fn close_collection(&mut self) {
        self.abort_sync();
        if let Some(col) = self.col.take() {
            if let Err((_, e)) = col.close() {
                warn!("closing collection in {}: {e}", self.dir.display());
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.col.is_some()
    }
}

pub struct UserSlot {
    pub name: String,
    state: Mutex<UserState>,
    /// Media store with its own lock, so media and collection syncs of one
    /// user never wait for or disturb each other.
    pub media: MediaSlot,
}

impl UserSlot {
    /// Takes this user's lock. If an earlier request panicked while holding
    /// it, the connection is dropped (rolling back whatever it was doing)
    /// rather than trusted.
    pub fn lock(&self) -> UserGuard<'_> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                warn!("user {}: recovering after a failed request", self.name);
                let mut guard = poisoned.into_inner();
                // Dropping the connection rolls back any open transaction.
                guard.sync = None;
                guard.col = None;
                self.state.clear_poison();
                guard
            }
        }
    }
}

/// All users' slots: built at start-up, grown when the users file gains a
/// user, shrunk when it loses one. The map's lock is only held to look a
/// slot up (or to create one); requests then use their own `Arc`, so users
/// never wait on each other.
pub struct UserStore {
    base: PathBuf,
    slots: RwLock<HashMap<String, Arc<UserSlot>>>,
}

impl UserStore {
    /// Creates each user's folder (and `media/`) like the official server
    /// does at start-up, and removes temporary files a crash left behind.
    pub fn new<'a>(base: &Path, names: impl Iterator<Item = &'a str>) -> io::Result<UserStore> {
        let mut slots = HashMap::new();
        for name in names {
            slots.insert(name.to_string(), Arc::new(new_slot(base, name)?));
        }
        Ok(UserStore {
            base: base.to_path_buf(),
            slots: RwLock::new(slots),
        })
    }

    pub fn slot(&self, name: &str) -> Option<Arc<UserSlot>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.get(name).cloned()
    }

    /// The user's slot, creating their folder and slot if they were added
    /// since start-up. Created under the map's write lock, so there is only
    /// ever one slot per user (its start-up clean-up must not race a request).
    pub fn open(&self, name: &str) -> io::Result<Arc<UserSlot>> {
        if let Some(slot) = self.slot(name) {
            return Ok(slot);
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(name) {
            return Ok(Arc::clone(slot));
        }
        let slot = Arc::new(new_slot(&self.base, name)?);
        slots.insert(name.to_string(), Arc::clone(&slot));
        Ok(slot)
    }

    /// Drops a removed user's slot (their data stays on disk). Requests
    /// already running keep their `Arc`; the collection closes when the last
    /// one ends.
    pub fn forget(&self, name: &str) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots.remove(name);
    }

    /// The slots as they are now, without holding the map's lock after.
    fn all(&self) -> Vec<Arc<UserSlot>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.values().cloned().collect()
    }

    /// Closes collections and media databases unused for `idle`. Skips
    /// users that are busy.
    pub fn close_idle(&self, idle: Duration) {
        for slot in self.all() {
            slot.media.close_idle(idle);
            if let Ok(mut state) = slot.state.try_lock() {
                let unused = state.last_used.elapsed();
                // A sync abandoned mid-way (client crashed) is rolled back
                // after a while; an idle collection is simply closed.
                if state.sync_active() && unused < ABANDONED_SYNC {
                    continue;
                }
                if state.is_open() && unused >= idle {
                    state.close_collection();
                }
            }
        }
    }

    /// Closes every collection and media database (at shutdown), once the
    /// daily backups still being written are on disk.
    pub fn close_all(&self) {
        crate::backup::wait_all();
        for slot in self.all() {
            slot.lock().close_collection();
            slot.media.close();
        }
    }
}

/// Creates the user's folder (and `media/`), makes folders an older version
/// left readable to others private, removes temporary files a crash left
/// behind, and opens the media store.
fn new_slot(base: &Path, name: &str) -> io::Result<UserSlot> {
    let dir = base.join(name);
    crate::fsutil::create_dir_all_durable(&dir.join("media"))?;
    for folder in [dir.clone(), dir.join("media"), dir.join(crate::backup::DIR)] {
        crate::fsutil::make_private_dir(&folder);
    }
    crate::fsutil::remove_leftover_temp_files(&dir, |name| {
        name.starts_with(COLLECTION_FILE) && name.contains(TEMP_SUFFIX)
    });
    crate::backup::remove_abandoned_temp_files(&dir);
    let media = MediaSlot::open(&dir)?;
    Ok(UserSlot {
        name: name.to_string(),
        media,
        state: Mutex::new(UserState {
            dir,
            col: None,
            last_used: Instant::now(),
            sync: None,
        }),
    })
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn start_up_creates_folders_and_removes_leftovers() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("alice");
        fs::create_dir_all(&dir).unwrap();
        let leftover = dir.join("collection.anki2.upload-1-2.tmp");
        fs::write(&leftover, b"partial").unwrap();
        fs::write(dir.join("keep.txt"), b"x").unwrap();
        let store = UserStore::new(base.path(), ["alice", "bob"].into_iter()).unwrap();
        assert!(!leftover.exists());
        assert!(dir.join("keep.txt").exists());
        assert!(base.path().join("bob/media").is_dir());
        assert!(store.slot("alice").is_some());
        assert!(store.slot("carol").is_none());
    }

    #[test]
    fn users_can_be_added_and_forgotten_at_run_time() {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["alice"].into_iter()).unwrap();
        let carol = store.open("carol").unwrap();
        assert!(base.path().join("carol/media").is_dir());
        assert!(Arc::ptr_eq(&carol, &store.open("carol").unwrap()));
        carol.lock().collection().unwrap();
        store.forget("carol");
        assert!(store.slot("carol").is_none());
        // A request still holding the slot finishes normally; the data stays.
        assert!(carol.lock().is_open());
        drop(carol);
        assert!(base.path().join("carol").join(COLLECTION_FILE).is_file());
        store.close_all();
    }
}
