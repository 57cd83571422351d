//! Pipelined pool-level statements: connections shared by many callers at
//! once, several statements in flight on each ("lanes").
//!
//! tokio-postgres writes the requests of every task sharing one client in
//! the order they are handed to it and reads the answers in that order, so
//! N callers on one connection cost one round trip, not N. Over the
//! internet that is most of a statement's time.
//!
//! A lane is an ordinary pooled connection, checked out of the pool while
//! at least one statement is in flight on it and returned the moment the
//! last one finishes, so `get()`, `run` and `transaction` share the same
//! `max_size` connections and idle, lifetime and generation rules apply as
//! before. Where a statement goes ([`Lanes::pick`]):
//!
//! 1. while the pool has an idle connection or room to open one, a lane of
//!    its own: with connections to spare, nobody waits behind anybody;
//! 2. once every connection is busy, the lane with the fewest statements in
//!    flight, if it has fewer than the depth
//!    ([`PoolBuilder::pipeline_depth`](crate::PoolBuilder::pipeline_depth)):
//!    a lane held up by a slow statement keeps its count and is passed over;
//! 3. otherwise it waits, in order of arrival, for a slot on a lane.
//!
//! A lane of an older generation, or one whose connection failed, takes no
//! new statement and is closed when its last one finishes. While a caller
//! of `get`/`run`/`transaction` waits for a connection, one lane at a time
//! stops taking statements so its connection goes back to the pool.
//!
//! This file: the lanes and the choice; one lane's bookkeeping (the place
//! of each statement in the connection's request sequence, which is what
//! proves a statement did not run) in `lane`.

mod lane;

pub(crate) use lane::{Lane, NotSent, Submitted};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::client::Client;
use crate::wire::Answers;

/// The default pipeline depth: statements in flight on one connection
/// once every connection is busy. Measured (`benches/pipeline.rs`, 10 ms
/// round trip, 512 callers on 8 connections): 8 carries 0.13× what raw
/// pipelined clients carry, 32 0.49×, 128 0.95×; it does not change how
/// many statements wait behind a slow one (that is the callers per
/// connection), only how many may be in flight in all.
pub(crate) const DEFAULT_DEPTH: usize = 128;

/// The deepest pipeline a pool may be given.
pub(crate) const MAX_DEPTH: usize = 1024;

/// The lanes of one pool.
pub(crate) struct Lanes {
    depth: usize,
    state: Mutex<State>,
    /// The pool's close: a given-up statement stops holding its slot.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

#[derive(Default)]
struct State {
    /// Lanes taking statements.
    lanes: Vec<Arc<Lane>>,
    /// Callers waiting for a slot, oldest first: `Some(lane)` is a slot
    /// handed over, `None` a nudge to choose again.
    waiting: VecDeque<oneshot::Sender<Option<Arc<Lane>>>>,
    /// Lanes being opened (their callers wait in the pool's queue).
    opening: usize,
    /// Lanes stopped so a caller of `get` gets their connection, not yet
    /// drained.
    yielding: usize,
    /// The pool was closed: no statement joins, opens or waits.
    closed: bool,
}

/// What a statement does next.
pub(crate) enum Pick<'a> {
    /// A slot on this lane.
    Join(Slot),
    /// Open a lane: check a connection out of the pool, then
    /// [`Opening::opened`].
    Open(Opening<'a>),
    /// Wait for a slot.
    Wait(Waiting<'a>),
    /// The pool was closed.
    Closed,
}

/// What the pool looks like to [`Lanes::pick`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolState {
    pub(crate) max_size: usize,
    pub(crate) size: usize,
    pub(crate) available: usize,
    /// Callers waiting for a connection (lanes being opened among them).
    pub(crate) waiting: usize,
    pub(crate) generation: u64,
}

impl Lanes {
    pub(crate) fn new(depth: usize, shutdown: tokio::sync::watch::Receiver<bool>) -> Lanes {
        Lanes {
            depth,
            state: Mutex::default(),
            shutdown,
        }
    }

