//! The token bucket: `burst` tokens, one more every `refill`, spent one a
//! fetch.

use tokio::time::Instant;

use super::Budget;
use crate::time::later;

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

    pub(super) fn spend(&mut self, now: Instant) {
        self.refill(now);
        if self.tokens == self.budget.burst {
            self.refilled_at = now;
        }
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// The source said "not before `at`" (a 429): no token accrues before
    /// then either.
    pub(super) fn hold_refill_until(&mut self, now: Instant, at: Instant) {
        self.refill(now);
        if self.tokens < self.budget.burst && at > self.refilled_at {
            self.refilled_at = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::budget::MAX_REFILL;
    use crate::time::scaled;

    const S: Duration = Duration::from_secs(1);

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
