//! [`PoolStats`]: one row of the admin console's `SHOW POOLS`.

use tokio_postgres::SimpleQueryRow;

/// One row of the admin console's `SHOW POOLS`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The database name.
    pub database: String,
    /// The user name.
    pub user: String,
    /// Clients linked to a server connection.
    pub cl_active: i64,
    /// Clients that sent a query and wait for a server connection.
    pub cl_waiting: i64,
    /// Server connections linked to a client.
    pub sv_active: i64,
    /// Server connections idle and ready.
    pub sv_idle: i64,
    /// Server connections idle, to be tested before use.
    pub sv_used: i64,
    /// Server connections being logged in.
    pub sv_login: i64,
    /// How long the oldest waiting client has waited, in seconds.
    pub maxwait: i64,
    /// The pool mode.
    pub pool_mode: String,
}

impl PoolStats {
    /// Reads one `SHOW POOLS` row; a column missing or not a number reads
    /// as empty text or zero.
    pub(super) fn from_row(row: &SimpleQueryRow) -> PoolStats {
        let text = |name: &str| row.try_get(name).ok().flatten().unwrap_or("").to_owned();
        let number = |name: &str| text(name).parse().unwrap_or(0);
        PoolStats {
            database: text("database"),
            user: text("user"),
            cl_active: number("cl_active"),
            cl_waiting: number("cl_waiting"),
            sv_active: number("sv_active"),
            sv_idle: number("sv_idle"),
            sv_used: number("sv_used"),
            sv_login: number("sv_login"),
            maxwait: number("maxwait"),
            pool_mode: text("pool_mode"),
        }
    }
}
