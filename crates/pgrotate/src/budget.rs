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

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::Backoff;
use crate::time::{fmt_duration, later, scaled};

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

/// The backoff between fruitless failure-driven fetches: from
/// [`FRUITLESS_BASE`] (or the cap, if smaller) doubling up to `cap`.
fn fruitless_backoff(cap: Duration) -> Backoff {
    let cap = cap.max(Duration::from_millis(1));
    Backoff::new(FRUITLESS_BASE.min(cap), cap).unwrap_or(FALLBACK_BACKOFF)
}

const FALLBACK_BACKOFF: Backoff = Backoff::fixed(FRUITLESS_BASE);

/// The bucket itself.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    budget: Budget,
    tokens: u32,
    /// Tokens below the burst accrue from here.
    refilled_at: Instant,
}

impl Bucket {
    pub(crate) fn full(budget: Budget, now: Instant) -> Bucket {
        Bucket {
            budget,
            tokens: budget.burst,
            refilled_at: now,
        }
    }

    pub(crate) fn budget(&self) -> Budget {
        self.budget
    }

    /// A source may change its budget after a fetch (the Heroku API slows
    /// its refill while the account is low): tokens earned so far are kept.
    pub(crate) fn set_budget(&mut self, budget: Budget, now: Instant) {
        if budget == self.budget || budget.validate().is_err() {
            return;
        }
        self.refill(now);
        self.budget = budget;
        self.tokens = self.tokens.min(budget.burst);
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.budget.burst {
            self.refilled_at = now;
            return;
        }
        let Some(elapsed) = now.checked_duration_since(self.refilled_at) else {
            return;
        };
        let step = self.budget.refill.as_nanos().max(1);
        let earned = (elapsed.as_nanos() / step).min(u128::from(self.budget.burst)) as u32;
        if earned == 0 {
            return;
        }
        self.tokens = self.tokens.saturating_add(earned).min(self.budget.burst);
        self.refilled_at = if self.tokens >= self.budget.burst {
            now
        } else {
            later(self.refilled_at, self.budget.refill.saturating_mul(earned))
        };
    }

    pub(crate) fn tokens(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }

    /// When the bucket holds more than `floor` tokens.
    pub(crate) fn available_at(&mut self, now: Instant, floor: u32) -> Instant {
        self.refill(now);
        if self.tokens > floor {
            return now;
        }
        let missing = floor.saturating_add(1).saturating_sub(self.tokens);
        later(self.refilled_at, self.budget.refill.saturating_mul(missing))
    }

    /// When the next token arrives, if the bucket is not full.
    pub(crate) fn next_token_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        (self.tokens < self.budget.burst).then(|| later(self.refilled_at, self.budget.refill))
    }

    fn spend(&mut self, now: Instant) {
        self.refill(now);
        if self.tokens == self.budget.burst {
            self.refilled_at = now;
        }
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// The source said "not before `at`" (a 429): no token accrues before
    /// then either.
    fn hold_refill_until(&mut self, now: Instant, at: Instant) {
        self.refill(now);
        if self.tokens < self.budget.burst && at > self.refilled_at {
            self.refilled_at = at;
        }
    }
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The first fetch, at `build()`.
    Build,
    /// The URL in use is wrong: credentials rejected, database gone, a
    /// read-only server.
    Failure,
    /// No server answers where the URL points.
    Outage,
    /// The background watch's poll.
    Watch,
    /// `Pool::refresh_now`.
    Requested,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Build => "build",
            Trigger::Failure => "failure",
            Trigger::Outage => "outage",
            Trigger::Watch => "watch",
            Trigger::Requested => "requested",
        }
    }
}

/// What a finished fetch brought, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Brought {
    /// A new URL (adopted or kept pending).
    New,
    /// The URL already in use.
    Same,
    /// An error, with the source's `Retry-After` if it gave one.
    Error(Option<Duration>),
}

