//! One user's media store behind its own lock, separate from the collection
//! lock: a media sync never waits for, nor aborts, a collection sync.
//!
//! Uploads are all or nothing. The zip is spooled to an unlinked temp file
//! and every name, entry and size is checked, and each addition is
//! extracted (and hashed) into a private temp file, all without the lock and
//! without touching `media/` or the database. Then, under the lock, the
//! database changes are made in one transaction, the files are swapped into
//! place (replaced or deleted files are moved aside, not destroyed), and the
//! transaction is committed; if any step fails, the swaps are undone and the
//! transaction rolls back. The planned moves are journaled first, so a crash
//! between the moves and the commit is finished or undone at start-up. Downloads open the chosen files under the lock
//! (an open file stays valid when an upload later replaces or deletes it)
//! and pack them into an unlinked temp file after releasing it.
//!
//! Like the collection, `media.db` is opened on first use and closed when
//! idle: a server at rest holds no database memory and has not even loaded
//! SQLite's code.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};
use rusqlite::Connection;
use serde_json::Value;
use sha1::{Digest, Sha1};

use super::db::{self, Change, Meta};
use super::names;
use super::zip::{ZipError, ZipReader, ZipWriter};
use super::{
    CHANGES_PAGE, DOWNLOAD_TARGET_BYTES, MAX_ENTRIES, MAX_FILE_BYTES, MAX_META_BYTES,
    MAX_UPLOAD_CONTENT_BYTES,
};
use crate::error::SyncError;
use crate::fsutil::sync_dir;

/// The flat folder of media files inside a user's folder.
pub const MEDIA_DIR: &str = "media";
/// Our temp files in the user's folder start with this and end in `.tmp`,
/// so start-up can remove what a crash left behind. They live beside
/// `media/` (same file system, so renames are atomic) rather than in it, so
/// they can never clash with a media file name.
const TEMP_PREFIX: &str = "media-";
const TEMP_SUFFIX: &str = ".tmp";
const COPY_BUFFER: usize = 64 * 1024;

/// Why spooling an upload failed.
#[derive(Debug)]
pub enum SpoolError {
    /// Reading the request body (limits, broken connection, bad zstd).
    Body(io::Error),
    /// Writing the spool file.
    Disk(io::Error),
}

/// A user's media lock, database and folder.
pub struct MediaSlot {
    user_dir: PathBuf,
    media_dir: PathBuf,
    db: Mutex<MediaDb>,
    /// `meta.last_usn`, readable without the lock (for `/sync/meta`, which
    /// must not wait for a media upload); [`USN_UNKNOWN`] until the
    /// database was first read. Only this server writes `media.db` while it
    /// runs, so the value stays right while the connection is closed.
    usn: AtomicI32,
}

const USN_UNKNOWN: i32 = -1;

