//! `applyChanges`: the objects that are not chunked — notetypes, decks,
//! deck configs, tags, and (from the side whose collection is newer) the
//! whole config table and `crt`. The server's answer is built before the
//! client's changes are applied, so the client never gets its own changes
//! back; the client's are decoded and applied in batches as they stream in.

use std::fmt;
use std::io::Read;

use rusqlite::{Connection, OptionalExtension, params};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

use super::decode::{
    self, Batcher, DecodeError, Field, Int, Json, Key, Nullable, Stash, Text, TreeBudget,
};
use super::state::SyncState;
use crate::budget::Account;
use crate::error::SyncError;
use crate::storage::schema11::{self, ConvertError};

/// The server's answer (and, in tests, a client's changes).
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
pub struct UnchunkedChanges {
    #[serde(rename = "models", default)]
    pub notetypes: Vec<Value>,
    /// `[decks, deck configs]`.
    #[serde(default)]
    pub decks: (Vec<Value>, Vec<Value>),
    #[serde(default)]
    pub tags: Vec<String>,
    /// The whole config table, only from the newer side. Omitted, never
    /// `{}`: an empty object would wipe the other side's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<i64>,
}

impl UnchunkedChanges {
    /// Number of objects (the config counts as one).
    pub fn len(&self) -> usize {
        self.notetypes.len()
            + self.decks.0.len()
            + self.decks.1.len()
            + self.tags.len()
            + usize::from(self.conf.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One incoming change, in the order the client sent it.
#[derive(Debug, PartialEq)]
pub enum Change {
    Notetype(Value),
    Deck(Value),
    DeckConfig(Value),
    Tag(String),
    Crt(i64),
    /// The config table is replaced: its entries follow.
    ConfigReplaced,
    /// One config entry: key and JSON text.
    Config(String, Vec<u8>),
}

impl From<ConvertError> for SyncError {
    fn from(e: ConvertError) -> Self {
        match e {
            ConvertError::Db(e) => e.into(),
            other => SyncError::bad_request(other.to_string()),
        }
    }
}

/// Decodes an `applyChanges` body (`{"changes": {...}}`) as it streams in,
/// handing its objects to `apply` in batches, in the order they came.
/// Returns the number of objects (the config counts as one).
pub fn receive<R: Read>(
    body: R,
    account: &Account<'_>,
    apply: &mut dyn FnMut(&mut Vec<Change>) -> Result<(), SyncError>,
) -> Result<usize, DecodeError> {
    let stash = Stash::default();
    let mut objects = 0;
    let mut counted = |batch: &mut Vec<Change>| {
        objects += batch.iter().filter(|c| c.is_object()).count();
        apply(batch)
    };
    let mut changes = Batcher::new(account, &stash, &mut counted);
    decode::run(
        body,
        account,
        &stash,
        Field {
            name: "changes",
            seed: ChangesSeed(&mut changes),
            account,
        },
    )?;
    drop(changes);
    Ok(objects)
}

impl Change {
    /// Whether this counts as an object for the sync's summary (the config
    /// table counts as one).
    pub fn is_object(&self) -> bool {
        !matches!(self, Change::Crt(_) | Change::Config(..))
    }
}

struct ChangesSeed<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Vec<Change>>);

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of unchunked changes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["models", "decks", "tags", "conf", "crt"];
        loop {
            self.0.next_key(true)?;
            let Some(key) = map.next_key_seed(Key(KEYS))? else {
                break;
            };
            match key {
                Some(0) => map.next_value_seed(Objects {
                    changes: &mut *self.0,
                    kind: ObjectKind::Notetype,
                })?,
                Some(1) => map.next_value_seed(DecksAndConfigs(&mut *self.0))?,
                Some(2) => map.next_value_seed(Tags(&mut *self.0))?,
                Some(3) => {
                    map.next_value_seed(Nullable(ConfigTable(&mut *self.0)))?;
                }
                Some(4) => {
                    if let Some(crt) = map.next_value_seed(Nullable(Int))? {
                        self.0.add(|b| b.push(Change::Crt(crt)))?;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.0.flush()
    }
}

#[derive(Clone, Copy)]
enum ObjectKind {
    Notetype,
    Deck,
    DeckConfig,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            ObjectKind::Notetype => "notetype",
            ObjectKind::Deck => "deck",
            ObjectKind::DeckConfig => "deck config",
        }
    }

    fn change(self, json: Value) -> Change {
        match self {
            ObjectKind::Notetype => Change::Notetype(json),
            ObjectKind::Deck => Change::Deck(json),
            ObjectKind::DeckConfig => Change::DeckConfig(json),
        }
    }
}

/// A schema-11 object kept whole (its unknown keys are stored), as a tree
/// limited to twice the item size.
fn json_tree<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    batcher: &Batcher<'_, '_, Vec<Change>>,
    what: &'static str,
) -> Result<Option<Value>, A::Error> {
    batcher.begin(what);
    let budget = TreeBudget::new(2 * batcher.account.limits().item);
    seq.next_element_seed(Json {
        budget: &budget,
        stash: batcher.stash,
        what,
    })
}

/// An array of schema-11 objects of one kind.
struct Objects<'x, 'a, 'b> {
    changes: &'x mut Batcher<'a, 'b, Vec<Change>>,
    kind: ObjectKind,
}

