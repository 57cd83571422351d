//! Pipelined pool-level statements against a real server: many callers'
//! statements in flight together on one connection, each caller's fate its
//! own — a caller giving up, a drain, a `get` waiting for a connection.
//! (Rotations and random cuts under pipelined load: tests/pool_statements.rs.)

mod common;

use std::time::Duration;

use common::{Lock, Tasks, behind_lock, bounded, count_sessions, spawn_tasks, wait_until};
use pgrotate::Pool;
use pgrotate_testing::{Cluster, TestRole};

/// A pool of `size` connections and pipelines `depth` deep, on a role of
/// its own; a `get` waits up to 10 s.
async fn pool(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
    depth: usize,
) -> (TestRole, common::UrlFile, Pool) {
    common::pool_on_role(cluster, prefix, size, depth, |b| {
        b.wait_timeout(Duration::from_secs(10))
    })
    .await
}

/// Spawns `n` statements behind the lock `key`, each answering with its
/// backend's pid.
fn spawn_behind(pool: &Pool, key: i64, n: usize) -> Tasks<Result<i32, pgrotate::Error>> {
    spawn_tasks(n, |_| {
        let pool = pool.clone();
        async move {
            let row = pool.query_one(&behind_lock(key), &[]).await?;
            Ok(row.get(0))
        }
    })
}

