//! `pgrotate::Config` (feature `serde`) against a real server: a pool built
//! from JSON settings follows a rotation like one built in code, and bad
//! settings are refused by name.

mod common;

use common::{bounded, role_and_file};
use pgrotate::{Config, ErrorKind};
use pgrotate_testing::Cluster;

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
        let pool = config.build().await.unwrap();
        let name: String = pool
            .query_one("select current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "from-config");
        assert_eq!(pool.status().max_size, 2);

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
