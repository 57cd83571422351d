//! What `PoolBuilder::build` checks before anything is assembled: every
//! setting that cannot work is refused with a message naming it, and the
//! files it names (root certificates, a client certificate) are read.

use std::sync::Arc;

use super::{MAX_POOL_SIZE, PoolBuilder};
use crate::error::{Error, ErrorKind};
use crate::tls::{ClientIdentity, Roots};

impl PoolBuilder {
    /// The builder with its settings checked and its files read.
    pub(super) fn checked(mut self) -> Result<PoolBuilder, Error> {
        let build_err = |msg: String| Error::new(ErrorKind::Build, msg);
        if self.max_size == 0 || self.max_size > MAX_POOL_SIZE {
            return Err(build_err(format!(
                "max_size must be at least 1 and at most {MAX_POOL_SIZE} (got {})",
                self.max_size
            )));
        }
        if self.pipeline_depth == 0 || self.pipeline_depth > crate::pipeline::MAX_DEPTH {
            return Err(build_err(format!(
                "pipeline_depth must be at least 1 and at most {} (got {})",
                crate::pipeline::MAX_DEPTH,
                self.pipeline_depth
            )));
        }
        self.retry.validate().map_err(build_err)?;
        if [
            self.maintenance.watch,
            self.maintenance.idle_timeout,
            self.maintenance.max_lifetime,
        ]
        .iter()
        .any(|d| d.is_some_and(|d| d.is_zero()))
        {
            return Err(build_err(
                "watch, idle_timeout and max_lifetime must be more than zero".into(),
            ));
        }
        if self.refresh.backoff_cap.is_zero() {
            return Err(build_err(
                "refetch_backoff_cap must be more than zero".into(),
            ));
        }
        if self.refresh.fetch_timeout.is_zero() {
            return Err(build_err("fetch_timeout must be more than zero".into()));
        }
        if let Some(b) = &self.refresh.budget {
            b.validate().map_err(build_err)?;
        }
        if let Some(path) = &self.root_cert_file {
            let pem = std::fs::read(path).map_err(|e| {
                build_err(format!("reading root certificates {}: {e}", path.display()))
            })?;
            self.settings.roots = Roots::Pem(Arc::new(pem));
        }
        if let Some((cert, key)) = &self.client_cert {
            let id = ClientIdentity::from_pem(cert, key).map_err(|e| {
                Error::new(ErrorKind::Build, "the client certificate cannot be used").with_cause(e)
            })?;
            self.settings.client_identity = Some(id);
        }
        let pooler = self
            .pooler_mode
            .unwrap_or_else(|| self.source.is_pooler_url());
        if self.ping_timeout.is_zero() {
            return Err(build_err("ping_timeout must be more than zero".into()));
        }
        if self.pooler_query_timeout.is_zero() {
            return Err(build_err(
                "pooler_query_timeout must be more than zero".into(),
            ));
        }
        self.settings.pooler = pooler;
        Ok(self)
    }
}
