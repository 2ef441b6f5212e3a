//! Notes, cards and review-log entries from the client, in chunks of at
//! most 250 objects: `applyChunk` merges them. Rows travel as positional
//! JSON arrays (collection-sync.md §6.5, typed in `rows`); an incoming chunk
//! is decoded and merged in batches as it streams in (`decode`). The
//! server's own chunks are written in `outgoing`.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::OnceLock;

use prost::Message;
use rusqlite::types::Value as SqlValue;
use rusqlite::{CachedStatement, Connection, OptionalExtension};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::decode::{self, Batcher, DecodeError, Field, Key, Stash};
use super::notetext;
use super::rows::{CardRow, NoteRow, RevlogRow, RowSeed};
use super::state::SyncState;
use crate::budget::Account;
use crate::error::SyncError;
use crate::storage::proto::notetypes::notetype;

/// Objects per chunk.
pub const CHUNK_SIZE: usize = 250;

/// Most rows one `applyChunk` may carry. Clients send at most 252 (250,
/// plus the overshoot of upstream's last round of one revlog entry, note and
/// card); twice as many leaves room for a client that counts differently
/// and still refuses a body of thousands of rows.
pub const MAX_ROWS_PER_CHUNK: usize = 2 * CHUNK_SIZE;

/// The rows of a chunk from the client, typed.
#[derive(Debug, Default)]
pub struct Chunk {
    pub revlog: Vec<RevlogRow>,
    pub cards: Vec<CardRow>,
    pub notes: Vec<NoteRow>,
}

impl Chunk {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.revlog.len() + self.cards.len() + self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes an `applyChunk` body (`{"chunk": {...}}`) as it streams in and
/// hands its rows to `apply` in batches. Returns the number of rows.
pub fn receive<R: Read>(
    body: R,
    account: &Account<'_>,
    apply: &mut dyn FnMut(&mut Chunk) -> Result<(), SyncError>,
) -> Result<usize, DecodeError> {
    let stash = Stash::default();
    let mut rows = Batcher::new(account, &stash, apply).at_most(MAX_ROWS_PER_CHUNK, "rows");
    decode::run(
        body,
        account,
        &stash,
        Field {
            name: "chunk",
            seed: ChunkSeed(&mut rows),
            account,
        },
    )?;
    Ok(rows.total())
}

/// The chunk object: `done`, then arrays of rows; other keys are skipped.
struct ChunkSeed<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Chunk>);

impl<'de> DeserializeSeed<'de> for ChunkSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChunkSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a chunk object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["done", "revlog", "cards", "notes"];
        loop {
            self.0.next_key(true)?;
            let Some(key) = map.next_key_seed(Key(KEYS))? else {
                break;
            };
            match key {
                Some(0) => {
                    map.next_value::<bool>()?;
                }
                Some(1) => map.next_value_seed(Rows {
                    rows: &mut *self.0,
                    what: "revlog row",
                    put: |c: &mut Chunk, r| c.revlog.push(r),
                })?,
                Some(2) => map.next_value_seed(Rows {
                    rows: &mut *self.0,
                    what: "card row",
                    put: |c: &mut Chunk, r| c.cards.push(r),
                })?,
                Some(3) => map.next_value_seed(Rows {
                    rows: &mut *self.0,
                    what: "note row",
                    put: |c: &mut Chunk, r| c.notes.push(r),
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.0.flush()
    }
}

/// One array of rows of a kind, each added to the batch as it is decoded.
struct Rows<'x, 'a, 'b, T> {
    rows: &'x mut Batcher<'a, 'b, Chunk>,
    what: &'static str,
    put: fn(&mut Chunk, T),
}

impl<'de, T> DeserializeSeed<'de> for Rows<'_, '_, '_, T>
where
    RowSeed<T>: DeserializeSeed<'de, Value = T>,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T> Visitor<'de> for Rows<'_, '_, '_, T>
where
    RowSeed<T>: DeserializeSeed<'de, Value = T>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}s", self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.rows.begin(self.what);
            let Some(row) = seq.next_element_seed(RowSeed::<T>::default())? else {
                return Ok(());
            };
            let put = self.put;
            self.rows.add(|chunk| put(chunk, row))?;
        }
    }
}

