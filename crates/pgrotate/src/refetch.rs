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

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Brought, Budget, Trigger};
use crate::error::{Error, ErrorKind};
use crate::generation::{Generation, InFlight, Refresher, State};
use crate::source::{DynSource, SourceError, SourceErrorKind};
use crate::target::Target;
use crate::time::fmt_duration;
use crate::url::DatabaseUrl;

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

    fn spawn_fetch(&self, st: &mut State, trigger: Trigger, why: &'static str) {
        let cur = self.current_id();
        if trigger == Trigger::Watch {
            tracing::debug!(target: TARGET, generation = cur, reason = why, source = %self.source_name, "polling the database URL");
        } else {
            tracing::info!(target: TARGET, generation = cur, reason = why, trigger = trigger.as_str(), source = %self.source_name, "refetching the database URL");
        }
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let me = self.me.clone();
        let source = self.source.clone();
        let timeout = self.config.fetch_timeout;
        st.started += 1;
        let id = st.started;
        let task = tokio::spawn(async move {
            // A source that panics (in `fetch` or `budget`) must not leave a
            // fetch "under way" forever: the guard records it as failed.
            let guard = Unfinished { me: me.clone(), id };
            let started = Instant::now();
            let fetched = fetch_bounded(source.as_ref(), timeout).await;
            let budget = source.budget();
            drop(source);
            if let Some(this) = me.upgrade() {
                this.finish(id, trigger, why, started, fetched, budget)
                    .await;
            }
            std::mem::forget(guard);
        });
        st.in_flight = Some(InFlight {
            id,
            trigger,
            task: task.abort_handle(),
        });
    }

    /// Records what a fetch brought: adopts a new URL (after a test
    /// connection, for the watch), paces the next fetch, wakes the callers
    /// that joined it.
    async fn finish(
        &self,
        id: u64,
        trigger: Trigger,
        why: &'static str,
        started: Instant,
        fetched: Result<DatabaseUrl, SourceError>,
        budget: Budget,
    ) {
        let cur = self.current();
        let mut outcome = match fetched {
            Err(e) => {
                let after = e.retry_after();
                Outcome::Failed(Error::source_failed(&self.source_name, e), after)
            }
            Ok(url) if url == cur.url => Outcome::Same,
            Ok(url) => match self.settings.target(&url) {
                Err(e) => Outcome::Failed(unusable_url(&self.source_name, e), None),
                Ok(target) => Outcome::New(url, Box::new(target)),
            },
        };
        if trigger == Trigger::Watch
            && let Outcome::New(url, target) = &outcome
        {
            self.lock().pending = Some((url.clone(), (**target).clone()));
            if let Err(e) = (self.probe)((**target).clone()).await {
                outcome = Outcome::ProbeFailed(e.with_detail_prefix(&format!(
                    "{} returned a new URL, but a test connection with it failed; keeping generation {}",
                    self.source_name,
                    self.current_id()
                )));
            }
        }
        let now = Instant::now();
        let elapsed = fmt_duration(now - started);
        let mut st = self.lock();
        if st.in_flight.as_ref().is_none_or(|f| f.id != id) {
            // Aborted and replaced (a failure did not wait for this poll),
            // or the pool closed: the successor's outcome counts.
            return;
        }
        st.in_flight = None;
        st.finished += 1;
        if self.config.budget.is_none() && budget != st.schedule.budget() {
            match budget.validate() {
                Ok(()) => st.schedule.set_budget(budget, now),
                Err(why) => {
                    tracing::warn!(target: TARGET, source = %self.source_name, problem = %why, "ignoring the source's new budget; keeping the one in use");
                }
            }
        }
        match outcome {
            Outcome::New(url, target) => {
                st.schedule.finished(now, trigger, Brought::New);
                st.pending = None;
                st.last_fetch_error = None;
                st.stale = false;
                st.last_error = None;
                let cur = self.current();
                if cur.url != url {
                    let new = self.adopt(&mut st, &cur, url, *target);
                    tracing::info!(target: TARGET, generation = new.id, reason = why, elapsed = %elapsed, "adopted a new database URL");
                }
            }
            Outcome::Same => {
                st.schedule.finished(now, trigger, Brought::Same);
                st.last_fetch_error = None;
                if matches!(trigger, Trigger::Failure | Trigger::Outage) {
                    st.stale = true;
                    tracing::warn!(target: TARGET, generation = cur.id, reason = why, elapsed = %elapsed, source = %self.source_name, "the source still returns the URL in use");
                }
            }
            Outcome::Failed(err, after) => {
                st.schedule.finished(now, trigger, Brought::Error(after));
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: TARGET, generation = cur.id, reason = why, error = %format_args!("{err:#}"), "refetching the database URL failed");
                st.last_error = Some(format!("{err:#}"));
                st.last_fetch_error = Some(err);
            }
            Outcome::ProbeFailed(err) => {
                st.schedule.finished(now, trigger, Brought::Same);
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: TARGET, generation = cur.id, error = %format_args!("{err:#}"), "not adopting the URL the watch found");
                st.last_error = Some(format!("{err:#}"));
            }
        }
        let finished = st.finished;
        drop(st);
        self.done.send_replace(finished);
    }
}

/// Dropped while a fetch task unwinds (the source panicked) or is
/// aborted: records the fetch as failed so nobody waits for it forever.
struct Unfinished {
    me: Weak<Refresher>,
    id: u64,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // Aborted: whoever aborted it has recorded that.
            return;
        }
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let mut st = this.lock();
        if st.closed || st.in_flight.as_ref().is_none_or(|f| f.id != self.id) {
            return;
        }
        st.in_flight = None;
        st.finished += 1;
        let err = Error::source_failed(
            &this.source_name,
            SourceError::new(SourceErrorKind::Other, "the source panicked while fetching"),
        );
        tracing::warn!(target: TARGET, source = %this.source_name, "the source panicked while fetching the database URL");
        this.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
        st.last_error = Some(format!("{err:#}"));
        st.last_fetch_error = Some(err);
        let finished = st.finished;
        drop(st);
        this.done.send_replace(finished);
    }
}

enum Step {
    Done(Arc<Generation>),
    /// Wait for the fetch that finishes after `finished` fetches.
    Join(u64),
    /// Not before this time; `finished` fetches so far.
    NotNow(Instant, u64),
}

enum Outcome {
    New(DatabaseUrl, Box<Target>),
    Same,
    Failed(Error, Option<Duration>),
    ProbeFailed(Error),
}

fn closed() -> RefreshFailed {
    RefreshFailed {
        source_error: None,
        note: "the pool was closed".into(),
        closed: true,
        fetch_failed: false,
    }
}

/// One fetch, bounded by the fetch timeout.
pub(crate) async fn fetch_bounded(
    source: &dyn DynSource,
    timeout: Duration,
) -> Result<DatabaseUrl, SourceError> {
    let at = crate::time::later(Instant::now(), timeout);
    match tokio::time::timeout_at(at, source.fetch_boxed()).await {
        Ok(r) => r,
        Err(_) => Err(SourceError::new(
            SourceErrorKind::Unavailable,
            format!(
                "no answer within the fetch timeout of {}",
                fmt_duration(timeout)
            ),
        )),
    }
}

pub(crate) fn unusable_url(source: &str, e: crate::target::TargetError) -> Error {
    Error::new(
        ErrorKind::Source,
        format!("from {source}: the URL cannot be used"),
    )
    .with_cause(e)
}

#[cfg(test)]
mod tests;