/// The schedule: the bucket, the backoff after fruitless failure-driven
/// fetches, the source's `Retry-After`, the watch's spacing and the outage
/// grace. Plain data: every method takes the time, so tests drive it with
/// any clock.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    bucket: Bucket,
    backoff: Backoff,
    /// Failure-driven fetches in a row that brought nothing new.
    fruitless: u32,
    /// No failure-driven fetch before this (the backoff).
    fruitless_until: Option<Instant>,
    /// The same for outage-driven fetches, kept apart so that an outage's
    /// fruitless refetches never delay the refetch of a rotation after it.
    outage_fruitless: u32,
    outage_until: Option<Instant>,
    /// No fetch at all before this (`Retry-After`).
    not_before: Option<Instant>,
    /// The watch's next poll, when it is on.
    next_watch: Option<Instant>,
    /// The user's watch interval; the spacing is at least two refills of
    /// the budget as it stands (a source may slow its refill).
    watch_every: Option<Duration>,
    /// Since when connects have found no server.
    outage_since: Option<Instant>,
}

impl Schedule {
    /// A schedule with a full bucket. `watch`: the user's interval (the
    /// spacing is at least [`Budget::watch_spacing`]); `phase` in `[0, 1)`
    /// places the first poll within the first interval, so a fleet started
    /// together polls spread out.
    pub(crate) fn new(
        budget: Budget,
        backoff_cap: Duration,
        watch: Option<Duration>,
        phase: f64,
        now: Instant,
    ) -> Schedule {
        let first = watch.map(|w| w.max(budget.watch_spacing()));
        Schedule {
            bucket: Bucket::full(budget, now),
            backoff: fruitless_backoff(backoff_cap),
            fruitless: 0,
            fruitless_until: None,
            outage_fruitless: 0,
            outage_until: None,
            not_before: None,
            next_watch: first.map(|w| later(now, scaled(w, phase.clamp(0.0, 1.0)))),
            watch_every: watch,
            outage_since: None,
        }
    }

    pub(crate) fn budget(&self) -> Budget {
        self.bucket.budget()
    }

    pub(crate) fn set_budget(&mut self, budget: Budget, now: Instant) {
        self.bucket.set_budget(budget, now);
    }

    fn floor(&self, trigger: Trigger) -> u32 {
        match trigger {
            Trigger::Build | Trigger::Failure => 0,
            Trigger::Outage | Trigger::Watch | Trigger::Requested => self.bucket.budget.reserve,
        }
    }

    /// The earliest time a fetch for `trigger` may go out.
    pub(crate) fn ready_at(&mut self, now: Instant, trigger: Trigger) -> Instant {
        let floor = self.floor(trigger);
        let mut at = self.bucket.available_at(now, floor);
        if let Some(nb) = self.not_before {
            at = at.max(nb);
        }
        match trigger {
            Trigger::Failure => {
                if let Some(f) = self.fruitless_until {
                    at = at.max(f);
                }
            }
            Trigger::Outage => {
                let since = *self.outage_since.get_or_insert(now);
                at = at.max(later(since, self.bucket.budget.outage_grace));
                if let Some(f) = self.outage_until {
                    at = at.max(f);
                }
            }
            Trigger::Watch => {
                if let Some(w) = self.next_watch {
                    at = at.max(w);
                }
            }
            Trigger::Build | Trigger::Requested => {}
        }
        at.max(now)
    }

    /// Spends a token for `trigger` if a fetch may go out now; otherwise
    /// says when it may. Nothing is booked when it may not.
    pub(crate) fn try_start(&mut self, now: Instant, trigger: Trigger) -> Result<(), Instant> {
        if trigger == Trigger::Watch && self.watch_every.is_none() {
            return Err(later(now, MAX_REFILL));
        }
        let at = self.ready_at(now, trigger);
        if at > now {
            return Err(at);
        }
        self.bucket.spend(now);
        if trigger == Trigger::Watch
            && let Some(every) = self.watch_every
        {
            // At least two refills of the budget as it is now, plus up to a
            // fifth at random so a fleet does not fall into step: never
            // sooner, so a fleet's watches stay under half the refill.
            let every = every.max(self.bucket.budget.watch_spacing());
            self.next_watch = Some(later(now, crate::time::stretched(every, 0.2)));
        }
        Ok(())
    }

