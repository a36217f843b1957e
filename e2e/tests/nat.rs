//! Through NATs: every pair of host kinds (public, easy NAT, hard NAT, easy
//! NAT with UPnP), with a public bootstrap and two public relays, each in its
//! own lab; and the faults a NAT path must survive.

use std::time::{Duration, Instant};
use wirehub_e2e::nat::{
    KINDS, Kind, Scenario, is_direct, path_glyph, peer_line, scenario, wait_detected, wait_direct,
};
use wirehub_e2e::{Host, Lab, Nat, require_lab};

fn expected_direct(a: Kind, b: Kind) -> bool {
    // A hard NAT meets a hard or an easy NAT: relayed. Everything else: direct.
    let hard = Kind::Behind(Nat::Hard);
    let easy = Kind::Behind(Nat::Easy);
    let relayed = (a == hard || b == hard) && (a == easy || b == easy || a == b);
    !relayed
}

#[test]
fn nat_grid_every_pair_pings_on_the_expected_path() {
    require_lab!();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (i, ka) in KINDS.iter().enumerate() {
        for kb in &KINDS[i..] {
            // WH_GRID=easy:hard,hard:upnp runs only those pairs (debugging).
            if let Ok(only) = std::env::var("WH_GRID")
                && !only
                    .split(',')
                    .any(|p| p == format!("{}:{}", ka.name(), kb.name()))
            {
                continue;
            }
            let (s, start) = scenario(*ka, *kb, 20);
            let first = s.lab.ping_until(&s.a, "10.0.42.3", Duration::from_secs(15));
            let first = match first {
                Ok(_) => start.elapsed(),
                Err(e) => {
                    failures.push(format!(
                        "{} - {}: {e}{}",
                        ka.name(),
                        kb.name(),
                        s.lab.report(&[&s.a, &s.b])
                    ));
                    continue;
                }
            };
            if std::env::var_os("WH_GRID_LOGS").is_some() {
                eprintln!(
                    "{} - {}:{}",
                    ka.name(),
                    kb.name(),
                    s.lab.report(&[&s.a, &s.b])
                );
            }
            let want_direct = expected_direct(*ka, *kb);
            let direct_after = if want_direct {
                wait_direct(&s.lab, &s.a, "node_b", Duration::from_secs(6))
            } else {
                None
            };
            // Let the relayed pairs settle, then read both sides.
            if !want_direct {
                std::thread::sleep(Duration::from_millis(500));
            }
            let (ga, gb) = (
                path_glyph(&s.lab, &s.a, "node_b"),
                path_glyph(&s.lab, &s.b, "node_a"),
            );
            let back = s
                .lab
                .ping_until(&s.b, "10.0.42.2", Duration::from_secs(5))
                .is_ok();
            let path = if is_direct(ga) && is_direct(gb) {
                "direct"
            } else if ga == '○' || gb == '○' {
                "relayed"
            } else {
                "?"
            };
            rows.push(format!(
                "{:<7} {:<7} {:<8} first ping {:>6.0} ms{}",
                ka.name(),
                kb.name(),
                path,
                first.as_secs_f64() * 1000.0,
                direct_after
                    .map(|d| format!(", direct {:.0} ms later", d.as_secs_f64() * 1000.0))
                    .unwrap_or_default()
            ));
            if !back {
                failures.push(format!(
                    "{} - {}: node_b cannot ping node_a back",
                    ka.name(),
                    kb.name()
                ));
            }
            if want_direct != (path == "direct") {
                failures.push(format!(
                    "{} - {}: path {path} ({ga} {gb}), expected {}{}",
                    ka.name(),
                    kb.name(),
                    if want_direct { "direct" } else { "relayed" },
                    s.lab.report(&[&s.a, &s.b])
                ));
            }
            // Each node tells what NAT it is behind (`wh show`).
            for (host, kind) in [(&s.a, *ka), (&s.b, *kb)] {
                if let Err(header) = wait_detected(&s.lab, host, kind, Duration::from_secs(5)) {
                    failures.push(format!(
                        "{} - {}: {} says {header:?}, expected {:?}",
                        ka.name(),
                        kb.name(),
                        host.name,
                        kind.detected()
                    ));
                }
            }
            let _ = (&s.relays, &s.config, &s.keys, &s.routers);
        }
    }
    eprintln!(
        "\nNAT grid (20 ms per router):\nA       B       path     time\n{}",
        rows.join("\n")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A hard-NAT pair relayed, both publishing two relays (steady state);
/// returns the scenario, the relay node_a uses for node_b, and the
/// interface names of a and b.
fn relayed_pair_in_steady_state() -> (Scenario, Host, [String; 2]) {
    let (s, _) = scenario(Kind::Behind(Nat::Hard), Kind::Behind(Nat::Hard), 0);
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(15))
        .expect("first ping");
    // Steady state: both nodes publish two relays (right after start a
    // node may have picked only one).
    let iface = |h: &Host| {
        s.lab
            .wh_ok(h, &["show", "interfaces"])
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let (ia, ib) = (iface(&s.a), iface(&s.b));
    let relays_of = |h, i: &str, peer: &str| {
        s.lab
            .wh_ok(h, &["lookup", i, peer])
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["relays"].as_array().map(|r| r.len()))
            .unwrap_or(0)
    };
    let start = Instant::now();
    while (relays_of(&s.a, &ia, "node_b") < 2 || relays_of(&s.b, &ib, "node_a") < 2)
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let line = peer_line(&s.lab, &s.a, "node_b");
    assert!(line.starts_with('○'), "{line}");
    let victim = relay_in_use(&s, &line);
    (s, victim, [ia, ib])
}

/// The relay `line` (node_a's `wh show` line of node_b) names first, the
/// one in use.
fn relay_in_use(s: &Scenario, line: &str) -> Host {
    let mut victim: Option<(usize, Host)> = None;
    for r in &s.relays {
        let key = relay_key(s, r);
        if let Some(at) = line.find(&key[..10])
            && victim.as_ref().is_none_or(|(first, _)| at < *first)
        {
            victim = Some((at, r.clone()));
        }
    }
    victim
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no relay matches {line}"))
}

/// Pings from node_a to node_b every 100 ms (`size` bytes) for 8 s while
/// `fault` runs 1 s in: the longest gap between answers, in seconds, the
/// answers' times (Unix seconds, as `ping -D` prints them) and the fault's
/// time.
fn longest_gap_around(
    s: &mut Scenario,
    size: usize,
    fault: impl FnOnce(&mut Scenario),
) -> (f64, Vec<f64>, f64) {
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &s.a.netns, "ping", "-n", "-i", "0.1", "-w", "8", "-D", "-s",
        ])
        .arg(size.to_string())
        .arg("10.0.42.3")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_secs(1));
    let fault_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    fault(s);
    let out = pinger.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .and_then(|t| t.parse().ok())
        })
        .collect();
    assert!(times.len() > 20, "{text}{}", s.lab.report(&[&s.a, &s.b]));
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (gap, times, fault_at)
}

