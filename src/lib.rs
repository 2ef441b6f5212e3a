//! anki-sync-lite: a small self-hosted Anki sync server.
//!
//! A request goes one way: bytes and framing (`http`) → authenticated user
//! (`auth`) → that user's lock, collection and sync state (`user`) → the
//! sync steps (`collection`, `media`) → SQLite and files (`storage`), and
//! the answer comes back up to `http`, which alone turns it into bytes and a
//! status. Modules import only the layers below them: nothing under `auth`,
//! `user`, `collection`, `media` or `storage` imports `http`, and there is
//! no import cycle. Errors below `http` are one type, `error::SyncError`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backup;
pub mod backup_cli;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod collection;
pub mod colpkg;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod healthcheck;
pub mod http;
pub mod layout;
pub mod logger;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod protocol;
pub mod service_env;
pub mod storage;
pub mod user;
pub mod utc;
pub mod version;
