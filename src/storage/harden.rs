//! Every SQLite connection the server opens is set up so that a collection
//! file cannot run code on the server or hold a core for long, whatever a
//! client uploaded into it (issue 14, item 5):
//!
//! - its schema is not trusted (`trusted_schema` off): functions that are not
//!   innocuous cannot run from it, nor virtual tables from triggers or views;
//! - triggers, views and foreign keys are switched off, and CHECK
//!   constraints ignored: Anki's schema uses none of them, so nothing the
//!   server does ever needs them, and a trigger an upload smuggled in (say a
//!   recursive query on `UPDATE` of `col`) never fires;
//! - "defensive" mode, so no statement can corrupt the file through
//!   `writable_schema` and the like;
//! - each statement gets a run-time budget, enforced by a progress handler;
//! - the connection can be interrupted from another thread, so that shutdown
//!   can stop statements in progress ([`interrupt_all`]).
//!
//! The budget is wall time from (a few thousand instructions after) the
//! start of the statement, proportional to the database file: legitimate
//! statements scale with the data (the slowest, `PRAGMA integrity_check` of
//! an upload, took 14 s of CPU for a 670 MB collection on a 2-core x86 VM,
//! 48 MB/s), so 60 s plus 1 s per MiB
//! leaves slow boards (a Pi Zero is about ten times slower) a wide margin
//! while a runaway statement on a small collection stops within a minute.

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use log::warn;
use rusqlite::config::DbConfig;
use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::{Connection, InterruptHandle};

/// The budget of a database file's statements: [`BASE_BUDGET`] plus one
/// second per MiB of file.
pub fn statement_budget(file_bytes: u64) -> Duration {
    BASE_BUDGET + Duration::from_secs(file_bytes / (1024 * 1024))
}

const BASE_BUDGET: Duration = Duration::from_secs(60);

/// VM instructions between two calls of the progress handler: often enough
/// to stop within microseconds of the budget, rarely enough to cost nothing
/// measurable (one clock read per 10 000 instructions).
const PROGRESS_EVERY: i32 = 10_000;

/// A gap this long between two calls of the progress handler means they
/// belong to different statements (one that was not reset, then another):
/// a running statement calls it every [`PROGRESS_EVERY`] instructions.
const STALE: Duration = Duration::from_secs(1);

thread_local! {
    /// The statement running on this thread: when the progress handler was
    /// first called for it, and last called. SQLite calls the progress
    /// handler and the trace hook on the thread that steps the statement,
    /// and a connection is used by one thread at a time.
    static STATEMENT: Cell<Option<(Instant, Instant)>> = const { Cell::new(None) };
}

/// Connections that may be running a statement, for [`interrupt_all`].
static OPEN: Registry = Registry(Mutex::new(Vec::new()));

/// A set of connections that can be interrupted together. Each `Weak` dies
/// with its connection (its strong twin lives in the progress handler, which
/// SQLite frees on close), so closed ones are pruned.
struct Registry(Mutex<Vec<(Weak<()>, InterruptHandle)>>);

impl Registry {
    fn register(&self, alive: Weak<()>, handle: InterruptHandle) {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(alive, _)| alive.strong_count() > 0);
        open.push((alive, handle));
    }

    fn interrupt_all(&self) -> usize {
        let open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let live = open.iter().filter(|(alive, _)| alive.strong_count() > 0);
        live.map(|(_, handle)| handle.interrupt()).count()
    }
}

/// [`harden`] with the budget of the database file at `path` (its size now).
pub fn harden_file(conn: &Connection, path: &std::path::Path) -> rusqlite::Result<()> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    harden(conn, statement_budget(bytes))
}

/// Applies the settings above to a freshly opened connection, with `budget`
/// for each statement.
pub fn harden(conn: &Connection, budget: Duration) -> rusqlite::Result<()> {
    harden_in(conn, budget, &OPEN)
}

fn harden_in(conn: &Connection, budget: Duration, registry: &Registry) -> rusqlite::Result<()> {
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false),
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
    ] {
        conn.set_db_config(setting, on)?;
    }
    conn.pragma_update(None, "ignore_check_constraints", true)?;
    // The end of each statement (its reset) is reported without its text:
    // the start event would convert the statement's SQL to a Rust string
    // every time (8% of a large download's instructions).
    conn.trace_v2(TraceEventCodes::SQLITE_TRACE_PROFILE, Some(statement_ended));
    let alive = Arc::new(());
    registry.register(Arc::downgrade(&alive), conn.get_interrupt_handle());
    conn.progress_handler(
        PROGRESS_EVERY,
        Some(move || {
            let _alive = &alive;
            over_budget(budget)
        }),
    );
    Ok(())
}

/// Interrupts every statement running on any connection (at shutdown, once
/// requests had their grace period). Returns how many connections were open.
pub fn interrupt_all() -> usize {
    OPEN.interrupt_all()
}

