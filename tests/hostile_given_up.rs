//! A hostile user's attacks on pipelined pool-level statements whose
//! callers give up: a statement already handed to the shared connection
//! keeps its place in the pipeline depth until its answer comes, its
//! connection ends, its attempt timeout passes or the pool is closed
//! (README, "Callers that give up"). What a user would notice around that:
//! a clear error while the places are held, a pool that works again once
//! they are let go, background tasks that end with the pool, no session
//! left behind.
//!
//! Callers give up deterministically: the first statement is a task
//! aborted once `pg_stat_activity` shows it waiting for the test's lock;
//! the ones behind it are futures polled once (a statement prepared on
//! the connection already is sent in its first poll) and dropped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Lock, alive, behind_lock, bounded, count_sessions, lock_waiters, spawn_tasks, wait_until,
    waiting_pids,
};
use pgrotate::{ErrorKind, Pool};
use pgrotate_testing::{Cluster, FaultProxy, TestRole};

/// Puts `n` statements behind the lock `key` on the pool's connection and
/// gives each of them up once it was handed to the connection: the first
/// is a task aborted once the server shows it waiting for the lock; the
/// others are polled once (sent: the statement is prepared on that
/// connection by then) and dropped.
async fn give_up_behind_lock(pool: &Pool, cluster: &Cluster, role: &TestRole, key: i64, n: usize) {
    let sql = behind_lock(key);
    let head = tokio::spawn({
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { pool.query_one(&sql, &[]).await.map(drop) }
    });
    wait_until(async || lock_waiters(cluster, role).await == 1).await;
    head.abort();
    assert!(head.await.unwrap_err().is_cancelled());
    for _ in 1..n {
        let mut call = Box::pin(pool.query_one(&sql, &[]));
        assert!(futures::poll!(&mut call).is_pending());
        drop(call);
    }
}

/// A `select 1` through `Pool::query_one`, bounded by `within`: `None` if
/// it took longer.
async fn select_one_within(pool: &Pool, within: Duration) -> Option<Result<i32, pgrotate::Error>> {
    tokio::time::timeout(within, pool.query_one("select 1::int4", &[]))
        .await
        .ok()
        .map(|r| r.map(|row| row.get(0)))
}

/// A caller finding every place taken gets the wait timeout's error, of
/// kind `Timeout`, saying what it waited for.
fn assert_no_place(r: Option<Result<i32, pgrotate::Error>>, what: &str) {
    let e = r
        .unwrap_or_else(|| panic!("{what}: no answer within 10 s"))
        .expect_err(what);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{what}: {e:#}");
    assert!(
        format!("{e:#}").contains("place on a shared connection"),
        "{what}: {e:#}"
    );
}

/// Waits (up to `within`) until the pool has exactly one connection, idle,
/// and nobody waiting; panics with the last status otherwise.
async fn settles_to_one_idle(pool: &Pool, within: Duration, what: &str) {
    let settled = tokio::time::timeout(
        within,
        wait_until(async || {
            let s = pool.status();
            (s.size, s.available, s.waiting) == (1, 1, 0)
        }),
    )
    .await;
    assert!(settled.is_ok(), "{what}: {:?}", pool.status());
}

/// A one-connection pool 4 deep, with an attempt timeout of 2 s, on a
/// role of its own reached through the fault proxy (which passes the
/// pool's close on to the server as a FIN, as a container's published
/// port or any TCP relay does). Keep the URL file and the proxy alive.
async fn two_second_attempts_through_a_proxy(
    cluster: &Cluster,
    prefix: &str,
    configure: impl FnOnce(pgrotate::PoolBuilder) -> pgrotate::PoolBuilder,
) -> (TestRole, common::UrlFile, FaultProxy, Pool) {
    let policy = pgrotate::RetryPolicy::default().attempt_timeout(Some(Duration::from_secs(2)));
    let (role, file) = common::role_and_file(cluster, prefix).await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    file.set(&proxy.url(&role));
    let builder = configure(Pool::builder(file.source()).retry(policy));
    let pool = common::build_pool(builder, 1, 4).await;
    (role, file, proxy, pool)
}

/// Fills a one-connection pool's depth (4) with statements whose callers
/// gave up while they wait for a lock: a new caller waits its wait
/// timeout and gets a `Timeout` that says it waited for a place; once the
/// lock is released the given-up statements are answered, their places
/// are let go, a new statement is answered and the pool is back to one
/// idle connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_statements_hold_their_places_until_answered_then_the_pool_recovers() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = common::pool_on_role(cluster, "gukeep", 1, 4, |b| {
            b.wait_timeout(Duration::from_millis(500))
        })
        .await;
        let lock = Lock::take(cluster, &role, 18_001).await;
        give_up_behind_lock(&pool, cluster, &role, 18_001, 4).await;
        let started = Instant::now();
        let r = select_one_within(&pool, Duration::from_secs(10)).await;
        eprintln!(
            "a caller with every place given up: {r:?} after {:?}",
            started.elapsed()
        );
        assert_no_place(r, "a caller while 4 given-up statements hold the 4 places");
        // Still held a while later: nothing but the answer lets them go.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_no_place(
            select_one_within(&pool, Duration::from_secs(10)).await,
            "a second caller, a second later",
        );
        let s = pool.status();
        assert_eq!((s.size, s.available), (1, 0), "{s:?}");
        lock.release().await;
        let started = Instant::now();
        let r = select_one_within(&pool, Duration::from_secs(10)).await;
        eprintln!("after the release: {r:?} after {:?}", started.elapsed());
        assert_eq!(r.expect("no answer within 10 s").unwrap(), 1);
        settles_to_one_idle(&pool, Duration::from_secs(10), "after the release").await;
        assert_eq!(lock_waiters(cluster, &role).await, 0);
    })
    .await;
}

