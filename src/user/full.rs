//! Full sync through the per-user layer. An upload, received and checked
//! without the lock (`collection::full`), replaces the collection under one
//! lock hold; the one it replaces is backed up in the background after. A
//! download prepares and copies the collection under one lock hold too, so
//! no `start` from another device can come in between, and sends the copy
//! without the lock.

use std::fs::File;

use log::{info, warn};

use super::slot::{UserGuard, UserSlot};
use crate::backup;
use crate::collection::full;
use crate::error::SyncError;
use crate::storage::TempFile;
use crate::storage::install;

/// A collection file ready to send.
pub struct Download<'a> {
    pub file: File,
    pub len: u64,
    /// Kept alive until the last byte is sent.
    pub hold: Hold<'a>,
}

/// The user's lock while a current client downloads the collection file
/// itself (nothing may write to it meanwhile), when no private copy could be
/// made (a full disk); nothing for a private copy.
pub struct Hold<'a> {
    _guard: Option<UserGuard<'a>>,
}

impl UserSlot {
    /// Replaces the collection with a checked upload: ends a normal sync in
    /// progress, stages the collection it replaces for a backup (the undo
    /// for a wrong "upload to server"; a failed backup only warns), renames
    /// the upload over it, and has the staged file compressed in the
    /// background, off the upload's critical path.
    pub fn replace_collection(&self, upload: TempFile) -> Result<(), SyncError> {
        let mut user = self.lock();
        user.close_collection();
        let replaced = backup::stage_replaced(user.dir());
        let target = user.collection_path();
        install::install(upload, &target)?;
        info!("installed a new collection at {}", target.display());
        if let Some(replaced) = replaced {
            replaced.back_up_in_background();
        }
        Ok(())
    }

