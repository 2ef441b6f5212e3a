//! Issue 14, item 11: user data is private to the server's account. Folders
//! are created 0700 and files 0600 whatever the umask (the server here runs
//! under umask 000, the worst case), SQLite's own `-wal`/`-shm` and the
//! backups included, and a user folder an older version left 0755 is made
//! private at start-up. The layout stays the official one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{Account, Server, client_ok};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every folder and file under `dir`, depth first.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if path.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn data_is_created_private_whatever_the_umask() {
    let base = tempfile::tempdir().unwrap();
    // alice's folder as an older version left it under umask 022.
    let old = base.path().join("alice");
    fs::create_dir_all(old.join("media")).unwrap();
    fs::write(old.join("media/old.jpg"), b"old picture").unwrap();
    for (path, m) in [(&old, 0o755), (&old.join("media"), 0o755)] {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
    }
    fs::set_permissions(old.join("media/old.jpg"), fs::Permissions::from_mode(0o644)).unwrap();

    let base_arg = base.path().to_str().unwrap();
    let server = Server::start_ours_with_umask(
        &[("alice", "pw"), ("bob", "pw")],
        &[("SYNC_BASE", base_arg)],
        0o000,
    );
    let bob = Account {
        server: &server,
        user: "bob",
        password: "pw",
    };
    let dir = tempfile::tempdir().unwrap();
    let col = dir.path().join("bob.anki2");
    let col_arg = col.to_str().unwrap();
    client_ok(&["make", "--path", col_arg, "--notes", "20"]);
    assert_eq!(bob.sync(&col), "FULL_UPLOAD");
    bob.run("full-upload", Some(&col)).unwrap();
    // A second upload backs the first one up.
    client_ok(&["add-notes", "--path", col_arg, "--notes", "1"]);
    bob.run("full-upload", Some(&col)).unwrap();
    let media = dir.path().join("media-src");
    fs::create_dir(&media).unwrap();
    fs::write(media.join("new.jpg"), b"new picture").unwrap();
    client_ok(&[
        "media-add",
        "--path",
        col_arg,
        "--src",
        media.to_str().unwrap(),
    ]);
    bob.run("media-sync", Some(&col)).unwrap();
    // A normal sync leaves the collection open in WAL mode: -wal and -shm exist.
    client_ok(&["add-notes", "--path", col_arg, "--notes", "1"]);
    assert_eq!(bob.sync(&col), "NO_CHANGES");

    let bob_dir = base.path().join("bob");
    for name in [
        "collection.anki2",
        "collection.anki2-wal",
        "collection.anki2-shm",
        "media.db",
        "media/new.jpg",
    ] {
        assert!(bob_dir.join(name).exists(), "{name} missing");
    }
    assert_eq!(fs::read_dir(bob_dir.join("backups")).unwrap().count(), 1);

    let mut everything = Vec::new();
    walk(base.path(), &mut everything);
    for path in everything {
        if path.ends_with("alice/media/old.jpg") {
            // Left as it was: its folder protects it.
            assert_eq!(mode(&path), 0o644);
            continue;
        }
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{} is {:o}", path.display(), mode(&path));
    }
}
