//! `pgrotate::Config` (feature `serde`) against a real server: a pool built
//! from JSON settings follows a rotation like one built in code, and bad
//! settings are refused by name; the same settings from the environment
//! through the `config` crate.

mod common;

use std::time::Duration;

use common::{bounded, role_and_file};
use pgrotate::{Config, ErrorKind, Pool};
use pgrotate_testing::Cluster;

/// Builds `config`'s pool and checks that its settings took: the server
/// sees `application_name`, and the pool holds at most `max_size`.
async fn build_and_check(config: &Config, application_name: &str, max_size: usize) -> Pool {
    let pool = config.build().await.unwrap();
    let name: String = pool
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, application_name);
    assert_eq!(pool.status().max_size, max_size);
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_built_from_json_settings_connects_and_follows_a_rotation() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "config").await;
        let json = serde_json::json!({
            "source": { "kind": "file", "path": file.path() },
            "max_size": 2,
            "wait_timeout": "5s",
            "application_name": "from-config",
            "retry": { "attempts": 3, "deadline": "10s" }
        });
        let config: Config = serde_json::from_value(json).unwrap();
        let pool = build_and_check(&config, "from-config", 2).await;

        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&rotated));
        cluster.terminate_backends(&role.name).await.unwrap();
        pool.query_one("select 1", &[]).await.unwrap();
        assert_eq!(pool.status().generation, 2);
        let shown = format!("{config:?} {pool:?}");
        assert!(
            !shown.contains(&role.password) && !shown.contains(&rotated.password),
            "{shown}"
        );
    })
    .await;
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_by_name() {
    let config: Config = serde_json::from_str(
        r#"{"source": {"kind": "env", "var": "PGROTATE_NO_SUCH_VAR"}, "max_size": 0}"#,
    )
    .unwrap();
    let e = config.build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Build, "{e:#}");
    assert!(e.to_string().contains("max_size"), "{e}");
}

/// The settings as environment variables, read through the `config` crate
/// as deadpool-postgres's examples read theirs (`PGROTATE__MAX_SIZE`,
/// `PGROTATE__SOURCE__KIND`, …); the variables come as a map, so the test
/// sets none in the process.
fn from_env(vars: &[(&str, &str)]) -> Result<Config, config::ConfigError> {
    let vars = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::Config::builder()
        .add_source(
            config::Environment::with_prefix("PGROTATE")
                .separator("__")
                .source(Some(vars)),
        )
        .build()?
        .try_deserialize()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_the_environment_through_the_config_crate_build_a_working_pool() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (_role, file) = role_and_file(cluster, "config_env").await;
        let path = file.path().to_str().unwrap().to_string();
        let config = from_env(&[
            ("PGROTATE__SOURCE__KIND", "file"),
            ("PGROTATE__SOURCE__PATH", &path),
            ("PGROTATE__MAX_SIZE", "3"),
            ("PGROTATE__WAIT_TIMEOUT", "5s"),
            ("PGROTATE__CONNECT_TIMEOUT", "2"),
            ("PGROTATE__APPLICATION_NAME", "from-env"),
            ("PGROTATE__POOLER_MODE", "false"),
            ("PGROTATE__RETRY__ATTEMPTS", "2"),
            ("PGROTATE__RETRY__DEADLINE", "10s"),
        ])
        .unwrap();
        assert_eq!(config.max_size, Some(3));
        assert_eq!(config.wait_timeout, Some(Duration::from_secs(5)));
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.retry.and_then(|r| r.attempts), Some(2));
        let pool = build_and_check(&config, "from-env", 3).await;
        pool.close();
    })
    .await;
}

#[test]
fn a_bad_duration_from_the_environment_names_its_key() {
    let e = from_env(&[("PGROTATE__CONNECT_TIMEOUT", "soon")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config key `connect_timeout`: \"soon\" is not a duration"),
        "{e}"
    );
    let e = from_env(&[("PGROTATE__RETRY__BACKOFF_CAP", "1 fortnight")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("config key `retry.backoff_cap`"), "{e}");
    let e = from_env(&[("PGROTATE__SOURCE__KIND", "vault")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("vault"), "{e}");
}
