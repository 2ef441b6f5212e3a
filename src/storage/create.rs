//! Creating the collection of a first-time user.
//!
//! The file is built under a temporary name next to its final path and only
//! renamed into place once complete and synced, so a crash or a full disk
//! can never leave a half-written `collection.anki2` that later looks valid.
//! Its contents mirror a collection the reference server creates: the
//! schema-18 tables, the `col` row, 16 config keys, deck and preset
//! "Default", and the six stock notetypes.

use super::register_unicase;
use super::schema::SCHEMA18_DDL;
use super::stock::{self, NewNotetype};
use super::temp::TempFile;
use prost::Message;
use rusqlite::{Connection, OpenFlags, Transaction, ffi, params};
use std::io;
use std::path::Path;

/// Seconds after local midnight at which Anki's scheduler day starts; `crt`
/// is anchored to it.
const DAY_ROLLOVER_SECS: i64 = 4 * 3600;

/// Atomically create a brand-new collection at `path` (temp file, fsync,
/// rename). `now_ms` becomes `scm`; `crt` is the most recent 04:00 local.
///
/// The caller makes sure `path` does not exist yet (under the user's lock);
/// a rename replaces an existing file rather than failing, because hard
/// links, the no-clobber alternative, are missing on FAT-formatted USB
/// sticks that routers use for storage.
pub fn create_collection(path: &Path, now_ms: i64) -> rusqlite::Result<()> {
    let dir = path.parent().ok_or_else(|| {
        io_error(
            "collection path has no folder",
            io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let (tmp, file) =
        TempFile::create(dir, "new").map_err(|e| io_error("creating temporary collection", e))?;
    drop(file);
    build(tmp.path(), now_ms)?;
    tmp.persist(path)
        .map_err(|e| io_error("putting the new collection in place", e))
}

/// Write the whole collection into the empty file `tmp` and close it
/// cleanly.
fn build(tmp: &Path, now_ms: i64) -> rusqlite::Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(tmp, flags)?;
    super::harden::harden_file(&conn, tmp)?;
    register_unicase(&conn)?;
    // page_size only takes effect before the first table exists; WAL is
    // what Anki leaves in the header of the files it creates.
    conn.pragma_update(None, "page_size", 4096)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(io_error(
            "enabling WAL journal",
            io::Error::other(format!("journal mode is {mode}")),
        ));
    }

    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA18_DDL)?;
    insert_col_row(&tx, now_ms)?;
    insert_default_deck_and_config(&tx)?;
    let basic_id = insert_stock_notetypes(&tx, now_ms)?;
    insert_config(&tx, basic_id, now_ms / 1000)?;
    tx.commit()?;

    // Closing the last connection checkpoints the WAL into the main file and
    // deletes it; only then is `tmp` alone a complete collection.
    conn.close().map_err(|(_, e)| e)?;
    if crate::fsutil::sidecar(tmp, "-wal").exists() {
        return Err(io_error(
            "checkpointing new collection",
            io::Error::other("WAL file left behind"),
        ));
    }
    Ok(())
}

/// The single `col` row. `mod` = 0 and `usn` = 0 make the collection count
/// as untouched, which the full-sync decision relies on.
fn insert_col_row(tx: &Transaction, now_ms: i64) -> rusqlite::Result<()> {
    let crt = day_start_at_or_before(tx, now_ms.div_euclid(1000))?;
    tx.execute(
        "INSERT INTO col (id, crt, mod, scm, ver, dty, usn, ls, conf, models, decks, dconf, tags)
         VALUES (1, ?1, 0, ?2, 18, 0, 0, 0, '', '', '', '', '')",
        params![crt, now_ms],
    )?;
    Ok(())
}

/// The most recent local 04:00 at or before `now_secs`, as Anki computes
/// `crt`: the UTC offset in force now is applied to the whole day.
///
/// The offset comes from SQLite's `localtime` modifier, which asks the C
/// library (and so honours `TZ` and `/etc/localtime`) without a time-zone
/// crate. Where no zone is configured, as in many containers, that is UTC.
fn day_start_at_or_before(conn: &Connection, now_secs: i64) -> rusqlite::Result<i64> {
    let local_secs: i64 = conn.query_row(
        "SELECT CAST(strftime('%s', ?1, 'unixepoch', 'localtime') AS INTEGER)",
        [now_secs],
        |row| row.get(0),
    )?;
    Ok(day_start_with_offset(now_secs, local_secs - now_secs))
}

