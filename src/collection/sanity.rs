//! `sanityCheck2`: before committing, both sides compare how many cards,
//! notes, revlog entries, notetypes, decks and deck configs they hold. A
//! mismatch means the sync went wrong; it is rolled back and the client
//! forces a full sync next time.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::SyncError;

/// `[[new, learn, review], cards, notes, revlog, graves, notetypes, decks, deck_config]`.
pub type Counts = (Vec<i64>, i64, i64, i64, i64, i64, i64, i64);

#[derive(Deserialize, Debug)]
pub struct SanityRequest {
    pub client: Counts,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct SanityResponse {
    pub status: &'static str,
    pub c: Counts,
    pub s: Option<Counts>,
}

/// Compares the client's counts with ours. Due counts and grave counts are
/// ignored (older clients can hold duplicate graves).
pub fn check(col: &Connection, client: Counts) -> Result<SanityResponse, SyncError> {
    let c = normalize(client);
    let pending: bool = col.prepare_cached("select exists(select 1 from cards where usn = -1) or exists(select 1 from notes where usn = -1)
             or exists(select 1 from revlog where usn = -1) or exists(select 1 from graves where usn = -1)
             or exists(select 1 from decks where usn = -1) or exists(select 1 from deck_config where usn = -1)
             or exists(select 1 from tags where usn = -1) or exists(select 1 from notetypes where usn = -1)")?.query_row(
        [],
        |r| r.get(0),
    )?;
    if pending {
        return Ok(SanityResponse {
            status: "bad",
            c,
            s: None,
        });
    }
    let count = |table: &str| -> Result<i64, SyncError> {
        Ok(col
            .prepare_cached(&format!("select count(*) from {table}"))?
            .query_row([], |r| r.get(0))?)
    };
    let s = (
        vec![0, 0, 0],
        count("cards")?,
        count("notes")?,
        count("revlog")?,
        0,
        count("notetypes")?,
        count("decks")?,
        count("deck_config")?,
    );
    let status = if s == c { "ok" } else { "bad" };
    Ok(SanityResponse {
        status,
        c,
        s: Some(s),
    })
}

fn normalize(mut counts: Counts) -> Counts {
    counts.0 = vec![0, 0, 0];
    counts.4 = 0;
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for t in [
            "cards",
            "notes",
            "revlog",
            "graves",
            "decks",
            "deck_config",
            "tags",
            "notetypes",
        ] {
            c.execute_batch(&format!("create table {t} (usn integer)"))
                .unwrap();
        }
        c.execute_batch(
            "insert into cards values (1), (1); insert into notes values (1);
             insert into notetypes values (0); insert into decks values (0); insert into deck_config values (0);
             insert into graves values (2);",
        )
        .unwrap();
        c
    }

    #[test]
    fn equal_counts_pass_ignoring_due_and_graves() {
        let req: SanityRequest =
            serde_json::from_str(r#"{"client":[[5,6,7],2,1,0,9,1,1,1]}"#).unwrap();
        let r = check(&db(), req.client).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"ok","c":[[0,0,0],2,1,0,0,1,1,1],"s":[[0,0,0],2,1,0,0,1,1,1]}"#
        );
    }

    #[test]
    fn different_counts_or_pending_rows_fail() {
        let r = check(&db(), (vec![0, 0, 0], 3, 1, 0, 0, 1, 1, 1)).unwrap();
        assert_eq!(r.status, "bad");
        let c = db();
        c.execute("insert into tags values (-1)", []).unwrap();
        let r = check(&c, (vec![0, 0, 0], 2, 1, 0, 0, 1, 1, 1)).unwrap();
        assert_eq!((r.status, r.s), ("bad", None));
    }
}
