//! [`HerokuApi`]: the URL from an app's config vars, through the Heroku
//! Platform API (`GET /apps/{app}/config-vars`).
//!
//! This file: the public [`HerokuApi`], its settings and the request it
//! sends; reading the answer (status codes, `Retry-After`,
//! `RateLimit-Remaining`, the body) is in `response`.

mod response;

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};

use super::HerokuToken;
use crate::source::{Budget, SourceError, SourceErrorKind, UrlSource};
use crate::time::fmt_duration;
use crate::url::{DatabaseUrl, redact};

/// Tracing target of the Platform API source.
const TARGET: &str = "pgrotate::source::heroku";

/// The Platform API's address.
const DEFAULT_BASE_URL: &str = "https://api.heroku.com";

/// Without it the API answers 406.
const ACCEPT: &str = "application/vnd.heroku+json; version=3";

const USER_AGENT: &str = concat!("pgrotate/", env!("CARGO_PKG_VERSION"));

/// Below this many requests left in the account's bucket
/// (`RateLimit-Remaining`), the budget refills half as fast and a warning
/// is logged.
const LOW_REMAINING: u64 = 100;

/// Reads one config var of a Heroku app (default `DATABASE_URL`) through
/// the Platform API, `GET {base}/apps/{app}/config-vars`, with a bearer
/// token. Feature `heroku` (on by default).
///
/// - **Cheap when nothing changed.** The last `ETag` is sent back as
///   `If-None-Match`; a `304 Not Modified` returns the URL of the last
///   answer, so the pool keeps its generation.
/// - **Within the account's budget.** The account's bucket holds 4,500
///   requests and refills about 75 a minute, shared by every process using
///   one of its tokens. The pool spends this source's [`Budget`]
///   (default [`Budget::heroku`], sized for 100 processes: a burst of 8,
///   one more every 80 s; [`HerokuApi::fleet_size`] for another fleet): a
///   rotation's refetch goes out at once, whatever fetch came just before.
///   While `RateLimit-Remaining` is below 100 the budget refills half as
///   fast; `Retry-After` on 429 and 5xx answers is honoured, with jitter.
///   The source itself never waits: the pool paces.
/// - **Errors a user can act on**, none with a secret in it: a refused token
///   (401/403) names the app, never the token; 404 says there is no such
///   app; a missing var lists the names of the app's `*_URL` vars, never a
///   value; a body that is not JSON, or a var that is not a PostgreSQL URL,
///   says so without echoing the body (it holds the app's other secrets).
///
/// ```
/// use std::time::Duration;
/// use pgrotate::source::HerokuApi;
/// let source = HerokuApi::new("my-app", std::env::var("HEROKU_API_KEY").unwrap_or_default())
///     .var("HEROKU_POSTGRESQL_VIOLET_URL")
///     .timeout(Duration::from_secs(5));
/// ```
pub struct HerokuApi {
    app: String,
    var: String,
    token: HerokuToken,
    base_url: String,
    timeout: Duration,
    budget: Budget,
    client: Result<reqwest::Client, String>,
    memo: Mutex<Memo>,
}

/// What one fetch leaves for the next.
#[derive(Default)]
struct Memo {
    /// The `ETag` of the last answer that gave a usable URL, with that URL.
    etag: Option<(HeaderValue, DatabaseUrl)>,
    /// The `RateLimit-Remaining` of the last answer, when it said.
    remaining: Option<u64>,
}

impl fmt::Debug for HerokuApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HerokuApi")
            .field("app", &self.app)
            .field("var", &self.var)
            .field("token", &self.token)
            .field("base_url", &redact(&self.base_url))
            .field("timeout", &self.timeout)
            .field("budget", &self.budget)
            .finish()
    }
}

impl HerokuApi {
    /// A source reading `DATABASE_URL` of `app` (its name or id) with
    /// `token`. Defaults: base URL `https://api.heroku.com`, a 10 s request
    /// timeout, [`Budget::heroku`].
    pub fn new(app: impl Into<String>, token: impl Into<HerokuToken>) -> HerokuApi {
        HerokuApi {
            app: app.into(),
            var: "DATABASE_URL".into(),
            token: token.into(),
            base_url: DEFAULT_BASE_URL.into(),
            timeout: Duration::from_secs(10),
            budget: Budget::heroku(),
            client: http_client(),
            memo: Mutex::default(),
        }
    }

