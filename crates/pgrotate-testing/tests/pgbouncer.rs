//! A real PgBouncer (Debian's 1.18) in front of a real server, in
//! transaction mode with `auth_query`: what works through it, what breaks,
//! and the errors PgBouncer itself sends (all SQLSTATE 08P01).

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use pgrotate_testing::{Cluster, FaultProxy, PgBouncer, PgBouncerOptions, TestRole};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

/// The bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(20);

async fn prompt<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PROMPT:?}"))
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = prompt("a connect", tokio_postgres::connect(url, NoTls)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn ping(client: &Client) -> Result<(), tokio_postgres::Error> {
    prompt("a query", client.simple_query("SELECT 1"))
        .await
        .map(drop)
}

/// `(SQLSTATE, message)` of a server or PgBouncer error.
fn db_error(err: &tokio_postgres::Error) -> (SqlState, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {err:?}"));
    eprintln!(
        "observed: {} {} {:?}",
        db.severity(),
        db.code().code(),
        db.message()
    );
    (db.code().clone(), db.message().to_owned())
}

async fn start(cluster: &Cluster, options: PgBouncerOptions) -> PgBouncer {
    let started = Instant::now();
    let bouncer = cluster.start_pgbouncer(options).await.unwrap();
    eprintln!(
        "{} ready on port {} in {:?}",
        bouncer.version(),
        bouncer.port(),
        started.elapsed()
    );
    bouncer
}

#[tokio::test]
async fn queries_through_pgbouncer_with_unnamed_statements() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_query").await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default()).await;
    assert!(bouncer.version().starts_with("PgBouncer 1."), "{bouncer:?}");
    assert!(
        bouncer
            .url(&role)
            .contains(&format!(":{}/", bouncer.port()))
    );

    let client = connect(&bouncer.url(&role)).await.unwrap();
    let rows = client.simple_query("SELECT current_user").await.unwrap();
    let user = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(user.as_deref(), Some(role.name.as_str()));
    let rows = client
        .query_typed("SELECT $1::int + 1", &[(&41i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let pools = bouncer.show_pools().await.unwrap();
    let pool = pools
        .iter()
        .find(|p| p.user == role.name)
        .unwrap_or_else(|| panic!("no pool for the role: {pools:?}"));
    assert_eq!(pool.database, role.database);
    assert_eq!(pool.pool_mode, "transaction");
    assert!(
        pool.sv_idle + pool.sv_used + pool.sv_active >= 1,
        "{pool:?}"
    );
    bouncer.reload().await.unwrap();
    assert!(
        bouncer.log().contains("RELOAD command issued"),
        "{}",
        bouncer.log()
    );
}

#[tokio::test]
async fn named_statements_break_across_transactions() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_named").await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default().default_pool_size(2)).await;
    let holder = connect(&bouncer.url(&role)).await.unwrap();
    let preparer = connect(&bouncer.url(&role)).await.unwrap();

    // The holder pins one server connection inside a transaction, so the
    // statement is prepared on the other one ...
    holder.batch_execute("BEGIN").await.unwrap();
    let statement = preparer.prepare("SELECT 1").await.unwrap();
    // ... which is idle again when the holder releases the first one, the
    // one PgBouncer hands out next (most recently used first).
    holder.batch_execute("COMMIT").await.unwrap();
    let err = prompt("a named execute", preparer.query(&statement, &[]))
        .await
        .unwrap_err();
    let (code, _) = db_error(&err);
    assert!(
        code == SqlState::INVALID_SQL_STATEMENT_NAME || code == SqlState::DUPLICATE_PSTATEMENT,
        "{err:?}"
    );

    // Under concurrency, plain `query(&str)` (prepare, then execute) fails
    // the same way, while `query_typed` never does.
    let mut tasks = Vec::new();
    for worker in 0..8i32 {
        let client = connect(&bouncer.url(&role)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut named_failures, mut other) = (0, Vec::new());
            for i in 0..20i32 {
                client
                    .query_typed("SELECT $1::int", &[(&(worker * i), Type::INT4)])
                    .await
                    .unwrap();
                match client.query("SELECT $1::int", &[&i]).await {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
                                | Some(&SqlState::DUPLICATE_PSTATEMENT)
                        ) =>
                    {
                        named_failures += 1
                    }
                    Err(e) => other.push(format!("{e:?}")),
                }
            }
            (named_failures, other)
        }));
    }
    let mut named_failures = 0;
    for task in tasks {
        let (failures, other) = prompt("a worker", task).await.unwrap();
        assert!(other.is_empty(), "{other:?}");
        named_failures += failures;
    }
    eprintln!("named statements failed {named_failures} times out of 160");
    assert!(named_failures > 0);
}

