//! Message rules: a predicate on the client→server protocol messages
//! ([`FrontendMessage`]), what a match does to its connection ([`Action`]),
//! how often it fires ([`Times`]); added to and removed from a
//! [`FaultProxy`] by [`RuleId`]. `wire` follows the protocol so that a
//! rule can see each message; `state::first_match` picks the rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::FaultProxy;
#[cfg(doc)]
use super::ProxyConnection; // for the doc links
use super::state::{Rule, lock};

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

impl FaultProxy {
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
}
