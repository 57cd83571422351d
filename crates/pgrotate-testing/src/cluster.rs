//! A running PostgreSQL server and its lifecycle: start, stop, crash,
//! restart, standby, promotion.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use crate::bin::find_bindir;
use crate::certs::{IssuedCert, TestCa};
use crate::conf::{self, Layout, REPLICATION_ROLE};
use crate::error::{ErrorKind, FixtureError};
use crate::process::{self, Launch, Stop, Watchdog, server_command};
use crate::role::{self, TestRole};
use crate::user::ServerUser;

/// The address every cluster listens on.
const HOST: &str = "127.0.0.1";
/// The superuser `initdb` creates; it logs in over the Unix socket (trust).
const SUPERUSER: &str = "postgres";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for replication, promotion, terminations.
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Log target of this crate's tracing events.
pub(crate) const TRACE_TARGET: &str = "pgrotate_testing";

/// Builds and starts a [`Cluster`]; made by [`Cluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBuilder {
    ssl: bool,
    require_client_cert: bool,
}

/// One running PostgreSQL server in a temporary directory, owned by the test.
///
/// Dropping it stops the server (immediate shutdown, `SIGKILL` after 5 s)
/// and removes its directory; this works inside and outside a tokio runtime
/// and while a test panics. Should the test process end without dropping it
/// (a `static`, `panic=abort`, a signal), the watchdog shell that owns the
/// postmaster shuts it down and removes the directory.
///
/// Control operations (roles, terminations, promotion) each open a fresh
/// superuser connection on the calling runtime, so one cluster serves many
/// `#[tokio::test]` runtimes (see [`Cluster::shared`]).
pub struct Cluster {
    /// Declared first: the server stops before the directory is removed.
    watchdog: Option<Watchdog>,
    port: u16,
    bindir: PathBuf,
    user: Option<ServerUser>,
    layout: Layout,
    data_dir: PathBuf,
    ca: TestCa,
    server_cert: Arc<IssuedCert>,
    replication_password: String,
    _dir: TempDir,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            ssl: true,
            require_client_cert: false,
        }
    }
}

impl ClusterBuilder {
    /// Whether the server enables TLS (default `true`), with a certificate
    /// for `localhost` and `127.0.0.1` signed by [`Cluster::ca`]. Plain TCP
    /// logins are accepted either way unless
    /// [`require_client_cert`](Self::require_client_cert) is set.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// Whether TCP logins must be TLS with a client certificate signed by
    /// [`Cluster::ca`] whose CN is the role name (default `false`): `pg_hba`
    /// then reads `hostssl all all 127.0.0.1/32 scram-sha-256
    /// clientcert=verify-full`. Needs [`ssl`](Self::ssl) on.
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }

    /// Creates a data directory (`initdb`), starts the server on a free port
    /// and waits until it accepts connections.
    pub async fn start(self) -> Result<Cluster, FixtureError> {
        if self.require_client_cert && !self.ssl {
            return Err(FixtureError::new(
                ErrorKind::InvalidConfig,
                "require_client_cert(true) needs ssl(true)",
            ));
        }
        let bindir = find_bindir()?;
        let user = ServerUser::detect();
        let dir = new_cluster_dir(user)?;
        let layout = Layout {
            dir: dir.path().to_owned(),
            ssl: self.ssl,
            require_client_cert: self.require_client_cert,
        };
        let ca = TestCa::generate_at(&layout.file(conf::CA_FILE))?;
        let server_cert = Arc::new(ca.issue_server_cert()?);
        write_server_files(&layout, &server_cert, user)?;

        let mut initdb = server_command(&bindir.join("initdb"), &layout.dir, user);
        initdb.arg("-D").arg(layout.data_dir()).args([
            "-N",
            "-A",
            "scram-sha-256",
            "--auth-local=trust",
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
        ]);
        process::run(initdb, "initdb").await?;
        write_file(
            &layout.data_dir().join("pg_hba.conf"),
            &layout.hba(),
            0o600,
            user,
        )?;

        let mut cluster = Cluster {
            watchdog: None,
            port: free_port()?,
            bindir,
            user,
            data_dir: layout.data_dir(),
            layout,
            ca,
            server_cert,
            replication_password: role::random_password(),
            _dir: dir,
        };
        cluster.launch(true).await?;
        let sql = format!(
            "CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {}",
            role::ident(REPLICATION_ROLE),
            role::literal(&role::verifier(&cluster.replication_password))
        );
        cluster
            .superuser()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(|e| FixtureError::postgres("creating the replication role", e))?;
        Ok(cluster)
    }
}

