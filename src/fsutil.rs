//! Small file-system steps that every writer of user data needs the same
//! way: making a rename durable, naming SQLite's side files, and clearing
//! the temporary files a crash left behind. One place, so the durability
//! rules cannot drift apart between collection, media, backups and users.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use log::{info, warn};

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

/// `path` with `suffix` appended to its file name, as SQLite names its
/// side files (`-wal`, `-shm`, `-journal`).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes the files directly in `dir` whose names `ours` recognises as our
/// own temporary files, logging each; a missing folder is not an error.
pub fn remove_leftover_temp_files(dir: &Path, ours: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !ours(&entry.file_name().to_string_lossy()) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => info!("removed leftover temporary file {}", entry.path().display()),
            Err(e) => warn!("cannot remove {}: {e}", entry.path().display()),
        }
    }
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
    fn only_recognised_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["x.tmp", "y.tmp", "keep.txt"] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        fs::create_dir(dir.path().join("sub.tmp")).unwrap();
        remove_leftover_temp_files(dir.path(), |n| n.starts_with('x') || n.starts_with("sub"));
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // A folder is never removed (remove_file fails on it, and is logged).
        assert_eq!(left, ["keep.txt", "sub.tmp", "y.tmp"]);
        remove_leftover_temp_files(&dir.path().join("missing"), |_| true);
    }
}
