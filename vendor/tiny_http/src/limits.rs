//! Limits against slow and hostile clients (anki-sync-lite patches 1–3; see
//! PATCHES.md). Upstream tiny_http reads sockets without timeouts, accepts any
//! number of connections (one thread each) and any header size.
//!
//! Every accepted connection gets a [`Slot`] in the server's [`Registry`].
//! The slot keeps a clone of the socket, so that it can change the socket's
//! read timeout as the request goes on and so that the accept thread can close
//! a connection to make room for a new one. All reads from the client go
//! through [`Slot::read`], which enforces:
//! - the header deadline: a request's line and headers must arrive within
//!   `header_timeout` of its first byte (of the accept, for the first request);
//! - the read timeout: no read waits longer than `read_timeout`;
//! - the minimum rate: while a request is being read, the client must deliver
//!   `min_rate` bytes per second of time spent waiting for it, checked over
//!   windows of `rate_window`. Only time blocked in `read` counts, so a slow
//!   handler never makes a fast client look slow.
//!
//! The registry caps open connections, per client address and in all. At a
//! cap it closes the connection whose loss costs the least: one idle between
//! requests, else the one furthest behind on its request (a slowloris client
//! trickling header bytes, or one that never sends any).

use std::fmt;
use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
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
    /// Open connections at most. Beyond it a connection is closed to make
    /// room (see the module docs), or else the new one gets a `503`.
    pub max_connections: usize,
    /// Open connections from one client address at most (IPv6 addresses
    /// count by their /64 prefix, which one client usually holds whole).
    /// Beyond it one of that address's idle connections is closed to make
    /// room, or else the new one gets a `503`. Behind a reverse proxy every
    /// connection comes from the proxy: leave this at `max_connections`.
    pub max_connections_per_addr: usize,
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
            max_connections_per_addr: usize::MAX,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// A new connection, or one on its request head, is only closed for a
/// newcomer once it has had this long: a client sends its head in one round
/// trip, so one this old is a slow client's, while a younger one may be
/// anybody's (also a newcomer the server has not read yet, on a busy machine).
const GRACE: Duration = Duration::from_secs(1);

pub(crate) fn timed_out(why: &str) -> IoError {
    IoError::new(ErrorKind::TimedOut, why.to_string())
}

/// The address a connection counts against for the per-address cap: IPv4
/// as is (also when mapped into IPv6), IPv6 by its /64 prefix.
pub(crate) fn client_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// Why a new connection was turned away.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open, none of them closable.
    Full,
    /// `max_connections_per_addr` are open from this address, none idle.
    AddressFull(IpAddr),
}

