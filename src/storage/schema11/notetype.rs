//! Notetypes: the schema-11 "model" object ↔ the `notetypes`, `fields` and
//! `templates` rows (storage.md §6.2–§6.4, §7.2–§7.5, §7.10).
//!
//! A [`NotetypeRow`] holds exactly what the three tables hold for one
//! notetype; `fields`/`templates` are in `ord` order, and the stored `ord`
//! is always the position in those vectors.

use prost::Message;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::json::{self, Res};
use super::{ConvertError, decode_blob, in_savepoint, load_config_row, make_name_unique};
use crate::storage::proto::notetypes::notetype;
use notetype::config::CardRequirement;
use notetype::config::card_requirement::Kind as ReqKind;

/// One notetype as stored: the `notetypes` row plus its fields and templates.
#[derive(Debug, Clone, PartialEq)]
pub struct NotetypeRow {
    pub id: i64,
    pub name: String,
    pub mtime_secs: i64,
    pub usn: i32,
    pub config: notetype::Config,
    /// In `ord` order.
    pub fields: Vec<FieldRow>,
    /// In `ord` order.
    pub templates: Vec<TemplateRow>,
}

/// One `fields` row (its `ntid` and `ord` are implied by the parent).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRow {
    pub name: String,
    pub config: notetype::field::Config,
}

/// One `templates` row (its `ntid` and `ord` are implied by the parent).
/// `mtime_secs`/`usn` are always 0 in practice; they are kept as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRow {
    pub name: String,
    pub mtime_secs: i64,
    pub usn: i32,
    pub config: notetype::template::Config,
}

const NOTETYPE_KEYS: &[&str] = &[
    "latexPost",
    "flds",
    "css",
    "originalStockKind",
    "originalId",
    "id",
    "usn",
    "mod",
    "req",
    "latexPre",
    "name",
    "did",
    "tmpls",
    "type",
    "sortf",
    "latexsvg",
];

const FIELD_KEYS: &[&str] = &[
    "name",
    "ord",
    "sticky",
    "rtl",
    "plainText",
    "font",
    "size",
    "collapsed",
    "description",
    "excludeFromSearch",
    "id",
    "tag",
    "preventDeletion",
];

const TEMPLATE_KEYS: &[&str] = &[
    "name", "ord", "did", "afmt", "bafmt", "qfmt", "bqfmt", "bfont", "bsize", "id",
];

// ---------------------------------------------------------------- to JSON

