//! PgBouncer in front of a cluster: [`PgBouncer`], [`find_pgbouncer`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

use crate::cluster::Cluster;
use crate::error::{ErrorKind, FixtureError};
use crate::process::{self, Launch, Started, Startup, Stop, Watchdog};
use crate::role::{self, TestRole};
use crate::user::ServerUser;
use crate::util::{TRACE_TARGET, free_port, new_cluster_dir, write_file};

/// How long an immediate shutdown may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIG_FILE: &str = "pgbouncer.ini";
const AUTH_FILE: &str = "userlist.txt";
const LOG_FILE: &str = "pgbouncer.log";
const CERT_FILE: &str = "client-tls.crt";
const KEY_FILE: &str = "client-tls.key";
/// PgBouncer's default `auth_query`, spelled out.
const AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
                          ELSE rolpassword END FROM pg_catalog.pg_authid \
                          WHERE rolname = $1 AND rolcanlogin";

/// Finds the `pgbouncer` binary.
///
/// Looks, in order, at the environment variable `PGBOUNCER` (when set,
/// nothing else is tried), `pgbouncer` on `PATH`, and `/usr/sbin/pgbouncer`
/// (Debian's). Fails with [`ErrorKind::NoPgBouncer`] naming Debian's package
/// `pgbouncer` when none is a file.
pub fn find_pgbouncer() -> Result<PathBuf, FixtureError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PGBOUNCER") {
        Some(path) => vec![PathBuf::from(path)],
        None => std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("pgbouncer"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin/pgbouncer")])
            .collect(),
    };
    find_pgbouncer_in(&candidates)
}

/// The first of `candidates` that is a file.
fn find_pgbouncer_in(candidates: &[PathBuf]) -> Result<PathBuf, FixtureError> {
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    Err(FixtureError::new(
        ErrorKind::NoPgBouncer,
        format!(
            "no pgbouncer binary found (looked at: {}); install Debian's package `pgbouncer` \
             (e.g. `apt-get install -y pgbouncer`, then `service pgbouncer stop`) or point \
             PGBOUNCER at the binary",
            searched.join(", ")
        ),
    ))
}

/// Settings of a [`PgBouncer`]; the defaults suit most tests.
#[derive(Debug, Clone)]
#[must_use]
pub struct PgBouncerOptions {
    default_pool_size: u32,
    max_client_conn: u32,
    server_login_retry: Duration,
    query_wait_timeout: Duration,
    query_timeout: Duration,
    client_tls: bool,
}

impl Default for PgBouncerOptions {
    fn default() -> Self {
        PgBouncerOptions {
            default_pool_size: 2,
            max_client_conn: 1000,
            server_login_retry: Duration::from_secs(15),
            query_wait_timeout: Duration::from_secs(120),
            query_timeout: Duration::ZERO,
            client_tls: false,
        }
    }
}

impl PgBouncerOptions {
    /// Server connections per (database, user) pair: `default_pool_size`
    /// (default 2).
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }

    /// Client connections PgBouncer accepts in all: `max_client_conn`
    /// (default 1000).
    pub fn max_client_conn(mut self, max: u32) -> Self {
        self.max_client_conn = max;
        self
    }

    /// How long PgBouncer waits after a failed server login before it tries
    /// again, failing clients at once meanwhile: `server_login_retry`
    /// (default 15 s, PgBouncer's default; tests want about 1 s).
    /// Millisecond precision.
    pub fn server_login_retry(mut self, retry: Duration) -> Self {
        self.server_login_retry = retry;
        self
    }

    /// How long a client's query may wait for a server connection before
    /// PgBouncer fails it with `query_wait_timeout`: `query_wait_timeout`
    /// (default 120 s, PgBouncer's default). Zero waits forever.
    /// Millisecond precision.
    pub fn query_wait_timeout(mut self, timeout: Duration) -> Self {
        self.query_wait_timeout = timeout;
        self
    }

    /// How long a query may run before PgBouncer cancels it and closes the
    /// client's connection with "query timeout": `query_timeout` (default
    /// zero: never, PgBouncer's default). Millisecond precision.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Whether clients may use TLS (default `false`): when on,
    /// `client_tls_sslmode = allow` with the cluster's server certificate
    /// (for `localhost` and `127.0.0.1`, signed by [`Cluster::ca`]);
    /// plaintext clients are still admitted.
    pub fn client_tls(mut self, on: bool) -> Self {
        self.client_tls = on;
        self
    }
}

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

impl Cluster {
    /// Starts a [`PgBouncer`] in front of this cluster and waits until its
    /// admin console answers. Creates the `auth_user` role on the server.
    ///
    /// Fails with [`ErrorKind::NoPgBouncer`] when no binary is found.
    pub async fn start_pgbouncer(
        &self,
        options: PgBouncerOptions,
    ) -> Result<PgBouncer, FixtureError> {
        let started = Instant::now();
        let binary = find_pgbouncer()?;
        let user = self.server_user();
        let auth_user = role::unique_name("pgbouncer_auth");
        let auth_password = role::random_password();
        self.superuser()
            .await?
            .batch_execute(&format!(
                "CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}",
                role::ident(&auth_user),
                role::literal(&role::verifier(&auth_password))
            ))
            .await
            .map_err(|e| FixtureError::postgres("creating PgBouncer's auth_user", e))?;

        let dir = new_cluster_dir(user)?;
        let path = |name: &str| dir.path().join(name);
        write_file(
            &path(AUTH_FILE),
            &format!("\"{auth_user}\" \"{auth_password}\"\n"),
            0o600,
            user,
        )?;
        if options.client_tls {
            let cert = self.server_cert();
            write_file(&path(CERT_FILE), &cert.cert_pem, 0o644, user)?;
            write_file(&path(KEY_FILE), &cert.key_pem, 0o600, user)?;
        }
        let mut bouncer = PgBouncer {
            watchdog: None,
            port: free_port()?,
            auth_user,
            auth_password,
            version: String::new(),
            dir,
        };
        bouncer.launch(&binary, self.port(), &options, user).await?;
        tracing::debug!(
            target: TRACE_TARGET,
            port = bouncer.port,
            version = %bouncer.version,
            elapsed = ?started.elapsed(),
            "pgbouncer ready"
        );
        Ok(bouncer)
    }
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
        Ok(rows
            .iter()
            .map(|row| {
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
            })
            .collect())
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

