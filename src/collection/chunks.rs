//! Notes, cards and review-log entries in both directions, in chunks of at
//! most 250 objects: `chunk` sends the server's changes since the client's
//! last sync, `applyChunk` merges the client's. Rows travel as positional
//! JSON arrays (collection-sync.md §6.5).

use std::collections::HashMap;

use prost::Message;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SyncError;
use super::notetext;
use super::state::{PendingIds, SyncState};
use crate::storage::proto::notetypes::notetype;

/// Objects per chunk.
pub const CHUNK_SIZE: usize = 250;

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Chunk {
    pub done: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revlog: Vec<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Vec<Value>>,
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

#[derive(Deserialize, Debug)]
pub struct ApplyChunkRequest {
    pub chunk: Chunk,
}

/// The next chunk of server changes. The ids to send are fixed at the first
/// call, after the client's graves and changes were applied.
pub fn next(col: &Connection, state: &mut SyncState) -> Result<Chunk, SyncError> {
    if state.pending.is_none() {
        state.pending = Some(PendingIds {
            revlog: ids_since(col, "revlog", state.client_usn)?,
            cards: ids_since(col, "cards", state.client_usn)?,
            notes: ids_since(col, "notes", state.client_usn)?,
        });
    }
    let Some(pending) = state.pending.as_mut() else {
        return Ok(Chunk {
            done: true,
            ..Chunk::default()
        });
    };
    let mut chunk = Chunk::default();
    let mut taken = 0;
    // Round-robin, so each kind makes progress in every chunk.
    while taken < CHUNK_SIZE
        && !(pending.revlog.is_empty() && pending.notes.is_empty() && pending.cards.is_empty())
    {
        if let Some(id) = pending.revlog.pop() {
            if let Some(row) = revlog_row(col, id)? {
                chunk.revlog.push(row);
            }
            taken += 1;
        }
        if taken < CHUNK_SIZE {
            if let Some(id) = pending.notes.pop() {
                if let Some(row) = note_row(col, id)? {
                    chunk.notes.push(row);
                }
                taken += 1;
            }
        }
        if taken < CHUNK_SIZE {
            if let Some(id) = pending.cards.pop() {
                if let Some(row) = card_row(col, id)? {
                    chunk.cards.push(row);
                }
                taken += 1;
            }
        }
    }
    chunk.done = taken < CHUNK_SIZE;
    Ok(chunk)
}

fn ids_since(col: &Connection, table: &str, usn: i32) -> Result<Vec<i64>, SyncError> {
    let mut stmt = col.prepare(&format!("select id from {table} where usn >= ?"))?;
    let ids = stmt
        .query_map([usn], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(ids)
}

fn revlog_row(col: &Connection, id: i64) -> Result<Option<Vec<Value>>, SyncError> {
    let mut stmt = col.prepare_cached(
        "select id, cid, usn, ease, ivl, lastIvl, factor, time, type from revlog where id = ?",
    )?;
    Ok(stmt
        .query_row([id], |r| {
            (0..9)
                .map(|i| r.get::<_, i64>(i).map(Value::from))
                .collect::<Result<Vec<_>, _>>()
        })
        .optional()?)
}

fn note_row(col: &Connection, id: i64) -> Result<Option<Vec<Value>>, SyncError> {
    let mut stmt =
        col.prepare_cached("select id, guid, mid, mod, usn, tags, flds from notes where id = ?")?;
    Ok(stmt
        .query_row([id], |r| {
            Ok(vec![
                json!(r.get::<_, i64>(0)?),
                json!(r.get::<_, String>(1)?),
                json!(r.get::<_, i64>(2)?),
                json!(r.get::<_, i64>(3)?),
                json!(r.get::<_, i64>(4)?),
                json!(r.get::<_, String>(5)?),
                json!(r.get::<_, String>(6)?),
                json!(""),
                json!(""),
                json!(0),
                json!(""),
            ])
        })
        .optional()?)
}

fn card_row(col: &Connection, id: i64) -> Result<Option<Vec<Value>>, SyncError> {
    let mut stmt = col.prepare_cached(
        "select id, nid, did, ord, mod, usn, type, queue, due, ivl, factor, reps, lapses, left,
                odue, odid, flags, data from cards where id = ?",
    )?;
    Ok(stmt
        .query_row([id], |r| {
            let mut row = (0..17)
                .map(|i| r.get::<_, i64>(i).map(Value::from))
                .collect::<Result<Vec<_>, _>>()?;
            row.push(json!(r.get::<_, String>(17)?));
            Ok(row)
        })
        .optional()?)
}

/// Merges a chunk from the client: revlog, then cards, then notes. Each
/// kind's winning rows are written with a few multi-row statements (see
/// [`Rows`]).
pub fn apply(col: &Connection, state: &SyncState, chunk: &Chunk) -> Result<(), SyncError> {
    let mut revlog = Rows::new(REVLOG_INSERT, 9);
    for row in &chunk.revlog {
        revlog.add_all(revlog_values(row, state.server_usn)?);
    }
    revlog.write(col)?;
    let mut cards = Rows::new(CARD_INSERT, 18);
    for row in &chunk.cards {
        if let Some((id, modified, values)) = card_values(col, row, state, &cards)? {
            cards.merge(id, modified, values);
        }
    }
    cards.write(col)?;
    let mut notes = Rows::new(NOTE_INSERT, 11);
    let mut notetypes = NotetypeCache::default();
    for row in &chunk.notes {
        if let Some((id, modified, values)) = note_values(col, row, state, &notes, &mut notetypes)?
        {
            notes.merge(id, modified, values);
        }
    }
    notes.write(col)
}

const REVLOG_INSERT: &str =
    "insert or ignore into revlog (id, cid, usn, ease, ivl, lastIvl, factor, time, type) values ";
const CARD_INSERT: &str = "insert or replace into cards (id, nid, did, ord, mod, usn, type, \
     queue, due, ivl, factor, reps, lapses, left, odue, odid, flags, data) values ";
const NOTE_INSERT: &str = "insert or replace into notes (id, guid, mid, mod, usn, tags, flds, sfld, csum, flags, data) \
     values ";

/// Rows per insert statement. Inside the sync's transaction every insert
/// that may fail keeps a statement journal: a copy of each page it changes.
/// One row per statement copied the same leaf and index pages over and over
/// (a fifth of a large sync's instructions); a statement of many rows
/// copies each page once. A prepared statement grows with its rows (about
/// 5 KB each) and stays in the connection's statement cache, so this is
/// kept small: 25 rows already copy each page far fewer times, and divide a
/// full chunk of 250.
const ROWS_PER_STATEMENT: usize = 25;

/// The rows of one table a chunk writes, in arrival order.
struct Rows {
    insert: &'static str,
    width: usize,
    values: Vec<SqlValue>,
    /// id → (row index, mod) of the winning row so far, for ids met twice.
    index: HashMap<i64, (usize, i64)>,
}

impl Rows {
    fn new(insert: &'static str, width: usize) -> Rows {
        Rows {
            insert,
            width,
            values: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn add_all(&mut self, row: Vec<SqlValue>) {
        debug_assert_eq!(row.len(), self.width);
        self.values.extend(row);
    }

    /// The `mod` of the row already waiting for `id`, if any.
    fn pending_mod(&self, id: i64) -> Option<i64> {
        self.index.get(&id).map(|&(_, modified)| modified)
    }

    /// Adds a winning row; for an id already waiting it replaces that row,
    /// as a second statement would have replaced the first's row.
    fn merge(&mut self, id: i64, modified: i64, row: Vec<SqlValue>) {
        debug_assert_eq!(row.len(), self.width);
        match self.index.get_mut(&id) {
            Some((at, pending)) => {
                let start = *at * self.width;
                self.values.splice(start..start + self.width, row);
                *pending = modified;
            }
            None => {
                self.index
                    .insert(id, (self.values.len() / self.width, modified));
                self.values.extend(row);
            }
        }
    }

    /// Full groups of [`ROWS_PER_STATEMENT`] rows with one statement, the
    /// rest (none for a full chunk of 250) one row at a time: both
    /// statements stay prepared in the connection's cache.
    fn write(self, col: &Connection) -> Result<(), SyncError> {
        let group = self.width * ROWS_PER_STATEMENT;
        let full = self.values.len() / group * group;
        let (groups, rest) = self.values.split_at(full);
        for (values, rows) in [(groups, ROWS_PER_STATEMENT), (rest, 1)] {
            if values.is_empty() {
                continue;
            }
            let one = format!("({})", vec!["?"; self.width].join(", "));
            let sql = format!("{}{}", self.insert, vec![one; rows].join(", "));
            let mut statement = col.prepare_cached(&sql)?;
            for params in values.chunks(self.width * rows) {
                statement.execute(rusqlite::params_from_iter(params))?;
            }
        }
        Ok(())
    }
}

/// A row element as an integer; floats are truncated, as upstream accepts them.
fn int(row: &[Value], i: usize, what: &str) -> Result<i64, SyncError> {
    match row.get(i) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| bad(what, i)),
        _ => Err(bad(what, i)),
    }
}

fn text<'a>(row: &'a [Value], i: usize, what: &str) -> Result<&'a str, SyncError> {
    row.get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(what, i))
}

