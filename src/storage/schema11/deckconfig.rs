//! Deck configs (options presets): the schema-11 `dconf` object ↔ the
//! `deck_config` row and its `config` blob (storage.md §6.7, §7.7).
//!
//! The JSON nests settings in `new`/`rev`/`lapse` sub-objects, inverts two
//! booleans and the new-card order, and keeps the starting ease in permille;
//! the blob is flat. A sub-object that fails to parse is replaced wholesale
//! by its defaults, as upstream does.

use prost::Message;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::json::{self, Obj, Res};
use super::{ConvertError, decode_blob, load_config_row};
use crate::storage::proto::deck_config::deck_config;
use crate::storage::stock::default_deck_config;
use deck_config::config::{LeechAction, NewCardInsertOrder};

/// One `deck_config` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeckConfigRow {
    pub id: i64,
    pub name: String,
    pub mtime_secs: i64,
    pub usn: i32,
    pub config: deck_config::Config,
}

/// Top-level keys read from the JSON, which are also the reserved keys
/// dropped from `other` on output (plus the three sub-objects, which are
/// handled separately).
const TOP_KEYS: &[&str] = &[
    "id",
    "newSortOrder",
    "replayq",
    "newPerDayMinimum",
    "usn",
    "autoplay",
    "dyn",
    "maxTaken",
    "reviewOrder",
    "buryInterdayLearning",
    "newMix",
    "mod",
    "timer",
    "name",
    "interdayLearningMix",
    "newGatherPriority",
    "fsrsWeights",
    "fsrsParams5",
    "fsrsParams6",
    "desiredRetention",
    "stopTimerOnAnswer",
    "secondsToShowQuestion",
    "secondsToShowAnswer",
    "questionAction",
    "answerAction",
    "waitForAudio",
    "sm2Retention",
    "weightSearch",
    "ignoreRevlogsBeforeDate",
    "easyDaysPercentages",
];
const SUB_OBJECTS: &[&str] = &["new", "rev", "lapse"];
const NEW_KEYS: &[&str] = &["order", "delays", "bury", "perDay", "initialFactor", "ints"];
const REV_KEYS: &[&str] = &["maxIvl", "hardFactor", "ease4", "ivlFct", "perDay", "bury"];
const LAPSE_KEYS: &[&str] = &["leechFails", "mult", "leechAction", "delays", "minInt"];

// --------------------------------------------------------------- clamping

/// Replaces out-of-range values with the defaults, as the reference library
/// does whenever it reads a preset from the table (storage.md §6.7). NaN is
/// out of range.
pub fn clamp_deck_config(c: &mut deck_config::Config) {
    let d = default_deck_config();
    let u32_in = |v: &mut u32, default: u32, min: u32, max: u32| {
        if *v < min || *v > max {
            *v = default;
        }
    };
    let f32_in = |v: &mut f32, default: f32, min: f32, max: f32| {
        if v.is_nan() || *v < min || *v > max {
            *v = default;
        }
    };
    u32_in(&mut c.new_per_day, d.new_per_day, 0, 9999);
    u32_in(&mut c.reviews_per_day, d.reviews_per_day, 0, 9999);
    u32_in(&mut c.new_per_day_minimum, d.new_per_day_minimum, 0, 9999);
    f32_in(&mut c.initial_ease, d.initial_ease, 1.31, 5.0);
    f32_in(&mut c.easy_multiplier, d.easy_multiplier, 1.0, 5.0);
    f32_in(&mut c.hard_multiplier, d.hard_multiplier, 0.5, 1.3);
    f32_in(&mut c.lapse_multiplier, d.lapse_multiplier, 0.0, 1.0);
    f32_in(&mut c.interval_multiplier, d.interval_multiplier, 0.5, 2.0);
    let days = 36_500;
    u32_in(
        &mut c.maximum_review_interval,
        d.maximum_review_interval,
        1,
        days,
    );
    u32_in(
        &mut c.minimum_lapse_interval,
        d.minimum_lapse_interval,
        1,
        days,
    );
    u32_in(
        &mut c.graduating_interval_good,
        d.graduating_interval_good,
        1,
        days,
    );
    u32_in(
        &mut c.graduating_interval_easy,
        d.graduating_interval_easy,
        1,
        days,
    );
    u32_in(&mut c.leech_threshold, d.leech_threshold, 1, 9999);
    u32_in(
        &mut c.cap_answer_time_to_secs,
        d.cap_answer_time_to_secs,
        1,
        9999,
    );
    f32_in(&mut c.desired_retention, d.desired_retention, 0.7, 0.99);
    f32_in(
        &mut c.historical_retention,
        d.historical_retention,
        0.7,
        0.97,
    );
}

