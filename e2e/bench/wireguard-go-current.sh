#!/usr/bin/env bash
# Prints the path of the current wireguard-go (Debian's next release,
# 0.0.20231211: TUN TSO/GRO, UDP GSO/GRO, batched I/O), the reference of
# wg-bench. Downloads Debian's package once into a cache outside the
# repository (${WG_GO_CACHE:-/var/cache/wireguard-go-current}) with a private
# apt configuration: the machine's own apt sources are left as they are.
# The binary needs only libc.
set -euo pipefail
CACHE=${WG_GO_CACHE:-/var/cache/wireguard-go-current}
BIN=$CACHE/root/usr/bin/wireguard-go
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/sources.list.d" "$APT/archives/partial"
: > "$APT/sources.list"
# The machine's Debian entries (not -security), with the suite set to trixie.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  awk -v RS= -v ORS='\n\n' '/debian/ && !/security/' "$f" |
    sed -e 's/^Suites:.*/Suites: trixie/' > "$APT/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  grep -E '^deb ' /etc/apt/sources.list | grep -vi security |
    awk '{ $3="trixie"; print }' >> "$APT/sources.list" || true
fi
opts=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=$APT/sources.list.d"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache::Archives=$APT/archives"
      -o "APT::Get::List-Cleanup=0")
apt-get "${opts[@]}" update -q >&2
(cd "$APT/archives" && apt-get "${opts[@]}" download wireguard-go/trixie >&2)
deb=$(ls "$APT"/archives/wireguard-go_*.deb | head -1)
mkdir -p "$CACHE/root"
dpkg-deb -x "$deb" "$CACHE/root"
echo "$BIN"
