#!/usr/bin/env bash
# CI step: the kernel-WireGuard scenario (overlay.sh) in the VM of run.sh, against the wh of this build, then a
# representative subset of the lab's Rust scenarios in the VM (lab.sh): kernel/embedded/wireguard-go interop, a
# relayed pair of the NAT grid (easy NAT - hard NAT), and the host-route test. The rest: e2e/kernel/all.sh.
# Skips (exit 0, saying why) only where the VM cannot exist: no apt to install QEMU and fetch Debian's kernel, or not
# x86_64. Any other failure (kit build, boot, scenario) fails the step.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
wh="$target/debug/wh"
if [ "$(uname -m)" != x86_64 ] || ! command -v apt-get >/dev/null; then
  echo "skipped: the kernel-WireGuard VM needs an x86_64 Debian-like host (apt-get) to build its boot kit"
  exit 0
fi
[ -x "$wh" ] || { echo "no $wh: build it first (cargo build -p wirehub --bin wh)" >&2; exit 1; }
case "$wh $(pwd)" in /tmp/*|*" /tmp/"*) echo "the repository and the target dir must be outside /tmp (the guest's /tmp is its own)" >&2; exit 1;; esac
command -v jq >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq; } >&2
bash e2e/kernel/build.sh >/dev/null
# The guest reads the binary over 9p: without debug info it starts in a fraction of the time.
objcopy --strip-debug "$wh" "$target/debug/wh-vm"
start=$SECONDS
bash e2e/kernel/run.sh e2e/kernel/overlay.sh "WH_BIN=$target/debug/wh-vm" "$@"
echo "kernel VM scenario: $((SECONDS - start)) s"
# The lab binaries (built by the workspace's cargo test before this step; built here if missing).
bins=$(cargo test -p wirehub-e2e --test interop --test nat --test routes --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test == true) | .executable // empty' | paste -sd:)
[ -n "$bins" ] || { echo "no lab test binaries" >&2; exit 1; }
start=$SECONDS
bash e2e/kernel/run.sh e2e/kernel/lab.sh "TESTS=$bins" "WH_BIN=$target/debug/wh-vm" WH_GRID=easy:hard \
  "FILTER=default_embedded_and_wireguard_go+nat_grid_every_pair+a_host_route_to_a_peers_subnet"
echo "kernel VM lab subset: $((SECONDS - start)) s"
