//! A checkout fits the caller's budget, against a real server: idle
//! connections behind a blackholed network cost one ping timeout, not one
//! per connection, and never more than the wait timeout (`get`) or the
//! deadline (`run`); a URL with several hosts reaches the next one when the
//! first drops SYNs; a URL's own `connect_timeout` counts; a connect
//! refused for lack of privilege after a rotation (42501) refetches.

mod common;

use std::time::{Duration, Instant};

use common::{SynDropper, UrlFile, bounded, role_and_file, select_one};
use pgrotate::{ErrorKind, Pool, RetryPolicy};
use pgrotate_testing::{BlackholeMode, Cluster, FaultProxy};

/// A pool through the fault proxy with `n` warm idle connections.
async fn warm_pool_through_proxy(
    prefix: &str,
    n: usize,
    configure: impl FnOnce(pgrotate::PoolBuilder) -> pgrotate::PoolBuilder,
) -> (Pool, FaultProxy) {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role(prefix).await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let pool = configure(
        Pool::builder(pgrotate::source::Static::new(proxy.url(&role)))
            .max_size(n)
            .ping_after_idle(Duration::from_millis(50)),
    )
    .build()
    .await
    .unwrap();
    let held: Vec<_> = futures::future::join_all((0..n).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    // A `get()` connection goes back once its connection task had a turn.
    common::wait_until(async || pool.status().idle == n).await;
    // Idle past ping_after_idle: each would be checked before reuse.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (pool, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_behind_a_blackhole_returns_within_its_wait_timeout() {
    bounded(async {
        let (pool, proxy) = warm_pool_through_proxy("bounded_get", 4, |b| {
            b.wait_timeout(Duration::from_secs(2))
                .create_timeout(Duration::from_secs(2))
        })
        .await;
        proxy.blackhole(true);
        let started = Instant::now();
        let e = pool.get().await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "get took {took:?} with a 2 s wait timeout: {e}"
        );
        assert!(e.is_retryable(), "{e}");

        let policy = RetryPolicy::default().deadline(Duration::from_secs(2));
        let started = Instant::now();
        let e = pool
            .run_with(&policy, async |c| {
                c.simple_query("select 1").await.map(|_| ())
            })
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "run took {took:?} with a 2 s deadline: {e}"
        );
        proxy.blackhole(false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ping_that_times_out_closes_the_other_idle_connections_unchecked() {
    bounded(async {
        let ping = Duration::from_millis(500);
        let (pool, proxy) =
            warm_pool_through_proxy("bounded_ping", 4, |b| b.ping_timeout(ping)).await;
        // Existing connections hang; new ones are refused at once.
        proxy.set_blackhole_mode(BlackholeMode::Refuse);
        proxy.blackhole(true);
        let started = Instant::now();
        let e = pool.get().await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= ping && took < 2 * ping + Duration::from_millis(300),
            "one ping timeout, not four: {took:?} ({e})"
        );
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
        assert_eq!(pool.status().size, 0, "every idle connection is gone");
        proxy.blackhole(false);
        assert_eq!(select_one(&pool).await.unwrap(), 1, "and fresh ones work");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_is_reached_when_the_first_drops_syns() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("bounded_hosts").await.unwrap();
        let dropper = SynDropper::start();
        let url = cluster.url(&role).replacen(
            &format!("{}:{}", cluster.host(), cluster.port()),
            &format!(
                "127.0.0.1:{},{}:{}",
                dropper.port,
                cluster.host(),
                cluster.port()
            ),
            1,
        );
        assert!(url.contains(','), "the URL names two hosts");
        let pool = Pool::builder(pgrotate::source::Static::new(url))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(select_one(&pool).await.unwrap(), 1);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "host 1 got its second, then host 2 answered: {took:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_urls_own_connect_timeout_counts() {
    bounded(async {
        let dropper = SynDropper::start();
        let url = format!(
            "postgres://app:pw-never-used@127.0.0.1:{}/app?connect_timeout=1",
            dropper.port
        );
        let pool = Pool::builder(pgrotate::source::Static::new(url))
            .build()
            .await
            .unwrap();
        let started = Instant::now();
        let e = pool.get().await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "the URL's 1 s, not the builder's 10 s: {took:?} ({e})"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_for_lack_of_privilege_after_a_rotation_refetches() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (old, file): (_, UrlFile) = role_and_file(cluster, "bounded_revoked").await;
        let pool = Pool::builder(file.source())
            .max_size(2)
            .build()
            .await
            .unwrap();
        assert_eq!(common::current_database(&pool).await.unwrap(), old.database);

        // A platform that rotates by a new role: the old one loses CONNECT.
        let new = cluster.create_role("bounded_granted").await.unwrap();
        let admin = cluster.superuser().await.unwrap();
        admin
            .batch_execute(&format!(
                "REVOKE CONNECT ON DATABASE \"{}\" FROM \"{}\"",
                old.database, old.name
            ))
            .await
            .unwrap();
        file.set(&cluster.url(&new));
        cluster.terminate_backends(&old.name).await.unwrap();

        assert_eq!(
            common::current_database(&pool).await.unwrap(),
            new.database,
            "42501 at connect means the URL is stale"
        );
        assert_eq!(pool.status().generation, 2);
    })
    .await;
}
