//! The pool's background task: it ends with the pool, closes connections
//! past their lifetime and idle ones above `min_idle`, and `drain` closes
//! every connection open now.

mod common;

use std::time::Duration;

use common::{bounded, role_and_file, wait_until};
use pgrotate::Pool;
use pgrotate_testing::Cluster;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn the_background_task_ends_on_close_and_on_drop() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, file) = role_and_file(cluster, "bg_task").await;
        // The fixture's control connections wind down first.
        wait_until(async || alive_tasks() == 0).await;
        let before = 0;

        let pool = Pool::builder(file.source())
            .watch(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        assert_eq!(alive_tasks(), before + 1, "one background task per pool");
        pool.close();
        wait_until(async || alive_tasks() == before).await;

        let pool = Pool::builder(file.source())
            .watch(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        assert_eq!(alive_tasks(), before + 1);
        drop(pool);
        wait_until(async || alive_tasks() == before).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_after_their_lifetime_without_errors() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "lifetime").await;
        let pool = Pool::builder(file.source())
            .max_size(4)
            .max_lifetime(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        let pids = async |pool: &Pool| {
            let held = futures::future::join_all((0..4).map(|_| pool.get())).await;
            let mut pids = Vec::new();
            for c in held {
                let c = c.unwrap();
                pids.push(
                    c.query_one("select pg_backend_pid()", &[])
                        .await
                        .unwrap()
                        .get::<_, i32>(0),
                );
            }
            pids.sort();
            pids
        };
        let first = pids(&pool).await;
        // Under load, every connection is replaced once its lifetime is up.
        let mut now;
        loop {
            pool.run(async |c| c.execute("select 1", &[]).await)
                .await
                .unwrap();
            now = pids(&pool).await;
            if now.iter().all(|p| !first.contains(p)) {
                break;
            }
        }
        assert!(pool.status().connections_opened >= 8);
        assert!(cluster.connection_count(&role.name).await.unwrap() <= 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_above_min_idle_are_closed() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "idle").await;
        let pool = Pool::builder(file.source())
            .max_size(4)
            .idle_timeout(Duration::from_millis(200))
            .min_idle(1)
            .build()
            .await
            .unwrap();
        let held = futures::future::join_all((0..4).map(|_| pool.get())).await;
        drop(held);
        assert_eq!(pool.status().size, 4);
        wait_until(async || pool.status().size == 1).await;
        wait_until(async || cluster.connection_count(&role.name).await.unwrap() == 1).await;
        // min_idle stays: another idle period closes nothing more.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.status().size, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_connections_now_and_checked_out_ones_on_return() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "drain").await;
        let pool = Pool::builder(file.source())
            .max_size(3)
            .build()
            .await
            .unwrap();
        let mut held = futures::future::join_all((0..3).map(|_| pool.get())).await;
        let kept = held.pop().unwrap().unwrap();
        drop(held);
        assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 3);

        let generation = pool.drain().await;
        assert_eq!(generation, 2);
        assert_eq!(pool.status().size, 1, "idle ones closed at once");
        // Work in flight on the checked-out one finishes...
        kept.query_one("select 1", &[]).await.unwrap();
        drop(kept);
        // ...and it is closed on return.
        assert_eq!(pool.status().size, 0);
        wait_until(async || cluster.connection_count(&role.name).await.unwrap() == 0).await;
        let c = pool.get().await.unwrap();
        assert_eq!(c.generation(), 2);
    })
    .await;
}
