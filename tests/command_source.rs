//! `source::Command` end to end: a failing command's stderr reaches the
//! error with no secret in it (nor in any tracing event), and a command
//! that printed the URL and exited succeeds at once even when a process it
//! left behind keeps its stdout open. No server is needed: `build()` only
//! fetches the URL.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, capture_tracing, captured_logs};
use pgrotate::source::Command;
use pgrotate::{ErrorKind, Pool};

fn sh(script: &str) -> Command {
    Command::new("sh", ["-c", script])
}

/// Scripts writing what `curl -v`, `set -x` and chatty secret tools write
/// to stderr, then a harmless last line, and exiting 1. Each stays short
/// enough that all of it fits in the error's excerpt, which the last line
/// appearing in the error proves.
const LEAKY_SCRIPTS: &[(&str, &[&str])] = &[
    (
        r#"
echo '> GET /v1/database/creds/app HTTP/1.1' >&2
echo '> Authorization: Bearer FAKEhdrbearer0123456789abcdef' >&2
echo '> Proxy-Authorization: Basic RkFLRWJhc2ljOnNlY3JldDEyMzQ1Njc4' >&2
echo '> X-Vault-Token: hvs.FAKEvaulttoken42' >&2
echo '> X-Api-Key: FAKEapikey77' >&2
echo 'vaultfetch: connection refused' >&2
exit 1
"#,
        &[
            "FAKEhdrbearer0123456789abcdef",
            "RkFLRWJhc2ljOnNlY3JldDEyMzQ1Njc4",
            "FAKEvaulttoken42",
            "FAKEapikey77",
        ],
    ),
    (
        r#"
echo '> Cookie: sid=FAKEcookie11; theme=dark' >&2
echo '< Set-Cookie: session=FAKEsetcookie12; Path=/; HttpOnly' >&2
echo '{"user": "app", "password": "FAKEjsonpw13"}' >&2
echo '{"auth":{"client_token":"FAKEjsontoken14","lease":60}}' >&2
echo '{"client_secret": 3141592653589, "api_key": "FAKEjsonkey15"}' >&2
echo 'vaultfetch: connection refused' >&2
exit 1
"#,
        &[
            "FAKEcookie11",
            "FAKEsetcookie12",
            "FAKEjsonpw13",
            "FAKEjsontoken14",
            "3141592653589",
            "FAKEjsonkey15",
        ],
    ),
    (
        r#"
echo '+ PGPASSWORD=FAKEpgpassword21 psql -h db.internal -c select' >&2
echo '+ token=FAKEassigntoken22' >&2
echo '+ vault login -method=userpass --password FAKEargpw23 --token=FAKEargtoken24' >&2
echo "+ curl -H 'Authorization: Bearer FAKEsetxbearer0123456789' https://vault.internal/v1/db" >&2
echo 'curl: (7) rejected Bearer FAKEloosebearer0123456789xyz' >&2
echo 'vaultfetch: connection refused' >&2
exit 1
"#,
        &[
            "FAKEpgpassword21",
            "FAKEassigntoken22",
            "FAKEargpw23",
            "FAKEargtoken24",
            "FAKEsetxbearer0123456789",
            "FAKEloosebearer0123456789xyz",
        ],
    ),
];

#[tokio::test]
async fn a_failing_commands_stderr_reaches_the_error_without_its_secrets() {
    capture_tracing();
    bounded(async {
        for (script, secrets) in LEAKY_SCRIPTS {
            let e = Pool::builder(sh(script)).build().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Source, "{e}");
            let shown = format!("{e:#} {e:?} {e}");
            assert!(shown.contains("exit status: 1"), "{shown}");
            assert!(shown.contains("connection refused"), "{shown}");
            assert!(shown.contains("vaultfetch"), "{shown}");
            let logs = captured_logs();
            for secret in *secrets {
                assert!(!shown.contains(secret), "{secret} shown in: {shown}");
                assert!(!logs.contains(secret), "{secret} logged in: {logs}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_command_that_exited_succeeds_while_a_grandchild_holds_its_stdout() {
    bounded(async {
        let started = Instant::now();
        let pool = Pool::builder(
            sh("sleep 4 & echo postgres://app:fakepw@127.0.0.1:1/app")
                .timeout(Duration::from_secs(2)),
        )
        .build()
        .await
        .expect("the command printed a URL and exited 0");
        // Under the 2 s timeout: the bug waited for the `sleep` to close
        // stdout and ran into it.
        assert!(
            started.elapsed() < Duration::from_millis(1900),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(pool.status().generation, 1);
    })
    .await;
}

#[tokio::test]
async fn a_command_writing_a_lot_never_blocks_on_a_full_pipe() {
    bounded(async {
        // 1 MB on stderr, far more than a pipe holds, before and after the
        // URL: the command blocks unless its pipes are read while it runs.
        let pool = Pool::builder(sh(
            "head -c 1000000 /dev/zero >&2; echo postgres://app:fakepw@127.0.0.1:1/app; \
             head -c 1000000 /dev/zero >&2",
        ))
        .build()
        .await
        .expect("a chatty stderr is no error");
        assert_eq!(pool.status().generation, 1);

        // 1 MB on stdout is read to the end too, and is no URL.
        let e = Pool::builder(sh("head -c 1000000 /dev/zero | tr '\\0' a"))
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e}");
        assert!(format!("{e:#}").contains("longer than 64 KiB"), "{e}");
        assert!(!format!("{e:#}").contains("aaaa"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn a_command_that_does_not_exit_is_killed_even_with_its_stdout_closed() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // It prints the URL and closes stdout, but never exits: the URL is
        // not taken, the program is killed at its timeout.
        let script = format!(
            "echo $$ > '{}'; echo postgres://app:fakepw@127.0.0.1:1/app; exec >&- 2>&-; exec sleep 30",
            pid_file.display()
        );
        let e = Pool::builder(sh(&script).timeout(Duration::from_millis(500)))
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e}");
        assert!(
            format!("{e:#}")
                .contains("did not finish within 500 ms and was killed"),
            "{e}"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting to be reaped: not running.
        common::wait_until(async || {
            std::fs::read_to_string(&stat)
                .map_or(true, |s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_command_printing_nothing_and_exiting_0_is_not_found() {
    bounded(async {
        let e = Pool::builder(sh("echo ''; echo 'looked everywhere' >&2"))
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e}");
        assert_eq!(
            e.as_source_error().map(|s| s.kind()),
            Some(pgrotate::source::SourceErrorKind::NotFound),
            "{e}"
        );
        assert!(format!("{e:#}").contains("printed nothing"), "{e}");
    })
    .await;
}
