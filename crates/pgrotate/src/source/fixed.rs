//! [`Static`]: a URL fixed at construction.

use super::{SourceError, UrlSource};
use crate::url::DatabaseUrl;

/// Always the same URL. For tests and for databases whose credentials never
/// change; a rotation cannot be followed with it.
///
/// ```
/// let source = pgrotate::source::Static::new("postgres://app:pw@localhost/app");
/// ```
#[derive(Clone)]
pub struct Static {
    url: Result<DatabaseUrl, SourceError>,
}

impl Static {
    /// A source that always returns `url`. A malformed URL is reported by
    /// the first fetch (that is, by the pool's `build()`).
    pub fn new(url: impl AsRef<str>) -> Static {
        Static {
            url: DatabaseUrl::parse(url).map_err(SourceError::from),
        }
    }
}

impl std::fmt::Debug for Static {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Static").field(&self.url).finish()
    }
}

impl UrlSource for Static {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        self.url.clone()
    }

    fn describe(&self) -> String {
        "static URL".into()
    }

    fn may_change(&self) -> bool {
        false
    }
}
