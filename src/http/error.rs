//! One error type for a request, and the one place where errors become
//! HTTP statuses: each layer's error (routing, framing, auth, and the
//! [`SyncError`] of the layers below) arrives here with its cause, and
//! [`HandlerError::status`] decides. Bodies follow the official server: the
//! status digits as plain text (clients only look at the status).

use std::fmt;

use crate::auth::AuthError;
use crate::error::{Kind, SyncError};

use super::framing::FramingError;
use super::multipart::MultipartError;
use super::route::RouteError;

#[derive(Debug)]
pub enum HandlerError {
    Route(RouteError),
    Framing(FramingError),
    Auth(AuthError),
    Sync(SyncError),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Route(RouteError::NotFound) => f.write_str("no such route"),
            HandlerError::Route(RouteError::MethodNotAllowed(allow)) => {
                write!(f, "method not allowed (allowed: {allow})")
            }
            HandlerError::Route(RouteError::UnknownMethod(m)) => {
                write!(f, "unknown sync method {m:?}")
            }
            HandlerError::Framing(e) => e.fmt(f),
            HandlerError::Auth(e) => e.fmt(f),
            HandlerError::Sync(e) => e.fmt(f),
        }
    }
}

impl From<RouteError> for HandlerError {
    fn from(e: RouteError) -> Self {
        HandlerError::Route(e)
    }
}
impl From<FramingError> for HandlerError {
    fn from(e: FramingError) -> Self {
        HandlerError::Framing(e)
    }
}
impl From<AuthError> for HandlerError {
    fn from(e: AuthError) -> Self {
        HandlerError::Auth(e)
    }
}
impl From<SyncError> for HandlerError {
    fn from(e: SyncError) -> Self {
        HandlerError::Sync(e)
    }
}
impl From<MultipartError> for HandlerError {
    fn from(e: MultipartError) -> Self {
        match e {
            MultipartError::TooLarge(limit) => HandlerError::Framing(FramingError::TooLarge(limit)),
            MultipartError::Io(e) => HandlerError::Framing(FramingError::Io(e)),
            MultipartError::Storage(e) => {
                HandlerError::Sync(SyncError::internal("storing legacy form data").with_source(e))
            }
            other => HandlerError::Framing(FramingError::Form(other)),
        }
    }
}

impl From<rusqlite::Error> for HandlerError {
    fn from(e: rusqlite::Error) -> Self {
        HandlerError::Sync(e.into())
    }
}
impl From<std::io::Error> for HandlerError {
    fn from(e: std::io::Error) -> Self {
        HandlerError::Sync(e.into())
    }
}

/// What to send for an error.
#[derive(Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u16,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The `Retry-After` header (seconds) of a throttled login.
    pub retry_after: Option<u64>,
}

impl HandlerError {
    pub fn status(&self) -> u16 {
        match self {
            HandlerError::Route(RouteError::NotFound) => 404,
            HandlerError::Route(RouteError::MethodNotAllowed(_)) => 405,
            HandlerError::Route(RouteError::UnknownMethod(_)) => 400,
            HandlerError::Framing(FramingError::ItemTooLarge(_)) => 413,
            HandlerError::Framing(FramingError::Busy(_)) => 429,
            HandlerError::Framing(_) => 400,
            HandlerError::Auth(AuthError::BadCredentials | AuthError::UnknownHostKey) => 403,
            HandlerError::Auth(AuthError::BadAccount { .. }) => 500,
            HandlerError::Auth(AuthError::Throttled { .. }) => 429,
            HandlerError::Sync(e) => match e.kind() {
                Kind::BadRequest => 400,
                Kind::Conflict => 409,
                Kind::ClientTooOld => 501,
                Kind::Busy => 429,
                Kind::Internal => 500,
            },
        }
    }

    pub fn reply(&self) -> ErrorReply {
        let status = self.status();
        let (body, allow) = match self {
            HandlerError::Route(RouteError::NotFound) => (String::new(), None),
            HandlerError::Route(RouteError::MethodNotAllowed(allow)) => {
                (String::new(), Some(*allow))
            }
            HandlerError::Route(RouteError::UnknownMethod(m)) => {
                (format!("Invalid URL: unknown method {m:?}"), None)
            }
            _ => (status.to_string(), None),
        };
        let retry_after = match self {
            HandlerError::Auth(AuthError::Throttled { retry_after }) => {
                Some(retry_after.as_secs().max(1))
            }
            _ => None,
        };
        ErrorReply {
            status,
            body,
            allow,
            retry_after,
        }
    }

    /// Whether the request body may still hold unread bytes worth draining
    /// before answering (not after a broken connection or a spent budget).
    pub fn body_is_drainable(&self) -> bool {
        !matches!(
            self,
            HandlerError::Framing(FramingError::TooLarge(_) | FramingError::Io(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_official_server() {
        let cases: Vec<(HandlerError, u16, &str)> = vec![
            (RouteError::NotFound.into(), 404, ""),
            (RouteError::MethodNotAllowed("POST").into(), 405, ""),
            (FramingError::UnsupportedVersion(12).into(), 400, "400"),
            (AuthError::BadCredentials.into(), 403, "403"),
            (AuthError::UnknownHostKey.into(), 403, "403"),
            (SyncError::bad_request("x").into(), 400, "400"),
            (SyncError::conflict("x").into(), 409, "409"),
            (SyncError::client_too_old("x").into(), 501, "501"),
            (SyncError::internal("x").into(), 500, "500"),
            (SyncError::new(Kind::Busy, "x").into(), 429, "429"),
            (
                AuthError::Throttled {
                    retry_after: std::time::Duration::from_millis(8500),
                }
                .into(),
                429,
                "429",
            ),
        ];
        for (err, status, body) in cases {
            let reply = err.reply();
            assert_eq!((reply.status, reply.body.as_str()), (status, body), "{err}");
        }
        assert_eq!(
            HandlerError::from(RouteError::MethodNotAllowed("GET, HEAD"))
                .reply()
                .allow,
            Some("GET, HEAD")
        );
    }
}
