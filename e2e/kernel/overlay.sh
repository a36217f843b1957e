#!/usr/bin/env bash
# Kernel-WireGuard overlay scenario; runs INSIDE the VM (bash e2e/kernel/run.sh e2e/kernel/overlay.sh WH_BIN=...).
# A bootstrap node and two nodes on public addresses (namespaces boot, a, b on one bridge), `wh up` with the default
# backend. Checks: `auto` picks the kernel and WireGuard owns the public port; a and b ping on IPv4 and IPv6; bulk TCP
# through the overlay; zero WireGuard data datagrams through either daemon on the direct path; WireHub's datagrams
# still share the port (the DHT answers); `wh down` leaves no interface and no nftables table; a restart pings again.
# MEASURE=1 adds the figures: TCP through wh vs a plain kernel WireGuard pair between the same namespaces (ratio),
# and the traffic gap while b's daemon restarts.
# Prints "ok: ...", "figure: ..."; on the first failure "FAIL: ..." with the daemons' logs, and exits 1.
set -uo pipefail
WH=${WH_BIN:-$(cd ../.. && pwd)/target/debug/wh}
T=/tmp/whk
mkdir -p "$T"
export NO_COLOR=1 WH_LOG=${WH_LOG:-info}
ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
whn() { local n=$1; shift; WH_RUN_DIR=$T/$n ip netns exec "$n" "$WH" "$@"; }
fail() {
  echo "FAIL: $*"
  for n in boot a b; do [ -f "$T/$n/wh-$n.log" ] && { echo "--- $n log"; tail -n 40 "$T/$n/wh-$n.log"; }; done
  exit 1
}
ok() { echo "ok: $* [${SECONDS} s]"; }
step() { echo "-- $* [${SECONDS} s]"; }
# Waits until a ping from namespace $1 to $2 answers, up to $3 seconds; prints the seconds it took.
ping_until() {
  local start=$SECONDS
  while ((SECONDS - start < $3)); do
    ns "$1" ping -c1 -W1 "$2" >/dev/null 2>&1 && { echo $((SECONDS - start)); return 0; }
  done
  return 1
}
inspect() { whn "$1" inspect "wh-$1"; }
# wh up of node $1 (a or b) with the lab network; its CNI configuration in its own directory.
up() { whn "$1" up "$T/lab.conf" private-key "$T/$1.sk" interface "wh-$1" cni-dir "$T/$1/cni"; }
# b's routes to a's subnet: exactly one, ours (our metric, into wh-b), and no route error in b's log.
check_b_route() {
  local r
  r=$(ns b ip route show exact 10.244.1.0/24)
  [ "$(grep -c . <<<"$r")" = 1 ] && grep -q "dev wh-b .*metric 1464336384" <<<"$r" ||
    fail "b's route to a's subnet after $1: '$r'"
  grep -q "cannot add a route" "$T/b/wh-b.log" && fail "b could not add a route after $1"
  ok "b routes a's subnet into wh-b once, with WireHub's metric, after $1"
}

[ -x "$WH" ] || fail "no wh binary at $WH (pass WH_BIN=...)"
ip link add whprobe type wireguard 2>/dev/null && ip link del whprobe || fail "this kernel cannot create a WireGuard link"

# The internet: a bridge in namespace net; each host a veth into it, 203.0.113.0/24 and 2001:db8:1::/64.
ip netns add net
ns net ip link add br0 type bridge && ns net ip link set br0 up
i=10
for n in boot a b; do
  ip netns add "$n"; mkdir -p "$T/$n"
  ns "$n" ip link set lo up
  ip link add "v-$n" type veth peer name eth0 netns "$n"
  ip link set "v-$n" netns net
  ns net ip link set "v-$n" master br0 up
  ns "$n" ip addr add "203.0.113.$i/24" dev eth0
  ns "$n" ip -6 addr add "2001:db8:1::$i/64" dev eth0 nodad
  ns "$n" ip link set eth0 up
  i=$((i + 1))
done

for n in boot a b; do whn "$n" genkey workbit 8 > "$T/$n.sk" 2>/dev/null || fail "genkey"; done
pk() { whn "$1" pubkey < "$T/$1.sk"; }
printf 'name public\nworkbit 8\n' > "$T/public.conf"
# a and b route subnets (as Kubernetes nodes route pod CIDRs): the routes must survive adoption unchanged.
printf 'name lab\nsubnet 10.0.42.0/24\nboot %s 203.0.113.10\nrouter node_a %s 10.244.1.0/24\nrouter node_b %s 10.244.2.0/24\n' \
  "$(pk boot)" "$(pk a)" "$(pk b)" > "$T/lab.conf"

