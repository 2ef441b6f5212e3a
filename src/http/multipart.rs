//! Legacy (sync v8–10) request bodies: a small streaming parser for the
//! `multipart/form-data` forms that clients older than Anki 2.1.57 send, and
//! the gzip decoding of their `data` part.
//!
//! Clients send the fields in any order (the Rust-based legacy client puts
//! `data` first), so the form is read once, front to back: the small text
//! fields are kept, and the `data` part is streamed to a sink the caller
//! chooses (a temp file for uploads, a small `Vec` for JSON). Only then does
//! the caller know `c` and can decode the saved data with [`payload`].
//! Memory stays flat whatever the body: one fixed buffer of a chunk plus the
//! boundary, and every count (parts, headers, field sizes, bytes) is capped.

use std::fmt;
use std::io::{self, Read, Write};

use flate2::read::GzDecoder;

use super::limit::{self, LimitExceeded, LimitReader};

/// RFC 2046 caps boundaries at 70 characters; it also keeps our search window small.
pub const MAX_BOUNDARY_LEN: usize = 70;
/// Largest text field (`c`, `k`, `sk`, `s`, `v`); real values are under 100 bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Most parts a form may have; clients send at most five.
pub const MAX_PARTS: usize = 32;
/// Longest part header line, and most header lines per part.
const MAX_HEADER_LINE: usize = 1024;
const MAX_HEADERS_PER_PART: usize = 8;
/// Bytes read from the body at a time.
const CHUNK: usize = 8 * 1024;

/// What can be wrong with a legacy form. Everything is the client's fault
/// (400) except [`MultipartError::Io`], where the connection failed, and
/// [`MultipartError::Storage`], where our own sink failed (500).
#[derive(Debug)]
pub enum MultipartError {
    /// The Content-Type is not `multipart/form-data` with a usable boundary.
    NoBoundary(String),
    /// The body is not a form: no opening boundary, bad part headers, or
    /// something other than CRLF or `--` after a boundary.
    Malformed(String),
    /// The body ended before the closing boundary.
    Truncated,
    /// More than [`MAX_PARTS`] parts.
    TooManyParts,
    /// A text field longer than [`MAX_FIELD_BYTES`].
    FieldTooLarge(String),
    /// A second `data` part: the first is already streamed to the sink, so
    /// "last wins" (as for the text fields) cannot be honoured.
    RepeatedData,
    /// The whole form, the `data` part or the decoded payload is over its budget.
    TooLarge(LimitExceeded),
    /// Reading the request body failed (the connection broke or timed out).
    Io(io::Error),
    /// Writing the `data` part to the caller's sink, or reading it back, failed.
    Storage(io::Error),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::NoBoundary(e) => write!(f, "not a multipart form: {e}"),
            MultipartError::Malformed(e) => write!(f, "malformed multipart form: {e}"),
            MultipartError::Truncated => {
                f.write_str("multipart form ends before its closing boundary")
            }
            MultipartError::TooManyParts => {
                write!(f, "multipart form has more than {MAX_PARTS} parts")
            }
            MultipartError::FieldTooLarge(name) => {
                write!(
                    f,
                    "form field {name:?} is longer than {MAX_FIELD_BYTES} bytes"
                )
            }
            MultipartError::RepeatedData => f.write_str("form has more than one data part"),
            MultipartError::TooLarge(l) => l.fmt(f),
            MultipartError::Io(e) => write!(f, "reading request body: {e}"),
            MultipartError::Storage(e) => write!(f, "storing form data: {e}"),
        }
    }
}

impl std::error::Error for MultipartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MultipartError::Io(e) | MultipartError::Storage(e) => Some(e),
            _ => None,
        }
    }
}

impl MultipartError {
    /// Classifies an error met while reading the request body.
    fn from_read_error(err: io::Error) -> MultipartError {
        match limit::exceeded(&err) {
            Some(l) => MultipartError::TooLarge(l),
            None => MultipartError::Io(err),
        }
    }
}

