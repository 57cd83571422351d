//! [`Env`]: the URL from an environment variable, read again on every fetch.

use super::{SourceError, SourceErrorKind, UrlSource};
use crate::url::DatabaseUrl;

/// Reads an environment variable (e.g. `DATABASE_URL`) on every fetch, so a
/// process that updates its own environment is followed.
///
/// ```
/// let source = pgrotate::source::Env::new("DATABASE_URL");
/// ```
#[derive(Debug, Clone)]
pub struct Env {
    var: String,
}

impl Env {
    /// A source reading `var`.
    pub fn new(var: impl Into<String>) -> Env {
        Env { var: var.into() }
    }
}

impl UrlSource for Env {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let value = std::env::var(&self.var).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
            };
            SourceError::new(SourceErrorKind::NotFound, why)
        })?;
        Ok(DatabaseUrl::parse(value)?)
    }

    fn describe(&self) -> String {
        format!("environment variable {}", self.var)
    }

    fn is_pooler_url(&self) -> bool {
        super::names_pooler_url(&self.var)
    }
}
