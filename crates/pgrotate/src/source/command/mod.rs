//! [`Command`]: the URL printed by a program, e.g. `heroku config:get`.
//!
//! This file: the public [`Command`] and how its output becomes a URL;
//! running the program is in `run`, hiding the secrets of its stderr in
//! `redact`.

mod redact;
mod run;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{SourceError, SourceErrorKind, UrlSource};
use crate::url::DatabaseUrl;
use run::{Finished, STDOUT_MAX};

/// Runs a program (no shell) and reads the URL from its standard output,
/// trimmed.
///
/// The URL is what the program printed by the time it exited: a process it
/// left running in the background that keeps its output open does not
/// hold the fetch up (what the program wrote is read while it runs, and
/// for at most 100 ms after it exits). A non-zero exit, a timeout (the
/// program is killed), empty output, or more than 64 KiB of it is an
/// error. The program's stdout never appears in an error; the start of its
/// stderr does, with every secret in it hidden: URL passwords, the values
/// of sensitive headers (`Authorization`, `Cookie`, `X-Vault-Token`, …),
/// JSON keys, variables and options (`"password": …`, `PGPASSWORD=…`,
/// `--token …`), and long opaque tokens (`Bearer …`).
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
        let Finished {
            status,
            stdout,
            stderr,
        } = run::run(&self.program, &self.args, self.timeout).await?;
        if !status.success() {
            return Err(SourceError::new(
                SourceErrorKind::Unavailable,
                format!("it exited with {status}: {}", stderr.excerpt()),
            ));
        }
        if stdout.truncated {
            return Err(SourceError::new(
                SourceErrorKind::Malformed,
                format!(
                    "its output is longer than {} KiB, too long for a URL",
                    STDOUT_MAX / 1024
                ),
            ));
        }
        let stdout = String::from_utf8(stdout.bytes)
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
