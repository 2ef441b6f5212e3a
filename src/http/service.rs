//! The socket side of a request: reads what the dispatch needs from a
//! tiny_http request, writes its answer back, and logs one line. Everything
//! between (route, framing, auth, the handler) is `dispatch`, which needs
//! no socket.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use log::{debug, error, info, warn};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::dispatch::{Counted, Incoming, LogFields, Scope};
use super::route::{Route, Verb};
use crate::auth::live::LiveUsers;
use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::user::UserStore;

/// Everything a worker needs; shared by all workers.
pub struct Service {
    pub config: Config,
    /// The accounts, reloaded when the users file changes.
    pub users: LiveUsers,
    pub store: UserStore,
    /// The memory all requests may use for decoded JSON bodies.
    pub budget: MemoryBudget,
}

impl Service {
    /// Handles one request completely. Never panics outward: a panic in a
    /// handler becomes a 500 for that request only.
    pub fn handle(&self, request: Request) {
        let started = Instant::now();
        let url = request.url().to_string();
        let ip = self.client_ip(&request);
        let received = Cell::new(0u64);
        let scope = Scope::default();
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.respond(request, &received, &scope)
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
        let ms = started.elapsed().as_millis();
        let what = log.route.map(|r| r.to_string()).unwrap_or(url);
        let line = format!(
            "{ip} {} {} {what} {status} in={} out={} {ms}ms{}",
            log.user.as_deref().unwrap_or("-"),
            log.client.as_deref().unwrap_or("-"),
            received.get(),
            scope.sent(),
            log.cause.map(|c| format!(" ({c})")).unwrap_or_default(),
        );
        match (log.route, status) {
            (Some(Route::Health | Route::Index), 200) => debug!("{line}"),
            (_, 500..) => error!("{line}"),
            (_, 400..) => warn!("{line}"),
            _ => info!("{line}"),
        }
    }

    /// Dispatches and writes the answer; returns its status and what the
    /// log line says.
    fn respond(
        &self,
        mut request: Request,
        received: &Cell<u64>,
        scope: &Scope,
    ) -> (u16, LogFields) {
        let verb = match request.method() {
            Method::Get => Verb::Get,
            Method::Head => Verb::Head,
            Method::Post => Verb::Post,
            _ => Verb::Other,
        };
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
                url: &url,
                headers: &headers,
                body: &mut body,
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

/// Builds a header from our own constant names and ASCII values.
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values built here are plain ASCII")
}
