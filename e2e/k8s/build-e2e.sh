#!/usr/bin/env bash
# Builds Kubernetes' own end-to-end test binary and the test images its
# [sig-network] [Conformance] tests run, from the same Debian `kubernetes`
# source package as build-k8s.sh, once per machine, cached OUTSIDE the
# repository next to the kube-* binaries:
#   $WH_K8S_CACHE/<version>/e2e/bin/{e2e.test,agnhost}
#   $WH_K8S_CACHE/<version>/e2e/images/*.tar   (OCI archives, see mkimg.sh)
#   $WH_K8S_CACHE/<version>/e2e/repo-list.yaml (for KUBE_TEST_REPO_LIST)
# No registry: the images are named localhost/... and imported into each
# node's containerd before the tests run; the repo list points e2e.test at
# those names. Idempotent: a complete cache returns at once.
# On a fresh machine the kube-* build and this one share one source tree and
# its Go build cache (_output/local/go/cache: build-k8s.sh is run with
# WH_K8S_KEEP_SRC=1, the cleanup happens here).
# Needs root (apt, via build-k8s.sh).
set -euo pipefail
CACHE=${WH_K8S_CACHE:-/var/cache/wirehub-k8s}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/k8s-src.sh"

complete() { # dir
  local d=$1/e2e
  for f in bin/e2e.test bin/agnhost images/agnhost.tar images/busybox.tar images/nginx.tar images/httpd.tar repo-list.yaml; do
    [ -s "$d/$f" ] || return 1
  done
}
# agnhost's TLS servers (porter, the Proxy tests' pod) read localhost.crt and
# localhost.key from the working directory, as the upstream image ships them:
# a self-signed pair for localhost, added to the packed image as a last step
# (also to an image cached before this step existed), marked by agnhost.tls.
with_tls() { # e2e dir
  local d=$1 w ref
  [ -s "$d/images/agnhost.tls" ] && return 0
  w=$(mktemp -d "$d/images/.tls.XXXXXX")
  tar -xf "$d/images/agnhost.tar" -C "$w" index.json blobs
  ref=$(sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p' "$w/index.json")
  [ -n "$ref" ] || { rm -rf "$w"; echo "build-e2e.sh: no image name in agnhost.tar" >&2; return 1; }
  mkdir -p "$w/root"
  # The one layer: the largest blob.
  tar -xf "$(ls -S "$w"/blobs/sha256/* | head -1)" -C "$w/root"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$w/root/localhost.key" -out "$w/root/localhost.crt" 2>/dev/null
  "$HERE/mkimg.sh" "$ref" "$w/root" "$d/images/agnhost.tar.tmp" '["/agnhost"]' '["pause"]' >/dev/null
  mv "$d/images/agnhost.tar.tmp" "$d/images/agnhost.tar"
  rm -rf "$w"
  echo "$ref: localhost.crt and localhost.key added" > "$d/images/agnhost.tls"
}
if [ -L "$CACHE/current" ] && complete "$CACHE/current"; then
  exec 9>"$CACHE/.lock"
  flock 9
  with_tls "$(readlink -f "$CACHE/current")/e2e"
  echo "k8s e2e binaries cached in $(readlink -f "$CACHE/current")/e2e"
  exit 0
fi
WH_K8S_KEEP_SRC=1 "$HERE/build-k8s.sh"
exec 9>"$CACHE/.lock"
flock 9
if complete "$CACHE/current"; then exit 0; fi
OUT=$(readlink -f "$CACHE/current")
UPVER=$(basename "$OUT")
SRC=$CACHE/src/kubernetes-$UPVER
dsc=$(ls "$CACHE"/src/kubernetes_"$UPVER"*.dsc 2>/dev/null | head -1)
[ -n "$dsc" ] || { echo "build-e2e.sh: no kubernetes_$UPVER*.dsc in $CACHE/src (run build-k8s.sh)" >&2; exit 1; }
k8s_prepare_src "$dsc" "$SRC"
mkdir -p "$OUT/e2e/bin" "$OUT/e2e/images"
# curl and libbsd0 (netcat-openbsd's library) on the host: the agnhost image
# takes them from here.
missing=()
for p in curl libbsd0; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
cd "$SRC"
gobuild() { # WHAT NAME
  [ -x "$OUT/e2e/bin/$2" ] && return 0
  echo "== building $2 ($(date +%T))"
  local t0=$SECONDS
  GOPATH=$PWD/.go GOPROXY=off CGO_ENABLED=0 HOME=/tmp make WHAT="$1"
  cp "_output/bin/$2" "$OUT/e2e/bin/$2.tmp" && mv "$OUT/e2e/bin/$2.tmp" "$OUT/e2e/bin/$2"
  echo "== built $2 in $((SECONDS - t0)) s"
}
gobuild test/images/agnhost agnhost
gobuild test/e2e/e2e.test e2e.test

# The images. agnhost: the static binary plus busybox for the shell the tests
# exec (`/bin/sh -c ...`), as test/images/agnhost's Dockerfile lays it out.
t0=$SECONDS
W=$(mktemp -d "$OUT/e2e/.roots.XXXXXX")
trap 'rm -rf "$W"' EXIT
AGNVER=$(sed -n 's/.*configs\[Agnhost\] = Config{promoterE2eRegistry, "agnhost", "\([^"]*\)"}.*/\1/p' test/utils/image/manifest.go)
[ -n "$AGNVER" ] || { echo "build-e2e.sh: no agnhost version in test/utils/image/manifest.go" >&2; exit 1; }
bbroot() { # DIR : a root with Debian's static busybox and its applets
  mkdir -p "$1"/{bin,usr/bin,proc,sys,dev,etc,tmp,var/run,www}
  cp /bin/busybox "$1/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$1/bin/$a"; done
  echo "root:x:0:0:root:/:/bin/sh" > "$1/etc/passwd"
  echo "root:x:0:" > "$1/etc/group"
  echo "hosts: files dns" > "$1/etc/nsswitch.conf"
}
# The tests also run curl and a netcat with -u/-z/-v (busybox's has none):
# Debian's curl and netcat-openbsd (downloaded, not installed) with the
# shared libraries they load.
R=$W/agnhost; bbroot "$R"
cp "$OUT/e2e/bin/agnhost" "$R/agnhost"; ln -s ../agnhost "$R/usr/bin/agnhost"
mkdir -p "$W/deb"
(cd "$W/deb" && apt-get download -q netcat-openbsd >/dev/null && dpkg-deb -x netcat-openbsd_*.deb x)
cp "$W/deb/x/bin/nc.openbsd" "$R/usr/bin/nc"; rm -f "$R/bin/nc"
cp "$(command -v curl)" "$R/usr/bin/curl"
# Debian's static busybox runs its own applets before PATH (so `nc` in a
# `sh -c` would be busybox's): the shell is Debian's dash instead.
cp /bin/dash "$R/bin/dash"; ln -sfn dash "$R/bin/sh"
for b in "$R/usr/bin/nc" "$R/usr/bin/curl" "$R/bin/dash"; do
  for lib in $(ldd "$b" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
    mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
  done
done
mkdir -p "$R/etc/ssl/certs"
"$HERE/mkimg.sh" "localhost/e2e/agnhost:$AGNVER" "$R" "$OUT/e2e/images/agnhost.tar.tmp" '["/agnhost"]' '["pause"]'
mv "$OUT/e2e/images/agnhost.tar.tmp" "$OUT/e2e/images/agnhost.tar"
# busybox, nginx and httpd (docker library names): busybox stands in for all
# three; nginx and httpd serve /www on port 80 with busybox's httpd.
ver() { sed -n "s/.*configs\[$1\] = Config{dockerLibraryRegistry, \"[a-z]*\", \"\([^\"]*\)\"}.*/\1/p" test/utils/image/manifest.go; }
R=$W/busybox; bbroot "$R"; echo ok > "$R/www/index.html"
"$HERE/mkimg.sh" "localhost/library/busybox:$(ver BusyBox)" "$R" "$OUT/e2e/images/busybox.tar" null '["/bin/sh"]'
"$HERE/mkimg.sh" "localhost/library/nginx:$(ver Nginx)" "$R" "$OUT/e2e/images/nginx.tar" '["/bin/httpd","-f","-p","80","-h","/www"]' null
"$HERE/mkimg.sh" "localhost/library/httpd:$(ver Httpd)" "$R" "$OUT/e2e/images/httpd.tar" '["/bin/httpd","-f","-p","80","-h","/www"]' null
# Where e2e.test looks for them: pause keeps localhost/pause:3.2 (images.sh).
cat > "$OUT/e2e/repo-list.yaml" <<YAML
promoterE2eRegistry: localhost/e2e
dockerLibraryRegistry: localhost/library
gcRegistry: localhost
YAML
with_tls "$OUT/e2e"
echo "== images in $((SECONDS - t0)) s"
echo "k8s e2e binaries built into $OUT/e2e"
if [ "${WH_K8S_KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC" 2>/dev/null || true; fi
