//! PgBouncer in front of a cluster: [`PgBouncer`], the running one and
//! its admin console; [`PgBouncerOptions`] and the `pgbouncer.ini` they
//! become (`options.rs`); [`find_pgbouncer`] and
//! [`Cluster::start_pgbouncer`] (`start.rs`); [`PoolStats`] (`stats.rs`).

mod options;
mod start;
mod stats;

pub use options::PgBouncerOptions;
pub use start::find_pgbouncer;
pub use stats::PoolStats;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

#[cfg(doc)]
use crate::cluster::Cluster; // for the doc links
use crate::error::FixtureError;
use crate::process::{Stop, Watchdog};
use crate::role::TestRole;
use crate::util::TRACE_TARGET;

/// How long an immediate shutdown may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIG_FILE: &str = "pgbouncer.ini";
const AUTH_FILE: &str = "userlist.txt";
const LOG_FILE: &str = "pgbouncer.log";
const CERT_FILE: &str = "client-tls.crt";
const KEY_FILE: &str = "client-tls.key";

/// A real PgBouncer in front of a [`Cluster`], as Heroku's connection pooling
/// puts one in front of a database: transaction mode, SCRAM, `auth_query`.
/// Dropping it stops PgBouncer (`SIGTERM`, `SIGKILL` after 5 s) and removes
/// its directory.
///
/// [`Cluster::start_pgbouncer`] writes a configuration into a temporary
/// directory and runs Debian's `pgbouncer` binary (found through
/// [`find_pgbouncer`]) as the user the server runs as, under the same
/// watchdog, so it stops when its [`PgBouncer`] drops or the test process
/// ends. What it is configured with:
///
/// - `listen_addr = 127.0.0.1` on a free port, no Unix socket;
/// - `[databases] * = host=127.0.0.1 port=<the cluster's>`: every database
///   (every [`TestRole`]'s) is reached under its own name;
/// - `pool_mode = transaction`, `default_pool_size` (default 2);
/// - `auth_type = scram-sha-256` with `auth_user` and `auth_query`: each
///   login reads the role's current SCRAM verifier from `pg_authid`, so
///   [`Cluster::rotate_password`] takes effect through PgBouncer at once, no
///   file to rewrite. PgBouncer then logs into the server with the client's
///   own SCRAM proof.
/// - `server_login_retry` and `query_wait_timeout`, settable (PgBouncer's
///   defaults are 15 s and 120 s);
/// - TLS towards clients off unless asked for: PgBouncer never offers
///   `SCRAM-SHA-256-PLUS`, so `channel_binding=require` cannot work
///   through it either way.
///
/// The `auth_user` is a superuser of its own (one per PgBouncer):
/// PgBouncer 1.18 runs `auth_query` inside the database the client asked
/// for, and every test role's database has `CONNECT` revoked from `PUBLIC`,
/// so a non-superuser would need a grant (and a `SECURITY DEFINER` function)
/// in every database, including those created later. The query is
/// PgBouncer's own default one.
///
/// What clients see from PgBouncer 1.18 (every error it raises itself is
/// SQLSTATE `08P01`, severity `FATAL`, and closes the connection):
///
/// | situation | when | message |
/// |---|---|---|
/// | wrong or rotated-away password | connect | `SASL authentication failed` |
/// | user that does not exist (or may not log in) | connect | `no such user` |
/// | the server refused PgBouncer's last login, no server connection left | first query (the connect succeeds) | `server login has been failing, try again later (server_login_retry)` |
/// | no server connection free within `query_wait_timeout` | that query | `query_wait_timeout` |
///
/// A client whose query is already waiting while server logins fail is not
/// told: it waits while PgBouncer retries every `server_login_retry`, until
/// a login works or `query_wait_timeout` ends it. Named prepared statements
/// fail across transactions with the server's own `26000` (`prepared
/// statement "s4" does not exist`).
///
/// ```no_run
/// use pgrotate_testing::{Cluster, PgBouncerOptions};
/// use tokio_postgres::NoTls;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::start().await?;
/// let role = cluster.create_role("app").await?;
/// let bouncer = cluster.start_pgbouncer(PgBouncerOptions::default()).await?;
/// let (client, connection) = tokio_postgres::connect(&bouncer.url(&role), NoTls).await?;
/// tokio::spawn(connection);
/// client.simple_query("SELECT 1").await?; // unnamed statements only
/// # Ok(())
/// # }
/// ```
pub struct PgBouncer {
    /// Declared first: PgBouncer stops before its directory is removed.
    watchdog: Option<Watchdog>,
    port: u16,
    auth_user: String,
    auth_password: String,
    version: String,
    dir: TempDir,
}

impl PgBouncer {
    /// The address it listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, e.g. the upstream of a
    /// [`FaultProxy`](crate::FaultProxy).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://name:password@127.0.0.1:port/database` for `role` through
    /// PgBouncer, without `sslmode` (as Heroku's
    /// `DATABASE_CONNECTION_POOL_URL`, less its TLS).
    pub fn url(&self, role: &TestRole) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            role.name, role.password, self.port, role.database
        )
    }

    /// The version line PgBouncer reports (`PgBouncer 1.18.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The role PgBouncer runs `auth_query` as; also its admin user.
    pub fn auth_user(&self) -> &str {
        &self.auth_user
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// The file PgBouncer logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Everything PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A fresh connection to the admin console (database `pgbouncer`, simple
    /// query protocol only: use `simple_query`/`batch_execute`), e.g. for
    /// `SHOW SERVERS`, `PAUSE`, `RESUME`, `KILL db`.
    pub async fn admin(&self) -> Result<Client, FixtureError> {
        let (client, connection) = self
            .connect_admin()
            .await
            .map_err(|e| FixtureError::postgres("connecting to PgBouncer's admin console", e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target: TRACE_TARGET, %error, "pgbouncer admin connection ended");
            }
        });
        Ok(client)
    }

    async fn connect_admin(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        tokio_postgres::Error,
    > {
        tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.auth_user)
            .password(&self.auth_password)
            .dbname("pgbouncer")
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
    }

    /// Runs one admin console command and returns its rows.
    async fn admin_rows(&self, command: &str) -> Result<Vec<SimpleQueryRow>, FixtureError> {
        let messages = self
            .admin()
            .await?
            .simple_query(command)
            .await
            .map_err(|e| FixtureError::postgres(format!("PgBouncer admin command {command}"), e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }

    /// `RELOAD` on the admin console: rereads the configuration file.
    pub async fn reload(&self) -> Result<(), FixtureError> {
        self.admin_rows("RELOAD").await.map(drop)
    }

    /// `SHOW POOLS` on the admin console (the console's own pool included).
    pub async fn show_pools(&self) -> Result<Vec<PoolStats>, FixtureError> {
        let rows = self.admin_rows("SHOW POOLS").await?;
        Ok(rows.iter().map(PoolStats::from_row).collect())
    }

    /// Stops PgBouncer (`SIGTERM`: immediate shutdown, clients see their
    /// connections closed). Its directory stays until it drops.
    pub async fn stop(&mut self) -> Result<(), FixtureError> {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop(Stop::Terminate, STOP_TIMEOUT).await;
            tracing::debug!(target: TRACE_TARGET, port = self.port, "pgbouncer stopped");
        }
        Ok(())
    }
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("version", &self.version)
            .field("auth_user", &self.auth_user)
            .field("dir", &self.dir.path())
            .field("running", &self.watchdog.is_some())
            .finish_non_exhaustive()
    }
}
