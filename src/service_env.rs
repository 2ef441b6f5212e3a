//! How `sudo anki-sync-lite user add NAME` finds the installed service's
//! data. The service gets its settings from systemd, which reads
//! `/etc/anki-sync-lite/anki-sync-lite.env`; a command typed by root has
//! none of them. So the commands that work on the data (`user`, `backup`,
//! `import-ankisyncd`), when neither `SYNC_BASE` nor `--base` is given,
//! read that same file: they then see the service's `SYNC_BASE` and its
//! `SYNC_USERn` accounts, and change the folder the running service reads.
//! Without the file they keep the official default (`~/.syncserver`).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

/// The service's settings file (systemd/anki-sync-lite.service reads it).
pub const ENV_FILE: &str = "/etc/anki-sync-lite/anki-sync-lite.env";

/// Adds the variables of `file` that `env` lacks, when `env` has no
/// `SYNC_BASE`. Returns whether the file was read. A file that exists but
/// cannot be read (it is root's, mode 0600) is an error that says so,
/// rather than a silent fall-back to another folder.
pub fn fill_from(env: &mut HashMap<String, String>, file: &Path) -> Result<bool, String> {
    if env.get("SYNC_BASE").is_some_and(|b| !b.is_empty()) {
        return Ok(false);
    }
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(format!(
                "SYNC_BASE is not set, and the service's settings in {} cannot be read ({e}): \
                 run this as root (sudo), or give the data folder with --base",
                file.display()
            ));
        }
    };
    for (key, value) in parse(&text) {
        env.entry(key).or_insert(value);
    }
    Ok(true)
}

/// `KEY=value` lines as systemd's `EnvironmentFile=` reads the simple
/// forms: blank lines and lines starting with `#` or `;` are skipped, and a
/// value wholly in single or double quotes loses them (inside double quotes,
/// `\"` and `\\` are escapes). Nothing is expanded: `$` stays `$`.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        vars.push((key.to_string(), unquote(value.trim())));
    }
    vars
}

fn unquote(value: &str) -> String {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return value[1..value.len() - 1].to_string();
    }
    if !quoted('"') {
        return value.to_string();
    }
    let mut out = String::new();
    let mut chars = value[1..value.len() - 1].chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('"' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_systemd_reads() {
        let text = "# comment\n; also a comment\n\nSYNC_BASE=/var/lib/anki-sync-lite\n\
                    SYNC_USER1='alice:$pbkdf2-sha256$i=1$a$b'\n  SYNC_PORT = 8081 \n\
                    SYNC_USER2=\"bob:say \\\"hi\\\" \\\\ back\"\nnot a line\n=x\n";
        let vars: HashMap<_, _> = parse(text).into_iter().collect();
        assert_eq!(vars["SYNC_BASE"], "/var/lib/anki-sync-lite");
        assert_eq!(vars["SYNC_USER1"], "alice:$pbkdf2-sha256$i=1$a$b");
        assert_eq!(vars["SYNC_PORT"], "8081");
        assert_eq!(vars["SYNC_USER2"], "bob:say \"hi\" \\ back");
        assert_eq!(vars.len(), 4);
    }

    #[test]
    fn fills_only_without_sync_base_and_never_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("anki-sync-lite.env");
        fs::write(
            &file,
            "SYNC_BASE=/srv/anki\nSYNC_USER1=a:b\nRUST_LOG=debug\n",
        )
        .unwrap();

        let mut env = HashMap::from([("RUST_LOG".to_string(), "warn".to_string())]);
        assert_eq!(fill_from(&mut env, &file), Ok(true));
        assert_eq!(env["SYNC_BASE"], "/srv/anki");
        assert_eq!(env["SYNC_USER1"], "a:b");
        assert_eq!(env["RUST_LOG"], "warn");

        let mut env = HashMap::from([("SYNC_BASE".to_string(), "/mine".to_string())]);
        assert_eq!(fill_from(&mut env, &file), Ok(false));
        assert_eq!(env.len(), 1);

        let mut env = HashMap::new();
        assert_eq!(fill_from(&mut env, &dir.path().join("missing")), Ok(false));
        assert!(env.is_empty());
        // A folder stands in for an unreadable file (tests may run as root).
        let err = fill_from(&mut env, dir.path()).unwrap_err();
        assert!(
            err.contains("cannot be read") && err.contains("--base"),
            "{err}"
        );
    }
}
