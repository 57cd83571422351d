//! A hostile user's attacks on pipelined pool-level statements
//! (`Pool::query`, `query_one`, `execute`, `query_typed`, …): server-side
//! timeouts, constraint violations, rotations back to back, callers
//! cancelled at random, the pool closed under load, requests dropped
//! half-sent through `get`, large parameters, deep pipelines. Every row is
//! counted: an `Ok` write is present exactly once, an `OutcomeUnknown` one
//! at most once, any other error's not at all; every caller gets its own
//! answer.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{bounded, counts, pool_with_table, spawn_tasks, wait_until};
use pgrotate::{ErrorKind, Pool};
use pgrotate_testing::{Cluster, TestRole};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

/// Why a terminate may leave pipelined statements `OutcomeUnknown`: a
/// backend terminated while blocked writing answers to a client that reads
/// slower than the server answers (a loaded machine, deep pipelines, big
/// rows) exits without its `FATAL` — PostgreSQL's `postgres.c`,
/// `ProcessClientWriteInterrupt`: "we don't want to send the client the
/// error message as that a) would possibly block again" — and with
/// requests unread in its socket the close is a reset, so answers still in
/// its send buffer are lost too. The statements after the last answer
/// read may have run (committed) or not; nothing the client can see tells
/// them apart. Retried are only those whose `Execute` was never written.
#[allow(dead_code)]
const UNKNOWN_THROUGH_A_TERMINATE: () = ();

/// What a caller's write came to.
#[derive(Debug)]
enum Outcome {
    Ok(u64),
    Err(ErrorKind, Option<SqlState>, String),
    /// The caller gave up (its own timeout) before the answer.
    GaveUp,
}

impl Outcome {
    fn of(r: Result<u64, pgrotate::Error>) -> Outcome {
        match r {
            Ok(n) => Outcome::Ok(n),
            Err(e) => Outcome::Err(e.kind(), e.code().cloned(), format!("{e:#}")),
        }
    }
}

/// Checks every write of `outcomes` against the rows `present`: an `Ok`
/// exactly once, an unknown outcome or a caller that gave up at most once,
/// any other error not at all. Returns (ok, unknown, gave up, other
/// errors).
fn check_writes(outcomes: &[(i32, Outcome)], present: &HashMap<i32, i64>) -> [usize; 4] {
    let mut n = [0; 4];
    for (k, o) in outcomes {
        let here = present.get(k).copied().unwrap_or(0);
        match o {
            Outcome::Ok(c) => {
                assert_eq!((*c, here), (1, 1), "key {k}: Ok but present {here} times");
                n[0] += 1;
            }
            Outcome::Err(ErrorKind::OutcomeUnknown, _, _) => {
                assert!(here <= 1, "key {k}: OutcomeUnknown, present {here} times");
                n[1] += 1;
            }
            Outcome::GaveUp => {
                assert!(here <= 1, "key {k}: given up, present {here} times");
                n[2] += 1;
            }
            Outcome::Err(kind, code, e) => {
                assert_eq!(here, 0, "key {k}: {kind:?} {code:?} yet present: {e}");
                n[3] += 1;
            }
        }
    }
    n
}

/// Whether `client`'s session is outside a transaction block: in the
/// simple protocol an implicit transaction starts with its statement.
async fn outside_a_block(client: &pgrotate::Client) -> bool {
    let rows = client
        .simple_query("select now() = statement_timestamp()")
        .await
        .unwrap();
    rows.iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")))
}

/// Rotates the password of `role`, publishes the new URL in `file` and
/// ends the role's sessions, as `heroku pg:credentials:rotate` does.
async fn rotate(cluster: &Cluster, role: &TestRole, file: &common::UrlFile) -> TestRole {
    let rotated = cluster.rotate_password(role).await.unwrap();
    file.set(&cluster.url(&rotated));
    cluster.terminate_backends(&role.name).await.unwrap();
    rotated
}

/// Logs to stderr what `HS_LOG` selects (`pgrotate=debug`), when set.
fn log_from_env() {
    if let Ok(filter) = std::env::var("HS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A server-side `statement_timeout` (set on every connection by the
/// `after_connect` hook) cancels a slow statement pipelined among fast
/// writes on the one connection: the slow statement's 57014 is its own
/// (a caller's error, not retried), the writes queued behind it on the
/// same connection are each applied once and reported `Ok`, and the
/// connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_among_pipelined_writes_harms_only_its_own_caller() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool_with_table(cluster, "hstimeout", 1, 64, |b| {
            b.after_connect(|c| {
                Box::pin(async move { c.batch_execute("SET statement_timeout = '50ms'").await })
            })
        })
        .await;
        let mut all = Vec::new();
        for round in 0..5 {
            let callers = spawn_tasks(41, |i| {
                let pool = pool.clone();
                async move {
                    let k = (round * 100 + i) as i32;
                    let r = match i {
                        // A slow read and a slow write among the writes.
                        10 => pool
                            .query_one("select pg_sleep(1)::text", &[])
                            .await
                            .map(|_| 1),
                        20 => {
                            pool.execute("insert into t select $1 from pg_sleep(1)", &[&k])
                                .await
                        }
                        _ => pool.execute("insert into t values ($1)", &[&k]).await,
                    };
                    (i, k, Outcome::of(r))
                }
            });
            for (i, k, o) in callers.outcomes().await {
                if i == 10 || i == 20 {
                    match &o {
                        Outcome::Err(ErrorKind::Query, Some(code), _)
                            if *code == SqlState::QUERY_CANCELED => {}
                        other => panic!("round {round}: the slow statement {i}: {other:?}"),
                    }
                } else {
                    assert!(
                        matches!(o, Outcome::Ok(1)),
                        "round {round}: write {k} beside a timed-out statement: {o:?}"
                    );
                }
                all.push((k, o));
            }
        }
        let present = counts(&pool).await;
        let [ok, unknown, gave_up, other] = check_writes(&all, &present);
        assert_eq!((ok, unknown, gave_up, other), (195, 0, 0, 10));
        assert_eq!(present.len(), 195);
        let s = pool.status();
        assert_eq!(s.retries, 0, "{s:?}");
        assert_eq!(
            s.connections_opened, 1,
            "a statement's own timeout cost the shared connection: {s:?}"
        );
    })
    .await;
}

