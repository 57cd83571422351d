//! A throwaway certificate authority, and the certificates it issues to the
//! server and to clients.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::error::{ErrorKind, FixtureError};

/// A certificate authority made for one test run.
///
/// A [`Cluster`](crate::Cluster)'s server certificate is signed by its CA
/// ([`Cluster::ca`](crate::Cluster::ca)); [`TestCa::new`] makes an unrelated
/// one, to check that verification against the wrong CA fails.
#[derive(Clone)]
pub struct TestCa {
    key: Arc<CaKey>,
    cert_path: PathBuf,
    /// Keeps the certificate file of a standalone CA alive.
    _dir: Option<Arc<TempDir>>,
}

struct CaKey {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate and its private key, both PEM.
pub(crate) struct IssuedCert {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCa {
    /// Generates an independent CA whose certificate is written to a file in
    /// a temporary directory of its own (removed when the last clone drops).
    pub fn new() -> Result<TestCa, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("pgrotate-testing-ca-")
            .tempdir()
            .map_err(|e| FixtureError::io("creating a directory for a test CA", e))?;
        let mut ca = TestCa::generate_at(&dir.path().join("ca.crt"))?;
        ca._dir = Some(Arc::new(dir));
        Ok(ca)
    }

    /// Generates a CA and writes its certificate to `path`.
    pub(crate) fn generate_at(path: &Path) -> Result<TestCa, FixtureError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "pgrotate-testing CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key_pair = KeyPair::generate().map_err(FixtureError::certificate)?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(FixtureError::certificate)?;
        let key = Arc::new(CaKey {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key_pair),
        });
        TestCa::with_key(key, path)
    }

    /// The same CA, its certificate written (again) to `path`.
    pub(crate) fn copy_to(&self, path: &Path) -> Result<TestCa, FixtureError> {
        TestCa::with_key(Arc::clone(&self.key), path)
    }

    fn with_key(key: Arc<CaKey>, path: &Path) -> Result<TestCa, FixtureError> {
        std::fs::write(path, &key.cert_pem)
            .map_err(|e| FixtureError::io(format!("writing {}", path.display()), e))?;
        Ok(TestCa {
            key,
            cert_path: path.to_owned(),
            _dir: None,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.key.cert_pem
    }

    /// A file holding [`cert_pem`](Self::cert_pem), e.g. for `sslrootcert`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Issues a client certificate (extended key usage clientAuth) with
    /// `common_name` as its subject CN; returns `(certificate PEM, key PEM)`.
    ///
    /// For a server started with
    /// [`require_client_cert`](crate::ClusterBuilder::require_client_cert),
    /// the CN must be the role name (`clientcert=verify-full`).
    pub fn issue_client_cert(&self, common_name: &str) -> Result<(String, String), FixtureError> {
        let issued = self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok((issued.cert_pem, issued.key_pem))
    }

    /// A rustls client configuration that trusts this CA alone (ring
    /// provider, rustls' safe default protocol versions) and presents no
    /// client certificate: what a test hands
    /// `tokio_postgres_rustls::MakeRustlsConnect::new` to verify a server of
    /// this CA.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, FixtureError> {
        Ok(self.rustls_client_builder()?.with_no_client_auth())
    }

    /// [`rustls_client_config`](Self::rustls_client_config), presenting
    /// the client certificate `cert_pem` with its key `key_pem` (as
    /// [`issue_client_cert`](Self::issue_client_cert) returns them).
    pub fn rustls_client_config_with_cert(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<rustls::ClientConfig, FixtureError> {
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| FixtureError::io("reading a client key", e))?
            .ok_or_else(|| {
                FixtureError::new(
                    ErrorKind::Certificate,
                    "no private key in the client key PEM",
                )
            })?;
        self.rustls_client_builder()?
            .with_client_auth_cert(parse_certs(cert_pem)?, key)
            .map_err(|e| {
                FixtureError::with_source(ErrorKind::Certificate, "using a client certificate", e)
            })
    }

    fn rustls_client_builder(
        &self,
    ) -> Result<
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
        FixtureError,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certs(self.cert_pem())? {
            roots.add(cert).map_err(|e| {
                FixtureError::with_source(ErrorKind::Certificate, "trusting the test CA", e)
            })?;
        }
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FixtureError::with_source(ErrorKind::Certificate, "configuring rustls", e))?
        .with_root_certificates(roots))
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub(crate) fn issue_server_cert(&self) -> Result<IssuedCert, FixtureError> {
        self.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        alt_names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert, FixtureError> {
        let alt_names: Vec<String> = alt_names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(alt_names).map_err(FixtureError::certificate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key_pair = KeyPair::generate().map_err(FixtureError::certificate)?;
        let cert = params
            .signed_by(&key_pair, &self.key.issuer)
            .map_err(FixtureError::certificate)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The certificates in `pem`.
fn parse_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, FixtureError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| FixtureError::io("reading a certificate PEM", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_ca_writes_its_certificate() {
        let ca = TestCa::new().unwrap();
        let on_disk = std::fs::read_to_string(ca.cert_path()).unwrap();
        assert_eq!(on_disk, ca.cert_pem());
        assert!(on_disk.starts_with("-----BEGIN CERTIFICATE-----"));
        let path = ca.cert_path().to_owned();
        drop(ca);
        assert!(!path.exists());
    }

    #[test]
    fn issues_distinct_client_certificates() {
        let ca = TestCa::new().unwrap();
        let (cert_a, key_a) = ca.issue_client_cert("alice").unwrap();
        let (cert_b, key_b) = ca.issue_client_cert("bob").unwrap();
        assert!(cert_a.contains("BEGIN CERTIFICATE"));
        assert!(key_a.contains("PRIVATE KEY"));
        assert_ne!(cert_a, cert_b);
        assert_ne!(key_a, key_b);
    }
}
