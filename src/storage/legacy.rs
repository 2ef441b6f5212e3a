//! Whole-collection schema conversion for legacy clients (sync versions
//! 8–10, Anki before 2.1.57).
//!
//! We store every collection at schema 18. Legacy clients must receive a
//! schema-11 file: some cannot open 18 at all, and 2.1.45–2.1.56 open it but
//! silently drop settings they do not know (FSRS parameters, easy days, …)
//! when they downgrade for their next upload, whereas the same settings
//! survive as unknown JSON keys in a schema-11 file (storage.md §2.3). They
//! also upload schema-11 files, which we upgrade before storing them.
//!
//! * [`write_schema11_copy`]: storage.md §8.1 on a copy; the stored file is
//!   only read.
//! * [`upgrade_to_schema18`]: storage.md §8.2/§8.3 in one pass, on an
//!   uploaded temp file before it replaces the stored collection.
//!
//! Both directions reuse the per-object converters of [`super::schema11`],
//! so normal sync and full sync agree on every JSON ↔ row rule. Table and
//! index definitions come from [`SCHEMA18_DDL`] itself, so an upgraded file
//! has exactly the layout of a collection we create.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use unicase::UniCase;
use unicode_normalization::UnicodeNormalization;

use super::proto::decks::deck::kind_container::Kind;
use super::schema::SCHEMA18_DDL;
use super::schema11::{
    self as s11, ConvertError, DeckConfigRow, DeckRow, NotetypeRow, deck_from_json, deck_to_json,
    deckconfig_from_json, deckconfig_to_json, human_deck_name, notetype_from_json,
    notetype_to_json,
};

/// Tables that schema 18 has and schema 11 lacks, in creation order.
const NEWER_TABLES: &[&str] = &[
    "deck_config",
    "config",
    "fields",
    "templates",
    "notetypes",
    "decks",
    "tags",
];

/// Indexes that schema 18 has and schema 11 lacks, apart from the one on
/// `graves` (rebuilt with its table). Those on the newer tables disappear
/// with their tables on a downgrade; the two on `notes`/`cards` are dropped
/// explicitly.
const NEWER_INDEXES: &[&str] = &[
    "idx_notes_mid",
    "idx_cards_odid",
    "idx_fields_name_ntid",
    "idx_templates_name_ntid",
    "idx_templates_usn",
    "idx_notetypes_name",
    "idx_notetypes_usn",
    "idx_decks_name",
];
const NEWER_INDEXES_ON_OLD_TABLES: &[&str] = &["idx_notes_mid", "idx_cards_odid"];

/// The schema-11 `graves` table: no primary key, so duplicates are possible
/// (storage.md §4.5).
const SCHEMA11_GRAVES: &str =
    "CREATE TABLE graves (usn integer NOT NULL, oid integer NOT NULL, type integer NOT NULL)";

/// Starting eases at or below this were written by a schema-15 bug (2.5 %
/// capped to 130 %); upstream resets them when upgrading (storage.md §8.2).
const LOW_INITIAL_EASE: f32 = 1.3;
const DEFAULT_INITIAL_EASE: f32 = 2.5;
/// Cards whose ease the same bug lowered to at most 200 % get 250 % back.
const LOW_CARD_FACTOR: i64 = 2000;
const DEFAULT_CARD_FACTOR: i64 = 2500;

/// Errors of the legacy conversion layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum LegacyError {
    /// SQLite failed (I/O, a full disk, a constraint such as two fields of
    /// one notetype with the same name).
    Db(rusqlite::Error),
    /// An object in the `col` JSON or a stored blob could not be converted.
    Convert(ConvertError),
    /// The input is not what the conversion expects (wrong schema version,
    /// a JSON column that is not an object, an existing destination).
    Invalid(String),
}

impl fmt::Display for LegacyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LegacyError::Db(err) => write!(f, "database error: {err}"),
            LegacyError::Convert(err) => write!(f, "conversion failed: {err}"),
            LegacyError::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for LegacyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LegacyError::Db(err) => Some(err),
            LegacyError::Convert(err) => Some(err),
            LegacyError::Invalid(_) => None,
        }
    }
}

impl From<rusqlite::Error> for LegacyError {
    fn from(err: rusqlite::Error) -> Self {
        LegacyError::Db(err)
    }
}

impl From<ConvertError> for LegacyError {
    fn from(err: ConvertError) -> Self {
        LegacyError::Convert(err)
    }
}

impl From<serde_json::Error> for LegacyError {
    fn from(err: serde_json::Error) -> Self {
        LegacyError::Invalid(format!("invalid JSON: {err}"))
    }
}

type Result<T> = std::result::Result<T, LegacyError>;

// ================================================================ 18 → 11

