//! Shared helpers of the end-to-end tests: a URL file a test can rewrite
//! atomically, and a tracing capture to check for leaked secrets.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgrotate_testing::{Cluster, TestRole};

/// A test must never hang CI: every end-to-end test runs under this bound.
pub const TEST_BOUND: Duration = Duration::from_secs(120);

/// Runs `fut` under [`TEST_BOUND`].
pub async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, fut)
        .await
        .expect("the test did not finish within its bound")
}

/// Polls `cond` every 10 ms until it holds: for state only observable by
/// asking (a server's session count, a pool's size). Callers run under
/// [`bounded`].
pub async fn wait_until<F: AsyncFnMut() -> bool>(mut cond: F) {
    while !cond().await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `select 1` through `Pool::run`.
pub async fn select_one(pool: &pgrotate::Pool) -> Result<i64, pgrotate::Error> {
    pool.run(async |c| c.query_one("select 1::int8", &[]).await?.try_get(0))
        .await
}

/// The database the pool's connections are on, through `Pool::run`.
pub async fn current_database(pool: &pgrotate::Pool) -> Result<String, pgrotate::Error> {
    pool.run(async |c| {
        c.query_one("select current_database()::text", &[])
            .await?
            .try_get(0)
    })
    .await
}

/// Whether the server answering through `Pool::run` is in recovery (a
/// standby).
pub async fn in_recovery(pool: &pgrotate::Pool) -> Result<bool, pgrotate::Error> {
    pool.run(async |c| {
        c.query_one("select pg_is_in_recovery()", &[])
            .await?
            .try_get::<_, bool>(0)
    })
    .await
}

/// Right after a failover cut at `cut`: eight readers at once, each of
/// which must get an answer from the new primary (not in recovery), with
/// the pool on its second URL. Returns how long they took from `cut`.
pub async fn readers_after_failover(pool: &pgrotate::Pool, cut: Instant) -> Duration {
    let readers = futures::future::join_all((0..8).map(|_| in_recovery(pool))).await;
    let moved = cut.elapsed();
    for r in readers {
        assert!(
            !r.unwrap(),
            "every reader got an answer, from the new primary"
        );
    }
    assert_eq!(pool.status().generation, 2);
    moved
}

/// How many sessions of `role` `pg_stat_activity` shows where `condition`
/// (SQL over its columns) holds, e.g. `state like 'idle in transaction%'`.
pub async fn count_sessions(cluster: &Cluster, role: &str, condition: &str) -> i64 {
    cluster
        .superuser()
        .await
        .unwrap()
        .query_one(
            &format!("select count(*) from pg_stat_activity where usename = $1 and {condition}"),
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// Spawns a write that takes a while (`insert into t select 1 from
/// pg_sleep(0.3)` through `Pool::execute`) and returns once
/// `pg_stat_activity` shows `role`'s session running it: for a test that
/// ends the session under it.
pub async fn spawn_running_insert(
    pool: &pgrotate::Pool,
    cluster: &Cluster,
    role: &str,
) -> tokio::task::JoinHandle<Result<u64, pgrotate::Error>> {
    let write = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute("insert into t select 1 from pg_sleep(0.3)", &[])
                .await
        })
    };
    wait_until(async || {
        count_sessions(cluster, role, "state = 'active' and query like 'insert%'").await == 1
    })
    .await;
    write
}

/// SQL creating a deferred constraint trigger on `t` that makes the first
/// insert for which `when` holds (a condition on `new`) terminate its own
/// session at its commit, then run `and_then` (SQL, may be empty). A
/// deferred trigger runs inside the commit, before the commit record, so
/// that transaction commits nothing; later inserts commit normally (the
/// sequence counting the first is not rolled back).
pub fn terminate_once_at_commit(when: &str, and_then: &str) -> String {
    format!(
        "create sequence once;
         create function die_once() returns trigger language plpgsql as $$
         begin
             if ({when}) and nextval('once') = 1 then
                 perform pg_terminate_backend(pg_backend_pid());
                 {and_then}
             end if;
             return null;
         end $$;
         create constraint trigger die_at_commit after insert on t
             deferrable initially deferred for each row execute function die_once();"
    )
}

/// A statement that waits for the shared advisory lock `key` (held by the
/// test) and then says which backend ran it.
pub fn behind_lock(key: i64) -> String {
    format!("select pg_backend_pid() from (select pg_advisory_xact_lock_shared({key})) l")
}

