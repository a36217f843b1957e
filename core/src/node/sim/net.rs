//! The simulated internet: hosts running real [`Node`] cores, NAT routers,
//! links, faults and a fake clock, all driven from one event queue.
//!
//! Contract:
//! - It owns the hosts (a core each, or none while the host is down), the
//!   routers with their mapping tables, the datagrams in flight and the
//!   clock. Time only moves in [`Net::run_for`], from event to event in
//!   time order; ties are broken by the order events were queued.
//! - Every random choice (port allocation, jitter, loss, each core's
//!   randomness at each start) comes from the seeded [`Rng`] given at build
//!   time: the simulator adds no randomness of its own.
//! - Every collection is bounded: datagrams in flight ([`MAX_IN_FLIGHT`],
//!   past it new ones are dropped and counted), mappings per router
//!   ([`MAX_MAPPINGS`], the least recently used goes), remotes per mapping,
//!   what a data plane keeps of what it received, and the trace.
//! - It never opens a socket, starts a thread or reads a clock. Each
//!   running host has a data plane built by the [`MakeDataplane`] given at
//!   build time (the fake by default, see [`super::dataplane`]); the
//!   simulator routes what it sends (to the address it names, else to the
//!   endpoint the core programmed, else through the core) and runs its
//!   timers in the event loop.

use super::Rng;
use super::dataplane::{self, MakeDataplane, Sent, SimDataplane};
use crate::config::parse;
use crate::control::{Request, Response};
use crate::dataplane::Outgoing;
use crate::keys::{PrivateKey, PublicKey, RandomStream};
use crate::node::Mode;
use crate::node::core::{
    DataplaneOp, DataplaneView, Event, Host, Node, NodeConfig, Now, Reply, Wire,
};
use crate::node::overlay::Overlay;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The node's port, as `wh up` takes it.
pub const PORT: u16 = 62096;
/// Datagrams in flight at once; past this, new ones are dropped.
pub const MAX_IN_FLIGHT: usize = 1 << 20;
/// Mappings one router holds; past this, the least recently used goes.
pub const MAX_MAPPINGS: usize = 4096;
/// Remotes remembered per mapping (for filtering); the oldest goes.
const MAX_REMOTES: usize = 256;
/// What a data plane keeps of the datagrams it received.
const MAX_RECEIVED: usize = 4096;
/// Lines of trace kept (the last ones).
pub const MAX_TRACE: usize = 400;
/// Lines of trace kept when every datagram is traced (a replay).
pub const MAX_VERBOSE_TRACE: usize = 200_000;
/// The first data byte of a WireGuard transport-data datagram.
pub const WG_DATA: u8 = 4;

/// How a NAT's mapping or filtering depends on the remote end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependence {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl Dependence {
    pub fn short(self) -> &'static str {
        match self {
            Dependence::EndpointIndependent => "EI",
            Dependence::AddressDependent => "AD",
            Dependence::AddressAndPortDependent => "APD",
        }
    }
}

/// How a NAT picks the public port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAlloc {
    Sequential,
    Random,
}

/// The behaviour of one NAT router (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatModel {
    pub mapping: Dependence,
    pub filtering: Dependence,
    pub ports: PortAlloc,
    /// A mapping unused by outbound traffic this long is gone.
    pub timeout: Duration,
    /// Datagrams from inside to the router's own public address loop back.
    pub hairpin: bool,
}

impl NatModel {
    /// A "full cone"-ish home router: one port per socket, filtering by
    /// the flows the inside opened.
    pub fn easy() -> NatModel {
        NatModel {
            mapping: Dependence::EndpointIndependent,
            filtering: Dependence::AddressAndPortDependent,
            ports: PortAlloc::Sequential,
            timeout: Duration::from_secs(120),
            hairpin: false,
        }
    }

    /// A "symmetric" router: a new port per destination.
    pub fn hard() -> NatModel {
        NatModel {
            mapping: Dependence::AddressAndPortDependent,
            ..NatModel::easy()
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{}M/{}F{}{}",
            self.mapping.short(),
            self.filtering.short(),
            if self.ports == PortAlloc::Random {
                "/rand"
            } else {
                ""
            },
            if self.hairpin { "/hp" } else { "" }
        )
    }
}

/// Where a host sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// On a public IPv4 address.
    Public,
    /// Behind its own home router, itself maybe behind a carrier-grade NAT
    /// (an index into [`Topology::cgnats`], shared by the hosts naming it).
    Behind {
        home: NatModel,
        cgnat: Option<usize>,
    },
}