fn statement_ended(event: TraceEvent<'_>) {
    if let TraceEvent::Profile(..) = event {
        STATEMENT.with(|statement| statement.set(None));
    }
}

/// The progress handler: the budget runs from its first call for the
/// statement, a few thousand instructions after the statement began.
fn over_budget(budget: Duration) -> bool {
    let now = Instant::now();
    let started = match STATEMENT.with(Cell::get) {
        Some((started, last)) if now.duration_since(last) < STALE => started,
        _ => now,
    };
    STATEMENT.with(|statement| statement.set(Some((started, now))));
    let over = now.duration_since(started) > budget;
    if over {
        warn!("a database statement ran longer than its {budget:?} budget and was stopped");
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query that runs for hours.
    const SPIN: &str = "with recursive n(i) as (select 1 union all select i + 1 from n)
                        select count(*) from n where i < 0";

    fn hardened(budget: Duration) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        harden(&conn, budget).unwrap();
        conn
    }

    #[test]
    fn a_statement_over_budget_is_stopped_and_the_next_one_runs() {
        let conn = hardened(Duration::from_secs(1));
        let started = Instant::now();
        let err = conn
            .query_row(SPIN, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Statements after it are measured from their own start, however
        // long the connection has been in use.
        let short = "with recursive n(i) as (select 1 union all select i + 1 from n where i < 1000)
                     select count(*) from n";
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(400));
            let n: i64 = conn.query_row(short, [], |r| r.get(0)).unwrap();
            assert_eq!(n, 1000);
        }
    }

    #[test]
    fn the_budget_is_per_statement_however_many_run_back_to_back() {
        let conn = hardened(Duration::from_millis(500));
        // Long enough to call the progress handler many times.
        let medium =
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < 200000)
                      select count(*) from n";
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            let n: i64 = conn.query_row(medium, [], |r| r.get(0)).unwrap();
            assert_eq!(n, 200_000);
            std::thread::sleep(Duration::from_millis(100));
        }
        // A statement left unfinished (not reset) for longer than the
        // budget does not count against the next one.
        let mut open = conn
            .prepare(medium.replace("count(*)", "i").as_str())
            .unwrap();
        let mut rows = open.query([]).unwrap();
        for _ in 0..50_000 {
            rows.next().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1200));
        let other = Connection::open_in_memory().unwrap();
        harden(&other, Duration::from_millis(500)).unwrap();
        let n: i64 = other.query_row(medium, [], |r| r.get(0)).unwrap();
        assert_eq!(n, 200_000);
    }

    #[test]
    fn interrupting_stops_statements_on_other_threads() {
        // A registry of its own: the global one holds other tests' connections.
        let registry = Arc::new(Registry(Mutex::new(Vec::new())));
        let (tx, rx) = std::sync::mpsc::channel();
        let theirs = Arc::clone(&registry);
        let worker = std::thread::spawn(move || {
            let conn = Connection::open_in_memory().unwrap();
            harden_in(&conn, Duration::from_secs(3600), &theirs).unwrap();
            tx.send(()).unwrap();
            conn.query_row(SPIN, [], |r| r.get::<_, i64>(0))
        });
        rx.recv().unwrap();
        let started = Instant::now();
        while !worker.is_finished() {
            // The statement may not have begun yet: interrupt until it ends.
            assert_eq!(registry.interrupt_all(), 1);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not interrupted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let err = worker.join().unwrap().unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        // The worker's connection is closed now: no longer counted, and
        // pruned at the next registration.
        assert_eq!(registry.interrupt_all(), 0);
        let conn = Connection::open_in_memory().unwrap();
        harden_in(&conn, Duration::from_secs(1), &registry).unwrap();
        assert_eq!(registry.0.lock().unwrap().len(), 1);
        assert_eq!(registry.interrupt_all(), 1);
    }

    #[test]
    fn triggers_views_and_checks_never_run() {
        let conn = hardened(Duration::from_secs(60));
        conn.execute_batch(
            "create table col (usn integer);
             insert into col values (1);
             create table log (x);
             create trigger t after update on col begin insert into log values (1); end;
             create table checked (x integer check (x > 0));",
        )
        .unwrap();
        conn.execute("update col set usn = 2", []).unwrap();
        let fired: i64 = conn
            .query_row("select count(*) from log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fired, 0);
        conn.execute("insert into checked values (-1)", []).unwrap();
        // A view cannot be queried.
        conn.execute_batch("create view v as select 1").unwrap();
        assert!(
            conn.query_row("select * from v", [], |r| r.get::<_, i64>(0))
                .is_err()
        );
        // The schema is not trusted, and stays so.
        let trusted: i64 = conn
            .query_row("pragma trusted_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(trusted, 0);
    }

    #[test]
    fn the_budget_grows_with_the_file() {
        assert_eq!(statement_budget(0), Duration::from_secs(60));
        assert_eq!(
            statement_budget(500 * 1024 * 1024),
            Duration::from_secs(560)
        );
    }
}