impl<'de> DeserializeSeed<'de> for Objects<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Objects<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}s", self.kind.name())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(json) = json_tree(&mut seq, self.changes, self.kind.name())? {
            let kind = self.kind;
            self.changes.add(|b| b.push(kind.change(json)))?;
        }
        Ok(())
    }
}

/// `decks`: exactly `[[deck…], [deck config…]]`.
struct DecksAndConfigs<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Vec<Change>>);

impl<'de> DeserializeSeed<'de> for DecksAndConfigs<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DecksAndConfigs<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[decks, deck configs]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for (at, kind) in [ObjectKind::Deck, ObjectKind::DeckConfig]
            .into_iter()
            .enumerate()
        {
            let seed = Objects {
                changes: &mut *self.0,
                kind,
            };
            decode::element(&mut seq, seed, "decks", at, 2)?;
        }
        decode::end_of_row(&mut seq, "decks", 2)
    }
}

/// `tags`: an array of names.
struct Tags<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Vec<Change>>);

impl<'de> DeserializeSeed<'de> for Tags<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Tags<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tags")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.0.begin("tag");
            let Some(tag) = seq.next_element_seed(Text)? else {
                return Ok(());
            };
            self.0.add(|b| b.push(Change::Tag(tag)))?;
        }
    }
}

/// `conf`: the whole config table as key → any JSON value.
struct ConfigTable<'x, 'a, 'b>(&'x mut Batcher<'a, 'b, Vec<Change>>);

impl<'de> DeserializeSeed<'de> for ConfigTable<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ConfigTable<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a config object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.add(|b| b.push(Change::ConfigReplaced))?;
        loop {
            self.0.begin("config entry");
            let Some(key) = map.next_key_seed(Text)? else {
                return Ok(());
            };
            let budget = TreeBudget::new(2 * self.0.account.limits().item);
            let value = map.next_value_seed(Json {
                budget: &budget,
                stash: self.0.stash,
                what: "config entry",
            })?;
            let bytes = serde_json::to_vec(&value).map_err(de::Error::custom)?;
            self.0.add(|b| b.push(Change::Config(key, bytes)))?;
        }
    }
}

/// Applies a batch of the client's changes, in the order they came.
pub fn apply(
    col: &Connection,
    state: &SyncState,
    changes: &mut Vec<Change>,
    now_secs: i64,
) -> Result<(), SyncError> {
    let usn = state.server_usn;
    for change in changes.drain(..) {
        match change {
            Change::Notetype(json) => apply_notetype(col, &json, usn, now_secs)?,
            Change::Deck(json) => apply_deck(col, &json, usn, now_secs)?,
            Change::DeckConfig(json) => apply_deck_config(col, &json, usn)?,
            Change::Tag(tag) => apply_tag(col, &tag, usn)?,
            Change::Crt(crt) => {
                col.prepare_cached("update col set crt = ?")?
                    .execute([crt])?;
            }
            // The newer side's config replaces ours completely.
            Change::ConfigReplaced => {
                col.prepare_cached("delete from config")?.execute([])?;
            }
            Change::Config(key, bytes) => {
                col.prepare_cached(
                    "insert or replace into config (key, usn, mtime_secs, val) values (?, ?, ?, ?)",
                )?
                .execute(params![key, usn, now_secs, bytes])?;
            }
        }
    }
    Ok(())
}

