//! The request path without a socket: a request's method, URL, headers and
//! body reader in, its answer out. Routing, framing, authentication and the
//! route's handler run here, top to bottom; `service` only moves bytes
//! between tiny_http and this, so most of the HTTP surface is tested here
//! without a socket.

use std::cell::{Cell, OnceCell};
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::body::{Body, SMALL_JSON_LIMIT, Source, carries_small_json};
use super::error::HandlerError;
use super::framing::{BodyLimits, SyncHeader};
use super::login::LoginTurn;
use super::reply::{self, Reply};
use super::route::{Route, RouteError, Verb, route};
use super::service::Service;
use crate::auth::{AuthError, Users};
use crate::error::OrSyncError;
use crate::protocol::SYNC_VERSION_ZSTD;
use crate::user::{RequestPermit, UserSlot, max_requests};

/// After an answer, at most this much of an unread request body is read and
/// dropped, so an honest client gets the answer rather than a reset; a longer
/// rest closes the connection instead, so no worker waits for it.
pub const MAX_DRAIN: u64 = 64 * 1024;

/// tiny_http reads a body of at most this many bytes with a `Content-Length`
/// before it hands the request over (`vendor/tiny_http/src/request.rs`), so
/// reading the rest of such a body never makes a worker wait.
const PRE_READ_BODY: u64 = 1024;

/// What is read of an unread body after answering a client without a good
/// key: enough for the end of a chunked body or a form's epilogue (an honest
/// client that sent a wrong password keeps its connection), too little for
/// a slow client to hold a worker for more than a moment.
const UNAUTHENTICATED_DRAIN: u64 = PRE_READ_BODY;

/// A request as the dispatch sees it.
pub struct Incoming<'r> {
    pub verb: Verb,
    /// The client's address as logged (see `SYNC_IP_HEADER`).
    pub client: &'r str,
    /// Path and query, as sent.
    pub url: &'r str,
    /// Name and value of every header, in order.
    pub headers: &'r [(String, String)],
    /// The body as it arrives (after the transfer encoding).
    pub body: &'r mut dyn Read,
    /// The client's address as the login throttle counts it (`client`
    /// parsed; the peer when that is no address).
    pub address: IpAddr,
    /// What the throttle decided, for a login.
    pub login: LoginTurn,
}

impl<'r> Incoming<'r> {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'r str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What an answer may borrow, kept by the caller until the answer is sent:
/// the user's slot, the request's place among that user's requests, and the
/// count of answer bytes handed to the connection.
#[derive(Default)]
pub struct Scope {
    slot: OnceCell<Arc<UserSlot>>,
    permit: Cell<Option<RequestPermit>>,
    sent: Cell<u64>,
}

impl Scope {
    /// Answer bytes read from the answer's body so far.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Keeps the request's place until [`Scope::release`]; the slot stays
    /// borrowable for as long as the scope lives.
    fn admit(&self, permit: RequestPermit) -> &UserSlot {
        let slot = self.slot.get_or_init(|| Arc::clone(permit.slot()));
        self.permit.set(Some(permit));
        slot
    }

    /// Gives the request's place back. It must happen before the answer's
    /// last byte can reach the client: a client sends its next request the
    /// moment it has the answer, and that request must not find this one
    /// still counted (CI saw a 409 so, with the log line of each answered
    /// request still waiting on a busy stderr).
    fn release(&self) {
        drop(self.permit.take());
    }
}

/// An answer, ready to be written to a connection.
pub struct Answer<'s> {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Counts what is read from it into the [`Scope`].
    pub body: Box<dyn Read + 's>,
    /// The body's length when known (else it is sent chunked).
    pub len: Option<u64>,
    /// The request body was not read to its end: close the connection after
    /// this answer (`Connection: close` is among the headers).
    pub close: bool,
    pub log: LogFields,
}

/// What the log line says about a request.
#[derive(Default, Debug)]
pub struct LogFields {
    pub user: Option<String>,
    pub client: Option<String>,
    pub route: Option<Route>,
    /// Why the request failed, for an error answer.
    pub cause: Option<String>,
}

/// What processing learnt that the answer depends on.
struct Seen {
    /// The client's protocol version: how to encode the answer.
    version: u8,
    /// The request's host key (or its login) was good.
    authenticated: bool,
}

