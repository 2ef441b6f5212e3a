//! The server: tiny_http reads each connection on a thread of its own, and
//! a request is handled right there, on the thread that read it, when one of
//! the `SYNC_WORKERS` places is free ([`Gate`]). Handing every request to a
//! pool worker instead cost two thread wake-ups per request, about a tenth
//! of a normal sync's server CPU. Requests that find every place taken wait
//! in tiny_http's queue for the pool workers, who take a place first, as do
//! parked logins whose turn has come. The main thread closes idle
//! collections, has those idle for a few seconds give back their page
//! caches, hands the freed heap back to the system, and drives a clean
//! shutdown.
//!
//! Slow and hostile clients are handled in our own tiny_http
//! (vendor/tiny_http/PATCHES.md): read and write timeouts, a header deadline,
//! a minimum rate, connection caps (in all and per client address),
//! header-size limits and strict framing, configured here.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use tiny_http::{Header, Limits, Request, Response, SslConfig};

use super::Service;
use super::gate::Gate;
use super::login::LoginTurn;
use super::park::Park;
use super::service::Handled;
use crate::config::Config;

/// How often the main thread looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// How long an idle worker waits for a request before it looks at the
/// shutdown flag.
const WORKER_WAIT: Duration = Duration::from_secs(1);
/// How often the main thread looks for idle collections, caches and zstd
/// contexts.
const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A collection left open but unused this long gives back its page cache:
/// longer than the pauses inside one sync session (a client's requests
/// follow each other within milliseconds, its media sync right after), short
/// enough that the caches of users who synced a moment ago do not add up
/// while others sync.
const CACHE_RELEASE_AFTER: Duration = Duration::from_secs(5);

/// While a request is being read, a client must send at least this many bytes
/// per second of our waiting (1 KiB/s: far below any working mobile link,
/// while a trickle that pins a worker is cut off), checked every
/// `RATE_WINDOW` or read timeout, whichever is shorter.
const MIN_RATE: u64 = 1024;
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Logins the throttle holds back at once; more are refused with 429.
/// (Each also holds a connection, which the connection caps bound too.)
const MAX_PARKED_LOGINS: usize = 256;

/// Request line and headers: Anki sends a few hundred bytes.
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

/// Serves until `shutdown` becomes true; then lets in-flight requests finish
/// and closes every collection.
pub fn run(
    service: Service,
    listener: TcpListener,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let ssl = read_tls(&service.config)?;
    let limits = limits(&service.config);
    let server = Arc::new(start_tiny_http(&listener, &ssl, &limits)?);
    let service = Arc::new(service);
    let addr: SocketAddr = listener.local_addr()?;
    let workers = service.config.workers;
    // Logins the throttle makes wait are parked; at their turn they go back
    // in the queue, marked as requeued.
    let requeue = Arc::clone(&server);
    let park = Arc::new(Park::start(MAX_PARKED_LOGINS, move |request| {
        requeue.requeue(request);
    })?);

    let gate = Arc::new(Gate::new(workers));

    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let server = Arc::clone(&server);
        let service = Arc::clone(&service);
        let park = Arc::clone(&park);
        let gate = Arc::clone(&gate);
        let shutdown = Arc::clone(&shutdown);
        handles.push(
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&server, &service, &park, &gate, &shutdown))?,
        );
    }
    server.set_inline(Some(inline(
        Arc::downgrade(&server),
        Arc::clone(&service),
        park,
        Arc::clone(&gate),
        Arc::clone(&shutdown),
    )));

    let scheme = if ssl.is_some() { "https" } else { "http" };
    info!("listening on {scheme}://{addr}{}", service.config.base_path);
    let idle = Duration::from_secs(service.config.idle_close_secs);
    let mut last_sweep = Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        thread::sleep(TICK);
        if handles.iter().all(|h| h.is_finished()) {
            error!("all workers have stopped");
            break;
        }
        if last_sweep.elapsed() >= IDLE_SWEEP_EVERY {
            let closed = service.store.close_idle(idle);
            let released = service.store.release_idle_caches(CACHE_RELEASE_AFTER);
            let dropped = super::zstd_pool::release_if_idle(idle) > 0;
            if closed || released || dropped {
                crate::memory::trim();
            }
            last_sweep = Instant::now();
        }
    }

    info!("shutting down: finishing requests in progress");
    // Requests on open connections now go to the workers, who answer 503
    // (and the handler's share of the park is dropped); new connections get a
    // 503 too, until the requests in progress have finished.
    server.set_inline(None);
    server.drain();
    let all_finished = wait_for_workers(&handles, &server, &gate);
    if all_finished {
        for handle in handles {
            if handle.join().is_err() {
                error!("a worker thread panicked during shutdown");
            }
        }
        // What came in (or back from the park) as the last workers stopped.
        while let Ok(Some(request)) = server.try_recv() {
            refuse(request);
        }
        service.store.close_all();
    } else {
        // Whatever those requests were doing is safe to drop: uploads are
        // renamed into place only when complete, and an unfinished sync
        // transaction rolls back. Close what no request holds.
        service.store.close_idle(Duration::ZERO);
    }
    drop(server);
    info!("stopped");
    Ok(())
}

/// What handles a request on the thread of the connection that read it,
/// when a place is free; else it goes to the queue for the workers.
fn inline(
    server: Weak<tiny_http::Server>,
    service: Arc<Service>,
    park: Arc<Park<Request>>,
    gate: Arc<Gate>,
    shutdown: Arc<AtomicBool>,
) -> tiny_http::InlineHandler {
    Arc::new(move |request: Request| {
        let Some(_place) = gate.try_enter() else {
            return Some(request);
        };
        // (After `shutdown` is set, requests go to the workers, who refuse
        // them; this catches one read just as it was set.)
        if shutdown.load(Ordering::SeqCst) {
            refuse(request);
            return None;
        }
        if let Some(server) = server.upgrade() {
            serve(&server, &service, &park, request);
        }
        None
    })
}

