//! Issue 17, logs: the server's lines as a terminal or container sees them
//! (an RFC 3339 UTC timestamp first) and as systemd's journal sees them
//! (`JOURNAL_STREAM` names our stderr: a syslog priority first, no
//! timestamp), for the start-up lines and a request that fails.
//!
//! Our server only: the format is ours.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support::our_binary;

/// Our server on a port of the kernel's choosing, its stderr in a file.
struct Logged {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    /// `journal`: set `JOURNAL_STREAM` to the log file's `device:inode`, as
    /// systemd does for a service whose output goes to the journal.
    fn start(journal: bool) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let file = File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(our_binary());
        cmd.env_clear()
            .env("SYNC_USER1", "user:pass")
            .env("SYNC_BASE", dir.path().join("base"))
            .env("SYNC_HOST", "127.0.0.1")
            .env("SYNC_PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            // Inherited from a service, but not naming our stderr.
            cmd.env("JOURNAL_STREAM", "8:12345");
        }
        Logged {
            child: cmd.spawn().unwrap(),
            log,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port from the "listening on http://127.0.0.1:PORT/" line.
    fn port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text();
            if let Some(rest) = text.split("listening on http://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return digits.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no listening line:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A request that gets a 404, which is logged as a warning.
    fn not_found(&self) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port())).unwrap();
        s.write_all(b"GET /no/such/thing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }

    /// Stops the server and returns its lines once the 404 is logged.
    fn lines_after_404(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains("/no/such/thing") {
            assert!(Instant::now() < deadline, "no 404 line:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.text().lines().map(str::to_string).collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch of `2026-12-06T10:15:00.042Z` (checked shape).
fn parse_rfc3339(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    let shape = b.len() == 24
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && b[23] == b'Z';
    if !shape {
        return None;
    }
    let n = |r: std::ops::Range<usize>| stamp[r].parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let secs = n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    n(20..23)?;
    Some(anki_sync_lite::utc::days_from_civil(y, m, d) * 86_400 + secs)
}

#[test]
fn outside_systemd_each_line_starts_with_a_utc_timestamp_and_the_level() {
    let server = Logged::start(false);
    server.not_found();
    let lines = server.lines_after_404();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        let (stamp, rest) = line.split_once(' ').unwrap();
        let secs = parse_rfc3339(stamp).unwrap_or_else(|| panic!("no timestamp: {line}"));
        assert!((now - secs).abs() < 300, "not now, or not UTC: {line}");
        let level = rest.split_whitespace().next().unwrap();
        assert!(["INFO", "WARN", "ERROR"].contains(&level), "{line}");
        assert!(!line.contains('<'), "{line}");
    }
    let warn = lines.iter().find(|l| l.contains("/no/such/thing")).unwrap();
    assert!(warn.contains(" WARN  127.0.0.1 - - "), "{warn}");
    assert!(
        lines[0].contains(" INFO  anki-sync-lite "),
        "{:?}",
        lines[0]
    );
}

#[test]
fn under_systemd_lines_carry_syslog_priorities_and_no_timestamp() {
    let server = Logged::start(true);
    server.not_found();
    let lines = server.lines_after_404();
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        assert!(
            ["<3>", "<4>", "<6>"].iter().any(|p| line.starts_with(p)),
            "{line}"
        );
        let first = line[3..].split(' ').next().unwrap();
        assert_eq!(parse_rfc3339(first), None, "{line}");
    }
    assert!(lines[0].starts_with("<6>anki-sync-lite "), "{:?}", lines[0]);
    let warn = lines.iter().find(|l| l.contains("/no/such/thing")).unwrap();
    assert!(warn.starts_with("<4>127.0.0.1 - - "), "{warn}");
}
