//! The fault-injecting TCP proxy: [`FaultProxy`] and its handles.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::util::TRACE_TARGET;
use crate::error::FixtureError;
use crate::role::TestRole;

/// What a message rule does to the connection whose message matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The matching message is not forwarded: the connection is cut (both
    /// sides reset) right where it would have been. The server never sees
    /// it; messages sent before it were forwarded.
    DropAndCut,
    /// The matching message is forwarded, and with it the rest of its
    /// protocol unit (for an extended-protocol message, up to and including
    /// the next `Sync`). The proxy then waits until the server has answered
    /// it completely (`ReadyForQuery`), discarding the answer, and cuts the
    /// connection: the server did the work, the client never hears of it.
    /// Should the server close first, the client is cut then.
    ForwardThenCut,
}

/// How often a message rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// On the first matching message (across all connections), then the
    /// rule is removed.
    Once,
    /// On every matching message until the rule is removed
    /// ([`FaultProxy::remove_rule`], [`FaultProxy::clear_faults`]).
    Always,
}

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

/// A client→server protocol message, as a rule's predicate sees it
/// (see [`FaultProxy::on_message`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FrontendMessage<'a> {
    /// The proxy's id of the connection it travels on
    /// ([`ProxyConnection::id`]).
    pub connection: u64,
    /// The message type byte: `b'Q'` Query, `b'P'` Parse, `b'B'` Bind,
    /// `b'E'` Execute, `b'S'` Sync, `b'D'` Describe, `b'X'` Terminate, ...
    pub tag: u8,
    /// The SQL it carries or runs: a Query's text, a Parse's statement, and
    /// for Bind and Execute the SQL of the statement they run (followed on
    /// this connection through statement and portal names). `None` for
    /// other messages and for text that is not UTF-8.
    pub sql: Option<&'a str>,
    /// The message body after the type byte and length.
    pub body: &'a [u8],
}

/// Identifies a message rule, for [`FaultProxy::remove_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

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

type Predicate = dyn Fn(&FrontendMessage<'_>) -> bool + Send + Sync;

struct Rule {
    id: u64,
    predicate: Box<Predicate>,
    action: Action,
    once: bool,
    spent: AtomicBool,
}

/// Per-connection flags, watched by the connection's task.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    blackhole: bool,
    reset: bool,
    close: bool,
}

/// Latency in both directions, as nanoseconds.
#[derive(Default)]
struct Latency {
    to_server: AtomicU64,
    to_client: AtomicU64,
}

impl Latency {
    fn slot(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    fn set(&self, direction: Direction, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.slot(direction).store(nanos, Ordering::Relaxed);
    }

    fn get(&self, direction: Direction) -> Duration {
        Duration::from_nanos(self.slot(direction).load(Ordering::Relaxed))
    }
}

struct ConnShared {
    id: u64,
    client: SocketAddr,
    latency: Latency,
    flags: watch::Sender<Flags>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    latency: Latency,
    blackhole: watch::Sender<bool>,
    mode: Mutex<BlackholeMode>,
    rules: Mutex<Vec<Arc<Rule>>>,
    next_rule: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<ConnShared>>>,
    next_conn: AtomicU64,
    events: watch::Sender<ProxyEvents>,
}

/// Locks `mutex`, ignoring poisoning (the data are plain values that stay
/// consistent if a holder panicked).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
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

