//! [`Pulse`]: knowing when the connection task has written every request
//! queued before now.

use std::time::Duration;

/// A handshake with the connection task: "has a whole poll of yours begun
/// after I asked?"
///
/// A request handed to tokio-postgres sits in its queue until the
/// connection task's next poll writes it. A caller of `get()` may poll a
/// request once and drop it (a timeout, a `select!`), then drop the client:
/// the request is queued, not written, so nothing on the wire shows it yet —
/// an abandoned `BEGIN` written after the connection went back to the pool
/// would swallow the next caller's writes into a transaction never
/// committed. [`Pulse::flushed`] asks, wakes the task, and waits until a
/// poll that began after the question has ended: every request queued
/// before it has then been written, and is seen by the wire. No round trip
/// to the server.
///
/// Most checkouts need not even that: the task is polled with a waker of
/// the pulse's own, which notes every wake (a request sent into
/// tokio-postgres's queue wakes the task). No wake since the last poll
/// began, and no poll under way, means the queue was drained and nothing
/// was queued since: [`Pulse::queue_written`] returns at once. No wake
/// since the poll under way began means whatever was queued was queued
/// before it (a request queued later wakes the task), so that poll writes
/// it: the end of that poll is waited for, and no new one is asked for —
/// the common case under load, where a caller returns its connection
/// while the task that handed it the answer is still finishing its poll.
#[derive(Debug)]
pub(crate) struct Pulse {
    /// Woken since the last poll began (a request queued, an answer
    /// arrived). True until the first poll.
    woken: std::sync::atomic::AtomicBool,
    /// Polls begun, and polls ended (one is under way while they differ).
    begun: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicU64,
    /// Questions asked.
    pub(super) asked: std::sync::atomic::AtomicU64,
    /// The highest question a finished poll had seen when it began.
    answered: std::sync::atomic::AtomicU64,
    ended: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    polled: crate::signal::Signal,
}

impl Default for Pulse {
    fn default() -> Pulse {
        Pulse {
            woken: std::sync::atomic::AtomicBool::new(true),
            begun: Default::default(),
            finished: Default::default(),
            asked: Default::default(),
            answered: Default::default(),
            ended: Default::default(),
            waker: Default::default(),
            polled: Default::default(),
        }
    }
}

/// The waker the connection is polled with: notes the wake, then wakes the
/// task.
impl std::task::Wake for Pulse {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_task();
    }
}

impl Pulse {
    /// Wakes the connection task, if a poll has handed over its waker yet.
    fn wake_task(&self) {
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            w.wake_by_ref();
        }
    }

    /// Before each poll of the connection, with the task's own waker.
    pub(super) fn before_poll(&self, waker: &std::task::Waker) {
        use std::sync::atomic::Ordering;
        {
            let mut slot = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
        // Counted before the wake is cleared: whoever sees no wake sees
        // this poll.
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.woken.store(false, Ordering::SeqCst);
    }

    /// Returns once every request queued before now has been written (at
    /// most `within`; `false` then): at once when nothing woke the task
    /// since its last poll began and no poll is under way; at the end of
    /// the poll under way when nothing woke it since that poll began;
    /// otherwise after a whole poll asked for now ([`Pulse::flushed`]).
    pub(crate) async fn queue_written(&self, within: Duration) -> bool {
        use std::sync::atomic::Ordering;
        if self.woken.load(Ordering::SeqCst) {
            return self.flushed(within).await;
        }
        let under_way = self.begun.load(Ordering::SeqCst);
        let poll_ended = || self.finished.load(Ordering::SeqCst) >= under_way;
        poll_ended() || self.after_polls(within, false, poll_ended).await
    }

    /// After each poll of the connection: `seen` is `asked` read before it.
    pub(super) fn after_poll(&self, seen: u64, ended: bool) {
        use std::sync::atomic::Ordering;
        self.finished.fetch_add(1, Ordering::SeqCst);
        if ended {
            self.ended.store(true, Ordering::Release);
        }
        self.answered.fetch_max(seen, Ordering::AcqRel);
        self.polled.notify_waiters();
    }

    /// Waits (at most `within`) until a whole poll of the connection task
    /// that began after now has ended, so every request queued before now
    /// is written.
    pub(crate) async fn flushed(&self, within: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let question = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.after_polls(within, true, || {
            self.answered.load(Ordering::Acquire) >= question
        })
        .await
    }

    /// Waits (at most `within`) until `done` holds or the connection task
    /// has ended, asked again after every poll; with `ask`, the task is
    /// woken for a poll each time `done` does not hold yet.
    async fn after_polls(&self, within: Duration, ask: bool, done: impl Fn() -> bool) -> bool {
        use std::sync::atomic::Ordering;
        let wait = self.polled.until(|| {
            if done() || self.ended.load(Ordering::Acquire) {
                return Some(());
            }
            if ask {
                self.wake_task();
            }
            None
        });
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The connection task's waker: counts the polls asked for.
    struct Task(AtomicUsize);

    impl std::task::Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Task>, std::task::Waker) {
        let task = Arc::new(Task(AtomicUsize::new(0)));
        (task.clone(), std::task::Waker::from(task))
    }

    const WITHIN: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn nothing_queued_since_the_last_poll_is_written_at_once() {
        let pulse = Pulse::default();
        let (task, waker) = task();
        pulse.before_poll(&waker);
        pulse.after_poll(0, false);
        assert!(pulse.queue_written(WITHIN).await);
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "no poll asked for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_under_way_with_no_wake_is_waited_for_and_no_other_asked_for() {
        let pulse = Arc::new(Pulse::default());
        let (task, waker) = task();
        pulse.before_poll(&waker);
        let waiting = tokio::spawn({
            let pulse = pulse.clone();
            async move { pulse.queue_written(WITHIN).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "returned before the poll under way ended"
        );
        pulse.after_poll(0, false);
        assert!(waiting.await.unwrap());
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "no poll asked for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_since_the_poll_began_asks_for_a_whole_new_poll() {
        let pulse = Arc::new(Pulse::default());
        let (task, waker) = task();
        pulse.before_poll(&waker);
        // A request queued while the poll is under way.
        std::task::Wake::wake_by_ref(&pulse);
        let woken = task.0.load(Ordering::SeqCst);
        let waiting = tokio::spawn({
            let pulse = pulse.clone();
            async move { pulse.queue_written(WITHIN).await }
        });
        tokio::task::yield_now().await;
        // The poll under way ends: not enough, it may have begun before
        // the request was queued.
        pulse.after_poll(0, false);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "returned on a poll begun earlier");
        assert!(task.0.load(Ordering::SeqCst) > woken, "a poll asked for");
        let seen = pulse.asked.load(Ordering::Acquire);
        pulse.before_poll(&waker);
        pulse.after_poll(seen, false);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_never_ends_is_waited_for_at_most_the_bound() {
        let pulse = Pulse::default();
        let (_task, waker) = task();
        pulse.before_poll(&waker);
        assert!(!pulse.queue_written(WITHIN).await);
    }
}