/// The policy's attempt timeout (2 s) lets the places of given-up
/// statements go while the lock they wait for is still held, and the
/// connection they were on is closed (the attempt timeout's own words:
/// "its connection is closed, so the server rolls back"): the next
/// statement is answered on a fresh connection, and no session of the
/// role is left waiting for the lock — not even the statements queued
/// behind the first, which the server would run one after another.
///
/// Through the fault proxy, which (like a container's published port,
/// or any TCP relay) passes the pool's close on as a FIN: the server
/// notices the closed client only when a write fails, long after it
/// started the next queued statement. (Straight over loopback the
/// client's reset came in time to hide that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_timeout_lets_given_up_places_go_while_the_lock_is_still_held() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) =
            two_second_attempts_through_a_proxy(cluster, "guattempt", |b| {
                b.wait_timeout(Duration::from_millis(500))
            })
            .await;
        let lock = Lock::take(cluster, &role, 18_002).await;
        give_up_behind_lock(&pool, cluster, &role, 18_002, 4).await;
        let backends = waiting_pids(cluster, &role).await;
        assert_no_place(
            select_one_within(&pool, Duration::from_secs(10)).await,
            "a caller within the attempt timeout",
        );
        // Past the attempt timeout, with the lock still held.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        let r = select_one_within(&pool, Duration::from_secs(10)).await;
        eprintln!(
            "past the attempt timeout: {r:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(
            r.expect("no answer within 10 s").unwrap(),
            1,
            "a caller past the given-up statements' attempt timeout"
        );
        settles_to_one_idle(&pool, Duration::from_secs(10), "past the attempt timeout").await;
        // The backend the given-up statements were queued on is gone (a
        // count of lock waiters could read 0 between two of them).
        let left = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until(async || alive(cluster, &backends).await == 0),
        )
        .await;
        let waiting = lock_waiters(cluster, &role).await;
        lock.release().await;
        assert!(
            left.is_ok(),
            "the given-up statements' backend is still there 10 s after the pool answered past \
             the attempt timeout ({waiting} session(s) of the role waiting for the lock)"
        );
    })
    .await;
}

/// A patient caller whose statement is queued on a connection the pool
/// closes (a given-up statement ahead of it got no answer within the
/// attempt timeout) is cancelled with the rest of what was queued there
/// — and gets its answer all the same, from a retry on a fresh
/// connection: the cancel is the pool's doing and the statement did not
/// commit, so it is never the caller's "canceling statement due to user
/// request".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_statement_cancelled_with_a_closed_connection_is_retried() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, _proxy, pool) =
            two_second_attempts_through_a_proxy(cluster, "gupatient", |b| b).await;
        // Prepared on the one connection first, so that later it is sent
        // in the first poll, behind the given-up statement.
        let patient = "select 1::int4 from pg_sleep(1.5)";
        assert_eq!(
            pool.query_one(patient, &[]).await.unwrap().get::<_, i32>(0),
            1
        );
        let lock = Lock::take(cluster, &role, 18_007).await;
        give_up_behind_lock(&pool, cluster, &role, 18_007, 1).await;
        // A second later, so its own attempt timeout comes after the
        // given-up one's.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let retries = pool.status().retries;
        let r = tokio::time::timeout(Duration::from_secs(15), pool.query_one(patient, &[])).await;
        let retried = pool.status().retries - retries;
        let waiting = lock_waiters(cluster, &role).await;
        lock.release().await;
        let r = r.expect("no answer within 15 s");
        assert_eq!(
            r.map(|row| row.get::<_, i32>(0))
                .map_err(|e| format!("{e:#}")),
            Ok(1),
            "the patient caller"
        );
        assert_eq!(retried, 1, "the patient statement is retried once");
        assert_eq!(waiting, 0, "sessions still waiting for the lock");
    })
    .await;
}

