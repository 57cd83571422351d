//! A running PostgreSQL server and its lifecycle: start, stop, crash,
//! restart, standby, promotion — as local processes or in a container.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use crate::backend::{self, Backend, ImageChoice};
use crate::bin::find_bindir;
use crate::certs::{IssuedCert, TestCa};
use crate::conf::{self, CONTAINER_SUPERUSER, Layout, REPLICATION_ROLE};
use crate::container::{self, ServerContainer, Spec};
use crate::docker;
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

/// A postmaster under its watchdog.
struct Local {
    watchdog: Option<Watchdog>,
    bindir: PathBuf,
    user: Option<ServerUser>,
}

/// A server container.
struct Remote {
    container: ServerContainer,
    image: ImageChoice,
    /// `POSTGRES_PASSWORD`: the superuser's password over TCP.
    superuser_password: String,
    /// The host directory mounted as the server's socket directory: the
    /// fixture's control connections use the socket in it (`trust`), as
    /// with local processes, where the host can reach it.
    socket_dir: PathBuf,
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

    async fn start_process(self) -> Result<Cluster, FixtureError> {
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
            server: Server::Process(Local {
                watchdog: None,
                bindir,
                user,
            }),
            port: free_port()?,
            data_dir: layout.data_dir(),
            layout,
            ca,
            server_cert,
            replication_password: role::random_password(),
            _dir: dir,
        };
        cluster.launch(true).await?;
        Ok(cluster)
    }

    async fn start_container(self) -> Result<Cluster, FixtureError> {
        let image = backend::container_image().await?;
        let session = docker::session().await?;
        // The host side: the CA file (for `sslrootcert`), the server log and
        // socket, in the session's directory (which the reaper removes).
        let dir = container_cluster_dir(session)?;
        let layout = Layout {
            dir: dir.path().to_owned(),
            ssl: self.ssl,
            require_client_cert: self.require_client_cert,
        };
        let ca = TestCa::generate_at(&layout.file(conf::CA_FILE))?;
        let server_cert = Arc::new(ca.issue_server_cert()?);
        let superuser_password = role::random_password();
        let socket_dir = new_socket_dir(&layout)?;
        let network = session.next_name();
        let spec = Spec {
            image: image.clone(),
            name: format!("{network}-primary"),
            network,
            env: vec![
                ("POSTGRES_USER".into(), CONTAINER_SUPERUSER.into()),
                ("POSTGRES_PASSWORD".into(), superuser_password.clone()),
                ("POSTGRES_DB".into(), SUPERUSER.into()),
            ],
            args: layout.container_args(),
            files: layout.container_files(
                &server_cert.cert_pem,
                &server_cert.key_pem,
                ca.cert_pem(),
            ),
            log_path: layout.log_path(),
            socket_dir: socket_dir.clone(),
        };
        let (container, port) = ServerContainer::start(spec).await?;
        let cluster = Cluster {
            server: Server::Container(Box::new(Remote {
                container,
                image,
                superuser_password,
                socket_dir,
            })),
            port,
            layout,
            data_dir: PathBuf::from(container::DATA_DIR),
            ca,
            server_cert,
            replication_password: role::random_password(),
            _dir: dir,
        };
        cluster.wait_for_login().await?;
        Ok(cluster)
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

    /// The id of this cluster's container ([`Backend::Container`] only).
    pub fn container_id(&self) -> Option<&str> {
        match &self.server {
            Server::Process(_) => None,
            Server::Container(remote) => Some(remote.container.id()),
        }
    }

    /// The container's address on the cluster's private Docker network, port
    /// 5432 ([`Backend::Container`] only; `None` while disconnected).
    ///
    /// Clients connecting here bypass Docker's port publishing, so that
    /// [`disconnect_network`](Self::disconnect_network) cuts them off
    /// silently — their packets go unanswered, as in a real partition —
    /// where clients of [`url`](Self::url) see their connections closed.
    /// Reachable from the host where Docker's bridge networks are (Linux;
    /// not Docker Desktop's VM). The server certificate does not name this
    /// address: use `sslmode=require` (or verify-ca) here.
    pub fn network_addr(&self) -> Option<SocketAddr> {
        match &self.server {
            Server::Process(_) => None,
            Server::Container(remote) => remote
                .container
                .ip()
                .map(|ip: IpAddr| SocketAddr::new(ip, 5432)),
        }
    }

    /// [`url`](Self::url) with [`network_addr`](Self::network_addr) as host
    /// and port ([`Backend::Container`] only; `None` while disconnected).
    pub fn network_url(&self, role: &TestRole) -> Option<String> {
        self.network_addr().map(|addr| {
            format!(
                "postgres://{}:{}@{addr}/{}",
                role.name, role.password, role.database
            )
        })
    }

    /// Cuts the container off its network (`docker network disconnect`): a
    /// partition, as a second way besides a [`FaultProxy`](crate::FaultProxy).
    ///
    /// What clients see: connections through [`url`](Self::url) (Docker's
    /// port publishing on `127.0.0.1`) are closed at once and new ones
    /// refused; connections to [`network_addr`](Self::network_addr) hang —
    /// nothing in flight gets an answer — and new ones time out. Standbys
    /// on the network lose their primary. The fixture's own control
    /// operations ([`superuser`](Self::superuser) and all that use it) keep
    /// working through the server's Unix socket, mounted on the host — except
    /// where the host cannot use it (Docker Desktop's VM), where they fail
    /// until [`reconnect_network`](Self::reconnect_network).
    /// Fails with [`ErrorKind::Unsupported`] on local processes.
    pub async fn disconnect_network(&self) -> Result<(), FixtureError> {
        self.container("disconnect_network")?.disconnect().await
    }

    /// Puts the container back on its network (`docker network connect`):
    /// the published port answers again, the container has an address on
    /// the network again (usually the same, not guaranteed: read
    /// [`network_addr`](Self::network_addr) again). Returns once the server
    /// accepts a login through the published port.
    pub async fn reconnect_network(&self) -> Result<(), FixtureError> {
        self.container("reconnect_network")?.reconnect().await?;
        self.wait_for_login().await
    }

    fn container(&self, operation: &str) -> Result<&ServerContainer, FixtureError> {
        match &self.server {
            Server::Container(remote) => Ok(&remote.container),
            Server::Process(_) => Err(FixtureError::new(
                ErrorKind::Unsupported,
                format!(
                    "Cluster::{operation} needs the container backend \
                     (PGROTATE_TEST_BACKEND=container); with local processes, put a \
                     FaultProxy in front of the server"
                ),
            )),
        }
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
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        tokio_postgres::Error,
    > {
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
            }
            Server::Container(remote) => {
                // The mounted socket where the host can use it (not across
                // Docker Desktop's VM): no TCP, no password, no port
                // publishing, and it works while the container is off its
                // network. Else the published port.
                let mut socket = config.clone();
                socket
                    .host_path(&remote.socket_dir)
                    .port(5432)
                    .user(CONTAINER_SUPERUSER);
                if remote.socket_dir.join(".s.PGSQL.5432").exists()
                    && let Ok(connected) = socket.connect(NoTls).await
                {
                    return Ok(connected);
                }
                config
                    .host(HOST)
                    .port(self.port)
                    .user(CONTAINER_SUPERUSER)
                    .password(&remote.superuser_password);
            }
        }
        config.connect(NoTls).await
    }

    /// A superuser login through the published port (what clients use).
    async fn connect_published(&self, remote: &Remote) -> Result<(), tokio_postgres::Error> {
        tokio_postgres::Config::new()
            .host(HOST)
            .port(self.port)
            .user(CONTAINER_SUPERUSER)
            .password(&remote.superuser_password)
            .dbname(SUPERUSER)
            .application_name("pgrotate-testing")
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
            .map(drop)
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

    /// A streaming standby of this server, with the same CA, certificates,
    /// roles and `pg_hba`. Read-only until [`promote`](Self::promote)d.
    ///
    /// Local processes: `pg_basebackup -R -X stream` into a directory of its
    /// own, started on its own free port. A container: a second container
    /// on this cluster's private network whose entrypoint runs
    /// `pg_basebackup` from this one by its container name, its port
    /// published on a free host port.
    pub async fn start_standby(&self) -> Result<Cluster, FixtureError> {
        match &self.server {
            Server::Process(local) => self.start_process_standby(local).await,
            Server::Container(remote) => self.start_container_standby(remote).await,
        }
    }

    async fn start_process_standby(&self, local: &Local) -> Result<Cluster, FixtureError> {
        let basebackup = local.bindir.join("pg_basebackup");
        if !basebackup.is_file() {
            return Err(FixtureError::new(
                ErrorKind::NoServerBinaries,
                format!(
                    "{} not found; install Debian's package `postgresql`",
                    basebackup.display()
                ),
            ));
        }
        let dir = new_cluster_dir(local.user)?;
        let layout = Layout {
            dir: dir.path().to_owned(),
            ..self.layout.clone()
        };
        let ca = self.ca.copy_to(&layout.file(conf::CA_FILE))?;
        write_server_files(&layout, &self.server_cert, local.user)?;

        let mut cmd = server_command(&basebackup, &layout.dir, local.user);
        cmd.arg("-D")
            .arg(layout.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "-w", "-h", HOST, "-p"])
            .arg(self.port.to_string())
            .args(["-U", REPLICATION_ROLE])
            .env("PGPASSWORD", &self.replication_password);
        process::run(cmd, "pg_basebackup").await?;

        let mut standby = Cluster {
            server: Server::Process(Local {
                watchdog: None,
                bindir: local.bindir.clone(),
                user: local.user,
            }),
            port: free_port()?,
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

    async fn start_container_standby(&self, remote: &Remote) -> Result<Cluster, FixtureError> {
        let session = docker::session().await?;
        let dir = container_cluster_dir(session)?;
        let layout = Layout {
            dir: dir.path().to_owned(),
            ..self.layout.clone()
        };
        let ca = self.ca.copy_to(&layout.file(conf::CA_FILE))?;
        let socket_dir = new_socket_dir(&layout)?;
        let spec = Spec {
            image: remote.image.clone(),
            name: format!("{}-standby", session.next_name()),
            network: remote.container.network().to_owned(),
            env: vec![
                ("PRIMARY_HOST".into(), remote.container.name().to_owned()),
                ("PRIMARY_PORT".into(), "5432".into()),
                ("REPLICATION_USER".into(), REPLICATION_ROLE.into()),
                (
                    "REPLICATION_PASSWORD".into(),
                    self.replication_password.clone(),
                ),
                // The superuser the readiness probe logs in as; the password
                // comes with the copied catalog.
                ("POSTGRES_USER".into(), CONTAINER_SUPERUSER.into()),
                (
                    "POSTGRES_PASSWORD".into(),
                    remote.superuser_password.clone(),
                ),
            ],
            args: layout.container_args(),
            files: layout.container_files(
                &self.server_cert.cert_pem,
                &self.server_cert.key_pem,
                self.ca.cert_pem(),
            ),
            log_path: layout.log_path(),
            socket_dir: socket_dir.clone(),
        };
        let (container, port) = ServerContainer::start(spec).await?;
        let standby = Cluster {
            server: Server::Container(Box::new(Remote {
                container,
                image: remote.image.clone(),
                superuser_password: remote.superuser_password.clone(),
                socket_dir,
            })),
            port,
            layout,
            data_dir: PathBuf::from(container::DATA_DIR),
            ca,
            server_cert: Arc::clone(&self.server_cert),
            replication_password: self.replication_password.clone(),
            _dir: dir,
        };
        standby.wait_for_login().await?;
        Ok(standby)
    }

    /// Waits until the container's server accepts a superuser login through
    /// the published port (after its ready line, or a `docker start`).
    async fn wait_for_login(&self) -> Result<(), FixtureError> {
        let Server::Container(remote) = &self.server else {
            return Ok(());
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), self.connect_published(remote)).await;
            let error = match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            if Instant::now() >= deadline {
                return Err(FixtureError::new(
                    ErrorKind::Startup,
                    format!(
                        "the server did not accept a login within {START_TIMEOUT:?} ({error}); \
                         server log:\n{}",
                        read_log_since(&self.log_path(), 0)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let (postgres, user) = match &self.server {
            Server::Process(local) => (local.bindir.join("postgres"), local.user),
            Server::Container(_) => unreachable!("launch is the process backend's"),
        };
        loop {
            let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| FixtureError::io("opening the server log", e))?;
            ServerUser::chown(user, &log_path)
                .map_err(|e| FixtureError::io("handing the server log to the server user", e))?;
            let mut watchdog = Watchdog::spawn(Launch {
                postgres: &postgres,
                args: self.layout.server_args(self.port),
                dir: &self.layout.dir,
                log,
                user,
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
                    if let Server::Process(local) = &mut self.server {
                        local.watchdog = Some(watchdog);
                    }
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

/// A container cluster's host directory, inside its session's.
fn container_cluster_dir(session: &docker::Session) -> Result<TempDir, FixtureError> {
    tempfile::Builder::new()
        .prefix("cluster-")
        .tempdir_in(session.dir())
        .map_err(|e| FixtureError::io("creating the cluster directory", e))
}

/// `socket` in a container cluster's host directory, writable by the
/// container's `postgres` user (mode 0777: its uid is not ours).
fn new_socket_dir(layout: &Layout) -> Result<PathBuf, FixtureError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = layout.file("socket");
    std::fs::create_dir(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)))
        .map_err(|e| FixtureError::io("creating the socket directory", e))?;
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
