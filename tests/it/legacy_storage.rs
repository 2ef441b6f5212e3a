//! Whole-collection schema conversion checked with the real clients (GitHub
//! issue 5, legacy clients). The Anki library itself is the oracle: our
//! conversion of a file must give what the library's own conversion of the
//! same file gives, as seen through the library.
//!
//! * Download side: a collection made by Anki 26.9 → our schema-11 copy.
//!   Its `col` JSON and rows equal those of 26.9's own downgrade, and
//!   Anki 2.1.56 opens both with identical content, FSRS-era settings kept.
//! * Upload side: a schema-11 file written by Anki 2.1.56 → our upgrade.
//!   Anki 26.9 opens it with the same content as when it upgrades the
//!   file itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anki_sync_lite::storage::{self, legacy};
use serde_json::{Value, json};
use tempfile::TempDir;

const DRIVER: &str = "tests/client/legacy_storage_driver.py";

/// Runs the driver with `python` and returns the JSON it printed.
fn driver(python: &Path, command: &str, path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(DRIVER);
    let out = Command::new(python)
        .arg(&script)
        .args([command, "--path"])
        .arg(path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{DRIVER} {command} {} failed ({}):\n{stderr}",
        path.display(),
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{DRIVER} {command} printed no JSON ({e}):\n{stderr}"))
}

fn modern() -> PathBuf {
    crate::support::ensure_venv()
}

fn legacy_client() -> PathBuf {
    crate::support::ensure_legacy_venv()
}

/// A copy of `src` named `name` in `dir` (clients upgrade files they open,
/// so every look gets its own copy).
fn copy(src: &Path, dir: &TempDir, name: &str) -> PathBuf {
    let dest = dir.path().join(name);
    fs::copy(src, &dest).expect("copy collection");
    dest
}

/// The five `col` JSON columns of a schema-11 file, parsed.
fn col_json(path: &Path) -> Value {
    let conn = storage::open(path).expect("open");
    let mut out = serde_json::Map::new();
    for column in ["conf", "models", "decks", "dconf", "tags"] {
        let text: String = conn
            .query_row(&format!("SELECT {column} FROM col"), [], |r| r.get(0))
            .expect("col row");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("col.{column} is not JSON ({e}): {text}"));
        out.insert(column.into(), value);
    }
    Value::Object(out)
}

/// Table and index names, then every row of the data tables and `col`
/// (without its JSON columns), one JSON array per row.
fn layout_and_rows(path: &Path) -> Vec<String> {
    let conn = storage::open(path).expect("open");
    let strings = |sql: &str| -> Vec<String> {
        conn.prepare(sql)
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    };
    let mut out = strings(
        "SELECT type || ' ' || name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1",
    );
    for table in ["notes", "cards", "revlog", "graves"] {
        let columns = strings(&format!("SELECT name FROM pragma_table_info('{table}')")).join(", ");
        out.extend(strings(&format!(
            "SELECT json_array({columns}) FROM {table} ORDER BY {columns}"
        )));
    }
    out.extend(strings(
        "SELECT json_array(crt, mod, scm, ver, dty, usn, ls) FROM col",
    ));
    out
}

fn deck_config_named<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump["deck_configs"]
        .as_array()
        .expect("deck configs")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no preset {name:?} in {}", dump["deck_configs"]))
}

