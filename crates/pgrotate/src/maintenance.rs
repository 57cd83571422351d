//! The pool's one background task. It closes idle connections of older
//! generations as soon as a new generation exists, closes connections past
//! their lifetime and idle ones above `min_idle` past `idle_timeout`, and —
//! when asked with `PoolBuilder::watch` — asks the refresher to poll the
//! source for a URL that changed without any error (a `pg:promote`: the
//! old database still answers) whenever the budget lets the watch spend.
//!
//! The task belongs to the pool: it holds only a `Weak` to it, upgraded
//! once per event and dropped before the next wait, and it ends when the
//! pool is closed or dropped (the shutdown channel's sender lives in the
//! pool). Its errors go to tracing and `Status::last_refresh_error`, never
//! to a panic.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Closed;
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
    /// How often lifetimes, idleness and the watch are checked: often
    /// enough for the shortest configured bound, at most once a second, at
    /// least every 10 ms.
    fn tick(&self) -> Duration {
        [
            Some(Duration::from_secs(1)),
            self.idle_timeout.map(|d| d / 4),
            self.max_lifetime.map(|d| d / 10),
            self.watch.map(|d| d / 4),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10))
    }
}

pub(crate) fn spawn(
    pool: Weak<Inner>,
    mut generations: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    config: Maintenance,
) {
    tokio::spawn(async move {
        let tick = config.tick();
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
                _ = tokio::time::sleep(tick) => {
                    let Some(inner) = pool.upgrade() else { break };
                    close_stale(&inner);
                    close_idle(&inner, &config);
                    crate::metrics::gauges(&inner);
                    if config.watch.is_some() {
                        // Starts a fetch of its own when the budget allows
                        // it, never waiting: its errors are logged and kept
                        // in the status by the refresher.
                        inner.refresher.poll_for_change();
                    }
                }
            }
        }
        tracing::debug!(target: TARGET, "background task ended");
    });
}

/// Closes idle connections of older generations or past their lifetime.
pub(crate) fn close_stale(inner: &Inner) {
    let removed = inner.pool.retain(|conn, _| conn.keep()).removed;
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
        crate::metrics::connections_closed(Closed::Idle, removed.len());
        tracing::debug!(target: TARGET, closed = removed.len(), "closed idle connections");
    }
}