impl Cluster {
    /// A builder: TLS on, no client certificates required.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a cluster with the defaults (`Cluster::builder().start()`).
    pub async fn start() -> Result<Cluster, FixtureError> {
        Cluster::builder().start().await
    }

    /// One cluster for the whole test process, started by the first caller.
    ///
    /// It is never dropped; its watchdog stops it and removes its directory
    /// when the test process exits. Give each test its own roles
    /// ([`create_role`](Self::create_role)) and do not stop or crash it.
    pub async fn shared() -> Result<&'static Cluster, FixtureError> {
        static SHARED: OnceCell<Cluster> = OnceCell::const_new();
        SHARED.get_or_try_init(Cluster::start).await
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`: where the server listens, e.g. the upstream of a
    /// [`FaultProxy`](crate::FaultProxy).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> PathBuf {
        self.layout.log_path()
    }

    /// `postgres://name:password@127.0.0.1:port/database` for `role`, without
    /// `sslmode` (the pool under test adds it).
    pub fn url(&self, role: &TestRole) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            role.name, role.password, self.port, role.database
        )
    }

    /// A fresh superuser connection (over the Unix socket) to the `postgres`
    /// database; its connection task runs on the current runtime.
    pub async fn superuser(&self) -> Result<Client, FixtureError> {
        self.superuser_to(SUPERUSER).await
    }

    /// A fresh superuser connection to `database`.
    pub(crate) async fn superuser_to(&self, database: &str) -> Result<Client, FixtureError> {
        let (client, connection) = self
            .connect_superuser(database)
            .await
            .map_err(|e| FixtureError::postgres("connecting as superuser", e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target: TRACE_TARGET, %error, "superuser connection ended");
            }
        });
        Ok(client)
    }

    async fn connect_superuser(
        &self,
        database: &str,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        tokio_postgres::Error,
    > {
        tokio_postgres::Config::new()
            .host_path(&self.layout.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .application_name("pgrotate-testing")
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
    }

    /// The OS user the server runs as (none: the test process's own).
    pub(crate) fn server_user(&self) -> Option<ServerUser> {
        self.user
    }

    /// The server's certificate and key (for `localhost` and `127.0.0.1`).
    pub(crate) fn server_cert(&self) -> &IssuedCert {
        &self.server_cert
    }

    /// Fast shutdown, then start again on the same port.
    pub async fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop().await?;
        self.start_again().await
    }

    /// `SIGKILL` to the postmaster (a crash: no shutdown checkpoint, backends
    /// left to notice), then start again on the same port, retrying while
    /// the old backends still hold shared memory. Committed rows survive.
    pub async fn crash_and_restart(&mut self) -> Result<(), FixtureError> {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop(Stop::Kill, STOP_TIMEOUT).await;
        }
        self.launch(false).await
    }

    /// Fast shutdown (clients see `57P01`); [`start_again`](Self::start_again)
    /// brings the server back. A no-op when it is already stopped.
    pub async fn stop(&mut self) -> Result<(), FixtureError> {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop(Stop::Fast, STOP_TIMEOUT).await;
            tracing::debug!(target: TRACE_TARGET, port = self.port, "server stopped");
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port. A no-op when it runs.
    pub async fn start_again(&mut self) -> Result<(), FixtureError> {
        if let Some(watchdog) = &mut self.watchdog {
            if !watchdog.has_exited() {
                return Ok(());
            }
            self.watchdog = None;
        }
        self.launch(false).await
    }

    /// A streaming standby of this server: `pg_basebackup -R -X stream` into
    /// a directory of its own, started on its own free port with the same
    /// CA, certificates, roles and `pg_hba`. Read-only until
    /// [`promote`](Self::promote)d.
    pub async fn start_standby(&self) -> Result<Cluster, FixtureError> {
        let basebackup = self.bindir.join("pg_basebackup");
        if !basebackup.is_file() {
            return Err(FixtureError::new(
                ErrorKind::NoServerBinaries,
                format!(
                    "{} not found; install Debian's package `postgresql`",
                    basebackup.display()
                ),
            ));
        }
        let dir = new_cluster_dir(self.user)?;
        let layout = Layout {
            dir: dir.path().to_owned(),
            ..self.layout.clone()
        };
        let ca = self.ca.copy_to(&layout.file(conf::CA_FILE))?;
        write_server_files(&layout, &self.server_cert, self.user)?;

        let mut cmd = server_command(&basebackup, &layout.dir, self.user);
        cmd.arg("-D")
            .arg(layout.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "-w", "-h", HOST, "-p"])
            .arg(self.port.to_string())
            .args(["-U", REPLICATION_ROLE])
            .env("PGPASSWORD", &self.replication_password);
        process::run(cmd, "pg_basebackup").await?;

        let mut standby = Cluster {
            watchdog: None,
            port: free_port()?,
            bindir: self.bindir.clone(),
            user: self.user,
            data_dir: layout.data_dir(),
            layout,
            ca,
            server_cert: Arc::clone(&self.server_cert),
            replication_password: self.replication_password.clone(),
            _dir: dir,
        };
        standby.launch(true).await?;
        Ok(standby)
    }

    /// Waits until `standby` has replayed this server's current WAL position
    /// (`pg_last_wal_replay_lsn() >= pg_current_wal_lsn()`).
    pub async fn wait_replay_caught_up(&self, standby: &Cluster) -> Result<(), FixtureError> {
        let lsn: String = self
            .superuser()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| FixtureError::postgres("reading the primary's WAL position", e))?
            .get(0);
        let standby_client = standby.superuser().await?;
        wait_until("the standby to replay the primary's WAL", || async {
            let row = standby_client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .map_err(|e| FixtureError::postgres("reading the standby's replay position", e))?;
            Ok(row.get::<_, bool>(0))
        })
        .await
    }

    /// Promotes this standby (`pg_promote`); returns once it accepts writes
    /// (`pg_is_in_recovery()` is false).
    pub async fn promote(&self) -> Result<(), FixtureError> {
        let client = self.superuser().await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .map_err(|e| FixtureError::postgres("promoting the standby", e))?
            .get(0);
        if !promoted {
            return Err(FixtureError::new(
                ErrorKind::Timeout,
                "pg_promote did not finish within 60 s",
            ));
        }
        wait_until("the promoted server to leave recovery", || async {
            let row = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| FixtureError::postgres("reading pg_is_in_recovery()", e))?;
            Ok(!row.get::<_, bool>(0))
        })
        .await
    }

    /// Starts the postmaster and waits until a superuser connection
    /// succeeds. Retries while the port is taken (picking another when
    /// `may_change_port`) or a crashed predecessor's processes linger.
    async fn launch(&mut self, may_change_port: bool) -> Result<(), FixtureError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let log_path = self.layout.log_path();
        let postgres = self.bindir.join("postgres");
        loop {
            let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| FixtureError::io("opening the server log", e))?;
            ServerUser::chown(self.user, &log_path)
                .map_err(|e| FixtureError::io("handing the server log to the server user", e))?;
            let mut watchdog = Watchdog::spawn(Launch {
                postgres: &postgres,
                args: self.layout.server_args(self.port),
                dir: &self.layout.dir,
                log,
                user: self.user,
                immediate: Stop::Immediate,
            })
            .map_err(|e| FixtureError::io("starting postgres", e))?;

            loop {
                if watchdog.has_exited() {
                    break;
                }
                let attempt =
                    tokio::time::timeout(Duration::from_secs(5), self.connect_superuser(SUPERUSER))
                        .await;
                if let Ok(Ok(_ready)) = attempt {
                    tracing::debug!(target: TRACE_TARGET, port = self.port, dir = %self.layout.dir.display(), "server ready");
                    self.watchdog = Some(watchdog);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    drop(watchdog);
                    return Err(FixtureError::new(
                        ErrorKind::Startup,
                        format!(
                            "postgres did not accept connections within {START_TIMEOUT:?}; \
                             server log:\n{}",
                            read_log_since(&log_path, log_start)
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }

            // The postmaster exited before becoming ready.
            let log = read_log_since(&log_path, log_start);
            let port_taken = log.contains("Address already in use");
            let lingering = log.contains("is still in use") || log.contains("already exists");
            if (port_taken || lingering) && Instant::now() < deadline {
                if port_taken && may_change_port {
                    self.port = free_port()?;
                }
                tracing::debug!(target: TRACE_TARGET, port = self.port, "postgres exited while starting; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Err(FixtureError::new(
                ErrorKind::Startup,
                format!("postgres exited while starting; server log:\n{log}"),
            ));
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &HOST)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("ssl", &self.layout.ssl)
            .field("require_client_cert", &self.layout.require_client_cert)
            .field("running", &self.watchdog.is_some())
            .finish_non_exhaustive()
    }
}

/// Polls `check` until it returns true, for at most [`WAIT_TIMEOUT`].
pub(crate) async fn wait_until<F, Fut>(what: &str, mut check: F) -> Result<(), FixtureError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, FixtureError>>,
{
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FixtureError::new(
                ErrorKind::Timeout,
                format!("timed out after {WAIT_TIMEOUT:?} waiting for {what}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory the server user owns (and so can traverse).
pub(crate) fn new_cluster_dir(user: Option<ServerUser>) -> Result<TempDir, FixtureError> {
    let dir = tempfile::Builder::new()
        .prefix("pgrotate-testing-")
        .tempdir()
        .map_err(|e| FixtureError::io("creating the cluster directory", e))?;
    ServerUser::chown(user, dir.path())
        .map_err(|e| FixtureError::io("handing the cluster directory to the server user", e))?;
    Ok(dir)
}

/// The CA certificate (already written), server certificate and key, handed
/// to the server user; the key readable by it alone.
fn write_server_files(
    layout: &Layout,
    cert: &IssuedCert,
    user: Option<ServerUser>,
) -> Result<(), FixtureError> {
    let ca = layout.file(conf::CA_FILE);
    ServerUser::chown(user, &ca).map_err(|e| FixtureError::io("handing ca.crt over", e))?;
    write_file(
        &layout.file(conf::SERVER_CERT_FILE),
        &cert.cert_pem,
        0o644,
        user,
    )?;
    write_file(
        &layout.file(conf::SERVER_KEY_FILE),
        &cert.key_pem,
        0o600,
        user,
    )
}

pub(crate) fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    user: Option<ServerUser>,
) -> Result<(), FixtureError> {
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        std::io::Write::write_all(&mut file, contents.as_bytes())?;
        ServerUser::chown(user, path)
    };
    write().map_err(|e| FixtureError::io(format!("writing {}", path.display()), e))
}

/// A port nothing listens on right now (bind port 0, read, release).
pub(crate) fn free_port() -> Result<u16, FixtureError> {
    std::net::TcpListener::bind((HOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| FixtureError::io("finding a free port", e))
}

/// What the server logged since `offset`, at most its last 4000 bytes.
pub(crate) fn read_log_since(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => process::tail(&String::from_utf8_lossy(&text), 4000).to_owned(),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}
