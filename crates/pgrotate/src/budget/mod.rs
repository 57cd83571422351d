//! How a refetch is budgeted: one token bucket per source, and the schedule
//! that decides when a fetch of the URL may go out.
//!
//! - **A bucket** of `burst` tokens, one more every `refill`. Every request
//!   to the source costs one, the build's included.
//! - **Failures go first.** A failure-driven fetch (credentials rejected,
//!   database gone, a read-only server) may spend every token, at once,
//!   whatever fetch came just before. The watch and an outage (a connect
//!   that finds no server) spend only tokens above the `reserve`, so they
//!   never leave a failure waiting for the refill.
//! - **No hot loop.** A failure-driven fetch that brings nothing new (the
//!   same URL, or an error) is followed by the next one no sooner than a
//!   jittered backoff (from [`FRUITLESS_BASE`] doubling up to the builder's
//!   `refetch_backoff_cap`); a source's `Retry-After` holds every fetch.
//! - **Nothing is booked ahead.** The schedule is plain data asked "may a
//!   fetch go out now, or when?"; a caller that waits and gives up leaves it
//!   as if it had never asked.
//!
//! The Heroku arithmetic lives here too ([`Budget::heroku_fleet`]): it is
//! the one place its numbers are written down.
//!
//! This file: the public [`Budget`] and its Heroku fleet arithmetic; the
//! token bucket is in `bucket`, the schedule in `schedule`.

mod bucket;
mod schedule;

pub(crate) use schedule::{Brought, Schedule, Trigger};

use std::fmt;
use std::time::Duration;

use crate::time::fmt_duration;

/// The Heroku account's bucket: at most this many requests banked.
pub const HEROKU_ACCOUNT_BURST: u32 = 4_500;
/// The Heroku account's refill: about this many requests a minute.
pub const HEROKU_ACCOUNT_REFILL_PER_MINUTE: u32 = 75;
/// The fleet the Heroku defaults are sized for: this many processes
/// sharing one account's budget.
pub const HEROKU_DEFAULT_FLEET: u32 = 100;

/// The first step of the backoff between failure-driven fetches that bring
/// nothing new.
pub(crate) const FRUITLESS_BASE: Duration = Duration::from_millis(500);

/// The longest refill interval a budget may have: a day.
pub(crate) const MAX_REFILL: Duration = Duration::from_secs(24 * 3600);

/// How often a source may be fetched: a token bucket of `burst` requests,
/// one more every `refill`, of which the last `reserve` are kept for
/// failures (the watch and outages never spend them).
///
/// Each source has its own ([`crate::source::UrlSource::budget`]); the
/// builder can replace it ([`crate::PoolBuilder::refetch_budget`]).
///
/// | budget | burst | refill | reserve | outage grace |
/// |---|---|---|---|---|
/// | [`Budget::local`] (files, variables, commands, your own source) | 10 | 100 ms | 5 | none |
/// | [`Budget::heroku`] (Platform API, Heroku CLI) | 8 | 80 s | 4 | 10 s |
///
/// ```
/// use std::time::Duration;
/// use pgrotate::source::Budget;
/// let b = Budget::heroku_fleet(1_000);
/// assert_eq!(b.refill(), Duration::from_secs(800));
/// let mine = Budget::new(4, Duration::from_secs(30)).reserve(2);
/// assert_eq!((mine.burst(), mine.reserved()), (4, 2));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    burst: u32,
    refill: Duration,
    reserve: u32,
    outage_grace: Duration,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Budget({} tokens, one every {}, {} reserved, outage grace {})",
            self.burst,
            fmt_duration(self.refill),
            self.reserve,
            fmt_duration(self.outage_grace)
        )
    }
}

impl Budget {
    /// A bucket of `burst` requests refilled with one every `refill`; half
    /// of it (rounded down) reserved for failures; no outage grace.
    pub const fn new(burst: u32, refill: Duration) -> Budget {
        Budget {
            burst,
            refill,
            reserve: burst / 2,
            outage_grace: Duration::ZERO,
        }
    }

    /// For a cheap local source: 10 requests, one more every 100 ms.
    pub const fn local() -> Budget {
        Budget::new(10, Duration::from_millis(100))
    }

    /// The Heroku Platform API default, sized for a fleet of
    /// [`HEROKU_DEFAULT_FLEET`] (100) processes sharing one account:
    /// [`Budget::heroku_fleet`]`(100)`.
    pub const fn heroku() -> Budget {
        Budget::heroku_fleet(HEROKU_DEFAULT_FLEET)
    }

