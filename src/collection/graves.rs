//! Deletions ("graves") in both directions: `start` answers with the
//! server's deletions since the client's last sync, and `applyGraves` (or a
//! legacy `start` carrying graves) applies the client's. A deletion always
//! wins over an edit: no timestamps are compared.

use rusqlite::{Connection, params};
use serde::{Deserialize, Deserializer, Serialize};

use super::SyncError;

const CARD: i64 = 0;
const NOTE: i64 = 1;
const DECK: i64 = 2;

/// Ids of deleted cards, notes and decks. Old clients may send ids as
/// numeric strings; both forms are accepted.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq, Eq)]
pub struct Graves {
    #[serde(deserialize_with = "lenient_ids")]
    pub cards: Vec<i64>,
    #[serde(deserialize_with = "lenient_ids")]
    pub notes: Vec<i64>,
    #[serde(deserialize_with = "lenient_ids")]
    pub decks: Vec<i64>,
}

impl Graves {
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.cards.len() + self.notes.len() + self.decks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LenientId {
    Num(i64),
    Str(String),
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<LenientId>::deserialize(d)?
        .into_iter()
        .map(|id| match id {
            LenientId::Num(n) => Ok(n),
            LenientId::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("bad id {s:?}"))),
        })
        .collect()
}

#[derive(Deserialize, Debug)]
pub struct StartRequest {
    #[serde(rename = "minUsn")]
    pub min_usn: i32,
    pub lnewer: bool,
    /// Legacy clients send their deletions here instead of `applyGraves`.
    #[serde(default)]
    pub graves: Option<Graves>,
}

#[derive(Deserialize, Debug)]
pub struct ApplyGravesRequest {
    pub chunk: Graves,
}

/// The server's graves with `usn >= min_usn`.
pub fn since(col: &Connection, min_usn: i32) -> Result<Graves, SyncError> {
    let mut graves = Graves::default();
    let mut stmt = col.prepare("select oid, type from graves where usn >= ?")?;
    let rows = stmt.query_map([min_usn], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (oid, kind) = row?;
        match kind {
            CARD => graves.cards.push(oid),
            NOTE => graves.notes.push(oid),
            DECK => graves.decks.push(oid),
            _ => {}
        }
    }
    Ok(graves)
}

/// Deletes what the client deleted and records the graves with `usn`.
/// Notes first, then cards, then decks (only the deck row: the client sends
/// graves for the cards it deleted with a deck).
pub fn apply(col: &Connection, graves: &Graves, usn: i32) -> Result<(), SyncError> {
    let mut grave =
        col.prepare_cached("insert or ignore into graves (oid, type, usn) values (?, ?, ?)")?;
    for (table, kind, ids) in [
        ("notes", NOTE, &graves.notes),
        ("cards", CARD, &graves.cards),
        ("decks", DECK, &graves.decks),
    ] {
        let mut delete = col.prepare_cached(&format!("delete from {table} where id = ?"))?;
        for &id in ids {
            delete.execute([id])?;
            grave.execute(params![id, kind, usn])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "create table graves (oid integer not null, type integer not null, usn integer not null,
                 primary key (oid, type)) without rowid;
             create table notes (id integer primary key);
             create table cards (id integer primary key);
             create table decks (id integer primary key);
             insert into notes values (1), (2); insert into cards values (10), (11);
             insert into decks values (5);
             insert into graves values (100, 0, 3), (101, 1, 4), (102, 2, 5), (103, 0, 2);",
        )
        .unwrap();
        c
    }

    #[test]
    fn selects_graves_since_min_usn() {
        let g = since(&db(), 3).unwrap();
        assert_eq!(
            g,
            Graves {
                cards: vec![100],
                notes: vec![101],
                decks: vec![102]
            }
        );
        let json = serde_json::to_string(&since(&db(), 9).unwrap()).unwrap();
        assert_eq!(json, r#"{"cards":[],"notes":[],"decks":[]}"#);
    }

    #[test]
    fn applying_deletes_and_records() {
        let c = db();
        let g: Graves =
            serde_json::from_str(r#"{"cards":[10,"11"],"notes":["1"],"decks":[5, 999]}"#).unwrap();
        apply(&c, &g, 7).unwrap();
        let count = |t: &str| {
            c.query_row(&format!("select count(*) from {t}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        };
        assert_eq!((count("notes"), count("cards"), count("decks")), (1, 0, 0));
        assert_eq!(since(&c, 7).unwrap().cards, vec![10, 11]);
        assert_eq!(since(&c, 7).unwrap().decks, vec![5, 999]);
        // A repeated grave keeps its first usn.
        apply(&c, &g, 8).unwrap();
        assert!(since(&c, 8).unwrap().cards.is_empty());
    }

    #[test]
    fn start_accepts_legacy_graves_and_requires_its_keys() {
        let s: StartRequest =
            serde_json::from_str(r#"{"minUsn":3,"lnewer":true,"graves":null}"#).unwrap();
        assert!(s.graves.is_none());
        let s: StartRequest = serde_json::from_str(
            r#"{"minUsn":3,"lnewer":false,"graves":{"cards":["1"],"notes":[],"decks":[]}}"#,
        )
        .unwrap();
        assert_eq!(s.graves.unwrap().cards, vec![1]);
        assert!(serde_json::from_str::<StartRequest>(r#"{"lnewer":true}"#).is_err());
        assert!(
            serde_json::from_str::<StartRequest>(
                r#"{"minUsn":1,"lnewer":true,"graves":{"cards":[]}}"#
            )
            .is_err()
        );
    }
}