whn boot up "$T/public.conf" private-key "$T/boot.sk" interface wh-boot mode direct >/dev/null || fail "boot up"
for n in a b; do
  up "$n" >/dev/null || fail "wh up on $n (default backend)"
done
ok "wh up with the default backend on a and b"

for n in a b; do
  j=$(inspect "$n") || fail "inspect $n"
  [ "$(jq -r .status.backend <<<"$j")" = kernel ] || fail "$n: backend $(jq -r .status.backend <<<"$j"), expected kernel"
  [ "$(jq -r .dataplane.wireguard_owns_port <<<"$j")" = true ] || fail "$n: WireGuard does not own the public port"
  port=$(ns "$n" wg show "wh-$n" listen-port)
  [ "$port" = 62096 ] || fail "$n: kernel WireGuard listens on $port, not 62096"
  ns "$n" nft list table inet "wirehub-wh-$n" >/dev/null || fail "$n: no nftables table"
done
ok "auto picked the kernel; kernel WireGuard listens on 62096; nftables shares it"

t=$(ping_until a 10.0.42.3 60) || fail "a cannot ping b (10.0.42.3) within 60 s"
ok "a pings b over IPv4 after ${t} s"
ip6=$(whn a resolve node_b | sed -n 2p)
[ -n "$ip6" ] || fail "no IPv6 overlay address for node_b"
t=$(ping_until a "$ip6" 30) || fail "a cannot ping b over IPv6 ($ip6)"
ok "a pings b over IPv6 ($ip6) after ${t} s"
ns b ping -c1 -W2 10.0.42.2 >/dev/null || fail "b cannot ping a"
ok "b pings a"
start=$SECONDS
until ns b ip route show exact 10.244.1.0/24 | grep -q wh-b || ((SECONDS - start > 30)); do sleep 0.5; done
check_b_route "wh up"

ns b iperf3 -s -D -1 >/dev/null 2>&1; sleep 1
out=$(ns a iperf3 -c 10.0.42.3 -t 3 -J) || fail "iperf3 through the overlay"
mbit=$(jq '.end.sum_received.bits_per_second / 1e6 | floor' <<<"$out")
ok "bulk TCP a -> b through the overlay: $mbit Mbit/s (emulated)"

for n in a b; do
  j=$(inspect "$n")
  via=$(jq .dataplane.wireguard_data_via_daemon <<<"$j")
  [ "$via" = 0 ] || fail "$n: $via WireGuard data datagrams went through the daemon on a direct path"
  path=$(whn "$n" show "wh-$n" | grep -c "node_" || true)
  dht=$(jq .dht_size <<<"$j")
  ((dht >= 1)) || fail "$n: empty DHT (WireHub's datagrams do not reach the daemon?)"
done
ok "zero WireGuard data datagrams through either daemon; both DHTs answer on the shared port"

if [ "${MEASURE:-0}" = 1 ]; then
  # A plain kernel WireGuard pair between the same namespaces, another port and subnet.
  for n in a b; do wg genkey > "$T/$n.wgk"; wg pubkey < "$T/$n.wgk" > "$T/$n.wgp"; done
  ns a ip link add wgp type wireguard; ns b ip link add wgp type wireguard
  ns a wg set wgp private-key "$T/a.wgk" listen-port 51820 peer "$(cat "$T/b.wgp")" allowed-ips 10.9.0.2/32 endpoint 203.0.113.12:51820
  ns b wg set wgp private-key "$T/b.wgk" listen-port 51820 peer "$(cat "$T/a.wgp")" allowed-ips 10.9.0.1/32 endpoint 203.0.113.11:51820
  ns a ip addr add 10.9.0.1/24 dev wgp; ns b ip addr add 10.9.0.2/24 dev wgp
  ns a ip link set wgp mtu 1420 up; ns b ip link set wgp mtu 1420 up
  ping_until a 10.9.0.2 20 >/dev/null || fail "plain WireGuard pair does not ping"
  ns b iperf3 -s -D >/dev/null 2>&1; sleep 1
  echo "figure: MTU wh-a $(ns a cat /sys/class/net/wh-a/mtu), plain $(ns a cat /sys/class/net/wgp/mtu)"
  # Alternating rounds, the order swapped every round (emulation is noisy and drifts): the figures are the
  # median of the per-round ratios and the ratio of the totals.
  tcp() { ns a iperf3 -c "$1" -t "${MEASURE_SECS:-4}" -J | jq '.end.sum_received.bits_per_second / 1e6'; }
  sw=0; sp=0; ratios=()
  for round in $(seq 1 "${MEASURE_ROUNDS:-8}"); do
    if ((round % 2)); then w=$(tcp 10.0.42.3); p=$(tcp 10.9.0.2); else p=$(tcp 10.9.0.2); w=$(tcp 10.0.42.3); fi
    sw=$(jq -n "$sw + $w"); sp=$(jq -n "$sp + $p"); ratios+=("$(jq -n "$w / $p")")
    echo "figure: round $round: wh $(jq -n "$w | floor") Mbit/s, plain kernel WireGuard $(jq -n "$p | floor") Mbit/s"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | jq -s 'sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end')
  echo "figure: TCP through wh / plain kernel WireGuard, ${#ratios[@]} rounds of ${MEASURE_SECS:-4} s: median of rounds $(jq -n "$median * 100 | floor / 100"), totals $(jq -n "$sw / $sp * 100 | floor / 100")"
  j=$(inspect a)
  echo "figure: WireGuard data datagrams through a's daemon after the runs: $(jq .dataplane.wireguard_data_via_daemon <<<"$j")"
