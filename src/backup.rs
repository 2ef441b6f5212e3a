//! Backups with undo (issue 7): zstd-compressed snapshots of a user's
//! collection in `SYNC_BASE/<user>/backups/`, taken before a full upload
//! replaces the collection and before the first normal sync of each UTC
//! day, rotated to the newest `SYNC_BACKUPS`.
//!
//! Consistency: a snapshot is taken from a collection whose WAL has been
//! checkpointed (TRUNCATE), so the main file alone is the whole database,
//! and nothing can change it while it is read: before a restore the
//! collection is closed under the user's lock; before an upload it is closed
//! and given a second name in the backups folder, which keeps the replaced
//! file after the upload takes its name, and is read in the background
//! ([`stage_replaced`]); the day's first backup pins that state with a
//! reader and is read in the background while the day's first sync writes
//! to the WAL ([`daily_in_background`]).
//! It is streamed through zstd into a temporary file, fsynced and renamed:
//! no copy in memory, no uncompressed copy on disk. (`VACUUM INTO` would
//! write a full-size copy first and rebuild every index: more disk and
//! several times the time on a Pi, for no gain while we hold the lock.)
//!
//! A restore is staged by the command line (`backup restore`): the chosen
//! backup is decompressed, checked like an upload, stamped with a new `scm`
//! and renamed to `backups/restore-pending.anki2`. Whoever next opens the
//! collection under the user's lock (the running server at its next request
//! for that user, or the next server started) backs up the current
//! collection and swaps the staged file in (the per-user layer does that,
//! with [`pending_restore`]). So the command line never touches a database a
//! running server has open, and a server never keeps serving a replaced file.
//!
//! Everything here works on a user's folder; the caller (the per-user layer,
//! under the user's lock) closes the collection first.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use log::{info, warn};
use rusqlite::Connection;

use crate::clock::now_millis;
use crate::error::{OrSyncError, SyncError};
use crate::storage::install::{self, ReceiveError};
use crate::storage::{self, COLLECTION_FILE, TempFile};
use crate::utc::{DAY_SECS, civil_from_days, days_from_civil};

/// Folder in each user's folder; the official server uses no such name.
pub const DIR: &str = "backups";
/// `SYNC_BACKUPS` when unset.
pub const DEFAULT_KEEP: usize = 8;
/// Level 3 (zstd's default): on a 50k-note collection about 3× smaller than
/// the file, at a few hundred MB/s on a PC; higher levels cost far more
/// time under the user's lock for a few percent.
const LEVEL: i32 = 3;
/// 1 MiB, not level 3's 2 MiB: the window and the tables sized by it are
/// most of the backup's memory, which runs beside a sync and counts against
/// the server's peak (about 1 MiB less); matches further back than 1 MiB
/// are rare in a SQLite file.
const WINDOW_LOG: u32 = 20;
const PREFIX: &str = "collection-";
const SUFFIX: &str = ".anki2.zst";
/// A staged restore, applied at the next use of the collection.
const PENDING: &str = "restore-pending.anki2";
/// In the backups folder: the collection a full upload replaced, under a
/// second name (a hard link) until its backup is written
/// ([`stage_replaced`]); after a crash, its backup is written when the
/// user's folder is next opened ([`finish_replaced`]).
const REPLACED: &str = "replaced.anki2";

/// How many backups to keep per user (`SYNC_BACKUPS`); set once at start-up,
/// read by the hooks in the sync paths. 0 disables backups.
static KEEP: AtomicUsize = AtomicUsize::new(DEFAULT_KEEP);

pub fn set_keep(keep: usize) {
    KEEP.store(keep, Ordering::Relaxed);
}

pub fn keep() -> usize {
    KEEP.load(Ordering::Relaxed)
}

/// Why a backup was taken; part of its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The collection a full upload was about to replace.
    BeforeUpload,
    /// The first normal sync of a UTC day.
    Daily,
    /// The collection a restore was about to replace.
    BeforeRestore,
}

impl Reason {
    const ALL: [Reason; 3] = [Reason::BeforeUpload, Reason::Daily, Reason::BeforeRestore];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BeforeUpload => "before-upload",
            Reason::Daily => "daily",
            Reason::BeforeRestore => "before-restore",
        }
    }

    fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One backup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub file: String,
    pub path: PathBuf,
    /// When it was taken, seconds since the epoch (UTC).
    pub secs: i64,
    pub reason: Reason,
    /// Compressed size in bytes.
    pub size: u64,
}

pub fn backups_dir(user_dir: &Path) -> PathBuf {
    user_dir.join(DIR)
}

fn pending_path(user_dir: &Path) -> PathBuf {
    backups_dir(user_dir).join(PENDING)
}

