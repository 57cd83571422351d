//! The refresh coordinator: the current *generation* of connection settings,
//! and the one place a refetch of the URL is decided, single-flighted and
//! rate-limited.
//!
//! - **Single flight.** However many callers fail at once, one fetch runs;
//!   the others wait for it and share its outcome.
//! - **Rate limit.** Two fetches are at least `min_interval` apart (the
//!   larger of the source's and the builder's). Each fetch that brings
//!   nothing new (the same URL, or an error) doubles the gap, with jitter, up
//!   to `backoff_cap`; a source's `Retry-After` is honoured. A successful
//!   connection with the current generation resets the gap.
//! - **No hot loop.** `Manager::create` gives up with
//!   `ErrorKind::CredentialsRejected` after `rejected_attempts` rejected
//!   connects, each separated by a refetch under this rate limit.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, fmt_duration};
use crate::retry::Backoff;
use crate::settings::{Settings, Target};
use crate::source::DynSource;
use crate::stats::Counters;
use crate::url::DatabaseUrl;

/// Tracing target of refresh events.
const TARGET: &str = "pgrotate::refresh";

/// One set of connection settings, from one fetched URL.
pub(crate) struct Generation {
    pub(crate) id: u64,
    pub(crate) url: DatabaseUrl,
    pub(crate) target: Target,
}

/// How refetches are paced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshPolicy {
    pub(crate) min_interval: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) rejected_attempts: u32,
}

impl Default for RefreshPolicy {
    fn default() -> RefreshPolicy {
        RefreshPolicy {
            min_interval: Duration::ZERO,
            backoff_cap: Duration::from_secs(5),
            rejected_attempts: 6,
        }
    }
}

struct FetchState {
    last_fetch: Option<Instant>,
    not_before: Option<Instant>,
    last_outcome: Result<(), Error>,
    /// A new URL the watch fetched but whose test connection failed while
    /// the current URL still worked. When the current URL fails too, it is
    /// adopted at once, without waiting for a paced fetch.
    pending: Option<(DatabaseUrl, Target)>,
}

pub(crate) struct Refresher {
    source: Box<dyn DynSource>,
    source_name: String,
    settings: Settings,
    policy: RefreshPolicy,
    backoff: Backoff,
    current: RwLock<Arc<Generation>>,
    current_id: AtomicU64,
    state: tokio::sync::Mutex<FetchState>,
    fetches_done: AtomicU64,
    fruitless: AtomicU32,
    last_error: Mutex<Option<String>>,
    counters: Arc<Counters>,
    generation_tx: tokio::sync::watch::Sender<u64>,
}

