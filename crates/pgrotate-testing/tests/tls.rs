//! The fixture's certificates against a real server: the server certificate
//! verifies against the cluster's CA (and not another), and
//! `require_client_cert` admits exactly the clients with a certificate for
//! their role.

use pgrotate_testing::{Cluster, TestCa, TestRole};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A verifying rustls connector trusting `ca`, presenting `client` if given.
fn tls(ca: &TestCa, client: Option<(String, String)>) -> MakeRustlsConnect {
    let config = match client {
        Some((cert, key)) => ca.rustls_client_config_with_cert(&cert, &key),
        None => ca.rustls_client_config(),
    };
    MakeRustlsConnect::new(config.unwrap())
}

async fn connect_tls(url: &str, tls: MakeRustlsConnect) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{url}?sslmode=require"), tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn uses_ssl(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn server_certificate_verifies_against_the_cluster_ca_only() {
    let cluster = Cluster::shared().await.unwrap();
    let role = cluster.create_role("tls").await.unwrap();

    let client = connect_tls(&cluster.url(&role), tls(cluster.ca(), None))
        .await
        .unwrap();
    assert!(uses_ssl(&client).await);

    // The certificate also names `localhost`.
    let by_name = cluster.url(&role).replace("127.0.0.1", "localhost");
    let client = connect_tls(&by_name, tls(cluster.ca(), None))
        .await
        .unwrap();
    assert!(uses_ssl(&client).await);

    let stranger = TestCa::new().unwrap();
    assert_ne!(stranger.cert_pem(), cluster.ca().cert_pem());
    let err = connect_tls(&cluster.url(&role), tls(&stranger, None))
        .await
        .unwrap_err();
    assert!(err.code().is_none(), "expected a TLS failure: {err:?}");

    assert_eq!(
        std::fs::read_to_string(cluster.ca().cert_path()).unwrap(),
        cluster.ca().cert_pem()
    );
}

#[tokio::test]
async fn require_client_cert_admits_only_a_certificate_for_the_role() {
    let cluster = Cluster::builder()
        .require_client_cert(true)
        .start()
        .await
        .unwrap();
    let role = cluster.create_role("mtls").await.unwrap();
    let url = cluster.url(&role);
    let ca = cluster.ca();

    // Plain TCP has no pg_hba line any more.
    let Err(err) = tokio_postgres::connect(&url, NoTls).await else {
        panic!("plain TCP was admitted");
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
    // TLS without a client certificate.
    assert!(connect_tls(&url, tls(ca, None)).await.is_err());
    // A certificate for another user.
    let other = ca.issue_client_cert("somebody_else").unwrap();
    assert!(connect_tls(&url, tls(ca, Some(other))).await.is_err());
    // A certificate for the role from a CA the server does not trust.
    let stranger = TestCa::new()
        .unwrap()
        .issue_client_cert(&role.name)
        .unwrap();
    assert!(connect_tls(&url, tls(ca, Some(stranger))).await.is_err());

    let own = ca.issue_client_cert(&role.name).unwrap();
    let client = connect_tls(&url, tls(ca, Some(own.clone()))).await.unwrap();
    assert!(uses_ssl(&client).await);

    // The certificate does not replace the password.
    let wrong_password = TestRole {
        password: "not-the-password".into(),
        ..role.clone()
    };
    let err = connect_tls(&cluster.url(&wrong_password), tls(ca, Some(own)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

#[tokio::test]
async fn require_client_cert_needs_ssl() {
    let err = Cluster::builder()
        .ssl(false)
        .require_client_cert(true)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), pgrotate_testing::ErrorKind::InvalidConfig);
}
