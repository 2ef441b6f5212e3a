//! The command line: which command to run, its help, and flags that override
//! the environment variable of the same meaning (so the documented variables
//! stay the one source of truth).
//!
//! Every setting is listed once, in [`SETTINGS`]; `--help` prints that list
//! and a test checks it against the README's Configuration table. Arguments
//! are split by `lexopt` (small, no dependencies: what a hand-written loop
//! did before, with `--flag=value`, `--` and short-flag clusters handled);
//! the commands, their help texts and the "did you mean" hints are here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use lexopt::Arg;

use crate::auth::manage::AccountCommand;

/// One setting: its environment variable, its flag if it has one, and how
/// `--help` describes it.
pub struct Setting {
    /// The variable, as the README's Configuration table names it.
    pub var: &'static str,
    /// `("--host", "IP")`: the flag and its value's placeholder.
    pub flag: Option<(&'static str, &'static str)>,
    /// Shown in brackets; empty for none.
    pub default: &'static str,
    pub meaning: &'static str,
    /// Only a build with the `tls` feature reads it.
    pub needs_tls: bool,
}

const fn setting(var: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        var,
        flag: None,
        default,
        meaning,
        needs_tls: false,
    }
}

const fn flagged(
    var: &'static str,
    flag: (&'static str, &'static str),
    default: &'static str,
    meaning: &'static str,
) -> Setting {
    Setting {
        flag: Some(flag),
        ..setting(var, default, meaning)
    }
}

const fn tls(var: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        needs_tls: true,
        ..setting(var, default, meaning)
    }
}

/// Every setting the server reads, in the README's order.
pub const SETTINGS: &[Setting] = &[
    setting(
        "SYNC_USER1, SYNC_USER2, ...",
        "",
        "name:password, numbered without gaps (or users in SYNC_BASE/users.txt: `user --help`)",
    ),
    setting(
        "SYNC_USER1_FILE, ...",
        "",
        "read SYNC_USERn's value from this file instead",
    ),
    setting(
        "PASSWORDS_HASHED",
        "",
        "if set, passwords are PHC strings (`anki-sync-lite hash` makes one)",
    ),
    flagged(
        "SYNC_BASE",
        ("--base", "DIR"),
        "~/.syncserver",
        "data folder",
    ),
    flagged(
        "SYNC_HOST",
        ("--host", "IP"),
        "0.0.0.0",
        "listen address (an IP address)",
    ),
    flagged("SYNC_PORT", ("--port", "N"), "8080", "listen port"),
    setting(
        "MAX_SYNC_PAYLOAD_MEGS",
        "100",
        "request bodies may decompress to 3x this many MiB",
    ),
    setting(
        "SYNC_IP_HEADER",
        "ConnectInfo",
        "client address for the logs: ConnectInfo, RightmostXForwardedFor, XRealIp, \
         TrueClientIp, CfConnectingIp, FlyClientIp or CloudFrontViewerAddress",
    ),
    flagged(
        "SYNC_BASE_PATH",
        ("--base-path", "PATH"),
        "/",
        "path prefix to serve under, e.g. /anki/",
    ),
    flagged(
        "SYNC_WORKERS",
        ("--workers", "N"),
        "8",
        "requests handled at once (and worker threads)",
    ),
    setting(
        "SYNC_IDLE_CLOSE_SECS",
        "300",
        "close an idle user's collection after this many seconds",
    ),
    setting(
        "SYNC_TIMEOUT_SECS",
        "120",
        "drop a connection whose response makes no progress this long",
    ),
    setting(
        "SYNC_READ_TIMEOUT_SECS",
        "120",
        "drop a connection that sends nothing this long (bodies: 1 KiB/s at least)",
    ),
    setting(
        "SYNC_HEADER_TIMEOUT_SECS",
        "30",
        "a request's headers must arrive within this many seconds",
    ),
    setting("SYNC_MAX_CONNECTIONS", "64", "open connections at most"),
    setting(
        "SYNC_MAX_CONNECTIONS_PER_IP",
        "8",
        "open connections from one client address at most (with SYNC_IP_HEADER other than \
         ConnectInfo: SYNC_MAX_CONNECTIONS unless set)",
    ),
    tls(
        "SYNC_TLS_CERT, SYNC_TLS_KEY",
        "",
        "PEM certificate chain and private key: serve HTTPS",
    ),
    tls(
        "SYNC_TLS_VERSIONS",
        "1.2,1.3",
        "TLS versions offered: 1.2, 1.3 or both",
    ),
    setting(
        "SYNC_BACKUPS",
        "8",
        "collection backups kept per user (0: none)",
    ),
    setting(
        "SYNC_METRICS",
        "off",
        "1 serves GET /metrics (Prometheus text; no user names, no password)",
    ),
    flagged(
        "RUST_LOG",
        ("--log-level", "LEVEL"),
        "info",
        "error, warn, info, debug or trace",
    ),
];