/// Merges a chunk from the client: revlog, then cards, then notes, each row
/// written as it is merged (see [`Merge`]).
pub fn apply(col: &Connection, state: &SyncState, chunk: &mut Chunk) -> Result<(), SyncError> {
    chunk.revlog.sort_by_key(|r| r.id);
    chunk.cards.sort_by_key(|r| r.id);
    chunk.notes.sort_by_key(|r| r.id);
    let mut revlog = col.prepare_cached(REVLOG_INSERT)?;
    for row in &chunk.revlog {
        execute(&mut revlog, revlog_values(row, state.server_usn))?;
    }
    if !chunk.cards.is_empty() {
        let mut cards = Merge::new(col, &CARDS)?;
        for row in &mut chunk.cards {
            cards.write(card_values(row, state), state.client_usn)?;
        }
    }
    if !chunk.notes.is_empty() {
        let mut notes = Merge::new(col, &NOTES)?;
        let mut notetypes = NotetypeCache::default();
        for row in &mut chunk.notes {
            notes.write(
                note_values(col, row, state, &mut notetypes)?,
                state.client_usn,
            )?;
        }
    }
    Ok(())
}

/// One row per statement: a single-row `insert or ignore`, or `insert ...
/// on conflict do update`, changes its row only after every constraint
/// passed, so SQLite keeps no statement journal for it. (A multi-row insert,
/// or an `insert or replace` on a table with indexes, copies every page it
/// changes into one first: a tenth of a large sync's instructions.)
const REVLOG_INSERT: &str = "insert or ignore into revlog \
     (id, cid, usn, ease, ivl, lastIvl, factor, time, type) values (?, ?, ?, ?, ?, ?, ?, ?, ?)";
const CARD_COLUMNS: &[&str] = &[
    "id", "nid", "did", "ord", "mod", "usn", "type", "queue", "due", "ivl", "factor", "reps",
    "lapses", "left", "odue", "odid", "flags", "data",
];
const NOTE_COLUMNS: &[&str] = &[
    "id", "guid", "mid", "mod", "usn", "tags", "flds", "sfld", "csum", "flags", "data",
];

/// Binds `values` in order and runs the statement once. Each value moves
/// into SQLite's copy and is dropped here, so a large note is not held a
/// third time while its row is written.
fn execute(statement: &mut CachedStatement<'_>, values: Vec<SqlValue>) -> Result<(), SyncError> {
    for (at, value) in values.into_iter().enumerate() {
        statement.raw_bind_parameter(at + 1, value)?;
    }
    statement.raw_execute()?;
    Ok(())
}

/// The merge of one table's incoming rows (notes or cards), prepared once
/// per chunk as one statement: a new id is inserted; an existing row is
/// replaced by the incoming copy unless the server's copy changed since the
/// client's last sync and is at least as new (the merge rule, in the
/// `where` of the upsert). Rows are written one by one, so an id met twice
/// in a chunk merges against its first copy, as written in this sync. One
/// statement instead of a look-up and a write: the look-up was 8% of a
/// 5,000-note upload's instructions, and the insert checks the id anyway.
struct Merge<'c> {
    upsert: CachedStatement<'c>,
    /// Where the client's last-sync usn is bound (after the columns).
    client_usn_at: usize,
}

/// A table's upsert statement, written once: the statement cache finds it
/// by its text, and a chunk arrives in several batches.
struct Upsert {
    table: &'static str,
    columns: &'static [&'static str],
    sql: OnceLock<String>,
}

static CARDS: Upsert = Upsert {
    table: "cards",
    columns: CARD_COLUMNS,
    sql: OnceLock::new(),
};
static NOTES: Upsert = Upsert {
    table: "notes",
    columns: NOTE_COLUMNS,
    sql: OnceLock::new(),
};

impl Upsert {
    /// Where the client's last-sync usn is bound (after the columns).
    fn client_usn_at(&self) -> usize {
        self.columns.len() + 1
    }

    fn sql(&self) -> &str {
        self.sql.get_or_init(|| {
            let columns = self.columns;
            let marks = vec!["?"; columns.len()].join(", ");
            let sets: Vec<String> = columns[1..]
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                "insert into {} ({}) values ({marks}) on conflict (id) do update set {} \
                 where usn < ?{} or excluded.mod > mod",
                self.table,
                columns.join(", "),
                sets.join(", "),
                self.client_usn_at()
            )
        })
    }
}

