//! The fetch task: spawned once per refetch, bounded by the fetch timeout,
//! guarded against a source that panics, and its outcome recorded for
//! every caller that joined it.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::TARGET;
use crate::budget::{Brought, Budget, Trigger};
use crate::error::{Error, ErrorKind};
use crate::generation::{InFlight, Refresher, State};
use crate::metrics::Fetched;
use crate::source::{DynSource, SourceError, SourceErrorKind};
use crate::target::Target;
use crate::time::fmt_duration;
use crate::url::DatabaseUrl;

impl Refresher {
    pub(super) fn spawn_fetch(&self, st: &mut State, trigger: Trigger, why: &'static str) {
        let cur = self.current_id();
        if trigger == Trigger::Watch {
            tracing::debug!(target: TARGET, generation = cur, reason = why, source = %self.source_name, "polling the database URL");
        } else {
            tracing::info!(target: TARGET, generation = cur, reason = why, trigger = trigger.as_str(), source = %self.source_name, "refetching the database URL");
        }
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        if matches!(trigger, Trigger::Failure | Trigger::Outage) {
            st.clock.refetching(cur);
        }
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
                crate::metrics::url_fetched(trigger.as_str(), Fetched::New);
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
                crate::metrics::url_fetched(trigger.as_str(), Fetched::Same);
                st.schedule.finished(now, trigger, Brought::Same);
                st.last_fetch_error = None;
                if matches!(trigger, Trigger::Failure | Trigger::Outage) {
                    st.stale = true;
                    tracing::warn!(target: TARGET, generation = cur.id, reason = why, elapsed = %elapsed, source = %self.source_name, "the source still returns the URL in use");
                }
            }
            Outcome::Failed(err, after) => {
                crate::metrics::url_fetched(trigger.as_str(), Fetched::Failed);
                st.schedule.finished(now, trigger, Brought::Error(after));
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: TARGET, generation = cur.id, reason = why, error = %format_args!("{err:#}"), "refetching the database URL failed");
                st.last_error = Some(format!("{err:#}"));
                st.last_fetch_error = Some(err);
            }
            Outcome::ProbeFailed(err) => {
                crate::metrics::url_fetched(trigger.as_str(), Fetched::ProbeFailed);
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
        let trigger = st
            .in_flight
            .take()
            .map_or("failure", |f| f.trigger.as_str());
        crate::metrics::url_fetched(trigger, Fetched::Failed);
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

enum Outcome {
    New(DatabaseUrl, Box<Target>),
    Same,
    Failed(Error, Option<Duration>),
    ProbeFailed(Error),
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