/// What `--help` can be asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Main,
    User,
    Hash,
    Backup,
    Import,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BackupCommand {
    /// `backup list USER`.
    List { user: String },
    /// `backup restore USER [ID]`.
    Restore { user: String, id: Option<String> },
    /// `backup export USER [ID] FILE [--media]`: the live collection, or
    /// backup `ID`, as a collection package.
    Export {
        user: String,
        id: Option<String>,
        file: PathBuf,
        media: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    /// `user add|passwd|remove|list …` and `hash`.
    Account(AccountCommand),
    Healthcheck,
    Help(Topic),
    Version,
    /// `import-ankisyncd DIR [--force]`.
    ImportAnkisyncd {
        dir: PathBuf,
        force: bool,
    },
    Backup(BackupCommand),
}

/// Commands a first word can name.
const COMMANDS: [&str; 5] = ["user", "hash", "backup", "import-ankisyncd", "help"];

/// The flags that are not settings.
const SWITCHES: [&str; 6] = [
    "--help",
    "--version",
    "--healthcheck",
    "--force",
    "--purge",
    "--media",
];

/// What was on the command line, before it is checked against a command.
#[derive(Default)]
struct Seen {
    words: Vec<String>,
    help: bool,
    version: bool,
    healthcheck: bool,
    force: bool,
    purge: bool,
    media: bool,
    /// Setting flags other than `--base` (which the data commands take too).
    server_flag: Option<String>,
}

/// Parses the arguments, writing flag values into `env` under the names of
/// the variables they override.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: &mut HashMap<String, String>,
) -> Result<Command, String> {
    let seen = split(args, env)?;
    if seen.help {
        // `user --help`, `user add --help`, `help --help`: the command's help.
        return match seen.words.first().map(String::as_str) {
            None | Some("help") => Ok(Command::Help(Topic::Main)),
            Some(word) => topic(word).map(Command::Help),
        };
    }
    if seen.version {
        return Ok(Command::Version);
    }
    let Some((first, rest)) = seen.words.split_first() else {
        return serve(&seen);
    };
    if seen.healthcheck {
        return Err(format!("--healthcheck cannot be combined with {first}"));
    }
    if let Some(flag) = &seen.server_flag {
        return Err(format!(
            "{flag} applies to the server, not to {first} (only --base does)"
        ));
    }
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let command = match first.as_str() {
        "help" => match rest[..] {
            [] => Ok(Command::Help(Topic::Main)),
            [word, ..] => topic(word).map(Command::Help),
        },
        "user" | "hash" => account(first, &rest, &seen).map(Command::Account),
        "backup" => backup(&rest, &seen).map(Command::Backup),
        "import-ankisyncd" => match rest[..] {
            [dir] => Ok(Command::ImportAnkisyncd {
                dir: PathBuf::from(dir),
                force: seen.force,
            }),
            [] => Err(
                "import-ankisyncd needs the ankisyncd folder (see import-ankisyncd --help)".into(),
            ),
            _ => Err("import-ankisyncd takes one folder (see import-ankisyncd --help)".into()),
        },
        other => Err(unknown_command(other, &rest)),
    }?;
    let takes = |flag: &str| match &command {
        Command::ImportAnkisyncd { .. } => flag == "--force",
        Command::Account(AccountCommand::Remove { .. }) => flag == "--purge",
        Command::Backup(BackupCommand::Export { .. }) => flag == "--media",
        _ => false,
    };
    for (given, flag) in [
        (seen.force, "--force"),
        (seen.purge, "--purge"),
        (seen.media, "--media"),
    ] {
        if given && !takes(flag) {
            return Err(format!(
                "{flag} does not apply to {first} (see {first} --help)"
            ));
        }
    }
    Ok(command)
}

