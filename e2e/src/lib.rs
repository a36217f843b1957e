//! The network-namespace lab: hosts in network namespaces on a bridged
//! "internet" (203.0.113.0/24), optional NAT routers in front of home
//! networks, and real `wh` daemons with their own run directories.
//!
//! Every namespace, interface and process the lab makes is named with a
//! per-run tag and removed when the [`Lab`] is dropped, also when a test
//! panics. Traffic never leaves the lab's namespaces.

pub mod chart;
pub mod conformance;
pub mod nat;
pub mod stream;
pub mod wire;

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether the lab can run here (root, `ip` present).
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("ip").arg("-V").output().is_ok()
}

/// Skips a test (returning early) with a message when the lab cannot run.
#[macro_export]
macro_rules! require_lab {
    () => {
        if !$crate::available() {
            eprintln!("skipped: the lab needs root and iproute2");
            return;
        }
    };
}

/// `timeout` stretched by `WH_LAB_PATIENCE` (a factor, 1 when unset):
/// the kernel VM (e2e/kernel/lab.sh) runs the lab under software emulation,
/// 10-50x slower than a host, and sets it; on a host the bounds are the
/// ones users rely on. Every waiting helper of [`Lab`] applies it.
pub fn patience(timeout: Duration) -> Duration {
    let factor = std::env::var("WH_LAB_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1);
    timeout * factor
}

/// The `wh` binary of this build.
pub fn wh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WH_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> → target/<profile>/wh
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("wh")
}

/// The `wh-attack` binary of this build (agent/src/bin/wh_attack.rs), the
/// hostile peer of the attack tests.
pub fn wh_attack_bin() -> PathBuf {
    wh_bin().with_file_name("wh-attack")
}

/// Runs a command and fails with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    refuse_if_interrupted()?;
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The internet's IPv6 router (on the bridge): the default IPv6 route of
/// dual-stack hosts and routers.
const IPV6_CORE: &str = "2001:db8:113::1";

/// A host of the lab: a network namespace and its run directory.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: String,
    /// The host's address on its network (public, or private behind a router).
    pub ip: String,
    pub run_dir: PathBuf,
}

/// NAT behaviours a router can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (port-preserving masquerade).
    Easy,
    /// Endpoint-dependent mapping (`masquerade random`).
    Hard,
    /// Endpoint-independent mapping, with a UPnP IGD / NAT-PMP server
    /// (miniupnpd) on the router.
    Upnp,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Easy => "easy",
            Nat::Hard => "hard",
            Nat::Upnp => "upnp",
        }
    }
}

/// What a router's WAN link adds, in each direction: the one-way delay of
/// the link (so a round trip through one such router takes `2 * delay_ms`
/// more) and the fraction of frames lost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    pub delay_ms: u32,
    /// Fraction of frames dropped each way, 0.0 to 1.0.
    pub loss: f64,
}

impl Link {
    /// A link with this one-way delay and no loss.
    pub fn delay(ms: u32) -> Link {
        Link {
            delay_ms: ms,
            loss: 0.0,
        }
    }

    fn is_plain(&self) -> bool {
        self.delay_ms == 0 && self.loss == 0.0
    }
}

/// How a [`Link`] was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shaper {
    /// Nothing to add: a plain veth.
    None,
    /// `tc netem` on both ends of the veth.
    Netem,
    /// The kernel has no netem (or `WH_LAB_WIRE=1`): the veth was replaced
    /// by a [`wire::Wire`], two TAP devices and the lab's threads between.
    Wire,
}

/// A router's link to the internet bridge.
struct Wan {
    netns: String,
    ip: String,
    /// The internet side's interface name (veth or TAP), in the internet
    /// namespace; the router side is always `wan`.
    outer: String,
    wire: Option<wire::Wire>,
    /// The link's MTU when [`Lab::set_mtu`] set one.
    mtu: Option<u32>,
}

/// A bootstrap node and trusted nodes on public addresses, all running one
/// network file: made by [`Lab::trusted_network`].
#[derive(Debug)]
pub struct TrustedNetwork {
    /// The bootstrap node (see [`Lab::public_boot`]).
    pub boot: Host,
    /// The trusted nodes, `node_a`, `node_b`, ... (see [`node_name`]): the
    /// i-th has the overlay IPv4 10.0.42.{i + 2}.
    pub nodes: Vec<Host>,
    /// Each node's (private key file, public key).
    pub keys: Vec<(PathBuf, String)>,
    /// `lab.conf`: network `lab`, subnet 10.0.42.0/24, the bootstrap and a
    /// `trust` line for each node, in order.
    pub config: PathBuf,
}

/// A network whose only public node is its bootstrap (started as a new
/// user would, with a plain `wh up`: no `mode direct`), and nodes behind
/// NATs: made by [`Lab::lone_boot_network`].
#[derive(Debug)]
pub struct LoneBootNetwork {
    pub boot: Host,
    pub boot_pk: String,
    /// `node_a`, `node_b`, ... behind their NATs, in the order asked: the
    /// i-th has the overlay IPv4 10.0.42.{i + 2}.
    pub nodes: Vec<Host>,
    pub routers: Vec<Host>,
    /// Each node's (private key file, public key).
    pub keys: Vec<(PathBuf, String)>,
    /// `lone.conf`: network `lone`, subnet 10.0.42.0/24, the bootstrap and
    /// a `trust` line for each node.
    pub config: PathBuf,
}

