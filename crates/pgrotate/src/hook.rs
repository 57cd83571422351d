//! The `after_connect` hook: the caller's own setup of every new
//! connection (`SET statement_timeout`, `search_path`, …), run before the
//! connection is handed out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deadpool_postgres::ClientWrapper;

use futures_util::FutureExt;

use crate::classify::classify;
use crate::error::{Error, ErrorKind, describe_postgres};
use crate::wire::{TxStatus, Wire};

/// Runs the hook on a new connection, by `deadline`. Its failure, its
/// timeout, its panic, and a transaction it leaves open each fail the
/// connection with an error saying which.
pub(crate) async fn run(
    hook: &Hook,
    client: &ClientWrapper,
    wire: &Wire,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let ran = std::panic::AssertUnwindSafe(hook(client)).catch_unwind();
    match tokio::time::timeout_at(deadline, ran).await {
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            "the after_connect hook did not finish within the checkout's deadline",
        )),
        Ok(Err(_panic)) => Err(Error::new(
            ErrorKind::Query,
            "the after_connect hook panicked",
        )),
        Ok(Ok(Err(e))) => Err(failed(e)),
        Ok(Ok(Ok(()))) => match wire.tx_status() {
            TxStatus::InTransaction | TxStatus::Failed => Err(Error::new(
                ErrorKind::Query,
                "the after_connect hook left a transaction open; its statements would run \
                 inside it and never commit (use SET, not BEGIN, in the hook)",
            )),
            TxStatus::Idle | TxStatus::Unknown => Ok(()),
        },
    }
}

/// The future an [`after_connect`](crate::PoolBuilder::after_connect) hook
/// returns: `Box::pin(async move { … })`.
pub type HookFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// The hook as the pool keeps it.
pub(crate) type Hook = Arc<dyn for<'a> Fn(&'a ClientWrapper) -> HookFuture<'a> + Send + Sync>;

/// What a failed hook means: a lost connection is retried like any failed
/// connect; the hook's own error (a syntax error, an unknown setting) fails
/// the checkout at once, with what the server said — every new connection
/// would fail the same way.
fn failed(e: tokio_postgres::Error) -> Error {
    let fault = classify(&e);
    let kind = if fault.is_connection_level() {
        ErrorKind::ConnectionLost
    } else {
        ErrorKind::Query
    };
    let detail = format!("the after_connect hook failed: {}", describe_postgres(&e));
    Error::new(kind, detail).with_cause(e)
}
