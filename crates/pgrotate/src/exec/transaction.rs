//! One attempt of `Pool::transaction`: `BEGIN` (with the call's
//! [`TransactionOptions`]), the caller's closure, `COMMIT` — and the commit
//! window: retried only while nothing can have been committed.

use std::time::{Duration, Instant};

use tracing::Instrument;

use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use super::{
    Attempts, Failure, Outcome, abandoned, call_span, callers_error, fault_of, kind_after_work,
    standby_aware, until,
};
use crate::classify::{Fault, classify};
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::time::fmt_duration;
use crate::wire::{LastEnd, TxStatus};
use crate::work_error::ClosureError;

/// How [`Pool::transaction_with_options`] begins its transaction, and with
/// which retry policy. Plain data; the default is the pool's policy and
/// the server's defaults (`BEGIN`).
///
/// ```
/// use pgrotate::{RetryPolicy, TransactionOptions};
/// use tokio_postgres::IsolationLevel;
/// let options = TransactionOptions::new()
///     .isolation_level(IsolationLevel::Serializable)
///     .read_only(true)
///     .deferrable(true)
///     .retry_policy(RetryPolicy::default().retry_serialization_failures(true));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TransactionOptions {
    isolation_level: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
    policy: Option<RetryPolicy>,
}

impl TransactionOptions {
    /// The server's defaults and the pool's retry policy.
    pub fn new() -> TransactionOptions {
        TransactionOptions::default()
    }

    /// `ISOLATION LEVEL …`.
    pub fn isolation_level(mut self, level: IsolationLevel) -> TransactionOptions {
        self.isolation_level = Some(level);
        self
    }

    /// `READ ONLY` (`true`) or `READ WRITE` (`false`). A write in a read-only
    /// transaction is the caller's error (25006 on a primary), not a
    /// standby to move away from.
    pub fn read_only(mut self, read_only: bool) -> TransactionOptions {
        self.read_only = Some(read_only);
        self
    }

    /// `DEFERRABLE` (`true`) or `NOT DEFERRABLE` (`false`); only meaningful
    /// for serializable read-only transactions.
    pub fn deferrable(mut self, deferrable: bool) -> TransactionOptions {
        self.deferrable = Some(deferrable);
        self
    }

    /// The retry policy of this call instead of the pool's.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> TransactionOptions {
        self.policy = Some(policy);
        self
    }

    /// The policy of the call: its own, or the pool's.
    pub(crate) fn policy_or(&self, pool: RetryPolicy) -> RetryPolicy {
        self.policy.unwrap_or(pool)
    }

    /// Begins the transaction on `client`.
    async fn begin<'a>(
        &self,
        client: &'a mut Client,
    ) -> Result<Transaction<'a>, tokio_postgres::Error> {
        let mut builder = client.build_transaction();
        if let Some(level) = self.isolation_level {
            builder = builder.isolation_level(level);
        }
        if let Some(read_only) = self.read_only {
            builder = builder.read_only(read_only);
        }
        if let Some(deferrable) = self.deferrable {
            builder = builder.deferrable(deferrable);
        }
        builder.start().await
    }
}

