//! Notetypes: the schema-11 "model" object ↔ the `notetypes`, `fields` and
//! `templates` rows (storage.md §6.2–§6.4, §7.2–§7.5, §7.10).
//!
//! A [`NotetypeRow`] holds exactly what the three tables hold for one
//! notetype; `fields`/`templates` are in `ord` order, and the stored `ord`
//! is always the position in those vectors.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::json::{self, Res};
use super::{ConvertError, decode_blob, in_savepoint};
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
    let row = conn
        .query_row(
            "SELECT name, mtime_secs, usn, config FROM notetypes WHERE id = ?1",
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
        name,
        mtime_secs,
        usn,
        config: decode_blob(&config, "notetypes.config")?,
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
        let mut renamed = false;
        while name_taken(conn, "notetypes", &nt.name, nt.id)? {
            nt.name.push('+');
            renamed = true;
        }
        if renamed {
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

/// Whether a row of `table` other than `id` has this name (the column's
/// `unicase` collation makes the comparison case-insensitive).
pub(super) fn name_taken(
    conn: &Connection,
    table: &str,
    name: &str,
    id: i64,
) -> Result<bool, ConvertError> {
    let found = conn
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE name = ?1 AND id != ?2 LIMIT 1"),
            params![name, id],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}
