//! What an uploaded collection may hold besides data (issue 14, item 5).
//!
//! Anki's schema-11 and schema-18 files hold tables and plain indexes only
//! (the tables of `SCHEMA18_DDL` and their indexes, one of them partial:
//! `idx_cards_odid ... WHERE odid != 0`; schema 11 has a subset; `ANALYZE`
//! adds `sqlite_stat1`/`sqlite_stat4`). Collections that add-ons touched may
//! carry more, and a user's real collection must not be refused for it, so:
//!
//! - **Kept**: add-on tables, virtual ones included (full-text indexes), and
//!   plain column indexes anywhere. They are data; the server never reads
//!   or writes add-on tables, so nothing in them runs here (a virtual
//!   table's module is only called when the table is used, and ours lacks
//!   FTS and R*Tree anyway), and a plain index is only maintained when its
//!   table is written, at a cost bounded by the rows.
//! - **Removed, with a log line**: triggers and views (code without data:
//!   a trigger runs on the server's own writes, e.g. a recursive query on
//!   `UPDATE` of `col`; a view is a stored query), and indexes on
//!   expressions or with a `WHERE` clause other than Anki's own (their
//!   expressions run on every write and in the integrity check). Removing
//!   them loses no data; an add-on that wants them back recreates them on
//!   the device.
//! - **Refused** (the upload is "corrupt"): an Anki table name held by a
//!   view or a virtual table, a non-literal `DEFAULT` on an Anki table (our
//!   inserts would evaluate it), and generated columns in any table (they
//!   compute on reads, writes and the integrity check, and cannot be
//!   removed without rewriting the table). Anki and add-ons never make them.
//!
//! Connections never run triggers, views, foreign keys or CHECK constraints
//! anyway ([`super::harden`]); this also keeps such code out of the file the
//! user's other devices download.

use rusqlite::Connection;

use super::register_unicase;
use super::schema::SCHEMA18_DDL;

/// The tables Anki creates, in any schema from 11 to 18.
const ANKI_TABLES: [&str; 12] = [
    "col",
    "notes",
    "cards",
    "revlog",
    "graves",
    "deck_config",
    "config",
    "tags",
    "fields",
    "templates",
    "notetypes",
    "decks",
];

/// One object of the file's schema.
struct Object {
    kind: String,
    name: String,
    table: String,
    sql: Option<String>,
}

/// Removes from an uploaded collection (a private temporary copy) what may
/// run code and holds no data, or refuses the file. Returns what was
/// removed, for the log; the error is the reason for refusing, for the log.
pub fn sanitize_upload(conn: &Connection) -> Result<Vec<String>, String> {
    let objects = schema_objects(conn).map_err(|e| format!("reading the schema: {e}"))?;
    refuse_code_in_tables(conn, &objects)?;
    let anki_indexes = anki_index_definitions().map_err(|e| format!("reference schema: {e}"))?;
    let mut removed = Vec::new();
    for object in &objects {
        let drop = match object.kind.as_str() {
            "trigger" => Some(format!("trigger {} on {}", object.name, object.table)),
            "view" => Some(format!("view {}", object.name)),
            "index" if object.sql.is_some() => {
                let runs_code = index_runs_code(conn, object)
                    .map_err(|e| format!("reading index {}: {e}", object.name))?;
                let anki_own = object.sql.as_deref().map(normalized)
                    == anki_indexes
                        .iter()
                        .find(|(name, _)| *name == object.name)
                        .map(|(_, sql)| sql.clone());
                (runs_code && !anki_own).then(|| {
                    format!(
                        "index {} on {} (expression or WHERE clause)",
                        object.name, object.table
                    )
                })
            }
            _ => None,
        };
        if let Some(what) = drop {
            let statement = format!("DROP {} {}", object.kind, quoted(&object.name));
            conn.execute_batch(&statement)
                .map_err(|e| format!("removing {what}: {e}"))?;
            removed.push(what);
        }
    }
    Ok(removed)
}

