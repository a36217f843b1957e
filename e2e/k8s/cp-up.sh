#!/usr/bin/env bash
# cp-up.sh DIR NETNS IP BIN NODE... : etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler inside the lab namespace NETNS (address IP on the lab's
# internet), with their state in DIR/cp; one kubeconfig per node in DIR/cp.
# Every process started is recorded in DIR/pids (pid name) for the harness.
set -euo pipefail
DIR=$1; NETNS=$2; IP=$3; BIN=$4; shift 4
D=$DIR/cp
mkdir -p "$D/certs" "$D/logs"
cd "$D"
NS=(nsenter --net=/run/netns/$NETNS --)
[ -f sa.key ] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
{
  echo "admin-token-wh,admin,admin-uid,system:masters"
  echo "cm-token-wh,system:kube-controller-manager,cm-uid"
  echo "sched-token-wh,system:kube-scheduler,sched-uid"
  echo "proxy-token-wh,system:kube-proxy,proxy-uid"
  for n in "$@"; do echo "$n-token-wh,system:node:$n,$n-uid,system:nodes"; done
} > tokens.csv
mkkc() { # file token server
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "$3", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: $2}
contexts:
- name: c
  context: {cluster: lab, user: u, namespace: default}
current-context: c
KC
}
mkkc admin.kubeconfig admin-token-wh "https://$IP:6443"
mkkc cm.kubeconfig cm-token-wh https://127.0.0.1:6443
mkkc sched.kubeconfig sched-token-wh https://127.0.0.1:6443
mkkc proxy.kubeconfig proxy-token-wh "https://$IP:6443"
for n in "$@"; do mkkc "$n.kubeconfig" "$n-token-wh" "https://$IP:6443"; done
start() { # name command...
  local name=$1; shift
  setsid "$@" > "logs/$name.log" 2>&1 < /dev/null &
  echo "$! $name" >> "$DIR/pids"
}
rm -rf etcd-data
start etcd "${NS[@]}" etcd --name wh --data-dir "$D/etcd-data" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster wh=http://127.0.0.1:2380 --listen-metrics-urls "" --log-level warn
for _ in $(seq 100); do "${NS[@]}" etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
start apiserver "${NS[@]}" "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --advertise-address="$IP" --secure-port=6443 --insecure-port=0 \
  --cert-dir="$D/certs" --token-auth-file="$D/tokens.csv" --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction --service-account-key-file="$D/sa.pub" \
  --service-account-signing-key-file="$D/sa.key" --service-account-issuer=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.96.0.0/24 --allow-privileged=true \
  --kubelet-preferred-address-types=InternalIP --event-ttl=1h
ok=0
for _ in $(seq 300); do
  if "${NS[@]}" kubectl --kubeconfig admin.kubeconfig get --raw /readyz >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.2
done
[ $ok = 1 ] || { echo "kube-apiserver did not become ready; see $D/logs/apiserver.log" >&2; exit 1; }
# Pod CIDRs are left to WireHub (the agents allocate from the network's
# podSubnet): no --allocate-node-cidrs here.
start cm "${NS[@]}" "$BIN/kube-controller-manager" --kubeconfig="$D/cm.kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --port=0 --service-cluster-ip-range=10.96.0.0/24 \
  --service-account-private-key-file="$D/sa.key" --root-ca-file="$D/certs/apiserver.crt" \
  --use-service-account-credentials=true --controllers='*,-cloud-node-lifecycle' \
  --node-monitor-grace-period=20s --pod-eviction-timeout=10m
start sched "${NS[@]}" "$BIN/kube-scheduler" --kubeconfig="$D/sched.kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --port=0
echo "control plane up at https://$IP:6443"