/// 200 pipelined inserts on one connection into a table with a key, some
/// of whose keys are taken already, and a rotation while they are in
/// flight (each insert sleeps 2 ms on the server, so the 200 take ~0.4 s
/// on the connection): each caller gets its own answer — its own key back,
/// or its own duplicate-key error, never retried (a retried insert that
/// had been applied would come back as a duplicate). Ten rounds, ten
/// rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_among_pipelined_inserts_and_a_rotation_give_each_caller_its_own_answer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (mut role, file, pool) = common::pool_on_role(cluster, "hsdup", 1, 256, |b| b).await;
        pool.batch_execute("create table u (k int primary key)")
            .await
            .unwrap();
        const N: i32 = 200;
        let taken = |i: i32| i % 50 == 7;
        let (mut ok, mut dup, mut unknown) = (0, 0, 0);
        for round in 0..10 {
            for i in (0..N).filter(|i| taken(*i)) {
                pool.execute("insert into u values ($1)", &[&(round * 1000 + i)])
                    .await
                    .unwrap();
            }
            let done = Arc::new(AtomicU64::new(0));
            let callers = spawn_tasks(N as usize, |i| {
                let (pool, done) = (pool.clone(), done.clone());
                async move {
                    let k = round * 1000 + i as i32;
                    let r = pool
                        .query_one(
                            "insert into u select $1 from pg_sleep(0.002) returning k",
                            &[&k],
                        )
                        .await;
                    done.fetch_add(1, Ordering::Relaxed);
                    (k, r.map(|row| row.get::<_, i32>(0)))
                }
            });
            wait_until(async || done.load(Ordering::Relaxed) >= 40).await;
            role = rotate(cluster, &role, &file).await;
            for (k, r) in callers.outcomes().await {
                let i = k - round * 1000;
                match r {
                    Ok(back) => {
                        assert_eq!(back, k, "round {round}: the caller of {k} got {back}'s row");
                        assert!(!taken(i), "round {round}: {k} was taken, yet inserted");
                        ok += 1;
                    }
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        assert!(
                            taken(i),
                            "round {round}: {k} applied twice (its retry hit its own row): {e:#}"
                        );
                        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
                        dup += 1;
                    }
                    Err(e) if e.is_outcome_unknown() => unknown += 1,
                    Err(e) => panic!("round {round}: key {k}: {e:#}"),
                }
            }
        }
        // Every key is there once (a key), the taken ones and the Ok ones.
        let n: i64 = pool
            .query_one("select count(*) from u", &[])
            .await
            .unwrap()
            .get(0);
        let taken_n = (0..N).filter(|i| taken(*i)).count() as i64 * 10;
        assert!(
            n >= taken_n + ok && n <= taken_n + ok + unknown,
            "{n} rows: {taken_n} taken, {ok} Ok, {unknown} unknown"
        );
        assert_eq!(dup, taken_n, "every duplicate told so, once");
        eprintln!(
            "10 rounds: {ok} Ok, {dup} duplicates, {unknown} OutcomeUnknown, {} retries",
            pool.status().retries
        );
        assert_eq!(unknown, 0, "a rotation cost callers an OutcomeUnknown");
    })
    .await;
}