/// The server's changes since the client's last sync: the answer, built
/// before anything the client sent is applied.
pub fn server_changes(col: &Connection, state: &SyncState) -> Result<UnchunkedChanges, SyncError> {
    let since = state.client_usn;
    let mut changes = UnchunkedChanges::default();
    for id in schema11::notetype_ids_since(col, since)? {
        if let Some(nt) = schema11::load_notetype(col, id)? {
            changes.notetypes.push(schema11::notetype_to_json(&nt));
        }
    }
    for id in schema11::deck_ids_since(col, since)? {
        if let Some(deck) = schema11::load_deck(col, id)? {
            changes.decks.0.push(schema11::deck_to_json(&deck));
        }
    }
    for id in schema11::deckconfig_ids_since(col, since)? {
        if let Some(conf) = schema11::load_deckconfig(col, id)? {
            changes.decks.1.push(schema11::deckconfig_to_json(&conf));
        }
    }
    let mut stmt = col.prepare_cached("select tag from tags where usn >= ?")?;
    changes.tags = stmt
        .query_map([since], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !state.client_is_newer {
        changes.conf = Some(all_config(col)?);
        changes.crt = Some(
            col.prepare_cached("select crt from col")?
                .query_row([], |r| r.get(0))?,
        );
    }
    Ok(changes)
}

fn all_config(col: &Connection) -> Result<Map<String, Value>, SyncError> {
    let mut stmt = col.prepare_cached("select key, val from config")?;
    let mut conf = Map::new();
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })? {
        let (key, val) = row?;
        match serde_json::from_slice(&val) {
            Ok(value) => {
                conf.insert(key, value);
            }
            Err(e) => log::warn!("config key {key:?} holds invalid JSON ({e}); not sent"),
        }
    }
    Ok(conf)
}

/// A notetype: added if new, replacing ours if ours is not newer; a changed
/// number of fields or templates needs a full sync and fails the request.
fn apply_notetype(
    col: &Connection,
    json: &Value,
    usn: i32,
    now_secs: i64,
) -> Result<(), SyncError> {
    let mut nt = schema11::notetype_from_json(json)?;
    if let Some(existing) = schema11::load_notetype(col, nt.id)? {
        if existing.mtime_secs > nt.mtime_secs {
            return Ok(());
        }
        if existing.fields.len() != nt.fields.len()
            || existing.templates.len() != nt.templates.len()
        {
            return Err(SyncError::bad_request(format!(
                "notetype {} changed its fields or templates; a full sync is required",
                nt.id
            )));
        }
    }
    nt.usn = usn;
    schema11::store_notetype(col, &mut nt, usn, now_secs)?;
    Ok(())
}

fn apply_deck(col: &Connection, json: &Value, usn: i32, now_secs: i64) -> Result<(), SyncError> {
    let mut deck = schema11::deck_from_json(json)?;
    if let Some(existing) = schema11::load_deck(col, deck.id)? {
        if existing.mtime_secs > deck.mtime_secs {
            return Ok(());
        }
    }
    deck.usn = usn;
    schema11::store_deck(col, &mut deck, usn, now_secs)?;
    Ok(())
}

fn apply_deck_config(col: &Connection, json: &Value, usn: i32) -> Result<(), SyncError> {
    let mut conf = schema11::deckconfig_from_json(json)?;
    if let Some(existing) = schema11::load_deckconfig(col, conf.id)? {
        if existing.mtime_secs > conf.mtime_secs {
            return Ok(());
        }
    }
    conf.usn = usn;
    schema11::store_deckconfig(col, &conf)?;
    Ok(())
}

/// Adds a tag the server does not know yet (compared case-insensitively);
/// an existing tag, its case and usn are left alone.
fn apply_tag(col: &Connection, raw: &str, usn: i32) -> Result<(), SyncError> {
    let mut exists = col.prepare_cached("select tag from tags where tag = ?")?;
    let tag = normalize_tag(raw);
    if exists.query_row([&tag], |_| Ok(())).optional()?.is_some() {
        return Ok(());
    }
    let tag = adopt_parent_case(&mut exists, &tag)?;
    col.prepare_cached("insert into tags (tag, usn, collapsed, config) values (?, ?, 1, null)")?
        .execute(params![tag, usn])?;
    Ok(())
}