#[derive(Deserialize)]
struct LoginRequest {
    u: String,
    p: String,
}

impl Service {
    /// Answers one request. The body is read at most once, through its
    /// budgets. What the handler left unread is drained before the answer is
    /// made, up to [`MAX_DRAIN`] for a request whose key (or login) was good
    /// or whose body was read before it reached us, and only up to
    /// [`UNAUTHENTICATED_DRAIN`] otherwise: a worker never waits long on an
    /// unauthenticated client's body. A longer rest closes the connection
    /// after the answer.
    pub fn dispatch<'s>(&'s self, mut req: Incoming<'_>, scope: &'s Scope) -> Answer<'s> {
        let mut log = LogFields::default();
        let mut seen = Seen {
            version: SYNC_VERSION_ZSTD,
            authenticated: false,
        };
        let result = self.process(&mut req, &mut log, &mut seen, scope);
        if seen.authenticated {
            self.recent.mark(req.client);
        }
        let complete = match &result {
            Err(e) if !e.body_is_drainable() => false,
            _ if seen.authenticated || body_was_pre_read(&req) => drain(req.body, MAX_DRAIN),
            _ => drain(req.body, UNAUTHENTICATED_DRAIN),
        };
        let mut answer = match result.and_then(|r| reply::encode(r, seen.version)) {
            Ok(answer) => answer,
            Err(err) => {
                log.cause = Some(err.to_string());
                reply::error_answer(&err)
            }
        };
        if answer.len == Some(0) {
            // tiny_http does not read an empty body.
            scope.release();
        }
        answer.body = Box::new(Outgoing {
            inner: Counted {
                inner: answer.body,
                count: &scope.sent,
            },
            scope,
            len: answer.len,
        });
        if !complete {
            answer.headers.push(("Connection", "close".into()));
            answer.close = true;
        }
        answer.log = log;
        answer
    }

    /// Route, framing, authentication, then the route's handler.
    fn process<'s>(
        &'s self,
        req: &mut Incoming<'_>,
        log: &mut LogFields,
        seen: &mut Seen,
        scope: &'s Scope,
    ) -> Result<Reply<'s>, HandlerError> {
        let (address, turn) = (req.address, req.login);
        let route = route(req.verb, req.url, &self.config.base_path)?;
        log.route = Some(route);
        if route == Route::Health {
            return Ok(Reply::Empty);
        }
        if route == Route::Index {
            return Ok(Reply::Page(self.index_page(req)));
        }
        if route == Route::Metrics {
            return match self.config.metrics {
                true => Ok(Reply::Metrics(self.metrics.render())),
                false => Err(RouteError::NotFound.into()),
            };
        }
        // A login the throttle refused is answered before its body is read.
        if let (Route::HostKey, LoginTurn::Refused(retry_after)) = (route, turn) {
            return Err(AuthError::Throttled { retry_after }.into());
        }
        let decompressed = match route {
            Route::HostKey => SMALL_JSON_LIMIT,
            Route::Sync(m) if carries_small_json(m) => SMALL_JSON_LIMIT,
            _ => self.config.max_payload_bytes(),
        };
        let (header, mut body) = match req.header("anki-sync") {
            Some(value) => {
                let header = SyncHeader::parse(value)?;
                let body = Body {
                    source: Source::Zstd(&mut *req.body),
                    limits: BodyLimits::zstd(decompressed),
                };
                (header, body)
            }
            // No header: a client older than 2.1.57 (multipart + gzip),
            // whose whole form the official server caps at the payload limit.
            None => {
                let limits = BodyLimits {
                    compressed: self.config.max_body_bytes(),
                    decompressed,
                };
                self.legacy_request(req, route, limits)?
            }
        };
        seen.version = header.version;
        log.client = Some(header.client.clone());

        let users = self.current_users();
        if route == Route::HostKey {
            let login: LoginRequest = body.json()?;
            log.user = Some(login.u.clone());
            // PBKDF2 runs here, on this request's own copy of the table: no lock is held.
            let account = self.login(&users, address, &login.u, &login.p)?;
            seen.authenticated = true;
            let answer = serde_json::json!({ "key": account.hkey });
            return Ok(Reply::Bytes(answer.to_string().into_bytes()));
        }

        let account = users.by_hkey(&header.hkey)?;
        seen.authenticated = true;
        log.user = Some(account.name.clone());
        let opened = self
            .store
            .open(&account.name)
            .or_internal(format!("preparing the folder of {}", account.name))?;
        // One user's requests may hold only part of the workers; beyond it,
        // a prompt 409 instead of a wait (issue 14 item 4).
        let permit = opened.enter(max_requests(self.config.workers))?;
        let slot = scope.admit(permit);

        match route {
            Route::Sync(method) => self.collection(method, &header, &mut body, slot),
            Route::Media(method) => self.media(method, &header, &mut body, slot),
            Route::Health | Route::Index | Route::Metrics | Route::HostKey => Ok(Reply::Empty),
        }
    }

    /// The accounts as of now: a changed users file is reloaded first (one
    /// `stat` per request otherwise), so additions, new passwords and
    /// removals take effect at once. Removed users' slots are dropped.
    fn current_users(&self) -> Arc<Users> {
        if let Some(change) = self.users.refresh() {
            for name in &change.removed {
                self.store.forget(name);
            }
            for name in &change.added {
                if let Err(e) = self.store.open(name) {
                    log::error!("preparing the folder of new user {name}: {e}");
                }
            }
        }
        self.users.current()
    }

    /// What a person sees when opening the server's address in a browser:
    /// that it runs, and the exact URL to type into Anki. The scheme is the
    /// one a proxy in front says the client used, else ours: `https` with
    /// built-in HTTPS.
    fn index_page(&self, req: &Incoming<'_>) -> String {
        let host = req
            .header("Host")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}:{}", self.config.host, self.config.port));
        let scheme = req
            .header("X-Forwarded-Proto")
            .unwrap_or(match self.config.tls {
                Some(_) => "https",
                None => "http",
            });
        let mut page = format!(
            "anki-sync-lite {} is running.\n\nIn Anki, set the self-hosted sync server to:\n\n    {scheme}://{host}{}\n\n(with the final slash), then log in with your user name and password.\n",
            env!("CARGO_PKG_VERSION"),
            self.config.base_path
        );
        if self.current_users().is_empty() {
            page.push_str(NO_USERS_YET);
        }
        page
    }
}

