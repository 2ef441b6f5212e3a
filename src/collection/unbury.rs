//! The day-rollover unbury the official server does at `start` (issue 13,
//! conformance point 3). Buried cards come back the next day on every
//! device: each client unburies its own copy when its day rolls over, and
//! the official server does the same to its copy at the start of a normal
//! sync, without marking the cards modified. Skipping it would leave the
//! server copy buried, so a later full download would deliver cards that
//! are still buried.
//!
//! "Today" is the scheduler's day number, computed from the collection's
//! creation time and config as the reference library does on a server (its
//! `sched_timing_today`): the client's time zone is the `localOffset` config
//! value, never the server's own.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::error::SyncError;

/// Seconds in a day.
const DAY: i64 = 86_400;
/// A card's `due` above this is a timestamp (intraday learning), else a day.
const TIMESTAMP_DUE: i64 = 1_000_000_000;
/// The rollover hour the reference library writes when a v2 collection
/// lacks one.
const DEFAULT_ROLLOVER: u8 = 4;

/// Unburies the collection's buried cards if the scheduler day has rolled
/// over since the last unbury (`lastUnburied` config), then records today.
/// Runs inside the sync's transaction, so an aborted sync undoes it too.
/// Cards keep their `mod` and `usn`: nothing is sent because of it.
/// Returns the number of cards unburied.
pub fn unbury_if_day_rolled_over(col: &Connection, now_secs: i64) -> Result<usize, SyncError> {
    let today = today(col, now_secs)?;
    let last = config(col, "lastUnburied")?
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    // The second test catches a clock that went back a week or more.
    if !(last < today || today.wrapping_add(7) < last) {
        return Ok(0);
    }
    // Each buried card goes back to the queue its type implies.
    let unburied = col
        .prepare_cached(
            "update cards set queue = case type
             when 0 then 0
             when 2 then 2
             else case when due > ?1 then 1 else 3 end
         end
         where queue in (-2, -3) and type in (0, 1, 2, 3)",
        )?
        .execute([TIMESTAMP_DUE])?;
    set_config(col, "lastUnburied", &today.to_string(), now_secs)?;
    Ok(unburied)
}

/// The scheduler's day number: days since the collection was created, with
/// the day starting at the rollover hour.
fn today(col: &Connection, now_secs: i64) -> Result<u32, SyncError> {
    let crt: i64 = col
        .prepare_cached("select crt from col")?
        .query_row([], |r| r.get(0))?;
    let v2 = config(col, "schedVer")?.and_then(|v| v.as_u64()) == Some(2);
    if !v2 {
        return Ok(days_v1(crt, now_secs));
    }
    let rollover = match config(col, "rollover")?
        .and_then(|v| v.as_u64())
        .and_then(|v| u8::try_from(v).ok())
    {
        Some(hour) => hour.min(23),
        None => {
            // As the reference library does on finding a v2 collection
            // without one (older versions failed to set it).
            set_config(col, "rollover", &DEFAULT_ROLLOVER.to_string(), now_secs)?;
            DEFAULT_ROLLOVER
        }
    };
    let utc_offset = offset_secs(col, "localOffset")?.unwrap_or(0);
    Ok(match offset_secs(col, "creationOffset")? {
        None => days_v2_legacy(crt, now_secs, rollover, utc_offset),
        Some(creation_offset) => days_v2(crt, creation_offset, now_secs, utc_offset, rollover),
    })
}

/// The v1 scheduler: whole days since creation.
fn days_v1(crt: i64, now: i64) -> u32 {
    // Truncating division and a wrapping cast, as the reference does.
    ((now - crt) / DAY) as u32
}

/// The v2 scheduler before `creationOffset` existed: whole days since the
/// rollover hour of the creation day, in today's time zone.
fn days_v2_legacy(crt: i64, now: i64, rollover: u8, offset: i64) -> u32 {
    ((now - rollover_of_day(crt, rollover, offset)) / DAY) as u32
}

/// The v2 scheduler with `creationOffset`: calendar days between creation
/// (in its time zone) and now (in today's), minus one before today's rollover.
fn days_v2(crt: i64, creation_offset: i64, now: i64, offset: i64, rollover: u8) -> u32 {
    let days = local_day(now, offset) - local_day(crt, creation_offset);
    let rollover_passed = rollover_of_day(now, rollover, offset) <= now;
    let days = if rollover_passed { days } else { days - 1 };
    days.max(0) as u32
}

/// The local calendar day of `secs` at `offset` (seconds east of UTC).
fn local_day(secs: i64, offset: i64) -> i64 {
    (secs + offset).div_euclid(DAY)
}

/// The timestamp of `rollover` o'clock on the local day of `secs`.
fn rollover_of_day(secs: i64, rollover: u8, offset: i64) -> i64 {
    local_day(secs, offset) * DAY + i64::from(rollover % 24) * 3600 - offset
}

/// A config value in minutes west of UTC, as seconds east of UTC; `None`
/// when missing or not a valid offset (as the reference library reads it).
fn offset_secs(col: &Connection, key: &str) -> Result<Option<i64>, SyncError> {
    Ok(config(col, key)?
        .and_then(|v| v.as_i64())
        .filter(|minutes| i32::try_from(*minutes).is_ok())
        .map(|minutes_west| -minutes_west * 60)
        .filter(|secs| secs.abs() < DAY))
}