/// No command word: the server, or its health check.
fn serve(seen: &Seen) -> Result<Command, String> {
    for (given, flag, owner) in [
        (seen.force, "--force", "import-ankisyncd"),
        (seen.purge, "--purge", "user remove"),
        (seen.media, "--media", "backup export"),
    ] {
        if given {
            return Err(format!("{flag} only applies to {owner} (see --help)"));
        }
    }
    Ok(match seen.healthcheck {
        true => Command::Healthcheck,
        false => Command::Serve,
    })
}

/// Sorts the arguments into words, switches and settings (into `env`).
fn split(
    args: impl IntoIterator<Item = String>,
    env: &mut HashMap<String, String>,
) -> Result<Seen, String> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut seen = Seen::default();
    while let Some(arg) = parser.next().map_err(|e| parse_error(&e))? {
        let flag = match arg {
            Arg::Value(word) => {
                let word = word
                    .into_string()
                    .map_err(|w| format!("{w:?} is not UTF-8"))?;
                seen.words.push(word);
                continue;
            }
            Arg::Short('h') | Arg::Long("help") => {
                seen.help = true;
                continue;
            }
            Arg::Short('V') | Arg::Long("version") => {
                seen.version = true;
                continue;
            }
            Arg::Long("healthcheck") => {
                seen.healthcheck = true;
                continue;
            }
            Arg::Long("force") => {
                seen.force = true;
                continue;
            }
            Arg::Long("purge") => {
                seen.purge = true;
                continue;
            }
            Arg::Long("media") => {
                seen.media = true;
                continue;
            }
            Arg::Long(name) => format!("--{name}"),
            Arg::Short(c) => return Err(unknown_option(&format!("-{c}"))),
        };
        let Some((setting, _)) = SETTINGS
            .iter()
            .filter_map(|s| Some((s, s.flag?)))
            .find(|(_, (name, _))| *name == flag)
        else {
            return Err(unknown_option(&flag));
        };
        let value = parser
            .value()
            .map_err(|_| format!("{flag} needs a value"))?
            .into_string()
            .map_err(|v| format!("{flag}: {v:?} is not UTF-8"))?;
        env.insert(setting.var.to_string(), value);
        if flag != "--base" {
            seen.server_flag = Some(flag);
        }
    }
    Ok(seen)
}

fn parse_error(e: &lexopt::Error) -> String {
    match e {
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
        other => other.to_string(),
    }
}

fn topic(word: &str) -> Result<Topic, String> {
    match word {
        "user" => Ok(Topic::User),
        "hash" => Ok(Topic::Hash),
        "backup" => Ok(Topic::Backup),
        "import-ankisyncd" => Ok(Topic::Import),
        other => Err(unknown_command(other, &[])),
    }
}

/// `user …` and `hash`.
fn account(first: &str, rest: &[&str], seen: &Seen) -> Result<AccountCommand, String> {
    if first == "hash" {
        return match rest {
            [] => Ok(AccountCommand::Hash),
            _ => Err("hash takes no arguments; it reads the password (see hash --help)".into()),
        };
    }
    let usage = "(see user --help)";
    match rest {
        ["add", name] => Ok(AccountCommand::Add(name.to_string())),
        ["passwd", name] => Ok(AccountCommand::Passwd(name.to_string())),
        ["remove", name] => Ok(AccountCommand::Remove {
            name: name.to_string(),
            purge: seen.purge,
        }),
        ["list"] => Ok(AccountCommand::List),
        ["add" | "passwd" | "remove"] => Err(format!("user {} needs a NAME {usage}", rest[0])),
        ["add" | "passwd" | "remove" | "list", ..] => {
            Err(format!("too many words for user {} {usage}", rest[0]))
        }
        [] => Err(format!("user needs add, passwd, remove or list {usage}")),
        [word, ..] => Err(unknown_subcommand("user", word, rest, USER_WORDS)),
    }
}

