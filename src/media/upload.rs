//! Media uploads, all or nothing. The zip is spooled to an unlinked temp
//! file and every name, entry and size is checked, and each addition is
//! extracted (and hashed) into a private temp file, all without the lock and
//! without touching `media/` or the database. Then, under the lock, the
//! database changes are made in one transaction, the files are swapped into
//! place (replaced or deleted files are moved aside, not destroyed), and the
//! transaction is committed; if any step fails, the swaps are undone and the
//! transaction rolls back. The planned moves are journaled first, so a crash
//! between the moves and the commit is finished or undone at start-up.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use log::{info, warn};
use rusqlite::Connection;
use sha1::{Digest, Sha1};

use super::db;
use super::names;
use super::store::{COPY_BUFFER, MEDIA_DIR, MediaSlot, bad, disk, now_secs, zip_error};
use super::zip::{ZipError, ZipReader};
use super::{MAX_ENTRIES, MAX_FILE_BYTES, MAX_META_BYTES, MAX_UPLOAD_CONTENT_BYTES};
use crate::error::SyncError;
use crate::fsutil::sync_dir;
use crate::storage::TempFile;
use crate::storage::temp;

/// Why spooling an upload failed.
#[derive(Debug)]
pub enum SpoolError {
    /// Reading the request body (limits, broken connection, bad zstd).
    Body(io::Error),
    /// Writing the spool file.
    Disk(io::Error),
}

/// An upload that passed every check, with its additions extracted into
/// temp files; nothing is visible until [`MediaSlot::apply`].
pub struct Upload {
    changes: Vec<Pending>,
}

struct Pending {
    name: String,
    /// `None` for a deletion.
    content: Option<Staged>,
}

/// An extracted addition; its temp file is removed on drop unless it was
/// moved into `media/` (then its path is gone).
struct Staged {
    temp: TempFile,
    sha1: [u8; 20],
    size: u64,
}

/// What an upload does to one name's file on disk.
#[derive(Clone, Copy)]
enum DiskChange {
    /// Move the staged addition at this index of `Upload::changes` in place.
    Put(usize),
    Delete,
}

/// One swap already made, to be reversed if the upload fails.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Undo {
    /// An old file was moved aside to `backup`.
    Restore { backup: PathBuf, target: PathBuf },
    /// A staged file was moved into `target`.
    Unplace { target: PathBuf, staged: PathBuf },
}

/// The moves an upload is about to make, written (and synced) before the
/// first move: if the server dies between the moves and the database
/// commit, start-up reads it and either finishes (the commit happened) or
/// undoes the moves (it did not), so `media/` always matches `media.db`.
/// Its name does not end in `.tmp`, so start-up cleanup leaves it alone.
pub(super) const JOURNAL: &str = "media-swap.journal";

#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    /// `meta.last_usn` once the upload is committed.
    usn: i32,
    steps: Vec<Undo>,
}

/// Performs the planned moves in order, recording each one that happened.
fn run_moves(steps: &[Undo], done: &mut Vec<Undo>) -> io::Result<()> {
    for step in steps {
        match step {
            Undo::Restore { backup, target } => fs::rename(target, backup)?,
            Undo::Unplace { target, staged } => fs::rename(staged, target)?,
        }
        done.push(step.clone());
    }
    Ok(())
}

/// After a commit, the old contents moved aside are no longer needed.
fn remove_backups(steps: &[Undo]) {
    for step in steps {
        if let Undo::Restore { backup, .. } = step {
            if let Err(e) = fs::remove_file(backup) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("cannot remove {}: {e}", backup.display());
                }
            }
        }
    }
}

