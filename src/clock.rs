//! The wall clock in the units the sync protocol and the file names use.
//! One place, so every layer reads the time the same way without importing
//! a layer above it for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    now_millis() / 1000
}
