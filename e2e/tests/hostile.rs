//! Attack tests: a hostile peer (`wh-attack`, agent/src/bin/wh_attack.rs)
//! in its own namespace on the lab's internet, against real `wh` daemons.
//! Each scenario is one line of docs/threat-model.md: it prints what it
//! measured, and asserts what honest nodes rely on (with bounds loose
//! enough for a shared, loaded machine).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, path_glyph, scenario, wait_detected};
use wirehub_e2e::{Host, Lab, Nat, TrustedNetwork, require_lab, wh_attack_bin};

const PORT: u16 = 62096;

/// `wh-attack ARGS` in `host`'s namespace, against the daemon whose public
/// key is `target_key`.
fn attack(host: &Host, target_key: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host.netns])
        .arg(wh_attack_bin())
        .args(args)
        .env("WH_ATTACK_TARGET_KEY", target_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The `name=value` figures `wh-attack` printed.
fn figure(out: &Output, name: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no {name} in wh-attack's output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// CPU time (user + system) a process used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// `wh inspect` on `host`, as text (JSON).
fn inspect(lab: &Lab, host: &Host) -> String {
    let iface = lab
        .wh_ok(host, &["show", "interfaces"])
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    lab.wh_ok(host, &["inspect", &iface]).unwrap_or_default()
}

/// Loss and median round trip of `count` pings every 20 ms from `host`.
struct Pings {
    loss: f64,
    median_ms: f64,
}

fn pings(lab: &Lab, host: &Host, target: &str, count: u32) -> Pings {
    let out = lab
        .exec_output(
            &host.netns,
            &[
                "ping",
                "-n",
                "-i",
                "0.02",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                target,
            ],
        )
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    Pings {
        loss: 1.0 - rtts.len() as f64 / f64::from(count),
        median_ms: rtts.get(rtts.len() / 2).copied().unwrap_or(f64::INFINITY),
    }
}

/// A trusted network of two nodes pinging each other, and `mallory`, a
/// public host with a key of the network's proof of work but no trust.
struct Scene {
    lab: Lab,
    net: TrustedNetwork,
    mallory: Host,
    mallory_key: String,
}

fn scene() -> Scene {
    scene_with(&[])
}

/// [`scene`], node `i` started with the extra `wh up` arguments `extra` gives.
fn scene_with(extra: &[(usize, &[&str])]) -> Scene {
    let mut lab = Lab::new().expect("lab");
    let net = lab.trusted_network(2, extra).expect("trusted network");
    lab.ping_until(&net.nodes[1], "10.0.42.2", Duration::from_secs(20))
        .expect("node_b pings node_a");
    let mallory = lab.public_host("mallory").expect("mallory");
    let (sk, _) = lab.genkey("mallory").expect("key");
    Scene {
        lab,
        net,
        mallory,
        mallory_key: sk.to_string_lossy().into_owned(),
    }
}

/// One flood at node_a while node_b pings it over the overlay: the CPU
/// node_a spent per datagram, and the pings' loss and median.
fn flood(s: &Scene, what: &str, args: &[&str], idle: &Pings) -> (f64, Pings) {
    let (a, b) = (&s.net.nodes[0], &s.net.nodes[1]);
    let pid = s.lab.daemon_pid(a).expect("node_a's daemon");
    let before = cpu_time(pid);
    let child = attack(&s.mallory, &s.net.keys[0].1, args)
        .spawn()
        .expect("wh-attack");
    std::thread::sleep(Duration::from_secs(1));
    let loaded = pings(&s.lab, b, "10.0.42.2", 200);
    let out = child.wait_with_output().expect("wh-attack ends");
    let used = cpu_time(pid).saturating_sub(before);
    let sent = figure(&out, "sent");
    let per = used.as_secs_f64() * 1e6 / sent.max(1) as f64;
    let secs = args
        .last()
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(1.0);
    eprintln!(
        "{what}: {sent} datagrams in {secs} s ({:.0}/s); node_a CPU {:.3} s = {per:.2} µs per datagram; \
         overlay pings: loss {:.1} % (idle {:.1} %), median {:.3} ms (idle {:.3} ms)",
        sent as f64 / secs,
        used.as_secs_f64(),
        loaded.loss * 100.0,
        idle.loss * 100.0,
        loaded.median_ms,
        idle.median_ms,
    );
    (per, loaded)
}

/// Issue 13, item 1: a stranger with one valid 8-workbit key floods a node
/// with garbage sealed under it (20,000 a second), then with WireGuard
/// handshake garbage, then with garbage as fast as one lab host sends.
#[test]
fn floods_from_one_valid_key_cost_little_cpu_and_pings_go_on() {
    require_lab!();
    let s = scene();
    let a = &s.net.nodes[0];
    let target = format!("{}:{PORT}", a.ip);
    let idle = pings(&s.lab, &s.net.nodes[1], "10.0.42.2", 200);
    let key = s.mallory_key.as_str();
    let runs: [(&str, Vec<&str>); 3] = [
        (
            "garbage sealed under one key, 20,000/s",
            vec!["garbage", &target, key, "20000", "8"],
        ),
        (
            "WireGuard handshake garbage, 20,000/s",
            vec!["handshakes", &target, "20000", "8"],
        ),
        (
            "garbage sealed under one key, flat out",
            vec!["garbage", &target, key, "0", "8"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, args)) in runs.iter().enumerate() {
        let (per, loaded) = flood(&s, what, args, &idle);
        let bound = 5.0 * idle.median_ms + 2.0;
        // The bounds the issue sets hold at 20,000/s; flat out, the
        // figures are for the report.
        if i < 2 {
            if loaded.loss >= 0.05 {
                failures.push(format!("{what}: {:.1} % pings lost", loaded.loss * 100.0));
            }
            if loaded.median_ms > bound {
                failures.push(format!(
                    "{what}: median {:.3} ms > {bound:.3} ms",
                    loaded.median_ms
                ));
            }
            // 15 µs is the target; twice that leaves room for a loaded
            // machine (one X25519 per datagram costs about 30 µs here).
            if per > 30.0 {
                failures.push(format!("{what}: {per:.1} µs of CPU per datagram"));
            }
        }
    }
    let show = inspect(&s.lab, a);
    let dh = show
        .split("\"dh_computations\":")
        .nth(1)
        .and_then(|x| x.split([',', '}']).next())
        .unwrap_or("?");
    eprintln!("node_a's X25519 computations after the floods: {dh}");
    assert!(failures.is_empty(), "{failures:#?}\n{}", s.lab.log(a));
}

/// Issue 13, item 4: a stranger tells node_a, again and again, a record of
/// node_b's key with itself as endpoint and relay and a hard NAT: node_a
/// never takes it (node_b stays direct, with node_b's own NAT kind).
#[test]
fn a_stranger_cannot_set_another_nodes_record() {
    require_lab!();
    let s = scene();
    let (a, b_key) = (&s.net.nodes[0], &s.net.keys[1].1);
    let target = format!("{}:{PORT}", a.ip);
    let honest = path_glyph(&s.lab, a, "node_b");
    assert_eq!(honest, '●', "node_b is direct and public before the attack");
    let child = attack(
        &s.mallory,
        &s.net.keys[0].1,
        &["record", &target, &s.mallory_key, b_key, "5"],
    )
    .spawn()
    .expect("wh-attack");
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        seen.push(path_glyph(&s.lab, a, "node_b"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("wh-attack ends");
    let forged = figure(&out, "forged_records");
    let taken = seen.iter().filter(|g| **g != '●').count();
    eprintln!(
        "{forged} forged records of node_b sent to node_a; node_a's view of node_b changed in {taken} of {} looks",
        seen.len()
    );
    assert!(forged > 0);
    assert_eq!(taken, 0, "node_a took the stranger's record: {seen:?}");
    assert!(
        inspect(&s.lab, a).contains("record-not-of-its-sender"),
        "the refusals are counted"
    );
}

/// Issue 13, item 6: the stranger proves its own address, then sends
/// find-node and ping requests from a second address it holds (as if
/// forged: a victim's): what that address gets back is no larger than
/// what was sent from it.
#[test]
fn requests_from_a_forged_source_get_back_no_more_bytes_than_they_sent() {
    require_lab!();
    let s = scene();
    let a = &s.net.nodes[0];
    let spoofed = "203.0.113.250";
    s.lab
        .exec(
            &s.mallory.netns,
            &["ip", "addr", "add", &format!("{spoofed}/24"), "dev", "eth0"],
        )
        .expect("second address");
    let target = format!("{}:{PORT}", a.ip);
    let out = attack(
        &s.mallory,
        &s.net.keys[0].1,
        &["reflect", &target, &s.mallory_key, spoofed],
    )
    .output()
    .expect("wh-attack");
    let sent = figure(&out, "sent_from_spoofed");
    let received = figure(&out, "received_at_spoofed");
    eprintln!(
        "find-node + ping from a forged source: {sent} bytes sent, {received} bytes came back ({:.2}x)",
        received as f64 / sent.max(1) as f64
    );
    assert!(sent > 0);
    assert!(
        received <= sent,
        "{received} bytes reflected for {sent}\n{}",
        s.lab.log(a)
    );
}

/// Issue 13, item 5: a node behind an endpoint-independent NAT knows it
/// (two public nodes reported the same mapping); a host on its LAN (its
/// router's namespace) sends it pongs it never asked for, claiming another
/// mapping. The verdict does not move.
#[test]
fn unsolicited_pongs_with_a_forged_observed_address_do_not_change_the_nat_verdict() {
    require_lab!();
    let (s, _) = scenario(Kind::Behind(Nat::Easy), Kind::Public, 0);
    let kind = Kind::Behind(Nat::Easy);
    if let Err(header) = wait_detected(&s.lab, &s.a, kind, Duration::from_secs(30)) {
        panic!("no verdict: {header}\n{}", s.lab.log(&s.a));
    }
    let a_key = s.lab.public_key_of(&s.a).expect("node_a's key");
    let (sk, _) = s.lab.genkey("mallory").expect("key");
    let router = s.routers[0].clone();
    let child = attack(
        &router,
        &a_key,
        &[
            "pong",
            &format!("{}:{PORT}", s.a.ip),
            &sk.to_string_lossy(),
            "203.0.113.77:4444",
            "5",
        ],
    )
    .spawn()
    .expect("wh-attack");
    let start = Instant::now();
    let mut headers = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        headers.push(s.lab.show_header(&s.a));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("wh-attack ends");
    let forged = figure(&out, "forged_pongs");
    let moved: Vec<&String> = headers
        .iter()
        .filter(|h| !h.contains(kind.detected()))
        .collect();
    eprintln!(
        "{forged} forged pongs sent to node_a; its NAT verdict moved in {} of {} looks",
        moved.len(),
        headers.len()
    );
    assert!(forged > 0);
    assert!(moved.is_empty(), "the verdict moved: {moved:?}");
}

/// The relay counters of `wh inspect` on `host`: (forwarded datagrams,
/// forwarded bytes, refused by the source network's rate, all of them).
fn relay_counters(lab: &Lab, host: &Host) -> (u64, u64, u64, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(&inspect(lab, host)).expect("JSON");
    let n = |k: &str| v["relay"][k].as_u64().unwrap_or(0);
    (
        n("forwarded"),
        n("forwarded_bytes"),
        n("dropped_network_rate"),
        v["relay"].clone(),
    )
}

/// Issue 13, item 7: a stranger rotating up to 200 keys from one address
/// asks node_a (relay-limit 1 Mbit/s) to relay 1,200-byte datagrams to
/// node_b, 3,000 a second at most, for 6 s: node_a forwards no more than
/// one source network's share (a 1 MiB burst and 125 kB/s), whatever the
/// keys (each key alone would get a burst of 1 MiB).
#[test]
fn a_stranger_rotating_keys_gets_no_more_relayed_than_one_networks_share() {
    require_lab!();
    let s = scene_with(&[(0, &["relay-limit", "1"])]);
    let (a, b) = (&s.net.nodes[0], &s.net.nodes[1]);
    let target = format!("{}:{PORT}", a.ip);
    let victim = s.net.keys[1].1.clone();
    let (seconds, rate, size) = (6.0, 3000u64, 1200usize);
    let before = relay_counters(&s.lab, a);
    let out = attack(
        &s.mallory,
        &s.net.keys[0].1,
        &[
            "relay",
            &target,
            "200",
            &victim,
            &size.to_string(),
            &rate.to_string(),
            &seconds.to_string(),
        ],
    )
    .output()
    .expect("wh-attack");
    assert!(
        out.status.success(),
        "wh-attack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = relay_counters(&s.lab, a);
    let (keys, sent, sent_bytes) = (
        figure(&out, "keys"),
        figure(&out, "sent"),
        figure(&out, "bytes"),
    );
    let forwarded = after.1 - before.1;
    // One network's share: 1 Mbit/s = 125 kB/s sustained, 1 MiB burst
    // (10 % for the time the counters are read around the attack).
    let share = (1024.0 * 1024.0 + 125_000.0 * seconds) * 1.1;
    eprintln!(
        "relay abuse: {keys} keys sent {sent} datagrams ({sent_bytes} B) in {seconds} s; node_a forwarded {} datagrams, {forwarded} B ({:.0} % of one network's share {share:.0} B), refused {} by the network's rate; relay counters {}",
        after.0 - before.0,
        forwarded as f64 * 100.0 / share,
        after.2 - before.2,
        after.3,
    );
    // node_a meets new keys of one address at a bounded rate (its first
    // contact budget), so not all 200 may get through: enough to rotate.
    assert!(keys >= 20, "only {keys} of 200 keys met node_a");
    assert!(
        sent_bytes as f64 > 3.0 * share,
        "the attack sent too little to test the limit: {sent_bytes} B"
    );
    assert!(
        (forwarded as f64) <= share,
        "node_a forwarded {forwarded} B, beyond one network's share {share:.0} B"
    );
    assert!(after.2 > before.2, "nothing refused by the network's rate");
    // Honest traffic between the two nodes goes on.
    s.lab
        .ping_until(b, "10.0.42.2", Duration::from_secs(5))
        .expect("node_b still pings node_a");
}
