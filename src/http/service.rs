//! Handling one request from start to finish: route, framing, auth, the
//! user's lock, the protocol handler, the encoded answer and one log line.
//! Handlers are plain functions called from `process`, read top to bottom.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::error::HandlerError;
use super::framing::{self, BodyLimits, FramingError, SYNC_VERSION_ZSTD, SyncHeader};
use super::multipart::{self, LegacyForm};
use super::route::{MediaMethod, Route, RouteError, SyncMethod, Verb, route};
use super::spill::Spill;
use crate::auth::Users;
use crate::auth::live::LiveUsers;
use crate::backup;
use crate::budget::{self, Account, MemoryBudget};
use crate::collection::SyncError;
use crate::collection::changes;
use crate::collection::chunks;
use crate::collection::decode::DecodeError;
use crate::collection::full::{self, ReceiveError};
use crate::collection::graves;
use crate::collection::meta::{self, MetaContext, MetaRequest};
use crate::collection::sanity::{self, SanityRequest};
use crate::collection::state;
use crate::collection::unbury;
use crate::config::Config;
use crate::metrics::{self, Metrics, SyncKind};
use crate::user::{UserSlot, UserStore, now_millis};

/// Everything a worker needs; shared by all workers.
pub struct Service {
    pub config: Config,
    /// The accounts, reloaded when the users file changes.
    pub users: LiveUsers,
    pub store: UserStore,
    /// The memory all requests may use for decoded JSON bodies.
    pub budget: MemoryBudget,
    /// Counters for `/metrics`, kept whether or not the page is served.
    pub metrics: Metrics,
}

/// A successful answer, before encoding.
pub(super) enum Reply<'s> {
    /// `/health`: 200 with an empty body, never compressed.
    Empty,
    /// `/`: a plain-text page for people, never compressed.
    Page(String),
    /// `/metrics`: the Prometheus text format, never compressed.
    Metrics(String),
    Bytes(Vec<u8>),
    /// A file streamed from disk. `_hold` (typically a user's lock guard)
    /// lives until the last byte is sent, so nothing writes to the file
    /// meanwhile.
    File {
        file: File,
        len: u64,
        _hold: Box<dyn Held + 's>,
    },
}

fn json_reply<'s, T: serde::Serialize>(value: &T) -> Result<Reply<'s>, HandlerError> {
    Ok(Reply::Bytes(
        serde_json::to_vec(value).map_err(SyncError::from)?,
    ))
}

/// The answer of methods that return nothing.
fn json_null<'s>() -> Reply<'s> {
    Reply::Bytes(b"null".to_vec())
}

