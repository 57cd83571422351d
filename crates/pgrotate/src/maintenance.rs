//! The pool's one background task. It closes idle connections of older
//! generations as soon as a new generation exists, closes connections past
//! their lifetime and idle ones above `min_idle` past `idle_timeout`, and —
//! when asked with `PoolBuilder::watch` — polls the source for a URL that
//! changed without any error (a `pg:promote`: the old database still
//! answers).
//!
//! The task belongs to the pool: it holds only a `Weak` to it, upgraded
//! once per event and dropped before the next wait, and it ends when the
//! pool is closed or dropped (the shutdown channel's sender lives in the
//! pool). Its errors go to tracing and `Status::last_refresh_error`, never
//! to a panic.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::pool::Inner;

const TARGET: &str = "pgrotate::maintenance";

/// What the task does, from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maintenance {
    pub(crate) watch: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) min_idle: usize,
    pub(crate) max_lifetime: Option<Duration>,
}

impl Maintenance {
    /// How often lifetimes and idleness are checked: often enough for the
    /// shortest configured bound, at most once a second, at least every
    /// 10 ms.
    fn tick(&self) -> Duration {
        [
            Some(Duration::from_secs(1)),
            self.idle_timeout.map(|d| d / 4),
            self.max_lifetime.map(|d| d / 10),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10))
    }
}

/// The next tick, or the next watch poll if it comes sooner.
fn next_wake(tick: Duration, next_watch: Option<Instant>) -> Instant {
    let tick_at = crate::retry::after(tick);
    next_watch.map_or(tick_at, |w| w.min(tick_at))
}

/// `every` give or take a tenth, at random, so a fleet polls out of step.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.9 + fastrand::f64() / 5.0)
}

pub(crate) fn spawn(
    pool: Weak<Inner>,
    mut generations: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    config: Maintenance,
) {
    tokio::spawn(async move {
        let tick = config.tick();
        let mut next_watch = config.watch.map(|w| crate::retry::after(jittered(w)));
        loop {
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                r = generations.changed() => {
                    let Some(inner) = pool.upgrade() else { break };
                    if r.is_err() {
                        break;
                    }
                    close_stale(&inner);
                }
                _ = tokio::time::sleep_until(next_wake(tick, next_watch).into()) => {
                    let Some(inner) = pool.upgrade() else { break };
                    close_stale(&inner);
                    close_idle(&inner, &config);
                    if let (Some(every), Some(at)) = (config.watch, next_watch)
                        && Instant::now() >= at
                    {
                        next_watch = Some(crate::retry::after(jittered(every)));
                        let refresher = inner.refresher.clone();
                        drop(inner);
                        // Errors are logged and kept in the status by the
                        // refresher; the watch carries on.
                        let _ = refresher.check_for_change().await;
                    }
                }
            }
        }
        tracing::debug!(target: TARGET, "background task ended");
    });
}

/// Closes idle connections of older generations or past their lifetime.
pub(crate) fn close_stale(inner: &Inner) {
    let removed = inner.pool.retain(|conn, _| conn.is_current()).removed;
    if !removed.is_empty() {
        inner
            .counters
            .stale_closed
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        tracing::debug!(target: TARGET, closed = removed.len(), generation = inner.refresher.current_id(), "closed idle connections of older generations or past their lifetime");
    }
}

/// Closes connections idle for longer than `idle_timeout`, keeping
/// `min_idle` idle ones.
fn close_idle(inner: &Inner, config: &Maintenance) {
    let Some(idle_timeout) = config.idle_timeout else {
        return;
    };
    let idle = inner.pool.status().available;
    let mut may_close = idle.saturating_sub(config.min_idle);
    if may_close == 0 {
        return;
    }
    let removed = inner
        .pool
        .retain(|_, metrics| {
            if may_close > 0 && metrics.last_used() > idle_timeout {
                may_close -= 1;
                false
            } else {
                true
            }
        })
        .removed;
    if !removed.is_empty() {
        tracing::debug!(target: TARGET, closed = removed.len(), "closed idle connections");
    }
}