fn schema_objects(conn: &Connection) -> rusqlite::Result<Vec<Object>> {
    let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema")?;
    let rows = stmt.query_map([], |r| {
        Ok(Object {
            kind: r.get(0)?,
            name: r.get(1)?,
            table: r.get(2)?,
            sql: r.get(3)?,
        })
    })?;
    rows.collect()
}

fn is_virtual(object: &Object) -> bool {
    object
        .sql
        .as_deref()
        .is_some_and(|sql| normalized(sql).starts_with("createvirtualtable"))
}

fn refuse_code_in_tables(conn: &Connection, objects: &[Object]) -> Result<(), String> {
    for name in ANKI_TABLES {
        let Some(object) = objects.iter().find(|o| o.name.eq_ignore_ascii_case(name)) else {
            continue;
        };
        if object.kind != "table" || is_virtual(object) {
            return Err(format!("Anki's table {name} is a {} here", kind_of(object)));
        }
    }
    for table in objects
        .iter()
        .filter(|o| o.kind == "table" && !is_virtual(o))
    {
        let anki = ANKI_TABLES
            .iter()
            .any(|name| table.name.eq_ignore_ascii_case(name));
        let mut stmt = conn
            .prepare("SELECT name, dflt_value, hidden FROM pragma_table_xinfo(?1)")
            .map_err(|e| e.to_string())?;
        let columns = stmt
            .query_map([&table.name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| format!("reading table {}: {e}", table.name))?;
        for (column, default, hidden) in columns {
            // 2 and 3: generated columns (1 is a virtual table's hidden column).
            if hidden == 2 || hidden == 3 {
                return Err(format!(
                    "table {} has a generated column {column}",
                    table.name
                ));
            }
            if anki && default.as_deref().is_some_and(|d| !is_literal(d)) {
                return Err(format!(
                    "Anki's table {} has a computed default for {column}",
                    table.name
                ));
            }
        }
    }
    Ok(())
}

fn kind_of(object: &Object) -> &str {
    if is_virtual(object) {
        "virtual table"
    } else {
        &object.kind
    }
}

/// True for an index that evaluates expressions: on an expression, or
/// partial (a `WHERE` clause).
fn index_runs_code(conn: &Connection, index: &Object) -> rusqlite::Result<bool> {
    let partial: bool = conn.query_row(
        "SELECT partial FROM pragma_index_list(?1) WHERE name = ?2",
        [&index.table, &index.name],
        |r| r.get(0),
    )?;
    // cid -2: the key is an expression (-1 is the rowid).
    let expressions: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_index_xinfo(?1) WHERE key AND cid = -2",
        [&index.name],
        |r| r.get(0),
    )?;
    Ok(partial || expressions > 0)
}

/// Anki's index names and their SQL, normalized.
fn anki_index_definitions() -> rusqlite::Result<Vec<(String, String)>> {
    let reference = Connection::open_in_memory()?;
    register_unicase(&reference)?;
    reference.execute_batch(SCHEMA18_DDL)?;
    let mut stmt = reference
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, normalized(&r.get::<_, String>(1)?)))
    })?;
    rows.collect()
}