/// What the callers of a load share.
struct Load {
    pool: Pool,
    next: std::sync::atomic::AtomicI32,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Load {
    fn new(pool: &Pool) -> Arc<Load> {
        Arc::new(Load {
            pool: pool.clone(),
            next: Default::default(),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Waits until `n` more calls have succeeded than by now.
    async fn more_calls(&self, n: u64) {
        let before = self.done.load(Ordering::Relaxed);
        wait_until(async || self.done.load(Ordering::Relaxed) >= before + n).await;
    }
}

/// 64 pipelined callers (half writing, half reading their own value back)
/// on 2 connections; the password is rotated twice back to back (the
/// second before the pool has settled on the first), twice: no caller sees
/// an error but an unknown outcome the server left unsaid
/// ([`UNKNOWN_THROUGH_A_TERMINATE`]), every write `Ok` is applied exactly
/// once and an unknown one at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotations_back_to_back_under_64_pipelined_callers_cost_nothing() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (mut role, file, pool) = pool_with_table(cluster, "hsdouble", 2, 128, |b| b).await;
        let load = Load::new(&pool);
        let callers = spawn_tasks(64, |w| {
            let load = load.clone();
            async move {
                let mut outcomes = Vec::new();
                while !load.stop.load(Ordering::Relaxed) {
                    let k = load.next.fetch_add(1, Ordering::Relaxed);
                    let r = if w % 2 == 0 {
                        load.pool
                            .execute("insert into t values ($1)", &[&k])
                            .await
                            .map(|n| (n == 1).then_some(k))
                    } else {
                        load.pool
                            .query_one("select $1::int4 + 0", &[&k])
                            .await
                            .map(|row| {
                                assert_eq!(row.get::<_, i32>(0), k, "a reader got another's row");
                                None
                            })
                    };
                    if r.is_ok() {
                        load.done.fetch_add(1, Ordering::Relaxed);
                    }
                    let r = r.map_err(|e| (e.is_outcome_unknown(), format!("{e:#}")));
                    outcomes.push((w % 2 == 0, k, r));
                }
                outcomes
            }
        });
        for _ in 0..2 {
            load.more_calls(500).await;
            let first = rotate(cluster, &role, &file).await;
            role = rotate(cluster, &first, &file).await;
        }
        load.more_calls(500).await;
        load.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut written = Vec::new();
        let (mut unknown, mut unknown_reads) = (Vec::new(), 0);
        for (write, k, r) in callers.outcomes().await.into_iter().flatten() {
            match r {
                Ok(Some(k)) => written.push(k),
                Ok(None) if write => panic!("write {k} affected no row"),
                Ok(None) => {}
                // What the server never said (see UNKNOWN_THROUGH_A_TERMINATE).
                Err((true, _)) if write => unknown.push(k),
                Err((true, _)) => unknown_reads += 1,
                Err((false, e)) => errors.push((write, k, e)),
            }
        }
        let present = counts(&pool).await;
        for k in &written {
            assert_eq!(present.get(k), Some(&1), "key {k} applied exactly once");
        }
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        for (k, n) in &present {
            assert!(
                *n == 1 && (written.contains(k) || unknown.contains(k)),
                "key {k} present {n} times, reported neither Ok nor unknown"
            );
        }
        eprintln!(
            "four rotations in two pairs: {} calls, {} writes, {} writes and {unknown_reads} \
             reads unknown, {} retries, generation {}",
            load.done.load(Ordering::Relaxed),
            written.len(),
            unknown.len(),
            pool.status().retries,
            pool.status().generation
        );
    })
    .await;
}

/// A warm connection's backlog (see the two tests below): a slow
/// statement holds the backend while 200 inserts of 100 kB into `big`
/// queue behind it (the socket fills, so most stay queued, unwritten),
/// then `first_read` (`READ` with 7), a statement already in the
/// connection's cache used for the first time on this lane.
struct Backlog {
    slow: tokio::task::JoinHandle<Result<tokio_postgres::Row, pgrotate::Error>>,
    bigs: common::Tasks<(i32, Outcome)>,
    first_read: tokio::task::JoinHandle<Result<tokio_postgres::Row, pgrotate::Error>>,
}

const BIG: &str = "insert into big values ($1, $2)";
const READ: &str = "select $1::int4 + 0";
const WRITE: &str = "insert into t values ($1)";

impl Backlog {
    async fn start(pool: &Pool) -> Backlog {
        let payload = "x".repeat(100_000);
        let slow = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.query_one("select pg_sleep(0.7)::text", &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let bigs = spawn_tasks(200, |i| {
            let (pool, payload) = (pool.clone(), payload.clone());
            async move {
                let k = i as i32;
                (k, Outcome::of(pool.execute(BIG, &[&k, &payload]).await))
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first_read = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.query_one(READ, &[&7i32]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        Backlog {
            slow,
            bigs,
            first_read,
        }
    }
}

/// A lane (a shared connection's run of pipelined statements) counts the
/// place of each statement it hands to tokio-postgres; the first use of a
/// statement on a lane "prepares" it under the lane's lock and then sets
/// the lane's count to the wire's count of requests *written* — correct
/// after a real prepare (a round trip: everything before it was written
/// and answered), but the connection's statement cache outlives lanes: on
/// a connection a previous lane used, that prepare is a cache hit with no
/// round trip, and requests queued in tokio-postgres but not yet written
/// are dropped from the count. Every later statement on the lane then has
/// a place too low.
///
/// Made certain here: one connection, a slow statement holds the backend
/// while 200 inserts of 100 kB queue up behind it (the socket fills, so
/// most stay queued, unwritten), then a statement already in the cache is
/// used for the first time on this lane, then an insert whose deferred
/// trigger terminates its own backend at the implicit commit (after its
/// `CommandComplete`, before its `ReadyForQuery`: it did not commit, the
/// pool's own rule: retried — it is, its own FATAL is its answer), then 20
/// reads queued behind it. Those never ran (behind the request the FATAL
/// came on) and must be retried; with their places too low (51..70 where
/// the FATAL came at 212 of 232 sent) they are told `OutcomeUnknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_behind_a_fatal_are_retried_on_a_warm_connection() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool_with_table(cluster, "hswarm", 1, 1024, |b| b).await;
        pool.batch_execute("create table big (k int not null, v text not null)")
            .await
            .unwrap();
        pool.batch_execute(&common::terminate_once_at_commit("new.k = -1", ""))
            .await
            .unwrap();
        // Warm the connection's statement cache, then let the lane end.
        pool.execute(BIG, &[&-1i32, &"warm"]).await.unwrap();
        pool.query_one(READ, &[&0i32]).await.unwrap();
        pool.execute(WRITE, &[&0i32]).await.unwrap();
        wait_until(async || pool.status().available == 1).await;
        // The first use on this lane of statements in the cache (the
        // backlog's read) sets the count to the requests written so far.
        let backlog = Backlog::start(&pool).await;
        let doomed = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute(WRITE, &[&-1i32]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Reads queued behind the doomed write: behind its FATAL, they
        // never ran and are retried.
        let behind = spawn_tasks(20, |i| {
            let pool = pool.clone();
            async move {
                let v = 1000 + i as i32;
                pool.query_one(READ, &[&v])
                    .await
                    .map(|r| (v, r.get::<_, i32>(0)))
            }
        });
        let doomed = doomed.await.unwrap();
        let behind = behind.outcomes().await;
        let read = backlog.first_read.await.unwrap();
        let slow = backlog.slow.await.unwrap();
        let bigs = backlog.bigs.outcomes().await;
        let present: i64 = pool
            .query_one("select count(*) from t where k = -1", &[])
            .await
            .unwrap()
            .get(0);
        let terminated: i64 = pool
            .query_one("select last_value from once", &[])
            .await
            .unwrap()
            .get(0);
        eprintln!(
            "doomed write: {:?}, present {present}, trigger ran {terminated} times; read {:?}; \
             slow {:?}; bigs: {:?}",
            doomed.as_ref().map_err(|e| format!("{e:#}")),
            read.as_ref()
                .map(|r| r.get::<_, i32>(0))
                .map_err(|e| format!("{e:#}")),
            slow.as_ref().map(drop).map_err(|e| format!("{e:#}")),
            bigs.iter()
                .fold(HashMap::<String, usize>::new(), |mut m, (_, o)| {
                    let key = match o {
                        Outcome::Ok(_) => "Ok".to_string(),
                        Outcome::Err(k, _, _) => format!("{k:?}"),
                        Outcome::GaveUp => "gave up".to_string(),
                    };
                    *m.entry(key).or_default() += 1;
                    m
                })
        );
        match &doomed {
            Ok(n) => assert_eq!(
                (*n, present),
                (1, 1),
                "the write was reported Ok but the server rolled it back"
            ),
            Err(e) => {
                assert!(e.is_outcome_unknown(), "{e:#}");
                assert!(present <= 1);
            }
        }
        // The statements of the lane were never run twice, and those
        // answered Ok are there.
        let big_present: HashMap<i32, i64> = pool
            .query("select k, count(*) from big where k >= 0 group by k", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        check_writes(&bigs, &big_present);
        let behind_errors: Vec<String> = behind
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        assert!(
            behind_errors.is_empty(),
            "{} of the 20 reads behind the FATAL failed: {:?}",
            behind_errors.len(),
            &behind_errors[..behind_errors.len().min(2)]
        );
        for r in &behind {
            let (v, back) = r.as_ref().unwrap();
            assert_eq!(v, back);
        }
        assert_eq!(read.unwrap().get::<_, i32>(0), 7);
        assert!(doomed.is_ok(), "the doomed write was not retried");
        assert!(
            bigs.iter().all(|(_, o)| matches!(o, Outcome::Ok(1))),
            "a statement of the lane was not answered Ok"
        );
    })
    .await;
}

/// The same lost count, seen through the rule for a transaction block left
/// open on a shared connection (README: "statements answered inside it
/// are `OutcomeUnknown`, never `Ok`, and the connection is closed"): a
/// statement reads the transaction status of the answer at its place, and
/// with its place too low it reads an earlier statement's `Idle`. A
/// disguised `BEGIN` queued behind 200 big inserts on a warm connection,
/// then 20 writes: each write answered inside the block must not be `Ok`
/// (the server rolls the block back when the connection closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_inside_a_block_left_open_are_never_reported_ok_on_a_warm_connection() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool_with_table(cluster, "hsblock", 1, 1024, |b| b).await;
        pool.batch_execute("create table big (k int not null, v text not null)")
            .await
            .unwrap();
        const SNEAKY: &str = "start /* sneaky */ transaction";
        // Warm the connection's statement cache (the BEGIN prepared, not
        // run), then let it go back to the pool.
        {
            let client = pool.get().await.unwrap();
            for sql in [BIG, READ, WRITE, SNEAKY] {
                client.prepare_cached(sql).await.unwrap();
            }
        }
        wait_until(async || pool.status().available == 1).await;
        let backlog = Backlog::start(&pool).await;
        let begin = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute(SNEAKY, &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let writes = spawn_tasks(20, |i| {
            let pool = pool.clone();
            async move {
                let k = i as i32;
                (k, Outcome::of(pool.execute(WRITE, &[&k]).await))
            }
        });
        let writes = writes.outcomes().await;
        let begin = begin.await.unwrap();
        let _ = (
            backlog.first_read.await.unwrap(),
            backlog.slow.await.unwrap(),
            backlog.bigs.outcomes().await,
        );
        let present = counts(&pool).await;
        let ok: Vec<i32> = writes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ok(_)))
            .map(|(k, _)| *k)
            .collect();
        eprintln!(
            "begin: {:?}; writes Ok: {ok:?}; present: {:?}",
            begin.as_ref().map_err(|e| format!("{e:#}")),
            present
        );
        assert!(
            begin.is_err(),
            "a BEGIN left open on a shared connection was reported Ok"
        );
        check_writes(&writes, &present);
    })
    .await;
}

/// 32 callers wrapping every other call in a timeout of 0–5 ms (their own
/// deadline: an HTTP request given up) while each write sleeps 0–2 ms on
/// the server, through two rotations: a given-up write is applied at most
/// once, an `Ok` one exactly once; every reader gets its own value back;
/// afterwards the pool is sane (nothing waiting, every connection back,
/// no session left inside a transaction) and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_giving_up_at_random_through_rotations_never_double_a_write_nor_get_anothers_rows()
{
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (mut role, file, pool) = pool_with_table(cluster, "hscancel", 2, 128, |b| b).await;
        let load = Load::new(&pool);
        let callers = spawn_tasks(32, |w| {
            let load = load.clone();
            async move {
                let mut rng = fastrand::Rng::with_seed(w as u64);
                let mut writes = Vec::new();
                let mut read_errors = Vec::new();
                while !load.stop.load(Ordering::Relaxed) {
                    let k = load.next.fetch_add(1, Ordering::Relaxed);
                    // Every other call gives up within 0-5 ms, the rest wait
                    // (a caller whose deadline is always shorter than the
                    // queue on its connection never gets an answer).
                    let limit = if rng.bool() {
                        Duration::from_micros(rng.u64(0..5_000))
                    } else {
                        Duration::from_secs(60)
                    };
                    if w % 2 == 0 {
                        let pause = rng.f64() * 0.002;
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&k, &pause];
                        let call = load
                            .pool
                            .execute("insert into t select $1 from pg_sleep($2)", &params);
                        let o = match tokio::time::timeout(limit, call).await {
                            Ok(r) => Outcome::of(r),
                            Err(_) => Outcome::GaveUp,
                        };
                        if matches!(o, Outcome::Ok(_)) {
                            load.done.fetch_add(1, Ordering::Relaxed);
                        }
                        writes.push((k, o));
                    } else {
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&k];
                        let call = load
                            .pool
                            .query_one("select $1::int4, pg_backend_pid()", &params);
                        match tokio::time::timeout(limit, call).await {
                            Ok(Ok(row)) => {
                                assert_eq!(row.get::<_, i32>(0), k, "a reader got another's row");
                                load.done.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => read_errors.push(format!("{e:#}")),
                            Err(_) => {}
                        }
                    }
                }
                (writes, read_errors)
            }
        });
        for _ in 0..2 {
            load.more_calls(300).await;
            eprintln!("rotating at {:?}", pool.status());
            role = rotate(cluster, &role, &file).await;
        }
        load.more_calls(300).await;
        load.stop.store(true, Ordering::Relaxed);
        eprintln!("stopped at {:?}", pool.status());
        let mut writes = Vec::new();
        let mut read_errors = Vec::new();
        for (w, r) in callers.outcomes().await {
            writes.extend(w);
            read_errors.extend(r);
        }
        // Writes given up may still be running: wait for the server.
        wait_until(async || {
            common::count_sessions(cluster, &role.name, "state = 'active'").await == 0
        })
        .await;
        eprintln!("settled at {:?}", pool.status());
        let present = counts(&pool).await;
        let [ok, unknown, gave_up, other] = check_writes(&writes, &present);
        let errors: Vec<&String> = writes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Err(_, _, e) => Some(e),
                _ => None,
            })
            .chain(read_errors.iter())
            .collect();
        eprintln!(
            "{ok} Ok, {unknown} OutcomeUnknown, {gave_up} given up, {other} other errors, \
             {} read errors, {} retries: {:?}",
            read_errors.len(),
            pool.status().retries,
            &errors[..errors.len().min(3)]
        );
        assert!(gave_up > 0, "some callers gave up");
        // The pool is sane and works.
        wait_until(async || {
            let s = pool.status();
            s.waiting == 0 && s.available == s.size && s.size <= s.max_size
        })
        .await;
        assert_eq!(common::idle_in_transaction(cluster, &role.name).await, 0);
        let n: i32 = pool
            .query_one("select $1::int4", &[&41])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 41);
        let client = pool.get().await.unwrap();
        assert!(
            outside_a_block(&client).await,
            "a checkout inside someone's transaction"
        );
        // Errors, if any, are only "may have run" (the spurious ones of the
        // lost lane count: see the *_on_a_warm_connection tests), never
        // another kind.
        assert_eq!(other, 0);
        assert!(
            errors
                .iter()
                .all(|e| e.starts_with("statement outcome unknown")),
            "{errors:?}"
        );
    })
    .await;
}