/// The relay in use for a hard-hard pair dies: traffic resumes within 3 s.
#[test]
fn relay_in_use_dies_and_traffic_moves_on_within_3s() {
    require_lab!();
    let (mut s, victim, [ia, ib]) = relayed_pair_in_steady_state();
    // The relayed traffic runs on a relay channel (unsealed relay data),
    // not sealed datagram by datagram: both ends hold the channel, the
    // relay in use forwards it.
    s.lab
        .exec(
            &s.a.netns,
            &["ping", "-n", "-q", "-c", "5", "-i", "0.3", "10.0.42.3"],
        )
        .expect("pings through the relay");
    let inspect = |h: &Host, i: &str| -> serde_json::Value {
        serde_json::from_str(&s.lab.wh_ok(h, &["inspect", i]).expect("inspect")).expect("JSON")
    };
    for (h, i) in [(&s.a, &ia), (&s.b, &ib)] {
        let v = inspect(h, i);
        assert!(
            v["relay_channels"]["ours"].as_u64().unwrap_or(0) >= 1,
            "{} sends on no relay channel: {}",
            h.name,
            v["relay_channels"]
        );
    }
    let vi = s
        .lab
        .wh_ok(&victim, &["show", "interfaces"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let v = inspect(&victim, &vi);
    assert!(
        v["relay_channels"]["forwarding"].as_u64().unwrap_or(0) >= 1
            && v["relay"]["forwarded"].as_u64().unwrap_or(0) > 10,
        "the relay in use forwards no channel: {} {}",
        v["relay_channels"],
        v["relay"]
    );
    let (gap, times, _) = longest_gap_around(&mut s, 56, |s| {
        s.lab.kill_daemon(&victim, "-KILL").expect("kill relay");
    });
    eprintln!("longest gap after the relay died: {gap:.2} s");
    assert!(
        gap < 3.0,
        "traffic stopped for {gap:.2} s:\n{times:?}\n--- a:\n{}",
        s.lab.log(&s.a)
    );
}

/// The relay in use for a hard-hard pair goes on answering pings but drops
/// what it should forward (its firewall drops relay-data and every
/// datagram over 600 bytes; pings are smaller): from 3 s after the fault,
/// traffic flows again, every ping answered but a few.
#[test]
fn a_relay_that_answers_pings_but_drops_data_is_left_within_3s() {
    require_lab!();
    let (mut s, victim, _) = relayed_pair_in_steady_state();
    let rules = s
        .lab
        .write(
            "drop-data.nft",
            "table inet whdrop {\n  chain in {\n    type filter hook input priority -300;\n    udp dport 62096 @th,64,8 0xfe counter drop\n    udp dport 62096 udp length > 600 counter drop\n  }\n}\n",
        )
        .expect("rules");
    let (gap, times, fault_at) = longest_gap_around(&mut s, 1000, |s| {
        s.lab
            .exec(&victim.netns, &["nft", "-f", &rules.to_string_lossy()])
            .expect("nft");
    });
    let dropped = s
        .lab
        .exec(&victim.netns, &["nft", "list", "table", "inet", "whdrop"])
        .unwrap_or_default();
    // Back for good: the end of the last pause of 0.35 s or more (three
    // pings lost) after the fault.
    let back = times
        .windows(2)
        .filter(|w| w[1] > fault_at && w[1] - w[0] >= 0.35)
        .map(|w| w[1] - fault_at)
        .fold(0.0, f64::max);
    let end = times.last().map_or(0.0, |t| t - fault_at);
    eprintln!(
        "relay dropping data: longest gap {gap:.2} s; traffic back for good {back:.2} s after the fault (pings until {end:.2} s)"
    );
    assert!(dropped.contains("packets"), "{dropped}");
    assert!(end > back + 2.0, "too few pings after recovery: {times:?}");
    assert!(
        back < 3.0,
        "traffic back for good only {back:.2} s after the fault:\n{times:?}\n{dropped}{}",
        s.lab.report(&[&s.a, &s.b])
    );
}

/// `host`'s public key, from its `wh show`.
fn relay_key(s: &Scenario, host: &Host) -> String {
    let out = s.lab.wh_ok(host, &["show"]).expect("show");
    out.lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap_or_default()
        .to_string()
}

/// A NAT router flushes its conntrack table, then changes its public port:
/// the path recovers within 5 s each time.
#[test]
fn conntrack_flush_and_port_change_recover_within_5s() {
    require_lab!();
    let (s, _) = scenario(Kind::Behind(Nat::Easy), Kind::Behind(Nat::Easy), 0);
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(15))
        .expect("first ping");
    assert!(wait_direct(&s.lab, &s.a, "node_b", Duration::from_secs(6)).is_some());
    let router = &s.routers[0];
    s.lab.exec(&router.netns, &["conntrack", "-F"]).ok();
    let t = s
        .lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(5))
        .expect("after conntrack flush");
    eprintln!("after conntrack -F: ping in {t:?}");
    // New public port: masquerade into another port range, and forget the old mappings.
    let nft = s
        .lab
        .write("portchange.nft", "flush chain ip nat postrouting\nadd rule ip nat postrouting oifname \"wan\" meta l4proto udp masquerade to :40000-40999\nadd rule ip nat postrouting oifname \"wan\" masquerade\n")
        .expect("rules");
    s.lab
        .exec(&router.netns, &["nft", "-f", &nft.to_string_lossy()])
        .expect("nft");
    let rules = s
        .lab
        .exec(
            &router.netns,
            &["nft", "list", "chain", "ip", "nat", "postrouting"],
        )
        .unwrap_or_default();
    assert!(rules.contains("40000-40999"), "{rules}");
    s.lab.exec(&router.netns, &["conntrack", "-F"]).ok();
    let start = Instant::now();
    for (from, to) in [(&s.a, "10.0.42.3"), (&s.b, "10.0.42.2")] {
        s.lab
            .ping_until(from, to, Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!(
                    "{} after the port change: {e}{}",
                    from.name,
                    s.lab.report(&[&s.a, &s.b])
                )
            });
    }
    eprintln!("after the port change: both ways in {:?}", start.elapsed());
}

