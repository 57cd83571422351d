//! Refetching the URL: a caller whose generation failed asks for a newer
//! one; the fetch runs as a task of its own, single-flighted, spending the
//! source's budget ([`crate::budget`]), bounded by the fetch timeout, and
//! its outcome is recorded for every caller that joined it.
//!
//! - **Single flight.** However many callers fail at once, one fetch runs;
//!   the others join it and share its outcome.
//! - **Budgeted.** A failure goes out at once while a token is left; the
//!   watch and outages spend only tokens above the reserve. A watch poll
//!   under way is dropped for a failure, never waited for.
//! - **Bounded and owned.** Callers only wait for the fetch (each within
//!   its own deadline), so a caller that gives up cancels nothing and books
//!   nothing. `close()` and drop abort it; `drain()` never waits for it; a
//!   source that panics fails that fetch only.
//! - **Time, not a count.** While the source keeps returning the URL that
//!   failed, a failure-driven caller refetches on the budget's schedule
//!   until its deadline, then gets an error that says when the next
//!   request is allowed.
//!
//! This module: the coordination (a caller's [`Wait`], `refresh_after` and
//! its `step` under the lock, `refresh_now`, the watch's poll); the fetch
//! task itself (spawning it, the guard for a source that panics, recording
//! what it brought) is in `fetch`.

mod fetch;

pub(crate) use fetch::{fetch_bounded, unusable_url};

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Trigger;
use crate::error::{Error, ErrorKind};
use crate::generation::{Generation, Refresher};
use crate::time::fmt_duration;

/// Tracing target of refresh events.
const TARGET: &str = "pgrotate::refresh";

/// How long a caller of [`Refresher::refresh_after`] stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until a newer generation exists or the deadline passes: fetch again
    /// on the budget's schedule while the source brings nothing new.
    Deadline,
    /// One fetch, waiting for the budget until the deadline.
    Once,
    /// One fetch if one can go out now (or is under way); never waits for
    /// the budget.
    OnceNow,
}

/// Why a refetch brought no newer generation in time.
#[derive(Debug, Clone)]
pub(crate) struct RefreshFailed {
    /// The source's own error, when the last fetch failed.
    pub(crate) source_error: Option<Error>,
    /// What the caller is told: the source, and when it may be asked again.
    pub(crate) note: String,
    pub(crate) closed: bool,
    /// The fetch itself failed (rather than the budget or the deadline
    /// running out).
    pub(crate) fetch_failed: bool,
}

impl RefreshFailed {
    /// The error to hand a caller whose work failed with `failed`.
    pub(crate) fn into_error(self, failed: Error) -> Error {
        if self.closed {
            return Error::new(ErrorKind::Closed, "");
        }
        match self.source_error {
            Some(e) if !e.is_retryable() => e,
            _ => failed.with_detail_suffix(&self.note),
        }
    }
}

