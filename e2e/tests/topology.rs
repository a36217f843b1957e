//! Topologies the other lab scenarios never build (they all run a public
//! bootstrap plus two public relays): a network whose only public node is
//! its bootstrap, and the loss of every relay a path uses but one.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};
use wirehub_e2e::nat::peer_line;
use wirehub_e2e::{Host, Lab, Nat, read_invitation, require_lab, sha256, wh_nc};

/// The shape of the original tutorial and of most first networks: one
/// public bootstrap (a plain `wh up`), a node behind an easy NAT and one
/// behind a hard NAT. They reach each other (relayed through the
/// bootstrap, the only public node), both ways, and each knows it is
/// behind a NAT.
#[test]
fn a_lone_public_bootstrap_connects_an_easy_and_a_hard_nat_node() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let net = lab
        .lone_boot_network(&[Nat::Easy, Nat::Hard])
        .expect("network");
    let [a, b] = [net.nodes[0].clone(), net.nodes[1].clone()];
    let start = Instant::now();
    lab.start_all(&net.nodes, &net.keys, &net.config)
        .expect("wh up");
    let report = |lab: &Lab| lab.report(&[&net.boot, &a, &b]);
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("easy to hard: {e}{}", report(&lab)));
    let first = start.elapsed();
    lab.ping_until(&b, "10.0.42.2", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("hard to easy: {e}{}", report(&lab)));
    eprintln!(
        "lone bootstrap, easy NAT to hard NAT: first ping {:.0} ms after wh up; path {}",
        first.as_secs_f64() * 1000.0,
        peer_line(&lab, &a, "node_b")
    );
    for host in [&a, &b] {
        let header = lab.show_header(host);
        assert!(
            header.contains("<NAT"),
            "{} does not know it is behind a NAT: {header}{}",
            host.name,
            report(&lab)
        );
    }
}

/// `wh nc` between an easy NAT and a hard NAT with only a bootstrap to
/// help: 4 MiB arrive intact.
#[test]
fn zero_netcat_pipes_4_mib_with_only_a_bootstrap_to_help() {
    require_lab!();
    const SIZE: u64 = 4 * 1024 * 1024;
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let (alice, _) = lab.home_host("alice", Nat::Easy).expect("alice");
    let (bob, _) = lab.home_host("bob", Nat::Hard).expect("bob");
    let boot_endpoint = format!("{}:62096", boot.ip);
    let boot_args = ["boot", boot_pk.as_str(), boot_endpoint.as_str()];
    let input = lab.dir.join("input.bin");
    let status = std::process::Command::new("head")
        .args(["-c", &SIZE.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&input).expect("file"))
        .status()
        .expect("head");
    assert!(status.success());

    let mut listener = wh_nc(&alice, &boot_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listener");
    let invitation = read_invitation(&mut listener);
    assert!(invitation.len() > 80, "not an invitation: {invitation:?}");
    let output = lab.dir.join("output.bin");
    let start = Instant::now();
    let mut joiner = wh_nc(
        &bob,
        &[
            invitation.as_str(),
            boot_args[0],
            boot_args[1],
            boot_args[2],
        ],
    )
    // Its stdin stays open: closing it would end the pipe.
    .stdin(Stdio::piped())
    .stdout(std::fs::File::create(&output).expect("out"))
    .stderr(Stdio::piped())
    .spawn()
    .expect("joiner");
    let mut stdin = listener.stdin.take().expect("stdin");
    let data = std::fs::read(&input).expect("input");
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = || std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    while received() < SIZE && Instant::now() < deadline {
        if let Ok(Some(status)) = joiner.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = joiner.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "the joiner exited ({status}) after {} bytes: {err}",
                received()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let _ = listener.kill();
    let _ = joiner.kill();
    let _ = listener.wait();
    let _ = joiner.wait();
    let _ = writer.join();
    assert_eq!(received(), SIZE, "the joiner did not receive 4 MiB");
    assert_eq!(
        sha256(&input),
        sha256(&output),
        "the data changed on the way"
    );
    eprintln!(
        "4 MiB through zero-netcat with only a bootstrap, easy NAT to hard NAT, in {elapsed:?}"
    );
}

/// The relay `from` uses towards `peer` (the first of "relayed via ...").
fn relay_in_use<'a>(lab: &Lab, from: &Host, peer: &str, publics: &'a [Host]) -> Option<&'a Host> {
    let line = peer_line(lab, from, peer);
    publics
        .iter()
        .filter_map(|h| {
            let key = lab.public_key_of(h).ok()?;
            line.find(key.get(..10)?).map(|at| (at, h))
        })
        .min_by_key(|(at, _)| *at)
        .map(|(_, h)| h)
}

