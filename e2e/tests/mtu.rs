//! No MTU black holes: full-size packets cross the overlay whatever the
//! path's MTU, from 1,500 bytes down to 1,280 (IPv6's minimum), direct and
//! relayed, over IPv4 and IPv6 underlays.
//!
//! A home host sits behind a router whose WAN link carries at most MTU bytes
//! ([`Lab::set_mtu`]); the hosts themselves keep 1,500-byte interfaces, so
//! only the routers on the path know. For each MTU the test checks, through
//! the overlay, in both directions: pings of the interface's full size, a
//! TCP stream whose bytes arrive intact, and full-size UDP datagrams; over
//! an IPv6 underlay, that TCP learnt the smaller path MTU. It prints the TCP rate of each short transfer; the benchmark
//! (`cargo test -p wirehub-e2e --release --test mtu -- --ignored
//! --nocapture`) measures 1,400 against 1,500 with iperf3, beside
//! wireguard-go.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, is_direct, peer_line, scenario};
use wirehub_e2e::stream;
use wirehub_e2e::wire::in_netns;
use wirehub_e2e::{Host, Lab, Nat, require_lab};

/// The path MTUs every scenario is tried on, largest first (a smaller one
/// the hosts learnt stays learnt for minutes).
const MTUS: [u32; 4] = [1500, 1460, 1400, 1280];
/// Fragments a router may make during one TCP transfer over a path the
/// senders know: the transfer is ~3,000 datagrams, fragmenting each makes
/// two fragments; 20 were seen while TCP adapted.
const FRAGMENTS_TOLERATED: u64 = 100;
/// How long at most until a node probes a shrunk path again
/// (`dataplane::pmtu::PROBE_EVERY`).
const PROBE_EVERY: Duration = Duration::from_secs(30);

/// Bytes of each TCP transfer: enough for full-size segments and a rate.
const TCP_BYTES: usize = 4 << 20;

/// `wh up` arguments for an interface MTU of 1420 (WireGuard's usual,
/// which a user may choose to match a peer's): its datagrams need
/// fragmenting on every path below 1,500 bytes (it is also wh's default).
const WG_MTU: [&str; 2] = ["mtu", "1420"];

/// Time a TCP transfer may take (a black hole trickles for ever).
const TCP_DEADLINE: Duration = Duration::from_secs(20);

/// Full-size UDP datagrams sent each way; at least 90 % must arrive.
const UDP_DATAGRAMS: usize = 100;

/// Two nodes talking through the overlay: `a` behind `routers` (whose WAN
/// links get the MTU), `b` public or behind its own router.
struct Pair {
    lab: Lab,
    a: Host,
    b: Host,
    routers: Vec<Host>,
    /// Overlay addresses of a and b (IPv4 first, then IPv6 if any).
    a_ips: Vec<IpAddr>,
    b_ips: Vec<IpAddr>,
}

