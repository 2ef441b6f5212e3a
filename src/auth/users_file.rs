//! The users file, `SYNC_BASE/users.txt`: accounts managed with
//! `anki-sync-lite user add|passwd|remove` next to the `SYNC_USERn`
//! variables, so people can be added or given a new password without
//! touching the service's environment or restarting it.
//!
//! One `name:PHC string` per line (the same `name:secret` shape as a
//! `SYNC_USERn` value in `PASSWORDS_HASHED` mode, so a line can be moved
//! into the environment as it is, and the host key is the same: the SHA-1 of
//! the whole line). Blank lines and lines starting with `#` are kept as they
//! are. The file is always replaced whole (temp file, fsync, rename), so the
//! server never reads half of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::password::Pbkdf2Hash;
use crate::layout::user_name_problem;

/// File name under `SYNC_BASE`.
pub const FILE_NAME: &str = "users.txt";
/// Held (created exclusively) while a command rewrites the file.
const LOCK_NAME: &str = "users.txt.lock";
const TEMP_NAME: &str = "users.txt.tmp";
/// A lock older than this was left by a command that died; commands hold it
/// for milliseconds (passwords are hashed before it is taken). A younger one
/// is stale too once its process is gone (a kill -9, or a power cut, which
/// can leave the lock on disk after the command's own removal is lost).
const STALE_LOCK: Duration = Duration::from_secs(60);

const HEADER: &str = "\
# anki-sync-lite users: one `name:PHC string` per line (pbkdf2-sha256).
# Managed with `anki-sync-lite user add|passwd|remove|list`; a running server
# picks up changes at its next request.
";

/// Where the users file of a data folder lives.
pub fn path(base: &Path) -> PathBuf {
    base.join(FILE_NAME)
}

/// Checks a name for `user add` (the rule every user name follows).
pub fn check_name(name: &str) -> Result<(), String> {
    match user_name_problem(name) {
        Some(problem) => Err(format!("the user name {name:?} cannot be used: {problem}")),
        None => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    /// A comment or blank line, kept as written.
    Text(String),
    User {
        name: String,
        phc: String,
    },
}

/// The parsed file. Every user line was checked when it was parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsersFile {
    lines: Vec<Line>,
}

