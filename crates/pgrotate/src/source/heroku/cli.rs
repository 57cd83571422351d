//! [`HerokuCli`]: the URL printed by `heroku config:get VAR -a APP`.

use std::path::PathBuf;
use std::time::Duration;

use crate::source::{Budget, Command, SourceError, UrlSource};
use crate::url::DatabaseUrl;

/// Runs the Heroku CLI, `heroku config:get VAR -a APP` (no shell), and reads
/// the URL it prints, through [`Command`].
///
/// The CLI authenticates with `HEROKU_API_KEY` when set, else with the token
/// `heroku login` stored; it never appears here. Each run costs one request
/// of the account's Platform API budget, so the same [`Budget::heroku`]
/// applies as for the Platform API source (see [`Budget::heroku_fleet`]
/// for the arithmetic). An unset var (the CLI prints an empty line) is a
/// `NotFound` error.
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
    budget: Budget,
}

impl HerokuCli {
    /// A source reading `DATABASE_URL` of `app` with the `heroku` found on
    /// `PATH`. Default timeout 30 s (the CLI may check for updates first),
    /// default budget [`Budget::heroku`].
    pub fn new(app: impl Into<String>) -> HerokuCli {
        HerokuCli {
            app: app.into(),
            var: "DATABASE_URL".into(),
            binary: PathBuf::from("heroku"),
            timeout: Duration::from_secs(30),
            budget: Budget::heroku(),
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

    /// How many processes share the account's API budget (default 100):
    /// the budget becomes [`Budget::heroku_fleet`]`(processes)`.
    #[must_use]
    pub fn fleet_size(self, processes: u32) -> HerokuCli {
        self.budget(Budget::heroku_fleet(processes))
    }

    /// The budget the pool spends on this source (default
    /// [`Budget::heroku`]).
    #[must_use]
    pub fn budget(mut self, budget: Budget) -> HerokuCli {
        self.budget = budget;
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
        crate::source::names_pooler_url(&self.var)
    }

    fn budget(&self) -> Budget {
        self.budget
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
        assert_eq!(UrlSource::budget(&cli), Budget::heroku());
        assert_eq!(
            UrlSource::budget(&cli.fleet_size(10)).refill(),
            Duration::from_secs(8)
        );
    }
}
