//! A tiny HTTP/1.1 client for raw-socket tests: chunked requests like Anki
//! sends them, responses parsed by hand so tests can assert on exact bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Server;

pub const HKEY: &str = "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d"; // sha1("user:pass")

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The payload of a successful v11 answer.
    pub fn payload(&self) -> Vec<u8> {
        assert_eq!(
            self.status,
            200,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let out = zstd::decode_all(&self.body[..]).expect("zstd response");
        let size: usize = self.header("anki-original-size").unwrap().parse().unwrap();
        assert_eq!(out.len(), size, "anki-original-size must be exact");
        out
    }
}

/// One connection that can carry several requests (keep-alive).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(server: &Server) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// Sends a request with a chunked body, as Anki clients do.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(64 * 1024) {
            // A server may answer and stop reading early; ignore write errors.
            let _ = write!(stream, "{:x}\r\n", chunk.len());
            let _ = stream.write_all(chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> Reply {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if find("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = find("Content-Length") {
            body.resize(len.parse().unwrap(), 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        Reply {
            status,
            headers,
            body,
        }
    }
}

pub fn sync_header(hkey: &str) -> String {
    format!(r#"{{"v":11,"k":"{hkey}","c":"test,1,linux","s":"abc"}}"#)
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A v11 request with a JSON (or other) payload.
pub fn call(conn: &mut Conn, method: &str, hkey: &str, payload: &[u8]) -> Reply {
    let header = sync_header(hkey);
    conn.send(
        "POST",
        &format!("/sync/{method}"),
        &[("anki-sync", &header)],
        &zstd(payload),
    )
}