/// Writes a schema-11 copy of the open collection `src` to `dest` (which
/// must not exist), for a legacy full download.
///
/// `VACUUM INTO` takes a consistent snapshot (also of a WAL-mode file) and
/// leaves `src` untouched; the copy is then downgraded in one transaction
/// (storage.md §8.1 steps 1–7) and switched to journal mode DELETE, which
/// legacy clients expect in the header. `src` must have the `unicase`
/// collation registered and no open transaction. On failure `dest` is
/// removed.
pub fn write_schema11_copy(src: &Connection, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Err(LegacyError::Invalid(format!(
            "{} already exists",
            dest.display()
        )));
    }
    let dest_str = dest
        .to_str()
        .ok_or_else(|| LegacyError::Invalid(format!("{} is not UTF-8", dest.display())))?;
    src.execute("VACUUM INTO ?1", [dest_str])?;
    let result = super::open(dest)
        .map_err(LegacyError::from)
        .and_then(|conn| {
            downgrade_in_place(&conn)?;
            conn.close().map_err(|(_, e)| LegacyError::Db(e))
        });
    if result.is_err() {
        // Ours since we created it; nothing useful to add if removal fails.
        let _ = fs::remove_file(dest);
    }
    result
}

/// The downgrade proper, on a connection to the copy.
fn downgrade_in_place(conn: &Connection) -> Result<()> {
    let ver = super::schema_version(conn)?;
    if ver != 18 {
        return Err(LegacyError::Invalid(format!(
            "expected a schema-18 collection, found schema {ver}"
        )));
    }
    let tx = conn.unchecked_transaction()?;
    rebuild_graves_for_schema11(&tx)?;
    let json = Schema11Json {
        dconf: deck_configs_as_json(&tx)?,
        decks: decks_as_json(&tx)?,
        models: notetypes_as_json(&tx)?,
        conf: config_as_json(&tx)?,
        tags: tags_as_json(&tx)?,
    };
    tx.execute(
        "UPDATE col SET conf = ?1, models = ?2, decks = ?3, dconf = ?4, tags = ?5",
        params![
            serde_json::to_string(&json.conf)?,
            serde_json::to_string(&json.models)?,
            serde_json::to_string(&json.decks)?,
            serde_json::to_string(&json.dconf)?,
            serde_json::to_string(&json.tags)?,
        ],
    )?;
    for table in NEWER_TABLES {
        tx.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    for index in NEWER_INDEXES_ON_OLD_TABLES {
        tx.execute_batch(&format!("DROP INDEX {index}"))?;
    }
    tx.execute("UPDATE col SET ver = 11", [])?;
    tx.commit()?;
    // Outside the transaction: SQLite cannot change the journal mode inside one.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "delete", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(LegacyError::Invalid(format!(
            "journal mode stayed {mode} instead of delete"
        )));
    }
    Ok(())
}

/// The five JSON columns of a schema-11 `col` row.
struct Schema11Json {
    conf: Map<String, Value>,
    models: Map<String, Value>,
    decks: Map<String, Value>,
    dconf: Map<String, Value>,
    tags: Map<String, Value>,
}

/// Schema 11's `graves` has no primary key and columns in another order;
/// dropping the old table also drops `idx_graves_pending`.
fn rebuild_graves_for_schema11(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "ALTER TABLE graves RENAME TO graves_old;
         {SCHEMA11_GRAVES};
         INSERT INTO graves (usn, oid, type) SELECT usn, oid, type FROM graves_old;
         DROP TABLE graves_old;"
    ))?;
    Ok(())
}

fn all_ids(conn: &Connection, table: &str) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare(&format!("SELECT id FROM {table} ORDER BY id"))?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// A row that vanished between listing and loading cannot happen inside our
/// transaction; report it rather than skip it.
fn missing(what: &str, id: i64) -> LegacyError {
    LegacyError::Invalid(format!("{what} {id} vanished during the downgrade"))
}

/// Deck configs as the library emits them, clamping included (§8.1 step 2).
fn deck_configs_as_json(conn: &Connection) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for id in all_ids(conn, "deck_config")? {
        let row = s11::load_deckconfig(conn, id)?.ok_or_else(|| missing("deck config", id))?;
        out.insert(id.to_string(), deckconfig_to_json(&row));
    }
    Ok(out)
}

fn decks_as_json(conn: &Connection) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for id in all_ids(conn, "decks")? {
        let row = s11::load_deck(conn, id)?.ok_or_else(|| missing("deck", id))?;
        out.insert(id.to_string(), deck_to_json(&row));
    }
    Ok(out)
}

fn notetypes_as_json(conn: &Connection) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for id in all_ids(conn, "notetypes")? {
        let row = s11::load_notetype(conn, id)?.ok_or_else(|| missing("notetype", id))?;
        out.insert(id.to_string(), notetype_to_json(&row));
    }
    Ok(out)
}

/// Every config row's value parsed as JSON; a value that is not JSON aborts
/// the downgrade, as upstream's does.
fn config_as_json(conn: &Connection) -> Result<Map<String, Value>> {
    let mut stmt = conn.prepare("SELECT KEY, val FROM config ORDER BY KEY")?;
    let mut rows = stmt.query([])?;
    let mut out = Map::new();
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        // Clients write BLOBs; accept TEXT too, the bytes are the same.
        let bytes = match row.get_ref(1)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            other => {
                return Err(LegacyError::Invalid(format!(
                    "config `{key}`: value of type {}",
                    other.data_type()
                )));
            }
        };
        let value = serde_json::from_slice(bytes)
            .map_err(|e| LegacyError::Invalid(format!("config `{key}`: {e}")))?;
        out.insert(key, value);
    }
    Ok(out)
}

