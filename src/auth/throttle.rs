//! Throttling password guesses per client address (issue 14, item 10).
//! Without it, about 3,000 guesses a second ran over one connection.
//!
//! Each address may fail [`FREE_FAILURES`] logins in a row unhindered (a
//! person mistyping). After that, password checks for that address are
//! spaced out: one per second, then two, four ... up to one per
//! [`MAX_SPACING`], however many connections the guesses come on, because
//! each attempt reserves the next free slot. An attempt whose slot is near
//! ([`MAX_WAIT`], well under the 30 s a client waits for an answer) waits for
//! it and then gets its normal answer: the client just shows its spinner a
//! little longer, then "wrong password" or success. An attempt whose slot is
//! further away is refused at once with `429 Too Many Requests` and a
//! `Retry-After`, without checking the password (the client shows a network
//! error naming 429). A correct login clears the address's record;
//! failures are forgotten [`FORGET_AFTER`] after the last one.
//!
//! The waiting is not done here, and must not hold a worker thread: the
//! caller parks the request until its slot. Only password logins count: a
//! wrong host key cannot be guessed (160 bits) and a device with a stale one
//! must not lock its household out.
//!
//! IPv6 addresses count per /64, the block one subscriber usually gets, so
//! rotating through it does not reset the throttle. The table is bounded
//! ([`MAX_ADDRESSES`]); when full, the records idle longest are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failed logins in a row an address may make before checks are spaced.
pub const FREE_FAILURES: u32 = 5;
/// The first spacing, doubled with each further failure...
const FIRST_SPACING: Duration = Duration::from_secs(1);
/// ...up to this.
pub const MAX_SPACING: Duration = Duration::from_secs(60);
/// The longest an attempt is made to wait for its slot; beyond it, 429.
pub const MAX_WAIT: Duration = Duration::from_secs(8);
/// A record with no failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most (about 100 bytes each).
const MAX_ADDRESSES: usize = 4096;

/// What to do with a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password now.
    Check,
    /// Check it after waiting this long (without holding a worker).
    WaitThenCheck(Duration),
    /// Answer 429 now; the address may try again after this long.
    Refuse(Duration),
}

#[derive(Debug)]
struct Record {
    /// Failed logins in a row.
    failures: u32,
    last_failure: Instant,
    /// The earliest time the next password check may run.
    next_slot: Instant,
}