/// Issue 5: "a schema-11 rendition built from a copy (the stored file is
/// never touched) so an old client opens it without losing settings".
#[test]
fn legacy_client_opens_our_schema11_copy_of_a_modern_collection() {
    let dir = TempDir::new().expect("temp dir");
    let made = dir.path().join("modern.anki2");
    crate::support::client_ok(&["make", "--path", made.to_str().unwrap(), "--notes", "60"]);
    driver(&modern(), "enrich", &made);
    let made_bytes = fs::read(&made).expect("read");

    // Ours, from the stored file.
    let ours = dir.path().join("ours11.anki2");
    {
        let conn = storage::open(&made).expect("open");
        legacy::write_schema11_copy(&conn, &ours).expect("schema-11 copy");
        conn.close().expect("close");
    }
    assert_eq!(fs::read(&made).expect("read"), made_bytes, "source changed");

    // The library's, from a copy of the same file.
    let theirs = copy(&made, &dir, "theirs11.anki2");
    let facts = driver(&modern(), "downgrade", &theirs);
    assert_eq!(facts, json!({"ver": 11, "journal_bytes": [1, 1]}));

    // Same col JSON, layout and rows as the library's own downgrade.
    let (ours_json, theirs_json) = (col_json(&ours), col_json(&theirs));
    for column in ["conf", "models", "decks", "dconf", "tags"] {
        assert_eq!(ours_json[column], theirs_json[column], "col.{column}");
    }
    assert_eq!(layout_and_rows(&ours), layout_and_rows(&theirs));

    // What Anki 2.1.56 sees in each.
    let seen_ours = driver(&legacy_client(), "dump", &copy(&ours, &dir, "o.anki2"));
    let seen_theirs = driver(&legacy_client(), "dump", &copy(&theirs, &dir, "t.anki2"));
    assert_eq!(
        seen_ours["file"],
        json!({"ver": 11, "journal_bytes": [1, 1]})
    );
    assert_eq!(seen_ours["integrity"], "ok");
    assert_eq!(seen_ours, seen_theirs);

    // Content matches what the current client shows of the original.
    let seen_modern = driver(&modern(), "dump", &copy(&made, &dir, "m.anki2"));
    for key in ["notes", "cards", "revlog", "graves", "tags"] {
        assert_eq!(seen_ours[key], seen_modern[key], "{key}");
    }
    assert_eq!(seen_ours["notes"].as_array().unwrap().len(), 72);
    let names = |dump: &Value, key: &str| -> Vec<Value> {
        dump[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| json!([o["id"], o["name"]]))
            .collect()
    };
    for key in ["decks", "deck_configs", "notetypes"] {
        assert_eq!(names(&seen_ours, key), names(&seen_modern, key), "{key}");
    }
    // Settings 2.1.56 does not know survive as JSON keys it keeps.
    let fsrs = deck_config_named(&seen_ours, "Lite FSRS");
    let modern_fsrs = deck_config_named(&seen_modern, "Lite FSRS");
    for key in [
        "fsrsParams6",
        "desiredRetention",
        "sm2Retention",
        "easyDaysPercentages",
        "weightSearch",
        "waitForAudio",
        "liteConfKey",
    ] {
        assert_eq!(fsrs[key], modern_fsrs[key], "{key}");
        assert!(!fsrs[key].is_null(), "{key} lost");
    }
    assert_eq!(fsrs["new"]["initialFactor"], 2300);
    assert_eq!(fsrs["rev"]["fuzz"], 0.05);
    assert_eq!(
        seen_ours["config"]["liteConfigKey"],
        json!({"nested": [1, 2.5, null]})
    );
}

/// Issue 5: "Full upload of a schema-11 file: upgraded to schema 18 on the
/// way in."
#[test]
fn modern_client_opens_our_upgrade_of_a_legacy_upload() {
    let dir = TempDir::new().expect("temp dir");
    let made = dir.path().join("legacy.anki2");
    let facts = driver(&legacy_client(), "make-legacy", &made);
    assert_eq!(facts["ver"], 11, "{facts}");
    assert_eq!(facts["journal_bytes"], json!([1, 1]), "{facts}");

    // Ours, as the upload path does it: integrity check, then upgrade.
    let ours = copy(&made, &dir, "ours18.anki2");
    {
        let conn = storage::open(&ours).expect("open");
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(integrity, "ok");
        legacy::upgrade_to_schema18(&conn).expect("upgrade");
        assert_eq!(storage::schema_version(&conn).expect("ver"), 18);
        conn.close().expect("close");
    }

    // Anki 26.9 on our upgrade vs on the schema-11 file it upgrades itself.
    let seen_ours = driver(&modern(), "dump", &copy(&ours, &dir, "o.anki2"));
    let seen_theirs = driver(&modern(), "dump", &copy(&made, &dir, "t.anki2"));
    assert_eq!(seen_ours["file"]["ver"], 18);
    assert_eq!(seen_theirs["file"]["ver"], 11);
    assert_eq!(seen_ours["integrity"], "ok");
    for key in [
        "ver_after_open",
        "col",
        "notes",
        "cards",
        "revlog",
        "graves",
        "decks",
        "deck_configs",
        "notetypes",
        "config",
        "tags",
        "rows",
    ] {
        assert_eq!(seen_ours[key], seen_theirs[key], "{key}");
    }

    // And the content is what 2.1.56 showed before it closed.
    let seen_legacy = driver(&legacy_client(), "dump", &copy(&made, &dir, "l.anki2"));
    for key in ["notes", "cards", "revlog", "graves", "tags"] {
        assert_eq!(seen_ours[key], seen_legacy[key], "{key}");
    }
    assert_eq!(seen_ours["notes"].as_array().unwrap().len(), 39);
    let fsrs = deck_config_named(&seen_ours, "Lite FSRS");
    assert_eq!(
        fsrs["fsrsParams6"],
        deck_config_named(&seen_legacy, "Lite FSRS")["fsrsParams6"]
    );
    assert_eq!(fsrs["desiredRetention"], 0.87);
    assert_eq!(fsrs["liteConfKey"], json!({"x": [1, "y"]}));
}

/// Rewrites the `col` JSON of a schema-11 file.
fn edit_col_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut cols = col_json(path);
    edit(&mut cols);
    let conn = storage::open(path).expect("open");
    for (column, value) in cols.as_object().expect("columns") {
        conn.execute(
            &format!("UPDATE col SET {column} = ?1"),
            [value.to_string()],
        )
        .expect("update col");
    }
}

