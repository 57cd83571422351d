//! What an operator sees in the logs: every `run`, `transaction` and
//! pool-level call is a span (`pgrotate::call`, with its kind) whose events
//! say each attempt's fault and the generation of the next, so one request
//! can be followed through a rotation.

mod common;

use common::{bounded, capture_tracing, captured_logs, role_file_and_pool, spawn_running_insert};
use pgrotate_testing::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_caught_by_a_rotation_is_one_span_with_its_attempts_and_generations() {
    capture_tracing();
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file, pool) = role_file_and_pool(cluster, "spans", 2).await;
        pool.batch_execute("create table t (k int not null)")
            .await
            .unwrap();

        let write = spawn_running_insert(&pool, cluster, &role.name).await;
        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&rotated));
        cluster.terminate_backends(&role.name).await.unwrap();
        assert_eq!(write.await.unwrap().unwrap(), 1);

        let logs = captured_logs();
        let span = r#"call{kind="statement"}"#;
        let retried = logs.lines().any(|l| {
            l.contains(span)
                && l.contains(
                    "retrying on a fresh connection attempt=1 fault=Some(ServerGoingAway)",
                )
        });
        assert!(
            retried,
            "the first attempt's fault, in the call's span:\n{logs}"
        );
        let second = logs.lines().any(|l| {
            l.contains(span) && l.contains("attempt on a fresh connection attempt=2 generation=2")
        });
        assert!(
            second,
            "the second attempt, on the new generation, in the same span:\n{logs}"
        );
        assert!(!logs.contains(&role.password) && !logs.contains(&rotated.password));
    })
    .await;
}