    /// A fetch for `trigger` finished with `brought`.
    pub(crate) fn finished(&mut self, now: Instant, trigger: Trigger, brought: Brought) {
        if let Brought::Error(Some(after)) = brought {
            let at = later(now, after);
            self.not_before = Some(self.not_before.map_or(at, |nb| nb.max(at)));
            self.bucket.hold_refill_until(now, at);
        }
        match (brought, trigger) {
            (Brought::New, _) => self.reset(),
            // The source said when: that is the spacing, not a backoff.
            (Brought::Error(Some(_)), _) => {}
            (Brought::Same | Brought::Error(None), Trigger::Failure) => {
                let step = self.backoff.jittered(self.fruitless);
                self.fruitless = self.fruitless.saturating_add(1);
                self.fruitless_until = Some(later(now, step));
            }
            (Brought::Same | Brought::Error(None), Trigger::Outage) => {
                let step = self.backoff.jittered(self.outage_fruitless);
                self.outage_fruitless = self.outage_fruitless.saturating_add(1);
                self.outage_until = Some(later(now, step));
            }
            (Brought::Same | Brought::Error(None), _) => {}
        }
    }

    /// A connection with the current URL worked: the next failure may
    /// refetch at once again, and any outage is over.
    pub(crate) fn connected(&mut self) {
        self.reset();
        self.outage_since = None;
    }

    fn reset(&mut self) {
        self.fruitless = 0;
        self.fruitless_until = None;
        self.outage_fruitless = 0;
        self.outage_until = None;
    }

    /// What `Status` shows.
    pub(crate) fn snapshot(&mut self, now: Instant) -> (u32, Option<Duration>, Option<Duration>) {
        let tokens = self.bucket.tokens(now);
        let next_token = self
            .bucket
            .next_token_at(now)
            .map(|t| t.saturating_duration_since(now));
        let next_failure = self
            .ready_at(now, Trigger::Failure)
            .saturating_duration_since(now);
        (
            tokens,
            next_token,
            (!next_failure.is_zero()).then_some(next_failure),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn heroku(now: Instant) -> Schedule {
        Schedule::new(Budget::heroku(), Duration::from_secs(5), None, 0.0, now)
    }

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

    #[test]
    fn a_failure_goes_out_at_once_right_after_the_build_fetch() {
        let t0 = Instant::now();
        let mut s = heroku(t0);
        assert_eq!(s.try_start(t0, Trigger::Build), Ok(()));
        s.finished(t0, Trigger::Build, Brought::New);
        let t1 = t0 + S;
        assert_eq!(
            s.try_start(t1, Trigger::Failure),
            Ok(()),
            "no spacing after a fetch"
        );
        s.finished(t1, Trigger::Failure, Brought::New);
        assert_eq!(
            s.try_start(t1, Trigger::Failure),
            Ok(()),
            "a second rotation too"
        );
    }

    #[test]
    fn failures_spend_the_whole_burst_then_wait_for_the_refill() {
        let t0 = Instant::now();
        let mut s = heroku(t0);
        for _ in 0..8 {
            assert_eq!(s.try_start(t0, Trigger::Failure), Ok(()));
            s.finished(t0, Trigger::Failure, Brought::New);
        }
        assert_eq!(
            s.try_start(t0, Trigger::Failure),
            Err(t0 + Duration::from_secs(80))
        );
        assert_eq!(
            s.try_start(t0 + Duration::from_secs(80), Trigger::Failure),
            Ok(())
        );
    }

    #[test]
    fn the_watch_and_outages_never_spend_the_reserve() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Budget::heroku(), 5 * S, Some(S), 0.0, t0);
        let mut t = t0;
        let mut polls = 0;
        while s.try_start(t, Trigger::Watch).is_ok() {
            s.finished(t, Trigger::Watch, Brought::Same);
            polls += 1;
            t += Duration::from_secs(160);
            assert!(polls < 100, "the watch never stops");
        }
        // Over a long time the watch keeps up with half the refill only:
        // it stays above the reserve forever.
        let mut tokens_seen = u32::MAX;
        for _ in 0..50 {
            t += Duration::from_secs(200);
            if s.try_start(t, Trigger::Watch).is_ok() {
                s.finished(t, Trigger::Watch, Brought::Same);
            }
            tokens_seen = tokens_seen.min(s.bucket.tokens(t));
        }
        assert!(
            tokens_seen >= 4,
            "the watch spent the reserve: {tokens_seen}"
        );

        let mut s = heroku(t0);
        for _ in 0..4 {
            s.try_start(t0, Trigger::Failure).unwrap();
            s.finished(t0, Trigger::Failure, Brought::New);
        }
        let at = s
            .try_start(t0 + Duration::from_secs(20), Trigger::Outage)
            .unwrap_err();
        assert!(
            at > t0 + Duration::from_secs(20),
            "outage may not touch the reserve"
        );
        assert_eq!(
            s.try_start(t0 + Duration::from_secs(20), Trigger::Failure),
            Ok(()),
            "a failure may"
        );
    }

