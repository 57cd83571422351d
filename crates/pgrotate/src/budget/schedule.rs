//! The schedule of when a fetch may go out: the bucket's floor per trigger,
//! the backoff after fruitless fetches, `Retry-After`, the watch's spacing
//! and the outage grace.

use std::time::Duration;

use tokio::time::Instant;

use super::bucket::Bucket;
use super::{Budget, FRUITLESS_BASE, MAX_REFILL};
use crate::retry::Backoff;
use crate::time::{later, scaled};

/// The backoff between fruitless failure-driven fetches: from
/// [`FRUITLESS_BASE`] (or the cap, if smaller) doubling up to `cap`.
fn fruitless_backoff(cap: Duration) -> Backoff {
    let cap = cap.max(Duration::from_millis(1));
    Backoff::new(FRUITLESS_BASE.min(cap), cap).unwrap_or(FALLBACK_BACKOFF)
}

const FALLBACK_BACKOFF: Backoff = Backoff::fixed(FRUITLESS_BASE);

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
            Trigger::Outage | Trigger::Watch | Trigger::Requested => self.bucket.budget().reserve,
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
                at = at.max(later(since, self.bucket.budget().outage_grace));
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
            let every = every.max(self.bucket.budget().watch_spacing());
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
}
