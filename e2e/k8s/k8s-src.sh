# Sourced by build-k8s.sh and build-e2e.sh: unpacks Debian's `kubernetes`
# source package (the .dsc and tarballs already in $CACHE/src) into a tree
# the kube-* Makefile builds in GOPATH mode, offline from its vendor/ dir.
# k8s_prepare_src DSC SRC : idempotent (a `.prepared` marker).
k8s_prepare_src() {
  local dsc=$1 src=$2
  [ -f "$src/.prepared" ] && return 0
  rm -rf "$src"
  dpkg-source -x "$dsc" "$src"
  # Go 1.19 + reflect2 1.0.1 crash on the first request: use Debian's newer copy.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -a /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  touch "$src/.prepared"
}
