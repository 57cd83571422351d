//! One attempt of a pipelined pool-level statement (`Pool::query`,
//! `Pool::execute`, …): on a lane shared with other callers' statements
//! (`crate::pipeline`), retried on another lane only when its failure
//! proves it did not run — the rule of `exec/statement.rs`, told per
//! statement by its place in the connection's request sequence
//! (`pipeline/lane.rs`).

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tracing::Instrument;

use super::refused::{Shared, refused};
use super::statement::{CONFIRM, after_connection_fault, unanswered, unconfirmed};
use super::{Attempts, Failure, Outcome, RETRY_TARGET, abandoned, call_span, standby_aware, until};
use crate::classify::{Fault, classify};
use crate::error::{Error, ErrorKind};
use crate::pipeline::{Lane, NotSent, Pick, PoolState, Slot, Submitted};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::statements::{Params, Rows};
use crate::wire::{Answers, TxStatus};
use crate::work_error::NoWork;

/// A statement and its parameters, lent to every attempt.
#[derive(Clone, Copy)]
pub(crate) struct Statement<'a> {
    pub(crate) sql: &'a str,
    /// Its parameters' types, when the caller gave them (`query_typed`).
    pub(crate) types: &'a [Type],
    pub(crate) params: Params<'a>,
}

impl Pool {
    /// The whole call: attempts on lanes within the pool's policy, the
    /// statement retried only when it provably did not run.
    pub(crate) async fn pipelined<R: Rows>(&self, stmt: Statement<'_>) -> Result<R::Output, Error> {
        refused(stmt.sql, Shared::Yes)?;
        let span = call_span("statement");
        async move {
            let policy = self.inner.retry;
            let mut attempts = Attempts::new(&policy)?;
            loop {
                let Some(slot) = self.next_slot(&mut attempts).await? else {
                    continue;
                };
                let outcome = match self.pipelined_once::<R>(&policy, slot, stmt).await {
                    Step::Again => {
                        // Nothing was sent: choose again, not an attempt.
                        attempts.n -= 1;
                        continue;
                    }
                    Step::Ended(outcome) => outcome,
                    // The slot is gone (the last one out closes the
                    // connection) before the refetch is waited for.
                    Step::Fault(f) => {
                        self.after_fault(&attempts, f.generation, f.fault).await;
                        after_connection_fault(f.fault, f.error, f.not_run)
                    }
                };
                if let Some(result) = self.after_attempt(&attempts, outcome).await {
                    return result;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// A slot on a lane for the next attempt. `Ok(None)`: opening a lane
    /// failed in a way worth retrying, and the backoff has been waited.
    async fn next_slot(&self, attempts: &mut Attempts) -> Result<Option<Slot>, Error> {
        loop {
            if self.inner.pool.is_closed() {
                return Err(Error::new(ErrorKind::Closed, ""));
            }
            let s = self.inner.pool.status();
            let pool = PoolState {
                max_size: s.max_size,
                size: s.size,
                available: s.available,
                waiting: s.waiting,
                generation: self.inner.refresher.current_id(),
            };
            let slot = match self.inner.lanes.pick(pool) {
                Pick::Join(slot) => {
                    attempts.n += 1;
                    slot
                }
                Pick::Closed => return Err(Error::new(ErrorKind::Closed, "")),
                Pick::Open(opening) => {
                    return Ok(self.next_client(attempts).await?.map(|c| opening.opened(c)));
                }
                Pick::Wait(waiting) => {
                    let wait = self.inner.timeouts.wait;
                    let until_at = wait.map_or(attempts.deadline, |w| {
                        attempts.deadline.min(crate::time::after(w))
                    });
                    match until(Some(until_at), waiting.slot()).await {
                        Ok(Some(slot)) => {
                            attempts.n += 1;
                            slot
                        }
                        Ok(None) => continue,
                        Err(()) => {
                            return Err(attempts.fail(
                                self.explained(Error::timeout(
                                    "waiting for a place on a shared connection",
                                    wait,
                                ))
                                .into_pool_full(),
                            ));
                        }
                    }
                }
            };
            if attempts.n > 1 {
                tracing::debug!(target: RETRY_TARGET, attempt = attempts.n, generation = slot.lane().generation(), "attempt on a fresh connection");
            }
            return Ok(Some(slot));
        }
    }

    /// One attempt.
    async fn pipelined_once<R: Rows>(
        &self,
        policy: &RetryPolicy,
        mut slot: Slot,
        stmt: Statement<'_>,
    ) -> Step<R::Output> {
        let (timeout, deadline) = self.attempt_bound(policy);
        let lane = &slot.lane().clone();
        let params = stmt.params;
        let sent = until(
            deadline,
            lane.submit(stmt.sql, stmt.types, move |c, prepared| {
                R::prepared(c, prepared, params)
            }),
        )
        .await;
        let Submitted {
            running,
            place,
            run,
        } = match sent {
            Ok(Ok(s)) => {
                slot.placed(s.place, deadline);
                s
            }
            Ok(Err(NotSent::Unsynced)) => return Step::Again,
            // Nothing of it ran: a prepare that failed, or refused
            // parameters.
            Ok(Err(NotSent::Error(e))) => return lane_failure(lane, e, true),
            Err(()) => {
                // The prepare got no answer: the connection is not
                // answering, for anyone on it.
                lane.kill();
                return Step::Ended(Outcome::Retry(Failure::pool(abandoned(timeout))));
            }
        };
        match until(deadline, running).await {
            Ok(Ok(v)) => {
                let left = deadline.map_or(CONFIRM, |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                });
                if lane.wire().answered(place, left).await == Answers::Ended {
                    tracing::debug!(target: "pgrotate::wire", place, fatal = ?lane.wire().fatal(), "a pipelined statement completed and its connection ended before ReadyForQuery");
                    return Step::Ended(Outcome::Fail(Failure::pool(unconfirmed())));
                }
                if matches!(
                    lane.wire().status_of(place),
                    TxStatus::InTransaction | TxStatus::Failed
                ) {
                    // A transaction block is open on the shared connection
                    // (a `BEGIN` sent as a pool-level statement, by this
                    // caller or another): this statement did not commit
                    // and a `COMMIT` may be on its way. Closed at once, so
                    // the server rolls back what was not committed.
                    lane.kill();
                    return Step::Ended(Outcome::Fail(Failure::pool(in_a_block())));
                }
                Step::Ended(Outcome::Done(v))
            }
            Ok(Err(e))
                if lane.wire().is_sealed() && e.code() == Some(&SqlState::QUERY_CANCELED) =>
            {
                // The pool is closing this lane (an attempt on it got no
                // answer in time) and cancelled what was queued on it:
                // this statement failed before it committed.
                Step::Ended(Outcome::Retry(Failure::pool(cancelled_on_close())))
            }
            Ok(Err(e)) => {
                let not_run = lane.proves_not_run(place, run, e.as_db_error().is_some());
                lane_failure(lane, e, not_run)
            }
            Err(()) => {
                lane.kill();
                if lane.proves_not_run(place, run, false) {
                    return Step::Ended(Outcome::Retry(Failure::pool(abandoned(timeout))));
                }
                Step::Ended(Outcome::Fail(Failure::pool(unanswered(timeout))))
            }
        }
    }
}

/// What one attempt came to.
enum Step<T> {
    /// Nothing was sent; choose a lane again.
    Again,
    Ended(Outcome<T, NoWork>),
    /// A fault of the connection: the refetch it may call for is waited
    /// for after the attempt has let go of its slot.
    Fault(LaneFault),
}

struct LaneFault {
    fault: Fault,
    generation: u64,
    error: tokio_postgres::Error,
    not_run: bool,
}

/// A statement on a lane failed with `e`: the caller's own error (the
/// lane goes on), or a fault of the connection (the lane takes no new
/// statement).
fn lane_failure<T>(lane: &Lane, e: tokio_postgres::Error, not_run: bool) -> Step<T> {
    let mut fault = classify(&e);
    if fault == Fault::ReadOnly {
        fault = standby_aware(fault, lane.wire());
    }
    if !fault.is_connection_level() {
        // The server refused the statement: returned as it is, never
        // retried.
        return Step::Ended(Outcome::Fail(Failure::pool(Error::postgres(
            ErrorKind::Query,
            fault,
            e,
        ))));
    }
    lane.break_off();
    Step::Fault(LaneFault {
        fault,
        generation: lane.generation(),
        error: e,
        not_run,
    })
}

/// A pipelined statement the pool cancelled while it closed the shared
/// connection under it.
fn cancelled_on_close() -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        "the shared connection was closed (a statement on it got no answer within its attempt \
         timeout) and the statement was cancelled before it committed",
    )
}

/// A pipelined statement answered inside a transaction block.
fn in_a_block() -> Error {
    Error::new(
        ErrorKind::OutcomeUnknown,
        "the statement ran inside a transaction block left open on a shared connection (a BEGIN \
         sent as a pool-level statement); the connection was closed, so the server rolls back \
         what was not committed; pool-level statements carry no session state: use \
         Pool::transaction for BEGIN ... COMMIT",
    )
}
