//! One user's lock and what it guards: the collection connection (opened on
//! first use, closed when idle, so an idle server holds no database memory)
//! and the normal sync in progress, whose transaction is open on that
//! connection. The media store has its own lock beside it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};
use rusqlite::Connection;

use crate::backup::{self, Reason};
use crate::clock::now_millis;
use crate::collection::state::SyncState;
use crate::error::{Kind, SyncError};
use crate::media::MediaSlot;
use crate::storage::install;
use crate::storage::temp;
use crate::storage::{self, COLLECTION_FILE};

/// A normal sync left without a request for this long is rolled back.
const ABANDONED_SYNC: Duration = Duration::from_secs(30 * 60);
/// Uploads (full or media) one user may stream in at once: a device's
/// collection and another's media, say. More would let one account hold
/// many workers with slow bodies.
pub const MAX_UPLOADS: usize = 2;

pub struct UserSlot {
    pub name: String,
    pub(super) dir: PathBuf,
    state: Mutex<UserState>,
    /// Media store with its own lock, so media and collection syncs of one
    /// user never wait for or disturb each other.
    pub media: MediaSlot,
    /// Uploads streaming in now.
    uploads: AtomicUsize,
    /// Requests of this user being handled now, each holding one of the
    /// server's places for running requests (`SYNC_WORKERS`).
    requests: AtomicUsize,
}

/// The most requests one user may have handled at once when the server has
/// `workers` workers: half of them, so one user's queue (downloads to
/// clients that do not read, requests waiting for the user's lock) always
/// leaves the other half to everyone else; but at least two, so one device's
/// collection sync and media sync run side by side.
pub fn max_requests(workers: usize) -> usize {
    (workers / 2).max(2)
}

/// One request of a user being handled; its place is given back when dropped.
pub struct RequestPermit {
    slot: Arc<UserSlot>,
}

impl RequestPermit {
    pub fn slot(&self) -> &Arc<UserSlot> {
        &self.slot
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.slot.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Leave for one upload to stream in; returned when dropped.
pub struct UploadPermit<'a> {
    uploads: &'a AtomicUsize,
}

impl Drop for UploadPermit<'_> {
    fn drop(&mut self) {
        self.uploads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything guarded by a user's lock.
pub(super) struct UserState {
    dir: PathBuf,
    col: Option<Connection>,
    last_used: Instant,
    /// The open collection's page cache was given back since its last use.
    cache_released: bool,
    /// The normal sync in progress, if any; its transaction is open on `col`.
    pub(super) sync: Option<SyncState>,
}

pub(super) type UserGuard<'a> = MutexGuard<'a, UserState>;

impl UserSlot {
    /// Creates the user's folder (and `media/`), makes folders an older
    /// version left readable to others private, removes temporary files a
    /// crash left behind, writes the backup of a replaced collection a stop
    /// left staged, and opens the media store.
    pub(super) fn new(base: &Path, name: &str) -> io::Result<UserSlot> {
        let dir = base.join(name);
        crate::fsutil::create_dir_all_durable(&dir.join("media"))?;
        for folder in [dir.clone(), dir.join("media"), dir.join(backup::DIR)] {
            crate::fsutil::make_private_dir(&folder);
        }
        // After the media store finished or undid an upload a crash cut
        // short: until then its temporary files may hold contents to put back.
        let media = MediaSlot::open(&dir)?;
        temp::sweep(&dir);
        temp::sweep(&dir.join(backup::DIR));
        backup::finish_replaced(&dir);
        Ok(UserSlot {
            name: name.to_string(),
            dir: dir.clone(),
            media,
            uploads: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            state: Mutex::new(UserState {
                dir,
                col: None,
                last_used: Instant::now(),
                cache_released: false,
                sync: None,
            }),
        })
    }

    /// The user's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leave to stream an upload in, or [`Kind::Busy`] (429) if the user
    /// already runs [`MAX_UPLOADS`].
    pub fn upload_permit(&self) -> Result<UploadPermit<'_>, SyncError> {
        let running = self.uploads.fetch_add(1, Ordering::SeqCst);
        let permit = UploadPermit {
            uploads: &self.uploads,
        };
        if running >= MAX_UPLOADS {
            return Err(SyncError::new(
                Kind::Busy,
                format!("{running} uploads of {} are running already", self.name),
            ));
        }
        Ok(permit)
    }

    /// A place for one more request of this user, or at once a
    /// [`Kind::Conflict`] (409) if `max` are being handled already: the
    /// client says "only one copy of Anki can sync to your account at once;
    /// please wait a few minutes" rather than waiting on a worker. (The
    /// official server makes everyone wait behind one lock instead.)
    pub fn enter(self: &Arc<Self>, max: usize) -> Result<RequestPermit, SyncError> {
        let running = self.requests.fetch_add(1, Ordering::SeqCst);
        let permit = RequestPermit {
            slot: Arc::clone(self),
        };
        if running >= max {
            return Err(SyncError::conflict(format!(
                "{running} requests of {} are being handled already",
                self.name
            )));
        }
        Ok(permit)
    }

    /// Takes this user's lock. If an earlier request panicked while holding
    /// it, the connection is dropped (rolling back whatever it was doing)
    /// rather than trusted.
    pub(super) fn lock(&self) -> UserGuard<'_> {
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

    /// Closes the collection if it was unused for `idle`, and rolls back a
    /// normal sync abandoned mid-way (client crashed) after a while. Skips a
    /// user who is busy. Whether it closed the collection.
    pub(super) fn close_idle(&self, idle: Duration) -> bool {
        let Ok(mut state) = self.state.try_lock() else {
            return false;
        };
        let unused = state.last_used.elapsed();
        if state.sync.is_some() && unused < ABANDONED_SYNC {
            return false;
        }
        if state.col.is_some() && unused >= idle {
            state.close_collection();
            return true;
        }
        false
    }

    /// Gives back the page cache of a collection left open but unused for
    /// `after` (once per rest), so the pages other users' syncs load reuse
    /// its memory instead of adding to it. The connection, its schema and
    /// prepared statements stay: the next sync only reads its pages again,
    /// from the system's file cache. Skips a busy user and a normal sync in
    /// progress. Whether it released anything.
    pub(super) fn release_idle_cache(&self, after: Duration) -> bool {
        let Ok(mut state) = self.state.try_lock() else {
            return false;
        };
        if state.sync.is_some() || state.cache_released || state.last_used.elapsed() < after {
            return false;
        }
        let Some(col) = state.col.as_ref() else {
            return false;
        };
        if let Err(e) = col.release_memory() {
            warn!("releasing the page cache of {}: {e}", self.name);
        }
        state.cache_released = true;
        true
    }

    #[cfg(test)]
    pub(super) fn state_is_locked(&self) -> bool {
        self.state.try_lock().is_err()
    }

    /// Closes the collection, waiting for a request that uses it (shutdown).
    pub(super) fn close(&self) {
        self.lock().close_collection();
    }
}

impl UserState {
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn collection_path(&self) -> PathBuf {
        self.dir.join(COLLECTION_FILE)
    }

