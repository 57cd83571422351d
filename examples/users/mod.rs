//! The JSON API's data side, shared by `axum_app` and `actix_app` (the same
//! API on two frameworks): the table, a user, the app's error type — how
//! `pool.transaction` tells the app's own errors from a lost connection —
//! and the insert that survives an unknown commit outcome. Each framework
//! example keeps its routes, handlers and its error → HTTP mapping.
//!
//! Not an example of its own; each of those examples says `mod users;`.

use std::fmt;

use pgrotate::Pool;
use serde::{Deserialize, Serialize};

/// The app's one table.
pub(crate) const SCHEMA: &str = "create table if not exists users (
    id bigint generated always as identity primary key,
    name text not null,
    email text not null unique
)";

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) email: String,
}

/// The body of `POST /users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NewUser {
    pub(crate) name: String,
    pub(crate) email: String,
}

/// The app's own error: what a handler (and a transaction closure) fails
/// with; each framework example maps it to an HTTP status.
#[derive(Debug)]
pub(crate) enum AppError {
    NotFound,
    EmailTaken,
    Db(pgrotate::Error),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::NotFound => f.write_str("not found"),
            AppError::EmailTaken => f.write_str("email already taken"),
            AppError::Db(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<pgrotate::Error> for AppError {
    fn from(e: pgrotate::Error) -> AppError {
        AppError::Db(e)
    }
}

/// So that `?` on a tokio-postgres call works inside a closure.
impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> AppError {
        AppError::Db(e.into())
    }
}

/// Lets `pool.transaction` tell a lost connection (retried) from the
/// app's own error (rolled back and returned as it is).
impl pgrotate::WorkError for AppError {
    fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            AppError::Db(e) => e.as_postgres(),
            AppError::NotFound | AppError::EmailTaken => None,
        }
    }
}

/// Creates the table if missing.
pub(crate) async fn migrate(pool: &Pool) -> Result<(), pgrotate::Error> {
    pool.batch_execute(SCHEMA).await
}

/// Inserts the user in a transaction. The pool runs it again when the
/// connection is lost before `COMMIT` was sent; lost after (the outcome
/// unknown), the user is looked up by email: found, it was committed
/// (the email is unique).
pub(crate) async fn insert_user(pool: &Pool, new: NewUser) -> Result<User, AppError> {
    loop {
        let user = new.clone();
        let inserted = pool
            .transaction(async move |tx| {
                let stmt = tx
                    .prepare_cached("insert into users (name, email) values ($1, $2) returning id")
                    .await?;
                let row = tx.query_one(&stmt, &[&user.name, &user.email]).await?;
                Ok::<_, AppError>(User {
                    id: row.try_get(0)?,
                    name: user.name.clone(),
                    email: user.email.clone(),
                })
            })
            .await;
        match inserted {
            Err(AppError::Db(e)) if e.is_outcome_unknown() => {
                eprintln!("commit outcome unknown, looking: {e}");
                match user_by_email(pool, &new.email).await? {
                    Some(user) if user.name == new.name => {
                        eprintln!("… it was committed");
                        return Ok(user);
                    }
                    Some(_) => return Err(AppError::EmailTaken),
                    // Not committed: nothing was applied, insert again.
                    None => eprintln!("… it was not committed: inserting again"),
                }
            }
            other => return other,
        }
    }
}

/// The user with this email, if any: a pool-level statement (prepared
/// once per connection, retried on a fresh one when it provably did not
/// run).
pub(crate) async fn user_by_email(pool: &Pool, email: &str) -> Result<Option<User>, AppError> {
    let row = pool
        .query_opt(
            "select id, name, email from users where email = $1",
            &[&email],
        )
        .await?;
    row.map(|r| {
        Ok(User {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            email: r.try_get(2)?,
        })
    })
    .transpose()
}
