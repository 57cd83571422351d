#!/usr/bin/env bash
# The whole test suite against real servers. Installs the PostgreSQL server
# and PgBouncer from Debian's packages when they are missing, and builds the
# container backend's image when a Docker engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_servers
ensure_image
# The whole suite on local processes, then its tests (no doctests) again in
# containers when Docker and the image are there: about 3 + 3 minutes on 2
# cores. A caller's PGROTATE_TEST_BACKEND runs that backend alone.
# The container backend is pgrotate-testing's `containers` feature.
features=(--features pgrotate-testing/containers)
if [ -n "${PGROTATE_TEST_BACKEND:-}" ] || [ -z "${PGROTATE_TEST_IMAGE:-}" ]; then
    exec cargo test --workspace --locked "${features[@]}" "$@"
fi
PGROTATE_TEST_BACKEND=process cargo test --workspace --locked "${features[@]}" "$@"
echo "pgrotate: again in containers ($PGROTATE_TEST_IMAGE)" >&2
exec env PGROTATE_TEST_BACKEND=container cargo test --workspace --locked "${features[@]}" --tests "$@"