/// `Pool::close` with 100 pipelined statements in flight or waiting for a
/// place (two connections, 8 deep): every caller returns, well within its
/// bound, with its own answer or a clear error; an `Ok` write is there,
/// and a statement after the close fails at once with `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_under_100_pipelined_statements_answers_every_caller() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        for depth in [128, 8] {
            let prefix = format!("hsclose{depth}");
            let (role, _file, pool) = pool_with_table(cluster, &prefix, 2, depth, |b| b).await;
            let callers = spawn_tasks(100, |i| {
                let pool = pool.clone();
                async move {
                    let k = i as i32;
                    let started = std::time::Instant::now();
                    let call = async {
                        if i % 2 == 0 {
                            pool.execute("insert into t select $1 from pg_sleep(0.02)", &[&k])
                                .await
                        } else {
                            let row = pool
                                .query_one("select $1::int4 from pg_sleep(0.02)", &[&k])
                                .await?;
                            assert_eq!(row.get::<_, i32>(0), k, "another caller's row");
                            Ok(1)
                        }
                    };
                    let r = tokio::time::timeout(Duration::from_secs(20), call).await;
                    (k, r, started.elapsed())
                }
            });
            tokio::time::sleep(Duration::from_millis(150)).await;
            pool.close();
            let closed_at = std::time::Instant::now();
            let e = pool.execute("select 1", &[]).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Closed, "{e:#}");
            assert!(closed_at.elapsed() < Duration::from_millis(100));
            let mut outcomes = Vec::new();
            let mut kinds: HashMap<String, usize> = HashMap::new();
            let mut slowest = Duration::ZERO;
            for (k, r, took) in callers.outcomes().await {
                let r = r.unwrap_or_else(|_| panic!("depth {depth}: caller {k} hung"));
                slowest = slowest.max(took);
                let key = match &r {
                    Ok(_) => "Ok".to_string(),
                    Err(e) => format!("{:?}: {e}", e.kind()),
                };
                *kinds.entry(key).or_default() += 1;
                if k % 2 == 0 {
                    outcomes.push((k, Outcome::of(r)));
                }
            }
            eprintln!("depth {depth}: slowest {slowest:?}; {kinds:#?}");
            // Counted through a pool of its own: this one is closed.
            let other = Pool::builder(pgrotate::source::Static::new(cluster.url(&role)))
                .max_size(1)
                .build()
                .await
                .unwrap();
            let present = counts(&other).await;
            check_writes(&outcomes, &present);
            for kind in kinds.keys() {
                assert!(
                    kind == "Ok"
                        || kind.starts_with("Closed")
                        || kind.starts_with("OutcomeUnknown"),
                    "depth {depth}: an unclear error after close: {kind}"
                );
            }
        }
    })
    .await;
}

