//! Run with: cargo run --example worker
//!
//! A background job worker on a pgrotate pool: jobs wait in a table; each
//! of N worker tasks claims one with `SELECT … FOR UPDATE SKIP LOCKED LIMIT
//! 1` inside `pool.transaction`, does the work, writes its result and marks
//! the job done in the same transaction. A rotation mid-job costs nothing:
//! a transaction whose connection is lost before `COMMIT` is rolled back by
//! the server and run again by the pool (the job is claimed again, by this
//! worker or another); one lost after `COMMIT` was sent is either committed
//! (done, once) or rolled back (still pending, claimed again later), so no
//! job is lost and none is done twice.
//!
//! Its pool settings are a [`pgrotate::Config`] (see `settings`): a JSON
//! file named by `PGROTATE_CONFIG` (`{"max_size": 4, "wait_timeout": "5s",
//! "source": {"kind": "file", "path": "/run/secrets/db_url"}}`) and
//! `PGROTATE__…` variables over it (`PGROTATE__MAX_SIZE=8`). With no source
//! set it works the queue of `DATABASE_URL` (read again after every rotation);
//! with neither, it starts a throwaway PostgreSQL and enqueues 500 jobs. On ctrl-c each worker finishes its current job,
//! then the pool is closed.
//!
//! The settings reader and the throwaway PostgreSQL are shared with the
//! other examples: `examples/common/mod.rs` (`mod common;` below); copy
//! it along with this file.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgrotate::Pool;
use tokio::sync::watch;

/// The queue and the results.
pub const SCHEMA: &str = "
create table if not exists jobs (
    id bigint generated always as identity primary key,
    payload text not null,
    done_at timestamptz,
    done_by int
);
create index if not exists jobs_pending on jobs (id) where done_at is null;
create table if not exists job_results (
    job_id bigint not null references jobs (id),
    worker int not null,
    result text not null
);";

/// How long an idle worker waits before looking for a job again.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// How long a worker waits after the pool said the database is unavailable.
const BACKOFF: Duration = Duration::from_secs(1);

/// Creates the tables if missing.
pub async fn migrate(pool: &Pool) -> Result<(), pgrotate::Error> {
    pool.batch_execute(SCHEMA).await
}

/// Adds one job per payload, in one statement.
pub async fn enqueue(pool: &Pool, payloads: Vec<String>) -> Result<u64, pgrotate::Error> {
    pool.execute(
        "insert into jobs (payload) select unnest($1::text[])",
        &[&payloads],
    )
    .await
}

/// What the workers did, as they count it (the tables are the truth).
#[derive(Debug, Default)]
pub struct Counts {
    /// Jobs committed as done.
    pub done: AtomicU64,
    /// Transactions whose `COMMIT` outcome was unknown (the job is either
    /// done or pending again).
    pub outcome_unknown: AtomicU64,
    /// Other errors (logged; the worker backs off and goes on).
    pub errors: AtomicU64,
}

/// Claims one pending job, works it and marks it done, in one transaction.
/// `None` when no job is pending (or every pending one is claimed).
pub async fn process_one(pool: &Pool, worker: i32) -> Result<Option<i64>, pgrotate::Error> {
    pool.transaction(async move |tx| {
        let claim = tx
            .prepare_cached(
                "select id, payload from jobs where done_at is null \
                 order by id limit 1 for update skip locked",
            )
            .await?;
        let Some(job) = tx.query_opt(&claim, &[]).await? else {
            return Ok(None);
        };
        let id: i64 = job.try_get(0)?;
        let payload: String = job.try_get(1)?;

        let result = work(&payload).await;

        let record = tx
            .prepare_cached("insert into job_results (job_id, worker, result) values ($1, $2, $3)")
            .await?;
        tx.execute(&record, &[&id, &worker, &result]).await?;
        let done = tx
            .prepare_cached("update jobs set done_at = now(), done_by = $2 where id = $1")
            .await?;
        tx.execute(&done, &[&id, &worker]).await?;
        Ok::<_, pgrotate::Error>(Some(id))
    })
    .await
}

/// The job itself: whatever it does, it must have no effect outside the
/// transaction (it may run again if the transaction is retried).
async fn work(payload: &str) -> String {
    tokio::time::sleep(Duration::from_millis(2)).await;
    payload.chars().rev().collect()
}

/// One worker: claims and works jobs until `shutdown` turns true, checked
/// between jobs (the current one is always finished).
pub async fn worker(pool: Pool, id: i32, mut shutdown: watch::Receiver<bool>, counts: Arc<Counts>) {
    while !*shutdown.borrow() {
        let pause = match process_one(&pool, id).await {
            Ok(Some(_)) => {
                counts.done.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(None) => IDLE_POLL,
            Err(e) if e.is_outcome_unknown() => {
                // Committed (done) or rolled back (pending, claimed again):
                // nothing to redo by hand.
                eprintln!("worker {id}: {e}");
                counts.outcome_unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                eprintln!("worker {id}: {e:#}");
                counts.errors.fetch_add(1, Ordering::Relaxed);
                BACKOFF
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs `n` workers until `shutdown` turns true and every one has finished
/// its current job, then closes the pool.
pub async fn run_workers(
    pool: Pool,
    n: i32,
    shutdown: watch::Receiver<bool>,
    counts: Arc<Counts>,
) -> Result<(), tokio::task::JoinError> {
    let tasks: Vec<_> = (1..=n)
        .map(|id| tokio::spawn(worker(pool.clone(), id, shutdown.clone(), counts.clone())))
        .collect();
    for t in tasks {
        t.await?;
    }
    pool.close();
    Ok(())
}

/// The pool's settings as [`pgrotate::Config`]: the JSON file `file`, then
/// `PGROTATE__…` variables over it (from `env` when given, else the
/// process's environment), as [`common::settings`] reads them; `max_size`
/// defaults to 4 here.
pub fn settings(
    file: Option<&str>,
    env: Option<config::Map<String, String>>,
) -> Result<pgrotate::Config, config::ConfigError> {
    common::settings(file, env, 4)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The settings from PGROTATE_CONFIG (a JSON file) and PGROTATE__…
    // variables. With neither a source nor DATABASE_URL: a throwaway
    // PostgreSQL with 500 jobs, its URL in a file, kept until main returns.
    let mut settings = settings(std::env::var("PGROTATE_CONFIG").ok().as_deref(), None)?;
    let throwaway = common::throwaway_unless_configured(&mut settings, "worker").await?;
    const WORKERS: i32 = 4;
    let pool = settings.build().await?;
    migrate(&pool).await?;
    if throwaway.is_some() {
        let n = enqueue(&pool, (1..=500).map(|i| format!("job {i}")).collect()).await?;
        eprintln!("enqueued {n} jobs");
    }

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\nshutting down: each worker finishes its current job");
        stop.send_replace(true);
    });
    let counts = Arc::new(Counts::default());
    let progress = {
        let (counts, mut shutdown) = (counts.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                eprint!(
                    "\r{} jobs done (ctrl-c to stop)   ",
                    counts.done.load(Ordering::Relaxed)
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        })
    };
    run_workers(pool, WORKERS, shutdown, counts.clone()).await?;
    progress.await?;
    eprintln!(
        "{} jobs done, {} errors; pool closed",
        counts.done.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    );
    drop(throwaway);
    Ok(())
}