    /// Adds a one-shot rule on the SQL a client runs: the first Simple Query
    /// (`Q`) or extended-protocol Execute (`E`, whose SQL is the statement
    /// its portal was bound to) for which `predicate` returns true, on any
    /// connection, gets `action`; then the rule is gone. A Query may hold
    /// several statements (`"BEGIN; ...; COMMIT"`): the predicate sees the
    /// whole text. tokio-postgres's `Transaction::commit` sends a Query
    /// `COMMIT`.
    pub fn on_query(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        action: Action,
    ) -> RuleId {
        self.on_message(
            move |m: &FrontendMessage<'_>| {
                matches!(m.tag, b'Q' | b'E') && m.sql.is_some_and(&predicate)
            },
            action,
            Times::Once,
        )
    }

    /// Adds a rule on any client→server message read after the startup
    /// packet, on plaintext connections. Rules are tried in the order they
    /// were added; the first match acts. Returns the rule's id.
    pub fn on_message(
        &self,
        predicate: impl Fn(&FrontendMessage<'_>) -> bool + Send + Sync + 'static,
        action: Action,
        times: Times,
    ) -> RuleId {
        let id = self.shared.next_rule.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.rules).push(Arc::new(Rule {
            id,
            predicate: Box::new(predicate),
            action,
            once: times == Times::Once,
            spent: AtomicBool::new(false),
        }));
        RuleId(id)
    }

    /// Removes a rule; false when it was gone already (fired once, or
    /// cleared).
    pub fn remove_rule(&self, id: RuleId) -> bool {
        let mut rules = lock(&self.shared.rules);
        let before = rules.len();
        rules.retain(|rule| rule.id != id.0);
        rules.len() != before
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: back off a little instead of spinning.
                tracing::debug!(target: TRACE_TARGET, %error, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        if *shared.blackhole.borrow() && *lock(&shared.mode) == BlackholeMode::Refuse {
            abort(&client);
            drop(client);
            shared.events.send_modify(|e| e.refused += 1);
            continue;
        }
        let conn = Arc::new(ConnShared {
            id: shared.next_conn.fetch_add(1, Ordering::Relaxed),
            client: peer,
            latency: Latency::default(),
            flags: watch::Sender::new(Flags::default()),
        });
        lock(&shared.conns).insert(conn.id, Arc::clone(&conn));
        shared.events.send_modify(|e| e.accepted += 1);
        tokio::spawn(serve(Arc::clone(&shared), conn, client));
    }
}

/// `SO_LINGER` 0: closing the socket then sends a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed, or the proxy was dropped.
    Closed,
    /// An I/O error on either side: the other side is reset too.
    Broken,
    /// `reset_all` / `ProxyConnection::reset`.
    Reset,
    /// A rule's action.
    Cut(Action),
    /// The upstream could not be reached.
    UpstreamFailed,
}

async fn serve(shared: Arc<Shared>, conn: Arc<ConnShared>, client: TcpStream) {
    let end = serve_connection(&shared, &conn, client).await;
    lock(&shared.conns).remove(&conn.id);
    tracing::trace!(target: TRACE_TARGET, id = conn.id, ?end, "fault proxy connection ended");
    shared.events.send_modify(|e| {
        e.closed += 1;
        match end {
            End::Closed | End::Broken => {}
            End::Reset => e.reset += 1,
            End::Cut(Action::DropAndCut) => e.dropped_and_cut += 1,
            End::Cut(Action::ForwardThenCut) => e.forwarded_and_cut += 1,
            End::UpstreamFailed => e.upstream_failed += 1,
        }
    });
}

/// Waits until the connection is told to end.
async fn told_to_end(flags: &mut watch::Receiver<Flags>) -> End {
    match flags.wait_for(|f| f.reset || f.close).await {
        Ok(f) if f.reset => End::Reset,
        _ => End::Closed,
    }
}

/// Watches the proxy-wide and the connection's own blackhole.
struct Gate {
    global: watch::Receiver<bool>,
    local: watch::Receiver<Flags>,
}

impl Gate {
    fn new(shared: &Shared, conn: &ConnShared) -> Gate {
        Gate {
            global: shared.blackhole.subscribe(),
            local: conn.flags.subscribe(),
        }
    }

    /// Returns once neither blackhole is on (at once when none is).
    async fn open(&mut self) {
        loop {
            if self.global.wait_for(|on| !on).await.is_err() {
                return;
            }
            if self.local.wait_for(|f| !f.blackhole).await.is_err() {
                return;
            }
            if !*self.global.borrow() && !self.local.borrow().blackhole {
                return;
            }
        }
    }
}

