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

/// Where a container finds the files the fixture copies in (the image's
/// entrypoint reads certificates from there).
pub(crate) const CONTAINER_FILES: &str = "/certs";
/// Where the entrypoint keeps its copy of the server key.
pub(crate) const CONTAINER_KEY_DIR: &str = "/var/lib/postgresql/certs";
/// The superuser of a container (`POSTGRES_USER`).
pub(crate) const CONTAINER_SUPERUSER: &str = "postgres";

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

    /// Settings both backends share.
    fn common_settings() -> Vec<String> {
        [
            "fsync=off",
            "max_connections=200",
            "shared_buffers=32MB",
            "wal_level=replica",
            "max_wal_senders=10",
            "hot_standby=on",
            "password_encryption=scram-sha-256",
            // Never write a failing statement (it may carry a password) to the log.
            "log_min_error_statement=panic",
            "lc_messages=C",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Arguments for `postgres` listening on `port`.
    pub(crate) fn server_args(&self, port: u16) -> Vec<OsString> {
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            format!("unix_socket_directories={}", self.dir.display()),
        ];
        settings.extend(Self::common_settings());
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

    /// The arguments of a container: `postgres` settings after the image's
    /// entrypoint (which listens on all addresses, port 5432). Files are
    /// where [`container_files`](Self::container_files) puts them; the key
    /// is read from the copy the entrypoint makes (owned by `postgres`,
    /// mode 0600: PostgreSQL refuses a key others may read).
    pub(crate) fn container_args(&self) -> Vec<String> {
        let mut settings = Self::common_settings();
        settings.push(format!("hba_file={CONTAINER_FILES}/pg_hba.conf"));
        if self.ssl {
            settings.push("ssl=on".to_owned());
            settings.push(format!(
                "ssl_cert_file={CONTAINER_FILES}/{SERVER_CERT_FILE}"
            ));
            settings.push(format!(
                "ssl_key_file={CONTAINER_KEY_DIR}/{SERVER_KEY_FILE}"
            ));
            if self.require_client_cert {
                settings.push(format!("ssl_ca_file={CONTAINER_FILES}/{CA_FILE}"));
            }
        } else {
            settings.push("ssl=off".to_owned());
        }
        settings
            .into_iter()
            .flat_map(|setting| ["-c".to_owned(), setting])
            .collect()
    }

    /// The `pg_hba.conf` of a container. Clients come through Docker's port
    /// publishing or the cluster's private network, so from any address.
    ///
    /// The fixture's own superuser (its control connections: roles,
    /// rotations, terminations) logs in over plain TCP with `password`: the
    /// server checks the cleartext password against the stored SCRAM
    /// verifier, sparing the client the SCRAM key derivation (about 60 ms
    /// per connection in a debug build, paid again by every control
    /// operation, where local processes log in over the Unix socket). It
    /// does so even when client certificates are required of everyone else.
    pub(crate) fn container_hba(&self) -> String {
        let clients = if self.require_client_cert {
            "hostssl all all all scram-sha-256 clientcert=verify-full"
        } else {
            "host all all all scram-sha-256"
        };
        format!(
            "# written by pgrotate-testing\n\
             local all all trust\n\
             local replication all trust\n\
             host replication {REPLICATION_ROLE} all scram-sha-256\n\
             host all {CONTAINER_SUPERUSER} all password\n\
             {clients}\n"
        )
    }

    /// The files copied into a container before it starts: (path, contents,
    /// mode).
    pub(crate) fn container_files(
        &self,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Vec<(String, Vec<u8>, u32)> {
        let mut files = vec![(
            format!("{CONTAINER_FILES}/pg_hba.conf"),
            self.container_hba().into_bytes(),
            0o644,
        )];
        if self.ssl {
            files.push((
                format!("{CONTAINER_FILES}/{SERVER_CERT_FILE}"),
                cert_pem.as_bytes().to_vec(),
                0o644,
            ));
            files.push((
                format!("{CONTAINER_FILES}/{SERVER_KEY_FILE}"),
                key_pem.as_bytes().to_vec(),
                0o600,
            ));
            if self.require_client_cert {
                files.push((
                    format!("{CONTAINER_FILES}/{CA_FILE}"),
                    ca_pem.as_bytes().to_vec(),
                    0o644,
                ));
            }
        }
        files
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
    fn container_settings_point_at_the_copied_files() {
        let args = layout(true, true).container_args();
        assert!(args.contains(&"hba_file=/certs/pg_hba.conf".to_owned()));
        assert!(args.contains(&"ssl_key_file=/var/lib/postgresql/certs/server.key".to_owned()));
        assert!(args.contains(&"ssl_ca_file=/certs/ca.crt".to_owned()));
        assert!(args.chunks(2).all(|pair| pair[0] == "-c"));
        let files = layout(true, true).container_files("C", "K", "A");
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "/certs/pg_hba.conf",
                "/certs/server.crt",
                "/certs/server.key",
                "/certs/ca.crt"
            ]
        );
        assert_eq!(files[2].2, 0o600);
        let plain = layout(false, false);
        assert!(plain.container_args().contains(&"ssl=off".to_owned()));
        assert_eq!(plain.container_files("C", "K", "A").len(), 1);
    }

    #[test]
    fn container_hba_exempts_only_the_fixture_superuser_from_client_certs() {
        let plain = layout(true, false).container_hba();
        assert!(plain.contains("\nhost all all all scram-sha-256\n"));
        assert!(plain.contains("host replication replicator all scram-sha-256"));
        assert!(plain.contains("\nhost all postgres all password\n"));
        let mtls = layout(true, true).container_hba();
        assert!(mtls.contains("\nhost all postgres all password\n"));
        assert!(mtls.contains("\nhostssl all all all scram-sha-256 clientcert=verify-full\n"));
        assert!(!mtls.contains("\nhost all all"));
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
