//! What the benchmarks share: the clients pgrotate is measured against,
//! over TLS verifying the fixture's CA, their command line, and the loop
//! that counts a round's queries.
// Each benchmark uses what it compares with.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgrotate_testing::TestCa;
use tokio_postgres_rustls::MakeRustlsConnect;

pub(crate) type BoxError = Box<dyn std::error::Error>;

/// One contender's call: caller `i`'s next query, `true` if it succeeded.
pub(crate) type Call = Arc<
    dyn Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// The role's URL as tokio-postgres parses it, TLS required to
/// `localhost` (a name in the server's certificate), and a rustls
/// connector verifying the fixture's CA.
fn tls_config(
    url: &str,
    ca: &TestCa,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), BoxError> {
    let mut pg: tokio_postgres::Config = url.parse()?;
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    pg.host("localhost");
    Ok((pg, MakeRustlsConnect::new(ca.rustls_client_config()?)))
}

/// deadpool-postgres as its users configure it, `max_size` connections
/// (the per-query cost of TLS is the same for it as for pgrotate).
pub(crate) fn deadpool(
    url: &str,
    ca: &TestCa,
    max_size: usize,
) -> Result<deadpool_postgres::Pool, BoxError> {
    let (pg, tls) = tls_config(url, ca)?;
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tls,
        deadpool_postgres::ManagerConfig::default(),
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// A raw tokio-postgres client, no pool: its connection spawned.
pub(crate) async fn raw_client(url: &str, ca: &TestCa) -> Result<tokio_postgres::Client, BoxError> {
    let (mut pg, tls) = tls_config(url, ca)?;
    pg.connect_timeout(Duration::from_secs(10));
    let (client, connection) = pg.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The command line: `--<name> N --rounds M` (and cargo's `--bench`),
/// both more than zero, each defaulting to its half of `defaults`.
pub(crate) fn args(name: &str, defaults: (u64, u32)) -> Result<(u64, u32), String> {
    let flag = format!("--{name}");
    let mut it = std::env::args().skip(1);
    let (mut count, mut rounds) = defaults;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|s| s.parse().ok()).ok_or("--rounds N")?,
            "--bench" => {}
            _ if a == flag => {
                count = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or(format!("{flag} N"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if rounds == 0 || count == 0 {
        return Err(format!("{flag} and --rounds must be more than zero"));
    }
    Ok((count, rounds))
}

/// Runs `callers` tasks, the `i`th calling `call(i)` over and over, for
/// `dur`; returns the successes (calls that returned `true`). Panics if
/// any call failed.
pub(crate) async fn measure<F, Fut>(dur: Duration, callers: usize, call: Arc<F>) -> u64
where
    F: Fn(usize) -> Fut + Send + Sync + ?Sized + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    calls(Until::Elapsed(dur), callers, call).await
}

/// Like [`measure`], but until `n` calls have started rather than for a
/// time: a fixed amount of work, whose instructions a counter such as
/// `valgrind --tool=callgrind` gives whatever the machine's load.
pub(crate) async fn measure_count<F, Fut>(n: u64, callers: usize, call: Arc<F>) -> u64
where
    F: Fn(usize) -> Fut + Send + Sync + ?Sized + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    calls(Until::Started(n), callers, call).await
}

#[derive(Clone, Copy)]
enum Until {
    Elapsed(Duration),
    Started(u64),
}

async fn calls<F, Fut>(until: Until, callers: usize, call: Arc<F>) -> u64
where
    F: Fn(usize) -> Fut + Send + Sync + ?Sized + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let limit = match until {
        Until::Started(n) => n,
        Until::Elapsed(_) => u64::MAX,
    };
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (call, stop, ok, failed, started) = (
                call.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                started.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed)
                    && started.fetch_add(1, Ordering::Relaxed) < limit
                {
                    if call(i).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // For a time: the calls that succeeded by then; for a count: all of
    // them, once every task has finished its last.
    let mut n = 0;
    if let Until::Elapsed(dur) = until {
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
        n = ok.load(Ordering::Relaxed);
    }
    for t in tasks {
        t.await.expect("bench task");
    }
    if let Until::Started(_) = until {
        n = ok.load(Ordering::Relaxed);
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a benchmark query failed"
    );
    n
}

/// CPU time this process (every thread: the callers and the connections'
/// tasks, not the server) has used so far, from `/proc/self/stat` (utime +
/// stime, in clock ticks of 10 ms on Linux); `None` elsewhere.
pub(crate) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