/// The failed-login records of all client addresses.
#[derive(Default)]
pub struct Throttle {
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl Throttle {
    /// Decides about a login attempt from `addr` at `now`; a check it allows
    /// (now or later) takes the address's next slot.
    pub fn attempt(&self, addr: IpAddr, now: Instant) -> Verdict {
        let mut records = self.lock();
        let Some(record) = records.get_mut(&key(addr)) else {
            return Verdict::Check;
        };
        if now.duration_since(record.last_failure) >= FORGET_AFTER {
            records.remove(&key(addr));
            return Verdict::Check;
        }
        if record.failures < FREE_FAILURES {
            return Verdict::Check;
        }
        let slot = record.next_slot.max(now);
        let wait = slot - now;
        if wait > MAX_WAIT {
            return Verdict::Refuse(wait);
        }
        record.next_slot = slot + spacing(record.failures);
        if wait.is_zero() {
            Verdict::Check
        } else {
            Verdict::WaitThenCheck(wait)
        }
    }

    /// Records the outcome of a password check; returns the address's
    /// failures in a row (0 after a success).
    pub fn outcome(&self, addr: IpAddr, ok: bool, now: Instant) -> u32 {
        let mut records = self.lock();
        if ok {
            records.remove(&key(addr));
            return 0;
        }
        if records.len() >= MAX_ADDRESSES && !records.contains_key(&key(addr)) {
            make_room(&mut records, now);
        }
        let record = records.entry(key(addr)).or_insert(Record {
            failures: 0,
            last_failure: now,
            next_slot: now,
        });
        if now.duration_since(record.last_failure) >= FORGET_AFTER {
            record.failures = 0;
        }
        record.failures += 1;
        record.last_failure = now;
        record.failures
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The time between two checks after `failures` failures in a row.
fn spacing(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(FREE_FAILURES).min(16);
    (FIRST_SPACING * 2u32.pow(doublings)).min(MAX_SPACING)
}

/// The throttled unit: the address itself, or its /64 for IPv6 (an
/// IPv4-mapped IPv6 address counts as the IPv4 address).
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

/// Drops forgotten records, then, if still full, the quarter idle longest.
fn make_room(records: &mut HashMap<IpAddr, Record>, now: Instant) {
    records.retain(|_, r| now.duration_since(r.last_failure) < FORGET_AFTER);
    if records.len() < MAX_ADDRESSES {
        return;
    }
    let mut ages: Vec<Instant> = records.values().map(|r| r.last_failure).collect();
    ages.sort_unstable();
    let cutoff = ages[ages.len() / 4];
    records.retain(|_, r| r.last_failure > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Fails `n` logins from `addr`, each checked at once.
    fn fail(t: &Throttle, addr: IpAddr, n: u32, now: Instant) {
        for _ in 0..n {
            assert_eq!(t.attempt(addr, now), Verdict::Check);
            t.outcome(addr, false, now);
        }
    }

    #[test]
    fn a_burst_of_failures_is_free_then_checks_are_spaced() {
        let t = Throttle::default();
        let a = ip("203.0.113.7");
        let now = Instant::now();
        fail(&t, a, FREE_FAILURES, now);
        // The sixth attempt is checked at once and takes the next slot 1 s
        // on; after its failure, attempts wait their turn 2 s apart, however
        // many connections they come on.
        assert_eq!(t.attempt(a, now), Verdict::Check);
        assert_eq!(t.outcome(a, false, now), FREE_FAILURES + 1);
        for wait in [1, 3, 5, 7] {
            let wait = Duration::from_secs(wait);
            assert_eq!(t.attempt(a, now), Verdict::WaitThenCheck(wait));
        }
        // Beyond MAX_WAIT: refused, with the time until the next free slot.
        assert_eq!(t.attempt(a, now), Verdict::Refuse(Duration::from_secs(9)));
        // Other addresses are not affected.
        assert_eq!(t.attempt(ip("203.0.113.8"), now), Verdict::Check);
    }

    #[test]
    fn spacing_doubles_up_to_the_cap_and_bounds_the_guess_rate() {
        let t = Throttle::default();
        let a = ip("198.51.100.1");
        let start = Instant::now();
        // An attacker who sends an attempt every 10 ms for an hour.
        let mut checks = 0;
        let mut now = start;
        while now < start + Duration::from_secs(3600) {
            match t.attempt(a, now) {
                Verdict::Check => {
                    checks += 1;
                    t.outcome(a, false, now);
                }
                // A parked attempt is checked when its turn comes; the
                // attacker's other attempts meanwhile are refused.
                Verdict::WaitThenCheck(wait) => {
                    checks += 1;
                    t.outcome(a, false, now + wait);
                }
                Verdict::Refuse(_) => {}
            }
            now += Duration::from_millis(10);
        }
        // 5 free, then 1, 2, 4, ... 32 s apart, then one a minute.
        assert!((60..=75).contains(&checks), "{checks} checks in an hour");
    }

    #[test]
    fn success_clears_and_silence_forgets() {
        let t = Throttle::default();
        let a = ip("192.0.2.1");
        let now = Instant::now();
        fail(&t, a, FREE_FAILURES + 1, now);
        assert!(matches!(t.attempt(a, now), Verdict::WaitThenCheck(_)));
        assert_eq!(t.outcome(a, true, now), 0);
        assert_eq!(t.attempt(a, now), Verdict::Check);

        fail(&t, a, FREE_FAILURES + 1, now);
        assert_ne!(t.attempt(a, now), Verdict::Check);
        let later = now + FORGET_AFTER;
        assert_eq!(t.attempt(a, later), Verdict::Check);
        assert_eq!(t.outcome(a, false, later), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..FREE_FAILURES + 1 {
            let addr = ip(&format!("2001:db8:1:2::{:x}", i + 1));
            assert_eq!(t.attempt(addr, now), Verdict::Check);
            t.outcome(addr, false, now);
        }
        assert_ne!(t.attempt(ip("2001:db8:1:2:ffff::1"), now), Verdict::Check);
        assert_eq!(t.attempt(ip("2001:db8:1:3::1"), now), Verdict::Check);

        fail(&t, ip("192.0.2.9"), FREE_FAILURES + 1, now);
        assert_ne!(t.attempt(ip("::ffff:192.0.2.9"), now), Verdict::Check);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = Throttle::default();
        let start = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 * 2) {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            t.outcome(addr, false, start + Duration::from_millis(u64::from(i)));
        }
        let len = t.lock().len();
        assert!(len <= MAX_ADDRESSES, "{len}");
        // The newest failures are the ones kept.
        let newest = IpAddr::from((0x0a00_0000 + MAX_ADDRESSES as u32 * 2 - 1).to_be_bytes());
        assert!(t.lock().contains_key(&newest));
    }
}
