//! Small file-system steps that every writer of user data needs the same
//! way: keeping it private, making a rename durable, naming SQLite's side
//! files. One place, so the rules cannot drift apart between collection,
//! media, backups and users (temporary files: `storage::temp`).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use log::{info, warn};

/// Makes everything this process creates private to its user: folders
/// 0700, files 0600, whatever mask it was started with (a umask of 022
/// would make collections and media readable by every local account).
/// Process-wide and inherited by nothing that matters (we start no
/// programs), so it covers SQLite's own files (`-wal`, `-shm`, journals, a
/// new database) and every temporary file without a mode at each call site.
/// Call it first thing in `main`, before any file is created.
pub fn private_file_modes() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Takes group and other permissions away from a data folder made by an
/// older version (under the caller's umask, often 0755): with the folder
/// private, the files in it are too, whatever their own modes, so existing
/// collections, backups and media files need no change one by one.
/// Logs what it changed; a folder we may not change is only warned about.
pub fn make_private_dir(dir: &Path) {
    let Ok(meta) = fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let private = mode & 0o700;
    match fs::set_permissions(dir, fs::Permissions::from_mode(private)) {
        Ok(()) => info!(
            "made {} private to this user ({:o} -> {:o})",
            dir.display(),
            mode,
            private
        ),
        Err(e) => warn!(
            "{} can be read by other local users ({:o}) and cannot be changed: {e}",
            dir.display(),
            mode
        ),
    }
}

/// Makes the entries of `dir` durable (after a rename or an unlink into it).
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on other platforms; a rename is
/// still atomic there.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Makes the entry of `path` in its folder durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing parents like `fs::create_dir_all`, and
/// fsyncs the folder above each one it creates: a new folder is only an
/// entry in its parent until then, and a power cut would take it, and every
/// file saved inside it, away (a fresh `SYNC_BASE` lost whole collections).
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        // Made meanwhile by someone else, who makes it durable.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether process `pid`, which wrote a temporary file or lock last changed
/// at `written`, has ended, where the system can tell (`/proc`): such a file
/// was abandoned (a crash, a kill -9 or a power cut). Written before the
/// system booted counts as ended too: after a power cut, pids start again
/// from low numbers and the writer's pid may well be another process's (the
/// server's own, even). `false` when it cannot be told.
pub fn writer_gone(pid: u32, written: SystemTime) -> bool {
    if !Path::new("/proc/self").exists() {
        return false;
    }
    !Path::new(&format!("/proc/{pid}")).exists() || boot_time().is_some_and(|boot| written < boot)
}

/// When the system booted (`btime` in `/proc/stat`, whole seconds).
fn boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `path` with `suffix` appended to its file name, as SQLite names its
/// side files (`-wal`, `-shm`, `-journal`).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_appends_to_the_file_name() {
        assert_eq!(
            sidecar(Path::new("/a/collection.anki2"), "-wal"),
            PathBuf::from("/a/collection.anki2-wal")
        );
    }

    #[test]
    fn folders_lose_group_and_other_access() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("alice");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        make_private_dir(&old);
        let mode = fs::metadata(&old).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // A folder already private, or missing, is left alone.
        make_private_dir(&old);
        make_private_dir(&dir.path().join("missing"));
    }

    #[test]
    fn durable_folders_are_created_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("base/alice/media");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        assert!(create_dir_all_durable(&dir.path().join("file/sub")).is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn writers_that_ended_are_told_apart() {
        let now = SystemTime::now();
        assert!(!writer_gone(std::process::id(), now));
        assert!(writer_gone(4_000_000_000, now));
        // Before this boot: whoever has that pid now did not write it.
        let boot = boot_time().expect("btime in /proc/stat");
        assert!(writer_gone(
            std::process::id(),
            boot - Duration::from_secs(60)
        ));
    }
}