/// The open connections, for the connection caps.
pub(crate) struct Registry {
    limits: Limits,
    open: Mutex<Vec<Weak<Slot>>>,
    log: LogThrottle,
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            open: Mutex::new(Vec::new()),
            log: LogThrottle::default(),
        }
    }

    /// How many connections are open: their slots still live and the server
    /// has not closed its side for writing.
    pub(crate) fn open(&self) -> usize {
        let open = self.open.lock().unwrap();
        open.iter().filter(|slot| is_open(slot)).count()
    }

    /// A slot for a new connection, with the limits' socket options set on
    /// it; or why there is no room for it.
    pub(crate) fn admit(&self, socket: &Connection) -> IoResult<Result<Arc<Slot>, Refusal>> {
        let peer = socket.peer_addr()?.map(client_key);
        self.admit_from(socket, peer, Instant::now())
    }

    /// [`Registry::admit`], for a connection from `peer` at `now`.
    fn admit_from(
        &self,
        socket: &Connection,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> IoResult<Result<Arc<Slot>, Refusal>> {
        let mut open = self.open.lock().unwrap();
        open.retain(is_open);
        if let Some(addr) = peer {
            let mine = open
                .iter()
                .filter(|slot| slot.upgrade().is_some_and(|slot| slot.peer == Some(addr)))
                .count();
            if mine >= self.limits.max_connections_per_addr
                && !self.evict(&mut open, now, |slot| slot.peer == Some(addr), false)
            {
                self.log.note(format_args!(
                    "{addr} already has {mine} open connections: refusing another"
                ));
                return Ok(Err(Refusal::AddressFull(addr)));
            }
        }
        if open.len() >= self.limits.max_connections && !self.evict(&mut open, now, |_| true, true)
        {
            self.log.note(format_args!(
                "{} connections open, all busy: refusing another",
                open.len()
            ));
            return Ok(Err(Refusal::Full));
        }
        socket.set_write_timeout(self.limits.write_timeout)?;
        socket.set_nodelay(self.limits.nodelay)?;
        let slot = Arc::new(Slot {
            socket: socket.try_clone()?,
            peer,
            limits: self.limits.clone(),
            pending: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            state: Mutex::new(ReadState {
                phase: Phase::Idle {
                    since: now,
                    new: true,
                },
                deadline: None,
                counting: false,
                waited: Duration::ZERO,
                bytes: 0,
                applied: None,
            }),
        });
        open.push(Arc::downgrade(&slot));
        Ok(Ok(slot))
    }

    /// Closes the open connection among those `eligible` that is the best to
    /// lose: the longest idle one between requests, else the one longest on
    /// its first request (if `heads`, also one that has begun its head).
    /// Returns whether one was closed.
    fn evict(
        &self,
        open: &mut Vec<Weak<Slot>>,
        now: Instant,
        eligible: impl Fn(&Slot) -> bool,
        heads: bool,
    ) -> bool {
        let victim = open
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let slot = slot.upgrade()?;
                if !eligible(&slot) {
                    return None;
                }
                match slot.evictable(now)? {
                    Waiting::Head(_) if !heads => None,
                    waiting => Some((i, waiting)),
                }
            })
            .max_by_key(|(_, waiting)| waiting.rank());
        let Some((i, waiting)) = victim else {
            return false;
        };
        if let Some(slot) = open.swap_remove(i).upgrade() {
            let from = slot
                .peer
                .map_or("a local client".to_string(), |a| a.to_string());
            match waiting {
                Waiting::KeepAlive(_) => {
                    log::debug!("connection cap reached: closing an idle connection")
                }
                Waiting::New(age) => self.log.note(format_args!(
                    "connection cap reached: closing the connection from {} \
                     that has sent nothing in {:.1} s",
                    from,
                    age.as_secs_f64()
                )),
                Waiting::Head(age) => self.log.note(format_args!(
                    "connection cap reached: closing the connection from {} \
                     that has spent {:.1} s on its request head",
                    from,
                    age.as_secs_f64()
                )),
            }
            slot.broken.store(true, Ordering::SeqCst);
            slot.closing.store(true, Ordering::SeqCst);
            slot.socket.shutdown(Shutdown::Both).ok();
        }
        true
    }
}

/// Whether a registered connection still counts as open (see `Slot::closing`).
fn is_open(slot: &Weak<Slot>) -> bool {
    slot.upgrade()
        .is_some_and(|slot| !slot.closing.load(Ordering::SeqCst))
}

/// What an evictable connection is waiting for, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// The rest of its request head (only after [`GRACE`]).
    Head(Duration),
    /// The first byte of its first request (only after [`GRACE`]).
    New(Duration),
    /// Its next request, after answers to earlier ones: nothing is lost by
    /// closing it.
    KeepAlive(Duration),
}

impl Waiting {
    /// Greater for the better one to close: idle between requests first,
    /// then the longest waiting.
    fn rank(self) -> (bool, Duration) {
        match self {
            Waiting::KeepAlive(age) => (true, age),
            Waiting::New(age) | Waiting::Head(age) => (false, age),
        }
    }
}

