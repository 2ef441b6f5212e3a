//! The socket side of a request: reads what the dispatch needs from a
//! tiny_http request, writes its answer back, and logs one line. Everything
//! between (route, framing, auth, the handler) is `dispatch`, which needs
//! no socket.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use log::{debug, error, info, warn};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::dispatch::{Counted, Incoming, LogFields, Scope};
use super::login::{Admission, LoginTurn};
use super::recent::RecentClients;
use super::route::{MediaMethod, Route, SyncMethod, Verb, route};
use crate::auth::live::LiveUsers;
use crate::auth::throttle::Throttle;
use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::metrics::{self, Metrics, SyncKind};
use crate::user::UserStore;

/// Everything handling a request needs; shared by every thread that does.
pub struct Service {
    pub config: Config,
    /// The accounts, reloaded when the users file changes.
    pub users: LiveUsers,
    pub store: UserStore,
    /// The memory all requests may use for decoded JSON bodies.
    pub budget: MemoryBudget,
    /// Addresses that authenticated lately (how much legacy form data may
    /// come before its key).
    pub recent: RecentClients,
    /// Counters for `/metrics`, kept whether or not the page is served.
    pub metrics: Metrics,
    /// Failed logins per client address.
    pub throttle: Throttle,
}

/// What became of a request handled.
pub enum Handled {
    Done,
    /// A login whose turn comes at that time: to be parked, without a
    /// worker, and handled again then with [`LoginTurn::Check`].
    Park(Instant, Request),
}

impl Service {
    /// Handles one request completely, or hands a login back to be parked
    /// until the throttle gives it its turn. `decided` is the throttle's
    /// verdict when it was already asked (a parked login woken, or one that
    /// could not be parked); `None` for a fresh request. Never panics
    /// outward: a panic in a handler becomes a 500 for that request only.
    pub fn handle(&self, request: Request, decided: Option<LoginTurn>) -> Handled {
        let started = Instant::now();
        let url = request.url().to_string();
        let (ip, address) = self.client_ip(&request);
        let login = match decided {
            Some(turn) => turn,
            None if self.is_login(&request) => match self.login_turn(address, started) {
                Admission::Now(turn) => turn,
                Admission::WaitUntil(due) => return Handled::Park(due, request),
            },
            None => LoginTurn::Check,
        };
        let received = Cell::new(0u64);
        let scope = Scope::default();
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.respond(request, (&ip, address, login), &received, &scope)
        }));
        let (status, log) = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                let log = LogFields {
                    cause: Some("handler panicked".into()),
                    ..LogFields::default()
                };
                (500, log)
            }
        };
        let figures = Figures {
            status,
            received: received.get(),
            sent: scope.sent(),
            ms: started.elapsed().as_millis(),
        };
        self.count(log.route, &figures);
        let line = log_line(&ip, &url, &log, &figures);
        match (log.route, status) {
            (Some(Route::Health | Route::Index), 200) => debug!("{line}"),
            (_, 500..) => error!("{line}"),
            (_, 400..) => warn!("{line}"),
            _ => info!("{line}"),
        }
        Handled::Done
    }

    /// Whether a request is a password login (`hostKey`).
    fn is_login(&self, request: &Request) -> bool {
        let verb = verb_of(request.method());
        route(verb, request.url(), &self.config.base_path) == Ok(Route::HostKey)
    }

    /// Dispatches and writes the answer; returns its status and what the
    /// log line says.
    fn respond(
        &self,
        mut request: Request,
        (ip, address, login): (&str, IpAddr, LoginTurn),
        received: &Cell<u64>,
        scope: &Scope,
    ) -> (u16, LogFields) {
        let verb = verb_of(request.method());
        let url = request.url().to_string();
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
            .collect();
        let answer = {
            let mut body = Counted {
                inner: request.as_reader(),
                count: received,
            };
            let incoming = Incoming {
                verb,
                client: ip,
                url: &url,
                headers: &headers,
                body: &mut body,
                address,
                login,
            };
            self.dispatch(incoming, scope)
        };
        let mut log = answer.log;
        let response = Response::new(
            StatusCode(answer.status),
            answer
                .headers
                .iter()
                .map(|(name, value)| header(name, value))
                .collect(),
            answer.body,
            answer.len.and_then(|l| usize::try_from(l).ok()),
            None,
        );
        if let Err(e) = request.respond(response) {
            log.cause
                .get_or_insert(format!("sending the answer failed: {e}"));
        }
        (answer.status, log)
    }

    /// A request's share of the counters: its route and status, its bytes
    /// (as its log line gives them), and what a successful (or refused)
    /// answer of its route means.
    fn count(&self, route: Option<Route>, n: &Figures) {
        let m = &self.metrics;
        let label = route.map_or_else(|| metrics::UNMATCHED.to_string(), |r| r.to_string());
        m.request(&label, n.status, n.received, n.sent);
        match (route, n.status) {
            (Some(Route::Sync(SyncMethod::Upload)), 200) => m.sync_done(SyncKind::FullUpload),
            (Some(Route::Sync(SyncMethod::Download)), 200) => m.sync_done(SyncKind::FullDownload),
            // A normal sync that exchanged changes ends with `finish`.
            (Some(Route::Sync(SyncMethod::Finish)), 200) => m.sync_done(SyncKind::Normal),
            // Every media sync begins so; one with nothing to do ends there.
            (Some(Route::Media(MediaMethod::Begin)), 200) => m.sync_done(SyncKind::Media),
            (Some(Route::HostKey), 403) => m.failed_login(),
            _ => {}
        }
    }

    /// The client's address as the log line shows it, and as the login
    /// throttle counts it: the proxy's header when `SYNC_IP_HEADER` names
    /// one, else the TCP peer. A header that holds no address is logged as
    /// sent, and the throttle counts the peer (the proxy) instead.
    fn client_ip(&self, request: &Request) -> (String, IpAddr) {
        let peer = request.remote_addr().map(|a| a.ip());
        let peer_ip = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let peer_text = || peer.map_or_else(|| "-".into(), |ip| ip.to_string());
        let Some(name) = self.config.ip_source.header() else {
            return (peer_text(), peer_ip);
        };
        let value = request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string());
        match value {
            // X-Forwarded-For lists hops; the rightmost is the one our proxy saw.
            Some(v) => {
                let text = v.rsplit(',').next().unwrap_or(&v).trim().to_string();
                let ip = parse_address(&text).unwrap_or(peer_ip);
                (text, ip)
            }
            None => (peer_text(), peer_ip),
        }
    }
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, or with a
/// port (`192.0.2.1:443`, `[2001:db8::1]:443`). An IPv6 address with a port
/// and no brackets reads as another address of the same /64, which the
/// throttle counts as one.
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn verb_of(method: &Method) -> Verb {
    match method {
        Method::Get => Verb::Get,
        Method::Head => Verb::Head,
        Method::Post => Verb::Post,
        _ => Verb::Other,
    }
}

