//! Issue 7, users: the users file managed with `anki-sync-lite user …`
//! takes effect without a restart (a new user logs in with the real client;
//! after `user passwd` the old host key gets 403), `user remove` keeps the
//! data unless `--purge`, `SYNC_USERn_FILE` reads an account from a file,
//! and `anki-sync-lite hash` makes PHC strings the server accepts. A server
//! with no users at all runs and says how to add one; root's commands act as
//! the data folder's owner.
//!
//! Our server only: the official one has none of this.

use std::fs;
use std::path::Path;

use crate::support::http::{Conn, call};
use crate::support::{Account, Server, run_ours};
use anki_sync_lite::auth::host_key;
use serde_json::Value;

/// A cheap PHC string (1 000 rounds of PBKDF2-SHA512) for the password
/// `pass`, for accounts written into the users file by hand.
const CHEAP_PHC: &str = "$pbkdf2-sha512$i=1000$c2FsdHNhbHRzYWx0MTIzNA$7JSU+1OIB+xwXF491RZfvz/hlLp4sdNUXguj+MMi1KRXbv39cFvidKSIAAh3gs0gmLBzrhCQFLl93ke4UPwD9Q";

/// Runs `anki-sync-lite ARGS --base BASE` with `stdin`; panics on failure.
fn cli(base: &Path, args: &[&str], stdin: &str) -> String {
    let base = base.to_str().expect("utf-8 path");
    let mut all = args.to_vec();
    all.extend(["--base", base]);
    let out = run_ours(&all, stdin, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{all:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `name`'s PHC string in the users file.
fn phc_in_file(base: &Path, name: &str) -> String {
    let text = fs::read_to_string(base.join("users.txt")).expect("users.txt");
    let prefix = format!("{name}:");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in users.txt:\n{text}"));
    line[prefix.len()..].to_string()
}

/// Status of `/sync/meta` with this host key.
fn meta_status(server: &Server, hkey: &str) -> u16 {
    call(
        &mut Conn::open(server),
        "meta",
        hkey,
        br#"{"v":11,"cv":"x"}"#,
    )
    .status
}

/// Raw `hostKey`: the key on success, else the status.
fn raw_login(server: &Server, user: &str, password: &str) -> Result<String, u16> {
    let body = serde_json::json!({ "u": user, "p": password }).to_string();
    let reply = call(&mut Conn::open(server), "hostKey", "", body.as_bytes());
    if reply.status != 200 {
        return Err(reply.status);
    }
    let answer: Value = serde_json::from_slice(&reply.payload()).expect("json");
    Ok(answer["key"].as_str().expect("key").to_string())
}

/// Logs in with the real Anki client and returns its host key.
fn client_login(server: &Server, user: &str, password: &str) -> String {
    let account = Account {
        server,
        user,
        password,
    };
    let out = account.run("login", None).unwrap_or_else(|e| panic!("{e}"));
    out["hkey"].as_str().expect("hkey").to_string()
}

#[test]
fn user_add_passwd_and_remove_take_effect_without_a_restart() {
    let server = Server::start_ours(&[("user", "pass")], &[]);
    let base = server.base_dir();

    // add: the new user logs in with the real client, no restart.
    let out = cli(base, &["user", "add", "alice"], "first secret\n");
    assert!(out.contains("added user alice"), "{out}");
    let phc = phc_in_file(base, "alice");
    assert!(phc.starts_with("$pbkdf2-sha256$i=600000,l=32$"), "{phc}");
    let first_key = client_login(&server, "alice", "first secret");
    // Same host key as the official server in PASSWORDS_HASHED mode.
    assert_eq!(first_key, host_key("alice", &phc));
    assert_eq!(meta_status(&server, &first_key), 200);
    assert!(base.join("alice/collection.anki2").is_file());
    let mode = fs::metadata(base.join("users.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // passwd: the old host key gets 403, the old password fails, the new one works.
    cli(base, &["user", "passwd", "alice"], "second secret\n");
    assert_eq!(meta_status(&server, &first_key), 403);
    let refused = Account {
        server: &server,
        user: "alice",
        password: "first secret",
    }
    .run("login", None)
    .expect_err("the old password must fail");
    assert_eq!(refused.kind(), Some("AUTH"), "{refused}");
    let second_key = client_login(&server, "alice", "second secret");
    assert_ne!(second_key, first_key);
    assert_eq!(meta_status(&server, &second_key), 200);
    // The environment's user is untouched by all this.
    assert_eq!(meta_status(&server, &host_key("user", "pass")), 200);

    let list = cli(base, &["user", "list"], "");
    assert!(list.contains("alice  users.txt"), "{list}");

    // remove: 403, the data stays.
    let out = cli(base, &["user", "remove", "alice"], "");
    assert!(out.contains("data stays"), "{out}");
    assert_eq!(meta_status(&server, &second_key), 403);
    assert_eq!(raw_login(&server, "alice", "second secret"), Err(403));
    assert!(base.join("alice/collection.anki2").is_file());

    // A hand-written line is picked up too; remove --purge deletes the data.
    let mut text = fs::read_to_string(base.join("users.txt")).unwrap();
    text.push_str(&format!("bob:{CHEAP_PHC}\n"));
    fs::write(base.join("users.txt"), text).unwrap();
    let bob_key = raw_login(&server, "bob", "pass").expect("bob logs in");
    assert_eq!(meta_status(&server, &bob_key), 200);
    assert!(base.join("bob/collection.anki2").is_file());
    cli(base, &["user", "remove", "bob", "--purge"], "");
    assert_eq!(meta_status(&server, &bob_key), 403);
    assert!(!base.join("bob").exists());
    assert!(base.join("alice/collection.anki2").is_file());

    // Refusals: no duplicate, no unknown user, clear messages.
    let base_arg = base.to_str().unwrap();
    let out = run_ours(
        &["user", "passwd", "nobody", "--base", base_arg],
        "x\n",
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no user \"nobody\""), "{stderr}");
}

#[test]
fn a_users_file_alone_is_enough_and_a_bad_edit_changes_nothing() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("users.txt");
    fs::write(&file, format!("# our family\ncarol:{CHEAP_PHC}\n")).unwrap();
    let base_arg = base.path().to_str().unwrap();
    let server = Server::start_ours(&[], &[("SYNC_BASE", base_arg)]);
    let carol = raw_login(&server, "carol", "pass").expect("carol logs in");
    assert_eq!(carol, host_key("carol", CHEAP_PHC));
    assert_eq!(meta_status(&server, &carol), 200);

    // A broken hand edit: the server keeps the users it has and says why.
    fs::write(&file, format!("carol:{CHEAP_PHC}\ndave\n")).unwrap();
    assert_eq!(meta_status(&server, &carol), 200);
    assert!(server.log().contains("line 2"), "{}", server.log());
    // The command refuses to touch a broken file.
    let out = run_ours(&["user", "remove", "carol", "--base", base_arg], "", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    // Fixed: the change applies.
    fs::write(&file, "# nobody yet\n").unwrap();
    assert_eq!(meta_status(&server, &carol), 403);
}

#[test]
fn sync_user_file_and_hash_work_with_passwords_hashed() {
    let secrets = tempfile::tempdir().unwrap();
    let out = run_ours(&["hash"], "dave's password\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string();
    assert!(phc.starts_with("$pbkdf2-sha256$i=600000,l=32$"), "{phc}");
    let secret = secrets.path().join("dave");
    fs::write(&secret, format!("dave:{phc}\n")).unwrap();
    let server = Server::start_ours(
        &[],
        &[
            ("SYNC_USER1_FILE", secret.to_str().unwrap()),
            ("PASSWORDS_HASHED", "1"),
        ],
    );
    let key = client_login(&server, "dave", "dave's password");
    assert_eq!(key, host_key("dave", &phc));
    assert_eq!(meta_status(&server, &key), 200);
}

/// Issue 14, item 9: a `SYNC_USERn` name gets the same rule as `user add`.
/// Before, `users.txt`, `.spill` and a name with a newline were accepted and
/// became folders; now start-up stops with a message naming the variable.
#[test]
fn sync_user_names_that_user_add_refuses_stop_the_start_up() {
    for name in [".spill", "users.txt", "line\nbreak", "#comment"] {
        let base = tempfile::tempdir().unwrap();
        let value = format!("{name}:secret");
        let mut child = std::process::Command::new(crate::support::our_binary())
            .env_clear()
            .envs([
                ("SYNC_USER1", "alice:pw"),
                ("SYNC_USER2", value.as_str()),
                ("SYNC_BASE", base.path().to_str().unwrap()),
                ("SYNC_HOST", "127.0.0.1"),
                ("SYNC_PORT", "0"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server started with SYNC_USER2={value:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{name:?}: {stderr}");
        assert!(
            stderr.contains("SYNC_USER2: the user name"),
            "{name:?}: {stderr}"
        );
        // Nothing was created for either user.
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0, "{name:?}");
    }
}

/// The README's systemd advice: root runs `user add --base` on the folder of
/// a service that runs as another account (systemd's dynamic user), and the
/// file gets that account, so the service can read it. Needs root to give
/// the folder away; skipped with a message otherwise.
#[test]
fn user_add_run_as_root_gives_the_users_file_the_data_folders_owner() {
    use std::os::unix::fs::MetadataExt;
    let base = tempfile::tempdir().unwrap();
    let probe = base.path().join("probe");
    fs::write(&probe, "").unwrap();
    if fs::metadata(&probe).unwrap().uid() != 0 {
        eprintln!("skipped: needs root to give the data folder to another account");
        return;
    }
    fs::remove_file(&probe).unwrap();
    // 61234: an account that need not exist, as a dynamic user's may not.
    std::os::unix::fs::chown(base.path(), Some(61234), Some(61235)).unwrap();
    cli(base.path(), &["user", "add", "alice"], "secret\n");
    let meta = fs::metadata(base.path().join("users.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (61234, 61235));
    assert_eq!(meta.mode() & 0o777, 0o600);
    cli(base.path(), &["user", "passwd", "alice"], "other\n");
    let meta = fs::metadata(base.path().join("users.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (61234, 61235));
}

/// A fresh install: no `SYNC_USERn`, no users file. The server runs, its `/`
/// page and its log say how to add a user, and the first `user add` works
/// at once.
#[test]
fn a_server_without_users_runs_and_says_how_to_add_one() {
    let base = tempfile::tempdir().unwrap();
    let base_arg = base.path().to_str().unwrap();
    let server = Server::start_ours(&[], &[("SYNC_BASE", base_arg)]);
    let page = |server: &Server| {
        let reply = Conn::open(server).send("GET", "/", &[], b"");
        assert_eq!(reply.status, 200);
        String::from_utf8(reply.body).unwrap()
    };
    let before = page(&server);
    assert!(
        before.contains("no users yet") && before.contains("sudo anki-sync-lite user add NAME"),
        "{before}"
    );
    assert!(server.log().contains("no users yet"), "{}", server.log());

    cli(base.path(), &["user", "add", "alice"], "secret\n");
    let key = client_login(&server, "alice", "secret");
    assert_eq!(meta_status(&server, &key), 200);
    let after = page(&server);
    assert!(!after.contains("no users yet"), "{after}");
}

/// Root's `user`, `backup list` and `backup restore` commands on the folder
/// of a service that runs as its own account act as that account (the test
/// above checks what they write): they see the folder exactly as the service
/// does, so a users file only root can read is unreadable to them too, and
/// they say so instead of reporting users the service cannot see.
#[test]
fn root_acts_as_the_data_folders_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // /proc/self belongs to the effective user.
    if fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: only root can hand a folder to another user (CI runs as root)");
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let base = parent.path().join("data");
    fs::create_dir(&base).unwrap();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = 65534;
    std::os::unix::fs::chown(&base, Some(nobody), Some(nobody)).unwrap();
    cli(&base, &["user", "add", "alice"], "secret\n");
    let list = cli(&base, &["user", "list"], "");
    assert!(list.contains("alice"), "{list}");

    std::os::unix::fs::chown(base.join("users.txt"), Some(0), Some(0)).unwrap();
    assert_eq!(fs::metadata(base.join("users.txt")).unwrap().uid(), 0);
    let base_arg = base.to_str().unwrap();
    let out = run_ours(&["user", "list", "--base", base_arg], "", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("ermission denied"),
        "{stderr}"
    );
}
