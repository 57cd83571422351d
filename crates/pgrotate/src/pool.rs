//! The public [`Pool`]: `get`, `run`, `transaction`, `status`, `close`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::{self, PoolError, TimeoutType, Timeouts};
use tokio_postgres::error::SqlState;

use crate::budget::Trigger;
use crate::builder::PoolBuilder;
use crate::classify::{Fault, classify};
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::generation::{Refresher, Wait};
use crate::manager::{CHECKOUT_DEADLINE, Manager};
use crate::retry::{Backoff, RetryPolicy};
use crate::source::UrlSource;
use crate::stats::{Counters, Status};
use crate::time::fmt_duration;
use crate::time::later;
use crate::wire::{TxStatus, Wire};

const RETRY_TARGET: &str = "pgrotate::retry";

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
/// - **Safe:** the unnamed-statement calls — `query_typed`,
///   `query_typed_one`, `query_typed_opt`, `query_typed_raw`,
///   `execute_typed`, `simple_query`, `batch_execute` — and transactions
///   through [`Pool::transaction`], with `SET LOCAL` for settings.
/// - **Fails:** named prepared statements — `query(&str, ..)`,
///   `execute(&str, ..)`, `prepare` — with 26000 "prepared statement does
///   not exist" or 42P05 "already exists". A parameter or column of a type
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
///     .run(async |c| c.query_one("select 1::int8", &[]).await?.try_get(0))
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

/// What one attempt of `run` or `transaction` came to.
enum Outcome<T> {
    Done(T),
    Fail(Error),
    Retry(Error),
}

/// Runs `fut`, giving up at `until` if there is one.
async fn until<F: Future>(until: Option<Instant>, fut: F) -> Result<F::Output, ()> {
    match until {
        Some(at) => tokio::time::timeout_at(at.into(), fut)
            .await
            .map_err(|_| ()),
        None => Ok(fut.await),
    }
}