    /// Whether statements are pipelined at all (a depth above 1).
    pub(crate) fn enabled(&self) -> bool {
        self.depth > 1
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chooses where the next statement goes.
    pub(crate) fn pick(self: &Arc<Self>, pool: PoolState) -> Pick<'_> {
        let mut st = self.state();
        if st.closed {
            return Pick::Closed;
        }
        st.lanes.retain(|l| {
            let keep = l.takes_statements() && l.generation() >= pool.generation;
            if !keep {
                l.retire();
            }
            keep
        });
        if pool.waiting > st.opening && st.yielding == 0 {
            // A caller of get/run/transaction waits: the least busy lane
            // stops taking statements, so its connection goes back.
            if let Some(i) = (0..st.lanes.len()).min_by_key(|&i| st.lanes[i].in_flight()) {
                let lane = st.lanes.swap_remove(i);
                lane.retire_for_pool();
                st.yielding += 1;
            }
        }
        // An idle connection, or room to open one, not yet claimed.
        let spare = (pool.available + pool.max_size.saturating_sub(pool.size)) > st.opening;
        let best = st.lanes.iter().min_by_key(|l| l.in_flight()).cloned();
        match best {
            Some(lane) if lane.in_flight() < self.depth && !spare => {
                lane.add();
                Pick::Join(Slot::new(self, lane))
            }
            _ if spare => {
                st.opening += 1;
                Pick::Open(Opening { lanes: self })
            }
            // Every connection is busy: wait for a slot on a lane (or on
            // one being opened).
            Some(_) => wait(self, &mut st),
            None if st.opening > 0 => wait(self, &mut st),
            // Every connection is held by get/run/transaction callers:
            // wait in the pool's queue with them.
            None => {
                st.opening += 1;
                Pick::Open(Opening { lanes: self })
            }
        }
    }

    /// The pool is closed: no lane takes a new statement, and every caller
    /// waiting for a slot chooses again (and finds the pool closed).
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        for lane in st.lanes.drain(..) {
            lane.retire();
        }
        for w in st.waiting.drain(..) {
            let _ = w.send(None);
        }
    }

    /// A statement's slot is free: handed to the oldest waiter if the lane
    /// still takes statements; otherwise the lane drains, and is dropped
    /// (its connection returned or closed) when its last statement ends.
    fn release(&self, lane: &Arc<Lane>) {
        let mut st = self.state();
        if lane.takes_statements() {
            while let Some(w) = st.waiting.pop_front() {
                if w.send(Some(lane.clone())).is_ok() {
                    return;
                }
            }
        } else {
            // Someone waiting may now open a lane of their own.
            nudge(&mut st);
        }
        if lane.remove() == 0 {
            st.lanes.retain(|l| !Arc::ptr_eq(l, lane));
            if lane.yielded_to_pool() {
                st.yielding = st.yielding.saturating_sub(1);
            }
        }
    }
}

/// Queues the caller for a slot.
fn wait<'a>(lanes: &'a Arc<Lanes>, st: &mut State) -> Pick<'a> {
    let (tx, rx) = oneshot::channel();
    st.waiting.push_back(tx);
    Pick::Wait(Waiting {
        lanes,
        rx: Some(rx),
    })
}

/// Wakes the oldest waiter to choose again.
fn nudge(st: &mut State) {
    while let Some(w) = st.waiting.pop_front() {
        if w.send(None).is_ok() {
            return;
        }
    }
}

/// A statement's place on a lane; frees it when dropped — or, when the
/// statement was handed to tokio-postgres and its caller gave up before
/// the answer, once the answer comes (the server runs it all the same):
/// the depth bounds the statements on a connection, not only the callers
/// still waiting for theirs.
pub(crate) struct Slot {
    lanes: Arc<Lanes>,
    lane: Arc<Lane>,
    /// Its statement's place among the connection's requests once handed
    /// to tokio-postgres, and how long its answer is waited for.
    placed: Option<(u64, Option<Instant>)>,
}