/// Callers that always give up early (a 2 ms deadline, statements of
/// 1 ms on the server) beside one patient caller, on one connection 128
/// deep. A given-up statement leaves its place in the pipeline at once,
/// but it is already handed to tokio-postgres, which writes it, and the
/// server runs it: the depth bounds the callers waiting, not the
/// statements on the connection. Measured (tokio-postgres's trace): in
/// ~8 s, 57,083 requests written on the one connection while the server
/// had run 2,573 of them; the patient caller's `select 1` waits behind
/// that backlog (1–48 s; bounded at 5 s here). With a connection per
/// caller (deadpool-postgres, or `pipeline_depth(1)`) a caller that gives
/// up leaves at most its own statement behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_giving_up_in_a_loop_do_not_bury_a_patient_caller() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "hsbury", 1, 128, |b| b).await;
        pool.batch_execute("create sequence ran").await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let given_up = Arc::new(AtomicU64::new(0));
        let impatient = spawn_tasks(32, |_| {
            let (pool, stop, given_up) = (pool.clone(), stop.clone(), given_up.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let call = pool.query_one("select nextval('ran') from pg_sleep(0.001)", &[]);
                    if tokio::time::timeout(Duration::from_millis(2), call)
                        .await
                        .is_err()
                    {
                        given_up.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let mut worst = Duration::ZERO;
        let mut waits = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let t = std::time::Instant::now();
            let call = pool.query_one("select 1::int4", &[]);
            let answered = tokio::time::timeout(Duration::from_secs(5), call).await;
            worst = worst.max(t.elapsed());
            waits.push(t.elapsed());
            match answered {
                Ok(r) => drop(r.unwrap()),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        impatient.outcomes().await;
        let given_up = given_up.load(Ordering::Relaxed);
        // The backlog the abandoned statements left: the next statement
        // waits behind it.
        let backlog_started = std::time::Instant::now();
        let ran_then: i64 = pool
            .query_one("select last_value from ran", &[])
            .await
            .unwrap()
            .get(0);
        let ran: i64 = pool
            .query_one("select last_value from ran", &[])
            .await
            .unwrap()
            .get(0);
        eprintln!(
            "patient caller: {} calls, worst {worst:?}, waits {:?}; {given_up} statements \
             given up, {ran_then} run by the server when the load stopped, {ran} when the \
             next statement got its answer {:?} later",
            waits.len(),
            &waits[..waits.len().min(8)],
            backlog_started.elapsed()
        );
        drop(role);
        assert!(
            worst < Duration::from_secs(1),
            "the patient caller waited {worst:?} behind abandoned statements"
        );
    })
    .await;
}

/// On a pool of one connection, 200 times: a `get()` client starts a
/// request, polled once (`futures::poll!`) and dropped with its client —
/// a text `insert` (tokio-postgres prepares it first), a prepared `insert`
/// (sent in that poll) or a `BEGIN; insert` (a block, sent in that poll) —
/// then the next callers: four pipelined writes, a `get()` that must find
/// its session outside any block, and a `transaction` (whose `COMMIT`
/// would commit a block inherited unseen). Every next caller's write is
/// there once; the dropped insert at most once; the dropped block's row
/// never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_request_polled_once_and_dropped_never_leaks_into_the_next_callers() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "hspoll", 1, 16, |b| b).await;
        let mut maybe = Vec::new();
        let mut never = Vec::new();
        let mut next = Vec::new();
        for i in 0..200i32 {
            {
                let client = pool.get().await.unwrap();
                match i % 3 {
                    0 => {
                        let sql = format!("insert into t values ({i})");
                        let mut f = std::pin::pin!(client.execute(sql.as_str(), &[]));
                        let _ = futures::poll!(f.as_mut());
                        maybe.push(i);
                    }
                    1 => {
                        let stmt = client
                            .prepare_cached("insert into t values ($1)")
                            .await
                            .unwrap();
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
                        let mut f = std::pin::pin!(client.execute(&stmt, &params));
                        let _ = futures::poll!(f.as_mut());
                        maybe.push(i);
                    }
                    _ => {
                        let sql = format!("begin; insert into t values ({i})");
                        let mut f = std::pin::pin!(client.batch_execute(&sql));
                        let _ = futures::poll!(f.as_mut());
                        never.push(i);
                    }
                }
            }
            let writes = spawn_tasks(4, |j| {
                let pool = pool.clone();
                async move {
                    let k = 10_000 + i * 10 + j as i32;
                    (k, pool.execute("insert into t values ($1)", &[&k]).await)
                }
            });
            for (k, r) in writes.outcomes().await {
                assert_eq!(r.unwrap_or_else(|e| panic!("round {i}: {e:#}")), 1);
                next.push(k);
            }
            let client = pool.get().await.unwrap();
            assert!(
                outside_a_block(&client).await,
                "round {i}: inherited a block"
            );
            drop(client);
            let k = 100_000 + i;
            pool.transaction(async |tx| tx.execute("insert into t values ($1)", &[&k]).await)
                .await
                .unwrap_or_else(|e| panic!("round {i}: {e:#}"));
            next.push(k);
        }
        let other = Pool::builder(pgrotate::source::Static::new(cluster.url(&role)))
            .max_size(1)
            .build()
            .await
            .unwrap();
        let present = counts(&other).await;
        for k in &next {
            assert_eq!(present.get(k), Some(&1), "a next caller's write {k}");
        }
        for k in &maybe {
            assert!(
                present.get(k).copied().unwrap_or(0) <= 1,
                "dropped insert {k} twice"
            );
        }
        for k in &never {
            assert_eq!(
                present.get(k),
                None,
                "the dropped block's row {k} was committed"
            );
        }
        let applied = maybe.iter().filter(|k| present.contains_key(k)).count();
        eprintln!(
            "{} dropped inserts, {applied} of them applied; {} dropped blocks; {:?}",
            maybe.len(),
            never.len(),
            pool.status()
        );
    })
    .await;
}