/// `{tag: usn}`; the collapsed state has no place in schema 11.
fn tags_as_json(conn: &Connection) -> Result<Map<String, Value>> {
    let mut stmt = conn.prepare("SELECT tag, usn FROM tags ORDER BY tag")?;
    let tags = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tags
        .into_iter()
        .map(|(tag, usn)| (tag, Value::from(usn)))
        .collect())
}

// ================================================================ 11 → 18

/// Upgrades an uploaded, integrity-checked schema-11 collection to schema 18
/// in place, in one transaction (storage.md §8.2, §8.3 step 4).
///
/// Kept from upstream's upgrade: deck-config ids come from the map keys;
/// notetype, field and template names are NFC-normalised and made unique
/// (`_` for notetypes and decks, `+` for fields and templates); deck names
/// are normalised; a notetype keyed 0 gets a random id; starting eases ≤ 1.3
/// are reset to 2.5 with the matching card repair. Every object this
/// changes gets the collection's `col.usn` (never −1, which the server-side
/// sanity check would reject) and the current time. Schemas 14 to 17 (which
/// no client uploads: they all downgrade to 11 first) take the remaining
/// steps of the library's upgrade.
pub fn upgrade_to_schema18(conn: &Connection) -> Result<()> {
    let ver = super::schema_version(conn)?;
    if !matches!(ver, 11 | 14..=17) {
        return Err(LegacyError::Invalid(format!(
            "can only upgrade schemas 11 and 14 to 17, found schema {ver}"
        )));
    }
    let tx = conn.unchecked_transaction()?;
    let usn: i32 = tx.query_row("SELECT usn FROM col", [], |r| r.get(0))?;
    let stamp = Stamp {
        usn,
        now_secs: now_secs(),
    };
    let reference = schema18_objects()?;
    match ver {
        11 => from_schema11(&tx, stamp, &reference)?,
        14 => from_schema14(&tx, stamp, &reference)?,
        15 => from_schema15(&tx, stamp)?,
        _ => {}
    }
    // Schemas 14 to 16 keep tags without their collapsed state.
    if (14..=16).contains(&ver) {
        rebuild_tags_for_schema17(&tx, &reference)?;
    }
    rebuild_graves_for_schema18(&tx, &reference)?;
    tx.execute("UPDATE col SET ver = 18", [])?;
    tx.commit()?;
    Ok(())
}

/// Schema 11 in one pass: every newer table is created and filled from the
/// `col` row's JSON.
fn from_schema11(tx: &Connection, stamp: Stamp, reference: &Connection) -> Result<()> {
    let json = read_col_json(tx)?;
    create_tables(tx, reference, NEWER_TABLES)?;
    store_config(tx, &json.conf)?;
    store_tags(tx, &json.tags)?;
    let low_ease_configs = store_deck_configs(tx, &json.dconf, stamp)?;
    store_notetypes(tx, &json.models, stamp)?;
    store_decks(tx, &json.decks, stamp)?;
    repair_low_card_eases(tx, &low_ease_configs, stamp.usn)?;
    tx.execute(
        "UPDATE col SET conf = '', models = '', decks = '', dconf = '', tags = ''",
        [],
    )?;
    Ok(())
}

/// Schema 14 (Anki 2.1.24–2.1.27) has the config and tags tables, and deck
/// configs as schema-11 JSON in `deck_config`; notetypes and decks are still
/// JSON in the `col` row. The deck configs are converted as a schema-11
/// upload's are (which is what the 15 and 16 steps amount to).
fn from_schema14(tx: &Connection, stamp: Stamp, reference: &Connection) -> Result<()> {
    let mut dconf = Map::new();
    {
        let mut rows = tx.prepare("SELECT id, config FROM deck_config")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let json: Value = serde_json::from_slice(&row.get::<_, Vec<u8>>(1)?)?;
            dconf.insert(id.to_string(), json);
        }
    }
    tx.execute("DELETE FROM deck_config", [])?;
    let low_ease_configs = store_deck_configs(tx, &dconf, stamp)?;
    create_tables(
        tx,
        reference,
        &["fields", "templates", "notetypes", "decks"],
    )?;
    let (models, decks) = tx.query_row("SELECT models, decks FROM col", [], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    store_notetypes(tx, &parse_object(&models, "col.models")?, stamp)?;
    store_decks(tx, &parse_object(&decks, "col.decks")?, stamp)?;
    repair_low_card_eases(tx, &low_ease_configs, stamp.usn)?;
    tx.execute("UPDATE col SET models = '', decks = ''", [])?;
    Ok(())
}

