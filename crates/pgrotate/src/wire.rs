//! What the server says on a connection, read off its byte stream on the
//! way to tokio-postgres, at no extra round trip: the transaction status
//! every `ReadyForQuery` carries (idle, in a transaction, in a failed one),
//! how many requests are still unanswered, and `in_hot_standby` (reported by
//! PostgreSQL 14+ at startup and again when a standby is promoted).
//!
//! tokio-postgres keeps all three to itself. The pool owns the stream below
//! it (the TLS connector hands it over, and a plaintext connect is made by
//! the pool), so it can watch the protocol's framing go by: the frontend's
//! `Query`, `Sync` and `FunctionCall` each get exactly one `ReadyForQuery`.
//! This is how a connection is known to come back idle and clean, like
//! pgx's check of the transaction status on release.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The transaction status of the last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: every statement fails with 25P02
    /// until `ROLLBACK` (a `COMMIT` only rolls back).
    Failed,
    /// Not known: the stream was not observed (a plaintext fallback, a
    /// Unix socket) or no `ReadyForQuery` came yet.
    Unknown,
}

/// What the observer has seen on one connection. Shared between the
/// stream (inside tokio-postgres's connection task) and the pool.
#[derive(Debug)]
pub(crate) struct Wire {
    status: AtomicU8,
    /// 0 unknown, 1 off, 2 on.
    hot_standby: AtomicU8,
    /// The tag of the last `CommandComplete`: 0 another, 1 `COMMIT`,
    /// 2 `ROLLBACK`.
    last_end: AtomicU8,
    /// What each request sent still waits for, oldest first: the answers
    /// come in order (the startup counts as one).
    expected: Mutex<VecDeque<Expect>>,
    observed: AtomicBool,
    ready: Notify,
    /// Requests that run something (`Query`, `Execute`, `FunctionCall`)
    /// handed to the stream below, counted from their first bytes.
    runs_sent: AtomicU64,
    /// `CommandComplete` messages received.
    completions: AtomicU64,
    /// The stream ended (end of file or an error reading it).
    ended: AtomicBool,
}

/// What came of waiting for the answers of the requests sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answers {
    /// Every request has its `ReadyForQuery`.
    All,
    /// The stream ended first.
    Ended,
    /// Neither within the time given, or the stream is not observed.
    Unknown,
}

/// How far a connection's traffic had come, to compare before and after a
/// statement: [`Wire::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Requests that run something, sent.
    pub(crate) runs_sent: u64,
    /// `CommandComplete` messages received.
    pub(crate) completions: u64,
}

/// A request that gets one `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Startup,
    Query,
    /// A `Sync`; `after_execute` when it follows an `Execute` directly —
    /// the one the server ignores if that `Execute` starts a `COPY FROM
    /// STDIN` (tokio-postgres sends another after `CopyDone`).
    Sync {
        after_execute: bool,
    },
    FunctionCall,
}

/// How a transaction ended, by the last `CommandComplete` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastEnd {
    Commit,
    Rollback,
    Other,
}

impl Default for Wire {
    fn default() -> Wire {
        Wire {
            status: AtomicU8::new(0),
            hot_standby: AtomicU8::new(0),
            last_end: AtomicU8::new(0),
            expected: Mutex::new(VecDeque::from([Expect::Startup])),
            observed: AtomicBool::new(false),
            ready: Notify::new(),
            runs_sent: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }
}

impl Wire {
    /// A wire for a stream nobody observes: every answer is "unknown".
    pub(crate) fn unobserved() -> Arc<Wire> {
        Arc::new(Wire::default())
    }

    pub(crate) fn tx_status(&self) -> TxStatus {
        if !self.observed.load(Ordering::Acquire) {
            return TxStatus::Unknown;
        }
        match self.status.load(Ordering::Acquire) {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Unknown,
        }
    }

    /// Requests still waiting for their answer, if the stream is observed.
    pub(crate) fn unanswered(&self) -> Option<i64> {
        self.observed
            .load(Ordering::Acquire)
            .then(|| self.pending())
    }