/// 1 MB parameters pipelined among small statements on one connection,
/// the connection terminated while they are in flight, three times: each
/// small caller gets its own value, each big write is there once with its
/// bytes intact if `Ok`, and no caller sees an error other than an
/// unknown outcome the server left unsaid ([`UNKNOWN_THROUGH_A_TERMINATE`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_parameters_among_small_statements_survive_a_terminate() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "hsbigp", 1, 128, |b| b).await;
        pool.batch_execute("create table big (k int not null, v text not null)")
            .await
            .unwrap();
        let mut big_outcomes = Vec::new();
        let mut errors = Vec::new();
        let mut unknown_calls = 0;
        for round in 0..3 {
            let callers = spawn_tasks(64, |i| {
                let pool = pool.clone();
                async move {
                    let k = round * 100 + i as i32;
                    if i % 8 == 0 {
                        let v: String =
                            std::iter::repeat_n(char::from(b'a' + (i % 26) as u8), 1 << 20)
                                .collect();
                        let r = pool
                            .execute("insert into big values ($1, $2)", &[&k, &v])
                            .await;
                        (k, true, Outcome::of(r))
                    } else {
                        let r = pool
                            .query_one("select $1::int4, length($2::text)", &[&k, &"small"])
                            .await
                            .map(|row| {
                                assert_eq!(row.get::<_, i32>(0), k, "another caller's row");
                                1
                            });
                        (k, false, Outcome::of(r))
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(30)).await;
            cluster.terminate_backends(&role.name).await.unwrap();
            for (k, big, o) in callers.outcomes().await {
                match &o {
                    // What the server never said (see UNKNOWN_THROUGH_A_TERMINATE).
                    Outcome::Err(ErrorKind::OutcomeUnknown, _, _) => unknown_calls += 1,
                    Outcome::Err(_, _, e) => errors.push(format!("round {round} key {k}: {e}")),
                    _ => {}
                }
                if big {
                    big_outcomes.push((k, o));
                }
            }
        }
        let rows = pool
            .query(
                "select k, count(*), bool_and(v = repeat(chr(97 + (k % 100) % 26), 1048576)) \
                 from big group by k",
                &[],
            )
            .await
            .unwrap();
        let mut present = HashMap::new();
        for r in &rows {
            let (k, n, intact): (i32, i64, bool) = (r.get(0), r.get(1), r.get(2));
            assert!(intact, "key {k}: its bytes changed");
            present.insert(k, n);
        }
        let [ok, unknown, _, other] = check_writes(&big_outcomes, &present);
        eprintln!(
            "{ok} big writes Ok, {unknown} unknown, {other} other; {unknown_calls} calls of 192 \
             unknown; {} retries; errors {:?}",
            pool.status().retries,
            &errors[..errors.len().min(3)]
        );
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    })
    .await;
}

