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

use std::time::{Duration, Instant};

use pgrotate_testing::{Cluster, TestCa};

const SQL: &str = "select $1::int8 + 1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (queries, rounds) = args()?;
    let cluster = Cluster::start().await?;
    let role = cluster.create_role("bench").await?;
    let url = cluster.url(&role);
    let tls = cluster.ca().rustls_client_config()?;

    let raw = raw_client(&url, cluster.ca()).await?;
    let raw_stmt = raw.prepare(SQL).await?;
    let deadpool = {
        let mut pg: tokio_postgres::Config = url.parse()?;
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        pg.host("localhost");
        let manager = deadpool_postgres::Manager::from_config(
            pg,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            deadpool_postgres::ManagerConfig::default(),
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?
    };
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

async fn raw_client(
    url: &str,
    ca: &TestCa,
) -> Result<tokio_postgres::Client, Box<dyn std::error::Error>> {
    let mut pg: tokio_postgres::Config = url.parse()?;
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    pg.host("localhost");
    pg.connect_timeout(Duration::from_secs(10));
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(ca.rustls_client_config()?);
    let (client, connection) = pg.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn args() -> Result<(u64, u32), String> {
    let mut it = std::env::args().skip(1);
    let (mut queries, mut rounds) = (2000, 10);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--queries" => {
                queries = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--queries N")?
            }
            "--rounds" => rounds = it.next().and_then(|s| s.parse().ok()).ok_or("--rounds N")?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if rounds == 0 || queries == 0 {
        return Err("--queries and --rounds must be more than zero".into());
    }
    Ok((queries, rounds))
}