/// One open connection, shared by its reader, its writers and the registry.
pub(crate) struct Slot {
    /// A clone of the socket: timeouts and eviction, never reads or writes.
    socket: Connection,
    /// The client address it counts against (`None` for a Unix socket).
    peer: Option<IpAddr>,
    limits: Limits,
    /// Responses not yet completely written.
    pending: AtomicUsize,
    /// The connection takes no more requests: a read timed out or was too
    /// slow, the request was malformed, or its body was left unread.
    broken: AtomicBool,
    /// The server has closed its side for writing: the connection can answer
    /// nothing more and is on its way out, so it no longer counts against the
    /// caps. (Set before the shutdown, so a client that has seen the end of
    /// the stream never finds its connection still counted.)
    closing: AtomicBool,
    state: Mutex<ReadState>,
}

/// Where a connection is in its current request.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for the first byte of a request (`new`: the first request).
    Idle { since: Instant, new: bool },
    /// Reading the request line and headers.
    Head { started: Instant },
    /// Headers read: the request is with the handler.
    Body,
}

struct ReadState {
    phase: Phase,
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

    /// The server is about to close its side for writing: from now on the
    /// connection no longer counts against the caps.
    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Half-closes the connection: the client reads what was written so far,
    /// then the end of the stream.
    pub(crate) fn shutdown_write(&self) {
        self.mark_closing();
        self.socket.shutdown(Shutdown::Write).ok();
    }

    /// From now on reads wait at most `time` in all, and no minimum rate
    /// applies: for a last look at a connection being closed.
    pub(crate) fn linger_for(&self, time: Duration) {
        let mut state = self.state.lock().unwrap();
        state.deadline = Some(Instant::now() + time);
        state.counting = false;
    }

    /// Whether the registry may close this connection for a newcomer.
    fn evictable(&self, now: Instant) -> Option<Waiting> {
        if self.pending.load(Ordering::SeqCst) > 0 || self.is_broken() {
            return None;
        }
        let (waiting, graced) = match self.state.lock().unwrap().phase {
            Phase::Idle { since, new: false } => {
                return Some(Waiting::KeepAlive(now.saturating_duration_since(since)));
            }
            Phase::Idle { since, new: true } => {
                let age = now.saturating_duration_since(since);
                (Waiting::New(age), age >= GRACE)
            }
            Phase::Head { started } => {
                let age = now.saturating_duration_since(started);
                (Waiting::Head(age), age >= GRACE)
            }
            Phase::Body => return None,
        };
        graced.then_some(waiting)
    }

    /// Before waiting for a request: the first must arrive within the header
    /// deadline of the accept; later ones (keep-alive) within the read timeout.
    pub(crate) fn await_request(&self, first: bool) {
        let mut state = self.state.lock().unwrap();
        state.deadline = first.then(|| Instant::now() + self.limits.header_timeout);
        state.counting = false;
        if !first {
            state.phase = Phase::Idle {
                since: Instant::now(),
                new: false,
            };
        }
    }