/// One host of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpec {
    pub attach: Attach,
    /// Listed as `trust` in the network (has a data plane); else a plain
    /// DHT node. Host 0 is always the bootstrap (`boot`, untrusted).
    pub trusted: bool,
}

/// Per-link behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// One-way latency per router hop (the internet counts as one hop).
    pub hop: Duration,
    /// Up to this much more, uniformly, per datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            hop: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

/// A whole network to build.
#[derive(Debug, Clone)]
pub struct Topology {
    pub hosts: Vec<HostSpec>,
    pub cgnats: Vec<NatModel>,
    pub link: LinkModel,
}

/// One mapping of a router.
struct Mapping {
    inside: SocketAddr,
    /// The key it is found under in `Router::out`.
    key: (SocketAddr, Option<SocketAddr>),
    remotes: VecDeque<SocketAddr>,
    last_out: Instant,
}

/// A NAT router.
struct Router {
    model: NatModel,
    /// Its outside address (on the internet, or inside its parent).
    outside: IpAddr,
    /// The carrier-grade NAT it sits behind.
    parent: Option<usize>,
    /// (inside socket, remote as the mapping depends on it) -> public port.
    out: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: BTreeMap<u16, Mapping>,
    next_port: u16,
}

impl Router {
    fn new(model: NatModel, outside: IpAddr, parent: Option<usize>) -> Router {
        Router {
            model,
            outside,
            parent,
            out: BTreeMap::new(),
            by_port: BTreeMap::new(),
            next_port: 40000,
        }
    }

    fn flush(&mut self) {
        self.out.clear();
        self.by_port.clear();
    }

    fn expired(&self, m: &Mapping, now: Instant) -> bool {
        now.saturating_duration_since(m.last_out) >= self.model.timeout
    }

    /// The outside source of a datagram from `from` (inside) to `to`.
    fn translate_out(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        now: Instant,
        rng: &mut Rng,
    ) -> SocketAddr {
        let dest = match self.model.mapping {
            Dependence::EndpointIndependent => None,
            Dependence::AddressDependent => Some(SocketAddr::new(to.ip(), 0)),
            Dependence::AddressAndPortDependent => Some(to),
        };
        let key = (from, dest);
        let live = self
            .out
            .get(&key)
            .copied()
            .filter(|p| self.by_port.get(p).is_some_and(|m| !self.expired(m, now)));
        let port = match live {
            Some(p) => p,
            None => {
                if let Some(old) = self.out.remove(&key) {
                    self.by_port.remove(&old);
                }
                self.sweep(now);
                let p = self.free_port(rng);
                self.out.insert(key, p);
                self.by_port.insert(
                    p,
                    Mapping {
                        inside: from,
                        key,
                        remotes: VecDeque::new(),
                        last_out: now,
                    },
                );
                p
            }
        };
        if let Some(m) = self.by_port.get_mut(&port) {
            m.last_out = now;
            if !m.remotes.contains(&to) {
                if m.remotes.len() >= MAX_REMOTES {
                    m.remotes.pop_front();
                }
                m.remotes.push_back(to);
            }
        }
        SocketAddr::new(self.outside, port)
    }

    /// Drops expired mappings and, when full, the least recently used.
    fn sweep(&mut self, now: Instant) {
        if self.by_port.len() < MAX_MAPPINGS {
            return;
        }
        let timeout = self.model.timeout;
        let dead: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_out) >= timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            if let Some(m) = self.by_port.remove(&p) {
                self.out.remove(&m.key);
            }
        }
        if self.by_port.len() >= MAX_MAPPINGS {
            let lru = self
                .by_port
                .iter()
                .min_by_key(|(_, m)| m.last_out)
                .map(|(p, _)| *p);
            if let Some(m) = lru.and_then(|p| self.by_port.remove(&p)) {
                self.out.remove(&m.key);
            }
        }
    }

    fn free_port(&mut self, rng: &mut Rng) -> u16 {
        loop {
            let p = match self.model.ports {
                PortAlloc::Sequential => {
                    self.next_port = if self.next_port == 65535 {
                        1024
                    } else {
                        self.next_port + 1
                    };
                    self.next_port
                }
                PortAlloc::Random => 1024 + rng.below(64512) as u16,
            };
            if !self.by_port.contains_key(&p) {
                return p;
            }
        }
    }

    /// The inside socket a datagram from `from` to public `port` goes to,
    /// if the mapping lives and the filter lets it in.
    fn translate_in(&self, from: SocketAddr, port: u16, now: Instant) -> Option<SocketAddr> {
        let m = self.by_port.get(&port)?;
        if self.expired(m, now) {
            return None;
        }
        let allowed = match self.model.filtering {
            Dependence::EndpointIndependent => true,
            Dependence::AddressDependent => m.remotes.iter().any(|r| r.ip() == from.ip()),
            Dependence::AddressAndPortDependent => m.remotes.contains(&from),
        };
        allowed.then_some(m.inside)
    }
}

