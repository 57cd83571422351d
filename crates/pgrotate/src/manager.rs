//! The deadpool `Manager`: connections tagged with the generation they were
//! opened with.
//!
//! - `create` connects with the newest generation, within the caller's
//!   checkout deadline. When the server rejects the credentials (or the
//!   database is gone) it asks the refresh coordinator for a newer
//!   generation and tries again, until the deadline: then
//!   `CredentialsRejected`, saying what the source returned and when it may
//!   be asked again. A connect that finds no server (refused, no answer,
//!   the server shutting down) asks for a refetch only when one can go out
//!   now (after a failover the URL may point elsewhere); otherwise the
//!   error goes back to the caller's retry loop at once, so calls resume as
//!   soon as the server is back.
//! - `recycle` (when a connection is handed out again) drops closed
//!   connections, busy ones (their work was abandoned), those of an older
//!   generation or drain epoch, and those past their lifetime; one idle
//!   for longer than `ping_after_idle` is checked with an empty query first
//!   (like pgx, which pings connections idle for over a second). A
//!   checked-out connection is never touched: an old one is closed when it
//!   comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};

use crate::budget::Trigger;
use crate::classify::Fault;
use crate::connect::{Canceller, ConnectFailed, open_bounded};
use crate::error::{Error, ErrorKind, describe_postgres};
use crate::generation::{Generation, Refresher};
use crate::metrics::Closed;
use crate::refetch::Wait;
use crate::stats::Counters;
use crate::time::later;
use crate::wire::{TxStatus, Wire};

const TARGET: &str = "pgrotate::manager";

/// One pooled connection: its state behind a box, so that what deadpool
/// moves on every checkout and return (into and out of its slots, through
/// its checkout future's states, into a [`Client`](crate::Client)) is a
/// pointer, not 256 bytes.
pub(crate) struct Connection(Box<ConnectionState>);

impl std::ops::Deref for Connection {
    type Target = ConnectionState;

    fn deref(&self) -> &ConnectionState {
        &self.0
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut ConnectionState {
        &mut self.0
    }
}

/// What a [`Connection`] holds.
pub(crate) struct ConnectionState {
    /// deadpool-postgres's wrapper: the client with its statement cache
    /// (`prepare_cached`), as deadpool-postgres hands it out.
    pub(crate) client: deadpool_postgres::ClientWrapper,
    pub(crate) generation: u64,
    /// Work in flight (set by `run` / `transaction`); a busy connection
    /// is never handed out again.
    pub(crate) busy: bool,
    /// The generation authority, to tell on return whether it is stale.
    pub(crate) refresher: Arc<Refresher>,
    /// When it is closed instead of handed out again (`max_lifetime`, with
    /// jitter so a fleet does not reconnect in one wave).
    pub(crate) expires_at: Option<Instant>,
    /// What the server said on it: transaction status, unanswered requests,
    /// `in_hot_standby`.
    pub(crate) wire: Arc<Wire>,
    /// How to reach the server again, to cancel a request left running.
    pub(crate) canceller: Canceller,
    /// Handed out since its last check (its last caller may have left a
    /// request queued in tokio-postgres, not yet written).
    pub(crate) lent: bool,
    /// Its connection task.
    pub(crate) task: tokio::task::AbortHandle,
    /// How far its connection task has come (requests queued, not yet
    /// written).
    pub(crate) pulse: Arc<crate::connect::Pulse>,
}

impl Drop for Connection {
    /// A connection closed with work still running on it (its caller gave
    /// up, a hook timed out, a row stream was dropped, an attempt on it got
    /// no answer in time): the server is asked to cancel that work and the
    /// socket is closed once it is answered, in the background and bounded
    /// (`connect::stop_in_background`), rather than left open while the
    /// connection task reads the work's answer to its end — on a plan of
    /// 20 connections, a slot each. An idle connection ends gracefully
    /// (`Terminate`).
    fn drop(&mut self) {
        let running = self.busy || self.wire.unanswered().is_some_and(|n| n > 0);
        if (running || self.wire.is_sealed()) && tokio::runtime::Handle::try_current().is_ok() {
            self.stop();
        }
    }
}

/// How long a returned connection's last answer may lag behind its
/// caller (the answer and its `ReadyForQuery` usually come in one read).
const SETTLE: Duration = Duration::from_millis(50);

impl Connection {
    /// Stops the work on this connection and closes it: nothing more is
    /// written from now on (what was sent is final when this returns); the
    /// server is asked, in the background, to cancel each request still
    /// unanswered, then the socket is closed. Callers still waiting get
    /// the answers that come meanwhile, then an error.
    pub(crate) fn stop(&self) {
        crate::connect::stop_in_background(
            self.client.cancel_token(),
            self.canceller.clone(),
            self.wire.clone(),
            self.task.clone(),
        );
    }

