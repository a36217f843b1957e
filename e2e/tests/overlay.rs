//! The first end-to-end scenarios: a bootstrap node and trusted nodes on
//! public addresses, in real network namespaces, with real `wh` daemons.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, TrustedNetwork, require_lab};

struct Net {
    lab: Lab,
    boot: Host,
    nodes: Vec<Host>,
    keys: Vec<(std::path::PathBuf, String)>,
    config: std::path::PathBuf,
}

const NAMES: [&str; 4] = ["node_a", "node_b", "node_c", "node_d"];

/// A bootstrap node and `n` trusted nodes, all up.
fn network(n: usize) -> Net {
    network_with(n, &[])
}

/// Like [`network`], with extra `wh up` arguments for some nodes (by index).
fn network_with(n: usize, extra: &[(usize, &[&str])]) -> Net {
    let mut lab = Lab::new().expect("lab");
    let TrustedNetwork {
        boot,
        nodes,
        keys,
        config,
    } = lab.trusted_network(n, extra).expect("trusted network");
    Net {
        lab,
        boot,
        nodes,
        keys,
        config,
    }
}

/// [`network`] once node_a pings node_b; returns node_a and node_b too.
fn network_pinging(n: usize) -> (Net, Host, Host) {
    let net = network(n);
    let (a, b) = (net.nodes[0].clone(), net.nodes[1].clone());
    net.lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(10))
        .expect("a pings b");
    (net, a, b)
}

fn overlay_ips(lab: &Lab, host: &Host, name: &str) -> Vec<String> {
    let out = lab.wh_ok(host, &["resolve", name]).expect("resolve");
    out.lines().map(str::to_string).collect()
}

#[test]
fn three_nodes_ping_each_other_on_ipv4_and_ipv6_within_5s() {
    require_lab!();
    let start = Instant::now();
    let net = network(3);
    let lab = &net.lab;
    for (i, a) in net.nodes.iter().enumerate() {
        for (j, _) in net.nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let ips = overlay_ips(lab, a, NAMES[j]);
            assert_eq!(ips.len(), 2, "{ips:?}");
            assert_eq!(ips[0], format!("10.0.42.{}", j + 2));
            for ip in &ips {
                let left = Duration::from_secs(5)
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_secs(1));
                if let Err(e) = lab.ping_until(a, ip, left.max(Duration::from_secs(5))) {
                    panic!("{e}\n--- {} log:\n{}", a.name, lab.log(a));
                }
            }
        }
    }
    eprintln!(
        "all pairs pinged {:?} after the first wh up",
        start.elapsed()
    );
    let show = lab.wh_ok(&net.nodes[0], &["show"]).expect("show");
    assert!(show.contains("interface wh-"), "{show}");
    assert!(show.contains("network lab, node node_a"), "{show}");
    for name in &NAMES[1..3] {
        let line = show.lines().find(|l| l.contains(name)).unwrap_or_default();
        assert!(line.starts_with('●'), "{name} is not direct: {show}");
    }
    let _ = &net.boot;
}

#[test]
fn reload_adds_a_node_without_losing_a_packet() {
    require_lab!();
    let (mut net, a, b) = network_pinging(3);
    // A ping running between two old nodes during the whole reload.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.netns,
            "ping",
            "-n",
            "-q",
            "-i",
            "0.1",
            "-c",
            "40",
            "10.0.42.3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let d = net.lab.public_host("node_d").expect("host d");
    net.keys.push(net.lab.genkey("node_d").expect("key d"));
    let boot_line = std::fs::read_to_string(&net.config).expect("config");
    let boot_line = boot_line.lines().nth(2).expect("boot line").to_string();
    let mut text = format!("name lab\nsubnet 10.0.42.0/24\n{boot_line}\n");
    for (i, (_, pk)) in net.keys.iter().enumerate() {
        text += &format!("trust {} {pk}\n", NAMES[i]);
    }
    std::fs::write(&net.config, text).expect("write config");
    let d_sk = net.keys[3].0.clone();
    let config = net.config.clone();
    net.lab.wh_up(&d, &config, Some(&d_sk), &[]).expect("d up");
    net.lab
        .wait_daemon(&d, Duration::from_secs(10))
        .expect("d answers");
    for host in &net.nodes {
        let out = net
            .lab
            .wh_ok(host, &["reload", &iface(&net.lab, host)])
            .expect("reload");
        assert!(out.contains("1 peer(s) added (node_d)"), "{out}");
    }
    net.lab
        .ping_until(&a, "10.0.42.5", Duration::from_secs(10))
        .expect("a pings d");
    net.lab
        .ping_until(&d, "10.0.42.3", Duration::from_secs(10))
        .expect("d pings b");
    let out = pinger.wait_with_output().expect("ping result");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("40 packets transmitted, 40 received"),
        "ping during reload lost packets: {text}"
    );
    let _ = b;
}