/// NFC; in each `::` component, no control characters or spaces; an empty
/// component becomes `blank`.
pub fn normalize_tag(raw: &str) -> String {
    let nfc: String = raw.nfc().collect();
    nfc.split("::")
        .map(|part| {
            let cleaned: String = part
                .chars()
                .filter(|&c| !c.is_ascii_control() && c != ' ' && c != '\u{3000}')
                .collect();
            let cleaned = cleaned.trim();
            if cleaned.is_empty() {
                "blank".to_string()
            } else {
                cleaned.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("::")
}

/// If the nearest existing parent is spelled in another case, use its spelling.
fn adopt_parent_case(
    exists: &mut rusqlite::CachedStatement<'_>,
    tag: &str,
) -> Result<String, SyncError> {
    let parts: Vec<&str> = tag.split("::").collect();
    for len in (1..parts.len()).rev() {
        let parent = parts[..len].join("::");
        let found: Option<String> = exists.query_row([&parent], |r| r.get(0)).optional()?;
        if let Some(spelled) = found {
            let rest = parts[len..].join("::");
            return Ok(format!("{spelled}::{rest}"));
        }
    }
    Ok(tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Limits, Refusal};
    use crate::collection::decode::tests::{budget, refused};
    use crate::error::Kind;
    use crate::storage::schema::SCHEMA18_DDL;

    const LIMITS: Limits = Limits {
        item: 64 * 1024,
        allowance: 1 << 20,
    };

    /// Decodes a body as the handler does, applying each batch.
    fn receive_json(
        c: &Connection,
        st: &SyncState,
        body: &[u8],
        now: i64,
    ) -> Result<usize, DecodeError> {
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        receive(body, &account, &mut |batch| apply(c, st, batch, now))
    }

    /// The handler's order: our answer first, then the client's changes.
    fn exchange(
        c: &Connection,
        st: &SyncState,
        incoming: UnchunkedChanges,
        now: i64,
    ) -> Result<UnchunkedChanges, SyncError> {
        let answer = server_changes(c, st)?;
        let body = serde_json::to_vec(&serde_json::json!({ "changes": incoming })).unwrap();
        match receive_json(c, st, &body, now) {
            Ok(_) => Ok(answer),
            Err(DecodeError::Apply(e)) => Err(e),
            Err(other) => panic!("not an apply error: {other}"),
        }
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::storage::register_unicase(&c).unwrap();
        c.execute_batch(SCHEMA18_DDL).unwrap();
        c.execute_batch(
            "insert into col values (1, 1000, 0, 0, 18, 0, 4, 0, '', '', '', '', '');
             insert into config values ('curDeck', 3, 0, cast('1' as blob)), ('schedVer', 3, 0, cast('2' as blob));
             insert into tags values ('Parent', 2, 0, null), ('old', 4, 0, null);",
        )
        .unwrap();
        c
    }

    fn state(client_is_newer: bool) -> SyncState {
        SyncState::new("s", 5, 3, client_is_newer)
    }

    #[test]
    fn the_older_side_receives_the_config() {
        let c = db();
        let answer = exchange(&c, &state(false), UnchunkedChanges::default(), 77).unwrap();
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json["conf"],
            serde_json::json!({"curDeck": 1, "schedVer": 2})
        );
        assert_eq!(json["crt"], 1000);
        assert_eq!(json["tags"], serde_json::json!(["old"]));
        let answer = exchange(&c, &state(true), UnchunkedChanges::default(), 77).unwrap();
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"models":[],"decks":[[],[]],"tags":["old"]}"#);
    }

    #[test]
    fn incoming_config_replaces_ours_whole() {
        let c = db();
        let mut conf = Map::new();
        conf.insert("curDeck".into(), Value::from(5));
        conf.insert("new".into(), serde_json::json!({"a": [1]}));
        let incoming = UnchunkedChanges {
            conf: Some(conf),
            crt: Some(2000),
            ..Default::default()
        };
        exchange(&c, &state(true), incoming, 77).unwrap();
        let rows: Vec<(String, Vec<u8>, i64, i64)> = c
            .prepare("select key, val, usn, mtime_secs from config order by key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("curDeck".into(), b"5".to_vec(), 5, 77),
                ("new".into(), br#"{"a":[1]}"#.to_vec(), 5, 77)
            ]
        );
        let typ: String = c
            .query_row("select typeof(val) from config limit 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(typ, "blob");
        assert_eq!(
            c.query_row("select crt from col", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2000
        );
    }

    /// A real fresh collection (stock notetypes, default deck and preset).
    fn fresh() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.anki2");
        crate::storage::create_collection(&path, 1_700_000_000_000).unwrap();
        let conn = crate::storage::open(&path).unwrap();
        (dir, conn)
    }

    fn basic(c: &Connection) -> Value {
        let id: i64 = c
            .query_row("select id from notetypes where name = 'Basic'", [], |r| {
                r.get(0)
            })
            .unwrap();
        schema11::notetype_to_json(&schema11::load_notetype(c, id).unwrap().unwrap())
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn models(v: Value) -> UnchunkedChanges {
        UnchunkedChanges {
            notetypes: vec![v],
            ..Default::default()
        }
    }

    #[test]
    fn notetypes_newer_or_equal_incoming_wins_older_loses() {
        let (_d, c) = fresh();
        let stored = basic(&c);
        let mtime = stored["mod"].as_i64().unwrap();
        // Equal mtime: the incoming copy wins (the opposite of notes and cards).
        let tie = with(stored.clone(), "css", Value::from(".card { tie }"));
        exchange(&c, &state(true), models(tie), 1).unwrap();
        assert_eq!(basic(&c)["css"], ".card { tie }");
        assert_eq!(basic(&c)["usn"], 5, "stored with this sync's usn");
        // Older: ignored.
        let old = with(
            with(stored.clone(), "css", Value::from("old")),
            "mod",
            Value::from(mtime - 1),
        );
        exchange(&c, &state(true), models(old), 1).unwrap();
        assert_eq!(basic(&c)["css"], ".card { tie }");
        // Newer: wins.
        let new = with(
            with(stored.clone(), "css", Value::from("new")),
            "mod",
            Value::from(mtime + 1),
        );
        exchange(&c, &state(true), models(new), 1).unwrap();
        assert_eq!(basic(&c)["css"], "new");
    }

    #[test]
    fn a_notetype_with_a_different_field_or_template_count_fails() {
        let (_d, c) = fresh();
        let stored = basic(&c);
        let mut more_fields = stored.clone();
        let extra = more_fields["flds"][1].clone();
        more_fields["flds"]
            .as_array_mut()
            .unwrap()
            .push(with(extra, "name", Value::from("Extra")));
        more_fields["mod"] = Value::from(stored["mod"].as_i64().unwrap() + 10);
        assert!(matches!(
            exchange(&c, &state(true), models(more_fields), 1),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        let mut fewer_templates = stored.clone();
        fewer_templates["tmpls"].as_array_mut().unwrap().clear();
        assert!(matches!(
            exchange(&c, &state(true), models(fewer_templates), 1),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        // An older copy with a different shape is simply ignored.
        let mut old = stored.clone();
        old["tmpls"].as_array_mut().unwrap().clear();
        old["mod"] = Value::from(-1);
        assert!(exchange(&c, &state(true), models(old), 1).is_ok());
    }

    #[test]
    fn decks_and_deck_configs_follow_the_same_rule_and_new_ones_are_added() {
        let (_d, c) = fresh();
        let deck = schema11::deck_to_json(&schema11::load_deck(&c, 1).unwrap().unwrap());
        let conf =
            schema11::deckconfig_to_json(&schema11::load_deckconfig(&c, 1).unwrap().unwrap());
        let tie_deck = with(deck.clone(), "desc", Value::from("tie wins"));
        let old_deck = with(
            with(deck.clone(), "desc", Value::from("old")),
            "mod",
            Value::from(-1),
        );
        let new_deck = with(
            with(
                with(deck.clone(), "id", Value::from(77)),
                "name",
                Value::from("Other"),
            ),
            "desc",
            Value::from("added"),
        );
        let mut tie_conf = conf.clone();
        tie_conf["new"]["perDay"] = Value::from(77);
        let mut old_conf = conf.clone();
        old_conf["new"]["perDay"] = Value::from(1);
        old_conf["mod"] = Value::from(-1);
        let incoming = UnchunkedChanges {
            decks: (vec![tie_deck, old_deck, new_deck], vec![tie_conf, old_conf]),
            ..Default::default()
        };
        exchange(&c, &state(true), incoming, 1).unwrap();
        let load = |id| schema11::deck_to_json(&schema11::load_deck(&c, id).unwrap().unwrap());
        assert_eq!(load(1)["desc"], "tie wins");
        assert_eq!(load(77)["desc"], "added");
        let conf =
            schema11::deckconfig_to_json(&schema11::load_deckconfig(&c, 1).unwrap().unwrap());
        assert_eq!(conf["new"]["perDay"], 77);
    }

    #[test]
    fn tags_are_normalized_added_once_and_follow_parent_case() {
        let c = db();
        let incoming = UnchunkedChanges {
            tags: vec![
                "OLD".into(),
                "parent::child".into(),
                "a b::\u{3000}::x".into(),
                "new".into(),
            ],
            ..Default::default()
        };
        exchange(&c, &state(true), incoming, 1).unwrap();
        let tags: Vec<(String, i64)> = c
            .prepare("select tag, usn from tags order by tag")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tags,
            [
                ("ab::blank::x".into(), 5),
                ("new".into(), 5),
                ("old".into(), 4),
                ("Parent".into(), 2),
                ("Parent::child".into(), 5),
            ]
        );
    }

    #[test]
    fn objects_are_counted_and_applied_in_the_order_they_came() {
        let c = db();
        let body = br#"{"changes":{"tags":["a","b"],"crt":5,"conf":{"x":[1, 2],"y":null},"models":[],"decks":[[],[]],"extra":{"z":1}}}"#;
        // Two tags and the config table.
        assert_eq!(receive_json(&c, &state(true), body, 1).unwrap(), 3);
        let keys: Vec<(String, Vec<u8>)> = c
            .prepare("select key, val from config order by key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            keys,
            [
                ("x".into(), b"[1,2]".to_vec()),
                ("y".into(), b"null".to_vec())
            ]
        );
        // `null` for conf and crt changes nothing.
        let body = br#"{"changes":{"models":[],"decks":[[],[]],"tags":[],"conf":null,"crt":null}}"#;
        assert_eq!(receive_json(&c, &state(true), body, 1).unwrap(), 0);
        assert_eq!(
            c.query_row("select count() from config", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
    }

    #[test]
    fn malformed_changes_are_refused() {
        let c = db();
        for bad in [
            r#"{"changes":{"decks":[[]]}}"#,
            r#"{"changes":{"decks":[[],[],[]]}}"#,
            r#"{"changes":{"decks":{}}}"#,
            r#"{"changes":{"tags":[1]}}"#,
            r#"{"changes":{"models":{}}}"#,
            r#"{"changes":{"conf":[]}}"#,
            r#"{"changes":{"crt":"5"}}"#,
            r#"{"chunk":{}}"#,
        ] {
            assert!(
                matches!(
                    receive_json(&c, &state(true), bad.as_bytes(), 1),
                    Err(DecodeError::Shape(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn oversized_objects_are_refused_as_text_or_as_trees() {
        let c = db();
        let tag = format!(r#"{{"changes":{{"tags":["{}"]}}}}"#, "t".repeat(100_000));
        let err = receive_json(&c, &state(true), tag.as_bytes(), 1).unwrap_err();
        assert_eq!(
            refused(&err),
            Some(Refusal::ItemTooLarge {
                what: "tag",
                limit: LIMITS.item
            })
        );
        // 30,000 zeros are 60 KB of text (under the item limit) but about
        // 2 MB as a tree.
        let zeros = vec!["0"; 30_000].join(",");
        let model = format!(r#"{{"changes":{{"models":[{{"id":1,"big":[{zeros}]}}]}}}}"#);
        match receive_json(&c, &state(true), model.as_bytes(), 1) {
            Err(DecodeError::TooLarge(m)) => assert!(m.contains("one notetype is larger"), "{m}"),
            other => panic!("{other:?}"),
        }
        let conf = format!(r#"{{"changes":{{"conf":{{"k":[{zeros}]}}}}}}"#);
        match receive_json(&c, &state(true), conf.as_bytes(), 1) {
            Err(DecodeError::TooLarge(m)) => assert!(m.contains("config entry"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
