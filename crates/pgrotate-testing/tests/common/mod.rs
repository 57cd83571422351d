//! What several of this crate's test files share.

#![allow(dead_code)] // each test file uses its own part

use std::process::Command;

use pgrotate_testing::{Cluster, TestCa};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Runs the ignored test `helper` of this test binary in a child process
/// (with `PGROTATE_TEST_BACKEND=backend` when given), which leaks a server
/// and prints `LEAKED <what>` before exiting; returns `<what>`. Panics,
/// showing the child's output, when it printed no such line.
pub(crate) fn leaked_by_child(helper: &str, backend: Option<&str>) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap());
    if let Some(backend) = backend {
        child.env("PGROTATE_TEST_BACKEND", backend);
    }
    let output = child
        .args([
            helper,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.split_once("LEAKED ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "child printed no LEAKED line: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// A verifying rustls connector trusting `ca`, with no client certificate.
pub(crate) fn tls_trusting(ca: &TestCa) -> MakeRustlsConnect {
    MakeRustlsConnect::new(ca.rustls_client_config().unwrap())
}

/// A verifying rustls connector trusting the cluster's CA.
pub(crate) fn tls(cluster: &Cluster) -> MakeRustlsConnect {
    tls_trusting(cluster.ca())
}