    /// Writes the configuration, starts PgBouncer and waits for its admin
    /// console; retries on another port while the port is taken.
    async fn launch(
        &mut self,
        binary: &Path,
        server_port: u16,
        options: &PgBouncerOptions,
        user: Option<ServerUser>,
    ) -> Result<(), FixtureError> {
        let log_path = self.log_path();
        let startup = Startup::new("pgbouncer", "serve its admin console", &log_path, user);
        loop {
            write_file(
                &self.config_path(),
                &self.config(server_port, options),
                0o600,
                user,
            )?;
            let this = &*self;
            let started = process::start_and_wait(
                &startup,
                |log| Launch {
                    postgres: binary,
                    args: vec![this.config_path().into()],
                    dir: this.dir.path(),
                    log,
                    user,
                    immediate: Stop::Terminate,
                },
                || this.admin_version(),
            )
            .await?;
            let log = match started {
                Started::Ready(watchdog, version) => {
                    self.version = version;
                    self.watchdog = Some(watchdog);
                    return Ok(());
                }
                Started::Exited(log) => log,
            };

            if log.contains("Address already in use") && Instant::now() < startup.deadline {
                self.port = free_port()?;
                continue;
            }
            return Err(FixtureError::new(
                ErrorKind::Startup,
                format!("pgbouncer exited while starting; log:\n{log}"),
            ));
        }
    }

    /// `SHOW VERSION` on the admin console; `None` while it does not answer.
    async fn admin_version(&self) -> Option<String> {
        let (client, connection) = self.connect_admin().await.ok()?;
        let task = tokio::spawn(connection);
        let version = client.simple_query("SHOW VERSION").await;
        drop(client);
        let _ = task.await;
        let version = version
            .ok()?
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        Some(version)
    }

    /// The whole `pgbouncer.ini`.
    fn config(&self, server_port: u16, options: &PgBouncerOptions) -> String {
        let dir = self.dir.path();
        let seconds = |d: Duration| format!("{:.3}", d.as_secs_f64());
        let mut config = format!(
            "; written by pgrotate-testing\n\
             [databases]\n\
             * = host=127.0.0.1 port={server_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             max_client_conn = {max_client}\n\
             auth_type = scram-sha-256\n\
             auth_file = {auth_file}\n\
             auth_user = {auth_user}\n\
             auth_query = {AUTH_QUERY}\n\
             admin_users = {auth_user}\n\
             server_login_retry = {retry}\n\
             query_wait_timeout = {wait}\n\
             query_timeout = {query}\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 1\n\
             log_disconnections = 1\n\
             log_pooler_errors = 1\n",
            port = self.port,
            pool = options.default_pool_size,
            max_client = options.max_client_conn,
            auth_file = dir.join(AUTH_FILE).display(),
            auth_user = self.auth_user,
            retry = seconds(options.server_login_retry),
            wait = seconds(options.query_wait_timeout),
            query = seconds(options.query_timeout),
        );
        if options.client_tls {
            config.push_str(&format!(
                "client_tls_sslmode = allow\n\
                 client_tls_cert_file = {}\n\
                 client_tls_key_file = {}\n",
                dir.join(CERT_FILE).display(),
                dir.join(KEY_FILE).display()
            ));
        }
        config
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_existing_binary_wins() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing-here");
        let present = dir.path().join("pgbouncer");
        std::fs::write(&present, "").unwrap();
        assert_eq!(
            find_pgbouncer_in(&[missing.clone(), present.clone()]).unwrap(),
            present
        );
        // A directory is not a binary.
        assert!(find_pgbouncer_in(&[dir.path().to_owned()]).is_err());
    }

    #[test]
    fn missing_binary_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("pgbouncer");
        let err = find_pgbouncer_in(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoPgBouncer);
        assert!(err.to_string().contains("`pgbouncer`"), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn config_holds_the_settings() {
        let bouncer = PgBouncer {
            watchdog: None,
            port: 6432,
            auth_user: "auth_1_abcdef".into(),
            auth_password: "secret".into(),
            version: String::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let options = PgBouncerOptions::default()
            .default_pool_size(3)
            .server_login_retry(Duration::from_millis(1500));
        let config = bouncer.config(5555, &options);
        for line in [
            "* = host=127.0.0.1 port=5555",
            "listen_port = 6432",
            "pool_mode = transaction",
            "default_pool_size = 3",
            "auth_type = scram-sha-256",
            "auth_user = auth_1_abcdef",
            "server_login_retry = 1.500",
            "query_wait_timeout = 120.000",
        ] {
            assert!(
                config.contains(&format!("{line}\n")),
                "{line} missing:\n{config}"
            );
        }
        assert!(!config.contains("secret"));
        assert!(!config.contains("client_tls"));
        assert!(
            bouncer
                .config(5555, &options.client_tls(true))
                .contains("client_tls_sslmode = allow\n")
        );
    }
}
