//! `wg-bench`: the data plane against the references, side by side, between
//! two lab namespaces joined by a veth (root only).
//!
//! Contenders, alternated in every round so a busy machine weighs on all of
//! them alike:
//! - `veth`: the bare link (TCP only, the ceiling);
//! - `wggo-old`: Debian bookworm's wireguard-go (`/usr/bin/wireguard-go`,
//!   0.0.20220316, before the offload work);
//! - `wggo-current`: the current wireguard-go (0.0.20231211: TUN TSO/GRO, UDP
//!   GSO/GRO, batched I/O), from `--wggo-current PATH`, else fetched by
//!   `e2e/bench/wireguard-go-current.sh` into a cache outside the repository;
//! - `embedded`: WireHub's embedded data plane;
//! - `plain` (only when asked): the embedded data plane with the TUN offloads
//!   off (`WIREHUB_TUN_OFFLOAD=0`).
//!
//! Figures per round: TCP, one flow and four (`iperf3 -P 4`); UDP packets per
//! second at a 64-byte payload with under 1 % loss (the rate doubles from
//! 20,000/s until loss reaches 1 %, or halves until it passes, then is
//! bisected four times between the last passing and the first failing
//! rate: within about 6 %); ping round trip p50/p99 (every 10 ms)
//! while one TCP flow runs; CPU seconds of both WireGuard processes (or of
//! this process, for the embedded data plane, which runs inside it) per
//! Gbit moved by the single flow. Printed: the median of the rounds and
//! their spread, then the ratios of the embedded data plane to each
//! wireguard-go.
//!
//! ```text
//! cargo run --release --bin wg-bench -- [--time S] [--rounds N] [--only LIST] [--wggo-current PATH] [--no-udp-gro]
//! ```
//!
//! The embedded data plane's nodes read their socket as the daemon does
//! (`node::daemon`): with `UDP_GRO`, a run of datagrams per system call.
//! `--no-udp-gro` reads one datagram per call instead (the plain loop of
//! docs/dataplane.md; the default of this bench until 2026-12-06).
//!
//! A lab tool, not part of the product: it spawns `ip`, `wg`, `wireguard-go`,
//! `iperf3` and `ping`. Everything it creates carries a per-run prefix and is
//! deleted on exit, also on failure.

#[path = "../../tests/dataplane_lab/mod.rs"]
mod lab;

use anyhow::{Context, Result, bail};
use lab::{Lab, is_root, run, run_in, runtime_in, unique_tag};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wirehub::dataplane::netns::lab::{LabNode, start as lab_node};
use wirehub::dataplane::{BackendKind, DataPlane, InterfaceConfig, PeerConfig};
use wirehub::keys::PrivateKey;

const PORT: u16 = 62096;
const IPERF_PORT: &str = "5201";
const OLD_WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
/// UDP test: payload bytes, first rate, and the loss that ends the search.
const UDP_PAYLOAD: u64 = 64;
const UDP_FIRST_PPS: u64 = 20_000;
const UDP_LOWEST_PPS: u64 = 1_250;
const UDP_MAX_LOSS_PERCENT: f64 = 1.0;

