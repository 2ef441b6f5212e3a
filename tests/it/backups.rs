//! Backups with undo (issue 7) with the real client: a wrong full upload is
//! undone by `backup restore`, normal syncs back up at most once a day, and
//! `SYNC_BACKUPS` bounds (or turns off) what is kept. Backups people can open
//! (issue 17): `backup export` writes collection packages that the real
//! client imports as File > Import does, holding what a device downloads.
//!
//! Our server only: the official one has no backups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::data::noise;
use crate::support::dumps::assert_same;
use crate::support::{Account, Server, client_ok, our_binary};
use serde_json::Value;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn account(server: &Server) -> Account<'_> {
    Account {
        server,
        user: "user",
        password: "pass",
    }
}

fn make(path: &Path, notes: u64, seed: u64) {
    client_ok(&[
        "make",
        "--path",
        path_str(path),
        "--notes",
        &notes.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
}

fn notes(path: &Path) -> u64 {
    client_ok(&["count", "--path", path_str(path)])["notes"]
        .as_u64()
        .expect("notes")
}

fn dump_without_scm(path: &Path) -> Value {
    let mut dump = client_ok(&["dump", "--path", path_str(path)]);
    dump["col"]
        .as_object_mut()
        .expect("col")
        .remove("scm")
        .expect("scm");
    dump
}

/// Runs `anki-sync-lite ARGS` on the server's data folder; (success, stdout, stderr).
fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(our_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SYNC_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(args)
        .env("SYNC_BASE", server.base_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run anki-sync-lite");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(server, args);
    assert!(ok, "anki-sync-lite {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The reasons of the user's backups, newest first, as `backup list` shows them.
fn listed_reasons(server: &Server) -> Vec<String> {
    cli_ok(server, &["backup", "list", "user"])
        .lines()
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|line| line.split_whitespace().nth(3).expect("reason").to_string())
        .collect()
}

/// Waits (at most 10 s) until the collection the last upload replaced,
/// kept under a second name until its backup is written, is backed up.
fn settled(server: &Server) {
    let staged = server.base_dir().join("user/backups/replaced.anki2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while staged.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} stays",
            staged.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (at most 10 s) until the day's backup is written: it is
/// compressed in the background a second after the sync that started it.
fn daily_written(server: &Server) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !backup_files(server)
        .iter()
        .any(|p| p.to_string_lossy().ends_with("-daily.anki2.zst"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no daily backup after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn backup_files(server: &Server) -> Vec<PathBuf> {
    let dir = server.base_dir().join("user/backups");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".anki2.zst"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_wrong_full_upload_is_undone_by_restore() {
    let server = Server::start_ours(&[("user", "pass")], &[]);
    let user = account(&server);
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.anki2"),
        dir.path().join("b.anki2"),
        dir.path().join("c.anki2"),
    );

    // Device A uploads collection X.
    make(&a, 300, 1);
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a)).unwrap();
    // The brand-new collection it replaced held nothing: no backup.
    assert_eq!(listed_reasons(&server), Vec::<String>::new());
    let x = dump_without_scm(&a);

    // Device B, holding a different collection, answers "upload" to the
    // full-sync question: the wrong upload.
    make(&b, 20, 2);
    assert_eq!(user.sync(&b), "FULL_SYNC");
    user.run("full-upload", Some(&b)).unwrap();
    // The replaced collection is backed up just after the upload's answer.
    settled(&server);
    assert_eq!(listed_reasons(&server), ["before-upload"]);

    let (ok, _, stderr) = cli(&server, &["backup", "restore", "user", "7"]);
    assert!(!ok && stderr.contains("no backup"), "{stderr}");
    let (ok, _, stderr) = cli(&server, &["backup", "restore", "nobody"]);
    assert!(!ok && stderr.contains("no user"), "{stderr}");
    let out = cli_ok(&server, &["backup", "restore", "user"]);
    assert!(out.contains("before-upload"), "{out}");
    let listed = cli_ok(&server, &["backup", "list", "user"]);
    assert!(listed.contains("restore is staged"), "{listed}");

    // Every device is told to full-sync; B downloads and holds X exactly.
    assert_eq!(user.sync(&b), "FULL_SYNC");
    user.run("full-download", Some(&b)).unwrap();
    let restored = dump_without_scm(&b);
    assert!(
        restored == x,
        "B does not hold collection X after the restore"
    );
    assert_eq!(user.sync(&b), "NO_CHANGES");
    assert_eq!(user.sync(&a), "FULL_SYNC", "A must be told too");

    // The restore is itself undoable: the collection it replaced (B's) is
    // the newest backup.
    assert_eq!(listed_reasons(&server), ["before-restore", "before-upload"]);
    cli_ok(&server, &["backup", "restore", "user", "1"]);
    assert_eq!(user.sync(&c), "FULL_DOWNLOAD");
    user.run("full-download", Some(&c)).unwrap();
    assert_eq!(notes(&c), 20);
}

#[test]
fn normal_syncs_back_up_at_most_once_a_day() {
    let server = Server::start_ours(&[("user", "pass")], &[]);
    let user = account(&server);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.anki2"), dir.path().join("b.anki2"));
    make(&a, 100, 3);
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a)).unwrap();
    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    user.run("full-download", Some(&b)).unwrap();
    assert!(backup_files(&server).is_empty());

    for round in 0..3u64 {
        let device = if round % 2 == 0 { &a } else { &b };
        client_ok(&[
            "add-notes",
            "--path",
            path_str(device),
            "--notes",
            "5",
            "--seed",
            &(10 + round).to_string(),
        ]);
        let required = user.sync(device);
        assert!(
            required == "NO_CHANGES" || required == "NORMAL_SYNC",
            "{required}"
        );
    }
    assert_eq!(user.sync(&a), "NO_CHANGES");
    assert_eq!(notes(&a), 115);
    daily_written(&server);
    assert_eq!(listed_reasons(&server), ["daily"]);
}

#[test]
fn sync_backups_bounds_what_is_kept() {
    for (keep, want) in [("2", 2), ("0", 0)] {
        let server = Server::start_ours(&[("user", "pass")], &[("SYNC_BACKUPS", keep)]);
        let user = account(&server);
        let dir = tempfile::tempdir().unwrap();
        for round in 0..4u64 {
            let path = dir.path().join(format!("{round}.anki2"));
            make(&path, 5 + round, round);
            user.sync(&path);
            user.run("full-upload", Some(&path)).unwrap();
        }
        // Three uploads replaced a collection with notes (the last one is
        // backed up just after its answer).
        settled(&server);
        assert_eq!(backup_files(&server).len(), want, "SYNC_BACKUPS={keep}");
    }
}

/// `client_ok` on a collection: `COMMAND --path PATH EXTRA...`.
fn on(path: &Path, command: &str, extra: &[&str]) -> Value {
    let mut args = vec![command, "--path", path_str(path)];
    args.extend(extra);
    client_ok(&args)
}

#[test]
fn exported_packages_import_into_the_real_client_with_their_media() {
    let server = Server::start_ours(&[("user", "pass")], &[]);
    let user = account(&server);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (a, b) = (path("a.anki2"), path("b.anki2"));

    // Device A: a collection with media, uploaded, and its media synced.
    make(&a, 300, 4);
    let src = path("src");
    std::fs::create_dir(&src).unwrap();
    let files = [
        ("photo.jpg", noise(1, 200_000)),
        ("日本語 音声.mp3", noise(2, 30_000)),
        ("diagram (2).png", noise(3, 5)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    on(&a, "media-add", &["--src", path_str(&src)]);
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a)).unwrap();
    user.run("media-sync", Some(&a)).unwrap();
    let uploaded = dump_without_scm(&a);

    // A normal sync with new notes: the day's backup keeps the uploaded state.
    on(&a, "add-notes", &["--notes", "7", "--seed", "9"]);
    let required = user.sync(&a);
    assert!(["NO_CHANGES", "NORMAL_SYNC"].contains(&required.as_str()));
    daily_written(&server);
    assert_eq!(listed_reasons(&server), ["daily"]);
    // B downloads what the server holds now.
    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    user.run("full-download", Some(&b)).unwrap();

    // The live collection with its media, while the server runs.
    let live = path("live.colpkg");
    let out = cli_ok(
        &server,
        &["backup", "export", "user", path_str(&live), "--media"],
    );
    assert!(
        out.contains("307 notes") && out.contains("3 media files"),
        "{out}"
    );
    let x = path("x.anki2");
    let counts = on(&x, "import-colpkg", &["--package", path_str(&live)]);
    assert_eq!(counts["notes"], 307, "{counts}");
    assert_same(&dump_without_scm(&x), &dump_without_scm(&b));
    let media = on(&x, "media-list", &[]);
    assert_eq!(media, on(&a, "media-list", &[]));
    assert_eq!(media.as_object().unwrap().len(), files.len(), "{media}");

    // A listed backup (ID 1), without media.
    let old = path("old.colpkg");
    let out = cli_ok(&server, &["backup", "export", "user", "1", path_str(&old)]);
    assert!(
        out.contains("300 notes") && out.contains("-daily."),
        "{out}"
    );
    let y = path("y.anki2");
    on(&y, "import-colpkg", &["--package", path_str(&old)]);
    assert_same(&dump_without_scm(&y), &uploaded);
    assert_eq!(on(&y, "media-list", &[]), serde_json::json!({}));

    // Refusals leave nothing behind.
    let (ok, _, err) = cli(&server, &["backup", "export", "user", "9", "z.colpkg"]);
    assert!(!ok && err.contains("no backup \"9\""), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "scratch files left: {names:?}");
}

/// Run as root on the folder of a service that runs as another account,
/// `backup export` leaves nothing there that the service could not open
/// (SQLite's `-shm` beside the live collection takes the file's owner).
/// Needs root; skipped with a message otherwise.
#[test]
fn export_run_as_root_leaves_the_service_its_files() {
    use std::os::unix::fs::MetadataExt;
    let mut server = Server::start_ours(&[("user", "pass")], &[]);
    let dir = tempfile::tempdir().unwrap();
    if std::fs::metadata(dir.path()).unwrap().uid() != 0 {
        eprintln!("skipped: needs root to give the data folder to another account");
        return;
    }
    let a = dir.path().join("a.anki2");
    make(&a, 20, 6);
    let user = account(&server);
    user.sync(&a);
    user.run("full-upload", Some(&a)).unwrap();
    // Stopped, the server has closed the collection: no -wal or -shm.
    server.terminate().expect("server stops");
    let folder = server.base_dir().join("user");
    let chown = Command::new("chown")
        .args(["-R", "61234:61235"])
        .arg(&folder)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = dir.path().join("out.colpkg");
    cli_ok(
        &server,
        &["backup", "export", "user", path_str(&out), "--media"],
    );
    let mut stack = vec![folder];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), 61234, "{} is not the service's", path.display());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    let y = dir.path().join("y.anki2");
    assert_eq!(
        on(&y, "import-colpkg", &["--package", path_str(&out)])["notes"],
        20
    );
}
