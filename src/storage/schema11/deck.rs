//! Decks: the schema-11 deck object (normal or filtered) ↔ the `decks` row
//! with its `common` and `kind` blobs (storage.md §6.5–§6.6, §7.6, §7.10).
//!
//! Names are stored in "native" form (components joined by U+001F) and
//! travel in human form (`::`); the study counters travel as four
//! `[day, amount]` arrays but are stored as one day and four amounts.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use unicode_normalization::UnicodeNormalization;

use super::json::{self, Obj, Res};
use super::notetype::name_taken;
use super::{ConvertError, decode_blob, in_savepoint};
use crate::storage::proto::decks::deck;
use deck::kind_container::Kind;
use deck::normal::DayLimit;

/// One `decks` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeckRow {
    pub id: i64,
    /// Native form: components joined by U+001F.
    pub name: String,
    pub mtime_secs: i64,
    pub usn: i32,
    pub common: deck::Common,
    /// Must hold `Normal` or `Filtered`; [`store_deck`] refuses an empty one.
    pub kind: deck::KindContainer,
}

/// Reserved keys dropped from `Deck.Common.other` on output.
const RESERVED: &[&str] = &[
    "usn",
    "revToday",
    "newLimit",
    "dyn",
    "reviewLimit",
    "newToday",
    "timeToday",
    "reviewLimitToday",
    "extendNew",
    "mod",
    "newLimitToday",
    "desc",
    "name",
    "lrnToday",
    "conf",
    "browserCollapsed",
    "extendRev",
    "id",
    "collapsed",
    "desiredRetention",
];

/// Keys read for both kinds; `return` is obsolete and dropped on input.
const COMMON_KEYS: &[&str] = &[
    "id",
    "mod",
    "name",
    "usn",
    "lrnToday",
    "revToday",
    "newToday",
    "timeToday",
    "collapsed",
    "browserCollapsed",
    "desc",
    "md",
    "dyn",
    "return",
];

const NORMAL_KEYS: &[&str] = &[
    "conf",
    "extendNew",
    "extendRev",
    "reviewLimit",
    "newLimit",
    "reviewLimitToday",
    "newLimitToday",
    "desiredRetention",
];

const FILTERED_KEYS: &[&str] = &[
    "resched",
    "terms",
    "separate",
    "delays",
    "previewDelay",
    "previewAgainSecs",
    "previewHardSecs",
    "previewGoodSecs",
];

// ------------------------------------------------------------------ names

