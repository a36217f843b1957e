//! `wg-bench`: TCP throughput between two lab namespaces (root only)
//!
//! 1. over the bare veth,
//! 2. through wireguard-go on both sides (configured with `wg`),
//! 3. through WireHub's embedded data plane on both sides,
//!
//! then prints the three figures in Mbit/s and the ratios
//! embedded/wireguard-go and embedded/veth.
//!
//! ```text
//! cargo run --release --bin wg-bench -- [--time SECONDS] [--streams N] [--only veth,wggo,embedded,plain]
//! ```
//!
//! `plain` (not run by default) is the embedded data plane with the TUN
//! offloads turned off (`WIREHUB_TUN_OFFLOAD=0`): one packet per read and
//! write, as wireguard-go and boringtun's own device work.
//!
//! A lab tool, not part of the product: it spawns `ip`, `wg`, `wireguard-go`
//! and `iperf3`. Everything it creates carries a per-run prefix and is
//! deleted on exit, also on failure.

#[path = "../../tests/dataplane_lab/mod.rs"]
mod lab;

use anyhow::{Context, Result, bail};
use lab::{Lab, is_root, run, run_in, runtime_in, unique_tag};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use wirehub::dataplane::netns::lab::{LabNode, start as lab_node};
use wirehub::dataplane::{BackendKind, DataPlane, InterfaceConfig, PeerConfig};
use wirehub::keys::PrivateKey;

const PORT: u16 = 62096;
const IPERF_PORT: &str = "5201";

struct Options {
    seconds: u32,
    streams: u32,
    only: Vec<String>,
    /// The daemon loop reads with UDP_GRO (dataplane::udp::try_recv_gro).
    udp_gro: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        seconds: 10,
        streams: 1,
        only: vec!["veth".into(), "wggo".into(), "embedded".into()],
        udp_gro: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--time" | "-t" => {
                o.seconds = args.next().context("--time SECONDS")?.parse()?;
            }
            "--streams" | "-P" => {
                o.streams = args.next().context("--streams N")?.parse()?;
            }
            "--only" => {
                o.only = args
                    .next()
                    .context("--only veth,wggo,embedded,plain")?
                    .split(',')
                    .map(str::to_string)
                    .collect();
            }
            "--udp-gro" => o.udp_gro = true,
            "--help" | "-h" => {
                println!(
                    "wg-bench [--time SECONDS (10)] [--streams N (1)] [--only veth,wggo,embedded,plain] [--udp-gro]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// iperf3 from `client_ns` to `server_addr` (server in `server_ns`): Mbit/s received.
fn iperf(client_ns: &str, server_ns: &str, server_addr: &str, o: &Options) -> Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            server_ns,
            "iperf3",
            "-s",
            "-1",
            "-p",
            IPERF_PORT,
            "-B",
            server_addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            server_addr,
            "-p",
            IPERF_PORT,
            "-t",
            &o.seconds.to_string(),
            "-P",
            &o.streams.to_string(),
            "-J",
        ])
        .stdin(Stdio::null())
        .output()
        .context("iperf3 client")?;
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 JSON output")?;
    if let Some(err) = json.get("error") {
        bail!("iperf3: {err}");
    }
    let bps = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(bps / 1e6)
}

fn wait_ping(ns: &str, addr: &str) -> Result<()> {
    if lab::ping_until(ns, addr, 10) {
        Ok(())
    } else {
        bail!("no ping from {ns} to {addr}")
    }
}