fn overlay_ips(lab: &Lab, from: &Host, name: &str) -> Vec<IpAddr> {
    lab.wh_ok(from, &["resolve", name])
        .expect("resolve")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The overlay interface's MTU on `host`.
fn interface_mtu(lab: &Lab, host: &Host) -> u32 {
    let iface = lab
        .wh_ok(host, &["show", "interfaces"])
        .expect("interfaces")
        .lines()
        .next()
        .expect("one interface")
        .to_string();
    let link = lab
        .exec(&host.netns, &["ip", "-o", "link", "show", &iface])
        .expect("ip link");
    link.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("an MTU")
}

impl Pair {
    /// Fails the test with `what` and both nodes' state and logs.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}{}", self.lab.report(&[&self.a, &self.b]))
    }

    /// Waits until a and b ping each other, then until the path a shows
    /// for b is `direct` (or relayed) and, if given, names `over`.
    fn wait_path(&self, direct: bool, over: Option<&str>) {
        let b_ip = self.b_ips[0].to_string();
        self.lab
            .ping_until(&self.a, &b_ip, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", self.lab.report(&[&self.a, &self.b])));
        let start = Instant::now();
        loop {
            let line = peer_line(&self.lab, &self.a, "node_b");
            let glyph = line.chars().next().unwrap_or('?');
            if is_direct(glyph) == direct && over.is_none_or(|o| line.contains(o)) {
                eprintln!("path: {line}");
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "node_b's path is not the one expected (direct {direct}, over {over:?}): {line}{}",
                    self.lab.report(&[&self.a, &self.b])
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends TCP both ways until a transfer crosses the path with at most
    /// [`FRAGMENTS_TOLERATED`] fragments made by the routers: the senders'
    /// TCP sends segments that fit the path whole (a probe is due at most
    /// [`PROBE_EVERY`] after the path shrank).
    fn wait_unfragmented(&self, mtu: u32) {
        for (from, to, to_ip) in [
            (&self.a, &self.b, self.b_ips[0]),
            (&self.b, &self.a, self.a_ips[0]),
        ] {
            let deadline = Instant::now() + PROBE_EVERY + Duration::from_secs(15);
            loop {
                let before = self.fragments_made();
                let rate = tcp_intact(&self.lab, from, to, to_ip)
                    .unwrap_or_else(|e| panic!("TCP over a path of {mtu}: {e}"));
                let made = self.fragments_made() - before;
                if made <= FRAGMENTS_TOLERATED {
                    eprintln!(
                        "path MTU {mtu}, {} -> {}: TCP {rate:.0} Mbit/s, {made} fragments made (inner path MTU {:?})",
                        from.name,
                        to.name,
                        inner_path_mtu(&self.lab, from, to_ip)
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "path MTU {mtu}: {} -> {}: the routers still fragment ({made} fragments for {TCP_BYTES} bytes)",
                    from.name,
                    to.name
                );
            }
        }
    }

    /// Fragments the routers have made so far (`FragCreates`).
    fn fragments_made(&self) -> u64 {
        self.routers
            .iter()
            .map(|r| {
                let snmp = self
                    .lab
                    .exec(&r.netns, &["cat", "/proc/net/snmp"])
                    .expect("the router's IP counters");
                let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
                let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(n, _)| *n == "FragCreates")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .expect("FragCreates")
            })
            .sum()
    }

    fn set_mtu(&mut self, mtu: u32) {
        for r in &self.routers {
            self.lab.set_mtu(r, mtu).expect("set the link's MTU");
        }
    }

    /// Everything a user relies on, through a path of `mtu` bytes.
    fn check(&mut self, what: &str, mtu: u32) {
        self.set_mtu(mtu);
        let if_mtu = interface_mtu(&self.lab, &self.a);
        for (from, to, to_ip) in [
            (&self.a, &self.b, self.b_ips[0]),
            (&self.b, &self.a, self.a_ips[0]),
        ] {
            full_size_ping(&self.lab, from, to_ip, if_mtu)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}: {e}")));
            let rate = tcp_intact(&self.lab, from, to, to_ip)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}: {e}")));
            let got = udp_full_size(&self.lab, from, to, to_ip, if_mtu)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}: {e}")));
            eprintln!(
                "{what}, path MTU {mtu}, {} -> {}: TCP {rate:.0} Mbit/s, UDP {got}/{UDP_DATAGRAMS} full-size datagrams, inner path MTU {:?}",
                from.name,
                to.name,
                inner_path_mtu(&self.lab, from, to_ip)
            );
            assert!(
                got * 10 >= UDP_DATAGRAMS * 9,
                "{what}, path MTU {mtu}: {got} of {UDP_DATAGRAMS} full-size UDP datagrams arrived"
            );
        }
        // The inner IPv6 too, when the overlay has it.
        if let (Some(a6), Some(b6)) = (
            self.a_ips.iter().find(|i| i.is_ipv6()),
            self.b_ips.iter().find(|i| i.is_ipv6()),
        ) {
            full_size_ping(&self.lab, &self.a, *b6, if_mtu)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}, inner IPv6: {e}")));
            full_size_ping(&self.lab, &self.b, *a6, if_mtu)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}, inner IPv6: {e}")));
            let rate = tcp_intact(&self.lab, &self.a, &self.b, *b6)
                .unwrap_or_else(|e| self.fail(&format!("{what}, path MTU {mtu}, inner IPv6: {e}")));
            eprintln!("{what}, path MTU {mtu}, inner IPv6 a -> b: TCP {rate:.0} Mbit/s");
        }
    }
}

