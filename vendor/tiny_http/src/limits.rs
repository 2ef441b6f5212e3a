//! Limits against slow and hostile clients (anki-sync-lite patches 1–3; see
//! PATCHES.md). Upstream tiny_http reads sockets without timeouts, accepts any
//! number of connections (one thread each) and any header size.
//!
//! Every accepted connection gets a [`Slot`] in the server's [`Registry`].
//! The slot keeps a clone of the socket, so that it can change the socket's
//! read timeout as the request goes on and so that the accept thread can close
//! an idle connection to make room for a new one. All reads from the client go
//! through [`Slot::read`], which enforces:
//! - the header deadline: a request's line and headers must arrive within
//!   `header_timeout` of its first byte (of the accept, for the first request);
//! - the read timeout: no read waits longer than `read_timeout`;
//! - the minimum rate: while a request is being read, the client must deliver
//!   `min_rate` bytes per second of time spent waiting for it, checked over
//!   windows of `rate_window`. Only time blocked in `read` counts, so a slow
//!   handler never makes a fast client look slow.

use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// What a client may cost the server. [`Limits::default`] keeps upstream's
/// behaviour apart from the header limits and generous timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest a single read from a client may wait; also how long an idle
    /// keep-alive connection is kept.
    pub read_timeout: Duration,
    /// A request's line and headers must all arrive within this time of its
    /// first byte; a new connection must send its first request within this
    /// time of being accepted.
    pub header_timeout: Duration,
    /// Minimum bytes per second while a request is being read (0: no minimum).
    pub min_rate: u64,
    /// The window over which `min_rate` is checked.
    pub rate_window: Duration,
    /// Longest a single write to a client may wait (`None`: forever), so a
    /// client that stops reading its response cannot hold the writer.
    pub write_timeout: Option<Duration>,
    /// Sets `TCP_NODELAY` on every connection: a response's head and body
    /// are written separately, and with Nagle's algorithm and the client's
    /// delayed ACKs every small answer would wait ~40 ms.
    pub nodelay: bool,
    /// Open connections at most. Beyond it, an idle connection is closed to
    /// make room, or else the new one gets a `503` and is closed.
    pub max_connections: usize,
    /// Request line plus headers, in bytes, at most (else `431`).
    pub max_header_bytes: usize,
    /// Header lines at most (else `431`).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(30),
            min_rate: 0,
            rate_window: Duration::from_secs(30),
            write_timeout: None,
            nodelay: false,
            max_connections: usize::MAX,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

pub(crate) fn timed_out(why: &str) -> IoError {
    IoError::new(ErrorKind::TimedOut, why.to_string())
}

/// The open connections, for the connection cap.
pub(crate) struct Registry {
    limits: Limits,
    open: Mutex<Vec<Weak<Slot>>>,
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            open: Mutex::new(Vec::new()),
        }
    }

    /// A slot for a new connection, with the limits' socket options set on
    /// it; or `None` if the cap is reached and no connection is idle
    /// (waiting for a request, with no response pending).
    pub(crate) fn admit(&self, socket: &Connection) -> IoResult<Option<Arc<Slot>>> {
        let mut open = self.open.lock().unwrap();
        open.retain(|slot| slot.strong_count() > 0);
        if open.len() >= self.limits.max_connections {
            let idle = open
                .iter()
                .position(|slot| slot.upgrade().is_some_and(|slot| slot.is_idle()));
            match idle {
                Some(i) => {
                    if let Some(slot) = open.swap_remove(i).upgrade() {
                        log::debug!("connection cap reached: closing an idle connection");
                        slot.socket.shutdown(Shutdown::Both).ok();
                    }
                }
                None => return Ok(None),
            }
        }
        socket.set_write_timeout(self.limits.write_timeout)?;
        socket.set_nodelay(self.limits.nodelay)?;
        let slot = Arc::new(Slot {
            socket: socket.try_clone()?,
            limits: self.limits.clone(),
            idle: AtomicBool::new(true),
            pending: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            state: Mutex::new(ReadState {
                deadline: None,
                counting: false,
                waited: Duration::ZERO,
                bytes: 0,
                applied: None,
            }),
        });
        open.push(Arc::downgrade(&slot));
        Ok(Some(slot))
    }
}

/// One open connection, shared by its reader, its writers and the registry.
pub(crate) struct Slot {
    /// A clone of the socket: timeouts and eviction, never reads or writes.
    socket: Connection,
    limits: Limits,
    /// Waiting for the first byte of a request.
    idle: AtomicBool,
    /// Responses not yet completely written.
    pending: AtomicUsize,
    /// The connection takes no more requests: a read timed out or was too
    /// slow, the request was malformed, or its body was left unread.
    broken: AtomicBool,
    state: Mutex<ReadState>,
}

struct ReadState {
    deadline: Option<Instant>,
    counting: bool,
    waited: Duration,
    bytes: u64,
    /// The read timeout currently set on the socket.
    applied: Option<Duration>,
}

