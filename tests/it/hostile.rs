//! Slow and hostile clients (issues 8 and 14), on raw sockets: trickled
//! headers and bodies are cut off, idle connections and connections beyond
//! the caps do not stop service, connections opened in a burst are each
//! served at once, request framing that a proxy could read
//! another way is refused, oversized headers are refused, and requests
//! arriving during shutdown get a clean answer. Each test keeps the worker
//! pool small so that a single pinned worker would show.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::support::http::{Conn, HKEY, call, sync_header, zstd};

const LOGIN: &[u8] = br#"{"u":"user","p":"pass"}"#;

fn start(env: &[(&str, &str)]) -> Server {
    Server::start_ours(&[("user", "pass")], env)
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// A `/health` request on a new connection; its status and how long it took.
fn health(server: &Server) -> (u16, Duration) {
    let started = Instant::now();
    let mut c = Conn::open(server);
    let r = c.send("GET", "/health", &[], b"");
    (r.status, started.elapsed())
}

/// Reads until the server closes: the status line (empty if none came) and
/// the whole answer.
fn read_until_closed(stream: &mut TcpStream) -> (String, String) {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let all = String::from_utf8_lossy(&all).into_owned();
    (all.lines().next().unwrap_or("").to_string(), all)
}

/// Headers of a v11 login with a chunked body, as Anki sends it.
fn login_head() -> String {
    format!(
        "POST /sync/hostKey HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nanki-sync: {}\r\n\r\n",
        sync_header("")
    )
}

#[test]
fn trickled_headers_are_cut_off_without_blocking_others() {
    let s = start(&[("SYNC_WORKERS", "1"), ("SYNC_HEADER_TIMEOUT_SECS", "2")]);
    // Four clients send their headers one byte every 300 ms (an 80-byte
    // request line alone would take 24 s).
    let started = Instant::now();
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = connect(&s);
            thread::spawn(move || {
                let head = login_head();
                for byte in head.as_bytes() {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(300));
                }
                read_until_closed(&mut stream)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let (status, took) = health(&s);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "health took {took:?}");
    for t in tricklers {
        let (line, _) = t.join().unwrap();
        assert!(line.starts_with("HTTP/1.1 408"), "{line:?}");
    }
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(8),
        "cut off after {took:?}"
    );
}

#[test]
fn a_new_connection_that_sends_nothing_is_closed_after_the_header_deadline() {
    let s = start(&[("SYNC_HEADER_TIMEOUT_SECS", "1")]);
    let mut stream = connect(&s);
    let started = Instant::now();
    let (line, _) = read_until_closed(&mut stream);
    assert_eq!(line, "", "no answer to a request never started");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}