/// `backup …`.
fn backup(rest: &[&str], seen: &Seen) -> Result<BackupCommand, String> {
    let usage = "(see backup --help)";
    let owned = |s: &str| s.to_string();
    match rest {
        ["list", user] => Ok(BackupCommand::List { user: owned(user) }),
        ["restore", user] => Ok(BackupCommand::Restore {
            user: owned(user),
            id: None,
        }),
        ["restore", user, id] => Ok(BackupCommand::Restore {
            user: owned(user),
            id: Some(owned(id)),
        }),
        ["export", user, file] => Ok(BackupCommand::Export {
            user: owned(user),
            id: None,
            file: PathBuf::from(file),
            media: seen.media,
        }),
        ["export", user, id, file] => Ok(BackupCommand::Export {
            user: owned(user),
            id: Some(owned(id)),
            file: PathBuf::from(file),
            media: seen.media,
        }),
        ["export", _] => Err(format!("backup export needs a USER and a FILE {usage}")),
        ["list" | "restore" | "export"] => Err(format!("backup {} needs a USER {usage}", rest[0])),
        ["list" | "restore" | "export", ..] => {
            Err(format!("too many words for backup {} {usage}", rest[0]))
        }
        [] => Err(format!("backup needs list, restore or export {usage}")),
        [word, ..] => Err(unknown_subcommand("backup", word, rest, BACKUP_WORDS)),
    }
}

/// Subcommands and the words people type for them.
const USER_WORDS: &[(&str, &[&str])] = &[
    ("add", &["new", "create", "useradd", "adduser"]),
    ("passwd", &["password", "pass", "pw", "chpasswd", "change"]),
    ("remove", &["rm", "del", "delete", "userdel", "deluser"]),
    ("list", &["ls", "show", "users"]),
];
const BACKUP_WORDS: &[(&str, &[&str])] = &[
    ("list", &["ls", "show"]),
    ("restore", &["undo", "apply", "revert"]),
    ("export", &["save", "dump", "colpkg", "download"]),
];

