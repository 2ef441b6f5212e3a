//! Command-line flags. Each flag overrides the environment variable of the
//! same meaning, so the documented variables stay the one source of truth.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::auth::manage::AccountCommand;

pub const USAGE: &str = "\
anki-sync-lite: a small self-hosted Anki sync server

USAGE:
    anki-sync-lite [OPTIONS]        serve
    anki-sync-lite --healthcheck    exit 0 if a server answers on SYNC_HOST:SYNC_PORT, else 1
    anki-sync-lite import-ankisyncd DIR [--base DIR] [--force]
                                    copy the users of an old Python ankisyncd (DIR: its folder
                                    with auth.db and collections/) into SYNC_BASE; stop both
                                    servers first; --force replaces users that have data
    anki-sync-lite backup list USER [--base DIR]
                                    list USER's collection backups, newest (ID 1) first
    anki-sync-lite backup restore USER [ID] [--base DIR]
                                    stage backup ID (a number from `backup list` or a file
                                    name; default the newest) to replace USER's collection;
                                    the server applies it at the user's next sync (or when
                                    started), after backing up the collection it replaces;
                                    devices are then asked to full-sync: choose Download
    anki-sync-lite user add|passwd NAME [--base DIR]
                                    add a user to SYNC_BASE/users.txt, or change their password
                                    (asked twice, or one line from stdin); no restart needed
    anki-sync-lite user remove NAME [--purge] [--base DIR]
                                    remove a user; their data stays unless --purge
    anki-sync-lite user list [--base DIR]
                                    list the users (SYNC_USERn and users.txt)
    anki-sync-lite hash             print a PHC string for a password, for SYNC_USERn with
                                    PASSWORDS_HASHED

OPTIONS (each overrides the environment variable in brackets):
    --host IP           address to listen on [SYNC_HOST, default 0.0.0.0]
    --port N            port [SYNC_PORT, default 8080]
    --base DIR          data folder [SYNC_BASE, default ~/.syncserver]
    --base-path PATH    serve under a path prefix, e.g. /anki/ [SYNC_BASE_PATH, default /]
    --workers N         request worker threads [SYNC_WORKERS, default 8]
    --log-level LEVEL   error, warn, info, debug or trace [RUST_LOG, default info]
    -h, --help          print this help
    -V, --version       print the version

USERS: SYNC_USER1=name:password, SYNC_USER2=..., numbered without gaps.
Set PASSWORDS_HASHED=1 to give PHC pbkdf2-sha256 strings instead of passwords.
Other settings: MAX_SYNC_PAYLOAD_MEGS (default 100), SYNC_IP_HEADER (default ConnectInfo).
In Anki, set the sync server to http://HOST:PORT/ (with the trailing slash).
";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    /// `user add|passwd|remove|list …` and `hash`.
    Account(AccountCommand),
    Healthcheck,
    Help,
    Version,
    /// `import-ankisyncd DIR [--force]`.
    ImportAnkisyncd {
        dir: PathBuf,
        force: bool,
    },
    /// `backup list USER`.
    BackupList {
        user: String,
    },
    /// `backup restore USER [ID]`.
    BackupRestore {
        user: String,
        id: Option<String>,
    },
}

