//! One error type, one way to read it, against a real server: `{e}` says
//! what failed in pgrotate's own words and repeats none of its causes;
//! `{e:#}` and `source()` give every cause (a `TlsError` included); the
//! predicates a web app maps to status codes agree with the kind; no secret
//! anywhere.

mod common;

use std::error::Error as _;
use std::time::Duration;

use common::{UrlFile, bounded, role_and_file};
use pgrotate::source::Static;
use pgrotate::{Error, ErrorKind, Pool, RetryPolicy, SslMode, TlsError};
use pgrotate_testing::Cluster;

/// The causes of `e`, outermost first.
fn chain(e: &Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out
}

/// `{e}` repeats no cause; `{e:#}` holds them all; nothing holds `secret`.
#[track_caller]
fn check(e: &Error, secret: &str) {
    let shown = e.to_string();
    let full = format!("{e:#}");
    for c in chain(e) {
        // tokio-postgres's bare "db error" adds nothing and is left out.
        if c == "db error" || c.len() < 4 {
            continue;
        }
        assert!(
            !shown.contains(&c),
            "Display repeats its cause {c:?}: {shown}"
        );
        assert!(full.contains(&c), "{{:#}} lacks the cause {c:?}: {full}");
    }
    for text in [&shown, &full, &format!("{e:?}")] {
        assert!(!text.contains(secret), "a secret in {text}");
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy::default().deadline(Duration::from_millis(800))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_says_what_failed_once_and_chains_its_causes() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "errors_chain").await;

        // The caller's own error: 409 territory.
        let pool = Pool::builder(file.source()).build().await.unwrap();
        let e = pool
            .run(async |c| c.execute("select * from no_such_table", &[]).await)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query);
        assert!(e.is_callers_error() && !e.is_unavailable() && !e.is_retryable());
        assert!(
            e.to_string().contains("no_such_table"),
            "the server's words: {e}"
        );
        check(&e, &role.password);

        // Nothing listens: unavailable, and the cause says why.
        let closed = format!(
            "postgres://{}:{}@127.0.0.1:1/{}",
            role.name, role.password, role.database
        );
        let pool = Pool::builder(Static::new(&closed))
            .retry(quick())
            .build()
            .await
            .unwrap();
        let e = pool.get().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e:#}");
        assert!(e.is_unavailable() && e.is_retryable() && !e.is_callers_error());
        assert_eq!(e.fault(), Some(pgrotate::Fault::Unreachable), "{e:#}");
        assert!(format!("{e:#}").to_lowercase().contains("refused"), "{e:#}");
        check(&e, &role.password);

        // A password the server rejects, from a source that never changes.
        let wrong = cluster
            .url(&role)
            .replace(&role.password, "not-the-password-zz9");
        let pool = Pool::builder(Static::new(&wrong)).build().await.unwrap();
        let e = pool.get().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CredentialsRejected, "{e:#}");
        assert!(e.is_credentials() && e.is_unavailable());
        check(&e, "not-the-password-zz9");

        // verify-ca with roots that did not sign the server's certificate.
        let other_ca = pgrotate_testing::TestCa::new().unwrap();
        let pool = Pool::builder(file.source())
            .sslmode(SslMode::VerifyCa)
            .root_certificates_pem(other_ca.cert_pem())
            .build()
            .await
            .unwrap();
        let e = pool.get().await.unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        check(&e, &role.password);

        // A source that fails: its own error is the cause.
        let missing = UrlFile::new(&cluster.url(&role));
        let pool = Pool::builder(missing.source()).build().await.unwrap();
        missing.remove();
        let e = pool.refresh_now().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e:#}");
        assert!(e.as_source_error().is_some());
        check(&e, &role.password);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_in_paths_chain_their_causes_once_and_hold_no_secret() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "errors_dropin").await;
        let pool = Pool::builder(file.source()).build().await.unwrap();

        // A pool-level statement's own error, and one through `?` in a
        // closure returning pgrotate's error.
        let e = pool
            .execute("insert into no_such_table values (1)", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        check(&e, &role.password);
        let e = pool
            .run(async move |c| {
                c.execute("select * from no_such_table", &[]).await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        assert!(
            e.as_db_error().is_some(),
            "the database error is reachable: {e:#}"
        );
        check(&e, &role.password);

        // An after_connect hook the server refuses.
        let hooked = Pool::builder(file.source())
            .after_connect(|c| {
                Box::pin(async move { c.batch_execute("SET no_such_thing = 1").await })
            })
            .build()
            .await
            .unwrap();
        let e = hooked.query_one("select 1", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Query, "{e:#}");
        check(&e, &role.password);

        // A statement whose connection the server ends while it runs, from
        // a URL the server then refuses: the retries end in credentials
        // rejected, which names no password.
        let rotated = cluster.rotate_password(&role).await.unwrap();
        cluster.terminate_backends(&role.name).await.unwrap();
        let e = Pool::builder(Static::new(cluster.url(&role)))
            .retry(quick())
            .build()
            .await
            .unwrap()
            .query_one("select 1", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CredentialsRejected, "{e:#}");
        check(&e, &role.password);
        check(&e, &rotated.password);
    })
    .await;
}

#[tokio::test]
async fn a_tls_problem_found_at_build_is_reachable_as_a_tls_error() {
    let e = Pool::builder(Static::new(
        "postgres://app:pw-zz9@127.0.0.1:1/app?sslmode=verify-full",
    ))
    .client_certificate_pem("not a certificate", "not a key")
    .build()
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Build, "{e:#}");
    let mut cause = e.source();
    let mut found = false;
    while let Some(c) = cause {
        found |= c.downcast_ref::<TlsError>().is_some();
        cause = c.source();
    }
    assert!(found, "no TlsError behind {e:#}");
    check(&e, "pw-zz9");
}
