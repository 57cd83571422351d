//! From a fetched URL to what a connect needs: parse the URL's TLS
//! parameters ourselves, hand the rest to tokio-postgres, then apply the
//! code-side settings the source must not carry.
//!
//! URL parameters honoured:
//!
//! | parameter | read by | meaning |
//! |---|---|---|
//! | `sslmode` | pgrotate | `disable`, `allow` (taken as `prefer`), `prefer`, `require`, `verify-ca`, `verify-full`, with libpq's meaning; may raise the builder's minimum, lowers it only when the builder allows it |
//! | `sslrootcert` | pgrotate | a PEM file of trusted roots for `verify-ca` / `verify-full`, used instead of the builder's; `system` means the default roots (`webpki-roots`) and `verify-full`, as in libpq 16. As in libpq, `require` with roots given (here or on the builder) checks the chain: `verify-ca` |
//! | `sslcert`, `sslkey` | pgrotate | a client certificate and key (PEM files, both or neither) for servers that demand one, used instead of the builder's |
//! | `channel_binding` | pgrotate | `disable`, `prefer`, `require` (SCRAM-SHA-256-PLUS over TLS); may raise the builder's, never lowers it |
//! | `application_name`, `connect_timeout`, `options`, `keepalives*`, `tcp_user_timeout`, `target_session_attrs`, `host`, `hostaddr`, `port`, `user`, `password`, `dbname`, `sslnegotiation`, `load_balance_hosts` | tokio-postgres | as in libpq |
//!
//! Any other parameter is refused with an error naming it (libpq's
//! `sslpassword`, `sslcrl`, `sslsni` among them: none is silently ignored).

use std::fmt;
use std::time::Duration;

use crate::tls::{self, ChannelBinding, ClientIdentity, Roots, SslMode, TlsError};
use crate::url::{DatabaseUrl, RootCert, UrlError, UrlParts};

/// Code-side settings, applied to every URL the source returns and never
/// written back to it.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) sslmode: SslMode,
    pub(crate) allow_weaker_sslmode: bool,
    pub(crate) roots: Roots,
    pub(crate) client_identity: Option<ClientIdentity>,
    pub(crate) channel_binding: Option<ChannelBinding>,
    pub(crate) application_name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalives_idle: Option<Duration>,
    pub(crate) tcp_user_timeout: Option<Duration>,
    /// The URL is a transaction-mode pooler's (PgBouncer).
    pub(crate) pooler: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            sslmode: SslMode::Require,
            allow_weaker_sslmode: false,
            roots: Roots::default(),
            client_identity: None,
            channel_binding: None,
            application_name: None,
            connect_timeout: Duration::from_secs(10),
            keepalives_idle: Some(Duration::from_secs(30)),
            tcp_user_timeout: None,
            pooler: false,
        }
    }
}

/// Everything one generation connects with.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: crate::wire::ObservingTls,
    pub(crate) sslmode: SslMode,
    /// Through a transaction-mode pooler: check each new connection with a
    /// round trip (a connect to PgBouncer proves nothing about its login
    /// to the server).
    pub(crate) pooler: bool,
}

/// Why a URL could not be turned into a [`Target`].
#[derive(Debug)]
pub(crate) enum TargetError {
    Url(UrlError),
    Tls(TlsError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause itself is this error's `source()`.
        f.write_str(match self {
            TargetError::Url(_) => "a URL parameter is not usable",
            TargetError::Tls(_) => "its TLS settings are not usable",
        })
    }
}

impl std::error::Error for TargetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TargetError::Url(e) => Some(e),
            TargetError::Tls(e) => Some(e),
        }
    }
}

impl Settings {
    /// The sslmode used for a URL that asks for `from_url`.
    pub(crate) fn effective_sslmode(&self, from_url: Option<SslMode>) -> SslMode {
        match from_url {
            Some(m) if m > self.sslmode => m,
            Some(m) if self.allow_weaker_sslmode => m,
            _ => self.sslmode,
        }
    }

    /// The sslmode a URL connects with: [`Settings::effective_sslmode`],
    /// then libpq's two rules about roots.
    pub(crate) fn sslmode_for(
        &self,
        from_url: Option<SslMode>,
        rootcert: Option<&RootCert>,
    ) -> SslMode {
        let mode = self.effective_sslmode(from_url);
        let named_roots = match rootcert {
            // libpq 16: `sslrootcert=system` means verify-full.
            Some(RootCert::System) => return mode.max(SslMode::VerifyFull),
            Some(RootCert::File(_)) => true,
            None => !matches!(self.roots, Roots::Webpki),
        };
        // libpq: "if a root CA file exists, the behavior of sslmode=require
        // will be the same as that of verify-ca". Roots given by name (the
        // URL's file, the builder's PEM) are meant to be used.
        if mode == SslMode::Require && named_roots {
            SslMode::VerifyCa
        } else {
            mode
        }
    }

