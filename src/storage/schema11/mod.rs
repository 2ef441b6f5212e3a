//! Schema-11 JSON ↔ schema-18 rows: the converters normal sync needs.
//!
//! Clients exchange notetypes, decks and deck configs as the legacy
//! "schema 11" JSON objects (storage.md §7), while the collection stores them
//! as table rows with protobuf blobs (§6). Each object kind has one file with
//! a row type, `*_to_json`, a lenient `*_from_json` that accepts exactly what
//! the reference library accepts, and load/store helpers for its tables.
//! Whether an incoming object *should* replace the stored one is decided by
//! the sync layer; this module only converts, loads and stores.

mod deck;
mod deckconfig;
mod json;
mod notetype;

pub use deck::{
    DeckRow, deck_from_json, deck_ids_since, deck_to_json, human_deck_name, load_deck,
    native_deck_name, store_deck,
};
pub use deckconfig::{
    DeckConfigRow, clamp_deck_config, deckconfig_from_json, deckconfig_ids_since,
    deckconfig_to_json, load_deckconfig, store_deckconfig,
};
pub use notetype::{
    FieldRow, NotetypeRow, TemplateRow, load_notetype, notetype_from_json, notetype_ids_since,
    notetype_to_json, store_notetype,
};

use std::fmt;

use rusqlite::OptionalExtension;

/// Errors of the conversion layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConvertError {
    /// The JSON object violates a rule the reference library enforces (a
    /// required key is missing or has the wrong type). Upstream fails the
    /// whole request in that case.
    Json(String),
    /// A stored row or an object is unusable: undecodable blob, id 0, a deck
    /// without a kind.
    Invalid(String),
    /// SQLite failed (including unique-index violations such as duplicate
    /// field names inside one notetype).
    Db(rusqlite::Error),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Json(msg) => write!(f, "invalid schema-11 JSON: {msg}"),
            ConvertError::Invalid(msg) => write!(f, "invalid object: {msg}"),
            ConvertError::Db(err) => write!(f, "database error: {err}"),
        }
    }
}

impl std::error::Error for ConvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConvertError::Db(err) => Some(err),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for ConvertError {
    fn from(err: rusqlite::Error) -> Self {
        ConvertError::Db(err)
    }
}

/// Runs `body` inside a savepoint, so a multi-statement store is atomic
/// whether or not the caller already holds a transaction.
fn in_savepoint<T>(
    conn: &rusqlite::Connection,
    body: impl FnOnce() -> Result<T, ConvertError>,
) -> Result<T, ConvertError> {
    conn.execute_batch("SAVEPOINT schema11_store")?;
    match body() {
        Ok(value) => {
            conn.execute_batch("RELEASE schema11_store")?;
            Ok(value)
        }
        Err(err) => {
            // Keep the original error; a failing rollback leaves nothing
            // more useful to report.
            let _ = conn.execute_batch("ROLLBACK TO schema11_store; RELEASE schema11_store");
            Err(err)
        }
    }
}

/// Appends `+` to `name` while another row of `table` (not `id`) has it, as
/// Anki does; the column's `unicase` collation makes the comparison
/// case-insensitive. Returns whether the name changed.
fn make_name_unique(
    conn: &rusqlite::Connection,
    table: &str,
    name: &mut String,
    id: i64,
) -> Result<bool, ConvertError> {
    let sql = format!("SELECT 1 FROM {table} WHERE name = ?1 AND id != ?2 LIMIT 1");
    let mut renamed = false;
    while conn
        .query_row(&sql, rusqlite::params![name.as_str(), id], |_| Ok(()))
        .optional()?
        .is_some()
    {
        name.push('+');
        renamed = true;
    }
    Ok(renamed)
}

/// The common columns of a row of `deck_config` or `notetypes`.
struct ConfigRow {
    name: String,
    mtime_secs: i64,
    usn: i32,
    config: Vec<u8>,
}

/// Row `id` of `table` (`deck_config` or `notetypes`), if it exists.
fn load_config_row(
    conn: &rusqlite::Connection,
    table: &str,
    id: i64,
) -> Result<Option<ConfigRow>, ConvertError> {
    let row = conn
        .query_row(
            &format!("SELECT name, mtime_secs, usn, config FROM {table} WHERE id = ?1"),
            [id],
            |r| {
                Ok(ConfigRow {
                    name: r.get(0)?,
                    mtime_secs: r.get(1)?,
                    usn: r.get(2)?,
                    config: r.get(3)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

/// Ids of the rows of `table` whose usn is at least `min_usn`, ascending.
fn ids_since(
    conn: &rusqlite::Connection,
    table: &str,
    min_usn: i32,
) -> Result<Vec<i64>, ConvertError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id FROM {table} WHERE usn >= ?1 ORDER BY id"
    ))?;
    let ids = stmt
        .query_map([min_usn], |row| row.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(ids)
}

/// Decodes one stored protobuf blob, naming the column on failure.
fn decode_blob<M: prost::Message + Default>(bytes: &[u8], what: &str) -> Result<M, ConvertError> {
    M::decode(bytes).map_err(|e| ConvertError::Invalid(format!("{what}: {e}")))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! An in-memory schema-18 collection for the store/load tests.
    use rusqlite::Connection;

    pub fn conn() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        crate::storage::register_unicase(&conn).expect("collation");
        conn.execute_batch(crate::storage::schema::SCHEMA18_DDL)
            .expect("schema");
        conn
    }
}
