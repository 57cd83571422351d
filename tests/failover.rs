//! Following the database when it moves: HA failover (a streaming standby
//! promoted), `pg:promote` (another database, the old one still up), and a
//! read-only server (25006) after a failover.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    UrlFile, bounded, current_database, in_recovery, readers_after_failover, select_one, wait_until,
};
use pgrotate::{ErrorKind, Pool, RetryPolicy};
use pgrotate_testing::Cluster;
use tokio::sync::mpsc;

/// Retries sized for a failover: a stopped primary refuses connections
/// until the standby is promoted and the URL moves.
fn failover_policy() -> RetryPolicy {
    RetryPolicy::default()
        .attempts(100)
        .deadline(Duration::from_secs(30))
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_standby_under_load() {
    bounded(async {
        let mut primary = Cluster::start().await.unwrap();
        let role = primary.create_role("fo").await.unwrap();
        let standby = primary.start_standby().await.unwrap();
        let file = UrlFile::new(&primary.url(&role));
        let pool = Pool::builder(file.source())
            .max_size(8)
            .retry(failover_policy())
            .refetch_backoff_cap(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        pool.run(async |c| {
            c.batch_execute(
                "create table w (id bigserial primary key, at timestamptz default now())",
            )
            .await
        })
        .await
        .unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let read_errors = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let (moved_tx, mut moved_rx) = mpsc::unbounded_channel::<Instant>();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (pool, stop, read_errors, reads, moved_tx) = (
                pool.clone(),
                stop.clone(),
                read_errors.clone(),
                reads.clone(),
                moved_tx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut reported = false;
                while !stop.load(Ordering::Relaxed) {
                    let r = pool
                        .run(async move |c| {
                            c.query_one("select pg_is_in_recovery() is false and 1 = 1", &[])
                                .await?
                                .try_get::<_, bool>(0)
                        })
                        .await;
                    match r {
                        Ok(_) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                            if !reported && pool.status().generation >= 2 {
                                reported = true;
                                let _ = moved_tx.send(Instant::now());
                            }
                        }
                        Err(e) => {
                            eprintln!("read: {e}");
                            read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        // A writer through transaction.
        let writes_after = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pool, stop, writes_after) = (pool.clone(), stop.clone(), writes_after.clone());
            tokio::spawn(async move {
                let mut unknown = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = pool
                        .transaction(async move |tx| {
                            tx.execute("insert into w default values", &[]).await
                        })
                        .await;
                    match r {
                        Ok(_) if pool.status().generation >= 2 => {
                            writes_after.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::CommitOutcomeUnknown => unknown += 1,
                        Err(e) => panic!("write: {e}"),
                    }
                }
                unknown
            })
        };
        wait_until(async || reads.load(Ordering::Relaxed) > 500).await;
        primary.wait_replay_caught_up(&standby).await.unwrap();

        // The failover: the primary goes away, the standby is promoted, the
        // platform points the URL at it.
        primary.stop().await.unwrap();
        standby.promote().await.unwrap();
        file.set(&standby.url(&role));
        let changed = Instant::now();

        let mut first = None;
        for _ in 0..16 {
            first.get_or_insert(moved_rx.recv().await.unwrap());
        }
        let all_moved = Instant::now();
        wait_until(async || writes_after.load(Ordering::Relaxed) > 10).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let unknown = writer.await.unwrap();

        assert_eq!(
            read_errors.load(Ordering::Relaxed),
            0,
            "idempotent reads saw errors"
        );
        assert_eq!(pool.status().generation, 2);
        eprintln!(
            "failover: first success {:?} after the URL changed, all 16 readers moved after {:?}; \
             {unknown} commits with unknown outcome; status {:?}",
            first.unwrap().saturating_duration_since(changed),
            all_moved.saturating_duration_since(changed),
            pool.status()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_a_promote_and_drains_the_old_server_which_stays_up() {
    bounded(async {
        let old = Cluster::shared().await.unwrap();
        let new = Cluster::start().await.unwrap();
        let old_role = old.create_role("promote_old").await.unwrap();
        let new_role = new.create_role("promote_new").await.unwrap();
        let file = UrlFile::new(&old.url(&old_role));
        let interval = Duration::from_millis(300);
        let pool = Pool::builder(file.source())
            .max_size(4)
            .watch(interval)
            .build()
            .await
            .unwrap();
        assert_eq!(current_database(&pool).await.unwrap(), old_role.database);
        let held = pool.get().await.unwrap(); // checked out across the move
        assert!(old.connection_count(&old_role.name).await.unwrap() >= 1);

        file.set(&new.url(&new_role));
        let changed = Instant::now();
        wait_until(async || pool.status().generation == 2).await;
        let picked_up = changed.elapsed();
        // Within one interval (+10% jitter), plus the test connection made
        // before adopting (a TLS connect took over a second once on a
        // loaded 2-core machine: 3 s of slack, still far below a watch
        // that waited for a second interval of a slower schedule).
        assert!(
            picked_up < interval * 11 / 10 + Duration::from_secs(3),
            "the watch picks a change up within one interval ({picked_up:?})"
        );
        assert_eq!(current_database(&pool).await.unwrap(), new_role.database);

        // The checked-out connection was not touched; it closes on return.
        held.query_one("select 1", &[]).await.unwrap();
        drop(held);
        wait_until(async || old.connection_count(&old_role.name).await.unwrap() == 0).await;
        // The old server is still up and answering: only the pool moved.
        old.superuser()
            .await
            .unwrap()
            .simple_query("select 1")
            .await
            .unwrap();
        eprintln!("promote picked up after {picked_up:?} (watch interval {interval:?})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_that_cannot_connect_is_reported_and_not_adopted() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("watch_bad").await.unwrap();
        let file = UrlFile::new(&cluster.url(&role));
        let pool = Pool::builder(file.source())
            .watch(Duration::from_millis(100))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        assert_eq!(select_one(&pool).await.unwrap(), 1);
        let mut wrong = role.clone();
        wrong.password = "not-the-password".into();
        file.set(&cluster.url(&wrong));
        wait_until(async || pool.status().last_refresh_error.is_some()).await;
        let status = pool.status();
        let msg = status.last_refresh_error.unwrap();
        assert!(msg.contains("test connection"), "{msg}");
        assert!(msg.contains("keeping generation 1"), "{msg}");
        assert!(!msg.contains("not-the-password"), "{msg}");
        assert_eq!(status.generation, 1);
        assert_eq!(
            select_one(&pool).await.unwrap(),
            1,
            "the current URL keeps serving"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_makes_the_pool_refetch_and_move_to_the_writable_one() {
    bounded(async {
        let primary = Cluster::start().await.unwrap();
        let role = primary.create_role("ro").await.unwrap();
        let on_primary = Pool::builder(pgrotate::source::Static::new(primary.url(&role)))
            .build()
            .await
            .unwrap();
        on_primary
            .run(async |c| c.batch_execute("create table r (k int primary key)").await)
            .await
            .unwrap();
        let standby = primary.start_standby().await.unwrap();
        primary.wait_replay_caught_up(&standby).await.unwrap();

        // The URL points at the standby (as after a failover that left the
        // pool on a read-only server), then the platform fixes it.
        let file = UrlFile::new(&standby.url(&role));
        let pool = Pool::builder(file.source())
            .max_size(2)
            .build()
            .await
            .unwrap();
        let in_recovery: bool = pool
            .run(async |c| {
                c.query_one("select pg_is_in_recovery()", &[])
                    .await?
                    .try_get(0)
            })
            .await
            .unwrap();
        assert!(in_recovery);
        file.set(&primary.url(&role));

        pool.transaction(async |tx| tx.execute("insert into r values (1)", &[]).await)
            .await
            .unwrap();
        assert_eq!(pool.status().generation, 2);
        let n: i64 = on_primary
            .run(async |c| c.query_one("select count(*) from r", &[]).await?.try_get(0))
            .await
            .unwrap();
        assert_eq!(n, 1, "the write landed on the writable server");

        // With the source still pointing at a read-only server, the error
        // says so after bounded attempts.
        file.set(&standby.url(&role));
        pool.drain().await;
        let pool2 = Pool::builder(file.source())
            .retry(RetryPolicy::default().attempts(3))
            .build()
            .await
            .unwrap();
        let err = pool2
            .transaction(async |tx| tx.execute("insert into r values (2)", &[]).await)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err}"
        );
        assert_eq!(err.attempts(), Some(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_is_left_within_the_bound_for_the_promoted_standby() {
    use pgrotate_testing::FaultProxy;
    bounded(async {
        let primary = Cluster::start().await.unwrap();
        let role = primary.create_role("part").await.unwrap();
        let standby = primary.start_standby().await.unwrap();
        let proxy = FaultProxy::start(primary.addr()).await.unwrap();
        // The pool reaches the primary through the proxy, over TLS: the
        // partition is a network fault, no protocol matching needed.
        let file = UrlFile::new(&proxy.url(&role));
        let bound = Duration::from_secs(1);
        let pool = Pool::builder(file.source())
            .max_size(4)
            .retry(failover_policy().attempt_timeout(Some(bound)))
            .connect_timeout(bound)
            .build()
            .await
            .unwrap();
        assert!(!in_recovery(&pool).await.unwrap(), "on the primary");
        primary.wait_replay_caught_up(&standby).await.unwrap();

        // The platform has already failed over and points the URL at the
        // promoted standby; the old primary is cut off, not closed.
        standby.promote().await.unwrap();
        file.set(&standby.url(&role));
        proxy.blackhole(true);
        let cut = Instant::now();
        let moved = readers_after_failover(&pool, cut).await;
        assert!(
            moved < bound * 6,
            "moved within a few attempt/connect timeouts ({moved:?})"
        );
        eprintln!(
            "partition: all readers answered by the promoted standby {moved:?} after the cut"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_the_watch_could_not_test_is_adopted_at_once_when_the_current_one_fails() {
    bounded(async {
        let old = Cluster::shared().await.unwrap();
        let mut new = Cluster::start().await.unwrap();
        let old_role = old.create_role("pending_old").await.unwrap();
        let new_role = new.create_role("pending_new").await.unwrap();
        let file = UrlFile::new(&old.url(&old_role));
        // A costly source: one fetch banked, one more every 5 s; the
        // watch's poll takes the token the build's fetch left to refill.
        let pool = Pool::builder(file.source())
            .watch(Duration::from_millis(100))
            .refetch_budget(pgrotate::source::Budget::new(1, Duration::from_secs(5)).reserve(0))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        assert_eq!(current_database(&pool).await.unwrap(), old_role.database);

        // The platform moves the URL to a server still starting: the watch
        // fetches it (once the minimum interval allows) but cannot connect,
        // so it keeps the current one.
        new.stop().await.unwrap();
        file.set(&new.url(&new_role));
        wait_until(async || pool.status().last_refresh_error.is_some()).await;
        assert_eq!(pool.status().generation, 1);

        // The new server comes up and the old one refuses the pool.
        new.start_again().await.unwrap();
        old.rotate_password(&old_role).await.unwrap();
        old.terminate_backends(&old_role.name).await.unwrap();
        let started = Instant::now();
        assert_eq!(current_database(&pool).await.unwrap(), new_role.database);
        // The budget's next token is still seconds away (5 s after the
        // watch's fetch); the URL already fetched is taken at once.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "adopted the fetched URL at once ({:?})",
            started.elapsed()
        );
        assert_eq!(pool.status().generation, 2);
    })
    .await;
}
