//! A hostile user's attacks on how the pool stops work left on a
//! connection it closes (README, "Callers that give up"): a `get()`
//! client dropped with statements pipelined on it, `run` and
//! `transaction` futures dropped mid-work with rows locked, attempt
//! timeouts on writes that complete right around the bound, a cancel
//! storm under random cuts, the pool closed or dropped while stops are
//! under way. What a user would notice: sessions left waiting for a lock,
//! locks not released, a write reported as not run when it ran (or run
//! twice), a call that hangs, a task left running, a panic, a password in
//! an error.
//!
//! Everything goes through the fault proxy, which passes the pool's close
//! on to the server as a FIN (a backend notices it only when it next
//! writes), as a container's published port or any TCP relay does.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{
    Lock, UrlFile, alive, behind_lock, bounded, count_sessions, lock_waiters, wait_until,
    waiting_pids,
};
use pgrotate::{ErrorKind, Pool, RetryPolicy, SslMode};
use pgrotate_testing::{Cluster, FaultProxy, TestRole};

/// A role of its own, a URL file pointing at it through a fresh fault
/// proxy, and a pool of `size` connections `depth` deep reading that file
/// (TLS unless `configure` says otherwise). Keep the file and the proxy.
async fn proxied_pool(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
    depth: usize,
    configure: impl FnOnce(pgrotate::PoolBuilder) -> pgrotate::PoolBuilder,
) -> (TestRole, UrlFile, FaultProxy, Pool) {
    let (role, file) = common::role_and_file(cluster, prefix).await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    file.set(&proxy.url(&role));
    let pool = common::build_pool(configure(Pool::builder(file.source())), size, depth).await;
    (role, file, proxy, pool)
}

/// Waits up to `within` for `cond`; whether it held.
async fn within<F: AsyncFnMut() -> bool>(within: Duration, cond: F) -> bool {
    tokio::time::timeout(within, wait_until(cond)).await.is_ok()
}

/// No error may show the role's password, in any of its forms.
fn assert_no_secret(e: &pgrotate::Error, password: &str) {
    for shown in [format!("{e}"), format!("{e:#}"), format!("{e:?}")] {
        assert!(
            !shown.contains(password),
            "an error shows the password: {shown}"
        );
    }
}

/// Puts `n` statements behind the lock `key` on a `get()` client, joined
/// the way tokio-postgres pipelines them, and drops the client (and the
/// futures) once the server shows the first one waiting for the lock.
/// Returns that backend's pid.
async fn drop_a_client_with_pipelined_statements(
    pool: &Pool,
    cluster: &Cluster,
    role: &TestRole,
    key: i64,
    n: usize,
) -> Vec<i32> {
    let client = pool.get().await.unwrap();
    let stmt = client.prepare(&behind_lock(key)).await.unwrap();
    {
        let mut calls = Box::pin(futures::future::join_all(
            (0..n).map(|_| client.query_one(&stmt, &[])),
        ));
        tokio::select! {
            _ = &mut calls => panic!("answered while the lock is held"),
            _ = wait_until(async || lock_waiters(cluster, role).await == 1) => {}
        }
    }
    let pids = waiting_pids(cluster, role).await;
    assert_eq!(pids.len(), 1);
    drop(stmt);
    drop(client);
    pids
}

/// A `get()` client dropped with 5 statements pipelined on it behind a
/// lock, then the next checkout: it is answered promptly (a fresh
/// connection, not one stuck behind the lock), and within a few seconds
/// no session of the role waits for the lock any more — while the lock is
/// still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_get_client_with_pipelined_statements_leaves_no_lock_waiter_after_the_next_checkout()
 {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) = proxied_pool(cluster, "stget", 1, 4, |b| b).await;
        let lock = Lock::take(cluster, &role, 19_001).await;
        let pids = drop_a_client_with_pipelined_statements(&pool, cluster, &role, 19_001, 5).await;
        let started = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(10), pool.get()).await;
        let got_in = started.elapsed();
        let client = next
            .expect("the next checkout got no connection within 10 s")
            .unwrap();
        let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        drop(client);
        let left = within(Duration::from_secs(10), async || {
            alive(cluster, &pids).await == 0
        })
        .await;
        let cleared_in = started.elapsed();
        let waiting = alive(cluster, &pids).await;
        lock.release().await;
        eprintln!(
            "next checkout in {got_in:?}; its backend gone after {cleared_in:?} ({waiting} left)"
        );
        assert!(
            left,
            "{waiting} backend(s) of the dropped statements still alive 10 s after the next checkout (waiting for the lock)"
        );
    })
    .await;
}

