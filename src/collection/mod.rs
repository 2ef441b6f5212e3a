//! The collection-sync protocol (`/sync/*` after login): `meta` and full
//! upload/download here; normal sync builds on the same per-user state.

pub mod changes;
pub mod chunks;
pub mod decode;
pub mod full;
pub mod graves;
pub mod meta;
pub mod notetext;
pub mod rows;
pub mod sanity;
pub mod state;
pub mod unbury;

use std::fmt;

/// What a collection handler can fail with; the HTTP status is chosen in
/// `http::error`, the one place statuses are decided.
#[derive(Debug)]
pub enum SyncError {
    /// The request cannot be applied (bad JSON, bad data): 400.
    BadRequest(String),
    /// Another session owns the sync, or none is active: 409.
    Conflict(String),
    /// The client speaks a protocol older than we serve: 501.
    ClientTooOld(String),
    /// Our fault (disk, database): 500.
    Internal(String),
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::BadRequest(m) => write!(f, "bad request: {m}"),
            SyncError::Conflict(m) => write!(f, "conflict: {m}"),
            SyncError::ClientTooOld(m) => write!(f, "client too old: {m}"),
            SyncError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        SyncError::Internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for SyncError {
    fn from(e: std::io::Error) -> Self {
        SyncError::Internal(format!("i/o: {e}"))
    }
}

impl From<serde_json::Error> for SyncError {
    fn from(e: serde_json::Error) -> Self {
        SyncError::BadRequest(format!("json: {e}"))
    }
}
