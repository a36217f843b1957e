//! Throughput of a relayed flow against the direct flow between the same two
//! lab hosts, side by side in one run: iperf3 TCP through the overlay, first
//! direct, then with both nodes forced onto relays (`WH_FORCE_RELAY=1`).
//! Two cases: two public hosts, and two hosts behind easy NATs whose WAN
//! links add LATENCY_MS of one-way delay each way (default 20; netem, or the
//! lab's delay wire).
//!
//! Run as root: `cargo run --release -p wirehub-e2e --bin relay-bench [-- SECONDS [LATENCY_MS]]`
//! (build `wh` in release first: `cargo build --release --bin wh`).

use anyhow::{Result, bail};
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

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the benchmark builds network namespaces: run it as root");
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
