//! The process-wide budget for decoded request memory.
//!
//! Normal-sync bodies are decoded while they stream in, and what has been
//! decoded is applied in small batches (`collection::decode`), so what a
//! request holds at any moment is about the bytes read since its last batch
//! was applied. Those bytes are counted here, by a reader under the JSON
//! parser:
//!
//! - one item (a note row, a notetype, a tag...) may not be larger than a
//!   fixed size, whatever the payload limit: a bigger one is refused (413)
//!   before it is buffered;
//! - a request may hold a small allowance for free (ordinary syncs never
//!   need more); a request that needs more draws one item's worth from one
//!   pool shared by all workers, and gives it back when it ends. A request
//!   that finds the pool spent waits briefly for others to give theirs back,
//!   then is refused (429), so a few large or hostile bodies cannot together
//!   take more memory than the pool allows.
//!
//! Both refusals travel inside `io::Error` (like `http::limit`'s), through
//! the parser, to the one place that turns errors into statuses.

use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The item limit and free allowance of every request.
///
/// A note of 2 MiB (two million characters of HTML: a very large table)
/// still syncs. While it is stored it is held about five times (the
/// parser's buffer, SQLite's copies of the bound fields and sort field, and
/// the record SQLite builds from them), so together with a zstd window
/// (`http::framing`, at most 4 MiB) one request stays within 16 MiB.
///
/// The allowance covers a batch of ordinary rows (`collection::decode`
/// applies a batch at 128 KiB) and an item of the same size, so ordinary
/// syncs never draw from the pool.
pub const LIMITS: Limits = Limits {
    item: 2 * 1024 * 1024,
    allowance: 256 * 1024,
};

/// The pool shared by all requests: three requests at once may hold an
/// item beyond their allowance. Eight requests at once then hold at most
/// three maximal items and eight windows (about 60 MiB).
pub const POOL_BYTES: u64 = 6 * 1024 * 1024;

/// How long a request waits for the pool: a batch is applied in well under
/// a second, so a request that finds the pool in use by others' large items
/// usually gets its share well within this.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The shared pool.
pub struct MemoryBudget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
    /// How long a request waits for the pool before it is refused.
    patience: Duration,
}

impl MemoryBudget {
    pub fn new(capacity: u64, patience: Duration) -> MemoryBudget {
        MemoryBudget {
            capacity,
            used: Mutex::new(0),
            freed: Condvar::new(),
            patience,
        }
    }

    /// Bytes drawn by requests in progress.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Draws `bytes`, waiting up to `patience` for them; false if they never
    /// became free, or at once if they are more than the whole pool.
    fn draw(&self, bytes: u64) -> bool {
        if bytes > self.capacity {
            return false;
        }
        let deadline = Instant::now() + self.patience;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.capacity {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += bytes;
        true
    }

    fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }
}

/// Why a body was refused; carried inside `io::Error`, found with [`refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// One item is larger than the item limit (413).
    ItemTooLarge { what: &'static str, limit: u64 },
    /// The pool stayed spent for the whole wait (429).
    Busy { wanted: u64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ItemTooLarge { what, limit } => {
                write!(f, "one {what} is larger than the limit of {limit} bytes")
            }
            Refusal::Busy { wanted } => write!(
                f,
                "the memory for decoding requests is in use by others ({wanted} more bytes wanted)"
            ),
        }
    }
}

impl Error for Refusal {}

/// The refusal carried by this I/O error, if any (also through a parser).
pub fn refusal(err: &io::Error) -> Option<Refusal> {
    err.get_ref()?.downcast_ref::<Refusal>().copied()
}

/// The sizes one request is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest item, in bytes of JSON.
    pub item: u64,
    /// Bytes a request may hold without drawing from the pool.
    pub allowance: u64,
}

/// One request's account with the budget: it counts the bytes read since
/// the current item began and since the last batch was applied. What it drew
/// from the pool goes back when it is dropped (a parser keeps the buffers it
/// grew until the request ends, so nothing is given back earlier).
///
/// The parser reads one byte at a time, so counting is kept to an addition
/// and a comparison per read: `consumed` runs on, the item and the batch
/// are marks in it, and `check_at` is where the next limit lies.
pub struct Account<'b> {
    budget: &'b MemoryBudget,
    limits: Limits,
    /// What is being read now, for the refusal's message.
    item: Cell<&'static str>,
    consumed: Cell<u64>,
    item_start: Cell<u64>,
    flush_start: Cell<u64>,
    check_at: Cell<u64>,
    drawn: Cell<u64>,
}

