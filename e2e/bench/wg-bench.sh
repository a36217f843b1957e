#!/usr/bin/env bash
# Data plane benchmark (root): iperf3 TCP between two lab namespaces over
# the bare veth, through wireguard-go on both sides, and through WireHub's
# embedded data plane on both sides. Arguments go to wg-bench:
#   --time SECONDS (10)  --streams N (1)  --only veth,wggo,embedded,plain
# See docs/dataplane.md for the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "wg-bench creates network namespaces: run as root" >&2
  exit 2
fi
bash e2e/install-deps.sh
exec cargo run --release --bin wg-bench -- "$@"
