//! The `metrics` feature through a real rotation (`ALTER ROLE ... PASSWORD`
//! and `pg_terminate_backend`) against a real PostgreSQL: a recording
//! backend (metrics-util's `DebuggingRecorder`, this binary's global
//! recorder, so this file holds one test) sees every documented name with
//! its labels, and no label holds a secret.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{UrlFile, bounded, role_and_file, select_one, wait_until};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pgrotate::{Pool, metrics as m};
use pgrotate_testing::Cluster;

/// One recorded series: its name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// What the recorder saw so far: its snapshots drain counters and
/// histograms, so they are added up here (gauges: the last value).
#[derive(Default, Debug)]
struct Seen {
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Vec<f64>>,
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) -> &Seen {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            let series = (key.name().to_string(), labels);
            match value {
                DebugValue::Counter(c) => *self.counters.entry(series).or_default() += c,
                DebugValue::Gauge(g) => {
                    self.gauges.insert(series, g.into_inner());
                }
                DebugValue::Histogram(h) => self
                    .histograms
                    .entry(series)
                    .or_default()
                    .extend(h.iter().map(|x| x.into_inner())),
            }
        }
        self
    }

    /// The counter for `name` with exactly `labels`, 0 when never recorded.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.counters
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0)
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges
            .get(&(name.to_string(), BTreeMap::new()))
            .copied()
    }

    fn histogram(&self, name: &str) -> &[f64] {
        self.histograms
            .get(&(name.to_string(), BTreeMap::new()))
            .map_or(&[], |h| h.as_slice())
    }

    fn every_series(&self) -> impl Iterator<Item = &Series> {
        self.counters
            .keys()
            .chain(self.gauges.keys())
            .chain(self.histograms.keys())
    }
}

