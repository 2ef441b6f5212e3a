//! One client connection: reads its requests' heads one after the other and
//! hands each out as a `Request`, whose body and response are read and
//! written in order by the `Sequential*` adapters.
//!
//! anki-sync-lite: a request that cannot be read unambiguously is answered
//! with its status (`400`, `408`, `417`, `431`, `505`) and `Connection:
//! close`, its cause is logged, and the connection is closed after a short
//! lingering read (see [`ClientConnection::linger`]).

use ascii::AsciiString;

use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{HTTPVersion, Header, Method};
use crate::limits::{Pending, Slot};
use crate::request::RequestCreationError;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{close_header, Request, Response, StatusCode};

/// How long, and for how many bytes at most, a connection being closed after
/// an answer is still read (and the bytes discarded).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // anki-sync-lite patches 1-3: timeouts, the connection cap, header limits
    slot: Arc<Slot>,

    // true until the first request has been read
    first: bool,
}

/// Why no request could be read.
#[derive(Debug)]
enum ReadError {
    /// The request is refused with this status, for this reason (completing
    /// "the request had ..."); the connection is then closed.
    Refused(u16, &'static str),
    /// A read timed out (header deadline, minimum rate or read timeout): `408`.
    TimedOut(String),
    /// The connection closed, failed, or stayed idle: closed without an answer.
    Gone,
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        match e.kind() {
            ErrorKind::TimedOut => ReadError::TimedOut(e.to_string()),
            _ => ReadError::Gone,
        }
    }
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let slot = read_socket.slot().clone();