fn bad(what: &str, i: usize) -> SyncError {
    SyncError::BadRequest(format!(
        "{what} row: element {i} is missing or has the wrong type"
    ))
}

fn revlog_values(row: &[Value], usn: i32) -> Result<Vec<SqlValue>, SyncError> {
    let w = "revlog";
    let kind = int(row, 8, w).unwrap_or(0);
    let kind = if (0..=5).contains(&kind) { kind } else { 0 };
    Ok(vec![
        int(row, 0, w)?.into(),
        int(row, 1, w)?.into(),
        i64::from(usn).into(),
        int(row, 3, w)?.into(),
        int(row, 4, w)?.into(),
        int(row, 5, w)?.into(),
        int(row, 6, w)?.max(0).into(),
        int(row, 7, w)?.max(0).into(),
        kind.into(),
    ])
}

/// The merge rule for notes and cards: take the incoming copy unless ours
/// changed since the client's last sync and is at least as new.
/// A row of this chunk already waiting for `id` counts as ours, written in
/// this sync.
fn incoming_wins(
    col: &Connection,
    table: &str,
    id: i64,
    incoming_mod: i64,
    client_usn: i32,
    pending: &Rows,
) -> Result<bool, SyncError> {
    if let Some(modified) = pending.pending_mod(id) {
        return Ok(incoming_mod > modified);
    }
    let existing: Option<(i64, i64)> = col
        .prepare_cached(&format!("select usn, mod from {table} where id = ?"))?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match existing {
        None => true,
        Some((usn, modified)) => usn < i64::from(client_usn) || incoming_mod > modified,
    })
}

