//! A reader that fails, instead of silently stopping, once a byte budget is
//! spent. Used twice on every body: on the compressed bytes from the socket
//! and on the decompressed bytes a codec produces, so that neither a huge
//! upload nor a decompression bomb can exhaust memory or disk.

use std::error::Error;
use std::fmt;
use std::io::{self, Read};

/// The error carried inside `io::Error` when a budget is exceeded; find it
/// again with [`exceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    /// What was being counted, for the log ("request body", "decompressed payload").
    pub what: &'static str,
    pub limit: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is larger than the limit of {} bytes",
            self.what, self.limit
        )
    }
}

impl Error for LimitExceeded {}

/// Returns the limit that was hit, if this I/O error came from a `LimitReader`
/// (directly or passed through a decoder).
pub fn exceeded(err: &io::Error) -> Option<LimitExceeded> {
    err.get_ref()?.downcast_ref::<LimitExceeded>().copied()
}

pub struct LimitReader<R> {
    inner: R,
    remaining: u64,
    what: &'static str,
    limit: u64,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64, what: &'static str) -> Self {
        LimitReader {
            inner,
            remaining: limit,
            what,
            limit,
        }
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.limit - self.remaining
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Exactly at the limit is fine; one byte more is not.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(LimitExceeded {
                    what: self.what,
                    limit: self.limit,
                })),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_limit_passes() {
        let mut r = LimitReader::new(&b"hello"[..], 5, "body");
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(r.consumed(), 5);
    }

    #[test]
    fn one_byte_over_fails_with_a_findable_error() {
        let mut r = LimitReader::new(&b"hello!"[..], 5, "body");
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(
            exceeded(&err),
            Some(LimitExceeded {
                what: "body",
                limit: 5
            })
        );
        assert!(exceeded(&io::Error::other("x")).is_none());
    }

    #[test]
    fn error_survives_a_zstd_decoder() {
        let data = vec![7u8; 100_000];
        let compressed = zstd::encode_all(&data[..], 3).unwrap();
        let limited = LimitReader::new(&compressed[..], 10, "compressed");
        let mut dec = zstd::stream::read::Decoder::new(limited).unwrap();
        let err = dec.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(exceeded(&err).map(|l| l.what), Some("compressed"));
    }
}
