//! The HTTP surface through [`Service::dispatch`], without a socket: routes,
//! statuses, framing, login, full and normal sync, as a client sees them.
//! (What needs a real socket or process stays in `tests/it`: keep-alive,
//! slow clients, memory.)

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::auth::live::LiveUsers;
use crate::budget::{self, MemoryBudget};
use crate::config::Config;
use crate::http::login::{Admission, LoginTurn};
use crate::user::UserStore;

/// sha1("user:pass"), the host key of the one test user.
pub(crate) const HKEY: &str = "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d";

pub(crate) fn service_with(base: &Path, extra: &[(&str, &str)]) -> Service {
    let mut env: HashMap<String, String> = [
        ("SYNC_USER1", "user:pass"),
        ("SYNC_BASE", base.to_str().unwrap()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("HOME".into(), base.to_str().unwrap().into());
    let config = Config::from_env(&env).unwrap();
    let users =
        LiveUsers::load(config.users.clone(), config.passwords_hashed, &config.base).unwrap();
    let store = UserStore::new(&config.base, users.current().names()).unwrap();
    Service {
        config,
        users,
        store,
        budget: MemoryBudget::new(budget::POOL_BYTES, budget::PATIENCE),
        recent: Default::default(),
        metrics: Default::default(),
        throttle: crate::auth::throttle::Throttle::default(),
    }
}

/// An answer as a client reads it.
#[derive(Debug)]
pub(crate) struct Got {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub close: bool,
    pub log: LogFields,
    /// Request body bytes the server left unread.
    pub unread: usize,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The payload of a v11 answer (zstd, with `anki-original-size`).
    pub fn payload(&self) -> Vec<u8> {
        assert_eq!(
            self.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let out = zstd::decode_all(&self.body[..]).unwrap();
        assert_eq!(
            self.header("anki-original-size"),
            Some(out.len().to_string().as_str())
        );
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload()).unwrap()
    }
}

pub(crate) fn send(
    service: &Service,
    verb: Verb,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    send_from(service, "192.0.2.1", verb, url, headers, body)
}

/// Like [`send`], from the client address `client`.
pub(crate) fn send_from(
    service: &Service,
    client: &str,
    verb: Verb,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    send_with(service, client, LoginTurn::Check, verb, url, headers, body)
}

/// The address requests come from unless a test says otherwise.
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// Like [`send_from`], with the login throttle's verdict `login`.
fn send_with(
    service: &Service,
    client: &str,
    login: LoginTurn,
    verb: Verb,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    // As tiny_http hands requests over: a body has its framing header.
    if !body.is_empty() && !headers.iter().any(|(n, _)| n == "Transfer-Encoding") {
        headers.push(("Content-Length".into(), body.len().to_string()));
    }
    let mut reader = body;
    let scope = Scope::default();
    let answer = service.dispatch(
        Incoming {
            verb,
            client,
            url,
            headers: &headers,
            body: &mut reader,
            address: client.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            login,
        },
        &scope,
    );
    let unread = reader.len();
    let Answer {
        status,
        headers,
        mut body,
        len,
        close,
        log,
    } = answer;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes).unwrap();
    if let Some(len) = len {
        assert_eq!(len, bytes.len() as u64, "announced length");
    }
    drop(body);
    assert_eq!(scope.sent(), bytes.len() as u64, "the log's out= figure");
    Got {
        status,
        headers,
        body: bytes,
        close,
        log,
        unread,
    }
}

pub(crate) fn header_for(hkey: &str, session: &str) -> String {
    format!(r#"{{"v":11,"k":"{hkey}","c":"test,1,linux","s":"{session}"}}"#)
}

/// A v11 request: zstd body, `anki-sync` header with session `s`.
pub(crate) fn call(service: &Service, method: &str, session: &str, payload: &[u8]) -> Got {
    let header = header_for(HKEY, session);
    send(
        service,
        Verb::Post,
        method,
        &[("anki-sync", &header)],
        &zstd::encode_all(payload, 3).unwrap(),
    )
}

fn meta(service: &Service) -> serde_json::Value {
    call(service, "/sync/meta", "s", br#"{"v":11,"cv":"x"}"#).json()
}

#[test]
fn health_routes_and_methods() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let get = |url: &str| send(&s, Verb::Get, url, &[("Host", "test")], b"");
    let r = get("/health");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(get("//health").status, 200);
    // People open the address in a browser: tell them what to type into Anki.
    let page = String::from_utf8(get("/").body).unwrap();
    assert!(page.contains("is running"), "{page}");
    assert!(page.contains("http://test/"), "{page}");
    assert_eq!(get("/nothing").status, 404);
    let r = get("/sync/meta");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    for (url, name) in [("/sync/nosuch", "nosuch"), ("/sync/Meta", "Meta")] {
        let r = send(&s, Verb::Post, url, &[], b"");
        let expected = format!("Invalid URL: unknown method {name:?}");
        assert_eq!((r.status, r.body.as_slice()), (400, expected.as_bytes()));
    }
}

/// Issue 17: `/metrics` is there only when switched on, in the Prometheus
/// text format, under the base path (the counting itself is `service`'s,
/// tested with the real client in tests/it/metrics.rs).
#[test]
fn metrics_page_only_when_switched_on() {
    let base = tempfile::tempdir().unwrap();
    let off = service_with(base.path(), &[]);
    assert_eq!(send(&off, Verb::Get, "/metrics", &[], b"").status, 404);
    let on = service_with(
        base.path(),
        &[("SYNC_METRICS", "1"), ("SYNC_BASE_PATH", "/anki/")],
    );
    on.metrics.request("/sync/meta", 200, 10, 20);
    let r = send(&on, Verb::Get, "/anki/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(crate::metrics::CONTENT_TYPE));
    let page = String::from_utf8(r.body).unwrap();
    assert!(
        page.contains("\nanki_sync_requests_total{route=\"/sync/meta\",status=\"200\"} 1\n"),
        "{page}"
    );
    assert_eq!(send(&on, Verb::Post, "/metrics", &[], b"").status, 405);
}

#[test]
fn login_then_meta_of_a_brand_new_user() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let login = |body: &[u8]| {
        let header = header_for("", "");
        send(
            &s,
            Verb::Post,
            "/sync/hostKey",
            &[("anki-sync", &header)],
            &zstd::encode_all(body, 3).unwrap(),
        )
    };
    let r = login(br#"{"u":"user","p":"pass"}"#);
    assert_eq!(r.payload(), format!(r#"{{"key":"{HKEY}"}}"#).as_bytes());
    assert_eq!(r.log.user.as_deref(), Some("user"));
    for body in [
        &br#"{"u":"user","p":"wrong"}"#[..],
        br#"{"u":"nobody","p":"pass"}"#,
    ] {
        let r = login(body);
        assert_eq!((r.status, r.body.as_slice()), (403, &b"403"[..]));
        assert_eq!(r.header("anki-original-size"), None);
    }
    // A brand-new user: mod 0, usn 0, empty, and a stable scm.
    let first = meta(&s);
    assert_eq!(
        (
            &first["mod"],
            &first["usn"],
            &first["empty"],
            &first["cont"]
        ),
        (&0.into(), &0.into(), &true.into(), &true.into())
    );
    assert_eq!(first["media_usn"], 0);
    assert_eq!(first["scm"], meta(&s)["scm"]);
    // Protocol version in the body out of range: 501 "client too old".
    assert_eq!(
        call(&s, "/sync/meta", "s", br#"{"v":7,"cv":"x"}"#).status,
        501
    );
}

#[test]
fn bad_requests_get_clear_statuses_and_their_cause_is_logged() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    // Unknown host key.
    let header = header_for("0000", "s");
    let r = send(
        &s,
        Verb::Post,
        "/sync/meta",
        &[("anki-sync", &header)],
        &zstd::encode_all(&b"{}"[..], 3).unwrap(),
    );
    assert_eq!((r.status, r.body.as_slice()), (403, &b"403"[..]));
    assert_eq!(r.log.cause.as_deref(), Some("invalid hkey"));
    // Garbage instead of zstd.
    let header = header_for(HKEY, "s");
    let r = send(
        &s,
        Verb::Post,
        "/sync/meta",
        &[("anki-sync", &header)],
        b"this is not zstd at all",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.log
            .cause
            .as_deref()
            .unwrap()
            .starts_with("decoding request body"),
        "{:?}",
        r.log
    );
    // Malformed header JSON, a missing key, an unsupported version.
    for h in [
        "{not json".to_string(),
        r#"{"v":11,"k":"","c":""}"#.to_string(),
        format!(r#"{{"v":12,"k":"{HKEY}","c":"x","s":"y"}}"#),
    ] {
        let body = zstd::encode_all(&b"{}"[..], 3).unwrap();
        let r = send(&s, Verb::Post, "/sync/meta", &[("anki-sync", &h)], &body);
        assert_eq!(r.status, 400, "{h}");
    }
    // Valid zstd, invalid JSON.
    let r = call(&s, "/sync/meta", "s", b"{\"v\":");
    assert_eq!(r.status, 400);
    assert!(
        r.log.cause.as_deref().unwrap().starts_with("request json"),
        "{:?}",
        r.log
    );
}

#[test]
fn corrupt_uploads_leave_the_old_collection_intact() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    // Take the server's fresh collection, mark it, and upload it back.
    let original = call(&s, "/sync/download", "s", br#"{"_pad":null}"#).payload();
    assert!(original.starts_with(b"SQLite format 3\0"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("marked.anki2");
    std::fs::write(&path, &original).unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("update col set crt = 12345", []).unwrap();
        conn.execute_batch("pragma journal_mode = delete").unwrap();
    }
    let marked = std::fs::read(&path).unwrap();
    assert_eq!(call(&s, "/sync/upload", "s", &marked).payload(), b"OK");

    let corrupt = b"Your upload was corrupt. Please use Check Database, or restore from backup.";
    let mut header_only = marked.clone();
    header_only[100..].fill(0);
    for bad in [
        &[7u8; 10_000][..],
        &marked[..marked.len() / 2],
        &header_only,
        b"",
    ] {
        assert_eq!(call(&s, "/sync/upload", "s", bad).payload(), corrupt);
    }
    // The marked collection is still what the server serves.
    let served = call(&s, "/sync/download", "s", br#"{"_pad":null}"#).payload();
    std::fs::write(&path, &served).unwrap();
    let conn = crate::storage::open(&path).unwrap();
    let crt: i64 = conn
        .query_row("select crt from col", [], |r| r.get(0))
        .unwrap();
    assert_eq!(crt, 12345);
    let integrity: String = conn
        .query_row("pragma quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    // Nothing temporary is left beside it.
    let names: Vec<String> = std::fs::read_dir(base.path().join("user"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn session_keys_and_a_failed_sanity_check_roll_back() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let usn = meta(&s)["usn"].as_i64().unwrap();
    let start = format!(r#"{{"minUsn":{usn},"lnewer":true,"graves":null}}"#);
    let pad = br#"{"_pad":null}"#;
    // Stateful methods need a session key, and the one that started.
    assert_eq!(call(&s, "/sync/start", "", start.as_bytes()).status, 400);
    assert_eq!(call(&s, "/sync/chunk", "s1", pad).status, 409);
    assert_eq!(
        call(&s, "/sync/start", "s1", start.as_bytes()).payload(),
        br#"{"cards":[],"notes":[],"decks":[]}"#
    );
    assert_eq!(call(&s, "/sync/chunk", "other", pad).status, 409);
    // A revlog entry goes in, then the counts disagree: "bad", and rolled back.
    let chunk = br#"{"chunk":{"done":true,"revlog":[[1700000000000,1,0,3,1,0,2500,1000,1]]}}"#;
    assert_eq!(call(&s, "/sync/applyChunk", "s1", chunk).payload(), b"null");
    let sanity = call(
        &s,
        "/sync/sanityCheck2",
        "s1",
        br#"{"client":[[0,0,0],5,5,5,0,5,5,5]}"#,
    )
    .json();
    assert_eq!(sanity["status"], "bad");
    assert_eq!(call(&s, "/sync/finish", "s1", pad).status, 409);
    assert_eq!(call(&s, "/sync/abort", "whatever", pad).payload(), b"null");
    // Nothing was kept: a new sync from scratch sees no revlog at all.
    call(
        &s,
        "/sync/start",
        "s2",
        br#"{"minUsn":0,"lnewer":true,"graves":null}"#,
    )
    .payload();
    let sent = call(&s, "/sync/chunk", "s2", pad).json();
    assert!(sent.get("revlog").is_none(), "{sent}");
    // meta from another device ends the sync in progress.
    meta(&s);
    assert_eq!(call(&s, "/sync/chunk", "s2", pad).status, 409);
}

#[test]
fn what_a_handler_leaves_unread_is_drained_before_the_answer() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    // A zstd frame, then bytes the decoder never reads (less than the
    // 64 KiB drained after a request with a good key).
    let mut body = zstd::encode_all(&br#"{"v":11,"cv":"x"}"#[..], 3).unwrap();
    body.extend(std::iter::repeat_n(0u8, 60_000));
    let header = header_for(HKEY, "s");
    let r = send(
        &s,
        Verb::Post,
        "/sync/meta",
        &[("anki-sync", &header)],
        &body,
    );
    assert_eq!(r.status, 200);
    assert_eq!((r.unread, r.close), (0, false));
}

/// Issue 14, item 2: after a refusal only a little of a chunked body is
/// read (its end, a form's epilogue), so an honest client that sent a wrong
/// password keeps its connection; a longer rest closes it, unread, so no
/// worker waits for a slow client without a good key.
#[test]
fn a_refused_body_is_read_only_a_little() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let header = header_for("0000", "s");
    let headers = [
        ("anki-sync", header.as_str()),
        ("Transfer-Encoding", "chunked"),
    ];
    let r = send(&s, Verb::Post, "/sync/meta", &headers, &[1u8; 600]);
    assert_eq!((r.status, r.unread, r.close), (403, 0, false));
    let r = send(&s, Verb::Post, "/sync/upload", &headers, &[1u8; 100_000]);
    assert_eq!((r.status, r.close), (403, true));
    assert!(r.unread > 100_000 - 2048, "{} unread", r.unread);
}

/// A login is a few bytes of JSON: a body that decompresses to more is
/// refused at the small-JSON budget, not parsed up to the payload limit.
#[test]
fn a_login_bomb_hits_the_small_json_budget() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let mut json = br#"{"u":""#.to_vec();
    json.extend(std::iter::repeat_n(b'a', 2 << 20));
    json.extend_from_slice(br#"","p":"pass"}"#);
    let header = header_for("", "");
    let body = zstd::encode_all(&json[..], 3).unwrap();
    let r = send(
        &s,
        Verb::Post,
        "/sync/hostKey",
        &[("anki-sync", &header)],
        &body,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.log
            .cause
            .as_deref()
            .unwrap()
            .contains("larger than the limit of 1048576"),
        "{:?}",
        r.log
    );
}

/// Issue 14, item 1: the session and the sync state are checked before a
/// step's body is read or decoded, so a step without its sync costs nothing
/// but a 409 (before, a malformed body was decoded first: 400).
#[test]
fn a_step_without_its_sync_is_refused_before_its_body_is_decoded() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let garbage = b"{\"chunk\": [not json";
    for method in ["applyChunk", "applyGraves", "applyChanges", "sanityCheck2"] {
        let url = format!("/sync/{method}");
        let r = call(&s, &url, "s1", garbage);
        assert_eq!(r.status, 409, "{method}: {:?}", r.log);
        assert_eq!(r.log.cause.as_deref(), Some("no active sync"), "{method}");
    }
    call(
        &s,
        "/sync/start",
        "s1",
        br#"{"minUsn":0,"lnewer":true,"graves":null}"#,
    )
    .payload();
    let r = call(&s, "/sync/applyChunk", "s2", garbage);
    assert_eq!(r.status, 409);
    // The owner's malformed body is decoded, refused, and ends its sync.
    assert_eq!(call(&s, "/sync/applyChunk", "s1", garbage).status, 400);
    assert_eq!(
        call(&s, "/sync/chunk", "s1", br#"{"_pad":null}"#).status,
        409
    );
}

/// Issue 14, item 2: one user streams at most `MAX_UPLOADS` uploads at once;
/// another gets 429 before its body is read.
#[test]
fn one_user_runs_a_bounded_number_of_uploads_at_once() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let slot = s.store.slot("user").unwrap();
    let held: Vec<_> = (0..crate::user::MAX_UPLOADS)
        .map(|_| slot.upload_permit().unwrap())
        .collect();
    for url in ["/sync/upload", "/msync/uploadChanges"] {
        let r = call(&s, url, "s", &[7u8; 10_000]);
        assert_eq!(r.status, 429, "{url}: {:?}", r.log);
    }
    drop(held);
    let corrupt = b"Your upload was corrupt. Please use Check Database, or restore from backup.";
    assert_eq!(
        call(&s, "/sync/upload", "s", &[7u8; 10_000]).payload(),
        corrupt
    );
}

/// A legacy (pre-2.1.57) form: `fields` in order, `data` where `data_at`
/// says (the Python client sent it last, the Rust one first).
fn legacy_form(fields: &[(&str, &str)], data: &[u8], data_first: bool) -> Vec<u8> {
    let b = "Anki-sync-boundary";
    let data_part = |out: &mut Vec<u8>| {
        out.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data\"\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    };
    let mut out = Vec::new();
    if data_first {
        data_part(&mut out);
    }
    for (name, value) in fields {
        out.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    if !data_first {
        data_part(&mut out);
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    out
}

const FORM_TYPE: &str = "multipart/form-data; boundary=Anki-sync-boundary";

/// Issue 14, item 7: a legacy form's data is not stored before its key is
/// known. An unknown key sent before the data keeps it in memory, up to
/// 256 KiB (refused there, the rest unread, nothing written); data sent
/// before its key (as 2.1.56 does) stays in memory the same way, unless the
/// client's address authenticated lately. (Before, the whole form went to
/// `.spill` first.)
#[test]
fn legacy_form_data_waits_for_its_key() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let spill = base.path().join(crate::layout::SPILL_DIR);
    let big = [7u8; 1 << 20];
    let headers = [("Content-Type", FORM_TYPE)];
    // The Python client's order: the key first.
    let form = legacy_form(&[("k", "0000"), ("c", "0")], &big, false);
    let r = send(&s, Verb::Post, "/sync/upload", &headers, &form);
    assert_eq!((r.status, r.close), (400, true), "{:?}", r.log);
    assert!(
        r.unread > big.len() / 2,
        "{} of the form read",
        form.len() - r.unread
    );
    assert!(!spill.exists());
    // 2.1.56's order, data first, from an address never seen: refused at
    // 256 KiB, in memory.
    let mut meta = br#"{"v":10,"cv":"ankidesktop,2.1.56"}"#.to_vec();
    meta.splice(1..1, std::iter::repeat_n(b' ', 300 * 1024));
    let form = legacy_form(&[("c", "0"), ("k", HKEY)], &meta, true);
    let r = send_from(
        &s,
        "198.51.100.7",
        Verb::Post,
        "/sync/meta",
        &headers,
        &form,
    );
    assert_eq!(r.status, 400, "{:?}", r.log);
    assert!(
        r.log.cause.as_deref().unwrap().contains("262144"),
        "{:?}",
        r.log
    );
    assert!(!spill.exists());
    // The same form from an address that just logged in goes through.
    call(&s, "/sync/meta", "s", br#"{"v":11,"cv":"x"}"#).payload();
    let r = send(&s, Verb::Post, "/sync/meta", &headers, &form);
    assert_eq!(r.status, 200, "{:?}", r.log);
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["cont"], true);
    // A good key first lifts the limit whatever the address.
    let form = legacy_form(&[("k", HKEY), ("c", "0")], &meta, false);
    let r = send_from(&s, "203.0.113.9", Verb::Post, "/sync/meta", &headers, &form);
    assert_eq!(r.status, 200, "{:?}", r.log);
}

/// Issue 14 item 4: one user's requests hold at most half the workers.
/// Beyond that the user gets a prompt 409 (the client: "only one copy of
/// Anki can sync to your account at once"), before the body is read, while
/// other users are served as usual.
#[test]
fn one_user_gets_a_prompt_409_beyond_their_share_of_the_workers() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(
        base.path(),
        &[("SYNC_WORKERS", "6"), ("SYNC_USER2", "bob:pw")],
    );
    assert_eq!(crate::user::max_requests(6), 3);
    let slot = s.store.open("user").unwrap();
    let held: Vec<_> = (0..3).map(|_| slot.enter(3).unwrap()).collect();
    for (url, body) in [
        ("/sync/meta", &br#"{"v":11,"cv":"x"}"#[..]),
        ("/sync/download", br#"{"_pad":null}"#),
        ("/msync/begin", br#"{"v":"x"}"#),
    ] {
        let r = call(&s, url, "s", body);
        assert_eq!((r.status, r.body.as_slice()), (409, &b"409"[..]), "{url}");
        assert!(
            r.log
                .cause
                .as_deref()
                .unwrap()
                .contains("3 requests of user"),
            "{:?}",
            r.log
        );
    }
    let bob = crate::auth::host_key("bob", "pw");
    let header = header_for(&bob, "s");
    let r = send(
        &s,
        Verb::Post,
        "/sync/meta",
        &[("anki-sync", &header)],
        &zstd::encode_all(&br#"{"v":11,"cv":"x"}"#[..], 3).unwrap(),
    );
    assert_eq!(r.status, 200, "another user is served");
    drop(held);
    assert_eq!(meta(&s)["cont"], true);
    // A request's place is given back once its answer has been sent.
    for _ in 0..5 {
        assert_eq!(meta(&s)["cont"], true);
    }
}

/// A client sends its next request the moment it has read an answer, so a
/// request's place among the user's is given back with the answer's last
/// byte, not after: before the connection writes it, and before the log
/// line (CI once saw `sanityCheck2` refused with 409 because four answered
/// requests still waited to log).
#[test]
fn a_requests_place_is_given_back_with_its_answers_last_byte() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let slot = s.store.open("user").unwrap();
    let header = header_for(HKEY, "s");
    let headers = [
        ("anki-sync".to_string(), header),
        ("Content-Length".to_string(), "0".to_string()),
    ];
    let is_free = || slot.enter(1).is_ok();
    for (url, payload) in [
        ("/sync/meta", &br#"{"v":11,"cv":"x"}"#[..]),
        ("/sync/download", br#"{"_pad":null}"#),
    ] {
        let body = zstd::encode_all(payload, 3).unwrap();
        let mut headers = headers.clone();
        headers[1].1 = body.len().to_string();
        let mut reader = &body[..];
        let scope = Scope::default();
        let mut answer = s.dispatch(
            Incoming {
                verb: Verb::Post,
                client: "127.0.0.1",
                url,
                headers: &headers,
                body: &mut reader,
                address: CLIENT,
                login: LoginTurn::Check,
            },
            &scope,
        );
        assert_eq!(answer.status, 200, "{url}: {:?}", answer.log);
        assert!(!is_free(), "{url}: held while the answer is unread");
        let mut got = Vec::new();
        match answer.len {
            Some(len) => {
                let mut all_but_last = vec![0; len as usize - 1];
                answer.body.read_exact(&mut all_but_last).unwrap();
                assert!(!is_free(), "{url}: held before the last byte");
                let mut last = [0u8; 1];
                answer.body.read_exact(&mut last).unwrap();
                got.extend(all_but_last.into_iter().chain(last));
            }
            None => {
                answer.body.read_to_end(&mut got).unwrap();
            }
        }
        assert!(is_free(), "{url}: given back with the last byte");
        assert_eq!(scope.sent(), got.len() as u64);
        assert!(!got.is_empty(), "{url}");
    }
}

/// Issue 14 item 10: failed logins count per address; after a burst, the
/// address's next login waits its turn (the worker pool parks it), and a
/// refused one gets 429 with `Retry-After` before its body is read. A
/// correct login from elsewhere is never held back; one from the address
/// itself clears its record.
#[test]
fn failed_logins_are_throttled_per_address() {
    let base = tempfile::tempdir().unwrap();
    let s = service_with(base.path(), &[]);
    let attacker: IpAddr = "203.0.113.9".parse().unwrap();
    let login = |client: IpAddr, turn: LoginTurn, body: &[u8]| {
        let header = header_for("", "");
        send_with(
            &s,
            &client.to_string(),
            turn,
            Verb::Post,
            "/sync/hostKey",
            &[("anki-sync", &header)],
            &zstd::encode_all(body, 3).unwrap(),
        )
    };
    let wrong = br#"{"u":"user","p":"guess"}"#;
    let right = br#"{"u":"user","p":"pass"}"#;
    let checked_now = |client: IpAddr| {
        matches!(
            s.login_turn(client, std::time::Instant::now()),
            Admission::Now(LoginTurn::Check)
        )
    };
    for _ in 0..crate::auth::throttle::FREE_FAILURES + 1 {
        assert!(checked_now(attacker));
        assert_eq!(login(attacker, LoginTurn::Check, wrong).status, 403);
    }
    assert!(matches!(
        s.login_turn(attacker, std::time::Instant::now()),
        Admission::WaitUntil(_)
    ));
    assert!(checked_now(CLIENT));
    assert_eq!(login(CLIENT, LoginTurn::Check, right).status, 200);

    let refused = login(
        attacker,
        LoginTurn::Refused(std::time::Duration::from_millis(29_500)),
        right,
    );
    assert_eq!(
        (refused.status, refused.body.as_slice()),
        (429, &b"429"[..])
    );
    assert_eq!(refused.header("Retry-After"), Some("29"));
    assert_eq!(refused.log.user, None, "refused before its body was read");
    // A wrong host key is not a guess at a password: not counted.
    let stale = header_for("0123456789abcdef0123456789abcdef01234567", "s");
    for _ in 0..10 {
        let r = send(
            &s,
            Verb::Post,
            "/sync/meta",
            &[("anki-sync", &stale)],
            &zstd::encode_all(&br#"{"v":11,"cv":"x"}"#[..], 3).unwrap(),
        );
        assert_eq!(r.status, 403);
    }
    assert!(checked_now(CLIENT));
    assert_eq!(login(attacker, LoginTurn::Check, right).status, 200);
    assert!(checked_now(attacker));
}