fn config(col: &Connection, key: &str) -> Result<Option<Value>, SyncError> {
    let raw: Option<Vec<u8>> = col
        .prepare_cached("select val from config where key = ?")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(raw.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Writes a config value as the reference library does on a server: usn is
/// the collection's, mtime now; an unchanged value is left alone.
fn set_config(col: &Connection, key: &str, json: &str, now_secs: i64) -> Result<(), SyncError> {
    let current: Option<Vec<u8>> = col
        .prepare_cached("select val from config where key = ?")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    if current.as_deref() == Some(json.as_bytes()) {
        return Ok(());
    }
    col.prepare_cached(
        "insert or replace into config (key, usn, mtime_secs, val)
         values (?1, (select usn from col), ?2, ?3)",
    )?
    .execute(params![key, now_secs, json.as_bytes()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-10 12:00:00 UTC.
    const NOON: i64 = 1_773_144_000;

    fn collection(crt: i64, config: &[(&str, &str)]) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "create table col (crt integer, usn integer);
             create table cards (id integer primary key, type integer, queue integer,
                                 due integer, mod integer, usn integer);
             create table config (key text primary key, usn integer, mtime_secs integer,
                                  val blob) without rowid;",
        )
        .unwrap();
        c.execute("insert into col values (?, 7)", [crt]).unwrap();
        for (key, json) in config {
            c.execute(
                "insert into config values (?, 0, 0, ?)",
                params![key, json.as_bytes()],
            )
            .unwrap();
        }
        c
    }

    fn config_row(c: &Connection, key: &str) -> Option<(String, i64, i64)> {
        c.query_row(
            "select cast(val as text), usn, mtime_secs from config where key = ?",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .unwrap()
    }

    #[test]
    fn day_numbers_follow_the_reference_timing() {
        // Created at 04:00 UTC (the library's day start), ten days ago.
        let crt = NOON - 10 * DAY - 8 * 3600;
        // v1: whole days since creation.
        assert_eq!(days_v1(crt, NOON), 10);
        assert_eq!(days_v1(crt, crt + DAY - 1), 0);
        // v2 with creationOffset (UTC): day 10 after today's 04:00, 9 before.
        assert_eq!(days_v2(crt, 0, NOON, 0, 4), 10);
        assert_eq!(days_v2(crt, 0, NOON - 9 * 3600, 0, 4), 9);
        // At UTC+10 (minutes west -600) it is 22:00: same local day.
        assert_eq!(days_v2(crt, 36_000, NOON, 36_000, 4), 10);
        // A rollover at 13:00 has not happened yet at noon.
        assert_eq!(days_v2(crt, 0, NOON, 0, 13), 9);
        // Never negative.
        assert_eq!(days_v2(NOON, 0, NOON - DAY, 0, 4), 0);
        // v2 without creationOffset: from the rollover of the creation day.
        assert_eq!(days_v2_legacy(crt, NOON, 4, 0), 10);
        assert_eq!(days_v2_legacy(crt, crt + DAY - 1, 4, 0), 0);
    }

    #[test]
    fn buried_cards_are_unburied_once_a_day_without_a_usn() {
        let crt = NOON - 10 * DAY - 8 * 3600;
        let c = collection(
            crt,
            &[
                ("schedVer", "2"),
                ("rollover", "4"),
                ("creationOffset", "0"),
                ("localOffset", "0"),
                ("lastUnburied", "9"),
            ],
        );
        // (id, type, queue, due): new, learning (timestamp and day), review,
        // relearning, and two that are not buried.
        let cards = [
            (1, 0, -2, 5),
            (2, 1, -3, 1_773_000_000),
            (3, 1, -3, 11),
            (4, 2, -2, 12),
            (5, 3, -3, 12),
            (6, 2, -1, 12),
            (7, 2, 2, 12),
        ];
        for (id, ctype, queue, due) in cards {
            c.execute(
                "insert into cards values (?, ?, ?, ?, 100, 3)",
                [id, ctype, queue, due],
            )
            .unwrap();
        }
        assert_eq!(unbury_if_day_rolled_over(&c, NOON).unwrap(), 5);
        let queues: Vec<(i64, i64, i64)> = c
            .prepare("select queue, mod, usn from cards order by id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected_queues = [0, 1, 3, 2, 3, -1, 2];
        for (i, (queue, m, usn)) in queues.into_iter().enumerate() {
            assert_eq!(queue, expected_queues[i], "card {}", i + 1);
            assert_eq!((m, usn), (100, 3), "card {} marked modified", i + 1);
        }
        assert_eq!(config_row(&c, "lastUnburied"), Some(("10".into(), 7, NOON)));

        // The same day again: nothing happens.
        c.execute("update cards set queue = -3 where id = 1", [])
            .unwrap();
        assert_eq!(unbury_if_day_rolled_over(&c, NOON + 3600).unwrap(), 0);
        let queue: i64 = c
            .query_row("select queue from cards where id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(queue, -3);
        // The next day: unburied.
        assert_eq!(unbury_if_day_rolled_over(&c, NOON + DAY).unwrap(), 1);
    }

    #[test]
    fn a_v2_collection_without_a_rollover_gets_the_default() {
        let crt = NOON - 3 * DAY;
        let c = collection(crt, &[("schedVer", "2"), ("lastUnburied", "99")]);
        // lastUnburied more than a week ahead (a clock that went back): unbury.
        assert_eq!(unbury_if_day_rolled_over(&c, NOON).unwrap(), 0);
        assert_eq!(config_row(&c, "rollover"), Some(("4".into(), 7, NOON)));
        assert_eq!(config_row(&c, "lastUnburied"), Some(("3".into(), 7, NOON)));
        // A v1 collection has no rollover and gets none.
        let c = collection(crt, &[]);
        unbury_if_day_rolled_over(&c, NOON).unwrap();
        assert_eq!(config_row(&c, "rollover"), None);
        assert_eq!(config_row(&c, "lastUnburied").unwrap().0, "3");
    }
}
