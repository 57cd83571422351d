//! The public [`Pool`], its [`PoolBuilder`] and the pooled [`Client`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{self, Object, PoolError, TimeoutType, Timeouts};

use crate::classify::{Fault, classify};
use crate::error::{Error, ErrorKind, fmt_duration};
use crate::manager::Manager;
use crate::refresh::{RefreshPolicy, Refresher};
use crate::retry::{Backoff, RetryPolicy};
use crate::settings::{ChannelBinding, Settings, SslMode};
use crate::source::{DynSource, UrlSource};
use crate::stats::{Counters, Status};
use crate::tls::{ClientIdentity, Roots};

const RETRY_TARGET: &str = "pgrotate::retry";

/// A PostgreSQL connection pool that follows its database URL.
///
/// Cheap to clone: clones share one pool. See the crate docs for the
/// rotation story.
///
/// ```no_run
/// use pgrotate::{Pool, source};
/// # async fn demo() -> Result<(), pgrotate::Error> {
/// let pool = Pool::builder(source::Env::new("DATABASE_URL")).max_size(16).build().await?;
/// let n: i64 = pool
///     .run(async |c| c.query_one("select 1::int8", &[]).await?.try_get(0))
///     .await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    pool: managed::Pool<Manager>,
    refresher: Arc<Refresher>,
    counters: Arc<Counters>,
    retry: RetryPolicy,
    retry_backoff: Backoff,
    timeouts: Timeouts,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("source", &self.inner.refresher.source_name())
            .field("status", &self.status())
            .finish()
    }
}

impl Pool {
    /// Starts building a pool whose URL comes from `source`.
    pub fn builder(source: impl UrlSource) -> PoolBuilder {
        PoolBuilder::new(Box::new(source))
    }

    /// A connection, waiting up to the wait timeout for one. While the pool
    /// refreshes its URL (after a rotation) the wait includes the refetch
    /// and the new connect.
    ///
    /// The [`Client`] derefs to [`tokio_postgres::Client`] and goes back to
    /// the pool when dropped. Work on it is not retried: use [`Pool::run`]
    /// for that.
    pub async fn get(&self) -> Result<Client, Error> {
        self.get_with(&self.inner.timeouts).await
    }