    /// Whether a request that may do work (not a statement close) is
    /// still unanswered after [`SETTLE`]: its caller left it running.
    pub(crate) async fn left_running(&self) -> bool {
        self.wire.unanswered_work().is_some_and(|n| n > 0) && !self.wire.settled(SETTLE).await
    }

    /// Whether the pool should keep this connection (idle or returning):
    /// of the current generation and within its lifetime.
    pub(crate) fn is_current(&self) -> bool {
        self.stale().is_none()
    }

    /// Why the pool should not keep it: of an older generation, or past
    /// its lifetime.
    pub(crate) fn stale(&self) -> Option<Closed> {
        if self.generation < self.refresher.current_id() {
            Some(Closed::StaleGeneration)
        } else if self.expires_at.is_some_and(|t| Instant::now() >= t) {
            Some(Closed::Lifetime)
        } else {
            None
        }
    }

    /// [`Connection::is_current`] for the background task's sweep, each
    /// connection it closes counted by reason.
    pub(crate) fn keep(&self) -> bool {
        let stale = self.stale();
        if let Some(reason) = stale {
            crate::metrics::connections_closed(reason, 1);
        }
        stale.is_none()
    }
}

pub(crate) struct Manager {
    pub(crate) refresher: Arc<Refresher>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ping_after_idle: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    /// The create deadline when no caller set one.
    pub(crate) create_timeout: Duration,
    /// A generation one of whose idle connections did not answer its check
    /// within the whole ping timeout (0: none): its other idle connections
    /// are closed without a check of their own, so a blackholed network
    /// costs one ping timeout, not one per idle connection.
    pub(crate) suspect: std::sync::atomic::AtomicU64,
    /// Through a transaction-mode pooler: the statement cache lives no
    /// longer than one checkout.
    pub(crate) pooler: bool,
    /// The caller's setup of every new connection.
    pub(crate) after_connect: Option<crate::hook::Hook>,
}

impl Manager {
    /// When a create must be done: the create timeout from now, and never
    /// past the caller's checkout deadline.
    fn checkout_deadline(&self) -> tokio::time::Instant {
        let own = later(tokio::time::Instant::now(), self.create_timeout);
        crate::pool::checkout::deadline().map_or(own, |d| d.min(own))
    }