/// The same dropped `get()` client, and then nobody uses the pool: are
/// its statements stopped all the same, or do they keep a session waiting
/// for the lock until somebody checks a connection out?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_get_client_with_pipelined_statements_is_stopped_without_a_next_checkout() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) = proxied_pool(cluster, "stidle", 1, 4, |b| b).await;
        let lock = Lock::take(cluster, &role, 19_002).await;
        let pids = drop_a_client_with_pipelined_statements(&pool, cluster, &role, 19_002, 5).await;
        let started = Instant::now();
        let left = within(Duration::from_secs(10), async || {
            alive(cluster, &pids).await == 0
        })
        .await;
        let waiting = alive(cluster, &pids).await;
        let status = pool.status();
        pool.close();
        let after_close = within(Duration::from_secs(10), async || {
            alive(cluster, &pids).await == 0
        })
        .await;
        lock.release().await;
        eprintln!(
            "no checkout: {waiting} backend(s) left after {:?} (status {status:?}); after close: \
             cleared {after_close}",
            started.elapsed()
        );
        assert!(after_close, "close() left the backend waiting for the lock");
        assert!(
            left,
            "{waiting} backend(s) of the dropped statements still alive 10 s after the client was dropped (waiting for the lock)"
        );
    })
    .await;
}

/// A deep pipeline: `n` statements behind a lock on one `get()` client,
/// dropped; the next checkout. The stop cancels once per unanswered
/// request, one after another, within its bound (5 s and 25 ms per
/// request): are all `n` stopped, or does the bound pass with statements
/// still queued on the server (which runs them one after another, each
/// waiting for the lock)?
async fn deep_pipeline_dropped(prefix: &str, key: i64, n: usize) {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) = proxied_pool(cluster, prefix, 1, 4, |b| b).await;
        let lock = Lock::take(cluster, &role, key).await;
        let pids = drop_a_client_with_pipelined_statements(&pool, cluster, &role, key, n).await;
        let started = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(10), pool.get())
            .await
            .expect("the next checkout got no connection within 10 s");
        drop(next.unwrap());
        let left = within(Duration::from_secs(15), async || {
            alive(cluster, &pids).await == 0
        })
        .await;
        let took = started.elapsed();
        let waiting = alive(cluster, &pids).await;
        let queued = lock_waiters(cluster, &role).await;
        lock.release().await;
        eprintln!(
            "{n} pipelined: the backend gone after {took:?} ({waiting} left, {queued} waiting \
             for the lock)"
        );
        assert!(
            left,
            "{waiting} backend(s) of the dropped statements still alive 15 s after the next \
             checkout ({queued} waiting for the lock)"
        );
    })
    .await;
}

/// 300 statements: stopped in ~4 s here (the bound: 12.5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_get_client_with_300_pipelined_statements_leaves_no_lock_waiter() {
    deep_pipeline_dropped("stdeep", 19_003, 300).await;
}