/// The text fields of a legacy form, and how long its `data` part was.
/// A repeated text field keeps its last value, as upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyForm {
    /// Compression flag: gzip unless absent or `"0"`.
    pub c: Option<String>,
    /// Host key.
    pub k: Option<String>,
    /// Synonym of `k` (legacy media clients send the hkey `begin` returned).
    pub sk: Option<String>,
    /// Collection session key.
    pub s: Option<String>,
    /// Client version string (used by `/msync/begin` only).
    pub v: Option<String>,
    /// Bytes written to the data sink; 0 when `data` was missing or empty.
    pub data_len: u64,
}

impl LegacyForm {
    /// The host key, from `k` or else its synonym `sk`.
    pub fn hkey(&self) -> Option<&str> {
        self.k.as_deref().or(self.sk.as_deref())
    }

    /// Whether the `data` part is gzip: any `c` other than `"0"` (even `"yes"`).
    pub fn gzipped(&self) -> bool {
        self.c.as_deref().is_some_and(|c| c != "0")
    }
}

/// Byte budgets for one legacy form.
#[derive(Clone, Copy, Debug)]
pub struct FormLimits {
    /// The whole form as read from the socket (`MAX_SYNC_PAYLOAD_MEGS` MiB).
    pub body: u64,
    /// The `data` part as sent (still compressed); keeps an in-memory sink small.
    pub data: u64,
}

/// Extracts the boundary from a `multipart/form-data; boundary=...` Content-Type
/// (media type case-insensitive, boundary quoted or not).
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let (media, params) = parse_header_value(content_type)
        .ok_or_else(|| MultipartError::NoBoundary(format!("bad content type {content_type:?}")))?;
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NoBoundary(format!(
            "content type {media:?} is not multipart/form-data"
        )));
    }
    let boundary = params
        .into_iter()
        .rev() // a repeated parameter: the last one, like the form fields
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value)
        .ok_or_else(|| MultipartError::NoBoundary("no boundary parameter".into()))?;
    check_boundary(&boundary)?;
    Ok(boundary)
}

/// A boundary must be 1–70 printable ASCII characters. Excluding CR also makes
/// the delimiter search linear (see [`find`]).
fn check_boundary(boundary: &str) -> Result<(), MultipartError> {
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
        return Err(MultipartError::NoBoundary(format!(
            "boundary must be 1 to {MAX_BOUNDARY_LEN} characters long"
        )));
    }
    if !boundary.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(MultipartError::NoBoundary(
            "boundary has characters other than printable ASCII".into(),
        ));
    }
    Ok(())
}

/// Reads a whole legacy form from `body`, streaming the `data` part's bytes
/// (as sent, still compressed when `c` says so) into `data_sink` and keeping
/// the text fields. Parts with other names are read and dropped.
///
/// `body` is the raw request body; the `limits.body` budget is applied here.
/// The epilogue after the closing boundary is not read.
pub fn read_form<R: Read>(
    body: R,
    boundary: &str,
    data_sink: &mut dyn Write,
    limits: FormLimits,
) -> Result<LegacyForm, MultipartError> {
    read_form_gated(body, boundary, data_sink, limits, &mut |_| limits.data)
}

