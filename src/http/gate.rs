//! How many requests are handled at once, wherever they run: on the thread
//! of the connection that read them (most requests, without waking another
//! thread), or on a pool worker (requests that found every place taken, and
//! parked logins whose turn has come). `SYNC_WORKERS` places in all, so
//! memory and CPU stay bounded as they were with workers alone.

use std::sync::{Condvar, Mutex, PoisonError};

pub struct Gate {
    places: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    /// Places taken.
    taken: usize,
    /// Workers waiting for a place, each with a request in hand.
    waiting: usize,
}

/// A place taken; given back when dropped.
pub struct Place<'g>(&'g Gate);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.taken -= 1;
        // Waking costs a system call even with nobody waiting: only when a
        // worker waits (one place, one worker).
        let waited = state.waiting > 0;
        drop(state);
        if waited {
            self.0.freed.notify_one();
        }
    }
}

impl Gate {
    pub fn new(places: usize) -> Gate {
        Gate {
            places: places.max(1),
            state: Mutex::default(),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place now, if one is free and no worker waits for one (a request
    /// queued earlier goes first).
    pub fn try_enter(&self) -> Option<Place<'_>> {
        let mut state = self.lock();
        if state.taken >= self.places || state.waiting > 0 {
            return None;
        }
        state.taken += 1;
        Some(Place(self))
    }

    /// A place, waiting for one as long as it takes.
    pub fn enter(&self) -> Place<'_> {
        let mut state = self.lock();
        state.waiting += 1;
        while state.taken >= self.places {
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting -= 1;
        state.taken += 1;
        Place(self)
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.lock().taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    #[test]
    fn places_are_bounded_and_given_back() {
        let gate = Gate::new(2);
        let a = gate.try_enter().unwrap();
        let _b = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none());
        assert_eq!(gate.taken(), 2);
        drop(a);
        assert_eq!(gate.taken(), 1);
        assert!(gate.try_enter().is_some());
    }

    /// A worker waiting with a queued request gets the next free place,
    /// before a request that arrives after it.
    #[test]
    fn a_waiting_worker_goes_first() {
        let gate = Arc::new(Gate::new(1));
        let held = gate.try_enter().unwrap();
        let (entered, go) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let worker = {
            let gate = Arc::clone(&gate);
            let (entered, go) = (entered.0, go.1);
            thread::spawn(move || {
                let _place = gate.enter();
                entered.send(()).unwrap();
                go.recv().unwrap();
            })
        };
        while gate.lock().waiting == 0 {
            thread::yield_now();
        }
        drop(held);
        // From now until the worker is done, a newcomer finds no place:
        // first the worker waits for it, then holds it.
        assert!(gate.try_enter().is_none());
        entered.1.recv().unwrap();
        assert!(gate.try_enter().is_none());
        go.0.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(gate.taken(), 0);
        assert!(gate.try_enter().is_some());
    }

    /// However many threads ask, no more than the places run at once.
    #[test]
    fn never_more_than_the_places_at_once() {
        let gate = Arc::new(Gate::new(3));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let (gate, now, most) = (Arc::clone(&gate), Arc::clone(&now), Arc::clone(&most));
                thread::spawn(move || {
                    for _ in 0..50 {
                        let place = match i % 2 {
                            0 => gate.enter(),
                            _ => match gate.try_enter() {
                                Some(place) => place,
                                None => continue,
                            },
                        };
                        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(running, Ordering::SeqCst);
                        thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                        drop(place);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert!(most.load(Ordering::SeqCst) >= 1);
        assert_eq!(gate.taken(), 0);
    }
}