/// `offset_secs` is local time minus UTC (east positive).
fn day_start_with_offset(now_secs: i64, offset_secs: i64) -> i64 {
    let since_rollover = (now_secs + offset_secs - DAY_ROLLOVER_SECS).rem_euclid(86_400);
    now_secs - since_rollover
}

fn insert_default_deck_and_config(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO deck_config (id, name, mtime_secs, usn, config) VALUES (1, 'Default', 0, 0, ?1)",
        [stock::default_deck_config().encode_to_vec()],
    )?;
    tx.execute(
        "INSERT INTO decks (id, name, mtime_secs, usn, common, kind) VALUES (1, 'Default', 0, 0, ?1, ?2)",
        [
            stock::default_deck_common().encode_to_vec(),
            stock::default_deck_kind().encode_to_vec(),
        ],
    )?;
    Ok(())
}

/// Insert the stock notetypes with ids `now_ms`, `now_ms + 1`, ... (as Anki
/// does) and return the first one's id, Basic's.
fn insert_stock_notetypes(tx: &Transaction, now_ms: i64) -> rusqlite::Result<i64> {
    for (offset, notetype) in (0..).zip(stock::stock_notetypes()) {
        insert_notetype(tx, now_ms + offset, notetype)?;
    }
    Ok(now_ms)
}

/// One notetype with its fields and templates. Field and template ids are
/// random 64-bit numbers; clients use them to match notetypes on import.
fn insert_notetype(tx: &Transaction, id: i64, notetype: NewNotetype) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO notetypes (id, name, mtime_secs, usn, config) VALUES (?1, ?2, 0, 0, ?3)",
        params![id, notetype.name, notetype.config.encode_to_vec()],
    )?;
    let mut add_field =
        tx.prepare("INSERT INTO fields (ntid, ord, name, config) VALUES (?1, ?2, ?3, ?4)")?;
    for (ord, (name, mut config)) in notetype.fields.into_iter().enumerate() {
        config.id = Some(random_i64()?);
        add_field.execute(params![id, ord as i64, name, config.encode_to_vec()])?;
    }
    let mut add_template = tx.prepare(
        "INSERT INTO templates (ntid, ord, name, mtime_secs, usn, config) VALUES (?1, ?2, ?3, 0, 0, ?4)",
    )?;
    for (ord, (name, mut config)) in notetype.templates.into_iter().enumerate() {
        config.id = Some(random_i64()?);
        add_template.execute(params![id, ord as i64, name, config.encode_to_vec()])?;
    }
    Ok(())
}

/// The 16 config keys of a fresh collection, values as compact JSON stored
/// with the BLOB storage class (clients treat TEXT values as missing).
///
/// Deviation from the reference server: it writes `curModel` with usn −1,
/// which would mark it as a pending client-side change; a server must never
/// write usn −1, so it gets usn 0 like the others (mtime is still now).
fn insert_config(tx: &Transaction, basic_id: i64, now_secs: i64) -> rusqlite::Result<()> {
    const FIXED: [(&str, &str); 15] = [
        ("activeDecks", "[1]"),
        ("addToCur", "true"),
        ("collapseTime", "1200"),
        // null = no client time zone: what the reference server stores.
        ("creationOffset", "null"),
        ("curDeck", "1"),
        ("dayLearnFirst", "false"),
        ("dueCounts", "true"),
        ("estTimes", "true"),
        ("newSpread", "0"),
        ("nextPos", "1"),
        // Without these two, clients think the collection uses the v1
        // scheduler and refuse to study until it is upgraded.
        ("schedVer", "2"),
        ("sched2021", "true"),
        ("sortBackwards", "false"),
        ("sortType", "\"noteFld\""),
        ("timeLim", "0"),
    ];
    let mut add =
        tx.prepare("INSERT INTO config (KEY, usn, mtime_secs, val) VALUES (?1, 0, ?2, ?3)")?;
    for (key, json) in FIXED {
        add.execute(params![key, 0, json.as_bytes()])?;
    }
    add.execute(params![
        "curModel",
        now_secs,
        basic_id.to_string().into_bytes()
    ])?;
    Ok(())
}

