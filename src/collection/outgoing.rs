//! The server's changes since the client's last sync, sent in chunks of at
//! most 250 objects by `chunk` (collection-sync.md §6.5). Each row is
//! written to its wire form, a JSON array, straight from SQLite's columns:
//! no `String` per text column and no typed row in between (on 5k new notes
//! down, reading and serializing rows is half of the server's instructions).
//! A column whose type is not the wire form's is an error naming it, as
//! reading it into a typed row was. (SQLite's `json_array` was tried: it
//! turns every integer into text first and costs more.)

use std::sync::OnceLock;

use rusqlite::types::ValueRef;
use rusqlite::{CachedStatement, Connection};

use super::chunks::CHUNK_SIZE;
use super::state::{PendingIds, SyncState};
use crate::error::SyncError;

/// One chunk of the server's changes, rows already in their JSON form.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub done: bool,
    revlog: JsonRows,
    cards: JsonRows,
    notes: JsonRows,
}

/// Rows of one kind as the inside of a JSON array: `[..],[..]`.
#[derive(Debug, Default)]
struct JsonRows {
    json: Vec<u8>,
    count: usize,
}

impl JsonRows {
    /// Opens the next row's array; the caller writes it and closes it.
    fn start_row(&mut self) -> &mut Vec<u8> {
        if self.count > 0 {
            self.json.push(b',');
        }
        self.json.push(b'[');
        self.count += 1;
        &mut self.json
    }
}

impl Outgoing {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.revlog.count + self.cards.count + self.notes.count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk as clients read it: `done`, then each kind that has rows.
    pub fn into_json(self) -> Vec<u8> {
        let size = self.revlog.json.len() + self.cards.json.len() + self.notes.json.len();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(if self.done {
            b"{\"done\":true"
        } else {
            b"{\"done\":false"
        });
        for (key, rows) in [
            ("revlog", &self.revlog),
            ("cards", &self.cards),
            ("notes", &self.notes),
        ] {
            if rows.count > 0 {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":[");
                out.extend_from_slice(&rows.json);
                out.push(b']');
            }
        }
        out.push(b'}');
        out
    }
}

/// The next chunk of server changes. The ids to send are fixed at the first
/// call, after the client's graves and changes were applied.
pub fn next(col: &Connection, state: &mut SyncState) -> Result<Outgoing, SyncError> {
    if state.pending.is_none() {
        state.pending = Some(PendingIds {
            revlog: ids_since(col, "revlog", state.client_usn)?,
            cards: ids_since(col, "cards", state.client_usn)?,
            notes: ids_since(col, "notes", state.client_usn)?,
        });
    }
    let Some(pending) = state.pending.as_mut() else {
        return Ok(Outgoing {
            done: true,
            ..Outgoing::default()
        });
    };
    // Prepared once per chunk (not per row), as each row is one look-up.
    let mut revlog = col.prepare_cached(REVLOG.sql())?;
    let mut notes = col.prepare_cached(NOTES.sql())?;
    let mut cards = col.prepare_cached(CARDS.sql())?;
    let mut chunk = Outgoing::default();
    let mut taken = 0;
    // Round-robin, so each kind makes progress in every chunk.
    while taken < CHUNK_SIZE
        && !(pending.revlog.is_empty() && pending.notes.is_empty() && pending.cards.is_empty())
    {
        if let Some(id) = pending.revlog.pop() {
            push_row(&mut revlog, &REVLOG, id, &mut chunk.revlog)?;
            taken += 1;
        }
        if taken < CHUNK_SIZE {
            if let Some(id) = pending.notes.pop() {
                push_row(&mut notes, &NOTES, id, &mut chunk.notes)?;
                taken += 1;
            }
        }
        if taken < CHUNK_SIZE {
            if let Some(id) = pending.cards.pop() {
                push_row(&mut cards, &CARDS, id, &mut chunk.cards)?;
                taken += 1;
            }
        }
    }
    chunk.done = taken < CHUNK_SIZE;
    Ok(chunk)
}