/// Finishes or undoes an upload that a crash interrupted between moving
/// files and committing the database (see [`JOURNAL`]).
pub(super) fn recover_interrupted_upload(user_dir: &Path, last_usn: i32) {
    let path = user_dir.join(JOURNAL);
    let Ok(bytes) = fs::read(&path) else { return };
    match serde_json::from_slice::<Journal>(&bytes) {
        // Committed: the new files are in place; drop the old contents.
        Ok(journal) if last_usn >= journal.usn => {
            remove_backups(&journal.steps);
            info!(
                "media upload in {} was committed before a crash; finished it",
                user_dir.display()
            );
        }
        // Not committed: put every moved file back.
        Ok(journal) => {
            for step in journal.steps.iter().rev() {
                match step {
                    Undo::Unplace { target, staged } => {
                        if !staged.exists() && target.exists() {
                            if let Err(e) = fs::remove_file(target) {
                                warn!("undoing an interrupted upload: {}: {e}", target.display());
                            }
                        }
                    }
                    Undo::Restore { backup, target } => {
                        if backup.exists() {
                            if let Err(e) = fs::rename(backup, target) {
                                warn!("undoing an interrupted upload: {}: {e}", target.display());
                            }
                        }
                    }
                }
            }
            info!(
                "media upload in {} was interrupted by a crash; undid it",
                user_dir.display()
            );
        }
        // The journal is written before anything moves: nothing to undo.
        Err(e) => warn!(
            "ignoring an unreadable media journal in {}: {e}",
            user_dir.display()
        ),
    }
    // What was finished or undone must be on disk before the journal goes:
    // a power cut must not bring the files back without it.
    if let Err(e) = sync_undone(user_dir) {
        warn!("syncing {} after a media recovery: {e}", user_dir.display());
    }
    if let Err(e) = fs::remove_file(&path) {
        warn!("cannot remove {}: {e}", path.display());
    }
}

/// Makes undone (or finished) moves durable: media/ first, then the user's
/// folder, the reverse of an upload's order (see `apply_locked`), so a cut
/// in between never leaves an undone staged file in both folders.
fn sync_undone(user_dir: &Path) -> io::Result<()> {
    sync_dir(&user_dir.join(MEDIA_DIR)).and_then(|()| sync_dir(user_dir))
}

