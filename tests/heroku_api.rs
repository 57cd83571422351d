//! `source::HerokuApi` against a local stand-in of the Platform API's
//! config-vars endpoint (`common::heroku_server`), and end to end against a
//! real PostgreSQL: a rotation costs one API request however many callers
//! fail; 429, 5xx, timeouts, bad bodies, missing vars and refused tokens end
//! in errors a user can act on; `If-None-Match` / 304 keep the generation;
//! neither the token nor a password is ever printed.

mod common;

use std::time::{Duration, Instant};

use common::heroku_server::{ApiServer, Scripted, Seen, pool_of, role_and_server, rotate};
use common::load::Load;
use common::{bounded, capture_tracing, captured_logs, select_one};
use pgrotate::source::{Budget, HerokuApi, HerokuCli, SourceErrorKind};
use pgrotate::{ErrorKind, Pool};
use pgrotate_testing::Cluster;

/// Every token these tests use: none may ever be printed.
const TOKEN: &str = "HRKU-5f0c2b9e-token-never-printed";
const WRONG_TOKEN: &str = "HRKU-0000dead-wrong-token-never-printed";
const APP: &str = "pgrotate-test-app";
/// A URL the fake server serves when no PostgreSQL is needed (the pool
/// fetches at build and on refresh_now; it connects only on `get`).
const FAKE_URL: &str = "postgres://app:fakepw-never-printed@127.0.0.1:1/app";
const FAKE_URL_2: &str = "postgres://app:fakepw2-never-printed@127.0.0.1:1/app";
/// A generous budget for tests about answers, not pacing.
const ROOMY: Budget = Budget::new(20, Duration::from_millis(50));

fn api(server: &ApiServer) -> HerokuApi {
    HerokuApi::new(APP, TOKEN)
        .base_url(server.base_url())
        .budget(ROOMY)
}

/// The stand-in serving [`FAKE_URL`], and a pool built on it.
async fn fake_pool() -> (ApiServer, Pool) {
    let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
    let pool = Pool::builder(api(&server)).build().await.unwrap();
    (server, pool)
}

fn source_kind(e: &pgrotate::Error) -> SourceErrorKind {
    assert_eq!(e.kind(), ErrorKind::Source, "{e}");
    e.as_source_error()
        .unwrap_or_else(|| panic!("no SourceError behind {e}"))
        .kind()
}

/// Panics, showing the text before it, when a secret is in `printed`.
fn assert_no_secret(printed: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(at) = printed.find(secret) {
            let from = printed[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "a secret leaked into logs, Debug, Display or an error: ...{}<SECRET>...",
                &printed[from..at]
            );
        }
    }
}

fn assert_nothing_leaked(extra: &[&str]) {
    let logs = captured_logs();
    let mut secrets = vec![
        TOKEN,
        WRONG_TOKEN,
        "fakepw-never-printed",
        "fakepw2-never-printed",
    ];
    secrets.extend_from_slice(extra);
    assert_no_secret(&logs, &secrets);
}

