//! The server media database (`media.db`, schema version 4), with the same
//! tables and columns as the official server so a store can move between
//! the two servers. One row per file name (a deleted file keeps a
//! tombstone row with size 0 and its last checksum); `meta` holds the last
//! USN handed out and counters that always equal a full scan.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

/// File name in the user's folder, as the official server names it.
pub const DB_FILE: &str = "media.db";
const SCHEMA_VERSION: u32 = 4;

const CREATE_V4: &str = "
CREATE TABLE media (
  fname text NOT NULL PRIMARY KEY,
  csum blob NOT NULL,
  size int NOT NULL,
  usn int NOT NULL,
  mtime int NOT NULL
);
CREATE INDEX ix_usn ON media (usn);
CREATE TABLE meta (
  last_usn int NOT NULL,
  total_bytes int NOT NULL,
  total_nonempty_files int NOT NULL
);
INSERT INTO meta VALUES (0, 0, 0);
";

/// Version 3 (tombstones had a NULL checksum, columns `sz` and `deleted`)
/// to 4: tombstones cannot be kept, so the USN is kept at least as high as
/// the old counter (a client may hold it; it must never go down).
const MIGRATE_V3: &str = "
CREATE TABLE media_v4 (
  fname text NOT NULL PRIMARY KEY,
  csum blob NOT NULL,
  size int NOT NULL,
  usn int NOT NULL,
  mtime int NOT NULL
);
INSERT INTO media_v4 SELECT fname, csum, sz, usn, deleted FROM media WHERE csum IS NOT NULL;
CREATE TEMP TABLE old_meta AS SELECT max(usn) AS usn FROM meta;
DROP TABLE media;
ALTER TABLE media_v4 RENAME TO media;
CREATE INDEX ix_usn ON media (usn);
DROP TABLE meta;
CREATE TABLE meta (
  last_usn int NOT NULL,
  total_bytes int NOT NULL,
  total_nonempty_files int NOT NULL
);
INSERT INTO meta SELECT
  max(coalesce((SELECT max(usn) FROM media), 0), coalesce((SELECT usn FROM old_meta), 0)),
  coalesce((SELECT sum(size) FROM media), 0),
  (SELECT count(*) FROM media WHERE size > 0);
DROP TABLE old_meta;
";

/// The live or deleted state of one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub sha1: Vec<u8>,
    /// 0 for a deleted file.
    pub size: u64,
}

/// The single `meta` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub last_usn: i32,
    pub total_bytes: i64,
    pub total_nonempty_files: i64,
}

/// Opens (creating or upgrading) a user's media database.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    crate::storage::harden::harden_file(&conn, path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    // Every commit fsyncs the WAL before an upload is answered (SQLite's
    // default, stated so that no build flag can weaken it).
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Page cache per user, kept small: one connection stays open per user.
    conn.pragma_update(None, "cache_size", -512)?;
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_media: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'media'",
        [],
        |r| r.get(0),
    )?;
    match version {
        SCHEMA_VERSION => {}
        0 if !has_media => {
            let tx = conn.transaction()?;
            tx.execute_batch(CREATE_V4)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        3 => {
            let tx = conn.transaction()?;
            tx.execute_batch(MIGRATE_V3)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        other => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "{}: media database version {other} is not one this server knows",
                    path.display()
                )),
            ));
        }
    }
    Ok(conn)
}

pub fn meta(conn: &Connection) -> rusqlite::Result<Meta> {
    conn.query_row(
        "SELECT last_usn, total_bytes, total_nonempty_files FROM meta",
        [],
        |r| {
            Ok(Meta {
                last_usn: r.get(0)?,
                total_bytes: r.get(1)?,
                total_nonempty_files: r.get(2)?,
            })
        },
    )
}

pub fn set_meta(conn: &Connection, meta: &Meta) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE meta SET last_usn = ?, total_bytes = ?, total_nonempty_files = ?",
        params![meta.last_usn, meta.total_bytes, meta.total_nonempty_files],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, fname: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached("SELECT csum, size FROM media WHERE fname = ?")?
        .query_row([fname], |r| {
            Ok(Row {
                sha1: r.get(0)?,
                size: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })
        .optional()
}

/// Records new content for a name (insert or replace).
pub fn put(
    conn: &Connection,
    fname: &str,
    sha1: &[u8],
    size: u64,
    usn: i32,
    mtime: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO media (fname, csum, size, usn, mtime) VALUES (?, ?, ?, ?, ?)",
    )?
    .execute(params![fname, sha1, size as i64, usn, mtime])?;
    Ok(())
}