/// 128 pool-level statements (a whole connection's depth) given up behind
/// a lock, their attempt timeout 2 s: once it passes, the connection is
/// stopped and no session waits for the lock within a few seconds more,
/// with no other caller needed to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_depth_of_given_up_statements_is_stopped_after_their_attempt_timeout() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let policy = RetryPolicy::default().attempt_timeout(Some(Duration::from_secs(2)));
        let (role, _file, _proxy, pool) =
            proxied_pool(cluster, "stdepth", 1, 128, |b| b.retry(policy)).await;
        let lock = Lock::take(cluster, &role, 19_004).await;
        let sql = behind_lock(19_004);
        let head = tokio::spawn({
            let (pool, sql) = (pool.clone(), sql.clone());
            async move { pool.query_one(&sql, &[]).await.map(drop) }
        });
        wait_until(async || lock_waiters(cluster, &role).await == 1).await;
        let pids = waiting_pids(cluster, &role).await;
        head.abort();
        assert!(head.await.unwrap_err().is_cancelled());
        for _ in 1..128 {
            let mut call = Box::pin(pool.query_one(&sql, &[]));
            assert!(futures::poll!(&mut call).is_pending());
        }
        let started = Instant::now();
        let left = within(Duration::from_secs(15), async || {
            alive(cluster, &pids).await == 0
        })
        .await;
        let took = started.elapsed();
        let waiting = alive(cluster, &pids).await;
        let r = tokio::time::timeout(Duration::from_secs(10), pool.query_one("select 1", &[]))
            .await
            .expect("no answer within 10 s after the stop")
            .map(|row| row.get::<_, i32>(0));
        lock.release().await;
        eprintln!("128 given up: the backend gone after {took:?} ({waiting} left); then {r:?}");
        assert!(
            left,
            "{waiting} backend(s) of the given-up statements still alive 15 s after they were given up (waiting for the lock)"
        );
        assert_eq!(r.map_err(|e| format!("{e:#}")), Ok(1));
    })
    .await;
}

/// How a dropped call held its rows.
#[derive(Debug, Clone, Copy)]
enum Holder {
    /// `run`, `BEGIN; select … for update`, then a long statement.
    RunMidStatement,
    /// `transaction`, `select … for update`, then a long statement.
    TransactionMidStatement,
    /// `transaction`, `select … for update`, then waiting on the client
    /// side (idle in transaction, nothing in flight).
    TransactionIdle,
}

/// A `run` or `transaction` future dropped mid-transaction with every row
/// of `t` locked (mid-statement, or idle in transaction): another session
/// takes the same row locks within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_transaction_releases_its_row_locks_promptly() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) = proxied_pool(cluster, "strows", 2, 4, |b| b).await;
        pool.batch_execute(
            "create table t (k int not null); insert into t select generate_series(1, 10)",
        )
        .await
        .unwrap();
        // Another session, straight to the server.
        let other = Pool::builder(pgrotate::source::Static::new(cluster.url(&role)))
            .max_size(1)
            .build()
            .await
            .unwrap();
        let mut report = Vec::new();
        for holder in [
            Holder::RunMidStatement,
            Holder::TransactionMidStatement,
            Holder::TransactionIdle,
        ] {
            let task = tokio::spawn({
                let pool = pool.clone();
                async move {
                    match holder {
                        Holder::RunMidStatement => pool
                            .run(async move |c| {
                                c.batch_execute("begin; select k from t for update").await?;
                                c.query("select pg_sleep(60)", &[]).await?;
                                Ok::<_, tokio_postgres::Error>(())
                            })
                            .await
                            .map_err(|e| format!("{e:#}")),
                        Holder::TransactionMidStatement => pool
                            .transaction(async move |tx| {
                                tx.query("select k from t for update", &[]).await?;
                                tx.query("select pg_sleep(60)", &[]).await?;
                                Ok::<_, tokio_postgres::Error>(())
                            })
                            .await
                            .map_err(|e| format!("{e:#}")),
                        Holder::TransactionIdle => pool
                            .transaction(async move |tx| {
                                tx.query("select k from t for update", &[]).await?;
                                std::future::pending::<()>().await;
                                Ok::<_, tokio_postgres::Error>(())
                            })
                            .await
                            .map_err(|e| format!("{e:#}")),
                    }
                }
            });
            let holding = match holder {
                Holder::TransactionIdle => "state like 'idle in transaction%'",
                _ => "state = 'active' and query like '%pg_sleep(60)%'",
            };
            wait_until(async || count_sessions(cluster, &role.name, holding).await == 1).await;
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            let started = Instant::now();
            let taken = other
                .transaction(async move |tx| {
                    tx.batch_execute("set local lock_timeout = '10s'").await?;
                    Ok::<_, tokio_postgres::Error>(
                        tx.query("select k from t for update", &[]).await?.len(),
                    )
                })
                .await;
            let took = started.elapsed();
            report.push(format!("{holder:?}: {taken:?} after {took:?}"));
            if let Err(e) = &taken {
                assert_no_secret(e, &role.password);
            }
            assert_eq!(
                taken.as_ref().map_err(|e| format!("{e:#}")),
                Ok(&10),
                "{holder:?}: the rows were not released within the lock timeout of 10 s"
            );
            assert!(
                took < Duration::from_secs(8),
                "{holder:?}: the rows were released only after {took:?}"
            );
        }
        eprintln!("row locks after a dropped call: {report:?}");
        // Nothing of the dropped calls is left on the server.
        assert!(
            within(Duration::from_secs(10), async || {
                count_sessions(cluster, &role.name, "state <> 'idle'").await == 0
            })
            .await,
            "sessions of the role still busy"
        );
    })
    .await;
}

