#!/usr/bin/env bash
# The fleet simulation of the Heroku Platform API budget (issue 12): N pools
# (default 1000), each with its own HerokuApi source, against one local
# stand-in of the account's rate limit, through PgBouncer in front of a
# throwaway PostgreSQL, with two password rotations. Installs the PostgreSQL
# server and PgBouncer from Debian's packages when they are missing.
#   bash scripts/fleet-sim.sh [--pools 1000] [--seconds-between 30]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_servers
# About three sockets per pool (its PgBouncer connection, its HTTP
# connection and the stand-in's end of it): raise the soft limit to the hard.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo run --locked --release --example fleet_sim -- "$@"