/// How long a given-up statement with no attempt timeout keeps its slot
/// at most, waiting for its answer (the pool's close ends the wait too).
const GIVEN_UP_WAIT: Duration = Duration::from_secs(3600);

impl Slot {
    fn new(lanes: &Arc<Lanes>, lane: Arc<Lane>) -> Slot {
        Slot {
            lanes: lanes.clone(),
            lane,
            placed: None,
        }
    }

    pub(crate) fn lane(&self) -> &Arc<Lane> {
        &self.lane
    }

    /// Its statement is on the wire at `place`; if its caller gives up,
    /// the slot stays taken until the answer comes, or `until`.
    pub(crate) fn placed(&mut self, place: u64, until: Option<Instant>) {
        self.placed = Some((place, until));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((place, until)) = self.placed.take()
            && !self.lane.wire().is_answered(place)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let slot = Slot {
                lanes: self.lanes.clone(),
                lane: self.lane.clone(),
                placed: None,
            };
            let within = until.map_or(GIVEN_UP_WAIT, |u| {
                u.saturating_duration_since(Instant::now())
            });
            let mut shutdown = self.lanes.shutdown.clone();
            runtime.spawn(async move {
                let unanswered = tokio::select! {
                    answers = slot.lane.wire().answered(place, within) => answers == Answers::Unknown,
                    // Closed (or dropped): the slot is let go at once.
                    _ = shutdown.wait_for(|closed| *closed) => false,
                };
                if unanswered {
                    // No answer within its attempt's bound: the connection
                    // is not answering, for anyone on it (as for a caller
                    // who waited).
                    slot.lane.kill();
                }
                drop(slot);
            });
            return;
        }
        self.lanes.release(&self.lane);
    }
}

/// A lane being opened; [`Opening::opened`] with its connection, or
/// dropped when getting one failed.
pub(crate) struct Opening<'a> {
    lanes: &'a Arc<Lanes>,
}

impl<'a> Opening<'a> {
    /// The new lane, with the caller's slot on it; spare slots go to
    /// waiting callers.
    pub(crate) fn opened(self, client: Client) -> Slot {
        let lanes = self.lanes;
        let lane = Arc::new(Lane::new(client));
        lane.add();
        let mut st = lanes.state();
        if st.closed {
            // Closed while it opened: its caller's statement only.
            lane.retire();
            drop(st);
            return Slot::new(lanes, lane);
        }
        while lane.in_flight() < lanes.depth {
            let Some(w) = st.waiting.pop_front() else {
                break;
            };
            lane.add();
            if w.send(Some(lane.clone())).is_err() {
                lane.remove();
            }
        }
        st.lanes.push(lane.clone());
        drop(st);
        // `self` drops here: no longer opening.
        Slot::new(lanes, lane)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut st = self.lanes.state();
        st.opening = st.opening.saturating_sub(1);
        nudge(&mut st);
    }
}

/// A caller waiting for a slot.
pub(crate) struct Waiting<'a> {
    lanes: &'a Arc<Lanes>,
    rx: Option<oneshot::Receiver<Option<Arc<Lane>>>>,
}

impl<'a> Waiting<'a> {
    /// A slot (`Some`), or `None`: choose again.
    pub(crate) async fn slot(mut self) -> Option<Slot> {
        let rx = self.rx.as_mut()?;
        let got = rx.await.ok().flatten();
        self.rx = None;
        got.map(|lane| Slot::new(self.lanes, lane))
    }
}

impl Drop for Waiting<'_> {
    /// Given up waiting: a slot handed over meanwhile is handed on.
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            match rx.try_recv() {
                Ok(Some(lane)) => self.lanes.release(&lane),
                Ok(None) => nudge(&mut self.lanes.state()),
                Err(_) => self.lanes.state().waiting.retain(|w| !w.is_closed()),
            }
        }
    }
}
