//! One checkout, bounded in time by one timer: the wait for a slot ends at
//! the wait timeout; once the checkout has its slot (checking an idle
//! connection, opening one, refetching), it ends by the caller's deadline —
//! the manager's parts end by it themselves, the timer is the backstop.
//!
//! One timer, not deadpool's wait timeout plus a backstop around it: a
//! checkout that has to wait (under load, most do) arms it once, and one
//! that finds an idle connection at once never arms it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use deadpool::managed::{PoolError, TimeoutType};
use tokio::time::{Instant, Sleep};

use crate::time::later;

/// How long past the deadline the backstop waits for the manager to end
/// with an error of its own, which says why.
const GRACE: Duration = Duration::from_millis(250);

tokio::task_local! {
    /// The checkout being polled on this task: the manager's `create` and
    /// `recycle` run inside the caller's poll, so they see it.
    static CHECKOUT: Checkout;
}

/// What the manager and the timer share about one checkout.
struct Checkout {
    deadline: Instant,
    /// The manager was entered: the wait for a slot is over.
    has_slot: Cell<bool>,
}

/// The caller's deadline, inside a checkout (`None` outside one: the
/// background tasks).
pub(crate) fn deadline() -> Option<Instant> {
    CHECKOUT.try_with(|c| c.deadline).ok()
}

/// Said by the manager's `create` and `recycle`: the checkout has its slot,
/// the wait timeout no longer applies.
pub(crate) fn has_slot() {
    let _ = CHECKOUT.try_with(|c| c.has_slot.set(true));
}

/// `checkout` (deadpool's, with no wait timeout of its own) with a slot
/// waited for until `wait_until` at most, the whole checkout ended by the
/// deadline plus [`GRACE`] at most. Either end is `Timeout(Wait)`.
///
/// A plain future rather than an `async fn`: the checkout is built in
/// place inside it, not moved into an async function's state and again
/// into a scope's (each move a copy of deadpool's 2 KB future).
pub(crate) fn bounded<F>(checkout: F, wait_until: Instant, deadline: Instant) -> Bounded<F> {
    Bounded {
        checkout,
        timer: None,
        wait_until,
        deadline,
        has_slot: false,
    }
}

pin_project_lite::pin_project! {
    /// See [`bounded`].
    pub(crate) struct Bounded<F> {
        #[pin]
        checkout: F,
        // Made at the first wait: a checkout that is ready at once never
        // touches the timer wheel.
        #[pin]
        timer: Option<Sleep>,
        wait_until: Instant,
        deadline: Instant,
        has_slot: bool,
    }
}

