//! What a failure means to the pool: the one table from error to [`Fault`].
//!
//! | SQLSTATE / cause | fault | the pool's move |
//! |---|---|---|
//! | 28P01 invalid password, 28000 invalid authorization | [`Fault::Credentials`] | refetch the URL, reconnect |
//! | 3D000 database does not exist | [`Fault::DatabaseGone`] | refetch (the URL points elsewhere now) |
//! | 25006 read-only transaction | [`Fault::ReadOnly`] | refetch, drain (landed on a standby) |
//! | 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now | [`Fault::ServerGoingAway`] | reconnect |
//! | 08xxx connection exceptions, connection closed, I/O error | [`Fault::Disconnected`] | reconnect |
//! | 08P01 from PostgreSQL at severity `ERROR` (the session lives on: a Bind with the wrong number of parameters) | [`Fault::CallersError`] | not retried |
//! | at connect only: refused, no answer, closed before the server spoke | [`Fault::Unreachable`] | reconnect; refetch when the budget allows it now (the URL may have moved) |
//! | 53300 too many connections | [`Fault::TooManyConnections`] | back off, reconnect |
//! | 08P01 from PgBouncer: "password authentication failed", "SASL authentication failed", "no such user" | [`Fault::Credentials`] | refetch the URL, reconnect |
//! | 08P01 from PgBouncer: "server login has been failing", "query_wait_timeout" | [`Fault::PoolerUnavailable`] | back off at least PgBouncer's `server_login_retry`, no refetch |
//! | 08P01 from PgBouncer: "too many connections", "no more connections allowed (max_client_conn)" | [`Fault::TooManyConnections`] | back off, reconnect |
//! | 08P01 from PgBouncer: "query timeout" (its `query_timeout` cancelled a statement) | [`Fault::CallersError`] | not re-run: it would run too long again |
//! | at connect only: 42501 insufficient privilege (`REVOKE CONNECT` from a rotated-out role) | [`Fault::Credentials`] | refetch the URL, reconnect |
//! | at connect only: 57P04 database dropped | [`Fault::DatabaseGone`] | refetch the URL, reconnect |
//! | anything else | [`Fault::CallersError`] | the caller's own error: never retried |
//!
//! Classification is by SQLSTATE, never by message text — with one
//! exception: PgBouncer raises every error of its own as 08P01, so for that
//! code alone the message tells an authentication failure and a busy pooler
//! from a broken connection ([`BY_POOLER_MESSAGE`]).

use tokio_postgres::error::SqlState;

/// The class of a failure, as far as a connection pool is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The server rejected the credentials (28P01, 28000): they were rotated,
    /// or the role was replaced.
    Credentials,
    /// The database named in the URL does not exist (3D000): after a promote
    /// the URL points elsewhere.
    DatabaseGone,
    /// A write landed on a read-only server (25006): a failover left the
    /// pool on a standby.
    ReadOnly,
    /// The server ended the session or is not accepting connections
    /// (57P01, 57P02, 57P03).
    ServerGoingAway,
    /// The connection is gone: closed, an I/O error, a TLS failure on an
    /// established stream, or an 08xxx connection exception.
    Disconnected,
    /// No server answered where the URL points: a connect refused or left
    /// without an answer (only a connect: no connection ever existed).
    Unreachable,
    /// The server has no connection slot left (53300).
    TooManyConnections,
    /// A connection pooler (PgBouncer) cannot get a server connection now:
    /// its logins to the server keep failing, or the query waited too long
    /// for one. Transient; retrying sooner than the pooler's own retry
    /// interval only adds load.
    PoolerUnavailable,
    /// The caller's own error: constraint, syntax, types, permissions.
    CallersError,
}

impl Fault {
    /// Whether the failure is about the connection rather than the work: the
    /// same work on another connection may succeed.
    pub fn is_connection_level(self) -> bool {
        !matches!(self, Fault::CallersError)
    }

    /// Whether the pool should fetch the URL again because of it: the URL
    /// in use is wrong now.
    pub fn needs_refetch(self) -> bool {
        matches!(
            self,
            Fault::Credentials | Fault::DatabaseGone | Fault::ReadOnly
        )
    }

    /// Whether a *connect* failing this way is worth one refetch: no server
    /// answers where the URL points (after a failover it may point
    /// elsewhere). When the source still returns the same URL, the error
    /// stands. Not [`Fault::PoolerUnavailable`]: after a rotation PgBouncer
    /// itself rejects the old password at connect, which refetches anyway.
    pub(crate) fn worth_one_refetch(self) -> bool {
        matches!(
            self,
            Fault::Disconnected | Fault::Unreachable | Fault::ServerGoingAway
        )
    }

    /// A short reason for logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Fault::Credentials => "credentials rejected",
            Fault::DatabaseGone => "database gone",
            Fault::ReadOnly => "read-only server",
            Fault::ServerGoingAway => "server going away",
            Fault::Disconnected => "connection lost",
            Fault::Unreachable => "no server answered",
            Fault::TooManyConnections => "too many connections",
            Fault::PoolerUnavailable => "pooler cannot reach the server",
            Fault::CallersError => "query error",
        }
    }
}

