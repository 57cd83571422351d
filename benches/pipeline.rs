//! Run with: cargo bench --bench pipeline [-- --callers 32 --conns 8
//! --latency-ms 0 --millis 500 --rounds 5 --depth 128]
//! (the whole table: `bash scripts/bench-pipeline.sh`).
//!
//! `select $1::int4` through four contenders side by side, on the same
//! throwaway PostgreSQL, TLS on, the same number of connections and callers,
//! in alternating rounds so drift of the machine hits all alike:
//!
//! - `pool.query_one` — pgrotate's pool-level statement, pipelined;
//! - `pool.run` — pgrotate with a connection per caller at a time;
//! - deadpool-postgres, `get` + `prepare_cached` + `query_one`;
//! - raw: `conns` tokio-postgres clients, each shared by its share of the
//!   callers (tokio-postgres pipelines the requests of tasks sharing one
//!   client) — the ceiling.
//!
//! With `--latency-ms L` the server is reached through the fault proxy
//! delaying each direction by L/2: a delay line that keeps every byte in
//! flight, as a WAN does (the raw baseline shows it: callers / RTT). With
//! 0, on loopback, straight to the server.

use std::sync::Arc;
use std::time::Duration;

use common::measure;
use pgrotate_testing::{Cluster, FaultProxy, TestCa};

mod common;

struct Args {
    callers: usize,
    conns: usize,
    latency_ms: u64,
    millis: u64,
    rounds: u32,
    depth: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let cluster = Cluster::start().await?;
    let role = cluster.create_role("bench").await?;
    // Loopback: straight to the server (the proxy's timers would add a
    // millisecond each way). Otherwise through the proxy's delay line.
    let proxy = FaultProxy::start(cluster.addr()).await?;
    proxy.set_latency(Duration::from_millis(args.latency_ms) / 2);
    let url = if args.latency_ms == 0 {
        cluster.url(&role)
    } else {
        proxy.url(&role)
    };

    let pipelined = pgrotate::Pool::builder(pgrotate::source::Static::new(&url))
        .max_size(args.conns)
        .pipeline_depth(args.depth)
        .build()
        .await?;
    let exclusive = pgrotate::Pool::builder(pgrotate::source::Static::new(&url))
        .max_size(args.conns)
        .build()
        .await?;
    let plain = common::deadpool(&url, cluster.ca(), args.conns)?;
    let raw = Arc::new(raw_clients(&url, cluster.ca(), args.conns).await?);

    let contenders: [(&str, common::Call); 4] = [
        ("pool.query_one (pipelined)", {
            let p = pipelined.clone();
            Arc::new(move |i| {
                let p = p.clone();
                Box::pin(
                    async move { p.query_one("select $1::int4", &[&(i as i32)]).await.is_ok() },
                )
            })
        }),
        ("pool.run", {
            let p = exclusive.clone();
            Arc::new(move |i| {
                let p = p.clone();
                Box::pin(async move {
                    let i = i as i32;
                    p.run(async move |c| {
                        let stmt = c.prepare_cached("select $1::int4").await?;
                        c.query_one(&stmt, &[&i]).await
                    })
                    .await
                    .is_ok()
                })
            })
        }),
        ("deadpool-postgres", {
            let p = plain.clone();
            Arc::new(move |i| {
                let p = p.clone();
                Box::pin(async move {
                    let Ok(c) = p.get().await else { return false };
                    let Ok(stmt) = c.prepare_cached("select $1::int4").await else {
                        return false;
                    };
                    c.query_one(&stmt, &[&(i as i32)]).await.is_ok()
                })
            })
        }),
        ("raw tokio-postgres", {
            let r = raw.clone();
            Arc::new(move |i| {
                let r = r.clone();
                Box::pin(async move {
                    let (client, stmt) = &r[i % r.len()];
                    client.query_one(stmt, &[&(i as i32)]).await.is_ok()
                })
            })
        }),
    ];

    let round = Duration::from_millis(args.millis);
    // Warm every contender: connections opened, statements prepared.
    for (_, call) in &contenders {
        measure(Duration::from_millis(300), args.callers, call.clone()).await;
    }
    let mut totals = [0u64; 4];
    for _ in 0..args.rounds {
        for (i, (_, call)) in contenders.iter().enumerate() {
            totals[i] += measure(round, args.callers, call.clone()).await;
        }
    }
    let secs = round.as_secs_f64() * f64::from(args.rounds);
    let qps: Vec<f64> = totals.iter().map(|t| *t as f64 / secs).collect();
    println!(
        "callers {} conns {} rtt {} ms depth {}",
        args.callers, args.conns, args.latency_ms, args.depth
    );
    for ((name, _), q) in contenders.iter().zip(&qps) {
        println!("  {name:<28} {q:>9.0} q/s");
    }
    println!(
        "  ratios: pipelined/raw {:.2}  pipelined/deadpool {:.2}  run/deadpool {:.2}",
        qps[0] / qps[3],
        qps[0] / qps[2],
        qps[1] / qps[2]
    );
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
        args.latency_ms,
        args.callers,
        args.conns,
        qps[0],
        qps[1],
        qps[2],
        qps[3],
        qps[0] / qps[3],
        qps[0] / qps[2],
        qps[1] / qps[2]
    );
    Ok(())
}

/// `n` raw tokio-postgres clients, each with the statement prepared.
async fn raw_clients(
    url: &str,
    ca: &TestCa,
    n: usize,
) -> Result<Vec<(tokio_postgres::Client, tokio_postgres::Statement)>, common::BoxError> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = common::raw_client(url, ca).await?;
        let stmt = client.prepare("select $1::int4").await?;
        clients.push((client, stmt));
    }
    Ok(clients)
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        callers: 32,
        conns: 8,
        latency_ms: 0,
        millis: 500,
        rounds: 5,
        depth: 128,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--callers" => a.callers = num()? as usize,
            "--conns" => a.conns = num()? as usize,
            "--latency-ms" => a.latency_ms = num()?,
            "--millis" => a.millis = num()?,
            "--rounds" => a.rounds = num()? as u32,
            "--depth" => a.depth = num()? as usize,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.callers == 0 || a.conns == 0 || a.millis == 0 || a.rounds == 0 || a.depth == 0 {
        return Err(
            "--callers, --conns, --millis, --rounds and --depth must be more than zero".into(),
        );
    }
    Ok(a)
}
