//! [`DatabaseUrl`]: a fetched `postgres://` URL that never prints its password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::tls::{ChannelBinding, SslMode};

/// A PostgreSQL URL as a source returned it (`postgres://` or
/// `postgresql://`), checked for the parts a pool needs: a host, a user and a
/// password.
///
/// `Debug` and `Display` print the URL with the password replaced by `_`
/// (also a `password=` query parameter); the raw text is only reachable
/// through [`DatabaseUrl::expose_secret`].
///
/// ```
/// use pgrotate::DatabaseUrl;
/// let url = DatabaseUrl::parse("postgres://app:s3cret@db.example.com:5432/app").unwrap();
/// assert_eq!(url.to_string(), "postgres://app:_@db.example.com:5432/app");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// assert!(DatabaseUrl::parse("mysql://x").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: String,
}

/// Why a text is not a usable PostgreSQL URL. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// Nothing but white space.
    Empty,
    /// It does not start with `postgres://` or `postgresql://`.
    NotPostgres,
    /// It has no host.
    NoHost,
    /// It has no user name.
    NoUser,
    /// It has no password: a pool needs one to reconnect.
    NoPassword,
    /// A parameter has a value pgrotate or tokio-postgres does not accept.
    InvalidParameter {
        /// The parameter's name.
        name: String,
        /// What is wrong (never the value of a secret).
        problem: String,
    },
    /// tokio-postgres could not parse it.
    Invalid(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Empty => f.write_str("the value is empty"),
            UrlError::NotPostgres => {
                f.write_str("not a PostgreSQL URL (expected postgres:// or postgresql://)")
            }
            UrlError::NoHost => f.write_str("the URL has no host"),
            UrlError::NoUser => f.write_str("the URL has no user name"),
            UrlError::NoPassword => f.write_str("the URL has no password"),
            UrlError::InvalidParameter { name, problem } => {
                write!(f, "URL parameter `{name}`: {problem}")
            }
            UrlError::Invalid(why) => write!(f, "malformed URL: {why}"),
        }
    }
}

impl std::error::Error for UrlError {}

impl DatabaseUrl {
    /// Checks a URL and keeps it. Surrounding white space (the newline
    /// `heroku config:get` prints) is trimmed.
    pub fn parse(text: impl AsRef<str>) -> Result<DatabaseUrl, UrlError> {
        let raw = text.as_ref().trim();
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        let url = DatabaseUrl {
            raw: raw.to_string(),
        };
        // The full check (parameters, tokio-postgres's own parse) is the one
        // the pool uses to connect, so a URL that passes here connects.
        let parts = crate::url::UrlParts::split(&url)?;
        let config = parts.tokio_config()?;
        if config.get_hosts().is_empty() {
            return Err(UrlError::NoHost);
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(UrlError::NoUser);
        }
        if config.get_password().is_none_or(<[u8]>::is_empty) {
            return Err(UrlError::NoPassword);
        }
        Ok(url)
    }

    /// The raw URL, password included. Hand it only to code that connects.
    pub fn expose_secret(&self) -> &str {
        &self.raw
    }

    /// The URL with its password replaced by `_`. The whole text is one
    /// URL, so a password with white space in it is hidden whole too.
    pub fn redacted(&self) -> String {
        match self.raw.find("://") {
            Some(pos) => {
                let (head, tail) = self.raw.split_at(pos + 3);
                redact_password_params(&format!("{head}{}", redact_one(tail)))
            }
            None => redact(&self.raw),
        }
    }