fi

# b's daemon crashes (SIGKILL) and comes back while a pings it every 100 ms: the new daemon adopts the running
# interface and its peers; the figure is the count of lost replies.
gap_run() {  # $1: what to do to b's daemon
  ip netns exec a ping -i 0.1 -W1 10.0.42.3 > "$T/gap.txt" 2>&1 &
  local pinger=$!
  sleep 2
  step "$1"
  eval "$1"
  step "wh up on b"
  up b >/dev/null || fail "wh up again on b"
  step "a pings b"
  t=$(ping_until a 10.0.42.3 60) || fail "a cannot ping b after b's restart"
  sleep 3
  kill -INT "$pinger"; wait "$pinger" 2>/dev/null
  sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) received.*/\1 \2/p' "$T/gap.txt" > "$T/gap.res"
}
crash_b() { for p in $(ip netns pids b); do kill -KILL "$p"; done; sleep 0.5; }
gap_run crash_b; read -r sent got < "$T/gap.res"
echo "figure: daemon crash + wh up on b (a pinging every 100 ms): $sent sent, $got answered, gap $(( (sent - got) * 100 )) ms"
grep -q "adopted the running WireGuard interface" "$T/b/wh-b.log" || fail "b's new daemon did not adopt the interface"
ok "after a crash, wh up on b adopted the running interface; a pings b"
check_b_route "a crash and an adoption"

# An agent upgrade: SIGTERM with WH_KEEP_INTERFACE=1 leaves the interface running; the next daemon adopts it.
term_b() {
  for p in $(ip netns pids b); do kill -KILL "$p"; done
  sleep 0.5
  WH_KEEP_INTERFACE=1 up b >/dev/null || fail "wh up (keep) on b"
  sleep 3
  for p in $(ip netns pids b); do kill -TERM "$p"; done
  local start=$SECONDS
  while [ -n "$(ip netns pids b)" ] && ((SECONDS - start < 20)); do sleep 0.2; done
  ns b ip link show wh-b >/dev/null 2>&1 || fail "SIGTERM with WH_KEEP_INTERFACE=1 removed wh-b"
}
gap_run term_b; read -r sent got < "$T/gap.res"
echo "figure: SIGTERM with WH_KEEP_INTERFACE=1 + wh up on b (a pinging every 100 ms): $sent sent, $got answered, gap $(( (sent - got) * 100 )) ms"
ok "SIGTERM with WH_KEEP_INTERFACE=1 leaves the interface; the next daemon adopts it"

down_b() {
  whn b down wh-b || fail "wh down on b"
  local start=$SECONDS
  while ns b ip link show wh-b >/dev/null 2>&1 && ((SECONDS - start < 20)); do sleep 0.2; done
  ns b ip link show wh-b >/dev/null 2>&1 && fail "wh-b still exists 20 s after wh down"
  ns b nft list table inet wirehub-wh-b >/dev/null 2>&1 && fail "nftables table still there after wh down"
}
gap_run down_b; read -r sent got < "$T/gap.res"
echo "figure: wh down + wh up on b (a pinging every 100 ms): $sent sent, $got answered, gap $(( (sent - got) * 100 )) ms"
ok "wh down removes the interface and the nftables table; after wh up again a pings b"

whn a down wh-a; whn b down wh-b; whn boot down wh-boot
echo "all ok"