/// The pids the statements answered with, in the order they were spawned;
/// a statement's error is the caller's panic.
async fn pids(tasks: Tasks<Result<i32, pgrotate::Error>>) -> Vec<i32> {
    tasks
        .outcomes()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// Asserts that one backend ran them all (`what` says which); returns its
/// pid.
fn one_backend(pids: &[i32], what: &str) -> i32 {
    assert!(pids.iter().all(|p| *p == pids[0]), "{what}: {pids:?}");
    pids[0]
}

/// The pid of the backend a pool-level statement runs on.
async fn backend_pid(pool: &Pool) -> i32 {
    pool.query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A pool (`size` connections, `depth` deep) on a role of its own, the
/// lock `key` held, and `n` statements started behind it: the first waits
/// for the lock on the server, the others are queued behind it on its
/// connection, or waiting for one.
struct Behind {
    cluster: &'static Cluster,
    role: TestRole,
    _file: common::UrlFile,
    pool: Pool,
    lock: Lock,
    tasks: Tasks<Result<i32, pgrotate::Error>>,
}

impl Behind {
    async fn start(prefix: &str, size: usize, depth: usize, key: i64, n: usize) -> Behind {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool(cluster, prefix, size, depth).await;
        let lock = Lock::take(cluster, &role, key).await;
        let tasks = spawn_behind(&pool, key, n);
        wait_until(async || common::lock_waiters(cluster, &role).await >= 1).await;
        Behind {
            cluster,
            role,
            _file,
            pool,
            lock,
            tasks,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_many_callers_are_in_flight_together_on_one_connection() {
    bounded(async {
        let b = Behind::start("pipeshare", 1, 8, 17_001, 8).await;
        // Eight statements under way on the pool's one connection: none of
        // the callers waits for a connection.
        wait_until(async || b.pool.status().available == 0).await;
        let s = b.pool.status();
        assert_eq!((s.size, s.waiting), (1, 0), "{s:?}");
        b.lock.release().await;
        one_backend(&pids(b.tasks).await, "one backend ran them all");
        // The connection went back once the last of them finished.
        wait_until(async || b.pool.status().available == 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depth_of_one_gives_each_statement_a_connection_of_its_own() {
    bounded(async {
        let b = Behind::start("pipeone", 1, 1, 17_002, 4).await;
        wait_until(async || b.pool.status().waiting == 3).await;
        b.lock.release().await;
        // Each of them is answered.
        pids(b.tasks).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_halfway_leaves_the_others_on_its_connection_unharmed() {
    bounded(async {
        let b = Behind::start("pipedrop", 1, 8, 17_003, 3).await;
        // A caller's statement goes out in the first poll of its future
        // (the statement is prepared on this connection already), queued
        // behind the others; then the caller gives up (its request
        // timeout, a closed HTTP connection).
        let sql = behind_lock(17_003);
        let mut quitter = Box::pin(b.pool.query_one(&sql, &[]));
        assert!(futures::poll!(&mut quitter).is_pending());
        let after = spawn_behind(&b.pool, 17_003, 3);
        drop(quitter);
        b.lock.release().await;
        let mut all = pids(b.tasks).await;
        all.extend(pids(after).await);
        let pid = one_backend(&all, "before and after the quitter");
        // The connection is still the pool's and still works.
        assert_eq!(backend_pid(&b.pool).await, pid);
        assert_eq!(b.pool.status().size, 1);
    })
    .await;
}

/// A statement whose caller gave up keeps its place on the connection
/// until its answer (the server runs it anyway); one that never gets an
/// answer does not keep the pool's tasks alive once the pool is closed.
///
/// The pool lives on a runtime of its own, so its tasks are counted alone
/// (the fixture's own clients spawn and end tasks on the test's runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_lets_go_of_a_given_up_statement_that_never_got_its_answer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = common::role_and_file(cluster, "pipeclose").await;
        let lock = Lock::take(cluster, &role, 17_009).await;
        // No attempt timeout (the default policy has none): only its
        // answer, its connection's end or the pool's close lets its place go.
        let (runtime, pool) = common::pool_on_own_runtime(&file, 1, 8).await;
        let call = runtime.spawn({
            let pool = pool.clone();
            async move { pool.query_one(&behind_lock(17_009), &[]).await }
        });
        wait_until(async || common::lock_waiters(cluster, &role).await == 1).await;
        // Its caller gives up (a request timeout, a closed HTTP connection).
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        let tasks = || runtime.metrics().num_alive_tasks();
        assert!(tasks() > 0, "the pool's own tasks run");
        pool.close();
        drop(pool);
        wait_until(async || tasks() == 0).await;
        lock.release().await;
        runtime.shutdown_background();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_a_shared_connection_once_its_statements_finish() {
    bounded(async {
        let b = Behind::start("pipedrain", 3, 8, 17_004, 2).await;
        wait_until(async || b.pool.status().available == 0 && b.pool.status().size == 2).await;
        b.pool.drain().await;
        // A statement after the drain does not join an old connection.
        let new = backend_pid(&b.pool).await;
        b.lock.release().await;
        let old = pids(b.tasks).await;
        assert!(!old.contains(&new), "after the drain: {old:?} then {new}");
        // The old connections close once their statements are done.
        for pid in old {
            let gone = format!("pid = {pid}");
            wait_until(async || count_sessions(b.cluster, &b.role.name, &gone).await == 0).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_does_not_wait_behind_a_slow_one_while_a_connection_is_spare() {
    bounded(async {
        let b = Behind::start("pipespare", 2, 8, 17_005, 1).await;
        // The slow one holds a connection; the pool has room for another.
        let fast = tokio::time::timeout(Duration::from_secs(10), backend_pid(&b.pool))
            .await
            .expect("a statement queued behind the slow one");
        b.lock.release().await;
        let slow = one_backend(&pids(b.tasks).await, "the slow one");
        assert_ne!(fast, slow);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_waiting_while_statements_keep_every_connection_busy_gets_one() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool(cluster, "pipeget", 1, 8).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = spawn_tasks(16, |_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pool.query_one("select 1", &[]).await?;
                    n += 1;
                }
                Ok::<u32, pgrotate::Error>(n)
            }
        });
        wait_until(async || pool.status().available == 0).await;
        // The one connection is shared by 16 callers without a pause; a
        // caller of get() still gets it (its wait timeout is 10 s).
        for _ in 0..3 {
            let client = pool.get().await.unwrap();
            client.simple_query("select 1").await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in load.outcomes().await {
            assert!(r.unwrap() > 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_on_a_connection_that_stops_answering_end_within_their_attempt_timeout() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("pipehang").await.unwrap();
        let proxy = pgrotate_testing::FaultProxy::start(cluster.addr())
            .await
            .unwrap();
        let policy = pgrotate::RetryPolicy::default()
            .attempts(3)
            .attempt_timeout(Some(Duration::from_millis(500)))
            .deadline(Duration::from_secs(3));
        let pool = Pool::builder(pgrotate::source::Static::new(proxy.url(&role)))
            .max_size(2)
            .pipeline_depth(8)
            .create_timeout(Duration::from_secs(1))
            .retry(policy)
            .build()
            .await
            .unwrap();
        pool.batch_execute("create table t (k int not null)")
            .await
            .unwrap();
        pool.execute("insert into t values ($1)", &[&-1i32])
            .await
            .unwrap();
        // The network stops forwarding (nothing is closed) with 16
        // statements in flight on the two connections.
        proxy.blackhole(true);
        let writers = spawn_tasks(16, |k| {
            let pool = pool.clone();
            async move {
                let k = k as i32;
                let started = std::time::Instant::now();
                let r = pool.execute("insert into t values ($1)", &[&k]).await;
                (k, r.map_err(|e| e.kind()), started.elapsed())
            }
        });
        let outcomes = writers.outcomes().await;
        proxy.clear_faults();
        let rows = pool
            .query("select k, count(*) from t group by k", &[])
            .await
            .unwrap();
        let present: std::collections::HashMap<i32, i64> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (k, r, took) in outcomes {
            // Each caller is answered within its policy's deadline (3 s),
            // give or take the last attempt's timeout.
            assert!(took < Duration::from_secs(4), "key {k} took {took:?}");
            match r {
                Ok(1) => assert_eq!(present.get(&k), Some(&1), "key {k}"),
                Err(pgrotate::ErrorKind::OutcomeUnknown) => {
                    assert!(matches!(present.get(&k), None | Some(&1)), "key {k} twice")
                }
                other => assert!(!present.contains_key(&k), "key {k}: {other:?} yet present"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_or_set_sent_as_a_pool_level_statement_never_reaches_other_callers() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool(cluster, "pipebegin", 1, 8).await;
        pool.batch_execute("create table t (k int not null)")
            .await
            .unwrap();
        // Refused before they are sent: a block, and a setting every other
        // caller on the connection would see.
        let e = pool.execute("BEGIN", &[]).await.unwrap_err();
        assert_eq!(e.kind(), pgrotate::ErrorKind::Query, "{e:#}");
        let e = pool
            .execute("SET application_name = 'leaked'", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), pgrotate::ErrorKind::Query, "{e:#}");
        let name: String = pool
            .query_one("show application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(name, "leaked");
        // Disguised, it gets through, and leaves a block open: not a
        // success, and the connection is closed (rolled back).
        let e = pool
            .execute("start /* sneaky */ transaction", &[])
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown(), "{e:#}");
        // Among writes sharing the one connection, the writes that run
        // inside its block are never reported done.
        let writes = spawn_tasks(33, |i| {
            let pool = pool.clone();
            async move {
                let k = i as i32;
                let r = if i == 16 {
                    pool.execute("start /* sneaky */ transaction", &[]).await
                } else {
                    pool.execute("insert into t values ($1)", &[&k]).await
                };
                (k, r)
            }
        });
        let outcomes = writes.outcomes().await;
        let rows = pool
            .query("select k, count(*) from t group by k", &[])
            .await
            .unwrap();
        let present: std::collections::HashMap<i32, i64> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (k, r) in outcomes.into_iter().filter(|(k, _)| *k != 16) {
            match r {
                Ok(n) => assert_eq!((n, present.get(&k)), (1, Some(&1)), "key {k}"),
                Err(e) => {
                    assert!(e.is_outcome_unknown(), "key {k}: {e:#}");
                    assert!(matches!(present.get(&k), None | Some(&1)), "key {k}");
                }
            }
        }
        // The pool goes on.
        assert_eq!(
            pool.execute("insert into t values (99)", &[])
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

/// `COPY … FROM STDIN` (or `TO STDOUT`) needs the connection to itself for
/// its data: as a pool-level statement it would take over the shared
/// connection (copy-in mode swallows the next callers' messages). It is
/// refused before it is sent, pipelined or not, and the statements around
/// it are unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sent_as_a_pool_level_statement_is_refused_and_harms_no_other_caller() {
    bounded(async {
        for depth in [16, 1] {
            let prefix = format!("pipecopy{depth}");
            let b = Behind::start(&prefix, 1, depth, 17_007, 2).await;
            // On the lock's own connection: the pool's one is busy.
            b.lock
                .client
                .batch_execute("create table t (k int not null)")
                .await
                .unwrap();
            let copies = spawn_tasks(2, |i| {
                let pool = b.pool.clone();
                async move {
                    let sql = ["copy t from stdin", "COPY t TO STDOUT"][i];
                    pool.execute(sql, &[]).await
                }
            });
            let writes = spawn_tasks(4, |i| {
                let pool = b.pool.clone();
                async move {
                    pool.execute("insert into t values ($1)", &[&(i as i32)])
                        .await
                }
            });
            b.lock.release().await;
            pids(b.tasks).await;
            for r in copies.outcomes().await {
                let e = r.expect_err("a COPY through a pool-level statement");
                assert_eq!(e.kind(), pgrotate::ErrorKind::Query, "depth {depth}: {e:#}");
                assert!(format!("{e:#}").contains("COPY"), "depth {depth}: {e:#}");
            }
            for r in writes.outcomes().await {
                assert_eq!(r.unwrap(), 1, "depth {depth}");
            }
            let n: i64 = b
                .pool
                .query_one("select count(*) from t", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 4, "depth {depth}: every write once");
        }
    })
    .await;
}

/// A value of the test's enum type `mood`, sent and read as its label.
#[derive(Debug, PartialEq)]
struct Mood(String);

impl tokio_postgres::types::ToSql for Mood {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "mood"
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Mood {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Mood, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Mood(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "mood"
    }
}

/// A custom type's lookups (tokio-postgres asks the server what an unknown
/// type OID is, on the same connection, while preparing) happen while other
/// callers' statements are in flight on it: every caller gets its own
/// answer, on a fresh connection and on one the server replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_with_a_custom_enum_type_pipeline_with_their_type_lookups() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool(cluster, "pipeenum", 1, 16).await;
        pool.batch_execute(
            "create type mood as enum ('sad', 'ok', 'happy');
             create table m (k int primary key, mood mood not null)",
        )
        .await
        .unwrap();
        const MOODS: [&str; 3] = ["sad", "ok", "happy"];
        for round in 0..2 {
            if round == 1 {
                // A new connection has to look the type up again.
                cluster.terminate_backends(&role.name).await.unwrap();
            }
            let callers = spawn_tasks(32, |i| {
                let pool = pool.clone();
                async move {
                    let k = (round * 100 + i) as i32;
                    let mood = Mood(MOODS[i % 3].to_owned());
                    pool.execute("insert into m values ($1, $2)", &[&k, &mood])
                        .await?;
                    let back: Mood = pool
                        .query_one("select mood from m where k = $1", &[&k])
                        .await?
                        .get(0);
                    let same: bool = pool
                        .query_one("select $1::mood = $2::text::mood", &[&back, &MOODS[i % 3]])
                        .await?
                        .get(0);
                    Ok::<_, pgrotate::Error>((mood == back, same))
                }
            });
            for r in callers.outcomes().await {
                assert_eq!(r.unwrap(), (true, true), "round {round}");
            }
        }
        let n: i64 = pool
            .query_one("select count(*) from m", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 64);
    })
    .await;
}
