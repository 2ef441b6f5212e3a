//! Legacy clients (issue 5): the real Anki 2.1.56 library, which speaks sync
//! protocol v10 (multipart forms, gzip, `GET /msync/begin`, schema-11 full
//! syncs), next to a current client (26.9.3) on the same account. Login, full
//! download and upload in both directions, normal sync both ways, and media
//! sync both ways; each test compares what the devices end up holding.
//!
//! `ANKI_SYNC_TEST_SERVER=official` runs the same tests against
//! `python -m anki.syncserver`, which is the oracle for every assertion here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::support::data::{noise, sha1_hex};
use crate::support::{Account, Server, client_ok, legacy_client_ok};
use serde_json::{Value, json};

const USER: &str = "user";
const PASSWORD: &str = "pass";

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn account(server: &Server) -> Account<'_> {
    Account {
        server,
        user: USER,
        password: PASSWORD,
    }
}

/// A temp dir holding one current device (`current.anki2`) and one legacy
/// device (`legacy.anki2`).
struct Devices {
    _dir: tempfile::TempDir,
    current: PathBuf,
    legacy: PathBuf,
}

impl Devices {
    fn new() -> Devices {
        let dir = tempfile::tempdir().unwrap();
        Devices {
            current: dir.path().join("current.anki2"),
            legacy: dir.path().join("legacy.anki2"),
            _dir: dir,
        }
    }
}

/// `run --script NAME` with the current driver (tests/client/scenarios).
fn run_current(path: &Path, script: &str, args: &[&str]) -> Value {
    let mut argv = vec!["run", "--path", path_str(path), "--script", script];
    for arg in args {
        argv.extend(["--arg", arg]);
    }
    client_ok(&argv)
}

/// `run --script NAME` with the legacy driver (tests/client/legacy_scenarios).
fn run_legacy(path: &Path, script: &str, args: &[&str]) -> Value {
    let mut argv = vec!["run", "--path", path_str(path), "--script", script];
    for arg in args {
        argv.extend(["--arg", arg]);
    }
    legacy_client_ok(&argv)
}

fn dump_current(path: &Path) -> Value {
    client_ok(&["dump", "--path", path_str(path)])
}

fn dump_legacy(path: &Path) -> Value {
    legacy_client_ok(&["dump", "--path", path_str(path)])
}

/// The current device makes `notes` notes and full-uploads; the legacy
/// device full-downloads. Returns the current driver's `make` counts.
fn current_uploads_legacy_downloads(account: &Account<'_>, d: &Devices, notes: u64) -> Value {
    let made = client_ok(&[
        "make",
        "--path",
        path_str(&d.current),
        "--notes",
        &notes.to_string(),
        "--seed",
        "21",
    ]);
    assert_eq!(account.sync(&d.current), "FULL_UPLOAD");
    account.run("full-upload", Some(&d.current)).unwrap();
    assert_eq!(account.sync_legacy(&d.legacy), "FULL_DOWNLOAD");
    account
        .run_legacy("full-download", Some(&d.legacy))
        .unwrap_or_else(|e| panic!("{e}"));
    made
}

// ---------------------------------------------------------------- comparing

