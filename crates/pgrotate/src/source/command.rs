//! [`Command`]: the URL printed by a program, e.g. `heroku config:get`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{SourceError, SourceErrorKind, UrlSource};
use crate::url::{DatabaseUrl, redact};

/// Runs a program (no shell) and reads the URL from its standard output,
/// trimmed. A non-zero exit, a timeout (the program is killed) or empty
/// output is an error; the program's stderr appears in the error with every
/// URL in it redacted, and its stdout never does.
///
/// ```
/// use std::time::Duration;
/// let source = pgrotate::source::Command::new("heroku", ["config:get", "DATABASE_URL", "-a", "my-app"])
///     .timeout(Duration::from_secs(20));
/// ```
#[derive(Clone)]
pub struct Command {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
}

/// How much of a failing command's stderr an error keeps.
const STDERR_EXCERPT: usize = 400;

impl Command {
    /// A source running `program` with `args`. Default timeout: 30 s.
    pub fn new<I, A>(program: impl Into<PathBuf>, args: I) -> Command
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(30),
        }
    }

    /// How long the program may run before it is killed (default 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Command {
        self.timeout = timeout;
        self
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &format_args!("[{} hidden]", self.args.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl UrlSource for Command {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                SourceError::new(SourceErrorKind::NotFound, format!("cannot start it: {e}"))
            })?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                SourceError::new(
                    SourceErrorKind::Unavailable,
                    format!(
                        "it did not finish within {} and was killed",
                        crate::error::fmt_duration(self.timeout)
                    ),
                )
            })?
            .map_err(|e| {
                SourceError::new(SourceErrorKind::Unavailable, format!("waiting for it: {e}"))
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let mut excerpt: String = redact(stderr.trim()).chars().take(STDERR_EXCERPT).collect();
            if excerpt.is_empty() {
                excerpt = "(no stderr)".into();
            }
            return Err(SourceError::new(
                SourceErrorKind::Unavailable,
                format!("it exited with {}: {excerpt}", output.status),
            ));
        }
        let stdout = String::from_utf8(output.stdout)
            .map_err(|_| SourceError::new(SourceErrorKind::Malformed, "its output is not UTF-8"))?;
        if stdout.trim().is_empty() {
            return Err(SourceError::new(
                SourceErrorKind::NotFound,
                "it printed nothing (is the variable set?)",
            ));
        }
        Ok(DatabaseUrl::parse(stdout)?)
    }

    /// The program and how many arguments it gets: arguments may carry a
    /// token (`-H "Authorization: Bearer …"`), so none is ever shown.
    fn describe(&self) -> String {
        format!(
            "command {} ({} argument{})",
            self.program.display(),
            self.args.len(),
            if self.args.len() == 1 { "" } else { "s" }
        )
    }

    /// A program may be costly to run: 5 runs banked, one more a second.
    fn budget(&self) -> super::Budget {
        super::Budget::new(5, Duration::from_secs(1))
    }
}
