//! The current *generation*: one fetched URL turned into a connect target,
//! numbered 1 at build and one more per adopted URL (or `drain`). The
//! [`Refresher`] holds it and the state a refetch needs (the budget's
//! schedule, the fetch under way, a URL the watch found); how a refetch
//! runs is [`crate::refetch`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::budget::{Brought, Budget, Schedule, Trigger};
use crate::error::{Error, ErrorKind};
use crate::refetch::{fetch_bounded, unusable_url};
use crate::source::DynSource;
use crate::stats::{BudgetStatus, Counters};
use crate::target::{Settings, Target};
use crate::time::fmt_duration;
use crate::url::DatabaseUrl;

/// Tracing target of refresh events.
const TARGET: &str = "pgrotate::refresh";

/// One set of connection settings, from one fetched URL.
pub(crate) struct Generation {
    pub(crate) id: u64,
    pub(crate) url: DatabaseUrl,
    pub(crate) target: Target,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL's own Debug redacts its password.
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A test connection with a URL the watch found, before it is adopted.
pub(crate) type Probe =
    Arc<dyn Fn(Target) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send + Sync>;

/// The refresher's settings, from the builder.
#[derive(Clone, Copy)]
pub(crate) struct RefreshConfig {
    /// Replaces the source's own budget.
    pub(crate) budget: Option<Budget>,
    pub(crate) backoff_cap: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) watch: Option<Duration>,
}

impl Default for RefreshConfig {
    fn default() -> RefreshConfig {
        RefreshConfig {
            budget: None,
            backoff_cap: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(30),
            watch: None,
        }
    }
}

pub(crate) struct InFlight {
    /// Which fetch: one aborted and replaced must not record its outcome
    /// over its successor's.
    pub(crate) id: u64,
    pub(crate) trigger: Trigger,
    pub(crate) task: tokio::task::AbortHandle,
}

pub(crate) struct State {
    pub(crate) schedule: Schedule,
    pub(crate) in_flight: Option<InFlight>,
    /// Fetches finished so far (the build's not counted).
    pub(crate) finished: u64,
    /// Fetches started so far: the next one's id.
    pub(crate) started: u64,
    /// The last finished fetch's error, if it failed.
    pub(crate) last_fetch_error: Option<Error>,
    /// The last failure-driven fetch brought the URL in use again.
    pub(crate) stale: bool,
    /// A new URL the watch fetched whose test connection has not succeeded
    /// (yet): adopted at once when the current URL fails.
    pub(crate) pending: Option<(DatabaseUrl, Target)>,
    pub(crate) last_error: Option<String>,
    pub(crate) closed: bool,
    /// From a failure's refetch to the first connection of a newer
    /// generation (the `metrics` feature's histogram).
    pub(crate) clock: crate::metrics::RefetchClock,
}

pub(crate) struct Refresher {
    pub(crate) me: Weak<Refresher>,
    pub(crate) source: Arc<dyn DynSource>,
    pub(crate) source_name: String,
    pub(crate) settings: Settings,
    pub(crate) config: RefreshConfig,
    pub(crate) probe: Probe,
    pub(crate) current: RwLock<Arc<Generation>>,
    pub(crate) current_id: AtomicU64,
    pub(crate) state: Mutex<State>,
    pub(crate) done: watch::Sender<u64>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) generation_tx: watch::Sender<u64>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        if let Some(f) = self.lock().in_flight.take() {
            f.task.abort();
        }
    }
}

