//! Run with: cargo run --example rotation_demo [-- --seconds 15]
//!
//! Starts a throwaway PostgreSQL (TLS on, scram-sha-256), serves its URL from
//! a file the way a mounted secret would, runs 32 workers through
//! `pool.run` and, mid-run, rotates the password twice the way
//! `heroku pg:credentials:rotate` does: the URL changes, `ALTER ROLE ...
//! PASSWORD`, `pg_terminate_backend`. Prints live progress and a summary;
//! exits non-zero if any call failed.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrotate::{Pool, source};
use pgrotate_testing::Cluster;

const WORKERS: usize = 32;
const POOL_SIZE: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = seconds_from_args()?;
    let total = Duration::from_secs(seconds);

    eprintln!("starting a throwaway PostgreSQL…");
    let cluster = Cluster::start().await?;
    let mut role = cluster.create_role("demo").await?;
    let dir = tempfile::tempdir()?;
    let url_file = dir.path().join("database_url");
    write_atomically(&url_file, &cluster.url(&role))?;
    println!(
        "PostgreSQL {}:{} (TLS, scram-sha-256), role {}, URL served from {}",
        cluster.host(),
        cluster.port(),
        role.name,
        url_file.display()
    );

    let pool = Pool::builder(source::File::new(&url_file))
        .max_size(POOL_SIZE)
        .application_name("pgrotate-demo")
        .build()
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (pool, stop, ok, errors) = (pool.clone(), stop.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = pool
                    .run(async move |c| {
                        c.query_one("select 1::int8", &[])
                            .await?
                            .try_get::<_, i64>(0)
                    })
                    .await;
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("\nerror: {e:#}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let started = Instant::now();
    let rotations_at = [total / 3, total * 2 / 3];
    let mut rotations = 0;
    let mut last = (Instant::now(), 0u64);
    // Live frames redrawn with `\r` on a terminal; in a log (CI, a file),
    // one plain line per second instead.
    let tty = std::io::stdout().is_terminal();
    let (frame_start, frame_end) = if tty { ("\r", "   ") } else { ("", "\n") };
    let mut ticker = tokio::time::interval(Duration::from_millis(if tty { 500 } else { 1000 }));
    while started.elapsed() < total {
        ticker.tick().await;
        if rotations < rotations_at.len() && started.elapsed() >= rotations_at[rotations] {
            role = cluster.rotate_password(&role).await?;
            write_atomically(&url_file, &cluster.url(&role))?;
            let ended = cluster.terminate_backends(&role.name).await?;
            rotations += 1;
            println!(
                "{}rotation {rotations}: password changed, URL file updated, {ended} backends terminated",
                if tty { "\n" } else { "" }
            );
        }
        let now = (Instant::now(), ok.load(Ordering::Relaxed));
        let qps = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        last = now;
        let s = pool.status();
        print!(
            "{frame_start}{:>5.1} s  {:>8.0} queries/s  {:>9} ok  {} errors  generation {}  pool {}/{}  retries {}{frame_end}",
            started.elapsed().as_secs_f64(),
            qps,
            now.1,
            errors.load(Ordering::Relaxed),
            s.generation,
            s.size,
            s.max_size,
            s.retries
        );
        std::io::stdout().flush()?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let s = pool.status();
    pool.close();
    let n_ok = ok.load(Ordering::Relaxed);
    let n_err = errors.load(Ordering::Relaxed);
    println!(
        "\nsummary: {n_ok} queries in {:.1} s ({:.0}/s) by {WORKERS} workers on {POOL_SIZE} connections; \
         {rotations} rotations; {n_err} errors; generation {}; {} refetches of the URL; {} retries; {} connections opened",
        started.elapsed().as_secs_f64(),
        n_ok as f64 / started.elapsed().as_secs_f64(),
        s.generation,
        s.fetches - 1,
        s.retries,
        s.connections_opened
    );
    if n_err > 0 || s.generation != 1 + rotations as u64 {
        return Err(format!("{n_err} calls failed").into());
    }
    println!("0 errors: the pool followed both rotations without a restart.");
    Ok(())
}

fn seconds_from_args() -> Result<u64, String> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 15;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s >= 3)
                    .ok_or("--seconds takes a whole number of at least 3")?;
            }
            other => return Err(format!("unknown argument {other} (try --seconds 15)")),
        }
    }
    Ok(seconds)
}

fn write_atomically(path: &Path, url: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(tmp, path)
}
