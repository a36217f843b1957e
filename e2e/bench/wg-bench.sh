#!/usr/bin/env bash
# Data plane benchmark (root): iperf3 TCP between two lab namespaces over
# the bare veth, through wireguard-go on both sides, and through WireHub's
# embedded data plane on both sides. Arguments go to wg-bench:
#   --time SECONDS (5)  --rounds N (3)  --only veth,wggo-old,wggo-current,embedded,plain
#   --wggo-current PATH (default: fetched by e2e/bench/wireguard-go-current.sh)
# See docs/dataplane.md for the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "wg-bench creates network namespaces: run as root" >&2
  exit 2
fi
bash e2e/install-deps.sh
exec cargo run --release --bin wg-bench -- "$@"
