//! The entry points of the collection protocol, each one lock hold:
//! "with the collection" for requests outside a normal sync, and "with the
//! normal-sync state of this session" for its steps. The rules of a normal
//! sync live here: `start` takes the day's first backup and opens the sync's
//! transaction, a step from another session is a conflict, a failed step or
//! a failed sanity check rolls everything back (as upstream, so the client,
//! which then sends `abort`, and the server agree nothing was applied), and
//! `finish` commits and logs what was exchanged.

use log::{info, warn};
use rusqlite::Connection;

use super::slot::{UserSlot, UserState};
use crate::backup;
use crate::collection::state::{StepAnswer, Summary, SyncState};
use crate::error::{OrSyncError, SyncError};

impl UserSlot {
    /// Runs `op` with the collection. A normal sync in progress ends first
    /// (rolled back), whoever owns it, as upstream: `meta` from any device
    /// does this.
    pub fn with_col<T>(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut user = self.lock();
        user.abort_sync();
        op(user.collection()?)
    }

    /// `start`: takes the day's first backup (so the day's incoming changes
    /// can be undone), starts a normal sync for `session` (rolling back any
    /// earlier one, whoever owned it) and runs its first step. `received`
    /// is how many objects the request carries, for the summary.
    pub fn start_sync<T: StepAnswer>(
        &self,
        session: &str,
        client_usn: i32,
        client_is_newer: bool,
        received: usize,
        op: impl FnOnce(&mut Connection, &mut SyncState) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        require_session(session)?;
        let mut user = self.lock();
        user.abort_sync();
        let hold = if backup::daily_due(user.dir()) {
            user.daily_backup()
        } else {
            None
        };
        begin(&mut user, session, client_usn, client_is_newer, hold)?;
        step(&mut user, &self.name, session, received, op)
    }

    /// Runs `op`, one step of the normal sync owned by `session`; a conflict
    /// if there is none or another session owns it. `received` is how many
    /// objects the request carries, for the summary.
    pub fn with_sync_state<T: StepAnswer>(
        &self,
        session: &str,
        received: usize,
        op: impl FnOnce(&mut Connection, &mut SyncState) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        require_session(session)?;
        step(&mut self.lock(), &self.name, session, received, op)
    }

    /// Checks that `session` owns the sync in progress (a conflict if there
    /// is none or another session owns it), before a step's body is read.
    /// The step itself checks again: another device may start meanwhile.
    pub fn require_sync(&self, session: &str) -> Result<(), SyncError> {
        require_session(session)?;
        owner_check(&self.lock(), session)
    }

