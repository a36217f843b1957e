#!/usr/bin/env bash
# node-up.sh DIR NODE NETNS NODE_IP BIN IMAGES_DIR : containerd, kubelet and
# kube-proxy of node NODE inside the lab namespace NETNS and a private mount
# namespace. Inside it, node-private directories are bound over the paths
# kubelet, containerd, the CNI plugins and the WireHub agent hard-code
# (/var/log/pods, /var/log/containers, /run/containerd, /var/lib/cni,
# /etc/cni/net.d, /opt (tmpfs, with /opt/cni/bin), /run/wirehub,
# /var/lib/wirehub): the host's own are never touched. Host directories
# created as mount points are listed in DIR/created-host-dirs. The CNI
# configuration directory starts empty: the node is NotReady until the
# WireHub DaemonSet installs its plugin and configuration.
set -euo pipefail
DIR=$1; N=$2; NETNS=$3; NODE_IP=$4; BIN=$5; IMAGES=$6
D=$DIR/$N
mkdir -p "$D"/{containerd/root,containerd/state,containerd/opt,cni/net.d,cni/bin,kubelet,logs} \
         "$D"/mnt/{varlogpods,varlogcontainers,runcontainerd,varlibcni,runwirehub,varlibwirehub}
for d in /var/log/pods /var/log/containers /run/containerd /var/lib/cni /etc/cni/net.d /run/wirehub /var/lib/wirehub; do
  if [ ! -d "$d" ]; then mkdir -p "$d"; echo "$d" >> "$DIR/created-host-dirs"; fi
done
SOCK=$D/containerd/containerd.sock
containerd config default | sed \
  -e "s#^root = .*#root = \"$D/containerd/root\"#" \
  -e "s#^state = .*#state = \"$D/containerd/state\"#" \
  -e "s#address = \"/run/containerd/containerd.sock\"#address = \"$SOCK\"#" \
  -e "s#sandbox_image = .*#sandbox_image = \"localhost/pause:3.2\"#" \
  -e "s#bin_dir = .*#bin_dir = \"/opt/cni/bin\"#" \
  -e "s#conf_dir = .*#conf_dir = \"/etc/cni/net.d\"#" \
  -e "s#conf_template = .*#conf_template = \"\"#" \
  -e "s#netns_mounts_under_state_dir = .*#netns_mounts_under_state_dir = true#" \
  -e "s#path = \"/opt/containerd\"#path = \"$D/containerd/opt\"#" \
  -e "s#disable_apparmor = .*#disable_apparmor = true#" \
  -e "s#restrict_oom_score_adj = .*#restrict_oom_score_adj = true#" \
  > "$D/containerd/config.toml"
cat > "$D/inner.sh" <<I
#!/usr/bin/env bash
# Runs inside netns $NETNS and a private mount namespace.
mount --make-rprivate /
mount --bind "$D/mnt/varlogpods" /var/log/pods
mount --bind "$D/mnt/varlogcontainers" /var/log/containers
mount --bind "$D/mnt/runcontainerd" /run/containerd
mount --bind "$D/mnt/varlibcni" /var/lib/cni
mount --bind "$D/cni/net.d" /etc/cni/net.d
mount --bind "$D/mnt/runwirehub" /run/wirehub
mount --bind "$D/mnt/varlibwirehub" /var/lib/wirehub
mount -t tmpfs -o size=256m wh-opt /opt
mkdir -p /opt/cni/bin
mount --bind "$D/cni/bin" /opt/cni/bin
containerd --config "$D/containerd/config.toml" > "$D/logs/containerd.log" 2>&1 &
echo "\$! containerd" >> "$DIR/pids"
for i in \$(seq 150); do ctr -a "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
for img in "$IMAGES"/*.tar; do
  ctr -a "$SOCK" -n k8s.io images import --all-platforms "\$img" >> "$D/logs/import.log" 2>&1
done
"$BIN/kubelet" --hostname-override=$N --node-ip=$NODE_IP --kubeconfig="$DIR/cp/$N.kubeconfig" \
  --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki" --volume-plugin-dir="$D/kubelet/volume-plugins" \
  --seccomp-profile-root="$D/kubelet/seccomp" \
  --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" --runtime-request-timeout=5m \
  --pod-infra-container-image=localhost/pause:3.2 \
  --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= --fail-swap-on=false \
  --read-only-port=0 --anonymous-auth=true --authorization-mode=AlwaysAllow \
  --cluster-dns=10.96.0.10 --cluster-domain=cluster.local --node-status-update-frequency=4s \
  --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%' \
  --image-gc-high-threshold=99 --image-gc-low-threshold=98 --oom-score-adj=0 --v=2 \
  > "$D/logs/kubelet.log" 2>&1 &
echo "\$! kubelet" >> "$DIR/pids"
"$BIN/kube-proxy" --kubeconfig="$DIR/cp/proxy.kubeconfig" --hostname-override=$N \
  --cluster-cidr=10.244.0.0/16 --proxy-mode=iptables --conntrack-max-per-core=0 \
  --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
  --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --oom-score-adj=0 --v=1 \
  > "$D/logs/kube-proxy.log" 2>&1 &
echo "\$! kube-proxy" >> "$DIR/pids"
wait
I
chmod +x "$D/inner.sh"
setsid nsenter --net=/run/netns/"$NETNS" -- unshare --mount --propagation private -- "$D/inner.sh" \
  > "$D/logs/inner.log" 2>&1 < /dev/null &
echo "$! holder-$N" >> "$DIR/pids"
echo "$N: containerd socket $SOCK"
