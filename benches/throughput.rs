//! Run with: cargo bench --bench throughput [-- --millis 500 --rounds 20]
//!
//! Throughput of `select 1` through pgrotate vs plain deadpool-postgres, on
//! the same throwaway PostgreSQL, same pool size (8), same concurrency (32),
//! TLS on for both, in one run: `pool.run(…)` and `pool.get()` against
//! deadpool-postgres's `get()`, each running `query_one("select 1::int8")`
//! (tokio-postgres prepares the text, runs it and closes the statement).
//! Short rounds alternate (deadpool, run, get, deadpool, …) so drift of the
//! machine hits all alike; reported are the ratio of the totals, the median
//! of the per-round ratios, and the client's CPU per query (the server
//! shares the machine: a client that burns more leaves the server less).
//! Target: ≥ 0.97.
//!
//! `PGROTATE_BENCH_CACHED=1`: every contender runs the query through
//! `prepare_cached` instead (deadpool-postgres's statement cache, as its
//! docs advise). A text query makes tokio-postgres prepare a named
//! statement and queue its `Close` when the statement drops, just before
//! the connection is returned: pgrotate's `get()` then waits, at the next
//! checkout, for the connection task to write what was queued (so an
//! abandoned request is never inherited unseen), where deadpool-postgres
//! hands the connection out at once and the `Close` goes out in one write
//! with the next caller's query.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::measure;
use pgrotate_testing::Cluster;

const POOL_SIZE: usize = 8;
const CONCURRENCY: usize = 32;
const SQL: &str = "select 1::int8";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (millis, rounds) = common::args("millis", (500, 20))?;
    let cached = std::env::var_os("PGROTATE_BENCH_CACHED").is_some_and(|v| v == "1");
    let round = Duration::from_millis(millis);

    let cluster = Cluster::start().await?;
    let role = cluster.create_role("bench").await?;
    let url = cluster.url(&role);

    let plain = common::deadpool(&url, cluster.ca(), POOL_SIZE)?;
    let rotating = pgrotate::Pool::builder(pgrotate::source::Static::new(&url))
        .max_size(POOL_SIZE)
        .build()
        .await?;

    // Every caller runs the same `select 1`: measure's index goes unused.
    let contenders: [(&str, common::Call); 3] = [
        ("deadpool-postgres get()", {
            let p = plain.clone();
            Arc::new(move |_| {
                let p = p.clone();
                Box::pin(async move { on_checked_out(p.get().await, cached).await })
            })
        }),
        ("pgrotate run()", {
            let p = rotating.clone();
            Arc::new(move |_| {
                let p = p.clone();
                Box::pin(async move {
                    p.run(async move |c| select_one(c, cached).await)
                        .await
                        .is_ok()
                })
            })
        }),
        ("pgrotate get()", {
            let p = rotating.clone();
            Arc::new(move |_| {
                let p = p.clone();
                Box::pin(async move { on_checked_out(p.get().await, cached).await })
            })
        }),
    ];

    // `PGROTATE_BENCH_ONLY=<n>` (0 deadpool, 1 run, 2 get): that contender
    // alone, for a profiler or a syscall count (`perf stat`). With
    // `PGROTATE_BENCH_QUERIES=<N>` it runs N queries (after 1,000 to warm)
    // instead of for a time: under `valgrind --tool=callgrind`, two values
    // of N give the instructions one query costs, which steal and the
    // server's load on a shared machine do not move
    // (`scripts/bench-instructions.sh`).
    if let Some(only) = std::env::var("PGROTATE_BENCH_ONLY")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&i| i < contenders.len())
    {
        let (name, call) = &contenders[only];
        let fixed = std::env::var("PGROTATE_BENCH_QUERIES")
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(queries) = fixed {
            let _ = common::measure_count(1_000, CONCURRENCY, call.clone()).await;
            let n = common::measure_count(queries, CONCURRENCY, call.clone()).await;
            println!("{name} alone: {n} queries");
            return Ok(());
        }
        let _ = measure(Duration::from_millis(500), CONCURRENCY, call.clone()).await;
        let n = measure(round * rounds, CONCURRENCY, call.clone()).await;
        println!(
            "{name} alone: {n} queries, {:.0} q/s",
            n as f64 / (round * rounds).as_secs_f64()
        );
        return Ok(());
    }

    // Warm every contender: every connection opened, TLS handshakes done.
    for (_, call) in &contenders {
        let _ = measure(Duration::from_millis(500), CONCURRENCY, call.clone()).await;
    }

    let mut totals = [0u64; 3];
    let mut cpu = [Duration::ZERO; 3];
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 1..=rounds {
        let mut counts = [0u64; 3];
        for (i, (_, call)) in contenders.iter().enumerate() {
            let before = common::process_cpu();
            counts[i] = measure(round, CONCURRENCY, call.clone()).await;
            if let (Some(b), Some(a)) = (before, common::process_cpu()) {
                cpu[i] += a - b;
            }
            totals[i] += counts[i];
        }
        let secs = round.as_secs_f64();
        println!(
            "round {r:>2}: deadpool {:>8.0} q/s   run() {:>8.0} q/s   get() {:>8.0} q/s",
            counts[0] as f64 / secs,
            counts[1] as f64 / secs,
            counts[2] as f64 / secs,
        );
        for k in 0..2 {
            ratios[k].push(counts[k + 1] as f64 / counts[0].max(1) as f64);
        }
    }
    for (k, name) in ["run()", "get()"].iter().enumerate() {
        ratios[k].sort_by(f64::total_cmp);
        println!(
            "overall: pgrotate {name} / deadpool-postgres = {:.3} (median of rounds {:.3}; {} vs {} queries, pool {POOL_SIZE}, {CONCURRENCY} tasks, TLS{})",
            totals[k + 1] as f64 / totals[0].max(1) as f64,
            ratios[k][ratios[k].len() / 2],
            totals[k + 1],
            totals[0],
            if cached { ", prepare_cached" } else { "" }
        );
    }
    let per_query = |i: usize| cpu[i].as_secs_f64() * 1e6 / totals[i].max(1) as f64;
    println!(
        "client CPU per query (this process, 10 ms ticks): deadpool-postgres {:.1} µs, pgrotate run() {:.1} µs, get() {:.1} µs",
        per_query(0),
        per_query(1),
        per_query(2)
    );
    Ok(())
}

/// The query on a client a pool handed out (`false` if it handed none):
/// deadpool-postgres's and pgrotate's both deref to its `ClientWrapper`.
async fn on_checked_out<C, E>(got: Result<C, E>, cached: bool) -> bool
where
    C: std::ops::Deref<Target = deadpool_postgres::ClientWrapper>,
{
    match got {
        Ok(c) => select_one(&c, cached).await.is_ok(),
        Err(_) => false,
    }
}

/// `select 1`, through the statement cache if `cached`.
async fn select_one(
    c: &deadpool_postgres::ClientWrapper,
    cached: bool,
) -> Result<i64, tokio_postgres::Error> {
    let row = if cached {
        let stmt = c.prepare_cached(SQL).await?;
        c.query_one(&stmt, &[]).await?
    } else {
        c.query_one(SQL, &[]).await?
    };
    row.try_get(0)
}