fn iface(lab: &Lab, host: &Host) -> String {
    lab.wh_ok(host, &["show", "interfaces"])
        .expect("interfaces")
        .lines()
        .next()
        .expect("one interface")
        .to_string()
}

/// Public hosts node_a and node_b, each with its key (secret key file,
/// public key).
fn public_pair(lab: &mut Lab) -> [(Host, PathBuf, String); 2] {
    ["node_a", "node_b"].map(|name| {
        let host = lab.public_host(name).expect("host");
        let (sk, pk) = lab.genkey(name).expect("key");
        (host, sk, pk)
    })
}

/// Two dual-stack hosts whose IPv4 traffic to each other is cut, and an
/// IPv4-only boot node: `node_a` and `node_b` find each other through the
/// DHT (each record lists the host's global IPv6 address) and talk
/// directly over IPv6.
fn ipv6_only_between(lab: &mut Lab) -> [(Host, PathBuf, String, String); 2] {
    let [a, b] = ["node_a", "node_b"].map(|name| {
        let (host, ip6) = lab.dual_stack_host(name).expect("host");
        let (sk, pk) = lab.genkey(name).expect("key");
        (host, sk, pk, ip6)
    });
    lab.cut_ipv4(&a.0, &b.0).expect("nft");
    [a, b]
}

#[test]
fn dual_stack_nodes_find_each_other_and_talk_over_ipv6() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let [(a, ska, pka, _), (b, skb, pkb, b6)] = ipv6_only_between(&mut lab);
    let config = lab
        .write(
            "v6.conf",
            &format!(
                "name v6\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n",
                boot.ip
            ),
        )
        .expect("config");
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("up a");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("up b");
    let took = lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    eprintln!("a pings b over IPv6 {took:?} after wh up");
    let lookup = lab
        .wh_ok(&a, &["lookup", &iface(&lab, &a), "node_b"])
        .expect("lookup");
    assert!(
        lookup.contains(&b6),
        "b's record lacks its IPv6 address: {lookup}"
    );
    let show = lab.wh_ok(&a, &["show"]).expect("show");
    let line = show
        .lines()
        .find(|l| l.contains("node_b"))
        .unwrap_or_default();
    assert!(
        line.starts_with('●') && line.contains(&format!("[{b6}]:")),
        "node_b is not direct over IPv6: {show}"
    );
}

/// The same cut, no DHT: each lists the other at an IPv6 literal.
#[test]
fn a_static_ipv6_endpoint_is_reached() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let [(a, ska, pka, a6), (b, skb, pkb, b6)] = ipv6_only_between(&mut lab);
    let config = lab
        .write(
            "v6.conf",
            &format!(
                "name v6\nsubnet 10.0.42.0/24\ntrust node_a {pka} [{a6}]:62096\ntrust node_b {pkb} [{b6}]:62096\n"
            ),
        )
        .expect("config");
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("up a");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("up b");
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
}

/// Two nodes that list each other's endpoint (and no boot node) and start
/// while they cannot reach each other find each other once they can: a
/// node that knows nobody pings the static endpoints again.
#[test]
fn nodes_that_start_apart_find_each_other_through_static_endpoints() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let [(a, ska, pka), (b, skb, pkb)] = public_pair(&mut lab);
    let config = lab
        .write(
            "pair.conf",
            &format!(
                "name pair\nsubnet 10.0.42.0/24\ntrust node_a {pka} {}\ntrust node_b {pkb} {}\n",
                a.ip, b.ip
            ),
        )
        .expect("config");
    // Nothing passes between a and b while both start.
    lab.cut_ipv4(&a, &b).expect("nft");
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("up a");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("up b");
    for host in [&a, &b] {
        lab.wait_daemon(host, Duration::from_secs(10))
            .expect("daemon");
    }
    // Alone, both ping the other's endpoint again (3 s after their start,
    // then 6 s later, ...), in vain while the cut lasts.
    lab.wait_log(
        &a,
        "pinging the static endpoints again",
        Duration::from_secs(10),
    )
    .expect("a pings again");
    assert!(
        lab.ping_until(&a, "10.0.42.3", Duration::from_secs(1))
            .is_err(),
        "a reaches b through the cut"
    );
    lab.exec(&a.netns, &["nft", "delete table inet whcut"])
        .expect("nft");
    let mended = Instant::now();
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    eprintln!("a pings b {:?} after the cut is mended", mended.elapsed());
}

