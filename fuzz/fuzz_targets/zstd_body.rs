//! Fuzzes the v11 body reader: arbitrary bytes through the compressed
//! budget, the zstd decoder and the decompressed budget must end in data or
//! an error, never a panic, and never yield more than the budget.
#![no_main]

use std::io::Read;

use anki_sync_lite::http::framing::{BodyLimits, zstd_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = BodyLimits {
        compressed: 32 * 1024,
        decompressed: 256 * 1024,
    };
    let Ok(mut body) = zstd_body(data, limits) else {
        return;
    };
    let mut out = Vec::new();
    let _ = body.read_to_end(&mut out);
    assert!(out.len() as u64 <= limits.decompressed);
});
