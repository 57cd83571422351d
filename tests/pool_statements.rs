//! Pool-level statements (`Pool::execute`, `Pool::query`, …) against a
//! real server: retried only when the failure proves the statement did not
//! run, so reads and writes survive a rotation with no error and no write
//! is ever applied twice. Every row is counted.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::{
    Tasks, bounded, count_sessions, counts, pool_with_table, role_and_file, spawn_running_insert,
    spawn_tasks, wait_until,
};
use futures::StreamExt;
use pgrotate::{ErrorKind, Pool, RetryPolicy, SslMode, source};
use pgrotate_testing::{Action, Cluster, FaultProxy, Times};

/// `builder`'s pool of `size` connections `depth` deep, with an empty
/// table `t (k int)`.
async fn with_table(builder: pgrotate::PoolBuilder, size: usize, depth: usize) -> Pool {
    let pool = common::build_pool(builder, size, depth).await;
    common::create_table(&pool).await;
    pool
}

/// Cuts the connection at the first `tag` message (`b'P'` Parse, `b'E'`
/// Execute) whose SQL `sql` selects, doing `action`, once.
fn cut_once(
    proxy: &FaultProxy,
    tag: u8,
    sql: impl Fn(&str) -> bool + Send + Sync + 'static,
    action: Action,
) {
    proxy.on_message(
        move |m| m.tag == tag && m.sql.is_some_and(&sql),
        action,
        Times::Once,
    );
}

