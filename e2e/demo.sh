#!/usr/bin/env bash
# The live demo: builds WireHub, brings an overlay up in network namespaces
# on this machine (a bootstrap, three public nodes, one node behind an easy
# NAT, one behind a hard NAT), shows the direct and relayed paths with
# `wh show`, pings across, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "the demo creates network namespaces: run it as root (sudo bash e2e/demo.sh)" >&2
  exit 2
fi
bash e2e/install-deps.sh >/dev/null
cargo build --release --bin wh --bin wh-demo
WH_BIN="$PWD/target/release/wh" exec ./target/release/wh-demo