// ---------------------------------------------------------------- to JSON

/// The schema-11 object the reference library emits for this preset,
/// including its clamping of out-of-range values (the row is not changed).
pub fn deckconfig_to_json(row: &DeckConfigRow) -> Value {
    let mut c = row.config.clone();
    clamp_deck_config(&mut c);

    let mut top = json::parse_other(&c.other);
    let mut sub_other = |key: &str, reserved: &[&str]| match top.remove(key) {
        Some(Value::Object(map)) => json::start_with_other(map, reserved),
        _ => Obj::new(),
    };
    let mut new = sub_other("new", NEW_KEYS);
    let mut rev = sub_other("rev", REV_KEYS);
    let mut lapse = sub_other("lapse", LAPSE_KEYS);
    let mut out = json::start_with_other(top, TOP_KEYS);

    let new_order = match c.new_card_insert_order() {
        NewCardInsertOrder::Random => 0,
        NewCardInsertOrder::Due => 1,
    };
    insert_all(
        &mut new,
        [
            ("bury", json!(c.bury_new)),
            ("delays", json::f32_array(&c.learn_steps)),
            ("initialFactor", json!((c.initial_ease * 1000.0) as u16)),
            (
                "ints",
                json!([
                    c.graduating_interval_good as u16,
                    c.graduating_interval_easy as u16,
                    0
                ]),
            ),
            ("order", json!(new_order)),
            ("perDay", json!(c.new_per_day)),
        ],
    );
    insert_all(
        &mut rev,
        [
            ("bury", json!(c.bury_reviews)),
            ("ease4", json::f32_value(c.easy_multiplier)),
            ("ivlFct", json::f32_value(c.interval_multiplier)),
            ("maxIvl", json!(c.maximum_review_interval)),
            ("perDay", json!(c.reviews_per_day)),
            ("hardFactor", json::f32_value(c.hard_multiplier)),
        ],
    );
    insert_all(
        &mut lapse,
        [
            ("delays", json::f32_array(&c.relearn_steps)),
            (
                "leechAction",
                json!(if c.leech_action == 1 { 1 } else { 0 }),
            ),
            ("leechFails", json!(c.leech_threshold)),
            ("minInt", json!(c.minimum_lapse_interval)),
            ("mult", json::f32_value(c.lapse_multiplier)),
        ],
    );
    insert_all(
        &mut out,
        [
            ("id", json!(row.id)),
            ("mod", json!(row.mtime_secs)),
            ("name", json!(row.name)),
            ("usn", json!(row.usn)),
            ("maxTaken", json!(c.cap_answer_time_to_secs as i32)),
            ("autoplay", json!(!c.disable_autoplay)),
            ("timer", json!(u8::from(c.show_timer))),
            ("replayq", json!(!c.skip_question_when_replaying_answer)),
            ("new", Value::Object(new)),
            ("rev", Value::Object(rev)),
            ("lapse", Value::Object(lapse)),
            ("dyn", json!(false)),
            ("newMix", json!(c.new_mix)),
            ("newPerDayMinimum", json!(c.new_per_day_minimum)),
            ("interdayLearningMix", json!(c.interday_learning_mix)),
            ("reviewOrder", json!(c.review_order)),
            ("newSortOrder", json!(c.new_card_sort_order)),
            ("newGatherPriority", json!(c.new_card_gather_priority)),
            ("buryInterdayLearning", json!(c.bury_interday_learning)),
            ("fsrsWeights", json::f32_array(&c.fsrs_params_4)),
            ("fsrsParams5", json::f32_array(&c.fsrs_params_5)),
            ("fsrsParams6", json::f32_array(&c.fsrs_params_6)),
            ("desiredRetention", json::f32_value(c.desired_retention)),
            (
                "ignoreRevlogsBeforeDate",
                json!(c.ignore_revlogs_before_date),
            ),
            (
                "easyDaysPercentages",
                json::f32_array(&c.easy_days_percentages),
            ),
            ("stopTimerOnAnswer", json!(c.stop_timer_on_answer)),
            (
                "secondsToShowQuestion",
                json::f32_value(c.seconds_to_show_question),
            ),
            (
                "secondsToShowAnswer",
                json::f32_value(c.seconds_to_show_answer),
            ),
            (
                "questionAction",
                json!(if c.question_action == 1 { 1 } else { 0 }),
            ),
            (
                "answerAction",
                json!(if (1..=4).contains(&c.answer_action) {
                    c.answer_action
                } else {
                    0
                }),
            ),
            ("waitForAudio", json!(c.wait_for_audio)),
            ("sm2Retention", json::f32_value(c.historical_retention)),
            ("weightSearch", json!(c.param_search)),
        ],
    );
    Value::Object(out)
}

