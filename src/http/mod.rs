//! HTTP: the worker pool on top of tiny_http, routing, framing and limits.
//! Everything that knows about status codes and headers lives here.

pub mod error;
pub mod framing;
pub mod limit;
mod media_service;
pub mod multipart;
pub mod park;
pub mod route;
pub mod server;
mod service;
pub mod spill;

pub use server::run;
pub use service::Service;
