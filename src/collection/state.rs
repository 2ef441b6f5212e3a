//! The state of one user's normal sync between `start` and `finish`: who
//! owns it (the session key), the usns that decide what is sent, and the
//! ids still to be sent in chunks. Everything the sync applies happens in one
//! SQLite transaction on the user's connection, so nothing is half-applied:
//! `finish` commits, and `abort`, an error, or a newer `start`/`meta` rolls
//! back.

use std::time::Instant;

use rusqlite::Connection;

use crate::error::SyncError;
use crate::user::UserState;

pub struct SyncState {
    /// Session key of the client that called `start`.
    pub session: String,
    /// `col.usn` at `start`; everything applied in this sync gets it.
    pub server_usn: i32,
    /// The client's `minUsn`: rows with `usn >= client_usn` are sent.
    pub client_usn: i32,
    /// The client's collection is newer (`lnewer`): it sends the config.
    pub client_is_newer: bool,
    /// Ids still to send, taken at the first `chunk` call.
    pub pending: Option<PendingIds>,
    /// Objects exchanged so far, for the summary logged at `finish`.
    pub sent: usize,
    pub received: usize,
    pub started: Instant,
}

/// What a finished sync did, for its one summary log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub now_ms: i64,
    pub sent: usize,
    pub received: usize,
    pub millis: u128,
}

/// Ids of changed rows not yet sent to the client, popped from the end.
#[derive(Debug, Default)]
pub struct PendingIds {
    pub revlog: Vec<i64>,
    pub cards: Vec<i64>,
    pub notes: Vec<i64>,
}

/// Starts a sync for `session`, discarding (rolling back) any earlier one,
/// whoever owned it.
pub fn begin<'a>(
    user: &'a mut UserState,
    session: &str,
    client_usn: i32,
    client_is_newer: bool,
) -> Result<(&'a mut Connection, &'a mut SyncState), SyncError> {
    if session.is_empty() {
        return Err(SyncError::bad_request("missing session key"));
    }
    user.abort_sync();
    let (col, slot) = user.sync_parts()?;
    col.execute_batch("begin immediate")?;
    let server_usn = match col
        .prepare_cached("select usn from col")?
        .query_row([], |r| r.get(0))
    {
        Ok(usn) => usn,
        Err(e) => {
            let _ = col.execute_batch("rollback");
            return Err(e.into());
        }
    };
    let state = slot.insert(SyncState {
        session: session.to_string(),
        server_usn,
        client_usn,
        client_is_newer,
        pending: None,
        sent: 0,
        received: 0,
        started: Instant::now(),
    });
    Ok((col, state))
}

/// The sync owned by `session`, or 409 (none active, or another session's).
pub fn active<'a>(
    user: &'a mut UserState,
    session: &str,
) -> Result<(&'a mut Connection, &'a mut SyncState), SyncError> {
    if session.is_empty() {
        return Err(SyncError::bad_request("missing session key"));
    }
    let (col, slot) = user.sync_parts()?;
    match slot.as_mut() {
        None => Err(SyncError::conflict("no active sync")),
        Some(state) if state.session != session => Err(SyncError::conflict(
            "active sync with a different session key",
        )),
        Some(state) => Ok((col, state)),
    }
}

/// Ends the sync if `session` owns it: one of its requests failed where no
/// step could roll it back (its body broke off or was malformed).
pub fn abort_owned(user: &mut UserState, session: &str) {
    if active(user, session).is_ok() {
        user.abort_sync();
    }
}

/// Runs one step of the sync owned by `session`. If the step fails, the
/// whole sync is rolled back and discarded, as upstream does, so the client
/// (which then sends `abort`) and the server agree nothing was applied.
pub fn step<T>(
    user: &mut UserState,
    session: &str,
    f: impl FnOnce(&mut Connection, &mut SyncState) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    let (col, state) = active(user, session)?;
    match f(col, state) {
        Ok(value) => Ok(value),
        Err(e) => {
            user.abort_sync();
            Err(e)
        }
    }
}

/// Commits the sync: `ls` = now, `usn` + 1, `mod` = now, all in the sync's
/// transaction. Returns `now` (ms), which the client stores as its `mod`.
pub fn finish(user: &mut UserState, session: &str, now_ms: i64) -> Result<Summary, SyncError> {
    let summary = step(user, session, |col, st| {
        col.prepare_cached("update col set ls = ?1, mod = ?1, usn = usn + 1")?
            .execute([now_ms])?;
        col.execute_batch("commit")?;
        Ok(Summary {
            now_ms,
            sent: st.sent,
            received: st.received,
            millis: st.started.elapsed().as_millis(),
        })
    })?;
    // Committed: the state is over, nothing to roll back.
    user.forget_sync();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::user::UserStore;

    fn store() -> (tempfile::TempDir, UserStore) {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        (base, store)
    }

    fn usn(user: &mut UserState) -> i32 {
        user.collection()
            .unwrap()
            .query_row("select usn from col", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn session_keys_decide_who_may_continue() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let mut user = slot.lock();
        assert!(matches!(
            begin(&mut user, "", 0, false),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        assert!(matches!(
            active(&mut user, "s1"),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        begin(&mut user, "s1", 0, false).unwrap();
        assert!(active(&mut user, "s1").is_ok());
        assert!(matches!(
            active(&mut user, "s2"),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        assert!(matches!(
            active(&mut user, ""),
            Err(ref e) if e.kind() == Kind::BadRequest
        ));
        // A second start replaces the first.
        begin(&mut user, "s2", 0, false).unwrap();
        assert!(matches!(
            active(&mut user, "s1"),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        assert!(active(&mut user, "s2").is_ok());
        // abort ends it whatever the key.
        user.abort_sync();
        assert!(matches!(
            active(&mut user, "s2"),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
    }

    #[test]
    fn a_failed_step_rolls_back_everything() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let mut user = slot.lock();
        let before = usn(&mut user);
        begin(&mut user, "s", 0, false).unwrap();
        step(&mut user, "s", |col, _| {
            col.execute("update col set usn = 99", [])?;
            Ok(())
        })
        .unwrap();
        let failed: Result<(), SyncError> = step(&mut user, "s", |_, _| {
            Err(SyncError::bad_request("bad note"))
        });
        assert!(failed.is_err());
        assert!(matches!(
            active(&mut user, "s"),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        assert_eq!(usn(&mut user), before);
    }

    #[test]
    fn finish_commits_and_bumps_usn() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let mut user = slot.lock();
        let before = usn(&mut user);
        begin(&mut user, "s", 0, true).unwrap();
        assert_eq!(
            finish(&mut user, "s", 1_700_000_000_123).unwrap().now_ms,
            1_700_000_000_123
        );
        assert!(!user.sync_active());
        user.close_collection();
        let (m, ls): (i64, i64) = user
            .collection()
            .unwrap()
            .query_row("select mod, ls from col", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((m, ls), (1_700_000_000_123, 1_700_000_000_123));
        assert_eq!(usn(&mut user), before + 1);
    }
}