fn ids_since(col: &Connection, table: &str, usn: i32) -> Result<Vec<i64>, SyncError> {
    let mut stmt = col.prepare_cached(&format!("select id from {table} where usn >= ?"))?;
    let ids = stmt
        .query_map([usn], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(ids)
}

/// Appends row `id` in its JSON form; a row deleted since the ids were
/// taken is skipped.
fn push_row(
    stmt: &mut CachedStatement<'_>,
    table: &RowJson,
    id: i64,
    rows: &mut JsonRows,
) -> Result<(), SyncError> {
    let mut found = stmt.query([id])?;
    let Some(row) = found.next()? else {
        return Ok(());
    };
    let out = rows.start_row();
    for (at, &(column, kind)) in table.columns.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        let written = match (kind, row.get_ref(at)?) {
            (Type::Integer, ValueRef::Integer(n)) => serde_json::to_writer(&mut *out, &n),
            (Type::Text, ValueRef::Text(bytes)) => {
                let Ok(text) = std::str::from_utf8(bytes) else {
                    return Err(SyncError::internal(format!(
                        "{} row {id} holds text that is not UTF-8 in {column}",
                        table.table
                    )));
                };
                serde_json::to_writer(&mut *out, text)
            }
            (_, other) => {
                return Err(SyncError::internal(format!(
                    "{} row {id} holds {} in {column}, not {}",
                    table.table,
                    other.data_type(),
                    kind.name()
                )));
            }
        };
        written.map_err(|e| SyncError::internal("writing a row").with_source(e))?;
    }
    out.extend_from_slice(table.constants.as_bytes());
    out.push(b']');
    Ok(())
}

/// How one table's rows are read for a chunk: its columns in wire order with
/// the SQLite type each must have, then the constants the wire form carries
/// after them (JSON text).
struct RowJson {
    table: &'static str,
    columns: &'static [(&'static str, Type)],
    constants: &'static str,
    sql: OnceLock<String>,
}

#[derive(Clone, Copy, Debug)]
enum Type {
    Integer,
    Text,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Integer => "integer",
            Type::Text => "text",
        }
    }
}

use Type::{Integer as I, Text as T};

static REVLOG: RowJson = RowJson {
    table: "revlog",
    columns: &[
        ("id", I),
        ("cid", I),
        ("usn", I),
        ("ease", I),
        ("ivl", I),
        ("lastIvl", I),
        ("factor", I),
        ("time", I),
        ("type", I),
    ],
    constants: "",
    sql: OnceLock::new(),
};

/// `sfld`, `csum`, `flags` and `data` travel as `""`, `""`, `0`, `""`.
static NOTES: RowJson = RowJson {
    table: "notes",
    columns: &[
        ("id", I),
        ("guid", T),
        ("mid", I),
        ("mod", I),
        ("usn", I),
        ("tags", T),
        ("flds", T),
    ],
    constants: r#","","",0,"""#,
    sql: OnceLock::new(),
};

static CARDS: RowJson = RowJson {
    table: "cards",
    columns: &[
        ("id", I),
        ("nid", I),
        ("did", I),
        ("ord", I),
        ("mod", I),
        ("usn", I),
        ("type", I),
        ("queue", I),
        ("due", I),
        ("ivl", I),
        ("factor", I),
        ("reps", I),
        ("lapses", I),
        ("left", I),
        ("odue", I),
        ("odid", I),
        ("flags", I),
        ("data", T),
    ],
    constants: "",
    sql: OnceLock::new(),
};