/// SQL without case and white space, to compare definitions.
fn normalized(sql: &str) -> String {
    sql.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A literal `DEFAULT`: a number, a string or blob literal, NULL, TRUE,
/// FALSE or a CURRENT_* keyword (nothing that calls a function).
fn is_literal(text: &str) -> bool {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    if matches!(
        upper.as_str(),
        "NULL" | "TRUE" | "FALSE" | "CURRENT_TIME" | "CURRENT_DATE" | "CURRENT_TIMESTAMP"
    ) {
        return true;
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return true;
    }
    let quoted = t.strip_prefix(['x', 'X']).unwrap_or(t);
    quoted.len() >= 2
        && quoted.starts_with('\'')
        && quoted.ends_with('\'')
        && !quoted[1..quoted.len() - 1].replace("''", "").contains('\'')
}

/// An identifier quoted for SQL.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        register_unicase(&conn).unwrap();
        conn.execute_batch(SCHEMA18_DDL).unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        super::super::harden::harden(&conn, std::time::Duration::from_secs(60)).unwrap();
        conn
    }

    fn names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_collection_as_anki_makes_it_is_left_alone() {
        let conn = collection();
        let before = names(&conn);
        assert!(before.contains(&"idx_cards_odid".to_string()));
        assert_eq!(sanitize_upload(&conn).unwrap(), Vec::<String>::new());
        assert_eq!(names(&conn), before);
    }

    #[test]
    fn code_is_removed_and_add_on_data_kept() {
        let conn = Connection::open_in_memory().unwrap();
        register_unicase(&conn).unwrap();
        conn.execute_batch(SCHEMA18_DDL).unwrap();
        conn.execute_batch(
            r#"create trigger spin after update on col begin
                 select count(*) from (with recursive n(i) as
                   (select 1 union all select i + 1 from n) select i from n where i < 0);
               end;
               create view "odd ""view""" as select * from notes;
               create index by_length on notes (length(flds));
               create index due_only on cards (due) where queue = 2;
               create table addon_data (x text, y integer default (random()));
               insert into addon_data (x) values ('kept');
               create index addon_by_x on addon_data (x);
               create index addon_cards_by_mod on cards (mod);
               create index addon_upper on addon_data (upper(x));"#,
        )
        .unwrap();
        super::super::harden::harden(&conn, std::time::Duration::from_secs(60)).unwrap();
        let mut removed = sanitize_upload(&conn).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                "index addon_upper on addon_data (expression or WHERE clause)",
                "index by_length on notes (expression or WHERE clause)",
                "index due_only on cards (expression or WHERE clause)",
                "trigger spin on col",
                "view odd \"view\"",
            ]
        );
        let left = names(&conn);
        for kept in [
            "addon_data",
            "addon_by_x",
            "addon_cards_by_mod",
            "idx_cards_odid",
        ] {
            assert!(left.contains(&kept.to_string()), "{kept} removed");
        }
        let x: String = conn
            .query_row("select x from addon_data", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, "kept");
    }

    #[test]
    fn anki_tables_that_carry_code_are_refused() {
        let cases = [
            (
                "alter table notes rename to notes_real;
                 create view notes as select * from notes_real;",
                "is a view",
            ),
            (
                "drop table graves;
                 create table graves (oid integer not null, type integer not null,
                   usn integer not null default (abs(random())), primary key (oid, type))
                   without rowid;",
                "computed default",
            ),
            (
                "create table addon (x integer, y as (x * 2));",
                "generated column",
            ),
            (
                "alter table revlog add column extra text as (upper(cid)) virtual;",
                "generated column",
            ),
        ];
        for (change, reason) in cases {
            let conn = Connection::open_in_memory().unwrap();
            register_unicase(&conn).unwrap();
            conn.execute_batch(SCHEMA18_DDL).unwrap();
            conn.execute_batch(change).unwrap();
            super::super::harden::harden(&conn, std::time::Duration::from_secs(60)).unwrap();
            let err = sanitize_upload(&conn).unwrap_err();
            assert!(err.contains(reason), "{change}: {err}");
        }
        // Literal defaults are fine, also on Anki's tables.
        let conn = collection();
        conn.execute_batch(
            "alter table notes add column a integer default 0;
             alter table notes add column b text default 'x''y';
             alter table notes add column c integer default -1.5e3;
             alter table notes add column d blob default x'00ff';
             alter table notes add column e default null;",
        )
        .unwrap();
        sanitize_upload(&conn).unwrap();
    }

    #[test]
    fn literals() {
        for text in [
            "0",
            "-1",
            "+2.5",
            "1e10",
            "0x1F",
            "'a''b'",
            "X'00'",
            "NULL",
            "current_time",
        ] {
            assert!(is_literal(text), "{text}");
        }
        for text in ["(random())", "abs(-1)", "'a' || 'b'", "'a''", "x", "(1)"] {
            assert!(!is_literal(text), "{text}");
        }
    }
}