/// The user's backups, newest first. Files we did not name are ignored.
pub fn list(user_dir: &Path) -> io::Result<Vec<Backup>> {
    let entries = match fs::read_dir(backups_dir(user_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((secs, reason)) = parse_name(&file) else {
            continue;
        };
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        found.push(Backup {
            path: entry.path(),
            file,
            secs,
            reason,
            size,
        });
    }
    found.sort_by(|a, b| b.secs.cmp(&a.secs).then_with(|| b.file.cmp(&a.file)));
    Ok(found)
}

/// Backs up the collection in `user_dir` for `reason`, then rotates. Never
/// fails the caller: a backup is a safety net, not part of the sync. The
/// collection must be closed. Waits for a day's first backup of the same
/// user still being written, so backups never race for a name or a
/// rotation, and a file about to be replaced is backed up in turn.
pub fn take(user_dir: &Path, reason: Reason) {
    wait_for(user_dir);
    if let Err(e) = snapshot(user_dir, reason, now_millis() / 1000, keep()) {
        warn!(
            "backup ({}) of {} failed: {e}",
            reason.as_str(),
            user_dir.join(COLLECTION_FILE).display()
        );
    }
}

/// Whether a [`Reason::Daily`] backup is due: none of any kind was taken
/// today (UTC). The per-user layer asks before a normal sync starts, so the
/// backup holds the collection as it was before the day's first incoming
/// changes.
pub fn daily_due(user_dir: &Path) -> bool {
    daily_due_at(user_dir, now_millis() / 1000, keep())
}

fn daily_due_at(user_dir: &Path, now_secs: i64, keep: usize) -> bool {
    // One being written counts as today's.
    if keep == 0 || in_flight(user_dir) {
        return false;
    }
    match list(user_dir) {
        Ok(backups) => backups
            .first()
            .is_none_or(|b| b.secs.div_euclid(DAY_SECS) != now_secs.div_euclid(DAY_SECS)),
        Err(e) => {
            warn!("listing the backups in {}: {e}", user_dir.display());
            false
        }
    }
}

/// What [`daily_in_background`] did.
#[must_use]
pub enum Daily {
    /// Nothing worth keeping (no notes, no cards).
    Skipped,
    /// A collection in rollback-journal mode: a reader there would block
    /// the sync's commit, so the caller backs it up (closed) before the
    /// sync instead.
    NotWal,
    /// Being written by this thread, which returns the backup (the server
    /// lets it run detached; tests wait for it).
    Background(JoinHandle<Option<Backup>>),
}

/// Kept by the sync that started the day's backup: while it lives (until
/// that sync finishes, fails or is abandoned), but at most [`HOLD_AT_MOST`],
/// the backup waits before it compresses, so that compressing does not take
/// a core from the sync itself. Measured on 2 cores, the day's first sync of
/// a 50k-note collection: 0.033 s with the compression beside it, 0.024 s
/// with it after.
pub struct Hold {
    _release_on_drop: Sender<()>,
}

/// The backup's side of a [`Hold`].
pub struct Release(Receiver<()>);

/// How long a backup waits for its [`Hold`] at most (a client that stops
/// in the middle of its sync). The pinned state cannot change meanwhile.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// How long a released backup still waits before it compresses: clients
/// end a sync with `finish` and then start their media sync at once, and
/// reading and compressing the whole collection beside those first requests
/// (and the client's own work after `finish`) would slow them on a small
/// board. (Bench, 2 cores, the day's first sync of a 50k-note collection
/// measured until the client returns: 0.021-0.040 s of wall and
/// 0.013-0.014 s of server CPU with compressing right after `finish`.)
const SETTLE: Duration = Duration::from_secs(1);

/// A [`Hold`] and the [`Release`] it gives when dropped.
pub fn hold() -> (Hold, Release) {
    let (tx, rx) = bounded(0);
    (
        Hold {
            _release_on_drop: tx,
        },
        Release(rx),
    )
}

/// The day's first backup, off the sync's critical path: on `col`, the
/// user's own connection (under the user's lock, so nothing writes
/// meanwhile), the WAL is folded into the main file; a reader on a second
/// connection then pins that state, and a thread compresses the main file,
/// once `release` (if any) says the sync is over. The sync waits for the
/// checkpoint only.
pub fn daily_in_background(
    user_dir: &Path,
    col: &Connection,
    release: Option<Release>,
) -> io::Result<Daily> {
    daily_in_background_at(user_dir, col, now_millis() / 1000, keep(), release)
}

fn daily_in_background_at(
    user_dir: &Path,
    col: &Connection,
    now_secs: i64,
    keep: usize,
    release: Option<Release>,
) -> io::Result<Daily> {
    let pinned = match pin(&user_dir.join(COLLECTION_FILE), col)? {
        Pin::Pinned(pinned) => pinned,
        Pin::Empty => return Ok(Daily::Skipped),
        Pin::NotWal => return Ok(Daily::NotWal),
    };
    let dir = user_dir.to_path_buf();
    let guard = InFlight::start(&dir, true);
    let spawned = std::thread::Builder::new()
        .name("backup".into())
        .spawn(move || {
            let _guard = guard;
            give_way();
            if let Some(Release(released)) = release {
                // Returns when the Hold is dropped (or on timeout).
                let _ = released.recv_timeout(HOLD_AT_MOST);
                std::thread::sleep(SETTLE);
            }
            // One backup is compressed at a time, whoever's it is: each holds
            // a zstd context of a few MiB.
            let _one = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
            let Pinned { reader, file } = pinned;
            let written = write(&dir, file, Reason::Daily, now_secs, keep);
            // Ends the read transaction: checkpoints may go on.
            drop(reader);
            match written {
                Ok(backup) => Some(backup),
                Err(e) => {
                    warn!("daily backup in {} failed: {e}", dir.display());
                    None
                }
            }
        })?;
    Ok(Daily::Background(spawned))
}

/// A collection's state held still for a backup taken while it changes.
struct Pinned {
    /// A second connection whose read transaction began when the WAL was
    /// empty. SQLite never copies WAL frames into the main file while such
    /// a reader lives (a checkpoint needs the WAL's read lock 0, which this
    /// reader holds), so the main file stays exactly the pinned state
    /// whatever the sync writes to the WAL meanwhile.
    reader: Connection,
    /// The main file, opened while pinned.
    file: File,
}

enum Pin {
    Pinned(Pinned),
    Empty,
    NotWal,
}

/// Checkpoints on `col` and pins the result with a reader (see [`Pinned`]).
fn pin(path: &Path, col: &Connection) -> io::Result<Pin> {
    let mode: String = col
        .query_row("pragma journal_mode", [], |r| r.get(0))
        .map_err(io::Error::other)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(Pin::NotWal);
    }
    let busy: i64 = col
        .query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(io::Error::other)?;
    if busy != 0 {
        return Err(io::Error::other("collection busy; checkpoint incomplete"));
    }
    // On `col`, whose schema is loaded; nothing writes meanwhile (the
    // caller holds the user's lock). A file that cannot be read as a
    // collection is kept anyway: it is the user's data.
    let worth_keeping: bool = col
        .query_row(
            "select exists(select 1 from notes) or exists(select 1 from cards)",
            [],
            |r| r.get(0),
        )
        .unwrap_or(true);
    if !worth_keeping {
        return Ok(Pin::Empty);
    }
    let reader = storage::open(path).map_err(io::Error::other)?;
    reader.execute_batch("begin").map_err(io::Error::other)?;
    // The first read starts the read transaction: the pin. The schema
    // version is in the file's header, so this reader never parses the
    // schema (a millisecond of the day's first sync on a 50k collection).
    reader
        .query_row("pragma schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(io::Error::other)?;
    let file = File::open(path)?;
    Ok(Pin::Pinned(Pinned { reader, file }))
}

/// What a background backup thread calls first: set by the binary to give
/// the thread the lowest CPU and disk priority (that takes system calls the
/// library, free of `unsafe`, does not make), so the syncs beside a backup,
/// and the media sync a client starts right after the day's first sync, run
/// first on a small board.
static GIVE_WAY: OnceLock<fn()> = OnceLock::new();

/// Sets what background backup threads call first (once; later calls are
/// ignored).
pub fn set_give_way(lower_priority: fn()) {
    let _ = GIVE_WAY.set(lower_priority);
}

fn give_way() {
    if let Some(lower_priority) = GIVE_WAY.get() {
        lower_priority();
    }
}

/// Users' folders whose backup is being written in the background, and
/// whether it pins the collection (a day's first backup) or reads a file
/// nothing uses any more (the collection an upload replaced).
static IN_FLIGHT: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
/// Signalled when one of them is done.
static DONE: Condvar = Condvar::new();
/// Held while a backup is compressed in the background.
static WRITING: Mutex<()> = Mutex::new(());

/// Marks a user's background backup as running until dropped (even if its
/// thread panics).
struct InFlight(PathBuf, bool);

impl InFlight {
    fn start(dir: &Path, pins: bool) -> InFlight {
        let mut running = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
        running.push((dir.to_path_buf(), pins));
        InFlight(dir.to_path_buf(), pins)
    }
}

impl Drop for InFlight {
    /// The end of a background backup: whoever waits for it goes on, then
    /// the memory its compressor and reader held goes back to the system.
    fn drop(&mut self) {
        {
            let mut running = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = running
                .iter()
                .position(|(d, p)| *d == self.0 && *p == self.1)
            {
                running.swap_remove(i);
            }
            DONE.notify_all();
        }
        crate::memory::trim();
    }
}

fn in_flight(dir: &Path) -> bool {
    let running = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    running.iter().any(|(d, _)| d == dir)
}

/// Waits until the user's background backups, if any, are on disk (and a
/// pinning reader gone, so checkpoints reach the main file again).
pub fn wait_for(dir: &Path) {
    wait_while(|(d, _)| d == dir);
}

/// Waits until no background backup pins the user's collection (the
/// backup of a collection an upload replaced may go on).
pub fn wait_for_pin(dir: &Path) {
    wait_while(|(d, pins)| d == dir && *pins);
}

fn wait_while(running_for: impl Fn(&(PathBuf, bool)) -> bool) {
    let mut running = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    while running.iter().any(&running_for) {
        running = DONE.wait(running).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Holds back every background backup until dropped (tests: to be sure a
/// backup is still running at some point).
#[cfg(test)]
pub(crate) fn hold_background_backups() -> std::sync::MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until every background backup is on disk (at shutdown).
pub fn wait_all() {
    let mut running = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    while !running.is_empty() {
        running = DONE.wait(running).unwrap_or_else(PoisonError::into_inner);
    }
}

/// The collection a full upload is about to replace, under a second name in
/// the backups folder, waiting to be backed up. Once the upload is in place,
/// [`Replaced::back_up_in_background`] compresses it off the request's
/// critical path (a fifth of a 50k-note upload's server time); dropped
/// instead (the upload was not installed), it removes the second name.
pub struct Replaced {
    user_dir: PathBuf,
    staged: Option<PathBuf>,
    secs: i64,
}

/// Prepares the backup of the collection in `user_dir` (closed, under the
/// user's lock) that a full upload is about to replace: folds its WAL in,
/// and if it holds anything, links it into the backups folder durably.
/// Where no link can be made (a file system without hard links) the backup
/// is written at once instead. `None` when there is nothing left to do.
/// Never fails the caller: a failed backup only warns.
pub fn stage_replaced(user_dir: &Path) -> Option<Replaced> {
    wait_for(user_dir);
    match stage_replaced_at(user_dir, now_millis() / 1000, keep()) {
        Ok(staged) => staged,
        Err(e) => {
            warn!(
                "backup (before-upload) of {} failed: {e}",
                user_dir.join(COLLECTION_FILE).display()
            );
            None
        }
    }
}

fn stage_replaced_at(user_dir: &Path, now_secs: i64, keep: usize) -> io::Result<Option<Replaced>> {
    let source = user_dir.join(COLLECTION_FILE);
    if keep == 0 || !source.exists() {
        return Ok(None);
    }
    // One left by a failed backup is written first.
    finish_replaced(user_dir);
    if !checkpoint_and_check(&source)? {
        return Ok(None);
    }
    let dir = backups_dir(user_dir);
    crate::fsutil::create_dir_all_durable(&dir)?;
    let staged = dir.join(REPLACED);
    if let Err(e) = fs::hard_link(&source, &staged) {
        info!("cannot link {} ({e}): backing it up now", source.display());
        write(
            user_dir,
            File::open(&source)?,
            Reason::BeforeUpload,
            now_secs,
            keep,
        )?;
        return Ok(None);
    }
    crate::fsutil::sync_dir(&dir)?;
    Ok(Some(Replaced {
        user_dir: user_dir.to_path_buf(),
        staged: Some(staged),
        secs: now_secs,
    }))
}

impl Replaced {
    /// The upload is in place: the staged file is nobody's collection any
    /// more, and a thread compresses it into a backup, then removes it.
    /// [`wait_for`] and [`wait_all`] wait for that thread.
    pub fn back_up_in_background(mut self) {
        let Some(staged) = self.staged.take() else {
            return;
        };
        let user_dir = self.user_dir.clone();
        let secs = self.secs;
        let guard = InFlight::start(&user_dir, false);
        let spawned = std::thread::Builder::new()
            .name("backup".into())
            .spawn(move || {
                let _guard = guard;
                give_way();
                let _one = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
                write_staged(&user_dir, &staged, secs);
            });
        if let Err(e) = spawned {
            warn!(
                "starting a backup thread ({e}): the replaced collection is backed up when {} is next opened",
                self.user_dir.display()
            );
        }
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            if let Err(e) = fs::remove_file(&staged) {
                warn!("removing {}: {e}", staged.display());
            }
        }
    }
}

/// Writes the backup of a collection an upload replaced that is still
/// staged in `user_dir` (the server stopped before it was written). Called
/// when the user's folder is opened, and before the next one is staged.
pub fn finish_replaced(user_dir: &Path) {
    let staged = backups_dir(user_dir).join(REPLACED);
    if staged.exists() {
        write_staged(user_dir, &staged, now_millis() / 1000);
    }
}

/// Compresses `staged` into a before-upload backup, then removes it; kept
/// if that failed, so a later [`finish_replaced`] tries again.
fn write_staged(user_dir: &Path, staged: &Path, secs: i64) {
    let written = File::open(staged)
        .and_then(|file| write(user_dir, file, Reason::BeforeUpload, secs, keep()));
    match written.and_then(|_| fs::remove_file(staged)) {
        Ok(()) => {}
        Err(e) => warn!(
            "backup (before-upload) of the collection replaced in {} failed: {e}",
            user_dir.display()
        ),
    }
}

/// Writes a snapshot of the (closed) collection in `user_dir` and keeps the
/// newest `keep`. Skips (returns `None`) when backups are off, when there is
/// no collection, and when it holds no notes and no cards (a brand-new one).
fn snapshot(
    user_dir: &Path,
    reason: Reason,
    now_secs: i64,
    keep: usize,
) -> io::Result<Option<Backup>> {
    if keep == 0 {
        return Ok(None);
    }
    let source = user_dir.join(COLLECTION_FILE);
    if !source.exists() {
        return Ok(None);
    }
    if !checkpoint_and_check(&source)? {
        return Ok(None);
    }
    write(user_dir, File::open(&source)?, reason, now_secs, keep).map(Some)
}

/// Compresses `source` (the main file of a collection nothing changes
/// meanwhile) into the user's backups, then rotates.
fn write(
    user_dir: &Path,
    source: File,
    reason: Reason,
    now_secs: i64,
    keep: usize,
) -> io::Result<Backup> {
    let clock = Instant::now();
    let dir = backups_dir(user_dir);
    crate::fsutil::create_dir_all_durable(&dir)?;
    // Two backups in one second (an upload right after a restore): the
    // second takes the next free second, whatever the reasons, so names stay
    // unique and their times keep the order they were taken in.
    let taken: Vec<i64> = list(user_dir)?.iter().map(|b| b.secs).collect();
    let mut secs = now_secs;
    while taken.contains(&secs) {
        secs += 1;
    }
    let target = dir.join(file_name(secs, reason));
    let original = source.metadata().map(|m| m.len()).unwrap_or(0);
    let (temp, output) = TempFile::create(&dir, "backup")?;
    let size = compress(source, output)?;
    temp.persist(&target)?;
    let file = file_name(secs, reason);
    info!(
        "backup {} ({} -> {} KiB) in {} ms",
        target.display(),
        original / 1024,
        size / 1024,
        clock.elapsed().as_millis()
    );
    let removed = rotate(&dir, keep)?;
    if removed > 0 {
        info!("removed {removed} old backup(s) in {}", dir.display());
    }
    Ok(Backup {
        file,
        path: target,
        secs,
        reason,
        size,
    })
}

/// Folds any WAL into the main file (the collection is closed, so under the
/// user's lock nobody else has it open) and tells whether the collection
/// holds anything worth keeping. A file that cannot be read as a collection
/// is kept anyway: it is still the user's data.
fn checkpoint_and_check(path: &Path) -> io::Result<bool> {
    let conn = storage::open(path).map_err(io::Error::other)?;
    let busy: i64 = conn
        .query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(io::Error::other)?;
    let worth_keeping = conn
        .query_row(
            "select exists(select 1 from notes) or exists(select 1 from cards)",
            [],
            |r| r.get(0),
        )
        .unwrap_or(true);
    conn.close().map_err(|(_, e)| io::Error::other(e))?;
    if busy != 0 {
        return Err(io::Error::other("collection busy; checkpoint incomplete"));
    }
    Ok(worth_keeping)
}

/// Streams `source` through zstd into `output` (a new temporary file).
/// Returns the compressed size.
fn compress(source: File, output: File) -> io::Result<u64> {
    let mut input = BufReader::with_capacity(256 * 1024, source);
    let mut encoder = zstd::stream::write::Encoder::new(output, LEVEL)?;
    encoder.window_log(WINDOW_LOG)?;
    // A damaged backup is then refused on restore instead of half-restored.
    encoder.include_checksum(true)?;
    io::copy(&mut input, &mut encoder)?;
    let mut output = encoder.finish()?;
    output.flush()?;
    output.metadata().map(|m| m.len())
}

/// Deletes all but the newest `keep` backups, after sweeping the temporary
/// files abandoned here (`storage::temp::sweep`: a `backup restore` killed
/// while the server runs leaves some). `keep == 0` means backups are off:
/// existing ones are left alone.
fn rotate(dir: &Path, keep: usize) -> io::Result<usize> {
    storage::temp::sweep(dir);
    if keep == 0 {
        return Ok(0);
    }
    let user_dir = dir.parent().unwrap_or(dir);
    let mut removed = 0;
    for old in list(user_dir)?.into_iter().skip(keep) {
        fs::remove_file(&old.path)?;
        removed += 1;
    }
    Ok(removed)
}

/// The restore [`stage_restore`] staged in `user_dir`, if there is one. The
/// per-user layer swaps it in (after a [`Reason::BeforeRestore`] backup, so
/// a restore can be undone too) whenever the collection is about to be used.
pub fn pending_restore(user_dir: &Path) -> Option<PathBuf> {
    let pending = pending_path(user_dir);
    pending.exists().then_some(pending)
}

/// `backup restore`: decompresses the backup `id` (a number from [`list`],
/// 1 = newest, or a file name; default newest), checks it like an upload,
/// sets `scm` and `mod` to `now_ms` so every device is told a full sync is
/// needed, and stages it for the server to swap in. Replaces a restore
/// staged earlier and not yet applied.
pub fn stage_restore(user_dir: &Path, id: Option<&str>, now_ms: i64) -> Result<Backup, SyncError> {
    let backups = list(user_dir).or_internal("reading the backups")?;
    let chosen = resolve(&backups, id)?.clone();
    let source = File::open(&chosen.path).or_internal(chosen.file.clone())?;
    let mut decoder = zstd::stream::read::Decoder::new(BufReader::new(source))
        .or_internal(chosen.file.clone())?;
    let dir = backups_dir(user_dir);
    let temp = install::receive(&dir, &mut decoder).map_err(|e| match e {
        ReceiveError::Body(e) => {
            SyncError::bad_request(format!("{} is damaged", chosen.file)).with_source(e)
        }
        ReceiveError::Disk(e) => {
            SyncError::internal(format!("writing into {}", dir.display())).with_source(e)
        }
    })?;
    install::validate(&temp)
        .or_bad_request(format!("{} is not a usable collection", chosen.file))?;
    let stamp = storage::open(temp.path()).and_then(|conn| {
        conn.execute("update col set scm = ?1, mod = ?1", [now_ms])?;
        conn.close().map_err(|(_, e)| e)
    });
    stamp.or_internal("marking the restored collection")?;
    temp.persist(&pending_path(user_dir))
        .or_internal(format!("staging the restore in {}", dir.display()))?;
    Ok(chosen)
}

/// The folder of `user` under `base`, for the command line: the name must
/// follow the user-name rule and the folder must exist.
pub fn user_dir(base: &Path, user: &str) -> Result<PathBuf, SyncError> {
    if let Some(problem) = crate::layout::user_name_problem(user) {
        return Err(SyncError::bad_request(format!(
            "{user:?} is not a user name: {problem}"
        )));
    }
    let dir = base.join(user);
    if !dir.is_dir() {
        return Err(SyncError::bad_request(format!(
            "no user {user:?} in {}",
            base.display()
        )));
    }
    Ok(dir)
}

pub fn resolve<'a>(backups: &'a [Backup], id: Option<&str>) -> Result<&'a Backup, SyncError> {
    let found = match id {
        None => backups.first(),
        Some(id) => match id.parse::<usize>() {
            Ok(n) if n >= 1 => backups.get(n - 1),
            Ok(_) => None,
            Err(_) => backups.iter().find(|b| b.file == id),
        },
    };
    found.ok_or_else(|| match id {
        _ if backups.is_empty() => SyncError::bad_request("there are no backups"),
        Some(id) => SyncError::bad_request(format!("no backup {id:?} (see `backup list`)")),
        None => unreachable!("the newest of a non-empty list exists"),
    })
}

/// `backup list`: one line per backup, newest first.
pub fn print_list(user_dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    let backups = list(user_dir)?;
    if backups.is_empty() {
        writeln!(out, "no backups yet in {}", backups_dir(user_dir).display())?;
    } else {
        writeln!(
            out,
            "{:>3}  {:<19}  {:<14}  {:>10}  FILE",
            "ID", "TIME (UTC)", "REASON", "SIZE"
        )?;
    }
    for (i, b) in backups.iter().enumerate() {
        writeln!(
            out,
            "{:>3}  {:<19}  {:<14}  {:>10}  {}",
            i + 1,
            display_time(b.secs),
            b.reason.as_str(),
            human_size(b.size),
            b.file
        )?;
    }
    if pending_path(user_dir).exists() {
        writeln!(
            out,
            "a restore is staged; the server applies it at the user's next sync"
        )?;
    }
    Ok(())
}

pub fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// `collection-20260503-101500-daily.anki2.zst`
fn file_name(secs: i64, reason: Reason) -> String {
    let (date, time) = utc_parts(secs);
    format!("{PREFIX}{date}-{time}-{}{SUFFIX}", reason.as_str())
}

fn parse_name(name: &str) -> Option<(i64, Reason)> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, reason) = (middle.get(..15)?, middle.get(15..)?);
    let reason = Reason::parse(reason.strip_prefix('-')?)?;
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = stamp.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if stamp.as_bytes()[8] != b'-' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * DAY_SECS + h * 3600 + mi * 60 + s;
    // Rejects dates that do not exist (20260231).
    (utc_parts(secs).0 == stamp[..8]).then_some((secs, reason))
}