fn gap(seen: &[Seen], i: usize) -> Duration {
    seen[i].at.duration_since(seen[i - 1].at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_costs_one_api_request_and_callers_see_no_error() {
    capture_tracing();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, server) = role_and_server(cluster, "heroku_e2e", APP, TOKEN).await;
        server.set_var("REDIS_URL", Some("redis://h:redispw-never-printed@r:6379"));
        let pool = pool_of(api(&server), 8).await;

        const WORKERS: usize = 24;
        let load = Load::start(&pool, WORKERS);
        load.warmed().await;
        assert_eq!(server.seen().len(), 1, "only the fetch at build so far");

        // `heroku pg:credentials:rotate`: the config var changes, the
        // password changes, the connections are reset.
        let new_role = rotate(cluster, &role, &server).await;
        load.mark();
        load.all_succeeded_after_mark().await;
        load.stop_without_errors().await;

        let status = pool.status();
        assert_eq!(status.generation, 2, "{status:?}");
        let seen = server.seen();
        assert_eq!(
            seen.len(),
            2,
            "{WORKERS} callers failing at once cost one API request: {seen:#?}"
        );
        for s in &seen {
            assert_eq!(s.method, "GET");
            assert_eq!(s.path, format!("/apps/{APP}/config-vars"));
            assert_eq!(
                s.accept.as_deref(),
                Some("application/vnd.heroku+json; version=3")
            );
            assert!(s.has_authorization);
            assert!(
                s.user_agent
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("pgrotate/"),
                "{s:?}"
            );
            assert_eq!(s.status, 200);
        }
        assert_eq!(seen[0].if_none_match, None);
        assert_eq!(
            seen[1].if_none_match, seen[0].etag,
            "the refetch is conditional"
        );

        let printed = format!("{pool:?} {:?} {}", pool.status(), server.base_url());
        assert_no_secret(&printed, &[TOKEN, &role.password, &new_role.password]);
        assert!(
            captured_logs().contains("adopted a new database URL")
                && captured_logs().contains("GET config-vars"),
            "the capture must see pgrotate's events, the source's included"
        );
        assert_nothing_leaked(&[&role.password, &new_role.password, "redispw-never-printed"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_during_a_rotation_is_waited_out_and_callers_see_no_error() {
    capture_tracing();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, server) = role_and_server(cluster, "heroku_429", APP, TOKEN).await;
        let pool = pool_of(api(&server), 4).await;
        let results = futures::future::join_all((0..8).map(|_| select_one(&pool))).await;
        assert!(results.iter().all(|r| matches!(r, Ok(1))));

        // Nothing fetches until the callers below: the 429 is queued first.
        server.script(Scripted::rate_limited());
        let new_role = rotate(cluster, &role, &server).await;

        let results = futures::future::join_all((0..8).map(|_| select_one(&pool))).await;
        for r in &results {
            assert!(matches!(r, Ok(1)), "{r:?}");
        }
        let seen = server.seen();
        assert_eq!(
            seen.iter().map(|s| s.status).collect::<Vec<_>>(),
            [200, 429, 200],
            "{seen:#?}"
        );
        assert!(
            gap(&seen, 2) >= Duration::from_secs(1),
            "Retry-After: 1 honoured, waited {:?}",
            gap(&seen, 2)
        );
        assert_eq!(pool.status().generation, 2);
        assert_nothing_leaked(&[&role.password, &new_role.password]);
    })
    .await;
}

#[tokio::test]
async fn a_429_is_a_rate_limit_error_and_the_next_fetch_waits_for_retry_after() {
    capture_tracing();
    bounded(async {
        let (server, pool) = fake_pool().await;
        server.script(Scripted::rate_limited());
        server.set_var("DATABASE_URL", Some(FAKE_URL_2));

        let e = pool.refresh_now().await.unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::RateLimited, "{e}");
        let after = e.as_source_error().unwrap().retry_after().unwrap();
        assert!(after >= Duration::from_secs(1), "{after:?}");
        assert!(e.is_retryable());
        assert!(format!("{e:#}").contains("HTTP 429"), "{e}");
        assert!(format!("{e:#}").contains(APP), "{e}");

        assert_eq!(pool.refresh_now().await.unwrap(), 2, "the URL changed");
        let seen = server.seen();
        assert_eq!(seen.len(), 3, "{seen:#?}");
        assert!(
            gap(&seen, 2) >= Duration::from_secs(1),
            "{:?}",
            gap(&seen, 2)
        );
        assert_nothing_leaked(&[]);
    })
    .await;
}

#[tokio::test]
async fn server_errors_three_times_then_success_with_bounded_spaced_requests() {
    capture_tracing();
    bounded(async {
        let (server, pool) = fake_pool().await;
        for _ in 0..3 {
            server.script(Scripted::server_error());
        }
        server.set_var("DATABASE_URL", Some(FAKE_URL_2));

        let mut failures = 0;
        let generation = loop {
            match pool.refresh_now().await {
                Ok(g) => break g,
                Err(e) => {
                    assert_eq!(source_kind(&e), SourceErrorKind::Unavailable, "{e}");
                    assert!(e.is_retryable());
                    assert!(format!("{e:#}").contains("HTTP 500"), "{e}");
                    failures += 1;
                    assert!(failures <= 3, "more failures than scripted: {e}");
                }
            }
        };
        assert_eq!((failures, generation), (3, 2));
        let seen = server.seen();
        assert_eq!(
            seen.iter().map(|s| s.status).collect::<Vec<_>>(),
            [200, 500, 500, 500, 200],
            "one request per refresh_now, no retry loop inside the source"
        );
        assert_eq!(pool.status().fetch_failures, 3);
    })
    .await;
}

#[tokio::test]
async fn a_burst_goes_out_back_to_back_then_the_refill_paces() {
    bounded(async {
        // Long enough that a loaded machine cannot pass for a wait on the
        // refill (the burst must take well under half of it).
        let refill = Duration::from_secs(4);
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        let building = Instant::now();
        let pool = Pool::builder(api(&server).budget(Budget::new(3, refill).reserve(0)))
            .build()
            .await
            .unwrap();
        // The build spent one token; two more go out at once, whatever
        // fetch came just before.
        let asked = Instant::now();
        server.set_var("DATABASE_URL", Some(FAKE_URL_2));
        assert_eq!(pool.refresh_now().await.unwrap(), 2);
        pool.refresh_now().await.unwrap();
        assert!(
            asked.elapsed() < refill / 2,
            "the burst waited {:?}",
            asked.elapsed()
        );
        assert_eq!(pool.status().budget.tokens, 0, "{:?}", pool.status().budget);
        // The bucket is empty: the next request waits for the refill, which
        // runs from when the build spent its token — after `building`, and
        // before the server saw that first request (so the gap between the
        // server's stamps is no bound; a request sent at once would come
        // milliseconds after the others).
        pool.refresh_now().await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 4);
        let fourth = seen[3].at.duration_since(building);
        assert!(
            fourth >= refill,
            "the fourth request came {fourth:?} after the build began"
        );
    })
    .await;
}