/// What a write call came to, and what the table then holds for it.
fn check_honest(what: &str, r: &Result<u64, ErrorKind>, present: i64) {
    match r {
        Ok(_) => assert_eq!(present, 1, "{what}: Ok but present {present} times"),
        Err(ErrorKind::OutcomeUnknown | ErrorKind::CommitOutcomeUnknown) => assert!(
            present <= 1,
            "{what}: outcome unknown but present {present} times"
        ),
        Err(kind) => assert_eq!(
            present, 0,
            "{what}: {kind:?} (so it did not run) yet present {present} times"
        ),
    }
}

/// Writes that complete right around their attempt timeout (500 ms;
/// `pg_sleep` from 0.46 to 0.535 s, then the insert; 3 attempts): pipelined
/// `execute`, simple-protocol `batch_execute` and `transaction`. Each is
/// either Ok and in the table once, or an unknown outcome (in it at most
/// once), or another error and not in the table: no claim that it did not
/// run when it did, and never run twice. Every call returns within its
/// policy's deadline (10 s) and a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_completing_around_their_attempt_timeout_are_reported_honestly() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let policy = RetryPolicy::default()
            .attempt_timeout(Some(Duration::from_millis(500)))
            .attempts(3)
            .deadline(Duration::from_secs(10));
        let (role, _file, _proxy, pool) =
            proxied_pool(cluster, "sthonest", 2, 8, |b| b.retry(policy)).await;
        common::create_table(&pool).await;
        let mut outcomes: HashMap<i32, (String, Result<u64, ErrorKind>)> = HashMap::new();
        let mut worst = Duration::ZERO;
        for i in 0..16 {
            let pause = 0.46 + f64::from(i) * 0.005;
            for (n, way) in ["execute", "batch_execute", "transaction"]
                .into_iter()
                .enumerate()
            {
                let k = i * 3 + n as i32;
                let started = Instant::now();
                let r = match way {
                    "execute" => {
                        pool.execute(
                            "insert into t select $1::int4 from pg_sleep($2)",
                            &[&k, &pause],
                        )
                        .await
                    }
                    "batch_execute" => pool
                        .batch_execute(&format!("insert into t select {k} from pg_sleep({pause})"))
                        .await
                        .map(|()| 1),
                    _ => {
                        pool.transaction(async move |tx| {
                            tx.execute(
                                "insert into t select $1::int4 from pg_sleep($2)",
                                &[&k, &pause],
                            )
                            .await
                        })
                        .await
                    }
                };
                worst = worst.max(started.elapsed());
                if let Err(e) = &r {
                    assert_no_secret(e, &role.password);
                }
                outcomes.insert(k, (format!("{way} {pause:.3}s"), r.map_err(|e| e.kind())));
            }
        }
        let present = common::counts(&pool).await;
        let mut tally: HashMap<String, usize> = HashMap::new();
        for (k, (what, r)) in &outcomes {
            let n = present.get(k).copied().unwrap_or(0);
            *tally
                .entry(format!(
                    "{} {:?} present={n}",
                    what.split(' ').next().unwrap(),
                    r.map(|_| ())
                ))
                .or_default() += 1;
        }
        let mut tally: Vec<_> = tally.into_iter().collect();
        tally.sort();
        eprintln!("worst call {worst:?}; outcomes: {tally:?}");
        for (k, (what, r)) in &outcomes {
            check_honest(
                &format!("key {k} ({what})"),
                r,
                present.get(k).copied().unwrap_or(0),
            );
        }
        assert!(worst < Duration::from_secs(15), "a call took {worst:?}");
    })
    .await;
}

