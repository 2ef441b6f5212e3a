//! Bringing an ankisyncd collection to schema 18 on a private copy.
//!
//! ankisyncd stored whatever schema its `anki` library left on disk: 11 for
//! the pure-Python libraries, 16–18 for the Rust-backed ones it required
//! later (2.1.36+). 11 goes through the same upgrade as a legacy full
//! upload; 16 and 17 need only the two small steps that followed (the
//! `tags` columns, the `graves` key); 14 and 15 (libraries 2.1.24–2.1.35)
//! are refused with a way out. Nothing here touches `scm`, `usn` or `mod`,
//! so devices that synced with ankisyncd see the collection they know and
//! sync normally.

use std::fs::File;
use std::path::Path;

use rusqlite::Connection;

use crate::storage::{self, legacy, schema::SCHEMA18_DDL};

/// What the copy holds once it is ready to be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `col.ver` as ankisyncd left it.
    pub from_schema: i64,
    pub scm: i64,
    pub usn: i64,
    pub modified: i64,
    pub notes: i64,
    pub cards: i64,
}

/// Checks and upgrades the copy at `path` in place, then leaves it as one
/// self-contained, synced file (journal mode DELETE, no `-wal`).
pub fn prepare(path: &Path) -> Result<Prepared, String> {
    let conn = storage::open(path).map_err(|e| format!("not a readable SQLite database: {e}"))?;
    // The file came from ankisyncd's users: what an upload may not hold goes.
    let removed = storage::sanitize::sanitize_upload(&conn)?;
    if !removed.is_empty() {
        log::warn!(
            "{}: removed what Anki does not create and could run code: {}",
            path.display(),
            removed.join(", ")
        );
    }
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("not a readable SQLite database: {e}"))?;
    if integrity != "ok" {
        return Err(format!("the integrity check failed: {integrity}"));
    }
    let from_schema = storage::schema_version(&conn)
        .map_err(|e| format!("not an Anki collection (no col row): {e}"))?;
    upgrade(&conn, from_schema)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| format!("leaving WAL mode: {e}"))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(format!("could not leave journal mode {mode}"));
    }
    let (scm, usn, modified) = conn
        .query_row("SELECT scm, usn, mod FROM col", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| e.to_string())?;
    let count = |table: &str| -> Result<i64, String> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|e| e.to_string())
    };
    let prepared = Prepared {
        from_schema,
        scm,
        usn,
        modified,
        notes: count("notes")?,
        cards: count("cards")?,
    };
    conn.close().map_err(|(_, e)| e.to_string())?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing the copy: {e}"))?;
    Ok(prepared)
}

fn upgrade(conn: &Connection, ver: i64) -> Result<(), String> {
    match ver {
        18 => Ok(()),
        16 | 17 => upgrade_16_or_17(conn, ver).map_err(|e| format!("upgrading schema {ver}: {e}")),
        11 => legacy::upgrade_to_schema18(conn).map_err(|e| format!("upgrading schema 11: {e}")),
        14 | 15 => Err(format!(
            "schema {ver} (written by the anki library 2.1.24–2.1.35) cannot be imported; \
             upgrade a copy first with a current anki Python package \
             (python3 -c 'from anki.collection import Collection; Collection(\"COPY.anki2\").close()') \
             and import that, or run ankisyncd once with anki 2.1.36 or later"
        )),
        other => Err(format!("schema {other} is not an Anki collection version")),
    }
}