async fn serve_connection(shared: &Shared, conn: &ConnShared, mut client: TcpStream) -> End {
    let mut flags = conn.flags.subscribe();
    let mut gate = Gate::new(shared, conn);
    // A connection accepted during a blackhole waits before going upstream.
    let end = tokio::select! {
        biased;
        end = told_to_end(&mut flags) => Some(end),
        () = gate.open() => None,
    };
    if let Some(end) = end {
        finish(end, &client, None);
        return end;
    }
    let connected = tokio::select! {
        biased;
        end = told_to_end(&mut flags) => Err(Some(end)),
        connected = TcpStream::connect(shared.upstream) => connected.map_err(|error| {
            tracing::debug!(target: TRACE_TARGET, %error, upstream = %shared.upstream, "fault proxy could not reach its upstream");
            None
        }),
    };
    let mut server = match connected {
        Ok(server) => server,
        Err(end) => {
            let end = end.unwrap_or(End::UpstreamFailed);
            finish(end, &client, None);
            return end;
        }
    };
    let _ = server.set_nodelay(true);

    let flow = Flow::default();
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let (up_tx, up_rx) = mpsc::channel(64);
        let (down_tx, down_rx) = mpsc::channel(64);
        let pumps = async {
            tokio::try_join!(
                read_client(client_read, up_tx, shared, conn, &flow),
                write_side(server_write, up_rx, Gate::new(shared, conn), &flow),
                read_server(server_read, down_tx, shared, conn, &flow),
                write_side(client_write, down_rx, Gate::new(shared, conn), &flow),
            )
        };
        tokio::select! {
            biased;
            end = told_to_end(&mut flags) => end,
            () = flow.cut.notified() => End::Cut(flow.action()),
            done = pumps => match done {
                // A rule fired in the same poll as the pumps ended.
                _ if flow.action.load(Ordering::SeqCst) != 0 => End::Cut(flow.action()),
                Ok(_) => End::Closed,
                Err(_) => End::Broken,
            },
        }
    };
    finish(end, &client, Some(&server));
    end
}

/// Sets `SO_LINGER` 0 on both sides when `end` is abrupt; the caller then
/// drops the streams.
fn finish(end: End, client: &TcpStream, server: Option<&TcpStream>) {
    if end != End::Closed {
        abort(client);
        if let Some(server) = server {
            abort(server);
        }
    }
}

/// What a reader hands its writer.
enum Item {
    /// Bytes to write once `at` has come.
    Data(Vec<u8>, Instant),
    /// Everything before was written: act.
    Cut(Action, u64),
}

const MODE_STARTUP: u8 = 0;
const MODE_SSL_PENDING: u8 = 1;
const MODE_MESSAGES: u8 = 2;
const MODE_RAW: u8 = 3;

/// State shared by a connection's two directions (one task: atomics only
/// because the futures must be `Send`).
struct Flow {
    /// One of the `MODE_*` constants.
    mode: AtomicU8,
    /// `ReadyForQuery`-producing messages forwarded (startup, Q, S, F).
    expected: AtomicU64,
    /// `ReadyForQuery` messages seen from the server.
    ready: AtomicU64,
    /// Server bytes after this many `ReadyForQuery` are discarded.
    swallow_after: AtomicU64,
    /// A `ForwardThenCut` cuts once this many `ReadyForQuery` were seen.
    cut_after: AtomicU64,
    /// The action that fired.
    action: AtomicU8,
    cut: Notify,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            mode: AtomicU8::new(MODE_STARTUP),
            expected: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            swallow_after: AtomicU64::new(u64::MAX),
            cut_after: AtomicU64::new(u64::MAX),
            action: AtomicU8::new(0),
            cut: Notify::new(),
        }
    }
}

impl Flow {
    fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn fire(&self, action: Action) {
        let code = match action {
            Action::DropAndCut => 1,
            Action::ForwardThenCut => 2,
        };
        self.action.store(code, Ordering::SeqCst);
        self.cut.notify_one();
    }

    fn action(&self) -> Action {
        match self.action.load(Ordering::SeqCst) {
            2 => Action::ForwardThenCut,
            _ => Action::DropAndCut,
        }
    }

    /// Fires a pending `ForwardThenCut` once the server answered it.
    fn check_forwarded(&self) {
        let target = self.cut_after.load(Ordering::SeqCst);
        if target != u64::MAX && self.ready.load(Ordering::SeqCst) >= target {
            self.fire(Action::ForwardThenCut);
        }
    }
}

const CHUNK: usize = 16 * 1024;