/// The index page's next step on a fresh install.
const NO_USERS_YET: &str = "\nThere are no users yet. On the server, add one with\n\n    sudo anki-sync-lite user add NAME\n\n(it asks for the password; no restart needed), or set SYNC_USER1=NAME:PASSWORD.\n";

/// Whether the request has no body, or one tiny_http read before handing
/// the request over (a `Content-Length` of at most [`PRE_READ_BODY`]).
fn body_was_pre_read(req: &Incoming<'_>) -> bool {
    if req.header("Transfer-Encoding").is_some() {
        return false;
    }
    match req.header("Content-Length") {
        None => true,
        Some(len) => len.trim().parse::<u64>().is_ok_and(|n| n <= PRE_READ_BODY),
    }
}

/// Reads what is left of a request body, up to `max` bytes; true if that
/// reached its end (the connection can take the next request).
fn drain(body: &mut dyn Read, max: u64) -> bool {
    let mut limited = body.take(max);
    if io::copy(&mut limited, &mut io::sink()).is_err() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(limited.into_inner().read(&mut probe), Ok(0))
}

/// Counts bytes read through it.
pub(super) struct Counted<'a, R> {
    pub(super) inner: R,
    pub(super) count: &'a Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// An answer's body as the connection reads it: counts the bytes into the
/// [`Scope`], and gives the request's place back with the last of them,
/// before the connection can write them (the read that reaches the
/// announced length, or the end of a chunked body, whose final chunk is
/// written after it). A client that stops reading keeps the place until its
/// connection times out, as a download it stalls should.
struct Outgoing<'s, R> {
    inner: Counted<'s, R>,
    scope: &'s Scope,
    len: Option<u64>,
}

impl<R: Read> Read for Outgoing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let sent = self.scope.sent.get();
        if (n == 0 && !buf.is_empty()) || self.len.is_some_and(|len| sent >= len) {
            self.scope.release();
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
