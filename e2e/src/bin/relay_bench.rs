//! Throughput of a relayed flow against the direct flow between the same two
//! lab hosts, side by side in one run: iperf3 TCP through the overlay, first
//! direct, then with both nodes forced onto relays (`WH_FORCE_RELAY=1`).
//! Two cases: two public hosts, and two hosts behind easy NATs whose WAN
//! links add LATENCY_MS of one-way delay each way (default 20; netem, or the
//! lab's delay wire).
//!
//! Run as root: `cargo run --release -p wirehub-e2e --bin relay-bench [-- SECONDS [LATENCY_MS]]`
//! (build `wh` in release first: `cargo build --release --bin wh`; `WH_BIN`
//! picks another `wh`).
//!
//! `relay-bench pairs N [SECONDS]`: a relay's forwarding rate with N
//! relayed pairs at once. One public bootstrap node is the only public DHT
//! node that relays (the 2N public hosts run `relay-limit 0`, so nobody
//! keeps them as relays) and every host is forced onto relays: all N
//! iperf3 TCP flows (host 2i to host 2i+1) cross the bootstrap. Prints the
//! flows' sum, what the relay forwarded (datagrams/s and Gbit/s, from its
//! `wh inspect` counters) and the relay process's CPU (from
//! /proc/PID/stat, all its threads; 100 % = one core).

use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, Scenario, path_glyph, scenario};
use wirehub_e2e::{Host, Lab, Nat};

fn wait_glyph(lab: &Lab, host: &Host, peer: &str, want: char) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if path_glyph(lab, host, peer) == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} never showed {want} for {peer}:\n{}",
        host.name,
        lab.log(host)
    )
}

/// Direct then relayed throughput (Mbit/s) between node_a and node_b.
fn case(kind: Kind, latency: u32, secs: u64) -> Result<(f64, f64)> {
    let (s, _) = scenario(kind, kind, latency);
    let Scenario {
        mut lab,
        a,
        b,
        config,
        keys,
        ..
    } = s;
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(15))?;
    let direct_glyph = if kind == Kind::Public { '●' } else { '◒' };
    wait_glyph(&lab, &a, "node_b", direct_glyph)?;
    let direct = lab.iperf3(&a, &b, "10.0.42.3", secs, false)?;

    lab.kill_daemon(&a, "-TERM")?;
    lab.kill_daemon(&b, "-TERM")?;
    lab.env.push(("WH_FORCE_RELAY".into(), "1".into()));
    lab.wh_up(&a, &config, Some(&keys[0]), &[])?;
    lab.wh_up(&b, &config, Some(&keys[1]), &[])?;
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(20))?;
    wait_glyph(&lab, &a, "node_b", '○')?;
    let relayed = lab.iperf3(&a, &b, "10.0.42.3", secs, false)?;
    Ok((direct, relayed))
}

/// The relay's forwarded (datagrams, bytes) from `wh inspect`.
fn forwarded(lab: &Lab, relay: &Host) -> Result<(u64, u64)> {
    let shown = lab.wh_ok(relay, &["show", "interfaces"])?;
    let iface = shown
        .lines()
        .next()
        .with_context(|| format!("no interface on {}", relay.name))?;
    let out = lab.wh_ok(relay, &["inspect", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("wh inspect's JSON")?;
    let n = |k: &str| v["relay"][k].as_u64().unwrap_or(0);
    Ok((n("forwarded"), n("forwarded_bytes")))
}

/// CPU time (user + system, all threads) of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("/proc/{pid}/stat has no command name: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat: no field {} in {stat:?}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// N relayed pairs through one relay at once.
fn pairs(n: usize, secs: u64) -> Result<()> {
    let mut lab = Lab::new()?;
    let (boot_pk, public) = lab.public_dht(0)?;
    let relay = public[0].clone();
    lab.env.push(("WH_FORCE_RELAY".into(), "1".into()));
    let mut hosts = Vec::new();
    let mut keys = Vec::new();
    let mut trust = String::new();
    for i in 0..2 * n {
        let name = format!("node{i}");
        hosts.push(lab.public_host(&name)?);
        let (sk, pk) = lab.genkey(&name)?;
        trust.push_str(&format!("trust {name} {pk}\n"));
        keys.push(sk);
    }
    let config = lab.write(
        "pairs.conf",
        &format!(
            "name pairs\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\n{trust}",
            relay.ip
        ),
    )?;
    for (h, k) in hosts.iter().zip(&keys) {
        lab.wh_up(h, &config, Some(k), &["relay-limit", "0"])?;
    }
    // Host i is 10.0.42.(i+2), in the order of the trust lines.
    let ip = |i: usize| format!("10.0.42.{}", i + 2);
    for p in 0..n {
        let (a, b) = (&hosts[2 * p], 2 * p + 1);
        lab.ping_until(a, &ip(b), Duration::from_secs(20))?;
        wait_glyph(&lab, a, &format!("node{b}"), '○')?;
    }
    let pid = lab
        .daemon_pid(&relay)
        .context("no process for the relay's daemon")?;
    let (d0, b0) = forwarded(&lab, &relay)?;
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let flows: Vec<Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|p| {
                let (lab, hosts, ip) = (&lab, &hosts, &ip);
                s.spawn(move || {
                    lab.iperf3(
                        &hosts[2 * p],
                        &hosts[2 * p + 1],
                        &ip(2 * p + 1),
                        secs,
                        false,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an iperf3 thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid)? - cpu0) / elapsed;
    let (d1, b1) = forwarded(&lab, &relay)?;
    let mut sum = 0.0;
    for (p, f) in flows.into_iter().enumerate() {
        let mbit = f.with_context(|| format!("pair {p}"))?;
        println!("pair {p}: {mbit:.0} Mbit/s");
        sum += mbit;
    }
    let pps = (d1 - d0) as f64 / elapsed;
    let gbit = (b1 - b0) as f64 * 8.0 / elapsed / 1e9;
    println!(
        "{n} pairs: {sum:.0} Mbit/s in all; relay forwarded {pps:.0} datagrams/s, {gbit:.2} Gbit/s (WireGuard bytes), CPU {:.0} % of one core (over {elapsed:.1} s, iperf3 start-up included)",
        cpu * 100.0
    );
    Ok(())
}

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let first = std::env::args().nth(1);
    if first.as_deref() == Some("pairs") {
        let mut args = std::env::args().skip(2);
        let n: usize = match args.next() {
            Some(s) => s
                .parse()
                .ok()
                .filter(|n| (1..=8).contains(n))
                .with_context(|| format!("relay-bench pairs N: N is 1 to 8, not {s:?}"))?,
            None => 2,
        };
        let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
        return pairs(n, secs);
    }
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let latency: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("iperf3 TCP, {secs} s per flow, relays: public DHT nodes");
    println!(
        "{:<34} {:>10} {:>10} {:>7}",
        "hosts", "direct", "relayed", "ratio"
    );
    let cases = [
        (Kind::Public, 0, "public - public".to_string()),
        (
            Kind::Behind(Nat::Easy),
            latency,
            format!("easy NAT - easy NAT, {latency} ms/router"),
        ),
    ];
    for (kind, lat, name) in cases {
        let (direct, relayed) = case(kind, lat, secs)?;
        println!(
            "{name:<34} {:>5.0} Mbit/s {:>5.0} Mbit/s {:>5.2}",
            direct,
            relayed,
            relayed / direct
        );
    }
    Ok(())
}
