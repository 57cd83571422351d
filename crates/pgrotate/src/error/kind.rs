//! [`ErrorKind`]: what failed, the one classification axis of [`Error`](crate::Error).

/// What failed: the phase of the work, or the pool's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The builder was given settings that cannot work (caught by `build()`).
    Build,
    /// Fetching the database URL from its source failed, or the source
    /// returned something that is not a usable PostgreSQL URL.
    Source,
    /// Opening a connection failed for a reason other than rejected
    /// credentials: network, TLS, server starting or shutting down, too many
    /// connections.
    Connect,
    /// The server kept rejecting the credentials (SQLSTATE 28P01 or 28000)
    /// after the pool fetched the URL again and backed off.
    CredentialsRejected,
    /// A query failed: the caller's own error (a constraint, a syntax error,
    /// a type mismatch). Never retried by the pool.
    Query,
    /// The connection was lost, or the server ended it, while the caller's
    /// work was running, and the pool's retry budget did not allow another
    /// attempt (or the work was not the pool's to retry).
    ConnectionLost,
    /// Waiting for a connection took longer than the pool's wait timeout,
    /// or a create or retry deadline passed.
    Timeout,
    /// The pool was closed.
    Closed,
    /// The connection was lost after `COMMIT` was sent and before its answer
    /// arrived: the transaction may or may not have been committed.
    CommitOutcomeUnknown,
    /// The connection was lost after a statement of a pool-level call
    /// ([`Pool::execute`](crate::Pool::execute) and the like) was sent and
    /// before its answer arrived, with nothing to prove it did not run: it
    /// may or may not have been applied. Never retried.
    OutcomeUnknown,
    /// Writes kept landing on a read-only standby (25006 with the server in
    /// recovery): after a failover the URL still pointed at it, and the
    /// retry budget ran out before it moved.
    ReadOnlyServer,
    /// A `transaction` closure returned `Ok` although a statement in it had
    /// failed (an error swallowed, a savepoint misused): the server would
    /// have answered `COMMIT` with a rollback. pgrotate rolled back and
    /// says so; nothing of the transaction was applied. Never retried.
    RolledBack,
}

impl ErrorKind {
    pub(super) fn phase(self) -> &'static str {
        match self {
            ErrorKind::Build => "invalid pool settings",
            ErrorKind::Source => "fetching the database URL failed",
            ErrorKind::Connect => "connecting failed",
            ErrorKind::CredentialsRejected => "credentials rejected",
            ErrorKind::Query => "query failed",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "pool closed",
            ErrorKind::CommitOutcomeUnknown => "commit outcome unknown",
            ErrorKind::OutcomeUnknown => "statement outcome unknown",
            ErrorKind::RolledBack => "transaction rolled back",
            ErrorKind::ReadOnlyServer => "read-only server",
        }
    }
}
