//! The account table a running server checks, kept in step with the users
//! file without a restart: every request first compares the file's identity
//! (inode, size, modification and change times: one `stat`) with the one the
//! table was built from, and a changed file is read and swapped in. So a
//! `user add` works at the very next login, and after `user passwd` or
//! `user remove` the very next request with an old host key gets 403.
//!
//! A file that cannot be read or has a bad line changes nothing: the server
//! keeps the accounts it has (logging the problem once), because dropping an
//! account over a typo would log that person's devices out.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use log::{error, info, warn};

use super::Users;
use super::users_file::{self, UsersFile};
use crate::config::UserEntry;

/// What a `stat` says about the users file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileState {
    Missing,
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    /// `stat` failed for another reason (e.g. permissions).
    Unreadable(String),
}

fn file_state(path: &Path) -> FileState {
    match fs::metadata(path) {
        Ok(m) => FileState::Present {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

/// Accounts that came and went with a reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub struct LiveUsers {
    env: Vec<UserEntry>,
    passwords_hashed: bool,
    path: PathBuf,
    current: RwLock<Arc<Users>>,
    /// The file state last acted on; held while reloading, so one request
    /// reloads and the others wait for its result.
    seen: Mutex<FileState>,
}

impl LiveUsers {
    /// Builds the start-up table. Here every problem is an error: a bad users
    /// file stops the server with the line at fault.
    pub fn load(
        env: Vec<UserEntry>,
        passwords_hashed: bool,
        base: &Path,
    ) -> Result<LiveUsers, String> {
        let path = users_file::path(base);
        let state = file_state(&path);
        if let FileState::Unreadable(e) = &state {
            return Err(format!("cannot read {}: {e}", path.display()));
        }
        let file = UsersFile::load(&path)?;
        let users = Users::build(&env, passwords_hashed, &file).map_err(|e| e.to_string())?;
        // Unlike the official server, no users is no reason to stop: a fresh
        // install (a package, a container) runs and says what to do next,
        // here, on its `/` page and in `systemctl status`.
        if users.is_empty() {
            warn!(
                "no users yet: add one with `anki-sync-lite user add NAME` (it goes to {}; no restart needed), or set SYNC_USER1=name:password",
                path.display()
            );
        }
        Ok(LiveUsers {
            env,
            passwords_hashed,
            path,
            current: RwLock::new(Arc::new(users)),
            seen: Mutex::new(state),
        })
    }

    /// The table as it is now (a cheap clone; check passwords on it without
    /// holding any lock).
    pub fn current(&self) -> Arc<Users> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a new table if the users file changed since the last look;
    /// returns which accounts came and went. Costs one `stat` otherwise.
    pub fn refresh(&self) -> Option<Change> {
        let state = file_state(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == state {
            return None;
        }
        // Recorded before reading: if the file changes again meanwhile, the
        // next request sees a different state and reads it again.
        *seen = state.clone();
        let file = match state {
            FileState::Unreadable(e) => {
                error!(
                    "cannot read {}: {e}; keeping the current users",
                    self.path.display()
                );
                return None;
            }
            FileState::Missing => UsersFile::default(),
            FileState::Present { .. } => match UsersFile::load(&self.path) {
                Ok(file) => file,
                Err(e) => {
                    error!("{e}; keeping the current users until it is fixed");
                    return None;
                }
            },
        };
        let users = match Users::build(&self.env, self.passwords_hashed, &file) {
            Ok(users) => users,
            Err(e) => {
                error!("{e}; keeping the current users until it is fixed");
                return None;
            }
        };
        let old = self.current();
        let change = Change {
            added: users
                .names()
                .filter(|n| !old.contains(n))
                .map(str::to_string)
                .collect(),
            removed: old
                .names()
                .filter(|n| !users.contains(n))
                .map(str::to_string)
                .collect(),
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(users);
        info!(
            "reloaded {}: {} user(s); added {:?}, removed {:?}",
            self.path.display(),
            self.current().len(),
            change.added,
            change.removed
        );
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::host_key;

    const PHC: &str = "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q";

    fn env_user() -> Vec<UserEntry> {
        vec![UserEntry {
            var: "SYNC_USER1".into(),
            name: "user".into(),
            secret: "pass".into(),
        }]
    }

    #[test]
    fn changes_to_the_file_are_picked_up() {
        let base = tempfile::tempdir().unwrap();
        let path = users_file::path(base.path());
        let live = LiveUsers::load(env_user(), false, base.path()).unwrap();
        assert_eq!(live.refresh(), None);
        assert_eq!(live.current().len(), 1);

        let mut file = UsersFile::default();
        file.add("carol", PHC).unwrap();
        file.save(&path).unwrap();
        let change = live.refresh().unwrap();
        assert_eq!(change.added, ["carol"]);
        assert!(live.current().login("carol", "pass").is_ok());
        assert_eq!(live.refresh(), None);

        // A hand edit with a bad line changes nothing.
        fs::write(&path, format!("carol:{PHC}\nbroken\n")).unwrap();
        assert_eq!(live.refresh(), None);
        assert!(live.current().contains("carol"));
        assert_eq!(live.refresh(), None);

        // New password: new host key, the old one is gone.
        let old_key = host_key("carol", PHC);
        let other = PHC.replace("7JSU", "AAAA");
        fs::write(&path, format!("carol:{other}\n")).unwrap();
        assert_eq!(live.refresh(), Some(Change::default()));
        assert!(live.current().by_hkey(&old_key).is_err());
        assert!(live.current().by_hkey(&host_key("carol", &other)).is_ok());

        fs::remove_file(&path).unwrap();
        let change = live.refresh().unwrap();
        assert_eq!(change.removed, ["carol"]);
        assert_eq!(live.current().len(), 1);
    }

    #[test]
    fn start_up_needs_a_good_file_but_no_user() {
        let base = tempfile::tempdir().unwrap();
        // No users at all: the server starts, and the first `user add` counts.
        let live = LiveUsers::load(Vec::new(), false, base.path()).unwrap();
        assert!(live.current().is_empty());
        let path = users_file::path(base.path());
        let mut file = UsersFile::default();
        file.add("carol", PHC).unwrap();
        file.save(&path).unwrap();
        assert_eq!(live.refresh().unwrap().added, ["carol"]);
        fs::write(&path, "").unwrap();
        assert!(LiveUsers::load(Vec::new(), false, base.path()).is_ok());
        fs::write(&path, "x:y\n").unwrap();
        let err = LiveUsers::load(Vec::new(), false, base.path())
            .err()
            .unwrap();
        assert!(err.contains("line 1"), "{err}");
        fs::write(&path, format!("user:{PHC}\n")).unwrap();
        let err = LiveUsers::load(env_user(), false, base.path())
            .err()
            .unwrap();
        assert!(err.contains("SYNC_USER1"), "{err}");
    }
}
