//! The process backend of a [`Cluster`]: `initdb`, `pg_basebackup` and a
//! postmaster under its watchdog, in a temporary directory on this host.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cluster, ClusterBuilder, SUPERUSER, Server};
use crate::bin::find_bindir;
use crate::certs::IssuedCert;
use crate::conf::{self, Layout, REPLICATION_ROLE};
use crate::error::{ErrorKind, FixtureError};
use crate::process::{self, Launch, Started, Startup, Stop, Watchdog, server_command};
use crate::role;
use crate::user::ServerUser;
use crate::util::{HOST, TRACE_TARGET, free_port, new_cluster_dir, write_file};

/// A postmaster under its watchdog.
pub(super) struct Local {
    pub(super) watchdog: Option<Watchdog>,
    pub(super) bindir: PathBuf,
    pub(super) user: Option<ServerUser>,
}

impl ClusterBuilder {
    pub(super) async fn start_process(self) -> Result<Cluster, FixtureError> {
        let bindir = find_bindir()?;
        let user = ServerUser::detect();
        let dir = new_cluster_dir(user)?;
        let (layout, ca, server_cert) = self.layout_and_certs(dir.path())?;
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
}

impl Cluster {
    pub(super) async fn start_process_standby(
        &self,
        local: &Local,
    ) -> Result<Cluster, FixtureError> {
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

    /// Starts the postmaster and waits until a superuser connection
    /// succeeds. Retries while the port is taken (picking another when
    /// `may_change_port`) or a crashed predecessor's processes linger.
    pub(super) async fn launch(&mut self, may_change_port: bool) -> Result<(), FixtureError> {
        let log_path = self.layout.log_path();
        let (postgres, user) = match &self.server {
            Server::Process(local) => (local.bindir.join("postgres"), local.user),
            Server::Container(_) => unreachable!("launch is the process backend's"),
        };
        let startup = Startup::new("postgres", "accept connections", &log_path, user)
            .poll(Duration::from_millis(50));
        loop {
            let this = &*self;
            let started = process::start_and_wait(
                &startup,
                |log| Launch {
                    postgres: &postgres,
                    args: this.layout.server_args(this.port),
                    dir: &this.layout.dir,
                    log,
                    user,
                    immediate: Stop::Immediate,
                },
                || async { this.connect_superuser(SUPERUSER).await.ok() },
            )
            .await?;
            let log = match started {
                Started::Ready(watchdog, _ready) => {
                    tracing::debug!(target: TRACE_TARGET, port = self.port, dir = %self.layout.dir.display(), "server ready");
                    if let Server::Process(local) = &mut self.server {
                        local.watchdog = Some(watchdog);
                    }
                    return Ok(());
                }
                Started::Exited(log) => log,
            };

            // The postmaster exited before becoming ready.
            let port_taken = log.contains("Address already in use");
            let lingering = log.contains("is still in use") || log.contains("already exists");
            if (port_taken || lingering) && Instant::now() < startup.deadline {
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
