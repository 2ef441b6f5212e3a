//! Deck configs (options presets): the schema-11 `dconf` object ↔ the
//! `deck_config` row and its `config` blob (storage.md §6.7, §7.7).
//!
//! The JSON nests settings in `new`/`rev`/`lapse` sub-objects, inverts two
//! booleans and the new-card order, and keeps the starting ease in permille;
//! the blob is flat. A sub-object that fails to parse is replaced wholesale
//! by its defaults, as upstream does.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::json::{self, Obj, Res};
use super::{ConvertError, decode_blob};
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
    let row = conn
        .query_row(
            "SELECT name, mtime_secs, usn, config FROM deck_config WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i32>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((name, mtime_secs, usn, config)) = row else {
        return Ok(None);
    };
    Ok(Some(DeckConfigRow {
        id,
        name,
        mtime_secs,
        usn,
        config: decode_blob(&config, "deck_config.config")?,
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
