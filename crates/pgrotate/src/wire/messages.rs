//! What each backend and frontend message does to a [`Wire`]: a request
//! sent is expected, an answer pops it, and what a `CommandComplete`, an
//! `ErrorResponse` or a `ParameterStatus` tells is kept (the framing that
//! finds the messages is in `parse`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::{Expect, STATUSES, Wire};

/// `head_completed`: a data statement completed (one of [`DATA_TAGS`]);
/// in the extended protocol it commits at the `Sync` after it.
const DATA_COMPLETED: u8 = 2;

/// The `CommandComplete` tags of statements that never commit before the
/// `Sync` after their `Execute` (PostgreSQL commits at `Execute` only a
/// transaction statement or one refused inside a block, e.g. `VACUUM`).
const DATA_TAGS: [&[u8]; 5] = [b"INSERT", b"UPDATE", b"DELETE", b"SELECT", b"MERGE"];

/// SQLSTATE 57P01 (`admin_shutdown`: `pg_terminate_backend`, a fast
/// shutdown): raised only where the backend checks for interrupts.
const ADMIN_SHUTDOWN: &[u8] = b"57P01";

impl Wire {
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    pub(super) fn expect(&self, e: Expect) {
        let mut q = self.queue();
        q.push_back(e);
        if e != Expect::Startup {
            self.requests_sent.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The oldest request is answered, with `status` (0: none said).
    pub(super) fn pop(q: &mut VecDeque<Expect>, wire: &Wire, status: u8) {
        if let Some(e) = q.pop_front()
            && e != Expect::Startup
        {
            wire.head_completed.store(0, Ordering::Release);
            let place = wire.answered.load(Ordering::Acquire) + 1;
            wire.statuses[(place % STATUSES as u64) as usize].store(status, Ordering::Release);
            wire.answered.store(place, Ordering::Release);
        }
    }

    pub(super) fn ready_for_query(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        Wire::pop(&mut self.queue(), self, status);
        self.ready.notify_waiters();
    }

    /// An `ErrorResponse` of this severity (its `V` field, else `S`) and
    /// SQLSTATE.
    ///
    /// A `FATAL` 57P01 after a data statement's `CommandComplete` and
    /// before its `ReadyForQuery` proves the statement did not commit: the
    /// backend raises it only where it checks for interrupts, and between
    /// an `Execute` and the `ReadyForQuery` of its `Sync` that is the check
    /// after reading the `Sync` — before the commit, which holds interrupts
    /// off until it is done and the `ReadyForQuery` is queued behind it
    /// (postgres.c, `PostgresMain`, step 5; xact.c, `CommitTransaction`).
    pub(super) fn error(&self, severity: &[u8], code: &[u8]) {
        if matches!(severity, b"FATAL" | b"PANIC") && self.fatal_at.load(Ordering::Acquire) == 0 {
            let q = self.queue();
            // The request being answered is the one the completion was for
            // (a `ReadyForQuery` in between would have cleared it): its
            // commit waits for the `Sync` if it is an `Execute`'s.
            let at_sync = matches!(
                q.front(),
                Some(Expect::Sync {
                    after_execute: true,
                    ..
                })
            );
            let may_have_committed = match self.head_completed.load(Ordering::Acquire) {
                0 => false,
                DATA_COMPLETED if at_sync => code != ADMIN_SHUTDOWN || severity != b"FATAL",
                _ => true,
            };
            self.fatal_after_complete
                .store(may_have_committed, Ordering::Release);
            self.fatal_at
                .store(self.answered.load(Ordering::Acquire) + 1, Ordering::Release);
        }
    }

    /// `CopyInResponse`: if the request being answered is an `Execute`'s
    /// `Sync`, the server ignores that `Sync` (it is in copy-in mode); the
    /// one after `CopyDone` gets the `ReadyForQuery`.
    pub(super) fn copy_in(&self) {
        let mut q = self.queue();
        if matches!(
            q.front(),
            Some(Expect::Sync {
                after_execute: true,
                ..
            })
        ) {
            Wire::pop(&mut q, self, 0);
        }
    }

    pub(super) fn command_complete(&self, tag: &[u8]) {
        self.completions.fetch_add(1, Ordering::AcqRel);
        let word = tag
            .split(|b| *b == b' ' || *b == 0)
            .next()
            .unwrap_or_default();
        self.head_completed.store(
            if DATA_TAGS.contains(&word) {
                DATA_COMPLETED
            } else {
                1
            },
            Ordering::Release,
        );
        let end = match tag.split(|b| *b == 0).next().unwrap_or_default() {
            b"COMMIT" => 1,
            b"ROLLBACK" => 2,
            _ => 0,
        };
        self.last_end.store(end, Ordering::Release);
    }

    pub(super) fn parameter(&self, name: &[u8], value: &[u8]) {
        if name == b"in_hot_standby" {
            let v = if value == b"on" { 2 } else { 1 };
            self.hot_standby.store(v, Ordering::Release);
        }
    }
}
