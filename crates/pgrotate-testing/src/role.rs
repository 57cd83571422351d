//! Login roles for tests: [`TestRole`], and the names, passwords and SQL
//! quoting the cluster's role operations use.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A login role with a database of its own, made by
/// [`Cluster::create_role`](crate::Cluster::create_role).
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
pub(crate) fn prefix_of(name: &str) -> &str {
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
