//! The built `pgrotate-check` against a throwaway server: what it prints
//! when everything works, what it says when the password was rotated under
//! its URL file, how it refuses bad arguments, and its Heroku paths (the
//! Platform API through the suite's local stand-in, the CLI through a fake
//! `heroku` on `PATH`) — never a secret on stdout or stderr.

use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use pgrotate_testing::Cluster;

/// The suite's local stand-in for the Platform API (the root package's
/// `tests/heroku_api.rs` runs on it too).
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/common/heroku_server.rs"]
mod heroku_server;

/// A test must never hang: each run of the binary is bounded.
const RUN_BOUND: Duration = Duration::from_secs(60);

/// Runs the binary with `args` (and `env` set), under [`RUN_BOUND`].
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrotate-check"));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(RUN_BOUND, cmd.output())
        .await
        .expect("pgrotate-check did not finish within its bound")
        .expect("pgrotate-check could not be run")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of the `key: value` line `key` on stdout.
fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
}

fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{contents}").unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_file_checks_out_with_verified_tls_and_no_secret_printed() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("check_ok").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url_file = write_file(dir.path(), "database_url", &cluster.url(&role));
    let ca = write_file(dir.path(), "ca.pem", cluster.ca().cert_pem());

    let out = run(
        &[
            "--file",
            &url_file,
            "--sslmode",
            "verify-full",
            "--root-cert",
            &ca,
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    // Shown with `--nocapture`: what an operator sees.
    println!("{stdout}");
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(
        !stdout.contains(&role.password) && !stderr.contains(&role.password),
        "the password was printed"
    );
    assert_eq!(value(&stdout, "source"), format!("file {url_file}"));
    assert_eq!(value(&stdout, "host"), cluster.host());
    assert_eq!(value(&stdout, "port"), cluster.port().to_string());
    assert_eq!(value(&stdout, "database"), role.database);
    assert_eq!(value(&stdout, "user"), role.name);
    let version = value(&stdout, "server_version");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{stdout}"
    );
    assert_eq!(value(&stdout, "tls"), "on");
    assert!(
        value(&stdout, "tls_version").starts_with("TLSv1."),
        "{stdout}"
    );
    assert_ne!(value(&stdout, "tls_cipher"), "none");
    assert_eq!(value(&stdout, "in_hot_standby"), "off");
    for key in ["connect_time", "round_trip"] {
        assert!(value(&stdout, key).ends_with(" ms"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_env_and_command_sources_give_the_same_findings() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("check_env").await.unwrap();
    let url = cluster.url(&role);

    // The default source: --env DATABASE_URL.
    let out = run(&[], &[("DATABASE_URL", &url)]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        value(&stdout, "source"),
        "environment variable DATABASE_URL"
    );
    assert_eq!(value(&stdout, "user"), role.name);

    // --command takes every argument after it, options-looking ones too.
    let out = run(
        &["--timeout", "5", "--command", "printenV_IS_NOT_A_PROGRAM"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let out = run(
        &["--command", "sh", "-c", "echo \"$CHECK_URL\"", "--timeout"],
        &[("CHECK_URL", &url)],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(value(&stdout, "source"), "command sh (3 arguments)");
    assert_eq!(value(&stdout, "tls"), "on");
    for printed in [&stdout, &stderr] {
        assert!(
            !printed.contains(&role.password),
            "the password was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_fails_fast_saying_credentials_rejected_without_either_password() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("check_rotated").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The file keeps the old URL.
    let url_file = write_file(dir.path(), "database_url", &cluster.url(&role));
    let rotated = cluster.rotate_password(&role).await.unwrap();

    let started = Instant::now();
    let out = run(&["--file", &url_file, "--timeout", "3"], &[]).await;
    let took = started.elapsed();
    let (stdout, stderr) = text(&out);
    println!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("credentials rejected"),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    for password in [&role.password, &rotated.password] {
        assert!(
            !stdout.contains(password.as_str()) && !stderr.contains(password.as_str()),
            "a password was printed"
        );
    }
    // What was found before the failure is still shown.
    assert_eq!(value(&stdout, "user"), role.name);
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_with_a_usage_line_and_never_echo_a_value() {
    for args in [
        &["--frobnicate"][..],
        &["--file"],
        &["--timeout", "soon"],
        &["--sslmode", "sometimes"],
        &["--file", "a", "--env", "B"],
        &["--heroku-var", "DATABASE_URL"],
        &["postgres://app:hunter2secret@db.example/app"],
    ] {
        let out = run(args, &[]).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: pgrotate-check"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(!stderr.contains("hunter2secret"), "{stderr}");
    }
    // The token for --heroku-app comes from HEROKU_API_KEY only.
    let out = run(&["--heroku-app", "my-app"], &[("HEROKU_API_KEY", "")]).await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out = run(&["--help"], &[]).await;
    assert!(out.status.success());
    assert!(text(&out).0.contains("--heroku-app APP"));
}

/// Neither stdout nor stderr of `out` holds any of `secrets`.
fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let (stdout, stderr) = text(out);
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret was printed:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heroku_app_checks_out_through_the_platform_api_and_a_wrong_token_fails_unprinted() {
    const TOKEN: &str = "hrku-check-token-4f1d7a";
    const WRONG: &str = "hrku-wrong-token-9c2e0b";
    let cluster = Cluster::shared().await.unwrap();
    let (role, server) =
        heroku_server::role_and_server(cluster, "check_api", "check-app", TOKEN).await;
    let base = server.base_url();

    let out = run(
        &["--heroku-app", "check-app", "--heroku-api-url", &base],
        &[("HEROKU_API_KEY", TOKEN)],
    )
    .await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        value(&stdout, "source"),
        "Heroku API app check-app var DATABASE_URL"
    );
    assert_eq!(value(&stdout, "user"), role.name);
    assert_eq!(value(&stdout, "tls"), "on");
    assert_no_secret(&out, &[TOKEN, &role.password]);
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "one request: {seen:?}");
    assert!(
        seen[0].has_authorization && seen[0].status == 200,
        "{seen:?}"
    );

    // A token the API refuses: the pool's error, exit 1, neither token shown.
    let out = run(
        &[
            "--heroku-app",
            "check-app",
            "--heroku-api-url",
            &base,
            "--timeout",
            "5",
        ],
        &[("HEROKU_API_KEY", WRONG)],
    )
    .await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert_no_secret(&out, &[TOKEN, WRONG, &role.password]);
}

/// A fake `heroku` in a directory of its own: `heroku config:get VAR -a
/// APP` prints the file `url_file` for `app` and the var `DATABASE_URL`,
/// and fails as the real one does for anything else. Returns the `PATH`
/// that finds it first.
fn fake_heroku_cli(dir: &Path, app: &str, url_file: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("heroku");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             if [ \"$1 $2 $3 $4\" = \"config:get DATABASE_URL -a {app}\" ]; then\n\
             \x20   cat '{url_file}'\n\
             else\n\
             \x20   echo \" !    Couldn't find that app.\" >&2\n\
             \x20   exit 1\n\
             fi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heroku_cli_checks_out_through_the_heroku_on_path_and_a_rotated_password_fails_unprinted() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("check_cli").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url_file = write_file(dir.path(), "database_url", &cluster.url(&role));
    let path = fake_heroku_cli(dir.path(), "cli-app", &url_file);

    let out = run(&["--heroku-cli", "cli-app"], &[("PATH", &path)]).await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        value(&stdout, "source"),
        "Heroku CLI `heroku config:get DATABASE_URL -a cli-app`"
    );
    assert_eq!(value(&stdout, "user"), role.name);
    assert_no_secret(&out, &[&role.password]);

    // The CLI's own failure (an app it cannot find): exit 1.
    let out = run(
        &["--heroku-cli", "other-app", "--timeout", "5"],
        &[("PATH", &path)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));

    // The password rotated, the config var not yet: credentials rejected,
    // neither password shown.
    let rotated = cluster.rotate_password(&role).await.unwrap();
    let out = run(
        &["--heroku-cli", "cli-app", "--timeout", "3"],
        &[("PATH", &path)],
    )
    .await;
    let (stdout, stderr) = text(&out);
    println!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("credentials rejected"), "{stderr}");
    assert_no_secret(&out, &[&role.password, &rotated.password]);
}