/// A node behind NAT restarts: back within 5 s.
#[test]
fn a_node_behind_nat_restarts_and_is_back_within_5s() {
    require_lab!();
    let (mut s, _) = scenario(Kind::Behind(Nat::Easy), Kind::Behind(Nat::Hard), 0);
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(15))
        .expect("first ping");
    s.lab.kill_daemon(&s.b, "-KILL").expect("kill");
    let (config, key) = (s.config.clone(), s.keys[1].clone());
    let start = Instant::now();
    s.lab
        .wh_up(&s.b, &config, Some(&key), &[])
        .expect("restart");
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n--- b:\n{}", s.lab.log(&s.b)));
    eprintln!("back {:?} after the restart", start.elapsed());
}

/// Two hosts behind hard IPv4 NATs (relayed over IPv4), whose homes also
/// have global IPv6 behind stateful firewalls, as many home routers give:
/// the nodes punch through both firewalls over IPv6 and go direct.
#[test]
fn hard_nats_with_ipv6_homes_go_direct_over_ipv6() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot_pk, relays) = lab.public_dht(2).expect("public DHT");
    let [(a, _), (b, b6)] = ["node_a", "node_b"].map(|name| {
        let (host, router) = lab.home_host(name, Nat::Hard).expect("home host");
        let ip6 = lab.home_ipv6(&host, &router).expect("home IPv6");
        (host, ip6)
    });
    // The firewalls let nothing unsolicited in: a cannot reach b over IPv6
    // by itself.
    let out = lab
        .exec_output(&a.netns, &["ping", "-6", "-c", "1", "-W", "1", &b6])
        .expect("ping -6");
    assert!(!out.status.success(), "b's firewall lets a ping in");
    let (ska, pka) = lab.genkey("node_a").expect("key");
    let (skb, pkb) = lab.genkey("node_b").expect("key");
    let config = lab
        .write(
            "v6.conf",
            &format!(
                "name v6\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n",
                relays[0].ip
            ),
        )
        .expect("config");
    let start = Instant::now();
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("a up");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("b up");
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    let first = start.elapsed();
    let over_ipv6 = format!("[{b6}]:");
    let direct = loop {
        let line = peer_line(&lab, &a, "node_b");
        if line.chars().next().is_some_and(is_direct) && line.contains(&over_ipv6) {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!(
                "node_b is not direct over IPv6: {line}{}",
                lab.report(&[&a, &b])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}{}", lab.report(&[&a, &b])));
    eprintln!("first ping {first:?}, direct over IPv6 {direct:?} after wh up");
}

/// Waits up to `secs` for the mapping to be there (or gone).
fn wait_mapped(lab: &Lab, router: &Host, want: bool, secs: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if lab.upnp_forwards(router, 62096) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Stops miniupnpd and removes the rules it made.
fn stop_miniupnpd(lab: &mut Lab, router: &Host) {
    lab.kill_daemon(router, "-TERM").expect("stop miniupnpd");
    for chain in ["prerouting_miniupnpd", "miniupnpd"] {
        lab.exec(
            &router.netns,
            &["nft", "flush", "chain", "inet", "filter", chain],
        )
        .ok();
    }
    assert!(!lab.upnp_forwards(router, 62096));
}

/// `wh down` on a host (its only interface).
fn wh_down(lab: &Lab, host: &Host) {
    let i = lab
        .wh_ok(host, &["show", "interfaces"])
        .expect("interfaces")
        .trim()
        .to_string();
    lab.wh_ok(host, &["down", &i]).expect("down");
}

/// The UPnP router restarts: the node maps its port again.
#[test]
fn upnp_mapping_is_created_removed_and_recreated() {
    require_lab!();
    let (mut s, _) = scenario(Kind::Behind(Nat::Upnp), Kind::Public, 0);
    let router = s.routers[0].clone();
    assert!(
        wait_mapped(&s.lab, &router, true, 10),
        "no mapping:\n{}",
        s.lab.log(&s.a)
    );
    // Restart miniupnpd with its rules gone.
    stop_miniupnpd(&mut s.lab, &router);
    s.lab.start_miniupnpd(&router).expect("restart miniupnpd");
    assert!(
        wait_mapped(&s.lab, &router, true, 15),
        "mapping not re-created:\n{}",
        s.lab.log(&s.a)
    );
    // wh down removes it.
    wh_down(&s.lab, &s.a);
    assert!(
        wait_mapped(&s.lab, &router, false, 10),
        "mapping left after wh down"
    );
}

/// A router that speaks NAT-PMP but not UPnP IGD: the node maps its port
/// with NAT-PMP, publishes it, and removes it on `wh down`.
#[test]
fn natpmp_maps_the_port_when_the_router_has_no_upnp() {
    require_lab!();
    let (mut s, _) = scenario(Kind::Behind(Nat::Upnp), Kind::Public, 0);
    let router = s.routers[0].clone();
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(15))
        .expect("first ping");
    s.lab.kill_daemon(&s.a, "-TERM").expect("stop a");
    assert!(
        wait_mapped(&s.lab, &router, false, 10),
        "the UPnP mapping outlived the node"
    );
    stop_miniupnpd(&mut s.lab, &router);
    s.lab
        .start_miniupnpd_serving(&router, false, true)
        .expect("miniupnpd, NAT-PMP only");
    std::thread::sleep(Duration::from_millis(300));
    let (config, key) = (s.config.clone(), s.keys[0].clone());
    s.lab.wh_up(&s.a, &config, Some(&key), &[]).expect("a up");
    assert!(
        wait_mapped(&s.lab, &router, true, 15),
        "no NAT-PMP mapping:\n{}",
        s.lab.log(&s.a)
    );
    let log = s.lab.log(&s.a);
    assert!(log.contains("NAT-PMP port mapping added"), "{log}");
    // `wh show` names the mapping and the protocol.
    let show = s.lab.wh_ok(&s.a, &["show"]).unwrap_or_default();
    assert!(show.contains("NAT-PMP 198.51.101.11:62096"), "{show}");
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(10))
        .expect("ping with the NAT-PMP mapping");
    wh_down(&s.lab, &s.a);
    assert!(
        wait_mapped(&s.lab, &router, false, 10),
        "NAT-PMP mapping left after wh down"
    );
}

