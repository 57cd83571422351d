#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

// The flow, one module per step:
//
//   source/      where DATABASE_URL lives; fetch() it (Env, File, Command, Heroku API/CLI, yours)
//   url          DatabaseUrl: parsed, its own parameters read, never printed with its password
//   target       fetched URL + code-side settings (tls: sslmode, roots) → what a connect needs
//   generation   the current generation of that target, numbered, swapped atomically
//   budget       a token bucket per source: when a refetch may go out
//   connect      one connect, bounded per host, its protocol observed (wire)
//   manager      deadpool's create (refetch on rejected credentials, the after_connect hook)
//                and recycle (clean or closed); connections are deadpool-postgres ClientWrappers
//   pool / exec  the public handle; exec/: run, transaction, statement — one attempt each,
//                retried on a fresh connection (statements only when provably not run)
//   statements   the pool-level statements (query, execute, …) and their RowStream
//   pipeline     lanes: connections the pool-level statements share, several in flight on each
//   classify     the one table from error to fault
//   refetch      a fault that means the URL is stale → one budgeted, bounded fetch → back to generation
//
// Around them: builder (settings and their checks), maintenance (the one
// background task), error, stats (Status), time (deadlines, the jitter),
// retry (the policy as data), client (the pooled connection), from_env,
// work_error (the closure's error: tokio-postgres's, pgrotate's, the app's),
// hook (after_connect), metrics (every metric name and label, the
// recording functions; no-ops without the feature).

mod budget;
mod classify;
mod client;
mod connect;
mod exec;
mod generation;
mod manager;
mod pipeline;
mod pool;
mod refetch;
pub mod source;
mod target;
mod tls;
mod url;
mod wire;

mod builder;
#[cfg(feature = "serde")]
mod config;
mod error;
mod from_env;
mod hook;
mod maintenance;
pub mod metrics;
mod retry;
mod signal;
mod statements;
mod stats;
mod time;
mod work_error;

pub use builder::PoolBuilder;
pub use classify::{Fault, classify};
pub use client::Client;
#[cfg(feature = "serde")]
pub use config::{Config, RetryConfig, SourceConfig};
/// deadpool-postgres's client wrapper and transaction (with `prepare_cached`),
/// as `run`, `transaction` and [`Client`] hand them out.
pub use deadpool_postgres::{ClientWrapper, StatementCache, Transaction, TransactionBuilder};
pub use error::{Error, ErrorKind};
pub use exec::TransactionOptions;
pub use hook::HookFuture;
pub use pool::Pool;
pub use retry::{Backoff, RetryPolicy};
pub use statements::RowStream;
pub use stats::{BudgetStatus, Status};
pub use tls::{ChannelBinding, SslMode, TlsError};
pub use url::{DatabaseUrl, UrlError};
pub use work_error::{ClosureError, WorkError};
