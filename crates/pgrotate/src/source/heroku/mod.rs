//! The Heroku sources: the URL from an app's config vars, through the
//! Platform API ([`HerokuApi`], feature `heroku`) or the Heroku CLI
//! ([`HerokuCli`]). Both spend the account's Platform API budget, sized by
//! [`Budget::heroku_fleet`](crate::source::Budget::heroku_fleet).

use std::fmt;

#[cfg(feature = "heroku")]
mod api;
mod cli;

#[cfg(feature = "heroku")]
pub use api::HerokuApi;
pub use cli::HerokuCli;

/// A Heroku API token (`HEROKU_API_KEY`, `heroku auth:token`,
/// `heroku authorizations:create`). `Debug` and `Display` print `_`; the
/// token is only sent in the `Authorization` header.
///
/// ```
/// use pgrotate::source::HerokuToken;
/// let token = HerokuToken::new("d4b1e3f0-secret");
/// assert_eq!(format!("{token} {token:?}"), "_ HerokuToken(_)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct HerokuToken(String);

impl HerokuToken {
    /// A token; surrounding white space (a newline from a file) is trimmed.
    pub fn new(token: impl Into<String>) -> HerokuToken {
        let token = token.into();
        HerokuToken(token.trim().to_string())
    }

    /// The token itself. Hand it only to code that authenticates.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for HerokuToken {
    fn from(token: String) -> HerokuToken {
        HerokuToken::new(token)
    }
}

impl From<&str> for HerokuToken {
    fn from(token: &str) -> HerokuToken {
        HerokuToken::new(token)
    }
}

impl fmt::Debug for HerokuToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HerokuToken(_)")
    }
}

impl fmt::Display for HerokuToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("_")
    }
}