/// Two public nodes run `relay-limit 0` (the bootstrap among them), one
/// relays: two hard-NAT nodes keep and publish only the one that relays,
/// reach each other through it, and the others forward nothing.
#[test]
fn nodes_with_relay_limit_0_are_never_chosen_as_relays() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let public = lab
        .write("public", "name public\nworkbit 8\n")
        .expect("config");
    let boot = lab.public_host("boot").expect("host");
    let (boot_sk, boot_pk) = lab.genkey("boot").expect("key");
    let off = ["mode", "direct", "relay-limit", "0"];
    lab.wh_up(&boot, &public, Some(&boot_sk), &off)
        .expect("boot up");
    lab.wait_daemon(&boot, Duration::from_secs(10))
        .expect("boot answers");
    let relay_config = lab
        .write(
            "relay",
            &format!("name public\nworkbit 8\nboot {boot_pk} {}\n", boot.ip),
        )
        .expect("config");
    let mut public_nodes = vec![(boot, boot_pk.clone(), false)];
    for (name, relays) in [("quiet", false), ("relayer", true)] {
        let h = lab.public_host(name).expect("host");
        let (sk, pk) = lab.genkey(name).expect("key");
        let args: &[&str] = if relays { &off[..2] } else { &off };
        lab.wh_up(&h, &relay_config, Some(&sk), args).expect("up");
        lab.wait_daemon(&h, Duration::from_secs(10))
            .expect("answers");
        public_nodes.push((h, pk, relays));
    }
    let relay_pk = public_nodes[2].1.clone();
    let (a, _) = lab.home_host("node_a", Nat::Hard).expect("home host");
    let (b, _) = lab.home_host("node_b", Nat::Hard).expect("home host");
    let (ska, pka) = lab.genkey("node_a").expect("key");
    let (skb, pkb) = lab.genkey("node_b").expect("key");
    let config = lab
        .write(
            "net.conf",
            &format!(
                "name net\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n",
                public_nodes[0].0.ip
            ),
        )
        .expect("config");
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("a up");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("b up");
    let hosts: Vec<&Host> = [&a, &b]
        .into_iter()
        .chain(public_nodes.iter().map(|p| &p.0))
        .collect();
    if let Err(e) = lab.ping_until(&a, "10.0.42.3", Duration::from_secs(20)) {
        panic!("a cannot ping b: {e}{}", lab.report(&hosts));
    }
    // What each publishes: the relays in its record, as its peer finds it
    // (a first lookup may still find the record of before it kept any).
    for (from, peer) in [(&a, "node_b"), (&b, "node_a")] {
        let iface = lab.wh_ok(from, &["show", "interfaces"]).expect("iface");
        let published = || -> Vec<String> {
            let found = lab
                .wh_ok(from, &["lookup", iface.trim(), peer])
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&found).unwrap_or_default();
            v["relays"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x["key"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let start = Instant::now();
        let mut relays = published();
        while relays.is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            relays = published();
        }
        // Long enough for a second relay to be kept, were there one.
        std::thread::sleep(Duration::from_secs(2));
        relays = published();
        assert_eq!(
            relays,
            vec![relay_pk.clone()],
            "{peer} publishes relays other than the one that relays{}",
            lab.report(&hosts)
        );
    }
    for (h, _, relays) in &public_nodes {
        let iface = lab.wh_ok(h, &["show", "interfaces"]).expect("iface");
        let v: serde_json::Value =
            serde_json::from_str(&lab.wh_ok(h, &["inspect", iface.trim()]).expect("inspect"))
                .expect("JSON");
        let forwarded = v["relay"]["forwarded"].as_u64().unwrap_or(0);
        assert_eq!(
            forwarded > 0,
            *relays,
            "{}: forwarded {forwarded} ({})",
            h.name,
            v["relay"]
        );
    }
}
