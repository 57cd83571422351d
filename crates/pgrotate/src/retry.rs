//! Retry as data: attempts, a deadline and a jittered exponential backoff.

use std::time::Duration;

/// A jittered exponential backoff: the n-th delay is drawn from
/// `[d/2, d]` with `d = min(cap, base * 2^n)` ("equal jitter": never zero,
/// never in lock-step across a fleet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`. Returns `None` when
    /// `base` is zero or larger than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Option<Backoff> {
        (!base.is_zero() && base <= cap).then_some(Backoff { base, cap })
    }

    /// A backoff that never grows: every delay is drawn from `[d/2, d]`.
    pub(crate) const fn fixed(d: Duration) -> Backoff {
        Backoff { base: d, cap: d }
    }

    /// The first delay's upper bound.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay before retry number `n` (0-based), with `unit` a random
    /// draw in `[0, 1)`: passing it in keeps tests deterministic.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX));
        let d = exp.min(self.cap);
        let unit = unit.clamp(0.0, 1.0);
        d / 2 + d.mul_f64(unit / 2.0)
    }

    /// [`Backoff::delay`] with a fresh random draw.
    pub(crate) fn jittered(&self, n: u32) -> Duration {
        self.delay(n, fastrand::f64())
    }
}

/// How `Pool::run` and `Pool::transaction` retry work whose connection
/// failed: at most `attempts` runs in all, none started after `deadline` has
/// passed since the first, with a [`Backoff`] between them. Only
/// connection-level failures are retried (see [`crate::Fault`]); the
/// caller's own errors never are, except serialization failures and
/// deadlocks in `transaction` when [`RetryPolicy::retry_serialization_failures`]
/// is on. An optional `attempt_timeout` bounds each run: one that takes
/// longer (a partitioned network holds a query forever) is abandoned, its
/// connection closed, and counted as a lost connection.
///
/// ```
/// use std::time::Duration;
/// use pgrotate::RetryPolicy;
/// let policy = RetryPolicy::default()
///     .attempts(3)
///     .deadline(Duration::from_secs(5))
///     .backoff(Duration::from_millis(10), Duration::from_millis(500));
/// assert_eq!(policy.max_attempts(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    deadline: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
    attempt_timeout: Option<Duration>,
    retry_serialization: bool,
}

impl Default for RetryPolicy {
    /// 5 attempts, a 30 s deadline, backoff from 20 ms up to 1 s, no
    /// attempt timeout, serialization failures not retried.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            deadline: Duration::from_secs(30),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_secs(1),
            attempt_timeout: None,
            retry_serialization: false,
        }
    }
}

impl RetryPolicy {
    /// At most `n` runs in all (1 means no retry).
    #[must_use]
    pub fn attempts(mut self, n: u32) -> RetryPolicy {
        self.attempts = n;
        self
    }

    /// No new attempt starts once `d` has passed since the first.
    #[must_use]
    pub fn deadline(mut self, d: Duration) -> RetryPolicy {
        self.deadline = d;
        self
    }

    /// The backoff between attempts: from `base`, doubling, up to `cap`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> RetryPolicy {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// Abandons a run that takes longer than `d` (its connection is closed,
    /// so the server rolls back: the server is asked to cancel what still
    /// runs or is queued on it first) and counts it as a lost connection. Through
    /// a network partition a query can otherwise wait for minutes. `None`
    /// (the default) never abandons a run.
    #[must_use]
    pub fn attempt_timeout(mut self, d: Option<Duration>) -> RetryPolicy {
        self.attempt_timeout = d;
        self
    }

    /// Also retries a `transaction` that failed with a serialization
    /// failure (40001) or a deadlock (40P01). Off by default: such a retry
    /// runs the caller's closure again, which must then be safe to rerun.
    #[must_use]
    pub fn retry_serialization_failures(mut self, on: bool) -> RetryPolicy {
        self.retry_serialization = on;
        self
    }

    /// The per-run timeout, if any.
    pub fn max_attempt_duration(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Whether serialization failures and deadlocks are retried.
    pub fn retries_serialization_failures(&self) -> bool {
        self.retry_serialization
    }

    /// The most runs allowed.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The deadline.
    pub fn max_duration(&self) -> Duration {
        self.deadline
    }

    /// Checks the policy can work; the message names the bad field.
    pub(crate) fn validate(&self) -> Result<Backoff, String> {
        if self.attempts == 0 {
            return Err("retry attempts must be at least 1".into());
        }
        if self.deadline.is_zero() {
            return Err("retry deadline must be more than zero".into());
        }
        if self.attempt_timeout.is_some_and(|d| d.is_zero()) {
            return Err("retry attempt_timeout must be more than zero".into());
        }
        Backoff::new(self.backoff_base, self.backoff_cap).ok_or_else(|| {
            "retry backoff base must be more than zero and at most its cap".to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter_band() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(60, 0.5), Duration::from_millis(750));
    }

    #[test]
    fn invalid_policies_are_refused_with_the_field_named() {
        assert!(RetryPolicy::default().validate().is_ok());
        let e = RetryPolicy::default().attempts(0).validate().unwrap_err();
        assert!(e.contains("attempts"));
        let e = RetryPolicy::default()
            .backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(e.contains("backoff"));
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_none());
    }
}
