//! `GET /metrics` (issue 17, item 5): off unless `SYNC_METRICS` is set; with
//! it on, the counters move as the real client (Anki 26.9.3) logs in, uploads,
//! downloads, syncs changes and media, and agree exactly with the server's
//! own request log; the open-connections gauge follows sockets opened and
//! closed; no user name appears. Our server only: the official one has no
//! such page.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::http::Conn;
use crate::support::{Account, Server, client_ok};
use tempfile::TempDir;

const USER: &str = "metrics-person";

/// The page's samples: `name{labels}` (as written) -> value.
fn scrape(server: &Server) -> BTreeMap<String, u64> {
    let mut conn = Conn::open(server);
    let reply = conn.send("GET", "/metrics", &[], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let page = String::from_utf8(reply.body).unwrap();
    assert!(!page.contains(USER), "a user name in the page:\n{page}");
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn get(samples: &BTreeMap<String, u64>, name: &str) -> u64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {samples:#?}"))
}

fn sync_kind(samples: &BTreeMap<String, u64>, kind: &str) -> u64 {
    get(
        samples,
        &format!("anki_sync_syncs_total{{kind=\"{kind}\"}}"),
    )
}

fn requests(samples: &BTreeMap<String, u64>, route: &str, status: u16) -> u64 {
    let name = format!("anki_sync_requests_total{{route=\"{route}\",status=\"{status}\"}}");
    samples.get(&name).copied().unwrap_or(0)
}

/// Request log lines (route, status, in, out), in order.
fn logged_requests(server: &Server) -> Vec<(String, u16, u64, u64)> {
    server
        .log()
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            let at = words.iter().position(|w| w.starts_with("in="))?;
            let number = |w: &str| w.split_once('=').unwrap().1.parse::<u64>().unwrap();
            Some((
                words[at - 2].to_string(),
                words[at - 1].parse().ok()?,
                number(words[at]),
                number(words[at + 1]),
            ))
        })
        .collect()
}

/// Scrapes until the open-connections gauge reads `want` (connections
/// close asynchronously), or fails after a while with the last reading.
fn wait_for_open_connections(server: &Server, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The scrape's own connection is open while the page is made.
        let open = get(&scrape(server), "anki_sync_open_connections")
            .checked_sub(1)
            .expect("the scrape's own connection is not counted");
        if open == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections open besides the scrape, expected {want}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_are_off_unless_switched_on() {
    let server = Server::start_ours(&[(USER, "pass")], &[]);
    let mut conn = Conn::open(&server);
    assert_eq!(conn.send("GET", "/metrics", &[], b"").status, 404);
    let server = Server::start_ours(&[(USER, "pass")], &[("SYNC_METRICS", "0")]);
    let mut conn = Conn::open(&server);
    assert_eq!(conn.send("GET", "/metrics", &[], b"").status, 404);
}

#[test]
fn counters_move_with_real_syncs_and_match_the_log() {
    let server = Server::start_ours(
        &[(USER, "pass")],
        &[("SYNC_METRICS", "1"), ("RUST_LOG", "debug")],
    );
    let start = scrape(&server);
    for kind in ["full_upload", "full_download", "normal", "media"] {
        assert_eq!(sync_kind(&start, kind), 0, "{kind}");
    }
    assert_eq!(get(&start, "anki_sync_failed_logins_total"), 0);

    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a.anki2"), dir.path().join("b.anki2"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let wrong = Account {
        server: &server,
        user: USER,
        password: "wrong",
    };
    assert!(wrong.run("login", None).is_err());
    let user = Account {
        server: &server,
        user: USER,
        password: "pass",
    };
    client_ok(&["make", "--path", &path(&a), "--notes", "40"]);
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a)).unwrap();
    let after_upload = scrape(&server);
    assert_eq!(get(&after_upload, "anki_sync_failed_logins_total"), 1);
    assert_eq!(requests(&after_upload, "/sync/hostKey", 403), 1);
    assert_eq!(sync_kind(&after_upload, "full_upload"), 1);
    assert_eq!(requests(&after_upload, "/sync/upload", 200), 1);
    assert_eq!(sync_kind(&after_upload, "full_download"), 0);

    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    user.run("full-download", Some(&b)).unwrap();
    client_ok(&["add-notes", "--path", &path(&b), "--notes", "2"]);
    // A normal sync that sends changes; the next one finds none to send.
    assert_eq!(user.sync(&b), "NO_CHANGES");
    assert_eq!(user.sync(&a), "NO_CHANGES");
    let media = TempDir::new().unwrap();
    std::fs::write(media.path().join("one.txt"), b"media for metrics").unwrap();
    client_ok(&[
        "media-add",
        "--path",
        &path(&a),
        "--src",
        &path(media.path()),
    ]);
    user.run("media-sync", Some(&a)).unwrap();
    user.run("media-sync", Some(&b)).unwrap();

    let end = scrape(&server);
    assert_eq!(sync_kind(&end, "full_upload"), 1);
    assert_eq!(sync_kind(&end, "full_download"), 1);
    assert_eq!(requests(&end, "/sync/download", 200), 1);
    // b's sync sent changes (finish); a's pulled them (finish too).
    assert_eq!(sync_kind(&end, "normal"), 2);
    assert_eq!(requests(&end, "/sync/finish", 200), 2);
    assert_eq!(sync_kind(&end, "media"), 2);
    assert_eq!(requests(&end, "/msync/begin", 200), 2);
    assert_eq!(get(&end, "anki_sync_failed_logins_total"), 1);

    // Every request up to the last scrape is in the log with the same
    // route, status and byte counts (the last scrape's own line excluded).
    thread::sleep(Duration::from_millis(300));
    let mut logged = logged_requests(&server);
    let last_scrape = logged.iter().rposition(|r| r.0 == "/metrics").unwrap();
    logged.remove(last_scrape);
    let mut by_route: BTreeMap<String, u64> = BTreeMap::new();
    for (route, status, _, _) in &logged {
        let name = format!("anki_sync_requests_total{{route=\"{route}\",status=\"{status}\"}}");
        *by_route.entry(name).or_default() += 1;
    }
    let counted: BTreeMap<String, u64> = end
        .iter()
        .filter(|(name, _)| name.starts_with("anki_sync_requests_total{"))
        .map(|(n, v)| (n.clone(), *v))
        .collect();
    assert_eq!(counted, by_route);
    let received: u64 = logged.iter().map(|r| r.2).sum();
    let sent: u64 = logged.iter().map(|r| r.3).sum();
    assert_eq!(get(&end, "anki_sync_received_bytes_total"), received);
    assert_eq!(get(&end, "anki_sync_sent_bytes_total"), sent);
    // (the upload and the download are counted, compressed, in those)
    assert!(received > 4096 && sent > 4096, "{received} {sent}");
}

#[test]
fn open_connections_follow_sockets() {
    let server = Server::start_ours(&[(USER, "pass")], &[("SYNC_METRICS", "1")]);
    wait_for_open_connections(&server, 0);
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port())).unwrap())
        .collect();
    wait_for_open_connections(&server, 3);
    drop(idle);
    wait_for_open_connections(&server, 0);
}
