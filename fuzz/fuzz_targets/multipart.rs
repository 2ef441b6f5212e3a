//! Fuzzes the legacy multipart parser with arbitrary bodies, boundaries,
//! read sizes and budgets. Besides "no panic", it checks that the answer does
//! not depend on how the body is split into reads, and that the data sink
//! never receives more than its budget.
#![no_main]

use std::io::{self, Read};

use anki_sync_lite::http::multipart::{FormLimits, read_form};
use libfuzzer_sys::fuzz_target;

/// A reader that returns at most `step` bytes per call.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    // Header: [boundary selector, read step, body budget, data budget], then the body.
    let Some((&[select, step, body_cap, data_cap], rest)) = input.split_first_chunk::<4>() else {
        return;
    };
    // Mostly the clients' boundary, so the fuzzer can find form structure;
    // sometimes a short one taken from the input, to exercise odd boundaries.
    let (boundary, body) = if select < 192 {
        ("Anki-sync-boundary".to_string(), rest)
    } else {
        let len = usize::from(select - 191).min(rest.len());
        let (b, body) = rest.split_at(len);
        (String::from_utf8_lossy(b).into_owned(), body)
    };
    let limits = FormLimits {
        body: if body_cap == 255 {
            u64::MAX
        } else {
            u64::from(body_cap) * 64
        },
        data: if data_cap == 255 {
            u64::MAX
        } else {
            u64::from(data_cap) * 16
        },
    };

    let mut whole_sink = Vec::new();
    let whole = read_form(body, &boundary, &mut whole_sink, limits);
    let mut chunked_sink = Vec::new();
    let chunked = read_form(
        Chunked {
            data: body,
            step: usize::from(step).max(1),
        },
        &boundary,
        &mut chunked_sink,
        limits,
    );
    assert_eq!(format!("{whole:?}"), format!("{chunked:?}"));
    if let Ok(form) = &whole {
        assert_eq!(form.data_len, whole_sink.len() as u64);
        assert_eq!(whole_sink, chunked_sink);
    }
    assert!(whole_sink.len() as u64 <= limits.data);
});
