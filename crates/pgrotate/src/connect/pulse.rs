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
/// was queued since: [`Pulse::queue_written`] returns at once.
#[derive(Debug)]
pub(crate) struct Pulse {
    /// Woken since the last poll began (a request queued, an answer
    /// arrived). True until the first poll.
    woken: std::sync::atomic::AtomicBool,
    /// A poll under way.
    in_poll: std::sync::atomic::AtomicBool,
    /// Questions asked.
    pub(super) asked: std::sync::atomic::AtomicU64,
    /// The highest question a finished poll had seen when it began.
    answered: std::sync::atomic::AtomicU64,
    ended: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    polled: tokio::sync::Notify,
}

impl Default for Pulse {
    fn default() -> Pulse {
        Pulse {
            woken: std::sync::atomic::AtomicBool::new(true),
            in_poll: std::sync::atomic::AtomicBool::new(false),
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
        self.in_poll.store(true, Ordering::SeqCst);
        self.woken.store(false, Ordering::SeqCst);
    }

    /// Whether a request may sit queued, not yet written: a wake since the
    /// last poll began, or a poll under way.
    fn may_hold_a_request(&self) -> bool {
        use std::sync::atomic::Ordering;
        // `woken` first: a poll clears it after marking itself under way.
        self.woken.load(Ordering::SeqCst) || self.in_poll.load(Ordering::SeqCst)
    }

    /// [`Pulse::flushed`] when a request may sit queued; at once otherwise.
    pub(crate) async fn queue_written(&self, within: Duration) -> bool {
        !self.may_hold_a_request() || self.flushed(within).await
    }

    /// After each poll of the connection: `seen` is `asked` read before it.
    pub(super) fn after_poll(&self, seen: u64, ended: bool) {
        use std::sync::atomic::Ordering;
        self.in_poll.store(false, Ordering::SeqCst);
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
        let wait = async {
            loop {
                let polled = self.polled.notified();
                if self.answered.load(Ordering::Acquire) >= question
                    || self.ended.load(Ordering::Acquire)
                {
                    return;
                }
                self.wake_task();
                polled.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}
