//! HTTP: where requests run on top of tiny_http, routing, framing and limits,
//! and the handlers that turn requests into calls of the per-user layer.
//! Everything that knows about status codes and headers lives here.
//!
//! - `server`: where requests run, and `gate`: how many at once; `service`:
//!   a request from and back to the socket; `dispatch`: the request path
//!   itself, without a socket.
//! - `route`, `framing` (v11 header and zstd bodies), `legacy` and
//!   `multipart` (pre-2.1.57 forms), `spill`, `body`, `limit`: the request.
//! - `sync_handlers`, `media_handlers`: one handler per protocol method.
//! - `reply`: encoding answers; `error`: errors become statuses, once.
//! - `login`: password logins and the throttle around them.
//! - `park`: requests that must wait their turn, held without a worker.
//! - `zstd_pool`: zstd contexts kept between requests.

mod body;
pub mod dispatch;
pub mod error;
pub mod framing;
mod gate;
mod legacy;
pub mod limit;
pub(crate) mod login;
mod media_handlers;
pub mod multipart;
pub mod park;
pub mod recent;
mod reply;
pub mod route;
pub mod server;
mod service;
pub mod spill;
mod sync_handlers;
mod zstd_pool;

pub use server::run;
pub use service::Service;