fn insert_all<const N: usize>(out: &mut Obj, entries: [(&str, Value); N]) {
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
}

// -------------------------------------------------------------- from JSON

/// The `new` sub-object: values that go into the blob, plus unknown keys.
struct NewConf {
    bury: bool,
    delays: Vec<f32>,
    initial_factor: u16,
    ints: (u16, u16),
    /// Schema-11 numbering: 0 random, 1 due.
    order: u8,
    per_day: u32,
    other: Obj,
}

impl Default for NewConf {
    fn default() -> Self {
        NewConf {
            bury: false,
            delays: vec![1.0, 10.0],
            initial_factor: 2500,
            ints: (1, 4),
            order: 1,
            per_day: 20,
            other: Obj::new(),
        }
    }
}

struct RevConf {
    bury: bool,
    ease4: f32,
    ivl_fct: f32,
    max_ivl: u32,
    per_day: u32,
    hard_factor: f32,
    other: Obj,
}

impl Default for RevConf {
    fn default() -> Self {
        RevConf {
            bury: false,
            ease4: 1.3,
            ivl_fct: 1.0,
            max_ivl: 36_500,
            per_day: 200,
            hard_factor: 1.2,
            other: Obj::new(),
        }
    }
}

struct LapseConf {
    delays: Vec<f32>,
    leech_action: u8,
    leech_fails: u32,
    min_int: u32,
    mult: f32,
    other: Obj,
}

impl Default for LapseConf {
    fn default() -> Self {
        LapseConf {
            delays: vec![10.0],
            leech_action: LeechAction::TagOnly as u8,
            leech_fails: 8,
            min_int: 1,
            mult: 0.0,
            other: Obj::new(),
        }
    }
}

fn new_from_json(v: &Value) -> Res<NewConf> {
    let o = json::object(v, "new")?;
    // `ints`: at least two u16 values, else the defaults; never an error.
    let ints = json::req(o, "ints")?
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|i| json::int::<u16>(i, "ints").ok())
                .collect::<Option<Vec<u16>>>()
        })
        .filter(|items| items.len() >= 2)
        .map_or((1, 4), |items| (items[0], items[1]));
    Ok(NewConf {
        bury: json::opt(o, "bury", false, json::strict_bool)?,
        delays: json::req_lenient(o, "delays", Vec::new(), json::float_vec)?,
        initial_factor: json::int(json::req(o, "initialFactor")?, "initialFactor")?,
        ints,
        order: json::req_lenient(o, "order", 1, |v, k| {
            json::int::<u8>(v, k).and_then(|n| {
                if n <= 1 {
                    Ok(n)
                } else {
                    Err(ConvertError::Json(format!("`{k}`: {n}")))
                }
            })
        })?,
        per_day: json::req_lenient(o, "perDay", 0, json::int)?,
        other: json::unknown_keys(o, NEW_KEYS),
    })
}

fn rev_from_json(v: &Value) -> Res<RevConf> {
    let o = json::object(v, "rev")?;
    Ok(RevConf {
        bury: json::opt(o, "bury", false, json::strict_bool)?,
        ease4: json::float(json::req(o, "ease4")?, "ease4")?,
        ivl_fct: json::float(json::req(o, "ivlFct")?, "ivlFct")?,
        max_ivl: json::int(json::req(o, "maxIvl")?, "maxIvl")?,
        per_day: json::req_lenient(o, "perDay", 0, json::int)?,
        hard_factor: json::opt(o, "hardFactor", 1.2, json::float)?,
        other: json::unknown_keys(o, REV_KEYS),
    })
}

