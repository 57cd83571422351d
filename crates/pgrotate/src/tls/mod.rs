//! rustls connectors for each sslmode.
//!
//! - `require` and `prefer`: encrypt, do not check the certificate (libpq's
//!   meaning, and what Heroku documents: its default certificates are not
//!   publicly verifiable). The handshake signatures are still verified, so
//!   the peer must hold the key of the certificate it shows.
//! - `verify-ca`: the certificate must chain to a trusted root; the host name
//!   is not checked.
//! - `verify-full`: chain and host name.
//!
//! Every rustls config is built with an explicit crypto provider, *ring*:
//! it builds with a C compiler alone (no cmake, no NASM), compiles much less
//! C than aws-lc-rs, and it is the provider testcontainers (by default) and
//! reqwest 0.12's rustls backend already pull in. With two providers in a
//! dependency graph rustls's implicit `ClientConfig::builder()` panics; an
//! explicit provider never does.
//!
//! TLS failures are put in words by [`describe_failure`], for
//! `crate::error::describe_postgres`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres_rustls::MakeRustlsConnect;

use tokio_postgres::config::ChannelBinding as PgChannelBinding;

mod describe;
mod verify;

pub(crate) use describe::{describe_failure, refused_tls};
use verify::{ChainOnly, EncryptOnly};

/// TLS requirement, with libpq's meaning. Ordered from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext otherwise.
    Prefer,
    /// TLS always; the certificate is not checked (what Heroku documents,
    /// and the default).
    #[default]
    Require,
    /// TLS always; the certificate must chain to a trusted root.
    VerifyCa,
    /// TLS always; the certificate must chain to a trusted root and name the
    /// host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling: `disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether this mode verifies the server's certificate.
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Channel binding for SCRAM-SHA-256 (`channel_binding` in libpq). Ordered
/// from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use it when the server and TLS allow (the default).
    #[default]
    Prefer,
    /// Fail unless the server authenticates with SCRAM-SHA-256-PLUS over TLS.
    Require,
}

impl From<ChannelBinding> for PgChannelBinding {
    fn from(c: ChannelBinding) -> PgChannelBinding {
        match c {
            ChannelBinding::Disable => PgChannelBinding::Disable,
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        }
    }
}

/// Where trusted roots for `verify-ca` / `verify-full` come from.
#[derive(Clone, Default)]
pub(crate) enum Roots {
    /// Mozilla's roots from `webpki-roots` (Heroku's Enhanced Certificates
    /// chain to ISRG Root X1, which is among them).
    #[default]
    Webpki,
    /// PEM bytes given to the builder.
    Pem(Arc<Vec<u8>>),
    /// A PEM file named by the URL's `sslrootcert`.
    PemFile(PathBuf),
    /// The platform's certificate store (feature `native-roots`).
    #[cfg(feature = "native-roots")]
    Native,
}

impl Roots {
    /// What `sslrootcert=system` means: the platform's store with the
    /// `native-roots` feature, Mozilla's roots without it.
    pub(crate) fn system() -> Roots {
        #[cfg(feature = "native-roots")]
        return Roots::Native;
        #[cfg(not(feature = "native-roots"))]
        return Roots::Webpki;
    }
}

/// A client certificate chain and its private key, for servers that demand
/// one (`clientcert=verify-full` in `pg_hba.conf`; Heroku Private and Shield
/// databases).
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl ClientIdentity {
    pub(crate) fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity, TlsError> {
        let chain = read_certs(cert_pem, "client certificate")?;
        if chain.is_empty() {
            return Err(TlsError::new(
                "the client certificate PEM holds no certificate",
            ));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| TlsError::new(format!("reading the client key: {e}")))?
            .ok_or_else(|| TlsError::new("the client key PEM holds no private key"))?;
        Ok(ClientIdentity {
            chain,
            key: Arc::new(key),
        })
    }

    pub(crate) fn from_files(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        let cert_pem = read_file(cert, "sslcert")?;
        let key_pem = read_file(key, "sslkey")?;
        ClientIdentity::from_pem(&cert_pem, &key_pem)
    }
}

/// A TLS configuration problem found before connecting (unreadable roots,
/// a key that does not parse). Never holds key material.
#[derive(Debug, Clone)]
pub struct TlsError {
    message: String,
}

impl TlsError {
    fn new(message: impl Into<String>) -> TlsError {
        TlsError {
            message: message.into(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS configuration: {}", self.message)
    }
}

impl std::error::Error for TlsError {}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError::new(format!("reading {what} file {}: {e}", path.display())))
}

fn read_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(format!("reading {what} PEM: {e}")))
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let pem = match roots {
        Roots::Webpki => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(store);
        }
        Roots::Pem(pem) => pem.as_ref().clone(),
        Roots::PemFile(path) => read_file(path, "sslrootcert")?,
        #[cfg(feature = "native-roots")]
        Roots::Native => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "it is empty".to_string(), ToString::to_string);
                return Err(TlsError::new(format!(
                    "no usable root certificate in the platform's store: {why}"
                )));
            }
            return Ok(store);
        }
    };
    let certs = read_certs(&pem, "root certificate")?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::new("no usable root certificate in the given PEM"));
    }
    Ok(store)
}

/// The connector for one generation.
pub(crate) fn connector(
    mode: SslMode,
    roots: &Roots,
    identity: Option<&ClientIdentity>,
) -> Result<MakeRustlsConnect, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(EncryptOnly { provider }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
                    .build()
                    .map_err(|e| TlsError::new(e.to_string()))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly { inner: webpki })
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| TlsError::new(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use rustls::CertificateError;
    use rustls::pki_types::ServerName;

    use super::describe::describe_rustls;
    use super::*;

    #[test]
    fn certificate_failures_say_which_check_failed() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe_rustls(&unknown).contains("unknown issuer"));
        let mismatch =
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("db.example").unwrap(),
                presented: vec![
                    "DnsName(\"localhost\")".into(),
                    "IpAddress(127.0.0.1)".into(),
                ],
            });
        let text = describe_rustls(&mismatch);
        assert!(text.contains("host name mismatch"), "{text}");
        assert!(text.contains("\"db.example\""), "{text}");
        assert!(text.contains("localhost, 127.0.0.1"), "{text}");
        let required = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(describe_rustls(&required).contains("requires a client certificate"));
        let unknown_ca = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        assert!(describe_rustls(&unknown_ca).contains("rejected the client certificate"));
    }

    #[test]
    fn every_mode_builds_with_the_explicit_provider() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            connector(mode, &Roots::Webpki, None).unwrap();
        }
    }

    #[test]
    fn garbage_roots_are_a_clear_error() {
        let e = connector(
            SslMode::VerifyFull,
            &Roots::Pem(Arc::new(b"not a pem".to_vec())),
            None,
        )
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("no usable root certificate"),
            "{e}"
        );
        let e = connector(
            SslMode::VerifyFull,
            &Roots::PemFile("/nonexistent/ca.pem".into()),
            None,
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("sslrootcert"), "{e}");
    }
}