fn unknown_command(word: &str, rest: &[&str]) -> String {
    if ["serve", "server", "run", "start", "daemon"].contains(&word) {
        return format!(
            "unknown command {word:?}: the server runs with no command, \
             `anki-sync-lite [OPTIONS]` (see --help)"
        );
    }
    let aliases: &[(&str, &[&str])] = &[
        ("user", &["users", "account", "accounts"]),
        ("backup", &["backups"]),
        ("import-ankisyncd", &["import", "ankisyncd", "migrate"]),
    ];
    match closest(word, &COMMANDS, aliases) {
        Some(guess) => {
            let line = std::iter::once(guess)
                .chain(rest.iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            format!("unknown command {word:?}; did you mean `anki-sync-lite {line}`?")
        }
        None => format!("unknown command {word:?} (see --help)"),
    }
}

fn unknown_subcommand(
    command: &str,
    word: &str,
    rest: &[&str],
    words: &[(&str, &[&str])],
) -> String {
    let names: Vec<&str> = words.iter().map(|(name, _)| *name).collect();
    match closest(word, &names, words) {
        Some(guess) => {
            let line = std::iter::once(guess)
                .chain(rest[1..].iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            format!("unknown command `{command} {word}`; did you mean `{command} {line}`?")
        }
        None => format!(
            "unknown command `{command} {word}`: {command} takes {} (see {command} --help)",
            names.join(", ")
        ),
    }
}

fn unknown_option(flag: &str) -> String {
    let mut flags: Vec<&str> = SETTINGS.iter().filter_map(|s| Some(s.flag?.0)).collect();
    flags.extend(SWITCHES);
    match closest(flag, &flags, &[]) {
        Some(guess) => format!("unknown option {flag}; did you mean {guess}? (see --help)"),
        None => format!("unknown option {flag} (see --help)"),
    }
}

/// The name `word` most likely meant: an alias, or a name at most a third
/// of its length (at least 1) edits away.
fn closest<'a>(word: &str, names: &[&'a str], aliases: &[(&'a str, &[&str])]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    if let Some((name, _)) = aliases.iter().find(|(_, a)| a.contains(&word.as_str())) {
        return Some(name);
    }
    names
        .iter()
        .map(|name| (edit_distance(&word, name), *name))
        .filter(|(d, name)| *d <= (name.len() / 3).max(1))
        .min()
        .map(|(_, name)| name)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The help text for `topic`.
pub fn help(topic: Topic) -> String {
    match topic {
        Topic::Main => main_help(),
        Topic::User => USER_HELP.to_string(),
        Topic::Hash => HASH_HELP.to_string(),
        Topic::Backup => BACKUP_HELP.to_string(),
        Topic::Import => IMPORT_HELP.to_string(),
    }
}

fn main_help() -> String {
    let mut out = format!(
        "\
anki-sync-lite {}: a small self-hosted Anki sync server

USAGE:
    anki-sync-lite [OPTIONS]        run the server
    anki-sync-lite --healthcheck    exit 0 if the server answers /health on
                                    SYNC_HOST:SYNC_PORT (over HTTPS with SYNC_TLS_CERT), else 1
    anki-sync-lite user ...         add, change, remove or list users (see user --help)
    anki-sync-lite hash             print a PHC string for PASSWORDS_HASHED (see hash --help)
    anki-sync-lite backup ...       list, restore or export a user's collection backups
                                    (see backup --help)
    anki-sync-lite import-ankisyncd DIR
                                    copy the users of the Python ankisyncd (see
                                    import-ankisyncd --help)
    anki-sync-lite help [COMMAND]   this help, or a command's

OPTIONS:
    -h, --help          print help (after a command: that command's)
    -V, --version       print the version

",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str("SETTINGS (environment variables; a flag overrides its variable):\n");
    let row = |out: &mut String, s: &Setting| {
        let flag = s
            .flag
            .map(|(name, value)| format!("{name} {value}"))
            .unwrap_or_default();
        let _ = writeln!(out, "    {}{}", s.var, flag_column(s.var, &flag));
        let default = match s.default {
            "" => String::new(),
            // (\u{1}: a space the wrapping does not break at)
            d => format!(" [default\u{1}{d}]"),
        };
        wrap(out, &format!("{}{default}", s.meaning), 8);
    };
    for s in SETTINGS.iter().filter(|s| !s.needs_tls) {
        row(&mut out, s);
    }
    out.push_str("\nHTTPS SETTINGS (need a build with the `tls` feature):\n");
    let this_build = if cfg!(feature = "tls") {
        "This build has it."
    } else {
        "This build has not: use a reverse proxy, or build with `--features tls`."
    };
    wrap(&mut out, this_build, 4);
    for s in SETTINGS.iter().filter(|s| s.needs_tls) {
        row(&mut out, s);
    }
    out.push_str(
        "\nIn Anki, set the sync server to http://HOST:PORT/ (https:// with SYNC_TLS_CERT),\n\
         with the trailing slash. The README explains every setting in full.\n",
    );
    out
}

/// Appends `text` in lines of at most 80 columns, each indented by `indent`.
fn wrap(out: &mut String, text: &str, indent: usize) {
    let mut width = 0;
    for word in text.split(' ') {
        if width > indent && width + 1 + word.chars().count() > 80 {
            out.push('\n');
            width = 0;
        }
        if width == 0 {
            out.extend(std::iter::repeat_n(' ', indent));
            width = indent;
        } else {
            out.push(' ');
            width += 1;
        }
        out.push_str(&word.replace('\u{1}', " "));
        width += word.chars().count();
    }
    out.push('\n');
}

/// The flag, right of the variable name, or nothing.
fn flag_column(var: &str, flag: &str) -> String {
    match flag {
        "" => String::new(),
        flag => format!(
            "{:width$}{flag}",
            "",
            width = 28usize.saturating_sub(var.len())
        ),
    }
}

const USER_HELP: &str = "\
anki-sync-lite user: the accounts in SYNC_BASE/users.txt (beside SYNC_USERn).
A running server picks up every change at once; no restart.

USAGE:
    anki-sync-lite user add NAME [--base DIR]
                        add a user; asks for the password twice (or reads one
                        line from stdin when it is not a terminal)
    anki-sync-lite user passwd NAME [--base DIR]
                        change a user's password; their devices log in again
    anki-sync-lite user remove NAME [--purge] [--base DIR]
                        remove a user; their data stays unless --purge
    anki-sync-lite user list [--base DIR]
                        list every user and where it is defined

OPTIONS:
    --base DIR          the server's data folder [SYNC_BASE, default ~/.syncserver]
    --purge             with remove: also delete the user's collection and media

Run it as someone who may write in the data folder (e.g. root); the file keeps
the folder's owner, so the server can read it.
";

const HASH_HELP: &str = "\
anki-sync-lite hash: print a PHC string (PBKDF2-SHA256, 600 000 rounds, random
salt) for a password, for SYNC_USERn with PASSWORDS_HASHED set.

USAGE:
    anki-sync-lite hash    asks for the password twice (or reads one line from
                           stdin when it is not a terminal)

Single-quote the result so the shell keeps its `$`s:
    SYNC_USER1='alice:$pbkdf2-sha256$i=600000,l=32$...'
";

const BACKUP_HELP: &str = "\
anki-sync-lite backup: a user's collection backups, in SYNC_BASE/USER/backups
(taken before a full upload replaces a collection and before the first sync of
each UTC day; SYNC_BACKUPS are kept).

USAGE:
    anki-sync-lite backup list USER [--base DIR]
                        list the backups, newest (ID 1) first
    anki-sync-lite backup restore USER [ID] [--base DIR]
                        stage backup ID (from `backup list`, or a file name;
                        default the newest) to replace the collection; the
                        server applies it at the user's next sync, after
                        backing up the collection it replaces; devices are
                        then asked to full-sync: choose Download
    anki-sync-lite backup export USER [ID] FILE.colpkg [--media] [--base DIR]
                        write the collection (or backup ID) as a collection
                        package that Anki and AnkiDroid open with File > Import;
                        --media adds the user's media files

OPTIONS:
    --base DIR          the server's data folder [SYNC_BASE, default ~/.syncserver]
    --media             with export: include the media files

Importing a .colpkg replaces the collection on that device; sync it afterwards
and choose Upload to make it the server's too.
";

const IMPORT_HELP: &str = "\
anki-sync-lite import-ankisyncd: copy the users of the Python ankisyncd
(collections, media and media database) into SYNC_BASE, so their devices need
no full sync and download no media again. Stop both servers first.

USAGE:
    anki-sync-lite import-ankisyncd DIR [--force] [--base DIR]

    DIR                 ankisyncd's folder (with auth.db and collections/) or
                        its data_root
    --force             replace users that already have data in SYNC_BASE
    --base DIR          the server's data folder [SYNC_BASE, default ~/.syncserver]

Passwords cannot be carried over: add SYNC_USERn=name:password for each user
(the import prints the lines to fill in).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Result<Command, String>, HashMap<String, String>) {
        let mut env = HashMap::new();
        let r = parse(args.iter().map(|s| s.to_string()), &mut env);
        (r, env)
    }

    fn err(args: &[&str]) -> String {
        run(args).0.expect_err(&format!("{args:?} parsed"))
    }

    #[test]
    fn flags_override_variables() {
        let (cmd, env) = run(&["--host", "127.0.0.1", "--port=9000", "--base-path", "/anki"]);
        assert_eq!(cmd, Ok(Command::Serve));
        assert_eq!(env["SYNC_HOST"], "127.0.0.1");
        assert_eq!(env["SYNC_PORT"], "9000");
        assert_eq!(env["SYNC_BASE_PATH"], "/anki");
        let (_, env) = run(&["--workers", "2", "--log-level=debug", "--base", "/b"]);
        assert_eq!(env["SYNC_WORKERS"], "2");
        assert_eq!(env["RUST_LOG"], "debug");
        assert_eq!(env["SYNC_BASE"], "/b");
    }

    #[test]
    fn commands_and_errors() {
        assert_eq!(run(&["--healthcheck"]).0, Ok(Command::Healthcheck));
        assert_eq!(run(&["-V"]).0, Ok(Command::Version));
        assert_eq!(run(&["--help"]).0, Ok(Command::Help(Topic::Main)));
        assert_eq!(run(&["-h"]).0, Ok(Command::Help(Topic::Main)));
        assert_eq!(run(&["help"]).0, Ok(Command::Help(Topic::Main)));
        assert_eq!(run(&["help", "backup"]).0, Ok(Command::Help(Topic::Backup)));
        assert!(err(&["--port"]).contains("--port needs a value"));
        assert!(err(&["--bogus"]).contains("unknown option --bogus"));
        assert!(err(&["--healthcheck=yes"]).contains("takes no value"));
    }

    #[test]
    fn mistakes_get_a_suggestion() {
        assert_eq!(
            err(&["users", "list"]),
            "unknown command \"users\"; did you mean `anki-sync-lite user list`?"
        );
        assert!(err(&["serve"]).contains("the server runs with no command"));
        assert!(err(&["backpu", "list", "a"]).contains("`anki-sync-lite backup list a`"));
        assert!(err(&["user", "delete", "bob"]).contains("did you mean `user remove bob`?"));
        assert!(err(&["user", "ad", "bob"]).contains("did you mean `user add bob`?"));
        assert!(err(&["backup", "lst", "bob"]).contains("did you mean `backup list bob`?"));
        assert!(err(&["--prot", "1"]).contains("did you mean --port?"));
        assert!(err(&["--basepath", "/a"]).contains("did you mean --base-path?"));
        assert_eq!(
            err(&["frobnicate"]),
            "unknown command \"frobnicate\" (see --help)"
        );
        assert!(err(&["help", "usr"]).contains("did you mean `anki-sync-lite user`?"));
    }

    #[test]
    fn each_command_has_its_own_help() {
        for (args, topic) in [
            (&["user", "--help"][..], Topic::User),
            (&["user", "add", "-h"], Topic::User),
            (&["--help", "backup"], Topic::Backup),
            (&["backup", "export", "--help"], Topic::Backup),
            (&["hash", "--help"], Topic::Hash),
            (&["import-ankisyncd", "--help"], Topic::Import),
            (&["help", "--help"], Topic::Main),
        ] {
            assert_eq!(run(args).0, Ok(Command::Help(topic)), "{args:?}");
        }
        assert!(help(Topic::User).starts_with("anki-sync-lite user:"));
        assert!(help(Topic::Backup).contains("backup export USER [ID] FILE.colpkg"));
        assert!(help(Topic::Main).lines().count() > 40);
        assert!(help(Topic::User).lines().count() < 30);
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
        assert!(err(&["import-ankisyncd"]).contains("needs the ankisyncd folder"));
        assert!(err(&["--force"]).contains("only applies"));
        assert!(err(&["import-ankisyncd", "a", "b"]).contains("one folder"));
        assert!(err(&["import-ankisyncd", "a", "--port", "1"]).contains("applies to the server"));
    }

    #[test]
    fn backup_subcommands() {
        let (cmd, env) = run(&["backup", "list", "alice", "--base", "/srv"]);
        let want = BackupCommand::List {
            user: "alice".into(),
        };
        assert_eq!(cmd, Ok(Command::Backup(want)));
        assert_eq!(env["SYNC_BASE"], "/srv");
        let want = BackupCommand::Restore {
            user: "alice".into(),
            id: None,
        };
        assert_eq!(
            run(&["--base=/b", "backup", "restore", "alice"]).0,
            Ok(Command::Backup(want))
        );
        let want = BackupCommand::Restore {
            user: "alice".into(),
            id: Some("2".into()),
        };
        assert_eq!(
            run(&["backup", "restore", "alice", "2"]).0,
            Ok(Command::Backup(want))
        );
        let want = BackupCommand::Export {
            user: "alice".into(),
            id: None,
            file: PathBuf::from("a.colpkg"),
            media: true,
        };
        assert_eq!(
            run(&["backup", "export", "alice", "a.colpkg", "--media"]).0,
            Ok(Command::Backup(want))
        );
        let want = BackupCommand::Export {
            user: "alice".into(),
            id: Some("3".into()),
            file: PathBuf::from("a.colpkg"),
            media: false,
        };
        assert_eq!(
            run(&["backup", "export", "alice", "3", "a.colpkg"]).0,
            Ok(Command::Backup(want))
        );
        for bad in [
            &["backup"][..],
            &["backup", "list"],
            &["backup", "drop", "alice"],
            &["backup", "restore", "alice", "1", "2"],
            &["backup", "export", "alice"],
            &["backup", "list", "alice", "--force"],
            &["backup", "list", "alice", "--media"],
            &["backup", "list", "alice", "--healthcheck"],
        ] {
            assert!(run(bad).0.is_err(), "{bad:?}");
        }
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
        // `--base user` is a folder called "user", not the subcommand.
        assert_eq!(run(&["--base", "user"]).0, Ok(Command::Serve));
        // `--` ends the options: a user may be called "-x".
        assert_eq!(
            run(&["user", "add", "--", "-x"]).0,
            Ok(Command::Account(AccountCommand::Add("-x".into())))
        );
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

    /// The README's Configuration table and `--help` list the same settings,
    /// and `--help` puts the HTTPS ones under their own heading.
    #[test]
    fn help_lists_every_setting_of_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let table = readme
            .split("\n## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a Configuration section");
        let mut documented = Vec::new();
        for row in table.lines().filter(|r| r.starts_with("| `")) {
            let first = row.split('|').nth(1).unwrap();
            for var in first.split('`').skip(1).step_by(2) {
                documented.push(var.to_string());
            }
        }
        assert!(documented.len() >= 20, "{documented:?}");
        let text = help(Topic::Main);
        let (plain, https) = text.split_once("HTTPS SETTINGS").unwrap();
        for var in &documented {
            let var = var.replace("SYNC_USER2", "SYNC_USER1");
            let section = if var.starts_with("SYNC_TLS_") {
                https
            } else {
                plain
            };
            let listed = section
                .lines()
                .any(|l| l.trim_start().split([',', ' ']).any(|w| w == var));
            assert!(listed, "--help does not list {var}");
        }
        for s in SETTINGS {
            for var in s.var.split(", ").filter(|v| *v != "...") {
                assert!(
                    documented.iter().any(|d| d == var),
                    "{var} is in --help but not in the README's table"
                );
            }
            if let Some((flag, _)) = s.flag {
                let row = table.lines().find(|r| {
                    r.split('|')
                        .nth(1)
                        .is_some_and(|first| first.contains(&format!("`{}`", s.var)))
                });
                assert!(
                    row.is_some_and(|r| r.contains(&format!("`{flag}`"))),
                    "the README's row for {} does not give {flag}",
                    s.var
                );
            }
        }
    }

    #[test]
    fn suggestions_come_from_small_edits_only() {
        assert_eq!(edit_distance("users", "user"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("zzzz", &["user", "hash"], &[]), None);
        assert_eq!(closest("HASH", &["user", "hash"], &[]), Some("hash"));
    }
}
