//! What a TLS failure means, in words: which check failed, found in the
//! error's cause chain.

/// tokio-postgres's message when the server answers `N` to the SSLRequest
/// and the sslmode requires TLS (`require`, `verify-ca`, `verify-full`).
const PG_NO_TLS: &str = "server does not support TLS";
/// tokio-postgres's message when `channel_binding=require` and the server
/// did not authenticate with SCRAM-SHA-256-PLUS.
const PG_NO_CHANNEL_BINDING: &str = "server did not use channel binding";

/// Whether the server refused TLS (it answered `N` to the SSLRequest).
pub(crate) fn refused_tls(err: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        if c.to_string() == PG_NO_TLS {
            return true;
        }
        cause = c.source();
    }
    false
}

/// What a TLS failure means, when `err`'s cause chain holds one: which
/// check failed, in words. tokio-postgres's own text is only "error
/// performing TLS handshake", so the chain is searched for the rustls error
/// (tokio-rustls wraps it in an `io::Error`, whose `source()` skips it: it
/// is found through `get_ref()`) and for tokio-postgres's fixed messages
/// about a server without TLS and a missing channel binding. Nothing here
/// holds a password: host names, certificate names and alert names only.
pub(crate) fn describe_failure(err: &tokio_postgres::Error) -> Option<String> {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let rustls_err = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(e) = rustls_err {
            return Some(format!("TLS: {}", describe_rustls(e)));
        }
        let text = c.to_string();
        if text == PG_NO_TLS {
            return Some(
                "TLS: the server does not offer TLS (it refused the SSLRequest) and the sslmode \
                 requires it; plaintext is used only when the builder asks for \
                 SslMode::Prefer or SslMode::Disable"
                    .into(),
            );
        }
        if text == PG_NO_CHANNEL_BINDING {
            return Some(
                "channel_binding=require, but the server did not authenticate with \
                 SCRAM-SHA-256-PLUS: channel binding needs TLS and scram-sha-256 \
                 authentication (PgBouncer never offers it)"
                    .into(),
            );
        }
        cause = c.source();
    }
    None
}

/// A name from `NotValidForNameContext::presented` without webpki's Debug
/// wrapping: `DnsName("localhost")` → `localhost`, `IpAddress(127.0.0.1)` →
/// `127.0.0.1`.
fn presented_name(name: &str) -> &str {
    for (open, close) in [("DnsName(\"", "\")"), ("IpAddress(", ")")] {
        if let Some(inner) = name
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
        {
            return inner;
        }
    }
    name
}

pub(super) fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by a trusted root \
                 (unknown issuer); give the CA that signed it with sslrootcert or the \
                 builder's root certificates"
                .into(),
            C::NotValidForName => "the server's certificate is not valid for the host name \
                 connected to (host name mismatch)"
                .into(),
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the server's certificate is not valid for host name {:?} (host name \
                 mismatch; it names {}); connect by a name it carries, or use verify-ca \
                 to check the chain only",
                expected.to_str(),
                if presented.is_empty() {
                    "no host".to_string()
                } else {
                    presented
                        .iter()
                        .map(|n| presented_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".into()
            }
            // webpki found a CA with the issuer's name whose key did not sign
            // the certificate: another CA of the same name (a regenerated
            // one), as good as unknown.
            C::BadSignature => "the server's certificate is not signed by a trusted root (bad \
                 signature: a CA with its issuer's name did not sign it); give the CA that \
                 signed it with sslrootcert or the builder's root certificates"
                .into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for a TLS server (extended key usage)".into()
            }
            other => format!("the server's certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            A::CertificateRequired => "the server requires a client certificate and none was \
                 sent; give one with sslcert/sslkey or the builder's client certificate"
                .into(),
            A::UnknownCA => {
                "the server rejected the client certificate: not signed by a CA it trusts \
                 (unknown CA)"
                    .into()
            }
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::AccessDenied => format!("the server rejected the client certificate ({alert:?})"),
            other => format!("the server ended the handshake with the alert {other:?}"),
        },
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".into(),
        other => other.to_string(),
    }
}