struct Options {
    seconds: u32,
    rounds: u32,
    only: Vec<String>,
    wggo_current: Option<PathBuf>,
    /// The daemon loop reads with UDP_GRO (dataplane::udp::try_recv_gro),
    /// as the daemon does; off with `--no-udp-gro`.
    udp_gro: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        seconds: 5,
        rounds: 3,
        only: ["veth", "wggo-old", "wggo-current", "embedded"]
            .map(String::from)
            .to_vec(),
        wggo_current: None,
        udp_gro: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--time" | "-t" => o.seconds = args.next().context("--time SECONDS")?.parse()?,
            "--rounds" | "-r" => o.rounds = args.next().context("--rounds N")?.parse()?,
            "--only" => {
                o.only = args
                    .next()
                    .context("--only veth,wggo-old,wggo-current,embedded,plain")?
                    .split(',')
                    .map(str::to_string)
                    .collect();
            }
            "--wggo-current" => {
                o.wggo_current = Some(args.next().context("--wggo-current PATH")?.into())
            }
            // Kept for old command lines: it is the default now.
            "--udp-gro" => o.udp_gro = true,
            "--no-udp-gro" => o.udp_gro = false,
            "--help" | "-h" => {
                println!(
                    "wg-bench [--time SECONDS (5)] [--rounds N (3)] [--only veth,wggo-old,wggo-current,embedded,plain] [--wggo-current PATH] [--no-udp-gro]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if o.rounds == 0 || o.seconds == 0 {
        bail!("--rounds and --time must be at least 1");
    }
    Ok(o)
}

/// One contender's figures in one round (`None`: not measured for it).
#[derive(Debug, Default, Clone)]
struct Figures {
    tcp1_mbit: Option<f64>,
    tcp4_mbit: Option<f64>,
    udp64_pps: Option<f64>,
    ping_p50_ms: Option<f64>,
    ping_p99_ms: Option<f64>,
    cpu_s_per_gbit: Option<f64>,
}

/// Reads one figure.
type Read = fn(&Figures) -> Option<f64>;

/// Rows of the table: label, how to read a figure, and whether more is better.
const ROWS: [(&str, Read, bool); 6] = [
    ("TCP 1 flow, Mbit/s", |f| f.tcp1_mbit, true),
    ("TCP 4 flows, Mbit/s", |f| f.tcp4_mbit, true),
    ("UDP 64 B, packets/s (<1% loss)", |f| f.udp64_pps, true),
    ("ping under load p50, ms", |f| f.ping_p50_ms, false),
    ("ping under load p99, ms", |f| f.ping_p99_ms, false),
    ("CPU s per Gbit (1 flow)", |f| f.cpu_s_per_gbit, false),
];

/// Where the two ends' WireGuard runs, for the CPU figure.
enum Cpu {
    /// No WireGuard (the bare veth).
    None,
    /// Processes (wireguard-go): their PIDs.
    Processes(Vec<i32>),
    /// This process (the embedded data plane runs in its threads).
    ThisProcess,
}

impl Cpu {
    /// CPU seconds used so far.
    fn seconds(&self) -> Option<f64> {
        let pids: Vec<String> = match self {
            Cpu::None => return None,
            Cpu::Processes(pids) => pids.iter().map(i32::to_string).collect(),
            Cpu::ThisProcess => vec!["self".into()],
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut total = 0.0;
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces): state is
            // field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            total += (utime + stime) / ticks;
        }
        Some(total)
    }
}

/// A contender's tunnel between the two namespaces, up.
struct Tunnel {
    /// The server's address inside the tunnel (or on the veth).
    server_addr: String,
    cpu: Cpu,
    /// Stops it.
    teardown: Box<dyn FnOnce()>,
}