/// A caller already waiting for a place when the given-up statements'
/// attempt timeout passes (lock still held) gets its answer, within its
/// policy's deadline. (Measured: it is handed a place on the connection
/// still stuck behind the lock, waits its own attempt timeout there too,
/// and is answered on a retry on a fresh connection: ~4.1 s, 1 retry, 2
/// connections opened — twice the attempt timeout, but answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waiting_when_given_up_places_time_out_gets_its_answer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let policy = pgrotate::RetryPolicy::default()
            .attempt_timeout(Some(Duration::from_secs(2)))
            .deadline(Duration::from_secs(20));
        let (role, _file, pool) = common::pool_on_role(cluster, "guhandover", 1, 4, |b| {
            b.wait_timeout(Duration::from_secs(15)).retry(policy)
        })
        .await;
        let lock = Lock::take(cluster, &role, 18_003).await;
        give_up_behind_lock(&pool, cluster, &role, 18_003, 4).await;
        let started = Instant::now();
        let r = select_one_within(&pool, Duration::from_secs(20)).await;
        let took = started.elapsed();
        eprintln!(
            "a caller waiting through the attempt timeout: {r:?} after {took:?}; {} retries, \
             {} connections opened",
            pool.status().retries,
            pool.status().connections_opened
        );
        lock.release().await;
        let r = r.expect("no answer within 20 s");
        assert!(
            r.is_ok(),
            "answered {:?} after {took:?}",
            r.map_err(|e| format!("{e:#}"))
        );
        settles_to_one_idle(&pool, Duration::from_secs(10), "afterwards").await;
    })
    .await;
}

/// The connection under four given-up statements is ended by the server
/// (`pg_terminate_backend` of its backend, the lock still held): their
/// places go with it, and a statement is answered on a fresh connection
/// within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ended_under_given_up_statements_lets_their_places_go() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = common::pool_on_role(cluster, "guended", 1, 4, |b| {
            b.wait_timeout(Duration::from_millis(500))
        })
        .await;
        let lock = Lock::take(cluster, &role, 18_004).await;
        give_up_behind_lock(&pool, cluster, &role, 18_004, 4).await;
        assert_no_place(
            select_one_within(&pool, Duration::from_secs(10)).await,
            "a caller before the terminate",
        );
        let [pid] = waiting_pids(cluster, &role).await[..] else {
            panic!("not one session waiting for the lock")
        };
        let ended: bool = cluster
            .superuser()
            .await
            .unwrap()
            .query_one("select pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(ended);
        let started = Instant::now();
        let mut seen = Vec::new();
        let answered = loop {
            match select_one_within(&pool, Duration::from_secs(10)).await {
                Some(Ok(n)) => break Some(n),
                other => seen.push(format!("{:?}", other.map(|r| r.map_err(|e| e.kind())))),
            }
            if started.elapsed() > Duration::from_secs(10) {
                break None;
            }
        };
        eprintln!(
            "after the terminate: {answered:?} after {:?}, before that {seen:?}",
            started.elapsed()
        );
        let waiting = lock_waiters(cluster, &role).await;
        lock.release().await;
        assert_eq!(answered, Some(1), "no answer within 10 s: {seen:?}");
        assert_eq!(waiting, 0, "sessions still waiting for the lock");
        settles_to_one_idle(&pool, Duration::from_secs(10), "after the terminate").await;
    })
    .await;
}

