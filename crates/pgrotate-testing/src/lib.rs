//! Throwaway real PostgreSQL servers for tests, with the rotation and
//! failover a managed database platform does to its users.
//!
//! [`Cluster::start`] runs `initdb` and `postgres` (found through
//! `PG_BINDIR`, `pg_config` or Debian's `/usr/lib/postgresql/*/bin`) in a
//! temporary directory: SCRAM passwords over TCP on `127.0.0.1`, TLS with a
//! certificate signed by a generated [`TestCa`], a free port, `fsync` off.
//! When the test process runs as root, the server runs as `nobody`.
//!
//! Then the test does to it what the platform does to a database:
//! - [`Cluster::rotate_password`] — `ALTER ROLE .. PASSWORD`,
//! - [`Cluster::terminate_backends`] — `pg_terminate_backend` (`57P01`),
//! - [`Cluster::replace_role`] — a new user name and password,
//! - [`Cluster::restart`], [`Cluster::stop`] / [`Cluster::start_again`],
//!   [`Cluster::crash_and_restart`],
//! - [`Cluster::start_standby`] and [`Cluster::promote`] — a failover.
//!
//! Between a client and a server (or PgBouncer), a [`FaultProxy`] adds
//! latency, partitions (blackhole), resets, or cuts a connection at a chosen
//! protocol message — e.g. drops the `COMMIT`, or lets it through and loses
//! its answer. [`Cluster::start_pgbouncer`] puts a real [`PgBouncer`] in
//! front of a cluster, in transaction mode with `auth_query`, as Heroku's
//! connection pooling does.
//!
//! Every server stops when its [`Cluster`] drops, and — through a watchdog
//! that owns the postmaster — when the test process exits without dropping
//! it, so [`Cluster::shared`] leaves nothing behind either. The same holds
//! for a [`PgBouncer`].
//!
//! ```no_run
//! use pgrotate_testing::{Cluster, FixtureError};
//! use tokio_postgres::NoTls;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::start().await?;
//! let role = cluster.create_role("app").await?;
//! let (client, connection) = tokio_postgres::connect(&cluster.url(&role), NoTls).await?;
//! tokio::spawn(connection);
//! client.simple_query("SELECT 1").await?;
//!
//! let rotated = cluster.rotate_password(&role).await?;
//! let refused = tokio_postgres::connect(&cluster.url(&role), NoTls).await;
//! assert!(refused.is_err()); // 28P01: the old password is gone
//! tokio_postgres::connect(&cluster.url(&rotated), NoTls).await?;
//! # let _: Option<FixtureError> = None;
//! # Ok(())
//! # }
//! ```

mod bin;
mod certs;
mod cluster;
mod conf;
mod error;
mod pgbouncer;
mod process;
mod proxy;
mod role;
mod user;

pub use bin::{find_bindir, find_bindir_in};
pub use certs::TestCa;
pub use cluster::{Cluster, ClusterBuilder};
pub use error::{ErrorKind, FixtureError};
pub use pgbouncer::{PgBouncer, PgBouncerOptions, PoolStats, find_pgbouncer};
pub use proxy::{
    Action, BlackholeMode, Direction, FaultProxy, FrontendMessage, ProxyConnection, ProxyEvents,
    RuleId, Times,
};
pub use role::TestRole;