/// A uniformly random `i64` from the OS.
fn random_i64() -> rusqlite::Result<i64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| io_error("reading OS randomness", io::Error::other(e.to_string())))?;
    Ok(i64::from_le_bytes(bytes))
}

/// File-system failures around the database, reported as SQLite I/O errors
/// so callers deal with a single error type.
fn io_error(context: &str, err: io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_IOERR),
        Some(format!("{context}: {err}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::proto::deck_config::deck_config;
    use crate::storage::proto::decks::deck;
    use crate::storage::proto::notetypes::notetype;
    use crate::storage::{open, schema_version};
    use std::fs;
    use std::path::PathBuf;

    const NOW_MS: i64 = 1_795_429_458_822;

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "anki-sync-lite-{tag}-{}-{:x}",
            std::process::id(),
            random_i64().expect("randomness")
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn created(tag: &str) -> (PathBuf, Connection) {
        let dir = temp_dir(tag);
        let path = dir.join("collection.anki2");
        create_collection(&path, NOW_MS).expect("create");
        let conn = open(&path).expect("open");
        (dir, conn)
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    fn blobs(conn: &Connection, sql: &str) -> Vec<Vec<u8>> {
        let mut stmt = conn.prepare(sql).expect(sql);
        stmt.query_map([], |r| r.get(0))
            .expect(sql)
            .collect::<Result<_, _>>()
            .expect(sql)
    }

    #[test]
    fn fresh_collection_is_valid_and_complete() {
        let (dir, conn) = created("create");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(ok, "ok");
        assert_eq!(schema_version(&conn).expect("ver"), 18);

        let (crt, modified, scm, usn): (i64, i64, i64, i64) = conn
            .query_row("SELECT crt, mod, scm, usn FROM col", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .expect("col row");
        assert_eq!((modified, scm, usn), (0, NOW_MS, 0));
        assert!(crt <= NOW_MS / 1000 && NOW_MS / 1000 - crt < 86_400);

        let page_size = count(&conn, "PRAGMA page_size");
        assert_eq!(page_size, 4096);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");

        assert_eq!(count(&conn, "SELECT count(*) FROM config"), 16);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM config WHERE typeof(val) != 'blob'"
            ),
            0
        );
        assert_eq!(
            count(&conn, "SELECT count(*) FROM config WHERE usn != 0"),
            0
        );
        let basic_id = count(&conn, "SELECT id FROM notetypes WHERE name = 'Basic'");
        let cur_model: Vec<u8> = conn
            .query_row("SELECT val FROM config WHERE KEY = 'curModel'", [], |r| {
                r.get(0)
            })
            .expect("curModel");
        assert_eq!(cur_model, basic_id.to_string().into_bytes());

        assert_eq!(count(&conn, "SELECT count(*) FROM decks"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM deck_config"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM notetypes"), 6);
        assert_eq!(count(&conn, "SELECT count(*) FROM fields"), 16);
        assert_eq!(count(&conn, "SELECT count(*) FROM templates"), 8);
        assert_eq!(count(&conn, "SELECT min(id) FROM notetypes"), NOW_MS);
        for table in ["notes", "cards", "revlog", "graves", "tags"] {
            assert_eq!(count(&conn, &format!("SELECT count(*) FROM {table}")), 0);
        }
        drop(conn);
        let leftovers = fs::read_dir(&dir).expect("read dir").count();
        assert_eq!(leftovers, 1, "only collection.anki2 remains");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn every_blob_decodes() {
        let (dir, conn) = created("blobs");
        let blob_columns = [
            "SELECT config FROM notetypes",
            "SELECT config FROM fields",
            "SELECT config FROM templates",
            "SELECT common FROM decks",
            "SELECT kind FROM decks",
            "SELECT config FROM deck_config",
        ];
        for sql in blob_columns {
            assert!(!blobs(&conn, sql).is_empty(), "{sql}");
        }
        for blob in blobs(&conn, "SELECT config FROM notetypes") {
            notetype::Config::decode(blob.as_slice()).expect("notetype config");
        }
        for blob in blobs(&conn, "SELECT config FROM fields") {
            let field = notetype::field::Config::decode(blob.as_slice()).expect("field");
            assert_eq!((field.font_name.as_str(), field.font_size), ("Arial", 20));
            assert!(field.id.is_some());
        }
        for blob in blobs(&conn, "SELECT config FROM templates") {
            let template = notetype::template::Config::decode(blob.as_slice()).expect("template");
            assert!(template.id.is_some() && !template.q_format.is_empty());
        }
        for blob in blobs(&conn, "SELECT common FROM decks") {
            deck::Common::decode(blob.as_slice()).expect("deck common");
        }
        for blob in blobs(&conn, "SELECT kind FROM decks") {
            let kind = deck::KindContainer::decode(blob.as_slice()).expect("deck kind");
            assert!(kind.kind.is_some());
        }
        for blob in blobs(&conn, "SELECT config FROM deck_config") {
            deck_config::Config::decode(blob.as_slice()).expect("deck config");
        }
        let non_blob = count(
            &conn,
            "SELECT (SELECT count(*) FROM notetypes WHERE typeof(config) != 'blob')
                  + (SELECT count(*) FROM fields WHERE typeof(config) != 'blob')
                  + (SELECT count(*) FROM templates WHERE typeof(config) != 'blob')
                  + (SELECT count(*) FROM decks WHERE typeof(common) != 'blob' OR typeof(kind) != 'blob')
                  + (SELECT count(*) FROM deck_config WHERE typeof(config) != 'blob')",
        );
        assert_eq!(non_blob, 0);
        drop(conn);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn field_and_template_counts_per_notetype() {
        let (dir, conn) = created("shapes");
        let mut stmt = conn
            .prepare(
                "SELECT n.name,
                        (SELECT count(*) FROM fields f WHERE f.ntid = n.id),
                        (SELECT count(*) FROM templates t WHERE t.ntid = n.id)
                 FROM notetypes n ORDER BY n.id",
            )
            .expect("prepare");
        let shapes: Vec<(String, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let expected = [
            ("Basic", 2, 1),
            ("Basic (and reversed card)", 2, 2),
            ("Basic (optional reversed card)", 3, 2),
            ("Basic (type in the answer)", 2, 1),
            ("Cloze", 2, 1),
            ("Image Occlusion", 5, 1),
        ];
        let shapes: Vec<(&str, i64, i64)> = shapes
            .iter()
            .map(|(n, f, t)| (n.as_str(), *f, *t))
            .collect();
        assert_eq!(shapes, expected);
        drop(stmt);
        drop(conn);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        let dir = temp_dir("fail");
        let missing_parent = dir.join("no-such-dir").join("collection.anki2");
        assert!(create_collection(&missing_parent, NOW_MS).is_err());
        assert_eq!(fs::read_dir(&dir).expect("read dir").count(), 0);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn crt_is_the_last_4am() {
        // 2026-11-23 10:24:18 UTC.
        let now = 1_795_429_458;
        let four_am_utc = 1_795_406_400;
        assert_eq!(day_start_with_offset(now, 0), four_am_utc);
        // At 02:00 local the day started at 04:00 the day before.
        assert_eq!(
            day_start_with_offset(four_am_utc - 7200, 0),
            four_am_utc - 86_400
        );
        assert_eq!(day_start_with_offset(four_am_utc, 0), four_am_utc);
        // UTC+2: local 04:00 is 02:00 UTC.
        assert_eq!(day_start_with_offset(now, 7200), four_am_utc - 7200);
        // UTC-5: local 04:00 is 09:00 UTC.
        assert_eq!(
            day_start_with_offset(now, -5 * 3600),
            four_am_utc + 5 * 3600
        );
    }
}
