//! Normal (incremental) sync with the real Anki client (issue 3): two devices
//! change things, sync through our server, and must end up holding exactly
//! the same content.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::dumps::assert_same;
use crate::support::{Account, Server, client_ok};
use serde_json::Value;

struct Devices {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Device A with `notes` notes full-uploads; device B full-downloads.
fn two_devices(account: &Account<'_>, notes: u64) -> Devices {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.anki2");
    let b = dir.path().join("b.anki2");
    client_ok(&[
        "make",
        "--path",
        path_str(&a),
        "--notes",
        &notes.to_string(),
    ]);
    assert_eq!(account.sync(&a), "FULL_UPLOAD");
    account.run("full-upload", Some(&a)).unwrap();
    assert_eq!(account.sync(&b), "FULL_DOWNLOAD");
    account.run("full-download", Some(&b)).unwrap();
    Devices { _dir: dir, a, b }
}

fn run(path: &Path, script: &str, args: &[&str]) -> Value {
    let mut argv = vec!["run", "--path", path_str(path), "--script", script];
    for arg in args {
        argv.extend(["--arg", arg]);
    }
    client_ok(&argv)
}

fn dump(path: &Path) -> Value {
    client_ok(&["dump", "--path", path_str(path)])
}

/// Runs `test` with a fresh server and two devices holding `notes` notes.
fn with_devices(notes: u64, test: impl FnOnce(&Account<'_>, &Devices)) {
    let server = Server::start(&[("user", "pass")], &[]);
    let account = Account {
        server: &server,
        user: "user",
        password: "pass",
    };
    let devices = two_devices(&account, notes);
    test(&account, &devices);
}

#[test]
fn changes_flow_both_ways_and_devices_converge() {
    with_devices(200, |account, d| {
        let a_did = run(&d.a, "a_changes", &[]);
        assert_eq!(a_did["reviewed"], 10);
        assert_eq!(account.sync(&d.a), "NO_CHANGES");
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
        let (da, db) = (dump(&d.a), dump(&d.b));
        assert_same(&da, &db);
        // What A did really arrived (not two unchanged copies).
        let notetypes = db["notetypes"].as_array().unwrap();
        let three = notetypes
            .iter()
            .find(|n| n["name"] == "Three fields")
            .expect("new notetype on B");
        assert_eq!(three["flds"].as_array().unwrap().len(), 3);
        assert_eq!(three["tmpls"].as_array().unwrap().len(), 2);
        assert_eq!(three["css"], ".card { color: green; }");
        assert!(
            db["decks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == "Filtered on A" && d["dyn"] == 1)
        );
        assert_eq!(db["config"]["liteScenarioValue"]["from"], "A");
        let default_conf = db["deck_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == 1)
            .unwrap();
        assert_eq!(default_conf["new"]["perDay"], 33);
        assert!(
            db["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "tagged_on_a")
        );
        assert_eq!(db["notes"].as_array().unwrap().len(), 200 + 50 - 3 + 1);

        // Then B changes things and A receives them.
        run(&d.b, "b_changes", &[]);
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
        assert_eq!(account.sync(&d.a), "NO_CHANGES");
        let (da, db) = (dump(&d.a), dump(&d.b));
        assert_same(&da, &db);
        assert_eq!(da["config"]["liteScenarioValue"]["from"], "B");
        assert!(
            da["decks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == "Added on B")
        );
        assert!(
            !da["decks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == "Sync scenario::Child from A")
        );
        // Nothing left to do on either side.
        assert_eq!(account.sync(&d.a), "NO_CHANGES");
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
    });
}

#[test]
fn the_newer_edit_of_a_note_wins_on_both_devices() {
    with_devices(20, |account, d| {
        let nid = run(&d.a, "edit_first_field", &["text=edited on A"])["nid"].to_string();
        // Edits are compared in whole seconds: make B's strictly newer.
        std::thread::sleep(Duration::from_millis(1100));
        run(
            &d.b,
            "edit_first_field",
            &[&format!("nid={nid}"), "text=edited on B, later"],
        );
        for _ in 0..2 {
            account.sync(&d.a);
            account.sync(&d.b);
        }
        for path in [&d.a, &d.b] {
            assert_eq!(
                run(path, "field_of", &[&format!("nid={nid}")]),
                "edited on B, later"
            );
        }
        assert_same(&dump(&d.a), &dump(&d.b));
    });
}

#[test]
fn deletions_propagate_both_ways() {
    with_devices(30, |account, d| {
        for (from, to, tag) in [(&d.a, &d.b, "A"), (&d.b, &d.a, "B")] {
            let deck_name = format!("name=Doomed {tag}");
            run(from, "make_deck", &[&deck_name]);
            account.sync(from);
            account.sync(to);
            let deleted = run(from, "delete_some", &[&format!("deck=Doomed {tag}")]);
            let notes: Vec<String> = deleted["notes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            let query = [
                format!("notes={}", notes.join(",")),
                format!("cards={}", deleted["card"]),
                format!("decks={}", deleted["deck"]),
            ];
            let query: Vec<&str> = query.iter().map(String::as_str).collect();
            let before = run(to, "ids", &query);
            assert_eq!(before["notes"].as_array().unwrap().len(), 2, "{before}");
            assert_eq!(before["decks"].as_array().unwrap().len(), 1, "{before}");
            assert_eq!(account.sync(from), "NO_CHANGES");
            assert_eq!(account.sync(to), "NO_CHANGES");
            let after = run(to, "ids", &query);
            assert_eq!(
                after,
                serde_json::json!({"notes": [], "cards": [], "decks": []}),
                "deleted on {tag}"
            );
        }
        assert_same(&dump(&d.a), &dump(&d.b));
    });
}

#[test]
fn a_schema_change_needs_a_full_sync_which_then_works() {
    with_devices(20, |account, d| {
        run(&d.a, "add_field", &[]);
        assert_eq!(account.sync(&d.a), "FULL_SYNC");
        account.run("full-upload", Some(&d.a)).unwrap();
        assert_eq!(account.sync(&d.b), "FULL_SYNC");
        account.run("full-download", Some(&d.b)).unwrap();
        let db = dump(&d.b);
        let basic = db["notetypes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "Basic")
            .unwrap();
        assert_eq!(basic["flds"].as_array().unwrap().len(), 3);
        assert_same(&dump(&d.a), &db);
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
    });
}

#[test]
fn five_thousand_new_notes_in_one_sync() {
    with_devices(10, |account, d| {
        client_ok(&[
            "add-notes",
            "--path",
            path_str(&d.a),
            "--notes",
            "5000",
            "--seed",
            "3",
        ]);
        assert_eq!(account.sync(&d.a), "NO_CHANGES");
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
        let db = dump(&d.b);
        assert_eq!(db["notes"].as_array().unwrap().len(), 5010);
        assert_same(&dump(&d.a), &db);
    });
}

#[test]
fn one_note_change_on_a_50000_note_collection() {
    with_devices(50_000, |account, d| {
        let nid = run(&d.a, "edit_first_field", &["text=one small change"])["nid"].to_string();
        let started = Instant::now();
        assert_eq!(account.sync(&d.a), "NO_CHANGES");
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
        eprintln!("two normal syncs on 50k notes took {:?}", started.elapsed());
        assert_eq!(
            run(&d.b, "field_of", &[&format!("nid={nid}")]),
            "one small change"
        );
        let counts = client_ok(&["count", "--path", path_str(&d.b)]);
        assert_eq!(counts["notes"], 50_000);
    });
}

/// Issue 13, conformance point 3: at `start`, once the scheduler's day has
/// rolled over, the server unburies its copy's buried cards without marking
/// them modified, as the official server does, so a later full download
/// does not deliver cards that are still buried.
#[test]
fn start_unburies_the_server_copy_once_the_day_rolled_over() {
    let server = Server::start(&[("user", "pass")], &[]);
    let account = Account {
        server: &server,
        user: "user",
        password: "pass",
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (dir.path().join("a.anki2"), dir.path().join("c.anki2"));
    client_ok(&["make", "--path", path_str(&a), "--notes", "20"]);
    // Buried "yesterday": the client has not unburied them yet (it would the
    // next time its scheduler runs), and uploads them buried.
    let buried = run(&a, "bury_yesterday", &[]);
    let ids: Vec<String> = buried["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "a new, a learning and a review card: {buried}"
    );
    let ids_arg = format!("ids={}", ids.join(","));
    assert_eq!(account.sync(&a), "FULL_UPLOAD");
    account.run("full-upload", Some(&a)).unwrap();
    let uploaded = run(&a, "card_queues", &[&ids_arg]);
    for id in &ids {
        let queue = uploaded["cards"][id][1].as_i64().unwrap();
        assert!(
            queue == -2 || queue == -3,
            "card {id} not buried: {uploaded}"
        );
    }

    // A change on A, so its next sync is a normal one and calls `start`.
    client_ok(&["add-notes", "--path", path_str(&a), "--notes", "1"]);
    // (A's client unburies its own copy meanwhile, without marking the
    // cards modified, so it sends nothing for them: only the server's own
    // unbury can change the server copy.)
    assert_eq!(account.sync(&a), "NO_CHANGES");

    assert_eq!(account.sync(&c), "FULL_DOWNLOAD");
    account.run("full-download", Some(&c)).unwrap();
    let downloaded = run(&c, "card_queues", &[&ids_arg]);
    for id in &ids {
        let before = uploaded["cards"][id].as_array().unwrap();
        let after = downloaded["cards"][id].as_array().unwrap();
        let (ctype, due) = (before[0].as_i64().unwrap(), before[2].as_i64().unwrap());
        let queue = match ctype {
            0 => 0,
            2 => 2,
            _ if due > 1_000_000_000 => 1,
            _ => 3,
        };
        assert_eq!(after[1].as_i64(), Some(queue), "card {id}: {downloaded}");
        // Same type, due, mod and usn: not marked modified.
        assert_eq!(
            (&after[0], &after[2], &after[3], &after[4]),
            (&before[0], &before[2], &before[3], &before[4]),
            "card {id}"
        );
    }
}

/// Issue 13, conformance 2: a step that fails because of what the client
/// sent is the client's fault (400, "check database"), not ours (500,
/// "server error"), as on the official server. Here a notetype arrives with
/// two fields whose names differ only in case, which the collection's
/// unique index refuses. The server's copy is left as it was.
#[test]
fn a_step_refused_for_the_clients_data_asks_for_a_database_check() {
    with_devices(5, |account, d| {
        let names = run(&d.a, "fields_differing_in_case", &[]);
        assert_eq!(names, serde_json::json!(["Front", "front"]));
        let err = account
            .run("sync", Some(&d.a))
            .expect_err("a sync sending a notetype the index refuses");
        // The client's text for a 400 (a 500 says the server has a problem).
        let message = err.report.as_ref().and_then(|r| r["message"].as_str());
        assert!(
            message.is_some_and(|m| m.contains("Check Database")),
            "{err}"
        );
        // Nothing of it was kept: B still sees Basic as it was.
        assert_eq!(account.sync(&d.b), "NO_CHANGES");
        let db = dump(&d.b);
        let basic = db["notetypes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "Basic")
            .unwrap();
        let fields: Vec<&str> = basic["flds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["Front", "Back"]);
    });
}
