#!/usr/bin/env bash
# The pipelining table of the crate README (issue 17): benches/pipeline.rs
# for 8, 64 and 512 callers on 1 to 16 connections, on loopback and through
# the fault proxy's 10 ms round-trip delay line. Each row is one run with
# the four contenders side by side. Installs PostgreSQL when missing.
#   bash scripts/bench-pipeline.sh [--millis 300] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_postgres
millis=300
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --millis) millis="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# Built once; every row runs the same executable.
bench=$(cargo bench --locked --bench pipeline --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
[ -x "$bench" ] || { echo "pgrotate: the pipeline benchmark did not build" >&2; exit 1; }
echo "| RTT ms | callers | conns | pool.query_one q/s | pool.run q/s | deadpool q/s | raw q/s | pipelined/raw | pipelined/deadpool | run/deadpool |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for rtt in 0 10; do
    for callers in 8 64 512; do
        for conns in 1 2 4 8 16; do
            "$bench" --callers "$callers" --conns "$conns" \
                --latency-ms "$rtt" --millis "$millis" --rounds "$rounds" | grep '^| '
        done
    done
done