/// Without any DHT, a node that reloads its file with a new peer and that
/// peer's static endpoint reaches it at once: the reload pings the endpoint.
#[test]
fn reload_pings_the_static_endpoint_of_a_new_peer() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let [(a, ska, pka), (b, skb, pkb)] = public_pair(&mut lab);
    // b trusts a but knows no endpoint of it; a does not know b yet.
    let only_a = lab
        .write(
            "a.conf",
            &format!("name pair\nsubnet 10.0.42.0/24\ntrust node_a {pka}\n"),
        )
        .expect("a config");
    let both = format!(
        "name pair\nsubnet 10.0.42.0/24\ntrust node_a {pka}\ntrust node_b {pkb} {}\n",
        b.ip
    );
    let b_conf = lab.write("b.conf", &both).expect("b config");
    lab.wh_up(&a, &only_a, Some(&ska), &[]).expect("a up");
    lab.wh_up(&b, &b_conf, Some(&skb), &[]).expect("b up");
    lab.wait_daemon(&a, Duration::from_secs(10))
        .expect("a answers");
    lab.wait_daemon(&b, Duration::from_secs(10))
        .expect("b answers");
    std::fs::write(&only_a, &both).expect("rewrite a's file");
    let i = iface(&lab, &a);
    lab.wh_ok(&a, &["reload", &i]).expect("reload");
    let t = lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n--- a:\n{}", lab.log(&a)));
    eprintln!("first ping {t:?} after the reload");
}

#[test]
fn reload_with_errors_or_renumbering_changes_nothing() {
    require_lab!();
    let net = network(2);
    let a = &net.nodes[0];
    let i = iface(&net.lab, a);
    let good = std::fs::read_to_string(&net.config).expect("config");
    std::fs::write(&net.config, format!("{good}trust broken abc\n")).expect("write");
    let out = net.lab.wh(a, &["reload", &i]).expect("reload");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":6:") && err.contains("nothing was changed"),
        "{err}"
    );
    // Swap node_a and node_b: both would be renumbered.
    let swapped: String = good
        .replace("trust node_a", "trust node_x")
        .replace("trust node_b", "trust node_a")
        .replace("trust node_x", "trust node_b");
    let lines: Vec<&str> = swapped.lines().collect();
    let renumbered = format!(
        "{}\n{}\n{}\n{}\n{}\n",
        lines[0], lines[1], lines[2], lines[4], lines[3]
    );
    std::fs::write(&net.config, renumbered).expect("write");
    let out = net.lab.wh(a, &["reload", &i]).expect("reload");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("would move from 10.0.42.2 to 10.0.42.3"),
        "{err}"
    );
    net.lab
        .ping_until(a, "10.0.42.3", Duration::from_secs(10))
        .expect("network still runs");
}

