//! What the server says on a connection, read off its byte stream on the
//! way to tokio-postgres, at no extra round trip: the transaction status
//! every `ReadyForQuery` carries (idle, in a transaction, in a failed one),
//! how many requests are still unanswered, and `in_hot_standby` (reported by
//! PostgreSQL 14+ at startup and again when a standby is promoted).
//!
//! tokio-postgres keeps all three to itself. The pool owns the stream below
//! it (the TLS connector hands it over, and a plaintext connect is made by
//! the pool), so it can watch the protocol's framing go by: the frontend's
//! `Query`, `Sync` and `FunctionCall` each get exactly one `ReadyForQuery`.
//! This is how a connection is known to come back idle and clean, like
//! pgx's check of the transaction status on release.
//!
//! This file: the [`Wire`] state the pool reads; what each message does to
//! it in `messages` (including what a `FATAL` proves), the byte framing
//! that finds the messages in `parse`, the observed stream and the
//! observing TLS connector in `stream`.

mod messages;
mod parse;
mod stream;

pub(crate) use stream::{Observed, ObservingTls};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::signal::Signal;

/// The transaction status of the last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: every statement fails with 25P02
    /// until `ROLLBACK` (a `COMMIT` only rolls back).
    Failed,
    /// Not known: the stream was not observed (a plaintext fallback, a
    /// Unix socket) or no `ReadyForQuery` came yet.
    Unknown,
}

/// What the observer has seen on one connection. Shared between the
/// stream (inside tokio-postgres's connection task) and the pool.
#[derive(Debug)]
pub(crate) struct Wire {
    status: AtomicU8,
    /// 0 unknown, 1 off, 2 on.
    hot_standby: AtomicU8,
    /// The tag of the last `CommandComplete`: 0 another, 1 `COMMIT`,
    /// 2 `ROLLBACK`.
    last_end: AtomicU8,
    /// What each request sent still waits for, oldest first: the answers
    /// come in order (the startup counts as one).
    expected: Mutex<VecDeque<Expect>>,
    observed: AtomicBool,
    ready: Signal,
    /// Requests that run something (`Query`, `Execute`, `FunctionCall`)
    /// handed to the stream below, counted from their first bytes.
    runs_sent: AtomicU64,
    /// `CommandComplete` messages received.
    completions: AtomicU64,
    /// The stream ended (end of file, an error reading it, or the stream
    /// dropped with its connection task).
    ended: AtomicBool,
    /// Requests that get one `ReadyForQuery` (`Query`, `Sync`,
    /// `FunctionCall`; not the startup) handed to the stream below: the
    /// sequence a pipelined statement's place is counted in.
    requests_sent: AtomicU64,
    /// Of those, the ones answered (their `ReadyForQuery` came, or the
    /// server ignored them at a `COPY FROM STDIN`).
    answered: AtomicU64,
    /// A `CommandComplete` came for the request answered next: 0 none,
    /// `messages::DATA_COMPLETED` for a data statement (in the extended
    /// protocol its implicit transaction commits at the `Sync` after it), 1 for any
    /// other (it may have committed already).
    head_completed: AtomicU8,
    /// A `FATAL` (or `PANIC`) error came while the request at this place
    /// (1-based, `answered + 1`) was the oldest unanswered: 0 when none.
    /// The backend exits after it, so no later request ran.
    fatal_at: AtomicU64,
    /// Whether that request had its `CommandComplete` before the `FATAL`
    /// and may have committed (see [`Wire::error`]).
    fatal_after_complete: AtomicBool,
    /// No more writes ([`Wire::seal`]); held by every write, so a write
    /// under way finishes (and is counted) before a seal returns.
    sealed: Mutex<bool>,
    /// The transaction status each recent answer carried, by its place
    /// modulo [`STATUSES`]: whether a pipelined statement ended its
    /// implicit transaction or ran inside a block another one opened.
    statuses: Box<[AtomicU8]>,
}

/// How many answers' statuses a wire keeps: twice the deepest pipeline.
const STATUSES: usize = 2048;

/// Where a connection ended, for a pipelined statement to tell whether it
/// ran: [`Wire::fatal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fatal {
    /// The place of the request the server was on (1-based).
    pub(crate) at: u64,
    /// Whether that request's statement had completed and its commit may
    /// have happened (a data statement's `CommandComplete` followed by a
    /// `FATAL` 57P01 proves it did not: [`Wire::error`]).
    pub(crate) after_complete: bool,
}

