//! The refetch budget under real timing: `source::HerokuApi` with its
//! default budget against the local Platform API stand-in and a real
//! PostgreSQL. A rotation right after a fetch (the build's, a watch poll,
//! an earlier rotation) recovers at once with one API request; a slow,
//! cancelled or never-answered fetch books nothing ahead and holds nothing;
//! an outage spends no request; a URL published late, 429s and 500s are
//! waited out within the callers' deadline.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::heroku_server::{ApiServer, Scripted, pool_of, role_and_server, rotate};
use common::load::Load;
use common::{UrlFile, bounded, capture_tracing, captured_logs, select_one, wait_until};
use pgrotate::source::{HerokuApi, SourceError, UrlSource};
use pgrotate::{DatabaseUrl, Pool};
use pgrotate_testing::{Cluster, TestRole};

const TOKEN: &str = "HRKU-budget-token-never-printed";
const APP: &str = "pgrotate-budget-app";
const WORKERS: usize = 8;

/// The Platform API source with every default but the address.
fn heroku(server: &ApiServer) -> HerokuApi {
    HerokuApi::new(APP, TOKEN).base_url(server.base_url())
}

/// The usual scene: a role on the shared server, the Platform API
/// stand-in serving its URL, a pool (by default with the default Heroku
/// budget), and a warmed load.
struct Scene {
    cluster: &'static Cluster,
    role: TestRole,
    server: ApiServer,
    /// Just before the pool's build (its first fetch).
    built: Instant,
    pool: Pool,
    load: Load,
}

impl Scene {
    async fn start(prefix: &str) -> Scene {
        Scene::start_with(prefix, async |server| pool_of(heroku(server), 4).await).await
    }

    /// The scene with the pool `build` makes on the stand-in.
    async fn start_with(prefix: &str, build: impl AsyncFnOnce(&ApiServer) -> Pool) -> Scene {
        let cluster = Cluster::shared().await.unwrap();
        let (role, server) = role_and_server(cluster, prefix, APP, TOKEN).await;
        let built = Instant::now();
        let pool = build(&server).await;
        let load = Load::start(&pool, WORKERS);
        load.warmed().await;
        Scene {
            cluster,
            role,
            server,
            built,
            pool,
            load,
        }
    }

    /// Rotates `role` under load, waits for the first call started after
    /// the rotation to succeed and for the pool to adopt the rotated URL,
    /// and returns (the new role, time to that first success, API requests
    /// until the adoption).
    ///
    /// Requests are counted up to the adoption, not the first success: a
    /// session still starting when `pg_terminate_backend` ran (authenticated
    /// with the old password, not yet listed in `pg_stat_activity`) survives
    /// the rotation, and a call on it succeeds before any request is made.
    async fn rotate_and_recover(&self, role: &TestRole) -> (TestRole, Duration, usize) {
        let before = self.pool.status().generation;
        let since = Instant::now();
        let new = rotate(self.cluster, role, &self.server).await;
        self.load.mark();
        let first = self.load.first_success_after_mark().await;
        wait_until(async || self.pool.status().generation > before).await;
        let requests = requests_since(&self.server, since);
        (new, first, requests)
    }
}

