//! NAT scenarios shared by the NAT tests and the NAT benchmark: a public
//! bootstrap, two public relays, and two nodes of given kinds.

use crate::{Host, Lab, Link, Nat};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Behind(Nat),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::Behind(n) => n.name(),
        }
    }

    /// How the header of `wh show` starts its `<...>` for a node on a host
    /// of this kind, once it has detected its NAT.
    pub fn detected(self) -> &'static str {
        match self {
            Kind::Public => "<DIRECT>",
            Kind::Behind(Nat::Easy) => "<NAT easy>",
            Kind::Behind(Nat::Hard) => "<NAT hard>",
            Kind::Behind(Nat::Upnp) => "<NAT easy, UPnP ",
        }
    }
}

/// Waits until the header of `wh show` on `host` names the NAT its kind
/// has; the header last seen on failure.
pub fn wait_detected(
    lab: &Lab,
    host: &Host,
    kind: Kind,
    timeout: Duration,
) -> Result<Duration, String> {
    let timeout = crate::patience(timeout);
    let start = Instant::now();
    loop {
        let header = lab.show_header(host);
        if header.contains(kind.detected()) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(header);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub const KINDS: [Kind; 4] = [
    Kind::Public,
    Kind::Behind(Nat::Easy),
    Kind::Behind(Nat::Hard),
    Kind::Behind(Nat::Upnp),
];

pub struct Scenario {
    pub lab: Lab,
    /// The bootstrap node first, then the two relays: all public DHT nodes.
    pub relays: Vec<Host>,
    pub a: Host,
    pub b: Host,
    pub config: PathBuf,
    pub keys: [PathBuf; 2],
    pub routers: Vec<Host>,
}

fn host(lab: &mut Lab, name: &str, kind: Kind, latency: u32, routers: &mut Vec<Host>) -> Host {
    match kind {
        Kind::Public => lab.public_host(name).expect("public host"),
        Kind::Behind(nat) => {
            let (h, r) = lab
                .home_host_with(name, nat, Link::delay(latency))
                .expect("home host");
            routers.push(r);
            h
        }
    }
}

/// A bootstrap, two relays, and node_a / node_b of the given kinds; the two
/// nodes are started together at the returned instant. Each router's WAN
/// link adds `latency` ms of one-way delay each way (netem, or the lab's
/// delay wire where the kernel has no netem).
pub fn scenario(ka: Kind, kb: Kind, latency: u32) -> (Scenario, Instant) {
    let mut lab = Lab::new().expect("lab");
    lab.env.push(("WH_UPNP_RENEW_SECS".into(), "2".into()));
    let (boot_pk, relays) = lab.public_dht(2).expect("public DHT");
    let boot = relays[0].clone();
    let mut routers = Vec::new();
    let a = host(&mut lab, "node_a", ka, latency, &mut routers);
    let b = host(&mut lab, "node_b", kb, latency, &mut routers);
    let (ska, pka) = lab.genkey("node_a").expect("key");
    let (skb, pkb) = lab.genkey("node_b").expect("key");
    let config = lab
        .write(
            "grid.conf",
            &format!("name grid\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\ntrust node_a {pka}\ntrust node_b {pkb}\n", boot.ip),
        )
        .expect("config");
    // Give miniupnpd a moment to listen.
    if routers
        .iter()
        .any(|r| r.run_dir.join("miniupnpd.conf").exists())
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    let start = Instant::now();
    lab.wh_up(&a, &config, Some(&ska), &[]).expect("a up");
    lab.wh_up(&b, &config, Some(&skb), &[]).expect("b up");
    (
        Scenario {
            lab,
            relays,
            a,
            b,
            config,
            keys: [ska, skb],
            routers,
        },
        start,
    )
}

/// The glyph `wh show` on `from` prints for `peer`: ● ◒ direct, ○ relayed.
pub fn path_glyph(lab: &Lab, from: &Host, peer: &str) -> char {
    peer_line(lab, from, peer).chars().next().unwrap_or('?')
}

/// The line `wh show` on `from` prints for `peer` (glyph, name, path), or
/// an empty one.
pub fn peer_line(lab: &Lab, from: &Host, peer: &str) -> String {
    let show = lab
        .wh(from, &["show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    show.lines()
        .find(|l| l.contains(peer))
        .unwrap_or_default()
        .to_string()
}

pub fn is_direct(g: char) -> bool {
    g == '●' || g == '◒'
}

pub fn wait_direct(lab: &Lab, from: &Host, peer: &str, timeout: Duration) -> Option<Duration> {
    let timeout = crate::patience(timeout);
    let start = Instant::now();
    while start.elapsed() < timeout {
        if is_direct(path_glyph(lab, from, peer)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