    /// The channel binding used for a URL that asks for `from_url`: the
    /// builder's is a minimum a URL may raise (unset, tokio-postgres's
    /// `prefer` applies).
    pub(crate) fn effective_channel_binding(
        &self,
        from_url: Option<ChannelBinding>,
    ) -> Option<ChannelBinding> {
        match (from_url, self.channel_binding) {
            (Some(url), Some(builder)) => Some(url.max(builder)),
            (url, builder) => url.or(builder),
        }
    }

    pub(crate) fn target(&self, url: &DatabaseUrl) -> Result<Target, TargetError> {
        let parts = UrlParts::split(url).map_err(TargetError::Url)?;
        let mut config = parts.tokio_config().map_err(TargetError::Url)?;
        let roots = match &parts.sslrootcert {
            Some(RootCert::File(path)) => Roots::PemFile(path.clone()),
            Some(RootCert::System) => Roots::system(),
            None => self.roots.clone(),
        };
        let sslmode = self.sslmode_for(parts.sslmode, parts.sslrootcert.as_ref());
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let channel_binding = self.effective_channel_binding(parts.channel_binding);
        if self.pooler && channel_binding == Some(ChannelBinding::Require) {
            return Err(TargetError::Url(UrlError::InvalidParameter {
                name: "channel_binding".into(),
                problem: "require cannot work through a connection pooler: PgBouncer never offers \
                          SCRAM-SHA-256-PLUS (use prefer)"
                    .into(),
            }));
        }
        if let Some(cb) = channel_binding {
            config.channel_binding(cb.into());
        }
        if let Some(name) = &self.application_name {
            config.application_name(name.clone());
        }
        // Per host: the smaller of the URL's `connect_timeout` and the
        // builder's, so neither can make the other wait longer.
        let per_host = config
            .get_connect_timeout()
            .map_or(self.connect_timeout, |url| (*url).min(self.connect_timeout));
        config.connect_timeout(per_host);
        if let Some(idle) = self.keepalives_idle {
            config.keepalives(true).keepalives_idle(idle);
        }
        if let Some(t) = self.tcp_user_timeout {
            config.tcp_user_timeout(t);
        }
        let identity = match (&parts.sslcert, &parts.sslkey) {
            (Some(cert), Some(key)) => {
                Some(ClientIdentity::from_files(cert, key).map_err(TargetError::Tls)?)
            }
            (None, None) => self.client_identity.clone(),
            _ => {
                return Err(TargetError::Url(UrlError::InvalidParameter {
                    name: "sslcert".into(),
                    problem: "sslcert and sslkey must be given together".into(),
                }));
            }
        };
        let tls = crate::wire::ObservingTls::new(
            tls::connector(sslmode, &roots, identity.as_ref()).map_err(TargetError::Tls)?,
        );
        Ok(Target {
            config,
            tls,
            sslmode,
            pooler: self.pooler,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The text of a target error's cause (its own Display is one line of
    /// pgrotate's words).
    fn cause(e: &TargetError) -> String {
        std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    fn url(s: &str) -> DatabaseUrl {
        DatabaseUrl::parse(s).unwrap()
    }

    #[test]
    fn our_parameters_are_taken_out_before_tokio_postgres_sees_them() {
        let parts = UrlParts::split(&url(
            "postgres://u:p@h/d?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x&channel_binding=require",
        ))
        .unwrap();
        assert_eq!(parts.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(
            parts.sslrootcert,
            Some(RootCert::File(PathBuf::from("/tmp/ca.pem")))
        );
        assert_eq!(parts.channel_binding, Some(ChannelBinding::Require));
        let cfg = parts.tokio_config().unwrap();
        assert_eq!(cfg.get_application_name(), Some("x"));
    }

    #[test]
    fn unknown_parameters_and_bad_values_are_named() {
        let e = DatabaseUrl::parse("postgres://u:p@h/d?sslmode=sometimes").unwrap_err();
        assert!(format!("{e:#}").contains("sslmode"), "{e}");
        let e = DatabaseUrl::parse("postgres://u:p@h/d?frobnicate=1").unwrap_err();
        assert!(format!("{e:#}").contains("frobnicate"), "{e}");
    }

    #[test]
    fn a_url_may_raise_the_sslmode_but_not_lower_it_unless_allowed() {
        let mut s = Settings::default();
        assert_eq!(s.effective_sslmode(None), SslMode::Require);
        assert_eq!(
            s.effective_sslmode(Some(SslMode::VerifyFull)),
            SslMode::VerifyFull
        );
        assert_eq!(
            s.effective_sslmode(Some(SslMode::Disable)),
            SslMode::Require
        );
        s.allow_weaker_sslmode = true;
        assert_eq!(
            s.effective_sslmode(Some(SslMode::Disable)),
            SslMode::Disable
        );
    }

    #[test]
    fn named_roots_make_require_check_the_chain_as_libpq_does() {
        let file = RootCert::File("/tmp/ca.pem".into());
        let s = Settings::default();
        assert_eq!(s.sslmode_for(None, None), SslMode::Require);
        assert_eq!(s.sslmode_for(None, Some(&file)), SslMode::VerifyCa);
        assert_eq!(
            s.sslmode_for(Some(SslMode::VerifyFull), Some(&file)),
            SslMode::VerifyFull
        );
        assert_eq!(
            s.sslmode_for(None, Some(&RootCert::System)),
            SslMode::VerifyFull
        );
        let with_pem = Settings {
            roots: Roots::Pem(std::sync::Arc::new(b"pem".to_vec())),
            ..Settings::default()
        };
        assert_eq!(with_pem.sslmode_for(None, None), SslMode::VerifyCa);
        // Prefer and disable stay what the builder asked for.
        let prefer = Settings {
            sslmode: SslMode::Prefer,
            ..with_pem
        };
        assert_eq!(prefer.sslmode_for(None, Some(&file)), SslMode::Prefer);
    }

    #[test]
    fn sslrootcert_system_is_not_a_file() {
        let parts = UrlParts::split(&url("postgres://u:p@h/d?sslrootcert=system")).unwrap();
        assert_eq!(parts.sslrootcert, Some(RootCert::System));
        let t = Settings::default()
            .target(&url("postgres://u:p@h/d?sslrootcert=system"))
            .unwrap();
        assert_eq!(t.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn a_url_may_raise_channel_binding_but_not_lower_the_builders() {
        let mut s = Settings::default();
        assert_eq!(s.effective_channel_binding(None), None);
        assert_eq!(
            s.effective_channel_binding(Some(ChannelBinding::Disable)),
            Some(ChannelBinding::Disable)
        );
        s.channel_binding = Some(ChannelBinding::Require);
        assert_eq!(
            s.effective_channel_binding(Some(ChannelBinding::Disable)),
            Some(ChannelBinding::Require)
        );
        s.channel_binding = Some(ChannelBinding::Prefer);
        assert_eq!(
            s.effective_channel_binding(Some(ChannelBinding::Require)),
            Some(ChannelBinding::Require)
        );
        let t = s
            .target(&url("postgres://u:p@h/d?channel_binding=require"))
            .unwrap();
        assert_eq!(
            t.config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
    }

    #[test]
    fn the_builders_client_identity_is_kept_unless_the_url_names_one() {
        let e = Settings::default()
            .target(&url("postgres://u:p@h/d?sslcert=%2Ftmp%2Fc.pem"))
            .err()
            .unwrap();
        assert!(cause(&e).contains("sslkey"), "{e}");
        let e = Settings::default()
            .target(&url(
                "postgres://u:p@h/d?sslcert=%2Fnonexistent%2Fc.pem&sslkey=%2Fnonexistent%2Fk.pem",
            ))
            .err()
            .unwrap();
        assert!(cause(&e).contains("sslcert"), "{e}");
    }

    #[test]
    fn code_side_settings_are_applied() {
        let s = Settings {
            application_name: Some("svc".into()),
            ..Settings::default()
        };
        let t = s.target(&url("postgres://u:p@h/d")).unwrap();
        assert_eq!(t.sslmode, SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("svc"));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
    }

    #[test]
    fn a_urls_connect_timeout_counts_when_it_is_the_smaller() {
        let s = Settings::default();
        let t = s
            .target(&url("postgres://u:p@h/d?connect_timeout=1"))
            .unwrap();
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(1))
        );
        let t = s
            .target(&url("postgres://u:p@h/d?connect_timeout=60"))
            .unwrap();
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
    }
}
