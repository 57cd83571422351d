//! The container backend of a [`Cluster`]: a server container per cluster
//! on a private Docker network, its port published on the host, and what
//! only a container can do (leave its network).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::NoTls;

use super::{Cluster, ClusterBuilder, SUPERUSER, Server, SuperuserConnection};
use crate::backend::{self, ImageChoice};
use crate::conf::{self, CONTAINER_SUPERUSER, Layout, REPLICATION_ROLE};
use crate::container::{self, ServerContainer, Spec};
use crate::docker;
use crate::error::{ErrorKind, FixtureError};
use crate::role::{self, TestRole};
use crate::util::{HOST, START_TIMEOUT, read_log_since};

/// A server container.
pub(super) struct Remote {
    pub(super) container: ServerContainer,
    pub(super) image: ImageChoice,
    /// `POSTGRES_PASSWORD`: the superuser's password over TCP.
    pub(super) superuser_password: String,
    /// The host directory mounted as the server's socket directory: the
    /// fixture's control connections use the socket in it (`trust`), as
    /// with local processes, where the host can reach it.
    pub(super) socket_dir: PathBuf,
}

impl Remote {
    /// A superuser connection: over the mounted socket where the host can
    /// use it, else through the published `port` with the password.
    pub(super) async fn connect_superuser(
        &self,
        mut config: tokio_postgres::Config,
        port: u16,
    ) -> Result<SuperuserConnection, tokio_postgres::Error> {
        // The mounted socket where the host can use it (not across
        // Docker Desktop's VM): no TCP, no password, no port
        // publishing, and it works while the container is off its
        // network. Else the published port.
        let mut socket = config.clone();
        socket
            .host_path(&self.socket_dir)
            .port(5432)
            .user(CONTAINER_SUPERUSER);
        if self.socket_dir.join(".s.PGSQL.5432").exists()
            && let Ok(connected) = socket.connect(NoTls).await
        {
            return Ok(connected);
        }
        config
            .host(HOST)
            .port(port)
            .user(CONTAINER_SUPERUSER)
            .password(&self.superuser_password);
        config.connect(NoTls).await
    }
}

impl ClusterBuilder {
    pub(super) async fn start_container(self) -> Result<Cluster, FixtureError> {
        let image = backend::container_image().await?;
        let session = docker::session().await?;
        // The host side: the CA file (for `sslrootcert`), the server log and
        // socket, in the session's directory (which the reaper removes).
        let dir = container_cluster_dir(session)?;
        let (layout, ca, server_cert) = self.layout_and_certs(dir.path())?;
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
    /// The id of this cluster's container ([`crate::Backend::Container`] only).
    pub fn container_id(&self) -> Option<&str> {
        match &self.server {
            Server::Process(_) => None,
            Server::Container(remote) => Some(remote.container.id()),
        }
    }

    /// The container's address on the cluster's private Docker network, port
    /// 5432 ([`crate::Backend::Container`] only; `None` while disconnected).
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
    /// and port ([`crate::Backend::Container`] only; `None` while disconnected).
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

    pub(super) async fn start_container_standby(
        &self,
        remote: &Remote,
    ) -> Result<Cluster, FixtureError> {
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
    pub(super) async fn wait_for_login(&self) -> Result<(), FixtureError> {
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
