//! Requests from clients older than 2.1.57 (sync v8–10): the multipart form
//! of every method, or the query string of `GET /msync/begin`, turned into
//! the same header and body a current client sends.

use super::body::{Body, Source};
use super::dispatch::Incoming;
use super::error::HandlerError;
use super::framing::{BodyLimits, SyncHeader};
use super::multipart;
use super::route::{MediaMethod, Route, Verb};
use super::service::Service;
use super::spill::{self, Spill};
use crate::layout::SPILL_DIR;
use crate::protocol::LEGACY_VERSION;

impl Service {
    /// Reads a legacy request: the whole multipart form (its `data` part kept
    /// in a [`Spill`]), or for `GET /msync/begin` the query string. Legacy
    /// requests count as protocol version 10, as upstream.
    pub(super) fn legacy_request<'r>(
        &self,
        req: &'r mut Incoming<'_>,
        route: Route,
        limits: BodyLimits,
    ) -> Result<(SyncHeader, Body<'r>), HandlerError> {
        let mut header = SyncHeader {
            version: LEGACY_VERSION,
            hkey: String::new(),
            client: String::new(),
            session: String::new(),
        };
        if req.verb == Verb::Get {
            // Only `/msync/begin` routes a GET here: `?k=HKEY&v=VERSION`.
            let query = req.url.split_once('?').map(|(_, q)| q).unwrap_or("");
            header.hkey = query_param(query, "k").unwrap_or_default();
            let client = query_param(query, "v");
            header.client = client.clone().unwrap_or_default();
            let body = Body {
                source: Source::Bytes(begin_payload(client)),
                limits,
            };
            return Ok((header, body));
        }
        let boundary = multipart::boundary(req.header("Content-Type").unwrap_or_default())?;
        let mut data = Spill::new(&self.config.base.join(SPILL_DIR));
        // Data that comes before a known key stays in memory, unless the
        // address authenticated lately (a legacy client sends its key last).
        let unauthenticated = if self.recent.vouched(req.client) {
            limits.compressed
        } else {
            spill::MEMORY_LIMIT as u64
        };
        let form_limits = multipart::FormLimits {
            body: limits.compressed,
            data: unauthenticated.min(limits.compressed),
        };
        let users = self.users.current();
        // A good key before the data lifts the limit; an unknown one keeps
        // the data in memory (it may not be the last `k`, which wins, as
        // upstream; the final key is checked after the form).
        let mut gate = |key: &str| match users.by_hkey(key) {
            Ok(_) => limits.compressed,
            Err(_) => (spill::MEMORY_LIMIT as u64).min(limits.compressed),
        };
        let form = multipart::read_form_gated(
            &mut *req.body,
            &boundary,
            &mut data,
            form_limits,
            &mut gate,
        )?;
        header.hkey = form.hkey().unwrap_or_default().to_string();
        header.session = form.s.clone().unwrap_or_default();
        header.client = form.v.clone().unwrap_or_default();
        let source = if route == Route::Media(MediaMethod::Begin) {
            // Upstream puts the form's `v` into begin's JSON.
            Source::Bytes(begin_payload(form.v.clone()))
        } else {
            Source::Legacy { form, data }
        };
        Ok((header, Body { source, limits }))
    }
}

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