impl<'b> Account<'b> {
    pub fn new(budget: &'b MemoryBudget, limits: Limits) -> Account<'b> {
        let account = Account {
            budget,
            limits,
            item: Cell::new("request"),
            consumed: Cell::new(0),
            item_start: Cell::new(0),
            flush_start: Cell::new(0),
            check_at: Cell::new(0),
            drawn: Cell::new(0),
        };
        account.set_check();
        account
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Wraps the decoded body: every byte read through it is counted. It
    /// reads `inner` in blocks of [`READ_BLOCK`], so nothing beneath it
    /// needs a buffer.
    pub fn reader<R: Read>(&self, inner: R) -> Metered<'_, 'b, R> {
        Metered {
            inner,
            account: self,
            buf: vec![0; READ_BLOCK].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }

    /// A new item (named for messages) starts: the item limit counts from
    /// here.
    pub fn begin_item(&self, what: &'static str) {
        self.item.set(what);
        self.item_start.set(self.consumed.get());
        self.set_check();
    }

    /// A whole body of `bytes` (at most the allowance, and so at most an
    /// item) was read into memory to be parsed from there: it counts as
    /// consumed, and not as held, so batches are applied by their item count
    /// alone. Its bytes are not metered again.
    pub fn hold_whole(&self, bytes: u64) {
        debug_assert!(bytes <= self.limits.allowance.min(self.limits.item));
        self.consumed.set(self.consumed.get() + bytes);
        self.flushed();
    }

    /// Bytes read since the last applied batch: an upper bound of what the
    /// decoded batch holds.
    pub fn held(&self) -> u64 {
        self.consumed.get() - self.flush_start.get()
    }

    /// The batch was applied and dropped.
    pub fn flushed(&self) {
        self.flush_start.set(self.consumed.get());
        self.set_check();
    }

    /// Bytes drawn from the pool so far.
    pub fn drawn(&self) -> u64 {
        self.drawn.get()
    }

    /// The count past which [`charge`](Self::charge) must look at the
    /// limits: the end of the item, or the end of the allowance while
    /// nothing is drawn.
    fn set_check(&self) {
        let item_end = self.item_start.get() + self.limits.item;
        let allowance_end = if self.drawn.get() == 0 {
            self.flush_start.get() + self.limits.allowance
        } else {
            u64::MAX
        };
        self.check_at.set(item_end.min(allowance_end));
    }

    #[inline]
    fn charge(&self, n: u64) -> io::Result<()> {
        let consumed = self.consumed.get() + n;
        self.consumed.set(consumed);
        if consumed > self.check_at.get() {
            return self.check_limits(consumed);
        }
        Ok(())
    }

    #[cold]
    fn check_limits(&self, consumed: u64) -> io::Result<()> {
        if consumed - self.item_start.get() > self.limits.item {
            return Err(io::Error::other(Refusal::ItemTooLarge {
                what: self.item.get(),
                limit: self.limits.item,
            }));
        }
        // Past its allowance a request holds at most one item more (batches
        // are applied before they outgrow the allowance), so it draws that
        // once: a request never waits while holding part of the pool, and
        // two waiting requests cannot starve each other.
        if consumed - self.flush_start.get() > self.limits.allowance && self.drawn.get() == 0 {
            let wanted = self.limits.item;
            if !self.budget.draw(wanted) {
                return Err(io::Error::other(Refusal::Busy { wanted }));
            }
            self.drawn.set(wanted);
            self.set_check();
        }
        Ok(())
    }
}

impl Drop for Account<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.drawn.get());
    }
}

/// Bytes [`Metered`] reads from the body at a time.
pub const READ_BLOCK: usize = 32 * 1024;

