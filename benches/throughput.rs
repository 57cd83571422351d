//! Run with: cargo bench --bench throughput [-- --millis 500 --rounds 20]
//!
//! Throughput of `select 1` through pgrotate vs plain deadpool-postgres, on
//! the same throwaway PostgreSQL, same pool size (8), same concurrency (32),
//! TLS on for both, in one run. Short rounds alternate (deadpool, pgrotate,
//! deadpool, …) so drift of the machine hits both alike; reported are the
//! ratio of the totals and the median of the per-round ratios. Target:
//! ≥ 0.97.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::measure;
use pgrotate_testing::Cluster;

const POOL_SIZE: usize = 8;
const CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (millis, rounds) = common::args("millis", (500, 20))?;
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
    let plain_call = Arc::new(move |_: usize| {
        let p = plain.clone();
        async move { select_one_plain(&p).await }
    });
    let rotating_call = Arc::new(move |_: usize| {
        let p = rotating.clone();
        async move { select_one_rotating(&p).await }
    });

    // Warm both: every connection opened, TLS handshakes done.
    let warm = Duration::from_millis(500);
    let _ = measure(warm, CONCURRENCY, plain_call.clone()).await;
    let _ = measure(warm, CONCURRENCY, rotating_call.clone()).await;

    let (mut plain_total, mut rotating_total) = (0u64, 0u64);
    let mut ratios = Vec::new();
    for r in 1..=rounds {
        let a = measure(round, CONCURRENCY, plain_call.clone()).await;
        let b = measure(round, CONCURRENCY, rotating_call.clone()).await;
        let secs = round.as_secs_f64();
        println!(
            "round {r:>2}: deadpool-postgres {:>8.0} q/s   pgrotate run() {:>8.0} q/s   ratio {:.3}",
            a as f64 / secs,
            b as f64 / secs,
            b as f64 / a as f64
        );
        ratios.push(b as f64 / a as f64);
        plain_total += a;
        rotating_total += b;
    }
    let ratio = rotating_total as f64 / plain_total as f64;
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "overall: pgrotate / deadpool-postgres = {ratio:.3} (median of rounds {median:.3}; {} vs {} queries, pool {POOL_SIZE}, {CONCURRENCY} tasks, TLS)",
        rotating_total, plain_total
    );
    Ok(())
}

async fn select_one_plain(pool: &deadpool_postgres::Pool) -> bool {
    match pool.get().await {
        Ok(c) => c.query_one("select 1::int8", &[]).await.is_ok(),
        Err(_) => false,
    }
}

async fn select_one_rotating(pool: &pgrotate::Pool) -> bool {
    pool.run(async |c| {
        c.query_one("select 1::int8", &[])
            .await?
            .try_get::<_, i64>(0)
    })
    .await
    .is_ok()
}