/// A worker: takes requests that found every place taken, and parked logins
/// whose turn has come, until shutdown.
fn work(
    server: &tiny_http::Server,
    service: &Service,
    park: &Park<Request>,
    gate: &Gate,
    shutdown: &AtomicBool,
) {
    loop {
        let request = match server.recv_timeout(WORKER_WAIT) {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) if shutdown.load(Ordering::SeqCst) => break,
            Ok(None) | Err(_) => continue,
        };
        // Requests still queued when shutdown begins are answered, not
        // started: checked before waiting for a place (no wait to refuse)
        // and after (shutdown may have begun meanwhile).
        if shutdown.load(Ordering::SeqCst) {
            refuse(request);
            continue;
        }
        let _place = gate.enter();
        if shutdown.load(Ordering::SeqCst) {
            refuse(request);
            continue;
        }
        serve(server, service, park, request);
    }
}

/// Handles one request, on whichever thread holds its place.
fn serve(server: &tiny_http::Server, service: &Service, park: &Park<Request>, request: Request) {
    // Counted before the request is handled, so a scrape sees its own
    // connection.
    if service.config.metrics {
        service
            .metrics
            .set_open_connections(server.open_connections());
    }
    // A requeued request is a parked login whose turn has come.
    let decided = request.requeued().then_some(LoginTurn::Check);
    if let Handled::Park(due, request) = service.handle(request, decided) {
        if let Err(request) = park.park(due, request) {
            // The park is full: a prompt 429 rather than a wait here.
            let wait = due.saturating_duration_since(Instant::now());
            service.handle(request, Some(LoginTurn::Refused(wait)));
        }
    }
}

/// How long requests in progress may take to finish after a shutdown
/// signal, and then how long after their database statements were
/// interrupted. Together well under the 10 s a container runtime waits
/// before it kills (`docker stop`), so shutdown is always a clean one.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const AFTER_INTERRUPT: Duration = Duration::from_secs(3);

/// Waits for the workers and the connections' threads to finish their
/// requests, answering requests that still arrive with 503. After
/// [`SHUTDOWN_GRACE`], running database statements are interrupted (a huge
/// integrity check, a statement stuck in a loop); after [`AFTER_INTERRUPT`]
/// more, requests still running (sending to or reading from a slow client)
/// are left behind. True if all finished.
fn wait_for_workers(
    handles: &[thread::JoinHandle<()>],
    server: &tiny_http::Server,
    gate: &Gate,
) -> bool {
    let started = Instant::now();
    let mut interrupted = false;
    loop {
        let busy = handles.iter().filter(|h| !h.is_finished()).count() + gate.taken();
        if busy == 0 {
            return true;
        }
        if !interrupted && started.elapsed() >= SHUTDOWN_GRACE {
            let open = crate::storage::harden::interrupt_all();
            warn!(
                "{busy} request(s) still running after {SHUTDOWN_GRACE:?}: \
                 interrupting the database statements of {open} open database(s)"
            );
            interrupted = true;
        }
        if started.elapsed() >= SHUTDOWN_GRACE + AFTER_INTERRUPT {
            warn!("stopping without {busy} request(s) still in progress");
            return false;
        }
        if let Ok(Some(request)) = server.recv_timeout(TICK) {
            refuse(request);
        }
    }
}

/// The answer to a request that arrives during shutdown.
fn refuse(request: Request) {
    let header = |name: &str, value: &str| {
        Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
    };
    let response = Response::from_string("the server is shutting down; please sync again")
        .with_status_code(503)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .with_header(header("Retry-After", "10"))
        .with_header(header("Connection", "close"));
    let _ = request.respond(response);
}

fn limits(config: &Config) -> Limits {
    let read_timeout = Duration::from_secs(config.read_timeout_secs);
    Limits {
        read_timeout,
        header_timeout: Duration::from_secs(config.header_timeout_secs),
        min_rate: MIN_RATE,
        rate_window: RATE_WINDOW.min(read_timeout),
        // A client that stops reading (e.g. in the middle of a download,
        // which holds that user's lock) cannot hold a worker forever.
        write_timeout: Some(Duration::from_secs(config.timeout_secs)),
        // tiny_http writes a response's head and body separately: without
        // this, every small answer (each sync chunk) would wait ~40 ms for
        // the client's delayed ACK.
        nodelay: true,
        max_connections: config.max_connections,
        max_connections_per_addr: config.max_connections_per_ip,
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: MAX_HEADERS,
    }
}

/// Reads the certificate chain and key once, at start-up, so that a wrong
/// path stops the server with a clear message.
fn read_tls(config: &Config) -> std::io::Result<Option<SslConfig>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let read = |var: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{var} {}: {e}", path.display())))
    };
    Ok(Some(SslConfig {
        certificate: read("SYNC_TLS_CERT", &tls.cert)?,
        private_key: read("SYNC_TLS_KEY", &tls.key)?,
        tls1_2: tls.tls1_2,
        tls1_3: tls.tls1_3,
    }))
}

fn start_tiny_http(
    listener: &TcpListener,
    ssl: &Option<SslConfig>,
    limits: &Limits,
) -> std::io::Result<tiny_http::Server> {
    tiny_http::Server::from_listener_with_limits(listener.try_clone()?, ssl.clone(), limits.clone())
        .map_err(|e| std::io::Error::other(format!("starting the HTTP server: {e}")))
}
