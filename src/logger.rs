//! The log output: one line per event on stderr, in the form the place it
//! goes to expects.
//!
//! - Under systemd (`JOURNAL_STREAM` names our stderr), the journal stamps
//!   each line itself, so a line carries no timestamp but starts with a
//!   syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug):
//!   journald files it under that priority and `journalctl -p warning` works.
//! - Anywhere else (a terminal, a container, procd, a file), a line starts
//!   with an RFC 3339 UTC timestamp and the level.
//!
//! Newlines and other control characters in a message are escaped, so one
//! event is always one line: nothing a client sends (a user name, a version
//! string) can forge a second line for log readers such as fail2ban.
//!
//! Written here rather than with `simple_logger`: it has no priority
//! prefixes, and its timestamps pull in the `time` crate, while this needs
//! forty lines and the date arithmetic the backups already use.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where the lines go, decided once at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `2026-05-03T10:15:00.042Z INFO message`
    Timestamped,
    /// `<6>message`, for the journal.
    Journal,
}

struct Logger {
    style: Style,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger for the whole process (once; later calls fail).
pub fn init(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    let logger = LOGGER.get_or_init(|| Logger {
        style: detect_style(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    });
    log::set_logger(logger)?;
    log::set_max_level(level);
    Ok(())
}

/// `Journal` when `JOURNAL_STREAM` (`device:inode`, set by systemd) names
/// the file our stderr is: a child of a service that redirected its stderr
/// elsewhere inherits the variable but must not get journal lines.
pub fn detect_style(journal_stream: Option<&str>) -> Style {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match (journal_stream, stderr) {
        (Some(value), Ok(meta)) if value == format!("{}:{}", meta.dev(), meta.ino()) => {
            Style::Journal
        }
        _ => Style::Timestamped,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            self.style,
            record.level(),
            record.target(),
            record.args(),
            now_millis(),
        );
        // One write per line, so lines from different threads never mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One finished line, with its newline. `now_ms` is only used when
/// timestamped. Messages from other crates (tiny_http, rustls) name their
/// crate, ours do not.
pub fn format_line(
    style: Style,
    level: Level,
    target: &str,
    message: &std::fmt::Arguments,
    now_ms: i64,
) -> String {
    let mut line = match style {
        Style::Timestamped => format!("{} {level:<5} ", crate::utc::rfc3339_millis(now_ms)),
        Style::Journal => format!("<{}>", priority(level)),
    };
    if !target.starts_with(env!("CARGO_CRATE_NAME")) {
        let _ = write!(line, "[{target}] ");
    }
    let mut text = String::new();
    let _ = write!(text, "{message}");
    for c in text.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push(' '),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('\n');
    line
}

/// syslog(3) priorities; trace has none lower than debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(style: Style, level: Level, target: &str, message: &str) -> String {
        format_line(
            style,
            level,
            target,
            &format_args!("{message}"),
            1_796_515_200_042,
        )
    }

    #[test]
    fn timestamped_lines_start_with_rfc3339_utc_and_the_level() {
        assert_eq!(
            line(
                Style::Timestamped,
                Level::Info,
                "anki_sync_lite::http",
                "hello"
            ),
            "2026-12-06T00:00:00.042Z INFO  hello\n"
        );
        assert_eq!(
            line(Style::Timestamped, Level::Error, "tiny_http", "x"),
            "2026-12-06T00:00:00.042Z ERROR [tiny_http] x\n"
        );
    }

    #[test]
    fn journal_lines_carry_the_syslog_priority_and_no_timestamp() {
        let cases = [
            (Level::Error, "<3>"),
            (Level::Warn, "<4>"),
            (Level::Info, "<6>"),
            (Level::Debug, "<7>"),
            (Level::Trace, "<7>"),
        ];
        for (level, prefix) in cases {
            let got = line(Style::Journal, level, "anki_sync_lite", "m");
            assert_eq!(got, format!("{prefix}m\n"));
        }
    }

    #[test]
    fn one_event_is_one_line_whatever_the_message_holds() {
        let got = line(
            Style::Journal,
            Level::Warn,
            "anki_sync_lite",
            "bad\n<4>login failed for 1.2.3.4\r\u{1b}[31m",
        );
        assert_eq!(got, "<4>bad\\n<4>login failed for 1.2.3.4\\r\\u{1b}[31m\n");
    }

    #[test]
    fn journal_only_when_journal_stream_names_our_stderr() {
        assert_eq!(detect_style(None), Style::Timestamped);
        assert_eq!(detect_style(Some("1:2")), Style::Timestamped);
        let meta = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .unwrap();
        let ours = format!("{}:{}", meta.dev(), meta.ino());
        assert_eq!(detect_style(Some(&ours)), Style::Journal);
    }
}