fn iperf_server(ns: &str, addr: &str) -> Result<Child> {
    let server = Command::new("ip")
        .args([
            "netns", "exec", ns, "iperf3", "-s", "-1", "-p", IPERF_PORT, "-B", addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(server)
}

/// One iperf3 run from `client_ns`; its JSON report.
fn iperf(client_ns: &str, server_ns: &str, addr: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut server = iperf_server(server_ns, addr)?;
    let out = Command::new("ip")
        .args([
            "netns", "exec", client_ns, "iperf3", "-c", addr, "-p", IPERF_PORT, "-J",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value =
        serde_json::from_slice(&out?.stdout).context("iperf3 JSON output")?;
    if let Some(err) = json.get("error") {
        bail!("iperf3: {err}");
    }
    Ok(json)
}

/// TCP with `streams` flows for `seconds`: Mbit/s received.
fn tcp(ns: [&str; 2], addr: &str, seconds: u32, streams: u32) -> Result<f64> {
    let json = iperf(
        ns[0],
        ns[1],
        addr,
        &["-t", &seconds.to_string(), "-P", &streams.to_string()],
    )?;
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .map(|bps| bps / 1e6)
        .context("iperf3 JSON without end.sum_received.bits_per_second")
}

/// The highest rate of 64-byte UDP datagrams delivered with under 1 % loss:
/// packets per second received.
fn udp_small(ns: [&str; 2], addr: &str, seconds: u32) -> Result<f64> {
    search_rate(|pps| {
        let bits = pps * UDP_PAYLOAD * 8;
        let json = iperf(
            ns[0],
            ns[1],
            addr,
            &[
                "-u",
                "-l",
                &UDP_PAYLOAD.to_string(),
                "-b",
                &bits.to_string(),
                "-t",
                &seconds.to_string(),
            ],
        )?;
        let sum = json
            .pointer("/end/sum")
            .context("iperf3 UDP JSON without end.sum")?;
        let packets = sum.get("packets").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let lost = sum
            .get("lost_packets")
            .and_then(|v| v.as_f64())
            .unwrap_or(packets);
        let loss = if packets > 0.0 {
            100.0 * lost / packets
        } else {
            100.0
        };
        Ok(Trial {
            loss_percent: loss,
            received_pps: (packets - lost) / f64::from(seconds),
        })
    })
}

/// What one offered rate gave.
#[derive(Debug, Clone, Copy)]
struct Trial {
    loss_percent: f64,
    received_pps: f64,
}

/// Bisection steps after the doubling found a failing rate: the answer is
/// then within 1/16 of the last doubling's interval (about 6 %).
const UDP_BISECT_STEPS: u32 = 4;

/// The highest rate `trial` keeps up with (under 1 % loss, at least 80 % of
/// the offered rate received): the rate doubles from [`UDP_FIRST_PPS`]
/// until it fails (or halves until one passes), then is bisected between
/// the last passing and the first failing rate. Returns the packets per
/// second received at the best passing rate (or the best a sender that
/// could not keep up managed).
fn search_rate(mut trial: impl FnMut(u64) -> Result<Trial>) -> Result<f64> {
    let mut best = 0.0;
    let mut passing: Option<u64> = None;
    let mut failing: Option<u64> = None;
    let mut pps = UDP_FIRST_PPS;
    let note = |t: Trial, pps: u64, best: &mut f64| -> bool {
        let kept_up = t.loss_percent < UDP_MAX_LOSS_PERCENT && t.received_pps >= 0.8 * pps as f64;
        if t.loss_percent < UDP_MAX_LOSS_PERCENT && t.received_pps > *best {
            *best = t.received_pps;
        }
        kept_up
    };
    // Doubling (or halving) until a passing and a failing rate are known.
    loop {
        let t = trial(pps)?;
        if note(t, pps, &mut best) {
            passing = Some(pps);
            if failing.is_some() {
                break;
            }
            pps *= 2;
        } else {
            failing = Some(pps);
            if passing.is_some() || pps <= UDP_LOWEST_PPS {
                break;
            }
            pps /= 2;
        }
    }
    let (Some(mut lo), Some(mut hi)) = (passing, failing) else {
        return Ok(best);
    };
    for _ in 0..UDP_BISECT_STEPS {
        let mid = lo + (hi - lo) / 2;
        if mid == lo {
            break;
        }
        if note(trial(mid)?, mid, &mut best) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

/// Ping every 10 ms while one TCP flow runs: (p50, p99) in ms.
fn ping_under_load(ns: [&str; 2], addr: &str, seconds: u32) -> Result<(f64, f64)> {
    let mut server = iperf_server(ns[1], addr)?;
    let mut bulk = Command::new("ip")
        .args([
            "netns", "exec", ns[0], "iperf3", "-c", addr, "-p", IPERF_PORT,
        ])
        .args(["-t", &(seconds + 1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 bulk flow")?;
    std::thread::sleep(Duration::from_millis(500));
    let count = (seconds * 100).saturating_sub(50).max(10);
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns[0], "ping", "-n", "-i", "0.01", "-W", "1",
        ])
        .args(["-c", &count.to_string(), addr])
        .stdin(Stdio::null())
        .output()
        .context("ping");
    let _ = bulk.wait();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out?.stdout).into_owned();
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.is_empty() {
        bail!("no ping answered under load");
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.50), at(0.99)))
}

/// Every figure for one contender's tunnel.
fn measure(ns: [&str; 2], t: &Tunnel, o: &Options, all: bool) -> Result<Figures> {
    let cpu_before = t.cpu.seconds();
    let started = Instant::now();
    let tcp1 = tcp(ns, &t.server_addr, o.seconds, 1)?;
    let cpu_used = cpu_before.zip(t.cpu.seconds()).map(|(a, b)| b - a);
    let gbit = tcp1 * started.elapsed().as_secs_f64() / 1000.0;
    let mut f = Figures {
        tcp1_mbit: Some(tcp1),
        cpu_s_per_gbit: cpu_used.filter(|_| gbit > 0.0).map(|c| c / gbit),
        ..Figures::default()
    };
    if all {
        f.tcp4_mbit = Some(tcp(ns, &t.server_addr, o.seconds, 4)?);
        f.udp64_pps = Some(udp_small(ns, &t.server_addr, o.seconds.min(3))?);
        let (p50, p99) = ping_under_load(ns, &t.server_addr, o.seconds)?;
        f.ping_p50_ms = Some(p50);
        f.ping_p99_ms = Some(p99);
    }
    Ok(f)
}

fn wait_ping(ns: &str, addr: &str) -> Result<()> {
    if lab::ping_until(ns, addr, 10) {
        Ok(())
    } else {
        bail!("no ping from {ns} to {addr}")
    }
}

/// A wireguard-go binary in each namespace (foreground, so its PID is ours),
/// configured with `wg`.
fn wireguard_go(lab: &mut Lab, tag: &str, ns: [&str; 2], bin: &PathBuf) -> Result<Tunnel> {
    let keys = [genkey()?, genkey()?];
    let dir = std::env::temp_dir().join(format!("{tag}-keys"));
    std::fs::create_dir_all(&dir)?;
    let names = [format!("{tag}g"), format!("{tag}h")];
    let mut children = Vec::new();
    for i in 0..2 {
        lab.track_wireguard_go(&names[i]);
        let child = Command::new("ip")
            .args(["netns", "exec", ns[i]])
            .arg(bin)
            .args(["-f", &names[i]])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        children.push(child);
    }
    // `ip netns exec` execs the binary: the child's PID is wireguard-go's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !names
        .iter()
        .all(|n| std::path::Path::new(&format!("/var/run/wireguard/{n}.sock")).exists())
    {
        if Instant::now() > deadline {
            bail!("{} did not open its UAPI sockets", bin.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..2 {
        let key_file = dir.join(format!("{i}.key"));
        std::fs::write(&key_file, keys[i].to_base64())?;
        let other = 1 - i;
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
    let pids = children.iter().map(|c| c.id() as i32).collect();
    let ns_owned = [ns[0].to_string(), ns[1].to_string()];
    let teardown = move || {
        for (i, name) in names.iter().enumerate() {
            lab::run_ok(&["ip", "-n", &ns_owned[i], "link", "del", name]);
        }
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    let t = Tunnel {
        server_addr: "10.0.43.2".into(),
        cpu: Cpu::Processes(pids),
        teardown: Box::new(teardown),
    };
    if let Err(e) = wait_ping(ns[0], "10.0.43.2") {
        (t.teardown)();
        return Err(e);
    }
    Ok(t)
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

/// WireHub's embedded data plane in each namespace, inside this process.
fn embedded(tag: &str, ns: [&str; 2], o: &Options) -> Result<Tunnel> {
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
    let teardown = move || {
        for EmbeddedNode { rt, dp, pump } in [a, b] {
            pump.abort();
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(dp) = Arc::try_unwrap(dp) {
                let _ = run_in(&rt, async move { dp.destroy().await });
            }
        }
    };
    let t = Tunnel {
        server_addr: "10.0.42.2".into(),
        cpu: Cpu::ThisProcess,
        teardown: Box::new(teardown),
    };
    if let Err(e) = wait_ping(ns[0], "10.0.42.2") {
        (t.teardown)();
        return Err(e);
    }
    Ok(t)
}

fn genkey() -> Result<PrivateKey> {
    PrivateKey::generate().map_err(|e| anyhow::anyhow!("random key: {e}"))
}

/// The current wireguard-go: given, or fetched into its cache by the script.
fn current_wireguard_go(o: &Options) -> Result<PathBuf> {
    if let Some(p) = &o.wggo_current {
        return Ok(p.clone());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../e2e/bench/wireguard-go-current.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {script}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        bail!("{script} found no current wireguard-go; pass --wggo-current PATH");
    }
    Ok(path.into())
}

/// Brings one contender up, measures it, takes it down.
fn run_contender(
    lab: &mut Lab,
    tag: &str,
    ns: [&str; 2],
    name: &str,
    o: &Options,
    bins: &BTreeMap<&str, PathBuf>,
) -> Result<Figures> {
    let tunnel = match name {
        "veth" => Tunnel {
            server_addr: "203.0.113.2".into(),
            cpu: Cpu::None,
            teardown: Box::new(|| {}),
        },
        "wggo-old" | "wggo-current" => {
            let bin = bins.get(name).context("no binary")?;
            wireguard_go(lab, &format!("{tag}{}", &name[5..6]), ns, bin)?
        }
        "embedded" => embedded(tag, ns, o)?,
        "plain" => {
            // SAFETY: the data planes read this once, when they start, on
            // threads started after this call; nothing else reads it.
            unsafe { std::env::set_var("WIREHUB_TUN_OFFLOAD", "0") };
            let t = embedded(tag, ns, o);
            unsafe { std::env::remove_var("WIREHUB_TUN_OFFLOAD") };
            t?
        }
        other => bail!("unknown contender {other}"),
    };
    let figures = measure(ns, &tunnel, o, name != "veth");
    (tunnel.teardown)();
    figures
}

fn median_and_spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

/// A figure with as many decimals as it needs.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(names: &[&str], results: &BTreeMap<&str, Vec<Figures>>) {
    let cell = |name: &str, read: Read| -> Option<(f64, f64, f64)> {
        let values: Vec<f64> = results.get(name)?.iter().filter_map(read).collect();
        median_and_spread(&values)
    };
    print!("\n{:32}", "figure (median [min-max])");
    for n in names {
        print!(" | {n:>26}");
    }
    println!();
    for (label, read, _) in ROWS {
        print!("{label:32}");
        for n in names {
            match cell(n, read) {
                Some((m, lo, hi)) => {
                    print!(" | {:>26}", format!("{} [{}-{}]", num(m), num(lo), num(hi)))
                }
                None => print!(" | {:>26}", "-"),
            }
        }
        println!();
    }
    for reference in ["wggo-current", "wggo-old"] {
        if !names.contains(&reference) || !names.contains(&"embedded") {
            continue;
        }
        println!("\nembedded / {reference} (medians):");
        for (label, read, more_is_better) in ROWS {
            if let (Some((ours, _, _)), Some((theirs, _, _))) =
                (cell("embedded", read), cell(reference, read))
            {
                let better = if more_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                };
                println!("  {label:32} {:>6.2}x  ({better})", ours / theirs);
            }
        }
    }
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if !is_root() {
        bail!("wg-bench needs root (network namespaces)");
    }
    let mut bins = BTreeMap::new();
    let want = |k: &str| o.only.iter().any(|x| x == k);
    if want("wggo-old") {
        bins.insert("wggo-old", PathBuf::from(OLD_WIREGUARD_GO));
    }
    if want("wggo-current") {
        bins.insert("wggo-current", current_wireguard_go(&o)?);
    }
    let mut lab = Lab::new();
    let tag = unique_tag("whb");
    let (ns_a, ns_b) = lab.netns_pair(&tag);
    let ns = [ns_a.as_str(), ns_b.as_str()];
    let names: Vec<&str> = o.only.iter().map(String::as_str).collect();
    println!(
        "wg-bench: {} round(s) of {} s per figure, namespaces {ns_a} -> {ns_b}; contenders {}; embedded socket read {}",
        o.rounds,
        o.seconds,
        names.join(", "),
        if o.udp_gro {
            "with UDP_GRO (as the daemon)"
        } else {
            "one datagram per call (--no-udp-gro)"
        }
    );
    for (name, bin) in &bins {
        println!("  {name}: {}", bin.display());
    }
    let mut results: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    for round in 0..o.rounds as usize {
        // Alternate: each round starts with the next contender.
        for k in 0..names.len() {
            let name = names[(round + k) % names.len()];
            let f = run_contender(&mut lab, &tag, ns, name, &o, &bins)
                .with_context(|| format!("round {}, {name}", round + 1))?;
            println!("round {} {name:14} {f:?}", round + 1);
            results.entry(name).or_default().push(f);
        }
    }
    print_table(&names, &results);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data plane that carries up to `capacity` packets/s and loses the
    /// rest.
    fn capped(capacity: f64) -> impl FnMut(u64) -> Result<Trial> {
        move |pps| {
            let offered = pps as f64;
            let received = offered.min(capacity);
            Ok(Trial {
                loss_percent: 100.0 * (offered - received) / offered,
                received_pps: received,
            })
        }
    }

    #[test]
    fn the_rate_search_lands_within_7_percent_of_what_the_data_plane_carries() {
        for capacity in [3_000.0, 41_000.0, 57_000.0, 79_000.0, 150_000.0] {
            let found = search_rate(capped(capacity)).unwrap();
            assert!(
                found <= capacity && found >= 0.93 * capacity,
                "capacity {capacity}: found {found}"
            );
        }
    }

    #[test]
    fn a_data_plane_that_carries_nothing_scores_zero() {
        assert_eq!(search_rate(capped(0.0)).unwrap(), 0.0);
    }
}