    async fn get_with(&self, timeouts: &Timeouts) -> Result<Client, Error> {
        match self.inner.pool.timeout_get(timeouts).await {
            Ok(obj) => Ok(Client { obj }),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(TimeoutType::Wait)) => {
                Err(Error::timeout("waiting for a connection", timeouts.wait))
            }
            Err(PoolError::Timeout(TimeoutType::Create)) => Err(Error::timeout(
                "opening a connection (with refetches)",
                timeouts.create,
            )),
            Err(PoolError::Timeout(TimeoutType::Recycle)) => Err(Error::timeout(
                "checking an idle connection",
                timeouts.recycle,
            )),
            Err(PoolError::Closed) => Err(Error::new(ErrorKind::Closed, "")),
            Err(PoolError::NoRuntimeSpecified) => Err(Error::new(
                ErrorKind::Build,
                "no async runtime for the pool's timeouts",
            )),
            Err(PoolError::PostCreateHook(e)) => Err(Error::new(
                ErrorKind::Connect,
                format!("post-create hook: {e}"),
            )),
        }
    }

    /// Runs `work` on a pooled connection, and again on a fresh one when the
    /// connection fails under it (lost, ended by the server, credentials
    /// rotated), within the pool's [`RetryPolicy`].
    ///
    /// **`run` is for idempotent work**: reads, and writes that are safe to
    /// apply twice. A write whose connection dies after the server executed
    /// it may run again. The caller's own errors (a unique violation, a
    /// syntax error) are never retried: they come back at once with
    /// [`ErrorKind::Query`].
    ///
    /// ```no_run
    /// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
    /// let names: Vec<String> = pool
    ///     .run(async |c| {
    ///         let rows = c.query("select name from users where active", &[]).await?;
    ///         rows.iter().map(|r| r.try_get(0)).collect()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F>(&self, mut work: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let started = Instant::now();
        let deadline = started + self.inner.retry.max_duration();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut timeouts = self.inner.timeouts;
            let left = deadline.saturating_duration_since(Instant::now());
            timeouts.wait = Some(timeouts.wait.map_or(left, |w| w.min(left)));
            let err = match self.get_with(&timeouts).await {
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e.with_attempts(attempt)),
                Ok(client) => match work(&client).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        let fault = classify(&e);
                        if !fault.is_connection_level() {
                            return Err(Error::postgres(ErrorKind::Query, fault, e));
                        }
                        let generation = client.generation();
                        client.discard();
                        if fault.needs_refetch() {
                            // A failed refetch shows up in the next get().
                            let _ = self
                                .inner
                                .refresher
                                .refresh_after(generation, "read-only server")
                                .await;
                        }
                        Error::postgres(kind_after_work(fault), fault, e)
                    }
                },
            };
            let delay = self.inner.retry_backoff.jittered(attempt - 1);
            if attempt >= self.inner.retry.max_attempts() || Instant::now() + delay >= deadline {
                return Err(err.with_attempts(attempt));
            }
            self.inner
                .counters
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(target: RETRY_TARGET, attempt, delay = %fmt_duration(delay), error = %err, "retrying on a fresh connection");
            tokio::time::sleep(delay).await;
        }
    }

    /// A snapshot of the pool's state and counters.
    pub fn status(&self) -> Status {
        let s = self.inner.pool.status();
        let c = &self.inner.counters;
        Status {
            max_size: s.max_size,
            size: s.size,
            idle: s.available,
            waiting: s.waiting,
            generation: self.inner.refresher.current_id(),
            refreshes: Counters::get(&c.refreshes),
            fetches: Counters::get(&c.fetches),
            fetch_failures: Counters::get(&c.fetch_failures),
            connect_attempts: Counters::get(&c.connect_attempts),
            connections_opened: Counters::get(&c.connections_opened),
            stale_closed: Counters::get(&c.stale_closed),
            retries: Counters::get(&c.retries),
            last_refresh_error: self.inner.refresher.last_error(),
        }
    }

    /// Fetches the URL now (paced like every fetch) and adopts it if it
    /// changed; returns the current generation. For a user who knows the
    /// URL changed.
    pub async fn refresh_now(&self) -> Result<u64, Error> {
        Ok(self.inner.refresher.refresh_now().await?.id)
    }

    /// Closes the pool: waiting and future `get` calls fail with
    /// [`ErrorKind::Closed`]; idle connections are closed, checked-out ones
    /// when they come back.
    pub fn close(&self) {
        self.inner.pool.close();
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.pool.is_closed()
    }
}

fn kind_after_work(fault: Fault) -> ErrorKind {
    match fault {
        Fault::CredentialsRejected => ErrorKind::CredentialsRejected,
        Fault::ReadOnly | Fault::Query => ErrorKind::Query,
        Fault::DatabaseGone | Fault::TooManyConnections => ErrorKind::Connect,
        Fault::ServerGoingAway | Fault::ConnectionLost => ErrorKind::ConnectionLost,
    }
}

/// A pooled connection. Derefs to [`tokio_postgres::Client`]; returns to the
/// pool when dropped (and is closed then if the pool moved to a newer
/// generation meanwhile).
pub struct Client {
    obj: Object<Manager>,
}

impl Client {
    /// The generation of the URL this connection was opened with.
    pub fn generation(&self) -> u64 {
        self.obj.generation
    }

    /// Closes this connection instead of returning it to the pool.
    pub fn discard(self) {
        let mut conn = Object::take(self.obj);
        conn.broken = true;
    }
}

impl Deref for Client {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.obj.client
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.obj.client
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("generation", &self.generation())
            .field("closed", &self.obj.client.is_closed())
            .finish()
    }
}