/// Turns a row into a tombstone; the checksum is kept, as upstream.
pub fn mark_deleted(conn: &Connection, fname: &str, usn: i32, mtime: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE media SET size = 0, usn = ?, mtime = ? WHERE fname = ?")?
        .execute(params![usn, mtime, fname])?;
    Ok(())
}

/// Removes a row outright (no tombstone, no USN); returns its size if it
/// existed.
pub fn forget(conn: &Connection, fname: &str) -> rusqlite::Result<Option<u64>> {
    let row = get(conn, fname)?;
    conn.execute("DELETE FROM media WHERE fname = ?", [fname])?;
    Ok(row.map(|r| r.size))
}

/// One `mediaChanges` entry: name, USN, lowercase hex SHA-1 or `""` when
/// deleted.
pub type Change = (String, i32, String);

/// Rows changed after `after`, oldest first (clients continue from the USN
/// of the last entry, so the order is required), at most `limit`.
pub fn changes(conn: &Connection, after: i64, limit: u32) -> rusqlite::Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fname, usn, csum, size FROM media WHERE usn > ? ORDER BY usn LIMIT ?",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        let size: i64 = r.get(3)?;
        let sum = if size > 0 {
            super::hex(&r.get::<_, Vec<u8>>(2)?)
        } else {
            String::new()
        };
        Ok((r.get(0)?, r.get(1)?, sum))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_schema_4_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = open(&path).unwrap();
            assert_eq!(
                meta(&conn).unwrap(),
                Meta {
                    last_usn: 0,
                    total_bytes: 0,
                    total_nonempty_files: 0
                }
            );
            put(&conn, "a.jpg", &[1; 20], 12, 1, 100).unwrap();
        }
        let conn = open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 4);
        assert_eq!(get(&conn, "a.jpg").unwrap().unwrap().size, 12);
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL: each commit fsyncs the WAL");
    }

    #[test]
    fn migrates_version_3_without_lowering_the_usn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE media (fname text NOT NULL PRIMARY KEY, csum blob,
                   sz int NOT NULL, usn int NOT NULL, deleted int NOT NULL);
                 CREATE INDEX ix_usn ON media (usn);
                 CREATE TABLE meta (usn int NOT NULL, sz int NOT NULL);
                 INSERT INTO meta VALUES (9, 15);
                 INSERT INTO media VALUES ('a.jpg', x'01', 5, 2, 0), ('b.jpg', x'02', 10, 4, 0),
                   ('gone.jpg', NULL, 0, 9, 1);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        assert_eq!(
            meta(&conn).unwrap(),
            Meta {
                last_usn: 9,
                total_bytes: 15,
                total_nonempty_files: 2
            }
        );
        assert!(get(&conn, "gone.jpg").unwrap().is_none());
        assert_eq!(changes(&conn, 0, 10).unwrap().len(), 2);
    }

    #[test]
    fn changes_are_sorted_paged_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join(DB_FILE)).unwrap();
        put(&conn, "b.jpg", &[0xAB; 20], 3, 2, 0).unwrap();
        put(&conn, "a.jpg", &[0x01; 20], 3, 1, 0).unwrap();
        put(&conn, "c.jpg", &[0x02; 20], 3, 3, 0).unwrap();
        mark_deleted(&conn, "b.jpg", 4, 0).unwrap();
        let all = changes(&conn, -5, 1000).unwrap();
        assert_eq!(
            all,
            vec![
                ("a.jpg".to_string(), 1, "01".repeat(20)),
                ("c.jpg".to_string(), 3, "02".repeat(20)),
                ("b.jpg".to_string(), 4, String::new()),
            ]
        );
        assert_eq!(changes(&conn, 1, 1).unwrap()[0].0, "c.jpg");
        assert!(changes(&conn, 4, 1000).unwrap().is_empty());
        // The tombstone keeps its checksum, as the official server's does.
        assert_eq!(get(&conn, "b.jpg").unwrap().unwrap().sha1, vec![0xAB; 20]);
    }
}
