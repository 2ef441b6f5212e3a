//! Handling one request from start to finish: route, framing, auth, then the
//! handler of its route (`sync_handlers`, `media_handlers`), the encoded
//! answer (`reply`) and one log line. Read top to bottom from `handle`.

use std::cell::Cell;
use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};
use serde::Deserialize;
use tiny_http::{Method, Request, Response, StatusCode};

use super::body::{Body, SMALL_JSON_LIMIT, Source, carries_small_json};
use super::error::HandlerError;
use super::framing::{BodyLimits, SyncHeader};
use super::reply::{Reply, header, send_reply};
use super::route::{Route, Verb, route};
use crate::auth::Users;
use crate::auth::live::LiveUsers;
use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::error::OrSyncError;
use crate::protocol::SYNC_VERSION_ZSTD;
use crate::user::{UserSlot, UserStore};

/// Everything a worker needs; shared by all workers.
pub struct Service {
    pub config: Config,
    /// The accounts, reloaded when the users file changes.
    pub users: LiveUsers,
    pub store: UserStore,
    /// The memory all requests may use for decoded JSON bodies.
    pub budget: MemoryBudget,
}

/// What the log line says about a request.
#[derive(Default)]
struct LogFields {
    user: Option<String>,
    client: Option<String>,
    route: Option<Route>,
}

#[derive(Deserialize)]
struct LoginRequest {
    u: String,
    p: String,
}