/// 16 → 17: `tags` gains `collapsed` and `config` (every tag starts
/// collapsed, as upstream's upgrade leaves it); 17 → 18: `graves` gets its
/// (oid, type) key, duplicates dropped. One transaction; the table
/// definitions come from [`SCHEMA18_DDL`].
fn upgrade_16_or_17(conn: &Connection, ver: i64) -> rusqlite::Result<()> {
    let reference = Connection::open_in_memory()?;
    storage::register_unicase(&reference)?;
    reference.execute_batch(SCHEMA18_DDL)?;
    let tx = conn.unchecked_transaction()?;
    if ver == 16 {
        let tags = {
            let mut stmt = tx.prepare("SELECT tag, usn FROM tags")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute_batch("DROP TABLE tags")?;
        create_like(&tx, &reference, "tags")?;
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO tags (tag, usn, collapsed, config) VALUES (?, ?, 1, NULL)",
        )?;
        for (tag, usn) in tags {
            insert.execute(rusqlite::params![tag, usn])?;
        }
    }
    // Old indexes would clash with the new ones by name.
    let old_indexes = {
        let mut stmt = tx.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'graves' AND sql IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for index in old_indexes {
        tx.execute_batch(&format!("DROP INDEX \"{}\"", index.replace('"', "\"\"")))?;
    }
    tx.execute_batch("ALTER TABLE graves RENAME TO graves_before_18")?;
    create_like(&tx, &reference, "graves")?;
    tx.execute_batch(
        "INSERT OR IGNORE INTO graves (oid, type, usn) SELECT oid, type, usn FROM graves_before_18;
         DROP TABLE graves_before_18;
         UPDATE col SET ver = 18;",
    )?;
    tx.commit()
}

/// Creates `table` and its indexes exactly as in `reference`.
fn create_like(conn: &Connection, reference: &Connection, table: &str) -> rusqlite::Result<()> {
    let mut stmt = reference.prepare(
        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL ORDER BY type = 'index'",
    )?;
    let sqls = stmt
        .query_map([table], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for sql in sqls {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_collection(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("collection.anki2");
        storage::create_collection(&path, 1_700_000_000_000).unwrap();
        let conn = storage::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE col SET usn = 7, mod = 1700000123456;
             INSERT INTO graves VALUES (11, 0, 3), (12, 1, 4);
             INSERT INTO tags VALUES ('verb', 2, 0, NULL), ('Noun::x', 5, 0, NULL);",
        )
        .unwrap();
        path
    }

    /// Rewrites a schema-18 file into the 16 or 17 layout.
    fn downgrade_to(path: &Path, ver: i64) {
        let conn = storage::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE g (usn integer NOT NULL, oid integer NOT NULL, type integer NOT NULL);
             INSERT INTO g SELECT usn, oid, type FROM graves;
             INSERT INTO g VALUES (3, 11, 0);
             DROP TABLE graves;
             ALTER TABLE g RENAME TO graves;",
        )
        .unwrap();
        if ver == 16 {
            conn.execute_batch(
                "CREATE TABLE t (tag text NOT NULL PRIMARY KEY COLLATE unicase, usn integer NOT NULL) WITHOUT ROWID;
                 INSERT INTO t SELECT tag, usn FROM tags;
                 DROP TABLE tags;
                 ALTER TABLE t RENAME TO tags;",
            )
            .unwrap();
        }
        conn.execute("UPDATE col SET ver = ?", [ver]).unwrap();
    }

    fn schema_of(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        stmt.query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn schema_16_and_17_become_18_with_scm_usn_mod_kept() {
        for ver in [16, 17] {
            let dir = tempfile::tempdir().unwrap();
            let path = new_collection(dir.path());
            let reference = dir.path().join("reference.anki2");
            std::fs::copy(&path, &reference).unwrap();
            let before: (i64, i64, i64) = storage::open(&path)
                .unwrap()
                .query_row("SELECT scm, usn, mod FROM col", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            downgrade_to(&path, ver);

            let prepared = prepare(&path).unwrap();
            assert_eq!(prepared.from_schema, ver);
            assert_eq!((prepared.scm, prepared.usn, prepared.modified), before);

            let conn = storage::open(&path).unwrap();
            let want = storage::open(&reference).unwrap();
            assert_eq!(storage::schema_version(&conn).unwrap(), 18);
            for table in ["graves", "tags"] {
                assert_eq!(schema_of(&conn, table), schema_of(&want, table), "{table}");
            }
            let graves: Vec<(i64, i64, i64)> = conn
                .prepare("SELECT oid, type, usn FROM graves ORDER BY oid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(graves, [(11, 0, 3), (12, 1, 4)]);
            let tags: Vec<(String, i64, bool)> = conn
                .prepare("SELECT tag, usn, collapsed FROM tags ORDER BY tag")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let collapsed = ver == 16;
            assert_eq!(
                tags,
                [
                    ("Noun::x".to_string(), 5, collapsed),
                    ("verb".to_string(), 2, collapsed)
                ]
            );
            let integrity: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(integrity, "ok");
        }
    }

    #[test]
    fn schema_11_goes_through_the_legacy_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_collection(dir.path());
        let old = dir.path().join("old.anki2");
        legacy::write_schema11_copy(&storage::open(&path).unwrap(), &old).unwrap();
        let prepared = prepare(&old).unwrap();
        assert_eq!(prepared.from_schema, 11);
        assert_eq!((prepared.usn, prepared.modified), (7, 1_700_000_123_456));
        let conn = storage::open(&old).unwrap();
        assert_eq!(storage::schema_version(&conn).unwrap(), 18);
        let decks: i64 = conn
            .query_row("SELECT count(*) FROM decks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decks, 1);
    }

    #[test]
    fn schema_15_and_garbage_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_collection(dir.path());
        storage::open(&path)
            .unwrap()
            .execute("UPDATE col SET ver = 15", [])
            .unwrap();
        let err = prepare(&path).unwrap_err();
        assert!(
            err.contains("schema 15") && err.contains("Collection("),
            "{err}"
        );

        let junk = dir.path().join("junk.anki2");
        std::fs::write(
            &junk,
            b"this is not a database at all, not even close......",
        )
        .unwrap();
        let err = prepare(&junk).unwrap_err();
        assert!(err.contains("not a readable SQLite database"), "{err}");
    }

    #[test]
    fn a_wal_copy_ends_as_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = new_collection(dir.path());
        let conn = storage::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        drop(conn);
        prepare(&path).unwrap();
        assert!(!crate::fsutil::sidecar(&path, "-wal").exists());
        let mode: String = storage::open(&path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }
}
