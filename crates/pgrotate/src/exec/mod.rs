//! The retry executor behind `run`, `transaction` and the pool-level
//! statements: one attempt on one connection ([`run`], [`transaction`],
//! [`statement`]), what its failure means (retry on a fresh connection,
//! fail, or — once `COMMIT` or a statement was sent — an unknown outcome),
//! and here what they share: the attempts of a call, the next connection,
//! the backoff.
//!
//! Plain data and plain loops: no closure of the library wraps the
//! caller's, so a caller's `async move` closure keeps the whole future
//! `Send`.

mod pipelined;
mod refused;
mod run;
pub(crate) mod statement;
mod transaction;

pub(crate) use pipelined::Statement;
pub use transaction::TransactionOptions;

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
use crate::wire::Wire;
use crate::work_error::ClosureError;

const RETRY_TARGET: &str = "pgrotate::retry";

/// What one attempt came to.
pub(crate) enum Outcome<T, E> {
    Done(T),
    Fail(Failure<E>),
    Retry(Failure<E>),
}

/// A failed attempt: the pool's reading of it, and the closure's own error
/// when the closure failed (returned to the caller as it is).
pub(crate) struct Failure<E> {
    pub(crate) err: Error,
    pub(crate) work: Option<E>,
}

impl<E> Failure<E> {
    pub(crate) fn pool(err: Error) -> Failure<E> {
        Failure { err, work: None }
    }

    pub(crate) fn work(err: Error, work: E) -> Failure<E> {
        Failure {
            err,
            work: Some(work),
        }
    }
}

impl<E: ClosureError> Failure<E> {
    /// What the call returns.
    pub(crate) fn finish(self) -> E::Returned {
        match self.work {
            Some(w) => w.returned(self.err),
            None => E::from_pool(self.err),
        }
    }
}

/// The span of one call (`pgrotate::call`; `kind`: `run`, `transaction`,
/// `statement`), around all its attempts and their retry events.
///
/// `Span::none()` while no tracing subscriber has been set: a span made
/// by the macro then keeps its metadata for the `log` crate (tracing's
/// `log` feature, which a dependency such as actix-web turns on) and logs
/// itself on creation and on every poll of the call. With a subscriber,
/// the subscriber decides, span filters included; without one, the
/// span's own records do not reach `log` (the events inside it do).
fn call_span(kind: &'static str) -> tracing::Span {
    if tracing::dispatcher::has_been_set() {
        tracing::debug_span!(target: "pgrotate::call", "call", kind)
    } else {
        tracing::Span::none()
    }
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

    /// An attempt's timeout — the policy's, or in pooler mode the pooler
    /// query timeout (PgBouncer can hold a query for minutes) — and the
    /// instant it runs out for an attempt starting now.
    pub(crate) fn attempt_bound(
        &self,
        policy: &RetryPolicy,
    ) -> (Option<Duration>, Option<Instant>) {
        let timeout = policy
            .max_attempt_duration()
            .or(self.inner.pooler_query_timeout);
        (timeout, timeout.map(crate::time::after))
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
            Ok(client) => {
                // Inside the call's span (`pgrotate::call`): which attempt
                // runs on which generation.
                if attempts.n > 1 {
                    tracing::debug!(target: RETRY_TARGET, attempt = attempts.n, generation = client.generation(), "attempt on a fresh connection");
                }
                Ok(Some(client))
            }
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
            // Waited the whole wait timeout for a slot: waiting again would
            // wait longer than the caller allowed.
            Err(e) if e.is_pool_full() => Err(attempts.fail(e)),
            Err(e) if e.is_retryable() => {
                if self.back_off(attempts, &e).await {
                    Ok(None)
                } else {
                    Err(attempts.ended(e.with_attempts(attempts.n)))
                }
            }
            Err(e) => Err(attempts.fail(e)),
        }
    }

    /// Waits before the next attempt (`true`), or says the policy allows no
    /// more after `err` (`false`).
    pub(crate) async fn back_off(&self, attempts: &Attempts, err: &Error) -> bool {
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
            return false;
        }
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        crate::metrics::retry(err.fault());
        tracing::debug!(target: RETRY_TARGET, attempt = attempts.n, fault = ?err.fault(), delay = %fmt_duration(delay), error = %format_args!("{err:#}"), "retrying on a fresh connection");
        tokio::time::sleep(delay).await;
        true
    }

    /// After an attempt: the call's result, or `None` once the backoff
    /// before the next attempt has been waited. The end of every retry
    /// loop (`run`, `transaction`, the statements).
    pub(crate) async fn after_attempt<T, E: ClosureError>(
        &self,
        attempts: &Attempts,
        outcome: Outcome<T, E>,
    ) -> Option<Result<T, E::Returned>> {
        let failure = match outcome {
            Outcome::Done(v) => return Some(Ok(attempts.done(v))),
            Outcome::Fail(f) => return Some(Err(attempts.failed(f).finish())),
            Outcome::Retry(f) => f,
        };
        match self.retry_or_finish(attempts, failure).await {
            Ok(()) => None,
            Err(f) => Some(Err(f.finish())),
        }
    }

    /// After a failed attempt: waits for the next one (`Ok`), or the
    /// failure the call returns, with the attempts counted.
    pub(crate) async fn retry_or_finish<E>(
        &self,
        attempts: &Attempts,
        mut failure: Failure<E>,
    ) -> Result<(), Failure<E>> {
        if self.back_off(attempts, &failure.err).await {
            Ok(())
        } else {
            failure.err = attempts.ended(failure.err.with_attempts(attempts.n));
            Err(failure)
        }
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
    /// Counted once when the call ends (`pgrotate_calls_total`).
    call: crate::metrics::Call,
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
            call: crate::metrics::Call::default(),
        })
    }

    /// A final error, with the attempt count when there was more than one.
    pub(crate) fn fail(&self, e: Error) -> Error {
        self.ended(if self.n > 1 {
            e.with_attempts(self.n)
        } else {
            e
        })
    }

    /// The value the call ends with, counted in its metrics.
    pub(crate) fn done<T>(&self, v: T) -> T {
        self.call.succeeded();
        v
    }

    /// The error the call ends with, counted in its metrics.
    fn ended(&self, e: Error) -> Error {
        self.call.failed(&e);
        e
    }

    /// [`Attempts::fail`] for an attempt's failure.
    pub(crate) fn failed<E>(&self, mut f: Failure<E>) -> Failure<E> {
        f.err = self.fail(f.err);
        f
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

/// The caller's own error: failed, except a serialization failure or a
/// deadlock when the policy retries those.
fn callers_error<T, E: ClosureError>(policy: &RetryPolicy, e: E) -> Outcome<T, E> {
    let pg = e.postgres();
    let retry = policy.retries_serialization_failures() && pg.is_some_and(is_serialization_failure);
    let err = match pg {
        Some(pg) => Error::verdict(ErrorKind::Query, Fault::CallersError, pg),
        None => Error::new(ErrorKind::Query, "the closure returned an error of its own"),
    };
    if retry {
        Outcome::Retry(Failure::work(err, e))
    } else {
        Outcome::Fail(Failure::work(err, e))
    }
}

/// How a closure's error reads in the fault table: the class of the
/// database error inside, or the caller's own.
fn fault_of(pg: Option<&tokio_postgres::Error>) -> Fault {
    pg.map_or(Fault::CallersError, classify)
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

pub(crate) fn kind_after_work(fault: Fault) -> ErrorKind {
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
