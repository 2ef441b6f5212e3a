//! anki-sync-lite: a small self-hosted Anki sync server.
//!
//! Data flows one way: bytes in (`http`) → authenticated user (`auth`) →
//! that user's slot and lock (`user`) → protocol handlers (`collection`) →
//! SQLite (`storage`) → encoded response (`http`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod backup;
pub mod backup_cli;
pub mod budget;
pub mod cli;
pub mod collection;
pub mod colpkg;
pub mod config;
pub mod fsutil;
pub mod healthcheck;
pub mod http;
pub mod logger;
pub mod media;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod service_env;
pub mod storage;
pub mod user;
pub mod utc;
pub mod version;
