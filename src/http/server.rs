//! The thread-pool server: one dispatcher thread takes requests from
//! tiny_http and hands them over a bounded channel to a fixed number of
//! workers. The dispatcher also rebuilds the tiny_http server if its accept
//! loop dies (tiny_http ends it on any accept error, e.g. `ECONNABORTED`),
//! closes idle collections, and drives a clean shutdown.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use log::{error, info, warn};

use super::Service;

/// How often the dispatcher looks at the shutdown flag and idle collections.
const TICK: Duration = Duration::from_millis(200);
const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Serves until `shutdown` becomes true; then lets in-flight requests finish
/// and closes every collection.
pub fn run(
    service: Service,
    listener: TcpListener,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let timeout = Duration::from_secs(service.config.timeout_secs);
    let listener = with_socket_options(listener, timeout)?;
    let service = Arc::new(service);
    let addr: SocketAddr = listener.local_addr()?;
    let workers = service.config.workers;
    let (tx, rx) = bounded::<tiny_http::Request>(workers * 2);

    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let rx = rx.clone();
        let service = Arc::clone(&service);
        handles.push(
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    for request in rx.iter() {
                        service.handle(request);
                    }
                })?,
        );
    }
    drop(rx);

    let mut server = start_tiny_http(&listener)?;
    info!("listening on http://{addr}{}", service.config.base_path);
    let idle = Duration::from_secs(service.config.idle_close_secs);
    let mut last_sweep = Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        match server.recv_timeout(TICK) {
            Ok(Some(request)) => {
                if tx.send(request).is_err() {
                    error!("all workers have stopped");
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // tiny_http's accept thread has ended; our listener is still
                // bound, so start a new accept thread on it.
                warn!("accept failed ({e}); restarting the listener");
                thread::sleep(Duration::from_millis(100));
                server = start_tiny_http(&listener)?;
            }
        }
        if last_sweep.elapsed() >= IDLE_SWEEP_EVERY {
            service.store.close_idle(idle);
            last_sweep = Instant::now();
        }
    }

    info!("shutting down: finishing requests in progress");
    drop(tx);
    for handle in handles {
        if handle.join().is_err() {
            error!("a worker thread panicked during shutdown");
        }
    }
    service.store.close_all();
    drop(server);
    info!("stopped");
    Ok(())
}

/// Sets options every accepted connection inherits from the listening
/// socket (on Linux), since tiny_http offers no hook for them:
/// - a write timeout, so a client that stops reading (e.g. in the middle of a
///   download, which holds that user's lock) cannot hold a worker forever;
/// - `TCP_NODELAY`, because tiny_http writes a response's headers and body
///   separately: with Nagle's algorithm and the client's delayed ACKs, every
///   small answer (each sync chunk) would wait ~40 ms.
///
/// (A read timeout cannot be set this way: on a listener it also makes
/// `accept` time out.)
fn with_socket_options(listener: TcpListener, timeout: Duration) -> std::io::Result<TcpListener> {
    let socket = TcpStream::from(OwnedFd::from(listener));
    let set = socket
        .set_write_timeout(Some(timeout))
        .and_then(|()| socket.set_nodelay(true));
    let listener = TcpListener::from(OwnedFd::from(socket));
    set.map(|()| listener)
}

fn start_tiny_http(listener: &TcpListener) -> std::io::Result<tiny_http::Server> {
    tiny_http::Server::from_listener(listener.try_clone()?, None)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
