//! The deadpool-postgres client API on pgrotate's pool, against a real
//! server: `prepare_cached` and its statement cache, `Status`'s deadpool
//! fields, closures returning the application's own error, the
//! `after_connect` hook across a rotation, transaction options.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{bounded, role_and_file};
use pgrotate::{ErrorKind, Pool, TransactionOptions, WorkError};
use pgrotate_testing::Cluster;
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

async fn pool_with_table(
    cluster: &Cluster,
    prefix: &str,
) -> (Pool, pgrotate_testing::TestRole, common::UrlFile) {
    let (role, file) = role_and_file(cluster, prefix).await;
    let pool = Pool::builder(file.source())
        .max_size(2)
        .build()
        .await
        .unwrap();
    pool.batch_execute(
        "create table accounts (id int8 primary key, balance int8 not null);
         insert into accounts values (1, 5), (2, 0);
         create table users (email text primary key)",
    )
    .await
    .unwrap();
    (pool, role, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_postgres_handler_compiles_unchanged_and_reuses_its_cached_statement() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "cached").await;

        // Written exactly as for deadpool-postgres.
        let prepared = async |client: &pgrotate::Client| -> i64 {
            // The simple protocol: no statement of its own in the count.
            let rows = client
                .simple_query("select count(*) from pg_prepared_statements")
                .await
                .unwrap();
            match &rows[1] {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
                other => panic!("{other:?}"),
            }
        };
        {
            let client = pool.get().await.unwrap();
            let stmt = client
                .prepare_cached("select balance from accounts where id = $1")
                .await
                .unwrap();
            let balance: i64 = client.query_one(&stmt, &[&1i64]).await.unwrap().get(0);
            assert_eq!(balance, 5);
            client
                .prepare_cached("select balance from accounts where id = $1")
                .await
                .unwrap();
            assert_eq!(client.statement_cache.size(), 1);
            assert_eq!(prepared(&client).await, 1, "the second call hit the cache");
        }
        // The same connection comes back (LIFO) with its cache.
        let mut client = pool.get().await.unwrap();
        client
            .prepare_cached("select balance from accounts where id = $1")
            .await
            .unwrap();
        assert_eq!(
            prepared(&client).await,
            1,
            "the cache belongs to the connection"
        );

        let tx = client.transaction().await.unwrap();
        let update = tx
            .prepare_cached("update accounts set balance = balance + 1 where id = $1")
            .await
            .unwrap();
        tx.execute(&update, &[&2i64]).await.unwrap();
        tx.commit().await.unwrap();

        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .unwrap();
        let level: String = tx
            .query_one("show transaction_isolation", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(level, "repeatable read");
        tx.prepare_cached("select balance from accounts where id = $1")
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(client.statement_cache.size(), 2);
        assert_eq!(
            prepared(&client).await,
            2,
            "the transaction shared the cache"
        );
        drop(client);

        // Through `run` and `transaction`, the closures get the same API.
        let balance: i64 = pool
            .run(async move |c| {
                let stmt = c
                    .prepare_cached("select balance from accounts where id = $1")
                    .await?;
                c.query_one(&stmt, &[&2i64]).await?.try_get(0)
            })
            .await
            .unwrap();
        assert_eq!(balance, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_has_deadpools_fields_with_deadpools_meanings() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "status").await;
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let s = pool.status();
        assert_eq!((s.max_size, s.size, s.available, s.waiting), (2, 2, 0, 0));
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(|c| c.generation()) })
        };
        common::wait_until(async || pool.status().waiting == 1).await;
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
        drop(b);
        // A `get()` client goes back after its connection task's turn.
        common::wait_until(async || pool.status().available == 2).await;
        let s = pool.status();
        assert_eq!((s.size, s.available, s.waiting), (2, 2, 0));
        assert_eq!(s.idle, s.available);
    })
    .await;
}

/// An application's error type, as a web app has one.
#[derive(Debug)]
enum AppError {
    Db(pgrotate::Error),
    Refused(&'static str),
}

impl From<pgrotate::Error> for AppError {
    fn from(e: pgrotate::Error) -> AppError {
        AppError::Db(e)
    }
}

impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> AppError {
        AppError::Db(e.into())
    }
}