/// A cancel storm under random cuts: 16 writers on 2 connections 8 deep
/// (plaintext, through the proxy, 2 % of the inserts' Executes cut), the
/// attempt timeout 300 ms, one insert in four sleeping 0.25–0.45 s
/// (around the bound: the pool closes and cancels under the others on the
/// connection), another one in four given up by its caller after 0–20 ms. Every insert
/// reported Ok is in the table once; an unknown outcome at most once; any
/// other error not at all; a given-up one at most once. Every call returns
/// within its deadline (10 s) and a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_storm_under_random_cuts_counts_every_insert_honestly() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let policy = RetryPolicy::default()
            .attempt_timeout(Some(Duration::from_millis(300)))
            .attempts(10)
            .deadline(Duration::from_secs(10))
            .backoff(Duration::from_millis(1), Duration::from_millis(20));
        let (role, _file, proxy, pool) = proxied_pool(cluster, "ststorm", 2, 8, |b| {
            b.sslmode(SslMode::Disable).retry(policy)
        })
        .await;
        common::create_table(&pool).await;
        common::random_cuts(&proxy, 11, 0.01, |m| {
            m.tag == b'E' && m.sql.is_some_and(|s| s.starts_with("insert into t"))
        });
        const N: i32 = 400;
        let next = Arc::new(AtomicU64::new(0));
        let secrets = Arc::new(Mutex::new(Vec::<String>::new()));
        let writers = common::spawn_tasks(16, |w| {
            let (pool, next, secrets) = (pool.clone(), next.clone(), secrets.clone());
            let password = role.password.clone();
            async move {
                let mut rng = fastrand::Rng::with_seed(w as u64 + 100);
                let mut seen = Vec::new();
                let mut worst = Duration::ZERO;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as i32;
                    if k >= N {
                        break;
                    }
                    let dice = rng.u8(..4);
                    let pause = if dice == 0 {
                        0.25 + rng.f64() * 0.2
                    } else {
                        rng.f64() * 0.005
                    };
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&k, &pause];
                    let call =
                        pool.execute("insert into t select $1::int4 from pg_sleep($2)", &params);
                    let started = Instant::now();
                    let r = if dice == 1 {
                        let limit = Duration::from_millis(rng.u64(0..20));
                        tokio::time::timeout(limit, call).await.ok()
                    } else {
                        Some(call.await)
                    };
                    worst = worst.max(started.elapsed());
                    if let Some(Err(e)) = &r {
                        for shown in [format!("{e}"), format!("{e:#}"), format!("{e:?}")] {
                            if shown.contains(&password) {
                                secrets.lock().unwrap().push(shown);
                            }
                        }
                    }
                    seen.push((k, r.map(|r| r.map_err(|e| e.kind()))));
                }
                (seen, worst)
            }
        });
        let mut outcomes = Vec::new();
        let mut worst = Duration::ZERO;
        for (seen, w) in writers.outcomes().await {
            outcomes.extend(seen);
            worst = worst.max(w);
        }
        proxy.clear_faults();
        // Given-up statements may still be finishing: wait for the role's
        // sessions to go quiet before counting.
        assert!(
            within(Duration::from_secs(15), async || {
                count_sessions(
                    cluster,
                    &role.name,
                    "state = 'active' and query like 'insert%'",
                )
                .await
                    == 0
            })
            .await,
            "inserts still running 15 s after the load"
        );
        let present = common::counts(&pool).await;
        let mut tally: HashMap<String, usize> = HashMap::new();
        for (k, r) in &outcomes {
            let n = present.get(k).copied().unwrap_or(0);
            let label = match r {
                None => format!("given up, present={n}"),
                Some(r) => format!("{:?} present={n}", r.map(|_| ())),
            };
            *tally.entry(label).or_default() += 1;
        }
        let mut tally: Vec<_> = tally.into_iter().collect();
        tally.sort();
        let events = proxy.events();
        eprintln!(
            "{} inserts, worst call {worst:?}, {} retries, cuts {}+{}: {tally:?}",
            outcomes.len(),
            pool.status().retries,
            events.dropped_and_cut,
            events.forwarded_and_cut
        );
        assert_eq!(outcomes.len(), N as usize);
        for (k, r) in &outcomes {
            let n = present.get(k).copied().unwrap_or(0);
            match r {
                None => assert!(n <= 1, "key {k}: given up, present {n} times"),
                Some(r) => check_honest(&format!("key {k}"), r, n),
            }
        }
        assert!(worst < Duration::from_secs(15), "a call took {worst:?}");
        let leaked = secrets.lock().unwrap().clone();
        assert!(leaked.is_empty(), "errors showing the password: {leaked:?}");
    })
    .await;
}

