//! [`PoolBuilder`]: every setting of a pool, each with a documented default.

mod check;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::generation::RefreshConfig;
use crate::maintenance::Maintenance;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::source::{Budget, DynSource};
use crate::target::Settings;
use crate::tls::Roots;
use crate::tls::{ChannelBinding, SslMode};

/// The largest `max_size`: far above any plan's connection limit (Heroku's
/// largest allow a few hundred), small enough that the pool's bookkeeping
/// for it is allocated without a second thought.
const MAX_POOL_SIZE: usize = 10_000;

/// Builds a [`Pool`]. Every setting has a default a Heroku user should not
/// have to change; each is documented on its method.
#[must_use]
pub struct PoolBuilder {
    pub(crate) source: Box<dyn DynSource>,
    pub(crate) max_size: usize,
    pub(crate) wait_timeout: Duration,
    pub(crate) create_timeout: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) ping_after_idle: Duration,
    pub(crate) settings: Settings,
    pub(crate) retry: RetryPolicy,
    pub(crate) refresh: RefreshConfig,
    pub(crate) root_cert_file: Option<PathBuf>,
    pub(crate) client_cert: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) maintenance: Maintenance,
    pub(crate) pooler_mode: Option<bool>,
    pub(crate) pooler_retry: Duration,
    pub(crate) pooler_query_timeout: Duration,
    pub(crate) after_connect: Option<crate::hook::Hook>,
    pub(crate) pipeline_depth: usize,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("source", &self.source.describe())
            .field("max_size", &self.max_size)
            .field("sslmode", &self.settings.sslmode)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    pub(crate) fn new(source: Box<dyn DynSource>) -> PoolBuilder {
        PoolBuilder {
            source,
            max_size: 10,
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(5),
            ping_after_idle: Duration::from_secs(1),
            settings: Settings::default(),
            retry: RetryPolicy::default(),
            refresh: RefreshConfig::default(),
            root_cert_file: None,
            client_cert: None,
            maintenance: Maintenance {
                watch: None,
                idle_timeout: None,
                min_idle: 0,
                max_lifetime: None,
            },
            pooler_mode: None,
            pooler_retry: Duration::from_secs(15),
            pooler_query_timeout: Duration::from_secs(30),
            after_connect: None,
            pipeline_depth: crate::pipeline::DEFAULT_DEPTH,
        }
    }

    /// The most connections the pool opens. Default 10: Heroku's smallest
    /// plans allow 20 connections in all, shared by every process. At most
    /// 10,000.
    pub fn max_size(mut self, n: usize) -> PoolBuilder {
        self.max_size = n;
        self
    }

    /// How long `get` waits for a connection, refetch and connect included.
    /// Default 30 s.
    ///
    /// A new connection is opened inside the checkout of the caller that
    /// needs it: a caller that gives up first (its own timeout, a dropped
    /// request) abandons that connect. Keep callers' own timeouts longer
    /// than a connect (over the internet: TCP, TLS and SCRAM, 3–4 round
    /// trips): callers that all give up sooner keep the pool from growing.
    pub fn wait_timeout(mut self, d: Duration) -> PoolBuilder {
        self.wait_timeout = d;
        self
    }

    /// How long opening one connection may take, refetches of the URL and
    /// their backoff included. Default 30 s.
    pub fn create_timeout(mut self, d: Duration) -> PoolBuilder {
        self.create_timeout = d;
        self
    }

    /// How long one connect to one host may take: TCP, TLS and
    /// authentication. Default 10 s. A URL's own `connect_timeout` counts
    /// when it is smaller. With several hosts in the URL
    /// (`host1:p1,host2:p2`) each host gets this long, so a host that drops
    /// SYNs leaves time for the next one; a whole connect is also bounded by
    /// the caller's deadline.
    pub fn connect_timeout(mut self, d: Duration) -> PoolBuilder {
        self.settings.connect_timeout = d;
        self
    }

    /// How long the check of an idle connection may take (never longer
    /// than what is left of the caller's wait). One that does not answer
    /// is closed, and so are the other idle connections of its generation,
    /// without a check of their own: behind a blackholed network a
    /// checkout costs one ping timeout, not one per idle connection.
    /// Default 5 s.
    pub fn ping_timeout(mut self, d: Duration) -> PoolBuilder {
        self.ping_timeout = d;
        self
    }

    /// An idle connection unused for longer than this is checked with an
    /// empty query before it is handed out. Default 1 s.
    pub fn ping_after_idle(mut self, d: Duration) -> PoolBuilder {
        self.ping_after_idle = d;
        self
    }

    /// The minimum TLS requirement. Default [`SslMode::Require`] (what
    /// Heroku documents). A URL's `sslmode` may raise it; it lowers it only
    /// with [`PoolBuilder::allow_weaker_sslmode_from_url`]. Plaintext
    /// happens only when asked for by name here: `SslMode::Disable` or
    /// `SslMode::Prefer`.
    pub fn sslmode(mut self, mode: SslMode) -> PoolBuilder {
        self.settings.sslmode = mode;
        self
    }

    /// Lets a URL's `sslmode` be weaker than [`PoolBuilder::sslmode`].
    /// Default false: a URL can only make TLS stricter.
    pub fn allow_weaker_sslmode_from_url(mut self, allow: bool) -> PoolBuilder {
        self.settings.allow_weaker_sslmode = allow;
        self
    }

    /// Trusted roots (PEM) for `verify-ca` / `verify-full`, used unless the
    /// URL names its own `sslrootcert`. Default: Mozilla's roots
    /// (`webpki-roots`), which verify Heroku's Enhanced Certificates. As in
    /// libpq, naming roots turns `require` into `verify-ca`: roots given are
    /// roots to check.
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> PoolBuilder {
        self.settings.roots = Roots::Pem(Arc::new(pem.into()));
        self
    }

    /// Trusts the platform's certificate store (e.g. `/etc/ssl/certs`) for
    /// `verify-ca` / `verify-full` instead of Mozilla's roots compiled in,
    /// unless the URL names its own `sslrootcert`. Feature `native-roots`.
    #[cfg(feature = "native-roots")]
    pub fn native_root_certificates(mut self) -> PoolBuilder {
        self.settings.roots = Roots::Native;
        self
    }

    /// Like [`PoolBuilder::root_certificates_pem`], from a file read at
    /// `build()`.
    pub fn root_certificates_file(mut self, path: impl Into<PathBuf>) -> PoolBuilder {
        self.root_cert_file = Some(path.into());
        self
    }

    /// A client certificate chain and private key (PEM) for servers that
    /// demand one. Kept across refreshes; a URL's `sslcert`/`sslkey` take
    /// precedence.
    pub fn client_certificate_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        private_key: impl Into<Vec<u8>>,
    ) -> PoolBuilder {
        self.client_cert = Some((cert_chain.into(), private_key.into()));
        self
    }

    /// The minimum channel binding (SCRAM-SHA-256-PLUS over TLS); a URL's
    /// `channel_binding` may raise it, never lower it. Default: `prefer`.
    /// Never `require` through PgBouncer, which does not offer it.
    pub fn channel_binding(mut self, cb: ChannelBinding) -> PoolBuilder {
        self.settings.channel_binding = Some(cb);
        self
    }

    /// `application_name` sent to the server (shows in `pg_stat_activity`).
    /// Default: none, or the URL's.
    pub fn application_name(mut self, name: impl Into<String>) -> PoolBuilder {
        self.settings.application_name = Some(name.into());
        self
    }

    /// TCP keepalive idle time; `None` turns keepalives off. Default 30 s.
    pub fn keepalives_idle(mut self, idle: Option<Duration>) -> PoolBuilder {
        self.settings.keepalives_idle = idle;
        self
    }

    /// How `run` retries. Default: [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> PoolBuilder {
        self.retry = policy;
        self
    }

    /// How often the source may be fetched: a token bucket
    /// ([`Budget`]). Default: the source's own
    /// ([`crate::source::UrlSource::budget`]: [`Budget::heroku`] for the
    /// Heroku sources, [`Budget::local`] for files and variables).
    pub fn refetch_budget(mut self, budget: Budget) -> PoolBuilder {
        self.refresh.budget = Some(budget);
        self
    }

    /// The longest gap between failure-driven fetches while they keep
    /// bringing nothing new (the source still returns the URL that failed,
    /// or fails itself): they back off from 500 ms, doubling up to this.
    /// Default 5 s. Rejected credentials are retried this way until the
    /// caller's deadline (the create timeout for `get`, the retry deadline
    /// for `run` and `transaction`), then fail with
    /// [`ErrorKind::CredentialsRejected`](crate::ErrorKind::CredentialsRejected) saying when the source may be
    /// asked again.
    pub fn refetch_backoff_cap(mut self, d: Duration) -> PoolBuilder {
        self.refresh.backoff_cap = d;
        self
    }

    /// How long one fetch from the source may take before it counts as
    /// failed (`Unavailable`), the watch's included: a source that never
    /// answers (an HTTP call over a partitioned link, a user's source
    /// without a timeout) cannot hold the pool. Callers wait for a fetch no
    /// longer than their own deadline either way. Default 30 s.
    pub fn fetch_timeout(mut self, d: Duration) -> PoolBuilder {
        self.refresh.fetch_timeout = d;
        self
    }

    /// Polls the source every `interval` (give or take a tenth, at random)
    /// for a URL that changed without any error — after `heroku
    /// pg:promote` the old database keeps answering, so nothing else would
    /// tell the pool to move. A changed URL becomes a new generation after a
    /// test connection with it succeeds; one that cannot connect while the
    /// current one works is reported (tracing, `Status::last_refresh_error`)
    /// and not adopted.
    ///
    /// The watch spends only the budget's tokens above its reserve, and
    /// polls no more often than every two refills (for [`Budget::heroku`],
    /// 160 s, plus up to a fifth at random), so it uses under half of what
    /// the budget gains and never
    /// leaves a failure waiting. The first poll comes at a random point of
    /// the first interval, so a fleet started together polls spread out.
    /// Default: no watch.
    pub fn watch(mut self, interval: Duration) -> PoolBuilder {
        self.maintenance.watch = Some(interval);
        self.refresh.watch = Some(interval);
        self
    }

    /// Closes a connection once it is this old (less up to a fifth, at
    /// random per connection, so a fleet does not reconnect in one wave):
    /// idle ones by the background task, checked-out ones when they come
    /// back. Default: none.
    pub fn max_lifetime(mut self, lifetime: Duration) -> PoolBuilder {
        self.maintenance.max_lifetime = Some(lifetime);
        self
    }

    /// Closes connections idle for longer than this, keeping
    /// [`PoolBuilder::min_idle`] of them. Default: none.
    pub fn idle_timeout(mut self, timeout: Duration) -> PoolBuilder {
        self.maintenance.idle_timeout = Some(timeout);
        self
    }

    /// How many idle connections `idle_timeout` leaves open. Default 0.
    pub fn min_idle(mut self, n: usize) -> PoolBuilder {
        self.maintenance.min_idle = n;
        self
    }

    /// Whether the URL is a transaction-mode connection pooler's (PgBouncer,
    /// Heroku's `DATABASE_CONNECTION_POOL_URL`). Default: what the source
    /// says ([`crate::source::UrlSource::is_pooler_url`]: on when the
    /// variable read ends in `_CONNECTION_POOL_URL`); never guessed from a
    /// port.
    ///
    /// In pooler mode each new connection is checked with a round trip
    /// before it is handed out (through PgBouncer a connect succeeds even
    /// while its logins to the server fail), every `run` and `transaction`
    /// attempt is bounded by [`PoolBuilder::pooler_query_timeout`], and
    /// `channel_binding=require` is refused (PgBouncer never offers
    /// SCRAM-SHA-256-PLUS). See [`crate::Pool::get`] for which client calls
    /// work through a transaction-mode pooler.
    pub fn pooler_mode(mut self, on: bool) -> PoolBuilder {
        self.pooler_mode = Some(on);
        self
    }

    /// The shortest wait before retrying when the pooler says it cannot get
    /// a server connection ("server login has been failing",
    /// `query_wait_timeout`, or the server's "too many connections" passed
    /// on). Default 15 s, PgBouncer's default `server_login_retry`.
    pub fn pooler_retry_delay(mut self, d: Duration) -> PoolBuilder {
        self.pooler_retry = d;
        self
    }

    /// In pooler mode, the bound on each `run` / `transaction` attempt when
    /// the retry policy sets no `attempt_timeout`: PgBouncer can hold a
    /// query for minutes waiting for a server connection. An attempt past
    /// it is abandoned (its connection closed) and counted as a lost
    /// connection. Default 30 s.
    pub fn pooler_query_timeout(mut self, d: Duration) -> PoolBuilder {
        self.pooler_query_timeout = d;
        self
    }

    /// How many pool-level statements ([`Pool::query`](crate::Pool::query),
    /// [`Pool::execute`](crate::Pool::execute), …) may be in flight at once
    /// on one connection once every connection is busy. Default 128. `1`
    /// gives each statement a connection of its own, as `run` does. Ignored
    /// in pooler mode (each statement gets a connection of its own there).
    /// At most 1024.
    ///
    /// While the pool has an idle connection or room for one, a statement
    /// gets a connection to itself; only once all `max_size` are busy do
    /// statements share them, each going to the connection with the fewest
    /// in flight. Statements sharing a connection are answered in order: a
    /// slow one delays those sent after it on that connection (never those
    /// on others). A statement whose caller gave up after it was sent
    /// still counts until its answer comes (the server runs it anyway), so
    /// the depth bounds the work queued on a connection. See the crate
    /// README for measurements.
    pub fn pipeline_depth(mut self, depth: usize) -> PoolBuilder {
        self.pipeline_depth = depth;
        self
    }

    /// Runs `hook` on every new connection before it is handed out — every
    /// connection of every generation, so settings survive a rotation (like
    /// deadpool's `post_create` hook). A hook that fails with the server's
    /// answer (an unknown setting, a syntax error) fails that checkout with
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) and the server's words; a connection lost
    /// during the hook is retried like a failed connect. Through PgBouncer
    /// in transaction mode session settings do not stick: use `SET LOCAL`
    /// inside transactions instead.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgrotate::Error> {
    /// use pgrotate::{Pool, source};
    /// let pool = Pool::builder(source::Env::new("DATABASE_URL"))
    ///     .after_connect(|c| {
    ///         Box::pin(async move {
    ///             c.batch_execute("SET statement_timeout = '5s'; SET search_path = app, public")
    ///                 .await
    ///         })
    ///     })
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn after_connect<F>(mut self, hook: F) -> PoolBuilder
    where
        F: for<'a> Fn(&'a deadpool_postgres::ClientWrapper) -> crate::hook::HookFuture<'a>
            + Send
            + Sync
            + 'static,
    {
        self.after_connect = Some(std::sync::Arc::new(hook));
        self
    }

    /// Checks the settings, fetches the URL once (a broken source fails
    /// here, with the source and the problem named) and builds the pool. No
    /// connection is opened yet.
    pub async fn build(self) -> Result<Pool, Error> {
        Pool::from_builder(self.checked()?).await
    }
}