#[tokio::test]
async fn rotated_password_works_at_once_and_the_old_one_is_refused() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_rotate").await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default()).await;
    let session = connect(&bouncer.url(&role)).await.unwrap();
    ping(&session).await.unwrap();

    let rotated = cluster.rotate_password(&role).await.unwrap();
    let fresh = connect(&bouncer.url(&rotated)).await.unwrap();
    ping(&fresh).await.unwrap();
    // A client logged in before keeps working: PgBouncer's server
    // connections stay logged in.
    ping(&session).await.unwrap();

    let err = connect(&bouncer.url(&role)).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, SqlState::PROTOCOL_VIOLATION, "{err:?}");
    assert!(message.contains("authentication failed"), "{message}");

    // The same through a plain wrong password, and for a user that does
    // not exist.
    let wrong = TestRole {
        password: "not-the-password".into(),
        ..role.clone()
    };
    let (code, _) = db_error(&connect(&bouncer.url(&wrong)).await.unwrap_err());
    assert_eq!(code, SqlState::PROTOCOL_VIOLATION);
    let nobody = TestRole {
        name: "no_such_role".into(),
        ..role.clone()
    };
    let (code, _) = db_error(&connect(&bouncer.url(&nobody)).await.unwrap_err());
    assert_eq!(code, SqlState::PROTOCOL_VIOLATION);
}

/// Waits until PgBouncer's log holds `needle`.
async fn log_shows(bouncer: &PgBouncer, needle: &str) {
    prompt(&format!("PgBouncer to log {needle:?}"), async {
        while !bouncer.log().contains(needle) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn failing_server_logins_are_remembered_for_server_login_retry() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_login").await.unwrap();
    let retry = Duration::from_secs(1);
    let bouncer = start(
        cluster,
        PgBouncerOptions::default().server_login_retry(retry),
    )
    .await;
    let client = connect(&bouncer.url(&role)).await.unwrap();
    ping(&client).await.unwrap();

    // The server now refuses the role's logins while PgBouncer still
    // admits the client (auth_query reads the verifier as before).
    let admin = cluster.superuser().await.unwrap();
    let ident = format!("\"{}\"", role.name);
    admin
        .batch_execute(&format!("ALTER ROLE {ident} CONNECTION LIMIT 0"))
        .await
        .unwrap();
    cluster.terminate_backends(&role.name).await.unwrap();

    // The connect succeeds (PgBouncer does not wait for a server login);
    // the query waits while PgBouncer retries the login every
    // server_login_retry — up to query_wait_timeout.
    let first = connect(&bouncer.url(&role)).await.unwrap();
    let mut waiting = tokio::spawn(async move { first.simple_query("SELECT 1").await.map(drop) });
    log_shows(
        &bouncer,
        "login failed: FATAL: too many connections for role",
    )
    .await;
    let failed_at = Instant::now();

    // A new client is turned away at once — at its first query: the
    // connect itself succeeds.
    let second = connect(&bouncer.url(&role)).await.unwrap();
    let err = ping(&second).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, SqlState::PROTOCOL_VIOLATION, "{err:?}");
    assert_eq!(
        message,
        "server login has been failing, try again later (server_login_retry)"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "the waiting query ended while logins fail"
    );

    // Once the server admits the role again, the next retry logs in and
    // the waiting query runs.
    admin
        .batch_execute(&format!("ALTER ROLE {ident} CONNECTION LIMIT -1"))
        .await
        .unwrap();
    prompt("the waiting query", waiting).await.unwrap().unwrap();
    eprintln!(
        "the waiting query ran {:?} after the first failed login",
        failed_at.elapsed()
    );
    ping(&connect(&bouncer.url(&role)).await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_query_waiting_too_long_for_a_server_gets_query_wait_timeout() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_wait").await.unwrap();
    let wait = Duration::from_secs(1);
    let bouncer = start(
        cluster,
        PgBouncerOptions::default()
            .default_pool_size(1)
            .query_wait_timeout(wait),
    )
    .await;
    let holder = connect(&bouncer.url(&role)).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&bouncer.url(&role)).await.unwrap();
    let started = Instant::now();
    let err = ping(&waiter).await.unwrap_err();
    let waited = started.elapsed();
    let (code, message) = db_error(&err);
    eprintln!("query_wait_timeout after {waited:?}");
    assert_eq!(code, SqlState::PROTOCOL_VIOLATION);
    assert!(message.contains("query_wait_timeout"), "{message}");
    assert!(waited >= wait, "{waited:?}");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn tls_to_pgbouncer_without_channel_binding() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_tls").await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default().client_tls(true)).await;
    let tls = common::tls(cluster);
    let url = bouncer.url(&role).replace("@127.0.0.1:", "@localhost:")
        + "?sslmode=require&hostaddr=127.0.0.1";

    let (client, connection) = prompt(
        "a TLS connect",
        tokio_postgres::connect(&format!("{url}&channel_binding=prefer"), tls.clone()),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    ping(&client).await.unwrap();

    let refused = prompt(
        "a channel-bound connect",
        tokio_postgres::connect(&format!("{url}&channel_binding=require"), tls),
    )
    .await;
    let Err(err) = refused else {
        panic!("channel_binding=require got through PgBouncer");
    };
    eprintln!("channel_binding=require: {err:?}");
}

#[tokio::test]
async fn commit_cut_between_client_and_pgbouncer() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_proxy").await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default()).await;
    let direct = connect(&cluster.url(&role)).await.unwrap();
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let proxy = FaultProxy::start(bouncer.addr()).await.unwrap();
    let client = connect(&proxy.url(&role)).await.unwrap();
    proxy.on_query(
        |sql| sql.trim().eq_ignore_ascii_case("COMMIT"),
        pgrotate_testing::Action::ForwardThenCut,
    );
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert!(client.batch_execute("COMMIT").await.is_err());
    prompt("the cut", proxy.wait_for(|e| e.forwarded_and_cut == 1)).await;
    let present: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(present, 1);
}

#[tokio::test]
async fn stop_closes_clients_and_the_port() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("bouncer_stop").await.unwrap();
    let mut bouncer = start(cluster, PgBouncerOptions::default()).await;
    let client = connect(&bouncer.url(&role)).await.unwrap();
    ping(&client).await.unwrap();
    prompt("stop", bouncer.stop()).await.unwrap();
    assert!(ping(&client).await.is_err());
    assert!(
        tokio::net::TcpStream::connect(bouncer.addr())
            .await
            .is_err(),
        "the port still accepts"
    );
}

