#!/usr/bin/env bash
# The lab's scenarios on a kernel with WireGuard: builds wh and the e2e test binaries, then runs them inside the VM
# (run.sh), where `wh up` picks kernel WireGuard by default. One command:
#   bash e2e/kernel/all.sh [TEST_FILES] [FILTER]
# TEST_FILES: comma-separated e2e test targets (default overlay,nat,names,nc,pods,interop,routes,upgrade); FILTER:
# libtest name filters joined by "+" (applied to every binary).
# Then overlay.sh, the kernel-specific scenario (ports, counters, adoption). Emulation is slow and timing-sensitive
# tests may need a re-run; the guest is software-emulated, its timings are not the host's.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests=${1:-overlay,nat,names,nc,pods,interop,routes,upgrade}
filter=${2:-}
export CARGO_TERM_COLOR=never
cargo build -p wirehub --bin wh -p wirehub-cni --bin wirehub-cni
args=(); for t in ${tests//,/ }; do args+=(--test "$t"); done
bins=$(cargo test -p wirehub-e2e "${args[@]}" --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test == true) | .executable // empty' | paste -sd:)
[ -n "$bins" ] || { echo "no test binaries built" >&2; exit 1; }
target=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
# The guest reads binaries over 9p: without debug info wh starts in a fraction of the time.
objcopy --strip-debug "$target/debug/wh" "$target/debug/wh-vm"
rc=0
bash e2e/kernel/run.sh e2e/kernel/lab.sh "TESTS=$bins" "WH_BIN=$target/debug/wh-vm" ${filter:+"FILTER=$filter"} || rc=1
bash e2e/kernel/run.sh e2e/kernel/overlay.sh "WH_BIN=$target/debug/wh-vm" || rc=1
exit $rc
