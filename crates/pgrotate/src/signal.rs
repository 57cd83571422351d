//! [`Signal`]: a [`Notify`] whose `notify_waiters` costs one atomic load
//! while nobody waits — the connection task signals after every poll and
//! every answer, and almost never has a waiter.

use std::sync::atomic::{AtomicUsize, Ordering, fence};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Signal {
    notify: Notify,
    /// Callers inside [`Signal::until`].
    waiting: AtomicUsize,
}

impl Signal {
    /// Wakes every caller inside [`Signal::until`], to check again. Call it
    /// after the state they check has changed.
    pub(crate) fn notify_waiters(&self) {
        // Pairs with the fence in `until`: either this load sees the
        // waiter, or the waiter's check sees the state changed before it.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Returns what `check` says once it says something: asked now, then
    /// again after each [`Signal::notify_waiters`].
    pub(crate) async fn until<T>(&self, mut check: impl FnMut() -> Option<T>) -> T {
        let _waiting = Waiting::new(&self.waiting);
        loop {
            // Made before the check: a notification between the two is
            // not lost.
            let notified = self.notify.notified();
            if let Some(v) = check() {
                return v;
            }
            notified.await;
        }
    }
}

/// One caller counted in [`Signal::until`], also when its future is
/// dropped mid-wait.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_the_change_it_waits_for() {
        let signal = Arc::new(Signal::default());
        let flag = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (signal, flag) = (signal.clone(), flag.clone());
            async move {
                signal
                    .until(|| flag.load(Ordering::Acquire).then_some(7))
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        flag.store(true, Ordering::Release);
        signal.notify_waiters();
        assert_eq!(waiter.await.unwrap(), 7);
        assert_eq!(signal.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_given_up_is_no_longer_counted() {
        let signal = Signal::default();
        let gave_up =
            tokio::time::timeout(Duration::from_secs(1), signal.until(|| None::<()>)).await;
        assert!(gave_up.is_err());
        assert_eq!(signal.waiting.load(Ordering::Relaxed), 0);
    }

    /// Changes and notifications racing with waiters on other threads:
    /// none is lost (each waiter would otherwise hang until the timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_notification_is_lost_to_a_race() {
        for round in 0..2000u64 {
            let signal = Arc::new(Signal::default());
            let value = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let waiter = tokio::spawn({
                let (signal, value) = (signal.clone(), value.clone());
                async move {
                    signal
                        .until(|| (value.load(Ordering::Acquire) == 1).then_some(()))
                        .await
                }
            });
            if round % 2 == 0 {
                tokio::task::yield_now().await;
            }
            value.store(1, Ordering::Release);
            signal.notify_waiters();
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a notification was lost")
                .unwrap();
        }
    }
}
