//! `anki-sync-lite user add|passwd|remove|list` and `anki-sync-lite hash`:
//! managing the users file from the command line (a running server picks
//! the changes up by itself), and making PHC strings for `SYNC_USERn` with
//! `PASSWORDS_HASHED`.
//!
//! Passwords are read from the terminal without echo (asked twice), or as
//! one line from stdin when it is not a terminal (for scripts). They are
//! hashed before the users file is locked.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::password::Pbkdf2Hash;
use super::users_file::{self, FileLock, UsersFile, check_name};
use crate::config::{Config, UserEntry};

#[derive(Debug, PartialEq, Eq)]
pub enum AccountCommand {
    Add(String),
    Passwd(String),
    Remove {
        name: String,
        purge: bool,
    },
    List,
    /// Print a PHC string for a password.
    Hash,
}

/// Runs one command; messages for people go to `out`, errors are returned.
pub fn run(
    env: &HashMap<String, String>,
    command: &AccountCommand,
    out: &mut dyn Write,
) -> Result<(), String> {
    if *command == AccountCommand::Hash {
        let phc = hash_password(&read_password(true)?)?;
        return writeln!(out, "{phc}").map_err(|e| e.to_string());
    }
    let config = Config::from_env(env).map_err(|e| e.to_string())?;
    let base = config.base.as_path();
    let path = users_file::path(base);
    let written = |e: io::Error| format!("writing {}: {e}", path.display());
    match command {
        AccountCommand::Add(name) => {
            check_name(name)?;
            not_in_env(&config.users, name)?;
            if UsersFile::load(&path)?.contains(name) {
                return Err(format!("user {name:?} already exists"));
            }
            let phc = hash_password(&read_password(true)?)?;
            crate::fsutil::create_dir_all_durable(base)
                .map_err(|e| format!("creating {}: {e}", base.display()))?;
            let _lock = FileLock::acquire(base)?;
            let mut file = UsersFile::load(&path)?;
            file.add(name, &phc)?;
            file.save(&path).map_err(written)?;
            let kept = if base.join(name).is_dir() {
                " (with the data already in its folder)"
            } else {
                ""
            };
            report(out, format!("added user {name}{kept}; it can log in now"))?;
        }
        AccountCommand::Passwd(name) => {
            not_in_env(&config.users, name)?;
            if !UsersFile::load(&path)?.contains(name) {
                return Err(format!("no user {name:?} in {}", path.display()));
            }
            let phc = hash_password(&read_password(true)?)?;
            let _lock = FileLock::acquire(base)?;
            let mut file = UsersFile::load(&path)?;
            file.set(name, &phc)?;
            file.save(&path).map_err(written)?;
            report(
                out,
                format!("changed the password of {name}; its devices must log in again"),
            )?;
        }
        AccountCommand::Remove { name, purge } => {
            not_in_env(&config.users, name)?;
            {
                let _lock = FileLock::acquire(base)?;
                let mut file = UsersFile::load(&path)?;
                file.remove(name)
                    .map_err(|_| format!("no user {name:?} in {}", path.display()))?;
                file.save(&path).map_err(written)?;
            }
            let dir = base.join(name);
            if *purge {
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(format!(
                            "removed user {name}, but not its data in {}: {e}",
                            dir.display()
                        ));
                    }
                }
                report(out, format!("removed user {name} and deleted its data"))?;
            } else {
                report(
                    out,
                    format!(
                        "removed user {name}; its data stays in {} (`user add {name}` brings it back; `user remove --purge` deletes it)",
                        dir.display()
                    ),
                )?;
            }
        }
        AccountCommand::List => {
            let file = UsersFile::load(&path)?;
            let mut rows: Vec<(String, String)> = config
                .users
                .iter()
                .map(|u| (u.name.clone(), u.var.clone()))
                .collect();
            rows.extend(
                file.users()
                    .map(|(n, _)| (n.to_string(), users_file::FILE_NAME.to_string())),
            );
            let width = rows
                .iter()
                .map(|(n, _)| n.chars().count())
                .max()
                .unwrap_or(0);
            if rows.is_empty() {
                report(
                    out,
                    format!(
                        "no users yet in {}: add one with `anki-sync-lite user add NAME`, \
                         or set SYNC_USER1=name:password in the server's environment",
                        base.display()
                    ),
                )?;
            }
            for (name, source) in rows {
                writeln!(out, "{name:width$}  {source}").map_err(|e| e.to_string())?;
            }
        }
        AccountCommand::Hash => {}
    }
    warn_about_owner(&path, base);
    Ok(())
}

fn report(out: &mut dyn Write, message: String) -> Result<(), String> {
    writeln!(out, "{message}").map_err(|e| e.to_string())
}

