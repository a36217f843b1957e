//! Throughput of a relayed flow against the direct flow between the same two
//! lab hosts, in one run: iperf3 TCP through the overlay, first direct, then
//! with both nodes forced onto relays (`WH_FORCE_RELAY=1`).
//! Run as root: `cargo run --release -p wirehub-e2e --bin relay-bench [-- SECONDS]`
//! (build `wh` in release first: `cargo build --release --bin wh`).

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab};

fn iperf(lab: &Lab, client: &Host, server: &Host, target: &str, secs: u64) -> Result<f64> {
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.netns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            target,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        &client.netns,
        &["iperf3", "-c", target, "-t", &secs.to_string(), "-J"],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out?).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no throughput in iperf3's output")?;
    Ok(bps / 1e6)
}

fn glyph(lab: &Lab, host: &Host, peer: &str) -> char {
    let show = lab
        .wh(host, &["show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    show.lines()
        .find(|l| l.contains(peer))
        .and_then(|l| l.chars().next())
        .unwrap_or('?')
}

fn wait_glyph(lab: &Lab, host: &Host, peer: &str, want: char) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if glyph(lab, host, peer) == want {
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

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut lab = Lab::new()?;
    let boot = lab.public_host("boot")?;
    let (boot_sk, boot_pk) = lab.genkey("boot")?;
    let public = lab.write("public", "name public\nworkbit 8\n")?;
    lab.wh_up(&boot, &public, Some(&boot_sk), &["mode", "direct"])?;
    let relay_config = lab.write(
        "relay",
        &format!("name public\nworkbit 8\nboot {boot_pk} {}\n", boot.ip),
    )?;
    for i in 0..2 {
        let r = lab.public_host(&format!("relay{i}"))?;
        let (sk, _) = lab.genkey(&format!("relay{i}"))?;
        lab.wh_up(&r, &relay_config, Some(&sk), &["mode", "direct"])?;
    }
    let a = lab.public_host("node_a")?;
    let b = lab.public_host("node_b")?;
    let (ska, pka) = lab.genkey("node_a")?;
    let (skb, pkb) = lab.genkey("node_b")?;
    let config = lab.write("bench.conf", &format!("name bench\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n", boot.ip))?;

    lab.wh_up(&a, &config, Some(&ska), &[])?;
    lab.wh_up(&b, &config, Some(&skb), &[])?;
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(15))?;
    wait_glyph(&lab, &a, "node_b", '●')?;
    let direct = iperf(&lab, &a, &b, "10.0.42.3", secs)?;
    println!("direct path:  {direct:.0} Mbit/s");

    lab.kill_daemon(&a, "-TERM")?;
    lab.kill_daemon(&b, "-TERM")?;
    lab.env.push(("WH_FORCE_RELAY".into(), "1".into()));
    lab.wh_up(&a, &config, Some(&ska), &[])?;
    lab.wh_up(&b, &config, Some(&skb), &[])?;
    lab.ping_until(&a, "10.0.42.3", Duration::from_secs(20))?;
    wait_glyph(&lab, &a, "node_b", '○')?;
    let relayed = iperf(&lab, &a, &b, "10.0.42.3", secs)?;
    println!("relayed path: {relayed:.0} Mbit/s");
    println!("ratio relayed/direct: {:.2}", relayed / direct);
    Ok(())
}
