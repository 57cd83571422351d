//! Throwaway real PostgreSQL servers for tests, with the rotation and
//! failover a managed database platform does to its users.
//!
//! [`Cluster::start`] runs `initdb` and `postgres` (found through
//! `PG_BINDIR`, `pg_config` or Debian's `/usr/lib/postgresql/*/bin`) in a
//! temporary directory: SCRAM passwords over TCP on `127.0.0.1`, TLS with a
//! certificate signed by a generated [`TestCa`], a free port, `fsync` off.
//! When the test process runs as root, the server runs as `nobody`. Or it
//! runs the same server in a Docker container (see
//! [below](#two-backends-local-processes-or-containers)).
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
//! # Two backends: local processes or containers
//!
//! Every [`Cluster`] runs on a [`Backend`], each with the same operations:
//!
//! - [`Backend::Process`]: `initdb` and `postgres` from the local
//!   installation, as described above.
//! - [`Backend::Container`] (feature `containers`, off by default so a build
//!   that needs only local processes never compiles testcontainers): a
//!   Docker container through testcontainers, its
//!   port 5432 published on `127.0.0.1` at a fixed host port (kept across
//!   `docker stop` / `docker start`), the fixture's CA and a server
//!   certificate for `localhost` and `127.0.0.1` copied in, on a private
//!   Docker network per cluster that its standbys join (they stream from
//!   the primary by its container name). Restarts are `docker stop` /
//!   `docker start`, a crash is `docker kill`; the fixture's superuser logs
//!   in over the server's Unix socket, its directory mounted on the host
//!   (over the published port with a password where the host cannot use
//!   it, as with Docker Desktop).
//!
//! The backend comes from the environment ([`Backend::from_env`]), once per
//! test process, unless a builder sets one ([`ClusterBuilder::backend`]):
//!
//! | variable | effect |
//! |---|---|
//! | `PGROTATE_TEST_BACKEND=process` | local processes |
//! | `PGROTATE_TEST_BACKEND=container` | containers (fails when Docker or the image is missing) |
//! | unset or `auto` | containers when a Docker engine answers and there is an image, else local processes |
//! | `PGROTATE_TEST_IMAGE=<name:tag>` | the image; default: the newest local `pgrotate-postgres:*` |
//!
//! `pgrotate-postgres:<major>-<hash>` is built from the host's Debian
//! PostgreSQL packages by `scripts/build-image.sh` in pgrotate's repository
//! (no registry needed; `bash scripts/test.sh` builds it and exports its tag).
//! Its entrypoint initialises a cluster from `POSTGRES_USER` /
//! `POSTGRES_PASSWORD` / `POSTGRES_DB`, enables TLS with the files it finds
//! in `/certs`, starts a streaming standby when `PRIMARY_HOST` is set, and
//! prints `PGROTATE READY` once the server accepts connections.
//!
//! **The official `postgres` image** (`PGROTATE_TEST_IMAGE=postgres:16`, on
//! a machine that can pull it) takes the same `POSTGRES_*` variables; what
//! differs is handled by the fixture: TLS and `pg_hba` come as command-line
//! settings (`-c ssl=on -c ssl_cert_file=... -c hba_file=...`), a small
//! shell entrypoint in front of `docker-entrypoint.sh` gives the server key
//! to the `postgres` user (mode 0600) and runs `pg_basebackup` for a
//! standby, and readiness is a successful login rather than a log line.
//! This path is untested in pgrotate's CI, which has no registry.
//!
//! **Network faults**: [`Cluster::disconnect_network`] /
//! [`Cluster::reconnect_network`] take the container off its network
//! (`docker network disconnect`) and back: a second way to cut a server off
//! besides a [`FaultProxy`]. Clients of [`Cluster::url`] (the published
//! port) see their connections closed and new ones refused; clients of
//! [`Cluster::network_url`] (the container's address on its network,
//! reachable from a Linux host) get no answer at all, as in a real
//! partition.
//!
//! # Cleanup
//!
//! Every server stops when its [`Cluster`] drops. With local processes, a
//! watchdog that owns the postmaster also stops it when the test process
//! exits without dropping it, so [`Cluster::shared`] leaves nothing behind
//! either; the same holds for a [`PgBouncer`]. Containers are removed with
//! their data volume on drop (and their network with its last container);
//! those never dropped (a `static` like [`Cluster::shared`]'s) are removed
//! by a reaper — a shell started with the first container, which runs
//! `docker rm -f -v` on the test process's containers (they carry its
//! labels), removes their networks and the host directory of their
//! certificates, logs and sockets once the process has exited, however it
//! exited (it needs the `docker` CLI). Should the reaper not get to run,
//! the first container of a later test process on the same host removes
//! what dead processes left.
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
//!
//! # Testing your own service
//!
//! A service's own test, on a container: the platform rotates the
//! password mid-test, and the service — here one function over a pgrotate
//! [`Pool`](https://docs.rs/pgrotate) reading its URL from a file, as from
//! a config var — keeps answering.
//!
//! ```no_run
//! use pgrotate::{Pool, source};
//! use pgrotate_testing::{Backend, Cluster};
//!
//! /// The service under test.
//! async fn visits(pool: &Pool) -> Result<i64, pgrotate::Error> {
//!     pool.run(async |c| c.query_one("select count(*) from visits", &[]).await?.try_get(0))
//!         .await
//! }
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn the_service_keeps_answering_through_a_rotation() -> Result<(), Box<dyn std::error::Error>> {
//!     let cluster = Cluster::builder().backend(Backend::Container).start().await?;
//!     let role = cluster.create_role("shop").await?;
//!     // Where the platform keeps DATABASE_URL.
//!     let dir = tempfile::tempdir()?;
//!     let url_file = dir.path().join("database_url");
//!     std::fs::write(&url_file, cluster.url(&role))?;
//!     let pool = Pool::builder(source::File::new(&url_file)).build().await?;
//!     pool.run(async |c| {
//!         c.batch_execute("create table visits (at timestamptz); insert into visits values (now())")
//!             .await
//!     })
//!     .await?;
//!     assert_eq!(visits(&pool).await?, 1);
//!
//!     // The rotation: a new password in the config var, the old sessions ended.
//!     let rotated = cluster.rotate_password(&role).await?;
//!     std::fs::write(&url_file, cluster.url(&rotated))?;
//!     cluster.terminate_backends(&role.name).await?;
//!
//!     assert_eq!(visits(&pool).await?, 1, "the service kept answering");
//!     Ok(())
//! }
//! # fn main() {}
//! ```

mod backend;
mod bin;
mod certs;
mod cluster;
mod conf;
#[cfg(feature = "containers")]
mod container;
#[cfg(not(feature = "containers"))]
mod containers_off;
#[cfg(feature = "containers")]
mod docker;
#[cfg(not(feature = "containers"))]
use containers_off::{container, docker};
mod error;
mod pgbouncer;
mod process;
mod proxy;
mod role;
mod spec;
mod user;
mod util;

pub use backend::{BACKEND_VAR, Backend, IMAGE_VAR};
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
