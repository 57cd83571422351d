#!/usr/bin/env bash
# Builds the pgrotate-postgres image (the container backend of
# pgrotate-testing) from this host's Debian PostgreSQL packages, without any
# base image; prints its tag on stdout, everything else on stderr.
#
# The tag is pgrotate-postgres:<major>-<hash12>, the hash covering the recipe
# (every file under docker/postgres) and the server's `postgres --version`:
# the image is rebuilt only when that tag is missing. (Library updates on the
# host, e.g. libssl, do not change the tag: `docker rmi` it to rebuild.)
#
# Needs a Docker engine, the PostgreSQL server (Debian's `postgresql`) and a
# static busybox (`busybox-static`); installs the two packages when missing.
# Old pgrotate-postgres tags are left alone; `--prune` removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

prune=0
for arg in "$@"; do
    case $arg in
    --prune) prune=1 ;;
    *) echo "usage: $0 [--prune]" >&2; exit 2 ;;
    esac
done

ensure_postgres
if ! { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
    apt_install busybox-static
fi

# The same bindir pgrotate-testing's process backend picks.
bindir=""
if [ -n "${PG_BINDIR:-}" ]; then
    bindir=$PG_BINDIR
elif command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]; then
    bindir=$(pg_config --bindir)
else
    bindir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
version=$("$bindir/postgres" --version)
major=$(basename "$(dirname "$bindir")")
case $major in
[0-9]*) ;;
*) echo "pgrotate: $bindir is not Debian's /usr/lib/postgresql/<major>/bin" >&2; exit 1 ;;
esac

hash=$(
    {
        printf '%s\n' "$version"
        (cd docker/postgres && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-12
)
tag="pgrotate-postgres:$major-$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "pgrotate: image $tag is present" >&2
else
    echo "pgrotate: building $tag ($version)" >&2
    start=$(date +%s)
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/pgrotate-image.XXXXXX")
    trap 'rm -rf "$ctx"' EXIT
    cp docker/postgres/Dockerfile "$ctx/"
    bash docker/postgres/assemble-rootfs.sh "$bindir" "$ctx/rootfs"
    # The classic builder: BuildKit is not needed for one COPY, and may be
    # missing next to an older engine.
    if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet \
        --label "org.pgrotate.recipe=$hash" \
        --label "org.pgrotate.postgres-version=$version" \
        -t "$tag" "$ctx" 2>&1); then
        printf "%s\n" "$out" >&2
        exit 1
    fi
    echo "pgrotate: built $tag in $(($(date +%s) - start)) s" >&2
fi

if [ "$prune" -eq 1 ]; then
    docker images --format '{{.Repository}}:{{.Tag}}' pgrotate-postgres |
        grep -vx "$tag" | xargs -r docker rmi >&2 || true
fi
echo "$tag"
