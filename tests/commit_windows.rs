//! Every window of a transaction, cut for real by the fault proxy between
//! the pool and PostgreSQL: before BEGIN, mid-transaction, COMMIT dropped
//! before the server sees it, COMMIT applied and its answer lost, after
//! COMMIT's answer; then 1,000 transactions under random cuts; then a
//! blackholed connection abandoned within its bound. Matching protocol
//! messages needs plaintext, so these pools ask for it by name.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::bounded;
use pgrotate::{ErrorKind, Pool, RetryPolicy, SslMode, source};
use pgrotate_testing::{Action, Cluster, FaultProxy};

struct Setup {
    proxy: FaultProxy,
    pool: Pool,
}

async fn setup(prefix: &str, size: usize, policy: RetryPolicy) -> Setup {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role(prefix).await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let pool = Pool::builder(source::Static::new(proxy.url(&role)))
        .sslmode(SslMode::Disable)
        .max_size(size)
        .retry(policy)
        .build()
        .await
        .unwrap();
    pool.run(async |c| {
        c.batch_execute("create table t (k int primary key, v int not null default 0)")
            .await
    })
    .await
    .unwrap();
    Setup { proxy, pool }
}

async fn rows(pool: &Pool, k: i32) -> i64 {
    pool.run(async |c| {
        c.query_one("select count(*) from t where k = $1", &[&k])
            .await?
            .try_get(0)
    })
    .await
    .unwrap()
}

fn is(sql: &'static str) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |q: &str| q.trim().eq_ignore_ascii_case(sql)
}