    fn pending(&self) -> i64 {
        self.queue().len() as i64
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How far the traffic has come, if the stream is observed.
    pub(crate) fn progress(&self) -> Option<Progress> {
        self.observed.load(Ordering::Acquire).then(|| Progress {
            runs_sent: self.runs_sent.load(Ordering::Acquire),
            completions: self.completions.load(Ordering::Acquire),
        })
    }

    /// Whether the server is a hot standby, when it said (PostgreSQL 14+).
    pub(crate) fn in_hot_standby(&self) -> Option<bool> {
        match self.hot_standby.load(Ordering::Acquire) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Waits until every request sent has its answer, at most `within`.
    /// The answer to the last statement usually arrives in the same read
    /// as its `ReadyForQuery`; this covers the rest.
    pub(crate) async fn settled(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let ready = self.ready.notified();
                if self.pending() == 0 {
                    return;
                }
                ready.await;
            }
        };
        self.unanswered().is_some() && tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Waits until every request sent has its answer or the stream ends,
    /// at most `within`.
    pub(crate) async fn answers(&self, within: Duration) -> Answers {
        if self.unanswered().is_none() {
            return Answers::Unknown;
        }
        let wait = async {
            loop {
                let ready = self.ready.notified();
                if self.pending() == 0 {
                    return Answers::All;
                }
                if self.ended.load(Ordering::Acquire) {
                    return Answers::Ended;
                }
                ready.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or(Answers::Unknown)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// What the last `CommandComplete` said, when it ended a transaction.
    pub(crate) fn last_end(&self) -> LastEnd {
        match self.last_end.load(Ordering::Acquire) {
            1 => LastEnd::Commit,
            2 => LastEnd::Rollback,
            _ => LastEnd::Other,
        }
    }

    fn expect(&self, e: Expect) {
        self.queue().push_back(e);
    }

    fn ready_for_query(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        self.queue().pop_front();
        self.ready.notify_waiters();
    }

    /// `CopyInResponse`: if the request being answered is an `Execute`'s
    /// `Sync`, the server ignores that `Sync` (it is in copy-in mode); the
    /// one after `CopyDone` gets the `ReadyForQuery`.
    fn copy_in(&self) {
        let mut q = self.queue();
        if q.front()
            == Some(&Expect::Sync {
                after_execute: true,
            })
        {
            q.pop_front();
        }
    }

    fn command_complete(&self, tag: &[u8]) {
        self.completions.fetch_add(1, Ordering::AcqRel);
        let end = match tag.split(|b| *b == 0).next().unwrap_or_default() {
            b"COMMIT" => 1,
            b"ROLLBACK" => 2,
            _ => 0,
        };
        self.last_end.store(end, Ordering::Release);
    }

    fn parameter(&self, name: &[u8], value: &[u8]) {
        if name == b"in_hot_standby" {
            let v = if value == b"on" { 2 } else { 1 };
            self.hot_standby.store(v, Ordering::Release);
        }
    }
}

/// The longest body the reader keeps to look at (`ReadyForQuery`,
/// `ParameterStatus`); longer ones are skipped.
const KEEP_BODY: usize = 256;

/// Follows the backend's messages: one type byte, a length, a body.
#[derive(Debug, Default)]
struct Reader {
    header: [u8; 5],
    have: usize,
    /// Body bytes still to come of the current message.
    left: usize,
    kind: u8,
    body: Vec<u8>,
}

impl Reader {
    fn feed(&mut self, mut bytes: &[u8], wire: &Wire) {
        while !bytes.is_empty() {
            if self.have < 5 {
                let take = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < 5 {
                    return;
                }
                self.kind = self.header[0];
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.left = len.saturating_sub(4);
                self.body.clear();
                if self.left == 0 {
                    self.message(wire);
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            if matches!(self.kind, b'Z' | b'S' | b'C') && self.body.len() + take <= KEEP_BODY {
                self.body.extend_from_slice(&bytes[..take]);
            }
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.message(wire);
            }
        }
    }

    fn message(&mut self, wire: &Wire) {
        match self.kind {
            b'Z' => {
                if let Some(&status) = self.body.first() {
                    wire.ready_for_query(status);
                }
            }
            b'S' => {
                let mut parts = self.body.split(|b| *b == 0);
                if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
                    wire.parameter(name, value);
                }
            }
            b'C' => wire.command_complete(&self.body),
            b'G' => wire.copy_in(),
            _ => {}
        }
        self.have = 0;
        self.body.clear();
    }
}

/// Follows the frontend's messages: first the startup message (a length,
/// no type byte), then typed ones.
#[derive(Debug, Default)]
struct Writer {
    started: bool,
    header: [u8; 5],
    have: usize,
    left: usize,
    /// The type of the last message sent.
    last: u8,
}

impl Writer {
    fn feed(&mut self, mut bytes: &[u8], wire: &Wire) {
        while !bytes.is_empty() {
            let header_len = if self.started { 5 } else { 4 };
            if self.have < header_len {
                let take = (header_len - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < header_len {
                    return;
                }
                let len_at = header_len - 4;
                let len = u32::from_be_bytes([
                    self.header[len_at],
                    self.header[len_at + 1],
                    self.header[len_at + 2],
                    self.header[len_at + 3],
                ]) as usize;
                self.left = len.saturating_sub(4);
                if self.started {
                    let kind = self.header[0];
                    if matches!(kind, b'Q' | b'E' | b'F') {
                        wire.runs_sent.fetch_add(1, Ordering::AcqRel);
                    }
                    match kind {
                        b'Q' => wire.expect(Expect::Query),
                        b'S' => wire.expect(Expect::Sync {
                            after_execute: self.last == b'E',
                        }),
                        b'F' => wire.expect(Expect::FunctionCall),
                        _ => {}
                    }
                    self.last = kind;
                }
                if self.left == 0 {
                    self.started = true;
                    self.have = 0;
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.started = true;
                self.have = 0;
            }
        }
    }
}

/// A stream whose protocol is observed.
pub(crate) struct Observed<S> {
    inner: S,
    wire: Arc<Wire>,
    reader: Reader,
    writer: Writer,
}

impl<S> Observed<S> {
    pub(crate) fn new(inner: S, wire: Arc<Wire>) -> Observed<S> {
        wire.observed.store(true, Ordering::Release);
        Observed {
            inner,
            wire,
            reader: Reader::default(),
            writer: Writer::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        let got = buf.filled().len() - before;
        if read.is_err() || (got == 0 && buf.remaining() > 0) {
            this.wire.end();
        }
        read?;
        this.reader.feed(&buf.filled()[before..], &this.wire);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.writer.feed(&data[..n], &this.wire);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Observed<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

type Inner = MakeRustlsConnect;
type InnerConnect = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;
type InnerStream = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The TLS connector of a generation, observing each connection it makes.
/// A clone has a slot of its own, so concurrent connects never mix up
/// their wires.
pub(crate) struct ObservingTls {
    inner: Inner,
    slot: Arc<Mutex<Option<Arc<Wire>>>>,
}

impl Clone for ObservingTls {
    fn clone(&self) -> ObservingTls {
        ObservingTls::new(self.inner.clone())
    }
}

impl ObservingTls {
    pub(crate) fn new(inner: Inner) -> ObservingTls {
        ObservingTls {
            inner,
            slot: Arc::default(),
        }
    }

    /// The wire of the last TLS connection this connector made (the one
    /// that succeeded: with several hosts, each try replaces it).
    pub(crate) fn wire_slot(&self) -> Arc<Mutex<Option<Arc<Wire>>>> {
        self.slot.clone()
    }
}

impl MakeTlsConnect<tokio_postgres::Socket> for ObservingTls {
    type Stream = Observed<InnerStream>;
    type TlsConnect = ObservingConnect;
    type Error = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<ObservingConnect, Self::Error> {
        let inner = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::make_tls_connect(
            &mut self.inner,
            domain,
        )?;
        let wire = Arc::new(Wire::default());
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(wire.clone());
        Ok(ObservingConnect { inner, wire })
    }
}

/// One TLS connect, handing back an observed stream.
pub(crate) struct ObservingConnect {
    inner: InnerConnect,
    wire: Arc<Wire>,
}

impl TlsConnect<tokio_postgres::Socket> for ObservingConnect {
    type Stream = Observed<InnerStream>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<Observed<InnerStream>>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        let wire = self.wire;
        let connecting =
            <InnerConnect as TlsConnect<tokio_postgres::Socket>>::connect(self.inner, stream);
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(Observed::new(stream, wire))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00app\x00\x00";
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    fn observed() -> (Arc<Wire>, Reader, Writer) {
        let wire = Arc::new(Wire::default());
        wire.observed.store(true, Ordering::Release);
        (wire, Reader::default(), Writer::default())
    }

    #[test]
    fn the_status_of_every_ready_for_query_is_kept_byte_by_byte() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        let mut server = msg(b'R', &[0, 0, 0, 0]);
        server.extend(msg(b'S', b"in_hot_standby\0off\0"));
        server.extend(msg(b'K', &[0; 8]));
        server.extend(msg(b'Z', b"I"));
        // Split at every byte: framing survives any read size.
        for b in &server {
            r.feed(std::slice::from_ref(b), &wire);
        }
        assert_eq!(wire.tx_status(), TxStatus::Idle);
        assert_eq!(wire.unanswered(), Some(0));
        assert_eq!(wire.in_hot_standby(), Some(false));

        let mut client = msg(b'Q', b"BEGIN; INSERT INTO t VALUES (42)\0");
        client.extend(msg(b'P', b"\0select 1\0\0\0"));
        client.extend(msg(b'B', &[0; 10]));
        client.extend(msg(b'E', &[0; 5]));
        client.extend(msg(b'S', b""));
        w.feed(&client[..7], &wire);
        w.feed(&client[7..], &wire);
        assert_eq!(wire.unanswered(), Some(2), "a Query and a Sync in flight");
        let mut answers = msg(b'C', b"INSERT 0 1\0");
        answers.extend(msg(b'Z', b"T"));
        r.feed(&answers, &wire);
        assert_eq!(wire.tx_status(), TxStatus::InTransaction);
        assert_eq!(wire.unanswered(), Some(1));
        let mut answers = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
        answers.extend(msg(b'Z', b"E"));
        r.feed(&answers, &wire);
        assert_eq!(wire.tx_status(), TxStatus::Failed);
        assert_eq!(wire.unanswered(), Some(0));
        // A promotion is reported as a parameter change.
        r.feed(&msg(b'S', b"in_hot_standby\0on\0"), &wire);
        assert_eq!(wire.in_hot_standby(), Some(true));
    }

    #[test]
    fn a_copy_in_ignores_the_sync_after_its_execute() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        // tokio-postgres's copy_in: Bind, Execute, Sync; CopyData, CopyDone, Sync.
        let mut client = msg(b'B', &[0; 10]);
        client.extend(msg(b'E', &[0; 5]));
        client.extend(msg(b'S', b""));
        w.feed(&client, &wire);
        r.feed(&msg(b'G', &[0, 0, 0]), &wire);
        let mut client = msg(b'd', b"1\n");
        client.extend(msg(b'c', b""));
        client.extend(msg(b'S', b""));
        w.feed(&client, &wire);
        let mut answers = msg(b'C', b"COPY 1\0");
        answers.extend(msg(b'Z', b"I"));
        r.feed(&answers, &wire);
        assert_eq!(wire.unanswered(), Some(0), "two Syncs, one answer");
        // A simple-query COPY: one Query, one answer.
        w.feed(&msg(b'Q', b"copy t from stdin\0"), &wire);
        r.feed(&msg(b'G', &[0, 0, 0]), &wire);
        w.feed(&msg(b'c', b""), &wire);
        assert_eq!(wire.unanswered(), Some(1));
        let mut answers = msg(b'C', b"COPY 0\0");
        answers.extend(msg(b'Z', b"I"));
        r.feed(&answers, &wire);
        assert_eq!(wire.unanswered(), Some(0));
    }

    #[test]
    fn the_last_command_tag_says_how_a_transaction_ended() {
        let (wire, mut r, _) = observed();
        r.feed(&msg(b'C', b"ROLLBACK\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Rollback);
        r.feed(&msg(b'C', b"COMMIT\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Commit);
        r.feed(&msg(b'C', b"INSERT 0 1\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Other);
    }

    #[test]
    fn long_bodies_are_skipped_without_losing_the_framing() {
        let (wire, mut r, _) = observed();
        let big = vec![7u8; 100_000];
        let mut bytes = msg(b'D', &big);
        bytes.extend(msg(b'S', &[b'x'; 1000]));
        bytes.extend(msg(b'Z', b"I"));
        for chunk in bytes.chunks(4096) {
            r.feed(chunk, &wire);
        }
        assert_eq!(wire.tx_status(), TxStatus::Idle);
    }

    #[test]
    fn an_unobserved_wire_knows_nothing() {
        let wire = Wire::unobserved();
        assert_eq!(wire.tx_status(), TxStatus::Unknown);
        assert_eq!(wire.unanswered(), None);
        assert_eq!(wire.in_hot_standby(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_the_last_answer_within_its_bound() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        assert!(wire.settled(Duration::ZERO).await);
        w.feed(&msg(b'Q', b"select pg_sleep(5)\0"), &wire);
        assert!(!wire.settled(Duration::from_millis(50)).await);
        let answer = {
            let wire = wire.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Reader::default().feed(&msg(b'Z', b"I"), &wire);
            })
        };
        assert!(wire.settled(Duration::from_secs(1)).await);
        answer.await.unwrap();
    }
}