impl Pool {
    /// The whole call: attempts on fresh connections within the policy.
    pub(crate) async fn transaction_loop<T, E, F>(
        &self,
        policy: &RetryPolicy,
        options: &TransactionOptions,
        mut work: F,
    ) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&Transaction<'_>) -> Result<T, E>,
    {
        let span = call_span("transaction");
        async move {
            let mut attempts = Attempts::new(policy).map_err(E::from_pool)?;
            loop {
                let client = match self.next_client(&mut attempts).await {
                    Ok(Some(client)) => client,
                    Ok(None) => continue,
                    Err(e) => return Err(E::from_pool(e)),
                };
                let outcome = self
                    .transaction_once(policy, options, &attempts, &mut work, client)
                    .await;
                if let Some(result) = self.after_attempt(&attempts, outcome).await {
                    return result;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn transaction_once<T, E, F>(
        &self,
        policy: &RetryPolicy,
        options: &TransactionOptions,
        attempts: &Attempts,
        work: &mut F,
        mut client: Client,
    ) -> Outcome<T, E>
    where
        E: ClosureError,
        F: AsyncFnMut(&Transaction<'_>) -> Result<T, E>,
    {
        let (timeout, deadline) = self.attempt_bound(policy);
        let generation = client.generation();
        let wire = client.wire();
        client.set_busy(true);
        let tx = match until(deadline, options.begin(&mut client)).await {
            Err(()) => return Outcome::Retry(Failure::pool(abandoned(timeout))),
            Ok(Err(e)) => {
                // The connection is closed when this attempt returns.
                let fault = classify(&e);
                self.after_fault(attempts, generation, fault).await;
                let verdict = Error::postgres(kind_after_work(fault), fault, e);
                return Outcome::Retry(Failure::pool(verdict));
            }
            Ok(Ok(tx)) => tx,
        };
        let value = match until(deadline, work(&tx)).await {
            Err(()) => return Outcome::Retry(Failure::pool(abandoned(timeout))),
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let fault = standby_aware(fault_of(e.postgres()), &wire);
                let Some(pg) = e.postgres().filter(|_| fault.is_connection_level()) else {
                    // The caller's own error: roll back, keep the connection
                    // (closed instead if the rollback does not answer in
                    // time).
                    let rolled_back = matches!(until(deadline, tx.rollback()).await, Ok(Ok(())));
                    if rolled_back {
                        client.set_busy(false);
                    }
                    return callers_error(policy, e);
                };
                if wire.tx_status() == TxStatus::Idle && wire.last_end() == LastEnd::Commit {
                    // The closure ran COMMIT itself, then lost the
                    // connection: what it wrote before is committed, so it
                    // must not run again.
                    let verdict = Error::verdict(ErrorKind::CommitOutcomeUnknown, fault, pg)
                        .with_detail_prefix(
                            "the closure ran COMMIT itself and the connection failed after it; \
                             its work up to that COMMIT is committed and is not run again",
                        );
                    return Outcome::Fail(Failure::work(verdict, e));
                }
                let verdict = Error::verdict(kind_after_work(fault), fault, pg);
                drop(tx);
                drop(client);
                self.after_fault(attempts, generation, fault).await;
                return Outcome::Retry(Failure::work(verdict, e));
            }
        };
        if tx.client().is_closed() {
            // Known dead before COMMIT was handed over: nothing was sent.
            drop(tx);
            drop(client);
            self.after_fault(attempts, generation, Fault::Disconnected)
                .await;
            return Outcome::Retry(Failure::pool(Error::new(
                ErrorKind::ConnectionLost,
                "the connection closed before COMMIT was sent",
            )));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time before COMMIT was sent: nothing was committed, so
            // this is a plain abandoned attempt, not an unknown outcome.
            return Outcome::Retry(Failure::pool(abandoned(timeout)));
        }
        if wire.unanswered().is_some_and(|n| n > 0) {
            wire.settled(Duration::from_millis(50)).await;
        }
        if wire.tx_status() == TxStatus::Idle {
            // The closure ended the transaction itself (a transaction
            // closure must not): say what became of it. The COMMIT or
            // ROLLBACK sent now is a no-op outside a transaction.
            let committed = wire.last_end() == LastEnd::Commit;
            let ended = if committed {
                until(deadline, tx.commit()).await
            } else {
                until(deadline, tx.rollback()).await
            };
            if matches!(ended, Ok(Ok(()))) {
                client.set_busy(false);
            }
            return if committed {
                Outcome::Done(value)
            } else {
                Outcome::Fail(Failure::pool(Error::new(
                    ErrorKind::RolledBack,
                    "the closure ended the transaction itself (ROLLBACK); nothing was committed",
                )))
            };
        }
        if wire.tx_status() == TxStatus::Failed {
            // A statement failed and the closure went on: COMMIT would only
            // roll back, and tokio-postgres would report that as success.
            let rolled_back = matches!(until(deadline, tx.rollback()).await, Ok(Ok(())));
            if rolled_back {
                client.set_busy(false);
            }
            return Outcome::Fail(Failure::pool(Error::new(
                ErrorKind::RolledBack,
                "a statement in the transaction failed and the closure returned Ok anyway \
                 (an error swallowed, or a savepoint not rolled back to); nothing was committed",
            )));
        }
        let before_commit = wire.progress();
        match until(deadline, tx.commit()).await {
            Ok(Ok(())) => {
                client.set_busy(false);
                Outcome::Done(value)
            }
            // The server answered COMMIT itself with an error that ends the
            // session (57P01 from `pg_terminate_backend`), before any
            // `CommandComplete`: PostgreSQL queues COMMIT's
            // `CommandComplete` right after the commit, with interrupts held
            // in between, so an error with none before it means the
            // transaction was rolled back. Nothing was applied: run it again.
            Ok(Err(e))
                if e.as_db_error().is_some()
                    && classify(&e).is_connection_level()
                    && !super::statement::completed_since(before_commit, &wire) =>
            {
                let fault = classify(&e);
                self.after_fault(attempts, generation, fault).await;
                let verdict = Error::postgres(kind_after_work(fault), fault, e)
                    .with_detail_prefix("the server ended the session before COMMIT took effect");
                Outcome::Retry(Failure::pool(verdict))
            }
            // The server answered COMMIT with an error of the caller's kind
            // (a deferred constraint, a serialization failure): the
            // transaction did not commit, and the connection is fine.
            Ok(Err(e)) if e.as_db_error().is_some() && !classify(&e).is_connection_level() => {
                client.set_busy(false);
                commit_refused(policy, e)
            }
            Ok(Err(e)) => {
                let fault = classify(&e);
                Outcome::Fail(Failure::pool(
                    Error::postgres(ErrorKind::CommitOutcomeUnknown, fault, e)
                        .with_detail_prefix("the connection failed after COMMIT was sent"),
                ))
            }
            Err(()) => Outcome::Fail(Failure::pool(Error::new(
                ErrorKind::CommitOutcomeUnknown,
                format!(
                    "no answer to COMMIT within the attempt timeout of {}",
                    timeout.map_or_else(String::new, fmt_duration)
                ),
            ))),
        }
    }
}

/// The server answered `COMMIT` with an error of the caller's kind (a
/// deferred constraint, a serialization failure): nothing was committed.
fn commit_refused<T, E>(policy: &RetryPolicy, e: tokio_postgres::Error) -> Outcome<T, E> {
    let retry = policy.retries_serialization_failures() && super::is_serialization_failure(&e);
    let err = Error::postgres(ErrorKind::Query, Fault::CallersError, e);
    if retry {
        Outcome::Retry(Failure::pool(err))
    } else {
        Outcome::Fail(Failure::pool(err))
    }
}
