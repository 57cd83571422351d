//! One attempt of a pool-level statement (`Pool::query`, `Pool::execute`,
//! …): retried on a fresh connection only when the failure proves the
//! statement did not run.
//!
//! What proves it (PostgreSQL's `postgres.c` and `xact.c`, and the wire
//! the pool observes):
//!
//! - **Nothing that runs was sent.** No `Query` or `Execute` message of
//!   this call reached the stream (the connect failed, the connection was
//!   found closed, the prepare failed): nothing ran.
//! - **The server answered with an error before any `CommandComplete`.**
//!   A statement that fails (`ErrorResponse`, 57P01 from
//!   `pg_terminate_backend` included) aborts its implicit transaction. The
//!   simple protocol commits before it queues `CommandComplete`, with
//!   interrupts held in between; the extended protocol commits at `Sync`,
//!   after `CommandComplete`. Either way an error with no
//!   `CommandComplete` before it means nothing was committed.
//!
//! Anything else after the statement was sent — the socket closed with no
//! answer, an error after a `CommandComplete` — is
//! [`ErrorKind::OutcomeUnknown`], never retried. And because
//! tokio-postgres returns as soon as `CommandComplete` arrives while the
//! extended protocol commits only at `Sync`, a success is returned only
//! once the server's `ReadyForQuery` confirmed the end of the statement's
//! transaction: a connection lost in between is `OutcomeUnknown` too (the
//! server may have rolled it back).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tracing::Instrument;

use super::refused::{Shared, refused};
use super::{
    Attempts, Failure, Outcome, abandoned, call_span, kind_after_work, read_only_or_standby, until,
};
use crate::classify::{Fault, classify};
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::time::fmt_duration;
use crate::wire::{Answers, Progress, Wire};
use crate::work_error::NoWork;

/// How long a statement's success waits for its `ReadyForQuery` when the
/// call has no attempt timeout (it usually arrives in the same read as
/// `CommandComplete`; a synchronous standby can delay it).
pub(super) const CONFIRM: Duration = Duration::from_secs(30);

/// One statement, as a pool-level call runs it on a connection: plain
/// data and one method, rather than a closure — an async closure that
/// borrows the call's arguments would make the call's future not `Send`
/// (the compiler cannot prove it for every lifetime).
pub(crate) trait Call: Sync {
    /// What the statement returns.
    type Output;

    /// The SQL, as the caller gave it.
    fn sql(&self) -> &str;

    /// What must happen before the statement, that runs nothing of it
    /// (learning its parameter types in pooler mode): a failure here is
    /// retried like a failed connect.
    fn setup<'a>(
        &'a self,
        _client: &'a ClientWrapper,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a {
        async { Ok(()) }
    }

    /// Runs the statement on `client`.
    fn call<'a>(
        &'a self,
        client: &'a ClientWrapper,
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;
}

/// Whether a request that runs something was sent since `before`
/// (unknown: sent).
fn sent_since(before: Option<Progress>, wire: &Wire) -> bool {
    match (before, wire.progress()) {
        (Some(b), Some(now)) => now.runs_sent > b.runs_sent,
        _ => true,
    }
}

/// Whether a `CommandComplete` arrived since `before` (unknown: one did).
pub(super) fn completed_since(before: Option<Progress>, wire: &Wire) -> bool {
    match (before, wire.progress()) {
        (Some(b), Some(now)) => now.completions > b.completions,
        _ => true,
    }
}

/// Whether the failure of a statement proves it did not run: nothing of
/// it was sent; or the server's error answered it before it completed, or
/// after it completed and before it could commit (a `FATAL` 57P01 between
/// a data statement's `CommandComplete` and its `ReadyForQuery`:
/// [`Wire::fatal`]).
fn proves_not_run(before: Option<Progress>, wire: &Wire, e: &tokio_postgres::Error) -> bool {
    !sent_since(before, wire)
        || (e.as_db_error().is_some()
            && (!completed_since(before, wire) || wire.fatal().is_some_and(|f| !f.after_complete)))
}

impl Pool {
    /// The whole call: attempts on fresh connections within the pool's
    /// policy, a statement retried only when it provably did not run.
    pub(crate) async fn statement<C: Call>(&self, call: &C) -> Result<C::Output, Error> {
        let (value, client) = self.statement_loop(call, false).await?;
        drop(client);
        Ok(value)
    }

    /// [`Pool::statement`] for a call whose rows the caller reads after it
    /// returns (`query_raw`): the connection comes along, still busy, and
    /// goes back to the pool once the rows are read to their end.
    pub(crate) async fn statement_streaming<C: Call>(
        &self,
        call: &C,
    ) -> Result<(C::Output, Client), Error> {
        self.statement_loop(call, true).await
    }