/// `("20260503", "101500")`
fn utc_parts(secs: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(secs.div_euclid(DAY_SECS));
    let t = secs.rem_euclid(DAY_SECS);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", t / 3600, t / 60 % 60, t % 60),
    )
}

/// `2026-05-03 10:15:00`
fn display_time(secs: i64) -> String {
    let (date, time) = utc_parts(secs);
    format!(
        "{}-{}-{} {}:{}:{}",
        &date[..4],
        &date[4..6],
        &date[6..],
        &time[..2],
        &time[2..4],
        &time[4..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-05-03 10:15:00 UTC.
    const T0: i64 = 1_777_803_300;

    /// Gives the collection in the user folder `dir` `notes` notes, creating
    /// it first if there is none (0 leaves a new one brand-new).
    pub(crate) fn fill(dir: &Path, notes: i64) {
        let path = dir.join(COLLECTION_FILE);
        if !path.exists() {
            storage::create_collection(&path, 1_700_000_000_000).unwrap();
        }
        let col = storage::open(&path).unwrap();
        for id in 1..=notes {
            col.execute(
                "insert into notes values (?1, ?2, 1, 0, 0, '', 'front\x1fback', 'front', 0, 0, '')",
                rusqlite::params![id, format!("guid{id}")],
            )
            .unwrap();
        }
    }

    pub(crate) fn notes(dir: &Path) -> i64 {
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        col.query_row("select count(*) from notes", [], |r| r.get(0))
            .unwrap()
    }

    /// The threads that called the give-way hook.
    static GAVE_WAY: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());

    fn record_give_way() {
        GAVE_WAY.lock().unwrap().push(std::thread::current().id());
    }

    #[test]
    fn background_backup_threads_give_way_first() {
        set_give_way(record_give_way);
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 50);
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        let Daily::Background(thread) = daily_in_background_at(dir, &col, T0, 8, None).unwrap()
        else {
            panic!("backed up in the background");
        };
        let id = thread.thread().id();
        thread.join().unwrap().expect("a backup");
        assert!(GAVE_WAY.lock().unwrap().contains(&id));
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(
            file_name(T0, Reason::BeforeUpload),
            "collection-20260503-101500-before-upload.anki2.zst"
        );
        assert_eq!(display_time(T0), "2026-05-03 10:15:00");
        for reason in Reason::ALL {
            for secs in [0, T0, T0 + 86_399, 951_782_400 /* 2000-02-29 */] {
                assert_eq!(parse_name(&file_name(secs, reason)), Some((secs, reason)));
            }
        }
        for name in [
            "collection-20260231-101500-daily.anki2.zst",
            "collection-20260503-101500-weekly.anki2.zst",
            "collection-20260503-251500-daily.anki2.zst",
            "collection-2026050-3101500-daily.anki2.zst",
            "collection-20260503-101500-daily.anki2",
            "collection-20260503-101500.anki2.zst",
            "restore-pending.anki2",
            "tmp-1-2.tmp",
        ] {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn rotation_keeps_the_newest_and_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let backups = backups_dir(dir.path());
        fs::create_dir_all(&backups).unwrap();
        for day in 0..5 {
            fs::write(
                backups.join(file_name(T0 + day * DAY_SECS, Reason::Daily)),
                b"x",
            )
            .unwrap();
        }
        fs::write(backups.join("notes.txt"), b"mine").unwrap();
        assert_eq!(rotate(&backups, 0).unwrap(), 0, "0 = off, keeps everything");
        assert_eq!(rotate(&backups, 3).unwrap(), 2);
        let left: Vec<i64> = list(dir.path()).unwrap().iter().map(|b| b.secs).collect();
        assert_eq!(
            left,
            [T0 + 4 * DAY_SECS, T0 + 3 * DAY_SECS, T0 + 2 * DAY_SECS]
        );
        assert!(backups.join("notes.txt").exists());
    }

    #[test]
    fn backups_in_one_second_keep_the_order_they_were_taken_in() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 3);
        snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap();
        snapshot(dir, Reason::BeforeRestore, T0, 8).unwrap();
        let reasons: Vec<Reason> = list(dir).unwrap().iter().map(|b| b.reason).collect();
        assert_eq!(
            reasons,
            [Reason::BeforeRestore, Reason::BeforeUpload],
            "newest first"
        );
    }

    #[test]
    fn empty_collections_are_not_backed_up_and_full_ones_are() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        assert_eq!(snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap(), None);
        fill(dir, 0);
        assert_eq!(snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap(), None);
        fill(dir, 3);
        assert_eq!(snapshot(dir, Reason::BeforeUpload, T0, 0).unwrap(), None);
        let b = snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap().unwrap();
        assert_eq!(b.reason, Reason::BeforeUpload);
        // The same second again gets the next one.
        let again = snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap().unwrap();
        assert_eq!(again.secs, T0 + 1);
        assert_eq!(list(dir).unwrap().len(), 2);
        // The snapshot is the whole collection, WAL included.
        let bytes = zstd::decode_all(File::open(&b.path).unwrap()).unwrap();
        let copy = dir.join("copy.anki2");
        fs::write(&copy, bytes).unwrap();
        let conn = storage::open(&copy).unwrap();
        let n: i64 = conn
            .query_row("select count(*) from notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn daily_backups_are_at_most_one_per_utc_day() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 2);
        let daily = |now| {
            let due = daily_due_at(dir, now, 8);
            if due {
                snapshot(dir, Reason::Daily, now, 8).unwrap().unwrap();
            }
            due
        };
        assert!(daily(T0));
        assert!(!daily(T0 + 60));
        // 23:59:59 the same day, then just after midnight.
        let midnight = (T0 / DAY_SECS + 1) * DAY_SECS;
        assert!(!daily(midnight - 1));
        assert!(daily(midnight));
        assert!(!daily(midnight + 3600));
        // Any backup taken that day counts (here one before an upload).
        snapshot(dir, Reason::BeforeUpload, midnight + DAY_SECS, 8).unwrap();
        assert!(!daily(midnight + DAY_SECS + 60));
        assert!(!daily_due_at(dir, midnight + 5 * DAY_SECS, 0), "0 = off");
        assert_eq!(list(dir).unwrap().len(), 3);
        assert_eq!(notes(dir), 2);
    }

    /// The notes a backup holds, after an integrity check.
    fn notes_in(backup: &Backup, scratch: &Path) -> i64 {
        let copy = scratch.join(format!("{}.anki2", backup.file));
        fs::write(
            &copy,
            zstd::decode_all(File::open(&backup.path).unwrap()).unwrap(),
        )
        .unwrap();
        let conn = storage::open(&copy).unwrap();
        let ok: String = conn
            .query_row("pragma integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        conn.query_row("select count(*) from notes", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_days_first_backup_holds_the_state_before_the_sync_that_runs_beside_it() {
        let user = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 3000);
        // The user's connection, as the per-user layer holds it.
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        // The backup thread waits for this until the sync below is done, so
        // it reads the file after every write and checkpoint of the sync.
        let hold = WRITING.lock().unwrap();
        let Daily::Background(thread) = daily_in_background_at(dir, &col, T0, 8, None).unwrap()
        else {
            panic!("a collection in WAL mode is backed up in the background");
        };
        // The sync goes on at once, in its own transactions; with
        // checkpoints as eager as they can be, any that touched the main
        // file under the pinning reader would show in the backup.
        col.pragma_update(None, "wal_autocheckpoint", 1).unwrap();
        for round in 0..20 {
            col.execute_batch("begin immediate").unwrap();
            col.execute(
                "update notes set flds = ?1 || flds where id % 7 = ?2",
                rusqlite::params!["changed ".repeat(40), round % 7],
            )
            .unwrap();
            col.execute(
                "insert into notes values (?1, ?2, 1, 0, 0, '', 'new', 'new', 0, 0, '')",
                rusqlite::params![10_000 + round, format!("new{round}")],
            )
            .unwrap();
            col.execute_batch("commit").unwrap();
        }
        // A second sync the same day does not start another.
        assert!(!daily_due_at(dir, T0 + 5, 8));
        drop(hold);
        let backup = thread.join().unwrap().expect("a backup");
        assert_eq!(backup.reason, Reason::Daily);
        assert_eq!(notes_in(&backup, scratch.path()), 3000);
        assert!(!daily_due_at(dir, T0 + 10, 8));
        assert!(daily_due_at(dir, T0 + DAY_SECS, 8));
        // Once it is on disk, checkpoints reach the main file again.
        let busy: i64 = col
            .query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        drop(col);
        assert_eq!(notes(dir), 3020);
    }

    #[test]
    fn the_days_first_backup_compresses_once_its_hold_is_dropped() {
        let user = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 500);
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        let (hold, release) = hold();
        let Daily::Background(thread) =
            daily_in_background_at(dir, &col, T0, 8, Some(release)).unwrap()
        else {
            panic!("backed up in the background");
        };
        // The sync that holds it writes meanwhile; nothing is written yet.
        col.execute("delete from notes where id % 2 = 0", [])
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(!thread.is_finished());
        assert!(list(dir).unwrap().is_empty());
        assert!(in_flight(dir));
        drop(hold);
        let backup = thread.join().unwrap().expect("a backup");
        assert_eq!(notes_in(&backup, scratch.path()), 500);
        assert!(!in_flight(dir));
    }

    #[test]
    fn a_backup_before_an_upload_waits_for_the_days_first_one() {
        let user = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 500);
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        let daily = daily_in_background_at(dir, &col, T0, 8, None).unwrap();
        let Daily::Background(thread) = daily else {
            panic!("backed up in the background");
        };
        drop(col);
        take(dir, Reason::BeforeUpload);
        assert!(!in_flight(dir));
        let backups = list(dir).unwrap();
        assert_eq!(backups.len(), 2);
        for backup in &backups {
            assert_eq!(notes_in(backup, scratch.path()), 500);
        }
        assert!(thread.join().unwrap().is_some());
    }

    #[test]
    fn a_collection_in_rollback_mode_is_left_to_the_caller_and_an_empty_one_skipped() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 0);
        let col = storage::open(&dir.join(COLLECTION_FILE)).unwrap();
        assert!(matches!(
            daily_in_background_at(dir, &col, T0, 8, None).unwrap(),
            Daily::Skipped
        ));
        fill(dir, 4);
        let mode: String = col
            .query_row("pragma journal_mode = delete", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        assert!(matches!(
            daily_in_background_at(dir, &col, T0, 8, None).unwrap(),
            Daily::NotWal
        ));
        assert!(list(dir).unwrap().is_empty());
    }

    #[test]
    fn a_staged_restore_waits_for_the_server() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path();
        fill(dir, 5);
        snapshot(dir, Reason::BeforeUpload, T0, 8).unwrap();
        assert_eq!(pending_restore(dir), None);
        let chosen = stage_restore(dir, None, 1_900_000_000_000).unwrap();
        assert_eq!(chosen.reason, Reason::BeforeUpload);
        // Staged only: the collection itself is untouched.
        let staged = pending_restore(dir).unwrap();
        assert_eq!(notes(dir), 5);
        let conn = storage::open(&staged).unwrap();
        let (scm, modified): (i64, i64) = conn
            .query_row("select scm, mod from col", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((scm, modified), (1_900_000_000_000, 1_900_000_000_000));
    }

    #[test]
    fn restore_refuses_garbage_and_unknown_ids() {
        let user = tempfile::tempdir().unwrap();
        let dir = user.path().to_path_buf();
        assert!(
            stage_restore(&dir, None, 1)
                .unwrap_err()
                .to_string()
                .contains("no backups")
        );
        let backups = backups_dir(&dir);
        fs::create_dir_all(&backups).unwrap();
        let not_zstd = file_name(T0, Reason::Daily);
        fs::write(backups.join(&not_zstd), b"not zstd at all").unwrap();
        let not_sqlite = file_name(T0 + 1, Reason::Daily);
        fs::write(
            backups.join(&not_sqlite),
            zstd::encode_all(&[7u8; 10_000][..], 3).unwrap(),
        )
        .unwrap();
        let truncated = file_name(T0 + 2, Reason::Daily);
        let good = {
            fill(&dir, 1);
            let b = snapshot(&dir, Reason::Daily, T0 + 3, 8).unwrap().unwrap();
            fs::read(&b.path).unwrap()
        };
        fs::write(backups.join(&truncated), &good[..good.len() / 2]).unwrap();

        let err = stage_restore(&dir, Some(&not_zstd), 1).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        let err = stage_restore(&dir, Some(&not_sqlite), 1).unwrap_err();
        assert!(err.to_string().contains("not a usable collection"), "{err}");
        let err = stage_restore(&dir, Some("2"), 1).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(
            stage_restore(&dir, Some("9"), 1)
                .unwrap_err()
                .to_string()
                .contains("no backup")
        );
        assert!(
            stage_restore(&dir, Some("0"), 1)
                .unwrap_err()
                .to_string()
                .contains("no backup")
        );
        // Nothing was staged, and no temporary file was left behind.
        assert!(!pending_path(&dir).exists());
        let names: Vec<String> = fs::read_dir(&backups)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        // "1" is the newest, the good one.
        assert_eq!(stage_restore(&dir, Some("1"), 1).unwrap().secs, T0 + 3);
    }
}