/// The table: SQLSTATE to fault. Codes not listed (other than the 08 class)
/// are the caller's own errors.
const BY_SQLSTATE: &[(SqlState, Fault)] = &[
    (SqlState::INVALID_PASSWORD, Fault::Credentials),
    (
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        Fault::Credentials,
    ),
    (SqlState::UNDEFINED_DATABASE, Fault::DatabaseGone),
    (SqlState::READ_ONLY_SQL_TRANSACTION, Fault::ReadOnly),
    (SqlState::ADMIN_SHUTDOWN, Fault::ServerGoingAway),
    (SqlState::CRASH_SHUTDOWN, Fault::ServerGoingAway),
    (SqlState::CANNOT_CONNECT_NOW, Fault::ServerGoingAway),
    (SqlState::TOO_MANY_CONNECTIONS, Fault::TooManyConnections),
];

/// At connect time some codes mean the URL is stale rather than the
/// caller's error: a platform that rotates by a new role and `REVOKE
/// CONNECT` from the old one answers 42501, a dropped database 57P04.
const AT_CONNECT: &[(SqlState, Fault)] = &[
    (SqlState::INSUFFICIENT_PRIVILEGE, Fault::Credentials),
    (SqlState::DATABASE_DROPPED, Fault::DatabaseGone),
];

/// Classifies an error of a *connect* (startup and authentication): the
/// table, plus [`AT_CONNECT`] — nothing the caller sent can have caused it.
pub(crate) fn classify_connect(err: &tokio_postgres::Error) -> Fault {
    let fault = match err.code() {
        Some(code) => AT_CONNECT
            .iter()
            .find(|(c, _)| c == code)
            .map_or_else(|| classify(err), |(_, f)| *f),
        None => classify(err),
    };
    match fault {
        // A connect that failed without a server's word never had a
        // connection to lose — unless a TLS check failed: a server answered.
        Fault::Disconnected
            if err.as_db_error().is_none() && crate::tls::describe_failure(err).is_none() =>
        {
            Fault::Unreachable
        }
        f => f,
    }
}

/// The one place message text counts: PgBouncer's own errors, all 08P01.
/// The first entry whose text the message contains wins.
pub(crate) const BY_POOLER_MESSAGE: &[(&str, Fault)] = &[
    ("password authentication failed", Fault::Credentials),
    ("SASL authentication failed", Fault::Credentials),
    // auth_query found no such role: replaced by a new user name.
    ("no such user", Fault::Credentials),
    ("server login has been failing", Fault::PoolerUnavailable),
    // The server's own refusal of PgBouncer's login, passed on once.
    ("too many connections", Fault::TooManyConnections),
    ("query_wait_timeout", Fault::PoolerUnavailable),
    // max_client_conn: PgBouncer has no client slot left.
    ("no more connections allowed", Fault::TooManyConnections),
    // query_timeout: PgBouncer cancelled a statement that ran too long and
    // closed the connection. Running it again would run too long again.
    ("query timeout", Fault::CallersError),
];

/// The SQLSTATE class of connection exceptions: 08000, 08003, 08006, 08001,
/// 08004, 08007, 08P01.
const CONNECTION_EXCEPTION_CLASS: &str = "08";

/// Classifies a tokio-postgres error.
///
/// ```
/// use pgrotate::{classify, Fault};
/// # fn demo(err: &tokio_postgres::Error) {
/// if classify(err) == Fault::Credentials {
///     // the pool refetches the URL and reconnects
/// }
/// # }
/// ```
pub fn classify(err: &tokio_postgres::Error) -> Fault {
    let code = err.code();
    let fault = classify_parts(
        code,
        err.as_db_error().map(|d| d.message()),
        err.is_closed(),
        has_io_cause(err),
        is_client_side(err),
    );
    // PostgreSQL's own 08P01 at severity ERROR leaves the session alive: a
    // malformed request of the caller's (a Bind with the wrong number of
    // parameters). PgBouncer's own errors were told apart by their message
    // above, and a broken session is FATAL.
    let live_session = err.as_db_error().is_some_and(|d| d.severity() == "ERROR");
    if fault == Fault::Disconnected && code == Some(&SqlState::PROTOCOL_VIOLATION) && live_session {
        return Fault::CallersError;
    }
    fault
}

/// The table itself, over the parts of an error, so it can be tested for
/// every code without a server.
pub(crate) fn classify_parts(
    code: Option<&SqlState>,
    message: Option<&str>,
    closed: bool,
    io: bool,
    client_side: bool,
) -> Fault {
    if let Some(code) = code {
        if let Some((_, fault)) = BY_SQLSTATE.iter().find(|(c, _)| c == code) {
            return *fault;
        }
        if *code == SqlState::PROTOCOL_VIOLATION
            && let Some(m) = message
            && let Some((_, fault)) = BY_POOLER_MESSAGE.iter().find(|(t, _)| m.contains(t))
        {
            return *fault;
        }
        if code.code().starts_with(CONNECTION_EXCEPTION_CLASS) {
            return Fault::Disconnected;
        }
        return Fault::CallersError;
    }
    if closed || io {
        return Fault::Disconnected;
    }
    if client_side {
        // Serialising a parameter, reading a column, counting rows: the
        // caller's own mistake, whatever the connection's state.
        return Fault::CallersError;
    }
    // No server report and no client-side cause: a protocol, TLS or connect
    // failure. The connection is not usable.
    Fault::Disconnected
}

