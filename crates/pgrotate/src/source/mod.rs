//! Where `DATABASE_URL` really lives, and how to fetch it again.
//!
//! A source is one small async trait with one required method,
//! [`UrlSource::fetch`]. Built in: [`Env`], [`File`], [`Command`] (for example
//! `heroku config:get DATABASE_URL -a app`) and [`Static`]; for Heroku,
//! `HerokuApi` (the Platform API's config vars, feature `heroku`, on by
//! default) and [`HerokuCli`] (`heroku config:get VAR -a APP`), both with
//! [`Budget::heroku`] to keep a fleet within the account's API budget.
//! A user's own source (AWS Secrets Manager, Vault, a Kubernetes secret) is
//! one impl:
//!
//! ```
//! use pgrotate::source::{SourceError, UrlSource};
//! use pgrotate::DatabaseUrl;
//!
//! struct Vault { /* client, path */ }
//!
//! impl UrlSource for Vault {
//!     async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
//!         let text = String::from("postgres://app:secret@db.internal:5432/app"); // read it here
//!         Ok(DatabaseUrl::parse(text)?)
//!     }
//!     fn describe(&self) -> String {
//!         "vault secret database/creds/app".into()
//!     }
//! }
//! ```

mod command;
mod env;
mod file;
mod fixed;
mod heroku;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use crate::budget::{
    Budget, HEROKU_ACCOUNT_BURST, HEROKU_ACCOUNT_REFILL_PER_MINUTE, HEROKU_DEFAULT_FLEET,
};
pub use command::Command;
pub use env::Env;
pub use file::File;
pub use fixed::Static;
#[cfg(feature = "heroku")]
pub use heroku::HerokuApi;
pub use heroku::{HerokuCli, HerokuToken};

use crate::url::{DatabaseUrl, UrlError};

/// A place the database URL can be fetched from, again and again.
pub trait UrlSource: Send + Sync + 'static {
    /// Fetches the current URL.
    fn fetch(&self) -> impl Future<Output = Result<DatabaseUrl, SourceError>> + Send;

    /// A short description for errors and logs, e.g. `file /run/secrets/db`.
    /// It must never contain a secret.
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }

    /// How often the pool may fetch: a token bucket ([`Budget`]). Cheap
    /// local sources keep the default, [`Budget::local`]; a source that
    /// costs money or API budget returns a smaller one, as the Heroku
    /// sources do ([`Budget::heroku`]). The pool reads it again after every
    /// fetch, so a source may slow its refill when its upstream asks (the
    /// Heroku API while `RateLimit-Remaining` is low). A source never waits
    /// for its budget itself: the pool paces.
    fn budget(&self) -> Budget {
        Budget::local()
    }

    /// Whether a fetch can ever bring another URL. [`Static`] says no, so
    /// credentials it holds that the server rejects fail at once instead of
    /// being retried until the caller's deadline. Default: yes.
    fn may_change(&self) -> bool {
        true
    }

    /// Whether the URL is a connection pooler's (PgBouncer in transaction
    /// mode), as `DATABASE_CONNECTION_POOL_URL` is on Heroku. The built-in
    /// sources say so when the variable they read ends in
    /// `_CONNECTION_POOL_URL`; the builder's `pooler_mode` overrides it.
    fn is_pooler_url(&self) -> bool {
        false
    }
}

/// Whether a variable name is one Heroku gives a connection pooler's URL.
pub(crate) fn names_pooler_url(var: &str) -> bool {
    var.ends_with("_CONNECTION_POOL_URL")
}

/// Why a source could not give a URL. Holds no URL and no secret: a
/// command's stderr is kept only with every URL in it redacted.
#[derive(Debug, Clone)]
pub struct SourceError {
    kind: SourceErrorKind,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
}

/// The class of a [`SourceError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// Nothing there: a missing file, an unset variable, a missing var.
    NotFound,
    /// A value was there but is not a usable PostgreSQL URL.
    Malformed,
    /// The source refused: bad token, no access.
    Unauthorized,
    /// The source is rate-limiting us.
    RateLimited,
    /// The source failed in a way that may pass: a timeout, a 5xx, an I/O
    /// error, a command that exited non-zero.
    Unavailable,
    /// Anything else.
    Other,
}

impl SourceError {
    /// An error of the given kind. The message must hold no secret.
    pub fn new(kind: SourceErrorKind, message: impl Into<Cow<'static, str>>) -> SourceError {
        SourceError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the pool not to fetch again before this long (at most an
    /// hour: a source cannot keep a pool from following a rotation longer).
    pub fn with_retry_after(mut self, after: Duration) -> SourceError {
        self.retry_after = Some(after.min(MAX_RETRY_AFTER));
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> SourceErrorKind {
        self.kind
    }

    /// How long the source asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether fetching again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            SourceErrorKind::RateLimited | SourceErrorKind::Unavailable
        )
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceError {}

impl From<UrlError> for SourceError {
    fn from(e: UrlError) -> SourceError {
        SourceError::new(SourceErrorKind::Malformed, e.to_string())
    }
}

/// The longest `Retry-After` a source can impose.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe face of [`UrlSource`], for the pool to hold any source.
pub(crate) trait DynSource: Send + Sync {
    fn fetch_boxed(&self) -> BoxFuture<'_, Result<DatabaseUrl, SourceError>>;
    fn describe(&self) -> String;
    fn budget(&self) -> Budget;
    fn may_change(&self) -> bool;
    fn is_pooler_url(&self) -> bool;
}

impl<S: UrlSource> DynSource for S {
    fn fetch_boxed(&self) -> BoxFuture<'_, Result<DatabaseUrl, SourceError>> {
        Box::pin(self.fetch())
    }
    fn describe(&self) -> String {
        UrlSource::describe(self)
    }
    fn budget(&self) -> Budget {
        UrlSource::budget(self)
    }
    fn may_change(&self) -> bool {
        UrlSource::may_change(self)
    }
    fn is_pooler_url(&self) -> bool {
        UrlSource::is_pooler_url(self)
    }
}
