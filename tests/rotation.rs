//! A password rotation (`ALTER ROLE ... PASSWORD` + `pg_terminate_backend`,
//! what `heroku pg:credentials:rotate` does) against a real PostgreSQL over
//! TLS: callers see no error and the process is not restarted.

mod common;

use std::time::{Duration, Instant};

use common::load::Load;
use common::{bounded, capture_tracing, captured_logs, role_and_file, select_one};
use pgrotate::{ErrorKind, Pool};
use pgrotate_testing::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_through_run_loses_no_call_and_leaks_no_secret() {
    capture_tracing();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_load").await;
        let old_password = role.password.clone();
        let pool = Pool::builder(file.source()).max_size(8).build().await.unwrap();

        const WORKERS: usize = 32;
        let load = Load::start(&pool, WORKERS);
        load.warmed().await;
        assert_eq!(pool.status().generation, 1);

        // What `heroku pg:credentials:rotate` does: the config var changes,
        // the password changes, the connections are reset.
        let new_role = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&new_role));
        let source_changed = Instant::now();
        let terminated = cluster.terminate_backends(&role.name).await.unwrap();
        // Until the server ends the old sessions they keep working; the
        // pool has to act from here on.
        let cut = load.mark();
        assert!(terminated >= 1, "the rotation must end live connections");

        load.all_succeeded_after_mark().await;
        let first = load.first_success_after_mark().await;
        let (calls, errors) = load.stop().await;

        let status = pool.status();
        assert_eq!(errors, 0, "callers saw errors");
        assert_eq!(status.generation, 2, "{status:?}");
        assert_eq!(status.refreshes, 1, "one new URL, one refresh: {status:?}");
        assert_eq!(
            status.fetches, 2,
            "32 callers failing at once cause one fetch: {status:?}"
        );
        assert!(
            first < Duration::from_secs(1),
            "first success {first:?} after the old sessions were cut"
        );
        assert!(
            cluster.connection_count(&role.name).await.unwrap() <= 8,
            "the pool never holds more than max_size connections"
        );

        // Nothing printed anywhere holds either password.
        let err = Pool::builder(pgrotate::source::Static::new(format!(
            "postgres://{}:{}@127.0.0.1:1/x?sslmode=bogus",
            role.name, new_role.password
        )))
        .build()
        .await
        .unwrap_err();
        let printed = format!(
            "{}\n{:?}\n{:?}\n{:?}\n{}\n{err:#}\n{err:?}",
            captured_logs(),
            pool,
            pool.status(),
            pgrotate::DatabaseUrl::parse(cluster.url(&new_role)).unwrap(),
            pgrotate::DatabaseUrl::parse(cluster.url(&new_role)).unwrap(),
        );
        assert!(
            printed.contains("adopted a new database URL"),
            "the capture must see pgrotate's events"
        );
        for secret in [&old_password, &new_role.password] {
            if let Some(at) = printed.find(secret.as_str()) {
                let from = printed[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                panic!(
                    "a password leaked into logs, Debug, Display or an error: ...{}<PASSWORD>...",
                    &printed[from..at]
                );
            }
        }
        eprintln!(
            "rotation under load: {} calls, first success {:?} after the cut ({:?} after the source changed), {} retries",
            calls,
            first,
            first + cut.duration_since(source_changed),
            status.retries
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_failing_at_once_cause_one_fetch() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_flight").await;
        let pool = Pool::builder(file.source())
            .max_size(64)
            .build()
            .await
            .unwrap();
        // 64 live connections, all idle.
        let held: Vec<_> = futures_join(64, |_| pool.get()).await;
        drop(held);
        assert_eq!(pool.status().size, 64);

        let new_role = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&new_role));
        cluster.terminate_backends(&role.name).await.unwrap();

        let results = futures_join(64, |_| select_one(&pool)).await;
        for r in &results {
            assert_eq!(*r, 1);
        }
        let status = pool.status();
        assert_eq!(status.fetches, 2, "initial fetch + one refetch: {status:?}");
        assert_eq!(status.generation, 2);
    })
    .await;
}

