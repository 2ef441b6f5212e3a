//! The collection file on disk: opening connections the way Anki expects
//! (the `unicase` collation, pragmas), the schema-18 layout, the protobuf
//! blobs it stores, a brand-new collection for a first-time user, checking
//! and installing an uploaded one (`install`), and the temporary files every
//! layer writes (`temp`).

mod create;
pub mod harden;
pub mod install;
pub mod legacy;
pub mod proto;
pub mod sanitize;
pub mod schema;
pub mod schema11;
mod stock;
pub mod temp;

pub use create::create_collection;
pub use temp::TempFile;

use std::fs;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// File name of a user's collection, as the official server names it.
pub const COLLECTION_FILE: &str = "collection.anki2";

/// How long a statement waits for a lock held by another connection (e.g. a
/// backup or a checkpoint) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache per connection, in KiB (negative = KiB for SQLite). Small on
/// purpose: the server runs on 512 MiB routers with one connection per user.
const CACHE_SIZE_KIB: i64 = 2048;

/// Prepared statements kept per connection (rusqlite's default is 16).
const STATEMENT_CACHE: usize = 64;

/// Open an existing collection file: hardened (`harden`: no code from the
/// file runs, statements have a time budget), `unicase` registered, pragmas set.
///
/// Never creates the file (a missing collection is an error, so a typo in
/// a path cannot silently produce an empty collection); use
/// [`create_collection`] for that. The journal mode is left as the file has
/// it: uploads arrive in WAL or rollback mode and both are valid.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    harden::harden_file(&conn, path)?;
    register_unicase(&conn)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // A commit is on disk before `finish` is answered, in either journal
    // mode: FULL fsyncs the WAL (or the rollback journal and the file), and
    // EXTRA also fsyncs the folder after deleting a rollback journal, which
    // is what commits in that mode (uploads arrive in it). Without that, a
    // power cut right after the answer can bring the journal back, and
    // SQLite then rolls the acknowledged sync back.
    conn.pragma_update(None, "synchronous", "EXTRA")?;
    conn.pragma_update(None, "cache_size", -CACHE_SIZE_KIB)?;
    // Statement journals (one per `insert or replace` while a sync applies
    // rows) are small: keep them in memory instead of temp files on disk.
    conn.pragma_update(None, "temp_store", "memory")?;
    // A normal sync runs some 40 distinct statements; prepared once per
    // open collection, they are not parsed again at every sync.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Register the `unicase` collation on a connection.
///
/// Anki declares its name columns `COLLATE unicase`; without the collation
/// SQLite cannot even prepare statements on those tables or run
/// `PRAGMA integrity_check`. Comparing with the same crate Anki uses keeps
/// index order identical to what clients compute.
pub fn register_unicase(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_collation("unicase", |a, b| {
        unicase::UniCase::new(a).cmp(&unicase::UniCase::new(b))
    })
}

/// The collection's schema version, `col.ver` (SQLite's `user_version` is
/// unused by Anki).
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT ver FROM col", [], |row| row.get(0))
}

/// The size of the file behind `conn` (0 for an in-memory database).
pub fn file_size(conn: &Connection) -> u64 {
    conn.path()
        .filter(|p| !p.is_empty())
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_does_not_create_missing_files() {
        let path = std::env::temp_dir().join(format!(
            "anki-sync-lite-missing-{}.anki2",
            std::process::id()
        ));
        assert!(open(&path).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn commits_are_durable_in_both_journal_modes() -> rusqlite::Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.anki2");
        Connection::open(&path)?.execute_batch("create table t (x)")?;
        let conn = open(&path)?;
        let level: i64 = conn.query_row("pragma synchronous", [], |r| r.get(0))?;
        assert_eq!(level, 3, "EXTRA");
        Ok(())
    }

    #[test]
    fn unicase_orders_case_insensitively() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        register_unicase(&conn)?;
        let equal: bool =
            conn.query_row("SELECT 'Straße' = 'STRASSE' COLLATE unicase", [], |r| {
                r.get(0)
            })?;
        // UniCase folds full Unicode case: ß and SS compare equal.
        assert!(equal);
        let equal: bool =
            conn.query_row("SELECT 'Default' = 'dEFAULT' COLLATE unicase", [], |r| {
                r.get(0)
            })?;
        assert!(equal);
        Ok(())
    }
}
