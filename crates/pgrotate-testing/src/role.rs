//! Login roles for tests, and what a platform does to them: rotate the
//! password, kill the sessions, swap the role for another.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::{Cluster, wait_until};
use crate::error::FixtureError;

/// A login role with a database of its own, made by
/// [`Cluster::create_role`].
///
/// Its `Debug` prints the password as `_`.
#[derive(Clone, PartialEq, Eq)]
pub struct TestRole {
    /// The role (user) name: lowercase ASCII letters, digits and `_`.
    pub name: String,
    /// The role's current password: ASCII letters and digits.
    pub password: String,
    /// The database the role owns; only it (and superusers) may connect.
    pub database: String,
}

impl fmt::Debug for TestRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRole")
            .field("name", &self.name)
            .field("password", &"_")
            .field("database", &self.database)
            .finish()
    }
}

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
    pub async fn terminate_backends(&self, role_name: &str) -> Result<u64, FixtureError> {
        let client = self.superuser().await?;
        let pids: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&role_name],
            )
            .await
            .map_err(|e| FixtureError::postgres("listing sessions", e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut terminated = 0;
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
        Ok(terminated)
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

static NEXT_ROLE: AtomicU64 = AtomicU64::new(0);

/// `prefix` cleaned to `[a-z0-9_]`, then `_<counter>_<6 random letters>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert_str(0, "role_");
    }
    let n = NEXT_ROLE.fetch_add(1, Ordering::Relaxed);
    let suffix: String = std::iter::repeat_with(fastrand::lowercase)
        .take(6)
        .collect();
    format!("{clean}_{n}_{suffix}")
}

/// The prefix [`unique_name`] started from (everything before `_<n>_<rand>`).
fn prefix_of(name: &str) -> &str {
    let mut parts = name.rsplitn(3, '_');
    let prefix = match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(n), Some(prefix)) if n.chars().all(|c| c.is_ascii_digit()) => prefix,
        _ => name,
    };
    let mut end = prefix.len().min(24);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    &prefix[..end]
}

/// 32 random ASCII letters and digits.
/// The SCRAM-SHA-256 verifier of `password`, computed here (like psql's
/// `\password`), so the statement sent to the server, and every log line
/// that shows it (tokio-postgres logs statements at debug level), holds no
/// password.
pub(crate) fn verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

pub(crate) fn random_password() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let role = TestRole {
            name: "app_1_abcdef".into(),
            password: "SuperSecret123".into(),
            database: "app_1_abcdef".into(),
        };
        let shown = format!("{role:?}");
        assert!(!shown.contains("SuperSecret123"), "{shown}");
        assert!(shown.contains("password: \"_\""), "{shown}");
        assert!(shown.contains("app_1_abcdef"));
    }

    #[test]
    fn names_are_unique_and_clean() {
        let a = unique_name("My App!");
        let b = unique_name("My App!");
        assert_ne!(a, b);
        assert!(a.starts_with("my_app__"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert!(unique_name("9lives").starts_with("role_9lives_"));
        assert!(unique_name(&"x".repeat(100)).len() < 63);
    }

    #[test]
    fn prefix_of_undoes_unique_name() {
        assert_eq!(prefix_of(&unique_name("app")), "app");
        assert_eq!(prefix_of(&unique_name("my_app")), "my_app");
        assert_eq!(prefix_of("plain"), "plain");
    }

    #[test]
    fn passwords_are_random_alphanumerics() {
        let a = random_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_password());
    }

    #[test]
    fn quoting() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
