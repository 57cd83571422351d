#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod budget;
mod builder;
mod classify;
mod client;
mod error;
mod from_env;
mod maintenance;
mod manager;
mod pool;
mod generation;
mod retry;
mod target;
mod time;
mod stats;
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
pub use tls::{ChannelBinding, SslMode};
pub use stats::{BudgetStatus, Status};
pub use tls::TlsError;
pub use url::{DatabaseUrl, UrlError};
