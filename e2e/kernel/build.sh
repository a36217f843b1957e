#!/usr/bin/env bash
# Builds (once, cached) the boot kit of the kernel-WireGuard VM: Debian's own kernel image (which has the wireguard
# module) and an initramfs that loads wireguard, veth, bridge, tun, nftables (NAT, notrack), netem and 9p, mounts
# this machine's root read-only over 9p under a tmpfs overlay (the guest may write anywhere, e.g. /etc/netns for
# `ip netns exec`; nothing reaches the host, all is gone at power-off), and runs one script in a chroot of it (see
# run.sh).
# Everything comes from the distribution's packages (apt): qemu-system-x86, kmod, cpio, busybox-static, and the
# current linux-image-amd64 (downloaded, unpacked, never installed). Needs root.
# Prints the kit's directory: ${WH_KVM_CACHE:-/var/cache/wirehub-kernel-vm}/<hash of this script>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${WH_KVM_CACHE:-/var/cache/wirehub-kernel-vm}/$(sha256sum "$here/build.sh" | cut -c1-12)
[ -f "$CACHE/ready" ] && { echo "$CACHE"; exit 0; }
need=(qemu-system-x86 kmod cpio busybox-static)
missing=(); for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then apt-get update -q >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; fi
rm -rf "$CACHE"; mkdir -p "$CACHE"; cd "$CACHE"
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$pkg" ] || { echo "build.sh: no linux-image package found (apt-get update?)" >&2; exit 1; }
# apt's sandbox user cannot write into root's cache directory: download as root, quietly.
apt-get download -o APT::Sandbox::User=root "$pkg" >&2
dpkg-deb -x linux-image-*.deb root
K=$(ls root/lib/modules | head -1)
depmod -b root "$K"
mods=(wireguard veth bridge tun 9p 9pnet_virtio virtio_pci nf_tables nft_ct nft_masq nft_nat nft_chain_nat
      nft_reject_inet nft_fib_inet sch_netem overlay)
mkdir -p initrd/{bin,proc,sys,dev,host,ro,rw} "initrd/lib/modules/$K"
cp /bin/busybox initrd/bin/
for m in "${mods[@]}"; do modprobe -d "$PWD/root" -S "$K" --show-depends "$m" 2>/dev/null | awk '$1=="insmod" {print $2}'; done | sort -u |
while read -r f; do rel=${f#"$PWD"/root/}; mkdir -p "initrd/$(dirname "$rel")"; cp "$f" "initrd/$rel"; done
cp root/lib/modules/"$K"/modules.* "initrd/lib/modules/$K/"
cat > initrd/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo /bin/modprobe > /proc/sys/kernel/modprobe
for m in ${mods[*]}; do modprobe \$m 2>/dev/null || echo "wh-vm: module \$m not loaded"; done
script=\$(sed -n 's/.*wh.script=\([^ ]*\).*/\1/p' /proc/cmdline)
# wh.env=K=V,K=V (no spaces, no commas in values): exported to the script.
envs=\$(sed -n 's/.*wh.env=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /ro || { echo "wh-vm: 9p mount failed"; poweroff -f; }
mount -t tmpfs tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /host ||
  { echo "wh-vm: no overlay, the root is read-only"; mount --bind /ro /host; }
for d in proc sys dev; do mount --bind /\$d /host/\$d; done
mkdir -p /host/dev/shm && mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null || echo "wh-vm: no cgroup2"
mount -t tmpfs tmpfs /host/run; mount -t tmpfs tmpfs /host/tmp
mkdir -p /host/run/netns /host/run/wireguard
ip link set lo up
chroot /host /usr/bin/env \$envs PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp /bin/bash -c "cd \$(dirname \$script) && bash \$script"
echo "wh-vm: script exit \$?"
poweroff -f
INIT
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip) > initrd.gz
cp root/boot/vmlinuz-* vmlinuz
rm -rf root linux-image-*.deb
touch ready; echo "$CACHE"
