//! A running PostgreSQL server and its lifecycle: start, stop, crash,
//! restart, standby, promotion — as local processes or in a container.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use crate::backend::Backend;
use crate::certs::{IssuedCert, TestCa};
use crate::conf::{self, Layout, REPLICATION_ROLE};
use crate::error::{ErrorKind, FixtureError};
use crate::process::Stop;
use crate::role::{self, TestRole};
use crate::user::ServerUser;
use crate::util::{HOST, TRACE_TARGET};

mod container;
mod process;
mod roles;
mod standby;

use container::Remote;
use process::Local;

/// The superuser `initdb` creates; it logs in over the Unix socket (trust).
const SUPERUSER: &str = "postgres";
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A fixture's superuser connection before its task is spawned.
type SuperuserConnection = (
    Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
);

/// Builds and starts a [`Cluster`]; made by [`Cluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBuilder {
    ssl: bool,
    require_client_cert: bool,
    backend: Option<Backend>,
}

/// One running PostgreSQL server, owned by the test: local processes in a
/// temporary directory, or a Docker container ([`Backend`]).
///
/// Dropping it stops the server and removes what it made; this works inside
/// and outside a tokio runtime and while a test panics:
/// - processes: an immediate shutdown (`SIGKILL` after 5 s) and the
///   directory removed. Should the test process end without dropping it (a
///   `static`, `panic=abort`, a signal), the watchdog shell that owns the
///   postmaster shuts it down and removes the directory.
/// - containers: `docker rm -f -v` (the container and its data volume),
///   and with the last container of its network, the network. Containers
///   never dropped are removed by a reaper once the test process has exited
///   (see [`Backend::Container`] and the crate docs).
///
/// Control operations (roles, terminations, promotion) each open a fresh
/// superuser connection on the calling runtime, so one cluster serves many
/// `#[tokio::test]` runtimes (see [`Cluster::shared`]).
pub struct Cluster {
    /// Declared first: the server stops before the directory is removed.
    server: Server,
    port: u16,
    layout: Layout,
    data_dir: PathBuf,
    ca: TestCa,
    server_cert: Arc<IssuedCert>,
    replication_password: String,
    _dir: TempDir,
}

/// Where the server runs.
enum Server {
    Process(Local),
    Container(Box<Remote>),
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            ssl: true,
            require_client_cert: false,
            backend: None,
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
    /// clientcert=verify-full` (in a container: from all addresses, and the
    /// fixture's own superuser `postgres` exempted: it logs in with its
    /// password over plain TCP). Needs [`ssl`](Self::ssl) on.
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }

    /// Where the server runs (default: [`Backend::from_env`], i.e.
    /// `PGROTATE_TEST_BACKEND`, else a container when Docker and an image are
    /// there, else local processes).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Creates a data directory (`initdb`, or the image's entrypoint),
    /// starts the server on a free port and waits until it accepts
    /// connections.
    pub async fn start(self) -> Result<Cluster, FixtureError> {
        if self.require_client_cert && !self.ssl {
            return Err(FixtureError::new(
                ErrorKind::InvalidConfig,
                "require_client_cert(true) needs ssl(true)",
            ));
        }
        let backend = match self.backend {
            Some(backend) => backend,
            None => Backend::from_env().await?,
        };
        let cluster = match backend {
            Backend::Process => self.start_process().await?,
            Backend::Container => self.start_container().await?,
        };
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

    /// A new cluster's layout in `dir`, its CA (written there) and the
    /// server certificate the CA issued.
    fn layout_and_certs(
        &self,
        dir: &Path,
    ) -> Result<(Layout, TestCa, Arc<IssuedCert>), FixtureError> {
        let layout = Layout {
            dir: dir.to_owned(),
            ssl: self.ssl,
            require_client_cert: self.require_client_cert,
        };
        let ca = TestCa::generate_at(&layout.file(conf::CA_FILE))?;
        let server_cert = Arc::new(ca.issue_server_cert()?);
        Ok((layout, ca, server_cert))
    }
}

impl Cluster {
    /// A builder: TLS on, no client certificates required, the backend
    /// from the environment.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a cluster with the defaults (`Cluster::builder().start()`).
    pub async fn start() -> Result<Cluster, FixtureError> {
        Cluster::builder().start().await
    }

