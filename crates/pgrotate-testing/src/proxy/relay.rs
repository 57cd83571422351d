//! Relaying a proxied connection's bytes: one task per connection, a
//! reader and a writer per direction, with latency, blackholes, resets and
//! the cuts rules ask for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::state::{ConnShared, Flags, Latency, Shared, lock};
use super::wire::{BackendParser, Flow, FrontendParser, Item};
use super::{Action, BlackholeMode, Direction};
use crate::util::TRACE_TARGET;

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
                read_client(
                    Reader::new(client_read, shared, conn, Direction::ToServer),
                    up_tx,
                    &flow
                ),
                write_side(server_write, up_rx, Gate::new(shared, conn), &flow),
                read_server(
                    Reader::new(server_read, shared, conn, Direction::ToClient),
                    down_tx,
                    &flow
                ),
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

const CHUNK: usize = 16 * 1024;

/// A direction's reading end: waits while a blackhole is on, reads a
/// chunk, and stamps it with when the writer may pass it on (now plus the
/// proxy's and the connection's latency in that direction).
struct Reader<'a> {
    read: ReadHalf<'a>,
    gate: Gate,
    chunk: Vec<u8>,
    shared: &'a Shared,
    conn: &'a ConnShared,
    direction: Direction,
}

impl<'a> Reader<'a> {
    fn new(
        read: ReadHalf<'a>,
        shared: &'a Shared,
        conn: &'a ConnShared,
        direction: Direction,
    ) -> Reader<'a> {
        Reader {
            read,
            gate: Gate::new(shared, conn),
            chunk: vec![0; CHUNK],
            shared,
            conn,
            direction,
        }
    }

    /// The next chunk (empty at the end of the stream) and when it is due.
    async fn next(&mut self) -> std::io::Result<(&[u8], Instant)> {
        self.gate.open().await;
        let n = self.read.read(&mut self.chunk).await?;
        let at = Instant::now()
            + self.shared.latency.get(self.direction)
            + self.conn.latency.get(self.direction);
        Ok((&self.chunk[..n], at))
    }
}

/// Client → server: reads, follows the frontend protocol where it is
/// plaintext, applies rules, queues for the writer.
async fn read_client(
    mut from: Reader<'_>,
    tx: mpsc::Sender<Item>,
    flow: &Flow,
) -> std::io::Result<()> {
    let shared = from.shared;
    let mut parser = FrontendParser::new(from.conn.id);
    loop {
        let (bytes, at) = from.next().await?;
        if bytes.is_empty() {
            // End of the client's stream: forward what is left, then the
            // writer shuts the server side down.
            let rest = std::mem::take(&mut parser.buf);
            if !rest.is_empty() {
                let _ = tx.send(Item::Data(rest, at)).await;
            }
            return Ok(());
        }
        let items = parser.feed(bytes, at, shared, flow);
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
    mut from: Reader<'_>,
    tx: mpsc::Sender<Item>,
    flow: &Flow,
) -> std::io::Result<()> {
    let mut parser = BackendParser::default();
    loop {
        let (bytes, at) = match from.next().await {
            Ok(read) => read,
            Err(error) => {
                if flow.cut_after.load(Ordering::SeqCst) != u64::MAX {
                    flow.fire(Action::ForwardThenCut);
                }
                return Err(error);
            }
        };
        if bytes.is_empty() {
            if flow.cut_after.load(Ordering::SeqCst) != u64::MAX {
                // The server closed before answering: cut the client now.
                flow.fire(Action::ForwardThenCut);
                std::future::pending::<()>().await;
            }
            return Ok(());
        }
        let keep = parser.feed(bytes, flow);
        if keep > 0
            && tx
                .send(Item::Data(bytes[..keep].to_vec(), at))
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
