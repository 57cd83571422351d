//! The examples (`examples/axum_app.rs`, `examples/actix_app.rs`,
//! `examples/worker.rs`) against a real PostgreSQL, their URL in a file,
//! through two password rotations (`ALTER ROLE … PASSWORD`, the file
//! rewritten, `pg_terminate_backend`) under concurrent load: no request
//! fails, every user POSTed is there exactly once, every job is done
//! exactly once.

mod common;

// Each example brings its own copy of examples/common/mod.rs (`mod
// common;`), as when it is built alone: hence `duplicate_mod` allowed.
#[allow(dead_code, unreachable_pub, clippy::duplicate_mod)]
#[path = "../examples/axum_app.rs"]
mod axum_app;

#[allow(dead_code, unreachable_pub, clippy::duplicate_mod)]
#[path = "../examples/actix_app.rs"]
mod actix_app;

#[allow(dead_code, unreachable_pub, clippy::duplicate_mod)]
#[path = "../examples/worker.rs"]
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{UrlFile, bounded, role_and_file, wait_until};
use pgrotate::Pool;
use pgrotate_testing::{Cluster, TestRole};
use serde::{Deserialize, Serialize};

/// HTTP clients hitting the app at once.
const CLIENTS: usize = 8;
/// Successful requests to wait for before each rotation, and after the last.
const BETWEEN_ROTATIONS: u64 = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
}

#[derive(Debug, Deserialize)]
struct Health {
    size: usize,
    available: usize,
    waiting: usize,
    generation: u64,
}

fn http_client() -> reqwest::Client {
    // reqwest is built without a rustls provider (pgrotate hands its own
    // in); plain http needs none, but building a client asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn post_user(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    email: &str,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let body = serde_json::json!({ "name": name, "email": email }).to_string();
    let r = http
        .post(format!("{base}/users"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().await?.to_vec()))
}

async fn get(http: &reqwest::Client, url: String) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let r = http.get(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().await?.to_vec()))
}

/// `CLIENTS` tasks, each in a loop: POST a new user, GET it back, now and
/// then GET /healthz. Counts the 2xx answers; keeps every other answer.
struct HttpLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    posted: Arc<Mutex<Vec<User>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HttpLoad {
    fn start(base: &str) -> HttpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let posted = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..CLIENTS)
            .map(|c| {
                let (stop, ok, failures, posted) =
                    (stop.clone(), ok.clone(), failures.clone(), posted.clone());
                let base = base.to_string();
                tokio::spawn(async move {
                    let http = http_client();
                    let fail = |what: String| failures.lock().unwrap().push(what);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let (name, email) =
                            (format!("client {c}"), format!("c{c}-{n}@example.com"));
                        let user: User = match post_user(&http, &base, &name, &email).await {
                            Ok((201, body)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                serde_json::from_slice(&body).unwrap()
                            }
                            Ok((status, body)) => {
                                fail(format!(
                                    "POST {email}: {status} {}",
                                    String::from_utf8_lossy(&body)
                                ));
                                continue;
                            }
                            Err(e) => {
                                fail(format!("POST {email}: {e}"));
                                continue;
                            }
                        };
                        assert_eq!((&user.name, &user.email), (&name, &email));
                        posted.lock().unwrap().push(user.clone());
                        match get(&http, format!("{base}/users/{}", user.id)).await {
                            Ok((200, body)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let got: User = serde_json::from_slice(&body).unwrap();
                                assert_eq!(got, user);
                            }
                            Ok((status, body)) => fail(format!(
                                "GET /users/{}: {status} {}",
                                user.id,
                                String::from_utf8_lossy(&body)
                            )),
                            Err(e) => fail(format!("GET /users/{}: {e}", user.id)),
                        }
                        if n.is_multiple_of(10) {
                            match get(&http, format!("{base}/healthz")).await {
                                Ok((200, _)) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok((status, _)) => fail(format!("GET /healthz: {status}")),
                                Err(e) => fail(format!("GET /healthz: {e}")),
                            }
                        }
                    }
                })
            })
            .collect();
        HttpLoad {
            stop,
            ok,
            failures,
            posted,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    async fn succeeded_more(&self, n: u64) {
        let target = self.ok() + n;
        wait_until(async || self.ok() >= target).await;
    }

    async fn stop(self) -> (u64, Vec<String>, Vec<User>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        let posted = self.posted.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures, posted)
    }
}