impl Refresher {
    /// Fetches once and makes generation 1; a broken source fails here.
    pub(crate) async fn start(
        source: Box<dyn DynSource>,
        settings: Settings,
        mut policy: RefreshPolicy,
        counters: Arc<Counters>,
    ) -> Result<Refresher, Error> {
        let source_name = source.describe();
        policy.min_interval = policy.min_interval.max(source.min_interval());
        let backoff = Backoff::new(
            policy.min_interval.max(Duration::from_millis(1)),
            policy.backoff_cap.max(policy.min_interval),
        )
        .expect("base is non-zero and at most the cap");
        counters.fetches.fetch_add(1, Ordering::Relaxed);
        let url = source
            .fetch_boxed()
            .await
            .map_err(|e| Error::source_failed(&source_name, e))?;
        let target = settings
            .target(&url)
            .map_err(|e| unusable_url(&source_name, e))?;
        let generation = Arc::new(Generation { id: 1, url, target });
        tracing::info!(target: TARGET, generation = 1, sslmode = %generation.target.sslmode, source = %source_name, "fetched the database URL");
        Ok(Refresher {
            source,
            source_name,
            settings,
            policy,
            backoff,
            current: RwLock::new(generation),
            current_id: AtomicU64::new(1),
            state: tokio::sync::Mutex::new(FetchState {
                last_fetch: Some(Instant::now()),
                not_before: None,
                last_outcome: Ok(()),
                pending: None,
            }),
            fetches_done: AtomicU64::new(1),
            fruitless: AtomicU32::new(0),
            last_error: Mutex::new(None),
            counters,
            generation_tx: tokio::sync::watch::Sender::new(1),
        })
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

    pub(crate) fn policy(&self) -> &RefreshPolicy {
        &self.policy
    }

    pub(crate) fn source_name(&self) -> &str {
        &self.source_name
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A connection with generation `id` succeeded: the current URL works,
    /// so the next failure may refetch at the minimum interval again.
    pub(crate) fn note_connected(&self, id: u64) {
        if id == self.current_id() {
            self.fruitless.store(0, Ordering::Relaxed);
        }
    }

    /// Generation `failed` did not work (`why`). Returns a newer generation
    /// when one exists or a fetch brings one, otherwise the current one
    /// after a paced fetch that brought nothing new; or the fetch's error.
    pub(crate) async fn refresh_after(
        &self,
        failed: u64,
        why: &'static str,
    ) -> Result<Arc<Generation>, Error> {
        let seen = self.fetches_done.load(Ordering::Acquire);
        let cur = self.current();
        if cur.id != failed {
            return Ok(cur);
        }
        let mut state = self.state.lock().await;
        let cur = self.current();
        if cur.id != failed {
            return Ok(cur);
        }
        if let Some((url, target)) = state.pending.take()
            && url != cur.url
        {
            let new = self.adopt(&cur, url, target);
            tracing::info!(target: TARGET, generation = new.id, reason = why, "adopted the new URL the watch had fetched");
            return Ok(new);
        }
        if self.fetches_done.load(Ordering::Acquire) != seen {
            // A fetch finished while we waited for the lock: its outcome is
            // ours too.
            return state.last_outcome.clone().map(|()| cur);
        }
        self.fetch_paced(&mut state, why).await
    }

    /// Fetches now (still paced) and adopts a changed URL.
    pub(crate) async fn refresh_now(&self) -> Result<Arc<Generation>, Error> {
        let mut state = self.state.lock().await;
        self.fetch_paced(&mut state, "requested").await
    }

    /// The watch's poll: fetch if the minimum interval allows (never
    /// waiting for it), and adopt a changed URL only after a test
    /// connection with it succeeded. A new URL that cannot connect while
    /// the current one still works is reported and not adopted.
    pub(crate) async fn check_for_change(&self) -> Result<Arc<Generation>, Error> {
        let Ok(mut state) = self.state.try_lock() else {
            // A refetch is under way already.
            return Ok(self.current());
        };
        let ready = state
            .last_fetch
            .is_none_or(|t| t.elapsed() >= self.policy.min_interval)
            && state.not_before.is_none_or(|nb| Instant::now() >= nb);
        if !ready {
            return Ok(self.current());
        }
        self.fetch_once(&mut state, "watch", Adopt::AfterProbe)
            .await
    }

    async fn fetch_paced(
        &self,
        state: &mut FetchState,
        why: &'static str,
    ) -> Result<Arc<Generation>, Error> {
        let fruitless = self.fruitless.load(Ordering::Relaxed);
        // Never less than the minimum interval: the jitter band of the
        // backoff reaches down to half its step.
        let gap = if fruitless == 0 {
            self.policy.min_interval
        } else {
            self.backoff
                .jittered(fruitless - 1)
                .max(self.policy.min_interval)
        };
        let mut ready_at = state.last_fetch.map(|t| t + gap);
        if let Some(nb) = state.not_before {
            ready_at = Some(ready_at.map_or(nb, |r| r.max(nb)));
        }
        if let Some(at) = ready_at {
            let now = Instant::now();
            if at > now {
                tracing::debug!(target: TARGET, wait = %fmt_duration(at - now), "pacing the next fetch");
                tokio::time::sleep_until(at.into()).await;
            }
        }
        self.fetch_once(state, why, Adopt::Directly).await
    }

    async fn fetch_once(
        &self,
        state: &mut FetchState,
        why: &'static str,
        adopt: Adopt,
    ) -> Result<Arc<Generation>, Error> {
        let cur = self.current();
        let started = Instant::now();
        if adopt == Adopt::Directly {
            tracing::info!(target: TARGET, generation = cur.id, reason = why, source = %self.source_name, "refetching the database URL");
        } else {
            tracing::debug!(target: TARGET, generation = cur.id, reason = why, source = %self.source_name, "polling the database URL");
        }
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.source.fetch_boxed().await;
        state.last_fetch = Some(Instant::now());
        state.not_before = None;
        state.pending = None;
        let err = match fetched {
            Err(e) => {
                state.not_before = e.retry_after().map(crate::retry::after);
                Error::source_failed(&self.source_name, e)
            }
            Ok(url) if url == cur.url => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if adopt == Adopt::Directly {
                    self.fruitless.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: TARGET, generation = cur.id, elapsed = %fmt_duration(started.elapsed()), "the source still returns the URL in use");
                    state.last_outcome = Ok(());
                    self.fetches_done.fetch_add(1, Ordering::Release);
                }
                return Ok(cur);
            }
            Ok(url) => match self.settings.target(&url) {
                Err(e) => unusable_url(&self.source_name, e),
                Ok(target) => match self.probe_if(adopt, &target).await {
                    Err(e) => {
                        state.pending = Some((url, target));
                        e
                    }
                    Ok(()) => {
                        let new = self.adopt(&cur, url, target);
                        tracing::info!(target: TARGET, generation = new.id, reason = why, elapsed = %fmt_duration(started.elapsed()), "adopted a new database URL");
                        state.last_outcome = Ok(());
                        self.fetches_done.fetch_add(1, Ordering::Release);
                        return Ok(new);
                    }
                },
            },
        };
        self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: TARGET, generation = cur.id, reason = why, error = %err, "refetching the database URL failed");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
        if adopt == Adopt::Directly {
            // Only failure-driven fetches pace the next one and hand their
            // outcome to the callers that waited for them; the watch's do
            // not, so a failed poll never delays a failover.
            self.fruitless.fetch_add(1, Ordering::Relaxed);
            state.last_outcome = Err(err.clone());
            self.fetches_done.fetch_add(1, Ordering::Release);
        }
        Err(err)
    }

    async fn probe_if(&self, adopt: Adopt, target: &Target) -> Result<(), Error> {
        if adopt == Adopt::Directly {
            return Ok(());
        }
        crate::manager::probe(target).await.map_err(|e| {
            e.with_detail_prefix(&format!(
                    "{} returned a new URL, but a test connection with it failed; keeping generation {}",
                    self.source_name,
                    self.current_id()
                ))
        })
    }

    fn adopt(&self, cur: &Generation, url: DatabaseUrl, target: Target) -> Arc<Generation> {
        let new = Arc::new(Generation {
            id: cur.id + 1,
            url,
            target,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.current_id.store(new.id, Ordering::Release);
        self.fruitless.store(0, Ordering::Relaxed);
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.generation_tx.send_replace(new.id);
        new
    }

    /// A new generation with the same URL: every connection open now is
    /// of an older one and is closed instead of reused (`Pool::drain`).
    pub(crate) async fn bump(&self) -> Arc<Generation> {
        let _state = self.state.lock().await;
        let cur = self.current();
        let new = Arc::new(Generation {
            id: cur.id + 1,
            url: cur.url.clone(),
            target: cur.target.clone(),
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.current_id.store(new.id, Ordering::Release);
        self.generation_tx.send_replace(new.id);
        tracing::info!(target: TARGET, generation = new.id, "drained: connections of older generations will be closed");
        new
    }

    /// A receiver that sees every new generation id.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }
}

/// How a fetched URL that differs from the current one is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopt {
    /// After a failure: the current URL does not work, take the new one.
    Directly,
    /// From the watch: the current URL works; take the new one only if a
    /// test connection with it succeeds.
    AfterProbe,
}

fn unusable_url(source: &str, e: crate::settings::TargetError) -> Error {
    Error::new(
        ErrorKind::Source,
        format!("from {source}: the URL cannot be used: {e}"),
    )
    .with_cause(e)
}
