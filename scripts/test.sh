#!/usr/bin/env bash
# The whole test suite against real servers. Installs the PostgreSQL server
# and PgBouncer from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_postgres
ensure_pgbouncer
exec cargo test --workspace --locked "$@"