fn lapse_from_json(v: &Value) -> Res<LapseConf> {
    let o = json::object(v, "lapse")?;
    Ok(LapseConf {
        delays: json::req_lenient(o, "delays", Vec::new(), json::float_vec)?,
        leech_action: json::req_lenient(o, "leechAction", 1, |v, k| {
            json::int::<u8>(v, k).and_then(|n| {
                if n <= 1 {
                    Ok(n)
                } else {
                    Err(ConvertError::Json(format!("`{k}`: {n}")))
                }
            })
        })?,
        leech_fails: json::int(json::req(o, "leechFails")?, "leechFails")?,
        min_int: json::int(json::req(o, "minInt")?, "minInt")?,
        mult: json::float(json::req(o, "mult")?, "mult")?,
        other: json::unknown_keys(o, LAPSE_KEYS),
    })
}

/// An integer enum key that is optional but must be in `0..=max` if present.
fn small_enum(o: &Obj, key: &str, max: u8) -> Res<i32> {
    let n = json::opt(o, key, 0u8, json::int::<u8>)?;
    if n > max {
        return Err(ConvertError::Json(format!("`{key}`: unknown value {n}")));
    }
    Ok(i32::from(n))
}

/// Parses a schema-11 deck config with the reference library's leniency
/// (storage.md §7.7). `mtime_secs`/`usn` come from `mod`/`usn`.
pub fn deckconfig_from_json(v: &Value) -> Result<DeckConfigRow, ConvertError> {
    let o = json::object(v, "deck config")?;
    let id = json::int_or_string(json::req(o, "id")?, "id")?;
    let mtime_secs = json::int_or_string(json::req(o, "mod")?, "mod")?;
    let name = json::string(json::req(o, "name")?, "name")?;
    let usn: i32 = json::int(json::req(o, "usn")?, "usn")?;
    let max_taken: i32 = json::int(json::req(o, "maxTaken")?, "maxTaken")?;
    let autoplay = json::strict_bool(json::req(o, "autoplay")?, "autoplay")?;
    let timer: u8 = json::req_lenient(o, "timer", 0, json::int)?;
    let replayq = json::opt(o, "replayq", false, json::strict_bool)?;
    // A sub-object with any error is replaced by its defaults, unknown keys
    // included; only its absence is an error.
    let new = new_from_json(json::req(o, "new")?).unwrap_or_default();
    let rev = rev_from_json(json::req(o, "rev")?).unwrap_or_default();
    let lapse = lapse_from_json(json::req(o, "lapse")?).unwrap_or_default();

    let mut other = json::unknown_keys(o, TOP_KEYS);
    for key in SUB_OBJECTS {
        other.remove(*key);
    }
    for (key, sub) in [
        ("new", new.other),
        ("rev", rev.other),
        ("lapse", lapse.other),
    ] {
        if !sub.is_empty() {
            other.insert(key.into(), Value::Object(sub));
        }
    }

    let config = deck_config::Config {
        learn_steps: new.delays,
        relearn_steps: lapse.delays,
        fsrs_params_4: json::opt(o, "fsrsWeights", Vec::new(), json::float_vec)?,
        easy_days_percentages: json::opt(o, "easyDaysPercentages", Vec::new(), json::float_vec)?,
        fsrs_params_5: json::opt(o, "fsrsParams5", Vec::new(), json::float_vec)?,
        fsrs_params_6: json::opt(o, "fsrsParams6", Vec::new(), json::float_vec)?,
        new_per_day: new.per_day,
        reviews_per_day: rev.per_day,
        initial_ease: f32::from(new.initial_factor) / 1000.0,
        easy_multiplier: rev.ease4,
        hard_multiplier: rev.hard_factor,
        lapse_multiplier: lapse.mult,
        interval_multiplier: rev.ivl_fct,
        maximum_review_interval: rev.max_ivl,
        minimum_lapse_interval: lapse.min_int,
        graduating_interval_good: u32::from(new.ints.0),
        graduating_interval_easy: u32::from(new.ints.1),
        // Note the inversion: schema 11 says 0 = random, 1 = due.
        new_card_insert_order: if new.order == 0 {
            NewCardInsertOrder::Random as i32
        } else {
            NewCardInsertOrder::Due as i32
        },
        leech_action: i32::from(lapse.leech_action),
        leech_threshold: lapse.leech_fails,
        disable_autoplay: !autoplay,
        cap_answer_time_to_secs: max_taken.max(0) as u32,
        show_timer: timer != 0,
        skip_question_when_replaying_answer: !replayq,
        bury_new: new.bury,
        bury_reviews: rev.bury,
        bury_interday_learning: json::opt(o, "buryInterdayLearning", false, json::strict_bool)?,
        new_mix: json::opt(o, "newMix", 0, json::int)?,
        interday_learning_mix: json::opt(o, "interdayLearningMix", 0, json::int)?,
        new_card_sort_order: json::opt(o, "newSortOrder", 0, json::int)?,
        review_order: json::opt(o, "reviewOrder", 0, json::int)?,
        new_card_gather_priority: json::opt(o, "newGatherPriority", 0, json::int)?,
        new_per_day_minimum: json::opt(o, "newPerDayMinimum", 0, json::int)?,
        question_action: small_enum(o, "questionAction", 1)?,
        desired_retention: json::opt(o, "desiredRetention", 0.0, json::float)?,
        stop_timer_on_answer: json::opt(o, "stopTimerOnAnswer", false, json::strict_bool)?,
        historical_retention: json::opt(o, "sm2Retention", 0.0, json::float)?,
        seconds_to_show_question: json::opt(o, "secondsToShowQuestion", 0.0, json::float)?,
        seconds_to_show_answer: json::opt(o, "secondsToShowAnswer", 0.0, json::float)?,
        answer_action: small_enum(o, "answerAction", 4)?,
        wait_for_audio: json::opt(o, "waitForAudio", true, json::strict_bool)?,
        param_search: json::opt(o, "weightSearch", String::new(), json::string)?,
        ignore_revlogs_before_date: json::opt(
            o,
            "ignoreRevlogsBeforeDate",
            String::new(),
            json::string,
        )?,
        other: json::other_bytes(&other),
    };
    Ok(DeckConfigRow {
        id,
        name,
        mtime_secs,
        usn,
        config,
    })
}

