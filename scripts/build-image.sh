#!/usr/bin/env bash
# Builds Ferry's container image FROM scratch with buildah (no registry, no
# base image): stages a root filesystem holding target/release/ferry (or
# $FERRY_BIN), the shared libraries `ldd` lists for it, the dynamic loader
# and the host's CA certificates, builds deploy/Containerfile on it, then
# checks the image: mounts its root filesystem and runs `ferry --version`
# in it with chroot. (`podman run` is not used for the check: crun's
# setrlimit needs CAP_SYS_RESOURCE, which root lacks on some build hosts.)
#
# Usage: scripts/build-image.sh [--remove] [TAG]
#   TAG       default localhost/ferry:<version of the binary>
#   --remove  remove the image after the check (tests use this)
# Needs root (buildah mount) and buildah (apt-get install buildah).
set -euo pipefail
cd "$(dirname "$0")/.."

remove=false
if [ "${1:-}" = "--remove" ]; then remove=true; shift; fi
bin=${FERRY_BIN:-$PWD/target/release/ferry}
if [ ! -x "$bin" ]; then
    echo "build-image: $bin not found; run cargo build --release -p lb-userspace first" >&2
    exit 1
fi
version=$("$bin" --version)          # "ferry 0.1.0"
tag=${1:-localhost/ferry:${version#ferry }}

stage=$(mktemp -d)
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then
        buildah umount "$ctr" >/dev/null 2>&1 || true
        buildah rm "$ctr" >/dev/null 2>&1 || true
    fi
    if [ "$remove" = true ]; then buildah rmi "$tag" >/dev/null 2>&1 || true; fi
    rm -rf "$stage"
}
trap cleanup EXIT

rootfs=$stage/rootfs
install -D -m 0755 "$bin" "$rootfs/usr/local/bin/ferry"
# Every library at the path the binary looks it up by, and the loader at
# its PT_INTERP path; symlinks resolved (the image has no other files).
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi

buildah build --quiet --pull=never --layers=false -f deploy/Containerfile -t "$tag" "$stage" >/dev/null
ctr=$(buildah from --pull=never "$tag")
mnt=$(buildah mount "$ctr")
got=$(chroot "$mnt" /usr/local/bin/ferry --version)
if [ "$got" != "$version" ]; then
    echo "build-image: ferry --version in the image printed '$got', the binary '$version'" >&2
    exit 1
fi
files=$(cd "$mnt" && find . -type f | sort | tr '\n' ' ')
size=$(du -sk "$mnt" | cut -f1)
echo "build-image: $tag built FROM scratch (${size} KiB: $files)"
echo "build-image: chroot <image rootfs> ferry --version: $got"
