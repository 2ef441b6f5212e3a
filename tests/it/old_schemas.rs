//! Full uploads of schemas 14 to 17 (issue 13, conformance 4). No client
//! sends one: every library from 2.1.24 (the first with schema 14) to
//! 2.1.56 closes its collection with a downgrade to schema 11 before a full
//! upload, and current clients upload 18. The official server upgrades any
//! file it can open, so we take them too: a collection that an old library
//! left at its own schema (2.1.26: 14, 2.1.28: 15, 2.1.38: 16, 2.1.41: 17)
//! is uploaded as it is, and the current client downloads it with every
//! note, tag, deck, preset and config key.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::http::{Conn, call};
use crate::support::{Account, Server, client_ok, old_library_python};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Makes a collection with the old library of venv `venv`; returns what
/// the maker printed (`ver`, note ids).
fn make_with_old_library(venv: &str, path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/old_schema_make.py");
    let out = Command::new(old_library_python(venv))
        .arg(&script)
        .arg(path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the old library");
    assert!(
        out.status.success(),
        "{venv}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("maker's JSON")
}

/// A v11 full upload of the file as it is (one connection per request).
fn upload(server: &Server, file: &Path) {
    let login = call(
        &mut Conn::open(server),
        "hostKey",
        "",
        br#"{"u":"user","p":"pass"}"#,
    );
    let key: Value = serde_json::from_slice(&login.payload()).unwrap();
    let hkey = key["key"].as_str().unwrap();
    call(
        &mut Conn::open(server),
        "meta",
        hkey,
        br#"{"v":11,"cv":"test"}"#,
    )
    .payload();
    let bytes = std::fs::read(file).unwrap();
    let reply = call(&mut Conn::open(server), "upload", hkey, &bytes);
    assert_eq!(reply.payload(), b"OK");
}

#[test]
fn uploads_of_schemas_14_to_17_are_upgraded() {
    for (venv, ver) in [
        ("anki2126", 14),
        ("anki2128", 15),
        ("anki2138", 16),
        ("anki2141", 17),
    ] {
        let server = Server::start(&[("user", "pass")], &[]);
        let account = Account {
            server: &server,
            user: "user",
            password: "pass",
        };
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.anki2"), dir.path().join("new.anki2"));
        let made = make_with_old_library(venv, &old);
        assert_eq!(made["ver"], ver, "{venv} left its own schema");
        upload(&server, &old);
        assert_eq!(account.sync(&new), "FULL_DOWNLOAD", "{venv}");
        account.run("full-download", Some(&new)).unwrap();
        let dump = client_ok(&["dump", "--path", path_str(&new)]);
        let fronts: Vec<&str> = dump["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["flds"].as_str().unwrap().split('\x1f').next().unwrap())
            .collect();
        assert_eq!(
            fronts,
            ["old front 0", "old front 1", "old front 2"],
            "{venv}"
        );
        let ids: Vec<&Value> = dump["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| &n["id"])
            .collect();
        assert_eq!(
            ids,
            made["notes"].as_array().unwrap().iter().collect::<Vec<_>>()
        );
        let tags = dump["tags"].as_array().unwrap();
        for tag in ["old_tag", "n0", "n2"] {
            assert!(tags.contains(&json!(tag)), "{venv}: {tags:?}");
        }
        let deck = dump["decks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "Old::Child")
            .unwrap_or_else(|| panic!("{venv}: no deck Old::Child"));
        let preset = dump["deck_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == deck["conf"])
            .unwrap_or_else(|| panic!("{venv}: the deck's preset is missing"));
        assert_eq!(preset["name"], "Old preset", "{venv}");
        assert_eq!(preset["new"]["initialFactor"], 2300, "{venv}");
        assert_eq!(preset["new"]["perDay"], 33, "{venv}");
    }
}
