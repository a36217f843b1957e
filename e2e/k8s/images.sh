#!/usr/bin/env bash
# images.sh OUT WH CNI PAUSE : the images the lab cluster runs, as OCI
# archives in OUT: localhost/pause:3.2, localhost/busybox:1.35 (Debian's
# static busybox) and localhost/wirehub-agent:e2e, laid out as
# images/agent/Containerfile builds it (/usr/local/bin/wh with the shared
# libraries it needs, /opt/wirehub/cni/bin/{wirehub-cni,host-local,portmap,loopback},
# /bin/sh), with the debug information stripped.
set -euo pipefail
OUT=$1; WH=$2; CNI=$3; PAUSE=$4
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
W=$(mktemp -d "$OUT/.roots.XXXXXX")
trap 'rm -rf "$W"' EXIT
R=$W/pause; mkdir -p "$R"; cp "$PAUSE" "$R/pause"
"$HERE/mkimg.sh" localhost/pause:3.2 "$R" "$OUT/pause.tar" '["/pause"]' null
R=$W/busybox; mkdir -p "$R"/{bin,proc,sys,dev,etc,tmp,www}
cp /bin/busybox "$R/bin/busybox"
for a in sh ls cat echo ip ping nc sleep true httpd hostname awk mkdir; do ln -s busybox "$R/bin/$a"; done
echo "root:x:0:0:root:/:/bin/sh" > "$R/etc/passwd"
"$HERE/mkimg.sh" localhost/busybox:1.35 "$R" "$OUT/busybox.tar" null '["/bin/sh"]'
R=$W/agent; mkdir -p "$R"/{bin,usr/local/bin,opt/wirehub/cni/bin,proc,sys,dev,etc,tmp,run,var/lib/wirehub}
strip --strip-debug -o "$R/usr/local/bin/wh" "$WH"
strip --strip-debug -o "$R/opt/wirehub/cni/bin/wirehub-cni" "$CNI"
cp /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/lib/cni/loopback "$R/opt/wirehub/cni/bin/"
cp /bin/busybox "$R/bin/busybox"
for a in sh cp mv basename echo ls cat; do ln -s busybox "$R/bin/$a"; done
for lib in $(ldd "$WH" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
  mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
done
echo "root:x:0:0:root:/:/bin/sh" > "$R/etc/passwd"
"$HERE/mkimg.sh" localhost/wirehub-agent:e2e "$R" "$OUT/agent.tar" '["/usr/local/bin/wh"]' '["agent"]'