    /// One cluster for the whole test process, started by the first caller.
    ///
    /// It is never dropped: when the test process exits, its watchdog (local
    /// processes) stops it and removes its directory, or the reaper
    /// (containers) removes its container. Give each test its own roles
    /// ([`create_role`](Self::create_role)) and do not stop, crash or
    /// disconnect it.
    pub async fn shared() -> Result<&'static Cluster, FixtureError> {
        static SHARED: OnceCell<Cluster> = OnceCell::const_new();
        SHARED.get_or_try_init(Cluster::start).await
    }

    /// Where this server runs.
    pub fn backend(&self) -> Backend {
        match self.server {
            Server::Process(_) => Backend::Process,
            Server::Container(_) => Backend::Container,
        }
    }

    /// The address the server listens on: `127.0.0.1` (a container's port
    /// is published there).
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on (kept across restarts; for a
    /// container, the host port its 5432 is published on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`: where the server listens, e.g. the upstream of a
    /// [`FaultProxy`](crate::FaultProxy).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The server's data directory: on this host for local processes; for a
    /// container, its path inside the container.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file the server logs to. For a container, a file on this host
    /// that its output (`docker logs`, including the entrypoint's) is
    /// appended to as it comes.
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

    /// A fresh superuser connection to the `postgres` database, over the
    /// Unix socket (a container's is mounted on the host; where the host
    /// cannot use it, over the published port with the superuser's
    /// password); its connection task runs on the current runtime.
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
    ) -> Result<SuperuserConnection, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .dbname(database)
            .application_name("pgrotate-testing")
            .connect_timeout(Duration::from_secs(5));
        match &self.server {
            Server::Process(_) => {
                config
                    .host_path(&self.layout.dir)
                    .port(self.port)
                    .user(SUPERUSER);
                config.connect(NoTls).await
            }
            Server::Container(remote) => remote.connect_superuser(config, self.port).await,
        }
    }

    /// The OS user server processes run as on this host (none: the test
    /// process's own); for a container cluster, the user a
    /// [`PgBouncer`](crate::PgBouncer) in front of it runs as.
    pub(crate) fn server_user(&self) -> Option<ServerUser> {
        match &self.server {
            Server::Process(local) => local.user,
            Server::Container(_) => ServerUser::detect(),
        }
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

    /// `SIGKILL` to the postmaster (a crash: no shutdown checkpoint), then
    /// start again on the same port. Local processes: backends are left to
    /// notice, and the start retries while they still hold shared memory. A
    /// container: `docker kill` (every process of the container dies with
    /// the postmaster, its PID 1), then `docker start`. Committed rows
    /// survive.
    pub async fn crash_and_restart(&mut self) -> Result<(), FixtureError> {
        match &mut self.server {
            Server::Process(local) => {
                if let Some(mut watchdog) = local.watchdog.take() {
                    watchdog.stop(Stop::Kill, STOP_TIMEOUT).await;
                }
                self.launch(false).await
            }
            Server::Container(remote) => {
                if remote.container.running() {
                    remote.container.kill().await?;
                }
                remote.container.start_again().await?;
                self.wait_for_login().await
            }
        }
    }

    /// Fast shutdown (clients see `57P01`; a container: `docker stop`, whose
    /// stop signal is `SIGINT`); [`start_again`](Self::start_again) brings
    /// the server back. A no-op when it is already stopped.
    pub async fn stop(&mut self) -> Result<(), FixtureError> {
        match &mut self.server {
            Server::Process(local) => {
                if let Some(mut watchdog) = local.watchdog.take() {
                    watchdog.stop(Stop::Fast, STOP_TIMEOUT).await;
                    tracing::debug!(target: TRACE_TARGET, port = self.port, "server stopped");
                }
            }
            Server::Container(remote) => {
                if remote.container.running() {
                    remote.container.stop().await?;
                    tracing::debug!(target: TRACE_TARGET, port = self.port, "container stopped");
                }
            }
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port (a container: `docker
    /// start`, same host port). A no-op when it runs.
    pub async fn start_again(&mut self) -> Result<(), FixtureError> {
        match &mut self.server {
            Server::Process(local) => {
                if let Some(watchdog) = &mut local.watchdog {
                    if !watchdog.has_exited() {
                        return Ok(());
                    }
                    local.watchdog = None;
                }
                self.launch(false).await
            }
            Server::Container(remote) => {
                if remote.container.running() {
                    return Ok(());
                }
                remote.container.start_again().await?;
                self.wait_for_login().await
            }
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Cluster");
        f.field("backend", &self.backend())
            .field("host", &HOST)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("ssl", &self.layout.ssl)
            .field("require_client_cert", &self.layout.require_client_cert);
        match &self.server {
            Server::Process(local) => f.field("running", &local.watchdog.is_some()),
            Server::Container(remote) => f.field("container", &remote.container).field(
                "image",
                &format!("{}:{}", remote.image.name, remote.image.tag),
            ),
        };
        f.finish_non_exhaustive()
    }
}
