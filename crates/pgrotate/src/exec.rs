//! The retry executor behind `run` and `transaction`: one attempt on one
//! connection, what its failure means (retry on a fresh connection, fail,
//! or — once `COMMIT` was sent — an unknown outcome), and the commit-window
//! checks (a failed transaction is reported rolled back, never committed).
//!
//! Plain data and plain loops: no closure of the library wraps the
//! caller's, so a caller's `async move` closure keeps the whole future
//! `Send`.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::budget::Trigger;
use crate::classify::{Fault, classify};
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::pool::Pool;
use crate::refetch::Wait;
use crate::retry::{Backoff, RetryPolicy};
use crate::time::{fmt_duration, later};
use crate::wire::{LastEnd, TxStatus, Wire};

const RETRY_TARGET: &str = "pgrotate::retry";

/// What one attempt of `run` or `transaction` came to.
pub(crate) enum Outcome<T> {
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
    pub(crate) async fn run_once<T, F>(
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

    pub(crate) async fn transaction_once<T, F>(
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
                if wire.tx_status() == TxStatus::Idle && wire.last_end() == LastEnd::Commit {
                    // The closure ran COMMIT itself, then lost the
                    // connection: what it wrote before is committed, so it
                    // must not run again.
                    return Outcome::Fail(
                        Error::postgres(ErrorKind::CommitOutcomeUnknown, classify(&e), e)
                            .with_detail_prefix(
                                "the closure ran COMMIT itself and the connection failed after it; \
                                 its work up to that COMMIT is committed and is not run again",
                            ),
                    );
                }
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
            self.after_fault(attempts, generation, Fault::Disconnected)
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
                Outcome::Fail(Error::new(
                    ErrorKind::RolledBack,
                    "the closure ended the transaction itself (ROLLBACK); nothing was committed",
                ))
            };
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

    pub(crate) async fn lost_before_commit<T>(
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
    pub(crate) async fn after_fault(&self, attempts: &Attempts, generation: u64, fault: Fault) {
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
    pub(crate) fn attempt_timeout(&self, policy: &RetryPolicy) -> Option<Duration> {
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
    pub(crate) async fn next_client(
        &self,
        attempts: &mut Attempts,
    ) -> Result<Option<Client>, Error> {
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
                tracing::debug!(target: RETRY_TARGET, delay = %fmt_duration(delay), error = %format_args!("{e:#}"), "no server answers; trying again");
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
    pub(crate) async fn back_off(&self, attempts: &Attempts, err: Error) -> Result<(), Error> {
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
        tracing::debug!(target: RETRY_TARGET, attempt = attempts.n, delay = %fmt_duration(delay), error = %format_args!("{err:#}"), "retrying on a fresh connection");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Where a `run` or `transaction` call stands in its retry policy. Plain
/// data: the retry loops are plain loops, with no closure inside the
/// library, so a caller's `async move` closure keeps the whole future
/// `Send`.
pub(crate) struct Attempts {
    n: u32,
    /// Connects that found no server (not counted in `n`).
    outages: u32,
    max: u32,
    deadline: Instant,
    backoff: Backoff,
}

impl Attempts {
    pub(crate) fn new(policy: &RetryPolicy) -> Result<Attempts, Error> {
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
    pub(crate) fn fail(&self, e: Error) -> Error {
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
        (Fault::ReadOnly, Some(false)) => Fault::CallersError,
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
        Ok(Ok(row)) if !row.get::<_, bool>(0) => Fault::CallersError,
        _ => Fault::ReadOnly,
    }
}

fn callers_error<T>(policy: &RetryPolicy, e: tokio_postgres::Error) -> Outcome<T> {
    let retry = policy.retries_serialization_failures() && is_serialization_failure(&e);
    let err = Error::postgres(ErrorKind::Query, Fault::CallersError, e);
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
        Fault::Credentials => ErrorKind::CredentialsRejected,
        Fault::ReadOnly => ErrorKind::ReadOnlyServer,
        Fault::CallersError => ErrorKind::Query,
        Fault::DatabaseGone
        | Fault::Unreachable
        | Fault::TooManyConnections
        | Fault::PoolerUnavailable => ErrorKind::Connect,
        Fault::ServerGoingAway | Fault::Disconnected => ErrorKind::ConnectionLost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_FAULT: [Fault; 9] = [
        Fault::Credentials,
        Fault::DatabaseGone,
        Fault::ReadOnly,
        Fault::ServerGoingAway,
        Fault::Disconnected,
        Fault::Unreachable,
        Fault::TooManyConnections,
        Fault::PoolerUnavailable,
        Fault::CallersError,
    ];

    #[test]
    fn a_fault_the_pool_retried_ends_in_a_kind_that_agrees_with_it() {
        for fault in EVERY_FAULT {
            let kind = kind_after_work(fault);
            let e = Error::new(kind, "x");
            // Connection-level faults end retryable (later, on another
            // connection), except credentials that stayed rejected; the
            // caller's own error never is, and says it is the caller's.
            match fault {
                Fault::CallersError => {
                    assert!(e.is_callers_error() && !e.is_retryable(), "{fault:?}")
                }
                Fault::Credentials => {
                    assert!(e.is_credentials() && e.is_unavailable(), "{fault:?}")
                }
                _ => assert!(
                    e.is_retryable() && e.is_unavailable() && !e.is_callers_error(),
                    "{fault:?} ended as {kind:?}"
                ),
            }
        }
        assert_eq!(kind_after_work(Fault::ReadOnly), ErrorKind::ReadOnlyServer);
    }

    #[test]
    fn read_only_is_a_standby_only_when_the_server_says_it_is_one() {
        let unknown = Wire::unobserved();
        assert_eq!(standby_aware(Fault::ReadOnly, &unknown), Fault::ReadOnly);
        assert_eq!(
            standby_aware(Fault::Disconnected, &unknown),
            Fault::Disconnected
        );
    }

    #[test]
    fn an_abandoned_attempt_is_a_lost_connection_that_says_its_timeout() {
        let e = abandoned(Some(Duration::from_millis(1500)));
        assert_eq!(e.kind(), ErrorKind::ConnectionLost);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("1.5 s"), "{e}");
    }
}
