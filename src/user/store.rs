//! All users' slots: built at start-up, grown when the users file gains a
//! user, shrunk when it loses one. The map's lock is only held to look a
//! slot up (or to create one); requests then use their own `Arc`, so users
//! never wait on each other.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::slot::UserSlot;
use crate::layout::SPILL_DIR;
use crate::storage::temp;

pub struct UserStore {
    base: PathBuf,
    slots: RwLock<HashMap<String, Arc<UserSlot>>>,
}

impl UserStore {
    /// Creates each user's folder (and `media/`) like the official server
    /// does at start-up, and removes temporary files a crash left behind:
    /// in each user's folder (see [`UserSlot`]) and in `.spill`.
    pub fn new<'a>(base: &Path, names: impl Iterator<Item = &'a str>) -> io::Result<UserStore> {
        temp::sweep(&base.join(SPILL_DIR));
        let mut slots = HashMap::new();
        for name in names {
            slots.insert(name.to_string(), Arc::new(UserSlot::new(base, name)?));
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
        let slot = Arc::new(UserSlot::new(&self.base, name)?);
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
    /// users that are busy. Whether it closed anything.
    pub fn close_idle(&self, idle: Duration) -> bool {
        let mut closed = false;
        for slot in self.all() {
            closed |= slot.media.close_idle(idle);
            closed |= slot.close_idle(idle);
        }
        closed
    }

    /// Gives back the page caches of open collections unused for `after`
    /// (see [`UserSlot::release_idle_cache`]). Whether it released any.
    pub fn release_idle_caches(&self, after: Duration) -> bool {
        let mut released = false;
        for slot in self.all() {
            released |= slot.release_idle_cache(after);
        }
        released
    }

    /// Closes every collection and media database (at shutdown), then
    /// waits until the day's first backups still being written are on disk
    /// (closing ends the syncs they were waiting for; each backup reads its
    /// own pinned connection, which closing the user's does not disturb).
    pub fn close_all(&self) {
        for slot in self.all() {
            slot.close();
            slot.media.close();
        }
        crate::backup::wait_all();
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::COLLECTION_FILE;

    #[test]
    fn start_up_creates_folders_and_removes_leftovers() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("alice");
        fs::create_dir_all(dir.join("backups")).unwrap();
        fs::create_dir_all(base.path().join(SPILL_DIR)).unwrap();
        let leftovers = [
            dir.join("tmp-999999999-1.upload.tmp"),
            dir.join("tmp-999999999-2.media-stage.tmp"),
            dir.join("collection.anki2.upload-999999999-2.tmp"),
            dir.join("backups/tmp-999999999-3.backup.tmp"),
            base.path()
                .join(SPILL_DIR)
                .join("tmp-999999999-4.legacy-form.tmp"),
        ];
        for leftover in &leftovers {
            fs::write(leftover, b"partial").unwrap();
        }
        fs::write(dir.join("keep.txt"), b"x").unwrap();
        let store = UserStore::new(base.path(), ["alice", "bob"].into_iter()).unwrap();
        for leftover in &leftovers {
            assert!(!leftover.exists(), "{}", leftover.display());
        }
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
        carol.with_col(|_| Ok(())).unwrap();
        store.forget("carol");
        assert!(store.slot("carol").is_none());
        // A request still holding the slot finishes normally; the data stays.
        assert!(carol.lock().is_open());
        drop(carol);
        assert!(base.path().join("carol").join(COLLECTION_FILE).is_file());
        store.close_all();
    }

    #[test]
    fn idle_collections_give_back_their_cache_once_per_rest() {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["alice", "bob"].into_iter()).unwrap();
        let alice = store.slot("alice").unwrap();
        let notes = |slot: &UserSlot| {
            slot.with_col(|col| {
                Ok(col.query_row("select count() from notes", [], |r| r.get::<_, i64>(0))?)
            })
            .unwrap()
        };
        assert_eq!(notes(&alice), 0);
        assert!(!store.release_idle_caches(Duration::from_secs(3600)));
        // Only alice's collection is open; bob's was never opened.
        assert!(store.release_idle_caches(Duration::ZERO));
        assert!(!store.release_idle_caches(Duration::ZERO), "once per rest");
        assert!(alice.lock().is_open());
        assert_eq!(notes(&alice), 0);
        assert!(store.release_idle_caches(Duration::ZERO), "used again");
        notes(&alice);
        {
            let _busy = alice.lock();
            assert!(!store.release_idle_caches(Duration::ZERO), "busy");
            assert!(!store.close_idle(Duration::ZERO), "busy");
        }
        assert!(store.release_idle_caches(Duration::ZERO));
        assert!(!store.close_idle(Duration::from_secs(3600)));
        assert!(store.close_idle(Duration::ZERO));
        assert!(!alice.lock().is_open());
        assert!(!store.release_idle_caches(Duration::ZERO), "nothing open");
    }
}
