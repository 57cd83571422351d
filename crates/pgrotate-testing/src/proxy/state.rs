//! What a [`FaultProxy`](super::FaultProxy) and its connections' tasks
//! share: the faults set, the rules, the open connections, the events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::{Action, BlackholeMode, Direction, FrontendMessage, ProxyEvents};

pub(super) type Predicate = dyn Fn(&FrontendMessage<'_>) -> bool + Send + Sync;

pub(super) struct Rule {
    pub(super) id: u64,
    pub(super) predicate: Box<Predicate>,
    pub(super) action: Action,
    pub(super) once: bool,
    pub(super) spent: AtomicBool,
}

/// Per-connection flags, watched by the connection's task.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Flags {
    pub(super) blackhole: bool,
    pub(super) reset: bool,
    pub(super) close: bool,
}

/// Latency in both directions, as nanoseconds.
#[derive(Default)]
pub(super) struct Latency {
    pub(super) to_server: AtomicU64,
    pub(super) to_client: AtomicU64,
}

impl Latency {
    pub(super) fn slot(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    pub(super) fn set(&self, direction: Direction, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.slot(direction).store(nanos, Ordering::Relaxed);
    }

    pub(super) fn get(&self, direction: Direction) -> Duration {
        Duration::from_nanos(self.slot(direction).load(Ordering::Relaxed))
    }
}

pub(super) struct ConnShared {
    pub(super) id: u64,
    pub(super) client: SocketAddr,
    pub(super) latency: Latency,
    pub(super) flags: watch::Sender<Flags>,
}

pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) upstream: SocketAddr,
    pub(super) latency: Latency,
    pub(super) blackhole: watch::Sender<bool>,
    pub(super) mode: Mutex<BlackholeMode>,
    pub(super) rules: Mutex<Vec<Arc<Rule>>>,
    pub(super) next_rule: AtomicU64,
    pub(super) conns: Mutex<BTreeMap<u64, Arc<ConnShared>>>,
    pub(super) next_conn: AtomicU64,
    pub(super) events: watch::Sender<ProxyEvents>,
}

/// Locks `mutex`, ignoring poisoning (the data are plain values that stay
/// consistent if a holder panicked).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The action of the first rule matching `message`; spends a one-shot rule.
pub(super) fn first_match(shared: &Shared, message: &FrontendMessage<'_>) -> Option<Action> {
    // Predicates run outside the lock: they are the caller's code.
    let rules: Vec<Arc<Rule>> = lock(&shared.rules).clone();
    for rule in rules {
        if rule.once && rule.spent.load(Ordering::SeqCst) {
            continue;
        }
        if !(rule.predicate)(message) {
            continue;
        }
        if rule.once {
            if rule.spent.swap(true, Ordering::SeqCst) {
                continue; // another connection took it
            }
            lock(&shared.rules).retain(|r| r.id != rule.id);
        }
        return Some(rule.action);
    }
    None
}
