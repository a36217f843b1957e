//! The live demo: one WireHub network brought up with real `wh` daemons in
//! network namespaces on this machine. A bootstrap and three trusted nodes
//! sit on public lab addresses; a fourth node sits behind an easy NAT
//! (endpoint-independent masquerade) and a fifth behind a hard NAT
//! (`masquerade random`, endpoint-dependent). The demo pings across the
//! overlay and prints `wh show` on the two NAT'd nodes, so the NAT kinds
//! they detected and their paths are seen: punched direct from the easy
//! NAT to a public node, relayed through a public node between the two
//! NAT'd nodes. It then removes every namespace and daemon it made, also
//! when a step fails.
//!
//! It never sends traffic outside the namespaces it creates and never
//! touches the machine's own interfaces or routes. Run as root:
//! `sudo bash e2e/demo.sh`.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, is_direct, path_glyph, peer_line, wait_detected, wait_direct};
use wirehub_e2e::{Host, Lab, Nat};

/// The node behind the easy NAT, and the one behind the hard NAT.
const EASY: &str = "node_d";
const HARD: &str = "node_e";
/// The public node the easy-NAT node's punched path is shown to.
const PUBLIC: &str = "node_a";

/// A trusted node of the demo network.
struct Node {
    host: Host,
    kind: Kind,
    /// Its overlay IPv4 (the i-th `trust` line gets 10.0.42.{i + 2}).
    ip: String,
    key: PathBuf,
    public_key: String,
    /// The public address of its NAT router, when it is behind one.
    router_ip: Option<String>,
}

/// Everything the demo brought up.
struct Demo {
    boot: Host,
    boot_pk: String,
    /// node_a, node_b, node_c on public addresses, node_d behind the easy
    /// NAT, node_e behind the hard NAT.
    nodes: Vec<Node>,
}

impl Demo {
    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.host.name == name)
            .ok_or_else(|| anyhow!("the demo has no node {name}"))
    }

    fn publics(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.kind == Kind::Public)
    }

    /// `wh show` and the daemon log of every node, for a failure message.
    fn report(&self, lab: &Lab) -> String {
        let hosts: Vec<&Host> = std::iter::once(&self.boot)
            .chain(self.nodes.iter().map(|n| &n.host))
            .collect();
        lab.report(&hosts)
    }
}

/// The paths the NAT part of the demo ends with, as `wh show` prints them.
struct NatPaths {
    easy_to_public: String,
    /// The public node's side: the endpoint is the easy NAT's mapping.
    public_to_easy: String,
    easy_to_hard: String,
    hard_to_easy: String,
    detected: Vec<(String, String)>,
}

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the demo builds network namespaces: run it as root (sudo bash e2e/demo.sh)");
    }
    let started = Instant::now();
    let mut lab = Lab::new().context("cannot create the lab")?;
    // On failure `lab` is dropped on the way out: its namespaces and the
    // daemons it started go with it; on Ctrl-C the handler removes them.
    lab.remove_on_interrupt()?;
    let demo = build_lab(&mut lab)?;
    let config = write_config(&lab, &demo)?;
    let up = start_nodes(&mut lab, &demo, &config)?;
    ping_public_nodes(&lab, &demo, up)?;
    reach_across_nats(&lab, &demo, up)?;
    let paths = settle_nat_paths(&lab, &demo)?;
    show_nat_nodes(&lab, &demo)?;
    ping_across_nats(&lab, &demo)?;
    summarize(&demo, &paths);
    heading("Cleaning up");
    drop(lab);
    println!(
        "namespaces and daemons removed; the demo took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn heading(text: &str) {
    println!("\n=== {text} ===");
}

/// The hosts and keys: a bootstrap, three public nodes, one node behind
/// each NAT kind.
fn build_lab(lab: &mut Lab) -> Result<Demo> {
    heading(&format!(
        "Lab {}: six hosts and two NAT routers, each in its own network namespace",
        lab.tag
    ));
    let boot = lab
        .public_host("boot")
        .context("cannot make the boot host")?;
    let (boot_sk, boot_pk) = lab.genkey("boot").context("cannot make boot's key")?;
    let public = lab.write("public", "name public\nworkbit 8\n")?;
    lab.wh_up(&boot, &public, Some(&boot_sk), &[])
        .context("cannot start the bootstrap")?;
    println!("boot    {:<14} public, the bootstrap", boot.ip);
    let kinds = [
        ("node_a", Kind::Public),
        ("node_b", Kind::Public),
        ("node_c", Kind::Public),
        (EASY, Kind::Behind(Nat::Easy)),
        (HARD, Kind::Behind(Nat::Hard)),
    ];
    let mut nodes = Vec::new();
    for (i, (name, kind)) in kinds.into_iter().enumerate() {
        let mut router_ip = None;
        let host = match kind {
            Kind::Behind(nat) => {
                let (host, router) = lab
                    .home_host(name, nat)
                    .with_context(|| format!("cannot make {name} behind a {} NAT", nat.name()))?;
                let (article, how) = match nat {
                    Nat::Hard => ("a", "masquerade random: a new port for each destination"),
                    _ => ("an", "masquerade: one port for every destination"),
                };
                println!(
                    "{name}  {:<14} behind {article} {} NAT, router {} ({how})",
                    host.ip,
                    nat.name(),
                    router.ip
                );
                router_ip = Some(router.ip);
                host
            }
            Kind::Public => {
                let host = lab
                    .public_host(name)
                    .with_context(|| format!("cannot make {name}"))?;
                println!("{name}  {:<14} public", host.ip);
                host
            }
        };
        let (key, public_key) = lab
            .genkey(name)
            .with_context(|| format!("cannot make {name}'s key"))?;
        nodes.push(Node {
            host,
            kind,
            ip: format!("10.0.42.{}", i + 2),
            key,
            public_key,
            router_ip,
        });
    }
    lab.wait_daemon(&boot, Duration::from_secs(10))
        .context("the bootstrap does not answer")?;
    Ok(Demo {
        boot,
        boot_pk,
        nodes,
    })
}

