//! What the pool reports through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`): every name and label is here, with the
//! functions that record them. Without the feature the functions do
//! nothing, and the names stay (for dashboards and tests to share).
//!
//! The pool installs no recorder: the application picks one (Prometheus
//! or another) and installs it as usual, before or after building the
//! pool. No label ever holds a URL, a host, a user, a password or a token:
//! only the fixed values listed here.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `pgrotate_url_fetches_total` | counter | `trigger`: `build`, `failure`, `outage`, `watch`, `requested`; `outcome`: `new`, `same`, `failed`, `probe_failed` | fetches of the database URL from its source |
//! | `pgrotate_generations_adopted_total` | counter | `reason`: `new_url`, `drain` | new generations (a new URL adopted, or `Pool::drain`) |
//! | `pgrotate_retries_total` | counter | `fault`: see below | attempts run again on a fresh connection, by the fault of the one before |
//! | `pgrotate_connections_opened_total` | counter | | connections opened (the `after_connect` hook passed) |
//! | `pgrotate_connections_closed_total` | counter | `reason`: `stale_generation`, `lifetime`, `idle`, `broken` | connections the pool closed: of an older generation, past `max_lifetime`, idle past `idle_timeout`, or found closed, unclean or failing their check |
//! | `pgrotate_calls_total` | counter | `outcome`: `ok`, the [`ErrorKind`] the call failed with (see below), or `cancelled` (its caller dropped it first) | `run`, `transaction` and pool-level statement calls |
//! | `pgrotate_connections` | gauge | | connections open (idle and checked out): `Status::size` |
//! | `pgrotate_connections_available` | gauge | | idle connections: `Status::available` |
//! | `pgrotate_waiting` | gauge | | callers waiting for a connection: `Status::waiting` |
//! | `pgrotate_generation` | gauge | | the current generation |
//! | `pgrotate_budget_tokens` | gauge | | tokens left in the source's refetch budget |
//! | `pgrotate_checkout_wait_seconds` | histogram | | how long a checkout (`get`, and each attempt's connection) waited, connects and refetches included |
//! | `pgrotate_refetch_to_first_success_seconds` | histogram | | from a refetch that a failure or an outage asked for to the first connection opened with a newer generation (one of the same generation, the server back where it was, stops the clock unrecorded) |
//!
//! `fault` is one of `credentials`, `database_gone`, `read_only`,
//! `server_going_away`, `disconnected`, `unreachable`,
//! `too_many_connections`, `pooler_unavailable`, `callers_error` (a
//! serialization failure retried by the policy), `none` (an attempt that
//! timed out). A call's `outcome` other than `ok` is one of `build`,
//! `source`, `connect`, `credentials_rejected`, `query`,
//! `connection_lost`, `timeout`, `closed`, `commit_outcome_unknown`,
//! `outcome_unknown`, `read_only_server`, `rolled_back`; a call whose
//! caller dropped it before it ended counts as `ok`.
//!
//! The gauges are set by the pool's background task (at least once a
//! second) and by every [`Pool::status`](crate::Pool::status).

use crate::classify::Fault;
use crate::error::{Error, ErrorKind};

