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

use crate::budget::{Trigger, later};
use crate::classify::{Fault, classify};
use crate::error::{Error, ErrorKind, describe_postgres};
use crate::refresh::{Generation, Refresher, Wait};
use crate::settings::Target;
use crate::stats::Counters;

const TARGET: &str = "pgrotate::manager";

tokio::task_local! {
    /// The deadline of the checkout in progress, set by the pool around
    /// `get`: a `create` runs inside the caller's task, so it can see it.
    pub(crate) static CHECKOUT_DEADLINE: tokio::time::Instant;
}

/// One pooled connection.
pub(crate) struct Connection {
    pub(crate) client: tokio_postgres::Client,
    pub(crate) generation: u64,
    /// Work in flight (set by `run` / `transaction`); a busy connection
    /// is never handed out again.
    pub(crate) busy: bool,
    /// The generation authority, to tell on return whether it is stale.
    pub(crate) refresher: Arc<Refresher>,
    /// When it is closed instead of handed out again (`max_lifetime`, with
    /// jitter so a fleet does not reconnect in one wave).
    pub(crate) expires_at: Option<Instant>,
}

impl Connection {
    /// Whether the pool should keep this connection (idle or returning):
    /// of the current generation and within its lifetime.
    pub(crate) fn is_current(&self) -> bool {
        self.generation >= self.refresher.current_id()
            && self.expires_at.is_none_or(|t| Instant::now() < t)
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
}

/// A test connection with `target`: connect and one empty query, within
/// the connect timeout.
pub(crate) async fn probe(target: &Target) -> Result<(), Error> {
    let bound = target
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let attempt = async {
        let (client, connection) = target.config.connect(target.tls.clone()).await?;
        let task = tokio::spawn(connection);
        let r = client.simple_query("").await.map(|_| ());
        drop(client);
        let _ = task.await;
        r
    };
    let failed = match tokio::time::timeout(bound, attempt).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => ConnectFailed::Postgres(e),
        Err(_) => ConnectFailed::TimedOut(bound),
    };
    Err(failed.into_error(ErrorKind::Connect))
}

/// `lifetime` less up to a fifth, at random.
fn jittered_lifetime(lifetime: Duration) -> Duration {
    lifetime - lifetime.mul_f64(fastrand::f64() / 5.0)
}

/// Why one connect failed.
enum ConnectFailed {
    Postgres(tokio_postgres::Error),
    /// TCP, TLS, authentication and (in pooler mode) the check round trip
    /// together took longer than the connect timeout. tokio-postgres's own
    /// `connect_timeout` bounds only the TCP connect; a partition after it
    /// (a TLS handshake that never answers) would hang forever.
    TimedOut(Duration),
}

impl ConnectFailed {
    fn fault(&self) -> Fault {
        match self {
            ConnectFailed::Postgres(e) => classify(e),
            ConnectFailed::TimedOut(_) => Fault::ConnectionLost,
        }
    }

    fn describe(&self) -> String {
        match self {
            ConnectFailed::Postgres(e) => describe_postgres(e),
            ConnectFailed::TimedOut(d) => format!(
                "no answer within the connect timeout of {}",
                crate::error::fmt_duration(*d)
            ),
        }
    }

    /// No server answered: refused, no answer in time, shutting down or
    /// starting. Not a TLS failure (a server answered, and the same
    /// settings will fail again).
    fn is_outage(&self) -> bool {
        match self {
            ConnectFailed::TimedOut(_) => true,
            ConnectFailed::Postgres(e) => {
                classify(e).worth_one_refetch() && crate::tls::describe_failure(e).is_none()
            }
        }
    }

    fn into_error(self, kind: ErrorKind) -> Error {
        let fault = self.fault();
        let outage = self.is_outage();
        let e = match self {
            ConnectFailed::Postgres(e) => Error::postgres(kind, fault, e),
            ConnectFailed::TimedOut(_) => Error::new(kind, self.describe()),
        };
        if outage { e.into_outage() } else { e }
    }
}

impl Manager {
    /// The caller's checkout deadline, or the create timeout from now.
    fn checkout_deadline(&self) -> tokio::time::Instant {
        CHECKOUT_DEADLINE
            .try_with(|d| *d)
            .unwrap_or_else(|_| later(tokio::time::Instant::now(), self.create_timeout))
    }

    async fn connect(
        &self,
        generation: &Generation,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, ConnectFailed> {
        self.counters
            .connect_attempts
            .fetch_add(1, Ordering::Relaxed);
        let target = &generation.target;
        let bound = target
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10))
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let client = tokio::time::timeout(bound, self.open(generation))
            .await
            .map_err(|_| ConnectFailed::TimedOut(bound))?
            .map_err(ConnectFailed::Postgres)?;
        self.counters
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Connection {
            client,
            generation: generation.id,
            busy: false,
            refresher: self.refresher.clone(),
            expires_at: self
                .max_lifetime
                .map(|l| crate::retry::after(jittered_lifetime(l))),
        })
    }

    async fn open(
        &self,
        generation: &Generation,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let target = &generation.target;
        let (client, connection) = target.config.connect(target.tls.clone()).await?;
        let id = generation.id;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: TARGET, generation = id, error = %describe_postgres(&e), "connection ended");
            }
        });
        if target.pooler {
            // Through PgBouncer a connect succeeds even while its logins to
            // the server fail: only a round trip proves the connection.
            client.simple_query("select 1").await?;
        }
        Ok(client)
    }
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = Error;

    async fn create(&self) -> Result<Connection, Error> {
        let deadline = self.checkout_deadline();
        let mut asked_for_outage = false;
        loop {
            let generation = self.refresher.current();
            let failed = match self.connect(&generation, deadline).await {
                Ok(conn) => {
                    self.refresher.note_connected(generation.id);
                    return Ok(conn);
                }
                Err(e) => e,
            };
            let fault = failed.fault();
            if fault.needs_refetch() {
                tracing::warn!(target: TARGET, generation = generation.id, error = %failed.describe(), "connect rejected; asking for a newer URL");
                let kind = if fault == Fault::CredentialsRejected {
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

    async fn recycle(&self, conn: &mut Connection, metrics: &Metrics) -> RecycleResult<Error> {
        if conn.busy || conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if !conn.is_current() {
            self.counters.stale_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: TARGET, generation = conn.generation, current = self.refresher.current_id(), "closing a connection of an older generation or past its lifetime");
            return Err(RecycleError::message("older generation"));
        }
        if metrics.last_used() > self.ping_after_idle {
            // Bounded here rather than by a deadpool recycle timeout, which
            // would arm a timer on every checkout, ping or not.
            let check = tokio::time::timeout(self.ping_timeout, conn.client.simple_query("")).await;
            let failed = match check {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(describe_postgres(&e)),
                Err(_) => Some("no answer within the check timeout".to_string()),
            };
            if let Some(why) = failed {
                tracing::debug!(target: TARGET, generation = conn.generation, error = %why, "idle connection failed its check");
                return Err(RecycleError::message("failed its check"));
            }
        }
        Ok(())
    }
}