/// `dump.cards[12].data` → `dump.cards[].data`.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Keys of the library JSON that 26.9 knows and 2.1.56 does not, with the
/// value 26.9 shows for an object that a 2.1.56 device created (so it never
/// had them). 2.1.56 keeps unknown keys it *received* (in schema 11 they are
/// plain JSON keys, kept in its "other" bucket), so these are only ever
/// absent on the legacy side, and only with exactly these defaults. Observed
/// identically against the official server.
fn current_only_default(path: &str) -> Option<Value> {
    let (object, key) = path.rsplit_once('.')?;
    let default = match (object, key) {
        ("dump.decks[]", "desiredRetention") => json!(null),
        ("dump.notetypes[].flds[]", "id" | "tag") => json!(null),
        ("dump.notetypes[].flds[]", "excludeFromSearch" | "preventDeletion") => json!(false),
        ("dump.notetypes[].tmpls[]", "id") => json!(null),
        ("dump.deck_configs[]", "answerAction" | "questionAction") => json!(0),
        ("dump.deck_configs[]", "desiredRetention" | "sm2Retention") => json!(0.9),
        (
            "dump.deck_configs[]",
            "easyDaysPercentages" | "fsrsParams5" | "fsrsParams6" | "fsrsWeights",
        ) => json!([]),
        ("dump.deck_configs[]", "ignoreRevlogsBeforeDate" | "weightSearch") => json!(""),
        ("dump.deck_configs[]", "secondsToShowAnswer" | "secondsToShowQuestion") => json!(0.0),
        ("dump.deck_configs[]", "stopTimerOnAnswer") => json!(false),
        ("dump.deck_configs[]", "waitForAudio") => json!(true),
        _ => return None,
    };
    Some(default)
}

/// Values that legitimately differ between a legacy and a current device:
/// * raw protobuf blobs of the schema-18 tables (`decks.common`/`kind`,
///   `deck_config`/`notetypes`/`fields`/`templates` `.config`): 2.1.56 keeps
///   fields it does not know as JSON in its "other" bytes where 26.9 has
///   real protobuf fields. Their content is compared through the library
///   JSON (`decks`, `deck_configs`, `notetypes`), which must match;
/// * per-device bookkeeping, as between two current devices (see
///   normal_sync.rs): config rows' `mtime_secs`/`usn` (a schema-11 download
///   carries no per-key times), each device's graves log and registered tags
///   stamped with its own usn.
fn legitimately_different(path: &str) -> bool {
    matches!(
        shape(path).as_str(),
        "dump.tables.decks[].common"
            | "dump.tables.decks[].kind"
            | "dump.tables.deck_config[].config"
            | "dump.tables.notetypes[].config"
            | "dump.tables.fields[].config"
            | "dump.tables.templates[].config"
            | "dump.tables.config[].mtime_secs"
            | "dump.tables.config[].usn"
            | "dump.tables.graves[].usn"
            | "dump.tables.tags[].usn"
    )
}

/// The first place where the legacy and the current dump differ, as a path.
fn first_difference(path: &str, legacy: &Value, current: &Value) -> Option<String> {
    if legitimately_different(path) {
        return None;
    }
    match (legacy, current) {
        (Value::Object(l), Value::Object(c)) => {
            for key in l.keys().chain(c.keys()) {
                let here = format!("{path}.{key}");
                let (lv, cv) = (l.get(key), c.get(key));
                if lv.is_none()
                    && cv.is_some()
                    && current_only_default(&shape(&here)).as_ref() == cv
                {
                    continue;
                }
                let (Some(lv), Some(cv)) = (lv, cv) else {
                    let side = if lv.is_none() { "current" } else { "legacy" };
                    return Some(format!("{here}: only the {side} device has it"));
                };
                if let Some(d) = first_difference(&here, lv, cv) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(l), Value::Array(c)) if l.len() == c.len() => l
            .iter()
            .zip(c)
            .enumerate()
            .find_map(|(i, (lv, cv))| first_difference(&format!("{path}[{i}]"), lv, cv)),
        (Value::String(l), Value::String(c)) if shape(path) == "dump.cards[].data" => {
            card_data_difference(path, l, c)
        }
        _ if legacy == current => None,
        _ => Some(format!(
            "{path}:\n  legacy:  {legacy:.300}\n  current: {current:.300}"
        )),
    }
}

/// `cards.data` is a JSON string. 2.1.56 parses it into the fields it knows
/// when it applies a card received in a normal sync, so it drops `lrt` (last
/// review time, added in 25.x) from cards a current device reviewed; the
/// official server passes the string through untouched. Everything else in
/// it must match.
fn card_data_difference(path: &str, legacy: &str, current: &str) -> Option<String> {
    if legacy == current {
        return None;
    }
    let parse = |s: &str| serde_json::from_str::<Value>(s).ok();
    if let (Some(Value::Object(l)), Some(Value::Object(mut c))) = (parse(legacy), parse(current)) {
        if !l.contains_key("lrt") {
            c.remove("lrt");
        }
        if Value::Object(l) == Value::Object(c) {
            return None;
        }
    }
    Some(format!(
        "{path}:\n  legacy:  {legacy}\n  current: {current}"
    ))
}

fn assert_same(legacy: &Value, current: &Value) {
    if let Some(diff) = first_difference("dump", legacy, current) {
        panic!("legacy and current device differ at {diff}");
    }
}

fn list<'a>(dump: &'a Value, key: &str) -> &'a Vec<Value> {
    dump[key]
        .as_array()
        .unwrap_or_else(|| panic!("dump has no {key}"))
}

