//! The per-user layer: every request that touches a user's collection runs
//! here, under that user's lock. Like upstream's server it offers two entry
//! points for the collection protocol, "with the collection"
//! ([`UserSlot::with_col`], which first ends a normal sync in progress) and
//! "with the normal-sync state of this session"
//! ([`UserSlot::with_sync_state`]), plus full upload and download. The rules
//! live here and nowhere else: which request ends a sync, one lock hold per
//! request, when a backup is taken, when a staged restore is swapped in, and
//! what a finished sync counted. The protocol steps themselves
//! (`crate::collection`) only see a connection and the sync state.
//!
//! - `store`: all users' slots; folders and start-up clean-up; idle close
//!   and the release of idle collections' page caches.
//! - `slot`: one user's lock and what it guards.
//! - `sync`: the normal-sync entry points.
//! - `full`: full upload and download.

mod full;
mod slot;
mod store;
mod sync;

pub use full::Download;
pub use slot::{MAX_UPLOADS, RequestPermit, UploadPermit, UserSlot, max_requests};
pub use store::UserStore;
