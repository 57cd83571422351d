//! Through a real PgBouncer in transaction mode (Heroku's connection
//! pooling): unnamed statements under load, a rotation, PgBouncer's own
//! errors classified, transactions and their COMMIT window.

mod common;

use std::time::{Duration, Instant};

use common::{UrlFile, bounded};
use pgrotate::{ErrorKind, Fault, Pool, SslMode};
use pgrotate_testing::{Action, Cluster, FaultProxy, PgBouncer, PgBouncerOptions, TestRole};

async fn bouncer(cluster: &Cluster) -> PgBouncer {
    cluster
        .start_pgbouncer(
            PgBouncerOptions::default()
                .default_pool_size(2)
                .server_login_retry(Duration::from_secs(1)),
        )
        .await
        .unwrap()
}

/// A pool in pooler mode through PgBouncer (plaintext: PgBouncer's client
/// side has no TLS here, so the pool asks for plaintext by name).
async fn pool(file: &UrlFile, size: usize) -> Pool {
    Pool::builder(file.source())
        .pooler_mode(true)
        .pooler_query_timeout(Duration::from_secs(3))
        .sslmode(SslMode::Disable)
        .pooler_retry_delay(Duration::from_secs(1))
        .max_size(size)
        .build()
        .await
        .unwrap()
}

