//! Run with: bash scripts/fleet-sim.sh [-- --pools 1000]
//!
//! A fleet simulation of the Heroku Platform API budget (issue 12, item 7).
//! N pools (default 1,000), each with its own `source::HerokuApi` as N
//! separate processes would have, all read `DATABASE_URL` from ONE local
//! stand-in of the Platform API that models the *account's* rate limit: a
//! token bucket of 4,500 requests refilled continuously at 75 a minute, one
//! token per request (304s included), `429` with `Retry-After` when it is
//! empty. Each pool (`max_size(1)`, `.watch(60 s)`, budget
//! `HerokuApi::fleet_size(N)`) runs a worker calling `select 1` about every
//! 500 ms. After ~10 s the password is rotated the way `heroku
//! pg:credentials:rotate` does it (`ALTER ROLE … PASSWORD`, the config var
//! changed, the sessions terminated — PgBouncer's client sessions too, see
//! below), again `--seconds-between` (default 30) seconds later, then the
//! fleet runs ~20 s more.
//!
//! The database: 1,000 pools need ~1,000 connections, but
//! `pgrotate-testing` fixes `max_connections=200` on the server's command
//! line (which beats `postgresql.conf` and `ALTER SYSTEM`), so the fleet
//! goes through a real PgBouncer (the fixture's: transaction mode,
//! `auth_query`) in front of the throwaway PostgreSQL, as with Heroku's
//! `DATABASE_CONNECTION_POOL_URL`. The pools are therefore in pooler mode,
//! query with the unnamed statement (`query_typed_one`), and connect to
//! PgBouncer in plaintext (`SslMode::Disable`: the fixture's PgBouncer has
//! no client TLS by default, and 1,000 TLS handshakes on PgBouncer's one
//! thread would slow the reconnect wave on 2 cores). PgBouncer keeps its
//! clients' sessions when the server's end, so most pools would never see
//! a rotation; the simulation ends them too (`KILL db`, `RESUME db` on the
//! admin console), as a rotation does to direct connections, so that every
//! pool must refetch: the budget's worst case.
//!
//! Prints a markdown table and a one-line JSON summary to stdout (progress
//! on stderr); exits non-zero if a target is missed: at most 2 API requests
//! per pool per rotation, no 429, every pool serving again within 10 s of
//! each rotation, and the watch using at most half the account's refill in
//! the steady phases. Never prints a URL, a password or the token.
//!
//! Flags: `--pools N` (1000), `--seconds-between S` (30), and
//! `--account-tokens T` (4500: the account's bucket at the start; lower it
//! to see the fleet meet 429s and a low `RateLimit-Remaining`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgrotate::source::HerokuApi;
use pgrotate::{Pool, SslMode};
use pgrotate_testing::{Cluster, PgBouncer, PgBouncerOptions, TestRole};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The account token every pool uses (one account). Never printed.
const TOKEN: &str = "HRKU-fleet-sim-token-never-printed";
/// The `Accept` header the Platform API requires.
const V3: &str = "application/vnd.heroku+json; version=3";
/// The account's bucket: at most this many tokens…
const BUCKET_CAPACITY: f64 = 4500.0;
/// …refilled at 75 a minute.
const REFILL_PER_SECOND: f64 = 75.0 / 60.0;
/// The body of a 429.
const RATE_LIMIT_BODY: &str =
    r#"{"id":"rate_limit","message":"Your account reached the API rate limit"}"#;

/// Pools built at the same time.
const BUILD_CONCURRENCY: usize = 50;
/// Steady running before the first rotation.
const STEADY: Duration = Duration::from_secs(10);
/// Running after the second rotation.
const AFTER: Duration = Duration::from_secs(20);
/// After a rotation, how long before the fleet counts as steady again
/// (also the recovery target).
const RECOVERY: Duration = Duration::from_secs(10);
/// The watch interval asked for; the pool stretches it to its budget.
const WATCH: Duration = Duration::from_secs(60);
/// A worker's mean pause between calls, ± half of it at random.
const CALL_EVERY_MS: u64 = 500;
/// No single call may take longer than this (the pool's own bound is 30 s).
const CALL_BOUND: Duration = Duration::from_secs(45);
/// The whole run may take no longer than this.
const RUN_BOUND: Duration = Duration::from_secs(300);
/// Targets.
const MAX_REQUESTS_PER_ROTATION: u64 = 2;
const MAX_WATCH_SHARE_PERCENT: f64 = 50.0;

