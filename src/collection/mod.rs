//! The collection-sync protocol (`/sync/*` after login): `meta`, full
//! upload/download and the steps of a normal sync, each a function of the
//! user's collection (and sync state), run under the user's lock.

pub mod changes;
pub mod chunks;
pub mod decode;
pub mod full;
pub mod graves;
pub mod meta;
pub mod notetext;
pub mod outgoing;
pub mod rows;
pub mod sanity;
pub mod state;
pub mod unbury;