#[test]
fn an_untrusted_node_cannot_reach_the_overlay() {
    require_lab!();
    let mut net = network(2);
    let intruder = net.lab.public_host("evil").expect("host");
    let (sk, pk) = net.lab.genkey("evil").expect("key");
    // The intruder's own file trusts itself; nobody else's does.
    let mut text = std::fs::read_to_string(&net.config).expect("config");
    text += &format!("trust evil {pk}\n");
    let evil_config = net.lab.write("evil.conf", &text).expect("write");
    net.lab
        .wh_up(&intruder, &evil_config, Some(&sk), &[])
        .expect("up");
    net.lab
        .wait_daemon(&intruder, Duration::from_secs(10))
        .expect("answers");
    net.lab
        .ping_until(&net.nodes[0], "10.0.42.3", Duration::from_secs(10))
        .expect("a pings b");
    assert!(
        net.lab
            .ping_until(&intruder, "10.0.42.2", Duration::from_secs(4))
            .is_err(),
        "the intruder reached node_a"
    );
    let show = net.lab.wh_ok(&net.nodes[0], &["show"]).expect("show");
    assert!(
        !show.contains("evil") && !show.contains(&pk[..10]),
        "{show}"
    );
    let inspect = net
        .lab
        .wh_ok(&net.nodes[0], &["inspect", &iface(&net.lab, &net.nodes[0])])
        .expect("inspect");
    // The intruder may be a DHT neighbour, but never a WireGuard peer.
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    let peers = v["status"]["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "{inspect}");
    assert!(
        peers.iter().all(|p| p["key"] != pk.as_str()),
        "node_a trusts the intruder: {inspect}"
    );
    let wg = v["wireguard_peers"].as_array().expect("wireguard peers");
    assert!(
        wg.iter().all(|p| p != pk.as_str()),
        "node_a's data plane has the intruder: {inspect}"
    );
}

#[test]
fn down_leaves_nothing_and_a_killed_daemon_comes_back() {
    require_lab!();
    let (mut net, a, b) = network_pinging(2);
    // SIGKILL b, start it again: tunnels are back within 5 s.
    net.lab.kill_daemon(&b, "-KILL").expect("kill");
    let (sk, config) = (net.keys[1].0.clone(), net.config.clone());
    let restart = Instant::now();
    net.lab.wh_up(&b, &config, Some(&sk), &[]).expect("restart");
    if let Err(e) = net.lab.ping_until(&a, "10.0.42.3", Duration::from_secs(5)) {
        panic!("{e}{}", net.lab.report(&[&a, &b]));
    }
    eprintln!("back {:?} after restart", restart.elapsed());
    // Kernel WireGuard carries the ping before the new daemon answers (it
    // adopts the running interface): ask it only once it does.
    net.lab
        .wait_daemon(&b, Duration::from_secs(10))
        .expect("b's daemon answers");
    // wh down removes interface, socket and process.
    let i = iface(&net.lab, &b);
    net.lab.wh_ok(&b, &["down", &i]).expect("down");
    std::thread::sleep(Duration::from_millis(500));
    let links = net
        .lab
        .exec(&b.netns, &["ip", "-o", "link"])
        .expect("links");
    assert!(!links.contains(&i), "{links}");
    let routes = net.lab.exec(&b.netns, &["ip", "route"]).expect("routes");
    assert!(!routes.contains("10.0.42"), "{routes}");
    assert!(!b.run_dir.join(format!("{i}.sock")).exists());
    net.lab.wait_exit(&b, Duration::from_secs(5));
    let pids = wirehub_e2e::sh("ip", &["netns", "pids", &b.netns]).unwrap_or_default();
    assert!(pids.trim().is_empty(), "processes left: {pids}");
}

#[test]
fn background_up_returns_and_down_stops_it() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let host = lab.public_host("solo").expect("host");
    let (sk, pk) = lab.genkey("solo").expect("key");
    let config = lab
        .write(
            "solo.conf",
            &format!("name solo\nsubnet 10.9.0.0/24\ntrust me {pk}\n"),
        )
        .expect("config");
    let out = lab
        .wh_ok(
            &host,
            &[
                "up",
                &config.to_string_lossy(),
                "private-key",
                &sk.to_string_lossy(),
            ],
        )
        .expect("up");
    let i = out.trim().to_string();
    assert_eq!(i, format!("wh-{}", &pk[..8]));
    let show = lab.wh_ok(&host, &["show"]).expect("show");
    assert!(show.contains("network solo, node me"), "{show}");
    lab.wh_ok(&host, &["down", &i]).expect("down");
    let start = Instant::now();
    while lab
        .wh(&host, &["show", &i])
        .map(|o| o.status.success())
        .unwrap_or(false)
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!lab.wh(&host, &["show", &i]).expect("show").status.success());
    let _ = lab.kill_daemon(&host, "-TERM");
}