    #[test]
    fn the_watch_polls_at_most_every_two_refills_and_starts_at_its_phase() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Budget::heroku(), 5 * S, Some(S), 0.5, t0);
        assert_eq!(
            s.try_start(t0, Trigger::Watch),
            Err(t0 + Duration::from_secs(80))
        );
        let t1 = t0 + Duration::from_secs(80);
        assert_eq!(s.try_start(t1, Trigger::Watch), Ok(()));
        let next = s.try_start(t1, Trigger::Watch).unwrap_err();
        assert!(next >= t1 + Duration::from_secs(160) && next <= t1 + Duration::from_secs(192));
        // Without a watch, never.
        assert!(heroku(t0).try_start(t0, Trigger::Watch).is_err());
    }

    #[test]
    fn an_outage_spends_nothing_within_its_grace() {
        let t0 = Instant::now();
        let mut s = heroku(t0);
        let at = s.try_start(t0, Trigger::Outage).unwrap_err();
        assert_eq!(at, t0 + Duration::from_secs(10));
        assert!(s.try_start(t0 + 5 * S, Trigger::Outage).is_err());
        s.connected();
        // A new outage starts its own grace.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(
            s.try_start(t1, Trigger::Outage),
            Err(t1 + Duration::from_secs(10))
        );
        assert_eq!(
            s.try_start(t1 + Duration::from_secs(10), Trigger::Outage),
            Ok(())
        );
        // A local source has no grace.
        let mut local = Schedule::new(Budget::local(), 5 * S, None, 0.0, t0);
        assert_eq!(local.try_start(t0, Trigger::Outage), Ok(()));
    }

    #[test]
    fn fruitless_failures_back_off_and_a_connection_resets_it() {
        let t0 = Instant::now();
        let mut s = heroku(t0);
        s.try_start(t0, Trigger::Failure).unwrap();
        s.finished(t0, Trigger::Failure, Brought::Same);
        let at = s.try_start(t0, Trigger::Failure).unwrap_err();
        assert!(at >= t0 + Duration::from_millis(250) && at <= t0 + Duration::from_millis(500));
        let mut t = at;
        for _ in 0..10 {
            s.try_start(t, Trigger::Failure).unwrap();
            s.finished(t, Trigger::Failure, Brought::Same);
            t = s.ready_at(t, Trigger::Failure);
        }
        let gap = s.ready_at(t, Trigger::Failure) - t;
        assert!(gap <= 80 * S, "bounded by the cap or the refill: {gap:?}");
        s.connected();
        let mut s2 = heroku(t0);
        s2.try_start(t0, Trigger::Failure).unwrap();
        s2.finished(t0, Trigger::Failure, Brought::Same);
        s2.connected();
        assert_eq!(s2.try_start(t0, Trigger::Failure), Ok(()));
    }

    #[test]
    fn retry_after_holds_every_fetch_and_the_refill() {
        let t0 = Instant::now();
        let mut s = heroku(t0);
        s.try_start(t0, Trigger::Requested).unwrap();
        s.finished(t0, Trigger::Requested, Brought::Error(Some(3 * S)));
        assert_eq!(s.try_start(t0 + S, Trigger::Failure), Err(t0 + 3 * S));
        assert_eq!(s.try_start(t0 + S, Trigger::Requested), Err(t0 + 3 * S));
        assert_eq!(s.try_start(t0 + 3 * S, Trigger::Failure), Ok(()));
        // A watch's failed poll does not slow failures down (no Retry-After).
        let mut s = Schedule::new(Budget::heroku(), 5 * S, Some(S), 0.0, t0);
        s.try_start(t0, Trigger::Watch).unwrap();
        s.finished(t0, Trigger::Watch, Brought::Error(None));
        assert_eq!(s.try_start(t0, Trigger::Failure), Ok(()));
    }

    #[test]
    fn fruitless_outage_refetches_never_delay_a_failure() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Budget::local(), 5 * S, None, 0.0, t0);
        for _ in 0..4 {
            let at = s.ready_at(t0, Trigger::Outage);
            s.try_start(at, Trigger::Outage).unwrap();
            s.finished(at, Trigger::Outage, Brought::Same);
        }
        assert!(
            s.try_start(t0 + S, Trigger::Outage).is_err(),
            "outages back off"
        );
        assert_eq!(
            s.try_start(t0 + S, Trigger::Failure),
            Ok(()),
            "a rotation goes at once"
        );
    }

    #[test]
    fn a_slower_refill_slows_the_watch_too() {
        let t0 = Instant::now();
        let b = Budget::new(8, S).reserve(4);
        let mut s = Schedule::new(b, 5 * S, Some(Duration::from_millis(10)), 0.0, t0);
        s.try_start(t0, Trigger::Watch).unwrap();
        let next = s.ready_at(t0, Trigger::Watch);
        assert!(
            next >= t0 + Duration::from_millis(2000) && next <= t0 + Duration::from_millis(2400)
        );
        s.set_budget(Budget::new(8, 2 * S).reserve(4), t0);
        let t1 = next;
        s.try_start(t1, Trigger::Watch).unwrap();
        let next = s.ready_at(t1, Trigger::Watch);
        assert!(
            next >= t1 + Duration::from_millis(4000),
            "two of the slower refills"
        );
    }

    #[test]
    fn refresh_now_spares_the_reserve() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Budget::new(3, 10 * S).reserve(2), 5 * S, None, 0.0, t0);
        assert_eq!(s.try_start(t0, Trigger::Requested), Ok(()));
        assert!(s.try_start(t0, Trigger::Requested).is_err());
        assert_eq!(s.try_start(t0, Trigger::Failure), Ok(()));
    }

    #[test]
    fn a_huge_burst_with_a_tiny_refill_saturates() {
        let t0 = Instant::now();
        let mut b = Bucket::full(Budget::new(u32::MAX, Duration::from_nanos(1)), t0);
        b.spend(t0);
        b.spend(t0);
        assert_eq!(b.tokens(t0 + S), u32::MAX);
    }

    #[test]
    fn a_slower_refill_from_the_source_keeps_earned_tokens() {
        let t0 = Instant::now();
        let mut b = Bucket::full(Budget::new(4, S), t0);
        b.spend(t0);
        b.spend(t0);
        assert_eq!(b.tokens(t0 + S), 3);
        b.set_budget(Budget::new(4, 2 * S), t0 + S);
        assert_eq!(b.tokens(t0 + 2 * S), 3);
        assert_eq!(b.tokens(t0 + 3 * S), 4);
        // Extreme values saturate instead of panicking.
        let mut b = Bucket::full(Budget::new(1, MAX_REFILL), t0);
        b.spend(t0);
        assert!(b.available_at(t0, u32::MAX - 1) > t0);
        assert!(later(t0, Duration::MAX) > t0);
        assert_eq!(scaled(Duration::MAX, 1.1), Duration::MAX);
        assert_eq!(scaled(Duration::from_secs(10), 0.5), Duration::from_secs(5));
    }
}