/// Like [`read_form`], asking `gate` for the `data` part's budget when a
/// host key (`k` or `sk`) arrives before it: a client that sends its key
/// first (the Python client) is known before its data is stored anywhere,
/// and an unknown key can keep the data small and in memory.
pub fn read_form_gated<R: Read>(
    body: R,
    boundary: &str,
    data_sink: &mut dyn Write,
    mut limits: FormLimits,
    gate: &mut dyn FnMut(&str) -> u64,
) -> Result<LegacyForm, MultipartError> {
    check_boundary(boundary)?;
    let mut scanner = Scanner::new(
        LimitReader::new(body, limits.body, "request body"),
        boundary,
    );
    // Anything before the first boundary is a preamble (RFC 2046) and dropped.
    match scanner.until_delimiter(&mut |_| Ok(())) {
        Err(MultipartError::Truncated) => {
            return Err(MultipartError::Malformed(
                "the body does not contain the boundary".into(),
            ));
        }
        other => other?,
    }

    let mut form = LegacyForm::default();
    let mut parts = 0;
    let mut seen_data = false;
    while scanner.next_part()? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        let name = scanner.part_name()?;
        let slot = match name.as_str() {
            "c" => &mut form.c,
            "k" => &mut form.k,
            "sk" => &mut form.sk,
            "s" => &mut form.s,
            "v" => &mut form.v,
            "data" => {
                if seen_data {
                    return Err(MultipartError::RepeatedData);
                }
                seen_data = true;
                let len = &mut form.data_len;
                scanner.until_delimiter(&mut |bytes| {
                    let total = *len + bytes.len() as u64;
                    if total > limits.data {
                        return Err(MultipartError::TooLarge(LimitExceeded {
                            what: "multipart data part",
                            limit: limits.data,
                        }));
                    }
                    data_sink
                        .write_all(bytes)
                        .map_err(MultipartError::Storage)?;
                    *len = total;
                    Ok(())
                })?;
                continue;
            }
            _ => {
                scanner.until_delimiter(&mut |_| Ok(()))?;
                continue;
            }
        };
        let mut value = Vec::new();
        scanner.until_delimiter(&mut |bytes| {
            if value.len() + bytes.len() > MAX_FIELD_BYTES {
                return Err(MultipartError::FieldTooLarge(name.clone()));
            }
            value.extend_from_slice(bytes);
            Ok(())
        })?;
        let value = String::from_utf8(value)
            .map_err(|_| MultipartError::Malformed(format!("field {name:?} is not UTF-8")))?;
        if (name == "k" || name == "sk") && !seen_data {
            limits.data = gate(&value);
        }
        *slot = Some(value);
    }
    data_sink.flush().map_err(MultipartError::Storage)?;
    Ok(form)
}

/// Wraps gzip data in a streaming decoder whose output fails past
/// `max_decompressed` bytes. Bad gzip data fails as `InvalidData`.
pub fn gzip_body<R: Read>(raw: R, max_decompressed: u64) -> impl Read {
    // One gzip member, as clients send; flate2 buffers 32 KiB, no more.
    LimitReader::new(
        GzipErrors(GzDecoder::new(raw)),
        max_decompressed,
        "decompressed payload",
    )
}

/// flate2 reports a bad header, bad deflate data and a stream cut short as
/// `InvalidInput`, `InvalidData` or `UnexpectedEof`. The saved `data` part
/// is complete, so all three are the client's bad gzip data: they become
/// `InvalidData`, which `FramingError::from_body_error` answers 400 (a cut
/// stream was logged as a broken connection before).
struct GzipErrors<R>(R);

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::UnexpectedEof => {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad gzip data: {e}"))
            }
            _ => e,
        })
    }
}

/// The request payload from the saved `data` part: `{}` when the part was
/// missing or empty (AnkiDroid omits it on download), gunzipped when `c` asks
/// for it, otherwise the bytes as sent; all under `max_decompressed`.
pub fn payload<'a, R: Read + 'a>(
    form: &LegacyForm,
    saved: R,
    max_decompressed: u64,
) -> Box<dyn Read + 'a> {
    if form.data_len == 0 {
        Box::new(&b"{}"[..])
    } else if form.gzipped() {
        Box::new(gzip_body(saved, max_decompressed))
    } else {
        Box::new(LimitReader::new(
            saved,
            max_decompressed,
            "decompressed payload",
        ))
    }
}

/// Reads the body through one fixed buffer, finding delimiters and lines.
struct Scanner<R> {
    inner: R,
    /// `CRLF--boundary`: what separates parts (RFC 2046).
    delimiter: Vec<u8>,
    /// Fixed size: a chunk plus the delimiter, never grown.
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    eof: bool,
}

impl<R: Read> Scanner<R> {
    fn new(inner: R, boundary: &str) -> Self {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        let mut buf = vec![0; CHUNK + delimiter.len()];
        // A body starts with `--boundary`, without the CRLF every later
        // delimiter has; pretending it was there gives one rule for all.
        buf[..2].copy_from_slice(b"\r\n");
        Scanner {
            inner,
            delimiter,
            buf,
            pos: 0,
            len: 2,
            eof: false,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// Moves the unread bytes to the front and reads once more; false at the
    /// end of the body. Callers keep fewer than a chunk unread, so there is room.
    fn fill(&mut self) -> Result<bool, MultipartError> {
        if self.eof {
            return Ok(false);
        }
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        debug_assert!(self.len < self.buf.len());
        loop {
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MultipartError::from_read_error(e)),
            }
        }
    }