    /// The config var to read (default `DATABASE_URL`), e.g.
    /// `HEROKU_POSTGRESQL_VIOLET_URL` or `DATABASE_CONNECTION_POOL_URL`.
    #[must_use]
    pub fn var(mut self, var: impl Into<String>) -> HerokuApi {
        self.var = var.into();
        self
    }

    /// Where the API is (default `https://api.heroku.com`): a proxy, or a
    /// local server in tests. A path prefix is kept.
    #[must_use]
    pub fn base_url(mut self, base: impl Into<String>) -> HerokuApi {
        self.base_url = base.into();
        self
    }

    /// How long one request may take, connect and body included (default
    /// 10 s). A request that takes longer is an `Unavailable` error.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> HerokuApi {
        self.timeout = timeout;
        self
    }

    /// How many processes share the account's API budget (default 100):
    /// the budget becomes [`Budget::heroku_fleet`]`(processes)`, one token
    /// every `3,600 s × processes / 4,500`.
    #[must_use]
    pub fn fleet_size(self, processes: u32) -> HerokuApi {
        self.budget(Budget::heroku_fleet(processes))
    }

    /// The budget the pool spends on this source (default
    /// [`Budget::heroku`]).
    #[must_use]
    pub fn budget(mut self, budget: Budget) -> HerokuApi {
        self.budget = budget;
        self
    }

    fn endpoint(&self) -> Result<reqwest::Url, SourceError> {
        if self.app.trim().is_empty() {
            return Err(SourceError::new(
                SourceErrorKind::NotFound,
                "no app name given (HerokuApi::new needs the app's name or id)",
            ));
        }
        let bad_base = || {
            SourceError::new(
                SourceErrorKind::Other,
                format!(
                    "the API base URL {:?} is not an http(s) URL",
                    redact(&self.base_url)
                ),
            )
        };
        let mut url = reqwest::Url::parse(&self.base_url).map_err(|_| bad_base())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_base());
        }
        url.path_segments_mut()
            .map_err(|()| bad_base())?
            .pop_if_empty()
            .extend(["apps", self.app.as_str(), "config-vars"]);
        Ok(url)
    }

    /// The budget as it stands: the account's bucket running low
    /// (`RateLimit-Remaining` below 100) halves the refill.
    fn current_budget(&self, remaining: Option<u64>) -> Budget {
        match remaining {
            Some(r) if r < LOW_REMAINING => self.budget.with_refill(
                self.budget
                    .refill()
                    .saturating_mul(2)
                    .min(crate::budget::MAX_REFILL),
            ),
            _ => self.budget,
        }
    }

    fn unavailable(&self, e: &reqwest::Error) -> SourceError {
        if e.is_timeout() {
            return SourceError::new(
                SourceErrorKind::Unavailable,
                format!(
                    "the Platform API did not answer within {} (the request timeout)",
                    fmt_duration(self.timeout)
                ),
            );
        }
        // reqwest's messages name the request URL (base, app: no secret) and
        // the causes (connection refused, TLS, DNS); redact() covers a proxy
        // URL with a password in it.
        let mut text = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(e);
        while let Some(c) = cause {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c.to_string());
            cause = c.source();
        }
        SourceError::new(
            SourceErrorKind::Unavailable,
            format!("cannot reach the Platform API: {}", redact(&text)),
        )
    }

    /// One conditional GET of the config vars, and what it means.
    async fn request(
        &self,
        client: &reqwest::Client,
        url: reqwest::Url,
        auth: HeaderValue,
    ) -> Result<DatabaseUrl, SourceError> {
        let remembered = self
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .etag
            .clone();
        let mut request = client
            .get(url)
            .header(header::ACCEPT, ACCEPT)
            .header(header::AUTHORIZATION, auth)
            .header(header::USER_AGENT, USER_AGENT)
            .timeout(self.timeout);
        if let Some((etag, _)) = &remembered {
            request = request.header(header::IF_NONE_MATCH, etag.clone());
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| self.unavailable(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let remaining = self.note_rate_limit(&headers);
        // The timeout covers the body too.
        let body = response.bytes().await.map_err(|e| self.unavailable(&e))?;
        tracing::debug!(target: TARGET, app = %self.app, status = status.as_u16(), remaining, elapsed = %fmt_duration(started.elapsed()), "GET config-vars");

        if status == StatusCode::NOT_MODIFIED {
            return match remembered {
                Some((_, url)) => Ok(url),
                None => Err(SourceError::new(
                    SourceErrorKind::Other,
                    "the Platform API answered 304 Not Modified to a request without \
                     If-None-Match",
                )),
            };
        }
        if !status.is_success() {
            return Err(self.status_error(status, &headers, &body));
        }
        let url = self.read_var(&body)?;
        self.memo.lock().unwrap_or_else(|p| p.into_inner()).etag = headers
            .get(header::ETAG)
            .map(|etag| (etag.clone(), url.clone()));
        Ok(url)
    }
}

impl UrlSource for HerokuApi {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| SourceError::new(SourceErrorKind::Other, e.clone()))?;
        let url = self.endpoint()?;
        let mut auth = HeaderValue::try_from(format!("Bearer {}", self.token.expose_secret()))
            .map_err(|_| {
                SourceError::new(
                    SourceErrorKind::Unauthorized,
                    "the token holds characters an HTTP header cannot carry",
                )
            })?;
        auth.set_sensitive(true);
        self.request(client, url, auth).await
    }

    fn describe(&self) -> String {
        format!("Heroku API app {} var {}", self.app, self.var)
    }

    fn is_pooler_url(&self) -> bool {
        crate::source::names_pooler_url(&self.var)
    }

    fn budget(&self) -> Budget {
        let remaining = self
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining;
        self.current_budget(remaining)
    }
}

