#!/usr/bin/env bash
# Builds Ferry (installing what is missing) and runs its demo: a ClusterIP
# Service in network namespaces made for the occasion, requests spread over
# its backends by the eBPF datapath, and everything removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-deps
export PATH="$HOME/.cargo/bin:$PATH"
# ferry-demo (the demo crate) runs the ferry binary built next to it.
cargo build --release --quiet --package lb-userspace --package demo
exec ./target/release/ferry-demo "$@"
