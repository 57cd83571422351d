//! Time, in one place: deadlines that saturate instead of panicking on
//! `Duration::MAX`, the one jitter every spacing and lifetime uses, and how
//! a duration is written in messages.

use std::time::Duration;

/// Far enough in the future to mean "never" for a deadline.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d` (std's clock), saturating far in the future instead of
/// panicking when `d` is huge (`Duration::MAX` as "forever" in a setting or
/// a `Retry-After`).
pub(crate) fn after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(FOREVER))
        .unwrap_or(now)
}

/// `at + d` (tokio's clock, which tests can pause), saturating far in the
/// future instead of panicking.
pub(crate) fn later(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FOREVER))
        .unwrap_or(at)
}

/// `d × factor`, saturating at `Duration::MAX` instead of panicking.
pub(crate) fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor.max(0.0)).unwrap_or(Duration::MAX)
}

/// The jitter: `d` stretched by a random share of up to `spread` (0.2: up
/// to a fifth more), never less than `d`. A fleet told the same interval
/// or `Retry-After` does not come back in lock-step.
pub(crate) fn stretched(d: Duration, spread: f64) -> Duration {
    d.saturating_add(scaled(d, fastrand::f64() * spread))
}

/// `d` shortened by a random share of up to `spread` (0.2: up to a fifth
/// less), never more than `d`: connection lifetimes, so a fleet does not
/// reconnect in one wave.
pub(crate) fn shortened(d: Duration, spread: f64) -> Duration {
    d.saturating_sub(scaled(d, fastrand::f64() * spread.clamp(0.0, 1.0)))
}

/// A duration as messages write it: `250 ms`, `37.0 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_here_panics_on_the_largest_durations() {
        assert!(after(Duration::MAX) > std::time::Instant::now());
        let now = tokio::time::Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(scaled(Duration::MAX, 1.1), Duration::MAX);
        assert_eq!(stretched(Duration::MAX, 0.2), Duration::MAX);
        assert!(shortened(Duration::MAX, 0.2) <= Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let d = Duration::from_secs(10);
        for _ in 0..100 {
            let s = stretched(d, 0.2);
            assert!(s >= d && s <= Duration::from_secs(12), "{s:?}");
            let s = shortened(d, 0.2);
            assert!(s <= d && s >= Duration::from_secs(8), "{s:?}");
        }
        assert_eq!(scaled(Duration::from_secs(10), 0.5), Duration::from_secs(5));
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(fmt_duration(Duration::from_secs(37)), "37.0 s");
    }
}
