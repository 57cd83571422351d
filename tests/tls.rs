//! TLS against real PostgreSQL servers with the fixture's generated CA:
//! libpq's sslmode semantics (a URL raises the builder's minimum, never
//! lowers it unless allowed), verify-ca / verify-full with the right and the
//! wrong CA and host name, channel binding, client certificates, and a
//! refresh that keeps all of it. Every failure must say which check failed
//! and never carry the password.

mod common;

use common::{UrlFile, bounded, role_and_file};
use pgrotate::{ChannelBinding, Error, ErrorKind, Pool, PoolBuilder, SslMode, source};
use pgrotate_testing::{Cluster, TestCa, TestRole};
use tokio::sync::OnceCell;

/// A server with `ssl=off` (plain TCP logins only), shared by this file.
async fn plain_cluster() -> &'static Cluster {
    static PLAIN: OnceCell<Cluster> = OnceCell::const_new();
    PLAIN
        .get_or_init(|| async { Cluster::builder().ssl(false).start().await.unwrap() })
        .await
}

/// A server whose `pg_hba.conf` reads `hostssl ... scram-sha-256
/// clientcert=verify-full`: a client certificate signed by the fixture's
/// CA, CN = the role name.
async fn mtls_cluster() -> &'static Cluster {
    static MTLS: OnceCell<Cluster> = OnceCell::const_new();
    MTLS.get_or_init(|| async {
        Cluster::builder()
            .require_client_cert(true)
            .start()
            .await
            .unwrap()
    })
    .await
}

/// Whether this backend's connection is encrypted, as the server sees it.
async fn ssl_in_use(pool: &Pool) -> Result<bool, Error> {
    pool.run(async |c| {
        c.query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?
        .try_get(0)
    })
    .await
}