fn is_serialization_failure(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
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
    /// or [`Pool::transaction`] for that. Through PgBouncer, use only the
    /// calls listed under [`Pool`]'s "Through a transaction-mode pooler".
    pub async fn get(&self) -> Result<Client, Error> {
        let wait = self.inner.timeouts.wait.unwrap_or(Duration::from_secs(30));
        let deadline = later(tokio::time::Instant::now(), wait);
        self.get_with(self.inner.timeouts, deadline).await
    }

    /// A connection, with every connect and refetch of the checkout ending
    /// by `deadline` (the manager's `create` reads it).
    async fn get_with(
        &self,
        mut timeouts: Timeouts,
        deadline: tokio::time::Instant,
    ) -> Result<Client, Error> {
        // deadpool's own create timeout is only a backstop: the manager
        // ends its work by the deadline with an error that says why.
        let create = timeouts.create;
        timeouts.create = Some(
            deadline.saturating_duration_since(tokio::time::Instant::now())
                + Duration::from_secs(1),
        );
        // The whole checkout — waiting for a slot, checks of idle
        // connections, creates and refetches — ends by the deadline; the
        // parts end by it themselves, this is the backstop.
        let got = tokio::time::timeout_at(
            later(deadline, Duration::from_millis(250)),
            CHECKOUT_DEADLINE.scope(deadline, self.inner.pool.timeout_get(&timeouts)),
        )
        .await
        .unwrap_or(Err(PoolError::Timeout(TimeoutType::Wait)));
        match got {
            Ok(obj) => Ok(Client::new(obj)),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(TimeoutType::Wait)) => {
                Err(self.explained(Error::timeout("waiting for a connection", timeouts.wait)))
            }
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
    fn explained(&self, e: Error) -> Error {
        match self.inner.refresher.explain() {
            Some(why) => e.with_detail_suffix(&format!("meanwhile: {why}")),
            None => e,
        }
    }

    /// Runs `work` on a pooled connection, and again on a fresh one when the
    /// connection fails under it (lost, ended by the server, credentials
    /// rotated), within the pool's [`RetryPolicy`].
    ///
    /// **`run` is for idempotent work**: reads, and writes that are safe to
    /// apply twice. A write whose connection dies after the server executed
    /// it may run again; use [`Pool::transaction`] for writes. The caller's
    /// own errors (a unique violation, a syntax error) are never retried:
    /// they come back at once with [`ErrorKind::Query`]. Through PgBouncer,
    /// use only the calls listed under [`Pool`]'s "Through a
    /// transaction-mode pooler".
    ///
    /// In a spawned task (an axum or actix-web handler), write the closure
    /// `async move |c| …` and move clones of what it needs into it: today's
    /// compiler cannot prove a future `Send` when an async closure borrows
    /// from its surroundings ("implementation of `Send` is not general
    /// enough").
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
    pub async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let policy = self.inner.retry;
        self.run_with(&policy, work).await
    }

    /// [`Pool::run`] with another retry policy for this call.
    pub async fn run_with<T, F>(&self, policy: &RetryPolicy, mut work: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let mut attempts = Attempts::new(policy)?;
        loop {
            let Some(client) = self.next_client(&mut attempts).await? else {
                continue;
            };
            let err = match self.run_once(policy, &attempts, &mut work, client).await {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(attempts.fail(e)),
                Outcome::Retry(e) => e,
            };
            self.back_off(&attempts, err).await?;
        }
    }

    async fn run_once<T, F>(
        &self,
        policy: &RetryPolicy,
        attempts: &Attempts,
        work: &mut F,
        mut client: Client,
    ) -> Outcome<T>
    where
        F: AsyncFnMut(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let timeout = self.attempt_timeout(policy);
        let deadline = timeout.map(crate::time::after);
        let generation = client.generation();
        client.set_busy(true);
        match until(deadline, work(&client)).await {
            Err(()) => Outcome::Retry(abandoned(timeout)),
            Ok(Ok(v)) => {
                client.set_busy(false);
                Outcome::Done(v)
            }
            Ok(Err(e)) => {
                let fault = classify(&e);
                let fault = if fault == Fault::ReadOnly {
                    read_only_or_standby(&client).await
                } else {
                    fault
                };
                if !fault.is_connection_level() {
                    client.set_busy(false);
                    return Outcome::Fail(Error::postgres(ErrorKind::Query, fault, e));
                }
                drop(client);
                self.after_fault(attempts, generation, fault).await;
                Outcome::Retry(Error::postgres(kind_after_work(fault), fault, e))
            }
        }
    }

    /// Runs `work` inside `BEGIN` … `COMMIT`, and runs the whole transaction
    /// again on a fresh connection when the connection fails *before*
    /// `COMMIT` was sent (the server rolls back an unfinished transaction,
    /// so nothing is applied twice).
    ///
    /// - The caller's own error: the transaction is rolled back and the
    ///   error returned as it is ([`ErrorKind::Query`]), never retried —
    ///   except serialization failures and deadlocks (40001, 40P01) when
    ///   [`RetryPolicy::retry_serialization_failures`] is on.
    /// - The connection lost after `COMMIT` was sent and before its answer
    ///   arrived: [`ErrorKind::CommitOutcomeUnknown`], never retried. The
    ///   transaction may or may not have been committed; only the caller
    ///   can find out (for example by looking for the row it wrote).
    ///
    /// `work` may run more than once, so it must not have effects outside
    /// the transaction (no email sent from inside it).
    ///
    /// ```no_run
    /// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
    /// use pgrotate::ErrorKind;
    /// let r = pool
    ///     .transaction(async |tx| {
    ///         tx.execute("update accounts set balance = balance - 10 where id = 1", &[]).await?;
    ///         tx.execute("update accounts set balance = balance + 10 where id = 2", &[]).await?;
    ///         Ok(())
    ///     })
    ///     .await;
    /// match r {
    ///     Ok(()) => {}
    ///     Err(e) if e.kind() == ErrorKind::CommitOutcomeUnknown => { /* check, don't blindly redo */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&tokio_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    {
        let policy = self.inner.retry;
        self.transaction_with(&policy, work).await
    }

    /// [`Pool::transaction`] with another retry policy for this call.
    pub async fn transaction_with<T, F>(
        &self,
        policy: &RetryPolicy,
        mut work: F,
    ) -> Result<T, Error>
    where
        F: AsyncFnMut(&tokio_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    {
        let mut attempts = Attempts::new(policy)?;
        loop {
            let Some(client) = self.next_client(&mut attempts).await? else {
                continue;
            };
            let err = match self
                .transaction_once(policy, &attempts, &mut work, client)
                .await
            {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(attempts.fail(e)),
                Outcome::Retry(e) => e,
            };
            self.back_off(&attempts, err).await?;
        }
    }

    async fn transaction_once<T, F>(
        &self,
        policy: &RetryPolicy,
        attempts: &Attempts,
        work: &mut F,
        mut client: Client,
    ) -> Outcome<T>
    where
        F: AsyncFnMut(&tokio_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    {
        let timeout = self.attempt_timeout(policy);
        let deadline = timeout.map(crate::time::after);
        let generation = client.generation();
        let wire = client.wire();
        client.set_busy(true);
        let tx = match until(deadline, client.transaction()).await {
            Err(()) => return Outcome::Retry(abandoned(timeout)),
            Ok(Err(e)) => return self.lost_before_commit(attempts, generation, e).await,
            Ok(Ok(tx)) => tx,
        };
        let value = match until(deadline, work(&tx)).await {
            Err(()) => return Outcome::Retry(abandoned(timeout)),
            Ok(Ok(v)) => v,
            Ok(Err(e)) if standby_aware(classify(&e), &wire).is_connection_level() => {
                drop(tx);
                return self.lost_before_commit(attempts, generation, e).await;
            }
            Ok(Err(e)) => {
                // The caller's own error: roll back, keep the connection
                // (closed instead if the rollback does not answer in time).
                let rolled_back = matches!(until(deadline, tx.rollback()).await, Ok(Ok(())));
                if rolled_back {
                    client.set_busy(false);
                }
                return callers_error(policy, e);
            }
        };
        if tx.client().is_closed() {
            // Known dead before COMMIT was handed over: nothing was sent.
            drop(tx);
            drop(client);
            self.after_fault(attempts, generation, Fault::ConnectionLost)
                .await;
            return Outcome::Retry(Error::new(
                ErrorKind::ConnectionLost,
                "the connection closed before COMMIT was sent",
            ));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time before COMMIT was sent: nothing was committed, so
            // this is a plain abandoned attempt, not an unknown outcome.
            return Outcome::Retry(abandoned(timeout));
        }
        if wire.unanswered().is_some_and(|n| n > 0) {
            wire.settled(Duration::from_millis(50)).await;
        }
        if wire.tx_status() == TxStatus::Failed {
            // A statement failed and the closure went on: COMMIT would only
            // roll back, and tokio-postgres would report that as success.
            let rolled_back = matches!(until(deadline, tx.rollback()).await, Ok(Ok(())));
            if rolled_back {
                client.set_busy(false);
            }
            return Outcome::Fail(Error::new(
                ErrorKind::RolledBack,
                "a statement in the transaction failed and the closure returned Ok anyway \
                 (an error swallowed, or a savepoint not rolled back to); nothing was committed",
            ));
        }
        match until(deadline, tx.commit()).await {
            Ok(Ok(())) => {
                client.set_busy(false);
                Outcome::Done(value)
            }
            // The server answered COMMIT with an error of the caller's kind
            // (a deferred constraint, a serialization failure): the
            // transaction did not commit, and the connection is fine.
            Ok(Err(e)) if e.as_db_error().is_some() && !classify(&e).is_connection_level() => {
                client.set_busy(false);
                callers_error(policy, e)
            }
            Ok(Err(e)) => {
                let fault = classify(&e);
                Outcome::Fail(
                    Error::postgres(ErrorKind::CommitOutcomeUnknown, fault, e)
                        .with_detail_prefix("the connection failed after COMMIT was sent"),
                )
            }
            Err(()) => Outcome::Fail(Error::new(
                ErrorKind::CommitOutcomeUnknown,
                format!(
                    "no answer to COMMIT within the attempt timeout of {}",
                    timeout.map_or_else(String::new, fmt_duration)
                ),
            )),
        }
    }

    async fn lost_before_commit<T>(
        &self,
        attempts: &Attempts,
        generation: u64,
        e: tokio_postgres::Error,
    ) -> Outcome<T> {
        let fault = classify(&e);
        self.after_fault(attempts, generation, fault).await;
        Outcome::Retry(Error::postgres(kind_after_work(fault), fault, e))
    }

    /// A connection of `generation` failed with `fault`: refetch if the
    /// fault says the URL may point elsewhere now. A failed refetch shows up
    /// in the next `get`. Waits no longer than the call's deadline: a paced
    /// refetch can be far off, and the next connect refetches anyway.
    async fn after_fault(&self, attempts: &Attempts, generation: u64, fault: Fault) {
        if fault.needs_refetch() {
            let _ = self
                .inner
                .refresher
                .refresh_after(
                    generation,
                    Trigger::Failure,
                    fault.reason(),
                    Wait::Once,
                    attempts.deadline.into(),
                )
                .await;
        }
    }

    /// The policy's attempt timeout, or in pooler mode the pooler query
    /// timeout (PgBouncer can hold a query for minutes).
    fn attempt_timeout(&self, policy: &RetryPolicy) -> Option<Duration> {
        policy
            .max_attempt_duration()
            .or(self.inner.pooler_query_timeout)
    }

    /// The next attempt's connection, waiting no longer than the deadline.
    /// `Ok(None)`: getting one failed in a way worth retrying, and the
    /// backoff before the next attempt has been waited.
    ///
    /// A connect that found no server is not counted as an attempt (no work
    /// ran): it is tried again, backing off up to the policy's cap, until
    /// the deadline, so a server restart costs the caller nothing.
    async fn next_client(&self, attempts: &mut Attempts) -> Result<Option<Client>, Error> {
        attempts.n += 1;
        let mut timeouts = self.inner.timeouts;
        let left = attempts.deadline.saturating_duration_since(Instant::now());
        timeouts.wait = Some(timeouts.wait.map_or(left, |w| w.min(left)));
        let create = timeouts.create.map_or(left, |c| c.min(left));
        let deadline = later(tokio::time::Instant::now(), create);
        match self.get_with(timeouts, deadline).await {
            Ok(client) => Ok(Some(client)),
            Err(e) if e.is_outage() => {
                attempts.n -= 1;
                let delay = attempts.backoff.jittered(attempts.outages);
                attempts.outages = attempts.outages.saturating_add(1);
                if crate::time::after(delay) >= attempts.deadline {
                    return Err(attempts.fail(e));
                }
                tracing::debug!(target: RETRY_TARGET, delay = %fmt_duration(delay), error = %e, "no server answers; trying again");
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Err(e) if e.is_retryable() => {
                self.back_off(attempts, e).await?;
                Ok(None)
            }
            Err(e) => Err(attempts.fail(e)),
        }
    }

    /// Waits before the next attempt, or returns `err` when the policy
    /// allows no more.
    async fn back_off(&self, attempts: &Attempts, err: Error) -> Result<(), Error> {
        let mut delay = attempts.backoff.jittered(attempts.n - 1);
        let pooler_busy = err.fault() == Some(Fault::PoolerUnavailable)
            || (self.inner.pooler_query_timeout.is_some()
                && err.fault() == Some(Fault::TooManyConnections));
        if pooler_busy {
            // PgBouncer retries its server login every server_login_retry;
            // asking sooner only adds load.
            delay = delay.max(self.inner.pooler_retry);
        }
        if attempts.n >= attempts.max || crate::time::after(delay) >= attempts.deadline {
            return Err(err.with_attempts(attempts.n));
        }
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: RETRY_TARGET, attempt = attempts.n, delay = %fmt_duration(delay), error = %err, "retrying on a fresh connection");
        tokio::time::sleep(delay).await;
        Ok(())
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
            budget: self.inner.refresher.budget_status(),
        }
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

/// Where a `run` or `transaction` call stands in its retry policy. Plain
/// data: the retry loops are plain loops, with no closure inside the
/// library, so a caller's `async move` closure keeps the whole future
/// `Send`.
struct Attempts {
    n: u32,
    /// Connects that found no server (not counted in `n`).
    outages: u32,
    max: u32,
    deadline: Instant,
    backoff: Backoff,
}

impl Attempts {
    fn new(policy: &RetryPolicy) -> Result<Attempts, Error> {
        let backoff = policy
            .validate()
            .map_err(|m| Error::new(ErrorKind::Build, m))?;
        Ok(Attempts {
            n: 0,
            outages: 0,
            max: policy.max_attempts(),
            deadline: crate::time::after(policy.max_duration()),
            backoff,
        })
    }

    /// A final error, with the attempt count when there was more than one.
    fn fail(&self, e: Error) -> Error {
        if self.n > 1 {
            e.with_attempts(self.n)
        } else {
            e
        }
    }
}

/// 25006 (read-only transaction) means "landed on a standby" only when the
/// server is one; in the caller's own `READ ONLY` transaction it is the
/// caller's error. The connection's `in_hot_standby` (PostgreSQL 14+) says
/// which at no cost; where it is unknown the fault stands.
fn standby_aware(fault: Fault, wire: &Wire) -> Fault {
    match (fault, wire.in_hot_standby()) {
        (Fault::ReadOnly, Some(false)) => Fault::Query,
        _ => fault,
    }
}

/// [`standby_aware`] for `run`, where the connection is free to ask the
/// server itself when it did not report `in_hot_standby`.
async fn read_only_or_standby(client: &Client) -> Fault {
    let wire = client.wire();
    if wire.in_hot_standby().is_some() {
        return standby_aware(Fault::ReadOnly, &wire);
    }
    let asked = tokio::time::timeout(
        Duration::from_secs(2),
        client.query_typed_one("select pg_is_in_recovery()", &[]),
    )
    .await;
    match asked {
        Ok(Ok(row)) if !row.get::<_, bool>(0) => Fault::Query,
        _ => Fault::ReadOnly,
    }
}

fn callers_error<T>(policy: &RetryPolicy, e: tokio_postgres::Error) -> Outcome<T> {
    let retry = policy.retries_serialization_failures() && is_serialization_failure(&e);
    let err = Error::postgres(ErrorKind::Query, Fault::Query, e);
    if retry {
        Outcome::Retry(err)
    } else {
        Outcome::Fail(err)
    }
}

fn abandoned(timeout: Option<Duration>) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        format!(
            "no answer within the attempt timeout of {}; the connection was closed",
            timeout.map_or_else(String::new, fmt_duration)
        ),
    )
}

fn kind_after_work(fault: Fault) -> ErrorKind {
    match fault {
        Fault::CredentialsRejected => ErrorKind::CredentialsRejected,
        Fault::ReadOnly | Fault::Query => ErrorKind::Query,
        Fault::DatabaseGone | Fault::TooManyConnections | Fault::PoolerUnavailable => {
            ErrorKind::Connect
        }
        Fault::ServerGoingAway | Fault::ConnectionLost => ErrorKind::ConnectionLost,
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
    }
}