impl Refresher {
    /// Fetches once (within the fetch timeout) and makes generation 1; a
    /// broken source fails here.
    pub(crate) async fn start(
        source: Arc<dyn DynSource>,
        settings: Settings,
        config: RefreshConfig,
        probe: Probe,
        counters: Arc<Counters>,
    ) -> Result<Arc<Refresher>, Error> {
        let source_name = source.describe();
        let budget = config.budget.unwrap_or_else(|| source.budget());
        budget
            .validate()
            .map_err(|m| Error::new(ErrorKind::Build, format!("{m} (source {source_name})")))?;
        let now = Instant::now();
        let mut schedule = Schedule::new(
            budget,
            config.backoff_cap,
            config.watch,
            fastrand::f64(),
            now,
        );
        let _ = schedule.try_start(now, Trigger::Build);
        counters.fetches.fetch_add(1, Ordering::Relaxed);
        let url = fetch_bounded(source.as_ref(), config.fetch_timeout)
            .await
            .inspect_err(|_| crate::metrics::url_fetched("build", crate::metrics::Fetched::Failed))
            .map_err(|e| Error::source_failed(&source_name, e))?;
        if config.budget.is_none() {
            schedule.set_budget(source.budget(), Instant::now());
        }
        let target = settings
            .target(&url)
            .map_err(|e| unusable_url(&source_name, e))?;
        crate::metrics::url_fetched("build", crate::metrics::Fetched::New);
        let generation = Arc::new(Generation { id: 1, url, target });
        tracing::info!(target: TARGET, generation = 1, sslmode = %generation.target.sslmode, source = %source_name, "fetched the database URL");
        Ok(Arc::new_cyclic(|me| Refresher {
            me: me.clone(),
            source,
            source_name,
            settings,
            config,
            probe,
            current: RwLock::new(generation),
            current_id: AtomicU64::new(1),
            state: Mutex::new(State {
                schedule,
                in_flight: None,
                finished: 0,
                started: 0,
                last_fetch_error: None,
                stale: false,
                pending: None,
                last_error: None,
                closed: false,
                clock: crate::metrics::RefetchClock::default(),
            }),
            done: watch::Sender::new(0),
            counters,
            generation_tx: watch::Sender::new(1),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn current_id(&self) -> u64 {
        self.current_id.load(Ordering::Acquire)
    }

    pub(crate) fn source_name(&self) -> &str {
        &self.source_name
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The budget as `Status` shows it.
    pub(crate) fn budget_status(&self) -> BudgetStatus {
        let mut st = self.lock();
        let budget = st.schedule.budget();
        let (tokens, next_token_in, next_refetch_in) = st.schedule.snapshot(Instant::now());
        BudgetStatus {
            burst: budget.burst(),
            reserve: budget.reserved(),
            refill: budget.refill(),
            tokens,
            next_token_in,
            next_refetch_in,
        }
    }

    /// A connection with generation `id` succeeded: the current URL works,
    /// so the next failure may refetch at once again, and any outage is
    /// over.
    pub(crate) fn note_connected(&self, id: u64) {
        if id == self.current_id() {
            let mut st = self.lock();
            st.schedule.connected();
            st.stale = false;
            st.clock.connected(id);
        }
    }

    /// Why callers may be waiting, for a timeout's message: the source
    /// keeps the URL that failed or fails itself, and when it may be asked
    /// again. `None` when nothing holds refetches back.
    pub(crate) fn explain(&self) -> Option<String> {
        let mut st = self.lock();
        let now = Instant::now();
        let next = st
            .schedule
            .ready_at(now, Trigger::Failure)
            .saturating_duration_since(now);
        let what = match (&st.last_fetch_error, st.stale) {
            (Some(e), _) => format!("{e:#}"),
            (None, true) => format!("{} still returns the URL that failed", self.source_name),
            (None, false) if st.in_flight.is_some() => {
                format!("a fetch from {} is under way", self.source_name)
            }
            (None, false) => return None,
        };
        Some(if next.is_zero() {
            what
        } else {
            format!(
                "{what}; its budget allows the next request in {}",
                fmt_duration(next)
            )
        })
    }

    pub(crate) fn adopt(
        &self,
        st: &mut State,
        cur: &Generation,
        url: DatabaseUrl,
        target: Target,
    ) -> Arc<Generation> {
        let new = Arc::new(Generation {
            id: cur.id.max(self.current_id()) + 1,
            url,
            target,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.current_id.store(new.id, Ordering::Release);
        st.schedule
            .finished(Instant::now(), Trigger::Failure, Brought::New);
        st.stale = false;
        st.last_error = None;
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        crate::metrics::generation_adopted(false);
        self.generation_tx.send_replace(new.id);
        new
    }

    /// A new generation with the same URL: every connection open now is
    /// of an older one and is closed instead of reused (`Pool::drain`).
    /// Never waits for a fetch under way.
    pub(crate) fn bump(&self) -> Arc<Generation> {
        let _st = self.lock();
        let cur = self.current();
        let new = Arc::new(Generation {
            id: cur.id + 1,
            url: cur.url.clone(),
            target: cur.target.clone(),
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.current_id.store(new.id, Ordering::Release);
        self.generation_tx.send_replace(new.id);
        crate::metrics::generation_adopted(true);
        tracing::info!(target: TARGET, generation = new.id, "drained: connections of older generations will be closed");
        new
    }

    /// Ends the fetch under way and every wait for one; no fetch starts
    /// after this.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(f) = st.in_flight.take() {
            f.task.abort();
        }
        st.finished += 1;
        let finished = st.finished;
        drop(st);
        self.done.send_replace(finished);
    }

    /// A receiver that sees every new generation id.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }
}