/// `drain()` while a given-up statement holds its place on the old
/// connection: a statement after the drain goes to a new connection at
/// once, and the old one closes once the given-up statement is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_leaves_a_given_up_statement_to_finish_and_closes_its_connection_after() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = common::pool_on_role(cluster, "gudrain", 2, 4, |b| {
            b.wait_timeout(Duration::from_secs(5))
        })
        .await;
        let lock = Lock::take(cluster, &role, 18_005).await;
        give_up_behind_lock(&pool, cluster, &role, 18_005, 1).await;
        let [old] = waiting_pids(cluster, &role).await[..] else {
            panic!("not one session waiting for the lock")
        };
        assert_eq!(pool.drain().await, 2);
        let started = Instant::now();
        let new: i32 = tokio::time::timeout(
            Duration::from_secs(10),
            pool.query_one("select pg_backend_pid()", &[]),
        )
        .await
        .expect("a statement after the drain got no answer within 10 s")
        .unwrap()
        .get(0);
        eprintln!(
            "after the drain: backend {new} (old {old}) in {:?}",
            started.elapsed()
        );
        assert_ne!(
            new, old,
            "a statement after the drain joined the old connection"
        );
        // The given-up statement still runs on the old one.
        let gone = format!("pid = {old}");
        assert_eq!(count_sessions(cluster, &role.name, &gone).await, 1);
        lock.release().await;
        let closed = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until(async || count_sessions(cluster, &role.name, &gone).await == 0),
        )
        .await;
        assert!(
            closed.is_ok(),
            "the old connection is still open 10 s after its answer"
        );
        settles_to_one_idle(&pool, Duration::from_secs(10), "after the drain").await;
        assert_eq!(pool.status().generation, 2);
    })
    .await;
}

/// The pool dropped (never closed) while four given-up statements wait for
/// a lock that is never released: the pool's tasks end all the same. The
/// pool lives on a runtime of its own, so its tasks are counted alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_lets_go_of_given_up_statements_that_never_get_their_answer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = common::role_and_file(cluster, "gudrop").await;
        let lock = Lock::take(cluster, &role, 18_006).await;
        let (runtime, pool) = common::pool_on_own_runtime(&file, 1, 4).await;
        let sql = behind_lock(18_006);
        let head = runtime.spawn({
            let (pool, sql) = (pool.clone(), sql.clone());
            async move { pool.query_one(&sql, &[]).await.map(drop) }
        });
        wait_until(async || lock_waiters(cluster, &role).await == 1).await;
        head.abort();
        assert!(head.await.unwrap_err().is_cancelled());
        // Three more, sent and given up on the pool's runtime.
        runtime
            .spawn({
                let pool = pool.clone();
                async move {
                    for _ in 0..3 {
                        let mut call = Box::pin(pool.query_one(&sql, &[]));
                        assert!(futures::poll!(&mut call).is_pending());
                    }
                }
            })
            .await
            .unwrap();
        let tasks = || runtime.metrics().num_alive_tasks();
        let before = tasks();
        assert!(before > 0, "the pool's own tasks run");
        drop(pool);
        let ended =
            tokio::time::timeout(Duration::from_secs(10), wait_until(async || tasks() == 0)).await;
        let left = tasks();
        let waiting = lock_waiters(cluster, &role).await;
        lock.release().await;
        runtime.shutdown_background();
        eprintln!("tasks: {before} before the drop, {left} 10 s after; {waiting} lock waiters");
        assert!(
            ended.is_ok(),
            "{left} of the pool's tasks alive 10 s after it was dropped"
        );
    })
    .await;
}

/// `Pool::close` while a caller waits for a place that given-up
/// statements (behind a lock never released) hold: the close lets their
/// places go, and the waiting caller must return promptly (its docs:
/// waiting calls fail with `Closed`), not be handed a place behind the
/// lock and hang there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_answers_a_caller_waiting_for_a_place_given_up_statements_hold() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = common::pool_on_role(cluster, "guclose", 1, 4, |b| {
            b.wait_timeout(Duration::from_secs(30))
        })
        .await;
        let lock = Lock::take(cluster, &role, 18_007).await;
        give_up_behind_lock(&pool, cluster, &role, 18_007, 4).await;
        // Queued for a place in its first poll (every place is taken).
        let mut waiter = Box::pin({
            let pool = pool.clone();
            async move {
                let started = Instant::now();
                let r = pool.query_one("select 1::int4", &[]).await;
                (r.map(|row| row.get::<_, i32>(0)), started.elapsed())
            }
        });
        assert!(futures::poll!(&mut waiter).is_pending());
        let mut waiter = tokio::spawn(waiter);
        pool.close();
        let closed_at = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), &mut waiter).await;
        let took = closed_at.elapsed();
        let waiting = lock_waiters(cluster, &role).await;
        lock.release().await;
        eprintln!("the waiting caller after close: {r:?} after {took:?}; {waiting} lock waiters");
        let Ok(r) = r else {
            // What it came to once the lock was released.
            let late = tokio::time::timeout(Duration::from_secs(10), waiter).await;
            panic!(
                "the waiting caller was not answered 10 s after close ({waiting} sessions \
                 waiting for the lock then); after the lock's release: {:?}",
                late.map(|r| r.map(|(a, t)| (a.map_err(|e| format!("{e:#}")), t)))
            );
        };
        let (answer, _) = r.unwrap();
        if let Err(e) = answer {
            assert!(
                matches!(e.kind(), ErrorKind::Closed | ErrorKind::OutcomeUnknown),
                "{e:#}"
            );
        }
    })
    .await;
}

