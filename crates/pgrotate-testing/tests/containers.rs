//! The container backend's own behaviour: network faults with
//! `docker network disconnect`, cleanup on drop and at process exit. Run
//! when the environment selects containers (`PGROTATE_TEST_BACKEND=container`,
//! or a Docker engine and a `pgrotate-postgres` image); otherwise each test
//! says it was skipped. The generic operations are covered for both
//! backends by tests/fixture.rs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use pgrotate_testing::{Backend, Cluster, ErrorKind};
use tokio_postgres::{Client, NoTls};

/// Whether the environment selects containers; prints why a test is skipped
/// when it does not.
async fn containers_selected(test: &str) -> bool {
    let selected = Backend::from_env().await.unwrap() == Backend::Container;
    if !selected {
        eprintln!("{test}: skipped, the environment selects local processes");
    }
    selected
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let url = format!("{url}?connect_timeout=2");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs `test` under a bound: a test must never hang CI.
async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test did not finish within its bound")
}

/// `docker <args>`'s standard output, trimmed.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(output.status.success(), "docker {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_server_answers_nothing_in_flight_and_comes_back() {
    if !containers_selected("a_disconnected_server_answers_nothing_in_flight_and_comes_back").await
    {
        return;
    }
    bounded(async {
        let cluster = Cluster::start().await.unwrap();
        let role = cluster.create_role("partition").await.unwrap();
        let direct_url = cluster.network_url(&role).unwrap();
        let published = connect(&cluster.url(&role)).await.unwrap();
        let direct = connect(&direct_url).await.unwrap();
        published.simple_query("SELECT 1").await.unwrap();
        direct.simple_query("SELECT 1").await.unwrap();

        // Both queries are in flight (each would answer after 2 s) when the
        // container leaves its network.
        let sleep = "SELECT pg_sleep(2)";
        let via_published =
            tokio::spawn(async move { published.simple_query(sleep).await.map(drop) });
        let via_direct = tokio::spawn(async move { direct.simple_query(sleep).await.map(drop) });
        let superuser = cluster.superuser().await.unwrap();
        let running = async || -> i64 {
            superuser
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE usename = $1 AND state = 'active' AND query = $2",
                    &[&role.name, &sleep],
                )
                .await
                .unwrap()
                .get(0)
        };
        while running().await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.disconnect_network().await.unwrap();
        let cut = Instant::now();
        assert_eq!(cluster.network_addr(), None);

        // Through the published port: the connection is closed, no answer.
        let err = tokio::time::timeout(Duration::from_secs(10), via_published)
            .await
            .expect("the published connection neither failed nor answered")
            .unwrap()
            .unwrap_err();
        assert!(err.as_db_error().is_none(), "the server answered: {err:?}");
        // Directly on the network: nothing at all, well past the 2 s.
        let direct_result = tokio::time::timeout(Duration::from_secs(4), via_direct).await;
        assert!(
            direct_result.is_err(),
            "the partitioned server answered: {direct_result:?}"
        );
        // New connections fail both ways.
        assert!(connect(&cluster.url(&role)).await.is_err());
        assert!(connect(&direct_url).await.is_err());
        eprintln!("partitioned for {:?}", cut.elapsed());

        cluster.reconnect_network().await.unwrap();
        let back = connect(&cluster.url(&role)).await.unwrap();
        back.simple_query("SELECT 1").await.unwrap();
        let direct_back = connect(&cluster.network_url(&role).unwrap()).await.unwrap();
        direct_back.simple_query("SELECT 1").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_streams_again_after_its_primary_comes_back() {
    if !containers_selected("a_standby_streams_again_after_its_primary_comes_back").await {
        return;
    }
    bounded(async {
        let primary = Cluster::start().await.unwrap();
        let standby = primary.start_standby().await.unwrap();
        let role = primary.create_role("repl").await.unwrap();
        let writer = connect(&primary.url(&role)).await.unwrap();
        writer
            .batch_execute("CREATE TABLE t (id int)")
            .await
            .unwrap();
        primary.wait_replay_caught_up(&standby).await.unwrap();

        primary.disconnect_network().await.unwrap();
        // Clients are cut off; the fixture's control connection, over the
        // mounted Unix socket, is not.
        assert!(connect(&primary.url(&role)).await.is_err());
        let control = primary.superuser().await.unwrap();
        control.simple_query("SELECT 1").await.unwrap();
        primary.reconnect_network().await.unwrap();

        let writer = connect(&primary.url(&role)).await.unwrap();
        writer
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        primary.wait_replay_caught_up(&standby).await.unwrap();
        let reader = connect(&standby.url(&role)).await.unwrap();
        let n: i64 = reader
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_removes_the_containers_their_volumes_and_the_network() {
    if !containers_selected("drop_removes_the_containers_their_volumes_and_the_network").await {
        return;
    }
    bounded(async {
        let primary = Cluster::start().await.unwrap();
        let standby = primary.start_standby().await.unwrap();
        let ids = [
            primary.container_id().unwrap().to_owned(),
            standby.container_id().unwrap().to_owned(),
        ];
        let mut volumes = Vec::new();
        for id in &ids {
            volumes.push(docker(&[
                "inspect",
                "-f",
                "{{range .Mounts}}{{.Name}}{{end}}",
                id,
            ]));
        }
        let network = docker(&[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
            &ids[0],
        ]);
        assert!(network.starts_with("pgrotate-"), "{network}");
        assert!(volumes.iter().all(|v| !v.is_empty()), "{volumes:?}");
        let port = primary.port();
        assert!(std::path::Path::new(&primary.log_path()).is_file());

        drop(standby);
        drop(primary);
        for id in &ids {
            assert_eq!(docker(&["ps", "-aq", "--filter", &format!("id={id}")]), "");
        }
        for volume in &volumes {
            assert_eq!(
                docker(&["volume", "ls", "-q", "--filter", &format!("name={volume}")]),
                ""
            );
        }
        assert_eq!(
            docker(&[
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name={network}")
            ]),
            ""
        );
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    })
    .await;
}

#[test]
fn drop_outside_a_runtime_removes_the_container() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if !runtime.block_on(containers_selected(
        "drop_outside_a_runtime_removes_the_container",
    )) {
        return;
    }
    let cluster = runtime.block_on(Cluster::start()).unwrap();
    let id = cluster.container_id().unwrap().to_owned();
    drop(runtime);
    drop(cluster);
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("id={id}")]), "");
}

