//! Fuzzes the `anki-sync` header parser: any text must parse or be refused,
//! never panic, and anything accepted must carry a version we speak.
#![no_main]

use anki_sync_lite::http::framing::SyncHeader;
use anki_sync_lite::protocol::{SYNC_VERSION_MAX, SYNC_VERSION_MIN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(header) = SyncHeader::parse(text) {
        assert!((SYNC_VERSION_MIN..=SYNC_VERSION_MAX).contains(&header.version));
    }
});
