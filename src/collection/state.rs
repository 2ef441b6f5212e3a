//! The state of one user's normal sync between `start` and `finish`: who
//! owns it (the session key), the usns that decide what is sent, the ids
//! still to be sent in chunks, and what was exchanged. Everything the sync
//! applies happens in one SQLite transaction on the user's connection, so
//! nothing is half-applied; the per-user layer (`crate::user`) opens,
//! commits and rolls back that transaction, and keeps the state.

use std::time::Instant;

use super::changes::UnchunkedChanges;
use super::graves::Graves;
use super::outgoing::Outgoing;
use super::sanity::SanityResponse;

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
    /// Held while this sync lives (it is dropped with it, however the sync
    /// ends), if the sync started the day's backup: the backup compresses
    /// once the sync is over ([`crate::backup::Hold`]).
    pub backup_hold: Option<crate::backup::Hold>,
}

impl SyncState {
    pub fn new(session: &str, server_usn: i32, client_usn: i32, client_is_newer: bool) -> Self {
        SyncState {
            session: session.to_string(),
            server_usn,
            client_usn,
            client_is_newer,
            pending: None,
            sent: 0,
            received: 0,
            started: Instant::now(),
            backup_hold: None,
        }
    }
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

/// What a sync step answers, as the per-user layer sees it: how many
/// objects it sends (counted for the summary) and whether it ends the sync
/// (a failed sanity check rolls everything back).
pub trait StepAnswer: std::fmt::Debug {
    fn objects(&self) -> usize {
        0
    }

    fn ends_sync(&self) -> bool {
        false
    }
}

impl StepAnswer for () {}

impl StepAnswer for Graves {
    fn objects(&self) -> usize {
        self.len()
    }
}

impl StepAnswer for UnchunkedChanges {
    fn objects(&self) -> usize {
        self.len()
    }
}

impl StepAnswer for Outgoing {
    fn objects(&self) -> usize {
        self.len()
    }
}

impl StepAnswer for SanityResponse {
    fn ends_sync(&self) -> bool {
        self.status != "ok"
    }
}
