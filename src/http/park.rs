//! Requests that must wait for their turn (a throttled login) wait here, in
//! one thread, instead of each holding one of the few places for running
//! requests (`SYNC_WORKERS`): a waiting request must not keep anyone else's
//! from running.
//!
//! [`Park::park`] hands over an item with the time it is due; the park's
//! thread gives it to `wake` at that time (in due order). The park holds a
//! bounded number of items: when full, `park` gives the item back, and the
//! caller answers at once instead. Dropping the [`Park`] wakes every item
//! still waiting, at once, and ends the thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, unbounded};

pub struct Park<T> {
    tx: Option<Sender<(Instant, T)>>,
    /// Items handed over and not yet woken.
    held: Arc<AtomicUsize>,
    capacity: usize,
    thread: Option<thread::JoinHandle<()>>,
}

/// One parked item, ordered by due time, then by arrival.
struct Waiting<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> Waiting<T> {
    fn key(&self) -> (Instant, u64) {
        (self.due, self.seq)
    }
}

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Waiting<T> {}

impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Waiting<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl<T: Send + 'static> Park<T> {
    /// Starts the park's thread; `wake` runs on it, so it must be quick
    /// (hand the item to a worker).
    pub fn start(capacity: usize, mut wake: impl FnMut(T) + Send + 'static) -> io::Result<Park<T>> {
        let (tx, rx) = unbounded::<(Instant, T)>();
        let held = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&held);
        let thread = thread::Builder::new().name("park".into()).spawn(move || {
            let mut waiting: BinaryHeap<Reverse<Waiting<T>>> = BinaryHeap::new();
            let mut seq = 0u64;
            loop {
                let timeout = waiting
                    .peek()
                    .map(|Reverse(w)| w.due.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(3600));
                let until = match rx.recv_timeout(timeout) {
                    Ok((due, item)) => {
                        waiting.push(Reverse(Waiting { due, seq, item }));
                        seq += 1;
                        Some(Instant::now())
                    }
                    Err(RecvTimeoutError::Timeout) => Some(Instant::now()),
                    // The park was dropped: everything is due.
                    Err(RecvTimeoutError::Disconnected) => None,
                };
                while waiting
                    .peek()
                    .is_some_and(|Reverse(w)| until.is_none_or(|now| w.due <= now))
                {
                    if let Some(Reverse(w)) = waiting.pop() {
                        count.fetch_sub(1, Ordering::SeqCst);
                        wake(w.item);
                    }
                }
                if until.is_none() {
                    return;
                }
            }
        })?;
        Ok(Park {
            tx: Some(tx),
            held,
            capacity,
            thread: Some(thread),
        })
    }

    /// Hands `item` over until `due`; gives it back if the park is full.
    pub fn park(&self, due: Instant, item: T) -> Result<(), T> {
        let held = self.held.fetch_add(1, Ordering::SeqCst);
        let Some(tx) = self.tx.as_ref().filter(|_| held < self.capacity) else {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(item);
        };
        tx.send((due, item)).map_err(|e| {
            self.held.fetch_sub(1, Ordering::SeqCst);
            e.into_inner().1
        })
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Park<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn items_wake_in_due_order_at_their_time() {
        let (tx, rx) = mpsc::channel();
        let park = Park::start(10, move |item: (u32, Instant)| {
            tx.send((item.0, item.1, Instant::now())).unwrap();
        })
        .unwrap();
        let now = Instant::now();
        for (id, ms) in [(1, 300), (2, 100), (3, 200)] {
            let due = now + Duration::from_millis(ms);
            park.park(due, (id, due)).unwrap();
        }
        assert_eq!(park.len(), 3);
        let woken: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(woken.iter().map(|w| w.0).collect::<Vec<_>>(), [2, 3, 1]);
        for (_, due, at) in woken {
            assert!(at >= due, "woken early");
            assert!(at - due < Duration::from_secs(2), "woken late");
        }
        assert!(park.is_empty());
    }

    #[test]
    fn a_full_park_gives_items_back_and_dropping_wakes_the_rest() {
        let (tx, rx) = mpsc::channel();
        let park = Park::start(2, move |id: u32| tx.send(id).unwrap()).unwrap();
        let later = Instant::now() + Duration::from_secs(3600);
        park.park(later, 1).unwrap();
        park.park(later, 2).unwrap();
        assert_eq!(park.park(later, 3), Err(3));
        drop(park);
        let mut woken: Vec<u32> = rx.try_iter().collect();
        woken.sort();
        assert_eq!(woken, [1, 2]);
    }
}