/// Anything kept alive while a reply is sent (lock guards, temp files).
pub(super) trait Held {}
impl<T> Held for T {}

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
        self.count(fields.route, status, received.get(), sent);
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
        if route == Route::Metrics {
            return match self.config.metrics {
                true => Ok(Reply::Metrics(self.metrics.render())),
                false => Err(RouteError::NotFound.into()),
            };
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
        if route == Route::Sync(SyncMethod::HostKey) {
            let login: LoginRequest = body.json()?;
            fields.user = Some(login.u.clone());
            // PBKDF2 runs here, on this request's own copy of the table: no lock is held.
            let account = users.login(&login.u, &login.p)?;
            let answer = serde_json::json!({ "key": account.hkey });
            return Ok(Reply::Bytes(answer.to_string().into_bytes()));
        }

        let account = users.by_hkey(&header.hkey)?;
        fields.user = Some(account.name.clone());
        let opened = self.store.open(&account.name).map_err(|e| {
            SyncError::Internal(format!("preparing the folder of {}: {e}", account.name))
        })?;
        let slot: &UserSlot = slot.insert(opened);

        match route {
            Route::Sync(method) => self.collection(method, &header, &mut body, slot),
            Route::Media(method) => self.media(method, &header, &mut body, slot),
            Route::Health | Route::Index | Route::Metrics => Ok(Reply::Empty),
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

    /// `/sync/*` after login, under the user's collection lock.
    fn collection<'s>(
        &'s self,
        method: SyncMethod,
        header: &SyncHeader,
        body: &mut Body<'_>,
        slot: &'s UserSlot,
    ) -> Result<Reply<'s>, HandlerError> {
        let name = slot.name.as_str();
        match method {
            SyncMethod::Meta => {
                let req: MetaRequest = body.json()?;
                let mut state = slot.lock();
                // A status check from any device ends a sync in progress, as upstream.
                state.abort_sync();
                let file_size = std::fs::metadata(state.collection_path())
                    .map(|m| m.len())
                    .unwrap_or(0);
                let col = state.collection()?;
                let ctx = MetaContext {
                    now_ms: now_millis(),
                    file_size,
                    max_payload_bytes: self.config.max_payload_bytes(),
                    media_usn: slot.media.usn()?,
                };
                let answer = meta::meta(col, &req, &ctx)?;
                Ok(Reply::Bytes(
                    serde_json::to_vec(&answer).map_err(SyncError::from)?,
                ))
            }
            SyncMethod::Upload => {
                let dir = {
                    let mut user = slot.lock();
                    user.abort_sync();
                    user.dir().to_path_buf()
                };
                let temp = match full::receive(&dir, &mut body.decoded()?) {
                    Ok(temp) => temp,
                    Err(ReceiveError::Body(e)) => {
                        return match FramingError::from_body_error(e) {
                            FramingError::TooLarge(limit) => {
                                warn!("upload from {name} refused: {limit}");
                                Ok(Reply::Bytes(full::UPLOAD_TOO_LARGE.into()))
                            }
                            other => Err(other.into()),
                        };
                    }
                    Err(ReceiveError::Disk(e)) => {
                        error!("upload from {name} could not be stored: {e}");
                        return Ok(Reply::Bytes(full::UPLOAD_NOT_STORED.into()));
                    }
                };
                if let Err(reason) = full::validate(&temp) {
                    warn!("upload from {name} rejected: {reason}");
                    return Ok(Reply::Bytes(full::UPLOAD_CORRUPT.into()));
                }
                let mut state = slot.lock();
                full::install(&mut state, temp)?;
                Ok(Reply::Bytes(full::UPLOAD_OK.into()))
            }
            SyncMethod::Download => {
                body.discard()?;
                slot.lock().abort_sync();
                if header.version < SYNC_VERSION_ZSTD {
                    let (file, len) =
                        full::prepare_legacy_download(&mut slot.lock(), now_millis())?;
                    return Ok(Reply::File {
                        file,
                        len,
                        _hold: Box::new(()),
                    });
                }
                let mut state = slot.lock();
                let (file, len) = full::prepare_download(&mut state, now_millis())?;
                Ok(Reply::File {
                    file,
                    len,
                    _hold: Box::new(state),
                })
            }
            SyncMethod::Abort => {
                body.discard()?;
                slot.lock().abort_sync();
                Ok(json_null())
            }
            SyncMethod::Start => {
                let account = self.account();
                let mut ours = None;
                let received = graves::receive_start(
                    body.decoded()?,
                    &account,
                    &mut |start| {
                        let mut user = slot.lock();
                        // Before the day's first incoming changes, so they can be undone.
                        backup::daily(&mut user);
                        state::begin(&mut user, &header.session, start.min_usn, start.lnewer)?;
                        let graves = state::step(&mut user, &header.session, |col, st| {
                            unbury::unbury_if_day_rolled_over(col, now_millis() / 1000)?;
                            // Ours first: the client's legacy graves must not echo back.
                            let graves = graves::since(col, st.client_usn)?;
                            st.sent += graves.len();
                            Ok(graves)
                        })?;
                        ours = Some(graves);
                        Ok(())
                    },
                    &mut |batch| {
                        state::step(&mut slot.lock(), &header.session, |col, st| {
                            st.received += batch.len();
                            graves::apply(col, batch, st.server_usn)
                        })
                    },
                );
                decoded(received, slot, &header.session)?;
                json_reply(&ours.unwrap_or_default())
            }
            SyncMethod::ApplyGraves => {
                let account = self.account();
                let received = graves::receive(body.decoded()?, &account, &mut |batch| {
                    state::step(&mut slot.lock(), &header.session, |col, st| {
                        st.received += batch.len();
                        graves::apply(col, batch, st.server_usn)
                    })
                });
                decoded(received, slot, &header.session)?;
                Ok(json_null())
            }
            SyncMethod::ApplyChanges => {
                // Our answer first, so the client never gets its own changes back.
                let answer = state::step(&mut slot.lock(), &header.session, |col, st| {
                    let answer = changes::server_changes(col, st)?;
                    st.sent += answer.len();
                    Ok(answer)
                })?;
                let now = now_millis() / 1000;
                let account = self.account();
                let received = changes::receive(body.decoded()?, &account, &mut |batch| {
                    state::step(&mut slot.lock(), &header.session, |col, st| {
                        st.received += batch.iter().filter(|c| c.is_object()).count();
                        changes::apply(col, st, batch, now)
                    })
                });
                decoded(received, slot, &header.session)?;
                json_reply(&answer)
            }
            SyncMethod::Chunk => {
                body.discard()?;
                let chunk = state::step(&mut slot.lock(), &header.session, |col, st| {
                    let chunk = chunks::next(col, st)?;
                    st.sent += chunk.len();
                    Ok(chunk)
                })?;
                json_reply(&chunk)
            }
            SyncMethod::ApplyChunk => {
                let account = self.account();
                let received = chunks::receive(body.decoded()?, &account, &mut |batch| {
                    state::step(&mut slot.lock(), &header.session, |col, st| {
                        st.received += batch.len();
                        chunks::apply(col, st, batch)
                    })
                });
                decoded(received, slot, &header.session)?;
                Ok(json_null())
            }
            SyncMethod::SanityCheck2 => {
                let req: SanityRequest = body.json()?;
                let mut user = slot.lock();
                let answer = state::step(&mut user, &header.session, |col, _| {
                    sanity::check(col, req.client)
                })?;
                if answer.status != "ok" {
                    warn!("user {name}: sanity check failed, sync rolled back: {answer:?}");
                    user.abort_sync();
                }
                json_reply(&answer)
            }
            SyncMethod::Finish => {
                body.discard()?;
                let done = state::finish(&mut slot.lock(), &header.session, now_millis())?;
                info!(
                    "user {name}: normal sync finished in {} ms, {} objects sent, {} received",
                    done.millis, done.sent, done.received
                );
                json_reply(&done.now_ms)
            }
            SyncMethod::HostKey => {
                Err(SyncError::Internal("login is handled before authentication".into()).into())
            }
        }
    }

    /// A request's account with the memory budget for decoded bodies.
    fn account(&self) -> Account<'_> {
        Account::new(&self.budget, budget::LIMITS)
    }

    /// Reads a legacy request: the whole multipart form (its `data` part kept
    /// in a [`Spill`]), or for `GET /msync/begin` the query string. Legacy
    /// requests count as protocol version 10, as upstream.
    fn legacy_request<'r>(
        &self,
        request: &'r mut Request,
        route: Route,
        received: &'r Cell<u64>,
        limits: BodyLimits,
    ) -> Result<(SyncHeader, Body<'r>), HandlerError> {
        let mut header = SyncHeader {
            version: LEGACY_VERSION,
            hkey: String::new(),
            client: String::new(),
            session: String::new(),
        };
        if request.method() == &Method::Get {
            // Only `/msync/begin` routes a GET here: `?k=HKEY&v=VERSION`.
            let query = request.url().split_once('?').map(|(_, q)| q).unwrap_or("");
            header.hkey = query_param(query, "k").unwrap_or_default();
            let client = query_param(query, "v");
            header.client = client.clone().unwrap_or_default();
            let body = Body {
                source: Source::Bytes(begin_payload(client)),
                received,
                limits,
            };
            return Ok((header, body));
        }
        let content_type = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Type"))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_default();
        let boundary = multipart::boundary(&content_type)?;
        let mut data = Spill::new(&self.config.base.join(SPILL_DIR));
        let counted = Counted {
            inner: request.as_reader(),
            count: received,
        };
        let form_limits = multipart::FormLimits {
            body: limits.compressed,
            data: limits.compressed,
        };
        let form = multipart::read_form(counted, &boundary, &mut data, form_limits)?;
        header.hkey = form.hkey().unwrap_or_default().to_string();
        header.session = form.s.clone().unwrap_or_default();
        header.client = form.v.clone().unwrap_or_default();
        let source = if route == Route::Media(MediaMethod::Begin) {
            // Upstream puts the form's `v` into begin's JSON.
            Source::Bytes(begin_payload(form.v.clone()))
        } else {
            Source::Legacy { form, data }
        };
        Ok((
            header,
            Body {
                source,
                received,
                limits,
            },
        ))
    }

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

    /// A request's share of the counters: its route and status, its bytes,
    /// and what a successful (or refused) answer of its route means.
    fn count(&self, route: Option<Route>, status: u16, received: u64, sent: u64) {
        let m = &self.metrics;
        let label = route.map_or_else(|| metrics::UNMATCHED.to_string(), |r| r.to_string());
        m.request(&label, status, received, sent);
        match (route, status) {
            (Some(Route::Sync(SyncMethod::Upload)), 200) => m.sync_done(SyncKind::FullUpload),
            (Some(Route::Sync(SyncMethod::Download)), 200) => m.sync_done(SyncKind::FullDownload),
            // A normal sync that exchanged changes ends with `finish`.
            (Some(Route::Sync(SyncMethod::Finish)), 200) => m.sync_done(SyncKind::Normal),
            // Every media sync begins so; one with nothing to do ends there.
            (Some(Route::Media(MediaMethod::Begin)), 200) => m.sync_done(SyncKind::Media),
            (Some(Route::Sync(SyncMethod::HostKey)), 403) => m.failed_login(),
            _ => {}
        }
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

/// The outcome of decoding a normal-sync body. A body that broke off or was
/// malformed ends the sync it belonged to, as a failed step does (the
/// batches applied before it are rolled back with it).
fn decoded<T>(
    result: Result<T, DecodeError>,
    slot: &UserSlot,
    session: &str,
) -> Result<T, HandlerError> {
    result.map_err(|e| {
        if !matches!(e, DecodeError::Apply(_)) {
            state::abort_owned(&mut slot.lock(), session);
        }
        match e {
            DecodeError::Body(e) => FramingError::from_body_error(e).into(),
            DecodeError::Shape(m) => SyncError::BadRequest(format!("request json: {m}")).into(),
            DecodeError::TooLarge(m) => FramingError::ItemTooLarge(m).into(),
            DecodeError::Apply(e) => e.into(),
        }
    })
}

/// The index page's next step on a fresh install.
const NO_USERS_YET: &str = "\nThere are no users yet. On the server, add one with\n\n    sudo anki-sync-lite user add NAME\n\n(it asks for the password; no restart needed), or set SYNC_USER1=NAME:PASSWORD.\n";

/// Decompressed budget of methods whose bodies are a few bytes of JSON, so a
/// bomb aimed at them cannot grow a huge JSON string in memory.
const SMALL_JSON_LIMIT: u64 = 1024 * 1024;

fn carries_small_json(method: SyncMethod) -> bool {
    !matches!(
        method,
        SyncMethod::Upload
            | SyncMethod::Start
            | SyncMethod::ApplyGraves
            | SyncMethod::ApplyChanges
            | SyncMethod::ApplyChunk
    )
}

/// The request body, read at most once, through the byte budgets.
pub(super) struct Body<'r> {
    source: Source<'r>,
    received: &'r Cell<u64>,
    limits: BodyLimits,
}

