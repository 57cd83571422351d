//! The server's configuration: command-line settings and `pg_hba.conf`.
//!
//! Settings go on the command line (not into `postgresql.conf`) so that a
//! standby copied by `pg_basebackup` gets its own port, socket directory and
//! certificate paths.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The role `pg_basebackup` and standbys replicate as.
pub(crate) const REPLICATION_ROLE: &str = "replicator";

/// File names inside a cluster's directory.
pub(crate) const DATA_DIR: &str = "data";
pub(crate) const LOG_FILE: &str = "postgres.log";
pub(crate) const CA_FILE: &str = "ca.crt";
pub(crate) const SERVER_CERT_FILE: &str = "server.crt";
pub(crate) const SERVER_KEY_FILE: &str = "server.key";

/// Where a cluster's files live and how it talks TLS.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The cluster's own directory: certificates, log, Unix socket.
    pub(crate) dir: PathBuf,
    /// Whether the server enables TLS.
    pub(crate) ssl: bool,
    /// Whether TCP logins need a client certificate signed by the CA.
    pub(crate) require_client_cert: bool,
}

impl Layout {
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join(DATA_DIR)
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Arguments for `postgres` listening on `port`.
    pub(crate) fn server_args(&self, port: u16) -> Vec<OsString> {
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            format!("unix_socket_directories={}", self.dir.display()),
            "fsync=off".to_owned(),
            "max_connections=200".to_owned(),
            "shared_buffers=32MB".to_owned(),
            "wal_level=replica".to_owned(),
            "max_wal_senders=10".to_owned(),
            "hot_standby=on".to_owned(),
            "password_encryption=scram-sha-256".to_owned(),
            // Never write a failing statement (it may carry a password) to the log.
            "log_min_error_statement=panic".to_owned(),
            "lc_messages=C".to_owned(),
        ];
        if self.ssl {
            settings.push("ssl=on".to_owned());
            settings.push(setting_path("ssl_cert_file", &self.file(SERVER_CERT_FILE)));
            settings.push(setting_path("ssl_key_file", &self.file(SERVER_KEY_FILE)));
            if self.require_client_cert {
                settings.push(setting_path("ssl_ca_file", &self.file(CA_FILE)));
            }
        } else {
            settings.push("ssl=off".to_owned());
        }
        let mut args: Vec<OsString> = vec!["-D".into(), self.data_dir().into()];
        for setting in settings {
            args.push("-c".into());
            args.push(setting.into());
        }
        args
    }

    /// The whole `pg_hba.conf`.
    pub(crate) fn hba(&self) -> String {
        let clients = if self.require_client_cert {
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full"
        } else {
            "host all all 127.0.0.1/32 scram-sha-256"
        };
        format!(
            "# written by pgrotate-testing\n\
             local all all trust\n\
             local replication all trust\n\
             host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256\n\
             {clients}\n"
        )
    }
}

fn setting_path(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(ssl: bool, require_client_cert: bool) -> Layout {
        Layout {
            dir: PathBuf::from("/tmp/x"),
            ssl,
            require_client_cert,
        }
    }

    fn settings(layout: &Layout) -> Vec<String> {
        layout
            .server_args(5555)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn ssl_settings_follow_the_builder() {
        let on = settings(&layout(true, false));
        assert!(on.contains(&"ssl=on".to_owned()));
        assert!(on.contains(&"ssl_key_file=/tmp/x/server.key".to_owned()));
        assert!(!on.iter().any(|s| s.starts_with("ssl_ca_file")));
        let mtls = settings(&layout(true, true));
        assert!(mtls.contains(&"ssl_ca_file=/tmp/x/ca.crt".to_owned()));
        let off = settings(&layout(false, false));
        assert!(off.contains(&"ssl=off".to_owned()));
        assert!(off.contains(&"port=5555".to_owned()));
        assert_eq!(off[..2], ["-D".to_owned(), "/tmp/x/data".to_owned()]);
    }

    #[test]
    fn hba_allows_plain_tcp_unless_client_certs_are_required() {
        let plain = layout(true, false).hba();
        assert!(plain.contains("\nhost all all 127.0.0.1/32 scram-sha-256\n"));
        assert!(plain.contains("host replication replicator 127.0.0.1/32 scram-sha-256"));
        let mtls = layout(true, true).hba();
        assert!(mtls.contains("hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full"));
        assert!(!mtls.contains("\nhost all"));
    }
}