/// Accounts in the environment are managed there, not in the file.
fn not_in_env(env_users: &[UserEntry], name: &str) -> Result<(), String> {
    match env_users.iter().find(|u| u.name == name) {
        Some(u) => Err(format!(
            "user {name:?} is defined by {} in the environment; change it there",
            u.var
        )),
        None => Ok(()),
    }
}

/// After a change: a users file the data folder's owner cannot read would
/// be ignored by a server running as that owner; say so.
fn warn_about_owner(path: &Path, base: &Path) {
    let (Ok(file), Ok(dir)) = (fs::metadata(path), fs::metadata(base)) else {
        return;
    };
    if file.uid() != dir.uid() {
        eprintln!(
            "warning: {} is owned by uid {}, the data folder by uid {}; a server running as the latter cannot read it (chown it)",
            path.display(),
            file.uid(),
            dir.uid()
        );
    }
}

/// A new PHC string for `password` (random salt, official parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    Pbkdf2Hash::new_random(password)
        .map(|h| h.to_phc())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Reads a password: from the terminal without echo (twice when `confirm`),
/// or one line from stdin when stdin is not a terminal.
pub fn read_password(confirm: bool) -> Result<String, String> {
    let stdin = io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt("Password: ")?;
        if confirm && prompt("Again: ")? != first {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        strip_line_end(line)
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

fn strip_line_end(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

/// Asks on stderr and reads a line from the terminal with echo off
/// (via `stty`, so no terminal library is needed).
fn prompt(question: &str) -> Result<String, String> {
    eprint!("{question}");
    let _ = io::stderr().flush();
    let echo_off = EchoOff::new();
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    drop(echo_off);
    eprintln!();
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(strip_line_end(line))
}

/// Terminal echo switched off for as long as this lives.
struct EchoOff {
    active: bool,
}

impl EchoOff {
    fn new() -> EchoOff {
        let active = stty("-echo");
        if !active {
            eprint!("(stty failed: the password will be visible) ");
        }
        EchoOff { active }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.active {
            stty("echo");
        }
    }
}

/// `stty` acts on its stdin, which it inherits: our terminal.
fn stty(arg: &str) -> bool {
    Command::new("stty")
        .arg(arg)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q";

    fn env(base: &Path, pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("SYNC_BASE".into(), base.to_str().unwrap().into());
        env
    }

    fn run_ok(env: &HashMap<String, String>, command: AccountCommand) -> String {
        let mut out = Vec::new();
        run(env, &command, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    // `add` and `passwd` read a password and hash it (tested end to end in
    // tests/it/users.rs); here: the commands that need none, and the checks
    // made before any password is asked for.
    #[test]
    fn list_remove_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let env = env(base, &[("SYNC_USER1", "bob:x")]);
        let path = users_file::path(base);
        let mut file = UsersFile::default();
        file.add("alice", PHC).unwrap();
        file.add("carol", PHC).unwrap();
        file.save(&path).unwrap();
        fs::create_dir_all(base.join("alice/media")).unwrap();
        fs::create_dir_all(base.join("carol/media")).unwrap();

        assert_eq!(
            run_ok(&env, AccountCommand::List),
            "bob    SYNC_USER1\nalice  users.txt\ncarol  users.txt\n"
        );
        let out = run_ok(
            &env,
            AccountCommand::Remove {
                name: "alice".into(),
                purge: false,
            },
        );
        assert!(out.contains("data stays"), "{out}");
        assert!(base.join("alice/media").is_dir());
        run_ok(
            &env,
            AccountCommand::Remove {
                name: "carol".into(),
                purge: true,
            },
        );
        assert!(!base.join("carol").exists());
        assert_eq!(UsersFile::load(&path).unwrap().users().count(), 0);
        // With nobody left, `list` says how to add someone.
        let none = self::env(base, &[]);
        let out = run_ok(&none, AccountCommand::List);
        assert!(out.starts_with("no users yet in "), "{out}");
        assert!(out.contains("anki-sync-lite user add NAME"), "{out}");

        let mut sink = Vec::new();
        for (command, needle) in [
            (AccountCommand::Add("bob".into()), "SYNC_USER1"),
            (AccountCommand::Passwd("bob".into()), "SYNC_USER1"),
            (AccountCommand::Passwd("alice".into()), "no user \"alice\""),
            (AccountCommand::Add("../x".into()), "folder name"),
            (
                AccountCommand::Remove {
                    name: "alice".into(),
                    purge: true,
                },
                "no user \"alice\"",
            ),
        ] {
            let err = run(&env, &command, &mut sink).unwrap_err();
            assert!(err.contains(needle), "{command:?}: {err}");
        }
        // Removing without --purge kept the data.
        assert!(base.join("alice/media").is_dir());
    }
}
