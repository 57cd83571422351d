#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod budget;
mod builder;
mod classify;
mod client;
mod connect;
mod error;
mod exec;
mod from_env;
mod generation;
mod maintenance;
mod manager;
mod pool;
mod refetch;
mod retry;
mod stats;
mod target;
mod time;
mod tls;
mod url;
mod wire;

pub mod source;

pub use builder::PoolBuilder;
pub use classify::{Fault, classify};
pub use client::Client;
pub use error::{Error, ErrorKind};
pub use pool::Pool;
pub use retry::{Backoff, RetryPolicy};
pub use stats::{BudgetStatus, Status};
pub use tls::TlsError;
pub use tls::{ChannelBinding, SslMode};
pub use url::{DatabaseUrl, UrlError};
