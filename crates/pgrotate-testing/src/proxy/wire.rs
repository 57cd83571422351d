//! Following the PostgreSQL protocol in a proxied connection's bytes:
//! frontend messages (with the SQL they carry or run, for rules to match)
//! and backend `ReadyForQuery`s (to know when a forwarded message was
//! answered).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::state::{Shared, first_match};
use super::{Action, FrontendMessage};
use crate::util::TRACE_TARGET;

/// What a reader hands its writer.
pub(super) enum Item {
    /// Bytes to write once `at` has come.
    Data(Vec<u8>, Instant),
    /// Everything before was written: act.
    Cut(Action, u64),
}

pub(super) const MODE_STARTUP: u8 = 0;
pub(super) const MODE_SSL_PENDING: u8 = 1;
pub(super) const MODE_MESSAGES: u8 = 2;
pub(super) const MODE_RAW: u8 = 3;

/// State shared by a connection's two directions (one task: atomics only
/// because the futures must be `Send`).
pub(super) struct Flow {
    /// One of the `MODE_*` constants.
    pub(super) mode: AtomicU8,
    /// `ReadyForQuery`-producing messages forwarded (startup, Q, S, F).
    pub(super) expected: AtomicU64,
    /// `ReadyForQuery` messages seen from the server.
    pub(super) ready: AtomicU64,
    /// Server bytes after this many `ReadyForQuery` are discarded.
    pub(super) swallow_after: AtomicU64,
    /// A `ForwardThenCut` cuts once this many `ReadyForQuery` were seen.
    pub(super) cut_after: AtomicU64,
    /// The action that fired.
    pub(super) action: AtomicU8,
    pub(super) cut: Notify,
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
    pub(super) fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    pub(super) fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub(super) fn fire(&self, action: Action) {
        let code = match action {
            Action::DropAndCut => 1,
            Action::ForwardThenCut => 2,
        };
        self.action.store(code, Ordering::SeqCst);
        self.cut.notify_one();
    }

    pub(super) fn action(&self) -> Action {
        match self.action.load(Ordering::SeqCst) {
            2 => Action::ForwardThenCut,
            _ => Action::DropAndCut,
        }
    }

    /// Fires a pending `ForwardThenCut` once the server answered it.
    pub(super) fn check_forwarded(&self) {
        let target = self.cut_after.load(Ordering::SeqCst);
        if target != u64::MAX && self.ready.load(Ordering::SeqCst) >= target {
            self.fire(Action::ForwardThenCut);
        }
    }
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
pub(super) struct FrontendParser {
    pub(super) connection: u64,
    pub(super) buf: Vec<u8>,
    /// Prepared statement name → SQL.
    pub(super) statements: HashMap<Vec<u8>, String>,
    /// Portal name → SQL of its statement.
    pub(super) portals: HashMap<Vec<u8>, String>,
    /// A `ForwardThenCut` matched an extended-protocol message: forward up
    /// to the next message that ends the unit.
    pub(super) forwarding_to_cut: bool,
    /// A rule fired and its cut is queued: forward nothing more.
    pub(super) stopped: bool,
}

impl FrontendParser {
    pub(super) fn new(connection: u64) -> Self {
        FrontendParser {
            connection,
            buf: Vec::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            forwarding_to_cut: false,
            stopped: false,
        }
    }

    pub(super) fn feed(
        &mut self,
        data: &[u8],
        at: Instant,
        shared: &Shared,
        flow: &Flow,
    ) -> Vec<Item> {
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

/// Follows the backend protocol of one connection far enough to count
/// `ReadyForQuery` and answer `SSLRequest`.
#[derive(Default)]
pub(super) struct BackendParser {
    header: [u8; 5],
    have: usize,
    remaining: usize,
}

impl BackendParser {
    /// Reads `data`; returns how many of its leading bytes the client gets.
    pub(super) fn feed(&mut self, data: &[u8], flow: &Flow) -> usize {
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
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;
    use crate::proxy::state::{Latency, Rule, lock};
    use crate::proxy::{BlackholeMode, ProxyEvents};

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
