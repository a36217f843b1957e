#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, the DHT
# simulator, and the network-namespace lab scenarios (root needed for those).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "the lab tests create network namespaces: run as root (sudo bash e2e/test.sh)" >&2
  exit 2
fi
bash e2e/install-deps.sh
export CARGO_TERM_COLOR=never
# CI builds once from scratch: incremental caches would only add gigabytes
# of disk (a full disk killed the linker with SIGBUS once).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
disk() { echo "-- disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free here; target $(du -sh "${CARGO_TARGET_DIR:-target}" 2>/dev/null | cut -f1)"; }
disk
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The crates outside the workspace (fuzz/, sim-wg/) build into the
# workspace's target directory: the dependencies they share with it, with the
# same versions (their lock files are seeded from the workspace's), features
# and profile, are built once.
shared_target=${CARGO_TARGET_DIR:-$PWD/target}
echo "== fuzz targets compile (running them: docs/protocol.md, Fuzzing)"
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
CARGO_TARGET_DIR=$shared_target cargo check --manifest-path fuzz/Cargo.toml
echo "== cargo test"
cargo build --workspace --bins
disk
echo "== the simulator with real WireGuard: 50 networks (sim-wg/, docs/simulator.md)"
# Outside the workspace: boringtun's mock-instant must not reach the daemon.
[ -f sim-wg/Cargo.lock ] || cp Cargo.lock sim-wg/Cargo.lock
cargo fmt --manifest-path sim-wg/Cargo.toml -- --check
CARGO_TARGET_DIR=$shared_target cargo clippy --manifest-path sim-wg/Cargo.toml --all-targets -- -D warnings
CARGO_TARGET_DIR=$shared_target cargo test --manifest-path sim-wg/Cargo.toml
cargo test --workspace --no-fail-fast -- --test-threads=1
disk
echo "== kernel WireGuard in a VM (e2e/kernel/ci.sh)"
bash e2e/kernel/ci.sh
