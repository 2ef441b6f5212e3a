//! Answers before encoding, and their encoding: zstd with
//! `anki-original-size` for v11 clients, plain for older ones; files are
//! streamed, never read into memory. Error answers follow the official
//! server: the status digits as plain text (clients only look at the status).

use std::io::{BufReader, Cursor, Read};

use super::dispatch::{Answer, LogFields};
use super::error::HandlerError;
use super::framing;
use crate::error::OrSyncError;
use crate::protocol::SYNC_VERSION_ZSTD;

/// A successful answer, before encoding.
pub(super) enum Reply<'s> {
    /// `/health`: 200 with an empty body, never compressed.
    Empty,
    /// `/`: a plain-text page for people, never compressed.
    Page(String),
    /// `/metrics`: the Prometheus text format, never compressed.
    Metrics(String),
    Bytes(Vec<u8>),
    /// A body of `len` bytes read as it is sent: a collection file, or a
    /// media zip made on the fly. `_hold` (typically a user's lock guard)
    /// lives until the last byte is sent, so nothing writes to the source
    /// meanwhile.
    Stream {
        body: Box<dyn Read + Send + 's>,
        len: u64,
        _hold: Box<dyn Held + 's>,
    },
}

pub(super) fn json_reply<'s, T: serde::Serialize>(value: &T) -> Result<Reply<'s>, HandlerError> {
    let bytes = serde_json::to_vec(value).or_internal("encoding the answer")?;
    Ok(Reply::Bytes(bytes))
}

/// The answer of methods that return nothing.
pub(super) fn json_null<'s>() -> Reply<'s> {
    Reply::Bytes(b"null".to_vec())
}

/// Anything kept alive while a reply is sent (lock guards, temp files).
pub(super) trait Held {}
impl<T> Held for T {}

/// Encodes a successful reply for a client of protocol `version`.
pub(super) fn encode<'s>(reply: Reply<'s>, version: u8) -> Result<Answer<'s>, HandlerError> {
    let zstd = version >= SYNC_VERSION_ZSTD;
    let (headers, body, len): (_, Box<dyn Read + 's>, _) = match reply {
        Reply::Empty => (Vec::new(), Box::new(std::io::empty()), Some(0)),
        Reply::Page(text) => {
            let len = text.len() as u64;
            (
                vec![("Content-Type", "text/plain; charset=utf-8".to_string())],
                Box::new(Cursor::new(text.into_bytes())),
                Some(len),
            )
        }
        Reply::Metrics(text) => {
            let len = text.len() as u64;
            (
                vec![("Content-Type", crate::metrics::CONTENT_TYPE.to_string())],
                Box::new(Cursor::new(text.into_bytes())),
                Some(len),
            )
        }
        Reply::Bytes(bytes) if zstd => {
            let compressed = framing::compress(&bytes).or_internal("compressing the answer")?;
            let len = compressed.len() as u64;
            (
                vec![("anki-original-size", bytes.len().to_string())],
                Box::new(Cursor::new(compressed)),
                Some(len),
            )
        }
        Reply::Bytes(bytes) => {
            let len = bytes.len() as u64;
            (octet_stream(), Box::new(Cursor::new(bytes)), Some(len))
        }
        Reply::Stream { body, len, _hold } => {
            let source = BufReader::with_capacity(64 * 1024, body);
            if zstd {
                let stream =
                    framing::compress_stream(source).or_internal("compressing the answer")?;
                let body = Holding {
                    inner: stream,
                    _hold,
                };
                (
                    vec![("anki-original-size", len.to_string())],
                    Box::new(body) as Box<dyn Read + 's>,
                    None,
                )
            } else {
                let body = Holding {
                    inner: source,
                    _hold,
                };
                (
                    octet_stream(),
                    Box::new(body) as Box<dyn Read + 's>,
                    Some(len),
                )
            }
        }
    };
    Ok(Answer {
        status: 200,
        headers,
        body,
        len,
        close: false,
        log: LogFields::default(),
    })
}

fn octet_stream() -> Vec<(&'static str, String)> {
    vec![("Content-Type", "application/octet-stream".to_string())]
}

/// The answer to a failed request.
pub(super) fn error_answer(err: &HandlerError) -> Answer<'static> {
    let reply = err.reply();
    let mut headers = Vec::new();
    if reply.status != 404 && reply.status != 405 {
        headers.push(("Content-Type", "text/plain; charset=utf-8".to_string()));
    }
    if let Some(allow) = reply.allow {
        headers.push(("Allow", allow.to_string()));
    }
    if let Some(seconds) = reply.retry_after {
        headers.push(("Retry-After", seconds.to_string()));
    }
    let len = reply.body.len() as u64;
    Answer {
        status: reply.status,
        headers,
        body: Box::new(Cursor::new(reply.body.into_bytes())),
        len: Some(len),
        close: false,
        log: LogFields::default(),
    }
}

/// A reader that keeps something alive (a lock guard) until it is dropped.
struct Holding<'s, R> {
    inner: R,
    _hold: Box<dyn Held + 's>,
}

impl<R: Read> Read for Holding<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}