#[tokio::test]
async fn if_none_match_is_sent_and_a_304_keeps_the_generation() {
    capture_tracing();
    bounded(async {
        let (server, pool) = fake_pool().await;
        assert_eq!(pool.refresh_now().await.unwrap(), 1);
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].if_none_match, None);
        assert!(seen[0].etag.is_some());
        assert_eq!(seen[1].if_none_match, seen[0].etag);
        assert_eq!(seen[1].status, 304);
        let status = pool.status();
        assert_eq!((status.generation, status.refreshes), (1, 0), "{status:?}");

        // A change is seen: a new ETag, a 200, a new generation.
        server.set_var("DATABASE_URL", Some(FAKE_URL_2));
        assert_eq!(pool.refresh_now().await.unwrap(), 2);
        let seen = server.seen();
        assert_eq!(seen[2].status, 200);
        assert_eq!(seen[2].if_none_match, seen[0].etag);
        assert_nothing_leaked(&[]);
    })
    .await;
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_unavailable() {
    bounded(async {
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        server.set_delay(Duration::from_secs(5));
        let started = Instant::now();
        let e = Pool::builder(api(&server).timeout(Duration::from_millis(300)))
            .build()
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(source_kind(&e), SourceErrorKind::Unavailable, "{e}");
        assert!(e.is_retryable());
        assert!(
            format!("{e:#}").contains("did not answer within 300 ms (the request timeout)"),
            "{e}"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_bodies_and_non_postgres_vars_are_malformed_without_echo() {
    capture_tracing();
    bounded(async {
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        server.script(Scripted::body(
            200,
            r#"{"DATABASE_URL": "postgres://app:fakepw-never-printed@h/d", "SECRET_KEY": "#,
        ));
        let e = Pool::builder(api(&server)).build().await.unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Malformed, "{e}");
        assert!(format!("{e:#}").contains("not valid JSON"), "{e}");
        assert_no_secret(&format!("{e:#} {e:?}"), &["fakepw-never-printed"]);

        server.set_var("DATABASE_URL", Some("mysql://app:fakepw-never-printed@h/d"));
        let e = Pool::builder(api(&server)).build().await.unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Malformed, "{e}");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(
                "config var DATABASE_URL of app pgrotate-test-app is not a usable PostgreSQL URL"
            ),
            "{msg}"
        );
        assert_no_secret(&format!("{e:#} {e:?}"), &["fakepw-never-printed"]);
        assert_nothing_leaked(&[]);
    })
    .await;
}

#[tokio::test]
async fn a_missing_or_null_var_lists_the_url_var_names_and_no_value() {
    capture_tracing();
    bounded(async {
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        server.set_var(
            "HEROKU_POSTGRESQL_VIOLET_URL",
            Some("postgres://u:violetpw-never-printed@h/d"),
        );
        server.set_var("REDIS_URL", Some("redis://:redispw-never-printed@r"));
        server.set_var("SESSION_SECRET", Some("session-never-printed"));
        server.set_var("HEROKU_POSTGRESQL_GRAY_URL", None);

        for (var, what) in [
            ("HEROKU_POSTGRESQL_OLIVE_URL", "is not set"),
            ("HEROKU_POSTGRESQL_GRAY_URL", "is null (unset)"),
        ] {
            let e = Pool::builder(api(&server).var(var))
                .build()
                .await
                .unwrap_err();
            assert_eq!(source_kind(&e), SourceErrorKind::NotFound, "{e}");
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&format!(
                    "config var {var} of app {APP} {what}; its *_URL config vars are: \
                     DATABASE_URL, HEROKU_POSTGRESQL_VIOLET_URL, REDIS_URL"
                )),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("Heroku API app {APP} var {var}")),
                "{msg}"
            );
            assert!(!msg.contains("SESSION_SECRET"), "{msg}");
            assert_no_secret(
                &format!("{e:#} {e:?}"),
                &[
                    "fakepw-never-printed",
                    "violetpw-never-printed",
                    "redispw-never-printed",
                    "session-never-printed",
                ],
            );
        }

        // The attachment var itself works.
        let pool = Pool::builder(api(&server).var("HEROKU_POSTGRESQL_VIOLET_URL"))
            .build()
            .await
            .unwrap();
        assert_eq!(pool.status().generation, 1);
        assert_nothing_leaked(&[
            "violetpw-never-printed",
            "redispw-never-printed",
            "session-never-printed",
        ]);
    })
    .await;
}

