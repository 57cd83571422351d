#!/bin/sh
# pgrotate-postgres entrypoint (busybox sh). Runs as root, works as postgres.
#
# First start (empty $PGDATA), one of:
# - primary: initdb with POSTGRES_USER (default postgres) as superuser,
#   password POSTGRES_PASSWORD (required), database POSTGRES_DB (default
#   POSTGRES_USER); pg_hba: trust over the Unix socket, scram-sha-256 over
#   TCP from anywhere, replication included.
# - standby, when PRIMARY_HOST is set: pg_basebackup -R -X stream from
#   PRIMARY_HOST:PRIMARY_PORT (default 5432) as REPLICATION_USER (default
#   replicator) with REPLICATION_PASSWORD, retried for up to 60 s while the
#   primary is not reachable yet.
# Later starts (docker start after stop, kill, restart) reuse $PGDATA.
#
# TLS: when /certs/server.crt and /certs/server.key exist, they are copied
# to a directory only postgres reads (whoever owns the originals) and
# ssl=on; /certs/ca.crt, when present, becomes ssl_ca_file (client
# certificates can then be checked by a pg_hba `clientcert=` option).
#
# Arguments are postgres settings (`-c name=value ...`), applied after this
# script's own (listen on all addresses, port 5432, jit=off, TLS above), so
# they win. Keep port and unix_socket_directories: readiness is checked
# through them.
#
# Prints `PGROTATE READY` on stdout once the final server accepts
# connections (never for the temporary states of a first start). A standby
# should get the primary's POSTGRES_USER too (readiness probes log in as it).
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
SOCKET_DIR=/var/run/postgresql
CERT_DIR=/var/lib/postgresql/certs
READY_LINE="PGROTATE READY"
export PGDATA

log() { echo "pgrotate-entrypoint: $*" >&2; }
# busybox su permutes options: `--` keeps the command's own options its own.
as_postgres() { su -s /bin/sh -c 'exec "$0" "$@"' -- postgres "$@"; }

if [ "$(id -u)" != 0 ]; then
    log "must start as root (it switches to the postgres user itself)"
    exit 1
fi

mkdir -p "$PGDATA" "$SOCKET_DIR"
chown postgres:postgres /var/lib/postgresql "$PGDATA" "$SOCKET_DIR"
chmod 700 "$PGDATA"

init_primary() {
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "POSTGRES_PASSWORD is required to initialise a primary"
        exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    pwfile=$(mktemp /tmp/pwfile.XXXXXX)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C -N >/dev/null
    rm -f "$pwfile"
    cat >"$PGDATA/pg_hba.conf" <<EOF
# written by pgrotate-entrypoint
local all all trust
local replication all trust
host all all all scram-sha-256
host replication all all scram-sha-256
EOF
    chown postgres:postgres "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        # Single-user mode: no server to start and stop just for this.
        printf 'CREATE DATABASE "%s";\n' "$(printf '%s' "$db" | sed 's/"/""/g')" |
            as_postgres postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
    log "initialised a primary (superuser $user, database $db)"
}

init_standby() {
    port=${PRIMARY_PORT:-5432}
    repl_user=${REPLICATION_USER:-replicator}
    tries=0
    export PGPASSWORD="${REPLICATION_PASSWORD:-}"
    until as_postgres pg_basebackup -D "$PGDATA" \
        -R -X stream -c fast -w -h "$PRIMARY_HOST" -p "$port" -U "$repl_user"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 120 ]; then
            log "pg_basebackup from $PRIMARY_HOST:$port kept failing; giving up"
            exit 1
        fi
        rm -rf "${PGDATA:?}"/* 2>/dev/null || true
        sleep 0.5
    done
    unset PGPASSWORD
    log "initialised a standby of $PRIMARY_HOST:$port"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${PRIMARY_HOST:-}" ]; then init_standby; else init_primary; fi
fi

set -- -c listen_addresses='*' -c port=5432 -c unix_socket_directories="$SOCKET_DIR" \
    -c jit=off "$@"
if [ -f /certs/server.crt ] && [ -f /certs/server.key ]; then
    mkdir -p "$CERT_DIR"
    cp /certs/server.crt /certs/server.key "$CERT_DIR/"
    ssl="-c ssl=on -c ssl_cert_file=$CERT_DIR/server.crt -c ssl_key_file=$CERT_DIR/server.key"
    if [ -f /certs/ca.crt ]; then
        cp /certs/ca.crt "$CERT_DIR/"
        ssl="$ssl -c ssl_ca_file=$CERT_DIR/ca.crt"
    fi
    chown -R postgres:postgres "$CERT_DIR"
    chmod 700 "$CERT_DIR"
    chmod 600 "$CERT_DIR"/*
    # Word splitting wanted: paths hold no spaces. Caller's settings last.
    # shellcheck disable=SC2086
    set -- $ssl "$@"
fi

# The ready line: polled by a child that the server (PID 1 after the exec
# below) inherits and reaps; it always exits 0, which the postmaster ignores
# (any other status from an unknown child would count as a crash).
(
    trap 'exit 0' TERM INT HUP
    i=0
    while [ "$i" -lt 1200 ]; do
        # An existing role and database: a probe logs nothing (with an
        # unknown role, every probe would log a FATAL line).
        if pg_isready -q -h "$SOCKET_DIR" -p 5432 -U "${POSTGRES_USER:-postgres}" -d postgres \
            >/dev/null 2>&1; then
            echo "$READY_LINE"
            exit 0
        fi
        sleep 0.05
        i=$((i + 1))
    done
    log "the server did not accept connections within 60 s"
    exit 0
) &

exec su -s /bin/sh -c 'exec postgres -D "$PGDATA" "$@"' -- postgres postgres "$@"