/// A `wh nc ARGS` command on `host` (its run directory, a 15 s timeout for
/// the invitation to be accepted), for the caller to wire and spawn.
pub fn wh_nc(host: &Host, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host.netns])
        .arg(wh_bin())
        .arg("nc")
        .args(args)
        .env("WH_RUN_DIR", &host.run_dir)
        .env("WH_NC_TIMEOUT_SECS", "15");
    c
}

/// Reads the invitation a `wh nc` listener prints alone on the first line
/// of its stderr, and keeps draining the rest so it never blocks.
pub fn read_invitation(child: &mut Child) -> String {
    use std::io::BufRead;
    let Some(stderr) = child.stderr.take() else {
        return String::new();
    };
    let mut lines = std::io::BufReader::new(stderr).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    std::thread::spawn(move || for _ in lines.by_ref() {});
    line.trim().to_string()
}

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    Command::new("sha256sum")
        .arg(path)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// The lab's name for the i-th node of a network: `node_a`, `node_b`, ...
/// `node_z`, then `node_aa`, `node_ab`, ...
pub fn node_name(i: usize) -> String {
    let letter = |j: usize| char::from(b'a' + (j % 26) as u8);
    if i < 26 {
        format!("node_{}", letter(i))
    } else {
        format!("node_{}{}", letter(i / 26 - 1), letter(i))
    }
}

/// The lab. Dropping it removes everything it made.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    /// Extra environment for every daemon started with [`Lab::wh_up`].
    pub env: Vec<(String, String)>,
    internet: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    wans: Vec<Wan>,
    next_public: u8,
    next_home: u8,
    /// Whether the internet routes IPv6 (see [`Lab::ipv6_core`]).
    ipv6_core: bool,
}