#[tokio::test]
async fn a_refused_token_names_the_app_and_not_the_token() {
    capture_tracing();
    bounded(async {
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        let source = HerokuApi::new(APP, WRONG_TOKEN).base_url(server.base_url());
        let shown = format!("{source:?}");
        let e = Pool::builder(source).build().await.unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Unauthorized, "{e}");
        let msg = format!("{e:#}");
        assert!(msg.contains("HTTP 401"), "{msg}");
        assert!(
            msg.contains(&format!("has no access to app {APP}")),
            "{msg}"
        );
        assert!(!e.is_retryable());
        assert_no_secret(&format!("{e:#} {e:?} {shown}"), &[WRONG_TOKEN, TOKEN]);

        server.script(Scripted::body(403, r#"{"id":"forbidden"}"#));
        let e = Pool::builder(api(&server)).build().await.unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Unauthorized, "{e}");

        let e = Pool::builder(HerokuApi::new("no-such-app", TOKEN).base_url(server.base_url()))
            .build()
            .await
            .unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::NotFound, "{e}");
        assert!(format!("{e:#}").contains("no app named no-such-app"), "{e}");
        assert_nothing_leaked(&[]);
    })
    .await;
}

#[tokio::test]
async fn a_low_ratelimit_remaining_spaces_requests_further_and_warns() {
    capture_tracing();
    bounded(async {
        let refill = Duration::from_millis(200);
        let server = ApiServer::start(APP, TOKEN, FAKE_URL).await;
        server.set_remaining(42);
        // The budget's token is spent before the first request is sent, so
        // the second cannot leave before `started + 2 * refill`. (The gap
        // between the server's two arrival stamps is no bound: the first
        // request also paid for its connection.)
        let started = Instant::now();
        let pool = Pool::builder(api(&server).budget(Budget::new(1, refill).reserve(0)))
            .build()
            .await
            .unwrap();
        assert_eq!(
            pool.status().budget.refill,
            2 * refill,
            "the account is low: half the refill"
        );
        pool.refresh_now().await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        let second = seen[1].at.duration_since(started);
        assert!(
            second >= 2 * refill,
            "the second request came {second:?} after the start"
        );
        assert!(
            captured_logs().contains("the account's Platform API budget is nearly spent"),
            "a warning is logged"
        );
    })
    .await;
}

#[tokio::test]
async fn the_unreachable_api_is_unavailable_and_names_no_token() {
    bounded(async {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e =
            Pool::builder(HerokuApi::new(APP, TOKEN).base_url(format!("http://127.0.0.1:{port}")))
                .build()
                .await
                .unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Unavailable, "{e}");
        assert!(
            format!("{e:#}").contains("cannot reach the Platform API"),
            "{e}"
        );
        assert_no_secret(&format!("{e:#} {e:?}"), &[TOKEN]);
    })
    .await;
}

#[tokio::test]
async fn the_heroku_cli_source_runs_config_get() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        let script = dir.path().join("heroku");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s ' \"$@\" > '{}'\nif [ \"$2\" = DATABASE_URL ]; then echo '{FAKE_URL}'; else echo; fi\n",
                args.display()
            ),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cli = HerokuCli::new(APP).binary(&script);
        assert_eq!(
            pgrotate::source::UrlSource::describe(&cli),
            format!("Heroku CLI `{} config:get DATABASE_URL -a {APP}`", script.display())
        );
        let pool = Pool::builder(cli).build().await.unwrap();
        assert_eq!(pool.status().generation, 1);
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            format!("config:get DATABASE_URL -a {APP} ")
        );

        let e = Pool::builder(HerokuCli::new(APP).var("HEROKU_POSTGRESQL_GRAY_URL").binary(&script))
            .build()
            .await
            .unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::NotFound, "{e}");
        assert!(format!("{e:#}").contains("printed nothing"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn https_speaks_tls_through_rustls_with_the_ring_provider() {
    bounded(async {
        // A server that reads the ClientHello and hangs up: enough to show
        // the HTTPS path builds its TLS client (the crate's own provider, no
        // process-wide default needed) and starts a handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).await.unwrap();
            first
        });
        let e = Pool::builder(HerokuApi::new(APP, TOKEN).base_url(format!("https://{addr}")))
            .build()
            .await
            .unwrap_err();
        assert_eq!(source_kind(&e), SourceErrorKind::Unavailable, "{e}");
        let first = server.await.unwrap();
        assert_eq!(first[0], 0x16, "a TLS handshake record");
        assert_eq!(first[1], 0x03, "TLS 1.x");
        assert_no_secret(&format!("{e:#} {e:?}"), &[TOKEN]);
    })
    .await;
}
