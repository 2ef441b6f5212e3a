//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(feature = "ssl-rustls")]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use limits::Limits;
pub use request::Request;
pub use response::{Response, ResponseBox};
pub use test::TestRequest;

mod client;
mod common;
mod connection;
mod framing;
mod limits;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // requests read by the connection threads (and requeued ones)
    messages: Arc<MessagesQueue<Request>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // anki-sync-lite patch 2: when true, new connections get a `503`
    draining: Arc<AtomicBool>,

    // anki-sync-lite patch 2: the open connections, for `open_connections`
    registry: Arc<limits::Registry>,

    // anki-sync-lite patch 13: what serves a request on the thread of the
    // connection that read it, if anything
    inline: Arc<RwLock<Option<InlineHandler>>>,
}

/// Serves a request on the thread of the connection that read it, or gives
/// it back to be queued for `recv` (anki-sync-lite patch 13).
pub type InlineHandler = Arc<dyn Fn(Request) -> Option<Request> + Send + Sync>;

/// The request for the queue: `rq` unless the inline handler, if any, took
/// it (anki-sync-lite patch 13).
fn unless_served_inline(inline: &RwLock<Option<InlineHandler>>, rq: Request) -> Option<Request> {
    let handler = inline
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match handler {
        Some(handler) => handler(rq),
        None => Some(rq),
    }
}

/// How long the accept loop waits after an error that is not transient
/// (anki-sync-lite patch 5): at first, and at most while it lasts.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(5);