#[tokio::test]
async fn drop_stops_pgbouncer_and_removes_its_directory() {
    let cluster = Cluster::shared().await.unwrap();
    let bouncer = start(cluster, PgBouncerOptions::default()).await;
    let addr = bouncer.addr();
    let dir = bouncer.config_path().parent().unwrap().to_owned();
    assert!(bouncer.config_path().is_file());
    let dropping = Instant::now();
    drop(bouncer);
    let took = dropping.elapsed();
    eprintln!("timing: PgBouncer drop took {took:?}");
    // SIGTERM works: the watchdog's SIGKILL after 5 s was not needed.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(std::net::TcpStream::connect(addr).is_err());
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Run by `process_exit_stops_a_leaked_pgbouncer` in a child process:
/// starts a PgBouncer, prints where it is, and exits without dropping it.
#[tokio::test]
#[ignore = "helper: run in a child process by process_exit_stops_a_leaked_pgbouncer"]
async fn leak_pgbouncer_and_exit() {
    let cluster = Cluster::shared().await.unwrap();
    let bouncer = cluster
        .start_pgbouncer(PgBouncerOptions::default())
        .await
        .unwrap();
    println!(
        "LEAKED {} {}",
        bouncer.port(),
        bouncer.config_path().parent().unwrap().display()
    );
    std::process::exit(0);
}

#[test]
fn process_exit_stops_a_leaked_pgbouncer() {
    let leaked = common::leaked_by_child("leak_pgbouncer_and_exit", None);
    let (port, dir) = leaked.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let dir = std::path::PathBuf::from(dir);
    let up = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (dir.exists() || up()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!up(), "the leaked PgBouncer still listens");
    assert!(!dir.exists(), "{} still exists", dir.display());
}
