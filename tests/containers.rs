//! A partition made with `docker network disconnect` (the container
//! backend of pgrotate-testing): the primary is cut off while the source
//! already points at the promoted standby, and the pool moves within its
//! bound — whether the cut hangs its connections (clients on the private
//! network: nothing answers) or closes them (clients of the published port).
//!
//! Needs the container backend (`PGROTATE_TEST_BACKEND=container`, or a
//! Docker engine and a `pgrotate-postgres` image); on local processes each
//! test says it was skipped (the same partition through a fault proxy is in
//! tests/failover.rs).

mod common;

use std::time::{Duration, Instant};

use common::{UrlFile, bounded, in_recovery, readers_after_failover};
use pgrotate::{Pool, RetryPolicy};
use pgrotate_testing::{Backend, Cluster, TestRole};

async fn containers_selected(test: &str) -> bool {
    let selected = Backend::from_env().await.unwrap() == Backend::Container;
    if !selected {
        eprintln!("{test}: skipped, the environment selects local processes");
    }
    selected
}

/// Whether the pool's server is in recovery (a standby).
/// How the pool reaches the primary before the cut.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The container's address on its private network: the cut hangs.
    Network,
    /// The port published on 127.0.0.1: the cut closes connections.
    Published,
}

/// Primary + promoted standby; the pool starts on the primary (by `path`),
/// the source moves to the standby, the primary leaves its network, and
/// eight readers must all be answered by the new primary within a few
/// attempt timeouts.
async fn partition_is_left_within_the_bound(path: Path) {
    let primary = Cluster::start().await.unwrap();
    let role = primary.create_role("netcut").await.unwrap();
    let standby = primary.start_standby().await.unwrap();
    let url = |cluster: &Cluster, role: &TestRole| match path {
        Path::Network => cluster.network_url(role).unwrap(),
        Path::Published => cluster.url(role),
    };
    let file = UrlFile::new(&url(&primary, &role));
    let bound = Duration::from_secs(1);
    let pool = Pool::builder(file.source())
        .max_size(4)
        .retry(
            RetryPolicy::default()
                .attempts(100)
                .deadline(Duration::from_secs(30))
                .backoff(Duration::from_millis(20), Duration::from_millis(300))
                .attempt_timeout(Some(bound)),
        )
        .connect_timeout(bound)
        .build()
        .await
        .unwrap();
    // Warm: every connection of the pool is open on the primary.
    let warm = futures::future::join_all((0..4).map(|_| in_recovery(&pool))).await;
    assert!(warm.into_iter().all(|r| !r.unwrap()), "on the primary");
    primary.wait_replay_caught_up(&standby).await.unwrap();

    // The platform has failed over and points the URL at the promoted
    // standby; the old primary drops off the network.
    standby.promote().await.unwrap();
    file.set(&url(&standby, &role));
    primary.disconnect_network().await.unwrap();
    let cut = Instant::now();
    let moved = readers_after_failover(&pool, cut).await;
    assert!(
        moved < bound * 6,
        "moved within a few attempt/connect timeouts ({moved:?}, {path:?})"
    );
    eprintln!(
        "docker network disconnect ({path:?}): all readers answered by the promoted standby {moved:?} after the cut"
    );
    primary.reconnect_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_its_network_is_left_for_the_promoted_standby() {
    if !containers_selected("a_primary_cut_off_its_network_is_left_for_the_promoted_standby").await
    {
        return;
    }
    bounded(partition_is_left_within_the_bound(Path::Network)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_published_port_goes_away_is_left_for_the_promoted_standby() {
    if !containers_selected(
        "a_primary_whose_published_port_goes_away_is_left_for_the_promoted_standby",
    )
    .await
    {
        return;
    }
    bounded(partition_is_left_within_the_bound(Path::Published)).await;
}