/// Builds a [`Pool`]. Every setting has a default a Heroku user should not
/// have to change; each is documented on its method.
#[must_use]
pub struct PoolBuilder {
    source: Box<dyn DynSource>,
    max_size: usize,
    wait_timeout: Duration,
    create_timeout: Duration,
    recycle_timeout: Duration,
    ping_after_idle: Duration,
    settings: Settings,
    retry: RetryPolicy,
    refresh: RefreshPolicy,
    root_cert_file: Option<PathBuf>,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
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
    fn new(source: Box<dyn DynSource>) -> PoolBuilder {
        PoolBuilder {
            source,
            max_size: 10,
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(30),
            recycle_timeout: Duration::from_secs(5),
            ping_after_idle: Duration::from_secs(1),
            settings: Settings::default(),
            retry: RetryPolicy::default(),
            refresh: RefreshPolicy::default(),
            root_cert_file: None,
            client_cert: None,
        }
    }

    /// The most connections the pool opens. Default 10: Heroku's smallest
    /// plans allow 20 connections in all, shared by every process.
    pub fn max_size(mut self, n: usize) -> PoolBuilder {
        self.max_size = n;
        self
    }

    /// How long `get` waits for a connection, refetch and connect included.
    /// Default 30 s.
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

    /// How long one TCP+TLS+authentication connect may take. Default 10 s.
    pub fn connect_timeout(mut self, d: Duration) -> PoolBuilder {
        self.settings.connect_timeout = d;
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
    /// (`webpki-roots`), which verify Heroku's Enhanced Certificates.
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> PoolBuilder {
        self.settings.roots = Roots::Pem(Arc::new(pem.into()));
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

    /// Channel binding when the URL does not say. Default: tokio-postgres's
    /// (`prefer`).
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

    /// The shortest time between two fetches of the URL. Default: the
    /// source's own ([`UrlSource::min_interval`]); a larger value here wins.
    pub fn min_refetch_interval(mut self, d: Duration) -> PoolBuilder {
        self.refresh.min_interval = d;
        self
    }

    /// The longest gap between fetches while they keep bringing nothing new.
    /// Default 5 s.
    pub fn refetch_backoff_cap(mut self, d: Duration) -> PoolBuilder {
        self.refresh.backoff_cap = d;
        self
    }

    /// How many rejected connects (each after a refetch) before `get` gives
    /// up with [`ErrorKind::CredentialsRejected`]. Default 6.
    pub fn rejected_attempts(mut self, n: u32) -> PoolBuilder {
        self.refresh.rejected_attempts = n;
        self
    }

    /// Checks the settings, fetches the URL once (a broken source fails
    /// here, with the source and the problem named) and builds the pool. No
    /// connection is opened yet.
    pub async fn build(mut self) -> Result<Pool, Error> {
        let build_err = |msg: String| Error::new(ErrorKind::Build, msg);
        if self.max_size == 0 {
            return Err(build_err("max_size must be at least 1".into()));
        }
        let retry_backoff = self.retry.validate().map_err(build_err)?;
        if self.refresh.rejected_attempts == 0 {
            return Err(build_err("rejected_attempts must be at least 1".into()));
        }
        if let Some(path) = &self.root_cert_file {
            let pem = std::fs::read(path).map_err(|e| {
                build_err(format!("reading root certificates {}: {e}", path.display()))
            })?;
            self.settings.roots = Roots::Pem(Arc::new(pem));
        }
        if let Some((cert, key)) = &self.client_cert {
            let id = ClientIdentity::from_pem(cert, key).map_err(|e| build_err(e.to_string()))?;
            self.settings.client_identity = Some(id);
        }
        let counters = Arc::new(Counters::default());
        let refresher = Arc::new(
            Refresher::start(self.source, self.settings, self.refresh, counters.clone()).await?,
        );
        let manager = Manager {
            refresher: refresher.clone(),
            counters: counters.clone(),
            ping_after_idle: self.ping_after_idle,
        };
        let timeouts = Timeouts {
            wait: Some(self.wait_timeout),
            create: Some(self.create_timeout),
            recycle: Some(self.recycle_timeout),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(self.max_size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| build_err(e.to_string()))?;
        Ok(Pool {
            inner: Arc::new(Inner {
                pool,
                refresher,
                counters,
                retry: self.retry,
                retry_backoff,
                timeouts,
            }),
        })
    }
}