/// Counter: fetches of the URL, labels [`TRIGGER`] and [`OUTCOME`].
pub const URL_FETCHES: &str = "pgrotate_url_fetches_total";
/// Counter: new generations, label [`REASON`] (`new_url`, `drain`).
pub const GENERATIONS_ADOPTED: &str = "pgrotate_generations_adopted_total";
/// Counter: attempts run again, label [`FAULT`].
pub const RETRIES: &str = "pgrotate_retries_total";
/// Counter: connections opened.
pub const CONNECTIONS_OPENED: &str = "pgrotate_connections_opened_total";
/// Counter: connections closed by the pool, label [`REASON`]
/// (`stale_generation`, `lifetime`, `idle`, `broken`).
pub const CONNECTIONS_CLOSED: &str = "pgrotate_connections_closed_total";
/// Counter: calls, label [`OUTCOME`] (`ok` or an error kind).
pub const CALLS: &str = "pgrotate_calls_total";
/// Gauge: connections open.
pub const CONNECTIONS: &str = "pgrotate_connections";
/// Gauge: idle connections.
pub const CONNECTIONS_AVAILABLE: &str = "pgrotate_connections_available";
/// Gauge: callers waiting for a connection.
pub const WAITING: &str = "pgrotate_waiting";
/// Gauge: the current generation.
pub const GENERATION: &str = "pgrotate_generation";
/// Gauge: tokens left in the refetch budget.
pub const BUDGET_TOKENS: &str = "pgrotate_budget_tokens";
/// Histogram (seconds): a checkout's wait.
pub const CHECKOUT_WAIT: &str = "pgrotate_checkout_wait_seconds";
/// Histogram (seconds): from a failure's refetch to the first connection
/// of a newer generation.
pub const REFETCH_TO_FIRST_SUCCESS: &str = "pgrotate_refetch_to_first_success_seconds";

/// Label: what started a fetch.
pub const TRIGGER: &str = "trigger";
/// Label: what a fetch brought, or how a call ended.
pub const OUTCOME: &str = "outcome";
/// Label: why a generation began or a connection was closed.
pub const REASON: &str = "reason";
/// Label: the fault of the attempt before a retry.
pub const FAULT: &str = "fault";

/// Why the pool closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    StaleGeneration,
    Lifetime,
    Idle,
    Broken,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::StaleGeneration => "stale_generation",
            Closed::Lifetime => "lifetime",
            Closed::Idle => "idle",
            Closed::Broken => "broken",
        }
    }
}

/// What a fetch brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetched {
    New,
    Same,
    Failed,
    ProbeFailed,
}

impl Fetched {
    fn label(self) -> &'static str {
        match self {
            Fetched::New => "new",
            Fetched::Same => "same",
            Fetched::Failed => "failed",
            Fetched::ProbeFailed => "probe_failed",
        }
    }
}

fn fault_label(fault: Option<Fault>) -> &'static str {
    match fault {
        None => "none",
        Some(Fault::Credentials) => "credentials",
        Some(Fault::DatabaseGone) => "database_gone",
        Some(Fault::ReadOnly) => "read_only",
        Some(Fault::ServerGoingAway) => "server_going_away",
        Some(Fault::Disconnected) => "disconnected",
        Some(Fault::Unreachable) => "unreachable",
        Some(Fault::TooManyConnections) => "too_many_connections",
        Some(Fault::PoolerUnavailable) => "pooler_unavailable",
        Some(Fault::CallersError) => "callers_error",
    }
}

fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Build => "build",
        ErrorKind::Source => "source",
        ErrorKind::Connect => "connect",
        ErrorKind::CredentialsRejected => "credentials_rejected",
        ErrorKind::Query => "query",
        ErrorKind::ConnectionLost => "connection_lost",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Closed => "closed",
        ErrorKind::CommitOutcomeUnknown => "commit_outcome_unknown",
        ErrorKind::OutcomeUnknown => "outcome_unknown",
        ErrorKind::ReadOnlyServer => "read_only_server",
        ErrorKind::RolledBack => "rolled_back",
    }
}

/// One call (`run`, `transaction`, a pool-level statement), counted once
/// when it ends (dropped): `ok` when [`Call::succeeded`] said so, the
/// error's kind when [`Call::failed`] did, `cancelled` when neither (the
/// caller dropped the call's future first).
/// Lives in the call's `Attempts`.
#[derive(Debug, Default)]
pub(crate) struct Call {
    #[cfg(feature = "metrics")]
    failed: std::sync::OnceLock<&'static str>,
}

impl Call {
    /// The call ends with a success.
    pub(crate) fn succeeded(&self) {
        #[cfg(feature = "metrics")]
        let _ = self.failed.set("ok");
    }