    /// The first byte of a request has arrived.
    pub(crate) fn request_started(&self) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        state.phase = Phase::Head { started: now };
        if state.deadline.is_none() {
            state.deadline = Some(now + self.limits.header_timeout);
        }
        state.counting = self.limits.min_rate > 0;
        state.waited = Duration::ZERO;
        state.bytes = 0;
    }

    /// All headers have arrived: from now on only the read timeout and the
    /// minimum rate apply (the body).
    pub(crate) fn headers_done(&self) {
        let mut state = self.state.lock().unwrap();
        state.deadline = None;
        state.phase = Phase::Body;
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

/// At most one log line a second about refused and evicted connections, so
/// that a flood of connections cannot flood the log too; the lines held back
/// are counted in the next one.
#[derive(Default)]
struct LogThrottle {
    last: Mutex<Option<Instant>>,
    held_back: AtomicUsize,
}

impl LogThrottle {
    fn note(&self, line: fmt::Arguments<'_>) {
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        match self.held_back.swap(0, Ordering::Relaxed) {
            0 => log::warn!("{}", line),
            n => log::warn!("{} (and {} more such events in the last second)", line, n),
        }
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
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    /// A registry with these caps, and fast timeouts.
    fn registry(max: usize, per_addr: usize) -> Registry {
        Registry::new(Limits {
            max_connections: max,
            max_connections_per_addr: per_addr,
            ..Limits::default()
        })
    }

    /// A connection for the server side, and the client's end of it.
    fn pair() -> (Connection, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        (Connection::from(server), client)
    }

    /// Admits a new connection from `peer`, `after` from now; returns its
    /// slot (or why not) and the client's end.
    fn connect(
        registry: &Registry,
        peer: Option<IpAddr>,
        after: Duration,
    ) -> (Result<Arc<Slot>, Refusal>, UnixStream) {
        let (server, client) = pair();
        let slot = registry
            .admit_from(&server, peer, Instant::now() + after)
            .unwrap();
        (slot, client)
    }

    /// Whether the server closed this connection (the client reads its end).
    fn closed(client: &mut UnixStream) -> bool {
        client.set_nonblocking(true).unwrap();
        matches!(client.read(&mut [0u8; 16]), Ok(0))
    }

    const NOW: Duration = Duration::ZERO;
    /// Long enough after a head started for it to be evictable.
    const LATER: Duration = Duration::from_secs(5);

    #[test]
    fn client_addresses_count_ipv6_by_their_64_prefix() {
        let v4 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 1234));
        assert_eq!(client_key(v4), IpAddr::from([192, 0, 2, 7]));
        let mapped = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped(), 1));
        assert_eq!(client_key(mapped), IpAddr::from([192, 0, 2, 7]));
        let a: Ipv6Addr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let key = |ip: Ipv6Addr| client_key(SocketAddr::from((ip, 443)));
        assert_eq!(key(a), key(b));
        assert_eq!(
            key(a),
            IpAddr::from("2001:db8:1:2::".parse::<Ipv6Addr>().unwrap())
        );
        assert_ne!(key(a), key(other));
    }

    #[test]
    fn at_the_cap_a_connection_idle_between_requests_makes_room_first() {
        let registry = registry(3, usize::MAX);
        let (new, mut new_client) = connect(&registry, None, NOW);
        let (kept, mut kept_client) = connect(&registry, None, NOW);
        let kept = kept.unwrap();
        kept.request_started();
        kept.headers_done();
        kept.await_request(false); // answered, now waiting for the next
        let (head, mut head_client) = connect(&registry, None, NOW);
        head.as_ref().unwrap().request_started();
        let (fourth, _fourth_client) = connect(&registry, None, LATER);
        assert!(fourth.is_ok());
        assert!(closed(&mut kept_client), "the keep-alive one is closed");
        assert!(kept.is_broken());
        assert!(!closed(&mut new_client));
        assert!(!closed(&mut head_client));
        drop((new, head));
    }

    #[test]
    fn open_counts_the_connections_whose_slots_live() {
        let registry = registry(3, usize::MAX);
        assert_eq!(registry.open(), 0);
        let (a, _a_client) = connect(&registry, None, NOW);
        let (b, _b_client) = connect(&registry, None, NOW);
        assert_eq!(registry.open(), 2);
        drop(a);
        assert_eq!(registry.open(), 1);
        drop(b);
        assert_eq!(registry.open(), 0);
    }

    #[test]
    fn a_new_connection_gets_a_grace_period_then_makes_room() {
        let registry = registry(1, usize::MAX);
        let (first, mut first_client) = connect(&registry, None, NOW);
        // Not read yet, or slow to start: a newcomer does not push it out...
        assert_eq!(connect(&registry, None, NOW).0.err(), Some(Refusal::Full));
        assert!(!closed(&mut first_client));
        // ...until it has had a second to send something.
        assert!(connect(&registry, None, LATER).0.is_ok());
        assert!(closed(&mut first_client));
        assert!(first.unwrap().is_broken());
    }

    #[test]
    fn at_the_cap_the_connection_furthest_behind_on_its_head_makes_room() {
        let registry = registry(3, usize::MAX);
        let (slow, mut slow_client) = connect(&registry, None, NOW);
        let slow = slow.unwrap();
        slow.request_started();
        std::thread::sleep(Duration::from_millis(20));
        let (slower_later, mut later_client) = connect(&registry, None, NOW);
        let slower_later = slower_later.unwrap();
        slower_later.request_started();
        // A request with its handler, and one whose answer is being written:
        // never closed for a newcomer.
        let (handled, mut handled_client) = connect(&registry, None, NOW);
        let handled = handled.unwrap();
        handled.request_started();
        handled.headers_done();

        // Heads younger than the grace are anybody's: the newcomer waits.
        assert_eq!(connect(&registry, None, NOW).0.err(), Some(Refusal::Full));
        assert!(!closed(&mut slow_client));

        let (newcomer, _newcomer_client) = connect(&registry, None, LATER);
        assert!(newcomer.is_ok());
        assert!(closed(&mut slow_client), "the oldest head is closed");
        assert!(slow.is_broken());
        assert!(!closed(&mut later_client));
        assert!(!closed(&mut handled_client));

        // Only the handled request and a response in progress are left
        // besides the newcomer (which is still idle: make it busy too).
        let writer = Pending::new(Vec::<u8>::new(), slower_later.clone());
        let newcomer = newcomer.unwrap();
        newcomer.request_started();
        newcomer.headers_done();
        assert_eq!(connect(&registry, None, LATER).0.err(), Some(Refusal::Full));
        drop(writer);
        // (its request is still a head, now more than the grace old)
        assert!(connect(&registry, None, LATER).0.is_ok());
        assert!(closed(&mut later_client));
        assert!(slower_later.is_broken());
    }

    #[test]
    fn one_address_gets_its_own_cap() {
        let registry = registry(100, 2);
        let x_ip = IpAddr::from([192, 0, 2, 1]);
        let x = Some(x_ip);
        let y = Some(IpAddr::from([192, 0, 2, 2]));
        let (a, mut a_client) = connect(&registry, x, NOW);
        let (b, _b_client) = connect(&registry, x, NOW);
        // X's idle connection makes room for X's new one.
        let (c, _c_client) = connect(&registry, x, LATER);
        assert!(c.is_ok());
        assert!(closed(&mut a_client));
        drop(a);
        // Once all of X's are busy, even on old heads, X gets no more...
        let (b, c) = (b.unwrap(), c.unwrap());
        b.request_started();
        c.request_started();
        let refused = connect(&registry, x, LATER).0.err();
        assert_eq!(refused, Some(Refusal::AddressFull(x_ip)));
        // ...while Y and local sockets are served.
        assert!(connect(&registry, y, LATER).0.is_ok());
        assert!(connect(&registry, None, LATER).0.is_ok());
    }

    #[test]
    fn a_connection_closed_for_writing_no_longer_counts() {
        // The server has answered its last request and shut its side: the
        // client may already have seen the end of the stream and connect
        // again, before the rest of the old connection is dropped.
        let registry = registry(2, 1);
        let x_ip = IpAddr::from([192, 0, 2, 1]);
        let (a, _a_client) = connect(&registry, Some(x_ip), NOW);
        let a = a.unwrap();
        a.request_started();
        let refused = connect(&registry, Some(x_ip), LATER).0.err();
        assert_eq!(refused, Some(Refusal::AddressFull(x_ip)));
        a.mark_closing();
        assert_eq!(registry.open(), 0);
        let (b, _b_client) = connect(&registry, Some(x_ip), LATER);
        assert!(b.is_ok());
        assert_eq!(registry.open(), 1);
        assert!(!a.is_broken(), "nothing was closed to make room");
    }

    #[test]
    fn socket_options_are_set_on_each_accepted_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let registry = Registry::new(Limits {
            write_timeout: Some(Duration::from_secs(7)),
            nodelay: true,
            ..Limits::default()
        });
        let slot = registry
            .admit(&Connection::from(accepted.try_clone().unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(
            accepted.write_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
        assert!(accepted.nodelay().unwrap());
        assert_eq!(slot.peer, Some(client_key(peer)));
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
