//! `applyChanges`: the objects that are not chunked — notetypes, decks,
//! deck configs, tags, and (from the side whose collection is newer) the
//! whole config table and `crt`. The server's answer is built before the
//! client's changes are applied, so the client never gets its own changes
//! back.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

use super::SyncError;
use super::state::SyncState;
use crate::storage::schema11::{self, ConvertError};

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

#[derive(Deserialize, Debug)]
pub struct ApplyChangesRequest {
    pub changes: UnchunkedChanges,
}

impl From<ConvertError> for SyncError {
    fn from(e: ConvertError) -> Self {
        match e {
            ConvertError::Db(e) => e.into(),
            other => SyncError::BadRequest(other.to_string()),
        }
    }
}

/// Answers with the server's changes since the client's last sync, then
/// applies the client's.
pub fn exchange(
    col: &Connection,
    state: &SyncState,
    incoming: UnchunkedChanges,
    now_secs: i64,
) -> Result<UnchunkedChanges, SyncError> {
    let answer = server_changes(col, state)?;
    apply_notetypes(col, &incoming.notetypes, state.server_usn, now_secs)?;
    apply_decks(col, &incoming.decks.0, state.server_usn, now_secs)?;
    apply_deck_configs(col, &incoming.decks.1, state.server_usn)?;
    apply_tags(col, &incoming.tags, state.server_usn)?;
    if let Some(crt) = incoming.crt {
        col.execute("update col set crt = ?", [crt])?;
    }
    if let Some(conf) = &incoming.conf {
        replace_config(col, conf, state.server_usn, now_secs)?;
    }
    Ok(answer)
}

fn server_changes(col: &Connection, state: &SyncState) -> Result<UnchunkedChanges, SyncError> {
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
    let mut stmt = col.prepare("select tag from tags where usn >= ?")?;
    changes.tags = stmt
        .query_map([since], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !state.client_is_newer {
        changes.conf = Some(all_config(col)?);
        changes.crt = Some(col.query_row("select crt from col", [], |r| r.get(0))?);
    }
    Ok(changes)
}

fn all_config(col: &Connection) -> Result<Map<String, Value>, SyncError> {
    let mut stmt = col.prepare("select key, val from config")?;
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

/// Notetypes: added if new, replaced if ours is not newer; a changed number
/// of fields or templates needs a full sync and fails the request.
fn apply_notetypes(
    col: &Connection,
    incoming: &[Value],
    usn: i32,
    now_secs: i64,
) -> Result<(), SyncError> {
    for json in incoming {
        let mut nt = schema11::notetype_from_json(json)?;
        if let Some(existing) = schema11::load_notetype(col, nt.id)? {
            if existing.mtime_secs > nt.mtime_secs {
                continue;
            }
            if existing.fields.len() != nt.fields.len()
                || existing.templates.len() != nt.templates.len()
            {
                return Err(SyncError::BadRequest(format!(
                    "notetype {} changed its fields or templates; a full sync is required",
                    nt.id
                )));
            }
        }
        nt.usn = usn;
        schema11::store_notetype(col, &mut nt, usn, now_secs)?;
    }
    Ok(())
}

fn apply_decks(
    col: &Connection,
    incoming: &[Value],
    usn: i32,
    now_secs: i64,
) -> Result<(), SyncError> {
    for json in incoming {
        let mut deck = schema11::deck_from_json(json)?;
        if let Some(existing) = schema11::load_deck(col, deck.id)? {
            if existing.mtime_secs > deck.mtime_secs {
                continue;
            }
        }
        deck.usn = usn;
        schema11::store_deck(col, &mut deck, usn, now_secs)?;
    }
    Ok(())
}

fn apply_deck_configs(col: &Connection, incoming: &[Value], usn: i32) -> Result<(), SyncError> {
    for json in incoming {
        let mut conf = schema11::deckconfig_from_json(json)?;
        if let Some(existing) = schema11::load_deckconfig(col, conf.id)? {
            if existing.mtime_secs > conf.mtime_secs {
                continue;
            }
        }
        conf.usn = usn;
        schema11::store_deckconfig(col, &conf)?;
    }
    Ok(())
}

/// Adds tags the server does not know yet (compared case-insensitively);
/// existing tags, their case and usn are left alone.
fn apply_tags(col: &Connection, incoming: &[String], usn: i32) -> Result<(), SyncError> {
    let mut exists = col.prepare_cached("select tag from tags where tag = ?")?;
    let mut insert = col
        .prepare_cached("insert into tags (tag, usn, collapsed, config) values (?, ?, 1, null)")?;
    for raw in incoming {
        let tag = normalize_tag(raw);
        if exists.query_row([&tag], |_| Ok(())).optional()?.is_some() {
            continue;
        }
        let tag = adopt_parent_case(&mut exists, &tag)?;
        insert.execute(params![tag, usn])?;
    }
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

/// The newer side's config replaces ours completely.
fn replace_config(
    col: &Connection,
    conf: &Map<String, Value>,
    usn: i32,
    now_secs: i64,
) -> Result<(), SyncError> {
    col.execute("delete from config", [])?;
    let mut insert =
        col.prepare_cached("insert into config (key, usn, mtime_secs, val) values (?, ?, ?, ?)")?;
    for (key, value) in conf {
        let bytes = serde_json::to_vec(value).map_err(SyncError::from)?;
        insert.execute(params![key, usn, now_secs, bytes])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::schema::SCHEMA18_DDL;

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
        SyncState {
            session: "s".into(),
            server_usn: 5,
            client_usn: 3,
            client_is_newer,
            pending: None,
            sent: 0,
            received: 0,
            started: std::time::Instant::now(),
        }
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
            Err(SyncError::BadRequest(_))
        ));
        let mut fewer_templates = stored.clone();
        fewer_templates["tmpls"].as_array_mut().unwrap().clear();
        assert!(matches!(
            exchange(&c, &state(true), models(fewer_templates), 1),
            Err(SyncError::BadRequest(_))
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
}