/// An HTTP/1.1 client over rustls with the crate's one crypto provider
/// (*ring*) and Mozilla's roots, which verify `api.heroku.com`.
fn http_client() -> Result<reqwest::Client, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup for the Platform API: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| format!("building the HTTP client for the Platform API: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> HerokuApi {
        HerokuApi::new("my-app", "tok-123-secret")
    }

    #[test]
    fn the_token_never_prints() {
        let s = source();
        let printed = format!("{s:?} {} {}", s.describe(), s.token);
        assert!(!printed.contains("tok-123-secret"), "{printed}");
        assert_eq!(s.describe(), "Heroku API app my-app var DATABASE_URL");
        assert_eq!(HerokuToken::new(" t\n").expose_secret(), "t");
    }

    #[test]
    fn the_default_budget_keeps_100_processes_within_the_account_refill() {
        let per_process_per_hour = 3600.0 / UrlSource::budget(&source()).refill().as_secs_f64();
        assert!(per_process_per_hour * 100.0 <= 4500.0);
        assert_eq!(
            source().current_budget(Some(LOW_REMAINING - 1)).refill(),
            Duration::from_secs(160)
        );
        assert_eq!(
            source().current_budget(Some(LOW_REMAINING)).refill(),
            Duration::from_secs(80)
        );
        assert_eq!(
            UrlSource::budget(&source().fleet_size(1000)).refill(),
            Duration::from_secs(800)
        );
    }

    #[test]
    fn the_endpoint_keeps_a_path_prefix_and_escapes_the_app() {
        let s = source().base_url("http://127.0.0.1:9/proxy/");
        assert_eq!(
            s.endpoint().unwrap().as_str(),
            "http://127.0.0.1:9/proxy/apps/my-app/config-vars"
        );
        let s = HerokuApi::new("a/b", "t").base_url("https://api.heroku.com");
        assert_eq!(
            s.endpoint().unwrap().as_str(),
            "https://api.heroku.com/apps/a%2Fb/config-vars"
        );
        let e = source().base_url("not a url").endpoint().unwrap_err();
        assert!(format!("{e:#}").contains("not an http(s) URL"), "{e}");
    }

    #[test]
    fn the_http_client_builds_with_the_ring_provider_only() {
        assert!(http_client().is_ok());
    }
}