impl RowJson {
    fn sql(&self) -> &str {
        self.sql.get_or_init(|| {
            let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
            format!(
                "select {} from {} where id = ?",
                names.join(", "),
                self.table
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::collection::chunks::tests::{apply_one, card, db, note, state};
    use crate::error::Kind;

    fn parsed(chunk: Outgoing) -> Value {
        serde_json::from_slice(&chunk.into_json()).expect("a chunk is valid JSON")
    }

    fn rows(chunk: &Value, kind: &str) -> usize {
        chunk
            .get(kind)
            .map_or(0, |rows| rows.as_array().unwrap().len())
    }

    #[test]
    fn chunks_hold_at_most_250_and_end_with_done() {
        let c = db();
        let st_apply = state(0, 1);
        for part in [1..=150, 151..=300] {
            let notes: Vec<_> = part.clone().map(|i| note(i, 1, "a\x1fb")).collect();
            let cards: Vec<_> = part.map(|i| card(i, 1, 0.0)).collect();
            apply_one(&c, &st_apply, notes, cards).unwrap();
        }
        let mut st = state(1, 2);
        let sizes: Vec<(usize, usize, bool)> = (0..4)
            .map(|_| {
                let ch = next(&c, &mut st).unwrap();
                let len = ch.len();
                let ch = parsed(ch);
                assert_eq!(rows(&ch, "notes") + rows(&ch, "cards"), len);
                (
                    rows(&ch, "notes"),
                    rows(&ch, "cards"),
                    ch["done"] == json!(true),
                )
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
        // Nothing changed since usn 2: an empty, final chunk without row keys.
        let empty = next(&c, &mut state(2, 2)).unwrap();
        assert_eq!(empty.into_json(), br#"{"done":true}"#);
    }

    #[test]
    fn exactly_250_pending_objects_need_a_final_empty_chunk() {
        let c = db();
        let notes: Vec<_> = (1..=250).map(|i| note(i, 1, "a\x1fb")).collect();
        apply_one(&c, &state(0, 1), notes, vec![]).unwrap();
        let mut st = state(1, 2);
        assert!(!next(&c, &mut st).unwrap().done);
        let last = next(&c, &mut st).unwrap();
        assert!(last.done && last.is_empty());
    }

    /// Every row as the wire form has it, built from the stored columns.
    fn expected(c: &Connection) -> Value {
        let all = |sql: &str, row: &dyn Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Value>| {
            let mut stmt = c.prepare(sql).unwrap();
            let rows: Vec<Value> = stmt
                .query_map([], |r| row(r))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            Value::Array(rows)
        };
        let ints = |r: &rusqlite::Row<'_>, n: usize| -> Vec<Value> {
            (0..n).map(|i| json!(r.get::<_, i64>(i).unwrap())).collect()
        };
        json!({
            "revlog": all("select * from revlog order by id", &|r| Ok(Value::Array(ints(r, 9)))),
            "cards": all("select id, nid, did, ord, mod, usn, type, queue, due, ivl, factor, \
                          reps, lapses, left, odue, odid, flags, data from cards order by id",
                &|r| {
                    let mut row = ints(r, 17);
                    row.push(json!(r.get::<_, String>(17)?));
                    Ok(Value::Array(row))
                }),
            "notes": all("select id, guid, mid, mod, usn, tags, flds from notes order by id", &|r| {
                Ok(json!([r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?, r.get::<_, i64>(4)?, r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?, "", "", 0, ""]))
            }),
        })
    }

    #[test]
    fn rows_are_sent_in_their_wire_form_whatever_their_text() {
        let c = db();
        let texts = [
            "plain\x1fback",
            "quote \" backslash \\ slash /\x1f",
            "new\nline\ttab\x1f\u{7f} é 日本 😀 \u{2028}",
            "\x1f",
        ];
        let notes: Vec<_> = texts.iter().zip(1..).map(|(t, i)| note(i, 1, t)).collect();
        let cards: Vec<_> = (1..=3).map(|i| card(i, 1, -(i as f64) * 1000.0)).collect();
        apply_one(&c, &state(0, 1), notes, cards).unwrap();
        c.execute_batch(
            "update cards set data = '{\"pos\":3,\"cd\":\"\\\"x\\\"\"}' where id = 2;
             insert into revlog values (9, 1, 1, 3, -600, 1, 2500, 4200, 1),
                                       (10, 2, 1, 1, 1, -60, 0, 0, 0);",
        )
        .unwrap();
        let mut st = state(1, 2);
        let mut got = json!({"revlog": [], "cards": [], "notes": []});
        loop {
            let chunk = next(&c, &mut st).unwrap();
            let done = chunk.done;
            let chunk = parsed(chunk);
            for kind in ["revlog", "cards", "notes"] {
                if let Some(rows) = chunk.get(kind) {
                    got[kind]
                        .as_array_mut()
                        .unwrap()
                        .extend(rows.as_array().unwrap().iter().cloned());
                }
            }
            if done {
                break;
            }
        }
        for kind in ["revlog", "cards", "notes"] {
            got[kind]
                .as_array_mut()
                .unwrap()
                .sort_by_key(|row| row[0].as_i64().unwrap());
        }
        let want = expected(&c);
        assert_eq!(want["notes"].as_array().unwrap().len(), 4);
        assert_eq!(want["revlog"].as_array().unwrap().len(), 2);
        assert_eq!(got, want);
    }

    #[test]
    fn a_row_whose_columns_have_other_types_is_an_error_naming_it() {
        for (change, named) in [
            ("update cards set due = 1.5 where id = 1", "cards row 1 "),
            ("update cards set data = x'00' where id = 1", "cards row 1 "),
            ("update notes set tags = x'07' where id = 1", "notes row 1 "),
            ("update notes set guid = x'05' where id = 1", "notes row 1 "),
            (
                "update notes set flds = cast(x'61ff62' as text) where id = 1",
                "notes row 1 holds text that is not UTF-8",
            ),
            (
                "insert into revlog values (3, 1, 1, 3, 1.5, 1, 2500, 4200, 1)",
                "revlog row 3 ",
            ),
        ] {
            let c = db();
            apply_one(
                &c,
                &state(0, 1),
                vec![note(1, 1, "a\x1fb")],
                vec![card(1, 1, 0.0)],
            )
            .unwrap();
            c.execute_batch(change).unwrap();
            let err = next(&c, &mut state(1, 2)).unwrap_err();
            assert_eq!(err.kind(), Kind::Internal, "{change}");
            assert!(err.context().starts_with(named), "{change}: {err}");
        }
    }
}