/// The path MTU `from`'s kernel has learnt for overlay address `to` (from
/// an ICMP "fragmentation needed" / "packet too big"), if any.
fn inner_path_mtu(lab: &Lab, from: &Host, to: IpAddr) -> Option<u32> {
    let route = lab
        .exec(&from.netns, &["ip", "route", "get", &to.to_string()])
        .ok()?;
    route
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .find_map(|w| w.parse().ok())
}

/// Pings `to` from `from` with packets of the overlay interface's full
/// size, DF set as ping does by default (the sender's kernel fragments
/// them only once it has learnt a smaller path MTU): three of five must
/// come back within 8 s.
fn full_size_ping(lab: &Lab, from: &Host, to: IpAddr, if_mtu: u32) -> Result<(), String> {
    let header = if to.is_ipv6() { 48 } else { 28 };
    let size = (if_mtu - header).to_string();
    let to = to.to_string();
    let out = lab
        .exec_output(
            &from.netns,
            &[
                "ping", "-n", "-q", "-s", &size, "-c", "5", "-i", "0.2", "-w", "8", &to,
            ],
        )
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" received")?.parse::<u32>().ok())
        .unwrap_or(0);
    if received >= 3 {
        Ok(())
    } else {
        Err(format!(
            "{}-byte pings from {} to {to} were lost: {text}{}",
            if_mtu,
            from.name,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A byte pattern no shift of which repeats within a transfer.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends [`TCP_BYTES`] from `from` to `to` (at overlay address `to_ip`)
/// over TCP and checks every byte; returns the rate in Mbit/s.
fn tcp_intact(lab: &Lab, from: &Host, to: &Host, to_ip: IpAddr) -> Result<f64, String> {
    let _ = lab;
    stream::tcp_intact(
        &from.netns,
        &to.netns,
        to_ip,
        TCP_BYTES as u64,
        TCP_DEADLINE,
    )
    .map(|t| t.mbit_per_s())
    .map_err(|e| format!("TCP from {} to {to_ip}: {e:#}", from.name))
}

/// Sends [`UDP_DATAGRAMS`] datagrams of the overlay interface's full size
/// from `from` to `to`; returns how many arrived intact.
fn udp_full_size(
    lab: &Lab,
    from: &Host,
    to: &Host,
    to_ip: IpAddr,
    if_mtu: u32,
) -> Result<usize, String> {
    let _ = lab;
    let header = if to_ip.is_ipv6() { 48 } else { 28 };
    let size = (if_mtu - header) as usize;
    let rx = in_netns(&to.netns, || {
        Ok(UdpSocket::bind(SocketAddr::new(to_ip, 0))?)
    })
    .map_err(|e| format!("bind on {to_ip}: {e}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(1500)))
        .map_err(|e| e.to_string())?;
    let addr = rx.local_addr().map_err(|e| e.to_string())?;
    let tx = in_netns(&from.netns, || {
        let s = UdpSocket::bind(SocketAddr::new(
            if to_ip.is_ipv6() {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            },
            0,
        ))?;
        s.connect(addr)?;
        Ok(s)
    })
    .map_err(|e| format!("UDP socket on {}: {e}", from.name))?;
    let data = pattern(size + UDP_DATAGRAMS);
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut intact = 0;
        while let Ok(n) = rx.recv(&mut buf) {
            let i = usize::from(buf[0]) + (usize::from(buf[1]) << 8);
            if n == size && i < UDP_DATAGRAMS && buf[2..n] == data[i + 2..i + n] {
                intact += 1;
            }
        }
        intact
    });
    let payload = pattern(size + UDP_DATAGRAMS);
    for i in 0..UDP_DATAGRAMS {
        let mut d = payload[i..i + size].to_vec();
        d[0] = i as u8;
        d[1] = (i >> 8) as u8;
        // A refusal (EMSGSIZE after an ICMP) counts as a loss.
        let _ = tx.send(&d);
        std::thread::sleep(Duration::from_millis(2));
    }
    receiver
        .join()
        .map_err(|_| "UDP receiver panicked".to_string())
}

/// A home host (easy NAT) behind the limited link and a public host: a
/// direct path over IPv4. `extra`: more `wh up` arguments for both.
fn direct_ipv4(extra: &[&str]) -> Pair {
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let (a, router) = lab.home_host("node_a", Nat::Easy).expect("home host");
    let b = lab.public_host("node_b").expect("public host");
    let boot = format!("{boot_pk} {}", boot.ip);
    start_pair(lab, &boot, [a, b], vec![router], extra)
}

/// Starts node_a on `a` and node_b on `b` in one network with bootstrap
/// `boot` ("KEY ENDPOINT"), each with `wh up` arguments `extra`.
fn start_pair(
    mut lab: Lab,
    boot: &str,
    [a, b]: [Host; 2],
    routers: Vec<Host>,
    extra: &[&str],
) -> Pair {
    let (ska, pka) = lab.genkey("node_a").expect("key");
    let (skb, pkb) = lab.genkey("node_b").expect("key");
    let config = lab
        .write(
            "mtu.conf",
            &format!(
                "name mtu\nsubnet 10.0.42.0/24\nboot {boot}\ntrust node_a {pka}\ntrust node_b {pkb}\n"
            ),
        )
        .expect("config");
    lab.wh_up(&a, &config, Some(&ska), extra).expect("a up");
    lab.wh_up(&b, &config, Some(&skb), extra).expect("b up");
    for h in [&a, &b] {
        lab.wait_daemon(h, Duration::from_secs(10))
            .expect("daemon answers");
    }
    let a_ips = overlay_ips(&lab, &b, "node_a");
    let b_ips = overlay_ips(&lab, &a, "node_b");
    assert!(
        a_ips.first().is_some_and(IpAddr::is_ipv4) && b_ips.first().is_some_and(IpAddr::is_ipv4),
        "overlay addresses {a_ips:?} {b_ips:?}"
    );
    Pair {
        lab,
        a,
        b,
        routers,
        a_ips,
        b_ips,
    }
}

#[test]
fn full_size_packets_cross_a_direct_ipv4_path_of_any_mtu() {
    require_lab!();
    let mut pair = direct_ipv4(&WG_MTU);
    pair.wait_path(true, None);
    for mtu in MTUS {
        pair.check("direct over IPv4", mtu);
        // No DF on WireGuard's datagrams, but each node probes the path
        // with one DF packet from its port (dataplane::pmtu): the router's
        // "fragmentation needed" taught its kernel the path MTU, its data
        // plane told its TCP, whose segments now fit the path whole: the
        // router no longer fragments every datagram.
        pair.wait_unfragmented(mtu);
    }
}

#[test]
fn full_size_packets_cross_a_direct_ipv6_path_of_any_mtu() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let (a, router) = lab.home_host("node_a", Nat::Hard).expect("home host");
    lab.home_ipv6(&a, &router).expect("home IPv6");
    let (b, b6) = lab.dual_stack_host("node_b").expect("dual-stack host");
    // a reaches b over IPv6 only (IPv4 to b is cut on a's side).
    lab.cut_ipv4(&a, &b).expect("cut IPv4");
    let boot = format!("{boot_pk} {}", boot.ip);
    let mut pair = start_pair(lab, &boot, [a, b], vec![router], &WG_MTU);
    pair.wait_path(true, Some(&format!("[{b6}]:")));
    for mtu in MTUS {
        pair.check("direct over IPv6", mtu);
        // The kernel learnt the path MTU from the routers' "packet too
        // big"; a's data plane told a's TCP (ICMP "fragmentation needed"
        // through the TUN device), which now sends segments that fit.
        if 1420 + 80 > mtu {
            let inner = inner_path_mtu(&pair.lab, &pair.a, pair.b_ips[0]);
            assert!(
                inner.is_some_and(|m| m <= mtu - 80),
                "path MTU {mtu}: a's TCP to b uses {inner:?}, over {}",
                mtu - 80
            );
        }
    }
}

#[test]
fn full_size_packets_cross_a_relayed_ipv4_path_of_any_mtu() {
    require_lab!();
    // Two hard NATs: relayed; both WAN links get the MTU.
    let (s, _) = scenario(Kind::Behind(Nat::Hard), Kind::Behind(Nat::Hard), 0);
    let lab = s.lab;
    for h in [&s.a, &s.b] {
        lab.wait_daemon(h, Duration::from_secs(10))
            .expect("daemon answers");
    }
    let a_ips = overlay_ips(&lab, &s.b, "node_a");
    let b_ips = overlay_ips(&lab, &s.a, "node_b");
    let mut pair = Pair {
        lab,
        a: s.a,
        b: s.b,
        routers: s.routers,
        a_ips,
        b_ips,
    };
    pair.wait_path(false, None);
    for mtu in MTUS {
        pair.check("relayed over IPv4", mtu);
    }
}

#[test]
fn full_size_packets_cross_a_relayed_ipv6_path_of_any_mtu() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    // Relayed by force, through the only other DHT node, the bootstrap,
    // which the two reach over IPv6 only.
    lab.env.push(("WH_FORCE_RELAY".into(), "1".into()));
    let (boot, boot6) = lab.dual_stack_host("boot").expect("dual-stack host");
    let (boot_sk, boot_pk) = lab.genkey("boot").expect("key");
    let public = lab
        .write("public", "name public\nworkbit 8\n")
        .expect("config");
    lab.wh_up(&boot, &public, Some(&boot_sk), &["mode", "direct"])
        .expect("boot up");
    lab.wait_daemon(&boot, Duration::from_secs(10))
        .expect("boot answers");
    let (a, router) = lab.home_host("node_a", Nat::Hard).expect("home host");
    lab.home_ipv6(&a, &router).expect("home IPv6");
    let (b, _) = lab.dual_stack_host("node_b").expect("dual-stack host");
    for h in [&a, &b] {
        lab.cut_ipv4(h, &boot).expect("cut IPv4");
    }
    let boot = format!("{boot_pk} [{boot6}]");
    let mut pair = start_pair(lab, &boot, [a, b], vec![router], &WG_MTU);
    pair.wait_path(false, None);
    for mtu in MTUS {
        pair.check("relayed over IPv6", mtu);
    }
}

/// wireguard-go (the binary at `bin`) on a and b, configured with `wg`:
/// 10.99.0.1 and 10.99.0.2 on `wgm<n>a` / `wgm<n>b` (names unique on the
/// machine: wireguard-go's control sockets are not per namespace), MTU
/// 1420, a reaching b's public address. Returns the two interface names
/// once a pings b through them (they are deleted on failure).
fn wireguard_go_pair(lab: &Lab, a: &Host, b: &Host, bin: &str) -> Result<[String; 2], String> {
    static PAIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let names = [
        format!("wgm{n}{}a", std::process::id() % 10000),
        format!("wgm{n}{}b", std::process::id() % 10000),
    ];
    let keys: Vec<(String, String)> = (0..2)
        .map(|i| {
            let sk = wirehub_e2e::sh("wg", &["genkey"]).expect("wg genkey");
            let path = lab.dir.join(format!("wg{n}-{i}.key"));
            std::fs::write(&path, sk.trim()).expect("key file");
            let pk = std::process::Command::new("wg")
                .arg("pubkey")
                .stdin(std::fs::File::open(&path).expect("key"))
                .output()
                .expect("wg pubkey");
            (
                path.to_string_lossy().into_owned(),
                String::from_utf8_lossy(&pk.stdout).trim().to_string(),
            )
        })
        .collect();
    let setup = || -> Result<(), String> {
        for (i, host) in [a, b].into_iter().enumerate() {
            let other = 1 - i;
            let dev = names[i].as_str();
            let run = |args: &[&str]| lab.exec(&host.netns, args).map_err(|e| e.to_string());
            run(&[bin, dev])?;
            let allowed = format!("10.99.0.{}/32", other + 1);
            let endpoint = format!("{}:51820", b.ip);
            let mut set = vec![
                "wg",
                "set",
                dev,
                "private-key",
                &keys[i].0,
                "listen-port",
                "51820",
                "peer",
                &keys[other].1,
                "allowed-ips",
                &allowed,
            ];
            if i == 0 {
                set.extend(["endpoint", &endpoint, "persistent-keepalive", "1"]);
            }
            run(&set)?;
            run(&[
                "ip",
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                dev,
            ])?;
            run(&["ip", "link", "set", dev, "mtu", "1420", "up"])?;
        }
        lab.ping_until(a, "10.99.0.2", Duration::from_secs(10))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match setup() {
        Ok(()) => Ok(names),
        Err(e) => {
            delete_links(lab, a, b, &names);
            Err(e)
        }
    }
}

fn delete_links(lab: &Lab, a: &Host, b: &Host, names: &[String; 2]) {
    for (h, dev) in [(a, &names[0]), (b, &names[1])] {
        let _ = lab.exec(&h.netns, &["ip", "link", "del", dev]);
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// The benchmark: iperf3 TCP through the overlay over 1,500- and 1,400-byte
/// paths (a home host behind the limited link, a public host), both
/// directions, beside wireguard-go (Debian's, and the current one when
/// `WG_GO_CURRENT` names it) between the same two hosts. Seconds per flow:
/// `WH_MTU_BENCH_SECS` (default 5); the overlay's interface MTU:
/// `WH_MTU_BENCH_IF_MTU` (default: wh's). Run in release, as root:
/// `cargo test -p wirehub-e2e --release --test mtu -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints figures"]
fn benchmark_tcp_over_1400_and_1500_byte_paths() {
    require_lab!();
    let secs: u32 = std::env::var("WH_MTU_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let if_mtu = std::env::var("WH_MTU_BENCH_IF_MTU").ok();
    let extra: Vec<&str> = match &if_mtu {
        Some(m) => vec!["mtu", m],
        None => vec![],
    };
    let mut pair = direct_ipv4(&extra);
    pair.wait_path(true, None);
    println!(
        "overlay interface MTU {}",
        interface_mtu(&pair.lab, &pair.a)
    );
    let mut wg_go = vec![(
        "wireguard-go (Debian)".to_string(),
        "wireguard-go".to_string(),
    )];
    if let Ok(current) = std::env::var("WG_GO_CURRENT") {
        wg_go.push(("wireguard-go (current)".to_string(), current));
    }
    let b_ip = pair.b_ips[0].to_string();
    let (a, b) = (pair.a.clone(), pair.b.clone());
    // (name, path MTU, a->b, b->a)
    let mut rows: Vec<(String, u32, f64, f64)> = Vec::new();
    for mtu in [1500, 1400] {
        pair.set_mtu(mtu);
        // As on a path that was this small from the start: the nodes'
        // probes have taught their TCP the path (at most PROBE_EVERY).
        pair.wait_unfragmented(mtu);
        let up = pair
            .lab
            .iperf3(&a, &b, &b_ip, secs.into(), false)
            .unwrap_or(0.0);
        let down = pair
            .lab
            .iperf3(&a, &b, &b_ip, secs.into(), true)
            .unwrap_or(0.0);
        rows.push(("wirehub (embedded)".into(), mtu, up, down));
    }
    for (name, bin) in &wg_go {
        pair.set_mtu(1500);
        let links = match wireguard_go_pair(&pair.lab, &a, &b, bin) {
            Ok(links) => links,
            Err(e) => {
                eprintln!("{name}: not measured: {e}");
                continue;
            }
        };
        for mtu in [1500, 1400] {
            pair.set_mtu(mtu);
            let up = pair
                .lab
                .iperf3(&a, &b, "10.99.0.2", secs.into(), false)
                .unwrap_or(0.0);
            let down = pair
                .lab
                .iperf3(&a, &b, "10.99.0.2", secs.into(), true)
                .unwrap_or(0.0);
            rows.push((name.clone(), mtu, up, down));
        }
        delete_links(&pair.lab, &a, &b, &links);
    }
    println!("iperf3 TCP, {secs} s per flow, home host (behind the limited link) <-> public host");
    println!(
        "{:<24} {:>8} {:>14} {:>14}",
        "", "path MTU", "home->public", "public->home"
    );
    for (name, mtu, up, down) in &rows {
        println!("{name:<24} {mtu:>8} {up:>9.0} Mbit/s {down:>9.0} Mbit/s");
    }
    for pair_rows in rows.chunks(2) {
        if let [big, small] = pair_rows {
            let ratio = |s: f64, b: f64| if b > 0.0 { s / b } else { 0.0 };
            println!(
                "{}: 1400 / 1500 = {:.2} (home->public), {:.2} (public->home)",
                big.0,
                ratio(small.2, big.2),
                ratio(small.3, big.3)
            );
        }
    }
}
