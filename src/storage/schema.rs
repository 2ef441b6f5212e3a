//! The SQL layout of a schema-18 Anki collection.
//!
//! Clients open a downloaded file with `PRAGMA integrity_check` and then read
//! it with their own queries, so tables, column order, declared types,
//! collations and indexes follow what the reference library creates (checked
//! against a file made by Anki 26.9). The `sqlite_stat*` tables that
//! `ANALYZE` adds to library-made files are optional and left out.

/// Creates every table and index of an empty schema-18 collection.
///
/// Run it inside a transaction on an empty database whose connection has the
/// `unicase` collation registered (see [`super::register_unicase`]).
pub const SCHEMA18_DDL: &str = r#"
CREATE TABLE col (
  id integer PRIMARY KEY,
  crt integer NOT NULL,
  mod integer NOT NULL,
  scm integer NOT NULL,
  ver integer NOT NULL,
  dty integer NOT NULL,
  usn integer NOT NULL,
  ls integer NOT NULL,
  conf text NOT NULL,
  models text NOT NULL,
  decks text NOT NULL,
  dconf text NOT NULL,
  tags text NOT NULL
);

CREATE TABLE notes (
  id integer PRIMARY KEY,
  guid text NOT NULL,
  mid integer NOT NULL,
  mod integer NOT NULL,
  usn integer NOT NULL,
  tags text NOT NULL,
  flds text NOT NULL,
  -- integer affinity on purpose: numeric sort fields then sort numerically
  sfld integer NOT NULL,
  csum integer NOT NULL,
  flags integer NOT NULL,
  data text NOT NULL
);

CREATE TABLE cards (
  id integer PRIMARY KEY,
  nid integer NOT NULL,
  did integer NOT NULL,
  ord integer NOT NULL,
  mod integer NOT NULL,
  usn integer NOT NULL,
  type integer NOT NULL,
  queue integer NOT NULL,
  due integer NOT NULL,
  ivl integer NOT NULL,
  factor integer NOT NULL,
  reps integer NOT NULL,
  lapses integer NOT NULL,
  left integer NOT NULL,
  odue integer NOT NULL,
  odid integer NOT NULL,
  flags integer NOT NULL,
  data text NOT NULL
);

CREATE TABLE revlog (
  id integer PRIMARY KEY,
  cid integer NOT NULL,
  usn integer NOT NULL,
  ease integer NOT NULL,
  ivl integer NOT NULL,
  lastIvl integer NOT NULL,
  factor integer NOT NULL,
  time integer NOT NULL,
  type integer NOT NULL
);

CREATE TABLE graves (
  oid integer NOT NULL,
  type integer NOT NULL,
  usn integer NOT NULL,
  PRIMARY KEY (oid, type)
) WITHOUT ROWID;

CREATE TABLE deck_config (
  id integer PRIMARY KEY NOT NULL,
  name text NOT NULL COLLATE unicase,
  mtime_secs integer NOT NULL,
  usn integer NOT NULL,
  config blob NOT NULL
);

CREATE TABLE config (
  KEY text NOT NULL PRIMARY KEY,
  usn integer NOT NULL,
  mtime_secs integer NOT NULL,
  val blob NOT NULL
) WITHOUT ROWID;

CREATE TABLE fields (
  ntid integer NOT NULL,
  ord integer NOT NULL,
  name text NOT NULL COLLATE unicase,
  config blob NOT NULL,
  PRIMARY KEY (ntid, ord)
) WITHOUT ROWID;

CREATE TABLE templates (
  ntid integer NOT NULL,
  ord integer NOT NULL,
  name text NOT NULL COLLATE unicase,
  mtime_secs integer NOT NULL,
  usn integer NOT NULL,
  config blob NOT NULL,
  PRIMARY KEY (ntid, ord)
) WITHOUT ROWID;

CREATE TABLE notetypes (
  id integer NOT NULL PRIMARY KEY,
  name text NOT NULL COLLATE unicase,
  mtime_secs integer NOT NULL,
  usn integer NOT NULL,
  config blob NOT NULL
);

CREATE TABLE decks (
  id integer PRIMARY KEY NOT NULL,
  name text NOT NULL COLLATE unicase,
  mtime_secs integer NOT NULL,
  usn integer NOT NULL,
  common blob NOT NULL,
  kind blob NOT NULL
);

CREATE TABLE tags (
  tag text NOT NULL PRIMARY KEY COLLATE unicase,
  usn integer NOT NULL,
  collapsed boolean NOT NULL,
  config blob NULL
) WITHOUT ROWID;

CREATE INDEX ix_notes_usn ON notes (usn);
CREATE INDEX ix_cards_usn ON cards (usn);
CREATE INDEX ix_revlog_usn ON revlog (usn);
CREATE INDEX ix_cards_nid ON cards (nid);
CREATE INDEX ix_cards_sched ON cards (did, queue, due);
CREATE INDEX ix_revlog_cid ON revlog (cid);
CREATE INDEX ix_notes_csum ON notes (csum);
CREATE INDEX idx_notes_mid ON notes (mid);
-- only cards in filtered decks have an original deck
CREATE INDEX idx_cards_odid ON cards (odid) WHERE odid != 0;
CREATE UNIQUE INDEX idx_fields_name_ntid ON fields (name, ntid);
CREATE UNIQUE INDEX idx_templates_name_ntid ON templates (name, ntid);
CREATE INDEX idx_templates_usn ON templates (usn);
CREATE UNIQUE INDEX idx_notetypes_name ON notetypes (name);
CREATE INDEX idx_notetypes_usn ON notetypes (usn);
CREATE UNIQUE INDEX idx_decks_name ON decks (name);
CREATE INDEX idx_graves_pending ON graves (usn);
"#;

#[cfg(test)]
mod tests {
    use super::SCHEMA18_DDL;
    use rusqlite::Connection;

    fn fresh_db() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        super::super::register_unicase(&conn).expect("collation");
        conn.execute_batch(SCHEMA18_DDL).expect("DDL runs");
        conn
    }

    fn names(conn: &Connection, kind: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name")
            .expect("prepare");
        stmt.query_map([kind], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn creates_all_tables_and_indexes() {
        let conn = fresh_db();
        assert_eq!(
            names(&conn, "table"),
            [
                "cards",
                "col",
                "config",
                "deck_config",
                "decks",
                "fields",
                "graves",
                "notes",
                "notetypes",
                "revlog",
                "tags",
                "templates"
            ]
        );
        assert_eq!(names(&conn, "index").len(), 16);
    }

    #[test]
    fn names_are_unique_case_insensitively() {
        let conn = fresh_db();
        conn.execute(
            "INSERT INTO decks VALUES (1, 'Default', 0, 0, x'', x'')",
            [],
        )
        .expect("first insert");
        assert!(
            conn.execute(
                "INSERT INTO decks VALUES (2, 'DEFAULT', 0, 0, x'', x'')",
                []
            )
            .is_err()
        );
    }

    #[test]
    fn graves_has_no_rowid_and_unique_key() {
        let conn = fresh_db();
        conn.execute("INSERT INTO graves VALUES (5, 1, 0)", [])
            .expect("insert");
        assert!(
            conn.execute("INSERT INTO graves VALUES (5, 1, 3)", [])
                .is_err()
        );
        assert!(conn.prepare("SELECT rowid FROM graves").is_err());
    }
}