// --------------------------------------------------------------- storage

/// The preset with this id as stored (not clamped), if it exists.
pub fn load_deckconfig(conn: &Connection, id: i64) -> Result<Option<DeckConfigRow>, ConvertError> {
    let Some(row) = load_config_row(conn, "deck_config", id)? else {
        return Ok(None);
    };
    Ok(Some(DeckConfigRow {
        id,
        name: row.name,
        mtime_secs: row.mtime_secs,
        usn: row.usn,
        config: decode_blob(&row.config, "deck_config.config")?,
    }))
}

/// Ids of the presets with `usn >= min_usn`, ascending.
pub fn deckconfig_ids_since(conn: &Connection, min_usn: i32) -> Result<Vec<i64>, ConvertError> {
    super::ids_since(conn, "deck_config", min_usn)
}

/// Adds or replaces a preset as it is: names need not be unique and the
/// usn is stored as given (collection-sync §7.3).
pub fn store_deckconfig(conn: &Connection, c: &DeckConfigRow) -> Result<(), ConvertError> {
    if c.id == 0 {
        return Err(ConvertError::Invalid("deck config id 0".into()));
    }
    conn.execute(
        "INSERT OR REPLACE INTO deck_config (id, name, mtime_secs, usn, config)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![c.id, c.name, c.mtime_secs, c.usn, c.config.encode_to_vec()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    /// storage.md §7.11: the fresh default preset.
    fn default_json() -> Value {
        json!({"id":1,"mod":0,"name":"Default","usn":0,"maxTaken":60,"autoplay":true,"timer":0,
         "replayq":true,
         "new":{"bury":false,"delays":[1.0,10.0],"initialFactor":2500,"ints":[1,4,0],"order":1,"perDay":20},
         "rev":{"bury":false,"ease4":1.3,"ivlFct":1.0,"maxIvl":36500,"perDay":200,"hardFactor":1.2},
         "lapse":{"delays":[10.0],"leechAction":1,"leechFails":8,"minInt":1,"mult":0.0},
         "dyn":false,"newMix":0,"newPerDayMinimum":0,"interdayLearningMix":0,"reviewOrder":0,
         "newSortOrder":0,"newGatherPriority":0,"buryInterdayLearning":false,"fsrsWeights":[],
         "fsrsParams5":[],"fsrsParams6":[],"desiredRetention":0.9,"ignoreRevlogsBeforeDate":"",
         "easyDaysPercentages":[1.0,1.0,1.0,1.0,1.0,1.0,1.0],"stopTimerOnAnswer":false,
         "secondsToShowQuestion":0.0,"secondsToShowAnswer":0.0,"questionAction":0,
         "answerAction":0,"waitForAudio":true,"sm2Retention":0.9,"weightSearch":""})
    }

    /// The "Default" preset blob of a collection created by Anki 26.9.
    const DEFAULT_BLOB_HEX: &str = "0a080000803f00002041120400002041221c0000803f0000803f0000803f0000803f0000803f0000803f0000803f481450c8015d00002040656666a63f6d9a99993f7d0000803f8001949d02880101900101980104a80101b00108c0013cad026666663fc5026666663fe00201";

    fn parse(v: &Value) -> DeckConfigRow {
        deckconfig_from_json(v).expect("parses")
    }

    fn with(changes: Value) -> Value {
        let mut v = default_json();
        for (k, change) in changes.as_object().unwrap() {
            match (v.get_mut(k), change) {
                (Some(Value::Object(sub)), Value::Object(inner)) => {
                    for (ik, iv) in inner {
                        if iv == &json!("<remove>") {
                            sub.remove(ik);
                        } else {
                            sub.insert(ik.clone(), iv.clone());
                        }
                    }
                }
                _ if change == &json!("<remove>") => {
                    v.as_object_mut().unwrap().remove(k);
                }
                _ => {
                    v[k] = change.clone();
                }
            }
        }
        v
    }

    #[test]
    fn default_example_round_trips_to_the_library_blob() {
        let row = parse(&default_json());
        assert_eq!(row.config, default_deck_config());
        let hex: String = row
            .config
            .encode_to_vec()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, DEFAULT_BLOB_HEX);
        assert_eq!(deckconfig_to_json(&row), default_json());
    }

    #[test]
    fn inverted_and_negated_settings() {
        let c = parse(&with(
            json!({"new": {"order": 0}, "autoplay": false, "replayq": false,
            "timer": 1, "lapse": {"leechAction": 0}}),
        ))
        .config;
        assert_eq!(c.new_card_insert_order, NewCardInsertOrder::Random as i32);
        assert!(c.disable_autoplay && c.skip_question_when_replaying_answer && c.show_timer);
        assert_eq!(c.leech_action, LeechAction::Suspend as i32);
        let out = deckconfig_to_json(&DeckConfigRow {
            config: c,
            ..parse(&default_json())
        });
        assert_eq!(out["new"]["order"], json!(0));
        assert_eq!(
            (&out["autoplay"], &out["replayq"]),
            (&json!(false), &json!(false))
        );
        assert_eq!(
            (&out["timer"], &out["lapse"]["leechAction"]),
            (&json!(1), &json!(0))
        );

        let c = parse(&default_json()).config;
        assert_eq!(c.new_card_insert_order, NewCardInsertOrder::Due as i32);
        // replayq absent ⇒ false ⇒ skip; timer `true` ⇒ 0; timer 7 ⇒ shown.
        let c = parse(&with(json!({"replayq": "<remove>", "timer": true}))).config;
        assert!(c.skip_question_when_replaying_answer && !c.show_timer);
        assert!(parse(&with(json!({"timer": 7}))).config.show_timer);
        // Unknown enum values are emitted as upstream maps them.
        let mut row = parse(&default_json());
        row.config.new_card_insert_order = 9;
        row.config.leech_action = 9;
        row.config.question_action = 9;
        row.config.answer_action = 9;
        let out = deckconfig_to_json(&row);
        assert_eq!(out["new"]["order"], json!(1));
        assert_eq!(out["lapse"]["leechAction"], json!(0));
        assert_eq!(
            (&out["questionAction"], &out["answerAction"]),
            (&json!(0), &json!(0))
        );
        row.config.answer_action = 3;
        assert_eq!(deckconfig_to_json(&row)["answerAction"], json!(3));
    }

    #[test]
    fn floats_stay_f32_and_truncate_back() {
        let c = parse(&with(json!({"new": {"initialFactor": 2300},
            "rev": {"ease4": 1.45, "ivlFct": 0.95}})))
        .config;
        assert_eq!(c.initial_ease, 2.3f32);
        assert_eq!(c.easy_multiplier, 1.45f32);
        let row = DeckConfigRow {
            config: c,
            ..parse(&default_json())
        };
        let out = deckconfig_to_json(&row);
        assert_eq!(out["new"]["initialFactor"], json!(2300));
        assert_eq!(out["rev"]["ease4"].to_string(), "1.45");
        assert_eq!(out["rev"]["ivlFct"].to_string(), "0.95");
        let mut row = row;
        row.config.initial_ease = 2.4567;
        assert_eq!(
            deckconfig_to_json(&row)["new"]["initialFactor"],
            json!(2456)
        );
    }

    #[test]
    fn sub_objects_reset_wholesale_on_error() {
        // A missing new.perDay also resets new.delays (verified upstream).
        let c = parse(&with(json!({"new": {"perDay": "<remove>", "delays": [3.0],
            "separate": true}})))
        .config;
        assert_eq!(c.learn_steps, vec![1.0, 10.0]);
        assert_eq!(c.new_per_day, 20);
        assert!(
            c.other.is_empty(),
            "unknown keys of a reset sub-object are lost"
        );
        let c = parse(&with(json!({"rev": {"ease4": "1.3", "perDay": 5}}))).config;
        assert_eq!(c.reviews_per_day, 200);
        let c = parse(&with(json!({"lapse": {"leechFails": -1, "mult": 0.5}}))).config;
        assert_eq!(c.lapse_multiplier, 0.0);
        let c = parse(&with(json!({"lapse": []}))).config;
        assert_eq!(c.relearn_steps, vec![10.0]);
        // Lenient sub-keys do not reset their sub-object.
        let c = parse(&with(
            json!({"new": {"perDay": "x", "delays": null, "order": 5,
            "ints": [-5, 4, 3], "initialFactor": 2000}}),
        ))
        .config;
        assert_eq!((c.new_per_day, c.learn_steps.len()), (0, 0));
        assert_eq!(c.new_card_insert_order, NewCardInsertOrder::Due as i32);
        assert_eq!(
            (c.graduating_interval_good, c.graduating_interval_easy),
            (1, 4)
        );
        assert_eq!(c.initial_ease, 2.0);
        let c = parse(&with(
            json!({"new": {"ints": [3, 9]}, "rev": {"hardFactor": "<remove>",
            "perDay": null}, "lapse": {"leechAction": 4}}),
        ))
        .config;
        assert_eq!(
            (c.graduating_interval_good, c.graduating_interval_easy),
            (3, 9)
        );
        assert_eq!((c.hard_multiplier, c.reviews_per_day), (1.2, 0));
        assert_eq!(c.leech_action, LeechAction::TagOnly as i32);
        let c = parse(&with(json!({"new": {"ints": [4]}}))).config;
        assert_eq!(
            (c.graduating_interval_good, c.graduating_interval_easy),
            (1, 4)
        );
        // Only a missing sub-object is an error.
        assert!(deckconfig_from_json(&with(json!({"lapse": "<remove>"}))).is_err());
    }

    #[test]
    fn top_level_rules() {
        let c = parse(&with(
            json!({"maxTaken": -5, "dyn": "junk", "id": "7", "mod": "8"}),
        ));
        assert_eq!((c.id, c.mtime_secs), (7, 8));
        assert_eq!(c.config.cap_answer_time_to_secs, 0);
        // Clamped on output, as the library does when reading.
        assert_eq!(deckconfig_to_json(&c)["maxTaken"], json!(60));
        for (key, bad) in [
            ("autoplay", json!(1)),
            ("maxTaken", json!("60")),
            ("usn", json!(1.5)),
            ("replayq", json!(1)),
            ("newMix", json!("1")),
            ("newPerDayMinimum", json!(-1)),
            ("fsrsWeights", json!(null)),
            ("desiredRetention", json!("0.9")),
            ("questionAction", json!(2)),
            ("answerAction", json!(5)),
            ("waitForAudio", json!(0)),
            ("weightSearch", json!(null)),
            ("timer", json!("<remove>")),
            ("new", json!("<remove>")),
        ] {
            assert!(
                deckconfig_from_json(&with(json!({ key: bad }))).is_err(),
                "{key}"
            );
        }
        let c = parse(&with(json!({"answerAction": 4, "questionAction": 1}))).config;
        assert_eq!((c.answer_action, c.question_action), (4, 1));
    }

    #[test]
    fn legacy_config_gets_zero_defaults_then_clamps() {
        // What 2.1.56 sends: none of the newer keys.
        let mut v = default_json();
        for k in [
            "newMix",
            "newPerDayMinimum",
            "interdayLearningMix",
            "reviewOrder",
            "newSortOrder",
            "newGatherPriority",
            "buryInterdayLearning",
            "fsrsWeights",
            "fsrsParams5",
            "fsrsParams6",
            "desiredRetention",
            "ignoreRevlogsBeforeDate",
            "easyDaysPercentages",
            "stopTimerOnAnswer",
            "secondsToShowQuestion",
            "secondsToShowAnswer",
            "questionAction",
            "answerAction",
            "waitForAudio",
            "sm2Retention",
            "weightSearch",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        v["rev"].as_object_mut().unwrap().remove("hardFactor");
        let row = parse(&v);
        let c = &row.config;
        assert_eq!((c.desired_retention, c.historical_retention), (0.0, 0.0));
        assert!(c.easy_days_percentages.is_empty());
        assert!(c.wait_for_audio);
        assert_eq!(c.hard_multiplier, 1.2);
        let out = deckconfig_to_json(&row);
        assert_eq!(out["desiredRetention"].to_string(), "0.9");
        assert_eq!(out["sm2Retention"].to_string(), "0.9");
        assert_eq!(out["easyDaysPercentages"], json!([]));
    }

    #[test]
    fn clamping_replaces_out_of_range_values() {
        let mut c = default_deck_config();
        c.new_per_day = 10_000;
        c.initial_ease = 1.3;
        c.easy_multiplier = f32::NAN;
        c.hard_multiplier = 2.0;
        c.lapse_multiplier = 1.5;
        c.interval_multiplier = 0.1;
        c.maximum_review_interval = 0;
        c.minimum_lapse_interval = 40_000;
        c.graduating_interval_good = 0;
        c.graduating_interval_easy = 0;
        c.leech_threshold = 0;
        c.cap_answer_time_to_secs = 0;
        c.desired_retention = 0.995;
        c.historical_retention = 0.98;
        clamp_deck_config(&mut c);
        assert_eq!(c, default_deck_config());
        let mut ok = default_deck_config();
        ok.initial_ease = 1.31;
        ok.desired_retention = 0.7;
        let before = ok.clone();
        clamp_deck_config(&mut ok);
        assert_eq!(ok, before);
    }

    #[test]
    fn unknown_keys_nest_and_come_back() {
        let v = with(
            json!({"new": {"separate": true}, "rev": {"fuzz": 0.05, "minSpace": 1},
            "liteKey": [1]}),
        );
        let row = parse(&v);
        assert_eq!(
            json::parse_other(&row.config.other),
            *json!({"liteKey": [1], "new": {"separate": true},
                "rev": {"fuzz": 0.05, "minSpace": 1}})
            .as_object()
            .unwrap()
        );
        assert_eq!(deckconfig_to_json(&row), v);

        // Reserved keys in `other` (also inside the sub-objects) are dropped.
        let mut row = parse(&default_json());
        row.config.other =
            br#"{"name":"evil","keep":1,"new":{"perDay":5,"k":2},"lapse":7}"#.to_vec();
        let out = deckconfig_to_json(&row);
        assert_eq!((&out["name"], &out["keep"]), (&json!("Default"), &json!(1)));
        assert_eq!(
            (&out["new"]["perDay"], &out["new"]["k"]),
            (&json!(20), &json!(2))
        );
        assert_eq!(out["lapse"]["mult"].to_string(), "0.0");
    }

    #[test]
    fn store_and_load() {
        let conn = testutil::conn();
        let mut a = parse(&default_json());
        a.usn = -1;
        store_deckconfig(&conn, &a).unwrap();
        let mut b = a.clone();
        b.id = 2;
        b.usn = 4;
        store_deckconfig(&conn, &b).unwrap();
        assert_eq!(load_deckconfig(&conn, 2).unwrap().as_ref(), Some(&b));
        assert_eq!(load_deckconfig(&conn, 1).unwrap().unwrap().usn, -1);
        assert_eq!(load_deckconfig(&conn, 3).unwrap(), None);
        assert_eq!(deckconfig_ids_since(&conn, 0).unwrap(), vec![2]);
        // An all-default message is stored as an empty blob, not NULL.
        let mut empty = a.clone();
        empty.id = 5;
        empty.config = deck_config::Config::default();
        store_deckconfig(&conn, &empty).unwrap();
        let (kind, len): (String, i64) = conn
            .query_row(
                "SELECT typeof(config), length(config) FROM deck_config WHERE id = 5",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((kind.as_str(), len), ("blob", 0));
        empty.id = 0;
        assert!(store_deckconfig(&conn, &empty).is_err());
    }
}