#[test]
fn oversized_headers_are_refused_with_431() {
    let s = start(&[]);
    // One huge header.
    let mut stream = connect(&s);
    let big = "x".repeat(20 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let (line, all) = read_until_closed(&mut stream);
    assert!(line.starts_with("HTTP/1.1 431"), "{line:?}");
    assert!(
        all.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
    // Too many small ones.
    let mut stream = connect(&s);
    let mut request = String::from("GET /health HTTP/1.1\r\nHost: t\r\n");
    for i in 0..150 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let (line, _) = read_until_closed(&mut stream);
    assert!(line.starts_with("HTTP/1.1 431"), "{line:?}");
    // Normal requests with normal headers still work.
    assert_eq!(health(&s).0, 200);
}

/// Sends a login's headers and then its body one byte a second; returns the
/// thread, which yields what the server answered before closing.
fn trickle_body(server: &Server) -> thread::JoinHandle<(String, Duration)> {
    let mut stream = connect(server);
    thread::spawn(move || {
        let started = Instant::now();
        stream.write_all(login_head().as_bytes()).unwrap();
        let body = zstd(LOGIN);
        let _ = write!(stream, "{:x}\r\n", body.len());
        for byte in body {
            if stream.write_all(&[byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        let (line, _) = read_until_closed(&mut stream);
        (line, started.elapsed())
    })
}

#[test]
fn trickled_bodies_are_cut_off_and_free_their_workers() {
    let s = start(&[("SYNC_WORKERS", "2"), ("SYNC_READ_TIMEOUT_SECS", "2")]);
    // More slow bodies than workers: two hold the workers, one waits.
    let tricklers: Vec<_> = (0..3).map(|_| trickle_body(&s)).collect();
    thread::sleep(Duration::from_millis(500));
    // A normal login must get through once the slow ones are cut off
    // (after the 2 s minimum-rate window), not after their ~30 s bodies.
    let started = Instant::now();
    let mut c = Conn::open(&s);
    let r = call(&mut c, "hostKey", "", LOGIN);
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(8), "normal login took {took:?}");
    for t in tricklers {
        let (line, took) = t.join().unwrap();
        assert!(took < Duration::from_secs(10), "trickler lasted {took:?}");
        assert!(
            !line.starts_with("HTTP/1.1 200"),
            "a trickled login succeeded"
        );
    }
    assert!(
        s.log().contains("minimum rate") || s.log().contains("read timeout"),
        "{}",
        s.log()
    );
}

/// `SYNC_WORKERS` bounds the requests handled at once, whether on the
/// connection's own thread or on a worker: with one place, held by a slow
/// body, a second request waits its turn (and is then served), it is not
/// handled beside it.
#[test]
fn requests_beyond_the_workers_wait_for_a_place() {
    let s = start(&[("SYNC_WORKERS", "1"), ("SYNC_READ_TIMEOUT_SECS", "2")]);
    let trickler = trickle_body(&s);
    thread::sleep(Duration::from_millis(500));
    let (status, took) = health(&s);
    assert_eq!(status, 200);
    // The trickle is cut off by the 2 s minimum-rate window, 2 s after it
    // began, so the health check waited at least about 1.5 s.
    assert!(
        took >= Duration::from_millis(1200),
        "handled beside the slow body: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let (line, _) = trickler.join().unwrap();
    assert!(!line.starts_with("HTTP/1.1 200"), "{line}");
}

/// The tests of the global cap open all their connections from 127.0.0.1:
/// lift the per-address cap for them.
const ANY_PER_IP: (&str, &str) = ("SYNC_MAX_CONNECTIONS_PER_IP", "10000");

#[test]
fn many_idle_connections_within_the_cap_do_not_stop_service() {
    let s = start(&[
        ("SYNC_WORKERS", "2"),
        ("SYNC_MAX_CONNECTIONS", "256"),
        ANY_PER_IP,
    ]);
    let idle: Vec<_> = (0..200).map(|_| connect(&s)).collect();
    thread::sleep(Duration::from_millis(300));
    let (status, took) = health(&s);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "health took {took:?}");
    drop(idle);
}

#[test]
fn idle_connections_beyond_the_cap_make_room_for_new_ones() {
    let s = start(&[
        ("SYNC_WORKERS", "2"),
        ("SYNC_MAX_CONNECTIONS", "16"),
        ANY_PER_IP,
    ]);
    let idle: Vec<_> = (0..200).map(|_| connect(&s)).collect();
    // A new connection that has sent nothing gets a second before a
    // newcomer may take its place (meanwhile newcomers get a 503, or are
    // just closed while many wait for theirs).
    thread::sleep(GRACE);
    for _ in 0..3 {
        let started = Instant::now();
        while health_line(&s) != "HTTP/1.1 200 OK" {
            assert!(started.elapsed() < Duration::from_secs(20), "no room made");
            thread::sleep(Duration::from_millis(100));
        }
    }
    drop(idle);
}

/// tiny_http patch 14: connections opened in a burst are each read at
/// once. Before it, two connections accepted in quick succession could both
/// be queued for one waiting connection thread, and the second was read only
/// when another connection ended (a real client timed out logging in). Each
/// burst is larger than the last, so it finds the threads of the previous
/// one waiting, and more connections than them.
#[test]
fn connections_opened_in_a_burst_are_each_served_at_once() {
    let s = start(&[("SYNC_MAX_CONNECTIONS", "1024"), ANY_PER_IP]);
    for round in 0..16 {
        let burst = 8 + 4 * round;
        let mut streams: Vec<TcpStream> = (0..burst).map(|_| connect(&s)).collect();
        for stream in &mut streams {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
        }
        // Every connection stays open until all are answered, as a client's
        // keep-alive connections do: a stranded one would wait for good.
        for (n, stream) in streams.iter().enumerate() {
            let mut line = String::new();
            let _ = BufReader::new(stream).read_line(&mut line);
            assert!(
                line.starts_with("HTTP/1.1 200"),
                "burst of {burst}, connection {n}: {line:?} within 5 s"
            );
        }
    }
}

/// The status line of a `/health` on a new connection ("" if none came).
fn health_line(server: &Server) -> String {
    let mut stream = connect(server);
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    read_until_closed(&mut stream).0
}

/// Opens a connection and sends the start of a request head, which it
/// never finishes unless the test does (a slowloris client).
fn start_head(server: &Server) -> TcpStream {
    let mut stream = connect(server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    stream
}

/// Finishes a head `start_head` began; returns the answer's status line.
fn finish_head(stream: &mut TcpStream) -> String {
    stream.write_all(b"\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&*stream).read_line(&mut line).unwrap();
    line
}

/// Waits until the server has read all that was sent on `stream` (its side's
/// receive queue in /proc/net/tcp is empty): only then does a connection
/// count as started on its request. A loaded machine can take seconds to get
/// there, as the accept thread may take a whole backlog at once.
fn wait_until_read(stream: &TcpStream) {
    let hex = |addr: std::net::SocketAddr| match addr {
        std::net::SocketAddr::V4(a) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            )
        }
        std::net::SocketAddr::V6(_) => panic!("IPv4 loopback expected"),
    };
    // The server's side of the connection: from the server, to us.
    let key = format!(
        "{} {}",
        hex(stream.peer_addr().unwrap()),
        hex(stream.local_addr().unwrap())
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = table.lines().find(|l| l.contains(&key)).map(|line| {
            let queues = line.split_whitespace().nth(4).unwrap();
            let rx = queues.split(':').nth(1).unwrap();
            u64::from_str_radix(rx, 16).unwrap()
        });
        if queued == Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "the server never read {key}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A new connection or a request head is only closed for a newcomer once it
/// is a second old.
const GRACE: Duration = Duration::from_millis(1200);

#[test]
fn at_the_cap_the_connection_furthest_behind_on_its_head_makes_room() {
    // Issue 14, item 3: connections that had started a request were never
    // evicted, so slow heads at the cap got everyone else a 503.
    let s = start(&[
        ("SYNC_WORKERS", "2"),
        ("SYNC_MAX_CONNECTIONS", "4"),
        ("SYNC_HEADER_TIMEOUT_SECS", "30"),
    ]);
    let mut oldest = start_head(&s);
    wait_until_read(&oldest);
    thread::sleep(Duration::from_millis(300));
    let mut younger: Vec<_> = (0..3).map(|_| start_head(&s)).collect();
    younger.iter().for_each(wait_until_read);
    thread::sleep(GRACE);
    // A fifth connection is served...
    let (status, took) = health(&s);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(5), "health took {took:?}");
    // ...in place of the oldest head, which is closed without an answer...
    let (line, _) = read_until_closed(&mut oldest);
    assert_eq!(line, "", "the evicted connection gets no answer");
    // ...while the others finish their requests normally.
    for stream in &mut younger {
        let line = finish_head(stream);
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    }
    assert!(s.log().contains("on its request head"), "{}", s.log());
}

/// A new connection's `/health` gets a prompt `503` with `Connection: close`.
fn assert_refused(server: &Server) {
    let started = Instant::now();
    let mut extra = connect(server);
    extra.write_all(HEALTH).unwrap();
    let (line, all) = read_until_closed(&mut extra);
    assert!(line.starts_with("HTTP/1.1 503"), "{line:?}");
    assert!(all.contains("Connection: close"), "{all}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn one_address_cannot_take_every_connection() {
    // Issue 14, item 3: the per-address cap (all test connections come from
    // 127.0.0.1; the unit tests in vendor/tiny_http show other addresses
    // being served meanwhile).
    let s = start(&[
        ("SYNC_WORKERS", "2"),
        ("SYNC_MAX_CONNECTIONS_PER_IP", "4"),
        ("SYNC_HEADER_TIMEOUT_SECS", "30"),
    ]);
    let mut heads: Vec<_> = (0..4).map(|_| start_head(&s)).collect();
    heads.iter().for_each(wait_until_read);
    // (old enough heads, which the address's cap must not close either)
    thread::sleep(GRACE);
    assert_refused(&s);
    assert!(
        s.log().contains("127.0.0.1 already has 4 open connections"),
        "{}",
        s.log()
    );
    // The address's own connections are not harmed, and once they close
    // the address is served again.
    for stream in &mut heads {
        let line = finish_head(stream);
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    }
    drop(heads);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(health(&s).0, 200);
}

#[test]
fn connections_busy_with_requests_at_the_cap_get_new_ones_a_503_and_finish() {
    let s = start(&[("SYNC_WORKERS", "4"), ("SYNC_MAX_CONNECTIONS", "4")]);
    // Four logins whose handlers wait for their bodies (each asked for it
    // with a `100 Continue`): none of them can be closed for a newcomer.
    let head = login_head().replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    let mut busy: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = connect(&s);
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    for stream in &mut busy {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).unwrap();
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 100 Continue\r\n"), "{answer}");
    }
    // A fifth gets a quick, clean 503.
    assert_refused(&s);
    // The four finish their logins normally.
    let body = zstd(LOGIN);
    for stream in &mut busy {
        write!(stream, "{:x}\r\n", body.len()).unwrap();
        stream.write_all(&body).unwrap();
        stream.write_all(b"\r\n0\r\n\r\n").unwrap();
        let mut line = String::new();
        BufReader::new(&*stream).read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    }
    drop(busy);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(health(&s).0, 200, "slots are freed when connections close");
}

/// Sends `raw` (and keeps the connection open); returns what the server
/// answered, and whether it then closed the connection (`false`: it waited
/// for more, up to the 20 s read timeout of `connect`).
fn exchange(server: &Server, raw: &[u8]) -> (String, bool) {
    let mut stream = connect(server);
    stream.write_all(raw).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&all).into_owned(), closed)
}

/// The status codes in a run of answers.
fn statuses(answers: &str) -> Vec<&str> {
    answers
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| &answer[..3])
        .collect()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn framing_a_proxy_could_read_another_way_gets_400_and_a_close() {
    // Issue 14, item 8 (RFC 9112 §6.3): each of these was accepted, with the
    // connection kept open for what the server took as the next request.
    let s = start(&[]);
    for (head, why) in [
        (
            "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "more than one Content-Length",
        ),
        (
            "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3abc\r\n\r\nabc",
            "an invalid Content-Length",
        ),
        (
            "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\
             Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n",
            "a Transfer-Encoding other than chunked",
        ),
        (
            "POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\nabc",
            "a Transfer-Encoding other than chunked",
        ),
    ] {
        let (answers, closed) = exchange(&s, &[head.as_bytes(), HEALTH].concat());
        assert_eq!(statuses(&answers), ["400"], "{why}: {answers}");
        assert!(
            answers.contains("Connection: close\r\n"),
            "{why}: {answers}"
        );
        assert!(closed, "{why}: the connection was kept open");
        assert!(
            s.log().contains(&format!("the request had {why}")),
            "{}",
            s.log()
        );
    }
}

#[test]
fn non_ascii_header_bytes_get_400() {
    let s = start(&[]);
    let (answers, closed) = exchange(
        &s,
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n\r\n",
    );
    assert_eq!(statuses(&answers), ["400"], "{answers}");
    assert!(closed);
}

/// A v11 login with a chunked body given as is (`body`), then `after`.
fn login_with_body(body: &[u8], after: &[u8]) -> Vec<u8> {
    [login_head().as_bytes(), body, after].concat()
}

#[test]
fn a_request_pipelined_after_a_chunked_body_is_answered() {
    let s = start(&[]);
    let login = zstd(LOGIN);
    // With a chunk extension and a trailer field, both of which RFC 9112
    // allows and which used to derail the next request.
    let body = [
        format!("{:x};note=x\r\n", login.len()).as_bytes(),
        &login,
        b"\r\n0\r\nX-Checksum: 1\r\n\r\n",
    ]
    .concat();
    let mut stream = connect(&s);
    stream.write_all(&login_with_body(&body, HEALTH)).unwrap();
    let mut reader = BufReader::new(stream);
    let (status, payload) = read_reply(&mut reader);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let payload = ::zstd::decode_all(&payload[..]).unwrap();
    assert!(String::from_utf8_lossy(&payload).contains(HKEY));
    let (status, _) = read_reply(&mut reader);
    assert_eq!(status, "HTTP/1.1 200 OK", "the pipelined /health");
}

/// One answer with a `Content-Length`: its status line and body.
fn read_reply(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status.trim_end().to_string(), body)
}

#[test]
fn a_malformed_chunk_size_gets_400() {
    let s = start(&[]);
    let started = Instant::now();
    let (answers, closed) = exchange(&s, &login_with_body(b"zz\r\nabc\r\n0\r\n\r\n", HEALTH));
    assert_eq!(statuses(&answers), ["400"], "{answers}");
    assert!(answers.contains("Connection: close\r\n"), "{answers}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(10));
    // (the request's log line may come a moment after its answer)
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("malformed chunked body") {
        assert!(Instant::now() < deadline, "{}", s.log());
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_absolute_form_request_target_is_served() {
    let s = start(&[]);
    let mut conn = Conn::open(&s);
    let r = conn.send(
        "POST",
        &format!("http://127.0.0.1:{}/sync/hostKey", s.port()),
        &[("anki-sync", &sync_header(""))],
        &zstd(LOGIN),
    );
    assert!(String::from_utf8_lossy(&r.payload()).contains(HKEY));
}

#[test]
fn requests_arriving_during_shutdown_get_a_clean_503() {
    let mut s = start(&[("SYNC_WORKERS", "2")]);
    // A keep-alive connection that has already made a request.
    let mut keep = Conn::open(&s);
    assert_eq!(keep.send("GET", "/health", &[], b"").status, 200);
    // A login in progress: headers and half of its body sent.
    let mut in_flight = connect(&s);
    in_flight.write_all(login_head().as_bytes()).unwrap();
    let body = zstd(LOGIN);
    let (first, rest) = body.split_at(body.len() / 2);
    write!(in_flight, "{:x}\r\n", first.len()).unwrap();
    in_flight.write_all(first).unwrap();
    in_flight.write_all(b"\r\n").unwrap();
    thread::sleep(Duration::from_millis(300));

    let pid = s.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    thread::sleep(Duration::from_millis(600));

    // A new request on the open connection: 503 and `Connection: close`.
    let r = keep.send("GET", "/health", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Connection"), Some("close"));
    // A new connection: the same.
    let mut fresh = connect(&s);
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (line, _) = read_until_closed(&mut fresh);
    assert!(line.starts_with("HTTP/1.1 503"), "{line:?}");
    // The login in progress finishes normally.
    write!(in_flight, "{:x}\r\n", rest.len()).unwrap();
    in_flight.write_all(rest).unwrap();
    in_flight.write_all(b"\r\n0\r\n\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&in_flight).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    let status = s.terminate().expect("server exits");
    assert!(status.success(), "{status}\n{}", s.log());
}

#[test]
fn answers_do_not_name_the_server_software() {
    let s = start(&[]);
    let r = Conn::open(&s).send("GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Server"), None);
}

/// Issue 14, item 2: a request with a bad key is answered before its body
/// is read, and a worker never waits for the rest (before, every error
/// drained the body up to the payload limit, so eight slow bodies with a bad
/// key held every worker and every login timed out).
#[test]
fn slow_bodies_with_a_bad_key_hold_no_worker() {
    let s = start(&[("SYNC_WORKERS", "2")]);
    let head = format!(
        "POST /sync/upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nanki-sync: {}\r\n\r\n",
        sync_header("0000")
    );
    // Twice as many as there are workers, each fast enough for the minimum
    // rate (2 KiB/s) and long (20 s).
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = connect(&s);
            let head = head.clone();
            thread::spawn(move || {
                stream.write_all(head.as_bytes()).unwrap();
                let chunk = [7u8; 2048];
                for _ in 0..20 {
                    let sent = write!(stream, "{:x}\r\n", chunk.len())
                        .and_then(|()| stream.write_all(&chunk))
                        .and_then(|()| stream.write_all(b"\r\n"));
                    if sent.is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_secs(1));
                }
                let _ = stream.shutdown(Shutdown::Write);
                read_until_closed(&mut stream).0
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut c = Conn::open(&s);
    let r = call(&mut c, "hostKey", "", LOGIN);
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(5), "a login took {took:?}");
    for t in tricklers {
        let line = t.join().unwrap();
        assert!(line.starts_with("HTTP/1.1 403"), "{line:?}");
    }
}
