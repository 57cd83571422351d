//! The Docker side of the container backend: one runtime for every Docker
//! call, the engine and image checks, and the cleanup of containers the
//! test process leaves behind.
//!
//! Every call to the engine runs on one runtime of its own that lives as long
//! as the process: testcontainers' client keeps pooled HTTP connections whose
//! tasks belong to the runtime that opened them, and a test's runtime ends
//! with the test while [`Cluster::shared`](crate::Cluster::shared) containers
//! outlive it.
//!
//! Engine versions: bollard 0.20 (testcontainers 0.27's) builds request paths
//! without the API version (`/containers/json`, not `/v1.52/...`), so the
//! engine answers in its own newest version and engines older than bollard's
//! default API (Docker 20.10 speaks 1.41) work. Should a later bollard send
//! its version, such engines would refuse every request ("client version
//! 1.52 is too new"); Cargo.lock pins 0.20.2.
//!
//! Containers and networks carry the labels / names of a *session* (one test
//! process). They go away when their [`Cluster`](crate::Cluster) drops; for
//! those never dropped (a `static`), a reaper shell started with the first
//! container removes the session's containers and networks once the test
//! process has exited (its standard input, a pipe from the test process,
//! closes), through the `docker` CLI. Should the reaper not run (no CLI, or
//! killed too), the first container of a later session removes what sessions
//! of dead processes on this host left.

use std::collections::HashMap;
use std::future::Future;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use testcontainers::bollard::Docker;
use testcontainers::bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, RemoveContainerOptions,
};
use testcontainers::core::client::docker_client_instance;
use tokio::runtime::Runtime;

use crate::error::{ErrorKind, FixtureError};
use crate::util::TRACE_TARGET;

/// Label: the session (test process) a container belongs to.
pub(crate) const LABEL_SESSION: &str = "org.pgrotate.session";
/// Label: the pid of the test process.
pub(crate) const LABEL_PID: &str = "org.pgrotate.pid";
/// Label: the host name of the test process.
pub(crate) const LABEL_HOST: &str = "org.pgrotate.host";
/// Label the pgrotate-postgres image carries (`docker/postgres/Dockerfile`).
pub(crate) const LABEL_IMAGE: &str = "org.pgrotate.image";
/// The repository scripts/build-image.sh tags its images with.
pub(crate) const IMAGE_REPOSITORY: &str = "pgrotate-postgres";
/// Prefix of every container and network name.
const NAME_PREFIX: &str = "pgrotate";

/// The runtime every Docker call runs on.
fn runtime() -> &'static Runtime {
    static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pgrotate-testing-docker")
            .enable_all()
            .build()
            .expect("building the pgrotate-testing Docker runtime")
    });
    &RUNTIME
}

/// Runs `task` on the Docker runtime and waits for it, from any runtime.
pub(crate) async fn run<F, T>(task: F) -> Result<T, FixtureError>
where
    F: Future<Output = Result<T, FixtureError>> + Send + 'static,
    T: Send + 'static,
{
    runtime().spawn(task).await.map_err(|e| {
        FixtureError::new(
            ErrorKind::Docker,
            format!("a Docker operation panicked or was cancelled: {e}"),
        )
    })?
}

/// Runs `task` on the Docker runtime in the background.
pub(crate) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    runtime().spawn(task);
}

/// Runs `task` on the Docker runtime and blocks the calling thread until it
/// ends or `timeout` passes (for `Drop`, inside or outside a runtime).
pub(crate) fn run_blocking<F>(task: F, timeout: Duration)
where
    F: Future<Output = ()> + Send + 'static,
{
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        task.await;
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(timeout);
}

/// The engine client testcontainers uses (so `DOCKER_HOST` and
/// `~/.testcontainers.properties` apply alike).
pub(crate) async fn client() -> Result<Docker, FixtureError> {
    docker_client_instance()
        .await
        .map_err(|e| FixtureError::docker("connecting to the Docker engine", e))
}

/// Whether a Docker engine answers a ping within 3 s (on the Docker runtime).
pub(crate) async fn engine_answers() -> bool {
    run(async {
        let answered = tokio::time::timeout(Duration::from_secs(3), async {
            client()
                .await?
                .ping()
                .await
                .map_err(|e| FixtureError::docker("ping", e))
        })
        .await;
        Ok(matches!(answered, Ok(Ok(_))))
    })
    .await
    .unwrap_or(false)
}

/// The newest local `pgrotate-postgres:*` image, as `name:tag`.
pub(crate) async fn newest_local_image() -> Result<Option<String>, FixtureError> {
    run(async {
        let options = ListImagesOptions {
            filters: Some(HashMap::from([(
                "reference".to_owned(),
                vec![IMAGE_REPOSITORY.to_owned()],
            )])),
            ..Default::default()
        };
        let mut images = client()
            .await?
            .list_images(Some(options))
            .await
            .map_err(|e| FixtureError::docker("listing local images", e))?;
        images.sort_by_key(|image| std::cmp::Reverse(image.created));
        Ok(images.into_iter().find_map(|image| {
            image
                .repo_tags
                .into_iter()
                .find(|tag| tag.starts_with(&format!("{IMAGE_REPOSITORY}:")))
        }))
    })
    .await
}