    async fn connect(
        &self,
        generation: &Generation,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, ConnectFailed> {
        self.counters
            .connect_attempts
            .fetch_add(1, Ordering::Relaxed);
        let opened = open_bounded(generation, deadline).await?;
        let mut conn = Connection(Box::new(ConnectionState {
            client: wrap(opened.client),
            generation: generation.id,
            busy: false,
            refresher: self.refresher.clone(),
            expires_at: self
                .max_lifetime
                .map(|l| crate::time::after(crate::time::shortened(l, 0.2))),
            wire: opened.wire,
            canceller: opened.canceller,
            lent: false,
            task: opened.task,
            pulse: opened.pulse,
        }));
        if let Some(hook) = &self.after_connect {
            // Busy while the hook runs: if it fails or times out, the
            // connection is dropped with its work cancelled and closed.
            conn.busy = true;
            crate::hook::run(hook, &conn.client, &conn.wire, deadline)
                .await
                .map_err(ConnectFailed::Hook)?;
            conn.busy = false;
        }
        self.counters
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_opened();
        Ok(conn)
    }
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = Error;

    /// Boxed: a connect (TLS, authentication, refetches) is a large
    /// future, and deadpool keeps `create`'s future inside every checkout's
    /// — a `get()` or `run` future would carry its size (18 KB) and copy it
    /// each time it is moved or boxed, where a connect is rare.
    async fn create(&self) -> Result<Connection, Error> {
        crate::pool::checkout::has_slot();
        Box::pin(self.create_connection()).await
    }

    async fn recycle(&self, conn: &mut Connection, metrics: &Metrics) -> RecycleResult<Error> {
        crate::pool::checkout::has_slot();
        let checked = self.check(conn, metrics).await;
        checked.map_err(|(reason, why)| {
            crate::metrics::connections_closed(reason, 1);
            RecycleError::message(why)
        })
    }
}

impl Manager {
    /// A new connection of the current generation, refetching the URL
    /// when the server says it moved or the credentials changed, by the
    /// checkout's deadline.
    async fn create_connection(&self) -> Result<Connection, Error> {
        let deadline = self.checkout_deadline();
        let mut asked_for_outage = false;
        loop {
            let generation = self.refresher.current();
            let failed = match self.connect(&generation, deadline).await {
                Ok(conn) => {
                    self.refresher.note_connected(generation.id);
                    let _ = self.suspect.compare_exchange(
                        generation.id,
                        0,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    return Ok(conn);
                }
                Err(e) => e,
            };
            let fault = failed.fault();
            if fault.needs_refetch() {
                tracing::debug!(target: TARGET, generation = generation.id, error = %failed.describe(), "connect rejected; asking for a newer URL");
                let kind = if fault == Fault::Credentials {
                    ErrorKind::CredentialsRejected
                } else {
                    ErrorKind::Connect
                };
                match self
                    .refresher
                    .refresh_after(
                        generation.id,
                        Trigger::Failure,
                        fault.reason(),
                        Wait::Deadline,
                        deadline,
                    )
                    .await
                {
                    Ok(_) if tokio::time::Instant::now() < deadline => continue,
                    Ok(_) => return Err(failed.into_error(kind)),
                    Err(f) => return Err(f.into_error(failed.into_error(kind))),
                }
            }
            if failed.is_outage() && !asked_for_outage {
                // No server where the URL points: after a failover the URL
                // may have moved. Ask once if the budget allows it now.
                asked_for_outage = true;
                let newer = self
                    .refresher
                    .refresh_after(
                        generation.id,
                        Trigger::Outage,
                        fault.reason(),
                        Wait::OnceNow,
                        deadline,
                    )
                    .await
                    .is_ok_and(|g| g.id != generation.id);
                if newer && tokio::time::Instant::now() < deadline {
                    continue;
                }
            }
            return Err(failed.into_error(ErrorKind::Connect));
        }
    }
}

impl Manager {
    /// Whether an idle connection may be handed out again, or why not.
    async fn check(
        &self,
        conn: &mut Connection,
        metrics: &Metrics,
    ) -> Result<(), (Closed, &'static str)> {
        if conn.busy || conn.client.is_closed() {
            return Err((Closed::Broken, "connection closed"));
        }
        if let Some(stale) = conn.stale() {
            self.counters.stale_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: TARGET, generation = conn.generation, current = self.refresher.current_id(), "closing a connection of an older generation or past its lifetime");
            return Err((stale, "older generation or past its lifetime"));
        }
        if self.pooler {
            // PgBouncer in transaction mode: a statement prepared in an
            // earlier checkout may live on another server connection.
            conn.client.statement_cache.clear();
        }
        if let Err(why) = leave_clean(conn, self.ping_timeout).await {
            tracing::debug!(target: TARGET, generation = conn.generation, why, "not reusing a connection its last caller left unclean");
            return Err((Closed::Broken, why));
        }
        if metrics.last_used() > self.ping_after_idle {
            if self.suspect.load(Ordering::Acquire) == conn.generation {
                return Err((
                    Closed::Broken,
                    "another idle connection of its generation did not answer its check",
                ));
            }
            // Boxed, like every rare path of a checkout: its future would
            // otherwise be part of every checkout's.
            Box::pin(self.ping(conn)).await?;
        }
        Ok(())
    }

