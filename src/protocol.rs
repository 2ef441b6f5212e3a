//! Facts of the sync protocol that more than one layer needs: the protocol
//! versions this server speaks. They live at the crate's root so the
//! collection layer can check a client's version without importing `http`.

/// Sync protocol versions this server speaks (8–10 legacy, 11 current).
pub const SYNC_VERSION_MIN: u8 = 8;
pub const SYNC_VERSION_MAX: u8 = 11;
/// From this version on, bodies are zstd and responses carry `anki-original-size`.
pub const SYNC_VERSION_ZSTD: u8 = 11;
/// Every multipart (pre-2.1.57) request is taken to be this version, as upstream.
pub const LEGACY_VERSION: u8 = 10;
