//! Every builder setting at its extremes (zero, a nanosecond, a day,
//! `Duration::MAX`; 0 and `u32::MAX` counts): `build()` either refuses
//! with an error that names the setting, or builds a pool whose every
//! operation answers without a panic — in the caller or in the pool's own
//! tasks. No server is needed: the URL points at a closed port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pgrotate::source::{Budget, Static};
use pgrotate::{Pool, PoolBuilder, RetryPolicy};

const URL: &str = "postgres://app:pw-never-used@127.0.0.1:1/app";

const DURATIONS: &[Duration] = &[
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_secs(24 * 3600),
    Duration::MAX,
];

type Setting = (&'static str, fn(PoolBuilder, Duration) -> PoolBuilder);

const SETTINGS: &[Setting] = &[
    ("wait_timeout", |b, d| b.wait_timeout(d)),
    ("create_timeout", |b, d| b.create_timeout(d)),
    ("connect_timeout", |b, d| b.connect_timeout(d)),
    ("ping_timeout", |b, d| b.ping_timeout(d)),
    ("ping_after_idle", |b, d| b.ping_after_idle(d)),
    ("keepalives_idle", |b, d| b.keepalives_idle(Some(d))),
    ("refetch_backoff_cap", |b, d| b.refetch_backoff_cap(d)),
    ("fetch_timeout", |b, d| b.fetch_timeout(d)),
    ("watch", |b, d| b.watch(d)),
    ("max_lifetime", |b, d| b.max_lifetime(d)),
    ("idle_timeout", |b, d| b.idle_timeout(d)),
    ("pooler_retry_delay", |b, d| b.pooler_retry_delay(d)),
    ("pooler_query_timeout", |b, d| b.pooler_query_timeout(d)),
    ("retry deadline", |b, d| {
        b.retry(RetryPolicy::default().deadline(d))
    }),
    ("retry attempt_timeout", |b, d| {
        b.retry(RetryPolicy::default().attempt_timeout(Some(d)))
    }),
    ("retry backoff", |b, d| {
        b.retry(RetryPolicy::default().backoff(d, d))
    }),
    ("refetch budget refill", |b, d| {
        b.refetch_budget(Budget::new(3, d))
    }),
    ("refetch budget outage grace", |b, d| {
        b.refetch_budget(Budget::local().outage_grace(d))
    }),
];

/// Counts panics anywhere in the process (the pool's tasks included).
fn count_panics() -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    count
}

/// Exercises a built pool briefly: every call must answer, none panic.
async fn exercise(pool: &Pool) {
    let quick = RetryPolicy::default()
        .attempts(2)
        .deadline(Duration::from_millis(200));
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.get()).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        pool.run_with(&quick, async |c| {
            c.simple_query("select 1").await.map(|_| ())
        }),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(50), pool.query_one("select 1", &[])).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.refresh_now()).await;
    let _ = pool.status();
    let _ = pool.drain().await;
    // Let the background task take a few turns.
    tokio::time::sleep(Duration::from_millis(30)).await;
    pool.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_setting_at_an_extreme_panics_and_refusals_name_the_setting() {
    let panics = count_panics();
    for (name, set) in SETTINGS {
        for &d in DURATIONS {
            let built = set(Pool::builder(Static::new(URL)), d).build().await;
            match built {
                Ok(pool) => exercise(&pool).await,
                Err(e) => {
                    let words: Vec<&str> = name.split(' ').collect();
                    let text = format!("{e:#}");
                    assert!(
                        words.iter().any(|w| text.contains(w)),
                        "{name} = {d:?} was refused without naming it: {text}"
                    );
                    assert!(!text.contains("pw-never-used"), "{text}");
                }
            }
            assert_eq!(panics.load(Ordering::SeqCst), 0, "{name} = {d:?} panicked");
        }
    }
    for n in [0usize, 1, usize::MAX] {
        let built = Pool::builder(Static::new(URL)).max_size(n).build().await;
        match built {
            Ok(pool) => exercise(&pool).await,
            Err(e) => assert!(format!("{e:#}").contains("max_size"), "{e}"),
        }
        let built = Pool::builder(Static::new(URL)).min_idle(n).build().await;
        if let Ok(pool) = built {
            exercise(&pool).await;
        }
        let built = Pool::builder(Static::new(URL))
            .pipeline_depth(n)
            .build()
            .await;
        match built {
            Ok(pool) => exercise(&pool).await,
            Err(e) => assert!(format!("{e:#}").contains("pipeline_depth"), "{e}"),
        }
    }
    for (burst, reserve) in [
        (0, 0),
        (1, 0),
        (u32::MAX, 0),
        (u32::MAX, u32::MAX - 1),
        (4, 4),
    ] {
        let budget = Budget::new(burst, Duration::from_nanos(1)).reserve(reserve);
        match Pool::builder(Static::new(URL))
            .refetch_budget(budget)
            .build()
            .await
        {
            Ok(pool) => exercise(&pool).await,
            Err(e) => assert!(format!("{e:#}").contains("budget"), "{e}"),
        }
    }
    for n in [0u32, 1, u32::MAX] {
        let built = Pool::builder(Static::new(URL))
            .retry(RetryPolicy::default().attempts(n))
            .build()
            .await;
        match built {
            Ok(pool) => exercise(&pool).await,
            Err(e) => assert!(format!("{e:#}").contains("attempts"), "{e}"),
        }
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic somewhere");
}