/// A buffered reader that charges every byte it hands out to an
/// [`Account`]. serde_json asks its reader for one byte at a time, which
/// should not each be a call into the decompressor; with the buffer here
/// (rather than a `BufReader` beneath) a byte costs a copy and a count. The
/// account counts above the buffer, exactly at the parser's position, so an
/// item's bytes are never counted for its neighbour.
pub struct Metered<'a, 'b, R> {
    inner: R,
    account: &'a Account<'b>,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl<R: Read> Metered<'_, '_, R> {
    #[cold]
    fn refill(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.len = 0;
        self.len = loop {
            match self.inner.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        Ok(())
    }
}

impl<R: Read> Read for Metered<'_, '_, R> {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            if out.len() >= self.buf.len() {
                // A large read bypasses the buffer.
                let n = self.inner.read(out)?;
                self.account.charge(n as u64)?;
                return Ok(n);
            }
            self.refill()?;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.account.charge(n as u64)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    const LIMITS: Limits = Limits {
        item: 1000,
        allowance: 100,
    };

    fn read(account: &Account<'_>, bytes: usize) -> io::Result<()> {
        let data = vec![b'x'; bytes];
        let mut reader = account.reader(&data[..]);
        io::copy(&mut reader, &mut io::sink()).map(|_| ())
    }

    #[test]
    fn bytes_count_where_the_parser_is_not_where_the_buffer_is() {
        let budget = MemoryBudget::new(10 * LIMITS.item, Duration::ZERO);
        let account = Account::new(&budget, LIMITS);
        let data = vec![b'x'; 4 * LIMITS.item as usize];
        let mut reader = account.reader(&data[..]);
        let mut byte = [0u8];
        // The reader has buffered far ahead, but only what was handed out
        // counts: a whole item's worth, twice, right at the limit.
        for _ in 0..2 {
            account.begin_item("note row");
            for _ in 0..LIMITS.item {
                assert_eq!(reader.read(&mut byte).unwrap(), 1);
            }
        }
        assert_eq!(account.held(), 2 * LIMITS.item);
        account.flushed();
        assert_eq!(account.held(), 0);
        // One byte more than an item, and the item is refused.
        account.begin_item("card row");
        for _ in 0..LIMITS.item {
            assert_eq!(reader.read(&mut byte).unwrap(), 1);
        }
        let err = reader.read(&mut byte).unwrap_err();
        assert_eq!(
            refusal(&err),
            Some(Refusal::ItemTooLarge {
                what: "card row",
                limit: LIMITS.item
            })
        );
    }

    #[test]
    fn an_item_over_the_limit_is_refused_with_its_name() {
        let budget = MemoryBudget::new(10 * LIMITS.item, Duration::ZERO);
        let account = Account::new(&budget, LIMITS);
        account.begin_item("note row");
        read(&account, 1000).unwrap();
        account.begin_item("note row");
        read(&account, 600).unwrap();
        let err = read(&account, 401).unwrap_err();
        assert_eq!(
            refusal(&err),
            Some(Refusal::ItemTooLarge {
                what: "note row",
                limit: 1000
            })
        );
        assert!(refusal(&io::Error::other("x")).is_none());
    }

    #[test]
    fn a_request_beyond_its_allowance_draws_one_item_from_the_pool_and_gives_it_back() {
        let budget = MemoryBudget::new(2 * LIMITS.item, Duration::ZERO);
        {
            let account = Account::new(&budget, LIMITS);
            account.begin_item("tag");
            read(&account, 100).unwrap();
            assert_eq!(budget.in_use(), 0, "within the allowance");
            account.begin_item("tag");
            read(&account, 1).unwrap();
            assert_eq!(budget.in_use(), LIMITS.item);
            account.flushed();
            account.begin_item("tag");
            read(&account, 900).unwrap();
            account.begin_item("tag");
            read(&account, 900).unwrap();
            assert_eq!(budget.in_use(), LIMITS.item, "drawn once");
        }
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_spent_pool_refuses_after_waiting() {
        let budget = MemoryBudget::new(LIMITS.item, Duration::from_millis(50));
        let first = Account::new(&budget, LIMITS);
        read(&first, 101).unwrap();
        let second = Account::new(&budget, LIMITS);
        read(&second, 100).unwrap();
        let started = Instant::now();
        let err = read(&second, 1).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            refusal(&err),
            Some(Refusal::Busy {
                wanted: LIMITS.item
            })
        );
        // More than the whole pool can never be had, and is refused at once.
        let small = MemoryBudget::new(LIMITS.item - 1, Duration::from_secs(60));
        let account = Account::new(&small, LIMITS);
        let started = Instant::now();
        assert!(read(&account, 101).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_waiting_request_gets_what_another_gives_back() {
        let budget = Arc::new(MemoryBudget::new(LIMITS.item, Duration::from_secs(20)));
        let first = Account::new(&budget, LIMITS);
        read(&first, 101).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || {
                let second = Account::new(&budget, LIMITS);
                read(&second, 101).map(|_| second.drawn())
            })
        };
        thread::sleep(Duration::from_millis(100));
        drop(first);
        assert_eq!(waiter.join().unwrap().unwrap(), LIMITS.item);
        assert_eq!(budget.in_use(), 0);
    }
}
