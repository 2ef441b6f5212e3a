//! A loopback HTTP proxy between the real client and the server, for the
//! power-cut trials: it sees which answers are acknowledgements (`finish`,
//! a full `upload`, media `uploadChanges`), records those it delivered, and
//! can pull the power right before or right after delivering one. A client
//! has seen an acknowledgement exactly when this proxy delivered it.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use super::fs::Control;

/// Requests whose successful answer tells the client its changes are saved.
pub const ACK_PATHS: [&str; 3] = ["/sync/finish", "/sync/upload", "/msync/uploadChanges"];

/// What to do with the next acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckPlan {
    Pass,
    /// Power off when the server has answered, before the client sees it.
    CutBefore,
    /// Power off as soon as the client has the answer.
    CutAfter,
}

/// An acknowledgement (or refusal) delivered to the client.
#[derive(Debug, Clone)]
pub struct Ack {
    pub path: String,
    pub status: u16,
    /// The body as sent (v11: zstd-compressed), without chunk framing.
    pub body: Vec<u8>,
}

impl Ack {
    /// A 200 whose payload is `expected` (after zstd, as v11 sends it).
    pub fn says(&self, expected: &[u8]) -> bool {
        self.status == 200
            && zstd::decode_all(&self.body[..]).is_ok_and(|payload| payload == expected)
    }
}

struct Shared {
    /// The server's port and the simulator's control socket.
    target: Mutex<Option<(u16, PathBuf)>>,
    plan: Mutex<AckPlan>,
    acks: Mutex<Vec<Ack>>,
    tripped: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn trip(&self) {
        self.tripped.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Clones share one proxy (the watcher trips it from its thread).
#[derive(Clone)]
pub struct AckProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl AckProxy {
    pub fn start() -> AckProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            target: Mutex::new(None),
            plan: Mutex::new(AckPlan::Pass),
            acks: Mutex::new(Vec::new()),
            tripped: AtomicBool::new(true),
            conns: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let shared = Arc::clone(&accepting);
                thread::spawn(move || relay(client, shared));
            }
        });
        AckProxy { port, shared }
    }

    /// The endpoint clients are given.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Relays to a (re)started server; the power is on again.
    pub fn target(&self, server_port: u16, control: &Path) {
        *self.shared.target.lock().unwrap() = Some((server_port, control.to_path_buf()));
        self.shared.tripped.store(false, Ordering::SeqCst);
    }

    pub fn plan(&self, plan: AckPlan) {
        *self.shared.plan.lock().unwrap() = plan;
    }

    /// The acknowledgements delivered since the last call.
    pub fn take_acks(&self) -> Vec<Ack> {
        std::mem::take(&mut *self.shared.acks.lock().unwrap())
    }

    /// Power is off: nothing more goes through; every connection is closed.
    pub fn trip(&self) {
        self.shared.trip();
    }
}

fn relay(client: TcpStream, shared: Arc<Shared>) {
    let target = shared.target.lock().unwrap().clone();
    let Some((port, control)) = target.filter(|_| !shared.tripped.load(Ordering::SeqCst)) else {
        return;
    };
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut conns = shared.conns.lock().unwrap();
        for conn in [&client, &server] {
            if let Ok(c) = conn.try_clone() {
                conns.push(c);
            }
        }
    }
    let paths = Arc::new(Mutex::new(VecDeque::new()));
    let requests = Arc::clone(&paths);
    thread::spawn(move || {
        let _ = forward_requests(BufReader::new(client2), server2, &requests);
    });
    let _ = forward_answers(BufReader::new(server), client, &paths, &shared, &control);
}

/// One message head: the raw bytes and the parsed start line and headers.
struct Head {
    raw: Vec<u8>,
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Reads a message head; `None` at a clean end of the stream.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            break;
        }
        lines.push(text);
    }
    let start = lines.first().cloned().unwrap_or_default();
    let headers = lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        raw,
        start,
        headers,
    }))
}