impl<T, E, F> Future for Bounded<F>
where
    F: Future<Output = Result<T, PoolError<E>>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let state = Checkout {
            deadline: *this.deadline,
            has_slot: Cell::new(*this.has_slot),
        };
        let checkout = this.checkout;
        let had_budget = tokio::task::coop::has_budget_remaining();
        let (got, has_slot) = CHECKOUT.sync_scope(state, || {
            let got = checkout.poll(cx);
            (got, CHECKOUT.with(|c| c.has_slot.get()))
        });
        *this.has_slot = has_slot;
        if let Poll::Ready(got) = got {
            return Poll::Ready(got);
        }
        let backstop = later(*this.deadline, GRACE);
        if this.timer.is_none() {
            let first = if *this.has_slot {
                backstop
            } else {
                (*this.wait_until).min(backstop)
            };
            this.timer.set(Some(tokio::time::sleep_until(first)));
        }
        let Some(mut sleep) = this.timer.as_pin_mut() else {
            unreachable!("the timer was set above");
        };
        // A checkout that used up the task's budget (a manager reading a
        // flood) must not keep its deadline from firing: the timer is then
        // polled unconstrained, as tokio's own `Timeout` does.
        let unbudgeted = had_budget && !tokio::task::coop::has_budget_remaining();
        loop {
            if unbudgeted {
                ready!(Pin::new(&mut tokio::task::coop::unconstrained(sleep.as_mut())).poll(cx));
            } else {
                ready!(sleep.as_mut().poll(cx));
            }
            if !*this.has_slot || sleep.deadline() >= backstop {
                return Poll::Ready(Err(PoolError::Timeout(TimeoutType::Wait)));
            }
            sleep.as_mut().reset(backstop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Got = Result<u8, PoolError<()>>;

    /// A checkout that takes its slot at `slot_at` (if ever) and ends at
    /// `done_at`.
    async fn scripted(slot_at: Option<Duration>, done_at: Duration) -> Got {
        let start = Instant::now();
        if let Some(at) = slot_at {
            tokio::time::sleep_until(start + at).await;
            has_slot();
        }
        tokio::time::sleep_until(start + done_at).await;
        Ok(7)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    async fn run(
        slot_at: Option<Duration>,
        done_at: Duration,
        wait: u64,
        dl: u64,
    ) -> (Got, Duration) {
        let start = Instant::now();
        let got = bounded(
            scripted(slot_at, done_at),
            start + secs(wait),
            start + secs(dl),
        )
        .await;
        (got, start.elapsed())
    }

    fn timed_out(got: &Got) -> bool {
        matches!(got, Err(PoolError::Timeout(TimeoutType::Wait)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkout_ready_in_time_is_returned() {
        let (got, took) = run(Some(secs(1)), secs(2), 5, 10).await;
        assert!(matches!(got, Ok(7)));
        assert_eq!(took, secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn no_slot_by_the_wait_timeout_ends_the_checkout_then() {
        let (got, took) = run(None, secs(60), 5, 10).await;
        assert!(timed_out(&got));
        assert_eq!(took, secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_slot_the_checkout_runs_past_the_wait_timeout_to_its_deadline() {
        // A connect under way at the wait timeout goes on.
        let (got, _) = run(Some(secs(4)), secs(8), 5, 10).await;
        assert!(matches!(got, Ok(7)));
        // One that never ends is cut at the deadline plus the grace.
        let (got, took) = run(Some(secs(4)), secs(600), 5, 10).await;
        assert!(timed_out(&got));
        assert_eq!(took, secs(10) + GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_deadline_still_ends_by_the_deadline() {
        let (got, took) = run(None, secs(600), 60, 10).await;
        assert!(timed_out(&got));
        assert_eq!(took, secs(10) + GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_manager_sees_the_deadline_inside_the_checkout_only() {
        assert_eq!(deadline(), None);
        let start = Instant::now();
        let seen = bounded(
            async { Ok::<_, PoolError<()>>(deadline()) },
            start + secs(1),
            start + secs(3),
        )
        .await;
        assert_eq!(seen.ok().flatten(), Some(start + secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_of_forever_does_not_panic() {
        let start = Instant::now();
        let got = bounded(
            scripted(None, secs(1)),
            later(start, Duration::MAX),
            later(start, Duration::MAX),
        )
        .await;
        assert!(matches!(got, Ok(7)));
    }

    /// A manager that uses up the task's budget on every poll (reading a
    /// flood) still meets the backstop.
    #[tokio::test(start_paused = true)]
    async fn a_checkout_that_spends_every_budget_still_ends_at_the_backstop() {
        let start = Instant::now();
        let flood = async {
            has_slot();
            for _ in 0..u64::MAX {
                tokio::task::coop::consume_budget().await;
            }
            Got::Ok(0)
        };
        let checkout = tokio::spawn(bounded(flood, start + secs(1), start + secs(3)));
        tokio::time::advance(secs(3) + GRACE).await;
        for _ in 0..10_000 {
            if checkout.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(checkout.is_finished(), "the backstop never fired");
        assert!(matches!(
            checkout.await.unwrap(),
            Err(PoolError::Timeout(TimeoutType::Wait))
        ));
    }
}