/// Requests the stand-in answered since `since`.
fn requests_since(server: &ApiServer, since: Instant) -> usize {
    server.seen().iter().filter(|s| s.at >= since).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_one_second_after_the_build_recovers_at_once_with_one_request() {
    capture_tracing();
    bounded(async {
        let scene = Scene::start("budget_build").await;
        // The scenario is a time: a rotation 1 s after the build's fetch.
        tokio::time::sleep_until((scene.built + Duration::from_secs(1)).into()).await;

        let (new, first, requests) = scene.rotate_and_recover(&scene.role).await;
        scene.load.stop_without_errors().await;
        assert!(
            first <= Duration::from_secs(1),
            "first success {first:?} after the rotation"
        );
        assert_eq!(requests, 1, "one API request for the rotation");
        assert_eq!(scene.pool.status().generation, 2);
        eprintln!("first success {first:?} after a rotation 1 s after the build");
        let logs = captured_logs();
        for secret in [TOKEN, &scene.role.password, &new.password] {
            assert!(!logs.contains(secret), "a secret leaked into the logs");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_one_second_after_a_watch_poll_recovers_at_once_with_one_request() {
    bounded(async {
        // A fleet of 2 shares the account: one token every 1.6 s, the
        // watch at most every 3.2 s (so a poll comes within a test's time).
        let scene = Scene::start_with("budget_watch", async |server| {
            Pool::builder(heroku(server).fleet_size(2))
                .max_size(4)
                .watch(Duration::from_secs(1))
                .build()
                .await
                .unwrap()
        })
        .await;
        let polled = scene.server.wait_for_requests(2).await[1].at;
        tokio::time::sleep_until((polled + Duration::from_secs(1)).into()).await;

        let (_new, first, requests) = scene.rotate_and_recover(&scene.role).await;
        scene.load.stop_without_errors().await;
        assert!(
            first <= Duration::from_secs(1),
            "first success {first:?} after the rotation"
        );
        assert_eq!(requests, 1, "one API request for the rotation");
        eprintln!("first success {first:?} after a rotation 1 s after a watch poll");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotations_ten_seconds_apart_cost_one_request_each() {
    bounded(async {
        let scene = Scene::start("budget_twice").await;

        let (role, first_a, requests_a) = scene.rotate_and_recover(&scene.role).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_role, first_b, requests_b) = scene.rotate_and_recover(&role).await;
        scene.load.stop_without_errors().await;
        assert_eq!((requests_a, requests_b), (1, 1));
        assert!(first_a <= Duration::from_secs(1) && first_b <= Duration::from_secs(1));
        assert_eq!(scene.pool.status().generation, 3);
        assert_eq!(
            scene.pool.status().budget.tokens,
            8 - 3,
            "{:?}",
            scene.pool.status().budget
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_a_cancelled_caller_and_a_low_account_leave_the_next_rotation_intact() {
    bounded(async {
        let scene = Scene::start("budget_slow").await;
        let (server, pool, load) = (&scene.server, &scene.pool, &scene.load);

        // Rotation A: the API takes 1.5 s to answer and says the account
        // is low; a caller gives up on its own timeout while it waits.
        server.set_delay(Duration::from_millis(1500));
        server.set_remaining(50);
        let new = rotate(scene.cluster, &scene.role, server).await;
        load.mark();
        let impatient = tokio::time::timeout(Duration::from_millis(200), select_one(pool)).await;
        assert!(
            impatient.is_err(),
            "the caller gave up while the fetch was on its way"
        );
        let first = load.first_success_after_mark().await;
        assert!(first <= Duration::from_millis(2500), "{first:?}");
        server.set_delay(Duration::ZERO);
        let status = pool.status();
        assert_eq!(
            status.budget.refill,
            Duration::from_secs(160),
            "the account is low: {status:?}"
        );

        // Rotation B right after: still one request, recovered at once.
        let (_new, first, requests) = scene.rotate_and_recover(&new).await;
        scene.load.stop_without_errors().await;
        let answered: Vec<_> = scene
            .server
            .seen()
            .iter()
            .map(|s| (s.at.duration_since(scene.built), s.status))
            .collect();
        assert_eq!(
            requests, 1,
            "requests (since the build, status): {answered:?}"
        );
        assert!(first <= Duration::from_secs(1), "{first:?}");
    })
    .await;
}

/// A user's own source without a timeout of its own: a URL file whose
/// reads can be made to hang forever.
struct Hanging {
    file: pgrotate::source::File,
    hang: Arc<AtomicBool>,
}

impl UrlSource for Hanging {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.file.fetch().await
    }
    fn describe(&self) -> String {
        "a source that can hang".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_never_answers_holds_nothing_and_the_pool_recovers_when_it_does() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("budget_hang").await.unwrap();
        let file = UrlFile::new(&cluster.url(&role));
        let hang = Arc::new(AtomicBool::new(false));
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let baseline = tasks();
        let pool = Pool::builder(Hanging {
            file: file.source(),
            hang: hang.clone(),
        })
        .max_size(4)
        .fetch_timeout(Duration::from_secs(1))
        .watch(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
        let load = Load::start(&pool, WORKERS);
        load.warmed().await;

        // Rotated while the source hangs: fetches time out, callers retry.
        hang.store(true, Ordering::SeqCst);
        let new = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&new));
        cluster.terminate_backends(&role.name).await.unwrap();
        // drain() and status() answer at once meanwhile.
        let drained = tokio::time::timeout(Duration::from_secs(1), pool.drain()).await;
        assert!(drained.is_ok(), "drain waited for a fetch");
        let _ = pool.status();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(load.errors(), 0, "callers wait within their deadline");

        // The source answers again: the pool recovers.
        hang.store(false, Ordering::SeqCst);
        load.mark();
        let first = load.first_success_after_mark().await;
        assert!(
            first <= Duration::from_secs(3),
            "recovered {first:?} after the source answered"
        );
        load.stop_without_errors().await;

        // A fetch outstanding at close: the pool's tasks end anyway.
        hang.store(true, Ordering::SeqCst);
        let stuck = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.refresh_now().await })
        };
        let closed_at = Instant::now();
        while closed_at.elapsed() < Duration::from_millis(100) {
            tokio::task::yield_now().await;
        }
        pool.close();
        assert!(
            stuck.await.unwrap().is_err(),
            "refresh_now ends with the pool"
        );
        drop(pool);
        common::wait_until(async || tasks() <= baseline).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_restart_costs_no_api_request_and_calls_resume_within_a_second() {
    bounded(async {
        let mut cluster = Cluster::start().await.unwrap();
        let (_role, server) = role_and_server(&cluster, "budget_restart", APP, TOKEN).await;
        let pool = pool_of(heroku(&server), 4).await;
        let load = Load::start(&pool, WORKERS);
        load.warmed().await;
        let before = server.seen().len();

        cluster.stop().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.start_again().await.unwrap();
        load.mark();
        let first = load.first_success_after_mark().await;
        load.stop_without_errors().await;
        assert!(
            first <= Duration::from_secs(1),
            "resumed {first:?} after the server was back"
        );
        assert_eq!(server.seen().len(), before, "no API request for an outage");
        eprintln!("resumed {first:?} after the restart");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_published_five_seconds_late_costs_callers_nothing() {
    bounded(async {
        let scene = Scene::start("budget_late").await;
        let (cluster, role, server) = (scene.cluster, &scene.role, &scene.server);

        // The password stops working; the config var follows 5 s later.
        let since = Instant::now();
        let new = cluster.rotate_password(role).await.unwrap();
        cluster.terminate_backends(&role.name).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.set_var("DATABASE_URL", Some(&cluster.url(&new)));
        scene.load.mark();
        let first = scene.load.first_success_after_mark().await;
        scene.load.stop_without_errors().await;
        let requests = requests_since(server, since);
        assert!(requests <= 7, "within the burst: {requests} requests");
        assert!(
            first <= Duration::from_secs(6),
            "{first:?} after the URL was published"
        );
        eprintln!("late URL: {requests} requests, first success {first:?} after publication");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_429s_and_three_500s_after_a_rotation_are_waited_out() {
    bounded(async {
        let scene = Scene::start("budget_429").await;

        for _ in 0..3 {
            scene.server.script(Scripted::rate_limited());
        }
        for _ in 0..3 {
            scene.server.script(Scripted::server_error());
        }
        let (_new, first, requests) = scene.rotate_and_recover(&scene.role).await;
        scene.load.stop_without_errors().await;
        let seen = scene.server.seen();
        assert_eq!(
            seen.iter().map(|s| s.status).collect::<Vec<_>>(),
            [200, 429, 429, 429, 500, 500, 500, 200],
            "no hot loop"
        );
        assert_eq!(requests, 7);
        for i in 2..=4 {
            let gap = seen[i].at.duration_since(seen[i - 1].at);
            assert!(
                gap >= Duration::from_secs(1),
                "Retry-After honoured: {gap:?}"
            );
        }
        eprintln!("429×3 + 500×3: first success {first:?} after the rotation");
    })
    .await;
}
