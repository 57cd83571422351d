//! The fault-injecting TCP proxy: [`FaultProxy`], its handles and options.
//!
//! [`relay`] moves the bytes of each connection (latency, blackholes,
//! resets, cuts); [`rules`] says what a message rule is and adds or removes
//! one; [`wire`] follows the protocol in the bytes so that rules can match
//! a message; [`state`] holds what the proxy and its connections share.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::FixtureError;
use crate::role::TestRole;
use crate::util::TRACE_TARGET;

mod relay;
mod rules;
mod state;
mod wire;

pub use rules::{Action, FrontendMessage, RuleId, Times};

use state::{ConnShared, Latency, Shared, lock};

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    ToServer,
    /// Server → client.
    ToClient,
}

/// What happens to connections accepted while the proxy is blackholed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlackholeMode {
    /// Accepted and held: nothing reaches the upstream (no upstream
    /// connection is even opened) until the blackhole is lifted. The client
    /// sees a connect that never completes its handshake. The default.
    #[default]
    Hold,
    /// Accepted and reset at once: the client sees its connection refused
    /// (reset by peer or closed before the server's first byte).
    Refuse,
}

/// Counts of what happened in a proxy since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyEvents {
    /// Connections accepted (including held ones, excluding refused ones).
    pub accepted: u64,
    /// Connections refused while blackholed with [`BlackholeMode::Refuse`].
    pub refused: u64,
    /// Connections whose upstream could not be reached (the client is reset).
    pub upstream_failed: u64,
    /// Connections that ended, for any reason.
    pub closed: u64,
    /// Connections ended by [`FaultProxy::reset_all`] or
    /// [`ProxyConnection::reset`].
    pub reset: u64,
    /// Messages that matched a rule (counted when they are read).
    pub matched: u64,
    /// Connections cut by [`Action::DropAndCut`] (counted once both sides
    /// are closed).
    pub dropped_and_cut: u64,
    /// Connections cut by [`Action::ForwardThenCut`] (counted once both
    /// sides are closed, so after the server answered).
    pub forwarded_and_cut: u64,
}

