//! A request body in the chunked transfer coding (RFC 9112 §7.1), decoded
//! strictly and within fixed bounds. Written here rather than taken from the
//! `chunked_transfer` crate, whose decoder reads a chunk-size line of any
//! length into memory, cannot skip trailer fields, and resynchronises on
//! garbage after an error (it once read a following request's bytes as a
//! chunk size and waited for thousands of bytes that never came).
//!
//! A malformed body is an error of kind `InvalidData`, returned again by
//! every later read; the connection is then marked to take no further
//! request, since where the next one would start is unknown.

use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};
use std::sync::Arc;

use crate::limits::Slot;

/// A chunk-size line (size and extensions) at most, in bytes.
const MAX_SIZE_LINE: usize = 4 * 1024;
/// The trailer section at most, in bytes (its fields are discarded).
const MAX_TRAILERS: usize = 8 * 1024;

pub struct ChunkedReader<R> {
    source: R,
    state: State,
    /// The connection, marked broken on a malformed body (`None` in tests
    /// and for requests not read from a socket).
    slot: Option<Arc<Slot>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// The last chunk and its trailer section have been read.
    Done,
    /// The body was malformed or cut short: this error, again.
    Failed(ErrorKind, String),
}

impl<R: Read> ChunkedReader<R> {
    pub fn new(source: R, slot: Option<Arc<Slot>>) -> ChunkedReader<R> {
        ChunkedReader {
            source,
            state: State::Size,
            slot,
        }
    }