/// What `heroku pg:credentials:rotate` does: the URL changes, the password
/// changes, the sessions are ended. Returns the role with its new password.
async fn rotate(cluster: &Cluster, role: &TestRole, file: &UrlFile) -> (TestRole, u64) {
    let rotated = cluster.rotate_password(role).await.unwrap();
    file.set(&cluster.url(&rotated));
    let ended = cluster.terminate_backends(&role.name).await.unwrap();
    (rotated, ended)
}

/// The checks both web apps pass: 404 for a missing user, 409 for a taken
/// email, then `CLIENTS` clients through two rotations with no failed
/// request, every POSTed user there exactly once.
async fn web_app_through_rotations(
    label: &str,
    cluster: &Cluster,
    mut role: TestRole,
    file: &UrlFile,
    pool: &Pool,
    base: &str,
) {
    let http = http_client();
    let (status, _) = get(&http, format!("{base}/users/999999999")).await.unwrap();
    assert_eq!(status, 404, "a missing user");
    let (status, _) = post_user(&http, base, "first", "dup@example.com")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (status, body) = post_user(&http, base, "second", "dup@example.com")
        .await
        .unwrap();
    assert_eq!(
        status,
        409,
        "a taken email: {}",
        String::from_utf8_lossy(&body)
    );

    let load = HttpLoad::start(base);
    load.succeeded_more(BETWEEN_ROTATIONS).await;
    for r in 1..=2 {
        let before = (load.ok(), load.failed());
        let (rotated, ended) = rotate(cluster, &role, file).await;
        role = rotated;
        load.succeeded_more(BETWEEN_ROTATIONS).await;
        eprintln!(
            "{label}: rotation {r}: {ended} backends ended at {} ok requests ({} failed); \
             {BETWEEN_ROTATIONS} more succeeded after it ({} failed so far)",
            before.0,
            before.1,
            load.failed()
        );
    }
    let (status, body) = get(&http, format!("{base}/healthz")).await.unwrap();
    assert_eq!(status, 200);
    let health: Health = serde_json::from_slice(&body).unwrap();
    let (ok, failures, posted) = load.stop().await;
    let status = pool.status();
    eprintln!(
        "{label}: {ok} requests answered 2xx, {} not, {} users POSTed, by {CLIENTS} clients; \
         healthz {health:?}; pool generation {}, {} retries, {} connections opened",
        failures.len(),
        posted.len(),
        status.generation,
        status.retries,
        status.connections_opened
    );
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert_eq!(health.generation, 3, "two rotations, two new URLs");
    assert!(health.size <= 4 && health.available <= health.size && health.waiting <= CLIENTS);

    // Every POSTed user exactly once, and nothing else.
    let rows = pool
        .query(
            "select id, email from users where email <> 'dup@example.com'",
            &[],
        )
        .await
        .unwrap();
    let mut in_table: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &rows {
        in_table.entry(r.get(1)).or_default().push(r.get(0));
    }
    assert_eq!(rows.len(), posted.len(), "as many rows as users POSTed");
    for u in &posted {
        assert_eq!(in_table.get(&u.email), Some(&vec![u.id]), "{u:?}");
    }
}

