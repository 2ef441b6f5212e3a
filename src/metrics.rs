//! Counters for `GET /metrics` (Prometheus text format), when
//! `SYNC_METRICS` is set: requests by route and status, completed syncs by
//! kind, bytes in and out, open connections and failed logins.
//!
//! Nothing in them names a user or a client address: the HTTP layer gives
//! one of its fixed route names (anything else counts as [`UNMATCHED`]), so
//! the number of series is bounded whatever clients send. The page is
//! unauthenticated, which is why it is off unless switched on (README,
//! "Metrics").
//!
//! Counting is a few relaxed atomic additions per request and one short
//! lock for the (route, status) table; it happens whether or not the page
//! is on, so the request path has no branch for it. Which answers count as
//! a sync or a failed login is the HTTP layer's call (`http::service`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What kind of sync finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    FullUpload,
    FullDownload,
    Normal,
    Media,
}

impl SyncKind {
    const ALL: [SyncKind; 4] = [
        SyncKind::FullUpload,
        SyncKind::FullDownload,
        SyncKind::Normal,
        SyncKind::Media,
    ];

    fn label(self) -> &'static str {
        match self {
            SyncKind::FullUpload => "full_upload",
            SyncKind::FullDownload => "full_download",
            SyncKind::Normal => "normal",
            SyncKind::Media => "media",
        }
    }
}

/// The route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The page's media type: Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
pub struct Metrics {
    /// route -> status -> requests answered.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    syncs: [AtomicU64; 4],
    received: AtomicU64,
    sent: AtomicU64,
    failed_logins: AtomicU64,
    open_connections: AtomicUsize,
}

impl Metrics {
    /// One answered request: `route` is one of a fixed set of route names
    /// (or [`UNMATCHED`]), never text a client chose; the byte counts are
    /// body bytes as logged.
    pub fn request(&self, route: &str, status: u16, received: u64, sent: u64) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if !requests.contains_key(route) {
            requests.insert(route.to_string(), BTreeMap::new());
        }
        if let Some(statuses) = requests.get_mut(route) {
            *statuses.entry(status).or_insert(0) += 1;
        }
        drop(requests);
        self.received.fetch_add(received, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
    }

    pub fn sync_done(&self, kind: SyncKind) {
        self.syncs[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed_login(&self) {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
    }

    /// The connections open now, as the HTTP server last counted them.
    pub fn set_open_connections(&self, open: usize) {
        self.open_connections.store(open, Ordering::Relaxed);
    }

    /// The page.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        family(
            &mut out,
            "anki_sync_requests_total",
            "counter",
            "Requests answered, by route and HTTP status.",
        );
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for (route, statuses) in requests.iter() {
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "anki_sync_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        drop(requests);
        family(
            &mut out,
            "anki_sync_syncs_total",
            "counter",
            "Syncs by kind: full_upload, full_download, normal (ended with changes), media (begun).",
        );
        for kind in SyncKind::ALL {
            let n = self.syncs[kind as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "anki_sync_syncs_total{{kind=\"{}\"}} {n}",
                kind.label()
            );
        }
        let counters = [
            (
                "anki_sync_received_bytes_total",
                "Request body bytes received (as sent, before decompression).",
                &self.received,
            ),
            (
                "anki_sync_sent_bytes_total",
                "Response body bytes sent.",
                &self.sent,
            ),
            (
                "anki_sync_failed_logins_total",
                "Logins refused for a wrong user name or password.",
                &self.failed_logins,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        family(
            &mut out,
            "anki_sync_open_connections",
            "gauge",
            "Client connections open now.",
        );
        let open = self.open_connections.load(Ordering::Relaxed);
        let _ = writeln!(out, "anki_sync_open_connections {open}");
        out
    }
}

/// A metric family's `# HELP` and `# TYPE` lines, which precede its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.request("/sync/meta", 200, 40, 180);
        m.request("/sync/meta", 200, 40, 180);
        m.request("/sync/hostKey", 403, 30, 0);
        m.request(UNMATCHED, 404, 0, 0);
        m.sync_done(SyncKind::Normal);
        m.sync_done(SyncKind::Media);
        m.sync_done(SyncKind::Media);
        m.failed_login();
        m.set_open_connections(3);
        let page = m.render();
        for line in [
            "# TYPE anki_sync_requests_total counter",
            "anki_sync_requests_total{route=\"/sync/meta\",status=\"200\"} 2",
            "anki_sync_requests_total{route=\"/sync/hostKey\",status=\"403\"} 1",
            "anki_sync_requests_total{route=\"unmatched\",status=\"404\"} 1",
            "anki_sync_syncs_total{kind=\"full_upload\"} 0",
            "anki_sync_syncs_total{kind=\"normal\"} 1",
            "anki_sync_syncs_total{kind=\"media\"} 2",
            "anki_sync_received_bytes_total 110",
            "anki_sync_sent_bytes_total 360",
            "anki_sync_failed_logins_total 1",
            "# TYPE anki_sync_open_connections gauge",
            "anki_sync_open_connections 3",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "{line} missing from:\n{page}"
            );
        }
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.iter().any(|d| d == name), "{line}");
            }
        }
    }
}