/// Human name (`a::b`) → native name (`a\x1fb`), normalising each component
/// as the reference library does: NFC, ASCII control characters removed,
/// whitespace and `:` trimmed from both ends, empty → `blank`.
pub fn native_deck_name(human: &str) -> String {
    human
        .split("::")
        .map(|component| {
            let cleaned: String = component.nfc().filter(|c| !c.is_ascii_control()).collect();
            let trimmed = cleaned.trim_matches(|c: char| c.is_whitespace() || c == ':');
            if trimmed.is_empty() {
                "blank".to_owned()
            } else {
                trimmed.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\x1f")
}

/// Native name → human name (`::` separators).
pub fn human_deck_name(native: &str) -> String {
    native.replace('\x1f', "::")
}

// ---------------------------------------------------------------- to JSON

/// The schema-11 object the reference library emits for this deck.
pub fn deck_to_json(d: &DeckRow) -> Value {
    let c = &d.common;
    let mut out = json::start_with_other(json::parse_other(&c.other), RESERVED);
    let day = c.last_day_studied as i32;
    let (desc, markdown, dynamic) = match &d.kind.kind {
        Some(Kind::Normal(n)) => (n.description.as_str(), n.markdown_description, 0),
        Some(Kind::Filtered(_)) => ("", false, 1),
        None => ("", false, 0),
    };
    let entries = [
        ("id", json!(d.id)),
        ("mod", json!(d.mtime_secs)),
        ("name", json!(human_deck_name(&d.name))),
        ("usn", json!(d.usn)),
        ("lrnToday", json!([day, c.learning_studied])),
        ("revToday", json!([day, c.review_studied])),
        ("newToday", json!([day, c.new_studied])),
        ("timeToday", json!([day, c.milliseconds_studied])),
        ("collapsed", json!(c.study_collapsed)),
        ("browserCollapsed", json!(c.browser_collapsed)),
        ("desc", json!(desc)),
        ("dyn", json!(dynamic)),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
    if markdown {
        out.insert("md".into(), json!(true));
    }
    match &d.kind.kind {
        Some(Kind::Normal(n)) => normal_to_json(n, &mut out),
        Some(Kind::Filtered(f)) => filtered_to_json(f, &mut out),
        None => {}
    }
    Value::Object(out)
}

fn day_limit_to_json(limit: &Option<DayLimit>) -> Value {
    match limit {
        Some(l) => json!({"limit": l.limit, "today": l.today}),
        None => Value::Null,
    }
}

fn normal_to_json(n: &deck::Normal, out: &mut Obj) {
    let entries = [
        ("conf", json!(n.config_id)),
        ("extendNew", json!(n.extend_new as i32)),
        ("extendRev", json!(n.extend_review as i32)),
        ("reviewLimit", json!(n.review_limit)),
        ("newLimit", json!(n.new_limit)),
        ("reviewLimitToday", day_limit_to_json(&n.review_limit_today)),
        ("newLimitToday", day_limit_to_json(&n.new_limit_today)),
        (
            "desiredRetention",
            json!(n.desired_retention.map(|r| (r * 100.0) as u32)),
        ),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
}

fn filtered_to_json(f: &deck::Filtered, out: &mut Obj) {
    let terms: Vec<Value> = f
        .search_terms
        .iter()
        .map(|t| json!([t.search, t.limit as i32, t.order]))
        .collect();
    let delays = if f.delays.is_empty() {
        Value::Null
    } else {
        json::f32_array(&f.delays)
    };
    let entries = [
        ("resched", json!(f.reschedule)),
        ("terms", Value::Array(terms)),
        // Unused, but old clients require the key.
        ("separate", json!(true)),
        ("delays", delays),
        ("previewDelay", json!(f.preview_delay)),
        ("previewAgainSecs", json!(f.preview_again_secs)),
        ("previewHardSecs", json!(f.preview_hard_secs)),
        ("previewGoodSecs", json!(f.preview_good_secs)),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
}

// -------------------------------------------------------------- from JSON

/// `[day, amount]` with upstream's leniency: the last element is the
/// amount, the one before the day; non-integers and missing ones are 0.
fn today_from_json(o: &Obj, key: &str) -> Res<(i32, i32)> {
    let items = json::array(json::req(o, key)?, key)?;
    let mut rest = items.iter().rev();
    let mut next = || rest.next().and_then(Value::as_i64).unwrap_or(0) as i32;
    let amount = next();
    let day = next();
    Ok((day, amount))
}

/// Parses a schema-11 deck (normal or filtered) with the reference library's
/// leniency (storage.md §7.6). The name is converted to native form.
pub fn deck_from_json(v: &Value) -> Result<DeckRow, ConvertError> {
    let o = json::object(v, "deck")?;
    let is_filtered = match json::req(o, "dyn")? {
        Value::Bool(b) => *b,
        n @ Value::Number(_) => {
            // After upstream's bool→number fix-up the key must fit a u8.
            json::int::<u8>(n, "dyn")?;
            n.as_i64() == Some(1)
        }
        other => {
            return Err(ConvertError::Json(format!(
                "`dyn`: expected a number or boolean, got {other}"
            )));
        }
    };

    let id = json::int_or_string(json::req(o, "id")?, "id")?;
    let mtime_secs = json::opt(o, "mod", 0, json::int_or_string)?;
    let human = json::string(json::req(o, "name")?, "name")?;
    let usn: i32 = json::int(json::req(o, "usn")?, "usn")?;
    let lrn = today_from_json(o, "lrnToday")?;
    let rev = today_from_json(o, "revToday")?;
    let new = today_from_json(o, "newToday")?;
    let time = today_from_json(o, "timeToday")?;
    let study_collapsed = json::strict_bool(json::req(o, "collapsed")?, "collapsed")?;
    let browser_collapsed = json::opt(o, "browserCollapsed", false, json::strict_bool)?;
    let desc = json::opt(o, "desc", String::new(), json::string)?;
    let markdown = json::opt(o, "md", false, json::strict_bool)?;

    let (kind, kind_keys) = if is_filtered {
        (Kind::Filtered(filtered_from_json(o)?), FILTERED_KEYS)
    } else {
        (
            Kind::Normal(normal_from_json(o, desc, markdown)?),
            NORMAL_KEYS,
        )
    };

    // Counters from an earlier day than the latest one are stale; time is
    // kept as is (upstream does the same).
    let max_day = time.0.max(new.0).max(rev.0);
    let on_max_day = |(day, amount): (i32, i32)| if day == max_day { amount } else { 0 };
    let mut known = COMMON_KEYS.to_vec();
    known.extend_from_slice(kind_keys);
    let common = deck::Common {
        study_collapsed,
        browser_collapsed,
        last_day_studied: max_day as u32,
        new_studied: on_max_day(new),
        review_studied: on_max_day(rev),
        learning_studied: on_max_day(lrn),
        milliseconds_studied: time.1,
        other: json::other_bytes(&json::unknown_keys(o, &known)),
    };
    Ok(DeckRow {
        id,
        name: native_deck_name(&human),
        mtime_secs,
        usn,
        common,
        kind: deck::KindContainer { kind: Some(kind) },
    })
}

fn day_limit_from_json(v: &Value, key: &str) -> Res<DayLimit> {
    let o = json::object(v, key)?;
    Ok(DayLimit {
        limit: json::int(json::req(o, "limit")?, key)?,
        today: json::int(json::req(o, "today")?, key)?,
    })
}

fn normal_from_json(o: &Obj, description: String, markdown: bool) -> Res<deck::Normal> {
    let extend = |key| json::lenient(o, key, 0, json::int::<i32>).max(0) as u32;
    Ok(deck::Normal {
        config_id: json::int_or_string(json::req(o, "conf")?, "conf")?,
        extend_new: extend("extendNew"),
        extend_review: extend("extendRev"),
        description,
        markdown_description: markdown,
        review_limit: json::lenient_nullable(o, "reviewLimit", json::int::<u32>),
        new_limit: json::lenient_nullable(o, "newLimit", json::int::<u32>),
        review_limit_today: json::lenient_nullable(o, "reviewLimitToday", day_limit_from_json),
        new_limit_today: json::lenient_nullable(o, "newLimitToday", day_limit_from_json),
        desired_retention: json::lenient_nullable(o, "desiredRetention", json::int::<u32>)
            .map(|percent| percent as f32 / 100.0),
    })
}

/// `[search, limit, order]` (or the struct form serde also accepts).
fn term_from_json(v: &Value) -> Res<deck::filtered::SearchTerm> {
    let (search, limit, order) = match v {
        Value::Array(items) if items.len() == 3 => (&items[0], &items[1], &items[2]),
        Value::Object(o) => (
            json::req(o, "search")?,
            json::req(o, "limit")?,
            json::req(o, "order")?,
        ),
        _ => return Err(ConvertError::Json(format!("`terms`: bad entry {v}"))),
    };
    let limit = json::int_or_string(limit, "terms")?;
    let limit = i32::try_from(limit)
        .map_err(|_| ConvertError::Json(format!("`terms`: limit {limit} out of range")))?;
    Ok(deck::filtered::SearchTerm {
        search: json::string(search, "terms")?,
        limit: limit.max(0) as u32,
        order: json::int(order, "terms")?,
    })
}

fn filtered_from_json(o: &Obj) -> Res<deck::Filtered> {
    let terms = json::array(json::req(o, "terms")?, "terms")?
        .iter()
        .map(term_from_json)
        .collect::<Res<Vec<_>>>()?;
    // Not stored, but a wrong type fails upstream.
    json::opt(o, "separate", false, json::strict_bool)?;
    Ok(deck::Filtered {
        reschedule: json::bool_ish(json::req(o, "resched")?, "resched")?,
        search_terms: terms,
        delays: json::lenient_nullable(o, "delays", json::float_vec).unwrap_or_default(),
        preview_delay: json::opt(o, "previewDelay", 0, json::int)?,
        preview_hard_secs: json::opt(o, "previewHardSecs", 0, json::int)?,
        preview_good_secs: json::opt(o, "previewGoodSecs", 0, json::int)?,
        preview_again_secs: json::opt(o, "previewAgainSecs", 0, json::int)?,
    })
}

// --------------------------------------------------------------- storage

/// The deck with this id, if it exists.
pub fn load_deck(conn: &Connection, id: i64) -> Result<Option<DeckRow>, ConvertError> {
    let row = conn
        .query_row(
            "SELECT name, mtime_secs, usn, common, kind FROM decks WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i32>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((name, mtime_secs, usn, common, kind)) = row else {
        return Ok(None);
    };
    Ok(Some(DeckRow {
        id,
        name,
        mtime_secs,
        usn,
        common: decode_blob(&common, "decks.common")?,
        kind: decode_blob(&kind, "decks.kind")?,
    }))
}

/// Ids of the decks with `usn >= min_usn`, ascending.
pub fn deck_ids_since(conn: &Connection, min_usn: i32) -> Result<Vec<i64>, ConvertError> {
    super::ids_since(conn, "decks", min_usn)
}

/// Adds or replaces a deck (collection-sync §7.3). While another deck has
/// the same native name (case-insensitive), `+` is appended to `d.name` and,
/// if that happened, `d.mtime_secs`/`d.usn` become `now_secs`/`server_usn`.
/// Missing parent decks are not created.
pub fn store_deck(
    conn: &Connection,
    d: &mut DeckRow,
    server_usn: i32,
    now_secs: i64,
) -> Result<(), ConvertError> {
    if d.id == 0 {
        return Err(ConvertError::Invalid("deck id 0".into()));
    }
    if d.kind.kind.is_none() {
        return Err(ConvertError::Invalid(format!(
            "deck {} is neither normal nor filtered",
            d.id
        )));
    }
    in_savepoint(conn, || {
        let mut renamed = false;
        while name_taken(conn, "decks", &d.name, d.id)? {
            d.name.push('+');
            renamed = true;
        }
        if renamed {
            d.mtime_secs = now_secs;
            d.usn = server_usn;
        }
        conn.execute(
            "INSERT OR REPLACE INTO decks (id, name, mtime_secs, usn, common, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                d.id,
                d.name,
                d.mtime_secs,
                d.usn,
                d.common.encode_to_vec(),
                d.kind.encode_to_vec()
            ],
        )?;
        Ok(())
    })
}