/// Thousands of callers giving up after random 0–3 ms (statements of
/// 0–1 ms on the server; one caller in four patient) on two connections
/// 16 deep, through two password
/// rotations (new URL published, the role's sessions terminated): no
/// session is left idle inside a transaction, nobody is left waiting, and
/// a patient caller gets its answer within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_give_ups_through_rotations_leave_a_pool_that_answers_promptly() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (mut role, file, pool) = common::pool_on_role(cluster, "guloop", 2, 16, |b| b).await;
        let stop = Arc::new(AtomicBool::new(false));
        let given_up = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let callers = spawn_tasks(32, |w| {
            let (pool, stop) = (pool.clone(), stop.clone());
            let (given_up, answered) = (given_up.clone(), answered.clone());
            async move {
                let mut rng = fastrand::Rng::with_seed(w as u64);
                let mut errors = Vec::new();
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.i32(..);
                    let pause = rng.f64() * 0.001;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&k, &pause];
                    let call = pool.query_one("select $1::int4 from pg_sleep($2)", &params);
                    // One caller in four is patient (it keeps connections
                    // open: a connect takes longer than 3 ms); the others
                    // give up within 0-3 ms.
                    let started = Instant::now();
                    let limit = if w % 4 == 0 {
                        Duration::from_secs(30)
                    } else {
                        Duration::from_micros(rng.u64(0..3_000))
                    };
                    match tokio::time::timeout(limit, call).await {
                        Ok(Ok(row)) => {
                            assert_eq!(row.get::<_, i32>(0), k, "another caller's row");
                            answered.fetch_add(1, Ordering::Relaxed);
                            if w % 4 == 0 {
                                worst = worst.max(started.elapsed());
                            }
                        }
                        Ok(Err(e)) => errors.push(format!("{:?}: {e:#}", e.kind())),
                        Err(_) => {
                            given_up.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (errors, worst)
            }
        });
        let load_started = Instant::now();
        let give_ups = async |n: u64| {
            let target = given_up.load(Ordering::Relaxed) + n;
            wait_until(async || given_up.load(Ordering::Relaxed) >= target).await;
        };
        for _ in 0..2 {
            give_ups(1_500).await;
            eprintln!(
                "rotating at {:?}: {} answered; {:?}",
                load_started.elapsed(),
                answered.load(Ordering::Relaxed),
                pool.status()
            );
            let rotated = cluster.rotate_password(&role).await.unwrap();
            file.set(&cluster.url(&rotated));
            cluster.terminate_backends(&role.name).await.unwrap();
            role = rotated;
        }
        give_ups(1_500).await;
        stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut worst = Duration::ZERO;
        for (e, w) in callers.outcomes().await {
            errors.extend(e);
            worst = worst.max(w);
        }
        let load_took = load_started.elapsed();
        let given_up = given_up.load(Ordering::Relaxed);
        let answered = answered.load(Ordering::Relaxed);
        let started = Instant::now();
        let patient = select_one_within(&pool, Duration::from_secs(10)).await;
        let took = started.elapsed();
        let settled = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until(async || {
                let s = pool.status();
                s.waiting == 0 && s.available == s.size
            }),
        )
        .await;
        let idle_in_tx = common::idle_in_transaction(cluster, &role.name).await;
        eprintln!(
            "in {load_took:?}: {given_up} given up, {answered} answered (the patient callers' \
             worst wait {worst:?}), {} errors ({:?}); patient caller {patient:?} in {took:?}; \
             status {:?}; {idle_in_tx} idle in transaction",
            errors.len(),
            &errors[..errors.len().min(3)],
            pool.status()
        );
        assert!(given_up >= 4_500, "{given_up} given up");
        assert!(answered > 0, "nobody was answered");
        assert!(
            worst < Duration::from_secs(10),
            "a patient caller waited {worst:?} during the load"
        );
        let patient = patient.expect("the patient caller got no answer within 10 s");
        assert_eq!(patient.unwrap(), 1);
        assert!(
            took < Duration::from_secs(5),
            "the patient caller waited {took:?}"
        );
        assert!(settled.is_ok(), "never settled: {:?}", pool.status());
        assert_eq!(pool.status().waiting, 0);
        assert_eq!(idle_in_tx, 0, "sessions left idle in transaction");
        assert!(
            errors
                .iter()
                .all(|e| e.starts_with("OutcomeUnknown") || e.starts_with("Timeout")),
            "{errors:?}"
        );
    })
    .await;
}