/// The host answers of a simulated node.
struct SimHost(IpAddr);

impl Host for SimHost {
    fn local_ip_towards(&self, _: SocketAddr) -> Option<IpAddr> {
        Some(self.0)
    }

    fn global_ipv6(&self) -> Vec<Ipv6Addr> {
        Vec::new()
    }
}

/// What a node's socket sent and its data plane received during one call.
#[derive(Default)]
struct SimWire {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<(SocketAddr, Vec<u8>, Option<PublicKey>)>,
}

impl Wire for SimWire {
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize) {
        for d in datagrams.chunks(segment.max(1)) {
            self.sent.push((to, d.to_vec()));
        }
    }

    fn deliver(&mut self, from: SocketAddr, datagram: &[u8], peer: Option<PublicKey>) {
        self.delivered.push((from, datagram.to_vec(), peer));
    }
}

/// One host of the simulated internet: its core and its data plane while
/// it runs. The simulator keeps the peers the core programs and routes
/// what the data plane sends: straight to a peer's endpoint when the core
/// set one, else to the core as [`Outgoing`]; it records the payloads the
/// data plane delivers (data payloads: first byte 4, see [`Net::send_data`]).
pub struct SimNode {
    pub key: PrivateKey,
    /// `key`'s public key (computed once: the simulator asks often).
    pub public: PublicKey,
    /// Its own address (inside its NAT, if any).
    pub addr: SocketAddr,
    router: Option<usize>,
    pub core: Option<Node>,
    /// Its data plane while it runs (a new one at each start).
    pub plane: Option<Box<dyn SimDataplane>>,
    pub config: NodeConfig,
    pub trusted: bool,
    /// The data plane's peers: key -> direct endpoint (None: through the core).
    pub peers: BTreeMap<PublicKey, Option<SocketAddr>>,
    /// Payloads its data plane delivered (the last [`MAX_RECEIVED`]): (at, bytes).
    pub received: VecDeque<(Instant, Vec<u8>)>,
    /// Datagrams the core handed to this node's data plane in all (an
    /// untrusted node must never get one).
    pub delivered_count: u64,
    /// Of those, the ones its data plane delivered a payload of (decrypted).
    pub payloads: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    /// Already routed (inside a router's network): the host it reaches.
    target: Option<usize>,
    bytes: Vec<u8>,
}

/// A datagram that reached a data plane: who sent it, to whom, when it was
/// sent and when it arrived, and whether the relay's word on its sender
/// (when relayed) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataArrival {
    pub from: usize,
    pub to: usize,
    pub sent: Instant,
    pub at: Instant,
    pub relayed: bool,
}

/// Why datagrams were lost, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    pub no_route: u64,
    pub filtered: u64,
    pub host_down: u64,
    pub link_loss: u64,
    pub partitioned: u64,
    pub hairpin_off: u64,
    pub queue_full: u64,
}

/// The simulated internet and its nodes.
pub struct Net {
    pub now: Now,
    start: Instant,
    pub nodes: Vec<SimNode>,
    routers: Vec<Router>,
    link: LinkModel,
    rng: Rng,
    flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub losses: Losses,
    /// What host names resolve to (others: not found).
    pub names: HashMap<String, SocketAddr>,
    /// Host names the cores asked to resolve.
    pub resolved: Vec<String>,
    /// Late answers to control requests: (node, request id, answer).
    pub answers: Vec<(usize, u64, Response)>,
    /// Nodes whose datagrams are lost on the way out (one-way loss).
    pub muted: Vec<usize>,
    /// Nodes cut from the internet both ways (a partition).
    pub cut: Vec<usize>,
    /// Data datagrams that reached a data plane, oldest first, drained by
    /// the caller ([`Net::take_arrivals`]); bounded like `received`.
    arrivals: VecDeque<DataArrival>,
    /// Relayed data whose relay named another sender than the datagram's.
    pub misattributed: u64,
    trace: VecDeque<String>,
    /// Record every datagram in the trace (replays), not only events.
    pub verbose: bool,
    /// Builds each host's data plane at each start.
    make_plane: MakeDataplane,
}