    async fn statement_loop<C: Call>(
        &self,
        call: &C,
        streaming: bool,
    ) -> Result<(C::Output, Client), Error> {
        refused(call.sql(), Shared::No)?;
        let span = call_span("statement");
        async move {
            let policy = self.inner.retry;
            let mut attempts = Attempts::new(&policy)?;
            loop {
                let Some(client) = self.next_client(&mut attempts).await? else {
                    continue;
                };
                let outcome = self
                    .statement_once(&policy, &attempts, call, client, streaming)
                    .await;
                if let Some(result) = self.after_attempt(&attempts, outcome).await {
                    return result;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn statement_once<C: Call>(
        &self,
        policy: &RetryPolicy,
        attempts: &Attempts,
        call: &C,
        mut client: Client,
        streaming: bool,
    ) -> Outcome<(C::Output, Client), NoWork> {
        let (timeout, deadline) = self.attempt_bound(policy);
        let wire = client.wire();
        client.set_busy(true);
        match until(deadline, call.setup(&client)).await {
            Ok(Ok(())) => {}
            Err(()) => return Outcome::Retry(Failure::pool(abandoned(timeout))),
            // Nothing of the statement ran yet.
            Ok(Err(e)) => return self.statement_failure(attempts, client, e, true).await,
        }
        let before = wire.progress();
        let e = match until(deadline, call.call(&client)).await {
            Err(()) if !sent_since(before, &wire) => {
                return Outcome::Retry(Failure::pool(abandoned(timeout)));
            }
            Err(()) => {
                return Outcome::Fail(Failure::pool(unanswered(timeout)));
            }
            Ok(Ok(v)) if streaming => return Outcome::Done((v, client)),
            Ok(Ok(v)) => {
                let left = deadline.map_or(CONFIRM, |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                });
                if wire.answers(left).await == Answers::Ended {
                    return Outcome::Fail(Failure::pool(unconfirmed()));
                }
                client.set_busy(false);
                return Outcome::Done((v, client));
            }
            Ok(Err(e)) => e,
        };
        let not_run = proves_not_run(before, &wire, &e);
        self.statement_failure(attempts, client, e, not_run).await
    }

    /// A statement (or what it needed first) failed with `e` on `client`:
    /// the caller's own error, or a fault of the connection — retried on a
    /// fresh one when `not_run`, otherwise an unknown outcome.
    async fn statement_failure<T>(
        &self,
        attempts: &Attempts,
        mut client: Client,
        e: tokio_postgres::Error,
        not_run: bool,
    ) -> Outcome<T, NoWork> {
        let mut fault = classify(&e);
        if fault == Fault::ReadOnly {
            fault = read_only_or_standby(&client).await;
        }
        if !fault.is_connection_level() {
            // The caller's own error (the server refused the statement):
            // returned as it is, never retried.
            client.set_busy(false);
            return Outcome::Fail(Failure::pool(Error::postgres(ErrorKind::Query, fault, e)));
        }
        let generation = client.generation();
        drop(client);
        self.after_fault(attempts, generation, fault).await;
        after_connection_fault(fault, e, not_run)
    }
}

/// A statement sent that got no answer within the attempt timeout.
pub(super) fn unanswered(timeout: Option<Duration>) -> Error {
    Error::new(
        ErrorKind::OutcomeUnknown,
        format!(
            "no answer within the attempt timeout of {}; the statement was sent and may have \
             run; the connection was closed",
            timeout.map_or_else(String::new, fmt_duration)
        ),
    )
}

/// A statement that completed on a connection lost before its
/// `ReadyForQuery`.
pub(super) fn unconfirmed() -> Error {
    Error::new(
        ErrorKind::OutcomeUnknown,
        "the connection was lost after the statement completed and before the server confirmed \
         the end of its transaction; it may have been rolled back",
    )
}

/// After a fault of the connection a statement was on: retried when it
/// provably did not run, otherwise [`ErrorKind::OutcomeUnknown`].
pub(super) fn after_connection_fault<T>(
    fault: Fault,
    e: tokio_postgres::Error,
    not_run: bool,
) -> Outcome<T, NoWork> {
    if not_run {
        Outcome::Retry(Failure::pool(Error::postgres(
            kind_after_work(fault),
            fault,
            e,
        )))
    } else {
        Outcome::Fail(Failure::pool(
            Error::postgres(ErrorKind::OutcomeUnknown, fault, e).with_detail_prefix(
                "the connection failed after the statement was sent, with nothing to \
                 prove it did not run",
            ),
        ))
    }
}