    /// The check of a connection idle longer than `ping_after_idle`: an
    /// empty query, answered within the ping timeout.
    async fn ping(&self, conn: &Connection) -> Result<(), (Closed, &'static str)> {
        // Bounded here rather than by a deadpool recycle timeout, which
        // would arm a timer on every checkout, ping or not; and never past
        // the caller's deadline.
        let left = crate::pool::checkout::deadline().map_or(self.ping_timeout, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        let bound = self.ping_timeout.min(left);
        let check = tokio::time::timeout(bound, conn.client.simple_query("")).await;
        let failed = match check {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(describe_postgres(&e)),
            Err(_) => {
                if bound == self.ping_timeout {
                    self.suspect.store(conn.generation, Ordering::Release);
                }
                Some("no answer within the check timeout".to_string())
            }
        };
        match failed {
            None => Ok(()),
            Some(why) => {
                tracing::debug!(target: TARGET, generation = conn.generation, error = %why, "idle connection failed its check");
                Err((Closed::Broken, "failed its check"))
            }
        }
    }
}

/// deadpool-postgres's `ClientWrapper` around a connected client. The
/// wrapper aborts the task handle it is given when dropped; it gets one of
/// a task that has nothing to do, because the connection task ends by
/// itself once the client is dropped — after sending `Terminate`, so the
/// server sees a clean goodbye rather than a cut socket.
fn wrap(client: tokio_postgres::Client) -> deadpool_postgres::ClientWrapper {
    deadpool_postgres::ClientWrapper::new(client, tokio::spawn(async {}))
}

/// Makes sure a connection comes back idle and clean, or not at all: a
/// request its last caller left running (a dropped `get()` client) is
/// cancelled and the connection closed; a transaction left open or failed
/// (`BEGIN` without `COMMIT`, an error swallowed) is rolled back, and the
/// connection kept only if the server then says it is idle.
async fn leave_clean(conn: &mut Connection, bound: Duration) -> Result<(), &'static str> {
    if std::mem::take(&mut conn.lent) {
        // A request its last caller polled once and dropped sits in
        // tokio-postgres's queue until the connection task writes it: let
        // that task run one whole poll first, so the request is seen below.
        conn.pulse.queue_written(bound).await;
    }
    // A statement close still unanswered (tokio-postgres sends one when a
    // statement is dropped) changes nothing the next caller sees: it is
    // not waited for.
    if conn.left_running().await {
        // Dropped by deadpool: `Connection::drop` cancels the request and
        // closes the socket.
        return Err("a request was still running when its client was dropped");
    }
    match conn.wire.tx_status() {
        TxStatus::Idle | TxStatus::Unknown => Ok(()),
        TxStatus::InTransaction | TxStatus::Failed => Box::pin(roll_back(conn, bound)).await,
    }
}

/// Rolls back the transaction a connection's last caller left open (boxed
/// where it is called: a rare path, kept out of every checkout's future).
async fn roll_back(conn: &Connection, bound: Duration) -> Result<(), &'static str> {
    let rollback = tokio::time::timeout(bound, conn.client.batch_execute("ROLLBACK")).await;
    match rollback {
        Ok(Ok(())) if conn.wire.tx_status() == TxStatus::Idle => {
            tracing::debug!(target: TARGET, generation = conn.generation, "rolled back a transaction its last caller left open");
            Ok(())
        }
        _ => Err("a transaction its last caller left open did not roll back"),
    }
}