fn find<'a>(dump: &'a Value, key: &str, name: &str) -> &'a Value {
    list(dump, key)
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {key} named {name:?}"))
}

fn names(object: &Value, key: &str) -> Vec<String> {
    object[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}"))
        .iter()
        .map(|x| x["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------- login

#[test]
fn legacy_login_gives_the_official_hkey_and_rejects_a_wrong_password() {
    let server = Server::start(&[(USER, PASSWORD), ("other", "secret")], &[]);
    let out = account(&server)
        .run_legacy("login", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["hkey"], "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
    for (user, password) in [
        ("user", "wrong"),
        ("nosuchuser", "pass"),
        ("user", "secret"),
    ] {
        let err = Account {
            server: &server,
            user,
            password,
        }
        .run_legacy("login", None)
        .expect_err(&format!("legacy login as {user:?}/{password:?} must fail"));
        assert_eq!(err.error(), Some("SyncError"), "{err}");
        assert_eq!(err.kind(), Some("AUTH"), "{err}");
    }
}

// ---------------------------------------------------------------- full sync

#[test]
fn legacy_full_download_of_a_current_upload_is_intact() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let user = account(&server);
    let d = Devices::new();
    let clock = Instant::now();
    let made = current_uploads_legacy_downloads(&user, &d, 300);
    let secs = clock.elapsed().as_secs_f64();
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    assert_eq!(user.sync(&d.current), "NO_CHANGES");

    let legacy = dump_legacy(&d.legacy);
    let current = dump_current(&d.current);
    // The content `make` creates is really there, not two equal empty copies.
    assert_eq!(list(&legacy, "notes").len(), 300);
    assert_eq!(
        list(&legacy, "cards").len() as u64,
        made["cards"].as_u64().unwrap()
    );
    assert_eq!(
        list(&legacy, "revlog").len() as u64,
        made["revlog"].as_u64().unwrap()
    );
    assert!(!list(&legacy, "revlog").is_empty(), "no reviews were made");
    assert!(
        list(&legacy, "cards")
            .iter()
            .any(|c| c["reps"].as_u64() > Some(0) && c["type"] == 2),
        "no review-state cards"
    );
    let vocab = find(&legacy, "notetypes", "Lite Vocab");
    assert_eq!(names(vocab, "flds"), ["Word", "Meaning", "Example"]);
    assert_eq!(names(vocab, "tmpls"), ["Recognise", "Recall"]);
    assert!(vocab["css"].as_str().unwrap().contains("#123456"));
    assert_eq!(vocab["tmpls"][0]["qfmt"], "<div class=word>{{Word}}</div>");
    let intensive = find(&legacy, "deck_configs", "Lite intensive");
    assert_eq!(intensive["new"]["perDay"], 9999);
    assert_eq!(intensive["new"]["delays"], json!([2.0, 15.0]));
    assert_eq!(intensive["maxTaken"], 90);
    assert_eq!(
        find(&legacy, "decks", "Languages::Spanish")["conf"],
        intensive["id"]
    );
    for deck in ["Default", "Languages", "Science", "History"] {
        find(&legacy, "decks", deck);
    }
    assert_eq!(legacy["config"]["ankiSyncLiteSeed"]["notes"], 300);
    assert!(list(&legacy, "tags").iter().any(|t| t == "unicode_ü"));
    // And everything else matches the uploading device.
    assert_same(&legacy, &current);
    eprintln!(
        "current make+upload, legacy download of 300 notes against {:?}: {secs:.1}s",
        server.kind()
    );
}

#[test]
fn legacy_full_upload_reaches_a_current_client_intact() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let user = account(&server);
    let d = Devices::new();
    let clock = Instant::now();
    let made = run_legacy(&d.legacy, "make", &["notes=90", "reviews=20"]);
    assert_eq!(made["notes"], 90);
    assert_eq!(user.sync_legacy(&d.legacy), "FULL_UPLOAD");
    let uploaded = user
        .run_legacy("full-upload", Some(&d.legacy))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(uploaded["notes"], 90);
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    assert_eq!(user.sync(&d.current), "FULL_DOWNLOAD");
    user.run("full-download", Some(&d.current))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(user.sync(&d.current), "NO_CHANGES");
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    let secs = clock.elapsed().as_secs_f64();

    let legacy = dump_legacy(&d.legacy);
    let current = dump_current(&d.current);
    assert_eq!(list(&current, "notes").len(), 90);
    assert_eq!(
        list(&current, "cards").len() as u64,
        made["cards"].as_u64().unwrap()
    );
    assert_eq!(
        list(&current, "revlog").len() as u64,
        made["revlog"].as_u64().unwrap()
    );
    assert!(
        made["revlog"].as_u64() > Some(0),
        "no reviews were made: {made}"
    );
    let vocab = find(&current, "notetypes", "Legacy Vocab");
    assert_eq!(names(vocab, "flds"), ["Word", "Meaning", "Example"]);
    assert_eq!(names(vocab, "tmpls"), ["Recognise", "Recall"]);
    assert!(vocab["css"].as_str().unwrap().contains("#654321"));
    let options = find(&current, "deck_configs", "Legacy options");
    assert_eq!(options["new"]["perDay"], 77);
    assert_eq!(options["rev"]["perDay"], 777);
    assert_eq!(options["new"]["delays"], json!([3.0, 30.0]));
    assert_eq!(options["maxTaken"], 45);
    assert_eq!(
        find(&current, "decks", "Legacy::Nested")["conf"],
        options["id"]
    );
    assert_eq!(current["config"]["legacyMadeBy"]["notes"], 90);
    assert!(
        list(&current, "notes").iter().any(|n| n["flds"]
            .as_str()
            .unwrap()
            .contains("\u{e9}\u{fc}\u{65e5}\u{672c}")),
        "non-ASCII field text lost"
    );
    assert_same(&legacy, &current);
    eprintln!(
        "legacy make+upload, current download of 90 notes against {:?}: {secs:.1}s",
        server.kind()
    );
}

// ---------------------------------------------------------------- normal sync

#[test]
fn normal_sync_carries_changes_both_ways_between_legacy_and_current() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let user = account(&server);
    let d = Devices::new();
    current_uploads_legacy_downloads(&user, &d, 150);
    let clock = Instant::now();

    // Legacy → current: edits, new notes, deleted notes and a deleted deck,
    // a deck option change, a new notetype, reviews, a tag, a config value.
    let did = run_legacy(&d.legacy, "changes", &[]);
    assert_eq!(did["reviewed"], 5, "{did}");
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    assert_eq!(user.sync(&d.current), "NO_CHANGES");
    let (legacy, current) = (dump_legacy(&d.legacy), dump_current(&d.current));
    assert_same(&legacy, &current);
    for nid in did["edited"].as_array().unwrap() {
        let field = run_current(&d.current, "field_of", &[&format!("nid={nid}")]);
        assert!(
            field.as_str().unwrap().ends_with(" (edited on legacy)"),
            "note {nid}: {field}"
        );
    }
    let ids = |key: &str| -> String {
        did[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let gone = run_current(
        &d.current,
        "ids",
        &[
            &format!("notes={}", ids("deleted")),
            &format!("decks={}", did["deleted_deck"]),
        ],
    );
    assert_eq!(gone, json!({"notes": [], "cards": [], "decks": []}));
    let added = run_current(&d.current, "ids", &[&format!("notes={}", ids("added"))]);
    assert_eq!(added["notes"].as_array().unwrap().len(), 16);
    assert_eq!(list(&current, "notes").len(), 150 - 2 + 16);
    let default_conf = list(&current, "deck_configs")
        .iter()
        .find(|c| c["id"] == 1)
        .unwrap();
    assert_eq!(default_conf["new"]["perDay"], 44);
    assert_eq!(default_conf["rev"]["perDay"], 555);
    assert_eq!(default_conf["lapse"]["leechFails"], 6);
    let two = find(&current, "notetypes", "Legacy two fields");
    assert_eq!(names(two, "flds"), ["Left", "Right"]);
    assert_eq!(two["css"], ".card { color: teal; }");
    assert_eq!(current["config"]["legacyScenarioValue"]["from"], "legacy");
    assert!(
        list(&current, "tags")
            .iter()
            .any(|t| t == "tagged_on_legacy")
    );
    find(&current, "decks", "Added on legacy");

    // Current → legacy: the current driver's everyday scenario (50 new notes,
    // edits, 3 deletions, a filtered deck, a deck option change, a new
    // notetype, reviews, a config value).
    let did = run_current(&d.current, "a_changes", &[]);
    assert_eq!(did["reviewed"], 10, "{did}");
    assert_eq!(user.sync(&d.current), "NO_CHANGES");
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    let (legacy, current) = (dump_legacy(&d.legacy), dump_current(&d.current));
    assert_same(&legacy, &current);
    assert_eq!(list(&legacy, "notes").len(), 164 + 50 - 3 + 1);
    let three = find(&legacy, "notetypes", "Three fields");
    assert_eq!(names(three, "flds"), ["One", "Two", "Three"]);
    assert_eq!(names(three, "tmpls"), ["Forward", "Reverse"]);
    assert_eq!(find(&legacy, "decks", "Filtered on A")["dyn"], 1);
    let default_conf = list(&legacy, "deck_configs")
        .iter()
        .find(|c| c["id"] == 1)
        .unwrap();
    assert_eq!(default_conf["new"]["perDay"], 33);
    assert_eq!(default_conf["rev"]["perDay"], 444);
    assert_eq!(
        default_conf["lapse"]["leechFails"], 6,
        "the legacy device's earlier change is kept"
    );
    assert_eq!(legacy["config"]["liteScenarioValue"]["from"], "A");
    assert!(list(&legacy, "tags").iter().any(|t| t == "tagged_on_a"));

    // Nothing left to do on either side, and both still agree.
    assert_eq!(user.sync_legacy(&d.legacy), "NO_CHANGES");
    assert_eq!(user.sync(&d.current), "NO_CHANGES");
    assert_same(&dump_legacy(&d.legacy), &dump_current(&d.current));
    eprintln!(
        "normal sync both ways, legacy and current, against {:?}: {:.1}s",
        server.kind(),
        clock.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- media

/// One device's media operations, through either driver.
struct MediaDevice<'a> {
    col: &'a Path,
    driver: fn(&[&str]) -> Value,
}

impl MediaDevice<'_> {
    fn add(&self, files: &[(&str, Vec<u8>)]) -> BTreeMap<String, String> {
        let src = self.col.with_extension(format!("src-{}", files.len()));
        let _ = fs::remove_dir_all(&src);
        fs::create_dir(&src).unwrap();
        for (name, data) in files {
            fs::write(src.join(name), data).unwrap();
        }
        let out = (self.driver)(&[
            "media-add",
            "--path",
            path_str(self.col),
            "--src",
            path_str(&src),
        ]);
        fs::remove_dir_all(&src).unwrap();
        serde_json::from_value(out).unwrap()
    }

    fn remove(&self, names: &[&str]) {
        let mut args = vec!["media-remove", "--path", path_str(self.col)];
        for name in names {
            args.extend(["--name", name]);
        }
        (self.driver)(&args);
    }

    fn sync(&self, server: &Server) -> Value {
        let endpoint = server.endpoint();
        (self.driver)(&[
            "media-sync",
            "--path",
            path_str(self.col),
            "--endpoint",
            &endpoint,
            "--user",
            USER,
            "--password",
            PASSWORD,
        ])
    }

    fn listing(&self) -> BTreeMap<String, String> {
        serde_json::from_value((self.driver)(&["media-list", "--path", path_str(self.col)]))
            .unwrap()
    }
}

fn expected(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(n, d)| (n.clone(), sha1_hex(d)))
        .collect()
}

/// The server's media folder holds exactly these bytes.
fn assert_server_holds(server: &Server, files: &BTreeMap<String, Vec<u8>>) {
    let mut on_disk = BTreeMap::new();
    for entry in fs::read_dir(server.base_dir().join(USER).join("media"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        on_disk.insert(name, fs::read(entry.path()).unwrap());
    }
    let names: Vec<&String> = on_disk.keys().collect();
    assert_eq!(
        names,
        files.keys().collect::<Vec<_>>(),
        "server media names"
    );
    for (name, data) in files {
        assert!(
            on_disk.get(name) == Some(data),
            "server copy of {name:?} differs"
        );
    }
}

#[test]
fn legacy_media_sync_both_ways_including_deletions() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let d = Devices::new();
    let current = MediaDevice {
        col: &d.current,
        driver: client_ok,
    };
    let legacy = MediaDevice {
        col: &d.legacy,
        driver: legacy_client_ok,
    };
    let clock = Instant::now();

    // Current → legacy: 8 files, one name the client NFC-normalises, one
    // with spaces and non-Latin letters.
    let nfd = "cafe\u{301} menu.jpg";
    let mut given: Vec<(&str, Vec<u8>)> = vec![
        ("clip0.bin", noise(1, 250_000)),
        ("clip1.bin", noise(2, 180_000)),
        ("clip2.bin", noise(3, 1_000)),
        ("clip3.bin", noise(4, 90_000)),
        ("clip4.bin", noise(5, 10)),
        ("clip5.bin", noise(6, 400_000)),
        (nfd, noise(7, 120_000)),
        ("résumé 日本語 файл.png", noise(8, 150_000)),
    ];
    given.sort_by(|a, b| a.0.cmp(b.0));
    let stored = current.add(&given);
    assert_eq!(stored[nfd], "café menu.jpg");
    let mut files: BTreeMap<String, Vec<u8>> = given
        .iter()
        .map(|(n, data)| (stored[*n].clone(), data.clone()))
        .collect();
    current.sync(&server);
    assert_server_holds(&server, &files);
    legacy.sync(&server);
    assert_eq!(legacy.listing(), expected(&files), "legacy after download");

    // Legacy → current: two new files and two deletions of current's files.
    let more = vec![
        ("from legacy 1.ogg", noise(20, 200_000)),
        ("légacy ünïcode 2.mp3", noise(21, 60_000)),
    ];
    let stored = legacy.add(&more);
    for (name, data) in &more {
        files.insert(stored[*name].clone(), data.clone());
    }
    legacy.remove(&["clip1.bin", "café menu.jpg"]);
    files.remove("clip1.bin");
    files.remove("café menu.jpg");
    legacy.sync(&server);
    assert_server_holds(&server, &files);
    current.sync(&server);
    assert_eq!(
        current.listing(),
        expected(&files),
        "current after legacy's changes"
    );
    assert_eq!(legacy.listing(), expected(&files));

    // Current deletes one of legacy's files and one of its own; legacy
    // loses both.
    current.remove(&["from legacy 1.ogg", "clip3.bin"]);
    files.remove("from legacy 1.ogg");
    files.remove("clip3.bin");
    current.sync(&server);
    legacy.sync(&server);
    assert_eq!(
        legacy.listing(),
        expected(&files),
        "legacy after current's deletions"
    );
    assert_server_holds(&server, &files);

    // A further run on either side changes nothing.
    legacy.sync(&server);
    current.sync(&server);
    assert_eq!(legacy.listing(), expected(&files));
    assert_eq!(current.listing(), expected(&files));
    eprintln!(
        "legacy media both ways against {:?}: {:.1}s",
        server.kind(),
        clock.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- the comparison itself

/// The tolerances above let through exactly what they document, so a lax
/// comparison cannot make a broken sync pass.
#[test]
fn the_legacy_comparison_tolerates_only_the_documented_differences() {
    let base = json!({
        "decks": [{"id": 1, "name": "Default"}],
        "notetypes": [{"flds": [{"name": "Front"}], "tmpls": [{"name": "Card 1"}]}],
        "deck_configs": [{"id": 1, "new": {"perDay": 20}}],
        "cards": [{"id": 5, "data": "{\"pos\":1}"}],
        "tables": {"decks": [{"common": {"hex": "00"}}], "graves": [{"usn": 1}]},
    });
    let differs = |legacy: &Value, current: &Value| first_difference("dump", legacy, current);
    assert_eq!(differs(&base, &base), None);

    // Tolerated: 26.9-only keys at their defaults, `lrt` in card data on the
    // current side, raw blobs and per-device usns.
    let mut current = base.clone();
    current["decks"][0]["desiredRetention"] = json!(null);
    current["notetypes"][0]["flds"][0]["excludeFromSearch"] = json!(false);
    current["notetypes"][0]["tmpls"][0]["id"] = json!(null);
    current["deck_configs"][0]["waitForAudio"] = json!(true);
    current["cards"][0]["data"] = json!("{\"pos\":1,\"lrt\":1795431838}");
    current["tables"]["decks"][0]["common"]["hex"] = json!("0011");
    current["tables"]["graves"][0]["usn"] = json!(2);
    assert_eq!(differs(&base, &current), None);

    // Not tolerated: anything else.
    let broken: [fn(&mut Value); 7] = [
        |c| c["decks"][0]["desiredRetention"] = json!(0.8),
        |c| c["decks"][0]["name"] = json!("Renamed"),
        |c| c["deck_configs"][0]["new"]["perDay"] = json!(21),
        |c| c["deck_configs"][0]["fsrsWeights"] = json!([0.4]),
        |c| c["cards"][0]["data"] = json!("{\"pos\":2,\"lrt\":1}"),
        |c| c["notetypes"][0]["flds"][0]["unknownKey"] = json!(null),
        |c| c["cards"] = json!([]),
    ];
    for (i, breakage) in broken.iter().enumerate() {
        let mut current = base.clone();
        breakage(&mut current);
        assert!(
            differs(&base, &current).is_some(),
            "breakage {i} not caught"
        );
    }
    // A key only the legacy side has is a difference too, and `lrt` only on
    // the legacy side is not tolerated.
    let mut legacy = base.clone();
    legacy["decks"][0]["desiredRetention"] = json!(null);
    assert!(differs(&legacy, &base).is_some());
    let mut legacy = base.clone();
    legacy["cards"][0]["data"] = json!("{\"pos\":1,\"lrt\":1}");
    assert!(differs(&legacy, &base).is_some());
}
