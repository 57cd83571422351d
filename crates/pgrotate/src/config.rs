//! [`Config`]: every builder setting as plain data, deserialized from a file
//! or the environment (feature `serde`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::builder::PoolBuilder;
use crate::error::{Error, ErrorKind};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::source;
use crate::tls::SslMode;

/// A pool's settings as data (feature `serde`): from TOML, JSON, YAML, or the
/// environment through the [`config`](https://docs.rs/config) crate, as
/// deadpool-postgres users configure theirs. Every field is optional; an
/// absent one keeps the [`PoolBuilder`] default written next to it.
/// Durations are a number of seconds (`1.5`) or a string with a unit
/// (`"250ms"`, `"5s"`, `"2m"`, `"1h"`).
///
/// It never holds a secret, so its `Debug` prints none (deadpool-postgres's
/// `Config` prints its password): the URL comes from a [`SourceConfig`] —
/// a variable, a file, a command, the Heroku API with its token read from
/// a variable — never from the configuration itself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config: pgrotate::Config = serde_json::from_str(r#"{
///     "source": { "kind": "file", "path": "/run/secrets/database_url" },
///     "max_size": 16,
///     "wait_timeout": "5s",
///     "sslmode": "verify-full",
///     "retry": { "attempts": 3, "deadline": 10 }
/// }"#)?;
/// let builder = config.builder()?; // then .after_connect(…) and .build().await
/// # let _ = builder; Ok(()) }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where the URL lives. Default: the `DATABASE_URL` variable.
    pub source: Option<SourceConfig>,
    /// [`PoolBuilder::max_size`]; default 10.
    pub max_size: Option<usize>,
    /// [`PoolBuilder::wait_timeout`]; default 30 s.
    #[serde(deserialize_with = "duration::wait_timeout")]
    pub wait_timeout: Option<Duration>,
    /// [`PoolBuilder::create_timeout`]; default 30 s.
    #[serde(deserialize_with = "duration::create_timeout")]
    pub create_timeout: Option<Duration>,
    /// [`PoolBuilder::connect_timeout`]; default 10 s per host.
    #[serde(deserialize_with = "duration::connect_timeout")]
    pub connect_timeout: Option<Duration>,
    /// [`PoolBuilder::ping_timeout`]; default 5 s.
    #[serde(deserialize_with = "duration::ping_timeout")]
    pub ping_timeout: Option<Duration>,
    /// [`PoolBuilder::ping_after_idle`]; default 1 s.
    #[serde(deserialize_with = "duration::ping_after_idle")]
    pub ping_after_idle: Option<Duration>,
    /// [`PoolBuilder::fetch_timeout`]; default 30 s.
    #[serde(deserialize_with = "duration::fetch_timeout")]
    pub fetch_timeout: Option<Duration>,
    /// [`PoolBuilder::sslmode`] (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`); default `require`.
    pub sslmode: Option<String>,
    /// [`PoolBuilder::allow_weaker_sslmode_from_url`]; default false.
    pub allow_weaker_sslmode_from_url: Option<bool>,
    /// [`PoolBuilder::root_certificates_file`]; default Mozilla's roots.
    pub root_certificates_file: Option<PathBuf>,
    /// [`PoolBuilder::application_name`].
    pub application_name: Option<String>,
    /// [`PoolBuilder::watch`]; default off.
    #[serde(deserialize_with = "duration::watch")]
    pub watch: Option<Duration>,
    /// [`PoolBuilder::max_lifetime`]; default none.
    #[serde(deserialize_with = "duration::max_lifetime")]
    pub max_lifetime: Option<Duration>,
    /// [`PoolBuilder::idle_timeout`]; default none.
    #[serde(deserialize_with = "duration::idle_timeout")]
    pub idle_timeout: Option<Duration>,
    /// [`PoolBuilder::min_idle`]; default 0.
    pub min_idle: Option<usize>,
    /// [`PoolBuilder::pooler_mode`]; default: from the source's variable name.
    pub pooler_mode: Option<bool>,
    /// [`PoolBuilder::pooler_retry_delay`]; default 15 s.
    #[serde(deserialize_with = "duration::pooler_retry_delay")]
    pub pooler_retry_delay: Option<Duration>,
    /// [`PoolBuilder::pooler_query_timeout`]; default 30 s.
    #[serde(deserialize_with = "duration::pooler_query_timeout")]
    pub pooler_query_timeout: Option<Duration>,
    /// [`PoolBuilder::pipeline_depth`]; default 128.
    pub pipeline_depth: Option<usize>,
    /// [`PoolBuilder::retry`].
    pub retry: Option<RetryConfig>,
}