/// The role's URL with another host (and optional extra query).
fn url_with_host(cluster: &Cluster, role: &TestRole, host: &str, query: &str) -> String {
    let url = cluster
        .url(role)
        .replacen(&format!("@{}:", cluster.host()), &format!("@{host}:"), 1);
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

/// A pool builder for a fixed URL.
fn builder(url: impl AsRef<str>) -> PoolBuilder {
    Pool::builder(source::Static::new(url))
}

/// Builds the pool and asserts its connections use TLS.
async fn encrypted(builder: PoolBuilder) -> Pool {
    connected(builder, true).await
}

/// Builds the pool and asserts its connections are plaintext.
async fn plaintext(builder: PoolBuilder) -> Pool {
    connected(builder, false).await
}

async fn connected(builder: PoolBuilder, tls: bool) -> Pool {
    let pool = builder.build().await.unwrap();
    assert_eq!(
        ssl_in_use(&pool).await.unwrap(),
        tls,
        "{}",
        if tls {
            "the connection is not encrypted"
        } else {
            "the connection is encrypted"
        }
    );
    pool
}

/// Builds the pool and returns the error its first connect fails with,
/// asserting there is one, that it says each of `words`, and that neither
/// it nor its Debug carries the role's password.
async fn refused(builder: PoolBuilder, role: &TestRole, words: &[&str]) -> Error {
    let pool = builder.build().await.unwrap();
    let err = match pool.get().await {
        Ok(_) => panic!("the connection was expected to fail"),
        Err(e) => e,
    };
    let printed = format!("{err:#}\n{err:?}");
    assert!(
        !printed.contains(&role.password),
        "the error carries the password"
    );
    for words in words {
        assert_says(&err, words);
    }
    err
}

fn assert_says(err: &Error, words: &str) {
    let text = format!("{err:#}");
    assert!(text.contains(words), "expected {words:?} in: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_connect_with_tls_to_the_fixture_server() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_require").await.unwrap();
        // The default minimum is require; the URL says nothing.
        encrypted(builder(cluster.url(&role))).await;
        // prefer takes TLS when the server offers it.
        encrypted(builder(cluster.url(&role)).sslmode(SslMode::Prefer)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_fixtures_ca_connects_by_builder_roots_or_sslrootcert() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_vfull").await.unwrap();
        let ca = cluster.ca();

        // Roots from the builder; host localhost (a DNS name in the SAN),
        // and 127.0.0.1, in the SAN too, as an IP address.
        for url in [
            url_with_host(cluster, &role, "localhost", ""),
            cluster.url(&role),
        ] {
            encrypted(
                builder(url)
                    .sslmode(SslMode::VerifyFull)
                    .root_certificates_pem(ca.cert_pem()),
            )
            .await;
        }

        // Roots and mode from the URL, default builder.
        let query = format!(
            "sslmode=verify-full&sslrootcert={}",
            ca.cert_path().display()
        );
        encrypted(builder(url_with_host(cluster, &role, "localhost", &query))).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_and_verify_ca_with_roots_that_did_not_sign_the_server_fail_clearly() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_other_ca").await.unwrap();
        let localhost = url_with_host(cluster, &role, "localhost", "");

        // The default roots (Mozilla's) know nothing of the fixture's CA.
        // Another CA, from the builder or the URL's sslrootcert, carries
        // the same subject name as the fixture's (every TestCa does), so
        // webpki reports a bad signature rather than an unknown issuer: the
        // same words up front.
        let other = TestCa::new().unwrap();
        for (roots, words) in [
            (None, "not signed by a trusted root (unknown issuer)"),
            (Some(other.cert_pem()), "not signed by a trusted root"),
        ] {
            for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
                let mut attempt = builder(&localhost).sslmode(mode);
                if let Some(roots) = roots {
                    attempt = attempt.root_certificates_pem(roots);
                }
                let err = refused(attempt, &role, &[words]).await;
                assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
            }
        }
        let query = format!(
            "sslmode=verify-full&sslrootcert={}",
            other.cert_path().display()
        );
        refused(
            builder(url_with_host(cluster, &role, "localhost", &query)),
            &role,
            &["not signed by a trusted root"],
        )
        .await;

        // require does not check the certificate at all.
        encrypted(builder(&localhost)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_to_a_name_not_in_the_san_fails_as_a_name_mismatch_and_verify_ca_connects() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_name").await.unwrap();
        // The server listens on 127.0.0.1 only: `hostaddr` connects there
        // while TLS checks the name in the URL's host.
        let url = url_with_host(cluster, &role, "not-in-san.example", "hostaddr=127.0.0.1");
        let verifying = |mode| {
            builder(&url)
                .sslmode(mode)
                .root_certificates_pem(cluster.ca().cert_pem())
        };
        let err = refused(
            verifying(SslMode::VerifyFull),
            &role,
            &[
                "host name mismatch",
                "\"not-in-san.example\"",
                "it names localhost, 127.0.0.1",
            ],
        )
        .await;
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");

        // verify-ca checks the chain only.
        encrypted(verifying(SslMode::VerifyCa)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_require_fails_clearly_prefer_and_disable_connect_in_plaintext() {
    bounded(async {
        let cluster = plain_cluster().await;
        let role = cluster.create_role("tls_plain").await.unwrap();

        let err = refused(
            builder(cluster.url(&role)),
            &role,
            &["the server does not offer TLS"],
        )
        .await;
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");

        // prefer falls back; disable never asks.
        for mode in [SslMode::Prefer, SslMode::Disable] {
            plaintext(builder(cluster.url(&role)).sslmode(mode)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_saying_disable_is_refused_unless_the_builder_allows_weaker_sslmode() {
    bounded(async {
        let cluster = plain_cluster().await;
        let role = cluster.create_role("tls_lower").await.unwrap();
        let url = format!("{}?sslmode=disable", cluster.url(&role));

        // The builder's minimum (require) wins over the URL: still TLS,
        // which this server cannot do.
        refused(builder(&url), &role, &["the server does not offer TLS"]).await;

        plaintext(builder(&url).allow_weaker_sslmode_from_url(true)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_works_over_tls() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_cb").await.unwrap();
        // From the URL.
        let url = format!("{}?channel_binding=require", cluster.url(&role));
        encrypted(builder(&url)).await;
        // From the builder; a URL's `disable` does not lower it.
        let url = format!("{}?channel_binding=disable", cluster.url(&role));
        encrypted(builder(&url).channel_binding(ChannelBinding::Require)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_without_tls_fails_clearly() {
    bounded(async {
        let cluster = plain_cluster().await;
        let role = cluster.create_role("tls_cb_plain").await.unwrap();
        let url = format!("{}?channel_binding=require", cluster.url(&role));
        let err = refused(
            builder(&url).sslmode(SslMode::Disable),
            &role,
            &["channel_binding=require", "SCRAM-SHA-256-PLUS"],
        )
        .await;
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
        // The builder's `require` is a minimum: a URL saying `disable` does
        // not lower it.
        let url = format!("{}?channel_binding=disable", cluster.url(&role));
        refused(
            builder(&url)
                .sslmode(SslMode::Disable)
                .channel_binding(ChannelBinding::Require),
            &role,
            &["channel_binding=require"],
        )
        .await;
        // The same role connects without channel binding: it was the check.
        plaintext(builder(cluster.url(&role)).sslmode(SslMode::Disable)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_new_url_has_no_sslmode_keeps_the_builders_tls() {
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_refresh").await.unwrap();
        let file = UrlFile::new(&url_with_host(
            cluster,
            &role,
            "localhost",
            "sslmode=verify-full",
        ));
        let pool = encrypted(
            Pool::builder(file.source())
                .sslmode(SslMode::VerifyFull)
                .root_certificates_pem(cluster.ca().cert_pem()),
        )
        .await;
        assert_eq!(pool.status().generation, 1);

        // A platform URL: no sslmode at all.
        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&url_with_host(cluster, &rotated, "localhost", ""));
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);

        assert!(ssl_in_use(&pool).await.unwrap(), "generation 2 lost TLS");
        assert_eq!(pool.status().generation, 2, "{:?}", pool.status());

        // Generation 3, from another URL without sslmode, still checks the
        // host name: a host outside the SAN is refused by verify-full.
        let rotated_again = cluster.rotate_password(&rotated).await.unwrap();
        file.set(&url_with_host(
            cluster,
            &rotated_again,
            "not-in-san.example",
            "hostaddr=127.0.0.1",
        ));
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);
        let err = ssl_in_use(&pool).await.unwrap_err();
        assert_says(&err, "host name mismatch");
        assert_eq!(pool.status().generation, 3, "{:?}", pool.status());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_builder_connects_and_survives_a_rotation() {
    bounded(async {
        let cluster = mtls_cluster().await;
        let (role, file) = role_and_file(cluster, "tls_mtls").await;
        let (cert, key) = cluster.ca().issue_client_cert(&role.name).unwrap();
        let pool = Pool::builder(file.source())
            .client_certificate_pem(cert, key)
            .build()
            .await
            .unwrap();
        let client_dn = async |pool: &Pool| -> Result<String, Error> {
            pool.run(async |c| {
                c.query_one(
                    "select coalesce(client_dn, '') from pg_stat_ssl where pid = pg_backend_pid()",
                    &[],
                )
                .await?
                .try_get(0)
            })
            .await
        };
        let dn = client_dn(&pool).await.unwrap();
        assert!(dn.contains(&role.name), "client_dn {dn:?}");

        // The rotated URL carries no sslcert/sslkey: the builder's identity
        // is kept.
        let rotated = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&rotated));
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);
        let dn = client_dn(&pool).await.unwrap();
        assert!(dn.contains(&role.name), "client_dn {dn:?}");
        assert_eq!(pool.status().generation, 2, "{:?}", pool.status());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_url_connects() {
    bounded(async {
        let cluster = mtls_cluster().await;
        let role = cluster.create_role("tls_mtls_url").await.unwrap();
        let (cert, key) = cluster.ca().issue_client_cert(&role.name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("client.crt"), dir.path().join("client.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let url = format!(
            "{}?sslcert={}&sslkey={}",
            cluster.url(&role),
            cert_path.display(),
            key_path.display()
        );
        encrypted(builder(&url)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_error_says_one_was_required() {
    bounded(async {
        let cluster = mtls_cluster().await;
        let role = cluster.create_role("tls_mtls_none").await.unwrap();
        let err = refused(builder(cluster.url(&role)), &role, &["client certificate"]).await;
        eprintln!("without a client certificate: {err}");

        // One signed by a CA the server does not trust is refused in the
        // handshake.
        let other = TestCa::new().unwrap();
        let (cert, key) = other.issue_client_cert(&role.name).unwrap();
        let err = refused(
            builder(cluster.url(&role)).client_certificate_pem(cert, key),
            &role,
            &["rejected the client certificate"],
        )
        .await;
        eprintln!("with another CA's client certificate: {err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_roots_come_from_the_platform_store_and_do_not_trust_the_fixture_ca() {
    common::bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let role = cluster.create_role("tls_native").await.unwrap();
        let url = cluster.url(&role).replace("127.0.0.1", "localhost");
        // The platform's store (Debian's ca-certificates) is loaded: the
        // fixture's private CA is not in it, so verify-full fails as an
        // unknown issuer rather than connecting or failing to build.
        let pool = builder(url)
            .sslmode(SslMode::VerifyFull)
            .native_root_certificates()
            .build()
            .await
            .unwrap();
        let err = pool.get().await.unwrap_err();
        assert!(
            format!("{err:#}").contains("not signed by a trusted root"),
            "{err}"
        );
    })
    .await;
}