/// A second pool: its watch polls the unchanged source (`watch`, `same`)
/// and its one connection outlives `max_lifetime` (`lifetime`).
async fn watch_and_lifetime(file: &UrlFile, snapshotter: &Snapshotter, seen: &mut Seen) {
    let watched = Pool::builder(file.source())
        .max_size(1)
        .watch(Duration::from_millis(200))
        .max_lifetime(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    assert_eq!(select_one(&watched).await.unwrap(), 1);
    while seen.take(snapshotter).counter(
        m::URL_FETCHES,
        &[(m::TRIGGER, "watch"), (m::OUTCOME, "same")],
    ) == 0
        || seen.counter(m::CONNECTIONS_CLOSED, &[(m::REASON, "lifetime")]) == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watched.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_visible_in_every_documented_metric_and_no_label_holds_a_secret() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("this binary's only recorder");
    bounded(async {
        let cluster = Cluster::shared().await.unwrap();
        let (role, file) = role_and_file(cluster, "metrics_rot").await;
        let old_password = role.password.clone();
        let pool = Pool::builder(file.source())
            .max_size(4)
            .idle_timeout(Duration::from_millis(600))
            .build()
            .await
            .unwrap();

        // Before the rotation: calls that succeed, and one that is the
        // caller's own error.
        for _ in 0..3 {
            assert_eq!(select_one(&pool).await.unwrap(), 1);
        }
        pool.query_one("select 1::int8", &[]).await.unwrap();
        let refused = pool.execute("select no_such_column", &[]).await;
        assert!(refused.unwrap_err().is_callers_error());

        // A call in flight when the sessions are ended: its attempt fails
        // with 57P01 and runs again on a connection of the new generation.
        let slow = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(async |c| c.simple_query("select pg_sleep(3)").await.map(|_| ()))
                    .await
            })
        };
        wait_until(async || {
            common::count_sessions(cluster, &role.name, "query like '%pg_sleep%'").await > 0
        })
        .await;
        let new_role = cluster.rotate_password(&role).await.unwrap();
        file.set(&cluster.url(&new_role));
        assert!(cluster.terminate_backends(&role.name).await.unwrap() >= 1);
        slow.await.unwrap().unwrap();
        assert_eq!(select_one(&pool).await.unwrap(), 1);
        assert_eq!(pool.status().generation, 2);

        // Asked for by the application: the source still has the same URL.
        assert_eq!(pool.refresh_now().await.unwrap(), 2);
        // A drain closes the idle connections of generation 2.
        assert_eq!(pool.drain().await, 3);
        assert_eq!(select_one(&pool).await.unwrap(), 1);
        // Idle past idle_timeout: closed by the background task.
        let mut seen = Seen::default();
        while seen
            .take(&snapshotter)
            .counter(m::CONNECTIONS_CLOSED, &[(m::REASON, "idle")])
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A caller that gives up: its call counts as cancelled.
        let slow = pool.query_one("select pg_sleep(30)", &[]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err()
        );
        let status = pool.status();
        // The gauges as this status() left them (before the second pool's
        // background task sets them too).
        let s = seen.take(&snapshotter);
        assert_eq!(s.gauge(m::GENERATION), Some(status.generation as f64));
        assert!(s.gauge(m::CONNECTIONS).is_some());
        assert!(s.gauge(m::CONNECTIONS_AVAILABLE).is_some());
        assert_eq!(s.gauge(m::WAITING), Some(0.0));
        assert!(s.gauge(m::BUDGET_TOKENS).is_some_and(|t| t >= 1.0));

        // The watch's poll and a connection past its lifetime, on a pool
        // of its own (boxed: the test's future is large for a debug
        // build's stack).
        Box::pin(watch_and_lifetime(&file, &snapshotter, &mut seen)).await;

        let s = seen.take(&snapshotter);
        let fetches = |trigger, outcome| {
            s.counter(
                m::URL_FETCHES,
                &[(m::TRIGGER, trigger), (m::OUTCOME, outcome)],
            )
        };
        assert_eq!(fetches("build", "new"), 2, "{s:#?}");
        assert_eq!(fetches("failure", "new"), 1, "{s:#?}");
        assert_eq!(fetches("requested", "same"), 1, "{s:#?}");
        assert_eq!(
            s.counter(m::GENERATIONS_ADOPTED, &[(m::REASON, "new_url")]),
            1
        );
        assert_eq!(
            s.counter(m::GENERATIONS_ADOPTED, &[(m::REASON, "drain")]),
            1
        );
        assert!(
            s.counter(m::RETRIES, &[(m::FAULT, "server_going_away")]) >= 1,
            "the call in flight was retried after 57P01: {s:#?}"
        );
        assert!(s.counter(m::CONNECTIONS_OPENED, &[]) >= 4, "{s:#?}");
        assert!(
            s.counter(m::CONNECTIONS_CLOSED, &[(m::REASON, "stale_generation")]) >= 1,
            "the drain closed idle connections of generation 2: {s:#?}"
        );
        assert!(s.counter(m::CALLS, &[(m::OUTCOME, "ok")]) >= 8, "{s:#?}");
        assert_eq!(s.counter(m::CALLS, &[(m::OUTCOME, "query")]), 1, "{s:#?}");
        assert_eq!(
            s.counter(m::CALLS, &[(m::OUTCOME, "cancelled")]),
            1,
            "{s:#?}"
        );

        let waits = s.histogram(m::CHECKOUT_WAIT);
        assert!(waits.len() >= 8, "one per checkout: {waits:?}");
        let refetch = s.histogram(m::REFETCH_TO_FIRST_SUCCESS);
        assert_eq!(refetch.len(), 1, "one rotation: {refetch:?}");
        assert!(refetch[0] > 0.0 && refetch[0] < 10.0, "{refetch:?}");

        // Every name is pgrotate's, and no label holds a secret or says
        // where the database is.
        let secrets = [
            old_password.as_str(),
            new_role.password.as_str(),
            role.name.as_str(),
        ];
        for (name, labels) in s.every_series() {
            assert!(name.starts_with("pgrotate_"), "{name}");
            for (k, v) in labels {
                for secret in secrets {
                    assert!(
                        !v.contains(secret) && !k.contains(secret),
                        "{name}: {k}={v}"
                    );
                }
                assert!(
                    v.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{name}: {k}={v}"
                );
            }
        }
        pool.close();
    })
    .await;
}