    /// Prepares the collection for a full download (ending a normal sync in
    /// progress) and makes the private copy that is sent, so the lock is
    /// released at once: the file as it is for current clients, a schema-11
    /// rendition for `legacy` clients (before 2.1.57). If there is no room
    /// for a copy, the file itself is sent, holding the lock until it is.
    pub fn download(&self, legacy: bool, now_ms: i64) -> Result<Download<'_>, SyncError> {
        let mut user = self.lock();
        user.abort_sync();
        // The day's first backup may still pin the main file, and the
        // download needs the WAL folded into it.
        backup::wait_for_pin(user.dir());
        let col = user.collection()?;
        full::prepare_download(col, now_ms)?;
        if legacy {
            let (file, len) = full::legacy_copy(col, &self.dir)?;
            return Ok(Download {
                file,
                len,
                hold: Hold { _guard: None },
            });
        }
        match full::private_copy(&user.collection_path(), &self.dir) {
            Ok((file, len)) => {
                return Ok(Download {
                    file,
                    len,
                    hold: Hold { _guard: None },
                });
            }
            Err(e) => warn!(
                "copying the collection of {} for a download ({e}): sending the file itself, \
                 holding the user's lock until it is sent",
                self.name
            ),
        }
        let file = File::open(user.collection_path())?;
        let len = file.metadata()?.len();
        Ok(Download {
            file,
            len,
            hold: Hold { _guard: Some(user) },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::backup::Reason;
    use crate::storage::COLLECTION_FILE;
    use crate::user::UserStore;

    fn notes(slot: &UserSlot) -> i64 {
        slot.with_col(|col| Ok(col.query_row("select count(*) from notes", [], |r| r.get(0))?))
            .unwrap()
    }

    fn add_notes(slot: &UserSlot, ids: std::ops::RangeInclusive<i64>) {
        slot.with_col(|col| {
            for id in ids {
                col.execute(
                    "insert into notes values (?1, ?2, 1, 0, 0, '', 'f\x1fb', 'f', 0, 0, '')",
                    rusqlite::params![id, format!("guid{id}")],
                )?;
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_staged_restore_is_swapped_in_at_the_next_use_and_is_undoable() {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        let slot = store.slot("u").unwrap();
        add_notes(&slot, 1..=5);
        slot.close();
        backup::take(slot.dir(), Reason::BeforeUpload);
        slot.with_col(|col| Ok(col.execute("delete from notes where id > 1", [])?))
            .unwrap();
        assert_eq!(notes(&slot), 1);
        // Staged while a normal sync runs: not swapped in mid-sync...
        slot.start_sync("s", 0, false, 0, |_, _| Ok(())).unwrap();
        backup::stage_restore(slot.dir(), None, 1_900_000_000_000).unwrap();
        slot.with_sync_state("s", 0, |col, _| {
            let n: i64 = col.query_row("select count(*) from notes", [], |r| r.get(0))?;
            assert_eq!(n, 1);
            Ok(())
        })
        .unwrap();
        assert!(backup::pending_restore(slot.dir()).is_some());
        // ...but at the next use outside one (which ends the sync).
        assert_eq!(notes(&slot), 5);
        assert!(backup::pending_restore(slot.dir()).is_none());
        let scm: i64 = slot
            .with_col(|col| Ok(col.query_row("select scm from col", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(scm, 1_900_000_000_000);
        // The one-note collection it replaced is the newest backup now.
        let backups = backup::list(slot.dir()).unwrap();
        assert_eq!(backups[0].reason, Reason::BeforeRestore);
        backup::stage_restore(slot.dir(), Some(&backups[0].file), 1_900_000_000_001).unwrap();
        assert_eq!(notes(&slot), 1);
    }

    fn empty_collection() -> Vec<u8> {
        let other = tempfile::tempdir().unwrap();
        let path = other.path().join(COLLECTION_FILE);
        crate::storage::create_collection(&path, 1_800_000_000_000).unwrap();
        fs::read(path).unwrap()
    }

    #[test]
    fn an_upload_replaces_the_collection_and_backs_the_old_one_up_after() {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        let slot = store.slot("u").unwrap();
        add_notes(&slot, 1..=2);
        let temp = install::receive(slot.dir(), &mut &empty_collection()[..]).unwrap();
        install::validate(&temp).unwrap();
        let staged = slot.dir().join("backups/replaced.anki2");
        let held = backup::hold_background_backups();
        slot.replace_collection(temp).unwrap();
        // Installed at once; the old file waits under its second name, and
        // a download does not wait for its backup.
        assert_eq!(notes(&slot), 0);
        assert!(staged.exists());
        assert!(backup::list(slot.dir()).unwrap().is_empty());
        assert!(slot.download(false, 1_800_000_000_000).unwrap().len > 0);
        drop(held);
        backup::wait_for(slot.dir());
        assert!(!staged.exists());
        let backups = backup::list(slot.dir()).unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].reason, Reason::BeforeUpload);
        // It is the replaced collection.
        backup::stage_restore(slot.dir(), None, 1_900_000_000_000).unwrap();
        assert_eq!(notes(&slot), 2);
    }

    #[test]
    fn a_replaced_collection_a_stop_left_staged_is_backed_up_at_the_next_start() {
        let base = tempfile::tempdir().unwrap();
        {
            let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
            let slot = store.slot("u").unwrap();
            add_notes(&slot, 1..=3);
            slot.close();
            // What a stop between the upload and its backup leaves.
            let backups = slot.dir().join("backups");
            fs::create_dir_all(&backups).unwrap();
            fs::hard_link(
                slot.dir().join(COLLECTION_FILE),
                backups.join("replaced.anki2"),
            )
            .unwrap();
        }
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        let slot = store.slot("u").unwrap();
        assert!(!slot.dir().join("backups/replaced.anki2").exists());
        let backups = backup::list(slot.dir()).unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].reason, Reason::BeforeUpload);
    }

    #[test]
    fn a_download_waits_for_the_days_first_backup_still_being_written() {
        // The backup pins the main file (no checkpoint reaches it), and a
        // download needs the WAL folded into it.
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        let slot = store.slot("u").unwrap();
        add_notes(&slot, 1..=20);
        let held = backup::hold_background_backups();
        slot.start_sync("s", 0, false, 0, |_, _| Ok(())).unwrap();
        add_notes(&slot, 21..=30);
        let downloading = std::thread::scope(|scope| {
            let download = scope.spawn(|| slot.download(false, 1_800_000_000_000).map(|d| d.len));
            // Longer than SQLite's busy timeout, which is all a checkpoint
            // would wait for a pinning reader.
            std::thread::sleep(std::time::Duration::from_millis(5_500));
            let waited = !download.is_finished();
            drop(held);
            (waited, download.join().unwrap())
        });
        assert!(downloading.0, "the download waits for the backup");
        assert!(downloading.1.is_ok(), "{:?}", downloading.1.err());
        let backups = backup::list(slot.dir()).unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].reason, Reason::Daily);
        assert_eq!(notes(&slot), 30);
    }

    #[test]
    fn a_download_is_a_private_copy_sent_without_the_lock_and_bumps_usn() {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        let slot = store.slot("u").unwrap();
        slot.start_sync("s", 0, false, 0, |_, _| Ok(())).unwrap();
        let mut download = slot.download(false, 1_800_000_000_000).unwrap();
        assert_eq!(download.len, download.file.metadata().unwrap().len());
        assert!(
            !slot.state_is_locked(),
            "the lock is released before sending"
        );
        // The copy is what the file was when prepared, whatever comes after.
        let stored = fs::read(slot.dir().join(COLLECTION_FILE)).unwrap();
        add_notes(&slot, 1..=50);
        slot.close();
        let mut sent = Vec::new();
        std::io::Read::read_to_end(&mut download.file, &mut sent).unwrap();
        assert!(sent == stored, "the download is the prepared file");
        assert_eq!(download.file.metadata().unwrap().nlink(), 0, "no name left");
        drop(download);
        // The sync in progress was ended; the usn bump is committed.
        let (usn, modified): (i64, i64) = slot
            .with_col(|col| {
                Ok(col.query_row("select usn, mod from col", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .unwrap();
        assert_eq!((usn, modified), (1, 1_800_000_000_000));
        assert_eq!(notes(&slot), 50);
        assert!(slot.with_sync_state("s", 0, |_, _| Ok(())).is_err());
        let legacy = slot.download(true, 1_800_000_000_001).unwrap();
        assert!(!slot.state_is_locked(), "a legacy copy needs no lock");
        assert!(legacy.len > 0);
    }
}