/// One run: a hard-NAT node and an easy-NAT node relayed through one of
/// three public nodes; after 3 s without traffic the relay in use and a
/// second public node die together. Returns how long after the kill the
/// hard-NAT node's first ping was answered.
fn two_relays_die_while_idle() -> Duration {
    let mut lab = Lab::new().expect("lab");
    let (boot_pk, publics) = lab.public_dht(2).expect("public DHT");
    let (a, _) = lab.home_host("node_a", Nat::Hard).expect("a");
    let (b, _) = lab.home_host("node_b", Nat::Easy).expect("b");
    let (ska, pka) = lab.genkey("node_a").expect("key");
    let (skb, pkb) = lab.genkey("node_b").expect("key");
    let config = lab
        .write(
            "idle.conf",
            &format!(
                "name idle\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n",
                publics[0].ip
            ),
        )
        .expect("config");
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("a up");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("b up");
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    lab.ping_until(&b, "10.0.42.2", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    // Settled: both publish their relays.
    std::thread::sleep(Duration::from_secs(2));
    let victim = relay_in_use(&lab, &a, "node_b", &publics)
        .unwrap_or_else(|| panic!("no relay in use: {}", peer_line(&lab, &a, "node_b")))
        .clone();
    let second = publics
        .iter()
        .find(|h| h.name != victim.name)
        .expect("another public node")
        .clone();
    // Idle: no traffic between the two for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    lab.kill_daemon(&victim, "-KILL")
        .expect("kill the relay in use");
    lab.kill_daemon(&second, "-KILL")
        .expect("kill a second public node");
    match lab.ping_until(&a, "10.0.42.3", Duration::from_secs(15)) {
        Ok(_) => killed.elapsed(),
        Err(e) => panic!(
            "{e} after {} and {} died{}",
            victim.name,
            second.name,
            lab.report(&[&a, &b])
        ),
    }
}

/// Percentile of sorted durations, in ms.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn idle_relay_loss(runs: usize) {
    let mut times: Vec<Duration> = (0..runs).map(|_| two_relays_die_while_idle()).collect();
    times.sort();
    eprintln!(
        "relay in use + a second public node killed while idle, {runs} runs: first answer after p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (all: {:?})",
        pct(&times, 0.5),
        pct(&times, 0.95),
        pct(&times, 1.0),
        times.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    let worst = times.last().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(3),
        "data flowed again only {worst:?} after the relays died"
    );
}

/// Two of the three public nodes die at once (one of them the relay in
/// use) while the path is idle: data flows again within 3 s.
#[test]
fn losing_the_relay_in_use_and_another_public_node_while_idle_recovers_within_3s() {
    require_lab!();
    idle_relay_loss(2);
}

/// The same, 20 fresh labs (about 4 minutes): the figures of docs/nat.md.
#[test]
#[ignore = "20 labs; run with --ignored for the figures"]
fn losing_two_relays_while_idle_20_runs() {
    require_lab!();
    idle_relay_loss(20);
}

/// Peers `wh show` on `host` lists with a direct path (● or ◒).
fn direct_peers(lab: &Lab, host: &Host) -> usize {
    lab.wh(host, &["show"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with('●') || l.starts_with('◒'))
                .count()
        })
        .unwrap_or(0)
}

