//! A request's body, read at most once and only through its byte budgets:
//! a v11 zstd stream, a legacy form's saved `data` part, or a payload built
//! here; and JSON parsed from it as it streams in.

use std::io::{self, BufReader, Read};

use serde::de::DeserializeOwned;

use super::error::HandlerError;
use super::framing::{self, BodyLimits, FramingError};
use super::multipart::{self, LegacyForm};
use super::route::SyncMethod;
use super::spill::Spill;
use crate::collection::decode;
use crate::error::SyncError;

/// Decompressed budget of methods whose bodies are a few bytes of JSON, so a
/// bomb aimed at them cannot grow a huge JSON string in memory.
pub(super) const SMALL_JSON_LIMIT: u64 = 1024 * 1024;

pub(super) fn carries_small_json(method: SyncMethod) -> bool {
    !matches!(
        method,
        SyncMethod::Upload
            | SyncMethod::Start
            | SyncMethod::ApplyGraves
            | SyncMethod::ApplyChanges
            | SyncMethod::ApplyChunk
    )
}

/// The request body, read at most once, through the byte budgets.
pub(super) struct Body<'r> {
    pub(super) source: Source<'r>,
    pub(super) limits: BodyLimits,
}

/// Where a request's payload comes from.
pub(super) enum Source<'r> {
    /// Current clients: one zstd frame, read from the socket as it arrives.
    Zstd(&'r mut dyn Read),
    /// Legacy clients: the form's `data` part, already read, maybe gzip.
    Legacy { form: LegacyForm, data: Spill },
    /// A payload built here (legacy media `begin`).
    Bytes(Vec<u8>),
}

impl Body<'_> {
    pub(super) fn decoded(&mut self) -> Result<Box<dyn Read + '_>, HandlerError> {
        match &mut self.source {
            Source::Zstd(raw) => framing::zstd_body(&mut **raw, self.limits)
                .map_err(|e| FramingError::from_body_error(e).into()),
            Source::Legacy { form, data } => {
                let saved = data.reader().map_err(SyncError::from)?;
                Ok(multipart::payload(form, saved, self.limits.decompressed))
            }
            Source::Bytes(bytes) => Ok(Box::new(&bytes[..])),
        }
    }

    /// Parses the body as JSON, as it streams in.
    pub(super) fn json<T: DeserializeOwned>(&mut self) -> Result<T, HandlerError> {
        parse_json(self.decoded()?, "request json")
    }

    /// Reads and ignores the body (methods whose body carries nothing).
    pub(super) fn discard(&mut self) -> Result<(), HandlerError> {
        io::copy(&mut self.decoded()?, &mut io::sink())
            .map(|_| ())
            .map_err(|e| FramingError::from_body_error(e).into())
    }
}

/// Parses JSON from a decoded body. A body of up to `WHOLE_JSON` bytes (all
/// that clients send here) is read whole and parsed from memory: serde_json
/// reads a stream one byte at a time, tracking lines and columns, which was
/// a tenth of a small sync's instructions. A longer body streams through a
/// buffer: otherwise every byte would be a call into the zstd (or gzip)
/// decoder and the limit readers beneath it.
pub(super) fn parse_json<T: DeserializeOwned>(
    mut body: impl Read,
    what: &str,
) -> Result<T, HandlerError> {
    let (head, ended) =
        decode::read_up_to(&mut body, WHOLE_JSON).map_err(FramingError::from_body_error)?;
    let parsed = if ended {
        serde_json::from_slice(&head)
    } else {
        let rest = io::Cursor::new(head).chain(body);
        serde_json::from_reader(BufReader::with_capacity(JSON_BUFFER, rest))
    };
    parsed.map_err(|e| {
        if e.is_io() {
            FramingError::from_body_error(io::Error::from(e)).into()
        } else {
            SyncError::bad_request(what).with_source(e).into()
        }
    })
}

const WHOLE_JSON: u64 = 64 * 1024;
const JSON_BUFFER: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that fails once its bytes are used up, as a cut body does.
    struct Cut<'a>(&'a [u8]);

    impl Read for Cut<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"));
            }
            self.0.read(buf)
        }
    }

    #[test]
    fn small_and_large_bodies_parse_alike_and_bad_ones_fail_by_cause() {
        let small: Vec<u32> = (0..100).collect();
        let large: Vec<u32> = (0..40_000).collect();
        for value in [small, large] {
            let text = serde_json::to_vec(&value).unwrap();
            let parsed: Vec<u32> = parse_json(&text[..], "test").unwrap();
            assert_eq!(parsed, value, "{} bytes", text.len());
            let cut = &text[..text.len() - 1];
            let failed = parse_json::<Vec<u32>>(Cut(cut), "test");
            assert!(
                matches!(failed, Err(HandlerError::Framing(_))),
                "{} bytes",
                text.len()
            );
            let mut bad = text.clone();
            bad.push(b'x');
            let failed = parse_json::<Vec<u32>>(&bad[..], "test");
            assert!(
                matches!(failed, Err(HandlerError::Sync(_))),
                "{} bytes",
                text.len()
            );
        }
    }
}
