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
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads=1
