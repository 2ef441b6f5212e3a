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
use super::{ConvertError, decode_blob, in_savepoint, make_name_unique};
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
        if make_name_unique(conn, "decks", &mut d.name, d.id)? {
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

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    /// storage.md §7.11: the fresh "Default" deck.
    fn default_json() -> Value {
        json!({"id":1,"mod":0,"name":"Default","usn":0,"lrnToday":[0,0],"revToday":[0,0],
         "newToday":[0,0],"timeToday":[0,0],"collapsed":true,"browserCollapsed":true,
         "desc":"","dyn":0,"conf":1,"extendNew":0,"extendRev":0,"reviewLimit":null,
         "newLimit":null,"reviewLimitToday":null,"newLimitToday":null,"desiredRetention":null})
    }

    /// storage.md §7.11: a filtered deck with default options.
    fn filtered_json() -> Value {
        json!({"id":1795348702123i64,"mod":1795348702,"name":"Filt 1","usn":-1,"lrnToday":[0,0],
         "revToday":[0,0],"newToday":[0,0],"timeToday":[0,0],"collapsed":true,
         "browserCollapsed":true,"desc":"","dyn":1,"resched":true,"terms":[["",100,0]],
         "separate":true,"delays":null,"previewDelay":0,"previewAgainSecs":60,
         "previewHardSecs":600,"previewGoodSecs":0})
    }

    fn parse(v: &Value) -> DeckRow {
        deck_from_json(v).expect("parses")
    }

    fn normal(d: &DeckRow) -> &deck::Normal {
        match &d.kind.kind {
            Some(Kind::Normal(n)) => n,
            other => panic!("not normal: {other:?}"),
        }
    }

    fn filtered(d: &DeckRow) -> &deck::Filtered {
        match &d.kind.kind {
            Some(Kind::Filtered(f)) => f,
            other => panic!("not filtered: {other:?}"),
        }
    }

    #[test]
    fn examples_round_trip() {
        let d = parse(&default_json());
        assert_eq!(normal(&d).config_id, 1);
        assert!(d.common.study_collapsed && d.common.browser_collapsed);
        assert_eq!(deck_to_json(&d), default_json());
        // Same blobs as the ones a fresh collection gets.
        assert_eq!(d.common, crate::storage::stock::default_deck_common());
        assert_eq!(d.kind, crate::storage::stock::default_deck_kind());

        let f = parse(&filtered_json());
        let ff = filtered(&f);
        assert!(ff.reschedule);
        assert_eq!(ff.search_terms[0].limit, 100);
        assert_eq!(ff.preview_hard_secs, 600);
        assert_eq!(deck_to_json(&f), filtered_json());
    }

    #[test]
    fn today_arrays_follow_the_day_logic() {
        let mut v = default_json();
        v["newToday"] = json!([9, 3]);
        v["revToday"] = json!([10, 4]);
        v["lrnToday"] = json!([10, 1]);
        v["timeToday"] = json!([8, 99]);
        let d = parse(&v);
        let c = &d.common;
        assert_eq!(
            (c.last_day_studied, c.new_studied, c.review_studied),
            (10, 0, 4)
        );
        assert_eq!((c.learning_studied, c.milliseconds_studied), (1, 99));
        let out = deck_to_json(&d);
        assert_eq!(out["newToday"], json!([10, 0]));
        assert_eq!(out["timeToday"], json!([10, 99]));

        // Last element = amount, the one before = day; junk counts as 0.
        v["newToday"] = json!([1, 2, 10, 5]);
        v["revToday"] = json!(["x", 7]);
        v["lrnToday"] = json!([]);
        v["timeToday"] = json!([10, 1.5]);
        let c = parse(&v).common;
        assert_eq!(
            (c.new_studied, c.review_studied, c.learning_studied),
            (5, 0, 0)
        );
        assert_eq!(c.milliseconds_studied, 0);

        v["timeToday"] = json!(null);
        assert!(deck_from_json(&v).is_err());
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(native_deck_name(" a :: b\u{1} ::  "), "a\x1fb\x1fblank");
        assert_eq!(native_deck_name("e\u{301}::x\x1fy"), "\u{e9}\x1fxy");
        assert_eq!(native_deck_name(":a:::b"), "a\x1fb");
        assert_eq!(human_deck_name("a\x1fb"), "a::b");
        let mut v = default_json();
        v["name"] = json!("Parent::Child");
        let d = parse(&v);
        assert_eq!(d.name, "Parent\x1fChild");
        assert_eq!(deck_to_json(&d)["name"], json!("Parent::Child"));
    }

    #[test]
    fn dyn_selects_the_kind() {
        let mut v = filtered_json();
        v["dyn"] = json!(true);
        v["return"] = json!(true);
        let d = parse(&v);
        assert!(matches!(d.kind.kind, Some(Kind::Filtered(_))));
        assert!(d.common.other.is_empty(), "`return` is dropped");
        let mut v = default_json();
        v["dyn"] = json!(false);
        assert!(matches!(parse(&v).kind.kind, Some(Kind::Normal(_))));
        v["dyn"] = json!(2);
        assert!(matches!(parse(&v).kind.kind, Some(Kind::Normal(_))));
        for bad in [json!("1"), json!(null), json!(1.0), json!(-1)] {
            v["dyn"] = bad.clone();
            assert!(deck_from_json(&v).is_err(), "{bad}");
        }
        v.as_object_mut().unwrap().remove("dyn");
        assert!(deck_from_json(&v).is_err());
    }

    #[test]
    fn common_key_rules() {
        let mut v = default_json();
        v["id"] = json!("42");
        v["mod"] = json!("17");
        v.as_object_mut().unwrap().remove("browserCollapsed");
        let d = parse(&v);
        assert_eq!((d.id, d.mtime_secs), (42, 17));
        assert!(!d.common.browser_collapsed);
        v.as_object_mut().unwrap().remove("mod");
        assert_eq!(parse(&v).mtime_secs, 0);
        for (key, bad) in [
            ("collapsed", json!(1)),
            ("browserCollapsed", json!("true")),
            ("desc", json!(null)),
            ("md", json!(1)),
            ("usn", json!("1")),
            ("conf", json!(1.5)),
        ] {
            let mut v = default_json();
            v[key] = bad;
            assert!(deck_from_json(&v).is_err(), "{key}");
        }
    }

    #[test]
    fn normal_deck_leniency() {
        let mut v = default_json();
        v.as_object_mut().unwrap().extend(
            json!({"extendNew": -3, "extendRev": "x", "reviewLimit": -1, "newLimit": 5,
                "reviewLimitToday": {"limit": 9}, "newLimitToday": {"limit": 2, "today": 7},
                "desiredRetention": 87.5, "desc": "hi", "md": true, "conf": "3"})
            .as_object()
            .unwrap()
            .clone(),
        );
        let d = parse(&v);
        let n = normal(&d);
        assert_eq!((n.extend_new, n.extend_review), (0, 0));
        assert_eq!((n.review_limit, n.new_limit), (None, Some(5)));
        assert_eq!(n.review_limit_today, None);
        assert_eq!(n.new_limit_today, Some(DayLimit { limit: 2, today: 7 }));
        assert_eq!(n.desired_retention, None);
        assert_eq!(
            (n.description.as_str(), n.markdown_description),
            ("hi", true)
        );
        assert_eq!(n.config_id, 3);
        let out = deck_to_json(&d);
        assert_eq!(out["md"], json!(true));
        assert_eq!(out["newLimitToday"], json!({"limit": 2, "today": 7}));

        v["desiredRetention"] = json!(87);
        let d = parse(&v);
        assert_eq!(normal(&d).desired_retention, Some(0.87));
        assert_eq!(deck_to_json(&d)["desiredRetention"], json!(87));
        // Truncation on the way out, in f32.
        let mut d = d;
        if let Some(Kind::Normal(n)) = &mut d.kind.kind {
            n.desired_retention = Some(0.899);
        }
        assert_eq!(deck_to_json(&d)["desiredRetention"], json!(89));
        // `md` is emitted only when true.
        assert!(deck_to_json(&parse(&default_json())).get("md").is_none());
    }

    #[test]
    fn filtered_deck_rules() {
        let mut v = filtered_json();
        v["terms"] =
            json!([["a", "-5", 1], ["b", "7", 6], {"search": "c", "limit": 3, "order": 2}]);
        v["resched"] = json!("0");
        v["delays"] = json!("bad");
        v["desc"] = json!("dropped");
        v["md"] = json!(true);
        v["conf"] = json!(5);
        v.as_object_mut().unwrap().remove("separate");
        v.as_object_mut().unwrap().remove("previewGoodSecs");
        let d = parse(&v);
        let f = filtered(&d);
        let limits: Vec<u32> = f.search_terms.iter().map(|t| t.limit).collect();
        assert_eq!(limits, vec![0, 7, 3]);
        assert!(!f.reschedule);
        assert!(f.delays.is_empty());
        let out = deck_to_json(&d);
        assert_eq!(out["desc"], json!(""));
        assert!(out.get("md").is_none());
        assert_eq!(out["separate"], json!(true));
        assert_eq!(out["delays"], Value::Null);
        // Unknown to a filtered deck: stored in `other`, but a reserved key
        // on output.
        assert_ne!(d.common.other, b"");
        assert!(out.get("conf").is_none());
        assert_eq!(out["terms"][0], json!(["a", 0, 1]));

        v["delays"] = json!([1.5, 10]);
        let d = parse(&v);
        assert_eq!(filtered(&d).delays, vec![1.5, 10.0]);
        assert_eq!(deck_to_json(&d)["delays"], json!([1.5, 10.0]));

        for (key, bad) in [
            ("separate", json!(1)),
            ("resched", json!("maybe")),
            ("terms", json!([["a", 1.5, 0]])),
            ("terms", json!([["a", 1]])),
            ("previewDelay", json!(-1)),
        ] {
            let mut v = filtered_json();
            v[key] = bad;
            assert!(deck_from_json(&v).is_err(), "{key}");
        }
    }

    #[test]
    fn unknown_keys_are_kept_and_reserved_ones_dropped() {
        let mut v = default_json();
        v["liteKey"] = json!({"a": [1]});
        let d = parse(&v);
        assert_eq!(d.common.other, br#"{"liteKey":{"a":[1]}}"#);
        assert_eq!(deck_to_json(&d), v);
        let mut d = d;
        d.common.other = br#"{"name":"evil","conf":9,"keep":true}"#.to_vec();
        let out = deck_to_json(&d);
        assert_eq!((&out["name"], &out["conf"]), (&json!("Default"), &json!(1)));
        assert_eq!(out["keep"], json!(true));
    }

    #[test]
    fn store_renames_clashes_and_refuses_bad_rows() {
        let conn = testutil::conn();
        let mut a = parse(&default_json());
        store_deck(&conn, &mut a, 3, 500).unwrap();
        assert_eq!(load_deck(&conn, 1).unwrap().as_ref(), Some(&a));
        // Replacing the same id keeps its name.
        store_deck(&conn, &mut a, 3, 500).unwrap();
        assert_eq!((a.name.as_str(), a.usn), ("Default", 0));

        let mut b = parse(&default_json());
        b.id = 2;
        b.name = "dEFAULT".into();
        b.usn = 1;
        store_deck(&conn, &mut b, 3, 500).unwrap();
        assert_eq!((b.name.as_str(), b.mtime_secs, b.usn), ("dEFAULT+", 500, 3));
        let mut c = parse(&default_json());
        c.id = 3;
        store_deck(&conn, &mut c, 3, 500).unwrap();
        assert_eq!(c.name, "Default++");

        let mut child = parse(&default_json());
        child.id = 4;
        child.name = native_deck_name("Missing::Child");
        child.usn = 7;
        store_deck(&conn, &mut child, 3, 500).unwrap();
        assert_eq!(
            load_deck(&conn, 4).unwrap().unwrap().name,
            "Missing\x1fChild"
        );
        let parents: i64 = conn
            .query_row(
                "SELECT count() FROM decks WHERE name = 'Missing'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(parents, 0, "missing parents are not created");
        assert_eq!(deck_ids_since(&conn, 3).unwrap(), vec![2, 3, 4]);

        let mut empty = parse(&default_json());
        empty.id = 9;
        empty.kind = deck::KindContainer { kind: None };
        assert!(matches!(
            store_deck(&conn, &mut empty, 3, 500),
            Err(ConvertError::Invalid(_))
        ));
        let mut zero = parse(&default_json());
        zero.id = 0;
        assert!(store_deck(&conn, &mut zero, 3, 500).is_err());
    }
}