    /// Passes the bytes before the next delimiter to `out`, piece by piece,
    /// and consumes the delimiter.
    fn until_delimiter(
        &mut self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), MultipartError>,
    ) -> Result<(), MultipartError> {
        loop {
            let unread = &self.buf[self.pos..self.len];
            if let Some(i) = find(unread, &self.delimiter) {
                out(&unread[..i])?;
                self.pos += i + self.delimiter.len();
                return Ok(());
            }
            // All but a tail that may be the start of a delimiter is content.
            let keep = unread.len().min(self.delimiter.len() - 1);
            let content = unread.len() - keep;
            out(&unread[..content])?;
            self.pos += content;
            if !self.fill()? {
                return Err(MultipartError::Truncated);
            }
        }
    }

    /// After a delimiter: true if a part follows (CRLF, maybe after spaces),
    /// false at the closing `--`. What follows the close is not read, so a
    /// missing final CRLF is fine.
    fn next_part(&mut self) -> Result<bool, MultipartError> {
        while self.unread().len() < 2 {
            if !self.fill()? {
                return Err(MultipartError::Truncated);
            }
        }
        if self.unread().starts_with(b"--") {
            return Ok(false);
        }
        let rest = self.line()?;
        if rest.trim_matches([' ', '\t']).is_empty() {
            Ok(true)
        } else {
            Err(MultipartError::Malformed(
                "the boundary is followed by something other than CRLF".into(),
            ))
        }
    }

    /// One line, without its CRLF (a bare LF is accepted too).
    fn line(&mut self) -> Result<String, MultipartError> {
        loop {
            let unread = self.unread();
            if let Some(i) = unread.iter().position(|&b| b == b'\n') {
                let line = &unread[..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > MAX_HEADER_LINE {
                    break;
                }
                // Only ASCII names matter; a non-UTF-8 file name must not fail.
                let line = String::from_utf8_lossy(line).into_owned();
                self.pos += i + 1;
                return Ok(line);
            }
            if unread.len() > MAX_HEADER_LINE + 1 {
                break;
            }
            if !self.fill()? {
                return Err(MultipartError::Truncated);
            }
        }
        Err(MultipartError::Malformed(format!(
            "part header line longer than {MAX_HEADER_LINE} bytes"
        )))
    }

    /// Reads a part's headers and returns the field name from its
    /// `Content-Disposition: form-data; name="..."`. Other headers
    /// (Content-Type, …) are ignored.
    fn part_name(&mut self) -> Result<String, MultipartError> {
        let mut name = None;
        for _ in 0..=MAX_HEADERS_PER_PART {
            let line = self.line()?;
            if line.is_empty() {
                return name.ok_or_else(|| {
                    MultipartError::Malformed("part without Content-Disposition".into())
                });
            }
            let (header, value) = line
                .split_once(':')
                .ok_or_else(|| MultipartError::Malformed("part header without a colon".into()))?;
            if header.trim().eq_ignore_ascii_case("content-disposition") {
                name = Some(disposition_name(value)?);
            }
        }
        Err(MultipartError::Malformed(format!(
            "part has more than {MAX_HEADERS_PER_PART} headers"
        )))
    }
}

/// The `name` of a `form-data; name="..."; filename="..."` disposition.
fn disposition_name(value: &str) -> Result<String, MultipartError> {
    let bad = || MultipartError::Malformed(format!("bad Content-Disposition {value:?}"));
    let (kind, params) = parse_header_value(value).ok_or_else(bad)?;
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(bad());
    }
    params
        .into_iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case("name"))
        .map(|(_, value)| value)
        .ok_or_else(bad)
}

