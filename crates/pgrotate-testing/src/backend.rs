//! Which backend runs a [`Cluster`](crate::Cluster)'s server: local
//! processes or a Docker container, chosen by the environment.

use tokio::sync::OnceCell;

use crate::docker;
use crate::error::{ErrorKind, FixtureError};
use crate::util::TRACE_TARGET;

/// Environment variable choosing the backend: `process`, `container`, or
/// `auto` (the same as unset).
pub const BACKEND_VAR: &str = "PGROTATE_TEST_BACKEND";
/// Environment variable naming the container backend's image, e.g.
/// `pgrotate-postgres:15-0123456789ab` or `postgres:16`.
pub const IMAGE_VAR: &str = "PGROTATE_TEST_IMAGE";

/// Where a [`Cluster`](crate::Cluster)'s PostgreSQL server runs.
///
/// Both backends offer the same operations with the same meaning; what
/// differs is listed on each [`Cluster`](crate::Cluster) method concerned.
/// Clusters that do not choose one ([`ClusterBuilder::backend`](crate::ClusterBuilder::backend))
/// get [`Backend::from_env`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `initdb` and `postgres` from the local PostgreSQL installation, run as
    /// processes in a temporary directory.
    Process,
    /// A Docker container through testcontainers, from the image
    /// [`PGROTATE_TEST_IMAGE`](IMAGE_VAR) or else the newest local
    /// `pgrotate-postgres:*` (built by `scripts/build-image.sh`).
    Container,
}

impl Backend {
    /// The backend for clusters that do not choose one, decided once per
    /// process:
    ///
    /// - `PGROTATE_TEST_BACKEND=process` or `=container` decides;
    /// - unset (or `auto`): [`Container`](Backend::Container) when a Docker
    ///   engine answers and there is an image — `PGROTATE_TEST_IMAGE` is set
    ///   or a `pgrotate-postgres:*` image exists locally —, else
    ///   [`Process`](Backend::Process).
    ///
    /// Fails on any other value of `PGROTATE_TEST_BACKEND`.
    pub async fn from_env() -> Result<Backend, FixtureError> {
        static CHOSEN: OnceCell<Backend> = OnceCell::const_new();
        CHOSEN
            .get_or_try_init(|| async {
                let chosen = choose(std::env::var(BACKEND_VAR).ok().as_deref()).await?;
                tracing::info!(target: TRACE_TARGET, backend = ?chosen, "pgrotate-testing backend");
                Ok(chosen)
            })
            .await
            .copied()
    }
}

async fn choose(setting: Option<&str>) -> Result<Backend, FixtureError> {
    match setting.map(str::trim) {
        Some("process") => Ok(Backend::Process),
        Some("container") => Ok(Backend::Container),
        None | Some("" | "auto") => {
            if !docker::engine_answers().await {
                return Ok(Backend::Process);
            }
            let image =
                configured_image().is_some() || docker::newest_local_image().await?.is_some();
            Ok(if image {
                Backend::Container
            } else {
                Backend::Process
            })
        }
        Some(other) => Err(FixtureError::new(
            ErrorKind::InvalidConfig,
            format!("{BACKEND_VAR}={other:?}: expected `process`, `container` or `auto`"),
        )),
    }
}

fn configured_image() -> Option<String> {
    std::env::var(IMAGE_VAR)
        .ok()
        .map(|image| image.trim().to_owned())
        .filter(|image| !image.is_empty())
}

/// The image of the container backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageChoice {
    /// Repository, e.g. `pgrotate-postgres` or `postgres`.
    pub(crate) name: String,
    /// Tag, e.g. `15-0123456789ab` or `16`.
    pub(crate) tag: String,
    /// Whether it is a pgrotate-postgres image (its entrypoint prints the
    /// ready line and starts standbys itself); otherwise the official
    /// `postgres` image's conventions are assumed.
    pub(crate) native: bool,
}

/// The image: `PGROTATE_TEST_IMAGE`, else the newest local
/// `pgrotate-postgres:*`; decided once per process.
pub(crate) async fn container_image() -> Result<ImageChoice, FixtureError> {
    static IMAGE: OnceCell<ImageChoice> = OnceCell::const_new();
    IMAGE
        .get_or_try_init(|| async {
            let reference = match configured_image() {
                Some(image) => image,
                None => docker::newest_local_image().await?.ok_or_else(|| {
                    FixtureError::new(
                        ErrorKind::Docker,
                        format!(
                            "no {}:* image here: build it with `bash scripts/build-image.sh` \
                             (from a pgrotate checkout) or set {IMAGE_VAR}, e.g. to postgres:16",
                            docker::IMAGE_REPOSITORY
                        ),
                    )
                })?,
            };
            let (name, tag) = split_reference(&reference);
            let native = match docker::inspect_image(&reference).await? {
                Some(native) => native,
                // testcontainers pulls a missing image, where a registry is reachable.
                None if name.ends_with(docker::IMAGE_REPOSITORY) => {
                    return Err(FixtureError::new(
                        ErrorKind::Docker,
                        format!(
                            "image {reference} is not here: build it with \
                             `bash scripts/build-image.sh`"
                        ),
                    ));
                }
                None => false,
            };
            tracing::info!(target: TRACE_TARGET, image = %reference, native, "container backend image");
            Ok(ImageChoice { name, tag, native })
        })
        .await
        .cloned()
}

/// `name[:tag]` → (name, tag), the tag `latest` when absent; a `:` inside a
/// registry's host:port is not a tag.
fn split_reference(reference: &str) -> (String, String) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (reference.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        let split = |r| split_reference(r);
        assert_eq!(split("postgres:16"), ("postgres".into(), "16".into()));
        assert_eq!(
            split("pgrotate-postgres:15-0123456789ab"),
            ("pgrotate-postgres".into(), "15-0123456789ab".into())
        );
        assert_eq!(split("postgres"), ("postgres".into(), "latest".into()));
        assert_eq!(
            split("registry:5000/team/postgres"),
            ("registry:5000/team/postgres".into(), "latest".into())
        );
        assert_eq!(
            split("registry:5000/postgres:16"),
            ("registry:5000/postgres".into(), "16".into())
        );
    }

    #[tokio::test]
    async fn explicit_settings_decide_and_others_are_refused() {
        assert_eq!(choose(Some("process")).await.unwrap(), Backend::Process);
        assert_eq!(choose(Some("container")).await.unwrap(), Backend::Container);
        let err = choose(Some("podman")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("PGROTATE_TEST_BACKEND"), "{err}");
    }
}