/// An in-process TCP proxy that injects network faults between PostgreSQL
/// clients and a server.
///
/// It listens on `127.0.0.1` (a free port) and forwards every
/// connection it accepts to an upstream address (a [`Cluster`](crate::Cluster),
/// a [`PgBouncer`](crate::PgBouncer), anything). Between the two it can:
///
/// - add latency, per direction ([`FaultProxy::set_latency`],
///   [`FaultProxy::set_latency_one_way`]);
/// - blackhole traffic — stop forwarding without closing anything, like a
///   network partition ([`FaultProxy::blackhole`]); new connections are then
///   held or refused ([`BlackholeMode`]);
/// - reset connections abruptly, with a TCP RST where the OS allows it
///   ([`FaultProxy::reset_all`], [`ProxyConnection::reset`]);
/// - act on a client→server protocol message matching a predicate, such as
///   the `COMMIT` of a transaction ([`FaultProxy::on_query`],
///   [`FaultProxy::on_message`]): drop it and cut the connection (the server
///   never sees it), or forward it and cut the connection before the
///   server's answer reaches the client ([`Action`]).
///
/// Each fault applies to all connections or to one ([`ProxyConnection`]).
/// Whatever fired is counted in [`ProxyEvents`], which a test can await
/// ([`FaultProxy::wait_for`]) instead of sleeping.
///
/// Message matching needs plaintext: the proxy follows the frontend protocol
/// (startup packet, `SSLRequest`, then type byte and length) and, once the
/// server accepts TLS, forwards the encrypted bytes untouched. Latency,
/// blackhole and reset work on TLS connections too; message rules never
/// match on them.
///
/// A userspace proxy cannot fake everything a network does: during a
/// blackhole the proxy's own TCP stack still acknowledges the client's
/// segments and keepalive probes, so **TCP keepalives never detect a
/// partition made by this proxy** — only application-level timeouts
/// (statement, query, connect timeouts) do.
///
/// The proxy's tasks run on the tokio runtime that called
/// [`FaultProxy::start`]. Dropping the proxy stops accepting and closes
/// every connection through it.
///
/// ```no_run
/// use pgrotate_testing::{Action, Cluster, FaultProxy};
/// use tokio_postgres::NoTls;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::start().await?;
/// let role = cluster.create_role("app").await?;
/// let proxy = FaultProxy::start(cluster.addr()).await?;
/// let (client, connection) = tokio_postgres::connect(&proxy.url(&role), NoTls).await?;
/// tokio::spawn(connection);
/// client.batch_execute("CREATE TABLE t (id int)").await?;
///
/// // The next COMMIT reaches the server, its answer never reaches the client.
/// proxy.on_query(|sql| sql.trim().eq_ignore_ascii_case("COMMIT"), Action::ForwardThenCut);
/// let err = client.batch_execute("BEGIN; INSERT INTO t VALUES (1);").await
///     .and(client.batch_execute("COMMIT").await);
/// assert!(err.is_err());
/// proxy.wait_for(|e| e.forwarded_and_cut == 1).await;
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1` on a free port and forwards every connection
    /// to `upstream`, with no fault set. Needs a tokio runtime; its tasks run
    /// on the caller's.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, FixtureError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| FixtureError::io("binding the fault proxy's port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| FixtureError::io("reading the fault proxy's address", e))?;
        let shared = Arc::new(Shared {
            addr,
            upstream,
            latency: Latency::default(),
            blackhole: watch::Sender::new(false),
            mode: Mutex::new(BlackholeMode::default()),
            rules: Mutex::new(Vec::new()),
            next_rule: AtomicU64::new(1),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            events: watch::Sender::new(ProxyEvents::default()),
        });
        let accept = tokio::spawn(relay::accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(target: TRACE_TARGET, %addr, %upstream, "fault proxy started");
        Ok(FaultProxy { shared, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The port clients connect to (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// `postgres://name:password@127.0.0.1:port/database` for `role` through
    /// this proxy, without `sslmode`.
    pub fn url(&self, role: &TestRole) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            role.name,
            role.password,
            self.port(),
            role.database
        )
    }

    /// Delays every chunk of traffic by `d` in each direction (so a round
    /// trip takes at least `2 * d` longer), on every connection, for what is
    /// read from now on. Adds to a connection's own latency.
    pub fn set_latency(&self, d: Duration) {
        self.set_latency_one_way(Direction::ToServer, d);
        self.set_latency_one_way(Direction::ToClient, d);
    }

    /// Delays traffic in `direction` by `d`, on every connection.
    pub fn set_latency_one_way(&self, direction: Direction, d: Duration) {
        self.shared.latency.set(direction, d);
    }

    /// Starts (`true`) or ends (`false`) a partition of every connection:
    /// nothing is forwarded in either direction and nothing is closed.
    /// Bytes already read stay queued, and the proxy stops reading, so the
    /// sender's buffers fill up as with a lost route. Lifting it resumes the
    /// held traffic, like a healed partition once TCP retransmits; to make
    /// a partition end in a broken connection, [`reset_all`](Self::reset_all)
    /// before lifting it. New connections follow
    /// [`set_blackhole_mode`](Self::set_blackhole_mode).
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// What happens to connections accepted while blackholed (default
    /// [`BlackholeMode::Hold`]).
    pub fn set_blackhole_mode(&self, mode: BlackholeMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Closes every current connection abruptly: `SO_LINGER` 0, so both the
    /// client and the server see a reset. Counted in [`ProxyEvents::reset`]
    /// as each closes. New connections are accepted as usual.
    pub fn reset_all(&self) {
        for conn in self.open_connections() {
            conn.reset();
        }
    }

    /// How many client connections are open through the proxy (held ones
    /// included).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Handles on the open connections, oldest first.
    pub fn open_connections(&self) -> Vec<ProxyConnection> {
        lock(&self.shared.conns)
            .values()
            .map(|inner| ProxyConnection {
                inner: Arc::clone(inner),
            })
            .collect()
    }

    /// Removes every fault: latency (global and per connection), blackhole
    /// (global and per connection) and rules. Connections already cut stay
    /// cut; held traffic resumes.
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
        self.set_latency(Duration::ZERO);
        self.blackhole(false);
        for conn in self.open_connections() {
            conn.set_latency(Duration::ZERO);
            conn.blackhole(false);
        }
    }

    /// The counts of what happened so far.
    pub fn events(&self) -> ProxyEvents {
        *self.shared.events.borrow()
    }

    /// A receiver that sees every change of the counts.
    pub fn subscribe(&self) -> watch::Receiver<ProxyEvents> {
        self.shared.events.subscribe()
    }

    /// Waits until `condition` holds for the counts, and returns them. Never
    /// times out by itself: bound it with `tokio::time::timeout`.
    pub async fn wait_for(&self, mut condition: impl FnMut(&ProxyEvents) -> bool) -> ProxyEvents {
        let mut events = self.shared.events.subscribe();
        match events.wait_for(|e| condition(e)).await {
            Ok(seen) => *seen,
            // The sender lives in `self.shared`: never dropped while `self` is.
            Err(_) => self.events(),
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("connections", &self.connections())
            .field("events", &self.events())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in lock(&self.shared.conns).values() {
            conn.flags.send_modify(|f| f.close = true);
        }
    }
}

/// A handle on one connection through a [`FaultProxy`], for faults on it
/// alone. Its faults add to the proxy-wide ones. Cheap to clone; outliving
/// the connection is harmless.
#[derive(Clone)]
pub struct ProxyConnection {
    inner: Arc<ConnShared>,
}

impl ProxyConnection {
    /// The proxy's id of this connection: 1, 2, ... in accept order.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The client's address (its ephemeral port tells connections apart).
    pub fn client_addr(&self) -> SocketAddr {
        self.inner.client
    }

    /// Delays traffic on this connection by `d` in each direction, on top of
    /// the proxy-wide latency.
    pub fn set_latency(&self, d: Duration) {
        self.inner.latency.set(Direction::ToServer, d);
        self.inner.latency.set(Direction::ToClient, d);
    }

    /// Delays traffic on this connection in `direction` by `d`.
    pub fn set_latency_one_way(&self, direction: Direction, d: Duration) {
        self.inner.latency.set(direction, d);
    }

    /// Partitions this connection alone (see [`FaultProxy::blackhole`]).
    pub fn blackhole(&self, on: bool) {
        self.inner.flags.send_modify(|f| f.blackhole = on);
    }

    /// Closes this connection abruptly (see [`FaultProxy::reset_all`]).
    pub fn reset(&self) {
        self.inner.flags.send_modify(|f| f.reset = true);
    }
}

impl fmt::Debug for ProxyConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConnection")
            .field("id", &self.inner.id)
            .field("client", &self.inner.client)
            .finish_non_exhaustive()
    }
}