/// Writes `demo.conf` (the bootstrap and a `trust` line per node), prints
/// it and has `wh check` read it.
fn write_config(lab: &Lab, demo: &Demo) -> Result<PathBuf> {
    heading("The network file");
    let mut config = format!(
        "name demo\nsubnet 10.0.42.0/24\nboot {} {}\n",
        demo.boot_pk, demo.boot.ip
    );
    for node in &demo.nodes {
        config += &format!("trust {} {}\n", node.host.name, node.public_key);
    }
    let path = lab.write("demo.conf", &config)?;
    println!("$ cat demo.conf\n{config}");
    println!("$ wh check demo.conf");
    let first = &demo.nodes[0].host;
    print!("{}", lab.wh_ok(first, &["check", &path.to_string_lossy()])?);
    Ok(path)
}

/// `wh up` on every node, at once; returns when they started.
fn start_nodes(lab: &mut Lab, demo: &Demo, config: &Path) -> Result<Instant> {
    heading("Bringing the five nodes up");
    let start = Instant::now();
    for node in &demo.nodes {
        println!(
            "[{}] $ wh up demo.conf private-key {}.sk",
            node.host.name, node.host.name
        );
        lab.wh_up(&node.host, config, Some(&node.key), &[])
            .with_context(|| format!("cannot start wh up on {}", node.host.name))?;
    }
    for node in &demo.nodes {
        lab.wait_daemon(&node.host, Duration::from_secs(10))
            .with_context(|| format!("the daemon on {} does not answer", node.host.name))?;
    }
    Ok(start)
}

/// Pings from `from` to `to` until one is answered; prints when.
fn reach(lab: &Lab, demo: &Demo, from: &Node, to: &Node, up: Instant) -> Result<()> {
    let waited = lab
        .ping_until(&from.host, &to.ip, Duration::from_secs(20))
        .with_context(|| {
            format!(
                "{} could not reach {} ({}):{}",
                from.host.name,
                to.host.name,
                to.ip,
                demo.report(lab)
            )
        })?;
    println!(
        "{} reached {} ({}) {:.2} s after the first wh up (waited {:.2} s)",
        from.host.name,
        to.host.name,
        to.ip,
        up.elapsed().as_secs_f64(),
        waited.as_secs_f64()
    );
    Ok(())
}

/// Every public node pings every other.
fn ping_public_nodes(lab: &Lab, demo: &Demo, up: Instant) -> Result<()> {
    heading("Public nodes reach each other");
    for a in demo.publics() {
        for b in demo.publics() {
            if a.host.name != b.host.name {
                reach(lab, demo, a, b, up)?;
            }
        }
    }
    Ok(())
}

/// The NAT'd nodes reach a public node and each other, both ways.
fn reach_across_nats(lab: &Lab, demo: &Demo, up: Instant) -> Result<()> {
    heading("Nodes behind NATs reach a public node and each other");
    let (easy, hard, public) = (demo.node(EASY)?, demo.node(HARD)?, demo.node(PUBLIC)?);
    for (from, to) in [
        (easy, public),
        (public, easy),
        (hard, public),
        (easy, hard),
        (hard, easy),
    ] {
        reach(lab, demo, from, to, up)?;
    }
    Ok(())
}

/// Waits until each NAT'd node has detected its NAT kind, the easy-NAT
/// node's path to the public node is direct and the path between the two
/// NAT'd nodes is relayed, on both sides.
fn settle_nat_paths(lab: &Lab, demo: &Demo) -> Result<NatPaths> {
    let (easy, hard) = (demo.node(EASY)?, demo.node(HARD)?);
    let mut detected = Vec::new();
    for node in [easy, hard] {
        wait_detected(lab, &node.host, node.kind, Duration::from_secs(10)).map_err(|header| {
            anyhow!(
                "{} did not detect its {} NAT; wh show says: {header}{}",
                node.host.name,
                node.kind.name(),
                demo.report(lab)
            )
        })?;
        detected.push((node.host.name.clone(), lab.show_header(&node.host)));
    }
    wait_direct(lab, &easy.host, PUBLIC, Duration::from_secs(10)).ok_or_else(|| {
        anyhow!(
            "{EASY}'s path to {PUBLIC} did not turn direct: {}{}",
            peer_line(lab, &easy.host, PUBLIC),
            demo.report(lab)
        )
    })?;
    wait_relayed(lab, demo, &easy.host, HARD)?;
    wait_relayed(lab, demo, &hard.host, EASY)?;
    let public = demo.node(PUBLIC)?;
    Ok(NatPaths {
        easy_to_public: peer_line(lab, &easy.host, PUBLIC),
        public_to_easy: peer_line(lab, &public.host, EASY),
        easy_to_hard: peer_line(lab, &easy.host, HARD),
        hard_to_easy: peer_line(lab, &hard.host, EASY),
        detected,
    })
}

