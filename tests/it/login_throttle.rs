//! Issue 14 item 10 and issue 17 item 1: password guessing over real
//! sockets. Before, about 3,000 wrong-password logins a second ran over one
//! connection. Now, after a burst of five, an address's password checks are
//! spaced out (a login waits its turn without holding a worker, or gets 429),
//! a correct login from another address is answered at once meanwhile, and
//! each failure gets the log line the README's fail2ban filter matches.
//! (Our server only: the official one has no throttle.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::Server;
use crate::support::http::{sync_header, zstd};

/// One keep-alive connection sending logins as if from `address` (the
/// server reads it from `X-Forwarded-For`, as behind a proxy).
struct Client {
    reader: BufReader<TcpStream>,
    address: &'static str,
}

impl Client {
    fn open(server: &Server, address: &'static str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
            address,
        }
    }

    /// A login; its status, or `None` when the connection was closed.
    fn login(&mut self, user: &str, password: &str) -> Option<u16> {
        let body = zstd(format!(r#"{{"u":"{user}","p":"{password}"}}"#).as_bytes());
        let head = format!(
            "POST /sync/hostKey HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\
             X-Forwarded-For: {}\r\nanki-sync: {}\r\n\r\n",
            body.len(),
            self.address,
            sync_header("")
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).ok()?;
        stream.write_all(&body).ok()?;
        let mut line = String::new();
        self.reader.read_line(&mut line).ok()?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).ok()?;
            if line.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).ok()?;
        Some(status)
    }
}

#[test]
fn guesses_are_slowed_per_address_and_logged_for_fail2ban() {
    let server = Server::start_ours(
        &[("user", "pass"), ("bob", "pw")],
        &[
            ("SYNC_IP_HEADER", "RightmostXForwardedFor"),
            ("SYNC_MAX_CONNECTIONS_PER_IP", "64"),
        ],
    );
    // The attacker guesses over one connection for 6 s.
    let attacker = {
        let mut client = Client::open(&server, "203.0.113.66");
        thread::spawn(move || {
            let started = Instant::now();
            let mut answers = Vec::new();
            while started.elapsed() < Duration::from_secs(6) {
                match client.login("user", "guess") {
                    Some(status) => answers.push((status, started.elapsed())),
                    None => break,
                }
            }
            answers
        })
    };
    // Meanwhile, correct logins from another address are answered at once.
    thread::sleep(Duration::from_secs(2));
    let mut bob = Client::open(&server, "198.51.100.7");
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(bob.login("bob", "pw"), Some(200));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "bob waited {took:?}");
        thread::sleep(Duration::from_millis(500));
    }
    let answers = attacker.join().unwrap();
    assert!(
        answers.iter().all(|(status, _)| *status == 403),
        "{answers:?}"
    );
    // Five free, the sixth at once, then 1 s and 2 s later (the next one
    // would be 4 s after that): 8 checks in 6 s, not thousands.
    assert!(
        (7..=9).contains(&answers.len()),
        "{} guesses in 6 s: {answers:?}",
        answers.len()
    );
    assert!(answers[5].1 < Duration::from_secs(1), "{answers:?}");

    // Many connections at once: beyond the next 8 s of turns, 429 at once.
    let many: Vec<_> = (0..6)
        .map(|_| {
            let mut client = Client::open(&server, "203.0.113.66");
            thread::spawn(move || {
                let started = Instant::now();
                (client.login("user", "guess"), started.elapsed())
            })
        })
        .collect();
    let many: Vec<_> = many.into_iter().map(|h| h.join().unwrap()).collect();
    let refused = many.iter().filter(|(s, _)| *s == Some(429)).count();
    assert!(refused >= 3, "{many:?}");
    for (status, took) in &many {
        if *status == Some(429) {
            assert!(*took < Duration::from_secs(2), "{many:?}");
        }
    }

    // The log: one line per failure, in the README's format, address first.
    let log = server.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed login from 203.0.113.66: user \"user\""))
        .collect();
    let checked = answers.len() + many.iter().filter(|(s, _)| *s == Some(403)).count();
    assert_eq!(failures.len(), checked, "{log}");
    assert!(
        failures[5].contains(
            " WARN  failed login from 203.0.113.66: user \"user\", 6 failure(s) in a row"
        ),
        "{}",
        failures[5]
    );
    assert!(
        log.lines().any(|l| l.contains("203.0.113.66 - ")
            && l.contains("/sync/hostKey 429")
            && l.contains("(too many failed logins from this address; refused for ")),
        "{log}"
    );
    assert!(!log.contains("failed login from 198.51.100.7"), "{log}");
}
