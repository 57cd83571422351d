//! `Pool::run` and `Pool::transaction`: the caller's closure, retried on a
//! fresh connection within the retry policy (the attempts are in
//! `crate::exec`).

use deadpool_postgres::{ClientWrapper, Transaction};

use super::Pool;
use crate::exec::TransactionOptions;
use crate::retry::RetryPolicy;
use crate::work_error::ClosureError;

impl Pool {
    /// Runs `work` on a pooled connection, and again on a fresh one when the
    /// connection fails under it (lost, ended by the server, credentials
    /// rotated), within the pool's [`RetryPolicy`].
    ///
    /// **`run` is for idempotent work**: reads, and writes that are safe to
    /// apply twice. A write whose connection dies after the server executed
    /// it may run again; use [`Pool::transaction`] or the pool-level
    /// statements ([`Pool::execute`]) for writes. The caller's own errors (a
    /// unique violation, a syntax error) are never retried: they come back
    /// at once ([`ErrorKind::Query`](crate::ErrorKind::Query)). Through PgBouncer, use only the calls
    /// listed under [`Pool`]'s "Through a transaction-mode pooler".
    ///
    /// The closure gets deadpool-postgres's
    /// [`ClientWrapper`](deadpool_postgres::ClientWrapper) (`prepare_cached`,
    /// and every [`tokio_postgres::Client`] method through `Deref`). It may
    /// fail with `tokio_postgres::Error` (the call returns [`Error`](crate::Error)),
    /// [`Error`](crate::Error), or the application's own error type ([`WorkError`]),
    /// which comes back unchanged: see [`ClosureError`]. When the closure
    /// only uses `?`, name its error type: `Ok::<_, pgrotate::Error>(v)`.
    ///
    /// **The `Send` rule:** in a spawned task (an axum or actix-web handler),
    /// write the closure `async move |c| …` and move clones of what it needs
    /// into it — today's compiler cannot prove the future `Send` when an
    /// async closure borrows from its surroundings ("implementation of
    /// `Send` is not general enough"). The closure may run more than once,
    /// so it cannot consume what it captured (E0507): clone it inside
    /// (`for name in names.clone()`).
    ///
    /// ```no_run
    /// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
    /// let active = true;
    /// let names: Vec<String> = pool
    ///     .run(async move |c| {
    ///         let stmt = c.prepare_cached("select name from users where active = $1").await?;
    ///         let rows = c.query(&stmt, &[&active]).await?;
    ///         rows.iter().map(|r| r.try_get(0)).collect()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`WorkError`]: crate::WorkError
    /// [`ClosureError`]: crate::ClosureError
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&ClientWrapper) -> Result<T, E>,
    {
        let policy = self.inner.retry;
        self.run_loop(&policy, work).await
    }

    /// [`Pool::run`] with another retry policy for this call.
    pub async fn run_with<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&ClientWrapper) -> Result<T, E>,
    {
        self.run_loop(policy, work).await
    }

    /// Runs `work` inside `BEGIN` … `COMMIT`, and runs the whole transaction
    /// again on a fresh connection when the connection fails *before*
    /// `COMMIT` was sent (the server rolls back an unfinished transaction,
    /// so nothing is applied twice).
    ///
    /// - The closure's own error — a database error of the caller's kind, or
    ///   any error of the application's own type ([`WorkError`]): the
    ///   transaction is rolled back and the error returned as it is, never
    ///   retried — except serialization failures and deadlocks (40001,
    ///   40P01) when [`RetryPolicy::retry_serialization_failures`] is on.
    /// - The connection lost after `COMMIT` was sent and before its answer
    ///   arrived: [`ErrorKind::CommitOutcomeUnknown`](crate::ErrorKind::CommitOutcomeUnknown), never retried. The
    ///   transaction may or may not have been committed; only the caller
    ///   can find out (for example by looking for the row it wrote).
    ///
    /// The closure gets deadpool-postgres's
    /// [`Transaction`](deadpool_postgres::Transaction) (`prepare_cached`, and
    /// every [`tokio_postgres::Transaction`] method through `Deref`).
    /// `work` may run more than once, so it must not have effects outside
    /// the transaction (no email sent from inside it). It gets the
    /// transaction by shared reference: for a savepoint, run `SAVEPOINT a`
    /// / `ROLLBACK TO SAVEPOINT a` as SQL (a failed statement rolled back to
    /// its savepoint commits the rest as usual). Isolation level,
    /// read-only, deferrable: [`Pool::transaction_with_options`].
    ///
    /// ```no_run
    /// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
    /// let (from, to, amount) = (1i64, 2i64, 10i64);
    /// let r = pool
    ///     .transaction(async move |tx| {
    ///         let debit = tx.prepare_cached("update accounts set balance = balance - $2 where id = $1").await?;
    ///         tx.execute(&debit, &[&from, &amount]).await?;
    ///         tx.execute("update accounts set balance = balance + $2 where id = $1", &[&to, &amount]).await?;
    ///         Ok::<_, pgrotate::Error>(())
    ///     })
    ///     .await;
    /// match r {
    ///     Ok(()) => {}
    ///     Err(e) if e.is_outcome_unknown() => { /* check, don't blindly redo */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// [`WorkError`]: crate::WorkError
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&Transaction<'_>) -> Result<T, E>,
    {
        let policy = self.inner.retry;
        self.transaction_loop(&policy, &TransactionOptions::new(), work)
            .await
    }

    /// [`Pool::transaction`] with another retry policy for this call.
    pub async fn transaction_with<T, E, F>(
        &self,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&Transaction<'_>) -> Result<T, E>,
    {
        self.transaction_loop(policy, &TransactionOptions::new(), work)
            .await
    }

    /// [`Pool::transaction`] with an isolation level, read-only, deferrable
    /// or a retry policy of its own.
    ///
    /// ```no_run
    /// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
    /// use pgrotate::{RetryPolicy, TransactionOptions};
    /// use tokio_postgres::IsolationLevel;
    /// let options = TransactionOptions::new()
    ///     .isolation_level(IsolationLevel::Serializable)
    ///     .retry_policy(RetryPolicy::default().retry_serialization_failures(true));
    /// let total: i64 = pool
    ///     .transaction_with_options(&options, async move |tx| {
    ///         let row = tx.query_one("select coalesce(sum(balance), 0)::int8 from accounts", &[]).await?;
    ///         row.try_get(0)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with_options<T, E, F>(
        &self,
        options: &TransactionOptions,
        work: F,
    ) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&Transaction<'_>) -> Result<T, E>,
    {
        let policy = options.policy_or(self.inner.retry);
        self.transaction_loop(&policy, options, work).await
    }
}
