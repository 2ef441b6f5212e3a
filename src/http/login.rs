//! Password logins (`hostKey`) and the guard against guessing them (issue 14
//! item 10, issue 17 item 1): the throttle's verdict before a login is
//! dispatched ([`Service::login_turn`]), and the check itself with its
//! outcome ([`Service::login`]), which writes the one log line fail2ban
//! matches for a failed login. Every failed password check passes through
//! [`Service::login`], so whatever counts failures (metrics) hooks in there.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::warn;

use super::service::Service;
use crate::auth::throttle::Verdict;
use crate::auth::{Account, AuthError, Users};

/// What the throttle decided about a request before its dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginTurn {
    /// Not a login, or a login whose password may be checked now.
    Check,
    /// A login refused without a check: its address failed too often. The
    /// address may try again after this long.
    Refused(Duration),
}

/// What a fresh request from `client` must do before its dispatch.
pub enum Admission {
    Now(LoginTurn),
    /// A login whose turn comes then: park it, without a worker.
    WaitUntil(Instant),
}

impl Service {
    /// The throttle's verdict on a fresh login from `client` (other routes
    /// are not throttled). A verdict that allows a check takes the address's
    /// next turn, so a parked login is checked when woken without asking
    /// again.
    pub fn login_turn(&self, client: IpAddr, now: Instant) -> Admission {
        match self.throttle.attempt(client, now) {
            Verdict::Check => Admission::Now(LoginTurn::Check),
            Verdict::WaitThenCheck(wait) => Admission::WaitUntil(now + wait),
            // (No line of its own: under attack these come thousands a
            // second, and the request's line says 429 and why.)
            Verdict::Refuse(retry) => Admission::Now(LoginTurn::Refused(retry)),
        }
    }

    /// Checks a password login from `client` and records its outcome: a
    /// success clears the address's failures; a failure counts, and writes
    /// the log line fail2ban matches.
    pub fn login<'u>(
        &self,
        users: &'u Users,
        client: IpAddr,
        name: &str,
        password: &str,
    ) -> Result<&'u Account, AuthError> {
        let result = users.login(name, password);
        let now = Instant::now();
        match &result {
            Ok(_) => {
                self.throttle.outcome(client, true, now);
            }
            Err(AuthError::BadCredentials) => {
                let failures = self.throttle.outcome(client, false, now);
                warn!("{}", failed_line(client, name, failures));
            }
            // A broken account entry is our fault, not a guess.
            Err(_) => {}
        }
        result
    }
}

/// The log line of a failed login, stable for fail2ban (see the README's
/// filter): the address comes first, before anything the client chose, so
/// a crafted user name cannot make the filter ban someone else.
pub fn failed_line(client: IpAddr, name: &str, failures: u32) -> String {
    format!(
        "failed login from {client}: user {:?}, {failures} failure(s) in a row",
        super::service::log_safe(name, super::service::MAX_LOGGED_NAME)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fail2ban filter of the README, `failregex` with fail2ban's
    /// `<HOST>` as the address pattern, must match the lines we write, in
    /// both log styles, and must not be fooled by a user name.
    #[test]
    fn the_fail2ban_filter_matches_failed_logins_and_only_their_address() {
        let readme = include_str!("../../README.md");
        let failregex = readme
            .lines()
            .find_map(|l| l.strip_prefix("failregex = "))
            .expect("the README's fail2ban filter");
        // fail2ban's own parts: the syslog prefix of a journal line
        // ("host anki-sync-lite[812]: "), and the address.
        let pattern = failregex
            .replace("%(__prefix_line)s", r"(?:\S+ anki-sync-lite\[\d+\]: )?")
            .replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)");
        let re = regex_lite::Regex::new(&pattern).unwrap();
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let hostile = "x: user \"y\" from 198.51.100.1\nfailed login from 198.51.100.2: ";
        for (client, name) in [(v4, "alice"), (v6, hostile)] {
            let message = failed_line(client, name, 7);
            for line in [
                crate::logger::format_line(
                    crate::logger::Style::Timestamped,
                    log::Level::Warn,
                    env!("CARGO_CRATE_NAME"),
                    &format_args!("{message}"),
                    1_800_000_000_000,
                ),
                // A journal entry as fail2ban reads it: journald took the
                // priority prefix as the entry's priority.
                format!("pi anki-sync-lite[812]: {message}\n"),
            ] {
                // fail2ban takes the timestamp out before matching.
                let line = line.trim_end();
                let line = line.split_once("Z ").map_or(line, |(_, rest)| rest);
                let line = line.trim_start();
                let found = re.captures(line).unwrap_or_else(|| panic!("{line}"));
                assert_eq!(&found["host"], client.to_string(), "{line}");
            }
        }
        for other in [
            "203.0.113.7 - 26.09 /sync/hostKey 429 in=0 out=3 0ms (too many failed logins from \
             this address; refused for 30 s)",
            "203.0.113.7 alice 26.09 /sync/hostKey 403 in=40 out=3 3ms (invalid user or password)",
        ] {
            assert!(!re.is_match(other), "{other}");
        }
    }
}
