//! What a server container is asked to be: the testcontainers request for
//! a [`Spec`] — its image (and, for a foreign image, the entrypoint put in
//! front of the image's own), port 5432 published on `127.0.0.1`, the
//! socket directory mounted, its environment and files.

use std::time::Duration;

use testcontainers::bollard::models::PortBinding;
use testcontainers::core::Mount;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::{CopyTargetOptions, GenericImage, ImageExt};

use super::Spec;

/// The line the pgrotate-postgres entrypoint prints once the server accepts
/// connections.
pub(crate) const READY_LINE: &str = "PGROTATE READY";
/// The server's port inside the container.
const PORT: u16 = 5432;
/// How long a container may take from creation to its ready line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// The server's Unix socket directory inside the container (both images'),
/// a bind mount of [`Spec::socket_dir`].
const SOCKET_DIR: &str = "/var/run/postgresql";

/// The entrypoint put in front of a foreign image's (the official
/// `postgres` image's `docker-entrypoint.sh`): a copy of the server key that
/// only `postgres` reads (PostgreSQL refuses a key others may read, and
/// files copied in belong to root), and for a standby a `pg_basebackup`
/// from `PRIMARY_HOST` before the image's own entrypoint, which then finds
/// a data directory and skips its initialisation.
const FOREIGN_ENTRYPOINT: &str = r#"
set -e
if [ -f /certs/server.key ]; then
    mkdir -p /var/lib/postgresql/certs
    cp /certs/server.key /var/lib/postgresql/certs/server.key
    chown -R postgres:postgres /var/lib/postgresql/certs
    chmod 700 /var/lib/postgresql/certs
    chmod 600 /var/lib/postgresql/certs/server.key
fi
if [ -n "${PRIMARY_HOST:-}" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    tries=0
    until PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup -D "$PGDATA" -R \
        -X stream -c fast -w -h "$PRIMARY_HOST" -p "${PRIMARY_PORT:-5432}" \
        -U "${REPLICATION_USER:-replicator}"; do
        tries=$((tries + 1))
        [ "$tries" -lt 120 ] || exit 1
        rm -rf "${PGDATA:?}"/*
        sleep 0.5
    done
fi
exec docker-entrypoint.sh "$@"
"#;

/// The testcontainers request for `spec`, its port 5432 published on
/// `127.0.0.1:port`.
pub(super) fn request(
    spec: &Spec,
    port: u16,
    labels: &[(String, String)],
) -> testcontainers::ContainerRequest<GenericImage> {
    let image = GenericImage::new(spec.image.name.clone(), spec.image.tag.clone())
        .with_exposed_port(ContainerPort::Tcp(PORT));
    let (image, cmd) = if spec.image.native {
        (
            image.with_wait_for(WaitFor::message_on_stdout(READY_LINE)),
            spec.args.clone(),
        )
    } else {
        let mut cmd = vec![
            "-c".to_owned(),
            FOREIGN_ENTRYPOINT.to_owned(),
            "pgrotate-entrypoint".to_owned(),
            "postgres".to_owned(),
        ];
        cmd.extend(spec.args.iter().cloned());
        (image.with_entrypoint("/bin/sh"), cmd)
    };
    let mut request = image
        .with_container_name(spec.name.clone())
        .with_network(spec.network.clone())
        .with_labels(labels.iter().cloned())
        .with_startup_timeout(STARTUP_TIMEOUT)
        .with_mount(Mount::bind_mount(
            spec.socket_dir.display().to_string(),
            SOCKET_DIR,
        ))
        .with_cmd(cmd)
        .with_host_config_modifier(move |host_config| {
            host_config.publish_all_ports = Some(false);
            host_config.port_bindings = Some(
                [(
                    format!("{PORT}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(port.to_string()),
                    }]),
                )]
                .into(),
            );
        });
    for (name, value) in &spec.env {
        request = request.with_env_var(name.clone(), value.clone());
    }
    for (path, contents, mode) in &spec.files {
        request = request.with_copy_to(
            CopyTargetOptions::new(path.clone()).with_mode(*mode),
            contents.clone(),
        );
    }
    request
}