/// Where in the timeline a request or an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Building the pools (their first fetch).
    Build = 0,
    /// Steady, before rotation 1.
    Before = 1,
    /// From rotation 1 to rotation 2.
    Between = 2,
    /// From rotation 2 to the end.
    After = 3,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Build, Phase::Before, Phase::Between, Phase::After];

    fn from_u8(n: u8) -> Phase {
        Phase::ALL[usize::from(n).min(3)]
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Build => "build",
            Phase::Before => "before rotation 1",
            Phase::Between => "rotation 1 → 2",
            Phase::After => "after rotation 2",
        }
    }
}

// ---------------------------------------------------------------------------
// The Platform API stand-in, with the account's bucket.
// ---------------------------------------------------------------------------

/// One request the stand-in answered.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    /// The pool that sent it (from the app name `sim-app-{i}`).
    pool: Option<usize>,
    status: u16,
    phase: Phase,
}

/// The account and the app's config vars.
struct Account {
    tokens: f64,
    refilled_at: Instant,
    /// Left after each answer; the lowest seen.
    min_remaining: u64,
    database_url: String,
    version: u64,
    phase: Phase,
    pools: usize,
    seen: Vec<Seen>,
}

impl Account {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * REFILL_PER_SECOND).min(BUCKET_CAPACITY);
        self.refilled_at = now;
    }
}