/// Client → server: reads, follows the frontend protocol where it is
/// plaintext, applies rules, queues for the writer.
async fn read_client(
    mut read: ReadHalf<'_>,
    tx: mpsc::Sender<Item>,
    shared: &Shared,
    conn: &ConnShared,
    flow: &Flow,
) -> std::io::Result<()> {
    let mut gate = Gate::new(shared, conn);
    let mut parser = FrontendParser::new(conn.id);
    let mut chunk = vec![0; CHUNK];
    loop {
        gate.open().await;
        let n = read.read(&mut chunk).await?;
        let at = Instant::now()
            + shared.latency.get(Direction::ToServer)
            + conn.latency.get(Direction::ToServer);
        if n == 0 {
            // End of the client's stream: forward what is left, then the
            // writer shuts the server side down.
            let rest = std::mem::take(&mut parser.buf);
            if !rest.is_empty() {
                let _ = tx.send(Item::Data(rest, at)).await;
            }
            return Ok(());
        }
        let items = parser.feed(&chunk[..n], at, shared, flow);
        for item in items {
            if tx.send(item).await.is_err() {
                return Ok(());
            }
        }
        if parser.stopped {
            // A rule fired: nothing more goes upstream; the cut ends us.
            std::future::pending::<()>().await;
        }
    }
}

/// Server → client: reads, counts `ReadyForQuery`, discards what a rule
/// said the client must not see, queues for the writer.
async fn read_server(
    mut read: ReadHalf<'_>,
    tx: mpsc::Sender<Item>,
    shared: &Shared,
    conn: &ConnShared,
    flow: &Flow,
) -> std::io::Result<()> {
    let mut gate = Gate::new(shared, conn);
    let mut parser = BackendParser::default();
    let mut chunk = vec![0; CHUNK];
    loop {
        gate.open().await;
        let n = match read.read(&mut chunk).await {
            Ok(n) => n,
            Err(error) => {
                if flow.cut_after.load(Ordering::SeqCst) != u64::MAX {
                    flow.fire(Action::ForwardThenCut);
                }
                return Err(error);
            }
        };
        if n == 0 {
            if flow.cut_after.load(Ordering::SeqCst) != u64::MAX {
                // The server closed before answering: cut the client now.
                flow.fire(Action::ForwardThenCut);
                std::future::pending::<()>().await;
            }
            return Ok(());
        }
        let at = Instant::now()
            + shared.latency.get(Direction::ToClient)
            + conn.latency.get(Direction::ToClient);
        let keep = parser.feed(&chunk[..n], flow);
        if keep > 0
            && tx
                .send(Item::Data(chunk[..keep].to_vec(), at))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
}

/// Writes what a reader queued, at its time, while no blackhole is on.
async fn write_side(
    mut write: WriteHalf<'_>,
    mut rx: mpsc::Receiver<Item>,
    mut gate: Gate,
    flow: &Flow,
) -> std::io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Item::Data(bytes, at) => {
                tokio::time::sleep_until(at).await;
                gate.open().await;
                write.write_all(&bytes).await?;
            }
            Item::Cut(Action::DropAndCut, _) => {
                flow.fire(Action::DropAndCut);
                std::future::pending::<()>().await;
            }
            Item::Cut(Action::ForwardThenCut, ready) => {
                flow.cut_after.store(ready, Ordering::SeqCst);
                flow.check_forwarded();
                std::future::pending::<()>().await;
            }
        }
    }
    write.shutdown().await
}

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// The largest startup packet PostgreSQL accepts.
const MAX_STARTUP: usize = 10_000;

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The NUL-terminated string at the start of `bytes`, and what follows it.
fn cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => (&bytes[..end], &bytes[end + 1..]),
        None => (bytes, &[]),
    }
}

fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Follows the frontend protocol of one connection.
struct FrontendParser {
    connection: u64,
    buf: Vec<u8>,
    /// Prepared statement name → SQL.
    statements: HashMap<Vec<u8>, String>,
    /// Portal name → SQL of its statement.
    portals: HashMap<Vec<u8>, String>,
    /// A `ForwardThenCut` matched an extended-protocol message: forward up
    /// to the next message that ends the unit.
    forwarding_to_cut: bool,
    /// A rule fired and its cut is queued: forward nothing more.
    stopped: bool,
}

impl FrontendParser {
    fn new(connection: u64) -> Self {
        FrontendParser {
            connection,
            buf: Vec::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            forwarding_to_cut: false,
            stopped: false,
        }
    }