/// What came of waiting for the answers of the requests sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answers {
    /// Every request has its `ReadyForQuery`.
    All,
    /// The stream ended first.
    Ended,
    /// Neither within the time given, or the stream is not observed.
    Unknown,
}

/// How far a connection's traffic had come, to compare before and after a
/// statement: [`Wire::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Requests that run something, sent.
    pub(crate) runs_sent: u64,
    /// `CommandComplete` messages received.
    pub(crate) completions: u64,
}

/// A request that gets one `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Startup,
    Query,
    /// A `Sync`; `after_execute` when it follows an `Execute` directly —
    /// the one the server ignores if that `Execute` starts a `COPY FROM
    /// STDIN` (tokio-postgres sends another after `CopyDone`).
    /// `closes_only` when nothing since the previous `Sync` was a
    /// `Parse`, `Bind` or `Execute` (tokio-postgres closing a statement it
    /// dropped: it changes nothing a later caller of the connection sees).
    Sync {
        after_execute: bool,
        closes_only: bool,
    },
    FunctionCall,
}

/// How a transaction ended, by the last `CommandComplete` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastEnd {
    Commit,
    Rollback,
    Other,
}

impl Default for Wire {
    fn default() -> Wire {
        Wire {
            status: AtomicU8::new(0),
            hot_standby: AtomicU8::new(0),
            last_end: AtomicU8::new(0),
            expected: Mutex::new(VecDeque::from([Expect::Startup])),
            observed: AtomicBool::new(false),
            ready: Signal::default(),
            runs_sent: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            requests_sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            head_completed: AtomicU8::new(0),
            fatal_at: AtomicU64::new(0),
            fatal_after_complete: AtomicBool::new(false),
            sealed: Mutex::new(false),
            statuses: (0..STATUSES).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl Wire {
    /// A wire for a stream nobody observes: every answer is "unknown".
    pub(crate) fn unobserved() -> Arc<Wire> {
        Arc::new(Wire::default())
    }

    pub(crate) fn tx_status(&self) -> TxStatus {
        if !self.observed.load(Ordering::Acquire) {
            return TxStatus::Unknown;
        }
        match self.status.load(Ordering::Acquire) {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Unknown,
        }
    }

    /// Stops every further write to the stream; reads go on, so answers
    /// still come. Once it returns, what was sent is final: a write under
    /// way has finished and been counted. Whether this call sealed it
    /// (`false`: it was sealed already).
    pub(crate) fn seal(&self) -> bool {
        !std::mem::replace(&mut *self.write_gate(), true)
    }

    /// Whether [`Wire::seal`] was called.
    pub(crate) fn is_sealed(&self) -> bool {
        *self.write_gate()
    }

    /// The seal's lock, `true` once sealed: a write holds it while it
    /// writes and counts.
    pub(super) fn write_gate(&self) -> std::sync::MutexGuard<'_, bool> {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests still waiting for their answer, if the stream is observed.
    pub(crate) fn unanswered(&self) -> Option<i64> {
        self.observed
            .load(Ordering::Acquire)
            .then(|| self.pending())
    }

    fn pending(&self) -> i64 {
        self.queue().len() as i64
    }

    /// Requests still waiting for their answer that may do work — all but
    /// statement closes — if the stream is observed.
    pub(crate) fn unanswered_work(&self) -> Option<i64> {
        self.observed.load(Ordering::Acquire).then(|| {
            self.queue()
                .iter()
                .filter(|e| {
                    !matches!(
                        e,
                        Expect::Sync {
                            closes_only: true,
                            ..
                        }
                    )
                })
                .count() as i64
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How far the traffic has come, if the stream is observed.
    pub(crate) fn progress(&self) -> Option<Progress> {
        self.observed.load(Ordering::Acquire).then(|| Progress {
            runs_sent: self.runs_sent.load(Ordering::Acquire),
            completions: self.completions.load(Ordering::Acquire),
        })
    }

    /// Requests sent and requests answered, counted in one sequence (see
    /// [`Wire::requests_sent`]), if the stream is observed.
    pub(crate) fn requests(&self) -> Option<(u64, u64)> {
        self.observed.load(Ordering::Acquire).then(|| {
            (
                self.requests_sent.load(Ordering::Acquire),
                self.answered.load(Ordering::Acquire),
            )
        })
    }

    /// Whether a pipelined statement that failed proves it did not run,
    /// from its place among the requests (1-based) and among the messages
    /// that run something, and whether the server's own error was its
    /// answer (`db_error`): its `Execute` was never written; or it failed
    /// before its `CommandComplete` (the server aborts the statement's
    /// implicit transaction, which the extended protocol commits only at
    /// the `Sync` after it); or it was behind the request a `FATAL` came on
    /// (the backend exits after it), or that very request with no
    /// `CommandComplete` yet. Unobserved: never.
    pub(crate) fn proves_not_run(&self, place: u64, run: u64, db_error: bool) -> bool {
        let Some(progress) = self.progress() else {
            return false;
        };
        if progress.runs_sent < run || db_error {
            return true;
        }
        match self.fatal() {
            Some(f) => place > f.at || (place == f.at && !f.after_complete),
            None => false,
        }
    }

    /// Where a `FATAL` error ended the connection, if one did.
    pub(crate) fn fatal(&self) -> Option<Fatal> {
        match self.fatal_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(Fatal {
                at,
                after_complete: self.fatal_after_complete.load(Ordering::Acquire),
            }),
        }
    }

    /// Whether the request at `place` (1-based, in the sequence of
    /// [`Wire::requests`]) needs no more waiting for: answered, the stream
    /// ended, or not observed (nothing to wait on).
    pub(crate) fn is_answered(&self, place: u64) -> bool {
        !self.observed.load(Ordering::Acquire)
            || self.ended.load(Ordering::Acquire)
            || self.answered.load(Ordering::Acquire) >= place
    }

    /// Waits until the request at `place` (1-based, in the sequence of
    /// [`Wire::requests`]) has its answer (`All`) or the stream ends first
    /// (`Ended`), at most `within`.
    pub(crate) async fn answered(&self, place: u64, within: Duration) -> Answers {
        if !self.observed.load(Ordering::Acquire) {
            return Answers::Unknown;
        }
        self.until_answered(within, || self.answered.load(Ordering::Acquire) >= place)
            .await
    }

    /// Waits until `done` holds (`All`) or the stream ends first (`Ended`),
    /// at most `within`; `done` is asked again at every answer.
    async fn until_answered(&self, within: Duration, done: impl Fn() -> bool) -> Answers {
        let wait = self.ready.until(|| {
            if done() {
                Some(Answers::All)
            } else if self.ended.load(Ordering::Acquire) {
                Some(Answers::Ended)
            } else {
                None
            }
        });
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or(Answers::Unknown)
    }

    /// Whether the server is a hot standby, when it said (PostgreSQL 14+).
    pub(crate) fn in_hot_standby(&self) -> Option<bool> {
        match self.hot_standby.load(Ordering::Acquire) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Waits until every request sent has its answer, at most `within`.
    /// The answer to the last statement usually arrives in the same read
    /// as its `ReadyForQuery`; this covers the rest.
    pub(crate) async fn settled(&self, within: Duration) -> bool {
        let wait = self.ready.until(|| (self.pending() == 0).then_some(()));
        self.unanswered().is_some() && tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Waits until every request sent has its answer or the stream ends,
    /// at most `within`.
    pub(crate) async fn answers(&self, within: Duration) -> Answers {
        if self.unanswered().is_none() {
            return Answers::Unknown;
        }
        self.until_answered(within, || self.pending() == 0).await
    }

    /// What the last `CommandComplete` said, when it ended a transaction.
    pub(crate) fn last_end(&self) -> LastEnd {
        match self.last_end.load(Ordering::Acquire) {
            1 => LastEnd::Commit,
            2 => LastEnd::Rollback,
            _ => LastEnd::Other,
        }
    }

    /// The transaction status the answer to the request at `place` carried,
    /// if it came and is still known.
    pub(crate) fn status_of(&self, place: u64) -> TxStatus {
        let answered = self.answered.load(Ordering::Acquire);
        if place == 0 || place > answered || answered - place >= STATUSES as u64 {
            return TxStatus::Unknown;
        }
        match self.statuses[(place % STATUSES as u64) as usize].load(Ordering::Acquire) {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unobserved_wire_knows_nothing() {
        let wire = Wire::unobserved();
        assert_eq!(wire.tx_status(), TxStatus::Unknown);
        assert_eq!(wire.unanswered(), None);
        assert_eq!(wire.in_hot_standby(), None);
    }
}
