#!/usr/bin/env bash
# The rotation demo against a throwaway PostgreSQL. Installs the PostgreSQL
# server from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_postgres
exec cargo run --locked --example rotation_demo -- "$@"
