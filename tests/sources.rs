//! Broken sources: `build()` fails naming the source and the problem; at
//! runtime the pool keeps serving on what works and reports the source's
//! error when it needs a new URL.

mod common;

use std::time::Duration;

use common::{UrlFile, bounded, role_and_file};
use pgrotate::source::{Command, File, Static};
use pgrotate::{ErrorKind, Pool};
use pgrotate_testing::Cluster;

async fn build_error(source: impl pgrotate::source::UrlSource) -> pgrotate::Error {
    Pool::builder(source).build().await.unwrap_err()
}

#[tokio::test]
async fn a_missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope");
    let e = build_error(File::new(&path)).await;
    assert_eq!(e.kind(), ErrorKind::Source);
    let msg = format!("{e:#}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read the file"), "{msg}");
}

#[tokio::test]
async fn a_command_exiting_1_shows_its_stderr_without_urls() {
    let e = build_error(Command::new(
        "sh",
        [
            "-c",
            "echo 'app not found; last value postgres://u:hunter2@h/d' >&2; exit 1",
        ],
    ))
    .await;
    let msg = format!("{e:#}");
    assert_eq!(e.kind(), ErrorKind::Source);
    assert!(msg.contains("command sh"), "{msg}");
    assert!(msg.contains("exit status: 1"), "{msg}");
    assert!(msg.contains("app not found"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn a_hanging_command_is_killed_at_its_timeout() {
    let started = std::time::Instant::now();
    let e = build_error(Command::new("sleep", ["30"]).timeout(Duration::from_millis(300))).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        format!("{e:#}").contains("did not finish within 300 ms"),
        "{e}"
    );
    assert!(e.is_retryable(), "a timeout may pass");
}

#[tokio::test]
async fn a_command_printing_nothing_is_an_unset_variable() {
    let e = build_error(Command::new("echo", [""])).await;
    assert!(format!("{e:#}").contains("printed nothing"), "{e}");
}

#[tokio::test]
async fn malformed_urls_and_urls_without_password_are_refused() {
    let file = UrlFile::new("not a url at all");
    let e = build_error(file.source()).await;
    assert!(format!("{e:#}").contains("not a PostgreSQL URL"), "{e}");
    assert!(format!("{e:#}").contains("file "), "{e}");

    let e = build_error(Static::new("postgres://app@db.example.com/app")).await;
    assert!(format!("{e:#}").contains("no password"), "{e}");
    assert!(format!("{e:#}").contains("static URL"), "{e}");

    let e = build_error(Static::new(
        "postgres://app:pw@db.example.com/app?sslmode=sometimes",
    ))
    .await;
    assert!(format!("{e:#}").contains("sslmode"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_runtime_the_pool_serves_on_and_reports_the_source_error_when_it_needs_a_url() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "src_runtime").await;
        let pool = Pool::builder(file.source())
            .max_size(2)
            .build()
            .await
            .unwrap();
        assert_eq!(common::select_one(&pool).await.unwrap(), 1);

        // The source breaks; nothing needs it: the pool serves on, even
        // through a reconnect with the credentials it has.
        file.remove();
        cluster.terminate_backends(&role.name).await.unwrap();
        assert_eq!(common::select_one(&pool).await.unwrap(), 1);

        // Now the credentials change: the pool needs the source, and says
        // what is wrong with it.
        cluster.rotate_password(&role).await.unwrap();
        cluster.terminate_backends(&role.name).await.unwrap();
        let e = common::select_one(&pool).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e}");
        assert!(
            format!("{e:#}").contains(&file.path().display().to_string()),
            "{e}"
        );
        let status = pool.status();
        assert!(
            status
                .last_refresh_error
                .as_deref()
                .is_some_and(|m| m.contains("cannot read the file")),
            "{status:?}"
        );
    })
    .await;
}