fn has_io_cause(err: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Errors tokio-postgres raises on the client side about the caller's data,
/// recognised by their fixed Display (the kinds are private).
fn is_client_side(err: &tokio_postgres::Error) -> bool {
    let s = err.to_string();
    s.starts_with("error serializing parameter")
        || s.starts_with("error deserializing column")
        || s.starts_with("invalid column")
        || s.starts_with("query returned an unexpected number")
        || s.starts_with("expected ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_code(code: &str) -> Fault {
        classify_parts(Some(&SqlState::from_code(code)), None, false, false, false)
    }

    #[test]
    fn credentials() {
        assert_eq!(by_code("28P01"), Fault::Credentials);
        assert_eq!(by_code("28000"), Fault::Credentials);
        assert!(Fault::Credentials.needs_refetch());
    }

    #[test]
    fn database_gone_and_read_only_refetch() {
        assert_eq!(by_code("3D000"), Fault::DatabaseGone);
        assert_eq!(by_code("25006"), Fault::ReadOnly);
        assert!(Fault::DatabaseGone.needs_refetch());
        assert!(Fault::ReadOnly.needs_refetch());
    }

    #[test]
    fn server_going_away() {
        for code in ["57P01", "57P02", "57P03"] {
            assert_eq!(by_code(code), Fault::ServerGoingAway, "{code}");
        }
        assert!(!Fault::ServerGoingAway.needs_refetch());
        assert!(Fault::ServerGoingAway.is_connection_level());
    }

    #[test]
    fn connection_exceptions() {
        for code in [
            "08000", "08003", "08006", "08001", "08004", "08007", "08P01",
        ] {
            assert_eq!(by_code(code), Fault::Disconnected, "{code}");
        }
    }

    #[test]
    fn too_many_connections() {
        assert_eq!(by_code("53300"), Fault::TooManyConnections);
        assert!(!Fault::TooManyConnections.needs_refetch());
    }

    #[test]
    fn callers_own_errors_are_never_connection_level() {
        for code in [
            "23505", "42601", "42P01", "40001", "40P01", "22012", "57014",
        ] {
            let f = by_code(code);
            assert_eq!(f, Fault::CallersError, "{code}");
            assert!(!f.is_connection_level());
        }
    }

    #[test]
    fn closed_and_io_without_code() {
        assert_eq!(
            classify_parts(None, None, true, false, false),
            Fault::Disconnected
        );
        assert_eq!(
            classify_parts(None, None, false, true, false),
            Fault::Disconnected
        );
        assert_eq!(
            classify_parts(None, None, false, false, true),
            Fault::CallersError
        );
        assert_eq!(
            classify_parts(None, None, false, false, false),
            Fault::Disconnected
        );
    }

    fn from_pgbouncer(message: &str) -> Fault {
        classify_parts(
            Some(&SqlState::PROTOCOL_VIOLATION),
            Some(message),
            false,
            false,
            false,
        )
    }

    #[test]
    fn pgbouncer_auth_failures_are_rejected_credentials() {
        assert_eq!(
            from_pgbouncer("password authentication failed for user \"app\""),
            Fault::Credentials
        );
        assert_eq!(
            from_pgbouncer("SASL authentication failed"),
            Fault::Credentials
        );
        assert_eq!(from_pgbouncer("no such user"), Fault::Credentials);
    }

    #[test]
    fn pgbouncer_busy_is_transient_without_refetch() {
        for m in [
            "server login has been failing, try again later (server_login_retry)",
            "query_wait_timeout",
        ] {
            let f = from_pgbouncer(m);
            assert_eq!(f, Fault::PoolerUnavailable, "{m}");
            assert!(f.is_connection_level());
            assert!(!f.needs_refetch());
            assert!(!f.worth_one_refetch());
        }
    }

    #[test]
    fn pgbouncer_full_is_too_many_connections_and_its_query_timeout_is_not_rerun() {
        assert_eq!(
            from_pgbouncer("no more connections allowed (max_client_conn)"),
            Fault::TooManyConnections
        );
        assert_eq!(from_pgbouncer("query timeout"), Fault::CallersError);
        assert_eq!(
            from_pgbouncer("query_wait_timeout"),
            Fault::PoolerUnavailable
        );
    }

    #[test]
    fn other_08p01_messages_and_other_codes_ignore_the_text() {
        assert_eq!(from_pgbouncer("client_idle_timeout"), Fault::Disconnected);
        // Message text counts for 08P01 only.
        assert_eq!(
            classify_parts(
                Some(&SqlState::from_code("42601")),
                Some("password authentication failed"),
                false,
                false,
                false
            ),
            Fault::CallersError
        );
    }
}
