#!/usr/bin/env bash
# Builds the Kubernetes binaries the end-to-end test needs from Debian's
# `kubernetes` source package, once per machine, cached OUTSIDE the repository:
#   $WH_K8S_CACHE (default /var/cache/wirehub-k8s)/<version>/bin/{kube-apiserver,
#   kube-controller-manager,kube-scheduler,kubelet,kube-proxy,pause}
# and a `current` symlink to the version directory. Idempotent: a complete
# cache returns at once; a partial one builds only what is missing.
# Needs root (apt). About 15 minutes on 2 cores the first time.
set -euo pipefail
CACHE=${WH_K8S_CACHE:-/var/cache/wirehub-k8s}
. "$(cd "$(dirname "$0")" && pwd)/k8s-src.sh"
BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# kubectl comes with most machines (any version from 1.19 on talks to 1.20);
# build it too where there is none.
command -v kubectl >/dev/null 2>&1 || BINS+=(kubectl)

complete() { # dir
  local d=$1
  for b in "${BINS[@]}" pause; do [ -x "$d/bin/$b" ] || return 1; done
}
if [ -L "$CACHE/current" ] && complete "$CACHE/current"; then
  echo "k8s binaries cached in $(readlink -f "$CACHE/current")/bin"
  exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -L "$CACHE/current" ] && complete "$CACHE/current"; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive
need=(golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev gcc libc6-dev)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A private apt directory with the machine's own Debian entries as deb-src,
# so the system's sources stay untouched.
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/sources.list.d"
: > "$APT/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  grep -qi 'debian' "$f" || continue
  sed -e 's/^Types:.*/Types: deb-src/' "$f" > "$APT/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >> "$APT/sources.list" || true
fi
APTOPTS=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=$APT/sources.list.d"
         -o "Dir::State::Lists=$APT/lists" -o "APT::Get::List-Cleanup=0")
if [ ! -f "$APT/updated" ]; then
  apt-get "${APTOPTS[@]}" update -q
  touch "$APT/updated"
fi
VER=$(apt-cache "${APTOPTS[@]}" showsrc kubernetes | awk '/^Version:/ {print $2; exit}')
[ -n "$VER" ] || { echo "no kubernetes source package found" >&2; exit 1; }
UPVER=${VER#*:}; UPVER=${UPVER%%-*}
OUT=$CACHE/$UPVER
mkdir -p "$OUT/bin" "$CACHE/src"
SRC=$CACHE/src/kubernetes-$UPVER
if [ ! -f "$SRC/.prepared" ]; then
  (cd "$CACHE/src" && apt-get "${APTOPTS[@]}" source --download-only -q "kubernetes=$VER")
  k8s_prepare_src "$(ls "$CACHE"/src/kubernetes_*.dsc | head -1)" "$SRC"
fi
cd "$SRC"
for w in "${BINS[@]}"; do
  [ -x "$OUT/bin/$w" ] && continue
  echo "== building $w ($(date +%T))"
  GOPATH=$PWD/.go GOPROXY=off CGO_ENABLED=0 HOME=/tmp GOCACHE=$CACHE/gocache make WHAT=cmd/$w
  cp "_output/bin/$w" "$OUT/bin/$w.tmp" && mv "$OUT/bin/$w.tmp" "$OUT/bin/$w"
done
if [ ! -x "$OUT/bin/pause" ]; then
  gcc -Os -static -o "$OUT/bin/pause.tmp" build/pause/linux/pause.c && mv "$OUT/bin/pause.tmp" "$OUT/bin/pause"
fi
ln -sfn "$UPVER" "$CACHE/current"
echo "k8s binaries built into $OUT/bin"
# The Go build cache and the source tree are large; keep only the binaries
# unless asked (WH_K8S_KEEP_SRC=1).
if [ "${WH_K8S_KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC" "$CACHE/gocache" 2>/dev/null || true; fi
