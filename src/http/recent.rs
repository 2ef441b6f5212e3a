//! Client addresses that authenticated recently. A legacy client (before
//! 2.1.57) sends its host key after the form's `data` part, so its request
//! cannot be authenticated before its data is stored; but every legacy sync
//! opens with small requests (`hostKey`, `meta`) from the same address. So
//! only an address that authenticated a little earlier may send more form
//! data before its key than fits in memory (`legacy`), and an unknown one
//! never writes to the disk unauthenticated.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an authenticated request vouches for its address.
const REMEMBER: Duration = Duration::from_secs(30 * 60);
/// Addresses kept at most; the oldest is forgotten first.
const MAX_ADDRESSES: usize = 1024;

#[derive(Default)]
pub struct RecentClients {
    seen: Mutex<HashMap<String, Instant>>,
}

impl RecentClients {
    /// `client` just sent a request with a good key (or login).
    pub fn mark(&self, client: &str) {
        self.mark_at(client, Instant::now());
    }

    /// Whether `client` authenticated within the last half hour.
    pub fn vouched(&self, client: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(client).is_some_and(|at| at.elapsed() < REMEMBER)
    }

    fn mark_at(&self, client: &str, at: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(client) {
            seen.retain(|_, t| t.elapsed() < REMEMBER);
            if seen.len() >= MAX_ADDRESSES {
                let oldest = seen.iter().min_by_key(|(_, t)| **t).map(|(c, _)| c.clone());
                if let Some(oldest) = oldest {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(client.to_string(), at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_vouched_for_a_while_and_bounded() {
        let recent = RecentClients::default();
        assert!(!recent.vouched("10.0.0.1"));
        recent.mark("10.0.0.1");
        assert!(recent.vouched("10.0.0.1"));
        if let Some(long_ago) = Instant::now().checked_sub(REMEMBER + Duration::from_secs(1)) {
            recent.mark_at("10.0.0.2", long_ago);
            assert!(!recent.vouched("10.0.0.2"));
        }
        for i in 0..MAX_ADDRESSES + 10 {
            recent.mark(&format!("192.168.{}.{}", i / 256, i % 256));
        }
        assert!(recent.seen.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