/// Where a request's payload comes from.
enum Source<'r> {
    /// Current clients: one zstd frame, read from the socket as it arrives.
    Zstd(&'r mut Request),
    /// Legacy clients: the form's `data` part, already read, maybe gzip.
    Legacy { form: LegacyForm, data: Spill },
    /// A payload built here (legacy media `begin`).
    Bytes(Vec<u8>),
}

impl Body<'_> {
    pub(super) fn decoded(&mut self) -> Result<Box<dyn Read + '_>, HandlerError> {
        match &mut self.source {
            Source::Zstd(request) => {
                let counted = Counted {
                    inner: request.as_reader(),
                    count: self.received,
                };
                framing::zstd_body(counted, self.limits)
                    .map_err(|e| FramingError::from_body_error(e).into())
            }
            Source::Legacy { form, data } => {
                let saved = data.reader().map_err(SyncError::from)?;
                Ok(multipart::payload(form, saved, self.limits.decompressed))
            }
            Source::Bytes(bytes) => Ok(Box::new(&bytes[..])),
        }
    }

    /// Parses the body as JSON, as it streams in.
    pub(super) fn json<T: DeserializeOwned>(&mut self) -> Result<T, HandlerError> {
        parse_json(self.decoded()?, "request json")
    }

    /// Reads and ignores the body (methods whose body carries nothing).
    pub(super) fn discard(&mut self) -> Result<(), HandlerError> {
        io::copy(&mut self.decoded()?, &mut io::sink())
            .map(|_| ())
            .map_err(|e| FramingError::from_body_error(e).into())
    }
}

