//! Deletions ("graves") in both directions: `start` answers with the
//! server's deletions since the client's last sync, and `applyGraves` (or a
//! legacy `start` carrying graves) applies the client's. A deletion always
//! wins over an edit: no timestamps are compared.

use std::fmt;
use std::io::Read;

use rusqlite::{Connection, params};
use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::chunks::CHUNK_SIZE;
use super::decode::{self, Batcher, DecodeError, Field, Key, Nullable, Stash};
use crate::budget::Account;
use crate::error::SyncError;

const CARD: i64 = 0;
const NOTE: i64 = 1;
const DECK: i64 = 2;

/// Most ids one `applyGraves` may carry: clients send at most 250.
pub const MAX_IDS_PER_REQUEST: usize = 2 * CHUNK_SIZE;

/// Most ids a legacy `start` may carry before its `minUsn` and `lnewer`
/// (which every known client sends first): they are kept until the sync can
/// begin. After those keys, graves are applied as they arrive, any number.
const MAX_EARLY_IDS: usize = 100_000;

/// Ids of deleted cards, notes and decks.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
pub struct Graves {
    pub cards: Vec<i64>,
    pub notes: Vec<i64>,
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

/// Decodes an `applyGraves` body (`{"chunk": {"cards": [], "notes": [],
/// "decks": []}}`) as it streams in, handing its ids to `apply` in batches.
/// Returns the number of ids.
pub fn receive<R: Read>(
    body: R,
    account: &Account<'_>,
    apply: &mut dyn FnMut(&mut Graves) -> Result<(), SyncError>,
) -> Result<usize, DecodeError> {
    let stash = Stash::default();
    let mut ids = Batcher::new(account, &stash, apply).at_most(MAX_IDS_PER_REQUEST, "ids");
    decode::run(
        body,
        account,
        &stash,
        Field {
            name: "chunk",
            seed: GravesSeed(&mut ids),
            account,
        },
    )?;
    Ok(ids.total())
}

/// What `start` says before any graves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The client's `col.usn`: rows with `usn >= min_usn` are sent to it.
    pub min_usn: i32,
    /// The client's collection is newer: it sends the config.
    pub lnewer: bool,
}

/// Decodes a `start` body (`{"minUsn": 3, "lnewer": true, "graves": null}`)
/// as it streams in: calls `begin` once `minUsn` and `lnewer` are known and
/// before any graves are applied, then hands legacy clients' graves to
/// `apply` in batches. Returns the number of graves.
pub fn receive_start<R: Read>(
    body: R,
    account: &Account<'_>,
    begin: &mut dyn FnMut(Start) -> Result<(), SyncError>,
    apply: &mut dyn FnMut(&mut Graves) -> Result<(), SyncError>,
) -> Result<usize, DecodeError> {
    let stash = Stash::default();
    let mut ids = Batcher::new(account, &stash, apply);
    decode::run(
        body,
        account,
        &stash,
        StartSeed {
            ids: &mut ids,
            begin,
        },
    )?;
    Ok(ids.total())
}

struct StartSeed<'x, 'a, 'b> {
    ids: &'x mut Batcher<'a, 'b, Graves>,
    begin: &'x mut dyn FnMut(Start) -> Result<(), SyncError>,
}

impl<'de> DeserializeSeed<'de> for StartSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StartSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a start object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["minUsn", "lnewer", "graves"];
        let (mut min_usn, mut lnewer) = (None, None);
        let mut begun = false;
        loop {
            // Graves kept for a sync not yet begun may not be applied.
            self.ids.next_key(begun)?;
            let Some(key) = map.next_key_seed(Key(KEYS))? else {
                break;
            };
            match key {
                Some(0) => min_usn = Some(map.next_value::<i32>()?),
                Some(1) => lnewer = Some(map.next_value::<bool>()?),
                Some(2) => {
                    if let (Some(min_usn), Some(lnewer), false) = (min_usn, lnewer, begun) {
                        self.begin(min_usn, lnewer)?;
                        begun = true;
                    }
                    // Until the sync has begun, graves are held, not applied.
                    let held = !begun;
                    map.next_value_seed(Nullable(GravesSeed(&mut *self.ids).held(held)))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let min_usn = min_usn.ok_or_else(|| de::Error::missing_field("minUsn"))?;
        let lnewer = lnewer.ok_or_else(|| de::Error::missing_field("lnewer"))?;
        if !begun {
            self.begin(min_usn, lnewer)?;
        }
        self.ids.flush()
    }
}

impl StartSeed<'_, '_, '_> {
    fn begin<E: de::Error>(&mut self, min_usn: i32, lnewer: bool) -> Result<(), E> {
        (self.begin)(Start { min_usn, lnewer })
            .map_err(|e| self.ids.stash.fail(DecodeError::Apply(e)))
    }
}

