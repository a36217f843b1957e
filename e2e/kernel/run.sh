#!/usr/bin/env bash
# Boots Debian's kernel (kernel WireGuard as a module) in QEMU and runs SCRIPT inside, as root, in a chroot of this
# machine's root filesystem mounted read-only (every binary and the repository are there); /tmp and /run are empty
# tmpfs inside, so SCRIPT must live elsewhere (the repository is fine). The guest's console is this command's output;
# its last line is "wh-vm: script exit N", and run.sh exits N (1 if the guest never said).
# Usage: run.sh SCRIPT [K=V ...]   the K=V pairs are exported to SCRIPT (no spaces or commas in values).
# Environment: WH_VM_MEM (MiB, default 3072), WH_VM_CPUS (default 2), WH_VM_TIMEOUT (s, default 900).
# Software emulation (TCG): boots in ~3 s, everything runs 10-50x slower than on the host: behaviour, not speed.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: run.sh SCRIPT [K=V ...]" >&2; exit 2; }
script=$(readlink -f "$1"); shift
case "$script" in /tmp/*|/run/*) echo "run.sh: put the script outside /tmp and /run (they are tmpfs in the guest)" >&2; exit 2;; esac
envs=$(IFS=,; echo "$*")
case "$envs" in *" "*) echo "run.sh: no spaces in K=V arguments" >&2; exit 2;; esac
kit=$(bash "$(dirname "$0")/build.sh")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout "${WH_VM_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -cpu max -m "${WH_VM_MEM:-3072}" -smp "${WH_VM_CPUS:-2}" \
  -nographic -no-reboot -kernel "$kit/vmlinuz" -initrd "$kit/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 wh.script=$script${envs:+ wh.env=$envs}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on 2>/dev/null </dev/null | tee "$out" | grep -v "^wh-vm: module" || true
rc=$(sed -n 's/.*wh-vm: script exit \([0-9]*\).*/\1/p' "$out" | tail -1)
exit "${rc:-1}"
