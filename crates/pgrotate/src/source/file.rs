//! [`File`]: the URL from a file, read again on every fetch.

use std::path::PathBuf;

use super::{SourceError, SourceErrorKind, UrlSource};
use crate::url::DatabaseUrl;

/// Reads a file holding the URL (a mounted secret, a file a sidecar keeps
/// fresh) on every fetch. Surrounding white space is trimmed.
///
/// ```
/// let source = pgrotate::source::File::new("/run/secrets/database_url");
/// ```
#[derive(Debug, Clone)]
pub struct File {
    path: PathBuf,
}

impl File {
    /// A source reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> File {
        File { path: path.into() }
    }
}

impl UrlSource for File {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound => SourceErrorKind::NotFound,
                _ => SourceErrorKind::Unavailable,
            };
            SourceError::new(kind, format!("cannot read the file: {e}"))
        })?;
        Ok(DatabaseUrl::parse(text)?)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}
