//! Issue 17, help and messages: the binary's help (every setting, the
//! commands' own help), suggestions for mistakes, and what the user and
//! backup commands say before anyone has synced.
//!
//! Our server only: the official one has no such commands.

use std::path::Path;

use crate::support::run_ours;
use anki_sync_lite::cli::{Topic, help};

/// (exit code, stdout, stderr) of `anki-sync-lite ARGS` on data folder `base`.
fn run(base: &Path, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let out = run_ours(args, stdin, &[("SYNC_BASE", base.to_str().unwrap())]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_setting_and_each_command_has_its_own() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let (code, main, _) = run(base, &["--help"], "");
    assert_eq!(code, Some(0));
    // (the list itself is checked against the README in src/cli.rs)
    assert_eq!(main, help(Topic::Main));
    for var in ["SYNC_BACKUPS", "SYNC_USER1_FILE", "SYNC_MAX_CONNECTIONS"] {
        assert!(main.contains(var), "{var} missing from --help");
    }
    let https = main.split("HTTPS SETTINGS").nth(1).unwrap();
    assert!(https.contains("SYNC_TLS_CERT, SYNC_TLS_KEY"));
    let built_with = match cfg!(feature = "tls") {
        true => "This build has it.",
        false => "This build has not",
    };
    assert!(https.contains(built_with), "{https}");
    assert_eq!(run(base, &["help"], "").1, main);
    assert_eq!(run(base, &["-h"], "").1, main);

    for (args, first) in [
        (&["user", "--help"][..], "anki-sync-lite user:"),
        (&["user", "add", "--help"], "anki-sync-lite user:"),
        (&["help", "user"], "anki-sync-lite user:"),
        (&["backup", "--help"], "anki-sync-lite backup:"),
        (&["hash", "--help"], "anki-sync-lite hash:"),
        (
            &["import-ankisyncd", "-h"],
            "anki-sync-lite import-ankisyncd:",
        ),
    ] {
        let (code, out, _) = run(base, args, "");
        assert_eq!(code, Some(0), "{args:?}");
        assert!(out.starts_with(first), "{args:?}: {out}");
        assert!(
            !out.contains("SETTINGS"),
            "{args:?} printed the global help"
        );
    }
}

#[test]
fn mistakes_get_a_suggestion() {
    let base = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["serve"][..], "the server runs with no command"),
        (
            &["users", "list"],
            "did you mean `anki-sync-lite user list`?",
        ),
        (
            &["user", "delete", "bob"],
            "did you mean `user remove bob`?",
        ),
        (
            &["backups", "list", "bob"],
            "did you mean `anki-sync-lite backup list bob`?",
        ),
        (&["--prot", "8080"], "did you mean --port?"),
    ] {
        let (code, out, err) = run(base.path(), args, "");
        assert_eq!(code, Some(1), "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn commands_say_what_to_do_before_anyone_has_synced() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let (code, out, _) = run(base, &["user", "list"], "");
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("no users yet") && out.contains("user add NAME"),
        "{out}"
    );

    // A user of the users file who has never synced has no folder yet.
    let (code, _, err) = run(base, &["user", "add", "bob"], "secret\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(!base.join("bob").exists());
    let (code, out, _) = run(base, &["backup", "list", "bob"], "");
    assert_eq!(code, Some(0));
    assert!(out.starts_with("no backups yet for bob"), "{out}");
    let (code, _, err) = run(base, &["backup", "export", "bob", "b.colpkg"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("bob has not synced yet"), "{err}");
    let (code, _, err) = run(base, &["backup", "restore", "bob"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("bob has not synced yet"), "{err}");
    // Someone who is no user at all.
    let (code, _, err) = run(base, &["backup", "list", "nobody"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("no user \"nobody\""), "{err}");
}