    /// The call ends with `err` (the first final error counts).
    pub(crate) fn failed(&self, err: &Error) {
        #[cfg(feature = "metrics")]
        let _ = self.failed.set(kind_label(err.kind()));
        #[cfg(not(feature = "metrics"))]
        let _ = (err, kind_label);
    }
}

#[cfg(feature = "metrics")]
impl Drop for Call {
    fn drop(&mut self) {
        let outcome = self.failed.get().copied().unwrap_or("cancelled");
        metrics::counter!(CALLS, OUTCOME => outcome).increment(1);
    }
}

/// The refetch-to-first-success clock: started by the first refetch a
/// failure asks for, stopped by the first connection of a newer generation.
/// Lives in the refresher's state.
#[derive(Debug, Default)]
pub(crate) struct RefetchClock {
    #[cfg(feature = "metrics")]
    since: Option<(tokio::time::Instant, u64)>,
}

impl RefetchClock {
    /// A refetch of generation `generation` starts: the clock runs from
    /// now unless it already runs.
    pub(crate) fn refetching(&mut self, generation: u64) {
        #[cfg(feature = "metrics")]
        if self.since.is_none() {
            self.since = Some((tokio::time::Instant::now(), generation));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = generation;
    }

    /// A connection of the current generation `generation` opened:
    /// recorded if it is newer than the one the refetch started from; one
    /// of that same generation (the server back where it was after an
    /// outage) stops the clock unrecorded, so a later rotation is not
    /// charged with the wait.
    pub(crate) fn connected(&mut self, generation: u64) {
        #[cfg(feature = "metrics")]
        if let Some((at, from)) = self.since
            && generation >= from
        {
            self.since = None;
            if generation > from {
                metrics::histogram!(REFETCH_TO_FIRST_SUCCESS).record(at.elapsed().as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = generation;
    }
}

/// A fetch of the URL ended.
pub(crate) fn url_fetched(trigger: &'static str, outcome: Fetched) {
    #[cfg(feature = "metrics")]
    metrics::counter!(URL_FETCHES, TRIGGER => trigger, OUTCOME => outcome.label()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (trigger, outcome.label());
}

/// A new generation began: `drain` or a new URL.
pub(crate) fn generation_adopted(drain: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(GENERATIONS_ADOPTED, REASON => if drain { "drain" } else { "new_url" })
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = drain;
}

/// An attempt is run again after `fault`.
pub(crate) fn retry(fault: Option<Fault>) {
    #[cfg(feature = "metrics")]
    metrics::counter!(RETRIES, FAULT => fault_label(fault)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = fault_label(fault);
}

/// A connection opened.
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    metrics::counter!(CONNECTIONS_OPENED).increment(1);
}

/// `n` connections were closed for `reason`.
pub(crate) fn connections_closed(reason: Closed, n: usize) {
    #[cfg(feature = "metrics")]
    metrics::counter!(CONNECTIONS_CLOSED, REASON => reason.label()).increment(n as u64);
    #[cfg(not(feature = "metrics"))]
    let _ = (reason.label(), n);
}

/// `checkout`, with its wait recorded when it ends: a plain wrapper of
/// its poll (no async fn, whose frame would deepen the connect's stack).
#[cfg(feature = "metrics")]
pub(crate) fn checkout<F: std::future::Future>(checkout: F) -> Timed<F> {
    Timed {
        inner: checkout,
        started: None,
    }
}

/// Without the feature, the checkout itself.
#[cfg(not(feature = "metrics"))]
pub(crate) fn checkout<F: std::future::Future>(checkout: F) -> F {
    checkout
}

#[cfg(feature = "metrics")]
pin_project_lite::pin_project! {
    /// A checkout whose wait is recorded when it ends ([`CHECKOUT_WAIT`]).
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
        started: Option<tokio::time::Instant>,
    }
}

#[cfg(feature = "metrics")]
impl<F: std::future::Future> std::future::Future for Timed<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let started = *this.started.get_or_insert_with(tokio::time::Instant::now);
        let got = std::task::ready!(this.inner.poll(cx));
        metrics::histogram!(CHECKOUT_WAIT).record(started.elapsed().as_secs_f64());
        std::task::Poll::Ready(got)
    }
}

/// The gauges, from a status snapshot.
pub(crate) fn status(status: &crate::Status) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(CONNECTIONS).set(status.size as f64);
        metrics::gauge!(CONNECTIONS_AVAILABLE).set(status.available as f64);
        metrics::gauge!(WAITING).set(status.waiting as f64);
        metrics::gauge!(GENERATION).set(status.generation as f64);
        metrics::gauge!(BUDGET_TOKENS).set(f64::from(status.budget.tokens));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// The gauges, from the pool's background task (without the feature, the
/// status is not even taken).
pub(crate) fn gauges(pool: &std::sync::Arc<crate::pool::Inner>) {
    #[cfg(feature = "metrics")]
    let _ = (crate::Pool {
        inner: pool.clone(),
    })
    .status();
    #[cfg(not(feature = "metrics"))]
    let _ = pool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_words() {
        let labels = [
            fault_label(None),
            fault_label(Some(Fault::PoolerUnavailable)),
            kind_label(ErrorKind::CommitOutcomeUnknown),
            Closed::StaleGeneration.label(),
            Fetched::ProbeFailed.label(),
        ];
        for l in labels {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        }
    }

    #[cfg(feature = "metrics")]
    mod recorded {
        use super::super::*;
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        /// One recorded series: name, labels, value.
        type Recorded = (String, Vec<(String, String)>, DebugValue);

        /// What `f` records, in the recorder's order.
        fn recorded(f: impl FnOnce()) -> Vec<Recorded> {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            metrics::with_local_recorder(&recorder, f);
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key();
                    let labels = key
                        .labels()
                        .map(|l| (l.key().to_string(), l.value().to_string()))
                        .collect();
                    (key.name().to_string(), labels, value)
                })
                .collect()
        }

        fn outcome(v: &[Recorded]) -> Vec<String> {
            v.iter()
                .filter(|(n, _, _)| n == CALLS)
                .map(|(_, l, _)| l[0].1.clone())
                .collect()
        }

        #[test]
        fn a_call_counts_once_as_ok_or_as_the_kind_it_first_failed_with() {
            let v = recorded(|| Call::default().succeeded());
            assert_eq!(outcome(&v), ["ok"]);
            // Dropped before it ended: its caller gave up.
            let v = recorded(|| drop(Call::default()));
            assert_eq!(outcome(&v), ["cancelled"]);
            let v = recorded(|| {
                let call = Call::default();
                call.failed(&Error::new(ErrorKind::CommitOutcomeUnknown, "x"));
                call.failed(&Error::new(ErrorKind::Timeout, "y"));
            });
            assert_eq!(outcome(&v), ["commit_outcome_unknown"]);
        }

        #[test]
        fn the_refetch_clock_records_only_a_newer_generation_and_once() {
            let v = recorded(|| {
                let mut clock = RefetchClock::default();
                clock.refetching(1);
                // An older connection finishing after the refetch began.
                clock.connected(0);
                clock.refetching(1);
                clock.connected(2);
                clock.connected(2);
            });
            let samples: Vec<_> = v
                .iter()
                .filter_map(|(n, _, value)| match value {
                    DebugValue::Histogram(h) if n == REFETCH_TO_FIRST_SUCCESS => Some(h.len()),
                    _ => None,
                })
                .collect();
            assert_eq!(samples, [1]);
            // The server back on the same generation: nothing recorded,
            // and a later newer one is not charged with the wait.
            let v = recorded(|| {
                let mut clock = RefetchClock::default();
                clock.refetching(3);
                clock.connected(3);
                clock.connected(4);
            });
            assert!(
                v.iter().all(|(n, _, value)| n != REFETCH_TO_FIRST_SUCCESS
                    || matches!(value, DebugValue::Histogram(h) if h.is_empty())),
                "{v:?}"
            );
        }
    }
}
