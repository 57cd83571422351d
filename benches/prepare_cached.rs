//! Run with: cargo bench --bench prepare_cached [-- --queries 2000 --rounds 10]
//!
//! The time of one parameterised query the way a deadpool-postgres handler
//! runs it — check out, `prepare_cached`, `query_one` — on the same
//! throwaway PostgreSQL over TLS, one caller at a time, in one run:
//!
//! - a raw tokio-postgres client with the statement prepared once (the
//!   floor: one round trip, no pool);
//! - deadpool-postgres: `pool.get()` + `prepare_cached` + `query_one`;
//! - pgrotate, the same code on `pool.get()`;
//! - pgrotate's pool-level `pool.query_one(sql, params)` (cached per
//!   connection too);
//! - pgrotate `pool.get()` + plain `prepare` every time (what the compiler
//!   suggested before `prepare_cached` existed): two round trips.
//!
//! Rounds alternate so drift hits all alike; reported are the median µs per
//! query of each and the ratios to deadpool-postgres.

mod common;

use std::time::Instant;

use pgrotate_testing::Cluster;

const SQL: &str = "select $1::int8 + 1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (queries, rounds) = common::args("queries", (2000, 10))?;
    let cluster = Cluster::start().await?;
    let role = cluster.create_role("bench").await?;
    let url = cluster.url(&role);

    let raw = common::raw_client(&url, cluster.ca()).await?;
    let raw_stmt = raw.prepare(SQL).await?;
    let deadpool = common::deadpool(&url, cluster.ca(), 2)?;
    let pgrotate = pgrotate::Pool::builder(pgrotate::source::Static::new(&url))
        .max_size(2)
        .build()
        .await?;

    let names = [
        "raw tokio-postgres (prepared once)",
        "deadpool-postgres get+prepare_cached",
        "pgrotate get+prepare_cached",
        "pgrotate pool.query_one",
        "pgrotate get+prepare (uncached)",
    ];
    let mut per_query: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..=rounds {
        for (i, times) in per_query.iter_mut().enumerate() {
            let start = Instant::now();
            for n in 0..queries as i64 {
                let v: i64 = match i {
                    0 => raw.query_one(&raw_stmt, &[&n]).await?.get(0),
                    1 => {
                        let c = deadpool.get().await?;
                        let s = c.prepare_cached(SQL).await?;
                        c.query_one(&s, &[&n]).await?.get(0)
                    }
                    2 => {
                        let c = pgrotate.get().await?;
                        let s = c.prepare_cached(SQL).await?;
                        c.query_one(&s, &[&n]).await?.get(0)
                    }
                    3 => pgrotate.query_one(SQL, &[&n]).await?.get(0),
                    _ => {
                        let c = pgrotate.get().await?;
                        let s = c.prepare(SQL).await?;
                        c.query_one(&s, &[&n]).await?.get(0)
                    }
                };
                assert_eq!(v, n + 1);
            }
            // Round 0 warms every connection and cache.
            if round > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e6 / queries as f64);
            }
        }
    }
    let medians: Vec<f64> = per_query
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "{name:<40} {m:>7.1} µs/query   × {:.2} of deadpool-postgres",
            m / medians[1]
        );
    }
    println!("({queries} queries a round, {rounds} rounds, one caller, TLS, loopback)");
    Ok(())
}