/// Where the URL lives, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SourceConfig {
    /// [`source::Env`]: `{ "kind": "env", "var": "DATABASE_URL" }`.
    Env {
        /// The variable.
        var: String,
    },
    /// [`source::File`]: `{ "kind": "file", "path": "/run/secrets/database_url" }`.
    File {
        /// The file.
        path: PathBuf,
    },
    /// [`source::Command`]: `{ "kind": "command", "program": "vault", "args": [...] }`.
    Command {
        /// The program (no shell).
        program: PathBuf,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
    /// [`source::HerokuApi`] (feature `heroku`): `{ "kind": "heroku_api",
    /// "app": "my-app" }`, the token read from the variable `token_var`
    /// (default `HEROKU_API_KEY`) when the pool is built.
    HerokuApi {
        /// The app's name or id.
        app: String,
        /// The config var; default `DATABASE_URL`.
        var: Option<String>,
        /// The variable holding the API token; default `HEROKU_API_KEY`.
        token_var: Option<String>,
        /// [`source::HerokuApi::fleet_size`]: processes sharing the token.
        fleet_size: Option<u32>,
    },
    /// [`source::HerokuCli`]: `{ "kind": "heroku_cli", "app": "my-app" }`.
    HerokuCli {
        /// The app's name or id.
        app: String,
        /// The config var; default `DATABASE_URL`.
        var: Option<String>,
        /// [`source::HerokuCli::fleet_size`].
        fleet_size: Option<u32>,
    },
}

/// [`RetryPolicy`] as data; an absent field keeps its default.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// [`RetryPolicy::attempts`]; default 5.
    pub attempts: Option<u32>,
    /// [`RetryPolicy::deadline`]; default 30 s.
    #[serde(deserialize_with = "duration::retry_deadline")]
    pub deadline: Option<Duration>,
    /// [`RetryPolicy::attempt_timeout`]; default none.
    #[serde(deserialize_with = "duration::retry_attempt_timeout")]
    pub attempt_timeout: Option<Duration>,
    /// The first backoff of [`RetryPolicy::backoff`]; default 20 ms.
    #[serde(deserialize_with = "duration::retry_backoff_base")]
    pub backoff_base: Option<Duration>,
    /// The backoff's cap; default 1 s.
    #[serde(deserialize_with = "duration::retry_backoff_cap")]
    pub backoff_cap: Option<Duration>,
    /// [`RetryPolicy::retry_serialization_failures`]; default false.
    pub retry_serialization_failures: Option<bool>,
}

impl RetryConfig {
    fn policy(&self) -> RetryPolicy {
        let default = RetryPolicy::default();
        let mut p = default;
        if let Some(n) = self.attempts {
            p = p.attempts(n);
        }
        if let Some(d) = self.deadline {
            p = p.deadline(d);
        }
        if self.attempt_timeout.is_some() {
            p = p.attempt_timeout(self.attempt_timeout);
        }
        if self.backoff_base.is_some() || self.backoff_cap.is_some() {
            let base = self.backoff_base.unwrap_or(Duration::from_millis(20));
            let cap = self.backoff_cap.unwrap_or(Duration::from_secs(1));
            p = p.backoff(base, cap);
        }
        if let Some(on) = self.retry_serialization_failures {
            p = p.retry_serialization_failures(on);
        }
        p
    }
}

fn config_error(key: &str, problem: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Build, format!("config key `{key}`: {problem}"))
}

