//! A server in a Docker container, through testcontainers: start (as a
//! primary or a streaming standby), stop, kill, start again, cut off from
//! its network and back, remove.
//!
//! Each primary gets a private Docker network of its own (`pgrotate-<session>-<n>`);
//! its standbys join it and stream from it by its container name. The
//! server's port 5432 is published on `127.0.0.1` at a fixed host port, so
//! the port survives `docker stop` / `docker start`. What the container is
//! created from (image, entrypoint, mounts, environment): `request.rs`.

mod request;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use testcontainers::bollard::models::{NetworkConnectRequest, NetworkDisconnectRequest};
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};

use crate::docker;
use crate::error::FixtureError;
pub(crate) use crate::spec::{DATA_DIR, Spec};
use crate::util::{TRACE_TARGET, free_port};
use request::request;

/// How long `docker stop` waits for the fast shutdown before `SIGKILL`.
const STOP_TIMEOUT_SECS: i32 = 60;

/// A running (or stopped) server container. Dropping it removes the
/// container with its volume (`docker rm -f -v`) and, with its last
/// container, the network.
pub(crate) struct ServerContainer {
    container: Option<ContainerAsync<GenericImage>>,
    id: String,
    name: String,
    network: String,
    ip: Mutex<Option<IpAddr>>,
    running: bool,
    stop_logs: Arc<AtomicBool>,
}

impl ServerContainer {
    /// Creates and starts the container on a free host port; returns it and
    /// the port. For a pgrotate-postgres image, returns once it printed its
    /// ready line; the caller then waits for a login.
    pub(crate) async fn start(spec: Spec) -> Result<(ServerContainer, u16), FixtureError> {
        let session = docker::session().await?;
        let labels = session.labels();
        let log_path = spec.log_path.clone();
        let (name, network) = (spec.name.clone(), spec.network.clone());
        let (container, port) = docker::run(async move { create(&spec, &labels).await }).await?;
        let id = container.id().to_owned();
        let stop_logs = Arc::new(AtomicBool::new(false));
        docker::spawn(follow_logs(id.clone(), log_path, Arc::clone(&stop_logs)));
        let server = ServerContainer {
            container: Some(container),
            id,
            name,
            network,
            ip: Mutex::new(None),
            running: true,
            stop_logs,
        };
        server.refresh_ip().await?;
        tracing::debug!(target: TRACE_TARGET, name = %server.name, port, "container started");
        Ok((server, port))
    }

    /// The container's name, its host name on its network.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The container id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The private network's name.
    pub(crate) fn network(&self) -> &str {
        &self.network
    }

    /// The container's address on its network, when connected.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        *self.ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the container was last started (not stopped or killed).
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// `docker stop`: `SIGINT` (the image's stop signal), a fast shutdown;
    /// `SIGKILL` after 60 s.
    pub(crate) async fn stop(&mut self) -> Result<(), FixtureError> {
        let id = self.id.clone();
        docker::run(async move {
            let options = StopContainerOptions {
                t: Some(STOP_TIMEOUT_SECS),
                ..Default::default()
            };
            docker::client()
                .await?
                .stop_container(&id, Some(options))
                .await
                .map_err(|e| FixtureError::docker("docker stop", e))
        })
        .await?;
        self.running = false;
        Ok(())
    }

    /// `docker kill`: `SIGKILL` to the postmaster, and with it (PID 1) to
    /// every process of the container.
    pub(crate) async fn kill(&mut self) -> Result<(), FixtureError> {
        let id = self.id.clone();
        docker::run(async move {
            let options = KillContainerOptions {
                signal: "KILL".to_owned(),
            };
            docker::client()
                .await?
                .kill_container(&id, Some(options))
                .await
                .map_err(|e| FixtureError::docker("docker kill", e))
        })
        .await?;
        self.running = false;
        Ok(())
    }

    /// `docker start` of the stopped container (same host port; the
    /// entrypoint finds the data directory and starts the server).
    pub(crate) async fn start_again(&mut self) -> Result<(), FixtureError> {
        let id = self.id.clone();
        docker::run(async move {
            docker::client()
                .await?
                .start_container(&id, None)
                .await
                .map_err(|e| FixtureError::docker("docker start", e))
        })
        .await?;
        self.running = true;
        self.refresh_ip().await
    }