    /// The user's collection, opened (and created, for a first-time user)
    /// on first use. Outside a normal sync, a restore staged by `backup
    /// restore` is swapped in first, so it never lands mid-sync.
    pub(super) fn collection(&mut self) -> Result<&mut Connection, SyncError> {
        self.last_used = Instant::now();
        self.cache_released = false;
        if self.sync.is_none() {
            self.apply_pending_restore();
        }
        let col = match self.col.take() {
            Some(col) => col,
            None => {
                let path = self.collection_path();
                if !path.exists() {
                    info!("creating a new collection at {}", path.display());
                    storage::create_collection(&path, now_millis())?;
                }
                storage::open(&path)?
            }
        };
        Ok(self.col.insert(col))
    }

    /// The open collection together with the sync state, for the sync steps.
    pub(super) fn collection_and_sync(
        &mut self,
    ) -> Result<(&mut Connection, &mut Option<SyncState>), SyncError> {
        self.collection()?;
        match self.col.as_mut() {
            Some(col) => Ok((col, &mut self.sync)),
            None => Err(SyncError::internal("the collection closed while opening")),
        }
    }

    /// Swaps in a restore staged by `backup restore`, if there is one, after
    /// backing up the collection it replaces (so a restore can be undone).
    fn apply_pending_restore(&mut self) {
        let Some(pending) = backup::pending_restore(&self.dir) else {
            return;
        };
        self.backup(Reason::BeforeRestore);
        // The staged file leaves backups/ too: that must be durable, or after a
        // power cut it would be there again and undo every sync since.
        let applied = install::replace_collection(&self.collection_path(), &pending)
            .and_then(|()| crate::fsutil::sync_dir(&backup::backups_dir(&self.dir)));
        match applied {
            Ok(()) => info!(
                "restored a backup into {}; devices will be asked to full-sync",
                self.collection_path().display()
            ),
            Err(e) => warn!("applying the restore staged at {}: {e}", pending.display()),
        }
    }

    /// The day's first backup, written in the background from a pinned
    /// state of the open collection ([`backup::daily_in_background`]), so
    /// the sync does not wait for it; a collection in rollback-journal mode
    /// is backed up, closed, before the sync instead. A failed backup only
    /// warns.
    /// The sync keeps the returned hold: the backup compresses once it is
    /// dropped ([`backup::Hold`]).
    pub(super) fn daily_backup(&mut self) -> Option<backup::Hold> {
        let dir = self.dir.clone();
        let (hold, release) = backup::hold();
        let started = self
            .collection()
            .map_err(|e| e.to_string())
            .and_then(|col| {
                backup::daily_in_background(&dir, col, Some(release)).map_err(|e| e.to_string())
            });
        match started {
            Ok(backup::Daily::Background(_)) => return Some(hold),
            Ok(backup::Daily::NotWal) => self.backup(Reason::Daily),
            Ok(backup::Daily::Skipped) => {}
            Err(e) => warn!("daily backup in {} failed: {e}", dir.display()),
        }
        None
    }

    /// Takes a backup of the collection, closing it first (the next use
    /// reopens it). A failed backup only warns.
    pub(super) fn backup(&mut self, reason: Reason) {
        self.close_collection();
        backup::take(&self.dir, reason);
    }

    /// Ends any normal sync in progress, rolling back what it applied.
    pub(super) fn abort_sync(&mut self) {
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

    /// Closes the connection (SQLite checkpoints and removes the WAL when the
    /// last connection closes).
    pub(super) fn close_collection(&mut self) {
        self.abort_sync();
        if let Some(col) = self.col.take() {
            if let Err((_, e)) = col.close() {
                warn!("closing collection in {}: {e}", self.dir.display());
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_open(&self) -> bool {
        self.col.is_some()
    }
}