    fn feed(&mut self, data: &[u8], at: Instant, shared: &Shared, flow: &Flow) -> Vec<Item> {
        let mut items = Vec::new();
        if self.stopped {
            return items;
        }
        self.buf.extend_from_slice(data);
        loop {
            match flow.mode() {
                MODE_STARTUP => {
                    if self.buf.len() < 8 {
                        break;
                    }
                    let len = usize::try_from(be_i32(&self.buf)).unwrap_or(0);
                    if !(8..=MAX_STARTUP).contains(&len) {
                        // Not a startup packet (direct TLS, garbage): pass it on.
                        flow.set_mode(MODE_RAW);
                        continue;
                    }
                    if self.buf.len() < len {
                        break;
                    }
                    let packet: Vec<u8> = self.buf.drain(..len).collect();
                    match be_i32(&packet[4..8]) {
                        SSL_REQUEST | GSSENC_REQUEST => flow.set_mode(MODE_SSL_PENDING),
                        CANCEL_REQUEST => flow.set_mode(MODE_RAW),
                        version if version >> 16 == 3 => {
                            flow.expected.fetch_add(1, Ordering::SeqCst);
                            flow.set_mode(MODE_MESSAGES);
                        }
                        _ => flow.set_mode(MODE_RAW),
                    }
                    items.push(Item::Data(packet, at));
                }
                MODE_MESSAGES => {
                    if self.buf.len() < 5 {
                        break;
                    }
                    let len = usize::try_from(be_i32(&self.buf[1..])).unwrap_or(0);
                    if len < 4 {
                        flow.set_mode(MODE_RAW);
                        continue;
                    }
                    if self.buf.len() < 1 + len {
                        break;
                    }
                    let message: Vec<u8> = self.buf.drain(..1 + len).collect();
                    self.message(message, at, shared, flow, &mut items);
                    if self.stopped {
                        self.buf.clear();
                        break;
                    }
                }
                // SSL pending (only a client that does not wait for the
                // answer sends here), TLS, cancel requests, unknown: raw.
                _ => {
                    if !self.buf.is_empty() {
                        items.push(Item::Data(std::mem::take(&mut self.buf), at));
                    }
                    break;
                }
            }
        }
        items
    }

    /// One complete message (type byte, length, body).
    fn message(
        &mut self,
        message: Vec<u8>,
        at: Instant,
        shared: &Shared,
        flow: &Flow,
        items: &mut Vec<Item>,
    ) {
        let tag = message[0];
        let ends_unit = matches!(tag, b'Q' | b'S' | b'F');
        if self.forwarding_to_cut {
            items.push(Item::Data(message, at));
            if ends_unit {
                let ready = flow.expected.fetch_add(1, Ordering::SeqCst) + 1;
                items.push(Item::Cut(Action::ForwardThenCut, ready));
                self.stopped = true;
            }
            return;
        }
        let body = &message[5..];
        let sql = self.track(tag, body);
        let matched = {
            let view = FrontendMessage {
                connection: self.connection,
                tag,
                sql: sql.as_deref(),
                body,
            };
            first_match(shared, &view)
        };
        let Some(action) = matched else {
            items.push(Item::Data(message, at));
            if ends_unit {
                flow.expected.fetch_add(1, Ordering::SeqCst);
            }
            return;
        };
        shared.events.send_modify(|e| e.matched += 1);
        tracing::debug!(target: TRACE_TARGET, connection = self.connection, tag = %char::from(tag), ?action, "fault proxy rule matched");
        // The client sees nothing the server says from here on.
        flow.swallow_after
            .store(flow.expected.load(Ordering::SeqCst), Ordering::SeqCst);
        match action {
            Action::DropAndCut => {
                items.push(Item::Cut(Action::DropAndCut, 0));
                self.stopped = true;
            }
            Action::ForwardThenCut => {
                items.push(Item::Data(message, at));
                if ends_unit {
                    let ready = flow.expected.fetch_add(1, Ordering::SeqCst) + 1;
                    items.push(Item::Cut(Action::ForwardThenCut, ready));
                    self.stopped = true;
                } else {
                    self.forwarding_to_cut = true;
                }
            }
        }
    }