impl<'c> Merge<'c> {
    fn new(col: &'c Connection, upsert: &Upsert) -> Result<Merge<'c>, SyncError> {
        Ok(Merge {
            upsert: col.prepare_cached(upsert.sql())?,
            client_usn_at: upsert.client_usn_at(),
        })
    }

    /// Writes an incoming row (`values` in column order, id first) by the
    /// merge rule.
    fn write(&mut self, values: Vec<SqlValue>, client_usn: i32) -> Result<(), SyncError> {
        self.upsert
            .raw_bind_parameter(self.client_usn_at, i64::from(client_usn))?;
        execute(&mut self.upsert, values)
    }
}

fn revlog_values(row: &RevlogRow, usn: i32) -> Vec<SqlValue> {
    vec![
        row.id.into(),
        row.cid.into(),
        i64::from(usn).into(),
        row.ease.into(),
        row.ivl.into(),
        row.last_ivl.into(),
        row.factor.max(0).into(),
        row.time.max(0).into(),
        row.kind.into(),
    ]
}

/// A winning card's values, in `CARD_COLUMNS` order.
fn card_values(row: &mut CardRow, state: &SyncState) -> Vec<SqlValue> {
    let mut values: Vec<SqlValue> = row.ints().into_iter().map(SqlValue::from).collect();
    values[5] = i64::from(state.server_usn).into();
    values[9] = row.ivl.max(0).into();
    values.push(std::mem::take(&mut row.data).into());
    values
}

/// Field count and sort field of each notetype met in a chunk.
#[derive(Default)]
struct NotetypeCache(HashMap<i64, (usize, usize)>);

impl NotetypeCache {
    fn get(&mut self, col: &Connection, ntid: i64) -> Result<(usize, usize), SyncError> {
        if let Some(&found) = self.0.get(&ntid) {
            return Ok(found);
        }
        let config: Option<Vec<u8>> = col
            .prepare_cached("select config from notetypes where id = ?")?
            .query_row([ntid], |r| r.get(0))
            .optional()?;
        let Some(config) = config else {
            return Err(SyncError::bad_request(format!(
                "note refers to unknown notetype {ntid}"
            )));
        };
        let sort_idx = notetype::Config::decode(config.as_slice())
            .map(|c| c.sort_field_idx as usize)
            .unwrap_or(0);
        let fields: i64 = col
            .prepare_cached("select count(*) from fields where ntid = ?")?
            .query_row([ntid], |r| r.get(0))?;
        let found = ((fields as usize).max(1), sort_idx);
        self.0.insert(ntid, found);
        Ok(found)
    }
}

/// A winning note's values, in `NOTE_COLUMNS` order, with the columns the
/// server derives (sort field, checksum); refused if its notetype is unknown
/// or its field count is not the notetype's.
fn note_values(
    col: &Connection,
    row: &mut NoteRow,
    state: &SyncState,
    notetypes: &mut NotetypeCache,
) -> Result<Vec<SqlValue>, SyncError> {
    let (id, mid) = (row.id, row.mid);
    let (field_count, sort_idx) = notetypes.get(col, mid)?;
    // The fields arrive without control characters (see `rows`).
    let fields: Vec<&str> = row.fields.split('\x1f').collect();
    if fields.len() != field_count {
        return Err(SyncError::bad_request(format!(
            "note {id} has {} fields, its notetype {mid} has {field_count}",
            fields.len()
        )));
    }
    let first = notetext::strip_html_keeping_media_names(fields[0]);
    let csum = notetext::checksum_of_stripped(&first);
    let sfld = if sort_idx == 0 {
        first
    } else {
        notetext::sort_field(&fields, sort_idx)
    };
    let values = vec![
        id.into(),
        std::mem::take(&mut row.guid).into(),
        mid.into(),
        row.mtime.into(),
        i64::from(state.server_usn).into(),
        join_tags(&row.tags).into(),
        std::mem::take(&mut row.fields).into(),
        sfld.into(),
        i64::from(csum).into(),
        0i64.into(),
        String::new().into(),
    ];
    Ok(values)
}

/// Tags split on ASCII and ideographic spaces, re-joined with one leading
/// and one trailing space (or empty).
fn join_tags(tags: &str) -> String {
    let parts: Vec<&str> = tags
        .split([' ', '\u{3000}'])
        .filter(|t| !t.is_empty())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" {} ", parts.join(" "))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::budget::{Limits, Refusal};
    use crate::collection::decode::tests::{LIMITS, budget, refused};
    use crate::error::Kind;
    use crate::storage::schema::SCHEMA18_DDL;