/// Waits until `wh show` on `from` lists `peer` as relayed (○).
fn wait_relayed(lab: &Lab, demo: &Demo, from: &Host, peer: &str) -> Result<()> {
    let timeout = wirehub_e2e::patience(Duration::from_secs(10));
    let start = Instant::now();
    loop {
        let glyph = path_glyph(lab, from, peer);
        if glyph == '○' {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{}'s path to {peer} is not relayed ({}): {}{}",
                from.name,
                if is_direct(glyph) {
                    "direct"
                } else {
                    "unknown"
                },
                peer_line(lab, from, peer),
                demo.report(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `wh show` on the two NAT'd nodes.
fn show_nat_nodes(lab: &Lab, demo: &Demo) -> Result<()> {
    for (name, what) in [(EASY, "behind the easy NAT"), (HARD, "behind the hard NAT")] {
        heading(&format!("wh show on {name}, {what}"));
        let node = demo.node(name)?;
        println!("[{name}] $ wh show");
        print!("{}", lab.wh_ok(&node.host, &["show"])?);
    }
    println!("(● direct, ◒ direct to a peer behind a NAT, ○ relayed via the relays' keys)");
    Ok(())
}

/// Three pings on each kind of path across the NATs, and one over IPv6.
fn ping_across_nats(lab: &Lab, demo: &Demo) -> Result<()> {
    heading("Pings across the NATs");
    let (easy, hard, public) = (demo.node(EASY)?, demo.node(HARD)?, demo.node(PUBLIC)?);
    for (from, to, path) in [
        (easy, public, "direct, punched through the easy NAT"),
        (easy, hard, "relayed"),
    ] {
        println!(
            "[{}] $ ping -c 3 {} ({})   # {path}",
            from.host.name, to.host.name, to.ip
        );
        let out = lab
            .exec(&from.host.netns, &["ping", "-c", "3", "-i", "0.2", &to.ip])
            .with_context(|| format!("{} got no answer from {}", from.host.name, to.host.name))?;
        print!("{}", ping_tail(&out));
    }
    let v6 = lab.wh_ok(&hard.host, &["resolve", EASY])?;
    if let Some(v6) = v6.lines().nth(1) {
        println!("[{HARD}] $ ping -c 3 {v6}   # {EASY}'s IPv6 overlay address, relayed");
        let out = lab
            .exec(&hard.host.netns, &["ping", "-c", "3", "-i", "0.2", v6])
            .with_context(|| format!("{HARD} got no answer from {EASY} over IPv6"))?;
        print!("{}", ping_tail(&out));
    }
    Ok(())
}

/// The summary lines of ping's output (the statistics), not every reply.
fn ping_tail(out: &str) -> String {
    out.lines()
        .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// What was shown, in a few lines, the relays named.
fn summarize(demo: &Demo, paths: &NatPaths) {
    heading("What this showed");
    let name_relays = |line: &str| {
        let mut line = line.to_string();
        let publics = std::iter::once(("boot", demo.boot_pk.as_str())).chain(
            demo.publics()
                .map(|n| (n.host.name.as_str(), n.public_key.as_str())),
        );
        for (name, key) in publics {
            if let Some(short) = key.get(..10) {
                line = line.replace(short, &format!("{short} ({name})"));
            }
        }
        line
    };
    for (name, header) in &paths.detected {
        let nat = header
            .split('<')
            .nth(1)
            .and_then(|s| s.split('>').next())
            .unwrap_or(header);
        println!("{name} found it is behind: {nat}");
    }
    let router = demo
        .node(EASY)
        .ok()
        .and_then(|n| n.router_ip.as_deref())
        .unwrap_or("?");
    println!("direct, punched through the easy NAT:");
    println!("  on {EASY}:   {}", path_only(&paths.easy_to_public));
    println!(
        "  on {PUBLIC}:   {}   (the mapping {EASY}'s NAT router {router} keeps open)",
        path_only(&paths.public_to_easy)
    );
    println!("relayed between the two NATs, through public nodes:");
    println!(
        "  on {EASY}:   {}",
        name_relays(&path_only(&paths.easy_to_hard))
    );
    println!(
        "  on {HARD}:   {}",
        name_relays(&path_only(&paths.hard_to_easy))
    );
}

/// A `wh show` peer line without its handshake and traffic counters.
fn path_only(line: &str) -> String {
    line.split(", handshake").next().unwrap_or(line).to_string()
}