/// Whether `image` is present locally, and whether it is a pgrotate-postgres
/// image (by its label).
pub(crate) async fn inspect_image(image: &str) -> Result<Option<bool>, FixtureError> {
    let image = image.to_owned();
    run(async move {
        match client().await?.inspect_image(&image).await {
            Ok(found) => Ok(Some(
                found
                    .config
                    .and_then(|config| config.labels)
                    .is_some_and(|labels| {
                        labels.get(LABEL_IMAGE).map(String::as_str) == Some("postgres")
                    }),
            )),
            Err(testcontainers::bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }) => Ok(None),
            Err(e) => Err(FixtureError::docker(format!("inspecting image {image}"), e)),
        }
    })
    .await
}

/// This test process's session: its id, and the reaper started with the
/// first container.
pub(crate) struct Session {
    id: String,
    /// The host directory holding the session's cluster directories
    /// (certificates, logs, sockets); the reaper removes it.
    dir: std::path::PathBuf,
    counter: std::sync::atomic::AtomicU64,
    /// The reaper's standard input: closes when the process exits. Never
    /// written to.
    _reaper: Mutex<Option<(Child, ChildStdin)>>,
}

impl Session {
    /// The directory to create the session's cluster directories in.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A fresh name `pgrotate-<session>-<n>` for a cluster's network (and,
    /// with a suffix, its containers).
    pub(crate) fn next_name(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{NAME_PREFIX}-{}-{n}", self.id)
    }

    /// The labels every container of this session carries.
    pub(crate) fn labels(&self) -> [(String, String); 3] {
        [
            (LABEL_SESSION.to_owned(), self.id.clone()),
            (LABEL_PID.to_owned(), std::process::id().to_string()),
            (LABEL_HOST.to_owned(), hostname()),
        ]
    }
}

/// Starts the session on first use: removes what dead sessions on this host
/// left, and starts the reaper of this one.
pub(crate) async fn session() -> Result<&'static Session, FixtureError> {
    static SESSION: OnceLock<Session> = OnceLock::new();
    static STARTED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let session = SESSION.get_or_init(|| {
        let letters: String = std::iter::repeat_with(fastrand::lowercase)
            .take(6)
            .collect();
        let id = format!("{}-{letters}", std::process::id());
        Session {
            dir: session_dir(&id),
            id,
            counter: std::sync::atomic::AtomicU64::new(0),
            _reaper: Mutex::new(None),
        }
    });
    STARTED
        .get_or_try_init(|| async {
            run(remove_dead_sessions()).await?;
            std::fs::create_dir_all(&session.dir)
                .map_err(|e| FixtureError::io("creating the session directory", e))?;
            let reaper = spawn_reaper(&session.id, &session.dir);
            if reaper.is_none() {
                tracing::warn!(
                    target: TRACE_TARGET,
                    "no `docker` CLI to start a reaper with: containers of never-dropped \
                     clusters stay until a later test process removes them"
                );
            }
            *session._reaper.lock().unwrap_or_else(|e| e.into_inner()) = reaper;
            Ok::<(), FixtureError>(())
        })
        .await?;
    Ok(session)
}

/// The reaper: waits for end-of-file on its standard input (the test process
/// exited), then removes the session's containers (with their volumes),
/// networks and host directory. Its own process group: a terminal's Ctrl-C
/// stops the tests, not the cleanup.
const REAPER_SCRIPT: &str = r#"
session=$1
prefix=$2
dir=$3
cat >/dev/null
ids=$(docker ps -aq --filter "label=org.pgrotate.session=$session")
if [ -n "$ids" ]; then docker rm -f -v $ids >/dev/null 2>&1; fi
nets=$(docker network ls -q --filter "name=$prefix")
if [ -n "$nets" ]; then docker network rm $nets >/dev/null 2>&1; fi
rm -rf "$dir"
exit 0
"#;

/// `<temp dir>/pgrotate-testing-session-<session>`.
fn session_dir(session: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pgrotate-testing-session-{session}"))
}

fn spawn_reaper(session: &str, dir: &std::path::Path) -> Option<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let docker_cli = Command::new("docker")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !docker_cli {
        return None;
    }
    let mut child = Command::new("/bin/sh")
        .args(["-c", REAPER_SCRIPT, "pgrotate-testing-reaper", session])
        .arg(format!("{NAME_PREFIX}-{session}-"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// Removes the containers and networks of sessions whose process, on this
/// host, is gone.
async fn remove_dead_sessions() -> Result<(), FixtureError> {
    let docker = client().await?;
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![LABEL_SESSION.to_owned()],
        )])),
        ..Default::default()
    };
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| FixtureError::docker("listing pgrotate-testing containers", e))?;
    let host = hostname();
    let mut dead_sessions = Vec::new();
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let (Some(session), Some(pid), Some(owner_host)) = (
            labels.get(LABEL_SESSION),
            labels.get(LABEL_PID),
            labels.get(LABEL_HOST),
        ) else {
            continue;
        };
        if *owner_host != host || pid_alive(pid) {
            continue;
        }
        if let Some(id) = container.id {
            tracing::debug!(target: TRACE_TARGET, %session, %id, "removing a container a dead test process left");
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
        if !dead_sessions.contains(session) {
            dead_sessions.push(session.clone());
        }
    }
    for session in dead_sessions {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_owned(),
                vec![format!("{NAME_PREFIX}-{session}-")],
            )])),
        };
        let networks = docker
            .list_networks(Some(options))
            .await
            .unwrap_or_default();
        for network in networks {
            if let Some(id) = network.id {
                let _ = docker.remove_network(&id).await;
            }
        }
        let _ = std::fs::remove_dir_all(session_dir(&session));
    }
    Ok(())
}

/// Whether process `pid` of this host runs; without `/proc`, every process
/// counts as running (nothing is removed).
fn pid_alive(pid: &str) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    pid.parse::<u32>()
        .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}
