//! [`PgBouncerOptions`], and the `pgbouncer.ini` a [`PgBouncer`] is
//! started with.

use std::time::Duration;

use super::{AUTH_FILE, CERT_FILE, KEY_FILE, PgBouncer};

/// PgBouncer's default `auth_query`, spelled out.
const AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
                          ELSE rolpassword END FROM pg_catalog.pg_authid \
                          WHERE rolname = $1 AND rolcanlogin";

/// Settings of a [`PgBouncer`]; the defaults suit most tests.
#[derive(Debug, Clone)]
#[must_use]
pub struct PgBouncerOptions {
    default_pool_size: u32,
    max_client_conn: u32,
    server_login_retry: Duration,
    query_wait_timeout: Duration,
    query_timeout: Duration,
    /// Read by `start.rs`, which writes the certificate files.
    pub(super) client_tls: bool,
}

impl Default for PgBouncerOptions {
    fn default() -> Self {
        PgBouncerOptions {
            default_pool_size: 2,
            max_client_conn: 1000,
            server_login_retry: Duration::from_secs(15),
            query_wait_timeout: Duration::from_secs(120),
            query_timeout: Duration::ZERO,
            client_tls: false,
        }
    }
}

impl PgBouncerOptions {
    /// Server connections per (database, user) pair: `default_pool_size`
    /// (default 2).
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }

    /// Client connections PgBouncer accepts in all: `max_client_conn`
    /// (default 1000).
    pub fn max_client_conn(mut self, max: u32) -> Self {
        self.max_client_conn = max;
        self
    }

    /// How long PgBouncer waits after a failed server login before it tries
    /// again, failing clients at once meanwhile: `server_login_retry`
    /// (default 15 s, PgBouncer's default; tests want about 1 s).
    /// Millisecond precision.
    pub fn server_login_retry(mut self, retry: Duration) -> Self {
        self.server_login_retry = retry;
        self
    }

    /// How long a client's query may wait for a server connection before
    /// PgBouncer fails it with `query_wait_timeout`: `query_wait_timeout`
    /// (default 120 s, PgBouncer's default). Zero waits forever.
    /// Millisecond precision.
    pub fn query_wait_timeout(mut self, timeout: Duration) -> Self {
        self.query_wait_timeout = timeout;
        self
    }

    /// How long a query may run before PgBouncer cancels it and closes the
    /// client's connection with "query timeout": `query_timeout` (default
    /// zero: never, PgBouncer's default). Millisecond precision.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Whether clients may use TLS (default `false`): when on,
    /// `client_tls_sslmode = allow` with the cluster's server certificate
    /// (for `localhost` and `127.0.0.1`, signed by [`Cluster::ca`](crate::Cluster::ca));
    /// plaintext clients are still admitted.
    pub fn client_tls(mut self, on: bool) -> Self {
        self.client_tls = on;
        self
    }
}

impl PgBouncer {
    /// The whole `pgbouncer.ini`.
    pub(super) fn config(&self, server_port: u16, options: &PgBouncerOptions) -> String {
        let dir = self.dir.path();
        let seconds = |d: Duration| format!("{:.3}", d.as_secs_f64());
        let mut config = format!(
            "; written by pgrotate-testing\n\
             [databases]\n\
             * = host=127.0.0.1 port={server_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             max_client_conn = {max_client}\n\
             auth_type = scram-sha-256\n\
             auth_file = {auth_file}\n\
             auth_user = {auth_user}\n\
             auth_query = {AUTH_QUERY}\n\
             admin_users = {auth_user}\n\
             server_login_retry = {retry}\n\
             query_wait_timeout = {wait}\n\
             query_timeout = {query}\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 1\n\
             log_disconnections = 1\n\
             log_pooler_errors = 1\n",
            port = self.port,
            pool = options.default_pool_size,
            max_client = options.max_client_conn,
            auth_file = dir.join(AUTH_FILE).display(),
            auth_user = self.auth_user,
            retry = seconds(options.server_login_retry),
            wait = seconds(options.query_wait_timeout),
            query = seconds(options.query_timeout),
        );
        if options.client_tls {
            config.push_str(&format!(
                "client_tls_sslmode = allow\n\
                 client_tls_cert_file = {}\n\
                 client_tls_key_file = {}\n",
                dir.join(CERT_FILE).display(),
                dir.join(KEY_FILE).display()
            ));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_holds_the_settings() {
        let bouncer = PgBouncer {
            watchdog: None,
            port: 6432,
            auth_user: "auth_1_abcdef".into(),
            auth_password: "secret".into(),
            version: String::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let options = PgBouncerOptions::default()
            .default_pool_size(3)
            .server_login_retry(Duration::from_millis(1500));
        let config = bouncer.config(5555, &options);
        for line in [
            "* = host=127.0.0.1 port=5555",
            "listen_port = 6432",
            "pool_mode = transaction",
            "default_pool_size = 3",
            "auth_type = scram-sha-256",
            "auth_user = auth_1_abcdef",
            "server_login_retry = 1.500",
            "query_wait_timeout = 120.000",
        ] {
            assert!(
                config.contains(&format!("{line}\n")),
                "{line} missing:\n{config}"
            );
        }
        assert!(!config.contains("secret"));
        assert!(!config.contains("client_tls"));
        assert!(
            bouncer
                .config(5555, &options.client_tls(true))
                .contains("client_tls_sslmode = allow\n")
        );
    }
}
