//! Replication: a streaming standby of a [`Cluster`], waiting for it to
//! catch up, and promoting it (a failover).

use super::{Cluster, Server};
use crate::error::{ErrorKind, FixtureError};
use crate::util::wait_until;

impl Cluster {
    /// A streaming standby of this server, with the same CA, certificates,
    /// roles and `pg_hba`. Read-only until [`promote`](Self::promote)d.
    ///
    /// Local processes: `pg_basebackup -R -X stream` into a directory of its
    /// own, started on its own free port. A container: a second container
    /// on this cluster's private network whose entrypoint runs
    /// `pg_basebackup` from this one by its container name, its port
    /// published on a free host port.
    pub async fn start_standby(&self) -> Result<Cluster, FixtureError> {
        match &self.server {
            Server::Process(local) => self.start_process_standby(local).await,
            Server::Container(remote) => self.start_container_standby(remote).await,
        }
    }

    /// Waits until `standby` has replayed this server's current WAL position
    /// (`pg_last_wal_replay_lsn() >= pg_current_wal_lsn()`).
    pub async fn wait_replay_caught_up(&self, standby: &Cluster) -> Result<(), FixtureError> {
        let lsn: String = self
            .superuser()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| FixtureError::postgres("reading the primary's WAL position", e))?
            .get(0);
        let standby_client = standby.superuser().await?;
        wait_until("the standby to replay the primary's WAL", || async {
            let row = standby_client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .map_err(|e| FixtureError::postgres("reading the standby's replay position", e))?;
            Ok(row.get::<_, bool>(0))
        })
        .await
    }

    /// Promotes this standby (`pg_promote`); returns once it accepts writes
    /// (`pg_is_in_recovery()` is false).
    pub async fn promote(&self) -> Result<(), FixtureError> {
        let client = self.superuser().await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .map_err(|e| FixtureError::postgres("promoting the standby", e))?
            .get(0);
        if !promoted {
            return Err(FixtureError::new(
                ErrorKind::Timeout,
                "pg_promote did not finish within 60 s",
            ));
        }
        wait_until("the promoted server to leave recovery", || async {
            let row = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| FixtureError::postgres("reading pg_is_in_recovery()", e))?;
            Ok(!row.get::<_, bool>(0))
        })
        .await
    }
}