    /// The Heroku Platform API budget for `processes` processes sharing one
    /// account (every process and tool using one of its tokens; 0 counts
    /// as 1; at most 108,000, where the refill reaches a day — more is
    /// refused by `build()`).
    ///
    /// The account's bucket holds 4,500 requests and refills about 75 a
    /// minute. Shared by `processes`, each gets `75 / processes` a minute:
    /// one token every `3,600 s × processes / 4,500` (80 s for 100
    /// processes, 800 s for 1,000). Each process banks a burst of 8 for
    /// failures (a rotation costs one request, a URL published a few
    /// seconds late a few more): even if 100 processes spent theirs at
    /// once, the account would keep 3,700. The watch spends only the 4
    /// above the reserve and at most one every two refills (plus up to a
    /// fifth at random), so a fleet's watches use under half of the
    /// account's refill (about 45 %). An outage (no
    /// server answers) refetches only once it has lasted 10 s: a restart
    /// costs no request, a failover (which takes longer) finds the new URL.
    pub const fn heroku_fleet(processes: u32) -> Budget {
        let processes = if processes == 0 { 1 } else { processes };
        // 3,600,000 ms / (75 × 60) = 800 ms of refill per process.
        let per_process_ms = 3_600_000 / (HEROKU_ACCOUNT_REFILL_PER_MINUTE as u64 * 60);
        Budget {
            burst: 8,
            refill: Duration::from_millis(per_process_ms * processes as u64),
            reserve: 4,
            outage_grace: Duration::from_secs(10),
        }
    }

    /// Keeps the last `n` tokens for failure-driven fetches: the watch and
    /// outages never spend them. Must be less than the burst.
    #[must_use]
    pub const fn reserve(mut self, n: u32) -> Budget {
        self.reserve = n;
        self
    }

    /// A connect that finds no server refetches only once connects have
    /// been failing that way for this long (a restart passes without
    /// spending the budget; a failover lasts longer). Zero: at once.
    #[must_use]
    pub const fn outage_grace(mut self, d: Duration) -> Budget {
        self.outage_grace = d;
        self
    }

    /// The same budget with another refill interval.
    #[cfg(feature = "heroku")]
    pub(crate) const fn with_refill(mut self, refill: Duration) -> Budget {
        self.refill = refill;
        self
    }

    /// The most requests banked.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// One more token every this long.
    pub const fn refill(&self) -> Duration {
        self.refill
    }

    /// The tokens kept for failure-driven fetches.
    pub const fn reserved(&self) -> u32 {
        self.reserve
    }

    /// How long an outage lasts before it may spend the budget.
    pub const fn grace(&self) -> Duration {
        self.outage_grace
    }

    /// Twice the refill: the watch polls no more often than this, so it
    /// uses at most half of what the bucket gains.
    pub(crate) fn watch_spacing(&self) -> Duration {
        self.refill.saturating_mul(2)
    }

    /// Checks the budget can work; the message names what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.burst == 0 {
            return Err("the refetch budget's burst must be at least 1".into());
        }
        if self.reserve >= self.burst {
            return Err(format!(
                "the refetch budget's reserve ({}) must be less than its burst ({})",
                self.reserve, self.burst
            ));
        }
        if self.refill.is_zero() || self.refill > MAX_REFILL {
            return Err(format!(
                "the refetch budget's refill interval must be more than zero and at most {} (got {})",
                fmt_duration(MAX_REFILL),
                fmt_duration(self.refill)
            ));
        }
        if self.outage_grace > MAX_REFILL {
            return Err(format!(
                "the refetch budget's outage grace must be at most {}",
                fmt_duration(MAX_REFILL)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_heroku_defaults_follow_the_fleet_arithmetic() {
        let b = Budget::heroku();
        assert_eq!(b.refill(), Duration::from_secs(80));
        // 100 processes × one token per 80 s = 75 a minute, the account's refill.
        let fleet_per_minute = f64::from(HEROKU_DEFAULT_FLEET) * 60.0 / b.refill().as_secs_f64();
        assert!((fleet_per_minute - f64::from(HEROKU_ACCOUNT_REFILL_PER_MINUTE)).abs() < 1e-9);
        // Every burst spent at once stays well inside the account's bucket.
        assert!(HEROKU_DEFAULT_FLEET * b.burst() <= HEROKU_ACCOUNT_BURST / 5);
        assert_eq!(b.watch_spacing(), Duration::from_secs(160));
        assert_eq!(
            Budget::heroku_fleet(1000).refill(),
            Duration::from_secs(800)
        );
        assert_eq!(Budget::heroku_fleet(0).refill(), Duration::from_millis(800));
        assert!(b.validate().is_ok() && Budget::local().validate().is_ok());
    }

    #[test]
    fn bad_budgets_are_refused_with_the_part_named() {
        let e = Budget::new(0, S).validate().unwrap_err();
        assert!(e.contains("burst"), "{e}");
        let e = Budget::new(4, S).reserve(4).validate().unwrap_err();
        assert!(e.contains("reserve (4)"), "{e}");
        let e = Budget::new(4, Duration::ZERO).validate().unwrap_err();
        assert!(e.contains("refill"), "{e}");
        let e = Budget::new(4, Duration::MAX).validate().unwrap_err();
        assert!(e.contains("refill"), "{e}");
        let e = Budget::new(4, S)
            .outage_grace(Duration::MAX)
            .validate()
            .unwrap_err();
        assert!(e.contains("grace"), "{e}");
    }
}
