//! [`HerokuCli`]: the URL printed by `heroku config:get VAR -a APP`.

use std::path::PathBuf;
use std::time::Duration;

use super::{Command, SourceError, UrlSource};
use crate::url::DatabaseUrl;

/// The shortest time between two requests one process makes to the Heroku
/// Platform API by default: 80 s.
///
/// The account's budget is a token bucket of 4,500 requests, refilled at
/// about 75 a minute (4,500 an hour), shared by every process and tool that
/// uses a token of the account. A fleet of 100 processes that all refetch as
/// fast as they are allowed stays within it when each makes at most
/// 4,500 / 100 = 45 requests an hour, one every 3,600 s / 45 = 80 s.
pub(crate) const HEROKU_MIN_INTERVAL: Duration = Duration::from_secs(80);

/// Runs the Heroku CLI, `heroku config:get VAR -a APP` (no shell), and reads
/// the URL it prints, through [`Command`].
///
/// The CLI authenticates with `HEROKU_API_KEY` when set, else with the token
/// `heroku login` stored; it never appears here. Each run costs one request
/// of the account's Platform API budget, so the same minimum interval
/// between fetches applies as for
#[cfg_attr(feature = "heroku", doc = "[`HerokuApi`](super::HerokuApi)")]
#[cfg_attr(not(feature = "heroku"), doc = "`HerokuApi`")]
/// (80 s by default; see the crate docs for the arithmetic). An unset var
/// (the CLI prints an empty line) is a `NotFound` error.
///
/// ```
/// use std::time::Duration;
/// let source = pgrotate::source::HerokuCli::new("my-app")
///     .var("HEROKU_POSTGRESQL_VIOLET_URL")
///     .binary("/usr/local/bin/heroku")
///     .timeout(Duration::from_secs(20));
/// ```
#[derive(Debug, Clone)]
pub struct HerokuCli {
    app: String,
    var: String,
    binary: PathBuf,
    timeout: Duration,
    min_interval: Duration,
}

impl HerokuCli {
    /// A source reading `DATABASE_URL` of `app` with the `heroku` found on
    /// `PATH`. Default timeout 30 s (the CLI may check for updates first),
    /// default minimum interval 80 s.
    pub fn new(app: impl Into<String>) -> HerokuCli {
        HerokuCli {
            app: app.into(),
            var: "DATABASE_URL".into(),
            binary: PathBuf::from("heroku"),
            timeout: Duration::from_secs(30),
            min_interval: HEROKU_MIN_INTERVAL,
        }
    }

    /// The config var to read (default `DATABASE_URL`), e.g.
    /// `HEROKU_POSTGRESQL_VIOLET_URL` or `DATABASE_CONNECTION_POOL_URL`.
    #[must_use]
    pub fn var(mut self, var: impl Into<String>) -> HerokuCli {
        self.var = var.into();
        self
    }

    /// The CLI to run (default `heroku`, looked up on `PATH`).
    #[must_use]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> HerokuCli {
        self.binary = path.into();
        self
    }

    /// How long the CLI may run before it is killed (default 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> HerokuCli {
        self.timeout = timeout;
        self
    }

    /// The shortest time between two runs (default 80 s, which keeps 100
    /// processes sharing one account within its 4,500 requests an hour).
    #[must_use]
    pub fn min_interval(mut self, d: Duration) -> HerokuCli {
        self.min_interval = d;
        self
    }

    fn command(&self) -> Command {
        Command::new(
            &self.binary,
            ["config:get", self.var.as_str(), "-a", self.app.as_str()],
        )
        .timeout(self.timeout)
    }
}

impl UrlSource for HerokuCli {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        self.command().fetch().await
    }

    fn describe(&self) -> String {
        format!(
            "Heroku CLI `{} config:get {} -a {}`",
            self.binary.display(),
            self.var,
            self.app
        )
    }

    fn is_pooler_url(&self) -> bool {
        super::names_pooler_url(&self.var)
    }

    fn min_interval(&self) -> Duration {
        self.min_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_command_and_keeps_the_fleet_interval() {
        let cli = HerokuCli::new("my-app").var("HEROKU_POSTGRESQL_VIOLET_URL");
        assert_eq!(
            cli.describe(),
            "Heroku CLI `heroku config:get HEROKU_POSTGRESQL_VIOLET_URL -a my-app`"
        );
        assert_eq!(UrlSource::min_interval(&cli), Duration::from_secs(80));
        assert_eq!(
            UrlSource::min_interval(&cli.min_interval(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }
}
