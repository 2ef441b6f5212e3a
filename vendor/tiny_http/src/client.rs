use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
use crate::limits::{Pending, Slot};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

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

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// anki-sync-lite patch 3: the request line and headers are too big
    HeadersTooLarge,
    /// anki-sync-lite patch 1: the connection closed or timed out before
    /// sending any byte of a new request; closed without an answer
    Idle,
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

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
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

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// anki-sync-lite patch 3: at most `*budget` bytes are read (the budget
    /// is shared by the request line and all headers).
    fn read_next_line(&mut self, budget: &mut usize) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            if *budget == 0 {
                return Err(ReadError::HeadersTooLarge);
            }
            *budget -= 1;

            // (one byte at a time: the source is buffered)
            let mut byte = [0u8];
            let byte = match self.next_header_source.read(&mut byte) {
                Ok(1) => byte[0],
                Ok(_) => {
                    let eof = IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF");
                    return Err(ReadError::ReadIoError(eof));
                }
                Err(e) => return Err(ReadError::ReadIoError(e)),
            };

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    let e = IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII");
                    ReadError::ReadIoError(e)
                });
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // anki-sync-lite patch 1: wait for the previous body to be read, then
        // for the first byte of this request as an idle connection.
        self.next_header_source.wait_turn();
        if self.slot.is_broken() {
            // the previous body timed out: the stream is mid-request
            return Err(ReadError::Idle);
        }
        self.slot
            .await_request(std::mem::replace(&mut self.first, false));
        let mut first_byte = [0u8];
        if !matches!(self.next_header_source.read(&mut first_byte), Ok(1)) {
            // closed, timed out or evicted before sending anything: no answer
            return Err(ReadError::Idle);
        }
        self.slot.request_started();
        let mut budget = self.slot_limits().max_header_bytes - 1;

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let rest = self.read_next_line(&mut budget)?;
                let mut line = AsciiString::with_capacity(rest.len() + 1);
                line.push(ascii::AsciiChar::from_ascii(first_byte[0]).map_err(|_| {
                    let e = IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII");
                    ReadError::ReadIoError(e)
                })?);
                line.push_str(&rest);

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line(&mut budget)?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() == self.slot_limits().max_headers {
                        return Err(ReadError::HeadersTooLarge);
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };
        self.slot.headers_done();

        // building the writer for the request; it keeps the connection busy
        // (not idle) until the response is written
        let writer = Pending::new(self.sink.next().unwrap(), self.slot.clone());

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }

    fn slot_limits(&self) -> &crate::limits::Limits {
        self.slot.limits()
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408)).with_header(close_header());
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::HeadersTooLarge) => {
                    let mut writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(431)).with_header(close_header());
                    response
                        .raw_print(&mut writer, HTTPVersion(1, 1), &[], false)
                        .ok();
                    writer.flush().ok();
                    // Closing with unread bytes makes the kernel send a reset,
                    // which can destroy the answer: discard a little first
                    // (bounded by the header deadline).
                    let mut sink = [0u8; 4096];
                    for _ in 0..16 {
                        match self.next_header_source.read(&mut sink) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    return None; // the rest of the headers is still unread
                }

                Err(ReadError::ReadIoError(_)) | Err(ReadError::Idle) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false)
                    .ok();
                continue;
            }

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

            // returning the request
            return Some(rq);
        }
    }
}

/// `Connection: close`, for answers after which the connection is closed
/// (anki-sync-lite patch 7).
fn close_header() -> crate::Header {
    crate::Header::from_bytes(&b"Connection"[..], &b"close"[..]).unwrap()
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