/// The graves object: all three arrays are required, as upstream.
struct GravesSeed<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Graves>);

/// A graves object whose ids wait in the batch (at most
/// [`MAX_EARLY_IDS`]) instead of being applied.
struct HeldGraves<'x, 'a, 'b> {
    ids: &'x mut Batcher<'a, 'b, Graves>,
    held: bool,
}

impl<'x, 'a, 'b> GravesSeed<'x, 'a, 'b> {
    fn held(self, held: bool) -> HeldGraves<'x, 'a, 'b> {
        HeldGraves { ids: self.0, held }
    }
}

impl<'de> DeserializeSeed<'de> for GravesSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.held(false).deserialize(d)
    }
}

impl<'de> DeserializeSeed<'de> for HeldGraves<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeldGraves<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a graves object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["cards", "notes", "decks"];
        let mut seen = [false; 3];
        loop {
            self.ids.next_key(!self.held)?;
            let Some(key) = map.next_key_seed(Key(KEYS))? else {
                break;
            };
            let Some(kind) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            seen[kind] = true;
            map.next_value_seed(Ids {
                ids: &mut *self.ids,
                kind,
                held: self.held,
            })?;
        }
        if let Some(missing) = seen.iter().position(|seen| !seen) {
            return Err(de::Error::missing_field(KEYS[missing]));
        }
        if self.held { Ok(()) } else { self.ids.flush() }
    }
}

/// One array of ids; old clients send ids as numeric strings.
struct Ids<'x, 'a, 'b> {
    ids: &'x mut Batcher<'a, 'b, Graves>,
    /// 0 cards, 1 notes, 2 decks.
    kind: usize,
    held: bool,
}

impl<'de> DeserializeSeed<'de> for Ids<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Ids<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.ids.begin("id");
            let Some(id) = seq.next_element_seed(LenientId)? else {
                return Ok(());
            };
            let kind = self.kind;
            let put = |g: &mut Graves| match kind {
                0 => g.cards.push(id),
                1 => g.notes.push(id),
                _ => g.decks.push(id),
            };
            if self.held {
                if self.ids.waiting() >= MAX_EARLY_IDS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_EARLY_IDS} graves before minUsn and lnewer"
                    )));
                }
                self.ids.keep(put)?;
            } else {
                self.ids.add(put)?;
            }
        }
    }
}

/// An id as a number or a numeric string.
struct LenientId;

