#!/usr/bin/env bash
# The whole test suite against real servers. Installs the PostgreSQL server
# from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_postgres
exec cargo test --workspace --locked "$@"
