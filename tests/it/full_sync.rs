//! Login and full sync (upload, then download to a second device) driven by the
//! real Anki client library, asserting that the downloaded collection holds
//! exactly what the first device uploaded.
//!
//! Runs against our binary; `ANKI_SYNC_TEST_SERVER=official` runs the same
//! tests against `python -m anki.syncserver` to check the tests themselves.

use std::path::Path;
use std::time::Instant;

use crate::support::{Account, Server, client_ok};
use serde_json::Value;
use tempfile::TempDir;

const USERS: &[(&str, &str)] = &[("user", "pass"), ("other", "secret")];

fn account<'a>(server: &'a Server, user: &'a str, password: &'a str) -> Account<'a> {
    Account {
        server,
        user,
        password,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn login_gives_the_official_hkey_and_rejects_bad_credentials() {
    let server = Server::start(USERS, &[]);
    // The official hkey is SHA-1 of "name:password"; keeping it lets devices
    // logged in to an official server carry on after a switch.
    let out = account(&server, "user", "pass")
        .run("login", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["hkey"], "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
    let out = account(&server, "other", "secret")
        .run("login", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["hkey"], "f2af9ca80f4589cbf2a4ad5657462e083e577575");

    // Wrong password, unknown user, user names compared case-sensitively,
    // another user's password.
    for (user, password) in [
        ("user", "wrong"),
        ("nosuchuser", "pass"),
        ("User", "pass"),
        ("user", ""),
        ("user", "secret"),
    ] {
        let err = account(&server, user, password)
            .run("login", None)
            .expect_err(&format!("login as {user:?}/{password:?} must fail"));
        assert_eq!(err.error(), Some("SyncError"), "{err}");
        assert_eq!(err.kind(), Some("AUTH"), "{err}");
    }
}

#[test]
fn brand_new_user_with_empty_client_has_no_changes() {
    let server = Server::start(USERS, &[]);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("empty.anki2");
    let user = account(&server, "user", "pass");
    assert_eq!(user.sync(&path), "NO_CHANGES");
    // Asking must not have changed anything on either side.
    assert_eq!(user.sync(&path), "NO_CHANGES");
    let counts = client_ok(&["count", "--path", path_str(&path)]);
    assert_eq!(counts["notes"], 0);
    assert_eq!(counts["cards"], 0);
}

#[test]
fn full_sync_round_trips_2000_notes() {
    round_trip(2_000);
}

#[test]
fn full_sync_round_trips_20000_notes() {
    round_trip(20_000);
}

/// Device A makes `notes` notes and uploads; device B downloads; both must
/// then hold the same content, and neither needs another sync.
fn round_trip(notes: u64) {
    let server = Server::start(USERS, &[]);
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.anki2");
    let b = dir.path().join("b.anki2");
    let user = account(&server, "user", "pass");

    let clock = Instant::now();
    let made = client_ok(&[
        "make",
        "--path",
        path_str(&a),
        "--notes",
        &notes.to_string(),
        "--seed",
        "42",
    ]);
    assert_eq!(made["notes"], notes);
    assert!(
        made["revlog"].as_u64() > Some(0),
        "no reviews were made: {made}"
    );
    let make_secs = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    let uploaded = user
        .run("full-upload", Some(&a))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(uploaded["notes"], notes);
    assert_eq!(
        user.sync(&a),
        "NO_CHANGES",
        "the upload must leave server and A in step"
    );
    let upload_secs = clock.elapsed().as_secs_f64();

    // Another user's collection is untouched by the upload.
    let other_path = dir.path().join("other.anki2");
    assert_eq!(
        account(&server, "other", "secret").sync(&other_path),
        "NO_CHANGES"
    );

    let clock = Instant::now();
    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    let downloaded = user
        .run("full-download", Some(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    let download_secs = clock.elapsed().as_secs_f64();
    for table in [
        "notes",
        "cards",
        "revlog",
        "decks",
        "deck_config",
        "notetypes",
    ] {
        assert_eq!(
            downloaded[table], made[table],
            "{table} count after download"
        );
    }
    assert_eq!(
        user.sync(&b),
        "NO_CHANGES",
        "the download must leave server and B in step"
    );

    let dump_a = client_ok(&["dump", "--path", path_str(&a)]);
    let dump_b = client_ok(&["dump", "--path", path_str(&b)]);
    assert_made_content(&dump_b, notes);
    assert_same_content(&dump_a, &dump_b);
    eprintln!(
        "{notes} notes against {:?}: make {make_secs:.1}s, sync+upload+sync {upload_secs:.1}s, \
         sync+download {download_secs:.1}s",
        server.kind()
    );
}

/// Our SQLite is built without FTS5 and R*Tree (.cargo/config.toml). A
/// collection in which an add-on keeps such tables must still be accepted,
/// sync normally, and reach other devices (current and legacy) intact.
#[test]
fn addon_virtual_tables_survive_a_round_trip() {
    let server = Server::start(USERS, &[]);
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.anki2");
    let b = dir.path().join("b.anki2");
    let user = account(&server, "user", "pass");
    client_ok(&["make", "--path", path_str(&a), "--notes", "200"]);
    let tables = |path: &Path, write: bool| {
        let mut argv = vec!["run", "--path", path_str(path), "--script", "addon_tables"];
        if write {
            argv.extend(["--arg", "write=1"]);
        }
        client_ok(&argv)
    };
    let written = tables(&a, true);
    assert_eq!(
        written,
        serde_json::json!({"fts": [["hello from an add-on"]], "rtree": [[7, 1.5, 2.5]]})
    );

    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a)).unwrap();
    // A normal sync on top of it (the client reports the state after it).
    client_ok(&["add-notes", "--path", path_str(&a), "--notes", "5"]);
    assert_eq!(user.sync(&a), "NO_CHANGES");

    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    let downloaded = user.run("full-download", Some(&b)).unwrap();
    assert_eq!(downloaded["notes"], 205);
    assert_eq!(tables(&b, false), written);
    assert_eq!(user.sync(&b), "NO_CHANGES");

    // A legacy client gets the schema-11 copy, made with `VACUUM INTO`.
    if server.kind() == crate::support::ServerKind::Ours {
        let c = dir.path().join("c.anki2");
        let legacy = user.run_legacy("full-download", Some(&c)).unwrap();
        assert_eq!(legacy["notes"], 205);
        assert_eq!(tables(&c, false), written);
    }
}

/// Checks that `dump` holds what `anki_client.py make` creates, so that two
/// equal dumps cannot both be equally wrong.
fn assert_made_content(dump: &Value, notes: u64) {
    let list = |key: &str| {
        dump[key]
            .as_array()
            .unwrap_or_else(|| panic!("dump has no {key}"))
    };
    assert_eq!(list("notes").len() as u64, notes);
    assert!(
        list("cards").len() as u64 > notes,
        "the custom notetype makes two cards per note"
    );
    assert!(
        list("revlog").iter().any(|r| r["type"] == 0),
        "no learning reviews in revlog"
    );
    assert!(
        list("cards").iter().any(|c| c["reps"].as_u64() > Some(0)),
        "no reviewed cards"
    );

    let deck_names: Vec<&str> = list("decks")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    for name in [
        "Default",
        "Languages",
        "Languages::Spanish",
        "Science",
        "History",
    ] {
        assert!(
            deck_names.contains(&name),
            "deck {name} missing from {deck_names:?}"
        );
    }
    let intensive = list("deck_configs")
        .iter()
        .find(|c| c["name"] == "Lite intensive")
        .expect("the custom deck config");
    assert_eq!(intensive["new"]["perDay"], 9999);
    assert!(
        list("decks")
            .iter()
            .any(|d| d["name"] == "Languages::Spanish" && d["conf"] == intensive["id"]),
        "Languages::Spanish does not use the custom deck config"
    );

    let vocab = list("notetypes")
        .iter()
        .find(|n| n["name"] == "Lite Vocab")
        .expect("the custom notetype");
    let names = |key: &str| -> Vec<&str> {
        vocab[key]
            .as_array()
            .expect(key)
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect()
    };
    assert_eq!(names("flds"), ["Word", "Meaning", "Example"]);
    assert_eq!(names("tmpls"), ["Recognise", "Recall"]);
    assert!(
        vocab["css"]
            .as_str()
            .unwrap_or_default()
            .contains("#123456")
    );
    assert_eq!(dump["config"]["ankiSyncLiteSeed"]["notes"], notes);
}

/// Asserts equal dumps, naming the first differing section and row instead
/// of printing megabytes of JSON.
fn assert_same_content(a: &Value, b: &Value) {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        panic!("dumps are not JSON objects");
    };
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    assert_eq!(keys_a, keys_b, "dumps have different sections");
    for (section, value_a) in a {
        let value_b = &b[section];
        if value_a == value_b {
            continue;
        }
        if let (Some(rows_a), Some(rows_b)) = (value_a.as_array(), value_b.as_array()) {
            let index = rows_a.iter().zip(rows_b).position(|(x, y)| x != y);
            match index {
                Some(i) => panic!(
                    "{section}[{i}] differs:\nA: {}\nB: {}",
                    rows_a[i], rows_b[i]
                ),
                None => panic!(
                    "{section}: A has {} rows, B has {}",
                    rows_a.len(),
                    rows_b.len()
                ),
            }
        }
        panic!("{section} differs:\nA: {value_a}\nB: {value_b}");
    }
}

/// Issue 13, conformance 1: as on the official server, a full upload is
/// limited by what it decompresses to (3 × `MAX_SYNC_PAYLOAD_MEGS`), not by
/// its size on the wire. A collection that compresses badly, over 1 and
/// under 3 times the setting, goes up and comes down (we used to answer
/// "collection exceeds size limit"); one over 3 times is refused.
#[test]
fn a_collection_that_compresses_badly_is_taken_up_to_three_times_the_limit() {
    let server = Server::start(USERS, &[("MAX_SYNC_PAYLOAD_MEGS", "1")]);
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.anki2");
    let b = dir.path().join("b.anki2");
    let user = account(&server, "user", "pass");
    client_ok(&["make", "--path", path_str(&a), "--notes", "3"]);
    let note = |path: &Path, chars: &str, seed: &str| {
        client_ok(&[
            "run",
            "--path",
            path_str(path),
            "--script",
            "noise_note",
            "--arg",
            &format!("chars={chars}"),
            "--arg",
            &format!("seed={seed}"),
        ])
    };
    // About 1.4 MiB once zstd has done what it can, 2.1 MiB as a file.
    let added = note(&a, "1800000", "1");
    let size = std::fs::metadata(&a).unwrap().len();
    assert!((1 << 20..3 << 20).contains(&size), "{size} bytes");
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    user.run("full-download", Some(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    let front = client_ok(&[
        "run",
        "--path",
        path_str(&b),
        "--script",
        "field_of",
        "--arg",
        &format!("nid={}", added["nid"]),
        "--arg",
        "ord=1",
    ]);
    assert_eq!(front.as_str().map(str::len), Some(1_800_000));

    // Past three times the setting, the upload is refused and the server
    // keeps the collection it had.
    let c = dir.path().join("c.anki2");
    client_ok(&["make", "--path", path_str(&c), "--notes", "3"]);
    note(&c, "3400000", "2");
    let err = user
        .run("full-upload", Some(&c))
        .expect_err("an upload over 3 MiB decompressed");
    assert!(err.stderr.contains("size limit"), "{err}");
    assert_eq!(user.sync(&b), "NO_CHANGES");
}