impl Refresher {
    /// Generation `failed` did not work (`why`). Returns a newer generation
    /// once one exists (a fetch brought it, or the watch had one pending);
    /// with [`Wait::Once`] / [`Wait::OnceNow`] the current one when one
    /// fetch brought nothing new. Never waits past `deadline`.
    pub(crate) async fn refresh_after(
        &self,
        failed: u64,
        trigger: Trigger,
        why: &'static str,
        wait: Wait,
        deadline: Instant,
    ) -> Result<Arc<Generation>, RefreshFailed> {
        let mut said_why = false;
        loop {
            let step = self.step(failed, trigger, why, wait)?;
            match step {
                Step::Done(g) => return Ok(g),
                Step::Join(seen) => {
                    let mut rx = self.done.subscribe();
                    if tokio::time::timeout_at(deadline, rx.wait_for(|&n| n > seen))
                        .await
                        .is_err()
                    {
                        return Err(self.gave_up(format!(
                            "{} had not answered by this call's deadline (fetch timeout {})",
                            self.source_name,
                            fmt_duration(self.config.fetch_timeout)
                        )));
                    }
                    let st = self.lock();
                    let cur = self.current();
                    if st.closed {
                        return Err(closed());
                    }
                    if cur.id != failed {
                        return Ok(cur);
                    }
                    let source_error = st.last_fetch_error.clone();
                    drop(st);
                    match source_error {
                        Some(e) if !e.is_retryable() || trigger == Trigger::Requested => {
                            return Err(RefreshFailed {
                                note: format!("{e:#}"),
                                source_error: Some(e),
                                closed: false,
                                fetch_failed: true,
                            });
                        }
                        _ => {}
                    }
                    if wait != Wait::Deadline {
                        return Ok(cur);
                    }
                }
                Step::NotNow(at, seen) => {
                    let now = Instant::now();
                    if wait == Wait::OnceNow {
                        return Ok(self.current());
                    }
                    if at >= deadline {
                        return Err(self.budget_exhausted(trigger, at - now));
                    }
                    if !said_why {
                        said_why = true;
                        tracing::info!(target: TARGET, source = %self.source_name, reason = why, wait = %fmt_duration(at - now), "waiting for the source's budget before refetching the database URL");
                    }
                    // Woken early by a fetch finishing (someone else's may
                    // have brought a new URL) or by close().
                    let mut rx = self.done.subscribe();
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = rx.wait_for(|&n| n > seen) => {}
                    }
                }
            }
        }
    }

    /// One decision under the lock: done, join the fetch under way (start
    /// one if the budget allows), or not before a time.
    fn step(
        &self,
        failed: u64,
        trigger: Trigger,
        why: &'static str,
        wait: Wait,
    ) -> Result<Step, RefreshFailed> {
        let mut st = self.lock();
        if st.closed {
            return Err(closed());
        }
        let cur = self.current();
        if cur.id != failed {
            return Ok(Step::Done(cur));
        }
        if !self.source.may_change() && trigger != Trigger::Requested {
            return Err(RefreshFailed {
                source_error: None,
                note: format!("{} never changes", self.source_name),
                closed: false,
                fetch_failed: false,
            });
        }
        if let Some((url, target)) = st.pending.take()
            && url != cur.url
        {
            let new = self.adopt(&mut st, &cur, url, target);
            tracing::info!(target: TARGET, generation = new.id, reason = why, "adopted the new URL the watch had fetched");
            return Ok(Step::Done(new));
        }
        if let Some(f) = &st.in_flight {
            let watch_poll = f.trigger == Trigger::Watch;
            if watch_poll && matches!(trigger, Trigger::Failure | Trigger::Requested) {
                // A poll started before this failure (it may hang, or bring
                // the old URL): a failure does not wait for it. A new URL it
                // already fetched is pending and was adopted above.
                if let Some(f) = st.in_flight.take() {
                    f.task.abort();
                }
                st.finished += 1;
                self.done.send_replace(st.finished);
            } else if wait == Wait::OnceNow {
                // Never wait for someone else's fetch: the connect error
                // goes back to the retry loop, the fetch adopts what it
                // brings.
                return Ok(Step::Done(cur));
            } else {
                return Ok(Step::Join(st.finished));
            }
        }
        match st.schedule.try_start(Instant::now(), trigger) {
            Ok(()) => {
                let seen = st.finished;
                self.spawn_fetch(&mut st, trigger, why);
                Ok(Step::Join(seen))
            }
            Err(at) => Ok(Step::NotNow(at, st.finished)),
        }
    }

    fn gave_up(&self, note: String) -> RefreshFailed {
        RefreshFailed {
            source_error: self.lock().last_fetch_error.clone(),
            note,
            closed: false,
            fetch_failed: false,
        }
    }

    fn budget_exhausted(&self, trigger: Trigger, wait: Duration) -> RefreshFailed {
        let st = self.lock();
        let what = match &st.last_fetch_error {
            Some(e) => format!("{e:#}"),
            None if trigger == Trigger::Requested => {
                format!("{} was asked recently", self.source_name)
            }
            None => format!("{} still returns the URL that failed", self.source_name),
        };
        let note = format!(
            "{what}; its budget allows the next request in {}, after this call's deadline",
            fmt_duration(wait)
        );
        tracing::warn!(target: TARGET, source = %self.source_name, next_request_in = %fmt_duration(wait), "giving up on a newer database URL within the caller's deadline");
        RefreshFailed {
            source_error: st.last_fetch_error.clone(),
            note,
            closed: false,
            fetch_failed: false,
        }
    }

    /// Fetches now (waiting for the budget until `deadline`) and adopts a
    /// changed URL; returns the current generation. For a user who knows
    /// the URL changed.
    pub(crate) async fn refresh_now(&self, deadline: Instant) -> Result<Arc<Generation>, Error> {
        let failed = self.current_id();
        match self
            .refresh_after(
                failed,
                Trigger::Requested,
                "requested",
                Wait::Once,
                deadline,
            )
            .await
        {
            Ok(g) => Ok(g),
            Err(f) if f.closed => Err(Error::new(ErrorKind::Closed, "")),
            Err(f) => Err(match f.source_error {
                Some(e) if f.fetch_failed => e,
                _ => Error::new(ErrorKind::Timeout, f.note),
            }),
        }
    }

    /// The watch's poll: starts a fetch if the budget lets the watch spend
    /// a token now (never waiting for it). A changed URL is adopted only
    /// after a test connection with it succeeds.
    pub(crate) fn poll_for_change(&self) {
        let mut st = self.lock();
        if st.closed || st.in_flight.is_some() {
            return;
        }
        if st
            .schedule
            .try_start(Instant::now(), Trigger::Watch)
            .is_ok()
        {
            self.spawn_fetch(&mut st, Trigger::Watch, "watch");
        }
    }
}

enum Step {
    Done(Arc<Generation>),
    /// Wait for the fetch that finishes after `finished` fetches.
    Join(u64),
    /// Not before this time; `finished` fetches so far.
    NotNow(Instant, u64),
}

fn closed() -> RefreshFailed {
    RefreshFailed {
        source_error: None,
        note: "the pool was closed".into(),
        closed: true,
        fetch_failed: false,
    }
}

#[cfg(test)]
mod tests;
