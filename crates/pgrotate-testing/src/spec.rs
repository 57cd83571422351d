//! What a server container starts with: shared by the container backend
//! and its stand-in without the `containers` feature, which takes the same
//! [`Spec`] (and never starts it).

use std::path::PathBuf;

use crate::backend::ImageChoice;

/// The data directory inside the container.
pub(crate) const DATA_DIR: &str = "/var/lib/postgresql/data";

/// What a container starts with.
#[cfg_attr(not(feature = "containers"), allow(dead_code))]
pub(crate) struct Spec {
    /// The image.
    pub(crate) image: ImageChoice,
    /// The container's name: its host name on the network.
    pub(crate) name: String,
    /// The private network it joins.
    pub(crate) network: String,
    /// Environment variables.
    pub(crate) env: Vec<(String, String)>,
    /// `postgres` arguments (`-c name=value` pairs).
    pub(crate) args: Vec<String>,
    /// Files copied in before it starts: (path, contents, mode).
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    /// Where the server's output is appended on the host.
    pub(crate) log_path: PathBuf,
    /// A host directory (mode 0777) mounted as the server's Unix socket
    /// directory, `/var/run/postgresql`.
    pub(crate) socket_dir: PathBuf,
}
