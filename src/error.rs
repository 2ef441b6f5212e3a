//! The error of the layers below `http` (the per-user layer, collection and
//! media sync, backups, storage). It says whose fault a failure is (its
//! [`Kind`]), what we were doing (the context) and keeps the error underneath
//! (the source) for the log. It lives at the crate's root so every layer can
//! reach it without importing a layer above; `http::error` turns kinds into
//! statuses, the one place that does.

use std::error::Error;
use std::fmt;
use std::io;

/// Whose fault a failure is, which decides the answer the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The client sent something we cannot apply: malformed JSON, rows that
    /// break the collection's rules, a bad media zip.
    BadRequest,
    /// The request does not fit the state it meets: no sync in progress,
    /// another device's session, a media file that is not there.
    Conflict,
    /// The client speaks a protocol older than we serve.
    ClientTooOld,
    /// The user already runs as many requests of this kind as one may at
    /// once; the client may try again shortly.
    Busy,
    /// Our own fault: the disk, the database, a bug.
    Internal,
}

type Source = Box<dyn Error + Send + Sync + 'static>;

/// A failure, whose fault it is, what was being done, and why.
#[derive(Debug)]
pub struct SyncError {
    kind: Kind,
    context: String,
    source: Option<Source>,
}

impl SyncError {
    pub fn new(kind: Kind, context: impl Into<String>) -> SyncError {
        SyncError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn bad_request(context: impl Into<String>) -> SyncError {
        SyncError::new(Kind::BadRequest, context)
    }

    pub fn conflict(context: impl Into<String>) -> SyncError {
        SyncError::new(Kind::Conflict, context)
    }

    pub fn client_too_old(context: impl Into<String>) -> SyncError {
        SyncError::new(Kind::ClientTooOld, context)
    }

    pub fn internal(context: impl Into<String>) -> SyncError {
        SyncError::new(Kind::Internal, context)
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> SyncError {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn context(&self) -> &str {
        &self.context
    }
}

/// "context: cause", for a log line or a command's message; the kind is
/// told by the status the log line carries.
impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl Error for SyncError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

/// SQLite failures are ours, except a broken constraint (a UNIQUE index, a
/// NOT NULL column, a type check): every row we write while a client syncs
/// carries that client's data, so such a failure means the data breaks the
/// collection's rules, and the client must check its database.
impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        let kind = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation | rusqlite::ErrorCode::TypeMismatch) => {
                Kind::BadRequest
            }
            _ => Kind::Internal,
        };
        SyncError::new(kind, "database").with_source(e)
    }
}

impl From<io::Error> for SyncError {
    fn from(e: io::Error) -> Self {
        SyncError::internal("i/o").with_source(e)
    }
}

/// Attaches a kind and a context to any error (or to a missing value) in
/// one readable call: `row.or_bad_request("note 3")?`.
pub trait OrSyncError<T> {
    fn or_error(self, kind: Kind, context: impl Into<String>) -> Result<T, SyncError>;

    fn or_bad_request(self, context: impl Into<String>) -> Result<T, SyncError>
    where
        Self: Sized,
    {
        self.or_error(Kind::BadRequest, context)
    }

    fn or_conflict(self, context: impl Into<String>) -> Result<T, SyncError>
    where
        Self: Sized,
    {
        self.or_error(Kind::Conflict, context)
    }

    fn or_internal(self, context: impl Into<String>) -> Result<T, SyncError>
    where
        Self: Sized,
    {
        self.or_error(Kind::Internal, context)
    }
}

impl<T, E: Into<Source>> OrSyncError<T> for Result<T, E> {
    fn or_error(self, kind: Kind, context: impl Into<String>) -> Result<T, SyncError> {
        self.map_err(|e| SyncError::new(kind, context).with_source(e))
    }
}

impl<T> OrSyncError<T> for Option<T> {
    fn or_error(self, kind: Kind, context: impl Into<String>) -> Result<T, SyncError> {
        self.ok_or_else(|| SyncError::new(kind, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_has_kind_context_and_cause() {
        let e = Err::<(), _>(io::Error::other("disk full"))
            .or_internal("writing the upload")
            .unwrap_err();
        assert_eq!(e.to_string(), "writing the upload: disk full");
        assert_eq!(e.source().unwrap().to_string(), "disk full");
        let e = None::<u8>.or_conflict("no active sync").unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (Kind::Conflict, "no active sync")
        );
        assert!(e.source().is_none());
    }

    #[test]
    fn broken_constraints_are_the_clients_fault_other_database_errors_ours() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("create table t (x text not null unique collate nocase)")
            .unwrap();
        conn.execute("insert into t values ('Front')", []).unwrap();
        let dup = conn
            .execute("insert into t values ('front')", [])
            .unwrap_err();
        assert_eq!(SyncError::from(dup).kind(), Kind::BadRequest);
        let missing = conn
            .execute("insert into nosuch values (1)", [])
            .unwrap_err();
        let e = SyncError::from(missing);
        assert_eq!(e.kind(), Kind::Internal);
        assert!(e.to_string().starts_with("database: no such table"), "{e}");
    }
}
