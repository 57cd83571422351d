//! The container backend when pgrotate-testing is built without its
//! `containers` feature: the same names, no testcontainers. No engine
//! answers, no image is found, so the backend is chosen as local
//! processes; asking for containers by name fails with an error that says
//! how to get them.

use crate::error::{ErrorKind, FixtureError};

fn off() -> FixtureError {
    FixtureError::new(
        ErrorKind::Docker,
        "the container backend needs pgrotate-testing's `containers` feature (or run with \
         PGROTATE_TEST_BACKEND=process)",
    )
}

pub(crate) mod docker {
    use super::off;
    use crate::error::FixtureError;

    /// The repository scripts/build-image.sh tags its images with.
    pub(crate) const IMAGE_REPOSITORY: &str = "pgrotate-postgres";

    pub(crate) async fn engine_answers() -> bool {
        false
    }

    pub(crate) async fn newest_local_image() -> Result<Option<String>, FixtureError> {
        Ok(None)
    }

    pub(crate) async fn inspect_image(_image: &str) -> Result<Option<bool>, FixtureError> {
        Err(off())
    }

    /// Never exists without the feature.
    pub(crate) enum Session {}

    impl Session {
        pub(crate) fn dir(&self) -> &std::path::Path {
            match *self {}
        }

        pub(crate) fn next_name(&self) -> String {
            match *self {}
        }
    }

    pub(crate) async fn session() -> Result<&'static Session, FixtureError> {
        Err(off())
    }
}

pub(crate) mod container {
    use std::net::IpAddr;

    use super::off;
    use crate::error::FixtureError;
    pub(crate) use crate::spec::{DATA_DIR, Spec};

    /// Never exists without the feature.
    pub(crate) enum ServerContainer {}

    impl ServerContainer {
        pub(crate) async fn start(_spec: Spec) -> Result<(ServerContainer, u16), FixtureError> {
            Err(off())
        }
        pub(crate) fn name(&self) -> &str {
            match *self {}
        }
        pub(crate) fn id(&self) -> &str {
            match *self {}
        }
        pub(crate) fn network(&self) -> &str {
            match *self {}
        }
        pub(crate) fn ip(&self) -> Option<IpAddr> {
            match *self {}
        }
        pub(crate) fn running(&self) -> bool {
            match *self {}
        }
        pub(crate) async fn stop(&mut self) -> Result<(), FixtureError> {
            match *self {}
        }
        pub(crate) async fn kill(&mut self) -> Result<(), FixtureError> {
            match *self {}
        }
        pub(crate) async fn start_again(&mut self) -> Result<(), FixtureError> {
            match *self {}
        }
        pub(crate) async fn disconnect(&self) -> Result<(), FixtureError> {
            match *self {}
        }
        pub(crate) async fn reconnect(&self) -> Result<(), FixtureError> {
            match *self {}
        }
    }

    impl std::fmt::Debug for ServerContainer {
        fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match *self {}
        }
    }
}