impl UsersFile {
    /// Parses the file's text; an error names the first bad line.
    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let mut lines = Vec::new();
        let mut names = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                lines.push(Line::Text(line.to_string()));
                continue;
            }
            let Some((name, phc)) = line.split_once(':') else {
                return Err(format!("line {n}: expected name:$pbkdf2-sha256$..."));
            };
            if let Err(e) = check_name(name) {
                return Err(format!("line {n}: {e}"));
            }
            if names.contains(&name) {
                return Err(format!("line {n}: user {name:?} is listed twice"));
            }
            Pbkdf2Hash::parse(phc)
                .map_err(|e| format!("line {n}: user {name:?}: not a valid PHC string: {e}"))?;
            names.push(name);
            lines.push(Line::User {
                name: name.to_string(),
                phc: phc.to_string(),
            });
        }
        Ok(UsersFile { lines })
    }

    /// Reads the file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<UsersFile, String> {
        match fs::read_to_string(path) {
            Ok(text) => UsersFile::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// `(name, PHC string)` of every user, in file order.
    pub fn users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|line| match line {
            Line::User { name, phc } => Some((name.as_str(), phc.as_str())),
            Line::Text(_) => None,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.users().any(|(n, _)| n == name)
    }

    pub fn add(&mut self, name: &str, phc: &str) -> Result<(), String> {
        check_name(name)?;
        if self.contains(name) {
            return Err(format!("user {name:?} already exists"));
        }
        self.lines.push(Line::User {
            name: name.to_string(),
            phc: phc.to_string(),
        });
        Ok(())
    }

    /// Replaces a user's password hash.
    pub fn set(&mut self, name: &str, new_phc: &str) -> Result<(), String> {
        for line in &mut self.lines {
            if let Line::User { name: n, phc } = line {
                if n == name {
                    *phc = new_phc.to_string();
                    return Ok(());
                }
            }
        }
        Err(format!("no user {name:?} in the users file"))
    }

    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        let before = self.lines.len();
        self.lines
            .retain(|line| !matches!(line, Line::User { name: n, .. } if n == name));
        if self.lines.len() == before {
            return Err(format!("no user {name:?} in the users file"));
        }
        Ok(())
    }

    /// The file's text; a new file starts with a short explanation.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if !matches!(self.lines.first(), Some(Line::Text(_))) {
            text.push_str(HEADER);
        }
        for line in &self.lines {
            match line {
                Line::Text(t) => text.push_str(t),
                Line::User { name, phc } => {
                    text.push_str(name);
                    text.push(':');
                    text.push_str(phc);
                }
            }
            text.push('\n');
        }
        text
    }

    /// Replaces the file at `path` with this content: written to a temp
    /// file (mode 0600, owned like the data folder), fsynced, renamed over
    /// the old one, and the folder fsynced, so a crash leaves either the old
    /// file or the new one.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = parent(path);
        let temp = dir.join(TEMP_NAME);
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let written = file
            .write_all(self.render().as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| match_owner(&file, dir))
            .and_then(|()| fs::rename(&temp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        crate::fsutil::sync_dir(dir)
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Gives the new file the data folder's owner, so that an administrator
/// running `user add` as root leaves a file the server's own (unprivileged,
/// e.g. systemd `DynamicUser`) account can read. Without the privilege to
/// change owners, the file keeps ours (then it is the caller's account,
/// which is what they asked for).
fn match_owner(file: &File, dir: &Path) -> io::Result<()> {
    let want = fs::metadata(dir)?;
    let have = file.metadata()?;
    if (have.uid(), have.gid()) != (want.uid(), want.gid()) {
        let _ = std::os::unix::fs::fchown(file, Some(want.uid()), Some(want.gid()));
    }
    Ok(())
}

/// Exclusive right to rewrite the users file, released on drop. Two
/// commands run at once would otherwise lose one of the changes.
pub struct FileLock {
    path: PathBuf,
}

impl FileLock {
    pub fn acquire(base: &Path) -> Result<FileLock, String> {
        let path = base.join(LOCK_NAME);
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut file) => {
                    // The holder's pid, synced: a lock a power cut leaves on
                    // disk still says whose it was.
                    let _ =
                        writeln!(file, "{}", std::process::id()).and_then(|()| file.sync_data());
                    return Ok(FileLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if held(&path) {
                        break;
                    }
                    let _ = fs::remove_file(&path);
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
        Err(format!(
            "another `anki-sync-lite user` command is changing the users file (remove {} if none is running)",
            path.display()
        ))
    }
}

/// Whether another command may still hold the lock at `path`: it is younger
/// than [`STALE_LOCK`] and its process still runs (where `/proc` tells; a
/// lock from before this boot is not held).
fn held(path: &Path) -> bool {
    let Ok(written) = fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    let young = SystemTime::now()
        .duration_since(written)
        .is_ok_and(|age| age < STALE_LOCK);
    let pid = fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    young && !pid.is_some_and(|pid| crate::fsutil::writer_gone(pid, written))
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$pbkdf2-sha256$i=600000,l=32$tonuvYGpksNFQBlEmm3lxg$oQ1sqlkoU7Qn72xNoIq+NHyW3yOOER8EZ6mIJiv5GYc";

    #[test]
    fn parse_keeps_comments_and_reads_users() {
        let text = format!("# people\n\nalice:{PHC}\r\nbob:{PHC}\n  # indented comment\n");
        let file = UsersFile::parse(&text).unwrap();
        let users: Vec<_> = file.users().collect();
        assert_eq!(users, [("alice", PHC), ("bob", PHC)]);
        assert_eq!(
            file.render(),
            format!("# people\n\nalice:{PHC}\nbob:{PHC}\n  # indented comment\n")
        );
        assert_eq!(UsersFile::parse("").unwrap(), UsersFile::default());
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        for (text, needle) in [
            (format!("# c\nalice:{PHC}\nbob\n"), "line 3: expected"),
            (
                format!("alice:{PHC}\nalice:{PHC}\n"),
                "line 2: user \"alice\" is listed twice",
            ),
            (
                "\n\ncarol:secret\n".to_string(),
                "line 3: user \"carol\": not a valid PHC",
            ),
            (format!("../x:{PHC}\n"), "line 1: the user name \"../x\""),
            (":{PHC}\n".to_string(), "line 1: the user name \"\""),
        ] {
            let err = UsersFile::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn add_set_remove() {
        let mut file = UsersFile::default();
        file.add("alice", PHC).unwrap();
        assert!(
            file.add("alice", PHC)
                .unwrap_err()
                .contains("already exists")
        );
        for bad in ["", "..", "a/b", "a:b", ".hidden", "users.txt", " x", "a\tb"] {
            assert!(file.add(bad, PHC).is_err(), "{bad:?}");
        }
        let other = PHC.replace("oQ1s", "AAAA");
        file.set("alice", &other).unwrap();
        assert!(file.set("bob", PHC).is_err());
        assert_eq!(
            file.users().collect::<Vec<_>>(),
            [("alice", other.as_str())]
        );
        assert!(file.render().starts_with("# anki-sync-lite users"));
        assert_eq!(UsersFile::parse(&file.render()).unwrap(), {
            let mut expected = UsersFile::parse(HEADER).unwrap();
            expected.add("alice", &other).unwrap();
            expected
        });
        file.remove("alice").unwrap();
        assert!(file.remove("alice").is_err());
        assert_eq!(file.users().count(), 0);
    }

    #[test]
    fn save_replaces_the_file_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert_eq!(UsersFile::load(&path).unwrap(), UsersFile::default());
        let mut file = UsersFile::default();
        file.add("alice", PHC).unwrap();
        file.save(&path).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        file.add("bob", PHC).unwrap();
        file.save(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Replaced by a rename, never rewritten in place.
        assert_ne!(meta.ino(), ino);
        assert!(!dir.path().join(TEMP_NAME).exists());
        let loaded = UsersFile::load(&path).unwrap();
        assert_eq!(loaded.render(), file.render());
        assert_eq!(loaded.users().count(), 2);
        fs::write(&path, "oops\n").unwrap();
        let err = UsersFile::load(&path).unwrap_err();
        assert!(err.contains("users.txt: line 1"), "{err}");
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::acquire(dir.path()).unwrap();
        let err = FileLock::acquire(dir.path()).err().unwrap();
        assert!(err.contains("another"), "{err}");
        drop(lock);
        FileLock::acquire(dir.path()).unwrap();
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_lock_whose_process_is_gone_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // Left by a command killed with the power (no such pid runs).
        fs::write(dir.path().join(LOCK_NAME), "4000000000\n").unwrap();
        let lock = FileLock::acquire(dir.path()).unwrap();
        let holder = fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(holder.trim(), std::process::id().to_string());
        drop(lock);
    }
}
