#!/bin/sh
# Debian packages for the wirehub-cni lab tests and benchmark.
set -eu
need=""
for p in podman containernetworking-plugins busybox-static runc nftables iproute2 iptables util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update
    # --no-install-recommends: without it Recommends pull a kernel image.
    apt-get install -y --no-install-recommends $need
fi
