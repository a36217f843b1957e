#!/usr/bin/env bash
# Runs lab test binaries INSIDE the VM (see all.sh): TESTS=bin1:bin2:... each run with FILTER (optional, libtest
# name filters joined by '+') and --test-threads=1 (NOCAPTURE=1: --nocapture). The binaries find wh beside them (target/debug/wh). Prints each binary's
# output; exits non-zero if any failed.
# The lab's waits (ping_until, wait_log, wait_daemon, wait_exit) are stretched by WH_LAB_PATIENCE (default 5
# here): the guest is software-emulated, 10-50x slower than a host; the product's bounds are checked on hosts.
set -uo pipefail
export NO_COLOR=1
export WH_LAB_PATIENCE=${WH_LAB_PATIENCE:-5}
rc=0
FILTER=${FILTER:-}
IFS=: read -r -a bins <<<"${TESTS:?TESTS=bin1:bin2 is required}"
for b in "${bins[@]}"; do
  echo "=== $(basename "$b") ${FILTER:-}"
  # shellcheck disable=SC2086
  "$b" --test-threads=1 ${NOCAPTURE:+--nocapture} ${FILTER//+/ } || rc=1
done
exit $rc