    /// The host to connect to: a name, an IP address or a Unix socket
    /// directory. With several hosts (`h1:5432,h2:5433`), the first.
    /// With [`port`](DatabaseUrl::port), [`database`](DatabaseUrl::database)
    /// and [`user`](DatabaseUrl::user): the parts of the URL that may be
    /// shown, none of them the password.
    ///
    /// ```
    /// use pgrotate::DatabaseUrl;
    /// let url = DatabaseUrl::parse("postgres://app:s3cret@db.example.com:6543/shop").unwrap();
    /// assert_eq!(url.host(), "db.example.com");
    /// assert_eq!(url.port(), 6543);
    /// assert_eq!(url.database(), "shop");
    /// assert_eq!(url.user(), "app");
    /// // No port and no database: PostgreSQL's defaults.
    /// let url = DatabaseUrl::parse("postgres://app:s3cret@db.example.com").unwrap();
    /// assert_eq!((url.port(), url.database().as_str()), (5432, "app"));
    /// ```
    pub fn host(&self) -> String {
        match self.config().get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
            None => String::new(),
        }
    }

    /// The port of the first host; 5432 when the URL names none.
    pub fn port(&self) -> u16 {
        self.config().get_ports().first().copied().unwrap_or(5432)
    }

    /// The database name; the user name when the URL names none, as the
    /// server does.
    pub fn database(&self) -> String {
        let config = self.config();
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
            .to_string()
    }

    /// The user name (percent-decoded).
    pub fn user(&self) -> String {
        self.config().get_user().unwrap_or_default().to_string()
    }

    /// tokio-postgres's parse, which [`DatabaseUrl::parse`] already checked.
    fn config(&self) -> tokio_postgres::Config {
        UrlParts::split(self)
            .and_then(|parts| parts.tokio_config())
            .unwrap_or_default()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

/// Replaces the password of every `scheme://user:password@` in `text`, and
/// the value of every `password=` parameter, with `_`.
///
/// It errs on the side of hiding: everything between the first `:` after
/// `://` and the *last* `@` of the URL is treated as the password, so a
/// password with an unencoded `@` or `/` is still hidden whole.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The URL ends at white space.
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        out.push_str(&redact_one(url));
        rest = after;
    }
    out.push_str(rest);
    redact_password_params(&out)
}

/// `url` is everything after `scheme://` up to white space.
fn redact_one(url: &str) -> String {
    match url.rfind('@') {
        Some(at) => {
            let userinfo = &url[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:_{}", &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

fn redact_password_params(text: &str) -> String {
    // Case-insensitive and wherever it stands (`?password=`, `PGPASSWORD=`,
    // after a newline): hiding too much is safe, too little is not.
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(pos) = lower[from..].find(KEY) {
        let value_start = from + pos + KEY.len();
        out.push_str(&text[from..value_start]);
        let rest = &text[value_start..];
        let end = match rest.chars().next() {
            // A quoted value (`PGPASSWORD='two words'` in `set -x` output):
            // up to its closing quote, or the end of the line.
            Some(q @ ('\'' | '"')) => rest[1..]
                .find([q, '\n'])
                .map_or(text.len(), |e| value_start + 1 + e + 1),
            _ => rest
                .find(|c: char| c == '&' || c.is_whitespace())
                .map_or(text.len(), |e| value_start + e),
        };
        out.push('_');
        from = end;
    }
    out.push_str(&text[from..]);
    out
}

// The URL's parameter values, parsed here with the URL: `sslmode=…`,
// `channel_binding=…`.
impl FromStr for SslMode {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<SslMode, UrlError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plaintext first; treating it as `prefer`
            // never makes a connection less safe than asked.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(UrlError::InvalidParameter {
                    name: "sslmode".into(),
                    problem: "expected disable, allow, prefer, require, verify-ca or verify-full"
                        .into(),
                });
            }
        })
    }
}

impl FromStr for ChannelBinding {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<ChannelBinding, UrlError> {
        Ok(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => {
                return Err(UrlError::InvalidParameter {
                    name: "channel_binding".into(),
                    problem: "expected disable, prefer or require".into(),
                });
            }
        })
    }
}

/// A URL split into what tokio-postgres parses and what pgrotate reads
/// itself.
pub(crate) struct UrlParts {
    /// The URL without the parameters below (still holds the password).
    rest: String,
    pub(crate) sslmode: Option<SslMode>,
    pub(crate) sslrootcert: Option<RootCert>,
    pub(crate) sslcert: Option<PathBuf>,
    pub(crate) sslkey: Option<PathBuf>,
    pub(crate) channel_binding: Option<ChannelBinding>,
}

