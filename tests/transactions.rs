//! `Pool::transaction` against a real PostgreSQL: retried only while COMMIT
//! was not sent, the caller's errors returned as they are, and futures
//! dropped at any point leave no connection idle in a transaction.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{bounded, role_file_and_pool};
use pgrotate::{ErrorKind, Pool, RetryPolicy};
use pgrotate_testing::{Cluster, TestRole};
use tokio::sync::{mpsc, oneshot};

async fn pool_with_table(
    cluster: &Cluster,
    prefix: &str,
    size: usize,
) -> (Pool, TestRole, common::UrlFile) {
    let (role, file, pool) = role_file_and_pool(cluster, prefix, size).await;
    pool.run(async |c| {
        c.batch_execute("create table if not exists t (k int primary key, attempt int)")
            .await
    })
    .await
    .unwrap();
    (pool, role, file)
}

async fn count(pool: &Pool, sql: &str) -> i64 {
    pool.run(async |c| c.query_one(sql, &[]).await?.try_get(0))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_is_terminated_mid_way_runs_again_once() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, role, _file) = pool_with_table(cluster, "tx_term", 2).await;
        let attempts = Arc::new(AtomicU32::new(0));
        let (inside_tx, mut inside_rx) = mpsc::unbounded_channel::<u32>();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let go_rx = Arc::new(tokio::sync::Mutex::new(Some(go_rx)));

        let call = {
            let (pool, attempts) = (pool.clone(), attempts.clone());
            tokio::spawn(async move {
                pool.transaction(async move |tx| {
                    let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                    tx.execute("insert into t values (1, $1)", &[&(n as i32)])
                        .await?;
                    let _ = inside_tx.send(n);
                    let go = go_rx.lock().await.take();
                    if let Some(go) = go {
                        // First attempt: wait while the test ends the backend.
                        let _ = go.await;
                    }
                    tx.execute("update t set attempt = attempt where k = 1", &[])
                        .await?;
                    Ok::<_, tokio_postgres::Error>(n)
                })
                .await
            })
        };
        assert_eq!(inside_rx.recv().await, Some(1));
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);
        go_tx.send(()).unwrap();

        let committed_attempt = call.await.unwrap().unwrap();
        assert_eq!(committed_attempt, 2, "the whole transaction ran again");
        assert_eq!(count(&pool, "select count(*) from t").await, 1);
        assert_eq!(
            count(&pool, "select attempt::int8 from t where k = 1").await,
            2,
            "only the second attempt's row exists: the first was rolled back"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_own_error_rolls_back_and_is_returned_once() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "tx_own", 1).await;
        pool.transaction(async |tx| tx.execute("insert into t values (7, 0)", &[]).await)
            .await
            .unwrap();

        let runs = AtomicU32::new(0);
        let err = pool
            .transaction(async |tx| {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.execute("insert into t values (8, 0)", &[]).await?;
                tx.execute("insert into t values (7, 0)", &[]).await
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Query);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        );
        assert!(format!("{err:#}").contains("duplicate key"), "{err}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "never retried");
        assert_eq!(count(&pool, "select count(*) from t where k = 8").await, 0);
        // The one connection went back clean: the next transaction works.
        pool.transaction(async |tx| tx.execute("insert into t values (9, 0)", &[]).await)
            .await
            .unwrap();
        assert_eq!(pool.status().size, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_are_retried_only_when_asked() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "tx_ser", 2).await;
        let failing_once = async |retry: bool| {
            let runs = AtomicU32::new(0);
            let policy = RetryPolicy::default().retry_serialization_failures(retry);
            let r = pool
                .transaction_with(&policy, async |tx| {
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        // A real 40001 raised by the server.
                        tx.batch_execute(
                            "do $$ begin raise exception using errcode = 'serialization_failure'; end $$",
                        )
                        .await?;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
                .await;
            (r, runs.load(Ordering::SeqCst))
        };
        let (r, runs) = failing_once(false).await;
        assert_eq!(runs, 1);
        assert_eq!(
            r.unwrap_err().code(),
            Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
        );
        let (r, runs) = failing_once(true).await;
        assert!(r.is_ok());
        assert_eq!(runs, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_dropped_at_random_points_leave_no_connection_idle_in_transaction() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, role, _file) = pool_with_table(cluster, "tx_drop", 4).await;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut dropped = 0;
        for i in 0..200i32 {
            let cut = Duration::from_micros(rng.u64(0..3_000));
            let pool2 = pool.clone();
            let work = async move {
                if i % 2 == 0 {
                    pool2
                        .transaction(async |tx| {
                            tx.execute(
                                "insert into t values ($1, 0) on conflict do nothing",
                                &[&i],
                            )
                            .await?;
                            tx.execute("select pg_sleep(0.001)", &[]).await?;
                            Ok::<_, tokio_postgres::Error>(())
                        })
                        .await
                } else {
                    pool2
                        .run(async |c| {
                            // A transaction by hand, statement by statement:
                            // dropped between BEGIN and COMMIT, the
                            // connection must not go back to the pool.
                            c.batch_execute("begin").await?;
                            c.batch_execute("select pg_sleep(0.001)").await?;
                            c.batch_execute("commit").await
                        })
                        .await
                }
            };
            if tokio::time::timeout(cut, work).await.is_err() {
                dropped += 1;
            }
        }
        assert!(
            dropped > 20,
            "the test must really drop futures mid-work ({dropped})"
        );
        // Every connection the pool still holds is clean, and the server has
        // no session of this role left idle in a transaction.
        assert_eq!(common::idle_in_transaction(cluster, &role.name).await, 0);
        // And the pool hands out working connections.
        for _ in 0..8 {
            pool.transaction(async |tx| tx.execute("select 1", &[]).await)
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dropped_inside_a_transaction_closes_its_connection() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, role, _file) = pool_with_table(cluster, "tx_cancel", 1).await;
        assert_eq!(pool.status().size, 1);
        let (began_tx, began_rx) = oneshot::channel::<()>();
        let began_tx = std::sync::Mutex::new(Some(began_tx));
        let work = pool.run(async |c| {
            c.batch_execute("begin; insert into t values (42, 0)")
                .await?;
            if let Some(tx) = began_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::future::pending::<()>().await;
            c.batch_execute("commit").await
        });
        tokio::select! {
            _ = work => panic!("the work never finishes on its own"),
            _ = began_rx => {} // dropped here, inside the transaction
        }
        // Not returned to the pool: closed, so the server rolls back.
        assert_eq!(pool.status().size, 0, "{:?}", pool.status());
        common::wait_until(async || cluster.connection_count(&role.name).await.unwrap() == 0).await;
        assert_eq!(count(&pool, "select count(*) from t where k = 42").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_terminated_at_commit_before_it_took_effect_is_rerun_and_applied_once() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "tx_commit57", 2).await;
        // A deferred constraint trigger runs inside COMMIT, before the commit
        // record: on the first COMMIT only (a sequence is not rolled back) it
        // terminates its own session for real, so the server answers COMMIT
        // with 57P01 and nothing is committed.
        pool.batch_execute(&common::terminate_once_at_commit(
            "true",
            "perform pg_sleep(1);",
        ))
        .await
        .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let seen = runs.clone();
        pool.transaction(async move |tx| {
            seen.fetch_add(1, Ordering::SeqCst);
            tx.execute("insert into t values (7, 1)", &[]).await
        })
        .await
        .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the first COMMIT was answered 57P01: rerun"
        );
        let n: i64 = pool
            .query_one("select count(*) from t where k = 7", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "applied exactly once");
    })
    .await;
}
