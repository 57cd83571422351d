//! Running the program: spawned without a shell, both pipes read (each
//! bounded) while it runs, killed at the timeout, and awaited by its exit,
//! not by the end of its output.

use std::ffi::OsString;
use std::path::Path;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::redact::redact_stderr;
use crate::source::{SourceError, SourceErrorKind};

/// How much of a failing command's stderr an error keeps, in characters.
const STDERR_EXCERPT: usize = 400;

/// How much of its stderr is kept (and redacted) to make the excerpt.
const STDERR_KEPT: usize = 8 * 1024;

/// The most stdout a URL may take.
pub(super) const STDOUT_MAX: usize = 64 * 1024;

/// How long the pipes are read after the program exited, for the last of
/// what it wrote: longer only if something it left running holds them.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// What a program that exited left: its status and what it wrote.
pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: Captured,
    pub(super) stderr: Captured,
}

/// Runs `program` with `args` until it exits (at most `timeout`, then it is
/// killed), reading both of its pipes.
pub(super) async fn run(
    program: &Path,
    args: &[OsString],
    timeout: Duration,
) -> Result<Finished, SourceError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            SourceError::new(SourceErrorKind::NotFound, format!("cannot start it: {e}"))
        })?;
    let mut stdout = Captured::new(STDOUT_MAX);
    let mut stderr = Captured::new(STDERR_KEPT);
    let status = {
        // Both pipes are read while the program runs, so it never blocks
        // on a full one; but the program's exit, not their end, is what
        // the fetch waits for: a background process it started may hold
        // them open long after.
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let mut reading =
            pin!(async { tokio::join!(stdout.read(out_pipe), stderr.read(err_pipe)) });
        let mut read_all = false;
        let waited = tokio::time::timeout(timeout, async {
            let mut exit = pin!(child.wait());
            loop {
                tokio::select! {
                    status = exit.as_mut() => break status,
                    _ = reading.as_mut(), if !read_all => read_all = true,
                }
            }
        })
        .await;
        let status = match waited {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(SourceError::new(
                    SourceErrorKind::Unavailable,
                    format!("waiting for it: {e}"),
                ));
            }
            Err(_) => {
                // Dropping the child kills it too (kill_on_drop).
                let _ = child.start_kill();
                return Err(SourceError::new(
                    SourceErrorKind::Unavailable,
                    format!(
                        "it did not finish within {} and was killed",
                        crate::time::fmt_duration(timeout)
                    ),
                ));
            }
        };
        if !read_all {
            let _ = tokio::time::timeout(EXIT_GRACE, reading.as_mut()).await;
        }
        status
    };
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// What a program wrote to one pipe, up to a limit; the rest is read and
/// dropped, so the program never blocks on a full pipe.
pub(super) struct Captured {
    pub(super) bytes: Vec<u8>,
    limit: usize,
    pub(super) truncated: bool,
}

impl Captured {
    fn new(limit: usize) -> Captured {
        Captured {
            bytes: Vec::new(),
            limit,
            truncated: false,
        }
    }

    /// Reads `pipe` to its end (or a read error). Cancel-safe: what was
    /// read is kept when the future is dropped.
    async fn read(&mut self, pipe: Option<impl AsyncRead + Unpin>) {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            let room = self.limit - self.bytes.len();
            self.bytes.extend_from_slice(&chunk[..n.min(room)]);
            self.truncated |= n > room;
        }
    }

    /// The start of the text, every secret hidden ([`redact_stderr`]).
    pub(super) fn excerpt(&self) -> String {
        let mut kept = &self.bytes[..];
        if self.truncated {
            // Cut at white space, so no secret is cut in two: a token's
            // tail that no rule recognizes.
            let cut = kept.iter().rposition(u8::is_ascii_whitespace).unwrap_or(0);
            kept = &kept[..cut];
        }
        let text = String::from_utf8_lossy(kept);
        let excerpt: String = redact_stderr(text.trim())
            .chars()
            .take(STDERR_EXCERPT)
            .collect();
        if excerpt.is_empty() {
            "(no stderr)".into()
        } else {
            excerpt
        }
    }
}