impl MediaSlot {
    /// Copies an upload body into an unlinked temp file in the user's
    /// folder and rewinds it. Takes no lock.
    pub fn spool(&self, body: &mut dyn Read) -> Result<File, SpoolError> {
        let file = TempFile::anonymous(&self.user_dir, "media-spool").map_err(SpoolError::Disk)?;
        let mut out = BufWriter::with_capacity(COPY_BUFFER, file);
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SpoolError::Body(e)),
            };
            out.write_all(&buf[..n]).map_err(SpoolError::Disk)?;
        }
        let mut file = out
            .into_inner()
            .map_err(|e| SpoolError::Disk(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(SpoolError::Disk)?;
        Ok(file)
    }

    /// Checks a spooled upload zip completely and extracts its additions
    /// into temp files. Nothing in `media/` or the database changes; any
    /// failure leaves no trace. Takes no lock.
    pub fn prepare_upload(&self, zip: File) -> Result<Upload, SyncError> {
        let mut zip =
            ZipReader::open(BufReader::with_capacity(COPY_BUFFER, zip)).map_err(zip_error)?;
        let meta_entry = zip
            .entry("_meta")
            .cloned()
            .ok_or_else(|| bad("upload zip has no _meta".into()))?;
        if meta_entry.size > MAX_META_BYTES {
            return Err(bad(format!("_meta is {} bytes", meta_entry.size)));
        }
        let mut meta = Vec::new();
        zip.read_entry(&meta_entry)
            .map_err(zip_error)?
            .read_to_end(&mut meta)
            .map_err(|e| zip_error(ZipError::from_entry_read(e)))?;
        let meta = parse_upload_meta(&meta)?;

        let mut total = 0u64;
        let mut entries = Vec::with_capacity(meta.len());
        for (name, entry_name) in &meta {
            names::check(name).map_err(|why| bad(format!("file name {name:?}: {why}")))?;
            let Some(entry_name) = entry_name else {
                entries.push(None);
                continue;
            };
            let entry = zip
                .entry(entry_name)
                .cloned()
                .ok_or_else(|| bad(format!("zip entry {entry_name:?} for {name:?} is missing")))?;
            if entry.size == 0 {
                return Err(bad(format!("{name:?} is empty")));
            }
            if entry.size > MAX_FILE_BYTES {
                return Err(bad(format!("{name:?} is {} bytes", entry.size)));
            }
            total += entry.size;
            if total > MAX_UPLOAD_CONTENT_BYTES {
                return Err(bad(format!(
                    "upload content exceeds {MAX_UPLOAD_CONTENT_BYTES} bytes"
                )));
            }
            entries.push(Some(entry));
        }

        let mut changes = Vec::with_capacity(meta.len());
        for ((name, _), entry) in meta.into_iter().zip(entries) {
            let content = match entry {
                None => None,
                Some(entry) => Some(self.stage(&mut zip, &entry)?),
            };
            changes.push(Pending { name, content });
        }
        Ok(Upload { changes })
    }

    /// Extracts one entry into a temp file, hashing it on the way.
    fn stage<R: Read + Seek>(
        &self,
        zip: &mut ZipReader<R>,
        entry: &super::zip::Entry,
    ) -> Result<Staged, SyncError> {
        let (temp, file) = TempFile::create(&self.user_dir, "media-stage")
            .map_err(|e| disk("creating a temp file", e))?;
        let mut staged = Staged {
            temp,
            sha1: [0; 20],
            size: 0,
        };
        let mut reader = zip.read_entry(entry).map_err(zip_error)?;
        let mut out = BufWriter::with_capacity(COPY_BUFFER, file);
        let mut hasher = Sha1::new();
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(zip_error(ZipError::from_entry_read(e))),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| disk("writing a temp file", e))?;
            staged.size += n as u64;
        }
        // Durable before it is moved into media/ and media.db names it: a
        // power cut must not leave a listed file empty.
        out.flush()
            .and_then(|()| out.get_ref().sync_all())
            .map_err(|e| disk("writing a temp file", e))?;
        staged.sha1 = hasher.finalize().into();
        Ok(staged)
    }

    /// Applies a prepared upload under the media lock, all or nothing:
    /// one USN per effective change in `_meta` order, none for no-ops.
    /// Returns `[processed, last_usn]`.
    pub fn apply(&self, upload: Upload) -> Result<(usize, i32), SyncError> {
        let (last_usn, undo) = self.with_db(|conn| self.apply_locked(conn, &upload))?;
        // Outside the lock: the journal is gone, so these are plain
        // leftover temp files that start-up would remove after a crash.
        remove_backups(&undo);
        Ok((upload.changes.len(), last_usn))
    }

    /// The part of [`Self::apply`] under the media lock: database changes,
    /// journaled file moves, commit. The journal is removed under the lock
    /// too, so it can never be another upload's journal.
    fn apply_locked(
        &self,
        conn: &mut Connection,
        upload: &Upload,
    ) -> Result<(i32, Vec<Undo>), SyncError> {
        let tx = conn.transaction()?;
        let mut meta = db::meta(&tx)?;
        let now = now_secs();
        let mut plan = Plan::default();
        for (index, change) in upload.changes.iter().enumerate() {
            let name = change.name.as_str();
            let live = db::get(&tx, name)?.filter(|row| row.size > 0);
            match (&change.content, live) {
                // Deleting what is not there: a no-op, and no row is created.
                (None, None) => {}
                (None, Some(row)) => {
                    meta.last_usn = next_usn(meta.last_usn)?;
                    db::mark_deleted(&tx, name, meta.last_usn, now)?;
                    meta.total_bytes -= row.size as i64;
                    meta.total_nonempty_files -= 1;
                    plan.set(name, DiskChange::Delete);
                }
                (Some(staged), Some(row)) if row.sha1 == staged.sha1 => {
                    // Identical content: no USN. If the file went missing
                    // behind our back, this upload restores it.
                    if !plan.touches(name) && !self.media_dir.join(name).exists() {
                        plan.set(name, DiskChange::Put(index));
                    }
                }
                (Some(staged), live) => {
                    meta.last_usn = next_usn(meta.last_usn)?;
                    db::put(&tx, name, &staged.sha1, staged.size, meta.last_usn, now)?;
                    match live {
                        Some(row) => meta.total_bytes += staged.size as i64 - row.size as i64,
                        None => {
                            meta.total_bytes += staged.size as i64;
                            meta.total_nonempty_files += 1;
                        }
                    }
                    plan.set(name, DiskChange::Put(index));
                }
            }
        }
        db::set_meta(&tx, &meta)?;

        let steps = self
            .plan_moves(upload, &plan.order)
            .map_err(|e| disk("placing media files", e))?;
        self.write_journal(meta.last_usn, &steps)
            .map_err(|e| disk("writing the media journal", e))?;
        let mut undo = Vec::new();
        // Both folders of the moves are made durable before the commit, the
        // user's folder first: a rename may reach the disk in one folder and
        // not yet in the other, and in this order a cut leaves a staged file
        // either still staged or gone from both, and an old file in media/
        // or in both places, which start-up's undo reads right (see
        // `recover_interrupted_upload`).
        let moved = run_moves(&steps, &mut undo)
            .and_then(|()| sync_dir(&self.user_dir))
            .and_then(|()| sync_dir(&self.media_dir));
        if let Err(e) = moved {
            self.roll_back(undo);
            return Err(disk("placing media files", e));
        }
        if let Err(e) = tx.commit() {
            self.roll_back(undo);
            return Err(e.into());
        }
        self.usn.store(meta.last_usn, Ordering::SeqCst);
        self.remove_journal();
        Ok((meta.last_usn, undo))
    }

    /// The moves that put an upload in place: old files aside to fresh
    /// backup names (not created yet, so after a crash "the backup exists"
    /// means "this move happened"), then staged files into `media/`.
    fn plan_moves(&self, upload: &Upload, plan: &[(String, DiskChange)]) -> io::Result<Vec<Undo>> {
        let mut steps = Vec::new();
        for (name, change) in plan {
            let target = self.media_dir.join(name);
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {
                    return Err(io::Error::other(format!(
                        "{} is a folder",
                        target.display()
                    )));
                }
                Ok(_) => steps.push(Undo::Restore {
                    backup: temp::fresh_name(&self.user_dir, "media-old"),
                    target: target.clone(),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let DiskChange::Put(index) = change {
                let staged = upload.changes[*index]
                    .content
                    .as_ref()
                    .ok_or_else(|| io::Error::other("planned addition has no content"))?;
                steps.push(Undo::Unplace {
                    target,
                    staged: staged.temp.path().to_path_buf(),
                });
            }
        }
        Ok(steps)
    }

    /// Writes the journal atomically and durably before anything moves.
    fn write_journal(&self, usn: i32, steps: &[Undo]) -> io::Result<()> {
        let (temp, mut file) = TempFile::create(&self.user_dir, "media-journal")?;
        let bytes = serde_json::to_vec(&Journal {
            usn,
            steps: steps.to_vec(),
        })
        .map_err(io::Error::other)?;
        file.write_all(&bytes)?;
        temp.persist(&self.user_dir.join(JOURNAL))
    }

    fn remove_journal(&self) {
        let path = self.user_dir.join(JOURNAL);
        if let Err(e) = fs::remove_file(&path) {
            warn!("cannot remove {}: {e}", path.display());
        }
    }

    /// Moves the files of a failed upload back and removes its journal
    /// (after making the moves durable, as start-up's recovery does).
    fn roll_back(&self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let (from, to) = match &step {
                Undo::Restore { backup, target } => (backup, target),
                Undo::Unplace { target, staged } => (target, staged),
            };
            if let Err(e) = fs::rename(from, to) {
                warn!(
                    "undoing a media upload: cannot move {} back to {}: {e}",
                    from.display(),
                    to.display()
                );
            }
        }
        if let Err(e) = sync_undone(&self.user_dir) {
            warn!(
                "undoing a media upload: syncing {}: {e}",
                self.user_dir.display()
            );
        }
        self.remove_journal();
    }
}