    /// Follows statement and portal names; returns the SQL `tag` carries or
    /// runs.
    fn track(&mut self, tag: u8, body: &[u8]) -> Option<String> {
        match tag {
            b'Q' => text(cstr(body).0),
            b'P' => {
                let (name, rest) = cstr(body);
                let sql = text(cstr(rest).0)?;
                self.statements.insert(name.to_vec(), sql.clone());
                Some(sql)
            }
            b'B' => {
                let (portal, rest) = cstr(body);
                let sql = self.statements.get(cstr(rest).0).cloned();
                match &sql {
                    Some(sql) => self.portals.insert(portal.to_vec(), sql.clone()),
                    None => self.portals.remove(portal),
                };
                sql
            }
            b'E' => self.portals.get(cstr(body).0).cloned(),
            b'C' => {
                let (kind, name) = body.split_first()?;
                let name = cstr(name).0;
                match kind {
                    b'S' => self.statements.remove(name),
                    b'P' => self.portals.remove(name),
                    _ => None,
                };
                None
            }
            _ => None,
        }
    }
}

/// The action of the first rule matching `message`; spends a one-shot rule.
fn first_match(shared: &Shared, message: &FrontendMessage<'_>) -> Option<Action> {
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

/// Follows the backend protocol of one connection far enough to count
/// `ReadyForQuery` and answer `SSLRequest`.
#[derive(Default)]
struct BackendParser {
    header: [u8; 5],
    have: usize,
    remaining: usize,
}

impl BackendParser {
    /// Reads `data`; returns how many of its leading bytes the client gets.
    fn feed(&mut self, data: &[u8], flow: &Flow) -> usize {
        let swallowing = |flow: &Flow| {
            flow.ready.load(Ordering::SeqCst) >= flow.swallow_after.load(Ordering::SeqCst)
        };
        if swallowing(flow) {
            // Keep counting for a pending ForwardThenCut.
            self.walk(data, flow);
            return 0;
        }
        self.walk(data, flow)
    }

    /// Walks `data`; returns the length of its prefix up to the first point
    /// where swallowing starts (all of it when it does not).
    fn walk(&mut self, data: &[u8], flow: &Flow) -> usize {
        let mut keep = data.len();
        let mut i = 0;
        while i < data.len() {
            match flow.mode() {
                MODE_RAW => break,
                MODE_SSL_PENDING => {
                    // `S` (TLS) or `G` (GSS): encrypted from here on; `N`:
                    // the client sends a plaintext startup packet next.
                    flow.set_mode(if data[i] == b'N' {
                        MODE_STARTUP
                    } else {
                        MODE_RAW
                    });
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() - i);
                i += take;
                self.remaining -= take;
                if self.remaining == 0 && self.complete(flow) && keep == data.len() {
                    keep = i;
                }
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == 5 {
                self.have = 0;
                let len = usize::try_from(be_i32(&self.header[1..])).unwrap_or(0);
                if len < 4 {
                    flow.set_mode(MODE_RAW);
                    continue;
                }
                self.remaining = len - 4;
                if self.remaining == 0 && self.complete(flow) && keep == data.len() {
                    keep = i;
                }
            }
        }
        keep
    }

    /// A message ended; true when the client must see nothing after it.
    fn complete(&mut self, flow: &Flow) -> bool {
        if self.header[0] != b'Z' {
            return false;
        }
        let ready = flow.ready.fetch_add(1, Ordering::SeqCst) + 1;
        flow.check_forwarded();
        ready >= flow.swallow_after.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00u\x00\x00";
        let mut m = i32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        m.extend_from_slice(body);
        m
    }

    fn shared() -> Shared {
        Shared {
            addr: "127.0.0.1:1".parse().unwrap(),
            upstream: "127.0.0.1:2".parse().unwrap(),
            latency: Latency::default(),
            blackhole: watch::Sender::new(false),
            mode: Mutex::new(BlackholeMode::Hold),
            rules: Mutex::new(Vec::new()),
            next_rule: AtomicU64::new(1),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            events: watch::Sender::new(ProxyEvents::default()),
        }
    }

    fn add_rule(
        shared: &Shared,
        action: Action,
        pred: impl Fn(&FrontendMessage<'_>) -> bool + Send + Sync + 'static,
    ) {
        lock(&shared.rules).push(Arc::new(Rule {
            id: 1,
            predicate: Box::new(pred),
            action,
            once: true,
            spent: AtomicBool::new(false),
        }));
    }

    fn data_len(items: &[Item]) -> usize {
        items
            .iter()
            .map(|i| match i {
                Item::Data(d, _) => d.len(),
                Item::Cut(..) => 0,
            })
            .sum()
    }

    #[test]
    fn startup_then_messages_split_anywhere() {
        let shared = shared();
        let flow = Flow::default();
        let mut stream = startup();
        stream.extend(message(b'Q', b"SELECT 1\0"));
        stream.extend(message(b'Q', b"COMMIT\0"));
        add_rule(&shared, Action::DropAndCut, |m| m.sql == Some("COMMIT"));
        let mut parser = FrontendParser::new(7);
        let mut items = Vec::new();
        for byte in &stream {
            items.extend(parser.feed(std::slice::from_ref(byte), Instant::now(), &shared, &flow));
        }
        assert_eq!(flow.mode(), MODE_MESSAGES);
        // Startup and SELECT forwarded, COMMIT dropped, then the cut.
        assert_eq!(
            data_len(&items),
            startup().len() + message(b'Q', b"SELECT 1\0").len()
        );
        assert!(matches!(
            items.last(),
            Some(Item::Cut(Action::DropAndCut, _))
        ));
        assert!(parser.stopped);
        assert_eq!(flow.swallow_after.load(Ordering::SeqCst), 2);
        assert!(lock(&shared.rules).is_empty(), "a one-shot rule is spent");
    }

    #[test]
    fn execute_knows_the_sql_of_its_portal_and_cuts_after_sync() {
        let shared = shared();
        let flow = Flow::default();
        flow.set_mode(MODE_MESSAGES);
        add_rule(&shared, Action::ForwardThenCut, |m| {
            m.tag == b'E' && m.sql == Some("INSERT 1")
        });
        let mut stream = message(b'P', b"s1\0INSERT 1\0\0\0");
        stream.extend(message(b'B', b"p1\0s1\0\0\0\0\0\0\0"));
        stream.extend(message(b'E', b"p1\0\0\0\0\0"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'Q', b"never\0"));
        let mut parser = FrontendParser::new(1);
        let items = parser.feed(&stream, Instant::now(), &shared, &flow);
        assert_eq!(
            data_len(&items),
            stream.len() - message(b'Q', b"never\0").len()
        );
        assert!(matches!(
            items.last(),
            Some(Item::Cut(Action::ForwardThenCut, 1))
        ));
    }

    #[test]
    fn ssl_request_then_tls_is_raw() {
        let shared = shared();
        let flow = Flow::default();
        let mut parser = FrontendParser::new(1);
        let mut ssl = 8i32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        let items = parser.feed(&ssl, Instant::now(), &shared, &flow);
        assert_eq!(data_len(&items), 8);
        assert_eq!(flow.mode(), MODE_SSL_PENDING);
        let mut backend = BackendParser::default();
        assert_eq!(backend.feed(b"S", &flow), 1);
        assert_eq!(flow.mode(), MODE_RAW);
        let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(
            data_len(&parser.feed(&hello, Instant::now(), &shared, &flow)),
            10
        );
        assert_eq!(backend.feed(&hello, &flow), 10);
    }

    #[test]
    fn ssl_refused_goes_back_to_startup() {
        let flow = Flow::default();
        flow.set_mode(MODE_SSL_PENDING);
        let mut backend = BackendParser::default();
        assert_eq!(backend.feed(b"N", &flow), 1);
        assert_eq!(flow.mode(), MODE_STARTUP);
    }

    #[test]
    fn backend_counts_ready_and_swallows_after_the_mark() {
        let flow = Flow::default();
        flow.set_mode(MODE_MESSAGES);
        flow.swallow_after.store(1, Ordering::SeqCst);
        flow.cut_after.store(2, Ordering::SeqCst);
        let mut stream = message(b'C', b"SELECT 1\0");
        stream.extend(message(b'Z', b"I"));
        let first = stream.len();
        stream.extend(message(b'C', b"COMMIT\0"));
        stream.extend(message(b'Z', b"I"));
        let mut backend = BackendParser::default();
        assert_eq!(backend.feed(&stream, &flow), first);
        assert_eq!(flow.ready.load(Ordering::SeqCst), 2);
        assert_eq!(flow.action(), Action::ForwardThenCut);
    }
}