/// `query_typed` pipelined: the same SQL with different parameter types
/// (each its own prepared statement on the shared connection), callers
/// interleaved, a terminate in the middle: every caller gets its own
/// value, of its own type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_typed_pipelined_with_mixed_types_gives_each_caller_its_own_typed_answer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "hstyped", 1, 64, |b| b).await;
        for round in 0..3 {
            let callers = spawn_tasks(96, |i| {
                let pool = pool.clone();
                async move {
                    let v = (round * 1000 + i) as i64;
                    let r = match i % 3 {
                        0 => pool
                            .query_typed("select $1", &[(&v, Type::INT8)])
                            .await
                            .map(|rows| rows[0].get::<_, i64>(0) == v),
                        1 => {
                            let s = v.to_string();
                            pool.query_typed("select $1", &[(&s, Type::TEXT)])
                                .await
                                .map(|rows| rows[0].get::<_, String>(0) == s)
                        }
                        _ => {
                            let n = v as i32;
                            pool.query_typed("select $1, pg_typeof($1)::text", &[(&n, Type::INT4)])
                                .await
                                .map(|rows| {
                                    rows[0].get::<_, i32>(0) == n
                                        && rows[0].get::<_, String>(1) == "integer"
                                })
                        }
                    };
                    (i, r.map_err(|e| format!("{e:#}")))
                }
            });
            if round == 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                cluster.terminate_backends(&role.name).await.unwrap();
            }
            for (i, r) in callers.outcomes().await {
                assert_eq!(r, Ok(true), "round {round}, caller {i}");
            }
        }
        // A wrong type is the caller's own error, not retried, and harms
        // nobody.
        let e = pool
            .query_typed("select $1::int4 + 1", &[(&"x", Type::TEXT)])
            .await
            .unwrap_err();
        assert!(e.is_callers_error(), "{e:#}");
        let rows = pool
            .query_typed("select $1", &[(&5i64, Type::INT8)])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 5);
    })
    .await;
}

