//! The one error type of the fixture.

use std::error::Error as StdError;
use std::fmt;

use tokio_postgres::error::SqlState;

/// What part of the fixture failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No PostgreSQL server binaries (`postgres`, `initdb`) were found.
    NoServerBinaries,
    /// A file or process operation failed.
    Io,
    /// A server program (`initdb`, `pg_basebackup`, ...) exited unsuccessfully.
    Command,
    /// The server did not start, or did not become ready in time.
    Startup,
    /// A control statement against the server failed.
    Postgres,
    /// Generating or signing a certificate failed.
    Certificate,
    /// Waiting for a condition on the server timed out.
    Timeout,
    /// The builder was given settings that cannot work together.
    InvalidConfig,
    /// No `pgbouncer` binary was found.
    NoPgBouncer,
    /// The Docker engine is unreachable, or refused or failed an operation
    /// of the container backend.
    Docker,
    /// The operation exists only on the other backend (e.g.
    /// [`Cluster::disconnect_network`](crate::Cluster::disconnect_network)
    /// on local processes).
    Unsupported,
}

/// An error of the test fixture.
///
/// Messages never contain a password: they name the operation that failed,
/// and where the server was involved, its error message or the tail of its log.
pub struct FixtureError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl FixtureError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, action, source)
    }

    /// A failed control statement; the message carries the server's own error
    /// text, since `tokio_postgres::Error`'s Display is only "db error".
    pub(crate) fn postgres(action: impl Into<String>, source: tokio_postgres::Error) -> Self {
        let detail = match source.as_db_error() {
            Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            None => match source.source() {
                Some(cause) => format!("{source}: {cause}"),
                None => source.to_string(),
            },
        };
        let message = format!("{}: {detail}", action.into());
        Self::with_source(ErrorKind::Postgres, message, source)
    }

    /// A failed Docker operation; the message carries the engine's answer.
    #[cfg(feature = "containers")]
    pub(crate) fn docker(
        action: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        let message = format!("{}: {source}", action.into());
        Self::with_source(ErrorKind::Docker, message, source)
    }

    pub(crate) fn certificate(source: rcgen::Error) -> Self {
        Self::with_source(
            ErrorKind::Certificate,
            "generating a test certificate",
            source,
        )
    }

    /// What part of the fixture failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The SQLSTATE of the server error behind this error, if there was one.
    pub fn code(&self) -> Option<&SqlState> {
        self.source
            .as_deref()
            .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
            .and_then(tokio_postgres::Error::code)
    }
}

impl fmt::Debug for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixtureError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for FixtureError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