/// Holds the exclusive advisory lock `key` (in the role's database: they
/// are per database) on a connection of its own, until released.
pub struct Lock {
    /// The lock's own connection (a test may run other SQL on it).
    pub client: pgrotate::Client,
    _pool: pgrotate::Pool,
    key: i64,
}

impl Lock {
    pub async fn take(cluster: &Cluster, role: &TestRole, key: i64) -> Lock {
        let pool = pgrotate::Pool::builder(pgrotate::source::Static::new(cluster.url(role)))
            .max_size(1)
            .build()
            .await
            .unwrap();
        let client = pool.get().await.unwrap();
        client
            .execute("select pg_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        Lock {
            client,
            _pool: pool,
            key,
        }
    }

    pub async fn release(self) {
        self.client
            .execute("select pg_advisory_unlock($1)", &[&self.key])
            .await
            .unwrap();
    }
}

/// Sessions of `role` waiting for a lock.
pub async fn lock_waiters(cluster: &Cluster, role: &TestRole) -> i64 {
    count_sessions(cluster, &role.name, "wait_event_type = 'Lock'").await
}

/// The backends of `role` waiting for a lock now.
pub async fn waiting_pids(cluster: &Cluster, role: &TestRole) -> Vec<i32> {
    cluster
        .superuser()
        .await
        .unwrap()
        .query(
            "select pid from pg_stat_activity where usename = $1 and wait_event_type = 'Lock'",
            &[&role.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How many of `pids` still have a backend (a wait for a count of lock
/// waiters can pass between two queued statements; a pid cannot).
pub async fn alive(cluster: &Cluster, pids: &[i32]) -> i64 {
    cluster
        .superuser()
        .await
        .unwrap()
        .query_one(
            "select count(*) from pg_stat_activity where pid = any($1)",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0)
}

/// Sessions of `role` left idle inside a transaction.
pub async fn idle_in_transaction(cluster: &Cluster, role: &str) -> i64 {
    count_sessions(cluster, role, "state like 'idle in transaction%'").await
}

/// A file holding `DATABASE_URL`, as a mounted secret would.
pub struct UrlFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl UrlFile {
    pub fn new(url: &str) -> UrlFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("database_url");
        let f = UrlFile { dir, path };
        f.set(url);
        f
    }

    /// Replaces the URL atomically (write a sibling, rename over), so a
    /// fetch never sees a half-written file.
    pub fn set(&self, url: &str) {
        let tmp = self.dir.path().join("database_url.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        writeln!(f, "{url}").unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    pub fn remove(&self) {
        std::fs::remove_file(&self.path).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn source(&self) -> pgrotate::source::File {
        pgrotate::source::File::new(&self.path)
    }
}

/// A role of its own on the shared server, and a URL file pointing at it.
pub async fn role_and_file(cluster: &Cluster, prefix: &str) -> (TestRole, UrlFile) {
    let role = cluster.create_role(prefix).await.unwrap();
    let file = UrlFile::new(&cluster.url(&role));
    (role, file)
}

/// A role of its own on `cluster`, a URL file pointing at it, and a pool
/// of at most `size` connections reading that file.
pub async fn role_file_and_pool(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
) -> (TestRole, UrlFile, pgrotate::Pool) {
    let (role, file) = role_and_file(cluster, prefix).await;
    let pool = pgrotate::Pool::builder(file.source())
        .max_size(size)
        .build()
        .await
        .unwrap();
    (role, file, pool)
}

/// A role of its own on `cluster`, a URL file pointing at it, and a pool
/// reading that file: at most `size` connections, pipelines `depth` deep,
/// with what `configure` sets on the builder besides (`|b| b` for nothing).
pub async fn pool_on_role(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
    depth: usize,
    configure: impl FnOnce(pgrotate::PoolBuilder) -> pgrotate::PoolBuilder,
) -> (TestRole, UrlFile, pgrotate::Pool) {
    let (role, file) = role_and_file(cluster, prefix).await;
    let pool = build_pool(
        configure(pgrotate::Pool::builder(file.source())),
        size,
        depth,
    )
    .await;
    (role, file, pool)
}

/// A pool reading `file` ([`build_pool`]) built on a runtime of its own
/// (one worker), so its tasks are counted alone
/// (`runtime.metrics().num_alive_tasks()`: the fixture's own clients
/// spawn and end tasks on the test's runtime). End the runtime with
/// `shutdown_background()`.
pub async fn pool_on_own_runtime(
    file: &UrlFile,
    size: usize,
    depth: usize,
) -> (tokio::runtime::Runtime, pgrotate::Pool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let builder = pgrotate::Pool::builder(file.source());
    let pool = runtime
        .spawn(build_pool(builder, size, depth))
        .await
        .unwrap();
    (runtime, pool)
}

/// `builder`'s pool of at most `size` connections, pipelines `depth` deep.
pub async fn build_pool(
    builder: pgrotate::PoolBuilder,
    size: usize,
    depth: usize,
) -> pgrotate::Pool {
    builder
        .max_size(size)
        .pipeline_depth(depth)
        .build()
        .await
        .unwrap()
}

/// The empty table `t (k int)` of the statement tests — no key: a write
/// applied twice shows as a count of 2.
pub async fn create_table(pool: &pgrotate::Pool) {
    pool.batch_execute("create table t (k int not null)")
        .await
        .unwrap();
}

/// [`pool_on_role`] with the empty table `t` ([`create_table`]).
pub async fn pool_with_table(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
    depth: usize,
    configure: impl FnOnce(pgrotate::PoolBuilder) -> pgrotate::PoolBuilder,
) -> (TestRole, UrlFile, pgrotate::Pool) {
    let (role, file, pool) = pool_on_role(cluster, prefix, size, depth, configure).await;
    create_table(&pool).await;
    (role, file, pool)
}

/// How many rows each key of `t` has.
pub async fn counts(pool: &pgrotate::Pool) -> std::collections::HashMap<i32, i64> {
    pool.query("select k, count(*) from t group by k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Tasks spawned together; [`Tasks::outcomes`] waits for them all.
pub struct Tasks<T>(Vec<tokio::task::JoinHandle<T>>);

/// Spawns `n` tasks, the `i`th running `task(i)`: writers and readers
/// under test, each returning what it saw.
pub fn spawn_tasks<T, F>(n: usize, task: impl FnMut(usize) -> F) -> Tasks<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    Tasks((0..n).map(task).map(tokio::spawn).collect())
}

impl<T> Tasks<T> {
    /// Each task's outcome, in the order they were spawned; a task's panic
    /// is the caller's.
    pub async fn outcomes(self) -> Vec<T> {
        let mut outcomes = Vec::with_capacity(self.0.len());
        for t in self.0 {
            outcomes.push(t.await.unwrap());
        }
        outcomes
    }
}

/// Everything every tracing event of this test process printed, at every
/// level, pgrotate's and its dependencies'.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once per test process.
pub fn capture_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

/// Random cuts through the fault proxy: each message `matches` selects is
/// cut with probability `2 × share`, half of them dropped before the server
/// sees it, half applied with the answer lost. Seeded: the same run twice.
pub fn random_cuts(
    proxy: &pgrotate_testing::FaultProxy,
    seed: u64,
    share: f64,
    matches: impl Fn(&pgrotate_testing::FrontendMessage<'_>) -> bool + Send + Sync + Clone + 'static,
) {
    use pgrotate_testing::{Action, Times};
    let rng = std::sync::Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    for action in [Action::DropAndCut, Action::ForwardThenCut] {
        let (rng, matches) = (rng.clone(), matches.clone());
        proxy.on_message(
            move |m| matches(m) && rng.lock().unwrap().f64() < share,
            action,
            Times::Always,
        );
    }
}

/// A local stand-in for the Heroku Platform API (tests/heroku_api.rs).
pub mod heroku_server;

/// A steady load of callers with error counts and recovery times.
pub mod load;

/// A TCP address on loopback that drops SYNs, as a host behind a
/// blackholed route does: a listener that never accepts, its one-slot
/// backlog filled. A connect to it hangs until its own timeout.
pub struct SynDropper {
    _listener: socket2::Socket,
    _filler: Vec<std::net::TcpStream>,
    pub port: u16,
}

impl SynDropper {
    pub fn start() -> SynDropper {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&addr.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut filler = Vec::new();
        // Fill the accept queue until a connect no longer completes.
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => filler.push(s),
                Err(_) => break,
            }
        }
        SynDropper {
            _listener: listener,
            _filler: filler,
            port: addr.port(),
        }
    }
}
