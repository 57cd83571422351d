//! The public [`Pool`]: assembled from the builder; `get` (bounded in
//! time by [`checkout`]), `status`, `close`, `drain` (here), `run` and
//! `transaction` ([`work`]), the pool-level statements
//! (`crate::statements`).

pub(crate) mod checkout;
mod work;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, PoolError, TimeoutType, Timeouts};

use crate::builder::PoolBuilder;
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::generation::{Probe, Refresher};
use crate::manager::Manager;
use crate::retry::RetryPolicy;
use crate::source::UrlSource;
use crate::stats::{Counters, Status};
use crate::time::later;

/// A PostgreSQL connection pool that follows its database URL.
///
/// Cheap to clone: clones share one pool. See the crate docs for the
/// rotation story.
///
/// # Through a transaction-mode pooler (PgBouncer)
///
/// With Heroku's `DATABASE_CONNECTION_POOL_URL` (pooler mode, see
/// [`PoolBuilder::pooler_mode`]) consecutive statements may run on different
/// server connections, so only what needs no server-side state works:
///
/// - **Safe:** the pool-level statements ([`Pool::query`], [`Pool::execute`],
///   …: in pooler mode each statement's parameter types are learned once,
///   inside a transaction, and it then runs unnamed, in one round trip); the
///   unnamed-statement calls on a client — `query_typed`, `query_typed_one`,
///   `query_typed_opt`, `query_typed_raw`, `execute_typed`, `simple_query`,
///   `batch_execute`; transactions through [`Pool::transaction`], with
///   `SET LOCAL` for settings, and `prepare_cached` inside them (the
///   statement cache is emptied at every checkout).
/// - **Fails:** named prepared statements on a client outside a
///   transaction — `client.query(&str, ..)`, `client.execute(&str, ..)`,
///   `prepare`, `prepare_cached` — with 26000 "prepared statement does not
///   exist" or 42P05 "already exists". A parameter or column of a type
///   that is not built in makes tokio-postgres prepare a named statement to
///   look the type up: cast it to `text`.
/// - **Not available:** session state outside a transaction (`SET`,
///   advisory locks, temporary tables), `LISTEN`, the `options` startup
///   parameter (PgBouncer 1.18 refuses it), `channel_binding=require`.
///
/// ```no_run
/// use pgrotate::{Pool, source};
/// # async fn demo() -> Result<(), pgrotate::Error> {
/// let pool = Pool::builder(source::Env::new("DATABASE_URL")).max_size(16).build().await?;
/// let n: i64 = pool
///     .run(async move |c| c.query_one("select 1::int8", &[]).await?.try_get(0))
///     .await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: managed::Pool<Manager>,
    pub(crate) refresher: Arc<Refresher>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeouts: Timeouts,
    /// Dropped with the pool, or set by `close`: ends the background task.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The shortest wait before retrying after `Fault::PoolerUnavailable`.
    pub(crate) pooler_retry: Duration,
    /// In pooler mode, the attempt timeout used when the policy has none.
    pub(crate) pooler_query_timeout: Option<Duration>,
    /// In pooler mode, the parameter types of the pool-level statements.
    pub(crate) param_types: crate::statements::ParamTypes,
    /// The connections pool-level statements share (pipelining).
    pub(crate) lanes: Arc<crate::pipeline::Lanes>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends a fetch under way: the pool's tasks end with the pool.
        self.refresher.close();
    }
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
    /// Assembles the pool from checked settings: fetches the URL once
    /// (generation 1), makes the manager and the deadpool pool, and spawns
    /// the pool's one background task. Called by [`PoolBuilder::build`].
    pub(crate) async fn from_builder(builder: PoolBuilder) -> Result<Pool, Error> {
        let build_err = |msg: String| Error::new(ErrorKind::Build, msg);
        let pooler = builder.settings.pooler;
        let counters = Arc::new(Counters::default());
        let probe: Probe =
            Arc::new(|target| Box::pin(async move { crate::connect::probe(&target).await }));
        let refresher = Refresher::start(
            Arc::from(builder.source),
            builder.settings,
            builder.refresh,
            probe,
            counters.clone(),
        )
        .await?;
        let manager = Manager {
            refresher: refresher.clone(),
            counters: counters.clone(),
            ping_after_idle: builder.ping_after_idle,
            ping_timeout: builder.ping_timeout,
            max_lifetime: builder.maintenance.max_lifetime,
            create_timeout: builder.create_timeout,
            suspect: std::sync::atomic::AtomicU64::new(0),
            pooler,
            after_connect: builder.after_connect,
        };
        let timeouts = Timeouts {
            wait: Some(builder.wait_timeout),
            create: Some(builder.create_timeout),
            recycle: None,
        };
        let pool = managed::Pool::builder(manager)
            .max_size(builder.max_size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            // The most recently returned connection first: under load the
            // same few stay warm and skip the idle check, and idle ones at
            // the back age out for idle_timeout.
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .build()
            .map_err(|e| build_err(e.to_string()))?;
        let generations = refresher.subscribe();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            pool,
            refresher,
            counters,
            retry: builder.retry,
            timeouts,
            shutdown,
            pooler_retry: builder.pooler_retry,
            pooler_query_timeout: pooler.then_some(builder.pooler_query_timeout),
            param_types: crate::statements::ParamTypes::default(),
            // Through a transaction-mode pooler each statement keeps a
            // connection of its own (PgBouncer routes by transaction).
            lanes: Arc::new(crate::pipeline::Lanes::new(
                if pooler { 1 } else { builder.pipeline_depth },
                shutdown_rx.clone(),
            )),
        });
        crate::maintenance::spawn(
            Arc::downgrade(&inner),
            generations,
            shutdown_rx,
            builder.maintenance,
        );
        Ok(Pool { inner })
    }

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
    /// or [`Pool::transaction`] for that. Through PgBouncer, use only the
    /// calls listed under [`Pool`]'s "Through a transaction-mode pooler".
    pub async fn get(&self) -> Result<Client, Error> {
        let wait = self.inner.timeouts.wait.unwrap_or(Duration::from_secs(30));
        let deadline = later(tokio::time::Instant::now(), wait);
        Ok(self.get_with(self.inner.timeouts, deadline).await?.lend())
    }

    /// A connection, with every connect and refetch of the checkout ending
    /// by `deadline` (the manager's `create` reads it).
    pub(crate) async fn get_with(
        &self,
        mut timeouts: Timeouts,
        deadline: tokio::time::Instant,
    ) -> Result<Client, Error> {
        // deadpool's own create timeout is only a backstop: the manager
        // ends its work by the deadline with an error that says why.
        let now = tokio::time::Instant::now();
        let create = timeouts.create;
        timeouts.create = Some(deadline.saturating_duration_since(now) + Duration::from_secs(1));
        // The wait for a slot ends at the wait timeout, the whole checkout
        // by the deadline, on one timer (`checkout::bounded`); deadpool
        // waits without one, unless it is not to wait at all.
        let wait_until = later(now, timeouts.wait.unwrap_or(Duration::MAX));
        let mut own = timeouts;
        own.wait = timeouts.wait.filter(|w| w.is_zero());
        // Timed outside: a wait that times out is a sample too.
        let got = crate::metrics::checkout(checkout::bounded(
            self.inner.pool.timeout_get(&own),
            wait_until,
            deadline,
        ))
        .await;
        match got {
            Ok(obj) => Ok(Client::new(obj)),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(self
                .explained(Error::timeout("waiting for a connection", timeouts.wait))
                .into_pool_full()),
            Err(PoolError::Timeout(TimeoutType::Create)) => Err(self.explained(Error::timeout(
                "opening a connection (with refetches)",
                create,
            ))),
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

    /// A timeout's error with what holds refetches back, if anything does
    /// (the source keeps the URL that failed; its budget allows the next
    /// request in …).
    pub(crate) fn explained(&self, e: Error) -> Error {
        match self.inner.refresher.explain() {
            Some(why) => e.with_detail_suffix(&format!("meanwhile: {why}")),
            None => e,
        }
    }

    /// A snapshot of the pool's state and counters.
    pub fn status(&self) -> Status {
        let s = self.inner.pool.status();
        let c = &self.inner.counters;
        let status = Status {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
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
            budget: self.inner.refresher.budget_status(),
        };
        crate::metrics::status(&status);
        status
    }

    /// Fetches the URL now and adopts it if it changed; returns the
    /// current generation. For a user who knows the URL changed. It spends
    /// a token of the source's budget above the reserve kept for failures,
    /// waiting for one (and for a `Retry-After`) no longer than the wait
    /// timeout; the fetch itself is bounded by the fetch timeout.
    pub async fn refresh_now(&self) -> Result<u64, Error> {
        let wait = self.inner.timeouts.wait.unwrap_or(Duration::from_secs(30));
        let deadline = later(tokio::time::Instant::now(), wait);
        Ok(self.inner.refresher.refresh_now(deadline).await?.id)
    }

    /// Closes the pool: waiting and future `get` calls fail with
    /// [`ErrorKind::Closed`]; idle connections are closed, checked-out ones
    /// when they come back.
    pub fn close(&self) {
        // Lanes first: a slot let go by the shutdown below must not be
        // handed to a waiting caller.
        self.inner.lanes.close();
        self.inner.shutdown.send_replace(true);
        self.inner.refresher.close();
        self.inner.pool.close();
    }

    /// Closes every connection open now — idle ones at once, checked-out
    /// ones when they come back — so that the next ones connect afresh with
    /// the current URL. For a user who knows the endpoint changed (like
    /// pgx's `Reset` or psycopg's `drain`). Work in flight finishes.
    /// Returns the new generation. Never waits for a fetch under way.
    pub async fn drain(&self) -> u64 {
        let generation = self.inner.refresher.bump();
        crate::maintenance::close_stale(&self.inner);
        generation.id
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.pool.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require_send<T: Send>(_: &T) {}

    /// Compile-time check: with `async move` closures, the futures of `run`
    /// and `transaction` can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn run_and_transaction_futures_are_send(pool: Pool) {
        let id = 7i32;
        let f = pool.run(async move |c| c.execute("select $1::int4", &[&id]).await);
        require_send(&f);
        let t = pool.transaction(async move |tx| tx.execute("select $1::int4", &[&id]).await);
        require_send(&t);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let q = pool.execute("select $1::int4", &params);
        require_send(&q);
        let r = pool.query_raw("select $1::int4", [id]);
        require_send(&r);
        let r = pool.query_raw(
            "select $1::int4",
            [&id as &(dyn tokio_postgres::types::ToSql + Sync)],
        );
        require_send(&r);
        let typed = [(
            &id as &(dyn tokio_postgres::types::ToSql + Sync),
            tokio_postgres::types::Type::INT4,
        )];
        let r = pool.query_typed_raw("select $1::int4", typed);
        require_send(&r);
        let pool = pool.clone();
        // Parameters borrowing a local of the task itself (the form that
        // fails with a call generic over the parameter type).
        let spawned = async move {
            let w = 1i32;
            let _ = pool
                .query_raw(
                    "select $1::int4",
                    [&w as &(dyn tokio_postgres::types::ToSql + Sync)],
                )
                .await;
        };
        require_send(&spawned);
    }

    /// Every checkout's future holds the connect path only behind a box
    /// (`Manager::create` boxes `create_connection`): inlined, the connect,
    /// TLS and refetch states made `run`'s future 18 KB, memcpied on every
    /// `Box::pin` and move — 1.7× deadpool's instructions per query. Now
    /// ~3–4 KB; the bound leaves room for dependency changes, not for the
    /// connect path coming back.
    #[tokio::test]
    async fn checkout_futures_stay_small() {
        let pool = Pool::builder(crate::source::Static::new("postgres://u:p@localhost/db"))
            .build()
            .await
            .unwrap();
        const BOUND: usize = 8 * 1024;
        let run = pool.run(async move |c| c.query_one("select 1", &[]).await);
        let get = pool.get();
        let tx = pool.transaction(async move |c| c.query_one("select 1", &[]).await);
        let one = pool.query_one("select 1", &[]);
        for (what, size) in [
            ("run", std::mem::size_of_val(&run)),
            ("get", std::mem::size_of_val(&get)),
            ("transaction", std::mem::size_of_val(&tx)),
            ("query_one", std::mem::size_of_val(&one)),
        ] {
            assert!(
                size < BOUND,
                "{what}'s future is {size} bytes (bound {BOUND})"
            );
        }
    }
}