/// Splits `type; a=b; c="d;e"` into the type and its parameters (values
/// unquoted, `\` escapes resolved). `None` if a quote is never closed, text
/// follows a closing quote, or a parameter has no `=`.
fn parse_header_value(value: &str) -> Option<(&str, Vec<(String, String)>)> {
    let (kind, mut rest) = value.split_once(';').unwrap_or((value, ""));
    let mut params = Vec::new();
    loop {
        // Also skips empty parameters, as in a trailing `;`.
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Some((kind.trim(), params));
        }
        let eq = rest.find('=')?;
        let name = &rest[..eq];
        if name.contains(';') {
            return None;
        }
        let raw = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let (value, tail) = match raw.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = raw.find(';').unwrap_or(raw.len());
                (raw[..end].trim_end().to_string(), &raw[end..])
            }
        };
        let tail = tail.trim_start_matches([' ', '\t']);
        if !(tail.is_empty() || tail.starts_with(';')) {
            return None;
        }
        params.push((name.trim().to_string(), value));
        rest = tail;
    }
}

/// The rest of a quoted string after its opening quote: the value and what
/// follows the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// Where `needle` (a delimiter: CR first, no other CR) starts in `hay`.
/// Candidates start at a CR, and a partial match cannot contain the next CR,
/// so no byte is compared twice: linear even on hostile data.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == b'\r') {
        let start = from + i;
        if hay[start..].starts_with(needle) {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::framing::FramingError;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    const B: &str = "Anki-sync-boundary";
    const ROOMY: FormLimits = FormLimits {
        body: 1 << 20,
        data: 1 << 20,
    };

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A form as the Python client (anki/sync.py) writes it: text fields
    /// first, then a `data` file part, then the closing boundary and CRLF.
    fn python_form(fields: &[(&str, &str)], data: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        if let Some(data) = data {
            body.extend_from_slice(
                format!(
                    "--{B}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        body
    }

    /// A form as reqwest writes it for the Rust-based legacy client: `data`
    /// first, then `c`, `k`, `s`, with a random-looking boundary.
    const RB: &str = "8c2f0a1b7d3e4f56-0123456789abcdef-fedcba9876543210-a1b2c3d4e5f60718";
    fn rust_form(data: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
        let mut body = format!(
            "--{RB}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data\"\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data);
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "\r\n--{RB}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("\r\n--{RB}--\r\n").as_bytes());
        body
    }

    fn read(body: &[u8], boundary: &str) -> Result<(LegacyForm, Vec<u8>), MultipartError> {
        read_with(body, boundary, ROOMY)
    }

    fn read_with(
        body: &[u8],
        boundary: &str,
        limits: FormLimits,
    ) -> Result<(LegacyForm, Vec<u8>), MultipartError> {
        let mut data = Vec::new();
        let form = read_form(body, boundary, &mut data, limits)?;
        assert_eq!(form.data_len, data.len() as u64);
        // The same body delivered one byte per read must give the same answer.
        let mut slow = Vec::new();
        let slow_form = read_form(OneByte(body), boundary, &mut slow, limits)
            .expect("fails one byte at a time but not all at once");
        assert_eq!((&form, &data), (&slow_form, &slow));
        Ok((form, data))
    }

    /// A payload as the handlers read it, its errors sorted as they are.
    fn decoded(form: &LegacyForm, data: &[u8], max: u64) -> Result<Vec<u8>, FramingError> {
        let mut out = Vec::new();
        payload(form, data, max)
            .read_to_end(&mut out)
            .map_err(FramingError::from_body_error)?;
        Ok(out)
    }

    /// A reader that hands out one byte per call, like a slow socket.
    struct OneByte<'a>(&'a [u8]);
    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn boundary_from_content_type() {
        for (header, expected) in [
            ("multipart/form-data; boundary=Anki-sync-boundary", B),
            ("Multipart/Form-Data;boundary=Anki-sync-boundary", B),
            ("multipart/form-data; boundary=\"Anki-sync-boundary\"", B),
            (
                "multipart/form-data; charset=utf-8; BOUNDARY=\"a;b c\"; x=y",
                "a;b c",
            ),
            ("multipart/form-data; boundary=abc;", "abc"),
            (&format!("multipart/form-data; boundary={RB}"), RB),
        ] {
            assert_eq!(boundary(header).unwrap(), expected, "{header}");
        }
        let long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        for bad in [
            "",
            "application/x-www-form-urlencoded",
            "multipart/mixed; boundary=abc",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=\"abc\"def",
            "multipart/form-data; boundary=caf\u{e9}",
            &long,
        ] {
            assert!(
                matches!(boundary(bad), Err(MultipartError::NoBoundary(_))),
                "{bad}"
            );
        }
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(70)))
                .unwrap()
                .len(),
            70
        );
    }

    #[test]
    fn python_client_shape_with_gzip_data_last() {
        let json = br#"{"v":10,"cv":"ankidesktop,2.1.26,lin:ubuntu:20.04"}"#;
        let body = python_form(&[("k", "HK"), ("s", "sess"), ("c", "1")], Some(&gzip(json)));
        let (form, data) = read(&body, B).unwrap();
        assert_eq!(form.hkey(), Some("HK"));
        assert_eq!(form.s.as_deref(), Some("sess"));
        assert!(form.gzipped());
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), json);
    }

    #[test]
    fn rust_legacy_client_shape_with_data_first() {
        let json = br#"{"v":10,"cv":"anki,2.1.50 (abc),lin"}"#;
        let body = rust_form(&gzip(json), &[("c", "1"), ("k", "HK"), ("s", "sess")]);
        let (form, data) = read(&body, RB).unwrap();
        assert_eq!(
            (form.k.as_deref(), form.s.as_deref(), form.c.as_deref()),
            (Some("HK"), Some("sess"), Some("1"))
        );
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), json);
    }

    #[test]
    fn a_missing_or_empty_data_part_is_an_empty_object() {
        // The Python client's download: `k`, `v`, `c=1` and no data part.
        let body = python_form(
            &[("k", "HK"), ("v", "ankidesktop,2.1.26"), ("c", "1")],
            None,
        );
        let (form, data) = read(&body, B).unwrap();
        assert_eq!(form.v.as_deref(), Some("ankidesktop,2.1.26"));
        assert_eq!(form.data_len, 0);
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), b"{}");
        let body = python_form(&[("c", "1")], Some(b""));
        let (form, data) = read(&body, B).unwrap();
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), b"{}");
    }

    #[test]
    fn sk_stands_for_k_and_unknown_fields_are_ignored() {
        let body = python_form(
            &[
                ("sk", "HK"),
                ("extra", "x".repeat(5000).as_str()),
                ("data2", "y"),
            ],
            Some(br#"{"lastUsn":0}"#),
        );
        let (form, data) = read(&body, B).unwrap();
        assert_eq!(form.k, None);
        assert_eq!(form.hkey(), Some("HK"));
        assert!(!form.gzipped());
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), br#"{"lastUsn":0}"#);
    }

    #[test]
    fn c_zero_or_absent_means_raw_and_anything_else_gzip() {
        let zip = b"PK\x03\x04 raw zip bytes";
        let body = python_form(&[("sk", "HK"), ("c", "0")], Some(zip));
        let (form, data) = read(&body, B).unwrap();
        assert!(!form.gzipped());
        assert_eq!(decoded(&form, &data, 1 << 20).unwrap(), zip);
        for c in ["1", "2", "yes", ""] {
            let form = LegacyForm {
                c: Some(c.into()),
                ..LegacyForm::default()
            };
            assert!(form.gzipped(), "{c:?}");
        }
    }

    #[test]
    fn binary_data_with_crlf_dashes_and_partial_boundaries() {
        let mut data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        for tricky in [
            &b"\r\n--Anki-sync-boundar"[..],
            b"\r\n--",
            b"--Anki-sync-boundary", // not preceded by CRLF: content
            b"\r\n-Anki-sync-boundary",
            b"\r\r\n\r\n--Anki-sync-",
            b"\n--Anki-sync-boundary",
        ] {
            data.extend_from_slice(tricky);
            data.extend((0..=255u8).take(100));
        }
        // Content ending in what could start a delimiter.
        data.extend_from_slice(b"\r\n--Anki");
        for body in [python_form(&[("c", "0")], Some(&data)), {
            let mut d = data.clone();
            d.push(b'\r');
            python_form(&[("c", "0")], Some(&d))
        }] {
            let (_, got) = read(&body, B).unwrap();
            assert!(got.starts_with(&data) && got.len() - data.len() <= 1);
        }
    }

    #[test]
    fn preamble_epilogue_padding_and_a_missing_final_crlf_are_fine() {
        let body = format!(
            "preamble\r\n--{B}  \t\r\ncontent-disposition: FORM-DATA; NAME=k\n\nHK\r\n--{B}--"
        );
        let (form, _) = read(body.as_bytes(), B).unwrap();
        assert_eq!(form.k.as_deref(), Some("HK"));
        let body = format!(
            "--{B}\r\nContent-Disposition: form-data; name=k\r\n\r\nHK\r\n--{B}--\r\nepilogue"
        );
        assert_eq!(read(body.as_bytes(), B).unwrap().0.k.as_deref(), Some("HK"));
    }

    #[test]
    fn a_repeated_text_field_keeps_its_last_value_but_data_may_not_repeat() {
        let body = python_form(&[("k", "first"), ("c", "1"), ("k", "last")], None);
        assert_eq!(read(&body, B).unwrap().0.k.as_deref(), Some("last"));
        let mut body = python_form(&[], Some(b"one"));
        body.truncate(body.len() - format!("--{B}--\r\n").len());
        body.extend_from_slice(&python_form(&[], Some(b"two")));
        assert!(matches!(read(&body, B), Err(MultipartError::RepeatedData)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let body = rust_form(&gzip(b"{}"), &[("c", "1"), ("k", "HK")]);
        // Cutting only the final CRLF still leaves a complete form.
        for cut in 0..body.len() - 2 {
            match read_form(&body[..cut], RB, &mut Vec::new(), ROOMY) {
                Err(MultipartError::Truncated | MultipartError::Malformed(_)) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(read_form(&body[..body.len() - 2], RB, &mut Vec::new(), ROOMY).is_ok());
    }

    #[test]
    fn bodies_that_are_not_forms() {
        for body in [
            &b""[..],
            b"c=1&k=HK",
            b"--other-boundary\r\nContent-Disposition: form-data; name=k\r\n\r\nx\r\n--other-boundary--\r\n",
        ] {
            assert!(
                matches!(read_form(body, B, &mut Vec::new(), ROOMY), Err(MultipartError::Malformed(_))),
                "{body:?}"
            );
        }
        let malformed = |body: String| {
            matches!(
                read_form(body.as_bytes(), B, &mut Vec::new(), ROOMY),
                Err(MultipartError::Malformed(_))
            )
        };
        // The boundary followed by text instead of CRLF.
        assert!(malformed(format!("--{B}x\r\n\r\n\r\n--{B}--")));
        assert!(malformed(format!(
            "--{B}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{B}--"
        )));
        assert!(malformed(format!(
            "--{B}\r\nContent-Disposition: attachment; name=k\r\n\r\nx\r\n--{B}--"
        )));
        assert!(malformed(format!(
            "--{B}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{B}--"
        )));
        assert!(malformed(format!(
            "--{B}\r\nno colon here\r\n\r\nx\r\n--{B}--"
        )));
        assert!(malformed(format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"k\r\n\r\nx\r\n--{B}--"
        )));
        let many_headers = "X-A: b\r\n".repeat(MAX_HEADERS_PER_PART + 1);
        assert!(malformed(format!(
            "--{B}\r\n{many_headers}Content-Disposition: form-data; name=k\r\n\r\nx\r\n--{B}--"
        )));
        let long = "x".repeat(MAX_HEADER_LINE);
        assert!(malformed(format!(
            "--{B}\r\nContent-Disposition: form-data; name=k; filename=\"{long}\"\r\n\r\nx\r\n--{B}--"
        )));
        // A field that is not UTF-8.
        let mut body =
            format!("--{B}\r\nContent-Disposition: form-data; name=k\r\n\r\n").into_bytes();
        body.extend_from_slice(b"\xff\xfe\r\n--Anki-sync-boundary--");
        assert!(matches!(
            read_form(&body[..], B, &mut Vec::new(), ROOMY),
            Err(MultipartError::Malformed(_))
        ));
        // An invalid boundary argument is refused up front.
        assert!(matches!(
            read_form(&b""[..], "", &mut Vec::new(), ROOMY),
            Err(MultipartError::NoBoundary(_))
        ));
        assert!(matches!(
            read_form(&b""[..], "a\rb", &mut Vec::new(), ROOMY),
            Err(MultipartError::NoBoundary(_))
        ));
    }

    #[test]
    fn counts_and_sizes_are_capped() {
        let fields: Vec<(&str, &str)> = vec![("x", "1"); MAX_PARTS];
        assert!(read(&python_form(&fields, None), B).is_ok());
        assert!(matches!(
            read_form(
                &python_form(&fields, Some(b"{}"))[..],
                B,
                &mut Vec::new(),
                ROOMY
            ),
            Err(MultipartError::TooManyParts)
        ));
        let at_cap = "k".repeat(MAX_FIELD_BYTES);
        assert!(read(&python_form(&[("k", &at_cap)], None), B).is_ok());
        let over = "k".repeat(MAX_FIELD_BYTES + 1);
        assert!(matches!(
            read_form(&python_form(&[("k", &over)], None)[..], B, &mut Vec::new(), ROOMY),
            Err(MultipartError::FieldTooLarge(name)) if name == "k"
        ));

        let body = python_form(&[("c", "0")], Some(&[7u8; 1000]));
        let limits = FormLimits {
            body: 1 << 20,
            data: 1000,
        };
        assert_eq!(read_with(&body, B, limits).unwrap().1.len(), 1000);
        let limits = FormLimits {
            body: 1 << 20,
            data: 999,
        };
        match read_form(&body[..], B, &mut Vec::new(), limits) {
            Err(MultipartError::TooLarge(l)) => assert_eq!(l.what, "multipart data part"),
            other => panic!("{other:?}"),
        }
        let limits = FormLimits {
            // Cut inside the data: the bytes after the closing `--` are never read.
            body: body.len() as u64 - 100,
            data: 1 << 20,
        };
        match read_form(&body[..], B, &mut Vec::new(), limits) {
            Err(MultipartError::TooLarge(l)) => assert_eq!(l.what, "request body"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_part_stops_at_the_body_budget_without_buffering() {
        // An endless data part, streamed to a sink that counts.
        let head = format!("--{B}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n");
        let endless = head.as_bytes().chain(io::repeat(b'\r'));
        let mut sink = Counter(0);
        let limits = FormLimits {
            body: 8 << 20,
            data: u64::MAX,
        };
        match read_form(endless, B, &mut sink, limits) {
            Err(MultipartError::TooLarge(l)) => assert_eq!(l.what, "request body"),
            other => panic!("{other:?}"),
        }
        // Everything but the last window went to the sink as it arrived.
        assert!(sink.0 > (8 << 20) - head.len() as u64 - 100);
    }

    struct Counter(u64);
    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_is_a_server_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let body = python_form(&[], Some(b"{}"));
        let err = read_form(&body[..], B, &mut Full, ROOMY).unwrap_err();
        assert!(matches!(err, MultipartError::Storage(_)), "{err:?}");
        let status = crate::http::error::HandlerError::from(err).status();
        assert_eq!(status, 500, "our disk, not the client");
    }

    #[test]
    fn bad_or_truncated_gzip_is_the_clients_fault() {
        let gzipped = LegacyForm {
            c: Some("1".into()),
            data_len: 1,
            ..LegacyForm::default()
        };
        for data in [
            &br#"{"u":"user","p":"pass"}"#[..],
            &gzip(b"{\"a\":1}")[..12],
        ] {
            match decoded(&gzipped, data, 1 << 20) {
                Err(e @ FramingError::BadBody(_)) => {
                    assert!(e.to_string().contains("bad gzip data"), "{e}");
                }
                other => panic!("{data:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_gzip_bomb_hits_the_decompressed_budget_early() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let mut source = CountingReader(&bomb[..], 0);
        let err = io::copy(&mut gzip_body(&mut source, 1 << 20), &mut io::sink()).unwrap_err();
        match FramingError::from_body_error(err) {
            FramingError::TooLarge(l) => assert_eq!(l.what, "decompressed payload"),
            other => panic!("{other:?}"),
        }
        // Decoding stopped within the decoder's first 32 KiB buffer of input,
        // not after inflating all 64 MiB.
        assert!(source.1 <= 32 * 1024, "{} of {}", source.1, bomb.len());
    }

    struct CountingReader<'a>(&'a [u8], u64);
    impl Read for CountingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
}