/// Panics on threads whose name starts with `hostile-stop-`, counted by a
/// hook installed once (the default hook still prints them).
fn own_panics() -> &'static AtomicU64 {
    static PANICS: AtomicU64 = AtomicU64::new(0);
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("hostile-stop-"))
            {
                PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info);
        }));
    });
    &PANICS
}

/// A runtime of its own (one worker), its threads named so that their
/// panics are counted.
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hostile-stop-pool")
        .enable_all()
        .build()
        .unwrap()
}

/// Four `run` calls stopped mid-query behind a lock (their futures
/// dropped), then the pool closed — once (`drop`) with the server
/// reachable, once (`close`, then drop) with the proxy blackholed so that
/// the cancels hang: no task of the pool's left after 12 s (the stop is
/// bounded by 5 s, a cancel by 5 s), no panic; reachable, no session left
/// waiting for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_or_dropping_the_pool_while_stops_are_under_way_leaves_no_task_and_no_panic() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let panics = own_panics();
        let mut report = Vec::new();
        for (round, blackholed) in [(0i64, false), (1, true)] {
            let (role, file) = common::role_and_file(cluster, "stclose").await;
            let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
            file.set(&proxy.url(&role));
            let key = 19_010 + round;
            let lock = Lock::take(cluster, &role, key).await;
            let runtime = own_runtime();
            let builder = Pool::builder(file.source());
            let pool = runtime
                .spawn(common::build_pool(builder, 4, 4))
                .await
                .unwrap();
            let sql = behind_lock(key);
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    let (pool, sql) = (pool.clone(), sql.clone());
                    runtime.spawn(async move {
                        pool.run(async move |c| c.query_one(&sql, &[]).await.map(drop))
                            .await
                    })
                })
                .collect();
            wait_until(async || lock_waiters(cluster, &role).await == 4).await;
            if blackholed {
                proxy.blackhole(true);
            }
            for c in &calls {
                c.abort();
            }
            for c in calls {
                assert!(c.await.unwrap_err().is_cancelled());
            }
            let before = runtime.metrics().num_alive_tasks();
            if blackholed {
                pool.close();
            }
            drop(pool);
            let started = Instant::now();
            let ended = within(Duration::from_secs(12), async || {
                runtime.metrics().num_alive_tasks() == 0
            })
            .await;
            let tasks_left = runtime.metrics().num_alive_tasks();
            let took = started.elapsed();
            proxy.blackhole(false);
            let no_waiter = blackholed
                || within(Duration::from_secs(10), async || {
                    lock_waiters(cluster, &role).await == 0
                })
                .await;
            let waiting = lock_waiters(cluster, &role).await;
            lock.release().await;
            runtime.shutdown_background();
            report.push(format!(
                "blackholed {blackholed}: {before} tasks at the drop, {tasks_left} after {took:?}; \
                 {waiting} lock waiters"
            ));
            assert!(
                ended,
                "blackholed {blackholed}: {tasks_left} of the pool's tasks alive 12 s after it \
                 was dropped"
            );
            assert!(
                no_waiter,
                "{waiting} session(s) still waiting for the lock 10 s after the pool was dropped"
            );
        }
        eprintln!("{report:?}");
        assert_eq!(
            panics.load(Ordering::Relaxed),
            0,
            "panics on the pool's runtime"
        );
    })
    .await;
}