/// The numbers of a request's log line.
struct Figures {
    status: u16,
    received: u64,
    sent: u64,
    ms: u128,
}

/// Longest login name and client version a log line carries; the URL and
/// the cause may be longer, but not without bound.
pub(super) const MAX_LOGGED_NAME: usize = 64;
const MAX_LOGGED_TEXT: usize = 300;

/// A request's one log line: client address, user, client version, route,
/// status, bytes in and out, time, and the cause of a failure. What the
/// client chose (the name it logged in with, its version string, the URL)
/// is escaped and cut short, so it can neither forge a line nor make a huge
/// one, even without a valid login.
fn log_line(ip: &str, url: &str, log: &LogFields, n: &Figures) -> String {
    let what = match log.route {
        Some(route) => route.to_string(),
        None => log_safe(url, MAX_LOGGED_TEXT),
    };
    let field = |value: &Option<String>| match value {
        Some(v) => log_safe(v, MAX_LOGGED_NAME),
        None => "-".into(),
    };
    let cause = match &log.cause {
        Some(c) => format!(" ({})", log_safe(c, MAX_LOGGED_TEXT)),
        None => String::new(),
    };
    format!(
        "{} {} {} {what} {} in={} out={} {}ms{cause}",
        log_safe(ip, MAX_LOGGED_NAME),
        field(&log.user),
        field(&log.client),
        n.status,
        n.received,
        n.sent,
        n.ms
    )
}

/// `text` with control characters escaped (`\n`, `\u{1b}`) and at most
/// `max` characters of it, marked with `…` when cut.
pub(super) fn log_safe(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds a header from our own constant names and ASCII values.
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values built here are plain ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The throttle counts the address a proxy names, in each form proxies
    /// write it; anything else falls back to the peer.
    #[test]
    fn proxy_addresses_are_read_in_every_form() {
        for (text, ip) in [
            ("192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("192.0.2.1:443", "192.0.2.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1:443", "2001:db8::1:443"),
        ] {
            assert_eq!(parse_address(text), Some(ip.parse().unwrap()), "{text}");
        }
        for text in ["", "unknown", "for=192.0.2.1", "192.0.2.1:x"] {
            assert_eq!(parse_address(text), None, "{text}");
        }
    }

    /// Issue 14, item 6: what a client chose cannot forge a log line nor
    /// make a huge one (before, the login name and the client version were
    /// logged raw and whole).
    #[test]
    fn log_lines_escape_and_cut_what_clients_send() {
        let log = LogFields {
            user: Some("mallory\n1.2.3.4 alice 26.09 /sync/meta 200".into()),
            client: Some("x".repeat(1 << 20)),
            route: None,
            cause: Some("invalid user or password".into()),
        };
        let figures = Figures {
            status: 403,
            received: 10,
            sent: 3,
            ms: 1,
        };
        let line = log_line("1.2.3.4", "/sync/hostKey\u{1b}[2J", &log, &figures);
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(
            line.starts_with("1.2.3.4 mallory\\n1.2.3.4 alice"),
            "{line}"
        );
        assert!(
            line.contains(" /sync/hostKey\\u{1b}[2J 403 in=10 out=3 1ms (invalid user"),
            "{line}"
        );
        assert!(line.len() < 400, "{} bytes", line.len());
        assert!(
            line.contains(&format!(" {}… ", "x".repeat(MAX_LOGGED_NAME))),
            "{line}"
        );
        assert_eq!(log_safe("plain", 3), "pla…");
        assert_eq!(log_safe("tab\there", 64), "tab\\there");
    }
}
