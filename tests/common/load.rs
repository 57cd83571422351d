//! A steady load of `select 1` callers through `Pool::run`, counting every
//! error and telling when the first call started after a mark succeeded:
//! "callers see nothing" and "recovered within …" for the rotation, budget
//! and failover tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    errors: AtomicU64,
    warmed: AtomicU64,
    /// Calls started at or after this count for `first_success_after`.
    mark: Mutex<Option<Instant>>,
    first_after_mark: Mutex<Option<Instant>>,
    /// Workers whose call started at or after the mark has succeeded.
    after_mark: AtomicU64,
    changed: Notify,
}

/// The running load. Stop it with [`Load::stop`].
pub struct Load {
    shared: Arc<Shared>,
    workers: usize,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` tasks calling `select 1` through `run`, back to back.
    pub fn start(pool: &pgrotate::Pool, workers: usize) -> Load {
        let shared = Arc::new(Shared::default());
        let handles = (0..workers)
            .map(|w| {
                let (pool, shared) = (pool.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut warmed = false;
                    let mut reported: Option<Instant> = None;
                    while !shared.stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match super::select_one(&pool).await {
                            Ok(1) => {
                                shared.ok.fetch_add(1, Ordering::Relaxed);
                                if !warmed {
                                    warmed = true;
                                    shared.warmed.fetch_add(1, Ordering::SeqCst);
                                    shared.changed.notify_waiters();
                                }
                                let mark = *shared.mark.lock().unwrap();
                                if let Some(m) = mark.filter(|&m| started >= m) {
                                    let mut first = shared.first_after_mark.lock().unwrap();
                                    if first.is_none() {
                                        *first = Some(Instant::now());
                                        shared.changed.notify_waiters();
                                    }
                                    drop(first);
                                    if reported != Some(m) {
                                        reported = Some(m);
                                        shared.after_mark.fetch_add(1, Ordering::SeqCst);
                                        shared.changed.notify_waiters();
                                    }
                                }
                            }
                            Ok(n) => panic!("select 1 returned {n}"),
                            Err(e) => {
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                eprintln!("worker {w}: {e:#}");
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Load {
            shared,
            workers,
            handles,
        }
    }

    /// Waits until every worker has succeeded once.
    pub async fn warmed(&self) {
        loop {
            let changed = self.shared.changed.notified();
            if self.shared.warmed.load(Ordering::SeqCst) as usize >= self.workers {
                return;
            }
            changed.await;
        }
    }

    /// From now on, the first call that starts and succeeds is recorded.
    pub fn mark(&self) -> Instant {
        let now = Instant::now();
        *self.shared.mark.lock().unwrap() = Some(now);
        *self.shared.first_after_mark.lock().unwrap() = None;
        self.shared.after_mark.store(0, Ordering::SeqCst);
        now
    }

    /// Waits until every worker has had a call that started after the mark
    /// succeed.
    pub async fn all_succeeded_after_mark(&self) {
        loop {
            let changed = self.shared.changed.notified();
            if self.shared.after_mark.load(Ordering::SeqCst) as usize >= self.workers {
                return;
            }
            changed.await;
        }
    }

    /// How long after the mark the first call started after it succeeded
    /// (waits for it).
    pub async fn first_success_after_mark(&self) -> Duration {
        loop {
            let changed = self.shared.changed.notified();
            let mark = self.shared.mark.lock().unwrap().expect("mark() first");
            if let Some(at) = *self.shared.first_after_mark.lock().unwrap() {
                return at.duration_since(mark);
            }
            changed.await;
        }
    }

    /// Errors so far.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Stops every worker, asserting no call failed; returns the
    /// successful calls.
    pub async fn stop_without_errors(self) -> u64 {
        let (ok, errors) = self.stop().await;
        assert_eq!(errors, 0, "callers saw errors ({ok} calls)");
        ok
    }

    /// Stops every worker; returns (successful calls, errors).
    pub async fn stop(self) -> (u64, u64) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.await.unwrap();
        }
        (
            self.shared.ok.load(Ordering::Relaxed),
            self.shared.errors.load(Ordering::Relaxed),
        )
    }
}