async fn insert(pool: &Pool, k: i32, runs: &AtomicU32) -> Result<(), pgrotate::Error> {
    pool.transaction(async |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        tx.execute("insert into t (k) values ($1)", &[&k]).await?;
        tx.execute("update t set v = v + 1 where k = $1", &[&k])
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_of_a_transaction_gives_its_documented_outcome() {
    bounded(async {
        let s = setup("win", 2, RetryPolicy::default()).await;

        // 1. BEGIN (tokio-postgres sends START TRANSACTION) never reaches
        //    the server: retried, applied once.
        s.proxy
            .on_query(is("START TRANSACTION"), Action::DropAndCut);
        let runs = AtomicU32::new(0);
        insert(&s.pool, 1, &runs).await.unwrap();
        assert_eq!(
            (rows(&s.pool, 1).await, runs.load(Ordering::SeqCst)),
            (1, 1)
        );

        // 2. Cut mid-transaction (the UPDATE never arrives): the server rolls
        //    back, the whole transaction runs again, applied once.
        s.proxy
            .on_query(|q| q.starts_with("update t set v"), Action::DropAndCut);
        let runs = AtomicU32::new(0);
        insert(&s.pool, 2, &runs).await.unwrap();
        assert_eq!(
            (rows(&s.pool, 2).await, runs.load(Ordering::SeqCst)),
            (1, 2)
        );

        // 3. COMMIT dropped before the server sees it: unknown to the
        //    caller, and in fact not committed. Never retried.
        s.proxy.on_query(is("COMMIT"), Action::DropAndCut);
        let runs = AtomicU32::new(0);
        let err = insert(&s.pool, 3, &runs).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitOutcomeUnknown, "{err}");
        assert!(
            format!("{err:#}").contains("after COMMIT was sent"),
            "{err}"
        );
        assert_eq!(
            (rows(&s.pool, 3).await, runs.load(Ordering::SeqCst)),
            (0, 1)
        );

        // 4. COMMIT applied, its answer lost: unknown to the caller, and in
        //    fact committed. Never retried (a retry would duplicate it).
        s.proxy.on_query(is("COMMIT"), Action::ForwardThenCut);
        let runs = AtomicU32::new(0);
        let err = insert(&s.pool, 4, &runs).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitOutcomeUnknown, "{err}");
        assert_eq!(
            (rows(&s.pool, 4).await, runs.load(Ordering::SeqCst)),
            (1, 1)
        );

        // 5. Cut after COMMIT's answer: the call succeeded; the cut only
        //    costs the next call a fresh connection.
        let runs = AtomicU32::new(0);
        insert(&s.pool, 5, &runs).await.unwrap();
        s.proxy.reset_all();
        let runs2 = AtomicU32::new(0);
        insert(&s.pool, 6, &runs2).await.unwrap();
        assert_eq!((rows(&s.pool, 5).await, rows(&s.pool, 6).await), (1, 1));
        assert_eq!(s.proxy.events().matched, 4, "every window was really cut");
        assert_eq!(s.proxy.events().dropped_and_cut, 3);
        assert_eq!(s.proxy.events().forwarded_and_cut, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_transactions_under_random_cuts_are_never_applied_twice_or_lost_silently() {
    bounded(async {
        let policy = RetryPolicy::default()
            .attempts(20)
            .backoff(Duration::from_millis(1), Duration::from_millis(20));
        let s = setup("chaos", 8, policy).await;
        // 4% of the statements a transaction sends (BEGIN, INSERT, UPDATE,
        // COMMIT) are cut: half dropped, half applied with the answer lost.
        common::random_cuts(&s.proxy, 42, 0.02, |m| {
            let Some(sql) = m.sql else { return false };
            let ours = sql.starts_with("insert into t (k)")
                || sql.starts_with("update t set v")
                || sql.eq_ignore_ascii_case("START TRANSACTION")
                || sql.eq_ignore_ascii_case("COMMIT");
            ours && matches!(m.tag, b'Q' | b'E')
        });
        const N: i32 = 1000;
        let next = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, next) = (s.pool.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst) as i32;
                    if k >= N {
                        break;
                    }
                    let r = pool
                        .transaction(async move |tx| {
                            tx.execute("insert into t (k) values ($1)", &[&k]).await?;
                            tx.execute("update t set v = v + 1 where k = $1", &[&k])
                                .await?;
                            Ok::<_, tokio_postgres::Error>(())
                        })
                        .await;
                    outcomes.push((k, r.map_err(|e| e.kind())));
                }
                outcomes
            }));
        }
        let mut outcome = HashMap::new();
        for t in tasks {
            outcome.extend(t.await.unwrap());
        }
        s.proxy.clear_faults();
        let present: HashMap<i32, i32> = s
            .pool
            .run(async |c| {
                let rows = c.query("select k, v from t", &[]).await?;
                rows.iter()
                    .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })
            .await
            .unwrap();

        let mut unknown = 0;
        for k in 0..N {
            match outcome[&k] {
                Ok(()) => assert_eq!(
                    present.get(&k),
                    Some(&1),
                    "key {k}: Ok but not applied exactly once"
                ),
                Err(ErrorKind::CommitOutcomeUnknown) => {
                    unknown += 1;
                    assert!(matches!(present.get(&k), None | Some(&1)), "key {k}")
                }
                Err(kind) => assert!(!present.contains_key(&k), "key {k}: {kind:?} yet present"),
            }
        }
        let events = s.proxy.events();
        assert!(
            events.dropped_and_cut + events.forwarded_and_cut > 50,
            "{events:?}"
        );
        eprintln!(
            "1,000 transactions: {} cuts, {} CommitOutcomeUnknown, {} other errors, {} retries",
            events.dropped_and_cut + events.forwarded_and_cut,
            unknown,
            outcome
                .values()
                .filter(|r| matches!(r, Err(k) if *k != ErrorKind::CommitOutcomeUnknown))
                .count(),
            s.pool.status().retries
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_connection_is_abandoned_within_the_bound() {
    bounded(async {
        let bound = Duration::from_millis(500);
        let s = setup(
            "hole",
            1,
            RetryPolicy::default().attempt_timeout(Some(bound)),
        )
        .await;
        assert_eq!(s.proxy.open_connections().len(), 1);
        // A partition of the one live connection: nothing is forwarded and
        // nothing is closed.
        for c in s.proxy.open_connections() {
            c.blackhole(true);
        }
        let started = Instant::now();
        let n: i64 = s
            .pool
            .run(async |c| c.query_one("select 42::int8", &[]).await?.try_get(0))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(n, 42);
        assert!(took >= bound, "it did wait for the bound ({took:?})");
        assert!(
            took < bound * 4,
            "and moved on to a new connection soon after ({took:?})"
        );
        assert_eq!(s.pool.status().connections_opened, 2);
    })
    .await;
}