/// A card that wins the merge: (id, mod, the values to insert).
type Winner = Option<(i64, i64, Vec<SqlValue>)>;

fn card_values(
    col: &Connection,
    row: &[Value],
    state: &SyncState,
    pending: &Rows,
) -> Result<Winner, SyncError> {
    let w = "card";
    let id = int(row, 0, w)?;
    let modified = int(row, 4, w)?;
    if !incoming_wins(col, "cards", id, modified, state.client_usn, pending)? {
        return Ok(None);
    }
    let values = vec![
        id.into(),
        int(row, 1, w)?.into(),
        int(row, 2, w)?.into(),
        int(row, 3, w)?.into(),
        modified.into(),
        i64::from(state.server_usn).into(),
        int(row, 6, w)?.into(),
        int(row, 7, w)?.into(),
        int(row, 8, w)?.into(),
        int(row, 9, w)?.max(0).into(),
        int(row, 10, w)?.into(),
        int(row, 11, w)?.into(),
        int(row, 12, w)?.into(),
        int(row, 13, w)?.into(),
        int(row, 14, w)?.into(),
        int(row, 15, w)?.into(),
        int(row, 16, w)?.into(),
        text(row, 17, w)?.to_string().into(),
    ];
    Ok(Some((id, modified, values)))
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
            return Err(SyncError::BadRequest(format!(
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

fn note_values(
    col: &Connection,
    row: &[Value],
    state: &SyncState,
    pending: &Rows,
    notetypes: &mut NotetypeCache,
) -> Result<Winner, SyncError> {
    let w = "note";
    let id = int(row, 0, w)?;
    let modified = int(row, 3, w)?;
    if !incoming_wins(col, "notes", id, modified, state.client_usn, pending)? {
        return Ok(None);
    }
    let mid = int(row, 2, w)?;
    let (field_count, sort_idx) = notetypes.get(col, mid)?;
    let fields: Vec<String> = text(row, 6, w)?
        .split('\x1f')
        .map(notetext::clean_field)
        .collect();
    if fields.len() != field_count {
        return Err(SyncError::BadRequest(format!(
            "note {id} has {} fields, its notetype {mid} has {field_count}",
            fields.len()
        )));
    }
    let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
    let sfld = notetext::sort_field(&field_refs, sort_idx);
    let csum = notetext::checksum(field_refs[0]);
    let values = vec![
        id.into(),
        text(row, 1, w)?.to_string().into(),
        mid.into(),
        modified.into(),
        i64::from(state.server_usn).into(),
        join_tags(text(row, 5, w)?).into(),
        fields.join("\x1f").into(),
        sfld.into(),
        i64::from(csum).into(),
        0i64.into(),
        String::new().into(),
    ];
    Ok(Some((id, modified, values)))
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
mod tests {
    use super::*;
    use crate::storage::schema::SCHEMA18_DDL;

    fn db() -> Connection {
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

    fn state(client_usn: i32, server_usn: i32) -> SyncState {
        SyncState {
            session: "s".into(),
            server_usn,
            client_usn,
            client_is_newer: false,
            pending: None,
            sent: 0,
            received: 0,
            started: std::time::Instant::now(),
        }
    }

    fn note(id: i64, modified: i64, flds: &str) -> Vec<Value> {
        serde_json::from_value(json!([
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
        ]))
        .unwrap()
    }

    fn card(id: i64, modified: i64, due: f64) -> Vec<Value> {
        serde_json::from_value(json!([
            id, 1, 1, 0, modified, 5, 2, 2, due, -3, 2500, 1, 0, 0, 0, 0, 0, "{}"
        ]))
        .unwrap()
    }

    fn apply_one(
        c: &Connection,
        st: &SyncState,
        notes: Vec<Vec<Value>>,
        cards: Vec<Vec<Value>>,
    ) -> Result<(), SyncError> {
        apply(
            c,
            st,
            &Chunk {
                done: true,
                revlog: vec![],
                cards,
                notes,
            },
        )
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
            Err(SyncError::BadRequest(_))
        ));
        assert!(matches!(
            apply_one(&c, &state(0, 1), vec![note(1, 1, "only one")], vec![]),
            Err(SyncError::BadRequest(_))
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
    fn chunks_longer_than_one_statement_write_every_row() {
        let c = db();
        let count = ROWS_PER_STATEMENT * 2 + 7;
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
        let entry = |ease: i64| -> Vec<Value> {
            serde_json::from_value(json!([10, 1, 2, ease, 1, 0, -5, 3000.7, 9])).unwrap()
        };
        apply(
            &c,
            &st,
            &Chunk {
                done: true,
                revlog: vec![entry(3)],
                ..Chunk::default()
            },
        )
        .unwrap();
        apply(
            &c,
            &st,
            &Chunk {
                done: true,
                revlog: vec![entry(1)],
                ..Chunk::default()
            },
        )
        .unwrap();
        let (ease, factor, time, kind): (i64, i64, i64, i64) = c
            .query_row("select ease, factor, time, type from revlog", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((ease, factor, time, kind), (3, 0, 3000, 0));
    }

    #[test]
    fn chunks_hold_at_most_250_and_end_with_done() {
        let c = db();
        let st_apply = state(0, 1);
        let notes: Vec<_> = (1..=300).map(|i| note(i, 1, "a\x1fb")).collect();
        let cards: Vec<_> = (1..=300).map(|i| card(i, 1, 0.0)).collect();
        apply_one(&c, &st_apply, notes, cards).unwrap();
        let mut st = state(1, 2);
        let sizes: Vec<(usize, usize, bool)> = (0..4)
            .map(|_| {
                let ch = next(&c, &mut st).unwrap();
                (ch.notes.len(), ch.cards.len(), ch.done)
            })
            .collect();
        assert_eq!(
            sizes,
            [
                (125, 125, false),
                (125, 125, false),
                (50, 50, true),
                (0, 0, true)
            ]
        );
        let first = next(&c, &mut state(1, 2)).unwrap();
        let row = &first.notes[0];
        assert_eq!(row.len(), 11);
        assert_eq!(row[7], json!(""));
        assert_eq!(first.cards[0].len(), 18);
        // Nothing changed since usn 2: an empty, final chunk without row keys.
        let empty = next(&c, &mut state(2, 2)).unwrap();
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"done":true}"#);
    }

    #[test]
    fn exactly_250_pending_objects_need_a_final_empty_chunk() {
        let c = db();
        let notes: Vec<_> = (1..=250).map(|i| note(i, 1, "a\x1fb")).collect();
        apply_one(&c, &state(0, 1), notes, vec![]).unwrap();
        let mut st = state(1, 2);
        assert!(!next(&c, &mut st).unwrap().done);
        let last = next(&c, &mut st).unwrap();
        assert!(last.done && last.notes.is_empty());
    }
}