/// Parses JSON from a decoded body. serde_json reads a stream one byte at a
/// time, so the body goes through a buffer: otherwise every byte would be a
/// call into the zstd (or gzip) decoder and the limit readers beneath it.
pub(super) fn parse_json<T: DeserializeOwned>(
    body: impl Read,
    what: &str,
) -> Result<T, HandlerError> {
    serde_json::from_reader(BufReader::with_capacity(JSON_BUFFER, body)).map_err(|e| {
        if e.is_io() {
            FramingError::from_body_error(io::Error::from(e)).into()
        } else {
            SyncError::BadRequest(format!("{what}: {e}")).into()
        }
    })
}

const JSON_BUFFER: usize = 32 * 1024;

/// Every multipart request is taken to be protocol version 10, as upstream.
const LEGACY_VERSION: u8 = 10;
/// Folder under `SYNC_BASE` for legacy form data too large to keep in memory.
pub const SPILL_DIR: &str = ".spill";

/// `{"v": VERSION}`, or `{}` without a version (which begin refuses).
fn begin_payload(client: Option<String>) -> Vec<u8> {
    match client {
        Some(v) => serde_json::json!({ "v": v }).to_string().into_bytes(),
        None => b"{}".to_vec(),
    }
}

/// A percent-decoded query parameter (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts bytes read from the socket, for the log line.
struct Counted<'a, R> {
    inner: R,
    count: &'a Cell<u64>,
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