impl Lab {
    /// A new lab with an empty internet.
    pub fn new() -> Result<Lab> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("w{:x}{}", std::process::id() % 0xfffff, n);
        let dir = std::env::temp_dir().join(format!("wirehub-lab-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let internet = format!("{tag}-net");
        let mut lab = Lab {
            tag,
            dir,
            env: Vec::new(),
            internet: internet.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            wans: Vec::new(),
            next_public: 10,
            next_home: 1,
            ipv6_core: false,
        };
        lab.add_netns(&internet)?;
        lab.exec(&internet, &["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.exec(&internet, &["ip", "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        sh("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        self.exec(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs a command inside a namespace and returns its stdout.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", netns];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs a command inside a namespace and returns its whole output.
    pub fn exec_output(&self, netns: &str, args: &[&str]) -> Result<Output> {
        refuse_if_interrupted()?;
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .output()
            .context("cannot run ip netns exec")
    }

    /// iperf3 TCP for `secs` from `client` to a server on `server` bound to
    /// `target` (`reverse`: from the server, `-R`): Mbit/s received. The
    /// one iperf3 driver of the lab's benchmarks.
    pub fn iperf3(
        &self,
        client: &Host,
        server: &Host,
        target: &str,
        secs: u64,
        reverse: bool,
    ) -> Result<f64> {
        let mut srv = Command::new("ip")
            .args(["netns", "exec", &server.netns])
            .args(["iperf3", "-s", "-1", "-B", target])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("iperf3 -s")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let limit = (secs + 25).to_string();
        let secs = secs.to_string();
        let mut args = vec!["timeout", &limit, "iperf3", "-c", target, "-t", &secs, "-J"];
        if reverse {
            args.push("-R");
        }
        let out = self.exec_output(&client.netns, &args);
        let _ = srv.kill();
        let _ = srv.wait();
        let v: serde_json::Value =
            serde_json::from_slice(&out?.stdout).context("iperf3's JSON output")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no throughput in iperf3's output")?;
        Ok(bps / 1e6)
    }

    /// Connects namespace `ns` to the internet bridge with address `ip`/24;
    /// returns the name of the veth's end on the bridge.
    fn plug_into_internet(&mut self, ns: &str, ifname: &str, ip: &str) -> Result<String> {
        let idx = self.namespaces.len();
        let outer = format!("{}v{idx}", self.tag);
        sh(
            "ip",
            &[
                "link",
                "add",
                &outer,
                "netns",
                &self.internet,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                ns,
            ],
        )?;
        self.exec(
            &self.internet,
            &["ip", "link", "set", &outer, "master", "br0", "up"],
        )?;
        self.exec(
            ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname],
        )?;
        self.exec(ns, &["ip", "link", "set", ifname, "up"])?;
        Ok(outer)
    }

    fn new_host(&mut self, name: &str, ip: String) -> Result<Host> {
        let netns = format!("{}-{name}", self.tag);
        let run_dir = self.dir.join(name);
        std::fs::create_dir_all(&run_dir)?;
        self.add_netns(&netns)?;
        Ok(Host {
            name: name.to_string(),
            netns,
            ip,
            run_dir,
        })
    }

    /// IPv6 on the internet: the bridge's namespace routes 2001:db8:113::/64
    /// (on the bridge, itself at ::1) and the home networks' /64s (through
    /// their routers), once.
    fn ipv6_core(&mut self) -> Result<()> {
        if !self.ipv6_core {
            let net = self.internet.clone();
            self.exec(&net, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
            self.add_ipv6(&net, "br0", IPV6_CORE, None)?;
            self.ipv6_core = true;
        }
        Ok(())
    }

    /// Gives interface `dev` of namespace `ns` the IPv6 address `ip6`/64
    /// (usable at once: no duplicate-address detection) and, when `via` is
    /// set, a default IPv6 route through it.
    fn add_ipv6(&self, ns: &str, dev: &str, ip6: &str, via: Option<&str>) -> Result<()> {
        let cidr = format!("{ip6}/64");
        self.exec(ns, &["ip", "-6", "addr", "add", &cidr, "dev", dev, "nodad"])?;
        if let Some(gw) = via {
            self.exec(ns, &["ip", "-6", "route", "add", "default", "via", gw])?;
        }
        Ok(())
    }

    /// The public IPv6 address the lab gives a host or router with public
    /// IPv4 address 203.0.113.x: 2001:db8:113::x.
    fn public_ipv6(ip: &str) -> String {
        format!("2001:db8:113::{}", ip.rsplit('.').next().unwrap_or("1"))
    }

    /// A host with a public IPv4 address (203.0.113.x) and a public IPv6
    /// address (2001:db8:113::x, returned) on the internet: a dual-stack host.
    pub fn dual_stack_host(&mut self, name: &str) -> Result<(Host, String)> {
        self.ipv6_core()?;
        let host = self.public_host(name)?;
        let ip6 = Self::public_ipv6(&host.ip);
        self.add_ipv6(&host.netns, "eth0", &ip6, Some(IPV6_CORE))?;
        Ok((host, ip6))
    }

    /// Gives a home host made by [`Lab::home_host`] and its router IPv6, as
    /// home routers do: a global /64 on the home network (2001:db8:N::/64,
    /// the host at ::2, returned), routed without NAT, behind a stateful
    /// firewall (replies and what the home sends out pass; nothing
    /// unsolicited comes in). The router's IPv4 NAT is unchanged.
    pub fn home_ipv6(&mut self, host: &Host, router: &Host) -> Result<String> {
        self.ipv6_core()?;
        // Home network N is 198.51.100.16N/28 (the host at .16N+2).
        let n = host
            .ip
            .rsplit('.')
            .next()
            .and_then(|l| l.parse::<u32>().ok())
            .map_or(0, |l| l / 16);
        let prefix = format!("2001:db8:{n:x}::");
        let wan6 = Self::public_ipv6(&router.ip);
        self.add_ipv6(&router.netns, "wan", &wan6, Some(IPV6_CORE))?;
        self.add_ipv6(&router.netns, "lan", &format!("{prefix}1"), None)?;
        self.exec(
            &router.netns,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        )?;
        let host6 = format!("{prefix}2");
        self.add_ipv6(&host.netns, "eth0", &host6, Some(&format!("{prefix}1")))?;
        let net = self.internet.clone();
        self.exec(
            &net,
            &[
                "ip",
                "-6",
                "route",
                "add",
                &format!("{prefix}/64"),
                "via",
                &wan6,
            ],
        )?;
        let rules = "table ip6 homefw {\n\
               chain input { type filter hook input priority filter; policy drop; ct state established,related accept; meta l4proto ipv6-icmp accept; iifname { \"lo\", \"lan\" } accept; }\n\
               chain forward { type filter hook forward priority filter; policy drop; ct state established,related accept; iifname \"lan\" oifname \"wan\" accept; }\n\
             }\n";
        let path = self.dir.join(format!("{}-fw6.nft", router.name));
        std::fs::write(&path, rules)?;
        self.exec(&router.netns, &["nft", "-f", &path.to_string_lossy()])?;
        self.apply_mtu(router)?;
        Ok(host6)
    }

    /// A host with a public address on the internet (203.0.113.x).
    pub fn public_host(&mut self, name: &str) -> Result<Host> {
        let ip = format!("203.0.113.{}", self.next_public);
        self.next_public += 1;
        let host = self.new_host(name, ip.clone())?;
        self.plug_into_internet(&host.netns.clone(), "eth0", &ip)?;
        Ok(host)
    }

    /// A host behind its own NAT router: the router has a public address, the
    /// host 198.51.100.x/28 on the home network behind it.
    pub fn home_host(&mut self, name: &str, nat: Nat) -> Result<(Host, Host)> {
        self.home_host_with(name, nat, Link::default())
    }

    /// Like [`Lab::home_host`], the router's WAN link adding `link`'s delay
    /// and loss (see [`Lab::set_link`]) from the start.
    pub fn home_host_with(&mut self, name: &str, nat: Nat, link: Link) -> Result<(Host, Host)> {
        let router_ip = format!("203.0.113.{}", self.next_public);
        self.next_public += 1;
        let router = self.new_host(&format!("{name}r"), router_ip.clone())?;
        let outer = self.plug_into_internet(&router.netns.clone(), "wan", &router_ip)?;
        self.wans.push(Wan {
            netns: router.netns.clone(),
            ip: router_ip.clone(),
            outer,
            wire: None,
            mtu: None,
        });
        if !link.is_plain() {
            self.set_link(&router, link)?;
        }
        let home = self.next_home;
        self.next_home += 1;
        // Each home network is its own /28 so routers never overlap.
        let base = home as u32 * 16;
        let gw = format!("198.51.100.{}", base + 1);
        let host_ip = format!("198.51.100.{}", base + 2);
        let host = self.new_host(name, host_ip.clone())?;
        sh(
            "ip",
            &[
                "link",
                "add",
                "lan",
                "netns",
                &router.netns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ],
        )?;
        self.exec(
            &router.netns,
            &["ip", "addr", "add", &format!("{gw}/28"), "dev", "lan"],
        )?;
        self.exec(&router.netns, &["ip", "link", "set", "lan", "up"])?;
        self.exec(&router.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.exec(
            &host.netns,
            &["ip", "addr", "add", &format!("{host_ip}/28"), "dev", "eth0"],
        )?;
        self.exec(&host.netns, &["ip", "link", "set", "eth0", "up"])?;
        self.exec(&host.netns, &["ip", "route", "add", "default", "via", &gw])?;
        let masquerade = match nat {
            Nat::Easy | Nat::Upnp => "masquerade",
            Nat::Hard => "masquerade random",
        };
        let rules = if nat == Nat::Upnp {
            format!(
                "table inet filter {{\n\
                   chain miniupnpd {{\n}}\n\
                   chain prerouting_miniupnpd {{\n}}\n\
                   chain postrouting_miniupnpd {{\n}}\n\
                   chain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname {{ \"lo\", \"lan\" }} accept; }}\n\
                   chain forward {{ type filter hook forward priority filter; policy drop; ct state established,related accept; jump miniupnpd; iifname \"lan\" oifname \"wan\" accept; }}\n\
                   chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }}\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump postrouting_miniupnpd; oifname \"wan\" {masquerade}; }}\n\
                 }}\n"
            )
        } else {
            format!(
                "table ip nat {{\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" {masquerade}; }}\n\
                 }}\n\
                 table ip filter {{\n\
                   chain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname {{ \"lo\", \"lan\" }} accept; }}\n\
                   chain forward {{ type filter hook forward priority filter; policy drop; ct state established,related accept; iifname \"lan\" oifname \"wan\" accept; }}\n\
                 }}\n"
            )
        };
        let path = self.dir.join(format!("{name}-nat.nft"));
        std::fs::write(&path, rules)?;
        self.exec(&router.netns, &["nft", "-f", &path.to_string_lossy()])?;
        if nat == Nat::Upnp {
            self.start_miniupnpd(&router)?;
        }
        Ok((host, router))
    }

    /// Whether miniupnpd on `router` forwards UDP `port` (a rule of its
    /// `prerouting_miniupnpd` chain names it).
    pub fn upnp_forwards(&self, router: &Host, port: u16) -> bool {
        self.exec(
            &router.netns,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ],
        )
        .unwrap_or_default()
        .contains(&format!("dport {port}"))
    }

    /// Starts miniupnpd on a router made by [`Lab::home_host`] with [`Nat::Upnp`].
    pub fn start_miniupnpd(&mut self, router: &Host) -> Result<()> {
        self.start_miniupnpd_serving(router, true, true)
    }

    /// Starts miniupnpd answering UPnP IGD and/or NAT-PMP.
    pub fn start_miniupnpd_serving(
        &mut self,
        router: &Host,
        upnp: bool,
        natpmp: bool,
    ) -> Result<()> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let conf = router.run_dir.join("miniupnpd.conf");
        let text = format!(
            "ext_ifname=wan\next_ip=198.51.101.11\nupnp_table_name=filter\nupnp_nat_table_name=filter\nlistening_ip=lan\nhttp_port=5000\nenable_natpmp={}\nenable_upnp={}\n\
             secure_mode=yes\nsystem_uptime=yes\nuuid=3b1c1c7e-4e44-4f3b-9a57-{:012x}\nlease_file={}\n\
             allow 1024-65535 198.51.100.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
            yes(natpmp),
            yes(upnp),
            std::process::id(),
            router.run_dir.join("upnp.leases").display()
        );
        std::fs::write(&conf, text)?;
        let log = std::fs::File::create(router.run_dir.join("miniupnpd.log"))?;
        let log2 = log.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", &router.netns, "miniupnpd", "-f"])
            .arg(&conf)
            .arg("-d")
            .arg("-P")
            .arg(router.run_dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .context("cannot start miniupnpd")?;
        self.children.push((router.name.clone(), child));
        Ok(())
    }

    /// Adds `ms` of one-way delay, each way, on a router's WAN link: see
    /// [`Lab::set_link`].
    pub fn add_latency(&mut self, router: &Host, ms: u32) -> Result<Shaper> {
        self.set_link(router, Link::delay(ms))
    }

    /// Makes a router's WAN link (made by [`Lab::home_host`]) add `link`'s
    /// delay and loss in each direction, replacing what it added before.
    /// With `tc netem` where the kernel has it, on both ends of the veth;
    /// otherwise (or with `WH_LAB_WIRE=1` in the environment) the veth is
    /// replaced by a delay wire: the router's `wan` and the bridge port
    /// become TAP devices with the lab's frame-copying threads between them.
    /// The router keeps its address; its rules name `wan` and still apply.
    pub fn set_link(&mut self, router: &Host, link: Link) -> Result<Shaper> {
        let Some(i) = self.wans.iter().position(|w| w.netns == router.netns) else {
            bail!("{} is not a router of this lab", router.name);
        };
        let force_wire = std::env::var_os("WH_LAB_WIRE").is_some_and(|v| v == "1");
        if self.wans[i].wire.is_none() && !force_wire {
            match self.netem(i, link)? {
                true if link.is_plain() => return Ok(Shaper::None),
                true => return Ok(Shaper::Netem),
                false => {}
            }
        }
        // The wire: the old veth (or wire) goes, the TAP devices take its names.
        let (netns, ip, outer) = {
            let w = &self.wans[i];
            (w.netns.clone(), w.ip.clone(), w.outer.clone())
        };
        match self.wans[i].wire.take() {
            Some(old) => drop(old),
            None => {
                self.exec(&self.internet, &["ip", "link", "del", &outer])?;
            }
        }
        let inner_tap = wire::open_tap_in(&netns, "wan")?;
        let outer_tap = wire::open_tap_in(&self.internet, &outer)?;
        self.exec(
            &netns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan"],
        )?;
        self.exec(&netns, &["ip", "link", "set", "wan", "up"])?;
        self.exec(
            &self.internet,
            &["ip", "link", "set", &outer, "master", "br0", "up"],
        )?;
        let shape = wire::Shape {
            delay: Duration::from_millis(link.delay_ms.into()),
            loss: link.loss,
        };
        self.wans[i].wire = Some(wire::Wire::start(inner_tap, outer_tap, shape)?);
        Ok(Shaper::Wire)
    }

    /// Makes a router's WAN link (made by [`Lab::home_host`]) carry IP
    /// packets of at most `mtu` bytes, both ways, as a tunnel, a PPPoE line
    /// or a cloud network does. The routers at both ends of such a link
    /// fragment what is larger (IPv4 without DF) or answer it with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big"; here the home
    /// router does both ends' part: every route of its own (IPv4 and IPv6,
    /// also those [`Lab::home_ipv6`] adds later) gets `mtu lock MTU`, so what
    /// it forwards either way is held to `mtu`. The hosts keep their
    /// 1,500-byte interfaces: only the path is smaller, and only ICMP tells.
    pub fn set_mtu(&mut self, router: &Host, mtu: u32) -> Result<()> {
        let Some(w) = self.wans.iter_mut().find(|w| w.netns == router.netns) else {
            bail!("{} is not a router of this lab", router.name);
        };
        w.mtu = Some(mtu);
        self.apply_mtu(router)
    }

    /// Puts the MTU [`Lab::set_mtu`] gave a router's link on its routes.
    fn apply_mtu(&self, router: &Host) -> Result<()> {
        let Some(mtu) = self
            .wans
            .iter()
            .find(|w| w.netns == router.netns)
            .and_then(|w| w.mtu)
        else {
            return Ok(());
        };
        let mtu = mtu.to_string();
        for family in ["-4", "-6"] {
            let routes = self.exec(&router.netns, &["ip", "-o", family, "route", "show"])?;
            for route in routes.lines() {
                // Without the flags `ip route change` refuses, and without
                // an MTU set before.
                let mut words: Vec<&str> = Vec::new();
                let mut it = route.split_whitespace();
                while let Some(w) = it.next() {
                    match w {
                        "linkdown" | "dead" | "onlink" | "pervasive" | "offload" => {}
                        "mtu" => {
                            if it.next() == Some("lock") {
                                it.next();
                            }
                        }
                        _ => words.push(w),
                    }
                }
                let mut args = vec!["ip", family, "route", "change"];
                args.extend(words);
                args.extend(["mtu", "lock", &mtu]);
                self.exec(&router.netns, &args)?;
            }
        }
        Ok(())
    }

    /// Drops, in `a`'s namespace, every IPv4 packet from or to `b` (nft
    /// table `inet whcut`; `nft delete table inet whcut` mends it): the two
    /// talk over IPv6 or not at all.
    pub fn cut_ipv4(&self, a: &Host, b: &Host) -> Result<()> {
        for rule in [
            "add table inet whcut".to_string(),
            "add chain inet whcut in { type filter hook input priority 0; }".to_string(),
            "add chain inet whcut out { type filter hook output priority 0; }".to_string(),
            format!("add rule inet whcut in ip saddr {} drop", b.ip),
            format!("add rule inet whcut out ip daddr {} drop", b.ip),
        ] {
            self.exec(&a.netns, &["nft", &rule])?;
        }
        Ok(())
    }

    /// netem on both ends of WAN link `i`; false where the kernel has none.
    fn netem(&self, i: usize, link: Link) -> Result<bool> {
        let w = &self.wans[i];
        let delay = format!("{}ms", link.delay_ms);
        let loss = format!("{}%", link.loss * 100.0);
        for (ns, dev) in [(&w.netns, "wan"), (&self.internet, w.outer.as_str())] {
            let args = [
                "tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", &delay, "loss",
                &loss,
            ];
            let out = self.exec_output(ns, &args)?;
            if out.status.success() {
                continue;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("qdisc kind is unknown") || err.contains("Unknown qdisc") {
                return Ok(false);
            }
            bail!("tc netem on {dev} in {ns} failed: {err}")
        }
        Ok(true)
    }

    /// A public DHT: a bootstrap node and `relays` relay nodes, all public
    /// (`mode direct`), up and answering. Returns the bootstrap's key and
    /// the hosts, the bootstrap first.
    pub fn public_dht(&mut self, relays: usize) -> Result<(String, Vec<Host>)> {
        let boot = self.public_host("boot")?;
        let (boot_sk, boot_pk) = self.genkey("boot")?;
        let public = self.write("public", "name public\nworkbit 8\n")?;
        self.wh_up(&boot, &public, Some(&boot_sk), &["mode", "direct"])?;
        self.wait_daemon(&boot, Duration::from_secs(10))?;
        let relay_config = self.write(
            "relay",
            &format!("name public\nworkbit 8\nboot {boot_pk} {}\n", boot.ip),
        )?;
        let mut hosts = vec![boot];
        for i in 0..relays {
            let r = self.public_host(&format!("relay{i}"))?;
            let (sk, _) = self.genkey(&format!("relay{i}"))?;
            self.wh_up(&r, &relay_config, Some(&sk), &["mode", "direct"])?;
            hosts.push(r);
        }
        for r in &hosts[1..] {
            self.wait_daemon(r, Duration::from_secs(10))?;
        }
        Ok((boot_pk, hosts))
    }

    /// A bootstrap node `boot` on a public address (network `public`,
    /// workbit 8), up and answering. Returns the host and its public key.
    pub fn public_boot(&mut self) -> Result<(Host, String)> {
        let boot = self.public_host("boot")?;
        let (boot_sk, boot_pk) = self.genkey("boot")?;
        let public = self.write("public", "name public\nworkbit 8\n")?;
        self.wh_up(&boot, &public, Some(&boot_sk), &[])
            .context("boot up")?;
        self.wait_daemon(&boot, Duration::from_secs(10))
            .context("boot answers")?;
        Ok((boot, boot_pk))
    }

    /// [`Lab::public_boot`] and `n` trusted nodes on public addresses (see
    /// [`TrustedNetwork`]), each started with `wh up lab.conf` plus the
    /// arguments `extra` gives for its index, all up and answering.
    pub fn trusted_network(
        &mut self,
        n: usize,
        extra: &[(usize, &[&str])],
    ) -> Result<TrustedNetwork> {
        self.trusted_network_prepared(n, extra, |_| {})
    }

    /// Like [`Lab::trusted_network`]; `prepare` runs for each node just
    /// before its daemon starts.
    pub fn trusted_network_prepared(
        &mut self,
        n: usize,
        extra: &[(usize, &[&str])],
        mut prepare: impl FnMut(&Host),
    ) -> Result<TrustedNetwork> {
        let (boot, boot_pk) = self.public_boot()?;
        let mut nodes = Vec::new();
        let mut keys = Vec::new();
        let mut text = format!(
            "name lab\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\n",
            boot.ip
        );
        for i in 0..n {
            let name = node_name(i);
            nodes.push(self.public_host(&name)?);
            let key = self.genkey(&name)?;
            text += &format!("trust {name} {}\n", key.1);
            keys.push(key);
        }
        let config = self.write("lab.conf", &text)?;
        for (i, (host, (sk, _))) in nodes.iter().zip(&keys).enumerate() {
            let args = extra
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(&[][..], |(_, a)| *a);
            prepare(host);
            self.wh_up(host, &config, Some(sk), args)
                .with_context(|| format!("wh up on {}", host.name))?;
        }
        for host in &nodes {
            self.wait_daemon(host, Duration::from_secs(10))
                .with_context(|| format!("{} answers", host.name))?;
        }
        Ok(TrustedNetwork {
            boot,
            nodes,
            keys,
            config,
        })
    }

    /// A bootstrap node on a public address, started with a plain `wh up`,
    /// and one node behind its own NAT router for each of `nats` (none
    /// started: see [`Lab::start_all`]).
    pub fn lone_boot_network(&mut self, nats: &[Nat]) -> Result<LoneBootNetwork> {
        let (boot, boot_pk) = self.public_boot()?;
        let mut text = format!(
            "name lone\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\n",
            boot.ip
        );
        let (mut nodes, mut routers, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (i, nat) in nats.iter().enumerate() {
            let name = node_name(i);
            let (host, router) = self.home_host(&name, *nat)?;
            let key = self.genkey(&name)?;
            text += &format!("trust {name} {}\n", key.1);
            nodes.push(host);
            routers.push(router);
            keys.push(key);
        }
        let config = self.write("lone.conf", &text)?;
        Ok(LoneBootNetwork {
            boot,
            boot_pk,
            nodes,
            routers,
            keys,
            config,
        })
    }

    /// Starts `wh up CONFIG` on each host with its key, together.
    pub fn start_all(
        &mut self,
        hosts: &[Host],
        keys: &[(PathBuf, String)],
        config: &Path,
    ) -> Result<()> {
        for (host, (sk, _)) in hosts.iter().zip(keys) {
            self.wh_up(host, config, Some(sk), &[])
                .with_context(|| format!("wh up on {}", host.name))?;
        }
        Ok(())
    }

    /// The public key a host's daemon runs with (from `wh show`).
    pub fn public_key_of(&self, host: &Host) -> Result<String> {
        let show = self.wh_ok(host, &["show"])?;
        show.lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .map(|k| k.trim().to_string())
            .ok_or_else(|| anyhow!("no public key in wh show on {}:\n{show}", host.name))
    }

    /// The first line of `wh show` on `host` (interface, network, NAT).
    pub fn show_header(&self, host: &Host) -> String {
        self.wh(host, &["show"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    }

    /// `node_a` on host `a` and `node_b` on host `b` as the routers of
    /// 10.244.1.0/24 and 10.244.2.0/24 in network `pods` (subnet
    /// 10.0.42.0/24, bootstrap `boot_pk` at `boot_ip`), started with
    /// `wh up`, each writing its CNI configuration in `RUN_DIR/cni`.
    /// Returns the two CNI directories.
    pub fn router_pair(
        &mut self,
        boot_pk: &str,
        boot_ip: &str,
        a: &Host,
        b: &Host,
    ) -> Result<(PathBuf, PathBuf)> {
        let (ska, pka) = self.genkey("node_a")?;
        let (skb, pkb) = self.genkey("node_b")?;
        let config = self.write(
            "pods.conf",
            &format!(
                "name pods\nsubnet 10.0.42.0/24\nboot {boot_pk} {boot_ip}\nrouter node_a {pka} 10.244.1.0/24\nrouter node_b {pkb} 10.244.2.0/24\n"
            ),
        )?;
        let (cni_a, cni_b) = (a.run_dir.join("cni"), b.run_dir.join("cni"));
        for (host, sk, cni) in [(a, &ska, &cni_a), (b, &skb, &cni_b)] {
            self.wh_up(
                host,
                &config,
                Some(sk),
                &["cni-dir", &cni.to_string_lossy()],
            )
            .with_context(|| format!("wh up on {}", host.name))?;
        }
        Ok((cni_a, cni_b))
    }

    /// Runs `wh ARGS` on a host (with its run directory) and returns its output.
    pub fn wh(&self, host: &Host, args: &[&str]) -> Result<Output> {
        refuse_if_interrupted()?;
        Command::new("ip")
            .args(["netns", "exec", &host.netns])
            .arg(wh_bin())
            .args(args)
            .env("WH_RUN_DIR", &host.run_dir)
            .env("NO_COLOR", "1")
            .output()
            .context("cannot run wh")
    }

    /// Like [`Lab::wh`], failing unless `wh` succeeds; returns stdout.
    pub fn wh_ok(&self, host: &Host, args: &[&str]) -> Result<String> {
        let out = self.wh(host, args)?;
        if !out.status.success() {
            bail!(
                "wh {} on {} failed ({}): {}{}",
                args.join(" "),
                host.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `wh up ... --foreground` on a host as a child the lab owns.
    pub fn wh_up(
        &mut self,
        host: &Host,
        config: &Path,
        key: Option<&Path>,
        extra: &[&str],
    ) -> Result<()> {
        let log = std::fs::File::create(host.run_dir.join("daemon.log"))?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.netns])
            .arg(wh_bin())
            .arg("up")
            .arg(config);
        if let Some(k) = key {
            cmd.arg("private-key").arg(k);
        }
        cmd.args(extra)
            .arg("--foreground")
            .env("WH_RUN_DIR", &host.run_dir)
            .env(
                "WH_LOG",
                std::env::var("WH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().context("cannot start wh up")?;
        self.children.push((host.name.clone(), child));
        Ok(())
    }

    /// The process id of the daemon [`Lab::wh_up`] last started on `host`
    /// (`ip netns exec` runs it in its own process).
    pub fn daemon_pid(&self, host: &Host) -> Option<u32> {
        self.children
            .iter()
            .rev()
            .find(|(name, _)| *name == host.name)
            .map(|(_, c)| c.id())
    }

    /// Kills a host's daemon started with [`Lab::wh_up`] with `signal`.
    pub fn kill_daemon(&mut self, host: &Host, signal: &str) -> Result<()> {
        let mut kept = Vec::new();
        for (name, mut child) in std::mem::take(&mut self.children) {
            if name == host.name {
                let _ = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.wait();
            } else {
                kept.push((name, child));
            }
        }
        self.children = kept;
        Ok(())
    }

    /// Waits (up to `timeout`) for the daemons a host runs to exit by
    /// themselves (after `wh down`), and reaps them.
    pub fn wait_exit(&mut self, host: &Host, timeout: Duration) -> bool {
        let timeout = patience(timeout);
        let start = Instant::now();
        let mut all = true;
        for (name, child) in &mut self.children {
            if *name != host.name {
                continue;
            }
            let mut exited = false;
            while start.elapsed() < timeout {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            all &= exited;
        }
        all
    }

    /// The daemon log of a host, for failure messages.
    pub fn log(&self, host: &Host) -> String {
        std::fs::read_to_string(host.run_dir.join("daemon.log")).unwrap_or_default()
    }

    /// For a failure message: `wh show` (when the daemon answers) and the
    /// daemon log of each host.
    pub fn report(&self, hosts: &[&Host]) -> String {
        let mut out = String::new();
        for host in hosts {
            let show = self
                .wh(host, &["show"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out += &format!(
                "\n--- {} show:\n{show}--- {} log:\n{}",
                host.name,
                host.name,
                self.log(host)
            );
        }
        out
    }

    /// Waits until the daemon log of `host` contains `what`.
    pub fn wait_log(&self, host: &Host, what: &str, timeout: Duration) -> Result<()> {
        let timeout = patience(timeout);
        let start = Instant::now();
        while !self.log(host).contains(what) {
            if start.elapsed() > timeout {
                return Err(anyhow!(
                    "{} did not log {what:?} within {timeout:?}:\n{}",
                    host.name,
                    self.log(host)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until `wh show` on `host` answers.
    pub fn wait_daemon(&self, host: &Host, timeout: Duration) -> Result<()> {
        let timeout = patience(timeout);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(out) = self.wh(host, &["show"])
                && out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("public key")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(anyhow!(
            "the daemon on {} did not answer within {timeout:?}:\n{}",
            host.name,
            self.log(host)
        ))
    }

    /// Pings `target` from `host` every 50 ms until one reply comes or
    /// `timeout` passes; returns the time it took.
    pub fn ping_until(&self, host: &Host, target: &str, timeout: Duration) -> Result<Duration> {
        let timeout = patience(timeout);
        let start = Instant::now();
        // ping gives up at once while there is no route yet: try again.
        while start.elapsed() < timeout {
            let left = timeout
                .saturating_sub(start.elapsed())
                .as_secs()
                .max(1)
                .to_string();
            let out = self.exec_output(
                &host.netns,
                &[
                    "ping", "-n", "-q", "-c", "1", "-i", "0.05", "-w", &left, target,
                ],
            )?;
            if out.status.success() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(anyhow!(
            "{} could not ping {target} within {timeout:?}",
            host.name
        ))
    }

    /// Makes a key pair with `wh genkey workbit 8` in the lab directory;
    /// returns (private key path, public key).
    pub fn genkey(&self, name: &str) -> Result<(PathBuf, String)> {
        let sk = sh(&wh_bin().to_string_lossy(), &["genkey", "workbit", "8"])?;
        let path = self.dir.join(format!("{name}.sk"));
        std::fs::write(&path, &sk)?;
        let out = Command::new(wh_bin())
            .arg("pubkey")
            .stdin(std::fs::File::open(&path)?)
            .output()?;
        Ok((
            path,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    /// Writes a file in the lab directory.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// Removes, from a signal handler's thread, what a lab tagged `tag` left:
/// the daemons in its namespaces (killed by PID), the namespaces (their
/// veth pairs go with them) and its directory. What [`Lab`]'s `Drop` does,
/// for a process that will not unwind.
fn remove_lab_by_tag(tag: &str, dir: &Path) {
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let prefix = format!("{tag}-");
    let ours: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    for ns in &ours {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    for ns in &ours {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Set by [`Lab::remove_on_interrupt`]'s handler: from then on the lab runs
/// no more commands, so the program unwinds and drops its lab.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An error once Ctrl-C was pressed (see [`Lab::remove_on_interrupt`]).
fn refuse_if_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

impl Lab {
    /// On Ctrl-C (SIGINT): the lab refuses every further command, so the
    /// program's next step fails and it unwinds, dropping (and removing)
    /// the lab as on any failure. A program stuck elsewhere for 10 s is
    /// ended by the handler itself, which then removes what the lab made
    /// (its daemons, by the PIDs its namespaces hold, its namespaces and
    /// directory) and exits with status 130. For a program that owns one
    /// lab for its whole life (the demo). Once per process.
    pub fn remove_on_interrupt(&self) -> Result<()> {
        let (tag, dir) = (self.tag.clone(), self.dir.clone());
        ctrlc::set_handler(move || {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                return;
            }
            eprintln!("\ninterrupted: removing lab {tag}");
            std::thread::sleep(Duration::from_secs(10));
            remove_lab_by_tag(&tag, &dir);
            std::process::exit(130);
        })
        .map_err(|e| anyhow!("cannot catch Ctrl-C: {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, child) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Stop the wires' threads; closing their TAP devices removes them.
        for w in &mut self.wans {
            w.wire.take();
        }
        // Background daemons started with plain `wh up` live in the namespaces:
        // kill whatever still runs there, then remove the namespaces.
        for ns in self.namespaces.iter().rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