impl Net {
    /// Builds `topology` (host 0 is the bootstrap), none started yet, with
    /// the fake data plane.
    pub fn build(topology: &Topology, seed: u64) -> Net {
        Net::build_with(topology, seed, dataplane::fake)
    }

    /// [`Net::build`] with the data planes `make_plane` builds.
    pub fn build_with(topology: &Topology, seed: u64, make_plane: MakeDataplane) -> Net {
        let mut rng = Rng::new(seed);
        let keys: Vec<PrivateKey> = topology
            .hosts
            .iter()
            .map(|_| {
                let mut b = [0u8; 32];
                for c in b.chunks_mut(8) {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                PrivateKey::from_bytes(b)
            })
            .collect();
        let mut text = format!(
            "name sim\nsubnet 10.9.0.0/24\nworkbit 0\nboot {} {}\n",
            keys[0].public_key(),
            public_addr(0)
        );
        for (i, (k, h)) in keys.iter().zip(&topology.hosts).enumerate().skip(1) {
            if h.trusted {
                text += &format!("trust n{i} {}\n", k.public_key());
            }
        }
        let spec = parse(&text).expect("a generated network parses").spec;
        let start = Instant::now();
        let mut routers: Vec<Router> = topology
            .cgnats
            .iter()
            .enumerate()
            .map(|(c, m)| Router::new(*m, cgnat_addr(c), None))
            .collect();
        let mut nodes = Vec::new();
        for (i, (key, h)) in keys.into_iter().zip(&topology.hosts).enumerate() {
            let (addr, router) = match h.attach {
                Attach::Public => (public_addr(i), None),
                Attach::Behind { home, cgnat } => {
                    let r = routers.len();
                    let outside = match cgnat {
                        Some(c) => IpAddr::V4(Ipv4Addr::new(100, 64, c as u8, 10 + i as u8)),
                        None => home_addr(i),
                    };
                    routers.push(Router::new(home, outside, cgnat));
                    (
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, i as u8, 2)), PORT),
                        Some(r),
                    )
                }
            };
            let has_dataplane = Overlay::new(&spec, key.public_key()).has_interface();
            let config = NodeConfig {
                key: key.clone(),
                spec: spec.clone(),
                interface: format!("wh-n{i}"),
                listen_port: PORT,
                mode: Mode::Unknown,
                relay_mbit: 100,
                force_relay: false,
                from_file: true,
                has_dataplane,
                join: None,
                // Drawn again at each start (see Net::start).
                random: RandomStream::from_seed([0; 32]),
            };
            nodes.push(SimNode {
                public: key.public_key(),
                key,
                addr,
                router,
                core: None,
                plane: None,
                config,
                trusted: h.trusted && i != 0,
                peers: BTreeMap::new(),
                received: VecDeque::new(),
                delivered_count: 0,
                payloads: 0,
            });
        }
        Net {
            now: Now {
                mono: start,
                unix_ms: 1_800_000_000_000,
            },
            start,
            nodes,
            routers,
            link: topology.link,
            rng,
            flight: BinaryHeap::new(),
            seq: 0,
            losses: Losses::default(),
            names: HashMap::new(),
            resolved: Vec::new(),
            answers: Vec::new(),
            muted: Vec::new(),
            cut: Vec::new(),
            arrivals: VecDeque::new(),
            misattributed: 0,
            trace: VecDeque::new(),
            verbose: false,
            make_plane,
        }
    }

    /// Simulated time since the network was built.
    pub fn elapsed(&self) -> Duration {
        self.now.mono - self.start
    }

    /// Adds a line to the trace, stamped with the simulated time.
    pub fn note(&mut self, line: impl std::fmt::Display) {
        let cap = if self.verbose {
            MAX_VERBOSE_TRACE
        } else {
            MAX_TRACE
        };
        if self.trace.len() >= cap {
            self.trace.pop_front();
        }
        let t = self.elapsed();
        self.trace.push_back(format!(
            "{:>4}.{:03} {line}",
            t.as_secs(),
            t.subsec_millis()
        ));
    }

    /// The last lines of the trace.
    pub fn trace(&self) -> impl Iterator<Item = &String> {
        self.trace.iter()
    }

    /// Starts (or restarts, with a fresh state) node `i` now.
    pub fn start(&mut self, i: usize) {
        // A new process draws new randomness; here it comes from the seed.
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let now = self.now;
        let span = self.span(i);
        let n = &mut self.nodes[i];
        n.config.random = RandomStream::from_seed(seed);
        let host = Box::new(SimHost(n.addr.ip()));
        n.core = Some(Node::new(n.config.clone(), host, now));
        n.plane = Some((self.make_plane)(&n.key, self.start));
        n.peers.clear();
        drop(span);
        self.note(format_args!("n{i} starts"));
        self.drain(i, SimWire::default());
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Node `i` stops at once, without a word.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].plane = None;
        self.nodes[i].peers.clear();
        self.note(format_args!("n{i} killed"));
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// The router in front of node `i` forgets every mapping (a reboot, a
    /// flushed conntrack table). Returns whether `i` is behind one.
    pub fn flush_nat(&mut self, i: usize) -> bool {
        let Some(r) = self.nodes[i].router else {
            return false;
        };
        self.routers[r].flush();
        self.note(format_args!("n{i}'s NAT flushes its mappings"));
        true
    }

    /// Node `i` is cut from the internet both ways (`false`: healed).
    pub fn set_cut(&mut self, i: usize, cut: bool) {
        self.cut.retain(|x| *x != i);
        if cut {
            self.cut.push(i);
        }
        self.note(format_args!(
            "n{i} {}",
            if cut { "partitioned" } else { "healed" }
        ));
    }

    /// A span naming node `i` and the simulated time: the cores' log lines
    /// (`RUST_LOG` with `net-sim --one`) say which node and when.
    fn span(&self, i: usize) -> tracing::span::EnteredSpan {
        let t = self.elapsed();
        tracing::info_span!("sim", t = %format_args!("{}.{:03}", t.as_secs(), t.subsec_millis()), node = i)
            .entered()
    }

    pub fn core(&self, i: usize) -> &Node {
        self.nodes[i].core.as_ref().expect("node is running")
    }

    pub fn core_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].core.as_mut().expect("node is running")
    }

    pub fn public_key(&self, i: usize) -> PublicKey {
        self.nodes[i].public
    }

    /// The node index holding `key`.
    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.nodes.iter().position(|n| n.public == *key)
    }

    /// Datagrams in flight now.
    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }

    /// The data arrivals since the last call.
    pub fn take_arrivals(&mut self) -> Vec<DataArrival> {
        self.arrivals.drain(..).collect()
    }

    /// Runs the network for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now.mono + d;
        // A core asking for its timeout at the same instant again and
        // again would hang the run: that is a failure of its own.
        let mut spins = 0u32;
        let mut last_timer = None;
        loop {
            let next_packet = self.flight.peek().map(|Reverse(p)| p.at);
            // A core's timer before its data plane's at the same instant.
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .flat_map(|(i, n)| {
                    let core = n.core.as_ref().map(|c| (c.poll_timeout(), i, false));
                    let plane = n
                        .plane
                        .as_ref()
                        .and_then(|p| p.next_timer())
                        .map(|t| (t, i, true));
                    [core, plane]
                })
                .flatten()
                .min();
            let at = [next_packet, next_timer.map(|t| t.0)]
                .into_iter()
                .flatten()
                .min();
            match at {
                Some(at) if at <= end => {
                    self.advance_to(at);
                    if next_packet == Some(at) {
                        self.deliver_one();
                    } else if let Some((t, i, plane)) = next_timer {
                        spins = if last_timer == Some((t, i, plane)) {
                            spins + 1
                        } else {
                            0
                        };
                        assert!(spins < 10_000, "node {i} spins: its timeout stays at {t:?}");
                        last_timer = Some((t, i, plane));
                        if plane {
                            self.plane_timeout(i);
                        } else {
                            self.timeout(i);
                        }
                    }
                }
                _ => {
                    self.advance_to(end);
                    return;
                }
            }
        }
    }

    fn advance_to(&mut self, at: Instant) {
        if at > self.now.mono {
            let d = at - self.now.mono;
            self.now = self.now.after(d);
        }
    }

    fn timeout(&mut self, i: usize) {
        let now = self.now;
        let _span = self.span(i);
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.handle_timeout(now);
        }
        self.drain(i, SimWire::default());
    }

    fn plane_timeout(&mut self, i: usize) {
        let now = self.now;
        let sent = match self.nodes[i].plane.as_mut() {
            Some(p) => p.on_timer(now),
            None => return,
        };
        self.route_sent(i, sent);
    }

    /// Node `i`'s data plane sends one data payload to node `j`: bytes
    /// `[4, 0, 0, 0, marker, i, j, 0]` then the send time (ms since the
    /// build, little endian). The fake data plane sends it as it is.
    pub fn send_data(&mut self, i: usize, j: usize, marker: u8) {
        if self.nodes[i].core.is_none() {
            return;
        }
        let to = self.public_key(j);
        let sent_ms = self.elapsed().as_millis() as u64;
        let mut payload = vec![WG_DATA, 0, 0, 0, marker, i as u8, j as u8, 0];
        payload.extend_from_slice(&sent_ms.to_le_bytes());
        let now = self.now;
        let sent = match self.nodes[i].plane.as_mut() {
            Some(p) => p.send(now, &to, &payload),
            None => return,
        };
        self.route_sent(i, sent);
    }

    /// Sends what node `i`'s data plane sent: to the address it names, else
    /// straight to the endpoint the core programmed, else through the core.
    fn route_sent(&mut self, i: usize, sent: Vec<Sent>) {
        for s in sent {
            let endpoint = s
                .direct
                .or_else(|| self.nodes[i].peers.get(&s.to).copied().flatten());
            match endpoint {
                Some(endpoint) => {
                    let from = self.nodes[i].addr;
                    self.emit(i, from, endpoint, s.bytes);
                }
                None => {
                    let now = self.now;
                    let mut wire = SimWire::default();
                    let _span = self.span(i);
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.handle_outgoing(now, Outgoing::one(s.to, s.bytes), &mut wire);
                    }
                    self.drain(i, wire);
                }
            }
        }
    }

    /// Whether node `j`'s data plane received `marker` from `i`.
    pub fn got(&self, j: usize, i: usize, marker: u8) -> bool {
        self.nodes[j]
            .received
            .iter()
            .any(|(_, d)| d.get(4) == Some(&marker) && d.get(5) == Some(&(i as u8)))
    }

    /// A control request to node `i`, as the shell passes it; what the core
    /// sends for it leaves at once.
    pub fn request(&mut self, i: usize, id: u64, req: Request) -> Reply {
        let now = self.now;
        let reply = self
            .core_mut(i)
            .handle_request(now, id, req, &DataplaneView::default());
        self.drain(i, SimWire::default());
        reply
    }

    fn deliver_one(&mut self) {
        let Some(Reverse(p)) = self.flight.pop() else {
            return;
        };
        let routed = match p.target {
            Some(j) => Some(j),
            None => self.route_in(p.from, p.to),
        };
        let Some(j) = routed else {
            if self.verbose {
                self.note(format_args!("{} -> {} lost at a router", p.from, p.to));
            }
            return;
        };
        if self.cut.contains(&j) {
            self.losses.partitioned += 1;
            return;
        }
        let now = self.now;
        let mut wire = SimWire::default();
        let mut bytes = p.bytes;
        let len = bytes.len();
        if self.verbose {
            self.note(format_args!(
                "{} -> n{j} ({len} bytes, first {})",
                p.from,
                bytes.first().copied().unwrap_or(0)
            ));
        }
        let _span = self.span(j);
        match self.nodes[j].core.as_mut() {
            Some(c) => c.handle_datagrams(now, p.from, &mut bytes, len, &mut wire),
            None => {
                self.losses.host_down += 1;
                return;
            }
        }
        self.drain(j, wire);
    }

    /// The host (index) owning `ip` on the internet, or the top router.
    fn owner(&self, ip: IpAddr) -> Option<Owner> {
        if let Some(r) = self
            .routers
            .iter()
            .position(|r| r.parent.is_none() && r.outside == ip)
        {
            return Some(Owner::Router(r));
        }
        self.nodes
            .iter()
            .position(|n| n.router.is_none() && n.addr.ip() == ip)
            .map(Owner::Host)
    }

    /// Inside router `r`'s network: who holds `ip`.
    fn inside(&self, r: usize, ip: IpAddr) -> Option<Owner> {
        if let Some(c) = self
            .routers
            .iter()
            .position(|x| x.parent == Some(r) && x.outside == ip)
        {
            return Some(Owner::Router(c));
        }
        self.nodes
            .iter()
            .position(|n| n.router == Some(r) && n.addr.ip() == ip)
            .map(Owner::Host)
    }

    /// Routers between a host and the internet.
    fn depth(&self, router: Option<usize>) -> u32 {
        let mut d = 0;
        let mut r = router;
        while let Some(x) = r {
            d += 1;
            r = self.routers[x].parent;
        }
        d
    }

    /// Which node a datagram arriving at `to` reaches, through the
    /// routers in front of it (their filters checked now).
    fn route_in(&mut self, from: SocketAddr, to: SocketAddr) -> Option<usize> {
        let mut owner = match self.owner(to.ip()) {
            Some(o) => o,
            None => {
                self.losses.no_route += 1;
                return None;
            }
        };
        let mut dest = to;
        self.descend(&mut owner, &mut dest, from)
    }

    /// From `owner` (a router receiving at `dest`) down to a host.
    fn descend(
        &mut self,
        owner: &mut Owner,
        dest: &mut SocketAddr,
        from: SocketAddr,
    ) -> Option<usize> {
        let now = self.now.mono;
        loop {
            match *owner {
                Owner::Host(j) => {
                    return (self.nodes[j].addr == *dest).then_some(j).or_else(|| {
                        self.losses.no_route += 1;
                        None
                    });
                }
                Owner::Router(r) => {
                    let Some(inside) = self.routers[r].translate_in(from, dest.port(), now) else {
                        self.losses.filtered += 1;
                        return None;
                    };
                    *dest = inside;
                    *owner = match self.inside(r, inside.ip()) {
                        Some(o) => o,
                        None => {
                            self.losses.no_route += 1;
                            return None;
                        }
                    };
                }
            }
        }
    }

    /// Puts a datagram of node `i` on the wire: out through its routers
    /// (mappings made now), then in flight to where it enters.
    fn emit(&mut self, i: usize, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.muted.contains(&i) {
            return;
        }
        if self.cut.contains(&i) {
            self.losses.partitioned += 1;
            return;
        }
        let now = self.now.mono;
        let mut src = from;
        let mut r = self.nodes[i].router;
        let mut hops = 1;
        // Within a router's inside network, or looping back at its outside
        // address (hairpinning), the datagram never reaches the internet.
        let mut local: Option<(Owner, SocketAddr)> = None;
        while let Some(x) = r {
            if let Some(o) = self.inside(x, to.ip()) {
                local = Some((o, src));
                break;
            }
            if self.routers[x].outside == to.ip() {
                if !self.routers[x].model.hairpin {
                    self.losses.hairpin_off += 1;
                    return;
                }
                src = self.routers[x].translate_out(src, to, now, &mut self.rng);
                local = Some((Owner::Router(x), src));
                hops += 1;
                break;
            }
            src = self.routers[x].translate_out(src, to, now, &mut self.rng);
            hops += 1;
            r = self.routers[x].parent;
        }
        if local.is_none() {
            hops += match self.owner(to.ip()) {
                Some(Owner::Router(x)) => self.depth(Some(x)),
                Some(Owner::Host(j)) => self.depth(self.nodes[j].router),
                None => 0,
            };
        }
        if self.link.loss > 0.0 && self.rng.chance(self.link.loss) {
            self.losses.link_loss += 1;
            return;
        }
        if self.flight.len() >= MAX_IN_FLIGHT {
            self.losses.queue_full += 1;
            return;
        }
        let jitter = if self.link.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.below(self.link.jitter.as_micros() as usize + 1) as u64)
        };
        let latency = self.link.hop * hops + jitter;
        match local {
            // Inside a router's network (or hairpinned at it): the filters
            // are passed now and the datagram goes to the host it reaches.
            Some((mut owner, src)) => {
                let mut dest = to;
                if let Some(j) = self.descend(&mut owner, &mut dest, src) {
                    self.push_flight(now + latency, src, to, Some(j), bytes);
                }
            }
            None => self.push_flight(now + latency, src, to, None, bytes),
        }
    }

    fn push_flight(
        &mut self,
        at: Instant,
        from: SocketAddr,
        to: SocketAddr,
        target: Option<usize>,
        bytes: Vec<u8>,
    ) {
        self.seq += 1;
        self.flight.push(Reverse(InFlight {
            at,
            seq: self.seq,
            from,
            to,
            target,
            bytes,
        }));
    }

    /// Carries out what node `i`'s core asks, and records its data plane.
    fn drain(&mut self, i: usize, wire: SimWire) {
        let addr = self.nodes[i].addr;
        let now = self.now.mono;
        for (from, d, peer) in wire.delivered {
            self.nodes[i].delivered_count += 1;
            let got = match self.nodes[i].plane.as_mut() {
                Some(p) => p.receive(self.now, from, &d, peer),
                None => continue,
            };
            if let Some(payload) = got.payload {
                self.on_data(i, payload, peer, now);
            }
            self.route_sent(i, got.sent);
        }
        for (to, d) in wire.sent {
            self.emit(i, addr, to, d);
        }
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = core.poll_transmit() {
            for d in t.contents.chunks(t.segment.max(1)) {
                out.push((t.to, d.to_vec()));
            }
        }
        let mut ops = Vec::new();
        while let Some(op) = core.poll_dataplane_op() {
            ops.push(op);
        }
        let mut events = Vec::new();
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        for op in ops {
            let now = self.now;
            match op {
                DataplaneOp::SetPeer(p) => {
                    let sent = self.nodes[i]
                        .plane
                        .as_mut()
                        .map(|plane| plane.set_peer(now, &p))
                        .unwrap_or_default();
                    let j = self.index_of(&p.key);
                    let old = self.nodes[i].peers.insert(p.key, p.endpoint);
                    if old != Some(p.endpoint) {
                        let j = j.map_or("?".to_string(), |j| format!("n{j}"));
                        match p.endpoint {
                            Some(e) => self.note(format_args!("n{i} programs {j} direct at {e}")),
                            None => self.note(format_args!("n{i} programs {j} through the core")),
                        }
                    }
                    self.route_sent(i, sent);
                }
                DataplaneOp::RemovePeer(k) => {
                    self.nodes[i].peers.remove(&k);
                    if let Some(plane) = self.nodes[i].plane.as_mut() {
                        plane.remove_peer(now, &k);
                    }
                }
                DataplaneOp::AddRoute(_) | DataplaneOp::RemoveRoute(_) => {}
            }
        }
        for e in events {
            if let Event::Answer { id, response } = e {
                self.answers.push((i, id, response));
                continue;
            }
            // Host names resolve at once, from `names`.
            if let Event::Resolve { purpose, endpoint } = e {
                let now = self.now;
                let addr = self
                    .names
                    .get(&endpoint.host)
                    .map(|a| SocketAddr::new(a.ip(), endpoint.port));
                self.resolved.push(endpoint.host);
                let _span = self.span(i);
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.on_resolved(now, purpose, addr);
                }
                self.drain(i, SimWire::default());
            }
        }
        for (to, d) in out {
            self.emit(i, addr, to, d);
        }
    }

    /// A payload node `i`'s data plane delivered; `peer` is the sender a
    /// relay named (None: it came straight).
    fn on_data(&mut self, i: usize, d: Vec<u8>, peer: Option<PublicKey>, now: Instant) {
        self.nodes[i].payloads += 1;
        if d.len() >= 16 && d[0] == WG_DATA {
            let from = d[5] as usize;
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&d[8..16]);
            let sent = self.start + Duration::from_millis(u64::from_le_bytes(ms));
            if let Some(p) = peer
                && self.nodes.get(from).map(|f| f.public) != Some(p)
            {
                self.misattributed += 1;
            }
            if self.arrivals.len() >= MAX_RECEIVED {
                self.arrivals.pop_front();
            }
            self.arrivals.push_back(DataArrival {
                from,
                to: i,
                sent,
                at: now,
                relayed: peer.is_some(),
            });
        }
        let n = &mut self.nodes[i];
        if n.received.len() >= MAX_RECEIVED {
            n.received.pop_front();
        }
        n.received.push_back((now, d));
    }
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Host(usize),
    Router(usize),
}

/// The public address of host `i` (when it is public).
pub fn public_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8)), PORT)
}

/// The outside address of host `i`'s home router (on the internet).
fn home_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + i as u8))
}

/// The outside address of carrier-grade NAT `c`.
fn cgnat_addr(c: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + c as u8))
}
