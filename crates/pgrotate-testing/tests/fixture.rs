//! The fixture against a real PostgreSQL server: rotation, termination,
//! role replacement, crash, standby and promotion, cleanup. The generic
//! tests run on the backend the environment selects; those about local
//! directories and processes pin `Backend::Process` (the container
//! backend's own are in tests/containers.rs).

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrotate_testing::{Backend, Cluster, ErrorKind, TestRole, find_bindir_in};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A plain-TCP client (pg_hba allows SCRAM without TLS unless client
/// certificates are required); its connection runs on the current runtime.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn count_rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

/// A cluster of local processes, whatever the environment selects.
async fn local() -> Cluster {
    Cluster::builder()
        .backend(Backend::Process)
        .start()
        .await
        .unwrap()
}

async fn ping(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("SELECT 1").await.map(drop)
}

#[tokio::test]
async fn rotated_password_refuses_the_old_one() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("rotate").await.unwrap();
    let session = connect(&cluster.url(&role)).await.unwrap();
    ping(&session).await.unwrap();

    let rotated = cluster.rotate_password(&role).await.unwrap();
    assert_eq!(rotated.name, role.name);
    assert_ne!(rotated.password, role.password);

    let err = connect(&cluster.url(&role)).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    let fresh = connect(&cluster.url(&rotated)).await.unwrap();
    ping(&fresh).await.unwrap();
    // A session opened before the rotation stays logged in.
    ping(&session).await.unwrap();
}

#[tokio::test]
async fn terminate_backends_ends_a_connected_client() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("terminate").await.unwrap();
    let client = connect(&cluster.url(&role)).await.unwrap();
    ping(&client).await.unwrap();
    assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 1);

    let terminated = cluster.terminate_backends(&role.name).await.unwrap();
    assert!(terminated >= 1, "terminated {terminated}");
    assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 0);

    let err = ping(&client).await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{err:?}"
    );
    // Nothing left to terminate.
    assert_eq!(cluster.terminate_backends(&role.name).await.unwrap(), 0);
}

#[tokio::test]
async fn replace_role_swaps_the_user_and_keeps_the_data() {
    let cluster = Cluster::shared().await.unwrap();
    let old = cluster.create_role("replace").await.unwrap();
    let old_session = connect(&cluster.url(&old)).await.unwrap();
    old_session
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();

    let new = cluster.replace_role(&old).await.unwrap();
    assert_ne!(new.name, old.name);
    assert_ne!(new.password, old.password);
    assert_eq!(new.database, old.database);

    let client = connect(&cluster.url(&new)).await.unwrap();
    // The table moved to the new owner: it can read and write it.
    client
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    assert_eq!(count_rows(&client).await, 3);

    let err = connect(&cluster.url(&old)).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    assert!(ping(&old_session).await.is_err());
    assert_eq!(cluster.connection_count(&old.name).await.unwrap(), 0);
}

#[tokio::test]
async fn shared_is_one_server_with_isolated_roles() {
    let a = Cluster::shared().await.unwrap();
    let b = Cluster::shared().await.unwrap();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.port(), b.port());

    let one = a.create_role("isolated").await.unwrap();
    let two = b.create_role("isolated").await.unwrap();
    assert_ne!(one.name, two.name);
    assert_ne!(one.database, two.database);

    let c1 = connect(&a.url(&one)).await.unwrap();
    c1.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let c2 = connect(&a.url(&two)).await.unwrap();
    let err = c2.batch_execute("SELECT * FROM t").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err:?}");

    // One role may not even connect to the other's database.
    let intruder = TestRole {
        database: one.database.clone(),
        ..two.clone()
    };
    let err = connect(&a.url(&intruder)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );
}

#[tokio::test]
async fn standby_replicates_and_promotes_without_losing_rows() {
    let primary = Cluster::start().await.unwrap();
    let role = primary.create_role("failover").await.unwrap();
    let writer = connect(&primary.url(&role)).await.unwrap();
    writer
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .await
        .unwrap();

    let started = Instant::now();
    let standby = primary.start_standby().await.unwrap();
    let standby_took = started.elapsed();
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.backend(), primary.backend());
    match primary.backend() {
        Backend::Process => assert_ne!(standby.data_dir(), primary.data_dir()),
        _ => assert_ne!(standby.container_id(), primary.container_id()),
    }

    writer
        .batch_execute("INSERT INTO t SELECT generate_series(101, 200)")
        .await
        .unwrap();
    primary.wait_replay_caught_up(&standby).await.unwrap();
    let reader = connect(&standby.url(&role)).await.unwrap();
    assert_eq!(count_rows(&reader).await, 200);
    let err = reader
        .batch_execute("INSERT INTO t VALUES (0)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err:?}"
    );

    writer
        .batch_execute("INSERT INTO t SELECT generate_series(201, 300)")
        .await
        .unwrap();
    primary.wait_replay_caught_up(&standby).await.unwrap();
    let promoting = Instant::now();
    standby.promote().await.unwrap();
    let promote_took = promoting.elapsed();

    let promoted = connect(&standby.url(&role)).await.unwrap();
    promoted
        .batch_execute("INSERT INTO t VALUES (301)")
        .await
        .unwrap();
    assert_eq!(count_rows(&promoted).await, 301);
    // The old primary keeps running on its own (as after `pg:promote`).
    assert_eq!(count_rows(&writer).await, 300);
    eprintln!("timing: start_standby took {standby_took:?}, promote took {promote_took:?}");
}