/// The local Platform API: `GET /apps/sim-app-{i}/config-vars` on
/// 127.0.0.1. Stops when dropped.
struct ApiServer {
    addr: SocketAddr,
    account: Arc<Mutex<Account>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Serves `database_url` as every app's `DATABASE_URL`, to apps
    /// `sim-app-0` … `sim-app-{pools-1}`, with `tokens` in the bucket.
    async fn start(pools: usize, database_url: String, tokens: u32) -> std::io::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let account = Arc::new(Mutex::new(Account {
            tokens: f64::from(tokens),
            refilled_at: Instant::now(),
            min_remaining: u64::from(tokens),
            database_url,
            version: 1,
            phase: Phase::Build,
            pools,
            seen: Vec::new(),
        }));
        let shared = account.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, most likely: wait, retry.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let account = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let account = account.clone();
                        async move { Ok::<_, Infallible>(answer(&account, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ApiServer {
            addr,
            account,
            task,
        })
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Account> {
        self.account.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `DATABASE_URL`; the ETag changes.
    fn set_database_url(&self, url: String) {
        let mut account = self.lock();
        account.database_url = url;
        account.version += 1;
    }

    fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }

    fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Tokens left now, and the lowest `RateLimit-Remaining` answered.
    fn tokens(&self) -> (f64, u64) {
        let mut account = self.lock();
        account.refill(Instant::now());
        (account.tokens, account.min_remaining)
    }
}

/// The pool a path names: `/apps/sim-app-{i}/config-vars`.
fn pool_of(path: &str, pools: usize) -> Option<usize> {
    path.strip_prefix("/apps/sim-app-")?
        .strip_suffix("/config-vars")?
        .parse()
        .ok()
        .filter(|i| *i < pools)
}

/// Charges the account one token, then answers as the Platform API does.
fn answer(account: &Mutex<Account>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now = Instant::now();
    let mut account = account.lock().unwrap_or_else(|p| p.into_inner());
    account.refill(now);
    let pool = pool_of(req.uri().path(), account.pools);
    let mut response = Response::builder().header("Content-Type", "application/json");
    let (status, body) = if account.tokens < 1.0 {
        let wait = ((1.0 - account.tokens) / REFILL_PER_SECOND).ceil().max(1.0);
        response = response
            .header("Retry-After", format!("{wait:.0}"))
            .header("RateLimit-Remaining", "0");
        account.min_remaining = 0;
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMIT_BODY.to_string())
    } else {
        account.tokens -= 1.0;
        let remaining = account.tokens.floor() as u64;
        account.min_remaining = account.min_remaining.min(remaining);
        response = response.header("RateLimit-Remaining", remaining.to_string());
        let etag = format!("\"v{}\"", account.version);
        let authorized = header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| t == TOKEN);
        if header("accept") != Some(V3) {
            (
                StatusCode::NOT_ACCEPTABLE,
                r#"{"id":"not_acceptable","message":"Accept header must name version 3"}"#.into(),
            )
        } else if !authorized {
            (
                StatusCode::UNAUTHORIZED,
                r#"{"id":"unauthorized","message":"Invalid credentials provided."}"#.into(),
            )
        } else if req.method() != hyper::Method::GET || pool.is_none() {
            (
                StatusCode::NOT_FOUND,
                r#"{"id":"not_found","message":"Couldn't find that app."}"#.into(),
            )
        } else if header("if-none-match") == Some(etag.as_str()) {
            response = response.header("ETag", &etag);
            (StatusCode::NOT_MODIFIED, String::new())
        } else {
            response = response.header("ETag", &etag);
            let vars = serde_json::json!({ "DATABASE_URL": account.database_url });
            (StatusCode::OK, vars.to_string())
        }
    };
    let phase = account.phase;
    account.seen.push(Seen {
        at: now,
        pool,
        status: status.as_u16(),
        phase,
    });
    drop(account);
    response
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

// ---------------------------------------------------------------------------
// The fleet.
// ---------------------------------------------------------------------------

/// What the workers record, shared.
struct Fleet {
    /// The current phase (errors are counted by it).
    phase: AtomicU8,
    /// When each rotation was done: new URL published, old sessions ended.
    rotated: [OnceLock<Instant>; 2],
    /// Per rotation, per pool: microseconds from the rotation to the end of
    /// the pool's first successful call started after it (`u64::MAX`: none).
    first_ok: [Vec<AtomicU64>; 2],
    errors_by_phase: [AtomicU64; 4],
    errors_by_pool: Vec<AtomicU64>,
    calls_ok: AtomicU64,
    /// Distinct error messages, with counts (pgrotate's errors hold no
    /// secret).
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Fleet {
    fn new(pools: usize) -> Fleet {
        let none = || (0..pools).map(|_| AtomicU64::new(u64::MAX)).collect();
        Fleet {
            phase: AtomicU8::new(Phase::Before as u8),
            rotated: [OnceLock::new(), OnceLock::new()],
            first_ok: [none(), none()],
            errors_by_phase: Default::default(),
            errors_by_pool: (0..pools).map(|_| AtomicU64::new(0)).collect(),
            calls_ok: AtomicU64::new(0),
            error_kinds: Mutex::new(BTreeMap::new()),
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    fn note_ok(&self, pool: usize, started: Instant, ended: Instant) {
        self.calls_ok.fetch_add(1, Ordering::Relaxed);
        // Only for the latest rotation: a pool that served again only after
        // rotation 2 has not recovered from rotation 1.
        let latest = (0..2)
            .rev()
            .find_map(|k| self.rotated[k].get().map(|at| (k, *at)));
        if let Some((k, at)) = latest
            && started >= at
        {
            let micros =
                u64::try_from(ended.duration_since(at).as_micros()).unwrap_or(u64::MAX - 1);
            let _ = self.first_ok[k][pool].compare_exchange(
                u64::MAX,
                micros,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn note_error(&self, pool: usize, what: String) {
        self.errors_by_phase[self.phase() as usize].fetch_add(1, Ordering::Relaxed);
        self.errors_by_pool[pool].fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() < 20 || kinds.contains_key(&what) {
            *kinds.entry(what).or_default() += 1;
        }
    }

    fn errors(&self) -> u64 {
        self.errors_by_phase
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .sum()
    }
}

/// Pool `i`'s source: its own app name (so the stand-in knows who asked),
/// the account's token, the budget for a fleet of `fleet` processes.
fn source(i: usize, fleet: u32, base_url: String) -> HerokuApi {
    HerokuApi::new(format!("sim-app-{i}"), TOKEN)
        .base_url(base_url)
        .fleet_size(fleet)
}

async fn build_pool(i: usize, fleet: u32, base_url: String) -> Result<Pool, pgrotate::Error> {
    Pool::builder(source(i, fleet, base_url))
        .max_size(1)
        .watch(WATCH)
        // Through PgBouncer (see the module docs).
        .pooler_mode(true)
        .sslmode(SslMode::Disable)
        // The fixture's PgBouncer retries a failed server login every
        // second (server_login_retry below).
        .pooler_retry_delay(Duration::from_secs(1))
        .application_name("fleet-sim")
        .build()
        .await
}

/// One pool's caller: `select 1` about every 500 ms until told to stop
/// (between calls: a call in flight is finished and counted).
async fn worker(i: usize, pool: Pool, fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    let mut rng = fastrand::Rng::new();
    let mut pause = Duration::from_millis(rng.u64(0..CALL_EVERY_MS));
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let call = pool.run(async move |c| {
            c.query_typed_one("select 1::int8", &[])
                .await?
                .try_get::<_, i64>(0)
        });
        let result = tokio::time::timeout(CALL_BOUND, call).await;
        let ended = Instant::now();
        match result {
            Ok(Ok(1)) => fleet.note_ok(i, started, ended),
            Ok(Ok(n)) => fleet.note_error(i, format!("select 1 returned {n}")),
            Ok(Err(e)) => fleet.note_error(i, format!("{e:#}")),
            Err(_) => fleet.note_error(i, format!("a call took over {CALL_BOUND:?}")),
        }
        pause = Duration::from_millis(rng.u64(CALL_EVERY_MS / 2..=CALL_EVERY_MS * 3 / 2));
    }
}

// ---------------------------------------------------------------------------
// Warnings and errors pgrotate logs, counted (printed at the end).
// ---------------------------------------------------------------------------

/// Counts WARN and ERROR events by level, target and message.
#[derive(Clone, Default)]
struct EventCounter(Arc<Mutex<BTreeMap<String, u64>>>);

struct MessageOf(String);

impl tracing::field::Visit for MessageOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN {
            return;
        }
        let mut message = MessageOf(String::new());
        event.record(&mut message);
        let key = format!("{} {}: {}", meta.level(), meta.target(), message.0);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() < 50 || counts.contains_key(&key) {
            *counts.entry(key).or_default() += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

struct Args {
    pools: usize,
    seconds_between: u64,
    /// The account's bucket at the start (default full).
    account_tokens: u32,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        pools: 1000,
        seconds_between: 30,
        account_tokens: BUCKET_CAPACITY as u32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // `bash scripts/fleet-sim.sh -- --pools 1000` passes it on.
            "--" => {}
            "--pools" => {
                args.pools = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| (1..=5000).contains(n))
                    .ok_or("--pools takes a number from 1 to 5000")?;
            }
            "--seconds-between" => {
                args.seconds_between = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| (1..=120).contains(s))
                    .ok_or("--seconds-between takes a number of seconds from 1 to 120")?;
            }
            "--account-tokens" => {
                args.account_tokens = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|t| f64::from(*t) <= BUCKET_CAPACITY)
                    .ok_or("--account-tokens takes a number from 0 to 4500")?;
            }
            "--help" | "-h" => {
                return Err(
                    "usage: fleet_sim [--pools N (1000)] [--seconds-between S (30)] \
                            [--account-tokens T (4500: the account's bucket at the start)]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(args)
}

/// Instants of the timeline.
struct Timeline {
    built: Instant,
    rotation_start: [Instant; 2],
    rotation_done: [Instant; 2],
    stop: Instant,
}

impl Timeline {
    /// The steady windows: before rotation 1, and from 10 s after each
    /// rotation to the next event.
    fn steady_windows(&self) -> [(Instant, Instant); 3] {
        let after = |done: Instant, until: Instant| ((done + RECOVERY).min(until), until);
        [
            (self.built, self.rotation_start[0]),
            after(self.rotation_done[0], self.rotation_start[1]),
            after(self.rotation_done[1], self.stop),
        ]
    }
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut from = text.len().saturating_sub(max);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".to_string(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let counter = EventCounter::default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            counter
                .clone()
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .init();
    match tokio::time::timeout(RUN_BOUND, run(args, counter)).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("fleet_sim: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("fleet_sim: the run did not finish within {RUN_BOUND:?}");
            ExitCode::FAILURE
        }
    }
}

/// The whole simulation; `Ok(true)` when every target is met.
async fn run(args: Args, counter: EventCounter) -> Result<bool, Box<dyn std::error::Error>> {
    let wall = Instant::now();
    let n = args.pools;
    let fleet_size = u32::try_from(n)?;

    eprintln!("fleet_sim: starting PostgreSQL and PgBouncer…");
    let cluster = Cluster::builder().start().await?;
    let (server_version, max_connections) = {
        let su = cluster.superuser().await?;
        let v: String = su
            .query_one("select current_setting('server_version')", &[])
            .await?
            .get(0);
        let m: String = su
            .query_one("select current_setting('max_connections')", &[])
            .await?
            .get(0);
        (v, m)
    };
    // PgBouncer: room for every pool's client connection; 20 server
    // connections; a failed server login retried after 1 s (its default, 15
    // s, would hold every pool up that long after a rotation).
    let bouncer: PgBouncer = cluster
        .start_pgbouncer(
            PgBouncerOptions::default()
                .max_client_conn(u32::try_from(n + 100)?)
                .default_pool_size(20)
                .server_login_retry(Duration::from_secs(1)),
        )
        .await?;
    let backend = format!(
        "PgBouncer ({}, transaction mode, auth_query, default_pool_size 20, \
         server_login_retry 1 s; pools in pooler mode, plaintext to PgBouncer) in front of \
         PostgreSQL {server_version} ({:?} backend, max_connections={max_connections}, fixed by \
         pgrotate-testing)",
        bouncer.version(),
        cluster.backend()
    );
    let mut role: TestRole = cluster.create_role("fleet").await?;
    let server = ApiServer::start(n, bouncer.url(&role), args.account_tokens).await?;
    eprintln!("fleet_sim: {backend}");

    // Build the fleet, BUILD_CONCURRENCY at a time.
    eprintln!("fleet_sim: building {n} pools ({BUILD_CONCURRENCY} at a time)…");
    let build_started = Instant::now();
    let base = server.base_url();
    let mut pools: Vec<Option<Pool>> = (0..n).map(|_| None).collect();
    let mut builds = futures::stream::iter(0..n)
        .map(|i| {
            let base = base.clone();
            async move { (i, build_pool(i, fleet_size, base).await) }
        })
        .buffer_unordered(BUILD_CONCURRENCY);
    while let Some((i, built)) = builds.next().await {
        pools[i] = Some(built.map_err(|e| format!("building pool {i}: {e:#}"))?);
    }
    drop(builds);
    let pools: Vec<Pool> = pools.into_iter().flatten().collect();
    let build_time = build_started.elapsed();
    eprintln!("fleet_sim: built in {:.1} s", build_time.as_secs_f64());

    // Run.
    let fleet = Arc::new(Fleet::new(n));
    server.set_phase(Phase::Before);
    let built = Instant::now();
    let between = Duration::from_secs(args.seconds_between);
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(i, pool)| tokio::spawn(worker(i, pool.clone(), fleet.clone(), stop_rx.clone())))
        .collect();

    let progress = |label: &str| {
        let (tokens, _) = server.tokens();
        let seen = server.seen();
        eprintln!(
            "fleet_sim: {:>5.1} s  {label:<18} {:>8} calls ok  {:>4} errors  {:>5} API requests  \
             {:>3} × 429  {:>6.0} tokens left",
            built.elapsed().as_secs_f64(),
            fleet.calls_ok.load(Ordering::Relaxed),
            fleet.errors(),
            seen.len(),
            seen.iter().filter(|s| s.status == 429).count(),
            tokens
        );
    };
    let wait_until = async |until: Instant, label: &str| {
        while Instant::now() < until {
            let step = (until - Instant::now()).min(Duration::from_secs(5));
            tokio::time::sleep(step).await;
            progress(label);
        }
    };

    wait_until(built + STEADY, Phase::Before.name()).await;
    let mut rotation_start = [built; 2];
    let mut rotation_done = [built; 2];
    for k in 0..2 {
        let phase = if k == 0 { Phase::Between } else { Phase::After };
        server.set_phase(phase);
        fleet.phase.store(phase as u8, Ordering::SeqCst);
        rotation_start[k] = Instant::now();
        // `heroku pg:credentials:rotate`: new password, the config var
        // changed, the old sessions ended.
        let rotated = cluster.rotate_password(&role).await?;
        server.set_database_url(bouncer.url(&rotated));
        // Through PgBouncer the pools' own sessions (to PgBouncer) outlive
        // the server's, and most pools would never notice the rotation. A
        // rotation ends every session of a direct connection: end the
        // clients' sessions too, so that every pool has to reconnect — the
        // budget's worst case, every process refetching once. `KILL db`
        // drops the clients and holds new logins until `RESUME db`; the
        // server's sessions are terminated in between. In this order no
        // login is under way when KILL frees the database's pools: PgBouncer
        // 1.18 segfaulted once in four runs when KILL came 50 ms after
        // `pg_terminate_backend`, amid the logins that set off.
        let admin = bouncer.admin().await?;
        admin
            .simple_query(&format!("KILL {}", role.database))
            .await?;
        let ended = cluster.terminate_backends(&role.name).await?;
        admin
            .simple_query(&format!("RESUME {}", role.database))
            .await?;
        drop(admin);
        rotation_done[k] = Instant::now();
        let _ = fleet.rotated[k].set(rotation_done[k]);
        role = rotated;
        eprintln!(
            "fleet_sim: rotation {}: password changed, DATABASE_URL changed, {ended} server \
             sessions terminated, PgBouncer's client sessions killed ({:.0} ms)",
            k + 1,
            rotation_start[k].elapsed().as_secs_f64() * 1000.0
        );
        let until = rotation_start[k] + if k == 0 { between } else { AFTER };
        wait_until(until, phase.name()).await;
    }
    let stop = Instant::now();
    // A PgBouncer that died (they do: see the rotation) voids the run.
    let bouncer_alive = match bouncer.admin().await {
        Ok(admin) => admin.simple_query("SHOW VERSION").await.is_ok(),
        Err(_) => false,
    };
    if !bouncer_alive {
        eprintln!(
            "fleet_sim: PgBouncer is gone (crashed?); the end of its log:\n{}",
            tail(&bouncer.log(), 3000)
        );
    }
    eprintln!("fleet_sim: stopping the workers (each finishes its call in flight)…");
    let _ = stop_tx.send(true);
    for w in workers {
        w.await?;
    }
    let statuses: Vec<pgrotate::Status> = pools.iter().map(Pool::status).collect();
    for pool in &pools {
        pool.close();
    }
    let timeline = Timeline {
        built,
        rotation_start,
        rotation_done,
        stop,
    };
    let seen: Vec<Seen> = server.seen().into_iter().filter(|s| s.at < stop).collect();
    let (_, min_remaining) = server.tokens();
    drop(pools);
    let report = Report::new(n, &timeline, &seen, &fleet, &statuses, build_time);
    let void = (!bouncer_alive).then_some(
        "PgBouncer died during the run (a PgBouncer crash, not pgrotate's): the measurement is void",
    );
    let passed = report.print(
        &backend,
        (args.account_tokens, min_remaining),
        wall.elapsed(),
        void,
    );

    let events = counter.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !events.is_empty() {
        eprintln!("fleet_sim: warnings and errors pgrotate logged (count, event):");
        for (event, count) in &events {
            eprintln!("  {count:>6}  {event}");
        }
    }
    let kinds = fleet
        .error_kinds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !kinds.is_empty() {
        eprintln!("fleet_sim: caller errors (count, error):");
        for (kind, count) in &kinds {
            eprintln!("  {count:>6}  {kind}");
        }
    }
    drop(server);
    drop(bouncer);
    drop(cluster);
    Ok(passed)
}

// ---------------------------------------------------------------------------
// The report.
// ---------------------------------------------------------------------------

/// What one rotation cost and how the fleet came through it.
struct RotationReport {
    requests_max: u64,
    requests_mean: f64,
    /// Pools that sent more than the target.
    pools_over: usize,
    http_429: usize,
    recovered: Vec<Duration>,
    not_recovered: usize,
    errors: u64,
    /// Per pool, from the rotation to its first API request after it
    /// (sorted): how long the budget made the refetch wait.
    first_request: Vec<Duration>,
}

struct Report {
    n: usize,
    build_requests: usize,
    build_time: Duration,
    rotations: [RotationReport; 2],
    http_429: usize,
    errors: u64,
    errors_by_phase: [u64; 4],
    requests_by_phase: [usize; 4],
    steady_requests: usize,
    steady_seconds: f64,
    steady_304: usize,
    final_generations: BTreeMap<u64, usize>,
    fetches_max: u64,
    /// The pools' own budgets at the end: (min, mean) tokens left, and
    /// one pool's budget as configured.
    budget_tokens: (u32, f64),
    budget: Option<pgrotate::BudgetStatus>,
    /// `run`'s retries, all pools.
    retries: u64,
}

impl Report {
    fn new(
        n: usize,
        timeline: &Timeline,
        seen: &[Seen],
        fleet: &Fleet,
        statuses: &[pgrotate::Status],
        build_time: Duration,
    ) -> Report {
        let rotation = |k: usize| {
            let phase = if k == 0 { Phase::Between } else { Phase::After };
            let mut per_pool = vec![0u64; n];
            let mut first: Vec<Option<Duration>> = vec![None; n];
            let done = timeline.rotation_done[k];
            for s in seen.iter().filter(|s| s.phase == phase) {
                if let Some(i) = s.pool {
                    per_pool[i] += 1;
                    if s.at >= done && first[i].is_none() {
                        first[i] = Some(s.at - done);
                    }
                }
            }
            let mut first_request: Vec<Duration> = first.into_iter().flatten().collect();
            first_request.sort_unstable();
            let mut recovered: Vec<Duration> = fleet.first_ok[k]
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|m| *m != u64::MAX)
                .map(Duration::from_micros)
                .collect();
            recovered.sort_unstable();
            RotationReport {
                requests_max: per_pool.iter().copied().max().unwrap_or(0),
                requests_mean: per_pool.iter().sum::<u64>() as f64 / n as f64,
                pools_over: per_pool
                    .iter()
                    .filter(|r| **r > MAX_REQUESTS_PER_ROTATION)
                    .count(),
                http_429: seen
                    .iter()
                    .filter(|s| s.phase == phase && s.status == 429)
                    .count(),
                not_recovered: n - recovered.len(),
                recovered,
                errors: fleet.errors_by_phase[phase as usize].load(Ordering::Relaxed),
                first_request,
            }
        };
        let windows = timeline.steady_windows();
        let in_steady = |at: Instant| windows.iter().any(|(from, to)| at >= *from && at < *to);
        let steady: Vec<&Seen> = seen.iter().filter(|s| in_steady(s.at)).collect();
        let mut final_generations = BTreeMap::new();
        for s in statuses {
            *final_generations.entry(s.generation).or_default() += 1;
        }
        Report {
            n,
            build_requests: seen.iter().filter(|s| s.phase == Phase::Build).count(),
            build_time,
            rotations: [rotation(0), rotation(1)],
            http_429: seen.iter().filter(|s| s.status == 429).count(),
            errors: fleet.errors(),
            errors_by_phase: Phase::ALL
                .map(|p| fleet.errors_by_phase[p as usize].load(Ordering::Relaxed)),
            requests_by_phase: Phase::ALL.map(|p| seen.iter().filter(|s| s.phase == p).count()),
            steady_requests: steady.len(),
            steady_seconds: windows
                .iter()
                .map(|(from, to)| to.saturating_duration_since(*from).as_secs_f64())
                .sum(),
            steady_304: steady.iter().filter(|s| s.status == 304).count(),
            final_generations,
            fetches_max: statuses.iter().map(|s| s.fetches).max().unwrap_or(0),
            budget_tokens: (
                statuses.iter().map(|s| s.budget.tokens).min().unwrap_or(0),
                statuses
                    .iter()
                    .map(|s| f64::from(s.budget.tokens))
                    .sum::<f64>()
                    / n as f64,
            ),
            budget: statuses.first().map(|s| s.budget.clone()),
            retries: statuses.iter().map(|s| s.retries).sum(),
        }
    }

    /// The watch's fleet-wide requests per second in the steady windows.
    fn watch_rate(&self) -> f64 {
        if self.steady_seconds > 0.0 {
            self.steady_requests as f64 / self.steady_seconds
        } else {
            0.0
        }
    }

    fn watch_share_percent(&self) -> f64 {
        self.watch_rate() / REFILL_PER_SECOND * 100.0
    }

    /// What the budget's design leads one to expect of the watch: each pool
    /// polls every two refills plus up to a fifth (2.2 on average), at a
    /// random phase, so the fleet's polls are a Poisson process of rate
    /// N / (2.2 × refill). With the expected count in the steady windows.
    fn watch_expected(&self) -> Option<(f64, f64)> {
        let refill = self.budget.as_ref()?.refill.as_secs_f64();
        let rate = self.n as f64 / (2.2 * refill.max(WATCH.as_secs_f64() / 2.0));
        Some((rate, rate * self.steady_seconds))
    }

    /// Prints the table and the JSON line; returns whether every target is
    /// met (and the run is not `void`).
    fn print(
        &self,
        backend: &str,
        account: (u32, u64),
        wall: Duration,
        void: Option<&str>,
    ) -> bool {
        let (start_tokens, min_remaining) = account;
        let mut failed: Vec<String> = void.map(String::from).into_iter().collect();
        for (k, r) in self.rotations.iter().enumerate() {
            if r.requests_max > MAX_REQUESTS_PER_ROTATION {
                failed.push(format!(
                    "rotation {}: {} pools sent more than {MAX_REQUESTS_PER_ROTATION} API \
                     requests (max {})",
                    k + 1,
                    r.pools_over,
                    r.requests_max
                ));
            }
            if r.not_recovered > 0 {
                failed.push(format!(
                    "rotation {}: {} pools never served a call again",
                    k + 1,
                    r.not_recovered
                ));
            }
            let slow = r.recovered.iter().filter(|d| **d > RECOVERY).count();
            if slow > 0 {
                failed.push(format!(
                    "rotation {}: {slow} pools took longer than {RECOVERY:?} to serve again",
                    k + 1
                ));
            }
        }
        if self.http_429 > 0 {
            failed.push(format!("{} requests were answered 429", self.http_429));
        }
        let share = self.watch_share_percent();
        if share > MAX_WATCH_SHARE_PERCENT {
            failed.push(format!(
                "the watch used {share:.1} % of the account's refill in the steady phases \
                 (target ≤ {MAX_WATCH_SHARE_PERCENT} %)"
            ));
        }

        let [r1, r2] = &self.rotations;
        let row = |name: &str, a: String, b: String| println!("| {name} | {a} | {b} |");
        println!();
        println!("## Fleet simulation: {} pools, one Heroku account", self.n);
        println!();
        println!("Backend: {backend}.");
        println!();
        println!("| per pool, per rotation | rotation 1 | rotation 2 |");
        println!("|---|---|---|");
        row(
            "API requests per pool in the rotation's window (refetch and any watch poll): max / mean",
            format!("{} / {:.3}", r1.requests_max, r1.requests_mean),
            format!("{} / {:.3}", r2.requests_max, r2.requests_mean),
        );
        row(
            &format!("pools over {MAX_REQUESTS_PER_ROTATION} requests"),
            r1.pools_over.to_string(),
            r2.pools_over.to_string(),
        );
        row(
            "429 answers",
            r1.http_429.to_string(),
            r2.http_429.to_string(),
        );
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
            row(
                &format!("time to first success on the new credentials, {label}"),
                ms(percentile(&r1.recovered, p)),
                ms(percentile(&r2.recovered, p)),
            );
        }
        row(
            "first API request after the rotation, p50 / max",
            format!(
                "{} / {}",
                ms(percentile(&r1.first_request, 50.0)),
                ms(percentile(&r1.first_request, 100.0))
            ),
            format!(
                "{} / {}",
                ms(percentile(&r2.first_request, 50.0)),
                ms(percentile(&r2.first_request, 100.0))
            ),
        );
        row(
            "pools that never served again",
            r1.not_recovered.to_string(),
            r2.not_recovered.to_string(),
        );
        row(
            "caller errors",
            r1.errors.to_string(),
            r2.errors.to_string(),
        );
        println!();
        println!("| whole run | value |");
        println!("|---|---|");
        let line = |name: &str, v: String| println!("| {name} | {v} |");
        line("pools (N)", self.n.to_string());
        line(
            "API requests at build",
            format!(
                "{} ({:.1} s to build all)",
                self.build_requests,
                self.build_time.as_secs_f64()
            ),
        );
        line(
            "API requests by phase (build / before / 1→2 / after)",
            format!(
                "{} / {} / {} / {}",
                self.requests_by_phase[0],
                self.requests_by_phase[1],
                self.requests_by_phase[2],
                self.requests_by_phase[3]
            ),
        );
        line("429 answers (total)", self.http_429.to_string());
        line(
            "caller errors (total; build / before / 1→2 / after)",
            format!(
                "{} ({} / {} / {} / {})",
                self.errors,
                self.errors_by_phase[0],
                self.errors_by_phase[1],
                self.errors_by_phase[2],
                self.errors_by_phase[3]
            ),
        );
        line(
            "watch: requests in the steady windows",
            format!(
                "{} in {:.1} s ({} of them 304) = {:.3}/s",
                self.steady_requests,
                self.steady_seconds,
                self.steady_304,
                self.watch_rate()
            ),
        );
        line(
            "watch's steady share of the refill (75/min)",
            format!("{share:.1} %"),
        );
        if let Some((rate, count)) = self.watch_expected() {
            // A Poisson count: about ±2√count at 95 %.
            let band = 2.0 * count.sqrt();
            line(
                "watch: expected from the budget (N / (2.2 × refill))",
                format!(
                    "{count:.1} ± {band:.1} requests = {:.1} % ± {:.1} % of the refill",
                    rate / REFILL_PER_SECOND * 100.0,
                    band / self.steady_seconds.max(1e-9) / REFILL_PER_SECOND * 100.0
                ),
            );
        }
        line(
            "account's bucket at the start / lowest RateLimit-Remaining answered",
            format!("{start_tokens} / {min_remaining}"),
        );
        line(
            "pools by final generation",
            self.final_generations
                .iter()
                .map(|(g, c)| format!("{c} at {g}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        line("most fetches by one pool", self.fetches_max.to_string());
        line("retries by `run`, all pools", self.retries.to_string());
        if let Some(b) = &self.budget {
            line(
                "each pool's budget (burst, reserve, refill)",
                format!("{}, {}, one every {:?}", b.burst, b.reserve, b.refill),
            );
        }
        line(
            "pools' budget tokens left at the end: min / mean",
            format!("{} / {:.2}", self.budget_tokens.0, self.budget_tokens.1),
        );
        line("wall time", format!("{:.1} s", wall.as_secs_f64()));
        println!();
        if failed.is_empty() {
            println!("All targets met.");
        } else {
            println!("Targets missed:");
            for f in &failed {
                println!("- {f}");
            }
        }
        println!();
        let rotation_json = |r: &RotationReport| {
            let millis = |p: f64| percentile(&r.recovered, p).map(|d| d.as_secs_f64() * 1000.0);
            serde_json::json!({
                "requests_max": r.requests_max,
                "requests_mean": r.requests_mean,
                "http_429": r.http_429,
                "first_success_p50_ms": millis(50.0),
                "first_success_p99_ms": millis(99.0),
                "first_success_max_ms": millis(100.0),
                "not_recovered": r.not_recovered,
                "errors": r.errors,
            })
        };
        let summary = serde_json::json!({
            "pools": self.n,
            "backend": backend,
            "build_requests": self.build_requests,
            "rotations": [rotation_json(r1), rotation_json(r2)],
            "http_429": self.http_429,
            "errors": self.errors,
            "watch_steady_requests": self.steady_requests,
            "watch_steady_seconds": self.steady_seconds,
            "watch_share_percent": share,
            "watch_expected_share_percent": self
                .watch_expected()
                .map(|(rate, _)| rate / REFILL_PER_SECOND * 100.0),
            "account_tokens_start": start_tokens,
            "min_ratelimit_remaining": min_remaining,
            "pool_budget_tokens_min": self.budget_tokens.0,
            "wall_seconds": wall.as_secs_f64(),
            "passed": failed.is_empty(),
            "missed": failed,
        });
        println!("{summary}");
        failed.is_empty()
    }
}
