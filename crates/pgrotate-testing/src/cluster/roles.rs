//! What a platform does to a [`Cluster`]'s login roles: create them,
//! rotate the password, kill the sessions, swap the role for another.

use super::Cluster;
use crate::error::FixtureError;
use crate::role::{TestRole, ident, literal, prefix_of, random_password, unique_name, verifier};
use crate::util::wait_until;

impl Cluster {
    /// Creates a `LOGIN` role named `prefix` (made lowercase, other characters
    /// turned to `_`) plus a counter and random letters, with a random
    /// password and a database of the same name that it owns. `CONNECT` on
    /// that database is revoked from `PUBLIC`, so roles are isolated.
    pub async fn create_role(&self, prefix: &str) -> Result<TestRole, FixtureError> {
        let role = TestRole {
            name: unique_name(prefix),
            password: random_password(),
            database: String::new(),
        };
        let role = TestRole {
            database: role.name.clone(),
            ..role
        };
        let name = ident(&role.name);
        let client = self.superuser().await?;
        client
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD {}",
                literal(&verifier(&role.password))
            ))
            .await
            .map_err(|e| FixtureError::postgres(format!("creating role {}", role.name), e))?;
        // CREATE DATABASE cannot run inside a multi-statement batch.
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
            .await
            .map_err(|e| FixtureError::postgres(format!("creating database {}", role.name), e))?;
        client
            .batch_execute(&format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC"))
            .await
            .map_err(|e| FixtureError::postgres(format!("isolating database {}", role.name), e))?;
        Ok(role)
    }

    /// Sets a new random password (`ALTER ROLE .. PASSWORD`); returns the role
    /// with it. Open sessions stay logged in, new logins with the old
    /// password fail with `28P01`.
    pub async fn rotate_password(&self, role: &TestRole) -> Result<TestRole, FixtureError> {
        let rotated = TestRole {
            password: random_password(),
            ..role.clone()
        };
        self.superuser()
            .await?
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                ident(&role.name),
                literal(&verifier(&rotated.password))
            ))
            .await
            .map_err(|e| {
                FixtureError::postgres(format!("rotating the password of {}", role.name), e)
            })?;
        Ok(rotated)
    }

    /// `pg_terminate_backend` for every session of `role_name` (other than
    /// the caller's); returns how many were signalled, once they are gone
    /// from `pg_stat_activity`. Their clients see `57P01` or a closed
    /// connection.
    ///
    /// A session still starting when this is called (authenticated, not yet
    /// listed: PostgreSQL before 18 lists a backend only once its startup
    /// is done) is caught by a further pass over the sessions that began
    /// before the call; passes repeat until one finds none. That narrows
    /// the window to a startup slower than a pass, which the server cannot
    /// show us.
    pub async fn terminate_backends(&self, role_name: &str) -> Result<u64, FixtureError> {
        let client = self.superuser().await?;
        let called: std::time::SystemTime = client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .map_err(|e| FixtureError::postgres("reading the server's clock", e))?
            .get(0);
        let mut terminated = 0;
        loop {
            let pids: Vec<i32> = client
                .query(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE usename = $1 AND pid <> pg_backend_pid() AND backend_start <= $2",
                    &[&role_name, &called],
                )
                .await
                .map_err(|e| FixtureError::postgres("listing sessions", e))?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if pids.is_empty() {
                return Ok(terminated);
            }
            for pid in &pids {
                let signalled: bool = client
                    .query_one("SELECT pg_terminate_backend($1)", &[pid])
                    .await
                    .map_err(|e| FixtureError::postgres("terminating a session", e))?
                    .get(0);
                if signalled {
                    terminated += 1;
                }
            }
            wait_until("terminated sessions to end", || async {
                let left: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                        &[&pids],
                    )
                    .await
                    .map_err(|e| FixtureError::postgres("counting sessions", e))?
                    .get(0);
                Ok(left == 0)
            })
            .await?;
        }
    }

    /// Replaces `old` by a new login role with a new name and password, as a
    /// platform's credential rotation may: the new role owns `old`'s database
    /// and everything `old` owned in it; `old` may no longer log in, its
    /// sessions are terminated and it is dropped (its logins then fail with
    /// `28P01`).
    pub async fn replace_role(&self, old: &TestRole) -> Result<TestRole, FixtureError> {
        let new = TestRole {
            name: unique_name(&format!("{}_next", prefix_of(&old.name))),
            password: random_password(),
            database: old.database.clone(),
        };
        let (old_id, new_id, db_id) = (ident(&old.name), ident(&new.name), ident(&old.database));
        let client = self.superuser().await?;
        client
            .batch_execute(&format!(
                "CREATE ROLE {new_id} LOGIN PASSWORD {};
                 ALTER ROLE {old_id} NOLOGIN;
                 ALTER DATABASE {db_id} OWNER TO {new_id};",
                literal(&verifier(&new.password))
            ))
            .await
            .map_err(|e| FixtureError::postgres(format!("replacing role {}", old.name), e))?;
        self.terminate_backends(&old.name).await?;
        let reassign = format!("REASSIGN OWNED BY {old_id} TO {new_id}; DROP OWNED BY {old_id};");
        self.superuser_to(&old.database)
            .await?
            .batch_execute(&reassign)
            .await
            .map_err(|e| {
                FixtureError::postgres(format!("handing {}'s objects over", old.name), e)
            })?;
        client
            .batch_execute(&format!("{reassign} DROP ROLE {old_id};"))
            .await
            .map_err(|e| FixtureError::postgres(format!("dropping role {}", old.name), e))?;
        Ok(new)
    }

    /// How many sessions of `role_name` `pg_stat_activity` shows.
    pub async fn connection_count(&self, role_name: &str) -> Result<i64, FixtureError> {
        Ok(self
            .superuser()
            .await?
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role_name],
            )
            .await
            .map_err(|e| FixtureError::postgres("counting sessions", e))?
            .get(0))
    }
}
