//! The fault proxy between tokio-postgres and a real server: pass-through,
//! latency, blackhole, reset, and cutting a connection at a chosen message
//! (the two COMMIT windows), over plaintext; and a TLS connection through it.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrotate_testing::{
    Action, BlackholeMode, Cluster, Direction, FaultProxy, FrontendMessage, TestRole, Times,
};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// The bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);
/// How long something that must not happen is given to happen anyway.
const QUIET: Duration = Duration::from_millis(300);

/// Awaits `future`, failing the test when it takes longer than [`PROMPT`].
async fn prompt<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PROMPT:?}"))
}

/// A plain-TCP client; the handle yields how its connection ended.
async fn connect(
    url: &str,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn ping(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("SELECT 1").await.map(drop)
}

/// A role with a table `t (id int primary key)`, and a direct connection.
async fn role_with_table(cluster: &Cluster, prefix: &str) -> (TestRole, Client) {
    let role = cluster.create_role(prefix).await.unwrap();
    let (direct, _) = connect(&cluster.url(&role)).await.unwrap();
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    (role, direct)
}

async fn has_row(direct: &Client, id: i32) -> bool {
    direct
        .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

fn is_commit(sql: &str) -> bool {
    sql.trim().eq_ignore_ascii_case("COMMIT")
}

/// The error of a client whose connection was cut: closed, or an I/O error.
fn assert_connection_lost(err: &tokio_postgres::Error) {
    assert!(err.code().is_none(), "expected a lost connection: {err:?}");
}

#[tokio::test]
async fn passes_traffic_through() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_pass").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    assert_eq!(proxy.upstream(), cluster.addr());
    assert_ne!(proxy.port(), cluster.port());
    assert!(proxy.url(&role).contains(&format!(":{}/", proxy.port())));

    let (client, connection) = connect(&proxy.url(&role)).await.unwrap();
    let rows = client
        .query_typed(
            "SELECT $1::text || current_user",
            &[(&"hi ", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), format!("hi {}", role.name));
    // A named statement and a larger payload.
    let big: String = client
        .query_one("SELECT repeat('x', 100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 100_000);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 1);
    let events = proxy.events();
    assert_eq!((events.accepted, events.closed), (1, 0));

    drop(client);
    prompt("the connection task", connection)
        .await
        .unwrap()
        .unwrap();
    let events = prompt(
        "the proxy to see the close",
        proxy.wait_for(|e| e.closed == 1),
    )
    .await;
    assert_eq!(events.reset, 0);
    assert_eq!(proxy.connections(), 0);
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_latency").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();

    let delay = Duration::from_millis(150);
    proxy.set_latency(delay);
    let started = Instant::now();
    ping(&client).await.unwrap();
    let round_trip = started.elapsed();
    assert!(round_trip >= 2 * delay, "round trip {round_trip:?}");

    proxy.set_latency(Duration::ZERO);
    proxy.set_latency_one_way(Direction::ToClient, delay);
    let started = Instant::now();
    ping(&client).await.unwrap();
    let one_way = started.elapsed();
    assert!(one_way >= delay, "one way {one_way:?}");

    // A connection's own latency adds to the proxy's.
    proxy.clear_faults();
    let conn = &proxy.open_connections()[0];
    conn.set_latency_one_way(Direction::ToServer, delay);
    let started = Instant::now();
    ping(&client).await.unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
}

#[tokio::test]
async fn blackhole_hangs_traffic_until_lifted() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_blackhole").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    ping(&client).await.unwrap();

    proxy.blackhole(true);
    let mut query = tokio::spawn(async move {
        let result = ping(&client).await;
        (client, result)
    });
    assert!(
        tokio::time::timeout(QUIET, &mut query).await.is_err(),
        "a query got through a blackhole"
    );
    // Held, not closed: the server still has the session.
    assert_eq!(proxy.connections(), 1);
    assert_eq!(cluster.connection_count(&role.name).await.unwrap(), 1);

    // New connections are held (the handshake never completes) ...
    let url = proxy.url(&role);
    let mut held = tokio::spawn(async move { connect(&url).await.map(|(client, _)| client) });
    assert!(tokio::time::timeout(QUIET, &mut held).await.is_err());
    prompt(
        "the held connection to be accepted",
        proxy.wait_for(|e| e.accepted == 2),
    )
    .await;
    // ... or refused.
    proxy.set_blackhole_mode(BlackholeMode::Refuse);
    let refused = prompt("a refused connect", connect(&proxy.url(&role))).await;
    assert!(refused.is_err(), "connected through a refusing blackhole");
    assert_eq!(proxy.events().refused, 1);

    // Lifting it resumes the held traffic, like a healed partition.
    proxy.blackhole(false);
    let (client, result) = prompt("the held query", query).await.unwrap();
    result.unwrap();
    ping(&client).await.unwrap();
    let late = prompt("the held connect", held).await.unwrap().unwrap();
    ping(&late).await.unwrap();
}

#[tokio::test]
async fn blackhole_then_reset_breaks_the_connection() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_partition").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    ping(&client).await.unwrap();

    let conn = &proxy.open_connections()[0];
    conn.blackhole(true);
    let mut query = tokio::spawn(async move { ping(&client).await });
    assert!(tokio::time::timeout(QUIET, &mut query).await.is_err());
    conn.reset();
    let err = prompt("the query to fail", query)
        .await
        .unwrap()
        .unwrap_err();
    assert_connection_lost(&err);
    proxy.blackhole(false);
    prompt("the reset", proxy.wait_for(|e| e.reset == 1)).await;
}

#[tokio::test]
async fn reset_ends_connections_on_both_sides() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_reset").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (first, first_conn) = connect(&proxy.url(&role)).await.unwrap();
    let (second, second_conn) = connect(&proxy.url(&role)).await.unwrap();
    ping(&first).await.unwrap();
    ping(&second).await.unwrap();
    assert_eq!(proxy.connections(), 2);

    // One connection alone.
    let handles = proxy.open_connections();
    assert_eq!(handles.len(), 2);
    assert!(handles[0].id() < handles[1].id());
    assert_ne!(handles[0].client_addr(), handles[1].client_addr());
    handles[0].reset();
    prompt("the first reset", proxy.wait_for(|e| e.reset == 1)).await;
    let ended = prompt("the first connection task", first_conn)
        .await
        .unwrap();
    assert!(ended.is_err(), "a reset connection ended cleanly");
    assert!(first.is_closed());
    ping(&second).await.unwrap();

    // All of them.
    proxy.reset_all();
    prompt("the second reset", proxy.wait_for(|e| e.reset == 2)).await;
    let err = ping(&second).await.unwrap_err();
    assert_connection_lost(&err);
    assert!(
        prompt("the second connection task", second_conn)
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(proxy.connections(), 0);
    // The server's sessions end too.
    let deadline = Instant::now() + PROMPT;
    while cluster.connection_count(&role.name).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the server kept the sessions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The proxy still accepts.
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    ping(&client).await.unwrap();
}

#[tokio::test]
async fn commit_dropped_and_cut_never_commits() {
    let cluster = Cluster::shared().await.unwrap();
    let (role, direct) = role_with_table(cluster, "proxy_drop_commit").await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (mut client, _) = connect(&proxy.url(&role)).await.unwrap();

    proxy.on_query(is_commit, Action::DropAndCut);
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let err = tx.commit().await.unwrap_err();
    assert_connection_lost(&err);
    let events = prompt("the cut", proxy.wait_for(|e| e.dropped_and_cut == 1)).await;
    assert_eq!((events.matched, events.forwarded_and_cut), (1, 0));

    assert!(!has_row(&direct, 1).await, "a dropped COMMIT committed");
    // The rule was one-shot: the next COMMIT goes through.
    let (mut client, _) = connect(&proxy.url(&role)).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(has_row(&direct, 2).await);
}

#[tokio::test]
async fn commit_forwarded_and_cut_commits_unseen() {
    let cluster = Cluster::shared().await.unwrap();
    let (role, direct) = role_with_table(cluster, "proxy_forward_commit").await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let (mut client, _) = connect(&proxy.url(&role)).await.unwrap();

    proxy.on_query(is_commit, Action::ForwardThenCut);
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let err = tx.commit().await.unwrap_err();
    assert_connection_lost(&err);
    let events = prompt("the cut", proxy.wait_for(|e| e.forwarded_and_cut == 1)).await;
    assert_eq!((events.matched, events.dropped_and_cut), (1, 0));

    assert!(
        has_row(&direct, 1).await,
        "a forwarded COMMIT did not commit"
    );
}

#[tokio::test]
async fn extended_protocol_execute_can_be_cut_either_way() {
    let cluster = Cluster::shared().await.unwrap();
    let (role, direct) = role_with_table(cluster, "proxy_extended").await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let insert = "INSERT INTO t VALUES ($1)";
    let id = tokio_postgres::types::Type::INT4;

    // query_typed: unnamed statement, Parse/Bind/Describe/Execute/Sync in
    // an implicit transaction.
    proxy.on_message(
        move |m: &FrontendMessage<'_>| m.tag == b'E' && m.sql == Some(insert),
        Action::DropAndCut,
        Times::Once,
    );
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    let err = client
        .query_typed(insert, &[(&1i32, id.clone())])
        .await
        .unwrap_err();
    assert_connection_lost(&err);
    prompt("the drop", proxy.wait_for(|e| e.dropped_and_cut == 1)).await;
    assert!(!has_row(&direct, 1).await);

    // A named statement prepared first, executed later.
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    let statement = client.prepare(insert).await.unwrap();
    proxy.on_query(move |sql| sql == insert, Action::ForwardThenCut);
    let err = client.execute(&statement, &[&2i32]).await.unwrap_err();
    assert_connection_lost(&err);
    prompt("the forward", proxy.wait_for(|e| e.forwarded_and_cut == 1)).await;
    assert!(has_row(&direct, 2).await);
}

#[tokio::test]
async fn rules_persist_until_removed_and_clear_faults_lifts_all() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_rules").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let rule = proxy.on_message(
        |m: &FrontendMessage<'_>| m.sql == Some("SELECT 'cut me'"),
        Action::DropAndCut,
        Times::Always,
    );
    for round in 1..=2 {
        let (client, _) = connect(&proxy.url(&role)).await.unwrap();
        ping(&client).await.unwrap();
        let err = client.simple_query("SELECT 'cut me'").await.unwrap_err();
        assert_connection_lost(&err);
        prompt("the cut", proxy.wait_for(|e| e.dropped_and_cut == round)).await;
    }
    assert!(proxy.remove_rule(rule));
    assert!(!proxy.remove_rule(rule));
    let (client, _) = connect(&proxy.url(&role)).await.unwrap();
    client.simple_query("SELECT 'cut me'").await.unwrap();

    proxy.on_message(
        |_: &FrontendMessage<'_>| true,
        Action::DropAndCut,
        Times::Always,
    );
    proxy.blackhole(true);
    proxy.set_latency(Duration::from_secs(3600));
    proxy.clear_faults();
    prompt("a query after clear_faults", ping(&client))
        .await
        .unwrap();
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_drop").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let port = proxy.port();
    let (client, connection) = connect(&proxy.url(&role)).await.unwrap();
    ping(&client).await.unwrap();
    drop(proxy);
    prompt("the connection to end", connection)
        .await
        .unwrap()
        .ok();
    assert!(client.is_closed());
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "the port still accepts");
}