/// The final disk change per name, in order of first mention.
#[derive(Default)]
struct Plan {
    order: Vec<(String, DiskChange)>,
    index: HashMap<String, usize>,
}

impl Plan {
    fn set(&mut self, name: &str, change: DiskChange) {
        match self.index.get(name) {
            Some(&i) => self.order[i].1 = change,
            None => {
                self.index.insert(name.to_string(), self.order.len());
                self.order.push((name.to_string(), change));
            }
        }
    }

    fn touches(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

fn next_usn(usn: i32) -> Result<i32, SyncError> {
    usn.checked_add(1)
        .ok_or_else(|| SyncError::internal("media USN exhausted"))
}

/// Parses upload `_meta`: an array of `[name, entry]` pairs, where entry is
/// a zip entry name, or `null` (or `""`, from legacy clients) for a
/// deletion. At most 25 pairs.
fn parse_upload_meta(bytes: &[u8]) -> Result<Vec<(String, Option<String>)>, SyncError> {
    let pairs: Vec<(String, Option<String>)> =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("_meta: {e}")))?;
    if pairs.len() > MAX_ENTRIES {
        return Err(bad(format!("_meta has {} entries", pairs.len())));
    }
    Ok(pairs
        .into_iter()
        .map(|(name, entry)| (name, entry.filter(|e| !e.is_empty())))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::Value;

    use super::*;
    use crate::error::Kind;
    use crate::media::store::MEDIA_DIR;
    use crate::media::store::tests::{counters, on_disk, slot, temp_files_left};
    use crate::media::zip::tests::Built;

    /// Uploads `changes` (name, content or None for a deletion) as a client
    /// would: entries named by position, `_meta` last.
    pub(crate) fn upload(
        slot: &MediaSlot,
        changes: &[(&str, Option<&[u8]>)],
    ) -> Result<(usize, i32), SyncError> {
        let mut zip = Built::new();
        let mut meta = Vec::new();
        for (i, (name, content)) in changes.iter().enumerate() {
            match content {
                Some(data) => {
                    zip = zip.stored(&i.to_string(), data);
                    meta.push(json_pair(name, Some(i.to_string())));
                }
                None => meta.push(json_pair(name, None)),
            }
        }
        let meta = Value::Array(meta).to_string();
        upload_zip(slot, zip.stored("_meta", meta.as_bytes()).finish())
    }

    /// A change as the tests write it: name, content or `None` to delete.
    type TestChange<'a> = (&'a str, Option<&'a [u8]>);

    fn json_pair(name: &str, entry: Option<String>) -> Value {
        Value::Array(vec![
            Value::from(name),
            entry.map(Value::from).unwrap_or(Value::Null),
        ])
    }

    fn upload_zip(slot: &MediaSlot, zip: Vec<u8>) -> Result<(usize, i32), SyncError> {
        let file = slot.spool(&mut &zip[..]).unwrap();
        let upload = slot.prepare_upload(file)?;
        slot.apply(upload)
    }

    #[test]
    fn one_usn_per_effective_change_and_none_for_no_ops() {
        let (dir, slot) = slot();
        let three: [(&str, Option<&[u8]>); 3] = [
            ("apple.jpg", Some(b"apple-data-1")),
            ("banana.mp3", Some(b"banana-data-22")),
            ("cherry.png", Some(b"cherry-data-333")),
        ];
        assert_eq!(upload(&slot, &three).unwrap(), (3, 3));
        assert_eq!(counters(&slot), (3, 41, 3));
        assert_eq!(slot.usn().unwrap(), 3);
        assert_eq!(
            on_disk(dir.path(), "banana.mp3").unwrap(),
            b"banana-data-22"
        );
        // Same content again, and deleting a name never seen: no USN, no row.
        assert_eq!(
            upload(&slot, &[("apple.jpg", Some(b"apple-data-1"))]).unwrap(),
            (1, 3)
        );
        assert_eq!(upload(&slot, &[("never.jpg", None)]).unwrap(), (1, 3));
        let never = slot.with_db(|conn| Ok(db::get(conn, "never.jpg")?));
        assert!(never.unwrap().is_none());
        // A deletion leaves a tombstone and removes the file.
        assert_eq!(upload(&slot, &[("banana.mp3", None)]).unwrap(), (1, 4));
        assert_eq!(on_disk(dir.path(), "banana.mp3"), None);
        assert_eq!(counters(&slot), (4, 27, 2));
        // Added then deleted in one upload: two USNs, final state deleted.
        assert_eq!(
            upload(&slot, &[("dup.txt", Some(b"x")), ("dup.txt", None)]).unwrap(),
            (2, 6)
        );
        assert_eq!(on_disk(dir.path(), "dup.txt"), None);
        // Replacing changes bytes but not the file count.
        assert_eq!(
            upload(&slot, &[("apple.jpg", Some(b"new"))]).unwrap(),
            (1, 7)
        );
        assert_eq!(on_disk(dir.path(), "apple.jpg").unwrap(), b"new");
        assert_eq!(counters(&slot), (7, 18, 2));
        let changes = slot.changes(3).unwrap();
        let names: Vec<&str> = changes.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["banana.mp3", "dup.txt", "apple.jpg"]);
        assert_eq!(changes[2].2, crate::media::hex(&Sha1::digest(b"new")));
        assert!(temp_files_left(dir.path()).is_empty());
    }