/// How a body ends.
enum Body {
    Chunked,
    Length(u64),
    UntilClose,
}

/// Copies one body as it is framed to `out`, returning its content.
fn copy_body(reader: &mut impl BufRead, out: &mut dyn Write, body: Body) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    match body {
        Body::Length(n) => {
            reader.take(n).read_to_end(&mut content)?;
            out.write_all(&content)?;
        }
        Body::UntilClose => {
            reader.read_to_end(&mut content)?;
            out.write_all(&content)?;
        }
        Body::Chunked => loop {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line)?;
            out.write_all(&line)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut trailer = Vec::new();
                    reader.read_until(b'\n', &mut trailer)?;
                    out.write_all(&trailer)?;
                    if trailer.is_empty() || trailer == b"\r\n" || trailer == b"\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = Vec::new();
            reader.take(size + 2).read_to_end(&mut chunk)?;
            out.write_all(&chunk)?;
            content.extend_from_slice(&chunk[..chunk.len().min(size as usize)]);
        },
    }
    Ok(content)
}

fn forward_requests(
    mut client: BufReader<TcpStream>,
    mut server: TcpStream,
    paths: &Mutex<VecDeque<String>>,
) -> io::Result<()> {
    loop {
        let Some(head) = read_head(&mut client)? else {
            let _ = server.shutdown(Shutdown::Write);
            return Ok(());
        };
        let target = head.start.split(' ').nth(1).unwrap_or("");
        let path = target.split('?').next().unwrap_or("").to_string();
        // Queued before the server can see the request, so its answer
        // always finds it.
        paths.lock().unwrap().push_back(path);
        server.write_all(&head.raw)?;
        let body = if head.chunked() {
            Body::Chunked
        } else {
            Body::Length(head.length().unwrap_or(0))
        };
        copy_body(&mut client, &mut server, body)?;
    }
}

fn forward_answers(
    mut server: BufReader<TcpStream>,
    mut client: TcpStream,
    paths: &Mutex<VecDeque<String>>,
    shared: &Shared,
    control: &Path,
) -> io::Result<()> {
    loop {
        let Some(head) = read_head(&mut server)? else {
            let _ = client.shutdown(Shutdown::Write);
            return Ok(());
        };
        let status: u16 = head
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let path = paths.lock().unwrap().pop_front().unwrap_or_default();
        let body = if status < 200 || status == 204 || status == 304 {
            Body::Length(0)
        } else if head.chunked() {
            Body::Chunked
        } else if let Some(n) = head.length() {
            Body::Length(n)
        } else {
            Body::UntilClose
        };
        if !ACK_PATHS.contains(&path.as_str()) {
            if shared.tripped.load(Ordering::SeqCst) {
                return Ok(());
            }
            client.write_all(&head.raw)?;
            copy_body(&mut server, &mut client, body)?;
            continue;
        }
        // An acknowledgement is held whole, then delivered or not.
        let mut raw = head.raw.clone();
        let content = copy_body(&mut server, &mut raw, body)?;
        let plan = *shared.plan.lock().unwrap();
        if shared.tripped.load(Ordering::SeqCst) {
            return Ok(());
        }
        if plan == AckPlan::CutBefore && status == 200 {
            power_off(shared, control);
            return Ok(());
        }
        client.write_all(&raw)?;
        client.flush()?;
        shared.acks.lock().unwrap().push(Ack {
            path,
            status,
            body: content,
        });
        if plan == AckPlan::CutAfter && status == 200 {
            power_off(shared, control);
            return Ok(());
        }
    }
}

fn power_off(shared: &Shared, control: &Path) {
    let frozen = Control::connect(control).and_then(|mut c| c.send("freeze"));
    assert_eq!(
        frozen.ok().as_deref(),
        Some("ok"),
        "the proxy could not pull the power"
    );
    shared.trip();
}
