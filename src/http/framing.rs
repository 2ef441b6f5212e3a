//! Protocol v11 framing: the JSON `anki-sync` request header, zstd request
//! bodies decoded as a stream under two byte budgets, and zstd response
//! bodies with an exact `anki-original-size`.

use std::fmt;
use std::io::{self, Read};

use serde::Deserialize;

use super::limit::{self, LimitExceeded, LimitReader};
use super::multipart::MultipartError;
use super::zstd_pool;
use crate::budget::{self, Refusal};
use crate::protocol::{SYNC_VERSION_MAX, SYNC_VERSION_MIN};

/// zstd level for responses: fast, because a Raspberry Pi compresses whole
/// collections with it while the client waits.
const RESPONSE_ZSTD_LEVEL: i32 = 1;

/// Largest zstd window we accept, as a power of two (4 MiB). The client
/// (26.9.3, checked on every request of a sync and an upload) uses 2 MiB
/// windows; this leaves room for a client compressing harder. The window is
/// part of a request's memory: a body that decompresses to more than the
/// window fills all of it, and a frame asking for more could make us
/// allocate up to 2 GiB.
const MAX_WINDOW_LOG: u32 = 22;

/// Compressed bytes read from the socket at a time. (The zstd crate's
/// reader asks for 128 KiB, which glibc maps and unmaps for every request.)
const BODY_READ_BUFFER: usize = 32 * 1024;

/// The parsed `anki-sync` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncHeader {
    pub version: u8,
    /// Host key; empty on login.
    pub hkey: String,
    /// Short client version, for logs only.
    pub client: String,
    /// Session key of the client object that sent the request.
    pub session: String,
}

#[derive(Deserialize)]
struct RawHeader {
    v: u8,
    k: String,
    c: String,
    s: String,
}

/// What can be wrong with a request's framing.
#[derive(Debug)]
pub enum FramingError {
    /// The `anki-sync` header is not the JSON object clients send.
    BadHeader(serde_json::Error),
    /// A protocol version outside 8..=11.
    UnsupportedVersion(u8),
    /// The body is not a valid zstd stream.
    BadBody(io::Error),
    /// A legacy request's multipart form (or its gzip data) is malformed.
    Form(MultipartError),
    /// A byte budget was exceeded.
    TooLarge(LimitExceeded),
    /// One item of a JSON body (a note row, a notetype) is too large (413).
    ItemTooLarge(String),
    /// The memory for decoding bodies stayed in use by other requests (429).
    Busy(String),
    /// The connection failed while reading the body.
    Io(io::Error),
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::BadHeader(e) => write!(f, "bad anki-sync header: {e}"),
            FramingError::UnsupportedVersion(v) => write!(f, "unsupported sync version: {v}"),
            FramingError::BadBody(e) => write!(f, "decoding request body: {e}"),
            FramingError::Form(e) => e.fmt(f),
            FramingError::TooLarge(l) => write!(f, "{l}"),
            FramingError::ItemTooLarge(m) | FramingError::Busy(m) => f.write_str(m),
            FramingError::Io(e) => write!(f, "reading request body: {e}"),
        }
    }
}

impl std::error::Error for FramingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FramingError::BadHeader(e) => Some(e),
            FramingError::BadBody(e) | FramingError::Io(e) => Some(e),
            FramingError::Form(e) => Some(e),
            FramingError::TooLarge(l) => Some(l),
            FramingError::UnsupportedVersion(_)
            | FramingError::ItemTooLarge(_)
            | FramingError::Busy(_) => None,
        }
    }
}

impl FramingError {
    /// Classifies an error met while reading a decoded body.
    pub fn from_body_error(err: io::Error) -> FramingError {
        if let Some(l) = limit::exceeded(&err) {
            return FramingError::TooLarge(l);
        }
        match budget::refusal(&err) {
            Some(r @ Refusal::ItemTooLarge { .. }) => {
                return FramingError::ItemTooLarge(r.to_string());
            }
            Some(r @ Refusal::Busy { .. }) => return FramingError::Busy(r.to_string()),
            None => {}
        }
        match err.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::TimedOut => FramingError::Io(err),
            _ => FramingError::BadBody(err),
        }
    }
}

impl SyncHeader {
    /// Parses the header value. All four keys are required (extra keys are
    /// fine) and the version must be one this server speaks.
    pub fn parse(value: &str) -> Result<SyncHeader, FramingError> {
        let raw: RawHeader = serde_json::from_str(value).map_err(FramingError::BadHeader)?;
        if !(SYNC_VERSION_MIN..=SYNC_VERSION_MAX).contains(&raw.v) {
            return Err(FramingError::UnsupportedVersion(raw.v));
        }
        Ok(SyncHeader {
            version: raw.v,
            hkey: raw.k,
            client: raw.c,
            session: raw.s,
        })
    }
}

/// Byte budgets for one request body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Bytes read from the socket.
    pub compressed: u64,
    /// Bytes the decoder may produce.
    pub decompressed: u64,
}

impl BodyLimits {
    /// The budgets of a v11 (zstd) body. As on the official server, only
    /// what it decompresses to is limited; the bytes on the wire may be as
    /// many as a zstd frame of that much content can take (stored blocks
    /// add 3 bytes per 128 KiB, the frame a few more), so a body that
    /// compresses badly is never refused for that alone.
    pub fn zstd(decompressed: u64) -> BodyLimits {
        BodyLimits {
            compressed: decompressed
                .saturating_add(decompressed / 1024)
                .saturating_add(64 * 1024),
            decompressed,
        }
    }
}

