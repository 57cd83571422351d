//! `pgrotate-check`: what an operator runs first. It fetches the database
//! URL through one pgrotate source, builds a pool of one connection with the
//! pool's own TLS rules, runs a few queries and prints one `key: value` line
//! per finding:
//!
//! ```text
//! source: file /run/secrets/database_url
//! host: db.example.com
//! port: 5432
//! database: app
//! user: app
//! server_version: 16.4
//! tls: on
//! tls_version: TLSv1.3
//! tls_cipher: TLS_AES_256_GCM_SHA384
//! in_hot_standby: off
//! connect_time: 41.2 ms
//! round_trip: 0.4 ms
//! ```
//!
//! Any failure prints the pool's own error (`{e:#}`) on stderr and exits
//! with 1; bad arguments exit with 2. Neither a password nor an API token is
//! ever printed: the URL's parts come from [`pgrotate::DatabaseUrl`]'s
//! accessors, the errors are the pool's (redacted), and argument errors name
//! options, never values.

mod args;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use args::{Args, Parsed, Source};
use pgrotate::source::{self, Budget, SourceError, UrlSource};
use pgrotate::{DatabaseUrl, Error, Pool, RetryPolicy};

/// The `select 1` round trips the median is taken of.
const ROUND_TRIPS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Check(args)) => args,
        Ok(Parsed::Help) => {
            println!("{}\n\n{}", args::USAGE, args::HELP);
            return ExitCode::SUCCESS;
        }
        Err(why) => return usage_error(&why),
    };
    let result = match args.source.clone() {
        Source::HerokuApi { app, var, api_url } => {
            let Some(token) = std::env::var("HEROKU_API_KEY")
                .ok()
                .filter(|t| !t.trim().is_empty())
            else {
                return usage_error("--heroku-app needs the API token in HEROKU_API_KEY");
            };
            let mut s = source::HerokuApi::new(app, token).timeout(args.timeout);
            if let Some(var) = var {
                s = s.var(var);
            }
            if let Some(url) = api_url {
                s = s.base_url(url);
            }
            check(s, &args).await
        }
        Source::HerokuCli { app, var } => {
            let mut s = source::HerokuCli::new(app).timeout(args.timeout);
            if let Some(var) = var {
                s = s.var(var);
            }
            check(s, &args).await
        }
        Source::File(path) => check(source::File::new(path), &args).await,
        Source::Env(var) => check(source::Env::new(var), &args).await,
        Source::Command { program, args: a } => {
            check(
                source::Command::new(program, a).timeout(args.timeout),
                &args,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgrotate-check: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(why: &str) -> ExitCode {
    eprintln!("pgrotate-check: {why}\n{}", args::USAGE);
    ExitCode::from(2)
}

/// Fetches, connects, queries and prints, one line at a time, so what was
/// found before a failure stays on stdout.
async fn check<S: UrlSource>(source: S, args: &Args) -> Result<(), Error> {
    let source = Recorded::new(source);
    let fetched = Arc::clone(&source.last);
    println!("source: {}", source.describe());

    let mut builder = Pool::builder(source)
        .max_size(1)
        .application_name("pgrotate-check")
        .wait_timeout(args.timeout)
        .create_timeout(args.timeout)
        .fetch_timeout(args.timeout)
        .retry(RetryPolicy::default().deadline(args.timeout));
    if let Some(mode) = args.sslmode {
        builder = builder.sslmode(mode);
    }
    if let Some(path) = &args.root_cert {
        builder = builder.root_certificates_file(path);
    }

    let started = Instant::now();
    let pool = builder.build().await?;
    // The URL the build fetched: its parts, never its password.
    if let Some(url) = fetched.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        println!("host: {}", url.host());
        println!("port: {}", url.port());
        println!("database: {}", url.database());
        println!("user: {}", url.user());
    }
    let version: String = pool
        .query_one("show server_version", &[])
        .await?
        .try_get(0)?;
    let connect_time = started.elapsed();
    println!("server_version: {version}");

    let row = pool
        .query_one(
            "select ssl, version, cipher from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?;
    let ssl: bool = row.try_get(0)?;
    let tls_version: Option<String> = row.try_get(1)?;
    let cipher: Option<String> = row.try_get(2)?;
    println!("tls: {}", on_off(ssl));
    println!("tls_version: {}", tls_version.as_deref().unwrap_or("none"));
    println!("tls_cipher: {}", cipher.as_deref().unwrap_or("none"));

    let standby: bool = pool
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .try_get(0)?;
    println!("in_hot_standby: {}", on_off(standby));
    println!("connect_time: {}", millis(connect_time));

    let mut trips = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        pool.query_one("select 1", &[]).await?;
        trips.push(t.elapsed());
    }
    trips.sort();
    println!("round_trip: {}", millis(trips[ROUND_TRIPS / 2]));
    pool.close();
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A source that keeps the last URL it fetched, so the check shows the
/// parts of the very URL the pool connects with (one fetch, not two: a
/// Heroku API request spends the account's budget).
struct Recorded<S> {
    inner: S,
    last: Arc<Mutex<Option<DatabaseUrl>>>,
}

impl<S> Recorded<S> {
    fn new(inner: S) -> Recorded<S> {
        Recorded {
            inner,
            last: Arc::default(),
        }
    }
}

impl<S: UrlSource> UrlSource for Recorded<S> {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let url = self.inner.fetch().await?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.clone());
        Ok(url)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn budget(&self) -> Budget {
        self.inner.budget()
    }

    fn may_change(&self) -> bool {
        self.inner.may_change()
    }

    fn is_pooler_url(&self) -> bool {
        self.inner.is_pooler_url()
    }
}