    #[test]
    fn a_bad_entry_anywhere_changes_nothing() {
        let (dir, slot) = slot();
        upload(&slot, &[("keep.txt", Some(b"old"))]).unwrap();
        let many: Vec<(String, Option<&[u8]>)> = (0..26)
            .map(|i| (format!("f{i}.txt"), Some(&b"x"[..])))
            .collect();
        let many: Vec<(&str, Option<&[u8]>)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let bad_uploads: Vec<Vec<TestChange>> = vec![
            vec![("keep.txt", Some(b"new")), ("..", Some(b"x"))],
            vec![("keep.txt", None), ("a/b", Some(b"x"))],
            vec![("keep.txt", Some(b"new")), ("cafe\u{301}.jpg", Some(b"x"))],
            vec![("keep.txt", Some(b"new")), ("empty.txt", Some(b""))],
            many,
        ];
        for changes in bad_uploads {
            assert!(
                matches!(upload(&slot, &changes), Err(ref e) if e.kind() == Kind::BadRequest),
                "{:?}",
                changes.iter().map(|c| c.0).collect::<Vec<_>>()
            );
        }
        // An entry missing from the zip, and a corrupted entry (bad CRC).
        let missing = Built::new()
            .stored("0", b"new")
            .stored("_meta", br#"[["keep.txt","0"],["x.txt","7"]]"#)
            .finish();
        assert!(matches!(
            upload_zip(&slot, missing),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        let mut corrupt = Built::new()
            .stored("0", b"new")
            .stored("1", b"other")
            .stored("_meta", br#"[["keep.txt","0"],["x.txt","1"]]"#)
            .finish();
        let second = corrupt.windows(5).position(|w| w == b"other").unwrap();
        corrupt[second] ^= 1;
        assert!(matches!(
            upload_zip(&slot, corrupt),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        assert_eq!(counters(&slot), (1, 3, 1));
        assert_eq!(on_disk(dir.path(), "keep.txt").unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path().join(MEDIA_DIR)).unwrap().count(), 1);
        assert!(temp_files_left(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_swap_is_undone() {
        let (dir, slot) = slot();
        upload(
            &slot,
            &[("a.txt", Some(b"old")), ("gone.txt", Some(b"bye"))],
        )
        .unwrap();
        // A folder where a file should go makes the swap fail half-way.
        fs::create_dir(dir.path().join(MEDIA_DIR).join("x.txt")).unwrap();
        let result = upload(
            &slot,
            &[
                ("a.txt", Some(b"new")),
                ("gone.txt", None),
                ("x.txt", Some(b"x")),
            ],
        );
        assert!(
            matches!(result, Err(ref e) if e.kind() == Kind::Internal),
            "{result:?}"
        );
        assert_eq!(on_disk(dir.path(), "a.txt").unwrap(), b"old");
        assert_eq!(on_disk(dir.path(), "gone.txt").unwrap(), b"bye");
        assert_eq!(counters(&slot), (2, 6, 2));
        assert_eq!(slot.usn().unwrap(), 2);
        assert!(temp_files_left(dir.path()).is_empty());
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::media::store::MEDIA_DIR;

    /// A user folder mid-upload: `a` replaced (old content moved aside, new
    /// one placed) and `b` added, as `run_moves` leaves it; returns the steps.
    fn interrupted(dir: &Path) -> Vec<Undo> {
        let media = dir.join(MEDIA_DIR);
        fs::create_dir_all(&media).unwrap();
        fs::write(media.join("a"), b"old a").unwrap();
        let staged_a = dir.join("media-add-1.tmp");
        let staged_b = dir.join("media-add-2.tmp");
        fs::write(&staged_a, b"new a").unwrap();
        fs::write(&staged_b, b"new b").unwrap();
        let steps = vec![
            Undo::Restore {
                backup: dir.join("media-old-3.tmp"),
                target: media.join("a"),
            },
            Undo::Unplace {
                target: media.join("a"),
                staged: staged_a,
            },
            Undo::Unplace {
                target: media.join("b"),
                staged: staged_b,
            },
        ];
        let journal = Journal {
            usn: 7,
            steps: steps.clone(),
        };
        fs::write(dir.join(JOURNAL), serde_json::to_vec(&journal).unwrap()).unwrap();
        let mut done = Vec::new();
        run_moves(&steps, &mut done).unwrap();
        steps
    }

    #[test]
    fn an_uncommitted_upload_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        interrupted(dir.path());
        recover_interrupted_upload(dir.path(), 6);
        let media = dir.path().join(MEDIA_DIR);
        assert_eq!(fs::read(media.join("a")).unwrap(), b"old a");
        assert!(!media.join("b").exists());
        assert!(!dir.path().join(JOURNAL).exists());
    }

    #[test]
    fn a_committed_upload_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let steps = interrupted(dir.path());
        recover_interrupted_upload(dir.path(), 7);
        let media = dir.path().join(MEDIA_DIR);
        assert_eq!(fs::read(media.join("a")).unwrap(), b"new a");
        assert_eq!(fs::read(media.join("b")).unwrap(), b"new b");
        let Undo::Restore { backup, .. } = &steps[0] else {
            panic!()
        };
        assert!(!backup.exists(), "old contents dropped");
        assert!(!dir.path().join(JOURNAL).exists());
    }

    #[test]
    fn a_crash_before_any_move_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join(MEDIA_DIR);
        fs::create_dir_all(&media).unwrap();
        fs::write(media.join("a"), b"old a").unwrap();
        let journal = Journal {
            usn: 2,
            steps: vec![Undo::Restore {
                backup: dir.path().join("media-old-9.tmp"),
                target: media.join("a"),
            }],
        };
        fs::write(
            dir.path().join(JOURNAL),
            serde_json::to_vec(&journal).unwrap(),
        )
        .unwrap();
        recover_interrupted_upload(dir.path(), 1);
        assert_eq!(fs::read(media.join("a")).unwrap(), b"old a");
    }
}
