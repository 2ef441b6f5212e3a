//! Successful answers before encoding, and their encoding: zstd with
//! `anki-original-size` for v11 clients, plain for older ones; files are
//! streamed, never read into memory.

use std::fs::File;
use std::io::{BufReader, Cursor};

use log::{debug, warn};
use tiny_http::{Header, Request, Response, StatusCode};

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
    Bytes(Vec<u8>),
    /// A file streamed from disk. `_hold` (typically a user's lock guard)
    /// lives until the last byte is sent, so nothing writes to the file
    /// meanwhile.
    File {
        file: File,
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

/// Encodes a successful reply: zstd with `anki-original-size` for v11
/// clients, plain for older ones. Returns status and payload size.
pub(super) fn send_reply(request: Request, reply: Reply<'_>, version: u8) -> (u16, u64) {
    let zstd = version >= SYNC_VERSION_ZSTD;
    let result = match reply {
        Reply::Empty => {
            request.respond(Response::empty(200).with_header(header("Content-Length", "0")))
        }
        Reply::Page(text) => request.respond(
            Response::from_string(text)
                .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        ),
        Reply::Bytes(bytes) => {
            let len = bytes.len() as u64;
            let result = if zstd {
                match framing::compress(&bytes) {
                    Ok(compressed) => {
                        let size = compressed.len();
                        request.respond(Response::new(
                            StatusCode(200),
                            vec![header("anki-original-size", &len.to_string())],
                            Cursor::new(compressed),
                            Some(size),
                            None,
                        ))
                    }
                    Err(e) => Err(e),
                }
            } else {
                let size = bytes.len();
                request.respond(Response::new(
                    StatusCode(200),
                    vec![header("Content-Type", "application/octet-stream")],
                    Cursor::new(bytes),
                    Some(size),
                    None,
                ))
            };
            return (200, if result.is_ok() { len } else { 0 });
        }
        Reply::File { file, len, _hold } => {
            let source = BufReader::with_capacity(64 * 1024, file);
            let result = if zstd {
                match framing::compress_stream(source) {
                    Ok(stream) => request.respond(Response::new(
                        StatusCode(200),
                        vec![header("anki-original-size", &len.to_string())],
                        stream,
                        None,
                        None,
                    )),
                    Err(e) => Err(e),
                }
            } else {
                request.respond(Response::new(
                    StatusCode(200),
                    vec![header("Content-Type", "application/octet-stream")],
                    source,
                    usize::try_from(len).ok(),
                    None,
                ))
            };
            if let Err(e) = &result {
                warn!("sending a collection failed: {e}");
            }
            return (200, len);
        }
    };
    if let Err(e) = result {
        debug!("sending a response failed: {e}");
    }
    (200, 0)
}

/// Builds a header from our own constant names and ASCII values.
pub(super) fn header(name: &'static str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values built here are plain ASCII")
}
