#!/usr/bin/env bash
# Runs every check and test Ferry has: formatting, clippy (host crates and
# the eBPF crate for its own target), unit tests, and the privileged
# end-to-end tests in network namespaces. Needs root. Installs what is
# missing first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the end-to-end tests load eBPF programs and create network namespaces; run as root" >&2
    exit 1
fi

step() { printf '\n=== %s\n' "$*"; }

# The tests mount a bpffs on /sys/fs/bpf when there is none (the kernel
# then adds its own maps.debug / progs.debug iterators there). Leave the
# machine as it was: unmount it again afterwards if this run caused the
# mount and nothing but those iterators is left in it.
bpffs_was_mounted=false
if findmnt -rn -t bpf /sys/fs/bpf >/dev/null 2>&1; then bpffs_was_mounted=true; fi
restore_bpffs() {
    if [ "$bpffs_was_mounted" = false ] && findmnt -rn -t bpf /sys/fs/bpf >/dev/null 2>&1; then
        leftover=$(find /sys/fs/bpf -mindepth 1 -maxdepth 1 ! -name maps.debug ! -name progs.debug | head -1)
        if [ -z "$leftover" ]; then
            umount /sys/fs/bpf || true
        else
            echo "scripts/test.sh: /sys/fs/bpf holds $leftover; leaving the bpffs mounted" >&2
        fi
    fi
}
trap restore_bpffs EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (host crates)"
cargo clippy --release --workspace --exclude lb-ebpf --all-targets -- -D warnings

step "clippy (lb-ebpf, bpfel-unknown-none)"
(cd lb-ebpf && cargo +nightly clippy --release --target bpfel-unknown-none -Z build-std=core -- -D warnings)

step "build (release; embeds the eBPF object)"
cargo build --release --workspace --exclude lb-ebpf

step "unit tests"
cargo test --release --workspace --exclude lb-ebpf --exclude tests

step "end-to-end tests (privileged, one at a time)"
export FERRY_BIN="$PWD/target/release/ferry"
cargo test --release -p tests -- --test-threads=1
