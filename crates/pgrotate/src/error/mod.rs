//! The one error type of the crate.
//!
//! An [`Error`] has one kind ([`ErrorKind`]: what a caller acts on) and the
//! predicates a web app maps to a status in one match
//! ([`Error::is_callers_error`] → 4xx, [`Error::is_unavailable`] → 503,
//! [`Error::is_retryable`], [`Error::is_credentials`]), the server's
//! SQLSTATE ([`Error::code`], [`Error::as_db_error`]) and, when a
//! tokio-postgres error is behind it, how the pool classified that error
//! ([`Error::fault`], the table in [`crate::classify`]).
//!
//! `{e}` says what failed in pgrotate's own words, with the server's
//! message when there is one (tokio-postgres's own `Display` says only "db
//! error"); its causes are left to [`std::error::Error::source`], each
//! reachable (a [`crate::TlsError`] included), and `{e:#}` prints them all,
//! once each — the form for a log line. No message holds a password or
//! token: every one is built from parts that hold none (SQLSTATE, the
//! server's message, a source's description, a redacted URL).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};

mod kind;

pub use kind::ErrorKind;

use crate::classify::Fault;
use crate::source::SourceError;

type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible pgrotate operation.
///
/// Cheap to clone (its cause is shared), so one refetch failure can be handed
/// to every caller that waited for it.
///
/// ```
/// # async fn demo(pool: pgrotate::Pool) {
/// match pool.run(async move |c| c.execute("insert into t values (1)", &[]).await).await {
///     Ok(_) => {}
///     Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
///         // the caller's own error: returned as it is, never retried
///     }
///     Err(e) => eprintln!("{e:#}"), // what failed, the server's message, and every cause
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    fault: Option<Fault>,
    detail: String,
    attempts: Option<u32>,
    cause: Option<Cause>,
    /// What the retry loops read besides the kind, if anything.
    marker: Option<Marker>,
}