/// Run by `process_exit_removes_a_leaked_shared_container` in a child
/// process: starts the shared cluster, prints its container, and exits
/// without dropping it.
#[tokio::test]
#[ignore = "helper: run in a child process by process_exit_removes_a_leaked_shared_container"]
async fn leak_shared_container_and_exit() {
    let cluster = Cluster::shared().await.unwrap();
    println!(
        "LEAKED {} {}",
        cluster.container_id().unwrap(),
        cluster.log_path().display()
    );
    std::process::exit(0);
}

#[tokio::test]
async fn process_exit_removes_a_leaked_shared_container() {
    if !containers_selected("process_exit_removes_a_leaked_shared_container").await {
        return;
    }
    bounded(async {
        let leaked = common::leaked_by_child("leak_shared_container_and_exit", Some("container"));
        let (id, log_path) = leaked.split_once(' ').unwrap();
        let log_path = std::path::PathBuf::from(log_path);
        let filter = format!("id={id}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !docker(&["ps", "-aq", "--filter", &filter]).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            docker(&["ps", "-aq", "--filter", &filter]),
            "",
            "the reaper left container {id}"
        );
        // Its host files (log, CA, socket) go with it, once the reaper is done.
        while log_path.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!log_path.exists(), "the reaper left {}", log_path.display());
    })
    .await;
}

#[tokio::test]
async fn local_processes_refuse_network_operations() {
    let cluster = Cluster::builder()
        .backend(Backend::Process)
        .start()
        .await
        .unwrap();
    assert_eq!(cluster.backend(), Backend::Process);
    assert_eq!(cluster.network_addr(), None);
    assert_eq!(cluster.container_id(), None);
    let err = cluster.disconnect_network().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(format!("{err:#}").contains("FaultProxy"), "{err}");
}
