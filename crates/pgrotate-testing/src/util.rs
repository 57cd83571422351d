//! Small helpers every module uses: the tracing target, free ports,
//! polling, and the files a server (or PgBouncer) is given.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{ErrorKind, FixtureError};
use crate::user::ServerUser;

/// The address every server and proxy listens on.
pub(crate) const HOST: &str = "127.0.0.1";
/// How long a server (or PgBouncer) may take to start answering.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for replication, promotion, terminations.
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Log target of this crate's tracing events.
pub(crate) const TRACE_TARGET: &str = "pgrotate_testing";

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
        Ok(_) => tail(&String::from_utf8_lossy(&text), 4000).to_owned(),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}
/// The last `max` bytes of `text` (on a char boundary).
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("hello world", 5), "world");
        assert_eq!(tail("short", 100), "short");
        assert_eq!(tail("aé", 1), "");
    }
}
