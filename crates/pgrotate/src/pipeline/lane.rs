//! One lane: a pooled connection several statements share, and the place
//! of each statement in the connection's request sequence.
//!
//! Why the place: when the connection is lost with N statements in flight,
//! each must tell on its own whether it ran. The wire counts, in one
//! sequence, the requests written (`Sync`/`Query`), the ones answered, and
//! where a `FATAL` error came; a statement knows its own place because it
//! is handed to tokio-postgres under the lane's lock, which counts it:
//!
//! - its `Execute` was never written (fewer run messages written than its
//!   place among them): it did not run;
//! - the server said `FATAL` (it exits after that) while an earlier request
//!   was the oldest unanswered: it never got to it;
//! - it was that oldest one and had no `CommandComplete` yet, or it got an
//!   error of its own (the server aborts the statement's implicit
//!   transaction; the extended protocol commits only at the `Sync` after
//!   `CommandComplete`): nothing was committed.
//!
//! Anything else is an unknown outcome. The count is exact because every
//! request a lane's connection gets is counted: a statement whose prepared
//! form is cached is sent in the first poll of its future (tokio-postgres
//! encodes and queues it before its first `await`); a statement not yet
//! prepared is prepared under the lock, and since every request before it
//! was then answered, the count is read back from the wire.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use tokio_postgres::Statement;
use tokio_postgres::types::Type;

use crate::client::Client;
use crate::wire::Wire;

/// A statement's future on a lane, boxed: it lives on after the lock that
/// sent it is released.
pub(crate) type Running<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a>>;

/// A statement handed to tokio-postgres on a lane.
pub(crate) struct Submitted<'a, T> {
    pub(crate) running: Running<'a, T>,
    /// Its place among the requests of the connection (1-based).
    pub(crate) place: u64,
    /// Its place among the messages that run something (1-based).
    pub(crate) run: u64,
}

/// Why a statement was not sent.
pub(crate) enum NotSent {
    /// tokio-postgres refused it before sending (wrong parameters, the
    /// connection is closed), or its prepare failed.
    Error(tokio_postgres::Error),
    /// The lane's count is lost (a prepare under way was dropped): take
    /// another lane.
    Unsynced,
}

/// What the lane's lock guards: the places handed out so far.
struct Counts {
    requests: u64,
    runs: u64,
    /// A prepare was under way when its future was dropped: what it sent
    /// is not counted.
    unsynced: bool,
}

pub(crate) struct Lane {
    client: Option<Client>,
    generation: u64,
    wire: Arc<Wire>,
    /// Statements in flight (changed under the lanes' lock).
    in_flight: AtomicUsize,
    /// Takes no new statement.
    retired: AtomicBool,
    /// Retired so its connection goes back to a waiting `get`.
    yielded: AtomicBool,
    /// Its connection failed: closed, not returned, when the lane ends.
    broken: AtomicBool,
    counts: tokio::sync::Mutex<Counts>,
    /// The statements prepared on this connection by its lanes' callers
    /// (SQL and parameter types): one not among them is prepared by a task
    /// of its own, which runs to its end whatever its caller does.
    prepared: std::sync::Mutex<HashSet<(String, Vec<Type>)>>,
}