        // 16 KiB, not 1 KiB: Anki sends a streamed body in chunks of about
        // 4 KiB, and with a 1 KiB buffer each chunk took two reads from the
        // socket (its size line and first bytes, then the rest); now one
        // read takes several chunks. The buffer lives as long as the
        // connection, which the connection caps bound.
        let mut source =
            SequentialReaderBuilder::new(BufReader::with_capacity(16 * 1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            slot,
            first: true,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the rest of a line of the request head, up to its CRLF, and
    /// appends it to `line`. A bare CR or LF, or a byte outside ASCII, is
    /// refused. Every byte is counted against `budget` (anki-sync-lite
    /// patch 3: the request line and all headers share it); the line is
    /// scanned in the reader's buffer (patch 12).
    fn read_line(&mut self, line: &mut Vec<u8>, budget: &mut usize) -> Result<(), ReadError> {
        let mut after_cr = false;
        loop {
            let buf = self.next_header_source.fill_buf()?;
            if buf.is_empty() {
                return Err(ReadError::Gone);
            }
            let mut used = 0;
            let mut end = None;
            for &byte in buf {
                if *budget == 0 {
                    end = Some(Err(ReadError::Refused(431, "a head over the size limit")));
                    break;
                }
                *budget -= 1;
                used += 1;
                if after_cr {
                    end = Some(match byte {
                        b'\n' => Ok(()),
                        _ => Err(ReadError::Refused(400, "a CR not followed by LF")),
                    });
                    break;
                }
                match byte {
                    b'\r' => after_cr = true,
                    b'\n' => {
                        end = Some(Err(ReadError::Refused(400, "a line ending in a bare LF")));
                        break;
                    }
                    byte if !byte.is_ascii() => {
                        end = Some(Err(ReadError::Refused(
                            400,
                            "a byte outside ASCII in its head",
                        )));
                        break;
                    }
                    byte => line.push(byte),
                }
            }
            self.next_header_source.consume(used);
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // anki-sync-lite patch 1: wait for the previous body to be read, then
        // for the first byte of this request as an idle connection.
        self.next_header_source.wait_turn();
        if self.slot.is_broken() {
            // the previous request was cut off or its body left unread: the
            // stream is mid-request
            return Err(ReadError::Gone);
        }
        self.slot
            .await_request(std::mem::replace(&mut self.first, false));
        let mut first_byte = [0u8];
        if !matches!(self.next_header_source.read(&mut first_byte), Ok(1)) {
            // closed, timed out or evicted before sending anything: no answer
            return Err(ReadError::Gone);
        }
        self.slot.request_started();
        let mut budget = self.slot.limits().max_header_bytes - 1;

        let mut line = vec![first_byte[0]];
        if !first_byte[0].is_ascii() {
            return Err(ReadError::Refused(400, "a byte outside ASCII in its head"));
        }
        self.read_line(&mut line, &mut budget)?;
        let (method, path, version) = parse_request_line(&line)?;

        let mut headers = Vec::new();
        loop {
            line.clear();
            self.read_line(&mut line, &mut budget)?;
            if line.is_empty() {
                break;
            }
            if headers.len() == self.slot.limits().max_headers {
                return Err(ReadError::Refused(431, "too many header lines"));
            }
            headers.push(parse_header_line(&line)?);
        }
        self.slot.headers_done();

        // building the writer for the request; it keeps the connection busy
        // (not idle) until the response is written
        let writer = Pending::new(self.sink.next().unwrap(), self.slot.clone());

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        crate::request::new_request(
            self.secure,
            method,
            path,
            version,
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.slot.clone()),
        )
        .map_err(|e| match e {
            RequestCreationError::CreationIoError(e) => e.into(),
            RequestCreationError::ExpectationFailed => {
                ReadError::Refused(417, "an Expect other than 100-continue")
            }
            RequestCreationError::BadFraming(why) => ReadError::Refused(400, why),
        })
    }

    /// Answers `status` with `Connection: close`; the connection is then
    /// closed.
    fn answer_and_close(&mut self, status: u16) {
        self.slot.mark_broken();
        let mut writer = self.sink.next().unwrap();
        let response = Response::empty(StatusCode(status)).with_header(close_header());
        response
            .raw_print(&mut writer, HTTPVersion(1, 1), &[], false)
            .ok();
        writer.flush().ok();
    }

    /// Before a connection is closed with its client perhaps still sending:
    /// waits for the answers to be written, half-closes, then reads and
    /// discards for a moment. Closing a socket with unread bytes makes the
    /// kernel reset the connection, which can destroy the answer before the
    /// client reads it.
    fn linger(&mut self) {
        // an empty writer's flush waits until every earlier answer is out
        self.sink.next().unwrap().flush().ok();
        self.slot.shutdown_write();
        self.slot.linger_for(LINGER);
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match self.next_header_source.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }

    fn peer(&self) -> String {
        match self.remote_addr {
            Ok(Some(addr)) => addr.ip().to_string(),
            _ => "a local client".to_string(),
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        let rq = match self.read() {
            Ok(rq) => rq,
            Err(ReadError::Refused(status, why)) => {
                log::warn!(
                    "{}: answered {} {} and closed the connection: the request had {}",
                    self.peer(),
                    status,
                    StatusCode(status).default_reason_phrase(),
                    why
                );
                self.answer_and_close(status);
                self.linger();
                return None;
            }
            Err(ReadError::TimedOut(why)) => {
                log::info!(
                    "{}: answered 408 and closed the connection: {}",
                    self.peer(),
                    why
                );
                self.answer_and_close(408);
                return None;
            }
            Err(ReadError::Gone) => {
                if self.slot.is_broken() {
                    self.linger();
                }
                return None;
            }
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        Some(rq)
    }
}

/// Parses a "HTTP/1.1" string: only 1.0 and 1.1 are served.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    match version {
        "HTTP/1.0" => Ok(HTTPVersion(1, 0)),
        "HTTP/1.1" => Ok(HTTPVersion(1, 1)),
        _ if version.starts_with("HTTP/") => Err(ReadError::Refused(
            505,
            "an HTTP version other than 1.0 and 1.1",
        )),
        _ => Err(ReadError::Refused(400, "a malformed request line")),
    }
}

/// Parses the request line of the request, e.g. `GET / HTTP/1.1`: exactly
/// three parts separated by single spaces.
fn parse_request_line(line: &[u8]) -> Result<(Method, String, HTTPVersion), ReadError> {
    let malformed = ReadError::Refused(400, "a malformed request line");
    let line = std::str::from_utf8(line)
        .map_err(|_| ReadError::Refused(400, "a malformed request line"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(malformed);
    };
    let method: Method = method
        .parse()
        .map_err(|_| ReadError::Refused(400, "a malformed request line"))?;
    let version = parse_http_version(version)?;
    let path = origin_form(target).ok_or(malformed)?;
    Ok((method, path, version))
}

/// The path and query of a request target: the origin form (`/sync/meta`)
/// as it is, the absolute form (`http://host/sync/meta`, which a server must
/// accept, RFC 9112 §3.2.2) without its scheme and authority, and `*`.
fn origin_form(target: &str) -> Option<String> {
    if target.starts_with('/') || target == "*" {
        return Some(target.to_string());
    }
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => Some(format!("/{}", &rest[i..])),
        Some(i) => Some(rest[i..].to_string()),
        None => Some("/".to_string()),
    }
    .filter(|_| !rest.starts_with(['/', '?']))
}

/// Parses a header line (`Name: value`). A line starting with whitespace
/// (the obsolete line folding, which a proxy may join to the line before
/// while we would read a header of its own) and an empty name are refused.
fn parse_header_line(line: &[u8]) -> Result<Header, ReadError> {
    let malformed = || ReadError::Refused(400, "a malformed header line");
    if line.starts_with(b" ") || line.starts_with(b"\t") || line.starts_with(b":") {
        return Err(malformed());
    }
    let line = AsciiString::from_ascii(line).map_err(|_| malformed())?;
    line.as_str().parse().map_err(|_| malformed())
}

#[cfg(test)]
mod test {
    use super::{origin_form, parse_header_line, parse_request_line, ClientConnection, ReadError};
    use crate::common::{HTTPVersion, Method};
    use crate::connection::Connection;
    use crate::limits::{Limits, Registry};
    use crate::util::RefinedTcpStream;
    use crate::Response;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// Sends `input` on a connection (then half-closes it) and returns all
    /// the server wrote before closing. The handler answers `METHOD URL
    /// [BODY]`, with 400 if the body could not be read; for URLs starting
    /// with `/unread` it answers without reading the body.
    fn exchange(input: &[u8]) -> String {
        exchange_in_pieces(&[input])
    }

    /// `exchange`, with the input written in pieces a moment apart, so that
    /// the server reads each on its own.
    fn exchange_in_pieces(pieces: &[&[u8]]) -> String {
        let (server, mut client) = UnixStream::pair().unwrap();
        let server = Connection::from(server);
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let slot = Registry::new(limits).admit(&server).unwrap().unwrap();
        let (read, write) = RefinedTcpStream::new(server, slot);
        let connection = ClientConnection::new(write, read);
        let handler = std::thread::spawn(move || {
            for mut rq in connection {
                let mut body = String::new();
                let status = match rq.url().starts_with("/unread") {
                    true => 200,
                    false => match rq.as_reader().take(1 << 16).read_to_string(&mut body) {
                        Ok(_) => 200,
                        Err(_) => 400,
                    },
                };
                let text = format!("{} {} [{}]", rq.method(), rq.url(), body);
                rq.respond(Response::from_string(text).with_status_code(status))
                    .unwrap();
            }
        });
        for piece in pieces {
            client.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        client.shutdown(Shutdown::Write).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut output = Vec::new();
        client.read_to_end(&mut output).unwrap();
        handler.join().unwrap();
        String::from_utf8(output).unwrap()
    }

    /// The status lines and the bodies (`[...]`) of what the server wrote.
    fn answers(output: &str) -> Vec<String> {
        output
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|answer| {
                let status = &answer[..3];
                let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
                format!("{} {}", status, body).trim_end().to_string()
            })
            .collect()
    }

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n";

    fn with_next(request: &[u8]) -> Vec<u8> {
        [request, NEXT].concat()
    }

    #[test]
    fn a_request_pipelined_after_a_chunked_body_is_answered() {
        let chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let output = exchange(&with_next(chunked));
        assert_eq!(
            answers(&output),
            ["200 POST /a [abcde]", "200 GET /next []"],
            "{}",
            output
        );
        assert!(!output.contains("Connection: close"), "{}", output);
    }

    #[test]
    fn ambiguous_framing_is_refused_and_closes_the_connection() {
        for (request, why) in [
            (
                &b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
                "duplicate Content-Length",
            ),
            (b"POST /a HTTP/1.1\r\nContent-Length: 3x\r\n\r\nabc", "invalid Content-Length"),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n0\r\n\r\n",
                "Content-Length and Transfer-Encoding",
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc", "gzip"),
            (b"GET /a HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n", "non-ASCII header"),
            (b"GET /a HTTP/1.1\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n", "folded line"),
            (b"GET /a HTTP/1.1\nHost: t\n\n", "bare LF"),
        ] {
            let output = exchange(&with_next(request));
            assert_eq!(answers(&output), ["400"], "{}: {}", why, output);
            assert!(output.contains("Connection: close\r\n"), "{}: {}", why, output);
        }
    }

    #[test]
    fn a_malformed_chunk_fails_the_body_and_closes_the_connection() {
        let request =
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
        let output = exchange(&with_next(request));
        assert_eq!(answers(&output), ["400 POST /a []"], "{}", output);
        assert!(output.contains("Connection: close\r\n"), "{}", output);
    }

    #[test]
    fn an_answer_before_the_body_is_read_closes_the_connection() {
        let sized = b"POST /unread HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        let mut request = sized.to_vec();
        request.resize(sized.len() + 5000, b'x');
        let output = exchange(&with_next(&request));
        assert_eq!(answers(&output), ["200 POST /unread []"], "{}", output);
        assert!(output.contains("Connection: close\r\n"), "{}", output);

        let chunked =
            b"POST /unread HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let output = exchange(&with_next(chunked));
        assert_eq!(answers(&output), ["200 POST /unread []"], "{}", output);

        // A small body is read with the head: nothing is left unread.
        let small = b"POST /unread HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let output = exchange(&with_next(small));
        assert_eq!(
            answers(&output),
            ["200 POST /unread []", "200 GET /next []"],
            "{}",
            output
        );
    }

    #[test]
    fn an_absolute_form_request_is_served() {
        let output = exchange(
            b"POST http://example.org:8080/sync/meta?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert_eq!(
            answers(&output),
            ["200 POST /sync/meta?x=1 [{}]"],
            "{}",
            output
        );
    }

    #[test]
    fn answers_do_not_name_the_server_software() {
        let output = exchange(NEXT);
        assert_eq!(answers(&output), ["200 GET /next []"]);
        assert!(
            !output.to_ascii_lowercase().contains("\r\nserver:"),
            "{}",
            output
        );
    }

    #[test]
    fn over_large_heads_and_unknown_versions_are_refused() {
        let mut big = b"GET /a HTTP/1.1\r\nX: ".to_vec();
        big.resize(20_000, b'y');
        big.extend_from_slice(b"\r\n\r\n");
        let output = exchange(&big);
        assert_eq!(answers(&output), ["431"], "{}", output);
        let output = exchange(&with_next(b"GET /a HTTP/1.2\r\n\r\n"));
        assert_eq!(answers(&output), ["505"], "{}", output);
        let output = exchange(&with_next(b"GET /a HTTP/1.1\r\nExpect: magic\r\n\r\n"));
        assert_eq!(answers(&output), ["417"], "{}", output);
    }

    #[test]
    fn a_head_read_in_pieces_is_the_head_read_at_once() {
        // Cut inside the request line, inside a header, and between CR and LF.
        let head = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        for cuts in [[3, 20, 25], [17, 18, 40], [39, 40, 41]] {
            let pieces = [
                &head[..cuts[0]],
                &head[cuts[0]..cuts[1]],
                &head[cuts[1]..cuts[2]],
                &head[cuts[2]..],
                NEXT,
            ];
            let output = exchange_in_pieces(&pieces);
            assert_eq!(
                answers(&output),
                ["200 POST /a [hi]", "200 GET /next []"],
                "{cuts:?}: {output}"
            );
        }
        // A CR that ends one read and is followed by something else than LF.
        let output = exchange_in_pieces(&[b"GET /a HTTP/1.1\r", b"X: y\r\n\r\n"]);
        assert_eq!(answers(&output), ["400"], "{}", output);
        let output = exchange(&with_next(b"GET /a HTTP/1.1\nX: y\r\n\r\n"));
        assert_eq!(answers(&output), ["400"], "{}", output);
    }

    fn refusal(result: Result<impl std::fmt::Debug, ReadError>) -> (u16, &'static str) {
        match result {
            Err(ReadError::Refused(status, why)) => (status, why),
            other => panic!("not refused: {:?}", other),
        }
    }

    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = parse_request_line(b"GET /hello HTTP/1.1").unwrap();

        assert!(method == Method::Get);
        assert!(path == "/hello");
        assert!(ver == HTTPVersion(1, 1));

        for bad in [
            &b"GET /hello"[..],
            b"qsd qsd qsd",
            b"GET  /hello HTTP/1.1",
            b"GET /hello HTTP/1.1 ",
            b"GET /a b HTTP/1.1",
            b"GET hello HTTP/1.1",
            b"GET ftp://host/x HTTP/1.1",
        ] {
            assert_eq!(
                refusal(parse_request_line(bad)),
                (400, "a malformed request line")
            );
        }
        assert_eq!(refusal(parse_request_line(b"GET / HTTP/2.0")).0, 505);
    }

    #[test]
    fn an_absolute_form_target_is_served_by_its_path() {
        let (method, path, _) =
            parse_request_line(b"POST http://host:8080/sync/meta HTTP/1.1").unwrap();
        assert_eq!((method, path.as_str()), (Method::Post, "/sync/meta"));
        for (target, path) in [
            ("HTTPS://example.org/a/b?c=d", Some("/a/b?c=d")),
            ("http://host", Some("/")),
            ("http://host?x=1", Some("/?x=1")),
            ("http:///x", None),
            ("*", Some("*")),
            ("/plain", Some("/plain")),
        ] {
            assert_eq!(origin_form(target).as_deref(), path, "{}", target);
        }
    }

    #[test]
    fn folded_and_nameless_header_lines_are_refused() {
        let header = parse_header_line(b"Content-Length: 5").unwrap();
        assert!(header.field.equiv("content-length"));
        assert_eq!(header.value.as_str(), "5");
        for bad in [
            &b" Transfer-Encoding: chunked"[..],
            b"\tX: y",
            b": value",
            b"Transfer-Encoding : chunked",
            b"no colon",
        ] {
            assert_eq!(
                refusal(parse_header_line(bad)),
                (400, "a malformed header line")
            );
        }
    }
}