#[test]
fn a_flood_of_random_datagrams_is_dropped_and_counted() {
    require_lab!();
    let (mut net, a, b) = network_pinging(2);
    let attacker = net.lab.public_host("flood").expect("host");
    let script = format!(
        "import os, socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)\n\
         for i in range(100000):\n\
         \x20   if i % 50 == 0: time.sleep(0.002)\n\
         \x20   n = (i * 7919) % 1400 + 1\n\
         \x20   kind = i % 4\n\
         \x20   head = [b'\\xff\\x01', bytes([1 + i % 4]), b'', b'\\x00'][kind]\n\
         \x20   s.sendto(head + os.urandom(n), ('{}', 62096))\n",
        b.ip
    );
    let path = net.lab.write("flood.py", &script).expect("script");
    let start = Instant::now();
    net.lab
        .exec(&attacker.netns, &["python3", &path.to_string_lossy()])
        .expect("flood");
    eprintln!("sent 100000 datagrams in {:?}", start.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let i = iface(&net.lab, &b);
    let inspect = net
        .lab
        .wh_ok(&b, &["inspect", &i])
        .expect("the daemon still answers");
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    let codec_drops = v["codec"]["dropped"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum::<u64>());
    let daemon_drops = v["drops"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum::<u64>());
    let wg_drops = v["dataplane"]["dropped"].as_u64().unwrap_or(0);
    eprintln!(
        "dropped: codec {codec_drops}, daemon {daemon_drops}, wireguard {wg_drops}: {}",
        v["codec"]
    );
    assert!(
        codec_drops >= 20_000,
        "control drops not counted: {inspect}"
    );
    // Where kernel WireGuard owns the port, only WireHub's datagrams (first
    // byte >= 0xFC: a quarter of the flood and a few random ones) reach the
    // daemon; the kernel drops the rest itself and counts nothing.
    if v["dataplane"]["wireguard_owns_port"].as_bool() != Some(true) {
        assert!(
            codec_drops + daemon_drops + wg_drops >= 80_000,
            "drops not counted: {inspect}"
        );
    }
    // Still alive, memory bounded, tunnels still up.
    let pids = wirehub_e2e::sh("ip", &["netns", "pids", &b.netns]).expect("pids");
    for pid in pids.split_whitespace() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !status.contains("Name:\twh") {
            continue;
        }
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        eprintln!("daemon RSS after the flood: {rss_kb} KiB");
        assert!(
            rss_kb < 128 * 1024,
            "daemon RSS {rss_kb} KiB after the flood"
        );
    }
    net.lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(5))
        .expect("a still pings b");
    net.lab.kill_daemon(&attacker, "-TERM").ok();
}

/// [`network_with`] `n` nodes, node `userspace` running wireguard-go;
/// `None` (the test skips) where wireguard-go is not installed.
fn network_with_wireguard_go(n: usize, userspace: usize) -> Option<Net> {
    let missing = std::process::Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err();
    if missing {
        eprintln!("skipped: wireguard-go is not installed");
        return None;
    }
    Some(network_with(n, &[(userspace, &["backend", "userspace"])]))
}

/// Hides a wireguard-go's configuration socket (it then refuses every
/// change) and puts it back when dropped.
struct HiddenUapi {
    socket: PathBuf,
    hidden: PathBuf,
}

impl HiddenUapi {
    fn hide(iface: &str) -> HiddenUapi {
        let socket = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        let hidden = socket.with_extension("hidden");
        std::fs::rename(&socket, &hidden).expect("hide the UAPI socket");
        HiddenUapi { socket, hidden }
    }
}

impl Drop for HiddenUapi {
    fn drop(&mut self) {
        if let Err(e) = std::fs::rename(&self.hidden, &self.socket) {
            eprintln!("cannot put the UAPI socket back: {e}");
        }
    }
}