/// 32 workers × `calls` calls of `work`; returns (ok, errors by SQLSTATE).
async fn load(pool: &Pool, calls: usize, named: bool) -> (u64, Vec<String>) {
    let mut tasks = Vec::new();
    for w in 0..32i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errs) = (0u64, Vec::new());
            for i in 0..calls as i64 {
                let n = w * 1000 + i;
                let r = if named {
                    pool.run(async move |c| {
                        c.query_one("select $1::int8", &[&n])
                            .await?
                            .try_get::<_, i64>(0)
                    })
                    .await
                } else {
                    pool.run(async move |c| {
                        c.query_typed_one(
                            "select $1::int8",
                            &[(&n, tokio_postgres::types::Type::INT8)],
                        )
                        .await?
                        .try_get::<_, i64>(0)
                    })
                    .await
                };
                match r {
                    Ok(v) if v == n => ok += 1,
                    Ok(v) => panic!("asked for {n}, got {v}"),
                    Err(e) => errs.push(
                        e.code()
                            .map_or_else(|| format!("{e:#}"), |c| c.code().to_string()),
                    ),
                }
            }
            (ok, errs)
        }));
    }
    let (mut ok, mut errs) = (0, Vec::new());
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        errs.extend(e);
    }
    (ok, errs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_work_under_load_where_named_ones_fail() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role = cluster.create_role("pgb_load").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 8).await;

        let (ok, errs) = load(&pool, 20, false).await;
        assert_eq!((ok, errs.len()), (640, 0), "{errs:?}");

        // What pgrotate's docs warn about: named statements across
        // PgBouncer's server connections.
        let (ok, errs) = load(&pool, 20, true).await;
        assert!(
            !errs.is_empty(),
            "named statements must fail through a transaction-mode pooler"
        );
        assert!(
            errs.iter().all(|c| c == "26000" || c == "42P05"),
            "{errs:?}"
        );
        eprintln!(
            "named statements through PgBouncer: {ok} ok, {} failed (26000/42P05)",
            errs.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_pgbouncer_costs_one_refetch_and_no_error() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role = cluster.create_role("pgb_rot").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 8).await;
        let (ok, errs) = load(&pool, 5, false).await;
        assert_eq!((ok, errs.len()), (160, 0));

        // On the server: new password, sessions ended. PgBouncer's client
        // sessions (the pool's connections) live on.
        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&bouncer.url(&rotated));
        cluster.terminate_backends(&role.name).await.unwrap();

        let started = Instant::now();
        let (ok, errs) = load(&pool, 10, false).await;
        assert_eq!(errs.len(), 0, "callers saw errors: {errs:?}");
        assert_eq!(ok, 320);
        let status = pool.status();
        assert_eq!(status.fetches, 2, "one refetch: {status:?}");
        eprintln!(
            "rotation through PgBouncer: {ok} calls in {:?}, {status:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_credentials_at_pgbouncer_cause_a_refetch() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role = cluster.create_role("pgb_auth").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 2).await;
        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&bouncer.url(&rotated));
        // The pool's first connect uses the old password: PgBouncer answers
        // 08P01 "SASL authentication failed", which is rejected credentials.
        let n: i64 = pool
            .run(async |c| c.query_typed_one("select 5::int8", &[]).await?.try_get(0))
            .await
            .unwrap();
        assert_eq!(n, 5);
        let status = pool.status();
        assert_eq!((status.generation, status.fetches), (2, 2), "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_failing_backs_off_without_a_refetch_storm() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role = cluster.create_role("pgb_login").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 2).await;
        let su = cluster.superuser().await.unwrap();
        // The server refuses PgBouncer's logins for this role.
        su.batch_execute(&format!("alter role {} connection limit 0", role.name))
            .await
            .unwrap();
        cluster.terminate_backends(&role.name).await.unwrap();

        // A direct look at what the pool sees: a connect to PgBouncer
        // succeeds, its first round trip fails with "server login has been
        // failing" (after PgBouncer's own first failed login).
        // PgBouncer passes the server's refusal on ("too many connections
        // for role") to the client whose arrival made it try, and tells
        // clients that wait meanwhile that its logins keep failing.
        let err = pool.get().await.unwrap_err();
        assert!(
            matches!(
                err.fault(),
                Some(Fault::TooManyConnections | Fault::PoolerUnavailable)
            ),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::Connect);
        assert!(err.is_retryable());
        assert!(
            format!("{err:#}").contains("too many connections for role")
                || format!("{err:#}").contains("server login has been failing"),
            "{err}"
        );

        // Through run: it backs off at least pooler_retry_delay between
        // attempts, never refetches, and succeeds once logins work again.
        let fetches_before = pool.status().fetches;
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = pool
                    .run(async |c| {
                        c.query_typed_one("select 9::int8", &[])
                            .await?
                            .try_get::<_, i64>(0)
                    })
                    .await;
                (r, started.elapsed())
            })
        };
        let retries_before = pool.status().retries;
        while pool.status().retries == retries_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        su.batch_execute(&format!("alter role {} connection limit -1", role.name))
            .await
            .unwrap();
        let (r, took) = call.await.unwrap();
        assert_eq!(r.unwrap(), 9);
        assert!(
            took >= Duration::from_secs(1),
            "backed off at least 1 s ({took:?})"
        );
        assert_eq!(
            pool.status().fetches,
            fetches_before,
            "no refetch for a busy pooler"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_pgbouncer_and_the_commit_window() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role: TestRole = cluster.create_role("pgb_tx").await.unwrap();
        // The fault proxy sits between the pool and PgBouncer.
        let proxy = FaultProxy::start(bouncer.addr()).await.unwrap();
        let file = UrlFile::new(&proxy.url(&role));
        let pool = pool(&file, 4).await;
        pool.transaction(async |tx| tx.batch_execute("create table t (k int primary key)").await)
            .await
            .unwrap();
        for k in 0..20 {
            pool.transaction(async move |tx| {
                tx.execute_typed(
                    "insert into t values ($1)",
                    &[(&k, tokio_postgres::types::Type::INT4)],
                )
                .await
            })
            .await
            .unwrap();
        }
        proxy.on_query(|q| q.eq_ignore_ascii_case("COMMIT"), Action::ForwardThenCut);
        let err = pool
            .transaction(async |tx| {
                tx.execute_typed(
                    "insert into t values ($1)",
                    &[(&100i32, tokio_postgres::types::Type::INT4)],
                )
                .await
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitOutcomeUnknown, "{err}");
        let n: i64 = pool
            .run(async |c| {
                c.query_typed_one("select count(*) from t", &[])
                    .await?
                    .try_get(0)
            })
            .await
            .unwrap();
        assert_eq!(n, 21, "the cut COMMIT was applied once, never retried");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pgbouncer_is_too_many_connections_not_a_lost_connection() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let mut bouncer = cluster
            .start_pgbouncer(PgBouncerOptions::default().max_client_conn(2))
            .await
            .unwrap();
        let role = cluster.create_role("bouncer_full").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 8).await;
        // Take client slots until PgBouncer refuses one.
        let mut held = Vec::new();
        let refused = loop {
            match pool.get().await {
                Ok(c) => held.push(c),
                Err(e) => break e,
            }
            assert!(
                held.len() <= 2,
                "PgBouncer admitted more than max_client_conn"
            );
        };
        assert_eq!(
            refused.fault(),
            Some(Fault::TooManyConnections),
            "{refused}"
        );
        assert!(
            format!("{refused:#}").contains("no more connections allowed"),
            "{refused}"
        );
        assert!(refused.is_retryable(), "{refused}");
        assert_eq!(pool.status().fetches, 1, "no refetch for a full pooler");
        drop(held);
        bouncer.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_pgbouncer_killed_for_running_too_long_is_not_run_again() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let mut bouncer = cluster
            .start_pgbouncer(PgBouncerOptions::default().query_timeout(Duration::from_millis(500)))
            .await
            .unwrap();
        let role = cluster.create_role("bouncer_qtimeout").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 2).await;
        let before = pool.status();
        let started = Instant::now();
        let e = pool
            .run(async |c| c.simple_query("select pg_sleep(2)").await.map(|_| ()))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("query timeout"), "{e}");
        assert_eq!(e.fault(), Some(Fault::CallersError), "{e}");
        assert_eq!(e.attempts(), None, "run once: {e}");
        assert_eq!(pool.status().retries, before.retries);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The pool goes on with a fresh connection.
        pool.run(async |c| c.simple_query("select 1").await.map(|_| ()))
            .await
            .unwrap();
        bouncer.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_level_statements_and_prepare_cached_work_through_pgbouncer() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let bouncer = bouncer(cluster).await;
        let role = cluster.create_role("pgb_stmt").await.unwrap();
        let file = UrlFile::new(&bouncer.url(&role));
        let pool = pool(&file, 8).await;
        pool.batch_execute("create table t (k int8 not null)")
            .await
            .unwrap();

        // Pool-level statements with parameters: their types learned once,
        // then unnamed statements, so PgBouncer's server connections never
        // see a named one.
        let mut tasks = Vec::new();
        for w in 0..32i64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                for i in 0..20i64 {
                    let n = w * 1000 + i;
                    match pool.query_one("select $1::int8", &[&n]).await {
                        Ok(row) => assert_eq!(row.get::<_, i64>(0), n),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                    if let Err(e) = pool.execute("insert into t values ($1)", &[&n]).await {
                        errors.push(format!("{e:#}"));
                    }
                }
                errors
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            errors.extend(t.await.unwrap());
        }
        assert!(
            errors.is_empty(),
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        let n: i64 = pool
            .query_one("select count(*) from t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 640);
        let rows: Vec<_> = {
            use futures::StreamExt;
            pool.query_raw("select k from t where k < $1", [&3i64])
                .await
                .unwrap()
                .collect()
                .await
        };
        assert_eq!(rows.len(), 3);

        // deadpool-postgres's prepare_cached inside a transaction, again and
        // again: the cache lives within one checkout, where PgBouncer keeps
        // one server connection.
        for _ in 0..20 {
            let total: i64 = pool
                .transaction(async move |tx| {
                    let stmt = tx
                        .prepare_cached("select count(*) from t where k >= $1")
                        .await?;
                    tx.query_one(&stmt, &[&0i64]).await?.try_get(0)
                })
                .await
                .unwrap();
            assert_eq!(total, 640);
        }
    })
    .await;
}
