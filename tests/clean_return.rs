//! Nothing leaks between callers and "Ok" means done, against a real
//! server: a connection comes back idle and clean or not at all (a
//! transaction left open or failed is rolled back, a request left running
//! is cancelled and its connection closed); a transaction whose closure
//! swallowed an error is reported rolled back, never as committed; the
//! caller's own `READ ONLY` transaction is not mistaken for a failover.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, role_and_file};
use futures::{FutureExt, SinkExt};
use pgrotate::{ErrorKind, Pool, PoolBuilder};
use pgrotate_testing::Cluster;

/// A pool of one connection, so the next caller gets the same one, with a
/// table `t (id int primary key)`.
async fn one_connection_pool(prefix: &str) -> (Pool, common::UrlFile) {
    let cluster = Cluster::shared().await.unwrap();
    one_connection_pool_on(cluster, prefix, |builder| builder).await
}

/// [`one_connection_pool`] on `cluster`, its builder passed through
/// `configure`.
async fn one_connection_pool_on(
    cluster: &Cluster,
    prefix: &str,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (Pool, common::UrlFile) {
    let (_role, file) = role_and_file(cluster, prefix).await;
    let pool = configure(Pool::builder(file.source()).max_size(1))
        .build()
        .await
        .unwrap();
    pool.run(async |c| c.batch_execute("create table t (id int primary key)").await)
        .await
        .unwrap();
    (pool, file)
}

/// `run` leaves a transaction open with row 42 in it; the next caller's
/// transaction commits row 43 alone.
async fn assert_an_open_transaction_left_by_run_is_not_committed(pool: &Pool) {
    pool.run(async |c| c.batch_execute("BEGIN; INSERT INTO t VALUES (42)").await)
        .await
        .unwrap();
    pool.transaction(async |tx| tx.execute("insert into t values (43)", &[]).await)
        .await
        .unwrap();
    assert_eq!(ids(pool).await, [43], "row 42 was never committed");
}

/// A transaction that inserts `new`, then swallows the duplicate-key error
/// of inserting `existing`: its error.
async fn transaction_swallowing_a_duplicate(
    pool: &Pool,
    new: i32,
    existing: i32,
) -> pgrotate::Error {
    pool.transaction(async |tx| {
        tx.execute("insert into t values ($1)", &[&new]).await?;
        let dup = tx.execute("insert into t values ($1)", &[&existing]).await;
        assert!(dup.is_err());
        Ok::<_, tokio_postgres::Error>(())
    })
    .await
    .unwrap_err()
}

async fn ids(pool: &Pool) -> Vec<i32> {
    pool.run(async |c| {
        let rows = c.query("select id from t order by id", &[]).await?;
        Ok::<_, tokio_postgres::Error>(rows.iter().map(|r| r.get(0)).collect())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_left_by_run_never_reaches_the_next_caller() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_failed").await;
        let e = pool
            .run(async |c| c.batch_execute("BEGIN; SELECT 1/0; COMMIT").await)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e}");
        // The same connection, next caller: no 25P02.
        for _ in 0..3 {
            assert_eq!(common::select_one(&pool).await.unwrap(), 1);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_left_by_run_is_never_committed_by_the_next_caller() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_open").await;
        assert_an_open_transaction_left_by_run_is_not_committed(&pool).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_left_by_get_never_reaches_the_next_caller() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_get").await;
        let client = pool.get().await.unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (42)")
            .await
            .unwrap();
        drop(client);
        let client = pool.get().await.unwrap();
        client
            .execute("insert into t values (43)", &[])
            .await
            .unwrap();
        drop(client);
        assert_eq!(ids(&pool).await, [43]);
        let client = pool.get().await.unwrap();
        let e = client.batch_execute("BEGIN; SELECT 1/0").await.unwrap_err();
        assert!(e.as_db_error().is_some());
        drop(client);
        assert_eq!(common::select_one(&pool).await.unwrap(), 1, "no 25P02");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_client_dropped_mid_query_is_not_inherited_and_its_query_is_cancelled() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "clean_dropped").await;
        let pool = Pool::builder(file.source())
            .max_size(1)
            .application_name("clean_dropped")
            .build()
            .await
            .unwrap();
        let client = pool.get().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            client.simple_query("select pg_sleep(5)"),
        )
        .await;
        assert!(gave_up.is_err());
        drop(client);

        let started = Instant::now();
        assert_eq!(common::select_one(&pool).await.unwrap(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the next caller waited {:?} for the abandoned query",
            started.elapsed()
        );
        // The server does not run the abandoned sleep to its end either.
        common::wait_until(async || {
            let running = "query like '%pg_sleep(5)%' and state = 'active'";
            common::count_sessions(cluster, &role.name, running).await == 0
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "cancelled, not run to its end"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_closure_swallowed_an_error_is_reported_rolled_back() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_swallow").await;
        pool.run(async |c| c.execute("insert into t values (1)", &[]).await)
            .await
            .unwrap();
        // A duplicate key, swallowed.
        let e = transaction_swallowing_a_duplicate(&pool, 2, 1).await;
        assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
        assert!(!e.is_retryable());
        assert!(format!("{e:#}").contains("nothing was committed"), "{e}");
        assert_eq!(
            ids(&pool).await,
            [1],
            "row 2 is not there, and no one said it was"
        );

        // A savepoint misused: the failure inside it is never rolled back to.
        let e = pool
            .transaction(async |tx| {
                tx.execute("insert into t values (3)", &[]).await?;
                tx.batch_execute("SAVEPOINT a").await?;
                let _ = tx.execute("insert into t values (1)", &[]).await;
                let _ = tx.batch_execute("RELEASE SAVEPOINT a").await;
                Ok::<_, tokio_postgres::Error>(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
        assert_eq!(ids(&pool).await, [1]);

        // Used rightly, a savepoint keeps the rest of the transaction.
        pool.transaction(async |tx| {
            tx.execute("insert into t values (4)", &[]).await?;
            tx.batch_execute("SAVEPOINT a").await?;
            let _ = tx.execute("insert into t values (1)", &[]).await;
            tx.batch_execute("ROLLBACK TO SAVEPOINT a").await?;
            Ok::<_, tokio_postgres::Error>(())
        })
        .await
        .unwrap();
        assert_eq!(ids(&pool).await, [1, 4]);
        assert_eq!(pool.status().retries, 0, "never retried");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_own_read_only_transaction_is_its_error_not_a_failover() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_readonly").await;
        let before = pool.status();
        let e = pool
            .transaction(async |tx| {
                tx.batch_execute("SET TRANSACTION READ ONLY").await?;
                tx.execute("insert into t values (1)", &[]).await
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        assert_eq!(e.kind(), ErrorKind::Query, "{e}");
        let e = pool
            .run(async |c| {
                c.batch_execute("BEGIN READ ONLY; INSERT INTO t VALUES (2); COMMIT")
                    .await
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e}");
        let after = pool.status();
        assert_eq!(after.fetches, before.fetches, "no refetch: {after:?}");
        assert_eq!(after.retries, before.retries, "no retry: {after:?}");
        assert_eq!(after.connections_opened, before.connections_opened);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_releases_its_locks_when_its_connection_comes_back() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "clean_locks").await;
        let pool = Pool::builder(file.source())
            .max_size(2)
            .build()
            .await
            .unwrap();
        pool.run(async |c| {
            c.batch_execute(
                "create table t (id int primary key, v int); insert into t values (1, 0)",
            )
            .await
        })
        .await
        .unwrap();
        let other = pool.get().await.unwrap();
        pool.run(async |c| {
            c.batch_execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
                .await
        })
        .await
        .unwrap();
        // The other caller is not blocked by a lock held in the pool.
        let updated = tokio::time::timeout(
            Duration::from_secs(5),
            other.execute("update t set v = 2 where id = 1", &[]),
        )
        .await
        .expect("blocked by a transaction left open in the pool")
        .unwrap();
        assert_eq!(updated, 1);
        assert_eq!(common::idle_in_transaction(cluster, &role.name).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_used_for_copy_in_is_reused() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_copy").await;
        for i in 0..3 {
            let client = pool.get().await.unwrap();
            let sink = client.copy_in("copy t (id) from stdin").await.unwrap();
            futures::pin_mut!(sink);
            sink.send(bytes_line(i)).await.unwrap();
            assert_eq!(sink.finish().await.unwrap(), 1);
        }
        pool.transaction(async |tx| {
            let sink = tx.copy_in("copy t (id) from stdin").await?;
            futures::pin_mut!(sink);
            sink.send(bytes_line(3)).await?;
            sink.finish().await.map(|_| ())
        })
        .await
        .unwrap();
        assert_eq!(ids(&pool).await, [0, 1, 2, 3]);
        assert_eq!(pool.status().connections_opened, 1, "never reconnected");
    })
    .await;
}

fn bytes_line(i: i32) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(format!("{i}\n").into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_closure_that_ends_the_transaction_itself_is_told_what_became_of_it() {
    bounded(async {
        let (pool, _file) = one_connection_pool("clean_selfend").await;
        let e = pool
            .transaction(async |tx| {
                tx.execute("insert into t values (5)", &[]).await?;
                tx.batch_execute("ROLLBACK").await
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
        assert!(ids(&pool).await.is_empty());

        // COMMIT inside, then the connection dies: never run again.
        let runs = std::sync::atomic::AtomicU32::new(0);
        let r = pool
            .transaction(async |tx| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tx.execute("insert into t values (6)", &[]).await?;
                tx.batch_execute("COMMIT").await?;
                tx.batch_execute("select pg_terminate_backend(pg_backend_pid())")
                    .await
            })
            .await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not run twice"
        );
        assert_eq!(ids(&pool).await, [6]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_plaintext_prefer_connections_come_back_clean_too() {
    bounded(async {
        let cluster = Cluster::builder().ssl(false).start().await.unwrap();
        let (pool, _file) = one_connection_pool_on(&cluster, "clean_prefer", |builder| {
            builder.sslmode(pgrotate::SslMode::Prefer)
        })
        .await;
        assert_an_open_transaction_left_by_run_is_not_committed(&pool).await;
        let e = transaction_swallowing_a_duplicate(&pool, 44, 43).await;
        assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_read_write_is_honoured_over_plaintext() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("clean_tsa").await.unwrap();
        cluster
            .superuser()
            .await
            .unwrap()
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" SET default_transaction_read_only = on",
                role.name
            ))
            .await
            .unwrap();
        let url = format!("{}?target_session_attrs=read-write", cluster.url(&role));
        let pool = Pool::builder(pgrotate::source::Static::new(url))
            .sslmode(pgrotate::SslMode::Disable)
            .build()
            .await
            .unwrap();
        let e = pool.get().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "no read-write host: {e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_polled_once_and_dropped_on_a_get_client_never_swallows_the_next_callers_writes() {
    bounded(async {
        let (pool, file) = one_connection_pool("clean_polled_once").await;
        for k in 0..50 {
            {
                let client = pool.get().await.unwrap();
                // Polled once — the request is queued inside tokio-postgres,
                // maybe not yet written — then dropped with its client.
                let _ = client.batch_execute("BEGIN").now_or_never();
            }
            pool.execute("insert into t values ($1)", &[&k])
                .await
                .unwrap();
        }
        // Seen from another pool: every write committed, none left inside
        // a transaction the abandoned BEGIN opened.
        let other = Pool::builder(file.source()).build().await.unwrap();
        assert_eq!(ids(&other).await, (0..50).collect::<Vec<i32>>());
    })
    .await;
}