// A `Server` is shared by worker threads.
const _: () = {
    const fn is_sync_and_send<T: Sync + Send>() {}
    is_sync_and_send::<Server>()
};

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// anki-sync-lite patch 6: which TLS versions to offer (at least one).
    pub tls1_2: bool,
    pub tls1_3: bool,
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(feature = "ssl-rustls")]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_limits(listener, ssl_config, Limits::default())
    }

    /// Like [`Server::from_listener`], with limits against slow and hostile
    /// clients (anki-sync-lite patches 1-3).
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        let registry = Arc::new(limits::Registry::new(limits));
        let inside_registry = registry.clone();
        let rejecter = limits::Rejecter::start()?;
        let draining = Arc::new(AtomicBool::new(false));
        let inside_draining = draining.clone();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(not(feature = "ssl-rustls"))]
        type SslContext = ();
        #[cfg(feature = "ssl-rustls")]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(feature = "ssl-rustls")]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                    config.tls1_2,
                    config.tls1_3,
                )?),
                #[cfg(not(feature = "ssl-rustls"))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        let inline: Arc<RwLock<Option<InlineHandler>>> = Arc::default();
        let inside_inline = inline.clone();
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();

            log::debug!("Running accept thread");
            let mut backoff = MIN_ACCEPT_BACKOFF;
            while !inside_close_trigger.load(Relaxed) {
                let new_client = match server.accept() {
                    Ok((sock, _)) => {
                        // (Drop connects to us to end this loop)
                        if inside_close_trigger.load(Relaxed) {
                            break;
                        }
                        // anki-sync-lite patch 2: a cap on open connections
                        // instead of one more thread for each (tiny-http#221).
                        // The socket options (write timeout, TCP_NODELAY)
                        // are set here too, on the accepted connection.
                        let slot = match inside_draining.load(Relaxed) {
                            true => Ok(Err(limits::Refusal::Full)),
                            false => inside_registry.admit(&sock),
                        };
                        let slot = match slot {
                            Ok(Ok(slot)) => slot,
                            Ok(Err(_)) => {
                                // a TLS client cannot read a plain-text answer
                                if ssl.is_none() {
                                    rejecter.reject(sock);
                                }
                                continue;
                            }
                            Err(_) => continue,
                        };
                        use util::RefinedTcpStream;
                        let (read_closable, write_closable) = match ssl {
                            None => RefinedTcpStream::new(sock, slot),
                            #[cfg(feature = "ssl-rustls")]
                            Some(ref ssl) => {
                                // trying to apply SSL over the connection
                                // if an error occurs, we just close the socket and resume listening
                                let sock = match ssl.accept(sock) {
                                    Ok(s) => s,
                                    Err(_) => continue,
                                };

                                RefinedTcpStream::new(sock, slot)
                            }
                            #[cfg(not(feature = "ssl-rustls"))]
                            Some(ref _ssl) => unreachable!(),
                        };

                        Ok(ClientConnection::new(write_closable, read_closable))
                    }
                    Err(e) => Err(e),
                };

                match new_client {
                    Ok(client) => {
                        let messages = inside_messages.clone();
                        let inline = inside_inline.clone();
                        let mut client = Some(client);
                        tasks_pool.spawn(Box::new(move || {
                            if let Some(client) = client.take() {
                                // Synchronization is needed for HTTPS requests to avoid a deadlock
                                if client.secure() {
                                    let (sender, receiver) = mpsc::channel();
                                    for rq in client {
                                        let Some(rq) = unless_served_inline(&inline, rq) else {
                                            continue;
                                        };
                                        messages.push(rq.with_notify_sender(sender.clone()));
                                        receiver.recv().unwrap();
                                    }
                                } else {
                                    for rq in client {
                                        let Some(rq) = unless_served_inline(&inline, rq) else {
                                            continue;
                                        };
                                        messages.push(rq);
                                    }
                                }
                            }
                        }));
                    }

                    // anki-sync-lite patch 5: errors that concern one
                    // connection (ECONNABORTED) or a passing shortage (EMFILE,
                    // ENOBUFS) must not end the accept loop (tiny-http#283).
                    Err(e) if accept_error_is_transient(&e) => {
                        log::warn!("Error accepting new client (retrying): {}", e);
                        thread::sleep(Duration::from_millis(50));
                    }

                    // Nor do other errors: the listener is still ours, so
                    // it is tried again, less often while the error lasts.
                    Err(e) => {
                        log::error!(
                            "Error accepting new client (retrying in {:?}): {}",
                            backoff,
                            e
                        );
                        thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                }
                backoff = MIN_ACCEPT_BACKOFF;
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            draining,
            registry,
            inline,
        })
    }

    /// From now on, each connection's thread gives the requests it reads to
    /// `handler` first, which serves them there or gives them back for the
    /// queue; with `None`, all go to the queue again (anki-sync-lite patch
    /// 13). A request being served keeps the handler it was given.
    pub fn set_inline(&self, handler: Option<InlineHandler>) {
        *self.inline.write().unwrap_or_else(PoisonError::into_inner) = handler;
    }

    /// How many client connections are open now (anki-sync-lite patch 2).
    pub fn open_connections(&self) -> usize {
        self.registry.open()
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(rq) => Ok(rq),
            None => Err(IoError::other("thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(rq) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(rq) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Puts `rq` back in the queue, behind the requests already there, for
    /// the next `recv`; [`Request::requeued`] tells it apart (anki-sync-lite
    /// patch 11). An application that holds requests back for a while (a
    /// throttled login) returns them to the threads serving the queue.
    pub fn requeue(&self, mut rq: Request) {
        rq.mark_requeued();
        self.messages.push(rq);
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }

    /// From now on, answer every new connection with a `503` and close it
    /// (anki-sync-lite patch 2, for a clean shutdown). Open connections are
    /// served as before.
    pub fn drain(&self) {
        self.draining.store(true, Relaxed);
    }
}

/// `Connection: close`, for answers after which the connection is closed
/// (anki-sync-lite patch 7).
pub(crate) fn close_header() -> Header {
    Header::from_bytes(&b"Connection"[..], &b"close"[..]).unwrap()
}

/// True for `accept` errors after which the listener still works
/// (anki-sync-lite patch 5).
fn accept_error_is_transient(e: &IoError) -> bool {
    match e.kind() {
        IoErrorKind::ConnectionAborted
        | IoErrorKind::ConnectionReset
        | IoErrorKind::Interrupted
        | IoErrorKind::WouldBlock
        | IoErrorKind::TimedOut
        | IoErrorKind::OutOfMemory => true,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM (firewalls) and the
        // network errors Linux passes on from accept(2)
        _ => matches!(
            e.raw_os_error(),
            Some(24 | 23 | 105 | 12 | 71 | 1 | 100 | 101 | 64 | 92 | 113 | 110)
        ),
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_requeued_request_comes_back_marked_and_can_be_answered() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let first = server.recv().unwrap();
        assert!(!first.requeued());
        server.requeue(first);
        let again = server
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("the requeued request");
        assert!(again.requeued());
        assert_eq!(again.url(), "/x");
        again.respond(Response::from_string("ok")).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
    }

    /// Patch 13: the inline handler serves what it takes on the connection's
    /// thread, what it gives back goes to the queue, in the connection's
    /// order; without a handler, everything is queued.
    #[test]
    fn the_inline_handler_serves_or_gives_back() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&served);
        server.set_inline(Some(Arc::new(move |rq: Request| {
            if rq.url() != "/inline" {
                return Some(rq);
            }
            seen.lock().unwrap().push(thread::current().id());
            rq.respond(Response::from_string("inline")).unwrap();
            None
        })));
        let mut client = TcpStream::connect(addr).unwrap();
        let mut ask = |url: &str, last: bool| {
            let close = if last { "Connection: close\r\n" } else { "" };
            let head = format!("GET {url} HTTP/1.1\r\nHost: a\r\n{close}\r\n");
            client.write_all(head.as_bytes()).unwrap();
        };
        ask("/inline", false);
        ask("/queued", true);
        let queued = server
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("the request given back");
        assert_eq!(queued.url(), "/queued");
        queued.respond(Response::from_string("queued")).unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).unwrap();
        let inline_at = answers.find("inline").expect("the inline answer");
        assert!(answers[inline_at..].ends_with("queued"), "{answers}");
        let threads = served.lock().unwrap().clone();
        assert_eq!(threads.len(), 1);
        assert_ne!(threads[0], thread::current().id());

        server.set_inline(None);
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"GET /inline HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let queued = server
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("queued without a handler");
        assert_eq!(queued.url(), "/inline");
        assert_eq!(served.lock().unwrap().len(), 1);
    }
}
