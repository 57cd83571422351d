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
#[derive(Debug, Default)]
pub(crate) struct Pulse {
    /// Questions asked.
    pub(super) asked: std::sync::atomic::AtomicU64,
    /// The highest question a finished poll had seen when it began.
    answered: std::sync::atomic::AtomicU64,
    ended: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    polled: tokio::sync::Notify,
}

impl Pulse {
    /// Around each poll of the connection: `seen` is `asked` read before it.
    pub(super) fn after_poll(&self, seen: u64, waker: &std::task::Waker, ended: bool) {
        use std::sync::atomic::Ordering;
        {
            let mut slot = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
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
                if let Some(w) = self
                    .waker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    w.wake_by_ref();
                }
                polled.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}