#[tokio::test]
async fn crash_and_restart_keeps_committed_rows() {
    let mut cluster = Cluster::start().await.unwrap();
    let role = cluster.create_role("crash").await.unwrap();
    let client = connect(&cluster.url(&role)).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
        )
        .await
        .unwrap();
    let port = cluster.port();

    cluster.crash_and_restart().await.unwrap();
    assert_eq!(cluster.port(), port);
    assert!(ping(&client).await.is_err());

    let client = connect(&cluster.url(&role)).await.unwrap();
    assert_eq!(count_rows(&client).await, 1000);
    let log = std::fs::read_to_string(cluster.log_path()).unwrap();
    assert!(
        log.contains("not properly shut down"),
        "the restart did not recover from a crash:\n{log}"
    );
}

#[tokio::test]
async fn stop_start_again_and_restart_keep_port_and_data() {
    let mut cluster = Cluster::builder().ssl(false).start().await.unwrap();
    let role = cluster.create_role("restart").await.unwrap();
    let client = connect(&cluster.url(&role)).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let port = cluster.port();

    cluster.stop().await.unwrap();
    let err = ping(&client).await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{err:?}"
    );
    assert!(connect(&cluster.url(&role)).await.is_err());
    cluster.stop().await.unwrap(); // already stopped: no-op

    cluster.start_again().await.unwrap();
    cluster.start_again().await.unwrap(); // already running: no-op
    assert_eq!(cluster.port(), port);
    let client = connect(&cluster.url(&role)).await.unwrap();
    assert_eq!(count_rows(&client).await, 1);

    cluster.restart().await.unwrap();
    assert!(ping(&client).await.is_err());
    let client = connect(&cluster.url(&role)).await.unwrap();
    assert_eq!(count_rows(&client).await, 1);
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "off");
}

#[test]
fn missing_binaries_name_the_debian_package() {
    let empty = tempfile::tempdir().unwrap();
    let err = find_bindir_in([empty.path()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoServerBinaries);
    let message = format!("{err:#}");
    assert!(message.contains("postgresql"), "{message}");
    assert!(message.contains("apt-get install"), "{message}");
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_its_directory() {
    let started = Instant::now();
    let cluster = local().await;
    let start_took = started.elapsed();
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_owned();
    let ca_path = cluster.ca().cert_path().to_owned();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert!(ca_path.is_file());
    let role = cluster.create_role("dropped").await.unwrap();
    let client = connect(&cluster.url(&role)).await.unwrap();

    let dropping = Instant::now();
    drop(cluster);
    let drop_took = dropping.elapsed();

    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(!ca_path.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(ping(&client).await.is_err());
    eprintln!("timing: Cluster::start took {start_took:?}, drop took {drop_took:?}");
}

#[test]
fn drop_outside_a_runtime_stops_the_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(local());
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_owned();
    drop(runtime);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(cluster);
    assert!(!data_dir.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Run by `process_exit_stops_a_leaked_cluster` in a child process: starts
/// the shared cluster, prints where it is, and exits without dropping it.
#[tokio::test]
#[ignore = "helper: run in a child process by process_exit_stops_a_leaked_cluster"]
async fn leak_shared_cluster_and_exit() {
    let cluster = Cluster::shared().await.unwrap();
    println!("LEAKED {} {}", cluster.port(), cluster.data_dir().display());
    std::process::exit(0);
}

#[test]
fn process_exit_stops_a_leaked_cluster() {
    let leaked = common::leaked_by_child("leak_shared_cluster_and_exit", Some("process"));
    let (port, data_dir) = leaked.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let data_dir = PathBuf::from(data_dir);
    let cluster_dir = data_dir.parent().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    while (cluster_dir.exists() || TcpStream::connect(("127.0.0.1", port)).is_ok())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(
        !cluster_dir.exists(),
        "{} still exists",
        cluster_dir.display()
    );
}