impl WorkError for AppError {
    fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            AppError::Db(e) => e.as_postgres(),
            AppError::Refused(_) => None,
        }
    }
}

impl AppError {
    /// What a web app answers.
    fn status(&self) -> u16 {
        match self {
            AppError::Refused(_) => 422,
            AppError::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => 409,
            AppError::Db(e) if e.is_callers_error() => 400,
            AppError::Db(e) if e.is_unavailable() => 503,
            AppError::Db(_) => 500,
        }
    }
}

async fn transfer(pool: &Pool, amount: i64, runs: Arc<AtomicU32>) -> Result<(), AppError> {
    pool.transaction(async move |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        let row = tx
            .query_one(
                "update accounts set balance = balance - $1 where id = 1 returning balance",
                &[&amount],
            )
            .await?;
        if row.get::<_, i64>(0) < 0 {
            return Err(AppError::Refused("insufficient funds"));
        }
        tx.execute(
            "update accounts set balance = balance + $1 where id = 2",
            &[&amount],
        )
        .await?;
        Ok(())
    })
    .await
}

async fn balances(pool: &Pool) -> (i64, i64) {
    let rows = pool
        .query("select balance from accounts order by id", &[])
        .await
        .unwrap();
    (rows[0].get(0), rows[1].get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_error_rolls_the_transaction_back_and_comes_back_unchanged() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "apperr").await;

        let runs = Arc::new(AtomicU32::new(0));
        let r = transfer(&pool, 10, runs.clone()).await;
        assert!(
            matches!(r, Err(AppError::Refused("insufficient funds"))),
            "{r:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "never retried");
        assert_eq!(
            balances(&pool).await,
            (5, 0),
            "rolled back: no negative balance"
        );

        transfer(&pool, 3, runs.clone()).await.unwrap();
        assert_eq!(balances(&pool).await, (2, 3));

        // A duplicate key stays a 409, not a 503.
        let signup = async |email: &'static str| {
            pool.transaction(async move |tx| {
                tx.execute("insert into users values ($1)", &[&email])
                    .await?;
                Ok::<_, AppError>(())
            })
            .await
        };
        signup("a@example.com").await.unwrap();
        let e = signup("a@example.com").await.unwrap_err();
        assert_eq!(e.status(), 409, "{e:?}");
        let AppError::Db(db) = &e else { unreachable!() };
        assert!(db.is_callers_error() && !db.is_unavailable(), "{db}");

        // The pool's own failure reaches the app in its type too.
        pool.close();
        let e = signup("b@example.com").await.unwrap_err();
        assert_eq!(e.status(), 503, "{e:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_error_holding_a_terminated_connection_is_retried_on_a_fresh_one() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "appretry").await;
        let runs = Arc::new(AtomicU32::new(0));
        let seen = runs.clone();
        let r: Result<i64, AppError> = pool
            .transaction(async move |tx| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                tx.execute(
                    "update accounts set balance = balance + 100 where id = 2",
                    &[],
                )
                .await?;
                if n == 0 {
                    // The first attempt's backend is terminated for real, in
                    // the middle of the transaction.
                    tx.execute("select pg_terminate_backend(pg_backend_pid())", &[])
                        .await?;
                }
                let row = tx
                    .query_one("select balance from accounts where id = 2", &[])
                    .await?;
                Ok::<_, AppError>(row.get(0))
            })
            .await;
        assert_eq!(r.unwrap(), 100, "applied once, by the second attempt");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(balances(&pool).await, (5, 100));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_connect_hook_runs_on_every_new_connection_across_a_rotation() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "hook").await;
        let hooked = Arc::new(AtomicU32::new(0));
        let count = hooked.clone();
        let pool = Pool::builder(file.source())
            .max_size(2)
            .after_connect(move |c| {
                let count = count.clone();
                Box::pin(async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    c.batch_execute("SET statement_timeout = '4321ms'").await
                })
            })
            .build()
            .await
            .unwrap();
        let timeout = async || -> String {
            pool.query_one("show statement_timeout", &[])
                .await
                .unwrap()
                .get(0)
        };
        assert_eq!(timeout().await, "4321ms");

        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&rotated));
        cluster.terminate_backends(&role.name).await.unwrap();
        assert_eq!(
            timeout().await,
            "4321ms",
            "the new generation's connection ran it too"
        );
        assert_eq!(pool.status().generation, 2);
        assert_eq!(
            u64::from(hooked.load(Ordering::SeqCst)),
            pool.status().connections_opened
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_after_connect_hook_fails_the_checkout_with_the_servers_words() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "badhook").await;
        let pool = Pool::builder(file.source())
            .after_connect(|c| {
                Box::pin(async move { c.batch_execute("SET no_such_setting = 1").await })
            })
            .build()
            .await
            .unwrap();
        let e = pool.query_one("select 1", &[]).await.unwrap_err();
        let shown = format!("{e:#} {e:?}");
        assert_eq!(e.kind(), ErrorKind::Query, "{shown}");
        assert!(e.is_callers_error() && !e.is_retryable(), "{shown}");
        assert!(shown.contains("after_connect hook"), "{shown}");
        assert!(shown.contains("no_such_setting"), "{shown}");
        assert!(!shown.contains(&role.password), "no secret: {shown}");
        assert_eq!(
            pool.status().connect_attempts,
            1,
            "not retried: every connection would fail"
        );
        assert_eq!(pool.status().size, 0, "the connection was not kept");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_options_set_isolation_and_read_only() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (pool, _role, _file) = pool_with_table(cluster, "txopts").await;
        let serializable = TransactionOptions::new().isolation_level(IsolationLevel::Serializable);
        let level: String = pool
            .transaction_with_options(&serializable, async move |tx| {
                tx.query_one("show transaction_isolation", &[])
                    .await?
                    .try_get(0)
            })
            .await
            .unwrap();
        assert_eq!(level, "serializable");

        let runs = Arc::new(AtomicU32::new(0));
        let seen = runs.clone();
        let read_only = TransactionOptions::new().read_only(true);
        let e = pool
            .transaction_with_options(&read_only, async move |tx| {
                seen.fetch_add(1, Ordering::SeqCst);
                tx.execute("update accounts set balance = 0", &[]).await
            })
            .await
            .unwrap_err();
        // 25006 in the caller's own READ ONLY transaction on a primary: the
        // caller's error, not a standby to move away from.
        assert_eq!(e.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(pool.status().generation, 1, "no refetch");
        assert_eq!(balances(&pool).await, (5, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_leaves_a_transaction_open_fails_instead_of_hiding_every_write_in_it() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, file) = role_and_file(cluster, "hookbegin").await;
        let pool = Pool::builder(file.source())
            .after_connect(|c| Box::pin(async move { c.batch_execute("BEGIN").await }))
            .build()
            .await
            .unwrap();
        let e = pool.execute("select 1", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        assert!(format!("{e}").contains("left a transaction open"), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_panics_is_an_error_not_a_panic() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, file) = role_and_file(cluster, "hookpanic").await;
        let pool = Pool::builder(file.source())
            .after_connect(|_c| Box::pin(async move { panic!("the hook's own bug") }))
            .build()
            .await
            .unwrap();
        let e = pool.execute("select 1", &[]).await.unwrap_err();
        assert!(
            format!("{e}").contains("after_connect hook panicked"),
            "{e}"
        );
        assert_eq!(pool.status().size, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_hangs_is_bounded_and_its_backend_is_not_left_running() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "hookhang").await;
        let pool = Pool::builder(file.source())
            .wait_timeout(std::time::Duration::from_millis(500))
            .create_timeout(std::time::Duration::from_millis(500))
            .after_connect(|c| {
                Box::pin(async move { c.batch_execute("select pg_sleep(3600)").await })
            })
            .build()
            .await
            .unwrap();
        for _ in 0..3 {
            let e = pool.get().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e:#}");
        }
        // Each hook's statement is cancelled and its connection closed: no
        // backend of the role stays behind holding a slot.
        common::wait_until(async || common::count_sessions(cluster, &role.name, "true").await == 0)
            .await;
    })
    .await;
}