/// Parses the arguments, writing flag values into `env` under the names of
/// the variables they override.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: &mut HashMap<String, String>,
) -> Result<Command, String> {
    let args: Vec<String> = args.into_iter().collect();
    if let Some(command) = account_command(&args, env)? {
        return Ok(command);
    }
    let mut command = Command::Serve;
    // `Some(None)` once `import-ankisyncd` is seen, `Some(Some(dir))` after its folder.
    let mut import: Option<Option<String>> = None;
    let mut force = false;
    // The words after `backup` (`list USER`, `restore USER [ID]`).
    let mut backup: Option<Vec<String>> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(words) = backup.as_mut().filter(|_| !arg.starts_with('-')) {
            words.push(arg);
            continue;
        }
        if import == Some(None) && !arg.starts_with('-') {
            import = Some(Some(arg));
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let var = match flag.as_str() {
            "-h" | "--help" => {
                command = Command::Help;
                continue;
            }
            "-V" | "--version" => {
                command = Command::Version;
                continue;
            }
            "--healthcheck" => {
                command = Command::Healthcheck;
                continue;
            }
            "backup" if backup.is_none() && import.is_none() => {
                backup = Some(Vec::new());
                continue;
            }
            "import-ankisyncd" if import.is_none() => {
                import = Some(None);
                continue;
            }
            "--force" => {
                force = true;
                continue;
            }
            "--host" => "SYNC_HOST",
            "--port" => "SYNC_PORT",
            "--base" => "SYNC_BASE",
            "--base-path" => "SYNC_BASE_PATH",
            "--workers" => "SYNC_WORKERS",
            "--log-level" => "RUST_LOG",
            other => return Err(format!("unknown option {other:?} (see --help)")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        env.insert(var.to_string(), value);
    }
    if let Some(words) = backup {
        return match (command, force) {
            (c @ (Command::Help | Command::Version), _) => Ok(c),
            (Command::Serve, false) => backup_command(words),
            (Command::Serve, true) => Err("--force only applies to import-ankisyncd".into()),
            _ => Err("--healthcheck cannot be combined with backup".into()),
        };
    }
    match (import, command) {
        (_, c @ (Command::Help | Command::Version)) => Ok(c),
        (Some(Some(dir)), Command::Serve) => Ok(Command::ImportAnkisyncd {
            dir: PathBuf::from(dir),
            force,
        }),
        (Some(Some(_)), _) => Err("--healthcheck cannot be combined with import-ankisyncd".into()),
        (Some(None), _) => Err("import-ankisyncd needs the ankisyncd folder (see --help)".into()),
        (None, _) if force => Err("--force only applies to import-ankisyncd".into()),
        (None, command) => Ok(command),
    }
}

fn backup_command(words: Vec<String>) -> Result<Command, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words[..] {
        ["list", user] => Ok(Command::BackupList { user: user.into() }),
        ["restore", user] => Ok(Command::BackupRestore {
            user: user.into(),
            id: None,
        }),
        ["restore", user, id] => Ok(Command::BackupRestore {
            user: user.into(),
            id: Some(id.into()),
        }),
        _ => Err("usage: backup list USER | backup restore USER [ID] (see --help)".into()),
    }
}

/// Flags that take a value, to find the first word after them.
const VALUE_FLAGS: [&str; 6] = [
    "--host",
    "--port",
    "--base",
    "--base-path",
    "--workers",
    "--log-level",
];

/// `user …` and `hash`, when the first word is one of them; `None` otherwise.
fn account_command(
    args: &[String],
    env: &mut HashMap<String, String>,
) -> Result<Option<Command>, String> {
    let mut after_flag = false;
    let first = args.iter().position(|arg| {
        let is_word = !after_flag && !arg.starts_with('-');
        after_flag = VALUE_FLAGS.contains(&arg.as_str());
        is_word
    });
    let Some(first) = first.filter(|&i| args[i] == "user" || args[i] == "hash") else {
        return Ok(None);
    };
    let mut words = Vec::new();
    let mut purge = false;
    let mut rest = args.iter().enumerate().filter(|&(i, _)| i != first);
    while let Some((_, arg)) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Some(Command::Help)),
            "--purge" => purge = true,
            "--base" => {
                let (_, dir) = rest.next().ok_or("--base needs a value")?;
                env.insert("SYNC_BASE".into(), dir.clone());
            }
            other => match other.strip_prefix("--base=") {
                Some(dir) => {
                    env.insert("SYNC_BASE".into(), dir.to_string());
                }
                None if other.starts_with('-') => {
                    return Err(format!(
                        "unknown option {other:?} for {} (see --help)",
                        args[first]
                    ));
                }
                None => words.push(other),
            },
        }
    }
    let command = match (args[first].as_str(), &words[..]) {
        ("hash", []) => AccountCommand::Hash,
        ("user", ["add", name]) => AccountCommand::Add(name.to_string()),
        ("user", ["passwd", name]) => AccountCommand::Passwd(name.to_string()),
        ("user", ["remove", name]) => AccountCommand::Remove {
            name: name.to_string(),
            purge,
        },
        ("user", ["list"]) => AccountCommand::List,
        ("hash", _) => return Err("hash takes no arguments; it reads the password".into()),
        _ => {
            return Err(
                "usage: user add NAME | user passwd NAME | user remove NAME [--purge] | user list (see --help)"
                    .into(),
            );
        }
    };
    if purge && !matches!(command, AccountCommand::Remove { .. }) {
        return Err("--purge only applies to user remove".into());
    }
    Ok(Some(Command::Account(command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Result<Command, String>, HashMap<String, String>) {
        let mut env = HashMap::new();
        let r = parse(args.iter().map(|s| s.to_string()), &mut env);
        (r, env)
    }

    #[test]
    fn flags_override_variables() {
        let (cmd, env) = run(&["--host", "127.0.0.1", "--port=9000", "--base-path", "/anki"]);
        assert_eq!(cmd, Ok(Command::Serve));
        assert_eq!(env["SYNC_HOST"], "127.0.0.1");
        assert_eq!(env["SYNC_PORT"], "9000");
        assert_eq!(env["SYNC_BASE_PATH"], "/anki");
    }

    #[test]
    fn commands_and_errors() {
        assert_eq!(run(&["--healthcheck"]).0, Ok(Command::Healthcheck));
        assert_eq!(run(&["-V"]).0, Ok(Command::Version));
        assert_eq!(run(&["--help"]).0, Ok(Command::Help));
        assert!(run(&["--port"]).0.unwrap_err().contains("needs a value"));
        assert!(run(&["--bogus"]).0.unwrap_err().contains("unknown option"));
    }

    #[test]
    fn import_ankisyncd_takes_a_folder_and_flags_in_any_order() {
        let (cmd, env) = run(&["import-ankisyncd", "/srv/old", "--base", "/srv/new"]);
        let want = Command::ImportAnkisyncd {
            dir: PathBuf::from("/srv/old"),
            force: false,
        };
        assert_eq!(cmd, Ok(want));
        assert_eq!(env["SYNC_BASE"], "/srv/new");
        let (cmd, _) = run(&["--force", "import-ankisyncd", "--base=/b", "old"]);
        let want = Command::ImportAnkisyncd {
            dir: PathBuf::from("old"),
            force: true,
        };
        assert_eq!(cmd, Ok(want));
        assert!(
            run(&["import-ankisyncd"])
                .0
                .unwrap_err()
                .contains("needs the ankisyncd folder")
        );
        assert!(run(&["--force"]).0.unwrap_err().contains("only applies"));
        assert!(
            run(&["import-ankisyncd", "a", "b"])
                .0
                .unwrap_err()
                .contains("unknown option")
        );
        assert_eq!(run(&["import-ankisyncd", "--help"]).0, Ok(Command::Help));
    }

    #[test]
    fn backup_subcommands() {
        let (cmd, env) = run(&["backup", "list", "alice", "--base", "/srv"]);
        let want = Command::BackupList {
            user: "alice".into(),
        };
        assert_eq!(cmd, Ok(want));
        assert_eq!(env["SYNC_BASE"], "/srv");
        let want = Command::BackupRestore {
            user: "alice".into(),
            id: None,
        };
        assert_eq!(
            run(&["--base=/b", "backup", "restore", "alice"]).0,
            Ok(want)
        );
        let want = Command::BackupRestore {
            user: "alice".into(),
            id: Some("2".into()),
        };
        assert_eq!(run(&["backup", "restore", "alice", "2"]).0, Ok(want));
        for bad in [
            &["backup"][..],
            &["backup", "list"],
            &["backup", "drop", "alice"],
            &["backup", "restore", "alice", "1", "2"],
            &["backup", "list", "alice", "--force"],
            &["backup", "list", "alice", "--healthcheck"],
        ] {
            assert!(run(bad).0.is_err(), "{bad:?}");
        }
        assert_eq!(run(&["backup", "--help"]).0, Ok(Command::Help));
    }

    #[test]
    fn user_and_hash_commands() {
        let (cmd, env) = run(&["user", "add", "alice", "--base", "/srv"]);
        assert_eq!(
            cmd,
            Ok(Command::Account(AccountCommand::Add("alice".into())))
        );
        assert_eq!(env["SYNC_BASE"], "/srv");
        let (cmd, env) = run(&["--base", "/b", "user", "remove", "--purge", "bob"]);
        let want = AccountCommand::Remove {
            name: "bob".into(),
            purge: true,
        };
        assert_eq!(cmd, Ok(Command::Account(want)));
        assert_eq!(env["SYNC_BASE"], "/b");
        assert_eq!(
            run(&["user", "passwd", "bob", "--base=/c"]).0,
            Ok(Command::Account(AccountCommand::Passwd("bob".into())))
        );
        assert_eq!(
            run(&["user", "list"]).0,
            Ok(Command::Account(AccountCommand::List))
        );
        assert_eq!(run(&["hash"]).0, Ok(Command::Account(AccountCommand::Hash)));
        assert_eq!(run(&["user", "--help"]).0, Ok(Command::Help));
        // `--base user` is a folder called "user", not the subcommand.
        assert_eq!(run(&["--base", "user"]).0, Ok(Command::Serve));
        for bad in [
            &["user"][..],
            &["user", "add"],
            &["user", "add", "a", "b"],
            &["user", "list", "--purge"],
            &["user", "list", "--port", "1"],
            &["hash", "secret"],
            &["user", "add", "a", "--base"],
        ] {
            assert!(run(bad).0.is_err(), "{bad:?}");
        }
    }
}