impl SourceConfig {
    fn builder(&self) -> Result<PoolBuilder, Error> {
        Ok(match self {
            SourceConfig::Env { var } => Pool::builder(source::Env::new(var.clone())),
            SourceConfig::File { path } => Pool::builder(source::File::new(path)),
            SourceConfig::Command { program, args } => {
                Pool::builder(source::Command::new(program.clone(), args.clone()))
            }
            #[cfg(feature = "heroku")]
            SourceConfig::HerokuApi {
                app,
                var,
                token_var,
                fleet_size,
            } => {
                let name = token_var.as_deref().unwrap_or("HEROKU_API_KEY");
                let token = std::env::var(name)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| {
                        config_error(
                            "source.token_var",
                            format!("the variable {name} holding the Heroku API token is not set"),
                        )
                    })?;
                let mut api = source::HerokuApi::new(app.clone(), token);
                if let Some(var) = var {
                    api = api.var(var.clone());
                }
                if let Some(n) = fleet_size {
                    api = api.fleet_size(*n);
                }
                Pool::builder(api)
            }
            #[cfg(not(feature = "heroku"))]
            SourceConfig::HerokuApi { .. } => {
                return Err(config_error(
                    "source.kind",
                    "heroku_api needs pgrotate's `heroku` feature",
                ));
            }
            SourceConfig::HerokuCli {
                app,
                var,
                fleet_size,
            } => {
                let mut cli = source::HerokuCli::new(app.clone());
                if let Some(var) = var {
                    cli = cli.var(var.clone());
                }
                if let Some(n) = fleet_size {
                    cli = cli.fleet_size(*n);
                }
                Pool::builder(cli)
            }
        })
    }
}

impl Config {
    /// The builder these settings make, for what only code can set (an
    /// `after_connect` hook, root certificates in memory). Settings that
    /// cannot work are refused by [`PoolBuilder::build`], each named.
    pub fn builder(&self) -> Result<PoolBuilder, Error> {
        let default = SourceConfig::Env {
            var: "DATABASE_URL".into(),
        };
        let mut b = self.source.as_ref().unwrap_or(&default).builder()?;
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field.clone() {
                    b = b.$field(v);
                }
            )*};
        }
        set!(
            max_size,
            wait_timeout,
            create_timeout,
            connect_timeout,
            ping_timeout,
            ping_after_idle,
            fetch_timeout,
            allow_weaker_sslmode_from_url,
            application_name,
            watch,
            max_lifetime,
            idle_timeout,
            min_idle,
            pooler_mode,
            pooler_retry_delay,
            pooler_query_timeout,
            pipeline_depth
        );
        if let Some(mode) = &self.sslmode {
            let mode: SslMode = mode.parse().map_err(|e| config_error("sslmode", e))?;
            b = b.sslmode(mode);
        }
        if let Some(path) = &self.root_certificates_file {
            b = b.root_certificates_file(path);
        }
        if let Some(retry) = &self.retry {
            b = b.retry(retry.policy());
        }
        Ok(b)
    }

    /// Builds the pool: [`Config::builder`] then [`PoolBuilder::build`].
    pub async fn build(&self) -> Result<Pool, Error> {
        self.builder()?.build().await
    }

    /// [`Config::build`], under deadpool-postgres's name.
    pub async fn create_pool(&self) -> Result<Pool, Error> {
        self.build().await
    }
}