impl<'de> DeserializeSeed<'de> for LenientId {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LenientId {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id (a number or a numeric string)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("bad id {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("bad id {v:?}")))
    }
}

/// The server's graves with `usn >= min_usn`.
pub fn since(col: &Connection, min_usn: i32) -> Result<Graves, SyncError> {
    let mut graves = Graves::default();
    let mut stmt = col.prepare_cached("select oid, type from graves where usn >= ?")?;
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
    use crate::budget::Refusal;
    use crate::collection::decode::tests::{LIMITS, budget, refused};

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

    /// Decodes an `applyGraves` body, applying each batch with `usn`.
    fn receive_json(c: &Connection, body: &str, usn: i32) -> Result<usize, DecodeError> {
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        receive(body.as_bytes(), &account, &mut |g| apply(c, g, usn))
    }

    /// Decodes a `start` body: what `begin` got, and the graves in the
    /// order their batches came.
    fn start_json(body: &str) -> Result<(Vec<Start>, Graves), DecodeError> {
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        let begun = std::cell::RefCell::new(Vec::new());
        let mut graves = Graves::default();
        receive_start(
            body.as_bytes(),
            &account,
            &mut |start| {
                begun.borrow_mut().push(start);
                Ok(())
            },
            &mut |batch| {
                assert_eq!(
                    begun.borrow().len(),
                    1,
                    "graves are applied after begin only"
                );
                graves.cards.append(&mut batch.cards);
                graves.notes.append(&mut batch.notes);
                graves.decks.append(&mut batch.decks);
                Ok(())
            },
        )?;
        Ok((begun.into_inner(), graves))
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
        let body = r#"{"chunk":{"cards":[10,"11"],"notes":["1"],"decks":[5, 999]}}"#;
        assert_eq!(receive_json(&c, body, 7).unwrap(), 5);
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
        receive_json(&c, body, 8).unwrap();
        assert!(since(&c, 8).unwrap().cards.is_empty());
    }

    #[test]
    fn apply_graves_requires_its_keys_and_refuses_more_ids_than_clients_send() {
        let c = db();
        for bad in [
            r#"{"chunk":{"cards":[],"notes":[]}}"#,
            r#"{"chunk":{"cards":[1.5],"notes":[],"decks":[]}}"#,
            r#"{"chunk":{"cards":["x"],"notes":[],"decks":[]}}"#,
            r#"{"chunk":{"cards":[[1]],"notes":[],"decks":[]}}"#,
            r#"{"graves":{"cards":[],"notes":[],"decks":[]}}"#,
        ] {
            assert!(
                matches!(receive_json(&c, bad, 7), Err(DecodeError::Shape(_))),
                "{bad}"
            );
        }
        let ids = vec!["7"; MAX_IDS_PER_REQUEST + 1].join(",");
        let body = format!(r#"{{"chunk":{{"cards":[{ids}],"notes":[],"decks":[]}}}}"#);
        match receive_json(&c, &body, 7) {
            Err(DecodeError::Shape(m)) => assert!(m.contains("more than 500 ids"), "{m}"),
            other => panic!("{other:?}"),
        }
        let long = format!(r#"{{"chunk":{{"cards":["{}"]}}}}"#, "1".repeat(10_000));
        assert_eq!(
            refused(&receive_json(&c, &long, 7).unwrap_err()),
            Some(Refusal::ItemTooLarge {
                what: "id",
                limit: LIMITS.item
            })
        );
    }

    #[test]
    fn start_begins_before_its_graves_are_applied() {
        let (begun, graves) = start_json(r#"{"minUsn":3,"lnewer":true,"graves":null}"#).unwrap();
        assert_eq!(
            begun,
            [Start {
                min_usn: 3,
                lnewer: true
            }]
        );
        assert!(graves.is_empty());
        let (begun, graves) = start_json(r#"{"minUsn":3,"lnewer":false}"#).unwrap();
        assert_eq!(begun.len(), 1);
        assert!(graves.is_empty());
        // Legacy clients send any number of graves here, ids maybe as strings.
        let many = vec!["12"; 3000].join(",");
        let body = format!(
            r#"{{"minUsn":3,"lnewer":false,"graves":{{"cards":["1",2],"notes":[{many}],"decks":[]}}}}"#
        );
        let (begun, graves) = start_json(&body).unwrap();
        assert_eq!(begun.len(), 1);
        assert_eq!((graves.cards, graves.notes.len()), (vec![1, 2], 3000));
        // Graves before minUsn wait for it.
        let (begun, graves) = start_json(
            r#"{"graves":{"cards":[4],"notes":[],"decks":[]},"lnewer":true,"minUsn":1}"#,
        )
        .unwrap();
        assert_eq!(
            (begun, graves.cards),
            (
                vec![Start {
                    min_usn: 1,
                    lnewer: true
                }],
                vec![4]
            )
        );
    }

    #[test]
    fn start_requires_its_keys() {
        for bad in [
            r#"{"lnewer":true}"#,
            r#"{"minUsn":1}"#,
            r#"{"minUsn":1,"lnewer":1}"#,
            r#"{"minUsn":"1","lnewer":true}"#,
            r#"{"minUsn":1,"lnewer":true,"graves":{"cards":[]}}"#,
            r#"{"minUsn":1,"lnewer":true,"graves":[]}"#,
        ] {
            assert!(
                matches!(start_json(bad), Err(DecodeError::Shape(_))),
                "{bad}"
            );
        }
    }
}
