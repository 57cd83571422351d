# Shared by the scripts in scripts/: install what is missing.
# Sourced, not run. Installs from Debian's packages only, non-interactively.

set -euo pipefail

apt_updated=0
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            echo "pgrotate: need root (or sudo) to install: $*" >&2
            exit 1
        fi
    fi
    if [ "$apt_updated" -eq 0 ]; then
        echo "pgrotate: apt-get update" >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    echo "pgrotate: installing $*" >&2
    # policy-rc.d keeps the packages from starting system services.
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL server binaries: PG_BINDIR, pg_config --bindir, or Debian's
# /usr/lib/postgresql/*/bin (what pgrotate-testing looks for, in that order).
have_postgres_server() {
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/postgres" ]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]; then return 0; fi
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

ensure_postgres() {
    have_postgres_server || apt_install postgresql
    have_postgres_server || { echo "pgrotate: no PostgreSQL server binaries after installing" >&2; exit 1; }
}

# PgBouncer: PGBOUNCER, pgbouncer on PATH, or Debian's /usr/sbin/pgbouncer
# (what pgrotate-testing looks for, in that order). The tests start their own;
# the package's system service is stopped and never enabled.
have_pgbouncer() {
    if [ -n "${PGBOUNCER:-}" ]; then [ -x "$PGBOUNCER" ]; return; fi
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

ensure_pgbouncer() {
    have_pgbouncer && return 0
    apt_install pgbouncer
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo service pgbouncer stop 2>/dev/null || true
    $sudo update-rc.d pgbouncer disable 2>/dev/null || true
    have_pgbouncer || { echo "pgrotate: no pgbouncer binary after installing" >&2; exit 1; }
}

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 || {
        echo "pgrotate: cargo is missing: install Rust (https://rustup.rs) first" >&2
        exit 1
    }
}

# What the test suite and the fleet simulation run on: cargo, the
# PostgreSQL server and PgBouncer.
ensure_servers() {
    ensure_cargo
    ensure_postgres
    ensure_pgbouncer
}

# The container backend's image (pgrotate-testing): builds it with
# scripts/build-image.sh when a Docker engine answers and exports its tag as
# PGROTATE_TEST_IMAGE. Without an engine, the tests run on local processes.
# Skipped when PGROTATE_TEST_IMAGE is already set (e.g. postgres:16) or
# PGROTATE_TEST_BACKEND=process.
ensure_image() {
    if [ -n "${PGROTATE_TEST_IMAGE:-}" ] || [ "${PGROTATE_TEST_BACKEND:-}" = process ]; then
        return 0
    fi
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        echo "pgrotate: no Docker engine answers: the tests run PostgreSQL as local processes" >&2
        return 0
    fi
    PGROTATE_TEST_IMAGE=$(bash scripts/build-image.sh)
    export PGROTATE_TEST_IMAGE
}