impl Service {
    /// Handles one request completely. Never panics outward: a panic in a
    /// handler becomes a 500 for that request only.
    pub fn handle(&self, request: Request) {
        let started = Instant::now();
        let url = request.url().to_string();
        let ip = self.client_ip(&request);
        let received = Cell::new(0u64);
        let mut fields = LogFields::default();
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.respond(request, &received, &mut fields)
        }));
        let (status, sent, cause) = match result {
            Ok(outcome) => outcome,
            Err(_) => (500, 0, Some("handler panicked".to_string())),
        };
        let ms = started.elapsed().as_millis();
        let what = fields.route.map(|r| r.to_string()).unwrap_or(url);
        let line = format!(
            "{ip} {} {} {what} {status} in={} out={sent} {ms}ms{}",
            fields.user.as_deref().unwrap_or("-"),
            fields.client.as_deref().unwrap_or("-"),
            received.get(),
            cause.map(|c| format!(" ({c})")).unwrap_or_default(),
        );
        match (fields.route, status) {
            (Some(Route::Health | Route::Index), 200) => debug!("{line}"),
            (_, 500..) => error!("{line}"),
            (_, 400..) => warn!("{line}"),
            _ => info!("{line}"),
        }
    }

    /// Processes and answers; returns status, payload bytes sent and, for
    /// errors, the cause for the log.
    fn respond(
        &self,
        mut request: Request,
        received: &Cell<u64>,
        fields: &mut LogFields,
    ) -> (u16, u64, Option<String>) {
        let mut version = SYNC_VERSION_ZSTD;
        // The user's slot outlives the reply, which may hold its lock.
        let mut slot = None;
        match self.process(&mut request, received, fields, &mut version, &mut slot) {
            Ok(reply) => {
                // The decoder stops at the end of the zstd frame; whatever
                // follows (at least the chunked terminator) must be read, or
                // the next request on this connection would start mid-body.
                drain(&mut request, self.config.max_body_bytes(), received);
                let (status, sent) = send_reply(request, reply, version);
                (status, sent, None)
            }
            Err(err) => {
                if err.body_is_drainable() {
                    drain(&mut request, self.config.max_body_bytes(), received);
                }
                let reply = err.reply();
                let mut response =
                    Response::from_string(reply.body).with_status_code(StatusCode(reply.status));
                if reply.status != 404 && reply.status != 405 {
                    response.add_header(header("Content-Type", "text/plain; charset=utf-8"));
                }
                if let Some(allow) = reply.allow {
                    response.add_header(header("Allow", allow));
                }
                let _ = request.respond(response);
                (reply.status, 0, Some(err.to_string()))
            }
        }
    }

    fn process<'s>(
        &'s self,
        request: &mut Request,
        received: &Cell<u64>,
        fields: &mut LogFields,
        version: &mut u8,
        slot: &'s mut Option<Arc<UserSlot>>,
    ) -> Result<Reply<'s>, HandlerError> {
        let verb = match request.method() {
            Method::Get => Verb::Get,
            Method::Head => Verb::Head,
            Method::Post => Verb::Post,
            _ => Verb::Other,
        };
        let route = route(verb, request.url(), &self.config.base_path)?;
        fields.route = Some(route);
        if route == Route::Health {
            return Ok(Reply::Empty);
        }
        if route == Route::Index {
            return Ok(Reply::Page(self.index_page(request)));
        }
        let limits = BodyLimits {
            compressed: self.config.max_body_bytes(),
            decompressed: match route {
                Route::Sync(m) if carries_small_json(m) => SMALL_JSON_LIMIT,
                _ => self.config.max_payload_bytes(),
            },
        };
        let sync_header = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("anki-sync"))
            .map(|h| h.value.as_str().to_string());
        let (header, mut body) = match sync_header {
            Some(value) => {
                let header = SyncHeader::parse(&value)?;
                let body = Body {
                    source: Source::Zstd(request),
                    received,
                    limits,
                };
                (header, body)
            }
            // No header: a client older than 2.1.57 (multipart + gzip).
            None => self.legacy_request(request, route, received, limits)?,
        };
        *version = header.version;
        fields.client = Some(header.client.clone());

        let users = self.current_users();
        if route == Route::HostKey {
            let login: LoginRequest = body.json()?;
            fields.user = Some(login.u.clone());
            // PBKDF2 runs here, on this request's own copy of the table: no lock is held.
            let account = users.login(&login.u, &login.p)?;
            let answer = serde_json::json!({ "key": account.hkey });
            return Ok(Reply::Bytes(answer.to_string().into_bytes()));
        }

        let account = users.by_hkey(&header.hkey)?;
        fields.user = Some(account.name.clone());
        let opened = self
            .store
            .open(&account.name)
            .or_internal(format!("preparing the folder of {}", account.name))?;
        let slot: &UserSlot = slot.insert(opened);

        match route {
            Route::Sync(method) => self.collection(method, &header, &mut body, slot),
            Route::Media(method) => self.media(method, &header, &mut body, slot),
            Route::Health | Route::Index | Route::HostKey => Ok(Reply::Empty),
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
                    error!("preparing the folder of new user {name}: {e}");
                }
            }
        }
        self.users.current()
    }

    /// `/sync/*` after login: decode, call the per-user layer, encode.
    /// What a person sees when opening the server's address in a browser:
    /// that it runs, and the exact URL to type into Anki. The scheme is the
    /// one a proxy in front says the client used, else ours: `https` with
    /// built-in HTTPS.
    fn index_page(&self, request: &Request) -> String {
        let host = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Host"))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_else(|| format!("{}:{}", self.config.host, self.config.port));
        let scheme = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Forwarded-Proto"))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_else(|| match self.config.tls {
                Some(_) => "https".into(),
                None => "http".into(),
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

    fn client_ip(&self, request: &Request) -> String {
        let peer = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "-".into());
        let Some(name) = self.config.ip_source.header() else {
            return peer;
        };
        let value = request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string());
        match value {
            // X-Forwarded-For lists hops; the rightmost is the one our proxy saw.
            Some(v) => v.rsplit(',').next().unwrap_or(&v).trim().to_string(),
            None => peer,
        }
    }
}

/// The index page's next step on a fresh install.
const NO_USERS_YET: &str = "\nThere are no users yet. On the server, add one with\n\n    sudo anki-sync-lite user add NAME\n\n(it asks for the password; no restart needed), or set SYNC_USER1=NAME:PASSWORD.\n";
/// Counts bytes read from the socket, for the log line.
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

/// Reads what is left of a body we are refusing (up to `max` bytes), so the
/// client gets our answer rather than a reset connection.
fn drain(request: &mut Request, max: u64, received: &Cell<u64>) {
    let mut counted = Counted {
        inner: request.as_reader().take(max),
        count: received,
    };
    let _ = io::copy(&mut counted, &mut io::sink());
}