impl Slot {
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// The connection must take no further request (e.g. its request was
    /// malformed, so where the next one starts is unknown).
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    /// Half-closes the connection: the client reads what was written so far,
    /// then the end of the stream.
    pub(crate) fn shutdown_write(&self) {
        self.socket.shutdown(Shutdown::Write).ok();
    }

    /// From now on reads wait at most `time` in all, and no minimum rate
    /// applies: for a last look at a connection being closed.
    pub(crate) fn linger_for(&self, time: Duration) {
        let mut state = self.state.lock().unwrap();
        state.deadline = Some(Instant::now() + time);
        state.counting = false;
    }

    fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst) && self.pending.load(Ordering::SeqCst) == 0
    }

    /// Before waiting for a request: the first must arrive within the header
    /// deadline of the accept; later ones (keep-alive) within the read timeout.
    pub(crate) fn await_request(&self, first: bool) {
        let mut state = self.state.lock().unwrap();
        state.deadline = first.then(|| Instant::now() + self.limits.header_timeout);
        state.counting = false;
        self.idle.store(true, Ordering::SeqCst);
    }

    /// The first byte of a request has arrived.
    pub(crate) fn request_started(&self) {
        let mut state = self.state.lock().unwrap();
        self.idle.store(false, Ordering::SeqCst);
        if state.deadline.is_none() {
            state.deadline = Some(Instant::now() + self.limits.header_timeout);
        }
        state.counting = self.limits.min_rate > 0;
        state.waited = Duration::ZERO;
        state.bytes = 0;
    }

    /// All headers have arrived: from now on only the read timeout and the
    /// minimum rate apply (the body).
    pub(crate) fn headers_done(&self) {
        self.state.lock().unwrap().deadline = None;
    }

    /// Reads from the client through `inner`, enforcing the limits.
    pub(crate) fn read(&self, inner: &mut dyn Read, buf: &mut [u8]) -> IoResult<usize> {
        let result = self.limited_read(inner, buf);
        if matches!(&result, Err(e) if e.kind() == ErrorKind::TimedOut) {
            // whatever was being read is incomplete: the connection is done
            self.mark_broken();
        }
        result
    }

    fn limited_read(&self, inner: &mut dyn Read, buf: &mut [u8]) -> IoResult<usize> {
        {
            let mut state = self.state.lock().unwrap();
            let wanted = match state.deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(timed_out("request headers took too long"));
                    }
                    left.min(self.limits.read_timeout)
                }
                None => self.limits.read_timeout,
            };
            if state.applied != Some(wanted) {
                self.socket.set_read_timeout(Some(wanted))?;
                state.applied = Some(wanted);
            }
        }
        let started = Instant::now();
        let result = inner.read(buf).map_err(|e| match e.kind() {
            // What Unix reports for a read timeout.
            ErrorKind::WouldBlock => timed_out("no data from the client within the read timeout"),
            _ => e,
        });
        let mut state = self.state.lock().unwrap();
        if state.counting {
            state.waited += started.elapsed();
            state.bytes += *result.as_ref().unwrap_or(&0) as u64;
            if state.waited >= self.limits.rate_window {
                let wanted = self.limits.min_rate as f64 * state.waited.as_secs_f64();
                if (state.bytes as f64) < wanted {
                    return Err(timed_out("the client sends slower than the minimum rate"));
                }
                state.waited = Duration::ZERO;
                state.bytes = 0;
            }
        }
        result
    }
}

/// A response writer that marks its connection busy while it lives, so the
/// connection cap never closes a connection in the middle of a response.
pub(crate) struct Pending<W> {
    inner: W,
    slot: Arc<Slot>,
}

impl<W> Pending<W> {
    pub(crate) fn new(inner: W, slot: Arc<Slot>) -> Pending<W> {
        slot.pending.fetch_add(1, Ordering::SeqCst);
        Pending { inner, slot }
    }
}

impl<W: Write> Write for Pending<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.inner.flush()
    }
}

