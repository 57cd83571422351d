//! Finding the `pgbouncer` binary and starting it in front of a cluster:
//! [`find_pgbouncer`], [`Cluster::start_pgbouncer`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_postgres::SimpleQueryMessage;

use super::{AUTH_FILE, CERT_FILE, KEY_FILE, PgBouncer, PgBouncerOptions};
use crate::cluster::Cluster;
use crate::error::{ErrorKind, FixtureError};
use crate::process::{self, Launch, Started, Startup, Stop};
use crate::role;
use crate::user::ServerUser;
use crate::util::{TRACE_TARGET, free_port, new_cluster_dir, write_file};

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
}