/// A change the WireGuard refused (its configuration socket failed) is not
/// lost: the daemon programs the peer again once the WireGuard answers.
#[test]
fn a_peer_wireguard_go_refused_is_programmed_once_it_answers() {
    require_lab!();
    let Some(mut net) = network_with_wireguard_go(2, 1) else {
        return;
    };
    let (a, b) = (net.nodes[0].clone(), net.nodes[1].clone());
    net.lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(10))
        .expect("a pings b");
    let hidden = HiddenUapi::hide(&iface(&net.lab, &b));
    // a goes away: b drops it; a comes back: b cannot program it.
    net.lab.kill_daemon(&a, "-KILL").expect("kill a");
    net.lab
        .wait_log(&b, "path: none", Duration::from_secs(15))
        .expect("b drops a");
    let (sk, config) = (net.keys[0].0.clone(), net.config.clone());
    net.lab
        .wh_up(&a, &config, Some(&sk), &[])
        .expect("restart a");
    net.lab
        .wait_log(&b, "cannot program the peer", Duration::from_secs(15))
        .expect("b cannot program a");
    assert!(
        net.lab
            .ping_until(&a, "10.0.42.3", Duration::from_secs(2))
            .is_err(),
        "a pings b while b's WireGuard refuses it"
    );
    drop(hidden);
    // Programmed within a second; the handshake then waits for a's next
    // WireGuard retry (every 5 s).
    let back = net
        .lab
        .ping_until(&a, "10.0.42.3", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}{}", net.lab.report(&[&a, &b])));
    eprintln!("a pings b {back:?} after b's WireGuard answers again");
}

#[test]
fn a_wireguard_go_node_talks_to_embedded_nodes() {
    require_lab!();
    let Some(net) = network_with_wireguard_go(3, 2) else {
        return;
    };
    let lab = &net.lab;
    let show = lab.wh_ok(&net.nodes[2], &["show"]).expect("show");
    assert!(
        show.contains("userspace"),
        "node_c does not run wireguard-go: {show}"
    );
    for (from, to) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        let ip = format!("10.0.42.{}", to + 2);
        if let Err(e) = lab.ping_until(&net.nodes[from], &ip, Duration::from_secs(10)) {
            let c = &net.nodes[2];
            let wg = lab
                .exec(&c.netns, &["wg", "show", &iface(lab, c), "dump"])
                .unwrap_or_default();
            panic!(
                "{e}{}\n--- wireguard-go on node_c (wg show dump):\n{wg}",
                lab.report(&[&net.nodes[from], &net.nodes[to]])
            );
        }
    }
    // wireguard-go itself reports the handshakes (through `wg`).
    let i = iface(lab, &net.nodes[2]);
    let inspect = lab
        .wh_ok(&net.nodes[2], &["inspect", &i])
        .unwrap_or_default();
    let resets = serde_json::from_str::<serde_json::Value>(&inspect)
        .ok()
        .and_then(|v| v["dataplane"]["wireguard_session_resets"].as_u64());
    eprintln!("node_c's broken sessions reset: {resets:?}");
    let wg = lab
        .exec(
            &net.nodes[2].netns,
            &["wg", "show", &i, "latest-handshakes"],
        )
        .expect("wg show");
    let handshakes = wg
        .lines()
        .filter(|l| !l.trim_end().ends_with("\t0"))
        .count();
    assert_eq!(handshakes, 2, "{wg}");
}

#[test]
fn routers_route_their_subnets_and_write_the_cni_configuration() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let a = lab.public_host("node_a").expect("a");
    let b = lab.public_host("node_b").expect("b");
    let (cni_a, _) = lab
        .router_pair(&boot_pk, &boot.ip, &a, &b)
        .expect("routers up");
    lab.wait_daemon(&a, Duration::from_secs(10))
        .expect("a answers");
    // A "pod" address on node_a, reached from node_b through the overlay.
    lab.exec(
        &a.netns,
        &["ip", "addr", "add", "10.244.1.7/32", "dev", "lo"],
    )
    .expect("addr");
    lab.ping_until(&b, "10.244.1.7", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log(&b)));
    let routes = lab.exec(&b.netns, &["ip", "route"]).expect("routes");
    assert!(routes.contains("10.244.1.0/24 dev wh-"), "{routes}");
    let conf_path = cni_a.join("10-wirehub.conflist");
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conf_path).expect("conflist"))
            .expect("json");
    let plugin = &conf["plugins"][0];
    assert_eq!(plugin["type"], "wirehub-cni");
    assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(
        plugin["podSubnet"],
        serde_json::json!(["10.244.1.0/24", "10.244.2.0/24"])
    );
    assert_eq!(plugin["overlaySubnet"], "10.0.42.0/24");
    let i = iface(&lab, &a);
    lab.wh_ok(&a, &["down", &i]).expect("down");
    let start = Instant::now();
    while conf_path.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !conf_path.exists(),
        "the CNI configuration is left after wh down"
    );
}