#[tokio::test]
async fn tls_passes_through_with_latency_blackhole_and_reset() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("proxy_tls").await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    // Rules never see inside TLS.
    proxy.on_message(
        |_: &FrontendMessage<'_>| true,
        Action::DropAndCut,
        Times::Always,
    );

    // The certificate names `localhost`; the proxy listens on 127.0.0.1.
    let url = proxy.url(&role).replace("@127.0.0.1:", "@localhost:")
        + "?sslmode=require&hostaddr=127.0.0.1";
    let (client, connection) = tokio_postgres::connect(&url, common::tls(cluster))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    assert_eq!(proxy.events().matched, 0);

    let delay = Duration::from_millis(100);
    proxy.set_latency(delay);
    let started = Instant::now();
    ping(&client).await.unwrap();
    assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
    proxy.set_latency(Duration::ZERO);

    proxy.blackhole(true);
    let client = Arc::new(client);
    let pinger = Arc::clone(&client);
    let mut query = tokio::spawn(async move { ping(&pinger).await });
    assert!(tokio::time::timeout(QUIET, &mut query).await.is_err());
    proxy.blackhole(false);
    prompt("the held TLS query", query).await.unwrap().unwrap();

    proxy.reset_all();
    prompt("the reset", proxy.wait_for(|e| e.reset == 1)).await;
    assert_connection_lost(&ping(&client).await.unwrap_err());
    assert!(
        prompt("the TLS connection task", connection)
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(proxy.events().matched, 0);
}