    /// `finish`: commits the sync (`ls` = now, `usn` + 1, `mod` = now, in the
    /// sync's transaction) and logs its summary. Returns `now_ms`, which the
    /// client stores as its `mod`.
    pub fn finish_sync(&self, session: &str, now_ms: i64) -> Result<i64, SyncError> {
        require_session(session)?;
        let mut user = self.lock();
        let done = step(&mut user, &self.name, session, 0, |col, st| {
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
        user.sync = None;
        info!(
            "user {}: normal sync finished in {} ms, {} objects sent, {} received",
            self.name, done.millis, done.sent, done.received
        );
        Ok(done.now_ms)
    }

    /// `abort` (or any request that replaces the collection): ends a normal
    /// sync in progress, rolling back what it applied.
    pub fn abort_sync(&self) {
        self.lock().abort_sync();
    }

    /// Ends the sync if `session` owns it: one of its requests failed where
    /// no step could roll it back (its body broke off or was malformed).
    pub fn abort_owned(&self, session: &str) {
        let mut user = self.lock();
        if user.sync.as_ref().is_some_and(|s| s.session == session) {
            user.abort_sync();
        }
    }
}

impl StepAnswer for Summary {}

fn require_session(session: &str) -> Result<(), SyncError> {
    (!session.is_empty())
        .then_some(())
        .or_bad_request("missing session key")
}

/// A conflict unless `session` owns the sync in progress.
fn owner_check(user: &UserState, session: &str) -> Result<(), SyncError> {
    match &user.sync {
        None => Err(SyncError::conflict("no active sync")),
        Some(state) if state.session != session => Err(SyncError::conflict(
            "active sync with a different session key",
        )),
        Some(_) => Ok(()),
    }
}

/// Opens the sync's transaction and its state, which keeps `hold` (the
/// day's backup, if this sync started it, waits for the sync to end).
fn begin(
    user: &mut UserState,
    session: &str,
    client_usn: i32,
    client_is_newer: bool,
    hold: Option<backup::Hold>,
) -> Result<(), SyncError> {
    let col = user.collection()?;
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
    let mut state = SyncState::new(session, server_usn, client_usn, client_is_newer);
    state.backup_hold = hold;
    user.sync = Some(state);
    Ok(())
}

/// One step of the sync owned by `session`, with the counters kept. If the
/// step fails, or its answer ends the sync, everything is rolled back.
fn step<T: StepAnswer>(
    user: &mut UserState,
    name: &str,
    session: &str,
    received: usize,
    op: impl FnOnce(&mut Connection, &mut SyncState) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    owner_check(user, session)?;
    let (col, sync) = user.collection_and_sync()?;
    let state = sync.as_mut().or_internal("the sync state vanished")?;
    state.received += received;
    let result = op(col, state).inspect(|answer| state.sent += answer.objects());
    match result {
        Ok(answer) if answer.ends_sync() => {
            warn!("user {name}: the sync ended with {answer:?}; rolled back");
            user.abort_sync();
            Ok(answer)
        }
        Ok(answer) => Ok(answer),
        Err(e) => {
            user.abort_sync();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collection::sanity::SanityResponse;
    use crate::error::Kind;
    use crate::user::UserStore;

    fn store() -> (tempfile::TempDir, UserStore) {
        let base = tempfile::tempdir().unwrap();
        let store = UserStore::new(base.path(), ["u"].into_iter()).unwrap();
        (base, store)
    }

    fn usn(slot: &UserSlot) -> i32 {
        let mut user = slot.lock();
        user.collection()
            .unwrap()
            .query_row("select usn from col", [], |r| r.get(0))
            .unwrap()
    }

    fn start(slot: &UserSlot, session: &str) -> Result<(), SyncError> {
        slot.start_sync(session, 0, false, 0, |_, _| Ok(()))
    }

    fn nothing(slot: &UserSlot, session: &str) -> Result<(), SyncError> {
        slot.with_sync_state(session, 0, |_, _| Ok(()))
    }

    fn kind<T>(result: Result<T, SyncError>) -> Option<Kind> {
        result.err().map(|e| e.kind())
    }

    #[test]
    fn a_sync_in_progress_keeps_its_cache() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        start(&slot, "s1").unwrap();
        assert!(!store.release_idle_caches(Duration::ZERO));
        nothing(&slot, "s1").unwrap();
        slot.with_col(|_| Ok(())).unwrap();
        assert!(store.release_idle_caches(Duration::ZERO), "the sync ended");
    }

    #[test]
    fn session_keys_decide_who_may_continue() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        assert_eq!(kind(start(&slot, "")), Some(Kind::BadRequest));
        assert_eq!(kind(nothing(&slot, "s1")), Some(Kind::Conflict));
        start(&slot, "s1").unwrap();
        assert_eq!(kind(nothing(&slot, "s1")), None);
        assert_eq!(kind(nothing(&slot, "s2")), Some(Kind::Conflict));
        assert_eq!(kind(nothing(&slot, "")), Some(Kind::BadRequest));
        // A second start replaces the first.
        start(&slot, "s2").unwrap();
        assert_eq!(kind(nothing(&slot, "s1")), Some(Kind::Conflict));
        assert_eq!(kind(nothing(&slot, "s2")), None);
        // abort ends it whatever the key, and so does anything "with the
        // collection" (`meta`).
        slot.abort_sync();
        assert_eq!(kind(nothing(&slot, "s2")), Some(Kind::Conflict));
        start(&slot, "s3").unwrap();
        slot.with_col(|_| Ok(())).unwrap();
        assert_eq!(kind(nothing(&slot, "s3")), Some(Kind::Conflict));
    }

    #[test]
    fn a_failed_step_rolls_back_everything() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let before = usn(&slot);
        start(&slot, "s").unwrap();
        slot.with_sync_state("s", 0, |col, _| {
            col.execute("update col set usn = 99", [])?;
            Ok(())
        })
        .unwrap();
        let failed: Result<(), SyncError> =
            slot.with_sync_state("s", 0, |_, _| Err(SyncError::bad_request("bad note")));
        assert_eq!(kind(failed), Some(Kind::BadRequest));
        assert_eq!(kind(nothing(&slot, "s")), Some(Kind::Conflict));
        assert_eq!(usn(&slot), before);
    }

    #[test]
    fn a_failed_sanity_check_rolls_back_and_answers() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let before = usn(&slot);
        start(&slot, "s").unwrap();
        let counts = (vec![0, 0, 0], 1, 1, 0, 0, 0, 0, 0);
        let answer = slot
            .with_sync_state("s", 0, |col, _| {
                col.execute("update col set usn = 99", [])?;
                Ok(SanityResponse {
                    status: "bad",
                    c: counts.clone(),
                    s: None,
                })
            })
            .unwrap();
        assert_eq!(answer.status, "bad");
        assert_eq!(kind(nothing(&slot, "s")), Some(Kind::Conflict));
        assert_eq!(usn(&slot), before);
    }

    #[test]
    fn finish_commits_bumps_usn_and_counts() {
        let (_base, store) = store();
        let slot = store.slot("u").unwrap();
        let before = usn(&slot);
        slot.start_sync("s", 0, true, 2, |_, _| Ok(())).unwrap();
        slot.with_sync_state("s", 3, |_, st| {
            assert_eq!(st.received, 5);
            Ok(())
        })
        .unwrap();
        assert_eq!(kind(slot.finish_sync("t", 1)), Some(Kind::Conflict));
        assert_eq!(
            slot.finish_sync("s", 1_700_000_000_123).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(kind(nothing(&slot, "s")), Some(Kind::Conflict));
        slot.close();
        let (m, ls): (i64, i64) = slot
            .with_col(|col| {
                Ok(col.query_row("select mod, ls from col", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .unwrap();
        assert_eq!((m, ls), (1_700_000_000_123, 1_700_000_000_123));
        assert_eq!(usn(&slot), before + 1);
    }
}
