//! Fuzzes the legacy gzip payload decoder: arbitrary bytes must end in data,
//! a bad-body error or a budget error, never a panic, and never an error that
//! would be blamed on the connection or on our storage (the source here is
//! memory).
#![no_main]

use std::io::Read;

use anki_sync_lite::http::framing::FramingError;
use anki_sync_lite::http::multipart::{LegacyForm, payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let form = LegacyForm {
        c: Some("1".into()),
        data_len: data.len() as u64,
        ..LegacyForm::default()
    };
    let limit = 64 * 1024;
    let mut out = Vec::new();
    match payload(&form, data, limit).read_to_end(&mut out) {
        Ok(_) => assert!(out.len() as u64 <= limit),
        Err(e) => match FramingError::from_body_error(e) {
            FramingError::BadBody(_) | FramingError::TooLarge(_) => {}
            other => panic!("{other:?}"),
        },
    }
});