/// The kernel's neighbour (ARP) table is one for all network namespaces:
/// its limit (`gc_thresh3`, 1,024 entries by default) counts the entries
/// of every namespace together. The lab's hosts share one flat Ethernet, so
/// a fleet whose nodes all talk to each other needs about N² entries (2,550
/// for fifty nodes and a bootstrap); beyond the limit a send finds no room
/// for its neighbour entry and the kernel drops the datagram, counts it as
/// the socket's `SndbufErrors` and tells the sender it went. Real hosts
/// each have their own table (and a router as their one neighbour).
/// Raised while a fleet test runs, restored after, also on failure.
struct RoomyNeighbourTable {
    saved: Vec<(&'static str, String)>,
}

const NEIGHBOUR_LIMITS: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", "8192"),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", "16384"),
];

impl RoomyNeighbourTable {
    fn new() -> RoomyNeighbourTable {
        let mut saved = Vec::new();
        for (path, value) in NEIGHBOUR_LIMITS {
            let Ok(old) = std::fs::read_to_string(path) else {
                continue;
            };
            // Never lower a limit someone raised further.
            let old_n: u64 = old.trim().parse().unwrap_or(0);
            let new_n: u64 = value.parse().unwrap_or(0);
            if old_n < new_n && std::fs::write(path, value).is_ok() {
                saved.push((path, old.trim().to_string()));
            }
        }
        RoomyNeighbourTable { saved }
    }
}

impl Drop for RoomyNeighbourTable {
    fn drop(&mut self) {
        for (path, old) in self.saved.iter().rev() {
            let _ = std::fs::write(path, old);
        }
    }
}

/// Sum over CPUs of the kernel's neighbour-table-full events
/// (`/proc/net/stat/arp_cache`, column `table_fulls`).
fn neighbour_table_fulls() -> u64 {
    let text = std::fs::read_to_string("/proc/net/stat/arp_cache").unwrap_or_default();
    let mut lines = text.lines();
    let column = lines
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == "table_fulls"));
    let Some(column) = column else { return 0 };
    lines
        .filter_map(|l| l.split_whitespace().nth(column))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

