# Shared by scripts/demo.sh and scripts/test.sh: install what is missing.
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

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 || {
        echo "pgrotate: cargo is missing: install Rust (https://rustup.rs) first" >&2
        exit 1
    }
}
