//! Every temporary file the server writes, in one place: one naming scheme,
//! made beside its final place (so the last rename never leaves the file
//! system), removed when dropped unless it was persisted, and swept when a
//! user's folder is first used after start-up. "Write a temporary file,
//! fsync it, rename it, fsync the folder" lives here ([`TempFile::persist`])
//! and nowhere else, so the durability rules cannot drift apart between
//! uploads, backups, media and new collections.
//!
//! Names are `tmp-<pid>-<unique>.<kind>.tmp`: the process id lets the sweep
//! leave alone the files of a process that still runs (a `backup restore`
//! started beside the server), `.tmp` makes them ours to remove. A pid is
//! only trusted for a file written since this boot: after a power cut pids
//! start again, and the writer's may now be another process's.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};

use crate::fsutil::{sidecar, sync_dir, sync_parent, writer_gone};

/// Every temporary file's name ends in this.
pub const SUFFIX: &str = ".tmp";
const PREFIX: &str = "tmp-";
/// SQLite's side files of a temporary database are temporary too.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A temporary file, removed (with any SQLite side files) when dropped
/// unless it was persisted.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// A new, empty file in `dir`, open for reading and writing.
    pub fn create(dir: &Path, kind: &str) -> io::Result<(TempFile, File)> {
        loop {
            let path = fresh_name(dir, kind);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((TempFile { path, kept: false }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A fresh name in `dir` with nothing created yet, for a writer that
    /// must create the file itself (SQLite's `VACUUM INTO`).
    pub fn reserve(dir: &Path, kind: &str) -> TempFile {
        TempFile {
            path: fresh_name(dir, kind),
            kept: false,
        }
    }

    /// A file with no name at all: created and unlinked at once, so its
    /// space is freed when the handle is dropped, whatever happens.
    pub fn anonymous(dir: &Path, kind: &str) -> io::Result<File> {
        let (temp, file) = TempFile::create(dir, kind)?;
        drop(temp);
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file durable under `target`'s name (in the same folder):
    /// fsync the file, rename it, fsync the folder. After a power cut the
    /// target is either the old file or the whole new one.
    pub fn persist(self, target: &Path) -> io::Result<()> {
        self.persist_with(target, |from, to| fs::rename(from, to))
    }

    /// Like [`persist`](Self::persist), with `rename` doing the rename
    /// (for a caller that must do more around it, such as retiring a stale
    /// WAL under the target's name).
    pub fn persist_with(
        mut self,
        target: &Path,
        rename: impl FnOnce(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        File::open(&self.path)?.sync_all()?;
        rename(&self.path, target)?;
        self.kept = true;
        sync_parent(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // After a rename (by someone else) the path is gone: NotFound is fine.
        let _ = fs::remove_file(&self.path);
        for suffix in SIDECARS {
            let _ = fs::remove_file(sidecar(&self.path, suffix));
        }
    }
}

/// A name in `dir` that no file of ours has: the process id, a counter and
/// a random number (a crashed process with our pid may have left names).
pub fn fresh_name(dir: &Path, kind: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut random = [0u8; 4];
    let _ = getrandom::getrandom(&mut random);
    dir.join(format!(
        "{PREFIX}{}-{:x}{:08x}.{kind}{SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        u32::from_le_bytes(random)
    ))
}

/// Removes the temporary files a crash left directly in `dir` (not in its
/// subfolders, never a folder): ours by their `.tmp` ending, including the
/// names earlier versions used, unless the process that made them still
/// runs. A missing folder is fine. Each removal is logged.
pub fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if !meta.is_file() || !is_leftover(&name, written) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                info!("removed leftover temporary file {}", entry.path().display());
                removed = true;
            }
            Err(e) => warn!("cannot remove {}: {e}", entry.path().display()),
        }
    }
    if removed {
        if let Err(e) = sync_dir(dir) {
            warn!("syncing {}: {e}", dir.display());
        }
    }
}

/// Earlier versions named a staged restore or upload
/// `collection.anki2.upload-<pid>-<random>.tmp`.
const OLD_STAGING: &str = "collection.anki2.upload-";

/// Whether `name`, last written at `written`, is a temporary file (or its
/// SQLite side file) that no running process is writing: its writer's pid
/// is gone or from before this boot, or it names none (a name from an
/// earlier version, which a restarted server no longer writes).
fn is_leftover(name: &str, written: std::time::SystemTime) -> bool {
    let base = SIDECARS
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    if !base.ends_with(SUFFIX) {
        return false;
    }
    let pid = base
        .strip_prefix(PREFIX)
        .or_else(|| base.strip_prefix(OLD_STAGING))
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => writer_gone(pid, written) || !cfg!(target_os = "linux"),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn dropped_files_go_and_persisted_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (temp, mut file) = TempFile::create(dir.path(), "upload").unwrap();
        file.write_all(b"data").unwrap();
        let name = temp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("tmp-{}-", std::process::id())),
            "{name}"
        );
        assert!(name.ends_with(".upload.tmp"), "{name}");
        fs::write(sidecar(temp.path(), "-wal"), b"x").unwrap();
        drop(temp);
        assert!(names(dir.path()).is_empty());

        let (temp, mut file) = TempFile::create(dir.path(), "new").unwrap();
        file.write_all(b"kept").unwrap();
        temp.persist(&dir.path().join("final")).unwrap();
        assert_eq!(names(dir.path()), ["final"]);
        assert_eq!(fs::read(dir.path().join("final")).unwrap(), b"kept");

        let reserved = TempFile::reserve(dir.path(), "legacy");
        assert!(!reserved.path().exists());
        fs::write(reserved.path(), b"made by someone else").unwrap();
        drop(reserved);
        let mut anonymous = TempFile::anonymous(dir.path(), "spool").unwrap();
        anonymous.write_all(b"nameless").unwrap();
        assert_eq!(names(dir.path()), ["final"]);
    }

    #[test]
    fn the_sweep_takes_leftovers_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let running = format!("tmp-{}-1.backup.tmp", std::process::id());
        for name in [
            "tmp-999999999-1.upload.tmp",
            "tmp-999999999-1.upload.tmp-wal",
            "collection.anki2.upload-999999999-ab.tmp",
            "collection.anki2.upload-999999999-ab.tmp-shm",
            "media-stage-12-3.tmp",
            "legacy-12-ab.tmp",
            running.as_str(),
            "collection.anki2",
            "media.db",
            "media-swap.journal",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let running_staging = format!("collection.anki2.upload-{}-ab.tmp", std::process::id());
        fs::write(dir.path().join(&running_staging), b"x").unwrap();
        fs::create_dir(dir.path().join("folder.tmp")).unwrap();
        sweep(dir.path());
        let mut expected = vec![
            "collection.anki2",
            "folder.tmp",
            "media-swap.journal",
            "media.db",
            "notes.txt",
            running.as_str(),
            running_staging.as_str(),
        ];
        expected.sort();
        assert_eq!(names(dir.path()), expected);
        sweep(&dir.path().join("missing"));
    }
}