/// A JSON settings file, as an example's `PGROTATE_CONFIG` names one.
fn settings_file(json: &serde_json::Value) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json.to_string()).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_app_serves_through_two_rotations() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "ex_axum").await;
        // The example's settings from a JSON file, as PGROTATE_CONFIG names.
        let json = settings_file(&serde_json::json!({
            "source": { "kind": "file", "path": file.path() },
            "max_size": 4,
            "wait_timeout": "30s"
        }));
        let settings = axum_app::settings(json.path().to_str(), Some(HashMap::new())).unwrap();
        let pool = settings.build().await.unwrap();
        assert_eq!(pool.status().max_size, 4);
        axum_app::migrate(&pool).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(axum_app::serve(listener, pool.clone(), async {
            let _ = stopped.await;
        }));

        web_app_through_rotations("axum", cluster, role, &file, &pool, &base).await;

        // Graceful shutdown: the server returns, the pool is closed.
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(pool.is_closed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_app_serves_through_two_rotations() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "ex_actix").await;
        // The example's settings from PGROTATE__… variables alone.
        let env = HashMap::from([
            ("PGROTATE__SOURCE__KIND".to_string(), "file".to_string()),
            (
                "PGROTATE__SOURCE__PATH".to_string(),
                file.path().to_str().unwrap().to_string(),
            ),
            ("PGROTATE__MAX_SIZE".to_string(), "4".to_string()),
        ]);
        let pool = actix_app::settings(None, Some(env))
            .unwrap()
            .build()
            .await
            .unwrap();
        assert_eq!(pool.status().max_size, 4);
        actix_app::migrate(&pool).await.unwrap();

        // actix-web runs its own system: on a thread of its own, two workers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(actix_app::serve(listener, pool, 2, async {
                    let _ = stopped.await;
                }))
            })
        };

        web_app_through_rotations("actix-web", cluster, role, &file, &pool, &base).await;

        stop.send(()).unwrap();
        tokio::task::spawn_blocking(move || server.join())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(pool.is_closed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_does_every_job_once_through_two_rotations() {
    bounded(async {
        const JOBS: i64 = 3000;
        const WORKERS: i32 = 8;
        let cluster = Cluster::shared().await.unwrap();
        let (mut role, file) = role_and_file(cluster, "ex_worker").await;
        // The example's settings: a JSON file, a variable over it.
        let json = settings_file(&serde_json::json!({
            "source": { "kind": "file", "path": file.path() },
            "max_size": 2
        }));
        let env = HashMap::from([("PGROTATE__MAX_SIZE".to_string(), "4".to_string())]);
        let settings = worker::settings(json.path().to_str(), Some(env)).unwrap();
        let pool = settings.build().await.unwrap();
        assert_eq!(pool.status().max_size, 4, "the variable wins over the file");
        worker::migrate(&pool).await.unwrap();
        let payloads = (1..=JOBS).map(|i| format!("job {i}")).collect();
        assert_eq!(worker::enqueue(&pool, payloads).await.unwrap(), JOBS as u64);

        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let counts = Arc::new(worker::Counts::default());
        let workers = tokio::spawn(worker::run_workers(
            pool.clone(),
            WORKERS,
            shutdown,
            counts.clone(),
        ));
        let done = || counts.done.load(Ordering::Relaxed);
        let done_more = async |n: u64| {
            let target = done() + n;
            wait_until(async || done() >= target).await;
        };

        done_more(300).await;
        for r in 1..=2 {
            let before = done();
            let (rotated, ended) = rotate(cluster, &role, &file).await;
            role = rotated;
            done_more(300).await;
            eprintln!(
                "worker: rotation {r}: {ended} backends ended at {before} jobs done; \
                 300 more done after it ({} errors, {} commits of unknown outcome so far)",
                counts.errors.load(Ordering::Relaxed),
                counts.outcome_unknown.load(Ordering::Relaxed)
            );
        }
        assert!(done() < JOBS as u64, "the rotations came before the queue ran dry");
        wait_until(async || {
            pool.query_one("select count(*) from jobs where done_at is null", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await;
        let status = pool.status();

        // Graceful shutdown: every worker finishes, the pool is closed.
        stop.send_replace(true);
        workers.await.unwrap().unwrap();
        assert!(pool.is_closed());

        // Count from a fresh pool: every job done, each exactly once.
        let check = Pool::builder(file.source()).max_size(1).build().await.unwrap();
        let row = check
            .query_one(
                "select (select count(*) from jobs where done_at is not null and done_by is not null),
                        (select count(*) from job_results),
                        (select count(distinct job_id) from job_results),
                        (select count(*) from jobs j where (select count(*) from job_results r where r.job_id = j.id) <> 1)",
                &[],
            )
            .await
            .unwrap();
        let (jobs_done, results, distinct, not_once): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        eprintln!(
            "worker: {JOBS} jobs by {WORKERS} workers: {jobs_done} marked done, {results} results \
             for {distinct} jobs, {not_once} jobs not done exactly once; workers counted {} done, {} errors, \
             {} commits of unknown outcome; pool generation {}, {} retries",
            counts.done.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
            counts.outcome_unknown.load(Ordering::Relaxed),
            status.generation,
            status.retries
        );
        assert_eq!(jobs_done, JOBS, "no job lost");
        assert_eq!(results, JOBS, "no job done twice");
        assert_eq!(distinct, JOBS);
        assert_eq!(not_once, 0);
        assert_eq!(counts.errors.load(Ordering::Relaxed), 0, "workers saw errors");
        assert_eq!(status.generation, 3, "two rotations, two new URLs");
        check.close();
    })
    .await;
}