/// The schema-11 object the reference library emits for this notetype.
pub fn notetype_to_json(nt: &NotetypeRow) -> Value {
    let c = &nt.config;
    let mut out = json::start_with_other(json::parse_other(&c.other), NOTETYPE_KEYS);
    let entries = [
        ("id", json!(nt.id)),
        ("name", json!(nt.name)),
        ("type", json!(if c.kind == 1 { 1 } else { 0 })),
        ("mod", json!(nt.mtime_secs)),
        ("usn", json!(nt.usn)),
        ("sortf", json!(c.sort_field_idx as u16)),
        (
            "did",
            match c.target_deck_id_unused {
                0 => Value::Null,
                id => json!(id),
            },
        ),
        (
            "tmpls",
            Value::Array(
                nt.templates
                    .iter()
                    .enumerate()
                    .map(|(ord, t)| template_to_json(t, ord))
                    .collect(),
            ),
        ),
        (
            "flds",
            Value::Array(
                nt.fields
                    .iter()
                    .enumerate()
                    .map(|(ord, f)| field_to_json(f, ord))
                    .collect(),
            ),
        ),
        ("css", json!(c.css)),
        ("latexPre", json!(c.latex_pre)),
        ("latexPost", json!(c.latex_post)),
        ("latexsvg", json!(c.latex_svg)),
        (
            "req",
            Value::Array(c.reqs.iter().map(requirement_to_json).collect()),
        ),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
    if c.original_stock_kind != 0 {
        out.insert("originalStockKind".into(), json!(c.original_stock_kind));
    }
    if let Some(id) = c.original_id {
        out.insert("originalId".into(), json!(id));
    }
    Value::Object(out)
}

fn requirement_to_json(r: &CardRequirement) -> Value {
    let kind = match r.kind() {
        ReqKind::Any => "any",
        ReqKind::All => "all",
        ReqKind::None => "none",
    };
    let ords: Vec<u16> = r.field_ords.iter().map(|&o| o as u16).collect();
    json!([r.card_ord as u16, kind, ords])
}

fn field_to_json(f: &FieldRow, ord: usize) -> Value {
    let c = &f.config;
    let mut out = json::start_with_other(json::parse_other(&c.other), FIELD_KEYS);
    let entries = [
        ("name", json!(f.name)),
        ("ord", json!(ord as u16)),
        ("sticky", json!(c.sticky)),
        ("rtl", json!(c.rtl)),
        ("font", json!(c.font_name)),
        ("size", json!(c.font_size as u16)),
        ("description", json!(c.description)),
        ("plainText", json!(c.plain_text)),
        ("collapsed", json!(c.collapsed)),
        ("excludeFromSearch", json!(c.exclude_from_search)),
        ("id", json!(c.id)),
        ("tag", json!(c.tag)),
        ("preventDeletion", json!(c.prevent_deletion)),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
    Value::Object(out)
}

fn template_to_json(t: &TemplateRow, ord: usize) -> Value {
    let c = &t.config;
    let mut out = json::start_with_other(json::parse_other(&c.other), TEMPLATE_KEYS);
    let entries = [
        ("name", json!(t.name)),
        ("ord", json!(ord as u16)),
        ("qfmt", json!(c.q_format)),
        ("afmt", json!(c.a_format)),
        ("bqfmt", json!(c.q_format_browser)),
        ("bafmt", json!(c.a_format_browser)),
        (
            "did",
            if c.target_deck_id > 0 {
                json!(c.target_deck_id)
            } else {
                Value::Null
            },
        ),
        ("bfont", json!(c.browser_font_name)),
        ("bsize", json!(c.browser_font_size as u8)),
        ("id", json!(c.id)),
    ];
    for (k, v) in entries {
        out.insert(k.into(), v);
    }
    Value::Object(out)
}

// -------------------------------------------------------------- from JSON

/// Parses a schema-11 notetype with the reference library's leniency
/// (storage.md §7.2–§7.5). The JSON `ord` values are validated but ignored:
/// rows are numbered by array position. Template rows get mtime/usn 0.
pub fn notetype_from_json(v: &Value) -> Result<NotetypeRow, ConvertError> {
    let o = json::object(v, "notetype")?;
    let id = json::int_or_string(json::req(o, "id")?, "id")?;
    let name = json::string(json::req(o, "name")?, "name")?;
    let kind: u8 = json::int(json::req(o, "type")?, "type")?;
    if kind > 1 {
        return Err(ConvertError::Json(format!("`type`: unknown kind {kind}")));
    }
    let mtime_secs: i64 = json::int(json::req(o, "mod")?, "mod")?;
    let usn: i32 = json::int(json::req(o, "usn")?, "usn")?;
    let sortf: u16 = json::int(json::req(o, "sortf")?, "sortf")?;
    let did = json::req_lenient(o, "did", None, |v, k| match v {
        Value::Null => Ok(None),
        _ => json::int::<i64>(v, k).map(Some),
    })?;
    let templates = json::array(json::req(o, "tmpls")?, "tmpls")?
        .iter()
        .map(template_from_json)
        .collect::<Res<Vec<_>>>()?;
    let fields = json::array(json::req(o, "flds")?, "flds")?
        .iter()
        .map(field_from_json)
        .collect::<Res<Vec<_>>>()?;
    let css = json::req_lenient(o, "css", String::new(), json::string)?;
    let latex_pre = json::opt(o, "latexPre", String::new(), json::string)?;
    let latex_post = json::opt(o, "latexPost", String::new(), json::string)?;
    let latex_svg = json::lenient(o, "latexsvg", false, json::strict_bool);
    let reqs = json::lenient(o, "req", Vec::new(), requirements_from_json);
    let original_stock_kind = json::opt(o, "originalStockKind", 0, json::int::<i32>)?;
    let original_id = json::opt_nullable(o, "originalId", json::int::<i64>)?;
    let config = notetype::Config {
        kind: i32::from(kind),
        sort_field_idx: u32::from(sortf),
        css,
        target_deck_id_unused: did.unwrap_or(0),
        latex_pre,
        latex_post,
        latex_svg,
        reqs,
        original_stock_kind,
        original_id,
        other: json::other_bytes(&json::unknown_keys(o, NOTETYPE_KEYS)),
    };
    Ok(NotetypeRow {
        id,
        name,
        mtime_secs,
        usn,
        config,
        fields,
        templates,
    })
}

fn requirements_from_json(v: &Value, key: &str) -> Res<Vec<CardRequirement>> {
    json::array(v, key)?
        .iter()
        .map(requirement_from_json)
        .collect()
}

/// `[card_ord, "any"|"all"|"none", [field_ords]]`; the struct form with the
/// snake-case field names is accepted as well, as serde would.
fn requirement_from_json(v: &Value) -> Res<CardRequirement> {
    let (card_ord, kind, ords) = match v {
        Value::Array(items) if items.len() == 3 => (&items[0], &items[1], &items[2]),
        Value::Object(o) => (
            json::req(o, "card_ord")?,
            json::req(o, "kind")?,
            json::req(o, "field_ords")?,
        ),
        _ => return Err(ConvertError::Json(format!("`req`: bad entry {v}"))),
    };
    let card_ord: u16 = json::int(card_ord, "req")?;
    let kind = match kind.as_str() {
        Some("any") => ReqKind::Any,
        Some("all") => ReqKind::All,
        Some("none") => ReqKind::None,
        _ => return Err(ConvertError::Json(format!("`req`: bad kind {kind}"))),
    };
    let field_ords = json::array(ords, "req")?
        .iter()
        .map(|o| json::int::<u16>(o, "req").map(u32::from))
        .collect::<Res<Vec<u32>>>()?;
    Ok(CardRequirement {
        card_ord: u32::from(card_ord),
        kind: kind as i32,
        field_ords,
    })
}

fn field_from_json(v: &Value) -> Res<FieldRow> {
    let o = json::object(v, "field")?;
    let name = json::string(json::req(o, "name")?, "name")?;
    json::opt_nullable(o, "ord", json::int::<u16>)?;
    let sticky = json::bool_ish(json::req(o, "sticky")?, "sticky")?;
    let rtl = json::bool_ish(json::req(o, "rtl")?, "rtl")?;
    let font_name = json::string(json::req(o, "font")?, "font")?;
    let size: u16 = json::int(json::req(o, "size")?, "size")?;
    let config = notetype::field::Config {
        sticky,
        rtl,
        font_name,
        font_size: u32::from(size),
        description: json::lenient(o, "description", String::new(), json::string),
        plain_text: json::lenient(o, "plainText", false, json::strict_bool),
        collapsed: json::lenient(o, "collapsed", false, json::strict_bool),
        exclude_from_search: json::lenient(o, "excludeFromSearch", false, json::strict_bool),
        id: json::lenient_nullable(o, "id", json::int::<i64>),
        tag: json::lenient_nullable(o, "tag", json::int::<u32>),
        prevent_deletion: json::lenient(o, "preventDeletion", false, json::strict_bool),
        other: json::other_bytes(&json::unknown_keys(o, FIELD_KEYS)),
    };
    Ok(FieldRow { name, config })
}

fn template_from_json(v: &Value) -> Res<TemplateRow> {
    let o = json::object(v, "template")?;
    let name = json::string(json::req(o, "name")?, "name")?;
    json::opt_nullable(o, "ord", json::int::<u16>)?;
    let config = notetype::template::Config {
        q_format: json::string(json::req(o, "qfmt")?, "qfmt")?,
        a_format: json::opt(o, "afmt", String::new(), json::string)?,
        q_format_browser: json::opt(o, "bqfmt", String::new(), json::string)?,
        a_format_browser: json::opt(o, "bafmt", String::new(), json::string)?,
        target_deck_id: json::lenient_nullable(o, "did", json::int::<i64>).unwrap_or(0),
        browser_font_name: json::lenient(o, "bfont", String::new(), json::string),
        browser_font_size: u32::from(json::lenient(o, "bsize", 0, json::int::<u8>)),
        id: json::lenient_nullable(o, "id", json::int::<i64>),
        other: json::other_bytes(&json::unknown_keys(o, TEMPLATE_KEYS)),
    };
    Ok(TemplateRow {
        name,
        mtime_secs: 0,
        usn: 0,
        config,
    })
}

// --------------------------------------------------------------- storage

/// The notetype with this id and its fields and templates, if it exists.
pub fn load_notetype(conn: &Connection, id: i64) -> Result<Option<NotetypeRow>, ConvertError> {
    let Some(row) = load_config_row(conn, "notetypes", id)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare("SELECT name, config FROM fields WHERE ntid = ?1 ORDER BY ord")?;
    let fields = stmt
        .query_map([id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .map(|row| {
            let (name, blob) = row?;
            let config = decode_blob(&blob, "fields.config")?;
            Ok(FieldRow { name, config })
        })
        .collect::<Res<Vec<_>>>()?;
    let mut stmt = conn.prepare(
        "SELECT name, mtime_secs, usn, config FROM templates WHERE ntid = ?1 ORDER BY ord",
    )?;
    let templates = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i32>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?
        .map(|row| {
            let (name, mtime_secs, usn, blob) = row?;
            let config = decode_blob(&blob, "templates.config")?;
            Ok(TemplateRow {
                name,
                mtime_secs,
                usn,
                config,
            })
        })
        .collect::<Res<Vec<_>>>()?;
    Ok(Some(NotetypeRow {
        id,
        name: row.name,
        mtime_secs: row.mtime_secs,
        usn: row.usn,
        config: decode_blob(&row.config, "notetypes.config")?,
        fields,
        templates,
    }))
}

/// Ids of the notetypes with `usn >= min_usn`, ascending.
pub fn notetype_ids_since(conn: &Connection, min_usn: i32) -> Result<Vec<i64>, ConvertError> {
    super::ids_since(conn, "notetypes", min_usn)
}

/// Adds or replaces a notetype with its fields and templates (collection-sync
/// §7.2 step 4, storage §7.10). While another notetype has the same name
/// (case-insensitive), `+` is appended to `nt.name` and, if that happened,
/// `nt.mtime_secs`/`nt.usn` become `now_secs`/`server_usn`; otherwise the
/// row's own mtime and usn are stored. Notes and cards are not touched.
/// Duplicate field or template names fail with [`ConvertError::Db`].
pub fn store_notetype(
    conn: &Connection,
    nt: &mut NotetypeRow,
    server_usn: i32,
    now_secs: i64,
) -> Result<(), ConvertError> {
    if nt.id == 0 {
        return Err(ConvertError::Invalid("notetype id 0".into()));
    }
    in_savepoint(conn, || {
        if make_name_unique(conn, "notetypes", &mut nt.name, nt.id)? {
            nt.mtime_secs = now_secs;
            nt.usn = server_usn;
        }
        conn.execute(
            "INSERT OR REPLACE INTO notetypes (id, name, mtime_secs, usn, config)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                nt.id,
                nt.name,
                nt.mtime_secs,
                nt.usn,
                nt.config.encode_to_vec()
            ],
        )?;
        conn.execute("DELETE FROM fields WHERE ntid = ?1", [nt.id])?;
        conn.execute("DELETE FROM templates WHERE ntid = ?1", [nt.id])?;
        let mut add_field =
            conn.prepare("INSERT INTO fields (ntid, ord, name, config) VALUES (?1, ?2, ?3, ?4)")?;
        for (ord, f) in nt.fields.iter().enumerate() {
            add_field.execute(params![nt.id, ord as i64, f.name, f.config.encode_to_vec()])?;
        }
        let mut add_template = conn.prepare(
            "INSERT INTO templates (ntid, ord, name, mtime_secs, usn, config)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (ord, t) in nt.templates.iter().enumerate() {
            add_template.execute(params![
                nt.id,
                ord as i64,
                t.name,
                t.mtime_secs,
                t.usn,
                t.config.encode_to_vec()
            ])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::json::Obj;
    use super::super::testutil;
    use super::*;

    /// storage.md §7.11 "Basic", with shortened CSS and LaTeX.
    fn basic_json() -> Value {
        json!({"id":1795348670117i64,"name":"Basic","type":0,"mod":0,"usn":0,"sortf":0,"did":null,
         "tmpls":[{"name":"Card 1","ord":0,"qfmt":"{{Front}}",
           "afmt":"{{FrontSide}}\n\n<hr id=answer>\n\n{{Back}}","bqfmt":"","bafmt":"",
           "did":null,"bfont":"","bsize":0,"id":2051354267567806708i64}],
         "flds":[{"name":"Front","ord":0,"sticky":false,"rtl":false,"font":"Arial","size":20,
           "description":"","plainText":false,"collapsed":false,"excludeFromSearch":false,
           "id":3750503914571943501i64,"tag":null,"preventDeletion":false},
          {"name":"Back","ord":1,"sticky":false,"rtl":false,"font":"Arial","size":20,
           "description":"","plainText":false,"collapsed":false,"excludeFromSearch":false,
           "id":776307749806393384i64,"tag":null,"preventDeletion":false}],
         "css":".card { color: black; }","latexPre":"\\documentclass[12pt]{article}",
         "latexPost":"\\end{document}","latexsvg":false,"req":[[0,"any",[0]]],
         "originalStockKind":1})
    }

    fn parse(v: Value) -> NotetypeRow {
        notetype_from_json(&v).expect("parses")
    }

    #[test]
    fn basic_example_round_trips() {
        let nt = parse(basic_json());
        assert_eq!(nt.config.original_stock_kind, 1);
        assert_eq!(nt.config.reqs[0].kind, ReqKind::Any as i32);
        assert_eq!(nt.fields[1].config.id, Some(776307749806393384));
        assert_eq!(notetype_to_json(&nt), basic_json());
    }

    #[test]
    fn legacy_notetype_gets_defaults() {
        // 2.1.56 sends no excludeFromSearch/id/tag/preventDeletion, no
        // template id and no originalStockKind.
        let mut v = basic_json();
        for f in v["flds"].as_array_mut().unwrap() {
            for k in ["excludeFromSearch", "id", "tag", "preventDeletion"] {
                f.as_object_mut().unwrap().remove(k);
            }
        }
        v["tmpls"][0].as_object_mut().unwrap().remove("id");
        v.as_object_mut().unwrap().remove("originalStockKind");
        let nt = parse(v);
        assert_eq!(nt.config.original_stock_kind, 0);
        assert_eq!(nt.fields[0].config.id, None);
        assert_eq!(nt.templates[0].config.id, None);
        let out = notetype_to_json(&nt);
        assert!(out.get("originalStockKind").is_none());
        assert_eq!(out["flds"][0]["id"], Value::Null);
        assert_eq!(out["flds"][0]["excludeFromSearch"], json!(false));
    }

    #[test]
    fn top_level_leniency() {
        let mut v = basic_json();
        v["did"] = json!("12");
        v["css"] = json!(5);
        v["latexsvg"] = json!("yes");
        v["req"] = json!([[0, "any", [0]], [1, "some", [0]]]);
        v["id"] = json!("1795348670117");
        v["originalId"] = json!(null);
        let nt = parse(v);
        assert_eq!(nt.id, 1795348670117);
        assert_eq!(nt.config.target_deck_id_unused, 0);
        assert_eq!(nt.config.css, "");
        assert!(!nt.config.latex_svg);
        assert!(nt.config.reqs.is_empty(), "one bad entry empties req");
        assert_eq!(nt.config.original_id, None);
        assert_eq!(notetype_to_json(&nt)["req"], json!([]));

        let mut v = basic_json();
        v["did"] = json!(77);
        v["req"] = json!([{"card_ord": 1, "kind": "all", "field_ords": [0, 1]}]);
        v["originalId"] = json!(5);
        let nt = parse(v);
        assert_eq!(nt.config.target_deck_id_unused, 77);
        assert_eq!(nt.config.original_id, Some(5));
        let out = notetype_to_json(&nt);
        assert_eq!(out["did"], json!(77));
        assert_eq!(out["req"], json!([[1, "all", [0, 1]]]));
        assert_eq!(out["originalId"], json!(5));
    }

    #[test]
    fn top_level_errors() {
        for (key, bad) in [
            ("type", json!(2)),
            ("mod", json!("5")),
            ("usn", json!(1.5)),
            ("sortf", json!(70000)),
            ("name", json!(null)),
            ("latexPre", json!(null)),
            ("originalStockKind", json!("1")),
            ("originalId", json!("5")),
            ("flds", json!({})),
        ] {
            let mut v = basic_json();
            v[key] = bad;
            assert!(notetype_from_json(&v).is_err(), "{key}");
        }
        for key in ["id", "did", "css", "tmpls", "sortf"] {
            let mut v = basic_json();
            v.as_object_mut().unwrap().remove(key);
            assert!(notetype_from_json(&v).is_err(), "missing {key}");
        }
    }

    #[test]
    fn field_leniency() {
        let mut v = basic_json();
        v["flds"][0] = json!({"name": "Front", "ord": 7, "sticky": "1", "rtl": 0,
            "font": "Arial", "size": 20, "description": 3, "plainText": 1, "collapsed": 1,
            "excludeFromSearch": "true", "id": "123", "tag": -1, "preventDeletion": null,
            "media": []});
        let nt = parse(v);
        let f = &nt.fields[0].config;
        assert!(f.sticky && !f.rtl);
        assert_eq!(f.description, "");
        assert!(!f.plain_text && !f.collapsed && !f.exclude_from_search && !f.prevent_deletion);
        assert_eq!((f.id, f.tag), (None, None));
        let out = notetype_to_json(&nt);
        assert_eq!(out["flds"][0]["ord"], json!(0), "ord is the array position");
        assert_eq!(out["flds"][0]["media"], json!([]), "unknown key kept");

        for (key, bad) in [
            ("sticky", json!("yes")),
            ("size", json!(-1)),
            ("ord", json!("0")),
        ] {
            let mut v = basic_json();
            v["flds"][0][key] = bad;
            assert!(notetype_from_json(&v).is_err(), "field {key}");
        }
        let mut v = basic_json();
        v["flds"][0]["tag"] = json!(3);
        assert_eq!(parse(v).fields[0].config.tag, Some(3));
    }

    #[test]
    fn template_leniency() {
        let mut v = basic_json();
        v["tmpls"][0] = json!({"name": "Card 1", "qfmt": "{{Front}}", "did": -5,
            "bfont": false, "bsize": 300, "id": 1.5, "extra": {"x": 1}});
        let nt = parse(v);
        let t = &nt.templates[0];
        assert_eq!((t.mtime_secs, t.usn), (0, 0));
        assert_eq!(t.config.a_format, "");
        assert_eq!(t.config.target_deck_id, -5, "stored as is");
        assert_eq!(t.config.browser_font_name, "");
        assert_eq!(t.config.browser_font_size, 0);
        assert_eq!(t.config.id, None);
        let out = notetype_to_json(&nt);
        assert_eq!(
            out["tmpls"][0]["did"],
            Value::Null,
            "only positive ids are emitted"
        );
        assert_eq!(out["tmpls"][0]["extra"], json!({"x": 1}));

        for (key, bad) in [
            ("afmt", json!(null)),
            ("qfmt", json!(1)),
            ("bqfmt", json!(2)),
        ] {
            let mut v = basic_json();
            v["tmpls"][0][key] = bad;
            assert!(notetype_from_json(&v).is_err(), "template {key}");
        }
    }

    #[test]
    fn output_truncates_like_upstream() {
        let mut nt = parse(basic_json());
        nt.fields[0].config.font_size = 65536 + 12;
        nt.templates[0].config.browser_font_size = 256 + 9;
        nt.config.sort_field_idx = 65536 + 1;
        nt.config.kind = 7;
        let out = notetype_to_json(&nt);
        assert_eq!(out["flds"][0]["size"], json!(12));
        assert_eq!(out["tmpls"][0]["bsize"], json!(9));
        assert_eq!(out["sortf"], json!(1));
        assert_eq!(out["type"], json!(0));
    }

    #[test]
    fn unknown_keys_are_kept_and_reserved_ones_dropped() {
        let mut v = basic_json();
        v["vers"] = json!([]);
        v["tags"] = json!(["a"]);
        let nt = parse(v.clone());
        assert_eq!(json::parse_other(&nt.config.other), {
            let mut o = Obj::new();
            o.insert("tags".into(), json!(["a"]));
            o.insert("vers".into(), json!([]));
            o
        });
        assert_eq!(notetype_to_json(&nt), v);

        // A reserved key smuggled into `other` never overrides the real one.
        let mut nt = parse(basic_json());
        nt.config.other = br#"{"name":"evil","css":"x","keep":1}"#.to_vec();
        nt.fields[0].config.other = br#"{"font":"evil","keep":2}"#.to_vec();
        nt.templates[0].config.other = br#"{"qfmt":"evil"}"#.to_vec();
        let out = notetype_to_json(&nt);
        assert_eq!(out["name"], json!("Basic"));
        assert_eq!(out["keep"], json!(1));
        assert_eq!(out["flds"][0]["font"], json!("Arial"));
        assert_eq!(out["flds"][0]["keep"], json!(2));
        assert_eq!(out["tmpls"][0]["qfmt"], json!("{{Front}}"));
        nt.config.other = b"garbage".to_vec();
        assert!(notetype_to_json(&nt).get("keep").is_none());
    }

    #[test]
    fn store_load_and_unique_names() {
        let conn = testutil::conn();
        let mut a = parse(basic_json());
        a.usn = 5;
        store_notetype(&conn, &mut a, 9, 1000).unwrap();
        assert_eq!((a.name.as_str(), a.mtime_secs, a.usn), ("Basic", 0, 5));
        assert_eq!(load_notetype(&conn, a.id).unwrap().as_ref(), Some(&a));
        // Replacing keeps the name and rewrites fields/templates.
        a.fields.pop();
        store_notetype(&conn, &mut a, 9, 1000).unwrap();
        assert_eq!(load_notetype(&conn, a.id).unwrap().unwrap().fields.len(), 1);

        let mut b = parse(basic_json());
        b.id = 2;
        b.name = "bASIC".into();
        store_notetype(&conn, &mut b, 9, 1000).unwrap();
        assert_eq!((b.name.as_str(), b.mtime_secs, b.usn), ("bASIC+", 1000, 9));
        let mut c = parse(basic_json());
        c.id = 3;
        store_notetype(&conn, &mut c, 9, 1000).unwrap();
        assert_eq!(c.name, "Basic++");
        assert_eq!(load_notetype(&conn, 3).unwrap().unwrap().name, "Basic++");
        assert_eq!(load_notetype(&conn, 4).unwrap(), None);

        assert_eq!(notetype_ids_since(&conn, 6).unwrap(), vec![2, 3]);
        assert_eq!(notetype_ids_since(&conn, 0).unwrap().len(), 3);

        let ords: Vec<(i64, String)> = conn
            .prepare("SELECT ord, name FROM fields WHERE ntid = 2 ORDER BY ord")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ords, vec![(0, "Front".into()), (1, "Back".into())]);
        let kind: String = conn
            .query_row(
                "SELECT typeof(config) FROM notetypes WHERE id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kind, "blob");
    }

    #[test]
    fn store_refuses_id_zero_and_duplicate_fields_atomically() {
        let conn = testutil::conn();
        let mut nt = parse(basic_json());
        nt.id = 0;
        assert!(matches!(
            store_notetype(&conn, &mut nt, 1, 1),
            Err(ConvertError::Invalid(_))
        ));
        let mut nt = parse(basic_json());
        nt.fields[1].name = "front".into();
        assert!(matches!(
            store_notetype(&conn, &mut nt, 1, 1),
            Err(ConvertError::Db(_))
        ));
        assert_eq!(load_notetype(&conn, nt.id).unwrap(), None, "rolled back");
    }
}