/// The kernel's UDP counters in `host`'s namespace (the `Udp:` lines of
/// `/proc/net/snmp`).
fn udp_counters(lab: &Lab, host: &Host) -> String {
    lab.exec(&host.netns, &["cat", "/proc/net/snmp"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `wh inspect`'s counters on `host`: DHT, codec, drops by reason.
fn inspect_counters(lab: &Lab, host: &Host) -> String {
    let i = lab
        .wh_ok(host, &["show", "interfaces"])
        .unwrap_or_default()
        .trim()
        .to_string();
    serde_json::from_str::<serde_json::Value>(
        &lab.wh_ok(host, &["inspect", &i]).unwrap_or_default(),
    )
    .map(|v| {
        format!(
            "dht {} codec {} drops {}",
            v["dht_counters"], v["codec"], v["drops"]
        )
    })
    .unwrap_or_default()
}

/// `n` nodes of one network and a bootstrap, all on public addresses,
/// started at once (a fleet reboot, a DaemonSet rollout): every node finds
/// every other within `within`. Returns how long it took.
fn fleet_started_at_once(n: usize, within: Duration) -> Duration {
    let _neighbours = RoomyNeighbourTable::new();
    let fulls_before = neighbour_table_fulls();
    let mut lab = Lab::new().expect("lab");
    let start = Instant::now();
    let net = lab.trusted_network(n, &[]).expect("network");
    let mut missing = Vec::new();
    // The kernel's counters and the daemons': where datagrams went.
    let counters = |lab: &Lab| {
        format!(
            "--- node_a UDP:\n{}\n--- boot UDP:\n{}\n--- neighbour table full (whole kernel, this run): {}\n--- node_a inspect: {}\n--- boot inspect: {}",
            udp_counters(lab, &net.nodes[0]),
            udp_counters(lab, &net.boot),
            neighbour_table_fulls().saturating_sub(fulls_before),
            inspect_counters(lab, &net.nodes[0]),
            inspect_counters(lab, &net.boot),
        )
    };
    while start.elapsed() < within {
        missing = net
            .nodes
            .iter()
            .map(|h| (h, direct_peers(&lab, h)))
            .filter(|(_, found)| *found < n - 1)
            .map(|(h, found)| format!("{} found {found} of {}", h.name, n - 1))
            .collect();
        if missing.is_empty() {
            let took = start.elapsed();
            eprintln!("{}", counters(&lab));
            return took;
        }
        // Each round runs `wh show` on every node: not too often, or the
        // test itself loads the machine.
        std::thread::sleep(Duration::from_secs(5));
    }
    let boot = lab
        .wh(&net.boot, &["show", "all"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    panic!(
        "{} of {n} nodes did not find all the others within {within:?}:\n{}\n--- boot:\n{boot}\n{}{}",
        missing.len(),
        missing.join("\n"),
        counters(&lab),
        lab.report(&[&net.nodes[0]])
    );
}

/// Twenty nodes and a bootstrap started at once find each other.
#[test]
fn twenty_nodes_started_at_once_all_find_each_other() {
    require_lab!();
    let took = fleet_started_at_once(20, Duration::from_secs(60));
    eprintln!("20 nodes started at once: all found each other {took:?} after the first wh up");
}

/// Fifty nodes and a bootstrap started at once on this 2-core machine (a
/// storm): once it passes, every node finds every other.
#[test]
#[ignore = "51 daemons; run with --ignored"]
fn fifty_nodes_started_at_once_all_find_each_other() {
    require_lab!();
    let took = fleet_started_at_once(50, Duration::from_secs(240));
    eprintln!("50 nodes started at once: all found each other {took:?} after the first wh up");
}

/// Every node behind a NAT, the bootstrap the only public node: once the
/// nodes have met and punched direct paths, the bootstrap dies for good
/// and every pair keeps exchanging data (over its direct path, which
/// needs no bootstrap), checked right after the kill and 15 s later.
#[test]
fn nodes_behind_nats_keep_every_pair_working_after_their_lone_bootstrap_dies() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let net = lab
        .lone_boot_network(&[Nat::Easy, Nat::Easy, Nat::Upnp])
        .expect("network");
    lab.start_all(&net.nodes, &net.keys, &net.config)
        .expect("wh up");
    let peers = net.nodes.len() - 1;
    let hosts: Vec<&Host> = std::iter::once(&net.boot).chain(&net.nodes).collect();
    let all_direct = |lab: &Lab| net.nodes.iter().all(|h| direct_peers(lab, h) == peers);
    let deadline = Instant::now() + wirehub_e2e::patience(Duration::from_secs(30));
    while !all_direct(&lab) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not all get direct paths to each other{}",
            lab.report(&hosts)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.kill_daemon(&net.boot, "-KILL")
        .expect("kill the bootstrap");
    let killed = Instant::now();
    let every_pair_answers = |lab: &Lab, when: &str| {
        for (i, from) in net.nodes.iter().enumerate() {
            for j in (0..net.nodes.len()).filter(|j| *j != i) {
                let to = format!("10.0.42.{}", j + 2);
                lab.ping_until(from, &to, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("{when}: {e}{}", lab.report(&hosts)));
            }
        }
    };
    every_pair_answers(&lab, "right after the bootstrap died");
    std::thread::sleep(Duration::from_secs(15).saturating_sub(killed.elapsed()));
    every_pair_answers(&lab, "15 s after the bootstrap died");
    assert!(
        all_direct(&lab),
        "a direct path was lost without the bootstrap{}",
        lab.report(&hosts)
    );
}