/// Durations in configuration: seconds as a number, or a string with a
/// unit.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }

    /// A duration under `key`, the key named in its error: serde does not
    /// tell a field's deserializer its name, so each key has its own.
    fn option<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Option<Duration>, D::Error> {
        let raw = Option::<Raw>::deserialize(d)?;
        raw.map(|r| match r {
            Raw::Seconds(s) => seconds(s),
            Raw::Text(t) => parse(&t),
        })
        .transpose()
        .map_err(|e| D::Error::custom(format!("config key `{key}`: {e}")))
    }

    macro_rules! keys {
        ($($f:ident => $key:literal),* $(,)?) => {$(
            pub(super) fn $f<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
                option(d, $key)
            }
        )*};
    }

    keys!(
        wait_timeout => "wait_timeout",
        create_timeout => "create_timeout",
        connect_timeout => "connect_timeout",
        ping_timeout => "ping_timeout",
        ping_after_idle => "ping_after_idle",
        fetch_timeout => "fetch_timeout",
        watch => "watch",
        max_lifetime => "max_lifetime",
        idle_timeout => "idle_timeout",
        pooler_retry_delay => "pooler_retry_delay",
        pooler_query_timeout => "pooler_query_timeout",
        retry_deadline => "retry.deadline",
        retry_attempt_timeout => "retry.attempt_timeout",
        retry_backoff_base => "retry.backoff_base",
        retry_backoff_cap => "retry.backoff_cap",
    );

    fn seconds(s: f64) -> Result<Duration, String> {
        Duration::try_from_secs_f64(s).map_err(|_| format!("{s} is not a duration in seconds"))
    }

    /// `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`, or a bare number of
    /// seconds.
    pub(super) fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: f64 = number.parse().map_err(|_| bad(text))?;
        let factor = match unit.trim() {
            "" | "s" | "sec" | "secs" | "seconds" => 1.0,
            "ms" => 0.001,
            "m" | "min" | "minutes" => 60.0,
            "h" | "hours" => 3600.0,
            _ => return Err(bad(text)),
        };
        seconds(n * factor).map_err(|_| bad(text))
    }

    fn bad(text: &str) -> String {
        format!(
            "{text:?} is not a duration: write seconds (1.5) or a number with a unit (\"250ms\", \"5s\", \"2m\", \"1h\")"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_numbers_or_with_units() {
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration::parse(" 3 ").unwrap(), Duration::from_secs(3));
        let e = duration::parse("5 parsecs").unwrap_err();
        assert!(e.contains("\"5 parsecs\" is not a duration"), "{e}");
        assert!(duration::parse("-1s").is_err());
    }

    #[test]
    fn every_kind_of_source_and_setting_deserializes() {
        let c: Config = serde_json::from_str(
            r#"{"source": {"kind": "command", "program": "vault", "args": ["read", "-field=url", "db"]},
                "max_size": 4, "wait_timeout": "250ms", "watch": 60, "pooler_mode": true, "pipeline_depth": 2,
                "retry": {"attempts": 2, "backoff_cap": "100ms"}}"#,
        )
        .unwrap();
        assert_eq!(c.max_size, Some(4));
        assert_eq!(c.pipeline_depth, Some(2));
        assert_eq!(c.wait_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.watch, Some(Duration::from_secs(60)));
        assert!(
            matches!(c.source, Some(SourceConfig::Command { ref args, .. }) if args.len() == 3)
        );
        assert!(c.builder().is_ok());
        for kind in [
            r#"{"kind": "env", "var": "DB"}"#,
            r#"{"kind": "file", "path": "/run/db"}"#,
            r#"{"kind": "heroku_cli", "app": "a", "var": "HEROKU_POSTGRESQL_RED_URL"}"#,
            r#"{"kind": "heroku_api", "app": "a", "token_var": "MY_TOKEN"}"#,
        ] {
            let c: Config = serde_json::from_str(&format!(r#"{{"source": {kind}}}"#)).unwrap();
            assert!(c.source.is_some(), "{kind}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_what_is_wrong() {
        let unknown_kind = serde_json::from_str::<Config>(r#"{"source": {"kind": "vault"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            unknown_kind.contains("unknown variant `vault`"),
            "{unknown_kind}"
        );
        let unknown_key = serde_json::from_str::<Config>(r#"{"max_sise": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(unknown_key.contains("max_sise"), "{unknown_key}");
        let bad_duration = serde_json::from_str::<Config>(r#"{"wait_timeout": "soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            bad_duration.contains("config key `wait_timeout`: \"soon\" is not a duration"),
            "{bad_duration}"
        );
        let in_retry = serde_json::from_str::<Config>(r#"{"retry": {"deadline": -3}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            in_retry.contains("config key `retry.deadline`"),
            "{in_retry}"
        );
        let c: Config = serde_json::from_str(r#"{"sslmode": "verify-most"}"#).unwrap();
        let e = c.builder().unwrap_err().to_string();
        assert!(e.contains("config key `sslmode`"), "{e}");
    }

    #[test]
    fn debug_holds_no_secret_because_the_config_holds_none() {
        let c: Config = serde_json::from_str(
            r#"{"source": {"kind": "heroku_api", "app": "my-app", "token_var": "MY_TOKEN"}}"#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("MY_TOKEN") && shown.contains("my-app"),
            "{shown}"
        );
    }
}