/// Encodes a successful reply: zstd with `anki-original-size` for v11
/// clients, plain for older ones. Returns status and payload size.
fn send_reply(request: Request, reply: Reply<'_>, version: u8) -> (u16, u64) {
    let zstd = version >= SYNC_VERSION_ZSTD;
    let result = match reply {
        Reply::Empty => {
            request.respond(Response::empty(200).with_header(header("Content-Length", "0")))
        }
        Reply::Page(text) => request.respond(
            Response::from_string(text)
                .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        ),
        Reply::Metrics(text) => request.respond(
            Response::from_string(text).with_header(header("Content-Type", metrics::CONTENT_TYPE)),
        ),
        Reply::Bytes(bytes) => {
            let len = bytes.len() as u64;
            let result = if zstd {
                match framing::compress(&bytes) {
                    Ok(compressed) => {
                        let size = compressed.len();
                        request.respond(Response::new(
                            StatusCode(200),
                            vec![header("anki-original-size", &len.to_string())],
                            Cursor::new(compressed),
                            Some(size),
                            None,
                        ))
                    }
                    Err(e) => Err(e),
                }
            } else {
                let size = bytes.len();
                request.respond(Response::new(
                    StatusCode(200),
                    vec![header("Content-Type", "application/octet-stream")],
                    Cursor::new(bytes),
                    Some(size),
                    None,
                ))
            };
            return (200, if result.is_ok() { len } else { 0 });
        }
        Reply::File { file, len, _hold } => {
            let source = BufReader::with_capacity(64 * 1024, file);
            let result = if zstd {
                match framing::compress_stream(source) {
                    Ok(stream) => request.respond(Response::new(
                        StatusCode(200),
                        vec![header("anki-original-size", &len.to_string())],
                        stream,
                        None,
                        None,
                    )),
                    Err(e) => Err(e),
                }
            } else {
                request.respond(Response::new(
                    StatusCode(200),
                    vec![header("Content-Type", "application/octet-stream")],
                    source,
                    usize::try_from(len).ok(),
                    None,
                ))
            };
            if let Err(e) = &result {
                warn!("sending a collection failed: {e}");
            }
            return (200, len);
        }
    };
    if let Err(e) = result {
        debug!("sending a response failed: {e}");
    }
    (200, 0)
}

/// Builds a header from our own constant names and ASCII values.
fn header(name: &'static str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values built here are plain ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        let q = "k=abc%2Fd&v=ankidesktop%2C2.1.56+(x)%2Clinux&bad=%zz%4";
        assert_eq!(query_param(q, "k").as_deref(), Some("abc/d"));
        assert_eq!(
            query_param(q, "v").as_deref(),
            Some("ankidesktop,2.1.56 (x),linux")
        );
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(percent_decode("é%C3%A9"), "éé");
    }

    #[test]
    fn begin_payload_carries_the_version() {
        assert_eq!(begin_payload(Some("a,b".into())), br#"{"v":"a,b"}"#);
        assert_eq!(begin_payload(None), b"{}");
    }
}
