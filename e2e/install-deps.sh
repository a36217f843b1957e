#!/usr/bin/env bash
# Installs the Debian packages WireHub's tests and demo use (idempotent).
set -euo pipefail
packages=(
  iproute2 iputils-ping nftables conntrack procps    # the network-namespace lab
  wireguard-tools wireguard-go iperf3                  # reference WireGuard, benchmarks
  miniupnpd miniupnpd-nftables miniupnpc natpmpc       # UPnP IGD / NAT-PMP in lab routers
  podman containernetworking-plugins busybox-static runc iptables util-linux  # a real CNI runtime
  containerd etcd-server etcd-client openssl binutils  # the Kubernetes lab (e2e/tests/k8s.rs; the binaries: e2e/k8s/build-k8s.sh)
  faketime                                             # nodes with wrong wall clocks (e2e/tests/clock.rs)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Installing podman drops a default bridge network for CNI; our tests bring their own.
rm -f /etc/cni/net.d/87-podman-bridge.conflist
