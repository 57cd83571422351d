//! Closing a connection that still has work on the server: a caller gave
//! up on it, or an attempt on it got no answer in time.
//!
//! Closing the socket alone does not stop the server: a backend notices a
//! closed client only when it next writes, and the requests it has already
//! read run first, one after another — on a pipelined connection, every
//! statement queued behind the one that is stuck. A statement waiting for
//! a lock would keep its session (a connection slot of the plan's few)
//! until the lock is released. So the pool seals the connection's writes
//! (nothing more goes out, and what was sent is final), asks the server to
//! cancel what runs, once for each request still unanswered while their
//! answers are read, then closes the socket. A cancel that arrives between
//! two statements is ignored by the server; it is sent again when no
//! answer follows it within [`PROGRESS`]. All of it within [`stop_bound`].

use std::sync::Arc;
use std::time::Duration;

use super::{Canceller, TARGET};
use crate::error::describe_postgres;
use crate::wire::{Answers, Wire};

/// How long a cancel request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an answer is waited for after a cancel before it is sent again.
const PROGRESS: Duration = Duration::from_secs(1);

/// How long the pool spends stopping one connection's work at most: 5 s,
/// and 25 ms more for each request unanswered when it began (a cancel is a
/// connection and a TLS handshake of its own; a deep pipeline needs one per
/// statement), at most 30 s. Then the socket is closed whatever is left.
fn stop_bound(unanswered: i64) -> Duration {
    let n = u32::try_from(unanswered.max(0)).unwrap_or(u32::MAX);
    let per_request = Duration::from_millis(25).saturating_mul(n);
    (Duration::from_secs(5) + per_request).min(Duration::from_secs(30))
}

/// Stops the work left on a connection being closed, in the background:
/// its writes are sealed before this returns (so the counts its callers
/// decide on are final); the server is asked to cancel until every
/// request sent is answered, then `task` (the connection's) is aborted.
/// A connection already being stopped is left to that.
pub(crate) fn stop_in_background(
    token: tokio_postgres::CancelToken,
    canceller: Canceller,
    wire: Arc<Wire>,
    task: tokio::task::AbortHandle,
) {
    if !wire.seal() {
        return;
    }
    let bound = stop_bound(wire.unanswered().unwrap_or(0));
    tokio::spawn(async move {
        let _ = tokio::time::timeout(bound, cancel_until_answered(&token, &canceller, &wire)).await;
        task.abort();
    });
}

/// Cancels what runs until nothing sent is unanswered (or, on a stream
/// not observed, once).
async fn cancel_until_answered(
    token: &tokio_postgres::CancelToken,
    canceller: &Canceller,
    wire: &Wire,
) {
    loop {
        let Some((_, answered)) = wire.requests() else {
            return cancel(token, canceller).await;
        };
        if wire.unanswered().is_none_or(|n| n <= 0) {
            return;
        }
        cancel(token, canceller).await;
        if wire.answered(answered + 1, PROGRESS).await == Answers::Ended {
            return;
        }
    }
}

/// One cancel request, bounded.
async fn cancel(token: &tokio_postgres::CancelToken, canceller: &Canceller) {
    let sent = async {
        match canceller {
            Canceller::Tls(tls) => token.cancel_query(tls.clone()).await,
            Canceller::Plain => token.cancel_query(tokio_postgres::NoTls).await,
        }
    };
    if let Ok(Err(e)) = tokio::time::timeout(CANCEL_TIMEOUT, sent).await {
        tracing::debug!(target: TARGET, error = %describe_postgres(&e), "cancel request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_grows_with_the_requests_left_and_is_capped() {
        assert_eq!(stop_bound(0), Duration::from_secs(5));
        assert_eq!(stop_bound(-1), Duration::from_secs(5));
        assert_eq!(stop_bound(128), Duration::from_millis(8200));
        assert_eq!(stop_bound(1000), Duration::from_secs(30));
        assert_eq!(stop_bound(i64::MAX), Duration::from_secs(30));
    }
}