/// Runs `n` calls concurrently on the current task and unwraps their
/// results.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, pgrotate::Error>>,
{
    futures::future::join_all((0..n).map(f))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_during_a_rotation_waits_then_succeeds() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_get").await;
        let pool = Pool::builder(file.source())
            .max_size(2)
            .build()
            .await
            .unwrap();
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();

        // A caller waits: the pool is full.
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let c = pool.get().await?;
                let n: i64 = c
                    .query_one("select 7::int8", &[])
                    .await
                    .unwrap_or_else(|e| panic!("query on the handed-out connection: {e}"))
                    .get(0);
                Ok::<_, pgrotate::Error>((n, c.generation()))
            })
        };
        while pool.status().waiting == 0 {
            tokio::task::yield_now().await;
        }

        let new_role = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&new_role));
        cluster.terminate_backends(&role.name).await.unwrap();
        // The holders' connections are dead; they find out and give them back.
        for c in [a, b] {
            assert!(c.query_one("select 1", &[]).await.is_err());
            drop(c);
        }
        let (n, generation) = waiter.await.unwrap().unwrap();
        assert_eq!((n, generation), (7, 2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_name_is_followed() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_user").await;
        let pool = Pool::builder(file.source())
            .max_size(4)
            .build()
            .await
            .unwrap();
        assert_eq!(select_one(&pool).await.unwrap(), 1);

        let replacement = cluster.replace_role(&role).await.unwrap();
        assert_ne!(replacement.name, role.name);
        file.set(&cluster.url(&replacement));

        let who: String = pool
            .run(async |c| {
                c.query_one("select current_user::text", &[])
                    .await?
                    .try_get(0)
            })
            .await
            .unwrap();
        assert_eq!(who, replacement.name);
        assert_eq!(pool.status().generation, 2);
        assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_reconnect_with_the_same_credentials_without_a_refetch() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_term").await;
        let pool = Pool::builder(file.source())
            .max_size(4)
            .build()
            .await
            .unwrap();
        let held: Vec<_> = futures_join(4, |_| pool.get()).await;
        drop(held);
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 4);

        let results = futures_join(8, |_| select_one(&pool)).await;
        assert!(results.iter().all(|n| *n == 1));
        let status = pool.status();
        assert_eq!(status.fetches, 1, "no refetch: {status:?}");
        assert_eq!(status.generation, 1);
        assert!(status.connections_opened > 4, "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_still_wrong_are_retried_until_the_deadline_then_end_in_a_clear_error() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "rot_wrong").await;
        let deadline = Duration::from_secs(3);
        let pool = Pool::builder(file.source())
            .max_size(1)
            .create_timeout(deadline)
            .build()
            .await
            .unwrap();
        assert_eq!(select_one(&pool).await.unwrap(), 1);
        let before = pool.status();

        // Rotated on the server, but the source still serves the old URL.
        cluster.rotate_password(&role).await.unwrap();
        cluster.terminate_backends(&role.name).await.unwrap();

        let started = Instant::now();
        let err = select_one(&pool).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::CredentialsRejected, "{err}");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
        );
        let msg = format!("{err:#}");
        assert!(msg.contains("password authentication failed"), "{msg}");
        assert!(
            msg.contains("still returns the URL that failed") && msg.contains("next request in"),
            "the error says the source is the problem, and when it is asked again: {msg}"
        );
        // Bounded by time, not a count: fetches on the backoff's schedule
        // (0, then 0.25–0.5, 0.5–1, 1–2 s apart) until the deadline — or
        // as soon as the next one would come after it.
        assert!(
            took >= Duration::from_millis(500) && took <= deadline + Duration::from_secs(1),
            "gave up after {took:?}"
        );
        let after = pool.status();
        let fetches = after.fetches - before.fetches;
        assert!((2..=5).contains(&fetches), "no hot loop: {after:?}");
        assert!(
            after.connect_attempts - before.connect_attempts <= fetches + 1,
            "one connect per fetch: {after:?}"
        );
        eprintln!("gave up after {took:?}, {fetches} fetches");
    })
    .await;
}
