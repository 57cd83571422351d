//! What the pool counts, and the [`Status`] it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters shared by the pool's parts. Relaxed atomics: they are reports,
/// not synchronisation.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) stale_closed: AtomicU64,
    pub(crate) retries: AtomicU64,
}

impl Counters {
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A snapshot of the pool. With the `serde` feature it is `Serialize`, the
/// durations as seconds, for a `/healthz` that returns it as JSON. `max_size`, `size`, `available` and `waiting`
/// are deadpool's fields, with deadpool's names and meanings; the rest are
/// pgrotate's.
///
/// ```
/// # fn demo(pool: &pgrotate::Pool) {
/// let s = pool.status();
/// println!("{} of {} connections available, generation {}", s.available, s.size, s.generation);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Status {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now (idle and checked out).
    pub size: usize,
    /// Connections open and idle, ready to be handed out (deadpool's name
    /// and meaning).
    pub available: usize,
    /// The same as [`Status::available`] (pgrotate's earlier name).
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The current generation: 1 at build, one more per adopted new URL.
    pub generation: u64,
    /// How many times a new URL was adopted.
    pub refreshes: u64,
    /// How many times the source was fetched (the first fetch included).
    pub fetches: u64,
    /// How many fetches failed or returned an unusable URL.
    pub fetch_failures: u64,
    /// How many connects were attempted.
    pub connect_attempts: u64,
    /// How many connections were opened.
    pub connections_opened: u64,
    /// How many connections of an older generation were closed.
    pub stale_closed: u64,
    /// How many times `run` retried work on a fresh connection.
    pub retries: u64,
    /// The last refetch error, if the last refetch failed.
    pub last_refresh_error: Option<String>,
    /// The source's refetch budget: tokens left, next refill.
    pub budget: BudgetStatus,
}

/// Where the source's refetch budget ([`crate::source::Budget`]) stands.
///
/// ```
/// # fn demo(pool: &pgrotate::Pool) {
/// let b = pool.status().budget;
/// println!("{} of {} fetches banked ({} reserved for failures)", b.tokens, b.burst, b.reserve);
/// if let Some(wait) = b.next_refetch_in {
///     println!("a failure could refetch in {wait:?}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BudgetStatus {
    /// The most fetches banked.
    pub burst: u32,
    /// Tokens kept for failure-driven fetches.
    pub reserve: u32,
    /// One more token every this long.
    #[cfg_attr(feature = "serde", serde(serialize_with = "seconds::one"))]
    pub refill: Duration,
    /// Tokens left now.
    pub tokens: u32,
    /// When the next token arrives; `None` when the bucket is full.
    #[cfg_attr(feature = "serde", serde(serialize_with = "seconds::maybe"))]
    pub next_token_in: Option<Duration>,
    /// How long until a failure-driven refetch could go out (the bucket,
    /// a backoff after fetches that brought nothing new, or the source's
    /// `Retry-After`); `None` when it could go out now.
    #[cfg_attr(feature = "serde", serde(serialize_with = "seconds::maybe"))]
    pub next_refetch_in: Option<Duration>,
}

/// Durations as seconds in JSON (`1.5`), as a reader of a health check
/// expects, rather than serde's `{"secs": 1, "nanos": 500000000}`.
#[cfg(feature = "serde")]
mod seconds {
    use std::time::Duration;

    pub(super) fn one<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn maybe<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn the_budget_serializes_its_durations_as_seconds() {
        let budget = BudgetStatus {
            burst: 8,
            reserve: 4,
            refill: Duration::from_millis(80_500),
            tokens: 7,
            next_token_in: Some(Duration::from_millis(1500)),
            next_refetch_in: None,
        };
        let json = serde_json::to_value(&budget).unwrap();
        assert_eq!(json["refill"], 80.5);
        assert_eq!(json["next_token_in"], 1.5);
        assert!(json["next_refetch_in"].is_null());
    }
}
