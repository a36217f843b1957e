#!/usr/bin/env bash
# node-down.sh DIR NODE : stops node NODE (kubelet, kube-proxy, every
# container, the shims, containerd, and the holder of its mount namespace),
# by PID only. Safe to run twice.
DIR=$1; N=$2; D=$DIR/$N
SOCK=$D/containerd/containerd.sock
pid_of() { awk -v n="$1" '$2 == n {print $1}' "$DIR/pids" 2>/dev/null | tail -1; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# The holder's children (inner.sh) started kubelet, kube-proxy and containerd
# with `&`: their PIDs were appended to DIR/pids under plain names, so pick
# the ones whose /proc/PID/root and cmdline show this node's files.
mine() { # name pattern
  for p in $(awk -v n="$1" '$2 == n {print $1}' "$DIR/pids" 2>/dev/null); do
    { tr '\0' ' ' < /proc/$p/cmdline; } 2>/dev/null | grep -q -- "$2" && echo "$p"
  done
}
KUBELET=$(mine kubelet "$D/kubelet")
PROXY=$(mine kube-proxy "$DIR/cp/proxy.kubeconfig.*--hostname-override=$N ")
[ -n "$PROXY" ] || PROXY=$(mine kube-proxy "hostname-override=$N")
CONTAINERD=$(mine containerd "$D/containerd/config.toml")
for p in $KUBELET $PROXY; do kill "$p" 2>/dev/null; done
# The containers (and pod sandboxes) this node's containerd made: their
# cgroups are removed below, once their processes are gone.
IDS=$(ctr -a "$SOCK" -n k8s.io containers ls -q 2>/dev/null)
echo "$IDS" >> "$D/container-ids"
SHIMS=$(for p in /proc/[0-9]*; do { tr '\0' ' ' < $p/cmdline; } 2>/dev/null | grep -q -- "containerd-shim.*-address $SOCK" && basename $p; done)
CHILD=$(for s in $SHIMS; do pgrep -P $s; done)
[ -n "$CHILD" ] && kill -9 $CHILD 2>/dev/null
for p in $CONTAINERD; do kill "$p" 2>/dev/null; done
sleep 1
[ -n "$SHIMS" ] && kill -9 $SHIMS 2>/dev/null
for p in $KUBELET $PROXY $CONTAINERD; do alive "$p" && kill -9 "$p" 2>/dev/null; done
# runc leaves the cgroups of containers killed under it: remove the empty
# ones of this node's containers (containerd puts them under k8s.io/ID).
for id in $(sort -u "$D/container-ids" 2>/dev/null); do
  for c in /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id"; do
    [ -d "$c" ] && rmdir "$c" 2>/dev/null
  done
done
H=$(pid_of "holder-$N"); alive "$H" && kill "$H" 2>/dev/null
sleep 0.2
alive "$H" && kill -9 "$H" 2>/dev/null
echo "node $N down (shims: ${SHIMS:-none}, containers: ${CHILD:-none})"
true
