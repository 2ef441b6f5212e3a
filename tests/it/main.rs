//! The integration tests: one test binary (instead of one per file) that
//! drives the real server binary over real sockets, with the real Anki
//! clients from PyPI where a test says so. Each module is one subject;
//! `support` is the shared harness (server start-up, client drivers, raw HTTP).
//!
//! `cargo test --test it MODULE::` runs one subject, e.g. `full_sync::`.

mod support;

mod backups;
mod blob_roundtrip;
mod busy_user;
mod cli;
mod crash_safety;
mod disk_full;
mod full_sync;
mod hostile;
mod import_ankisyncd;
mod legacy_raw;
mod legacy_storage;
mod legacy_sync;
mod load;
mod login_throttle;
mod logs;
mod media_raw;
mod media_sync;
mod metrics;
mod normal_sync;
mod old_schemas;
mod operations;
mod permissions;
mod powercut;
mod raw_http;
mod request_memory;
mod tls;
mod uploaded_code;
mod users;