impl UrlParts {
    pub(crate) fn split(url: &DatabaseUrl) -> Result<UrlParts, UrlError> {
        let raw = url.expose_secret();
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err(UrlError::NotPostgres);
        }
        let mut parts = UrlParts {
            rest: String::new(),
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: None,
        };
        let (base, query) = match raw.split_once('?') {
            Some((b, q)) => (b, q),
            None => (raw, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key, "a parameter name")?;
            let decoded = || percent_decode(value, &key);
            match key.as_str() {
                "sslmode" => parts.sslmode = Some(decoded()?.parse()?),
                "channel_binding" => parts.channel_binding = Some(decoded()?.parse()?),
                "sslrootcert" => parts.sslrootcert = Some(RootCert::from_param(decoded()?)),
                "sslcert" => parts.sslcert = Some(decoded()?.into()),
                "sslkey" => parts.sslkey = Some(decoded()?.into()),
                _ => kept.push(pair),
            }
        }
        parts.rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(parts)
    }

    /// tokio-postgres's parse of the rest. Its error messages name options,
    /// never values; they are redacted all the same.
    pub(crate) fn tokio_config(&self) -> Result<tokio_postgres::Config, UrlError> {
        tokio_postgres::Config::from_str(&self.rest).map_err(|e| {
            UrlError::Invalid(crate::url::redact(&crate::error::describe_postgres(&e)))
        })
    }
}

/// The URL's `sslrootcert`: a file, or libpq's `system` (the default roots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    System,
    File(PathBuf),
}

impl RootCert {
    fn from_param(value: String) -> RootCert {
        if value == "system" {
            RootCert::System
        } else {
            RootCert::File(value.into())
        }
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => out.push(b),
                    None => {
                        return Err(UrlError::InvalidParameter {
                            name: what.to_string(),
                            problem: "invalid percent-encoding".into(),
                        });
                    }
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::InvalidParameter {
        name: what.to_string(),
        problem: "not UTF-8 after percent-decoding".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_password_assignment_is_hidden_whole() {
        let out = redact("+ PGPASSWORD='two words' psql -h db");
        assert!(!out.contains("two") && !out.contains("words"), "{out}");
        assert!(out.contains("psql -h db"), "{out}");
    }

    #[test]
    fn a_password_with_white_space_is_hidden_whole() {
        for raw in [
            "postgres://app:hunter2 zz9secret@db.example/app",
            "postgres://app:zz9secret\t@db.example/app",
        ] {
            let u = DatabaseUrl::parse(raw).unwrap();
            let shown = format!("{u} {u:?}");
            assert!(!shown.contains("zz9secret"), "{shown}");
            assert!(shown.contains("app:_@db.example/app"), "{shown}");
        }
    }

    #[test]
    fn redacts_userinfo_password() {
        assert_eq!(
            redact("postgres://u:p4ss@h:5432/d?sslmode=require"),
            "postgres://u:_@h:5432/d?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://u:p@ss/word@h/d"),
            "postgresql://u:_@h/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn redacts_every_url_in_free_text_and_password_params() {
        let s =
            "error: cannot use postgres://a:one@h/d nor postgres://b:two@h/d?password=three&x=1";
        let r = redact(s);
        for secret in ["one", "two", "three"] {
            assert!(!r.contains(secret), "{r}");
        }
        assert!(r.contains("x=1"));
        assert_eq!(
            redact("host=h password=xyz user=u"),
            "host=h password=_ user=u"
        );
    }

    #[test]
    fn parse_checks_the_parts_a_pool_needs() {
        assert_eq!(DatabaseUrl::parse("  \n"), Err(UrlError::Empty));
        assert_eq!(
            DatabaseUrl::parse("mysql://u:p@h/d"),
            Err(UrlError::NotPostgres)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/d"),
            Err(UrlError::NoPassword)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://:p@h/d"),
            Err(UrlError::NoUser)
        );
        let ok = DatabaseUrl::parse("postgres://u:p@h:5432/d\n").unwrap();
        assert_eq!(ok.expose_secret(), "postgres://u:p@h:5432/d");
    }

    #[test]
    fn parse_errors_never_echo_the_password() {
        let e = DatabaseUrl::parse("postgres://u:hunter2@h:notaport/d").unwrap_err();
        assert!(!format!("{e:#}").contains("hunter2"), "{e}");
        let e = DatabaseUrl::parse("postgres://u:hunter2@h/d?bogus=hunter2").unwrap_err();
        assert!(!format!("{e:#}").contains("hunter2"), "{e}");
    }
}
