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
//! other examples (`examples/common/mod.rs`), and the API's data side —
//! the table, `User`, `AppError` and the insert that survives an unknown
//! commit outcome — with `actix_app` (`examples/users/mod.rs`): copy both
//! along with this file.
//!
//! ```sh
//! curl -s -XPOST localhost:3000/users -H 'content-type: application/json' \
//!      -d '{"name":"Ada","email":"ada@example.com"}'
//! curl -s localhost:3000/users/1
//! curl -s localhost:3000/healthz
//! ```

mod common;
mod users;

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgrotate::Pool;
use tokio_postgres::error::SqlState;
pub(crate) use users::migrate;
use users::{AppError, NewUser, User, insert_user};

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