/// The JSON object in `map` (a `col` column) whose `name` is `name`.
fn named<'a>(map: &'a mut Value, name: &str) -> &'a mut Value {
    map.as_object_mut()
        .expect("object")
        .values_mut()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?}"))
}

/// Drops what legitimately differs between our upgrade and the library's:
/// the usn/mtime stamps of objects the upgrade changes (upstream upgrades
/// uploads in client mode, so it writes usn -1; we write `col.usn`).
fn without_stamps(mut dump: Value) -> Value {
    for key in ["decks", "deck_configs", "notetypes"] {
        for item in dump[key].as_array_mut().expect("list") {
            let item = item.as_object_mut().expect("object");
            item.remove("usn");
            item.remove("mod");
        }
    }
    for key in ["decks", "deck_config", "notetypes"] {
        for row in dump["rows"][key].as_array_mut().expect("rows") {
            row.as_array_mut().expect("row").truncate(2);
        }
    }
    for card in dump["cards"].as_array_mut().expect("cards") {
        card[5] = Value::Null;
    }
    dump
}

/// The upgrade-only rules (storage.md §8.2) on the same odd schema-11 file:
/// the library's upgrade and ours agree on everything but the usn stamps.
#[test]
fn upgrade_only_rules_match_the_library() {
    let dir = TempDir::new().expect("temp dir");
    let made = dir.path().join("legacy.anki2");
    driver(&legacy_client(), "make-legacy", &made);
    edit_col_json(&made, |cols| {
        // The schema-15 ease bug on the default preset; a preset whose inner
        // id disagrees with its key.
        cols["dconf"]["1"]["new"]["initialFactor"] = json!(1300);
        named(&mut cols["dconf"], "Lite FSRS")["id"] = json!(777);
        // Names the upgrade normalises: NFD, padding, duplicate fields.
        named(&mut cols["decks"], "Languages::Español")["name"] =
            json!(" Languages :: Espan\u{303}ol ");
        let nt = named(&mut cols["models"], "Lite Odd Ünïcode");
        nt["name"] = json!("Lite Odd U\u{308}ni\u{308}code");
        nt["flds"][2]["name"] = json!("front");
    });
    {
        let conn = storage::open(&made).expect("open");
        conn.execute_batch(
            "UPDATE col SET usn = 5;
             UPDATE cards SET factor = 1800 WHERE did = 1 AND id IN
               (SELECT id FROM cards WHERE did = 1 ORDER BY id LIMIT 2);
             UPDATE cards SET factor = 2100 WHERE did = 1 AND id IN
               (SELECT id FROM cards WHERE did = 1 ORDER BY id LIMIT 1 OFFSET 2);",
        )
        .expect("edit rows");
    }

    let ours = copy(&made, &dir, "ours18.anki2");
    {
        let conn = storage::open(&ours).expect("open");
        legacy::upgrade_to_schema18(&conn).expect("upgrade");
        conn.close().expect("close");
    }
    let seen_ours = driver(&modern(), "dump", &copy(&ours, &dir, "o.anki2"));
    let seen_theirs = driver(&modern(), "dump", &copy(&made, &dir, "t.anki2"));
    let (stripped_ours, stripped_theirs) = (
        without_stamps(seen_ours.clone()),
        without_stamps(seen_theirs),
    );
    for key in [
        "integrity",
        "col",
        "notes",
        "cards",
        "revlog",
        "decks",
        "deck_configs",
        "notetypes",
        "config",
        "tags",
        "rows",
    ] {
        assert_eq!(stripped_ours[key], stripped_theirs[key], "{key}");
    }

    // The rules did apply, and what they changed carries col.usn (5).
    let default = deck_config_named(&seen_ours, "Default");
    assert_eq!(default["new"]["initialFactor"], 2500);
    assert_eq!(default["usn"], 5);
    // The map key wins over the inner id.
    assert_ne!(deck_config_named(&seen_ours, "Lite FSRS")["id"], 777);
    let cards = seen_ours["cards"].as_array().expect("cards");
    let repaired: Vec<&Value> = cards.iter().filter(|c| c[5] == 5).collect();
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert!(repaired.iter().all(|c| c[10] == 2500));
    assert!(cards.iter().any(|c| c[10] == 2100));
    let deck = seen_ours["decks"]
        .as_array()
        .expect("decks")
        .iter()
        .find(|d| d["name"] == "Languages::Español")
        .expect("normalised deck name");
    assert_eq!(deck["usn"], 5);
    let nt = seen_ours["notetypes"]
        .as_array()
        .expect("notetypes")
        .iter()
        .find(|n| n["name"] == "Lite Odd Ünïcode")
        .expect("NFC notetype name");
    assert_eq!(nt["flds"][2]["name"], "front+");
    assert_eq!(nt["usn"], 5);
}