/// How the retry loops treat an error, besides its kind: one at the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// No server answered where the URL points (refused, no answer in
    /// time, shutting down): nothing ran, and the server may be back soon.
    Outage,
    /// Every connection stayed checked out for the whole wait timeout:
    /// waiting again would only wait longer than the caller allowed.
    PoolFull,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error {
            kind,
            fault: None,
            detail: detail.into(),
            attempts: None,
            cause: None,
            marker: None,
        }
    }

    pub(crate) fn with_cause(
        mut self,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// Shares `other`'s cause (a database error converted with `?`).
    pub(crate) fn with_cause_of(mut self, other: Error) -> Error {
        self.cause = other.cause;
        self
    }

    pub(crate) fn with_detail_prefix(mut self, prefix: &str) -> Error {
        self.detail = format!("{prefix}: {}", self.detail);
        self
    }

    pub(crate) fn with_detail_suffix(mut self, suffix: &str) -> Error {
        if !suffix.is_empty() {
            self.detail = if self.detail.is_empty() {
                suffix.to_string()
            } else {
                format!("{}; {suffix}", self.detail)
            };
        }
        self
    }

    /// Marks a connect that found no server: the retry loops try again
    /// until their deadline rather than counting it as an attempt.
    pub(crate) fn into_outage(mut self) -> Error {
        self.marker = Some(Marker::Outage);
        self
    }

    pub(crate) fn is_outage(&self) -> bool {
        self.marker == Some(Marker::Outage)
    }

    /// Marks a wait for a slot that timed out: not retried by the retry
    /// loops (the wait timeout is the caller's bound on waiting).
    pub(crate) fn into_pool_full(mut self) -> Error {
        self.marker = Some(Marker::PoolFull);
        self
    }

    pub(crate) fn is_pool_full(&self) -> bool {
        self.marker == Some(Marker::PoolFull)
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Error {
        self.attempts = Some(attempts);
        self
    }

    /// Wraps a tokio-postgres error of the given kind, keeping the server's
    /// message and SQLSTATE in the message and the error itself as the cause.
    pub(crate) fn postgres(kind: ErrorKind, fault: Fault, err: tokio_postgres::Error) -> Error {
        let detail = own_words(&err, fault);
        Error {
            kind,
            fault: Some(fault),
            detail,
            attempts: None,
            cause: Some(Arc::new(err)),
            marker: None,
        }
    }

    /// The pool's reading of a tokio-postgres error it does not own (the
    /// closure's error keeps it): kind, fault and the server's words.
    pub(crate) fn verdict(kind: ErrorKind, fault: Fault, err: &tokio_postgres::Error) -> Error {
        Error {
            fault: Some(fault),
            ..Error::new(kind, own_words(err, fault))
        }
    }

    pub(crate) fn source_failed(source: &str, err: SourceError) -> Error {
        Error::new(ErrorKind::Source, format!("from {source}")).with_cause(err)
    }

    pub(crate) fn timeout(what: &str, after: Option<Duration>) -> Error {
        let detail = match after {
            Some(d) => format!("{what} after {}", crate::time::fmt_duration(d)),
            None => what.to_string(),
        };
        Error::new(ErrorKind::Timeout, detail)
    }

    /// What failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// How the underlying database error was classified, when there was one.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// The SQLSTATE the server reported, if the error came from the server.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::code)
    }

    /// The server's error report, if the error came from the server.
    pub fn as_db_error(&self) -> Option<&DbError> {
        self.as_postgres()
            .and_then(tokio_postgres::Error::as_db_error)
    }

    /// The tokio-postgres error behind this one, if any.
    pub fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        self.cause
            .as_deref()
            .and_then(|c| c.downcast_ref::<tokio_postgres::Error>())
    }

    /// The source's error behind this one, if fetching the URL failed.
    pub fn as_source_error(&self) -> Option<&SourceError> {
        self.cause.as_deref().and_then(|c| c.downcast_ref())
    }

    /// How many attempts were made before giving up, where the pool retried.
    pub fn attempts(&self) -> Option<u32> {
        self.attempts
    }

    /// Whether trying the same work again later may succeed: the failure was
    /// at the connection level (lost, server going away, too many
    /// connections, a timeout), not the caller's own query error, not
    /// credentials that stayed rejected and not a closed pool.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Connect
            | ErrorKind::ConnectionLost
            | ErrorKind::Timeout
            | ErrorKind::ReadOnlyServer => true,
            ErrorKind::Source => self
                .as_source_error()
                .is_some_and(SourceError::is_retryable),
            ErrorKind::Build
            | ErrorKind::CredentialsRejected
            | ErrorKind::Query
            | ErrorKind::Closed
            | ErrorKind::CommitOutcomeUnknown
            | ErrorKind::OutcomeUnknown
            | ErrorKind::RolledBack => false,
        }
    }

    /// Whether the caller's own work caused it — a constraint, a syntax
    /// error, a permission, a transaction the closure let fail — rather
    /// than the database or the pool: 4xx territory for a web app (a
    /// duplicate key is a 409), never worth retrying as it is.
    ///
    /// ```
    /// # fn status(e: &pgrotate::Error) -> u16 {
    /// if e.is_callers_error() {
    ///     return 409;
    /// }
    /// if e.is_unavailable() {
    ///     return 503;
    /// }
    /// 500
    /// # }
    /// ```
    pub fn is_callers_error(&self) -> bool {
        matches!(self.kind, ErrorKind::Query | ErrorKind::RolledBack)
    }

    /// Whether the database is unavailable for now — unreachable, going
    /// away, out of connection slots, its URL not fetched, credentials
    /// rejected while the source catches up, the pool waited its whole
    /// budget: retry later (503 territory).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connect
                | ErrorKind::ConnectionLost
                | ErrorKind::Timeout
                | ErrorKind::Source
                | ErrorKind::CredentialsRejected
                | ErrorKind::ReadOnlyServer
                | ErrorKind::Closed
        )
    }

    /// Whether the work may or may not have been applied: the connection
    /// was lost after `COMMIT` ([`ErrorKind::CommitOutcomeUnknown`]) or a
    /// pool-level statement ([`ErrorKind::OutcomeUnknown`]) was sent and
    /// before the answer came. Only the caller can find out (look for the
    /// row it wrote); redoing it blindly may apply it twice.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::CommitOutcomeUnknown | ErrorKind::OutcomeUnknown
        )
    }

    /// Whether the server rejected the credentials the source gave
    /// (rotated, and the source still returns the old ones).
    pub fn is_credentials(&self) -> bool {
        self.kind == ErrorKind::CredentialsRejected
    }
}

