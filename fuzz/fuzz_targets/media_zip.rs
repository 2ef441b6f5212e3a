//! Fuzzes the media zip reader (uploads from clients): any bytes must open
//! or be refused, and every listed entry must read back at most its
//! declared size or fail, never panic or read without bound.
#![no_main]

use std::io::{Cursor, Read};

use anki_sync_lite::media::zip::ZipReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut zip) = ZipReader::open(Cursor::new(data)) else {
        return;
    };
    let names: Vec<String> = zip.names().take(32).map(str::to_string).collect();
    for name in names {
        let Some(entry) = zip.entry(&name).cloned() else {
            continue;
        };
        if let Ok(mut reader) = zip.read_entry(&entry) {
            let mut out = Vec::new();
            if reader.by_ref().take(1 << 20).read_to_end(&mut out).is_ok() {
                assert!(out.len() as u64 <= entry.size.max(1 << 20));
            }
        }
    }
});
