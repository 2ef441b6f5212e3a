//! Giving freed memory back to the system. The allocator keeps what the
//! server frees (a closed collection's page cache, statements and schema; a
//! finished backup's compressor) for reuse, so without this the resident
//! size after a burst of syncs stays near its peak for as long as the server
//! runs. The call that returns whole free pages (glibc's `malloc_trim`) is
//! `unsafe` and allocator-specific, so the binary supplies it; the server
//! calls [`trim`] only after it released something, never on a sync's path.

use std::sync::OnceLock;

static TRIM: OnceLock<fn()> = OnceLock::new();

/// Sets the call that returns free memory to the system (once; later calls
/// are ignored).
pub fn set_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Returns free memory to the system, if the binary said how.
pub fn trim() {
    if let Some(trim) = TRIM.get() {
        trim();
    }
}
