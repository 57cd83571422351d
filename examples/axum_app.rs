//! Run with: cargo run --example axum_app
//!
//! A JSON API on axum 0.8 with a pgrotate pool as its state, written the way
//! a deadpool-postgres app is (`State<Pool>`, `prepare_cached`,
//! transactions), which keeps serving through credential rotations:
//!
//! - `GET /users/{id}`: the user, or 404;
//! - `POST /users` (`{"name": …, "email": …}`): 201 with the new user, 409
//!   when the email is taken, 503 while the database is unavailable;
//! - `GET /healthz`: the pool's [`pgrotate::Status`] as JSON (`size`,
//!   `available`, `waiting`, `generation`, …).
//!
//! Its pool settings are a [`pgrotate::Config`] (see `settings`): a JSON
//! file named by `PGROTATE_CONFIG` (`{"max_size": 16, "wait_timeout": "5s",
//! "source": {"kind": "file", "path": "/run/secrets/db_url"}}`) and
//! `PGROTATE__…` variables over it (`PGROTATE__MAX_SIZE=8`). With no source
//! set it connects to `DATABASE_URL` (read again after every rotation);
//! with neither, it starts a throwaway PostgreSQL for a one-command try.
//! Either way it creates its table if missing, listens on
//! `ADDR` (default 127.0.0.1:3000) and, on ctrl-c, finishes the requests in
//! flight and closes the pool.
//!
//! The settings reader and the throwaway PostgreSQL are shared with the
//! other examples: `examples/common/mod.rs` (`mod common;` below); copy
//! it along with this file.
//!
//! ```sh
//! curl -s -XPOST localhost:3000/users -H 'content-type: application/json' \
//!      -d '{"name":"Ada","email":"ada@example.com"}'
//! curl -s localhost:3000/users/1
//! curl -s localhost:3000/healthz
//! ```

mod common;

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgrotate::Pool;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;

/// The app's one table.
pub const SCHEMA: &str = "create table if not exists users (
    id bigint generated always as identity primary key,
    name text not null,
    email text not null unique
)";

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
}

/// The body of `POST /users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

/// The app's own error: what a handler (and a transaction closure) fails
/// with, and the HTTP status it becomes.
#[derive(Debug)]
enum AppError {
    NotFound,
    EmailTaken,
    Db(pgrotate::Error),
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, msg) = match &self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found".to_string()),
            AppError::EmailTaken => (StatusCode::CONFLICT, "email already taken".into()),
            AppError::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                (StatusCode::CONFLICT, "email already taken".into())
            }
            AppError::Db(e) if e.is_unavailable() => {
                eprintln!("503: {e:#}");
                (StatusCode::SERVICE_UNAVAILABLE, "try again later".into())
            }
            AppError::Db(e) => {
                eprintln!("500: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        };
        (status, Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

/// The routes, with the pool as their state.
pub fn app(pool: Pool) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user))
        .route("/users", post(create_user))
        .route("/healthz", get(healthz))
        .with_state(pool)
}

/// Creates the table if missing.
pub async fn migrate(pool: &Pool) -> Result<(), pgrotate::Error> {
    pool.batch_execute(SCHEMA).await
}

/// Serves `app(pool)` on `listener` until `shutdown` resolves, lets the
/// requests in flight finish, then closes the pool.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: Pool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(pool.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    pool.close();
    Ok(())
}

async fn get_user(State(pool): State<Pool>, Path(id): Path<i64>) -> Result<Json<User>, AppError> {
    // A pool-level statement: prepared once per connection (the statement
    // cache), retried on a fresh connection when it provably did not run.
    let row = pool
        .query_opt("select id, name, email from users where id = $1", &[&id])
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(User {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        email: row.try_get(2)?,
    }))
}

async fn create_user(
    State(pool): State<Pool>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), AppError> {
    let user = insert_user(&pool, new).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Inserts the user in a transaction. The pool runs it again when the
/// connection is lost before `COMMIT` was sent; lost after (the outcome
/// unknown), the user is looked up by email: found, it was committed
/// (the email is unique).
async fn insert_user(pool: &Pool, new: NewUser) -> Result<User, AppError> {
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

async fn user_by_email(pool: &Pool, email: &str) -> Result<Option<User>, AppError> {
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

/// The pool's numbers, for a load balancer's check or a dashboard:
/// [`pgrotate::Status`] is `Serialize` with pgrotate's `serde` feature
/// (size, available, waiting, generation, retries, the refetch budget …;
/// no secret in it).
async fn healthz(State(pool): State<Pool>) -> Json<pgrotate::Status> {
    Json(pool.status())
}

/// The pool's settings as [`pgrotate::Config`]: the JSON file `file`, then
/// `PGROTATE__…` variables over it (from `env` when given, else the
/// process's environment), as [`common::settings`] reads them; `max_size`
/// defaults to 16 here.
pub fn settings(
    file: Option<&str>,
    env: Option<config::Map<String, String>>,
) -> Result<pgrotate::Config, config::ConfigError> {
    common::settings(file, env, 16)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The settings from PGROTATE_CONFIG (a JSON file) and PGROTATE__…
    // variables. With neither a source nor DATABASE_URL: a throwaway
    // PostgreSQL, its URL in a file, kept until main returns.
    let mut settings = settings(std::env::var("PGROTATE_CONFIG").ok().as_deref(), None)?;
    let throwaway = common::throwaway_unless_configured(&mut settings, "axum_app").await?;
    let pool = settings.build().await?;
    migrate(&pool).await?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "listening on http://{} (ctrl-c to stop)",
        listener.local_addr()?
    );
    serve(listener, pool, async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down: finishing the requests in flight");
    })
    .await?;
    drop(throwaway);
    Ok(())
}