    pub(in crate::collection) fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::storage::register_unicase(&c).unwrap();
        c.execute_batch(SCHEMA18_DDL).unwrap();
        let config = notetype::Config {
            sort_field_idx: 1,
            ..Default::default()
        }
        .encode_to_vec();
        c.execute(
            "insert into notetypes (id, name, mtime_secs, usn, config) values (7, 'Basic', 0, 0, ?)",
            [config],
        )
        .unwrap();
        c.execute_batch("insert into fields values (7, 0, 'Front', x''), (7, 1, 'Back', x'');")
            .unwrap();
        c
    }

    pub(in crate::collection) fn state(client_usn: i32, server_usn: i32) -> SyncState {
        SyncState::new("s", server_usn, client_usn, false)
    }

    pub(in crate::collection) fn note(id: i64, modified: i64, flds: &str) -> Value {
        json!([
            id,
            "guid",
            7,
            modified,
            5,
            "a  b\u{3000}c",
            flds,
            "",
            "",
            0,
            ""
        ])
    }

    pub(in crate::collection) fn card(id: i64, modified: i64, due: f64) -> Value {
        json!([
            id, 1, 1, 0, modified, 5, 2, 2, due, -3, 2500, 1, 0, 0, 0, 0, 0, "{}"
        ])
    }

    /// Decodes `{"chunk": chunk}` as the handler does, merging each batch.
    fn receive_json(
        c: &Connection,
        st: &SyncState,
        chunk: Value,
        limits: Limits,
    ) -> Result<(usize, usize), DecodeError> {
        let body = serde_json::to_vec(&json!({ "chunk": chunk })).unwrap();
        let budget = budget();
        let account = Account::new(&budget, limits);
        let mut batches = 0;
        let rows = receive(&body[..], &account, &mut |batch| {
            batches += 1;
            apply(c, st, batch)
        })?;
        Ok((rows, batches))
    }

    pub(in crate::collection) fn apply_one(
        c: &Connection,
        st: &SyncState,
        notes: Vec<Value>,
        cards: Vec<Value>,
    ) -> Result<(), SyncError> {
        let chunk = json!({"done": true, "notes": notes, "cards": cards});
        match receive_json(c, st, chunk, LIMITS) {
            Ok(_) => Ok(()),
            Err(DecodeError::Apply(e)) => Err(e),
            Err(other) => panic!("not a merge error: {other}"),
        }
    }

    #[test]
    fn notes_get_derived_columns_and_clean_tags() {
        let c = db();
        apply_one(
            &c,
            &state(3, 5),
            vec![note(1, 100, "<b>Front</b>\x1fBa\x01ck &amp; more")],
            vec![],
        )
        .unwrap();
        let (tags, flds, sfld, csum, usn): (String, String, String, i64, i64) = c
            .query_row("select tags, flds, sfld, csum, usn from notes", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        assert_eq!(tags, " a b c ");
        assert_eq!(flds, "<b>Front</b>\x1fBack &amp; more");
        assert_eq!(sfld, "Back & more");
        assert_eq!(csum, i64::from(notetext::checksum("Front")));
        assert_eq!(usn, 5);
    }

    #[test]
    fn notes_with_unknown_notetype_or_wrong_field_count_fail() {
        let c = db();
        let mut bad_mid = note(1, 1, "a\x1fb");
        bad_mid[2] = json!(99);
        assert!(matches!(
            apply_one(&c, &state(0, 1), vec![bad_mid], vec![]),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        assert!(matches!(
            apply_one(&c, &state(0, 1), vec![note(1, 1, "only one")], vec![]),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
    }

    #[test]
    fn an_id_twice_in_one_chunk_merges_as_if_written_one_by_one() {
        let c = db();
        let flds = |c: &Connection, id: i64| {
            c.query_row("select flds from notes where id = ?", [id], |r| {
                r.get::<_, String>(0)
            })
            .unwrap()
        };
        let due = |c: &Connection, id: i64| {
            c.query_row("select due from cards where id = ?", [id], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        };
        // Note 1: a newer copy follows; note 2: an older (and a same-second)
        // copy follows. The first copy counts as written in this sync.
        apply_one(
            &c,
            &state(3, 5),
            vec![
                note(1, 100, "first\x1fx"),
                note(2, 100, "first\x1fx"),
                note(1, 101, "second\x1fx"),
                note(2, 99, "older\x1fx"),
                note(2, 100, "tie\x1fx"),
            ],
            vec![card(1, 100, 1.0), card(1, 100, 2.0), card(1, 102, 3.0)],
        )
        .unwrap();
        assert_eq!(flds(&c, 1), "second\x1fx");
        assert_eq!(flds(&c, 2), "first\x1fx");
        assert_eq!(due(&c, 1), 3);
        let notes: i64 = c
            .query_row("select count() from notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(notes, 2);
    }

    #[test]
    fn chunks_of_many_rows_write_every_row() {
        let c = db();
        let count = 57;
        let notes = (1..=count as i64)
            .map(|id| note(id, 100, &format!("n{id}\x1fx")))
            .collect();
        let cards = (1..=count as i64)
            .map(|id| card(id, 100, id as f64))
            .collect();
        apply_one(&c, &state(3, 5), notes, cards).unwrap();
        let (notes, cards, dues): (i64, i64, i64) = c
            .query_row(
                "select (select count() from notes), (select count() from cards),
                        (select sum(due) from cards)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let n = count as i64;
        assert_eq!((notes, cards, dues), (n, n, n * (n + 1) / 2));
        assert_eq!(
            c.query_row("select sfld from notes where id = ?", [n], |r| r
                .get::<_, String>(0))
                .unwrap(),
            "x"
        );
    }

    #[test]
    fn merge_rule_for_notes_and_cards() {
        let c = db();
        // Server copy changed in this sync (usn 5 >= client usn 3), mod 100.
        apply_one(
            &c,
            &state(3, 5),
            vec![note(1, 100, "server\x1fx")],
            vec![card(1, 100, 1.0)],
        )
        .unwrap();
        let flds = |c: &Connection| {
            c.query_row("select flds from notes", [], |r| r.get::<_, String>(0))
                .unwrap()
        };
        let due = |c: &Connection| {
            c.query_row("select due from cards", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        // Same second: the server's (modified since the client's last sync) copy wins.
        apply_one(
            &c,
            &state(3, 5),
            vec![note(1, 100, "tie\x1fx")],
            vec![card(1, 100, 2.0)],
        )
        .unwrap();
        assert_eq!((flds(&c).as_str(), due(&c)), ("server\x1fx", 1));
        // Older incoming loses.
        apply_one(
            &c,
            &state(3, 5),
            vec![note(1, 99, "old\x1fx")],
            vec![card(1, 99, 3.0)],
        )
        .unwrap();
        assert_eq!(flds(&c), "server\x1fx");
        // Strictly newer incoming wins; floats are truncated, negative ivl clamped.
        apply_one(
            &c,
            &state(3, 5),
            vec![note(1, 101, "new\x1fx")],
            vec![card(1, 101, 4.9)],
        )
        .unwrap();
        assert_eq!((flds(&c).as_str(), due(&c)), ("new\x1fx", 4));
        assert_eq!(
            c.query_row("select ivl from cards", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );
        // Not modified since the client's last sync (usn 5 < 6): any incoming copy wins.
        apply_one(
            &c,
            &state(6, 7),
            vec![note(1, 50, "older but wins\x1fx")],
            vec![],
        )
        .unwrap();
        assert_eq!(flds(&c), "older but wins\x1fx");
    }

    #[test]
    fn revlog_is_insert_or_ignore() {
        let c = db();
        let st = state(0, 2);
        let entry = |ease: i64| json!([10, 1, 2, ease, 1, 0, -5, 3000.7, 9]);
        receive_json(&c, &st, json!({"revlog": [entry(3)]}), LIMITS).unwrap();
        receive_json(&c, &st, json!({"revlog": [entry(1)]}), LIMITS).unwrap();
        let (ease, factor, time, kind): (i64, i64, i64, i64) = c
            .query_row("select ease, factor, time, type from revlog", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((ease, factor, time, kind), (3, 0, 3000, 0));
    }

    #[test]
    fn a_chunk_with_more_rows_than_clients_send_is_refused() {
        let c = db();
        let notes: Vec<_> = (1..=MAX_ROWS_PER_CHUNK as i64 + 1)
            .map(|i| note(i, 1, "a\x1fb"))
            .collect();
        match receive_json(&c, &state(0, 1), json!({ "notes": notes }), LIMITS) {
            Err(DecodeError::Shape(m)) => assert!(m.contains("more than 500 rows"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_field_is_refused_with_a_clear_error() {
        let c = db();
        let big = format!("{}\x1fb", "x".repeat(10_000));
        let err = receive_json(
            &c,
            &state(0, 1),
            json!({ "notes": [note(1, 1, &big)] }),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(
            refused(&err),
            Some(Refusal::ItemTooLarge {
                what: "note row",
                limit: LIMITS.item
            })
        );
        assert!(
            err.to_string()
                .contains("one note row is larger than the limit of 4096 bytes"),
            "{err}"
        );
        // Within the limit it is stored.
        let limits = Limits {
            item: 64 * 1024,
            ..LIMITS
        };
        receive_json(
            &c,
            &state(0, 1),
            json!({ "notes": [note(1, 1, &big)] }),
            limits,
        )
        .unwrap();
    }

    #[test]
    fn a_large_chunk_is_merged_in_batches_as_it_arrives() {
        let c = db();
        let field = "y".repeat(1500);
        let notes: Vec<_> = (1..=300)
            .map(|i| note(i, 1, &format!("{i}{field}\x1fb")))
            .collect();
        let (rows, batches) = receive_json(
            &c,
            &state(0, 1),
            json!({ "done": false, "notes": notes }),
            LIMITS,
        )
        .unwrap();
        assert_eq!(rows, 300);
        assert!(batches >= 2, "{batches} batches");
        let stored: i64 = c
            .query_row("select count() from notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 300);
    }

    #[test]
    fn a_small_body_parsed_whole_merges_as_one_streamed() {
        let chunk = json!({
            "done": false,
            "notes": (1..=40).map(|i| note(i, 1, &format!("n{i}\x1fb"))).collect::<Vec<_>>(),
            "cards": (1..=40).map(|i| card(i, 1, i as f64)).collect::<Vec<_>>(),
            "revlog": [[5, 1, 0, 3, 4, 1, 2500, 6000, 1]],
        });
        let body = serde_json::to_vec(&json!({ "chunk": chunk }))
            .unwrap()
            .len() as u64;
        let dump = |c: &Connection| -> Vec<String> {
            ["notes", "cards", "revlog"]
                .iter()
                .flat_map(|table| {
                    let mut stmt = c
                        .prepare(&format!("select * from {table} order by id"))
                        .unwrap();
                    let width = stmt.column_count();
                    stmt.query_map([], |r| {
                        Ok((0..width)
                            .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                            .collect::<Vec<_>>()
                            .join("|"))
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
                })
                .collect()
        };
        // The item limit below the body's size makes it stream; above, the
        // body is read whole, and its batches are one per kind of row.
        let streamed = Limits {
            item: body - 1,
            ..LIMITS
        };
        let whole = Limits {
            item: body + 1,
            ..LIMITS
        };
        assert!(body <= decode::WHOLE_BODY_BYTES as u64);
        let (a, b) = (db(), db());
        assert_eq!(
            receive_json(&a, &state(0, 1), chunk.clone(), streamed)
                .unwrap()
                .0,
            81
        );
        assert_eq!(
            receive_json(&b, &state(0, 1), chunk, whole).unwrap(),
            (81, 3)
        );
        assert_eq!(dump(&a).len(), 81);
        assert_eq!(dump(&a), dump(&b));
    }

    #[test]
    fn malformed_chunks_are_refused_before_anything_is_merged() {
        let c = db();
        for (chunk, why) in [
            (json!({ "notes": null }), "null rows"),
            (json!({ "done": "yes" }), "done not a bool"),
            (
                json!({ "notes": [[1, "g", 7, 1, 1, "", "a\x1fb", "", "", 0]] }),
                "10 elements",
            ),
            (
                json!({ "cards": [["1", 1, 1, 0, 1, 5, 2, 2, 1, 1, 2500, 1, 0, 0, 0, 0, 0, "{}"]] }),
                "string id",
            ),
            (json!({ "revlog": [{"id": 1}] }), "object row"),
            // The row of ten million zeros, in small: refused at its second element.
            (json!({ "notes": [vec![0; 100_000]] }), "zeros"),
        ] {
            assert!(
                matches!(
                    receive_json(&c, &state(0, 1), chunk, LIMITS),
                    Err(DecodeError::Shape(_))
                ),
                "{why}"
            );
        }
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        let missing = receive(&br#"{"notes":[]}"#[..], &account, &mut |_| Ok(()));
        assert!(
            matches!(missing, Err(DecodeError::Shape(m)) if m.contains("missing field `chunk`"))
        );
        let stored: i64 = c
            .query_row("select count() from notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
    }
}