    /// `docker network disconnect`: the container leaves its network.
    pub(crate) async fn disconnect(&self) -> Result<(), FixtureError> {
        let (id, network) = (self.id.clone(), self.network.clone());
        docker::run(async move {
            let request = NetworkDisconnectRequest {
                container: id,
                force: Some(true),
            };
            docker::client()
                .await?
                .disconnect_network(&network, request)
                .await
                .map_err(|e| FixtureError::docker("docker network disconnect", e))
        })
        .await?;
        *self.ip.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// `docker network connect`: back on its network (by its name, as
    /// before; its address may differ).
    pub(crate) async fn reconnect(&self) -> Result<(), FixtureError> {
        let (id, network) = (self.id.clone(), self.network.clone());
        docker::run(async move {
            let request = NetworkConnectRequest {
                container: id,
                endpoint_config: None,
            };
            docker::client()
                .await?
                .connect_network(&network, request)
                .await
                .map_err(|e| FixtureError::docker("docker network connect", e))
        })
        .await?;
        self.refresh_ip().await
    }

    /// Reads the container's address on its network.
    async fn refresh_ip(&self) -> Result<(), FixtureError> {
        let (id, network) = (self.id.clone(), self.network.clone());
        let ip = docker::run(async move {
            let inspected = docker::client()
                .await?
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .map_err(|e| FixtureError::docker("docker inspect", e))?;
            Ok(inspected
                .network_settings
                .and_then(|settings| settings.networks)
                .and_then(|mut networks| networks.remove(&network))
                .and_then(|endpoint| endpoint.ip_address)
                .and_then(|ip| ip.parse::<IpAddr>().ok()))
        })
        .await?;
        *self.ip.lock().unwrap_or_else(|e| e.into_inner()) = ip;
        Ok(())
    }
}

impl Drop for ServerContainer {
    fn drop(&mut self) {
        self.stop_logs.store(true, Ordering::SeqCst);
        if let Some(container) = self.container.take() {
            let name = self.name.clone();
            docker::run_blocking(
                async move {
                    if let Err(error) = container.rm().await {
                        tracing::warn!(target: TRACE_TARGET, %name, %error, "removing the container failed");
                    }
                },
                Duration::from_secs(60),
            );
        }
    }
}

impl std::fmt::Debug for ServerContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContainer")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("network", &self.network)
            .field("ip", &self.ip())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// Creates and starts the container, on another free host port while the
/// chosen one turns out taken. A container that fails to start is removed,
/// its output (when it has any) quoted in the error.
async fn create(
    spec: &Spec,
    labels: &[(String, String)],
) -> Result<(ContainerAsync<GenericImage>, u16), FixtureError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = free_port()?;
        let error = match request(spec, port, labels).start().await {
            Ok(container) => return Ok((container, port)),
            Err(error) => error,
        };
        let output = output_of(&spec.name).await;
        remove(&spec.name).await;
        let text = error.to_string();
        let port_taken =
            text.contains("port is already allocated") || text.contains("address already in use");
        if port_taken && attempts < 5 {
            tracing::debug!(target: TRACE_TARGET, port, "host port taken; trying another");
            continue;
        }
        let mut action = format!(
            "starting container {} from {}:{}",
            spec.name, spec.image.name, spec.image.tag
        );
        if !output.is_empty() {
            action.push_str(&format!(" (its output:\n{output}\n)"));
        }
        return Err(FixtureError::docker(action, error));
    }
}

/// The last lines a container printed, empty when there are none (or it is
/// gone).
async fn output_of(name: &str) -> String {
    let Ok(client) = docker::client().await else {
        return String::new();
    };
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: "40".to_owned(),
        ..Default::default()
    };
    let mut text = String::new();
    let mut logs = client.logs(name, Some(options));
    while let Some(Ok(entry)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&entry.into_bytes()));
    }
    text.trim_end().to_owned()
}

/// `docker rm -f -v name`, errors ignored (it may not exist).
async fn remove(name: &str) {
    if let Ok(client) = docker::client().await {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = client.remove_container(name, Some(options)).await;
    }
}

/// Appends the container's output (stdout and stderr, as `docker logs`
/// shows it) to `path` until `stop` is set or the container is gone,
/// across stops and starts: each time the stream ends (the container
/// stopped), it is opened again and the entries already written skipped.
async fn follow_logs(id: String, path: PathBuf, stop: Arc<AtomicBool>) {
    {
        use tokio::io::AsyncWriteExt;
        let Ok(client) = docker::client().await else {
            return;
        };
        let Ok(mut file) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
        else {
            return;
        };
        let mut written = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let options = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let mut logs = client.logs(&id, Some(options));
            let mut seen = 0usize;
            while let Some(entry) = logs.next().await {
                match entry {
                    Ok(output) => {
                        seen += 1;
                        if seen > written {
                            let _ = file.write_all(&output.into_bytes()).await;
                            let _ = file.flush().await;
                            written = seen;
                        }
                    }
                    Err(testcontainers::bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => return,
                    Err(_) => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