/// 2,000 callers at once on one connection 1,024 deep (the deepest
/// allowed), half of them writing, the connection terminated once while
/// they are in flight: every reader gets its own value, every write `Ok`
/// is there once, an unknown one at most once, and no caller sees any
/// other error ([`UNKNOWN_THROUGH_A_TERMINATE`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_callers_on_one_connection_1024_deep_through_a_terminate() {
    log_from_env();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, _file, pool) = pool_with_table(cluster, "hs2000", 1, 1024, |b| b).await;
        let done = Arc::new(AtomicU64::new(0));
        let callers = spawn_tasks(2000, |i| {
            let (pool, done) = (pool.clone(), done.clone());
            async move {
                let k = i as i32;
                let r = if i % 2 == 0 {
                    pool.execute("insert into t values ($1)", &[&k]).await
                } else {
                    pool.query_one("select $1::int4", &[&k]).await.map(|row| {
                        assert_eq!(row.get::<_, i32>(0), k, "another caller's row");
                        1
                    })
                };
                done.fetch_add(1, Ordering::Relaxed);
                (k, i % 2 == 0, Outcome::of(r))
            }
        });
        wait_until(async || done.load(Ordering::Relaxed) >= 300).await;
        cluster.terminate_backends(&role.name).await.unwrap();
        let mut writes = Vec::new();
        let mut errors = Vec::new();
        for (k, write, o) in callers.outcomes().await {
            match &o {
                // What the server never said (see UNKNOWN_THROUGH_A_TERMINATE).
                Outcome::Err(ErrorKind::OutcomeUnknown, _, _) => {}
                Outcome::Err(_, _, e) => errors.push(format!("key {k}: {e}")),
                _ => {}
            }
            if write {
                writes.push((k, o));
            }
        }
        let present = counts(&pool).await;
        let [ok, unknown, _, other] = check_writes(&writes, &present);
        eprintln!(
            "{ok} writes Ok, {unknown} unknown, {other} other; {} retries; {} errors {:?}",
            pool.status().retries,
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    })
    .await;
}

/// `DISCARD ALL` (or `DEALLOCATE ALL`) sent as a pool-level statement
/// drops every prepared statement of the session — the shared
/// connection's, which the pool prepared once and keeps in the
/// connection's statement cache for every caller. It is not refused (as
/// `SET`, `RESET` and `LISTEN` are); afterwards, do the other callers'
/// statements on that connection still work?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discard_all_sent_as_a_pool_level_statement_harms_no_other_caller() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let mut failures = Vec::new();
        for sql in ["discard all", "deallocate all"] {
            let prefix = format!("hs{}", sql.replace(' ', ""));
            let (_role, _file, pool) = pool_with_table(cluster, &prefix, 1, 16, |b| b).await;
            pool.execute("insert into t values ($1)", &[&1i32])
                .await
                .unwrap();
            pool.query_one("select $1::int4", &[&1i32]).await.unwrap();
            let discard = pool.execute(sql, &[]).await;
            let mut errors = Vec::new();
            for k in 2..12i32 {
                if let Err(e) = pool.execute("insert into t values ($1)", &[&k]).await {
                    errors.push(format!("{:?} {:?}: {e}", e.kind(), e.code()));
                }
                if let Err(e) = pool.query_one("select $1::int4", &[&k]).await {
                    errors.push(format!("{:?} {:?}: {e}", e.kind(), e.code()));
                }
            }
            eprintln!(
                "{sql}: {:?}; {} errors after it: {:?}",
                discard.as_ref().map_err(|e| format!("{e:#}")),
                errors.len(),
                &errors[..errors.len().min(2)]
            );
            if discard.is_ok() && !errors.is_empty() {
                failures.push(format!(
                    "{sql} accepted, then {} of 20 statements failed",
                    errors.len()
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:?}");
    })
    .await;
}

/// A `SET` with a comment before it (as SQL commenters and ORMs tag
/// statements) is a `SET` all the same: the refusal reads the first word,
/// so the setting goes through and every other caller on the shared
/// connection runs with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_a_leading_comment_never_reaches_other_callers() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, _file, pool) = pool_with_table(cluster, "hscomment", 1, 16, |b| b).await;
        let mut leaked = Vec::new();
        for (sql, name) in [
            ("/* app=web */ SET application_name = 'leaked1'", "leaked1"),
            ("-- app=web\nSET application_name = 'leaked2'", "leaked2"),
        ] {
            let r = pool.execute(sql, &[]).await;
            let seen: String = pool
                .query_one("select current_setting('application_name')", &[])
                .await
                .unwrap()
                .get(0);
            eprintln!(
                "{sql:?}: {:?}; the next caller sees {seen:?}",
                r.map_err(|e| e.kind())
            );
            if seen == name {
                leaked.push(sql);
            }
        }
        assert!(leaked.is_empty(), "leaked to the next caller: {leaked:?}");
    })
    .await;
}