/// Schema 15 (Anki 2.1.28–2.1.35) stored a starting ease of 2.5 as 250;
/// schema 16 divides it by 100 and, as for a schema-11 upload, resets one
/// of 1.3 or less to 2.5 and repairs the low eases of its decks' cards.
fn from_schema15(tx: &Connection, stamp: Stamp) -> Result<()> {
    let mut low_ease_configs = Vec::new();
    for id in all_ids(tx, "deck_config")? {
        let mut row = s11::load_deckconfig(tx, id)?.ok_or_else(|| missing("deck config", id))?;
        row.config.initial_ease /= 100.0;
        if row.config.initial_ease <= LOW_INITIAL_EASE {
            row.config.initial_ease = DEFAULT_INITIAL_EASE;
            row.mtime_secs = stamp.now_secs;
            row.usn = stamp.usn;
            low_ease_configs.push(id);
        }
        s11::store_deckconfig(tx, &row)?;
    }
    repair_low_card_eases(tx, &low_ease_configs, stamp.usn)
}

/// Schema 17 added the tags' collapsed state and config: tags are kept,
/// collapsed, as the library's upgrade leaves them.
fn rebuild_tags_for_schema17(tx: &Connection, reference: &Connection) -> Result<()> {
    let tags: Vec<(String, i64)> = tx
        .prepare("SELECT tag, usn FROM tags")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute_batch("DROP TABLE tags")?;
    create_tables(tx, reference, &["tags"])?;
    let mut add = tx.prepare(
        "INSERT OR IGNORE INTO tags (tag, usn, collapsed, config) VALUES (?1, ?2, 1, NULL)",
    )?;
    for (tag, usn) in tags {
        add.execute(params![tag, usn])?;
    }
    Ok(())
}

/// What objects changed by the upgrade are stamped with.
#[derive(Clone, Copy)]
struct Stamp {
    usn: i32,
    now_secs: i64,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The five JSON columns of the `col` row, each of which must hold an object.
fn read_col_json(conn: &Connection) -> Result<Schema11Json> {
    let texts = conn.query_row(
        "SELECT conf, models, decks, dconf, tags FROM col",
        [],
        |r| {
            Ok([
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ])
        },
    )?;
    let [conf, models, decks, dconf, tags] = texts;
    let json = Schema11Json {
        conf: parse_object(&conf, "col.conf")?,
        models: parse_object(&models, "col.models")?,
        decks: parse_object(&decks, "col.decks")?,
        dconf: parse_object(&dconf, "col.dconf")?,
        tags: parse_object(&tags, "col.tags")?,
    };
    Ok(json)
}

/// A JSON object; duplicate keys are tolerated (the last one wins), as
/// upstream's fallback parse does.
fn parse_object(text: &str, column: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(LegacyError::Invalid(format!(
            "{column} is not a JSON object"
        ))),
        Err(e) => Err(LegacyError::Invalid(format!("{column}: {e}"))),
    }
}

/// An empty in-memory schema-18 database: the reference for the SQL of each
/// table and index, so there is one definition of the layout.
fn schema18_objects() -> Result<Connection> {
    let mem = Connection::open_in_memory()?;
    super::register_unicase(&mem)?;
    mem.execute_batch(SCHEMA18_DDL)?;
    Ok(mem)
}

