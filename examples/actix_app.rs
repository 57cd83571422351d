//! Run with: cargo run --example actix_app
//!
//! The JSON API of `axum_app`, on actix-web 4 with a pgrotate pool in
//! `web::Data<Pool>`, written the way a deadpool-postgres app is
//! (`prepare_cached`, transactions), which keeps serving through
//! credential rotations:
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
//! with neither, it starts a throwaway PostgreSQL. It creates its table if missing, listens on `ADDR` (default
//! 127.0.0.1:3000) and, on ctrl-c, finishes the requests in flight, then
//! closes the pool.
//!
//! The settings reader and the throwaway PostgreSQL are shared with the
//! other examples: `examples/common/mod.rs` (`mod common;` below); copy
//! it along with this file.

mod common;

use std::fmt;
use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
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

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::EmailTaken => StatusCode::CONFLICT,
            AppError::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                StatusCode::CONFLICT
            }
            AppError::Db(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let msg = match status {
            StatusCode::NOT_FOUND => "not found",
            StatusCode::CONFLICT => "email already taken",
            StatusCode::SERVICE_UNAVAILABLE => "try again later",
            _ => "internal error",
        };
        if status.is_server_error() {
            eprintln!("{status}: {self}");
        }
        HttpResponse::build(status).json(serde_json::json!({ "error": msg }))
    }
}

/// The routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/users/{id}", web::get().to(get_user))
        .route("/users", web::post().to(create_user))
        .route("/healthz", web::get().to(healthz));
}

/// Creates the table if missing.
pub async fn migrate(pool: &Pool) -> Result<(), pgrotate::Error> {
    pool.batch_execute(SCHEMA).await
}

/// Serves the routes on `listener` with `workers` threads until `shutdown`
/// resolves, lets the requests in flight finish, then closes the pool.
/// Runs inside an actix system (`#[actix_web::main]`, `actix_web::rt::System`).
pub async fn serve(
    listener: std::net::TcpListener,
    pool: Pool,
    workers: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::new(pool.clone());
    HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .workers(workers)
        .shutdown_signal(shutdown)
        .listen(listener)?
        .run()
        .await?;
    pool.close();
    Ok(())
}

async fn get_user(pool: web::Data<Pool>, id: web::Path<i64>) -> Result<web::Json<User>, AppError> {
    let id = id.into_inner();
    // A read is idempotent: `run` retries it on a fresh connection whatever
    // happened to the last one.
    let user = pool
        .run(async move |c| {
            let stmt = c
                .prepare_cached("select id, name, email from users where id = $1")
                .await?;
            c.query_opt(&stmt, &[&id])
                .await?
                .map(|r| {
                    Ok::<_, tokio_postgres::Error>(User {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        email: r.try_get(2)?,
                    })
                })
                .transpose()
        })
        .await?;
    user.map(web::Json).ok_or(AppError::NotFound)
}

async fn create_user(
    pool: web::Data<Pool>,
    new: web::Json<NewUser>,
) -> Result<HttpResponse, AppError> {
    let user = insert_user(&pool, new.into_inner()).await?;
    Ok(HttpResponse::Created().json(user))
}

/// Inserts the user in a transaction. The pool runs it again when the
/// connection is lost before `COMMIT` was sent; lost after (the outcome
/// unknown), the user is looked up by email: found, it was committed (the
/// email is unique).
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
                let email = new.email.clone();
                let found = pool
                    .run(async move |c| {
                        c.query_opt("select name from users where email = $1", &[&email])
                            .await?
                            .map(|r| r.try_get::<_, String>(0))
                            .transpose()
                    })
                    .await?;
                match found {
                    Some(name) if name == new.name => {
                        eprintln!("… it was committed");
                        return Ok(user_by_email(pool, &new.email).await?);
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

async fn user_by_email(pool: &Pool, email: &str) -> Result<User, pgrotate::Error> {
    let email = email.to_string();
    pool.run(async move |c| {
        let r = c
            .query_one(
                "select id, name, email from users where email = $1",
                &[&email],
            )
            .await?;
        Ok::<_, pgrotate::Error>(User {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            email: r.try_get(2)?,
        })
    })
    .await
}

/// The pool's numbers, for a load balancer's check or a dashboard:
/// [`pgrotate::Status`] is `Serialize` with pgrotate's `serde` feature
/// (size, available, waiting, generation, retries, the refetch budget …;
/// no secret in it).
async fn healthz(pool: web::Data<Pool>) -> web::Json<pgrotate::Status> {
    web::Json(pool.status())
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

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The settings from PGROTATE_CONFIG (a JSON file) and PGROTATE__…
    // variables. With neither a source nor DATABASE_URL: a throwaway
    // PostgreSQL, its URL in a file, kept until main returns.
    let mut settings = settings(std::env::var("PGROTATE_CONFIG").ok().as_deref(), None)?;
    let throwaway = common::throwaway_unless_configured(&mut settings, "actix_app").await?;
    let pool = settings.build().await?;
    migrate(&pool).await?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    eprintln!(
        "listening on http://{} (ctrl-c to stop)",
        listener.local_addr()?
    );
    serve(listener, pool, 2, async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down: finishing the requests in flight");
    })
    .await?;
    drop(throwaway);
    Ok(())
}
