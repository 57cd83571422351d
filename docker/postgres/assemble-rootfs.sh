#!/usr/bin/env bash
# Assembles the root filesystem of the pgrotate-postgres image from what the
# build host has installed: usage `assemble-rootfs.sh BINDIR ROOTFS`.
#
# Why a `FROM scratch` image of host files rather than debootstrap: no
# registry is reachable here, so there is no base image to start `FROM`;
# debootstrap would download and unpack ~150 packages (minutes, and the
# network) to end up with the very same Debian PostgreSQL binaries that are
# already installed for the process backend. Copying them with the shared
# libraries `ldd` names, plus a static busybox for the entrypoint's shell,
# takes seconds, works offline, and runs the exact server version the
# process backend runs. The price: the image only runs on the build host's
# architecture and carries no package manager (it is a test fixture).
#
# Layout mirrors Debian (merged /usr): /usr/lib/postgresql/<major>/{bin,lib},
# /usr/share/postgresql/<major>, libraries at the paths ldd prints, busybox
# at /bin/busybox with one symlink per applet, /usr/lib/postgresql/current
# pointing at <major> (the image's PATH uses it).
set -euo pipefail

bindir=$(cd "$1" && pwd)
root=$2
pg_config="$bindir/pg_config"
[ -x "$bindir/postgres" ] || { echo "assemble-rootfs: no postgres in $bindir" >&2; exit 1; }
[ -x "$pg_config" ] || { echo "assemble-rootfs: no pg_config in $bindir" >&2; exit 1; }
pkglibdir=$("$pg_config" --pkglibdir)
sharedir=$("$pg_config" --sharedir)
major=$(basename "$(dirname "$bindir")")
busybox=/bin/busybox
if ! "$busybox" --list 2>/dev/null | grep -qx sh || ldd "$busybox" >/dev/null 2>&1; then
    echo "assemble-rootfs: $busybox must be a static busybox (Debian package busybox-static)" >&2
    exit 1
fi

rm -rf "$root"
mkdir -p "$root"/usr/bin "$root"/usr/sbin "$root"/usr/lib "$root"/usr/lib64 "$root"/usr/local/bin
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

# PostgreSQL: the whole bindir (small), the loadable modules except LLVM JIT
# (llvmjit.so needs libLLVM, ~100 MB; the server runs with jit=off), and the
# share directory (initdb's templates, timezone sets, extensions).
copy_tree() { # SRC DEST
    mkdir -p "$root$2"
    cp -a "$1/." "$root$2/"
}
copy_tree "$bindir" "$bindir"
mkdir -p "$root$pkglibdir"
find "$pkglibdir" -maxdepth 1 -type f -name '*.so' ! -name 'llvmjit*.so' \
    -exec cp -a {} "$root$pkglibdir/" \;
copy_tree "$sharedir" "$sharedir"
ln -s "$major" "$root/usr/lib/postgresql/current"
# Timezone data: Debian builds PostgreSQL with the system's tzdata.
if [ -d /usr/share/zoneinfo ]; then
    copy_tree /usr/share/zoneinfo /usr/share/zoneinfo
fi

# Every shared library the programs and modules load, at the path the
# dynamic loader resolved it to (contents copied, symlinks followed).
copy_lib() {
    local lib=$1
    [ -e "$root$lib" ] && return 0
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
}
{
    find "$root$bindir" "$root$pkglibdir" -type f | sed "s|^$root||" | while read -r elf; do
        ldd "$elf" 2>/dev/null || true
    done
} | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }' | sort -u |
    while read -r lib; do copy_lib "$lib"; done

# busybox: the entrypoint's shell and tools.
cp "$busybox" "$root/usr/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
done

# Users: root, and postgres (uid/gid 999, as in the official image, so files
# copied in for either image can carry the same owner).
mkdir -p "$root/etc"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
postgres:x:999:
nogroup:x:65534:
GROUP
printf 'root:*:19000:0:99999:7:::\npostgres:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
chmod 640 "$root/etc/shadow"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

# Owners do not survive the Dockerfile's COPY (everything becomes root's):
# the entrypoint hands the postgres user its directories at each start.
mkdir -p "$root/tmp" "$root/root" "$root/var/run/postgresql" "$root/var/lib/postgresql" "$root/certs"
chmod 1777 "$root/tmp"
chmod 700 "$root/root"

install -m 0755 "$(dirname "$0")/entrypoint.sh" "$root/usr/local/bin/pgrotate-entrypoint"