/// The SQL of one table or index as [`SCHEMA18_DDL`] defines it.
fn schema18_sql(reference: &Connection, name: &str) -> Result<String> {
    Ok(reference.query_row(
        "SELECT sql FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?)
}

/// Creates `tables` as schema 18 defines them, with those of the newer
/// indexes that belong to them or to the old tables (created once).
fn create_tables(conn: &Connection, reference: &Connection, tables: &[&str]) -> Result<()> {
    for name in tables {
        conn.execute_batch(&schema18_sql(reference, name)?)?;
    }
    for index in NEWER_INDEXES {
        let table: String = reference.query_row(
            "SELECT tbl_name FROM sqlite_master WHERE name = ?1",
            [index],
            |r| r.get(0),
        )?;
        let on_old_table = !NEWER_TABLES.contains(&table.as_str());
        let exists = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE name = ?1",
                [index],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists && (tables.contains(&table.as_str()) || on_old_table) {
            conn.execute_batch(&schema18_sql(reference, index)?)?;
        }
    }
    Ok(())
}

/// Schema 18's `graves` has a primary key: duplicates collapse into one row.
fn rebuild_graves_for_schema18(conn: &Connection, reference: &Connection) -> Result<()> {
    conn.execute_batch("ALTER TABLE graves RENAME TO graves_old")?;
    conn.execute_batch(&schema18_sql(reference, "graves")?)?;
    conn.execute_batch(
        "INSERT OR IGNORE INTO graves (oid, type, usn) SELECT oid, type, usn FROM graves_old;
         DROP TABLE graves_old;",
    )?;
    conn.execute_batch(&schema18_sql(reference, "idx_graves_pending")?)?;
    Ok(())
}

/// One row per key, value as compact JSON in a BLOB; usn and mtime 0 as
/// upstream's upgrade writes them.
fn store_config(conn: &Connection, conf: &Map<String, Value>) -> Result<()> {
    let mut add =
        conn.prepare("INSERT INTO config (KEY, usn, mtime_secs, val) VALUES (?1, 0, 0, ?2)")?;
    for (key, value) in conf {
        add.execute(params![key, serde_json::to_vec(value)?])?;
    }
    Ok(())
}

/// Tags as they are (no name normalisation), collapsed as upstream's
/// upgrade leaves them; of case-insensitive duplicates the first is kept.
fn store_tags(conn: &Connection, tags: &Map<String, Value>) -> Result<()> {
    let mut add = conn.prepare(
        "INSERT OR IGNORE INTO tags (tag, usn, collapsed, config) VALUES (?1, ?2, 1, NULL)",
    )?;
    for (tag, usn) in tags {
        let usn = usn
            .as_i64()
            .and_then(|u| i32::try_from(u).ok())
            .ok_or_else(|| LegacyError::Invalid(format!("tag `{tag}`: usn {usn}")))?;
        add.execute(params![tag, usn])?;
    }
    Ok(())
}

fn key_id(key: &str, what: &str) -> Result<i64> {
    key.parse()
        .map_err(|_| LegacyError::Invalid(format!("{what} key `{key}` is not an id")))
}

/// Stores the deck configs with the map key as id (buggy clients left inner
/// ids that disagree) and returns the ids whose starting ease was reset.
fn store_deck_configs(
    conn: &Connection,
    dconf: &Map<String, Value>,
    stamp: Stamp,
) -> Result<Vec<i64>> {
    let mut reset = Vec::new();
    for (key, value) in dconf {
        let mut row: DeckConfigRow = deckconfig_from_json(value)?;
        row.id = key_id(key, "deck config")?;
        if row.config.initial_ease <= LOW_INITIAL_EASE {
            row.config.initial_ease = DEFAULT_INITIAL_EASE;
            row.mtime_secs = stamp.now_secs;
            row.usn = stamp.usn;
            reset.push(row.id);
        }
        s11::store_deckconfig(conn, &row)?;
    }
    Ok(reset)
}

/// Notetypes keyed by their map key; names normalised and made unique as
/// upstream's upgrade does. Notes of a notetype keyed 0 follow it to its
/// new id (upstream leaves them pointing at 0, i.e. nowhere).
fn store_notetypes(conn: &Connection, models: &Map<String, Value>, stamp: Stamp) -> Result<()> {
    let mut taken_ids: HashSet<i64> = models.keys().filter_map(|k| k.parse().ok()).collect();
    let mut names = HashSet::new();
    for (key, value) in models {
        let mut nt: NotetypeRow = notetype_from_json(value)?;
        nt.id = key_id(key, "notetype")?;
        let mut modified = false;
        if nt.id == 0 {
            nt.id = fresh_notetype_id(&taken_ids)?;
            taken_ids.insert(nt.id);
            conn.execute("UPDATE notes SET mid = ?1 WHERE mid = 0", [nt.id])?;
            modified = true;
        }
        modified |= normalize_notetype_names(&mut nt);
        modified |= make_unique(&mut nt.name, &mut names, '_');
        if modified {
            nt.mtime_secs = stamp.now_secs;
            nt.usn = stamp.usn;
        }
        s11::store_notetype(conn, &mut nt, stamp.usn, stamp.now_secs)?;
    }
    Ok(())
}

/// A random positive 32-bit id, as upstream picks for a notetype keyed 0.
fn fresh_notetype_id(taken: &HashSet<i64>) -> Result<i64> {
    loop {
        let mut bytes = [0u8; 4];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| LegacyError::Invalid(format!("no randomness for a notetype id: {e}")))?;
        let id = i64::from(u32::from_le_bytes(bytes).max(1));
        if !taken.contains(&id) {
            return Ok(id);
        }
    }
}

/// NFC for the notetype, field and template names; duplicate field or
/// template names get `+` until unique. Returns whether anything changed.
fn normalize_notetype_names(nt: &mut NotetypeRow) -> bool {
    let mut changed = nfc_in_place(&mut nt.name);
    let mut field_names = HashSet::new();
    for field in &mut nt.fields {
        changed |= nfc_in_place(&mut field.name);
        changed |= make_unique(&mut field.name, &mut field_names, '+');
    }
    let mut template_names = HashSet::new();
    for template in &mut nt.templates {
        changed |= nfc_in_place(&mut template.name);
        changed |= make_unique(&mut template.name, &mut template_names, '+');
    }
    changed
}

fn nfc_in_place(name: &mut String) -> bool {
    let nfc: String = name.nfc().collect();
    let changed = nfc != *name;
    *name = nfc;
    changed
}

/// Appends `suffix` to `name` until no earlier name in `seen` equals it
/// case-insensitively (the `unicase` rule of the unique indexes), then
/// records it. Returns whether the name changed.
fn make_unique(name: &mut String, seen: &mut HashSet<UniCase<String>>, suffix: char) -> bool {
    let mut changed = false;
    while seen.contains(&UniCase::new(name.clone())) {
        name.push(suffix);
        changed = true;
    }
    seen.insert(UniCase::new(name.clone()));
    changed
}

/// Decks keep their inner id (cards point at it). A name that normalisation
/// changed or that clashes with an earlier deck (suffix `_`) marks the deck
/// modified.
fn store_decks(conn: &Connection, decks: &Map<String, Value>, stamp: Stamp) -> Result<()> {
    let mut names = HashSet::new();
    for value in decks.values() {
        let mut deck: DeckRow = deck_from_json(value)?;
        let original = value.get("name").and_then(Value::as_str).unwrap_or("");
        let mut modified = human_deck_name(&deck.name) != original;
        modified |= make_unique(&mut deck.name, &mut names, '_');
        if modified {
            deck.mtime_secs = stamp.now_secs;
            deck.usn = stamp.usn;
        }
        s11::store_deck(conn, &mut deck, stamp.usn, stamp.now_secs)?;
    }
    Ok(())
}

/// Cards in normal decks using a reset preset (or sitting in a filtered deck
/// whose home deck is one) had their ease lowered by the same bug; those at
/// or below 200 % go back to 250 % (upstream's `fix_low_ease`).
fn repair_low_card_eases(conn: &Connection, configs: &[i64], usn: i32) -> Result<()> {
    if configs.is_empty() {
        return Ok(());
    }
    let mut repair = conn.prepare(
        "UPDATE cards SET factor = ?1, usn = ?2
         WHERE factor != 0 AND factor <= ?3 AND (did = ?4 OR odid = ?4)",
    )?;
    for deck_id in all_ids(conn, "decks")? {
        let Some(deck) = s11::load_deck(conn, deck_id)? else {
            continue;
        };
        if let Some(Kind::Normal(normal)) = &deck.kind.kind {
            if configs.contains(&normal.config_id) {
                repair.execute(params![DEFAULT_CARD_FACTOR, usn, LOW_CARD_FACTOR, deck_id])?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value as SqlValue;
    use serde_json::json;
    use std::path::PathBuf;

    const NOW_MS: i64 = 1_780_000_000_000;

    /// A fresh collection with a few rows of every kind in `dir`.
    fn sample_collection(dir: &Path) -> PathBuf {
        let path = dir.join("collection.anki2");
        crate::storage::create_collection(&path, NOW_MS).expect("create");
        let conn = crate::storage::open(&path).expect("open");
        add_sample_rows(&conn);
        conn.close().expect("close");
        path
    }

    fn add_sample_rows(conn: &Connection) {
        // A preset with FSRS-era settings and keys no client knows.
        let default = s11::load_deckconfig(conn, 1).unwrap().unwrap();
        let mut preset = deckconfig_to_json(&default);
        preset["id"] = json!(1_780_000_000_001i64);
        preset["name"] = json!("Intensive");
        preset["fsrsParams6"] = json!([0.212, 1.2931, 2.3065]);
        preset["desiredRetention"] = json!(0.87);
        preset["easyDaysPercentages"] = json!([1.0, 0.5, 1.0, 0.0, 1.0, 0.7, 1.0]);
        preset["futureKey"] = json!({"nested": [1, "x"]});
        preset["new"]["separate"] = json!(true);
        s11::store_deckconfig(conn, &deckconfig_from_json(&preset).unwrap()).unwrap();

        let mut parent = deck_to_json(&s11::load_deck(conn, 1).unwrap().unwrap());
        parent["id"] = json!(1_780_000_000_002i64);
        parent["name"] = json!("Languages::Español");
        parent["conf"] = json!(1_780_000_000_001i64);
        parent["desc"] = json!("<b>described</b>");
        parent["newLimit"] = json!(7);
        parent["liteDeckKey"] = json!(["kept", 1]);
        s11::store_deck(conn, &mut deck_from_json(&parent).unwrap(), 0, 0).unwrap();
        let filtered = json!({"id":1_780_000_000_003i64,"mod":5,"name":"Filt 1","usn":0,
            "lrnToday":[0,0],"revToday":[0,0],"newToday":[0,0],"timeToday":[0,0],
            "collapsed":true,"browserCollapsed":true,"desc":"","dyn":1,"resched":true,
            "terms":[["deck:Languages*",100,0]],"separate":true,"delays":[1.5],
            "previewDelay":0,"previewAgainSecs":60,"previewHardSecs":600,"previewGoodSecs":0});
        s11::store_deck(conn, &mut deck_from_json(&filtered).unwrap(), 0, 0).unwrap();

        let basic_id: i64 = conn
            .query_row("SELECT id FROM notetypes WHERE name = 'Basic'", [], |r| {
                r.get(0)
            })
            .unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO notes VALUES (10, 'guid10', {basic_id}, 100, 0, ' verb ', 'front\x1fback', 'front', 123, 0, '');
             INSERT INTO cards VALUES (20, 10, 1780000000002, 0, 100, 0, 2, 2, 40, 12, 2300, 3, 1, 0, 0, 0, 3, '{{\"s\":4.5}}');
             INSERT INTO revlog VALUES (30, 20, 0, 3, 12, 4, 2300, 6000, 1);
             INSERT INTO graves VALUES (40, 1, 0), (41, 0, 0);
             INSERT INTO tags VALUES ('verb', 0, 0, NULL), ('lite::nested', 0, 1, NULL);
             INSERT INTO config VALUES ('liteKey', 0, 0, CAST('{{\"a\":[1,2.5]}}' AS BLOB));"
        ))
        .unwrap();
    }

    /// Every notetype, deck and preset as the converters emit them, plus
    /// config values and tag usns: what a schema-11 file must carry.
    fn objects(conn: &Connection) -> Value {
        json!({
            "dconf": deck_configs_as_json(conn).unwrap(),
            "decks": decks_as_json(conn).unwrap(),
            "models": notetypes_as_json(conn).unwrap(),
            "conf": config_as_json(conn).unwrap(),
            "tags": tags_as_json(conn).unwrap(),
        })
    }

    fn rows(conn: &Connection, table: &str) -> Vec<Vec<SqlValue>> {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap();
        let width = stmt.column_count();
        stmt.query_map([], |r| (0..width).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn col_json(conn: &Connection, column: &str) -> Value {
        let text: String = conn
            .query_row(&format!("SELECT {column} FROM col"), [], |r| r.get(0))
            .unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("col.{column}: {e}: {text}"))
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn schema11_copy_carries_everything_and_upgrades_back() {
        let dir = tempfile::tempdir().unwrap();
        let original_path = sample_collection(dir.path());
        let original = crate::storage::open(&original_path).unwrap();
        let before = objects(&original);
        assert_eq!(before["dconf"].as_object().unwrap().len(), 2);
        assert_eq!(before["decks"].as_object().unwrap().len(), 3);
        assert_eq!(before["models"].as_object().unwrap().len(), 6);
        let original_schema = schema(&original);

        let copy_path = dir.path().join("legacy.anki2");
        write_schema11_copy(&original, &copy_path).unwrap();

        // The source is only read.
        assert_eq!(crate::storage::schema_version(&original).unwrap(), 18);
        assert_eq!(schema(&original), original_schema);

        // Header bytes 18/19 = 1: rollback journal, as legacy clients expect.
        let bytes = fs::read(&copy_path).unwrap();
        assert_eq!((bytes[18], bytes[19]), (1, 1));
        let copy = crate::storage::open(&copy_path).unwrap();
        assert_eq!(crate::storage::schema_version(&copy).unwrap(), 11);
        assert_eq!(integrity(&copy), "ok");
        let tables: Vec<String> = schema(&copy)
            .into_iter()
            .filter(|(kind, ..)| kind == "table")
            .map(|(_, name, _)| name)
            .collect();
        assert_eq!(tables, ["cards", "col", "graves", "notes", "revlog"]);
        let indexes: Vec<String> = schema(&copy)
            .into_iter()
            .filter(|(kind, ..)| kind == "index")
            .map(|(_, name, _)| name)
            .collect();
        assert_eq!(indexes.len(), 7);
        assert!(indexes.iter().all(|name| name.starts_with("ix_")));
        let grave_columns: Vec<String> = copy
            .prepare("SELECT name FROM pragma_table_info('graves')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(grave_columns, ["usn", "oid", "type"]);

        // The col JSON holds exactly what the converters emit for the rows.
        for column in ["dconf", "decks", "models", "conf", "tags"] {
            assert_eq!(col_json(&copy, column), before[column], "col.{column}");
        }
        let intensive = &col_json(&copy, "dconf")["1780000000001"];
        assert_eq!(intensive["futureKey"], json!({"nested": [1, "x"]}));
        assert_eq!(intensive["new"]["separate"], json!(true));
        assert_eq!(intensive["desiredRetention"], json!(0.87));
        assert_eq!(
            col_json(&copy, "decks")["1780000000002"]["name"],
            json!("Languages::Español")
        );
        assert_eq!(
            col_json(&copy, "tags"),
            json!({"lite::nested": 0, "verb": 0})
        );

        // Back to 18: the same objects, rows and layout as the original.
        upgrade_to_schema18(&copy).unwrap();
        assert_eq!(crate::storage::schema_version(&copy).unwrap(), 18);
        assert_eq!(integrity(&copy), "ok");
        assert_eq!(schema(&copy), original_schema);
        assert_eq!(objects(&copy), before);
        for table in ["notes", "cards", "revlog", "graves"] {
            assert_eq!(rows(&copy, table), rows(&original, table), "{table}");
        }
        for column in ["conf", "models", "decks", "dconf", "tags"] {
            let text: String = copy
                .query_row(&format!("SELECT {column} FROM col"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(text, "", "col.{column}");
        }
        // Known losses of schema 11: tag collapse state (every tag comes
        // back collapsed) and config usn/mtime (0).
        let collapsed: i64 = copy
            .query_row("SELECT count(*) FROM tags WHERE collapsed = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(collapsed, 2);
    }

    #[test]
    fn existing_destination_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let original = crate::storage::open(&sample_collection(dir.path())).unwrap();
        let dest = dir.path().join("taken");
        fs::write(&dest, b"mine").unwrap();
        assert!(matches!(
            write_schema11_copy(&original, &dest),
            Err(LegacyError::Invalid(_))
        ));
        assert_eq!(fs::read(&dest).unwrap(), b"mine");
    }

    /// A schema-11 copy of the sample collection whose col JSON `edit`
    /// rewrites; the connection is open on it.
    fn legacy_with(dir: &Path, edit: impl FnOnce(&mut Map<String, Value>)) -> Connection {
        let original = crate::storage::open(&sample_collection(dir)).unwrap();
        let path = dir.join("legacy.anki2");
        write_schema11_copy(&original, &path).unwrap();
        let conn = crate::storage::open(&path).unwrap();
        let mut cols = Map::new();
        for column in ["conf", "models", "decks", "dconf", "tags"] {
            cols.insert(column.into(), col_json(&conn, column));
        }
        edit(&mut cols);
        for (column, value) in cols {
            conn.execute(
                &format!("UPDATE col SET {column} = ?1"),
                [value.to_string()],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn upgrade_only_rules_stamp_the_collection_usn() {
        let dir = tempfile::tempdir().unwrap();
        let conn = legacy_with(dir.path(), |cols| {
            // Preset keyed 1 claims id 99 inside; its ease is the schema-15 bug.
            let dconf = cols["dconf"].as_object_mut().unwrap();
            dconf.get_mut("1").unwrap()["id"] = json!(99);
            dconf.get_mut("1").unwrap()["new"]["initialFactor"] = json!(1300);
            // A notetype keyed 0, one differing only in case, duplicate fields.
            let models = cols["models"].as_object_mut().unwrap();
            let mut basic = models
                .values()
                .find(|m| m["name"] == "Basic")
                .unwrap()
                .clone();
            basic["id"] = json!(0);
            basic["name"] = json!("BASIC");
            basic["flds"][1]["name"] = json!("front");
            models.insert("0".into(), basic);
            // A deck whose name normalisation changes, one clashing with it.
            let decks = cols["decks"].as_object_mut().unwrap();
            let mut odd = decks["1"].clone();
            odd["id"] = json!(500);
            odd["name"] = json!(" Lite :: x ");
            decks.insert("500".into(), odd);
            let mut clash = decks["1"].clone();
            clash["id"] = json!(501);
            clash["name"] = json!("lite::X");
            decks.insert("501".into(), clash);
        });
        conn.execute_batch(
            "UPDATE col SET usn = 7;
             INSERT INTO notes VALUES (11, 'g11', 0, 100, 0, '', 'a\x1fb', 'a', 1, 0, '');
             INSERT INTO cards VALUES (21, 11, 1, 0, 100, 0, 2, 2, 40, 12, 1800, 3, 1, 0, 0, 0, 0, '');
             INSERT INTO cards VALUES (22, 11, 1, 1, 100, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, '');
             INSERT INTO cards VALUES (23, 11, 1, 2, 100, 0, 2, 2, 40, 12, 2100, 3, 1, 0, 0, 0, 0, '');
             INSERT INTO graves VALUES (0, 40, 1);",
        )
        .unwrap();
        upgrade_to_schema18(&conn).unwrap();
        assert_eq!(integrity(&conn), "ok");

        let preset = s11::load_deckconfig(&conn, 1).unwrap().unwrap();
        assert_eq!(preset.config.initial_ease, 2.5);
        assert_eq!(preset.usn, 7);
        assert!(s11::load_deckconfig(&conn, 99).unwrap().is_none());
        let factors: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT id, factor, usn FROM cards WHERE nid = 11 ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(factors, [(21, 2500, 7), (22, 0, 0), (23, 2100, 0)]);

        let mid: i64 = conn
            .query_row("SELECT mid FROM notes WHERE id = 11", [], |r| r.get(0))
            .unwrap();
        assert!(mid > 0 && mid <= i64::from(u32::MAX));
        let repaired = s11::load_notetype(&conn, mid).unwrap().unwrap();
        assert_eq!(repaired.usn, 7);
        assert_eq!(repaired.fields[1].name, "front+");
        // Which of two clashing notetypes gets the `_` is arbitrary (map
        // order); both must exist under distinct names.
        let names: Vec<String> = conn
            .prepare("SELECT name FROM notetypes WHERE name IN ('BASIC', 'BASIC_', 'Basic', 'Basic_') ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&repaired.name));
        assert!(names.iter().any(|n| n.ends_with('_')), "{names:?}");

        let odd = s11::load_deck(&conn, 500).unwrap().unwrap();
        assert_eq!((odd.name.as_str(), odd.usn), ("Lite\x1fx", 7));
        let clash = s11::load_deck(&conn, 501).unwrap().unwrap();
        assert_eq!((clash.name.as_str(), clash.usn), ("lite\x1fX_", 7));
        // Untouched objects keep their usn.
        assert_eq!(s11::load_deck(&conn, 1).unwrap().unwrap().usn, 0);
        // Duplicate graves collapse into one row.
        assert_eq!(rows(&conn, "graves").len(), 2);
    }

    #[test]
    fn failed_upgrade_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = legacy_with(dir.path(), |cols| {
            cols["decks"]["1"]["dyn"] = json!("yes");
        });
        let before = schema(&conn);
        assert!(matches!(
            upgrade_to_schema18(&conn),
            Err(LegacyError::Convert(_))
        ));
        assert_eq!(schema(&conn), before);
        assert_eq!(crate::storage::schema_version(&conn).unwrap(), 11);

        conn.execute("UPDATE col SET models = '[]'", []).unwrap();
        let err = upgrade_to_schema18(&conn).unwrap_err();
        assert!(err.to_string().contains("col.models"), "{err}");

        conn.execute("UPDATE col SET ver = 18", []).unwrap();
        assert!(matches!(
            upgrade_to_schema18(&conn),
            Err(LegacyError::Invalid(_))
        ));
    }
}