/// wireguard-go in each namespace, configured with `wg`.
fn wireguard_go(lab: &mut Lab, tag: &str, ns: [&str; 2], o: &Options) -> Result<f64> {
    let keys = [genkey()?, genkey()?];
    let dir = std::env::temp_dir().join(format!("{tag}-keys"));
    std::fs::create_dir_all(&dir)?;
    let names = [format!("{tag}g"), format!("{tag}h")];
    for i in 0..2 {
        lab.track_wireguard_go(&names[i]);
        let key_file = dir.join(format!("{i}.key"));
        std::fs::write(&key_file, keys[i].to_base64())?;
        let other = 1 - i;
        run(&["ip", "netns", "exec", ns[i], "wireguard-go", &names[i]]);
        run(&[
            "ip",
            "netns",
            "exec",
            ns[i],
            "wg",
            "set",
            &names[i],
            "private-key",
            &key_file.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &keys[other].public_key().to_wg_base64(),
            "allowed-ips",
            &format!("10.0.43.{}/32", other + 1),
            "endpoint",
            &format!("203.0.113.{}:51820", other + 1),
        ]);
        run(&[
            "ip",
            "-n",
            ns[i],
            "addr",
            "add",
            &format!("10.0.43.{}/24", i + 1),
            "dev",
            &names[i],
        ]);
        run(&[
            "ip", "-n", ns[i], "link", "set", &names[i], "mtu", "1420", "up",
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    wait_ping(ns[0], "10.0.43.2")?;
    let r = iperf(ns[0], ns[1], "10.0.43.2", o);
    for (i, name) in names.iter().enumerate() {
        lab::run_ok(&["ip", "-n", ns[i], "link", "del", name]);
    }
    r
}

struct EmbeddedNode {
    rt: tokio::runtime::Runtime,
    dp: Arc<DataPlane>,
    pump: tokio::task::JoinHandle<()>,
}

fn embedded_node(
    ns: &str,
    iface: &str,
    key: PrivateKey,
    i: u8,
    udp_gro: bool,
) -> Result<EmbeddedNode> {
    let rt = runtime_in(ns, 2);
    let mut cfg = InterfaceConfig::new(iface, key);
    cfg.addresses = vec![format!("10.0.42.{i}/24").parse()?];
    // The peers have endpoints: nothing is for the daemon to relay, and its
    // channel (`outgoing`) is closed right away.
    let LabNode { dp, pump, .. } =
        run_in(&rt, lab_node(BackendKind::Embedded, cfg, PORT, udp_gro))?;
    Ok(EmbeddedNode { rt, dp, pump })
}

fn embedded(tag: &str, ns: [&str; 2], o: &Options) -> Result<f64> {
    let keys = [genkey()?, genkey()?];
    let pubs = [keys[0].public_key(), keys[1].public_key()];
    let a = embedded_node(ns[0], &format!("{tag}e"), keys[0].clone(), 1, o.udp_gro)?;
    let b = embedded_node(ns[1], &format!("{tag}f"), keys[1].clone(), 2, o.udp_gro)?;
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let other = 1 - i;
        node.dp.set_peer(PeerConfig {
            key: pubs[other],
            allowed_ips: vec![format!("10.0.42.{}/32", other + 1).parse()?],
            endpoint: Some(SocketAddr::new(
                format!("203.0.113.{}", other + 1).parse()?,
                PORT,
            )),
            keepalive: None,
        })?;
    }
    wait_ping(ns[0], "10.0.42.2")?;
    let r = iperf(ns[0], ns[1], "10.0.42.2", o);
    for EmbeddedNode { rt, dp, pump } in [a, b] {
        pump.abort();
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(dp) = Arc::try_unwrap(dp) {
            let _ = run_in(&rt, async move { dp.destroy().await });
        }
    }
    r
}

fn genkey() -> Result<PrivateKey> {
    PrivateKey::generate().map_err(|e| anyhow::anyhow!("random key: {e}"))
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if !is_root() {
        bail!("wg-bench needs root (network namespaces)");
    }
    let mut lab = Lab::new();
    let tag = unique_tag("whb");
    let (ns_a, ns_b) = lab.netns_pair(&tag);
    let ns = [ns_a.as_str(), ns_b.as_str()];
    println!(
        "iperf3 TCP, {} s, {} stream(s), namespaces {} -> {}",
        o.seconds, o.streams, ns_a, ns_b
    );
    let want = |k: &str| o.only.iter().any(|x| x == k);
    let veth = if want("veth") {
        let v = iperf(ns[0], ns[1], "203.0.113.2", &o)?;
        println!("veth:          {v:10.0} Mbit/s");
        Some(v)
    } else {
        None
    };
    let wggo = if want("wggo") {
        let v = wireguard_go(&mut lab, &tag, ns, &o)?;
        println!("wireguard-go:  {v:10.0} Mbit/s");
        Some(v)
    } else {
        None
    };
    let ours = if want("embedded") {
        let v = embedded(&tag, ns, &o)?;
        println!("embedded:      {v:10.0} Mbit/s");
        Some(v)
    } else {
        None
    };
    if want("plain") {
        // SAFETY: single-threaded at this point: no other thread reads the
        // environment while it changes (the data planes above are gone).
        unsafe { std::env::set_var("WIREHUB_TUN_OFFLOAD", "0") };
        let v = embedded(&tag, ns, &o)?;
        unsafe { std::env::remove_var("WIREHUB_TUN_OFFLOAD") };
        println!("embedded, no offloads: {v:10.0} Mbit/s");
        if let Some(wggo) = wggo {
            println!("embedded, no offloads / wireguard-go: {:.2}", v / wggo);
        }
    }
    if let (Some(ours), Some(wggo)) = (ours, wggo) {
        println!("embedded / wireguard-go: {:.2}", ours / wggo);
    }
    if let (Some(ours), Some(veth)) = (ours, veth) {
        println!("embedded / veth:         {:.3}", ours / veth);
    }
    Ok(())
}