/// A tokio-postgres error met outside the pool's retry loops (on a
/// [`Client`](crate::Client) from `get()`, or with `?` inside a closure),
/// classified by the fault table: the caller's own error is
/// [`ErrorKind::Query`], a lost connection [`ErrorKind::ConnectionLost`],
/// and so on.
impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        let fault = crate::classify::classify(&err);
        Error::postgres(crate::exec::kind_after_work(fault), fault, err)
    }
}

/// `{e}` says what failed in pgrotate's own words (with the server's
/// message when there is one); the causes are left to
/// [`std::error::Error::source`], as tokio-postgres does. `{e:#}` adds them,
/// each once: `connecting failed: no server answered: error connecting to
/// server: Connection refused (os error 111)`.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.phase())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(n) = self.attempts {
            write!(f, " (after {n} attempt{})", if n == 1 { "" } else { "s" })?;
        }
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(c) = cause {
                let text = c.to_string();
                // tokio-postgres's "db error" adds nothing to the server's
                // message already shown.
                let said = c
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(|e| e.as_db_error().is_some());
                if !said && !text.is_empty() {
                    write!(f, ": {text}")?;
                }
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause's own Debug is safe (tokio-postgres errors and our
        // SourceError hold no secret), but keep Debug to the same parts as
        // Display plus the code, so nothing new can ever leak through it.
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("fault", &self.fault)
            .field("code", &self.code().map(SqlState::code))
            .field("detail", &self.detail)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// What a tokio-postgres error means, in pgrotate's words: the server's
/// message and SQLSTATE when the server said something, which TLS check
/// failed, or what the fault means — never the cause's own text, which
/// `source()` carries.
fn own_words(err: &tokio_postgres::Error, fault: Fault) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    if let Some(tls) = crate::tls::describe_failure(err) {
        return tls;
    }
    match fault {
        Fault::Unreachable => "no server answered".into(),
        Fault::Disconnected if err.is_closed() => "the connection is closed".into(),
        Fault::Disconnected => "the connection was lost".into(),
        other => other.reason().into(),
    }
}

/// The message of a tokio-postgres error with the server's words and
/// SQLSTATE, or the client-side cause (I/O, TLS) when there is no server
/// report.
///
/// TLS failures say which check failed (tokio-postgres's own text is only
/// "error performing TLS handshake"): see [`crate::tls::describe_failure`].
pub(crate) fn describe_postgres(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    if let Some(tls) = crate::tls::describe_failure(err) {
        return tls;
    }
    let mut out = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_phase_and_attempts() {
        let e = Error::new(
            ErrorKind::CredentialsRejected,
            "password authentication failed",
        )
        .with_attempts(3);
        assert_eq!(
            format!("{e:#}"),
            "credentials rejected: password authentication failed (after 3 attempts)"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn timeouts_are_retryable_and_say_how_long() {
        let e = Error::timeout("waiting for a connection", Some(Duration::from_millis(250)));
        assert_eq!(
            format!("{e:#}"),
            "timed out: waiting for a connection after 250 ms"
        );
        assert!(e.is_retryable());
    }
}