impl Lane {
    pub(super) fn new(client: Client) -> Lane {
        let wire = client.wire();
        let (requests, _) = wire.requests().unwrap_or_default();
        let runs = wire.progress().map_or(0, |p| p.runs_sent);
        Lane {
            generation: client.generation(),
            client: Some(client),
            wire,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            yielded: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            counts: tokio::sync::Mutex::new(Counts {
                requests,
                runs,
                unsynced: false,
            }),
            prepared: Default::default(),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a lane holds its connection until dropped")
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn wire(&self) -> &Wire {
        &self.wire
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(super) fn add(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// One fewer in flight; how many are left.
    pub(super) fn remove(&self) -> usize {
        self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1
    }

    pub(super) fn takes_statements(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && !self.broken.load(Ordering::Acquire)
    }

    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(super) fn retire_for_pool(&self) {
        self.yielded.store(true, Ordering::Release);
        self.retire();
    }

    pub(super) fn yielded_to_pool(&self) -> bool {
        self.yielded.load(Ordering::Acquire)
    }

    /// Its connection failed: no new statement; closed when the last one
    /// in flight ends.
    pub(crate) fn break_off(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Closes the connection (an attempt found it unanswering): no new
    /// statement; nothing more is written from now on, so the wire's counts
    /// are final; the server is asked to cancel what is still queued on it,
    /// then the socket is closed (`Connection::stop`).
    pub(crate) fn kill(&self) {
        self.break_off();
        self.client().stop();
    }

    /// Prepares `sql` on the connection if this lane has not yet, in a task
    /// of its own under the lane's lock: a caller that stops polling (or
    /// drops) its statement halfway cannot hold the others' statements
    /// back, nor leave a prepare under way uncounted.
    async fn prepare_once(self: &Arc<Self>, sql: &str, types: &[Type]) -> Result<(), NotSent> {
        let key = (sql.to_owned(), types.to_vec());
        if self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        let lane = self.clone();
        let task = tokio::spawn(async move {
            let mut counts = lane.counts.lock().await;
            let prepared = {
                let mut prepare =
                    std::pin::pin!(lane.client().prepare_typed_cached(&key.0, &key.1));
                match poll_once(prepare.as_mut()).await {
                    // In the connection's statement cache already (an earlier
                    // checkout prepared it): nothing was sent, the count
                    // stands — statements handed to tokio-postgres may not be
                    // written yet, so the wire's count would be short.
                    Poll::Ready(r) => r.map(drop),
                    Poll::Pending => {
                        let r = prepare.await.map(drop);
                        if r.is_ok() {
                            // A round trip: every request before it was written
                            // and answered, so the wire counts them all — and
                            // the prepare's own (and any type lookups').
                            lane.resync(&mut counts);
                        }
                        r
                    }
                }
            };
            match &prepared {
                Ok(()) => {
                    lane.prepared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key);
                }
                // Its error may have come before its `Sync` was written:
                // the count is not certain; the lane retires.
                Err(_) => lane.retire(),
            }
            prepared
        });
        match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotSent::Error(e)),
            Err(_) => {
                self.retire();
                Err(NotSent::Unsynced)
            }
        }
    }

    /// Prepares `sql` (once per connection, see [`Lane::prepare_once`]) and
    /// hands the statement `run` makes of it to tokio-postgres, counting
    /// its place.
    pub(crate) async fn submit<'a, T, F>(
        self: &'a Arc<Self>,
        sql: &'a str,
        types: &'a [Type],
        run: impl FnOnce(&'a Client, Statement) -> F,
    ) -> Result<Submitted<'a, T>, NotSent>
    where
        T: Send + 'a,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a,
    {
        self.prepare_once(sql, types).await?;
        let client = self.client();
        let mut counts = self.counts.lock().await;
        if counts.unsynced {
            self.retire();
            return Err(NotSent::Unsynced);
        }
        let mut prepare = std::pin::pin!(client.prepare_typed_cached(sql, types));
        let stmt = match poll_once(prepare.as_mut()).await {
            Poll::Ready(r) => r.map_err(NotSent::Error)?,
            Poll::Pending => {
                // Not cached after all (a `get()` caller removed it from
                // the cache): prepared now, under the lock; every request
                // before it gets answered first, so the wire's count is the
                // lane's.
                counts.unsynced = true;
                let stmt = match prepare.await {
                    Ok(stmt) => stmt,
                    Err(e) => {
                        // Its error may have come before its `Sync` was
                        // written: the count is not certain; the lane
                        // retires.
                        self.retire();
                        return Err(NotSent::Error(e));
                    }
                };
                self.resync(&mut counts);
                counts.unsynced = false;
                stmt
            }
        };
        let mut running: Running<'a, T> = Box::pin(run(client, stmt));
        match poll_once(running.as_mut()).await {
            // Refused before it was sent, or (never in practice) answered
            // at once: nothing of it is on the wire.
            Poll::Ready(Err(e)) => Err(NotSent::Error(e)),
            Poll::Ready(Ok(v)) => {
                counts.requests += 1;
                counts.runs += 1;
                Ok(Submitted {
                    running: Box::pin(std::future::ready(Ok(v))),
                    place: counts.requests,
                    run: counts.runs,
                })
            }
            Poll::Pending => {
                counts.requests += 1;
                counts.runs += 1;
                Ok(Submitted {
                    running,
                    place: counts.requests,
                    run: counts.runs,
                })
            }
        }
    }

    /// After a prepare's round trip under the lock: the wire has written
    /// and counted every request before it (and the prepare's own), so its
    /// count is the lane's — never lower than what the lane counted.
    fn resync(&self, counts: &mut Counts) {
        let (requests, _) = self.wire.requests().unwrap_or_default();
        counts.requests = counts.requests.max(requests);
        counts.runs = counts
            .runs
            .max(self.wire.progress().map_or(0, |p| p.runs_sent));
    }

    /// Whether the failure of the statement at `place` (and `run` among
    /// the messages that run something) proves it did not run.
    pub(crate) fn proves_not_run(&self, place: u64, run: u64, db_error: bool) -> bool {
        let not_run = self.wire.proves_not_run(place, run, db_error);
        if !not_run {
            // What an operator (or a test) needs to tell a lost FATAL from
            // one that came after the statement completed.
            let (sent, answered) = self.wire.requests().unwrap_or_default();
            tracing::debug!(target: "pgrotate::wire", place, sent, answered, fatal = ?self.wire.fatal(), "a pipelined statement was sent and not proven not to have run");
        }
        not_run
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.broken.load(Ordering::Acquire)
        {
            client.discard();
        }
    }
}

/// Polls `fut` once, with the caller's context.
async fn poll_once<F: Future + ?Sized>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}
