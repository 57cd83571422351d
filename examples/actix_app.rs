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
//! other examples (`examples/common/mod.rs`), and the API's data side —
//! the table, `User`, `AppError` and the insert that survives an unknown
//! commit outcome — with `axum_app` (`examples/users/mod.rs`): copy both
//! along with this file.

mod common;
mod users;

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use pgrotate::Pool;
use tokio_postgres::error::SqlState;
pub(crate) use users::migrate;
use users::{AppError, NewUser, User, insert_user};

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