/// What the callers of a load share: the pool, the next key to write, how
/// many calls succeeded, and whether to stop.
struct Load {
    pool: Pool,
    next: AtomicU32,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Load {
    fn new(pool: &Pool) -> Arc<Load> {
        Arc::new(Load {
            pool: pool.clone(),
            next: AtomicU32::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Spawns `n` callers, the `i`th calling `step(load, i)` over and over
    /// until it returns `None`; a caller's outcome is what its steps
    /// returned, in order.
    fn spawn<T, F, Fut>(self: &Arc<Load>, n: usize, step: F) -> Tasks<Vec<T>>
    where
        F: Fn(Arc<Load>, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
        T: Send + 'static,
    {
        spawn_tasks(n, |i| {
            let (load, step) = (self.clone(), step.clone());
            async move {
                let mut outcomes = Vec::new();
                while let Some(outcome) = step(load.clone(), i).await {
                    outcomes.push(outcome);
                }
                outcomes
            }
        })
    }

    /// A key no caller has written yet.
    fn next_key(&self) -> i32 {
        self.next.fetch_add(1, Ordering::SeqCst) as i32
    }

    /// Writes the row `k`.
    async fn insert(&self, k: i32) -> Result<u64, pgrotate::Error> {
        self.pool.execute("insert into t values ($1)", &[&k]).await
    }

    /// Waits until `n` more calls have succeeded than by now.
    async fn more_calls(&self, n: u64) {
        let before = self.done.load(Ordering::Relaxed);
        wait_until(async || self.done.load(Ordering::Relaxed) >= before + n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_survive_two_rotations_with_every_write_applied_once() {
    // Each statement on a connection of its own (pipelining off).
    rotations_under_load("stmtrot", 4, 1, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_and_writes_survive_two_rotations_with_every_write_applied_once() {
    // 32 callers on 2 connections: each connection the server terminates
    // has up to 8 statements in flight, every one retried or answered.
    // (Answers the server sent before a reset were once dropped at the
    // failed write that followed — about one run in five had callers told
    // "outcome unknown" about statements the server had answered.)
    rotations_under_load("piperot", 2, 8, 32).await;
}

/// `workers` callers (half writing, half reading) on a pool of `size`
/// connections `depth` deep, through two rotations: no caller sees an
/// error and every write is applied exactly once.
async fn rotations_under_load(prefix: &str, size: usize, depth: usize, workers: usize) {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file, pool) = pool_with_table(cluster, prefix, size, depth, |b| b).await;

        // A call's outcome: `Ok(Some(k))` it wrote `k`, `Ok(None)` it read,
        // `Err` its error.
        let load = Load::new(&pool);
        let tasks = load.spawn(workers, |load, w| async move {
            if load.stop.load(Ordering::Relaxed) {
                return None;
            }
            let r = if w % 2 == 0 {
                let k = load.next_key();
                load.insert(k).await.map(|_| Some(k))
            } else {
                load.pool
                    .query_one("select count(*) from t", &[])
                    .await
                    .map(|_| None)
            };
            if r.is_ok() {
                load.done.fetch_add(1, Ordering::Relaxed);
            }
            Some(r.map_err(|e| format!("{e:#}")))
        });
        let mut role = role;
        for _ in 0..2 {
            load.more_calls(200).await;
            let rotated = cluster.rotate_password(&role).await.unwrap();
            file.set(&cluster.url(&rotated));
            cluster.terminate_backends(&role.name).await.unwrap();
            role = rotated;
        }
        load.more_calls(200).await;
        load.stop.store(true, Ordering::Relaxed);

        let mut errors = Vec::new();
        let mut written = Vec::new();
        for call in tasks.outcomes().await.into_iter().flatten() {
            match call {
                Ok(Some(k)) => written.push(k),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        let present = counts(&pool).await;
        for k in &written {
            assert_eq!(present.get(k), Some(&1), "key {k} applied exactly once");
        }
        // Nothing applied that was not reported.
        assert_eq!(
            present.len(),
            written.len(),
            "rows present, writes reported"
        );
        assert_eq!(pool.status().generation, 3);
        eprintln!(
            "two rotations: {} calls, {} writes, {} retries",
            load.done.load(Ordering::Relaxed),
            written.len(),
            pool.status().retries
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_terminated_while_it_runs_is_retried_and_applied_once() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "stmtterm", 2, 8, |b| b).await;

        // Terminated while it runs: the server answers it with 57P01 and
        // rolls it back, so it is safe to run again.
        let write = spawn_running_insert(&pool, cluster, &role.name).await;
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);
        assert_eq!(write.await.unwrap().unwrap(), 1);
        assert_eq!(counts(&pool).await, HashMap::from([(1, 1)]));
        assert_eq!(pool.status().retries, 1);
    })
    .await;
}

async fn through_proxy(prefix: &str, size: usize, depth: usize) -> (FaultProxy, Pool) {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role(prefix).await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let policy = RetryPolicy::default()
        .attempts(20)
        .backoff(Duration::from_millis(1), Duration::from_millis(20));
    let builder = Pool::builder(source::Static::new(proxy.url(&role)))
        .sslmode(SslMode::Disable)
        .retry(policy);
    (proxy, with_table(builder, size, depth).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_never_sent_is_retried_and_one_whose_answer_was_lost_is_not() {
    bounded(async {
        let (proxy, pool) = through_proxy("stmtcut", 8, 8).await;

        // Cut before the server sees the statement's Parse: nothing ran.
        cut_once(
            &proxy,
            b'P',
            |s| s.contains("values (1)"),
            Action::DropAndCut,
        );
        assert_eq!(
            pool.execute("insert into t values (1)", &[]).await.unwrap(),
            1
        );
        assert_eq!(pool.status().retries, 1);

        // The server applies it and the answer is lost: it may have run, so
        // it is not run again.
        cut_once(
            &proxy,
            b'E',
            |s| s.contains("values (2)"),
            Action::ForwardThenCut,
        );
        let e = pool
            .execute("insert into t values (2)", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e:#}");
        assert!(e.is_outcome_unknown() && !e.is_retryable(), "{e:#}");
        assert_eq!(counts(&pool).await, HashMap::from([(1, 1), (2, 1)]));

        // The rows of a stream come with their connection, which goes back
        // once they are read.
        let mut rows = pool
            .query_raw("select k from t order by k", std::iter::empty::<i32>())
            .await
            .unwrap();
        let mut ks = Vec::new();
        while let Some(row) = rows.next().await {
            ks.push(row.unwrap().get::<_, i32>(0));
        }
        assert_eq!(ks, [1, 2]);
        drop(rows);
        wait_until(async || pool.status().available == pool.status().size).await;
        assert_eq!(proxy.events().matched, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_writes_under_random_cuts_are_never_applied_twice_or_lost_silently() {
    // Each statement on a connection of its own (pipelining off).
    writes_under_random_cuts("stmtchaos", 8, 1, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_writes_under_random_cuts_are_never_applied_twice_or_lost_silently() {
    // 32 writers on 2 connections: a cut hits up to 8 statements in flight.
    writes_under_random_cuts("pipechaos", 2, 8, 32).await;
}

/// 1,000 writes by `writers` callers on `size` connections `depth` deep,
/// under random cuts: every row counted.
async fn writes_under_random_cuts(prefix: &str, size: usize, depth: usize, writers: usize) {
    bounded(async {
        let (proxy, pool) = through_proxy(prefix, size, depth).await;
        // 4 % of the messages that prepare or run a write are cut: half
        // dropped, half applied with the answer lost.
        // The first write's prepare never reaches the server: retried (a
        // Parse is sent once per connection, so random cuts rarely hit one).
        cut_once(
            &proxy,
            b'P',
            |s| s.starts_with("insert into t"),
            Action::DropAndCut,
        );
        common::random_cuts(&proxy, 7, 0.02, |m| {
            m.sql.is_some_and(|s| s.starts_with("insert into t")) && matches!(m.tag, b'P' | b'E')
        });
        const N: i32 = 1000;
        let load = Load::new(&pool);
        let writers = load.spawn(writers, |load, _| async move {
            let k = load.next_key();
            if k >= N {
                return None;
            }
            let r = load.insert(k).await;
            Some((k, r.map_err(|e| e.kind())))
        });
        let outcome: HashMap<_, _> = writers.outcomes().await.into_iter().flatten().collect();
        proxy.clear_faults();
        let present = counts(&pool).await;
        let mut unknown = 0;
        for k in 0..N {
            match outcome[&k] {
                Ok(n) => {
                    assert_eq!(n, 1);
                    assert_eq!(present.get(&k), Some(&1), "key {k}: Ok but not applied exactly once");
                }
                Err(ErrorKind::OutcomeUnknown) => {
                    unknown += 1;
                    assert!(matches!(present.get(&k), None | Some(&1)), "key {k}: applied twice");
                }
                Err(kind) => assert!(!present.contains_key(&k), "key {k}: {kind:?} yet present"),
            }
        }
        let events = proxy.events();
        let cuts = events.dropped_and_cut + events.forwarded_and_cut;
        assert!(cuts > 20, "{events:?}");
        let retries = pool.status().retries;
        assert!(retries > 0, "statements never sent were retried");
        eprintln!(
            "1,000 pool-level writes: {cuts} cuts, {retries} retries, {unknown} OutcomeUnknown, {} other errors",
            outcome
                .values()
                .filter(|r| matches!(r, Err(k) if *k != ErrorKind::OutcomeUnknown))
                .count()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_stream_dropped_halfway_stops_its_statement_and_frees_its_slot() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "stmtdrop", 2, 8, |b| b).await;
        let mut rows = pool
            .query_raw(
                "select g, pg_sleep(0.001) from generate_series(1, 100000) g",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        for _ in 0..3 {
            rows.next().await.unwrap().unwrap();
        }
        drop(rows);
        wait_until(async || count_sessions(cluster, &role.name, "state = 'active'").await == 0)
            .await;
        assert_eq!(
            pool.query_one("select 1::int8", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_with_the_wrong_number_of_parameters_is_the_callers_error_and_not_retried() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool_with_table(cluster, "stmtbind", 2, 8, |b| b).await;
        let e = pool.query_typed("select $1::int8", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        assert!(e.is_callers_error() && !e.is_unavailable(), "{e:#}");
        assert_eq!(e.attempts(), None, "not retried: {e:#}");
        assert_eq!(pool.status().retries, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_full_for_the_whole_wait_timeout_fails_once_not_once_per_attempt() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "stmtfull").await;
        let _ = role;
        let pool = Pool::builder(file.source())
            .max_size(1)
            .wait_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        let held = pool.get().await.unwrap();
        let e = pool.query_one("select 1", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e:#}");
        assert_eq!(e.attempts(), None, "the wait timeout is the bound: {e:#}");
        let e = pool
            .run(async move |c| c.query_one("select 1", &[]).await)
            .await
            .unwrap_err();
        assert_eq!(e.attempts(), None, "{e:#}");
        assert_eq!(pool.status().retries, 0);
        drop(held);
    })
    .await;
}

/// A write whose implicit transaction is ended by `FATAL` 57P01 after its
/// `CommandComplete` and before it commits (the backend terminated at the
/// `Sync`): it did not commit, so it is retried and applied once — on a
/// connection of its own, and pipelined behind other callers' statements.
/// The terminate comes from a deferred trigger at the commit of the
/// implicit transaction, once (a sequence is not rolled back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_terminated_after_it_completed_and_before_it_committed_is_retried_once() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        for depth in [1, 8] {
            let prefix = format!("stmtsync{depth}");
            let (_role, _file, pool) = pool_with_table(cluster, &prefix, 1, depth, |b| b).await;
            pool.batch_execute(&common::terminate_once_at_commit("true", ""))
                .await
                .unwrap();
            let others = common::spawn_tasks(if depth > 1 { 6 } else { 0 }, |_| {
                let pool = pool.clone();
                async move { pool.query_one("select count(*) from pg_class", &[]).await }
            });
            let n = pool
                .execute("insert into t values (7)", &[])
                .await
                .unwrap_or_else(|e| panic!("depth {depth}: {e:#}"));
            assert_eq!(n, 1);
            for r in others.outcomes().await {
                r.unwrap_or_else(|e| panic!("depth {depth}: a caller beside it: {e:#}"));
            }
            assert_eq!(
                counts(&pool).await,
                HashMap::from([(7, 1)]),
                "depth {depth}"
            );
            assert!(pool.status().retries >= 1, "depth {depth}: retried");
            let terminated: i64 = pool
                .query_one("select last_value from once", &[])
                .await
                .unwrap()
                .get(0);
            assert!(
                terminated >= 2,
                "the trigger ran at the first commit and the retry's"
            );
        }
    })
    .await;
}