/// Wraps a raw v11 body in: compressed budget → zstd decoder (first frame
/// only, bounded window) → decompressed budget. Nothing is buffered beyond
/// the decoder's window.
/// A completely empty body decodes to an empty payload, as upstream.
pub fn zstd_body<'a, R: Read + 'a>(raw: R, limits: BodyLimits) -> io::Result<Box<dyn Read + 'a>> {
    let mut compressed = LimitReader::new(raw, limits.compressed, "request body");
    let mut first = [0u8; 1];
    let n = loop {
        match compressed.read(&mut first) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 0 {
        return Ok(Box::new(io::empty()));
    }
    let rejoined = io::Cursor::new(first).chain(compressed);
    let buffered = io::BufReader::with_capacity(BODY_READ_BUFFER, rejoined);
    let decoder = zstd_pool::decoder(buffered, MAX_WINDOW_LOG)?;
    Ok(Box::new(LimitReader::new(
        decoder,
        limits.decompressed,
        "decompressed payload",
    )))
}

/// Compresses a small in-memory payload for a v11 response. In one call
/// with its size known, zstd sizes its window and tables to the payload
/// (a streaming encoder would set up, and clear, tables for 512 KiB).
pub fn compress(payload: &[u8]) -> io::Result<Vec<u8>> {
    zstd_pool::compress(payload, RESPONSE_ZSTD_LEVEL)
}

/// Compresses a stream (e.g. a collection file) while it is being sent.
pub fn compress_stream<'a, R: Read + Send + 'a>(
    source: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(Box::new(zstd::stream::read::Encoder::new(
        source,
        RESPONSE_ZSTD_LEVEL,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_client_header() {
        let h = SyncHeader::parse(
            r#"{"v":11,"k":"b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d","c":"26.09.3,29bb700b,linux","s":"eQaUzg","x":1}"#,
        )
        .unwrap();
        assert_eq!(h.version, 11);
        assert_eq!(h.hkey, "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
        assert_eq!(h.session, "eQaUzg");
    }

    #[test]
    fn rejects_what_the_official_server_rejects() {
        for bad in [
            "not json",
            r#"{"v":11,"k":"","c":""}"#,
            r#"{"v":"11","k":"","c":"","s":""}"#,
            r#"{"v":256,"k":"","c":"","s":""}"#,
        ] {
            assert!(
                matches!(SyncHeader::parse(bad), Err(FramingError::BadHeader(_))),
                "{bad}"
            );
        }
        for v in [0, 7, 12, 255] {
            let h = format!(r#"{{"v":{v},"k":"","c":"","s":""}}"#);
            assert!(matches!(
                SyncHeader::parse(&h),
                Err(FramingError::UnsupportedVersion(x)) if x == v
            ));
        }
    }

    fn decode(body: &[u8], limits: BodyLimits) -> Result<Vec<u8>, FramingError> {
        let mut out = Vec::new();
        zstd_body(body, limits)
            .map_err(FramingError::from_body_error)?
            .read_to_end(&mut out)
            .map_err(FramingError::from_body_error)?;
        Ok(out)
    }

    const BIG: BodyLimits = BodyLimits {
        compressed: 1 << 20,
        decompressed: 1 << 20,
    };

    #[test]
    fn round_trips_and_decodes_empty_bodies() {
        let payload = br#"{"v":11,"cv":"anki"}"#;
        assert_eq!(decode(&compress(payload).unwrap(), BIG).unwrap(), payload);
        assert_eq!(decode(b"", BIG).unwrap(), b"");
        let mut streamed = Vec::new();
        compress_stream(&payload[..])
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(decode(&streamed, BIG).unwrap(), payload);
    }

    #[test]
    fn garbage_is_a_bad_body() {
        assert!(matches!(
            decode(b"{\"v\":11}", BIG),
            Err(FramingError::BadBody(_))
        ));
    }

    #[test]
    fn a_bomb_hits_the_decompressed_budget() {
        let bomb = compress(&vec![0u8; 10 << 20]).unwrap();
        assert!(bomb.len() < 4096);
        let limits = BodyLimits {
            compressed: 1 << 20,
            decompressed: 1 << 20,
        };
        match decode(&bomb, limits) {
            Err(FramingError::TooLarge(l)) => assert_eq!(l.what, "decompressed payload"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_large_body_hits_the_compressed_budget() {
        let body = compress(
            &(0..200_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let limits = BodyLimits {
            compressed: 1000,
            decompressed: 1 << 30,
        };
        match decode(&body, limits) {
            Err(FramingError::TooLarge(l)) => assert_eq!(l.what, "request body"),
            other => panic!("{other:?}"),
        }
    }

    /// Issue 13, conformance 1: a body that does not compress at all is
    /// taken up to the decompressed limit, whatever its size on the wire
    /// (we used to refuse it past a third of that).
    #[test]
    fn incompressible_bodies_are_limited_only_by_their_content() {
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let limits = BodyLimits::zstd(noise.len() as u64);
        let body = zstd::encode_all(&noise[..], 1).unwrap();
        assert!(body.len() > noise.len(), "{} bytes", body.len());
        assert_eq!(decode(&body, limits).unwrap().len(), noise.len());
        let one_more = zstd::encode_all(&[&noise[..], b"x"].concat()[..], 1).unwrap();
        match decode(&one_more, limits) {
            Err(FramingError::TooLarge(l)) => assert_eq!(l.what, "decompressed payload"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
    }

    #[test]
    fn a_huge_window_is_refused() {
        // A frame declaring a 1 GiB window must not make us allocate it.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(30).unwrap();
        enc.long_distance_matching(true).unwrap();
        std::io::Write::write_all(&mut enc, &vec![1u8; 1 << 16]).unwrap();
        let frame = enc.finish().unwrap();
        assert!(matches!(decode(&frame, BIG), Err(FramingError::BadBody(_))));
    }
}