impl<W> Drop for Pending<W> {
    fn drop(&mut self) {
        self.slot.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers connections beyond the cap (and during shutdown) with a `503` on a
/// thread of its own, so the accept loop never waits on a client. Closing a
/// socket with unread request bytes makes the kernel send a reset, which can
/// destroy the `503` before the client reads it, so each rejected connection
/// is half-closed and its request read and discarded for a short while.
pub(crate) struct Rejecter {
    queue: std::sync::mpsc::SyncSender<Connection>,
}

const REJECT_QUEUE: usize = 64;
const REJECT_LINGER: Duration = Duration::from_millis(250);
const REJECT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 41\r\n\
Retry-After: 5\r\nConnection: close\r\n\r\n\
the server is busy; please try again soon";

impl Rejecter {
    pub(crate) fn start() -> IoResult<Rejecter> {
        let (queue, sockets) = std::sync::mpsc::sync_channel::<Connection>(REJECT_QUEUE);
        std::thread::Builder::new()
            .name("tiny_http-reject".into())
            .spawn(move || {
                for mut socket in sockets {
                    let _ = socket.set_write_timeout(Some(REJECT_LINGER));
                    if socket.write_all(REJECT_RESPONSE).is_err() {
                        continue;
                    }
                    let _ = socket.shutdown(Shutdown::Write);
                    let _ = socket.set_read_timeout(Some(REJECT_LINGER));
                    let until = Instant::now() + REJECT_LINGER;
                    let mut sink = [0u8; 4096];
                    while Instant::now() < until {
                        match socket.read(&mut sink) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            })?;
        Ok(Rejecter { queue })
    }

    /// Queues `socket` for a `503`; if many are queued, just closes it.
    pub(crate) fn reject(&self, socket: Connection) {
        let _ = self.queue.try_send(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    /// A connection for the server side, and the client's end of it.
    fn pair() -> (Connection, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        (Connection::from(server), client)
    }

    /// Whether the server closed this connection (the client reads its end).
    fn closed(client: &mut UnixStream) -> bool {
        client.set_nonblocking(true).unwrap();
        matches!(client.read(&mut [0u8; 16]), Ok(0))
    }

    #[test]
    fn at_the_cap_an_idle_connection_makes_room_and_busy_ones_are_kept() {
        let registry = Registry::new(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let (first, mut first_client) = pair();
        let first = registry.admit(&first).unwrap().unwrap();
        let (second, mut second_client) = pair();
        let second = registry.admit(&second).unwrap().unwrap();
        second.request_started();
        let (third, _third_client) = pair();
        let third = registry.admit(&third).unwrap().unwrap();
        assert!(closed(&mut first_client), "the idle one is closed");
        assert!(!closed(&mut second_client), "the busy one is kept");
        drop(first);
        // A response being written keeps its connection too.
        let _writer = Pending::new(Vec::<u8>::new(), third.clone());
        let (fourth, _fourth_client) = pair();
        assert!(registry.admit(&fourth).unwrap().is_none());
    }

    #[test]
    fn socket_options_are_set_on_each_accepted_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let registry = Registry::new(Limits {
            write_timeout: Some(Duration::from_secs(7)),
            nodelay: true,
            ..Limits::default()
        });
        let _slot = registry
            .admit(&Connection::from(accepted.try_clone().unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(
            accepted.write_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
        assert!(accepted.nodelay().unwrap());
    }

    /// A slot for the server's end of a new pair, with these limits.
    fn slot_with(limits: Limits) -> (Arc<Slot>, Connection, UnixStream) {
        let (server, client) = pair();
        let slot = Registry::new(limits).admit(&server).unwrap().unwrap();
        (slot, server, client)
    }

    fn read(slot: &Slot, server: &mut Connection) -> IoResult<usize> {
        slot.read(server, &mut [0u8; 64])
    }

    #[test]
    fn a_head_must_arrive_within_the_header_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (slot, mut server, mut client) = slot_with(limits);
        slot.await_request(true);
        client.write_all(b"GET / HT").unwrap();
        assert_eq!(read(&slot, &mut server).unwrap(), 8);
        slot.request_started();
        let started = Instant::now();
        let err = read(&slot, &mut server).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(
            slot.is_broken(),
            "a timed-out connection takes no more requests"
        );
        // The deadline has passed: no further read waits at all.
        let started = Instant::now();
        assert_eq!(
            read(&slot, &mut server).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_body_slower_than_the_minimum_rate_is_cut_off() {
        let limits = Limits {
            min_rate: 1000,
            rate_window: Duration::from_millis(200),
            ..Limits::default()
        };
        let (slot, mut server, mut client) = slot_with(limits);
        slot.await_request(true);
        slot.request_started();
        slot.headers_done();
        // 10 bytes every 20 ms is 500 bytes/s at best (less on a busy
        // machine): cut off once 200 ms were spent waiting.
        let trickle = std::thread::spawn(move || {
            while client.write_all(&[b'x'; 10]).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let err = loop {
            match read(&slot, &mut server) {
                Ok(_) => assert!(started.elapsed() < Duration::from_secs(10)),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(err.to_string().contains("minimum rate"), "{}", err);
        assert!(slot.is_broken());
        server.shutdown(Shutdown::Both).unwrap();
        trickle.join().unwrap();
    }

    #[test]
    fn time_spent_outside_reads_does_not_count_against_the_rate() {
        let limits = Limits {
            min_rate: 1000,
            rate_window: Duration::from_millis(100),
            ..Limits::default()
        };
        let (slot, mut server, mut client) = slot_with(limits);
        slot.await_request(true);
        slot.request_started();
        slot.headers_done();
        client.write_all(&[b'x'; 4096]).unwrap();
        for _ in 0..8 {
            // a slow handler between reads
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(read(&slot, &mut server).unwrap(), 64);
        }
        assert!(!slot.is_broken());
    }

    #[test]
    fn lingering_reads_end_in_time() {
        let (slot, mut server, _client) = slot_with(Limits::default());
        slot.linger_for(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(
            read(&slot, &mut server).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