    /// True once the whole body, up to the end of its trailer section, has
    /// been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn byte(&mut self) -> IoResult<u8> {
        let mut byte = [0u8];
        loop {
            match self.source.read(&mut byte) {
                Ok(0) => return Err(cut_short()),
                Ok(_) => return Ok(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the LF of a CRLF whose CR was just read.
    fn line_feed(&mut self) -> IoResult<()> {
        match self.byte()? {
            b'\n' => Ok(()),
            _ => Err(malformed("a CR not followed by LF")),
        }
    }

    /// `chunk-size [ chunk-ext ] CRLF`; extensions are skipped.
    fn size_line(&mut self) -> IoResult<u64> {
        let mut size: u64 = 0;
        let mut digits = 0;
        let mut length = 0;
        let mut in_extensions = false;
        loop {
            let byte = self.byte()?;
            length += 1;
            if length > MAX_SIZE_LINE {
                return Err(malformed("a chunk-size line too long"));
            }
            match byte {
                b'\r' => break,
                b'\n' => return Err(malformed("a bare LF in a chunk-size line")),
                _ if in_extensions => {}
                b';' if digits > 0 => in_extensions = true,
                // whitespace before the extensions (RFC 9112's BWS)
                b' ' | b'\t' if digits > 0 => {}
                _ => {
                    let digit = (byte as char)
                        .to_digit(16)
                        .filter(|_| length == digits + 1)
                        .ok_or_else(|| malformed("an invalid chunk size"))?;
                    digits += 1;
                    size = size
                        .checked_mul(16)
                        .map(|s| s + u64::from(digit))
                        .ok_or_else(|| malformed("a chunk size too large"))?;
                }
            }
        }
        self.line_feed()?;
        if digits == 0 {
            return Err(malformed("an empty chunk size"));
        }
        Ok(size)
    }

    /// Skips the trailer section after the last chunk, up to its empty line.
    fn trailers(&mut self) -> IoResult<()> {
        let mut total = 0;
        let mut line_empty = true;
        loop {
            let byte = self.byte()?;
            total += 1;
            if total > MAX_TRAILERS {
                return Err(malformed("a trailer section too long"));
            }
            match byte {
                b'\r' => {
                    self.line_feed()?;
                    if line_empty {
                        return Ok(());
                    }
                    line_empty = true;
                }
                b'\n' => return Err(malformed("a bare LF in the trailer section")),
                _ => line_empty = false,
            }
        }
    }

    fn read_chunked(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        loop {
            match self.state {
                State::Size => {
                    let size = self.size_line()?;
                    if size == 0 {
                        self.trailers()?;
                        self.state = State::Done;
                    } else {
                        self.state = State::Data(size);
                    }
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let read = self.source.read(&mut buf[..want])?;
                    if read == 0 {
                        return Err(cut_short());
                    }
                    let left = left - read as u64;
                    self.state = match left {
                        0 => State::DataEnd,
                        _ => State::Data(left),
                    };
                    return Ok(read);
                }
                State::DataEnd => {
                    match self.byte()? {
                        b'\r' => self.line_feed()?,
                        _ => return Err(malformed("chunk data longer than its size")),
                    }
                    self.state = State::Size;
                }
                State::Done => return Ok(0),
                State::Failed(kind, ref why) => return Err(IoError::new(kind, why.clone())),
            }
        }
    }
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let result = self.read_chunked(buf);
        if let Err(e) = &result {
            if !matches!(self.state, State::Failed(..)) && e.kind() != ErrorKind::Interrupted {
                // A timeout, a reset or a malformed body: the stream is
                // somewhere inside this request, so nothing after it can be
                // read as a request.
                self.state = State::Failed(e.kind(), e.to_string());
                if let Some(slot) = &self.slot {
                    slot.mark_broken();
                }
            }
        }
        result
    }
}

fn malformed(what: &str) -> IoError {
    IoError::new(
        ErrorKind::InvalidData,
        format!("malformed chunked body: {}", what),
    )
}

fn cut_short() -> IoError {
    IoError::new(
        ErrorKind::UnexpectedEof,
        "the connection closed in the middle of a chunked body",
    )
}

#[cfg(test)]
mod tests {
    use super::ChunkedReader;
    use std::io::{ErrorKind, Read};

    /// The decoded body and what is left of the stream after it, or the
    /// error's kind and message.
    fn decode(raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), (ErrorKind, String)> {
        let mut source = raw;
        let mut reader = ChunkedReader::new(&mut source, None);
        let mut body = Vec::new();
        // small reads, to cross chunk boundaries in the middle of a read
        let mut buf = [0u8; 3];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) => {
                    // every later read fails the same way
                    let again = reader.read(&mut buf).unwrap_err();
                    assert_eq!((again.kind(), again.to_string()), (e.kind(), e.to_string()));
                    return Err((e.kind(), e.to_string()));
                }
            }
        }
        assert!(reader.is_done());
        Ok((body, source.to_vec()))
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end_of_the_body() {
        let (body, rest) =
            decode(b"3\r\nhel\r\nB\r\nlo world!!!\r\n0\r\n\r\nGET / HTTP/1.1\r\n").unwrap();
        assert_eq!(body, b"hello world!!!");
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "the next request is left unread"
        );
    }

    #[test]
    fn skips_extensions_and_trailers() {
        let raw = b"5 ;name=value\r\nhello\r\n0;last\r\nX-Sum: 1\r\nX-More: 2\r\n\r\nnext";
        let (body, rest) = decode(raw).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"hello"[..], &b"next"[..])
        );
    }

    #[test]
    fn malformed_bodies_are_invalid_data() {
        for (raw, why) in [
            (&b"zz\r\nabc\r\n0\r\n\r\n"[..], "an invalid chunk size"),
            (b"\r\n", "an empty chunk size"),
            (b" 3\r\nabc\r\n0\r\n\r\n", "an invalid chunk size"),
            (b"+3\r\nabc\r\n0\r\n\r\n", "an invalid chunk size"),
            (b"3 4\r\nabc\r\n0\r\n\r\n", "an invalid chunk size"),
            (b"3\nabc\r\n0\r\n\r\n", "a bare LF in a chunk-size line"),
            (b"3\rabc", "a CR not followed by LF"),
            (b"3\r\nabcd\r\n0\r\n\r\n", "chunk data longer than its size"),
            (b"10000000000000000\r\n", "a chunk size too large"),
            (b"0\r\nX: 1\n\r\n", "a bare LF in the trailer section"),
        ] {
            let err = decode(raw).unwrap_err();
            assert_eq!(err.0, ErrorKind::InvalidData, "{:?}", raw);
            assert!(err.1.ends_with(why), "{:?}: {}", raw, err.1);
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut long_size = b"1;".to_vec();
        long_size.resize(64 * 1024, b'x');
        let err = decode(&long_size).unwrap_err();
        assert!(err.1.ends_with("a chunk-size line too long"), "{}", err.1);

        let mut long_trailers = b"0\r\n".to_vec();
        for _ in 0..1000 {
            long_trailers.extend_from_slice(b"X-Trailer: some value\r\n");
        }
        let err = decode(&long_trailers).unwrap_err();
        assert!(err.1.ends_with("a trailer section too long"), "{}", err.1);
    }

    #[test]
    fn a_body_cut_short_is_unexpected_eof() {
        for raw in [&b"5\r\nhel"[..], b"5\r\nhello", b"5\r\nhello\r\n", b"0\r\n"] {
            assert_eq!(
                decode(raw).unwrap_err().0,
                ErrorKind::UnexpectedEof,
                "{:?}",
                raw
            );
        }
    }
}