/// What the media lock guards: the connection, when open.
struct MediaDb {
    conn: Option<Connection>,
    last_used: Instant,
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
/// moved into `media/`.
struct Staged {
    path: PathBuf,
    sha1: [u8; 20],
    size: u64,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // After a successful rename the path is gone; NotFound is expected.
        let _ = fs::remove_file(&self.path);
    }
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
const JOURNAL: &str = "media-swap.journal";

#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    /// `meta.last_usn` once the upload is committed.
    usn: i32,
    steps: Vec<Undo>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn create_temp(dir: &Path, kind: &str) -> io::Result<(PathBuf, File)> {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(
        "{TEMP_PREFIX}{kind}-{}-{n}{TEMP_SUFFIX}",
        std::process::id()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// A fresh temp path in `dir` (not created).
fn temp_name(dir: &Path, kind: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{kind}-{}-{n}{TEMP_SUFFIX}",
        std::process::id()
    ))
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
fn recover_interrupted_upload(user_dir: &Path, last_usn: i32) {
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

fn open_db(user_dir: &Path) -> io::Result<Connection> {
    let path = user_dir.join(db::DB_FILE);
    db::open(&path).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

fn read_usn(user_dir: &Path, conn: &Connection) -> io::Result<i32> {
    db::meta(conn)
        .map(|meta| meta.last_usn)
        .map_err(|e| io::Error::other(format!("{}: {e}", user_dir.join(db::DB_FILE).display())))
}

fn close_db(user_dir: &Path, conn: Connection) {
    if let Err((_, e)) = conn.close() {
        warn!("closing {}: {e}", user_dir.join(db::DB_FILE).display());
    }
}

/// A temp file with no name: the space is freed when the handle is dropped,
/// whatever happens.
fn anonymous_temp(dir: &Path) -> io::Result<File> {
    let (path, file) = create_temp(dir, "spool")?;
    fs::remove_file(&path)?;
    Ok(file)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn bad(message: String) -> SyncError {
    SyncError::bad_request(message)
}

fn zip_error(e: ZipError) -> SyncError {
    match e {
        ZipError::Malformed(m) => SyncError::bad_request(format!("upload zip: {m}")),
        ZipError::Io(e) => SyncError::internal("reading the spooled upload").with_source(e),
    }
}

fn disk(what: &str, e: io::Error) -> SyncError {
    SyncError::internal(what).with_source(e)
}

impl MediaSlot {
    /// Creates `media/` if needed (as the official server does for every
    /// user at start-up), finishes or undoes an upload a crash interrupted,
    /// and removes leftover temp files. `media.db` is created on first use;
    /// it is only opened here when a journal needs its USN, and is closed
    /// again before serving.
    pub fn open(user_dir: &Path) -> io::Result<MediaSlot> {
        let media_dir = user_dir.join(MEDIA_DIR);
        crate::fsutil::create_dir_all_durable(&media_dir)?;
        let mut usn = USN_UNKNOWN;
        if user_dir.join(JOURNAL).exists() {
            let conn = open_db(user_dir)?;
            usn = read_usn(user_dir, &conn)?;
            // Before cleaning temp files: they may hold contents to put back.
            recover_interrupted_upload(user_dir, usn);
            close_db(user_dir, conn);
        }
        crate::fsutil::remove_leftover_temp_files(user_dir, |name| {
            name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
        });
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
    fn with_db<T>(
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
    pub fn close_idle(&self, idle: Duration) {
        if let Ok(mut guard) = self.db.try_lock() {
            if guard.last_used.elapsed() >= idle {
                if let Some(conn) = guard.conn.take() {
                    close_db(&self.user_dir, conn);
                }
            }
        }
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

    /// Copies an upload body into an unlinked temp file in the user's
    /// folder and rewinds it. Takes no lock.
    pub fn spool(&self, body: &mut dyn Read) -> Result<File, SpoolError> {
        let file = anonymous_temp(&self.user_dir).map_err(SpoolError::Disk)?;
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
        let (path, file) =
            create_temp(&self.user_dir, "stage").map_err(|e| disk("creating a temp file", e))?;
        let mut staged = Staged {
            path,
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
                    backup: temp_name(&self.user_dir, "old"),
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
                    staged: staged.path.clone(),
                });
            }
        }
        Ok(steps)
    }

    /// Writes the journal atomically and durably before anything moves.
    fn write_journal(&self, usn: i32, steps: &[Undo]) -> io::Result<()> {
        let (temp, mut file) = create_temp(&self.user_dir, "journal")?;
        let bytes = serde_json::to_vec(&Journal {
            usn,
            steps: steps.to_vec(),
        })
        .map_err(io::Error::other)?;
        let written = file
            .write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, self.user_dir.join(JOURNAL)))
            .and_then(|()| sync_dir(&self.user_dir));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
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

    /// `downloadFiles`: the longest prefix of `names` whose sizes first
    /// exceed 2.5 MiB (at least one file), packed as a zip in an unlinked
    /// temp file. An unknown or deleted name is a conflict; a file missing
    /// on disk is forgotten (row removed, no USN) and is a conflict too.
    pub fn download(&self, names: &[String]) -> Result<(File, u64), SyncError> {
        let files = self.open_for_download(names)?;
        let out = anonymous_temp(&self.user_dir).map_err(|e| disk("creating a temp file", e))?;
        let mut zip = ZipWriter::new(BufWriter::with_capacity(COPY_BUFFER, out));
        let mut map = serde_json::Map::new();
        for (index, (name, file)) in files.into_iter().enumerate() {
            let entry = index.to_string();
            zip.add(&entry, &mut BufReader::with_capacity(COPY_BUFFER, file))
                .map_err(|e| disk("packing a download", e))?;
            map.insert(entry, Value::String(name));
        }
        let meta = Value::Object(map).to_string();
        zip.add("_meta", &mut meta.as_bytes())
            .map_err(|e| disk("packing a download", e))?;
        let (out, len) = zip.finish().map_err(|e| disk("packing a download", e))?;
        let mut out = out
            .into_inner()
            .map_err(|e| disk("packing a download", e.into_error()))?;
        out.seek(SeekFrom::Start(0))
            .map_err(|e| disk("packing a download", e))?;
        Ok((out, len))
    }

    fn open_for_download(&self, names: &[String]) -> Result<Vec<(String, File)>, SyncError> {
        self.with_db(|conn| self.open_for_download_locked(conn, names))
    }

    fn open_for_download_locked(
        &self,
        conn: &mut Connection,
        names: &[String],
    ) -> Result<Vec<(String, File)>, SyncError> {
        let mut chosen = Vec::new();
        let mut total = 0u64;
        for name in names {
            let row = db::get(conn, name)?
                .filter(|row| row.size > 0)
                .ok_or_else(|| SyncError::conflict(format!("{name:?} is not on the server")))?;
            chosen.push(name);
            total += row.size;
            if total > DOWNLOAD_TARGET_BYTES {
                break;
            }
        }
        let mut files = Vec::with_capacity(chosen.len());
        let mut missing = Vec::new();
        for name in chosen {
            // The name came from the database, so it passed the upload
            // checks: one plain component. Symlinks are not followed.
            let path = self.media_dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => {
                    let file = File::open(&path).map_err(|e| disk("opening a media file", e))?;
                    files.push((name.clone(), file));
                }
                Ok(_) => {
                    return Err(SyncError::internal(format!(
                        "{} is not a regular file",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(name),
                Err(e) => return Err(disk("opening a media file", e)),
            }
        }
        if missing.is_empty() {
            return Ok(files);
        }
        let tx = conn.transaction()?;
        let mut meta = db::meta(&tx)?;
        for name in &missing {
            if let Some(size) = db::forget(&tx, name)? {
                if size > 0 {
                    meta.total_bytes -= size as i64;
                    meta.total_nonempty_files -= 1;
                }
            }
        }
        db::set_meta(&tx, &meta)?;
        tx.commit()?;
        warn!(
            "media files missing on disk in {}, forgotten: {missing:?}",
            self.media_dir.display()
        );
        Err(SyncError::conflict(format!("{missing:?} missing on disk")))
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
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::media::zip::tests::Built;

    fn slot() -> (tempfile::TempDir, MediaSlot) {
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
        slot.close_idle(Duration::from_secs(3600));
        assert!(wal.exists(), "used just now: stays open");
        slot.close_idle(Duration::ZERO);
        assert!(!wal.exists(), "closing checkpoints and removes the WAL");
        // Reopened on demand, with everything in it.
        assert_eq!(slot.meta().unwrap().last_usn, 1);
        assert_eq!(slot.changes(0).unwrap().len(), 1);
        slot.close();
        assert!(!wal.exists());
        // A restart learns the USN on first use.
        let again = MediaSlot::open(dir.path()).unwrap();
        assert_eq!(again.usn().unwrap(), 1);
    }

    /// Uploads `changes` (name, content or None for a deletion) as a client
    /// would: entries named by position, `_meta` last.
    fn upload(
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

    fn on_disk(dir: &Path, name: &str) -> Option<Vec<u8>> {
        fs::read(dir.join(MEDIA_DIR).join(name)).ok()
    }

    fn temp_files_left(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(TEMP_SUFFIX))
            .collect()
    }

    fn counters(slot: &MediaSlot) -> (i32, i64, i64) {
        let m = slot.meta().unwrap();
        (m.last_usn, m.total_bytes, m.total_nonempty_files)
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

    fn download(slot: &MediaSlot, names: &[&str]) -> Result<Vec<(String, Vec<u8>)>, SyncError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (file, len) = slot.download(&names)?;
        assert_eq!(file.metadata().unwrap().len(), len);
        let mut zip = ZipReader::open(file).unwrap();
        let mut read = |name: &str| {
            let entry = zip.entry(name).cloned().unwrap();
            let mut out = Vec::new();
            zip.read_entry(&entry)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let meta: serde_json::Map<String, Value> = serde_json::from_slice(&read("_meta")).unwrap();
        let mut out = Vec::new();
        for i in 0..meta.len() {
            let name = meta[&i.to_string()].as_str().unwrap().to_string();
            out.push((name, read(&i.to_string())));
        }
        Ok(out)
    }

    #[test]
    fn downloads_a_prefix_past_the_size_target() {
        let (_dir, slot) = slot();
        let mib = vec![7u8; 1 << 20];
        let big = vec![9u8; 3 << 20];
        upload(
            &slot,
            &[
                ("small.txt", Some(b"tiny")),
                ("m0", Some(&mib)),
                ("m1", Some(&mib)),
                ("m2", Some(&mib)),
                ("huge", Some(&big)),
            ],
        )
        .unwrap();
        let got = download(&slot, &["m0", "m1", "m2", "small.txt"]).unwrap();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["m0", "m1", "m2"]);
        assert_eq!(got[0].1, mib);
        let got = download(&slot, &["huge", "small.txt"]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, big);
        // Names after the cut-off are not even looked up.
        assert_eq!(download(&slot, &["huge", "unknown"]).unwrap().len(), 1);
        assert_eq!(
            download(&slot, &["small.txt", "small.txt"]).unwrap().len(),
            2
        );
        assert!(download(&slot, &[]).unwrap().is_empty());
    }

    #[test]
    fn unknown_deleted_and_vanished_files_are_conflicts() {
        let (dir, slot) = slot();
        upload(
            &slot,
            &[
                ("a.txt", Some(b"aaa")),
                ("b.txt", Some(b"bb")),
                ("c.txt", Some(b"c")),
            ],
        )
        .unwrap();
        upload(&slot, &[("b.txt", None)]).unwrap();
        for names in [&["a.txt", "nope"][..], &["b.txt"][..]] {
            assert!(matches!(
                download(&slot, names),
                Err(ref e) if e.kind() == Kind::Conflict
            ));
        }
        fs::remove_file(dir.path().join(MEDIA_DIR).join("c.txt")).unwrap();
        assert!(matches!(
            download(&slot, &["c.txt"]),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        // Forgotten: no row, no USN, counters follow.
        assert_eq!(counters(&slot), (4, 3, 1));
        let listed: Vec<String> = slot.changes(0).unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(listed, ["a.txt", "b.txt"]);
    }

    #[test]
    fn reopening_keeps_the_store_and_cleans_temp_files() {
        let (dir, slot) = slot();
        upload(&slot, &[("a.txt", Some(b"aaa"))]).unwrap();
        drop(slot);
        fs::write(dir.path().join("media-stage-1-1.tmp"), b"partial").unwrap();
        let slot = MediaSlot::open(dir.path()).unwrap();
        assert_eq!(slot.usn().unwrap(), 1);
        assert!(temp_files_left(dir.path()).is_empty());
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;

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
