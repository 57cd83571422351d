#!/usr/bin/env bash
# Instructions per query of the client (every thread of the benchmark's
# process: callers, pools, connection tasks, TLS — not the server), for
# deadpool-postgres get(), pgrotate run() and get() on `select 1`
# (benches/throughput.rs). Counted by valgrind's callgrind, so neither
# steal on a shared machine nor the server's load moves it, where a
# throughput ratio moves ±3–10 %. Each contender runs alone twice, with
# N1 and N2 queries after the same warm-up; instructions per query is the
# difference over N2 − N1. Under valgrind the process runs one thread at a
# time, so requests are batched less than at full speed: compare the
# contenders with each other, not with a profile of a real run.
# Built as `cargo bench --bench throughput` builds it (the workspace's
# default features, pgrotate's `metrics` among them, with no recorder
# installed); `--without-metrics`: pgrotate's own defaults, without it.
# Installs valgrind and PostgreSQL when missing.
#   bash scripts/bench-instructions.sh [--cached] [--without-metrics] [--queries N1,N2]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_postgres
command -v valgrind >/dev/null 2>&1 || apt_install valgrind
n1=1000
n2=4000
cached=0
features=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cached) cached=1; shift ;;
        --without-metrics) features=(--no-default-features); shift ;;
        --queries) n1="${2%,*}"; n2="${2#*,}"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$n2" -gt "$n1" ] 2>/dev/null || { echo "--queries N1,N2 with N2 > N1 > 0" >&2; exit 2; }
bench=$(cargo bench --locked "${features[@]}" --bench throughput --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
[ -x "$bench" ] || { echo "pgrotate: the throughput benchmark did not build" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Instructions of one run of contender $1 with $2 queries.
count() {
    PGROTATE_BENCH_CACHED=$cached PGROTATE_BENCH_ONLY="$1" PGROTATE_BENCH_QUERIES="$2" \
        valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bench" --bench \
        2>"$out/log" >"$out/stdout" || { cat "$out/log" "$out/stdout" >&2; exit 1; }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/log"
}
names=("deadpool-postgres get()" "pgrotate run()" "pgrotate get()")
declare -a per
for i in 0 1 2; do
    a=$(count "$i" "$n1")
    b=$(count "$i" "$n2")
    per[$i]=$(( (b - a) / (n2 - n1) ))
    echo "${names[$i]}: ${per[$i]} instructions per query"
done
for i in 1 2; do
    awk -v n="${names[$i]}" -v a="${per[$i]}" -v d="${per[0]}" \
        'BEGIN { printf "%s / deadpool-postgres: %.3f× the instructions (+%d per query)\n", n, a / d, a - d }'
done
