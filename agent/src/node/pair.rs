//! A test driver for whole nodes, in the manner of quinn-proto's `Pair`:
//! several [`Node`] cores in one process on an in-memory internet with a
//! fake clock. Hosts have public addresses or sit behind a minimal NAT model
//! (endpoint-independent or address-and-port-dependent mapping, filtering
//! by the flows the inside opened, no hairpinning). Each trusted node has a
//! fake data plane: it takes the peers the core programs, sends "WireGuard"
//! datagrams (first byte 4) straight to a peer's endpoint when the core set
//! one, else hands them to the core as [`Outgoing`]; what reaches a node's
//! data plane is recorded. Every link adds the same one-way latency.
//!
//! It owns nothing outside the process: no socket, no clock, no thread.

use super::core::{DataplaneOp, DataplaneView, Event, Host, Node, NodeConfig, Now, Reply, Wire};
use super::launch::Mode;
use crate::config::parse;
use crate::control::Response;
use crate::dataplane::Outgoing;
use crate::keys::{PrivateKey, PublicKey};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// One-way latency of every datagram.
const LATENCY: Duration = Duration::from_millis(20);
/// The node's port, as `wh up` takes it.
const PORT: u16 = 62096;

/// How a NAT maps the flows of its inside hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// One public port per inside socket, whatever the destination
    /// ("easy": hole punching works).
    EndpointIndependent,
    /// A new public port per destination ("hard", symmetric).
    AddressAndPortDependent,
}

struct Nat {
    kind: NatKind,
    public: IpAddr,
    /// (inside socket, destination when dependent) -> public port.
    out: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port -> inside socket, and the remotes it sent to.
    inside: HashMap<u16, (SocketAddr, Vec<SocketAddr>)>,
    next_port: u16,
}

impl Nat {
    /// The source the remote sees for a datagram `from` inside to `to`.
    fn translate_out(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        let dest = match self.kind {
            NatKind::EndpointIndependent => None,
            NatKind::AddressAndPortDependent => Some(to),
        };
        let port = match self.out.get(&(from, dest)) {
            Some(p) => *p,
            None => {
                self.next_port += 1;
                let p = self.next_port;
                self.out.insert((from, dest), p);
                p
            }
        };
        let entry = self.inside.entry(port).or_insert((from, Vec::new()));
        if !entry.1.contains(&to) {
            entry.1.push(to);
        }
        SocketAddr::new(self.public, port)
    }

    /// The inside socket a datagram from `from` to public `port` goes to,
    /// if the inside opened that flow.
    fn translate_in(&self, from: SocketAddr, port: u16) -> Option<SocketAddr> {
        let (inside, remotes) = self.inside.get(&port)?;
        remotes.contains(&from).then_some(*inside)
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

/// One host of the simulated internet.
pub struct SimNode {
    pub key: PrivateKey,
    /// Its own address (inside its NAT, if any).
    pub addr: SocketAddr,
    nat: Option<usize>,
    pub core: Option<Node>,
    config: NodeConfig,
    /// The data plane's peers: key -> direct endpoint (None: through the core).
    peers: HashMap<PublicKey, Option<SocketAddr>>,
    /// Data-plane datagrams received: (at, bytes).
    pub received: Vec<(Instant, Vec<u8>)>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The simulated internet and its nodes.
pub struct Net {
    pub now: Now,
    pub nodes: Vec<SimNode>,
    nats: Vec<Nat>,
    flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Datagrams that found no host or were filtered by a NAT.
    pub undeliverable: u64,
    /// What host names resolve to (others: not found).
    pub names: HashMap<String, SocketAddr>,
    /// Host names the cores asked to resolve.
    pub resolved: Vec<String>,
    /// Late answers to control requests: (node, request id, answer).
    pub answers: Vec<(usize, u64, Response)>,
    /// Nodes whose datagrams are lost on the way out (one-way loss).
    pub muted: Vec<usize>,
}

/// How a node of a test network is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Public,
    Behind(NatKind),
}

impl Net {
    /// A network with one public bootstrap node (index 0) and the given
    /// trusted nodes, none started yet (see [`Net::start`]).
    pub fn new(trusted: &[Place]) -> Net {
        let keys: Vec<PrivateKey> = (0..=trusted.len())
            .map(|_| PrivateKey::generate().expect("random source"))
            .collect();
        let boot_addr = public_addr(0);
        let mut text = format!(
            "name sim\nsubnet 10.9.0.0/24\nworkbit 0\nboot {} {}\n",
            keys[0].public_key(),
            boot_addr
        );
        for (i, k) in keys.iter().enumerate().skip(1) {
            text += &format!("trust n{i} {}\n", k.public_key());
        }
        let spec = parse(&text).expect("test network parses").spec;
        let start = Now {
            mono: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        let mut net = Net {
            now: start,
            nodes: Vec::new(),
            nats: Vec::new(),
            flight: BinaryHeap::new(),
            seq: 0,
            undeliverable: 0,
            names: HashMap::new(),
            resolved: Vec::new(),
            answers: Vec::new(),
            muted: Vec::new(),
        };
        let places = std::iter::once(Place::Public).chain(trusted.iter().copied());
        for (i, (key, place)) in keys.into_iter().zip(places).enumerate() {
            let (addr, nat) = match place {
                Place::Public => (public_addr(i), None),
                Place::Behind(kind) => {
                    net.nats.push(Nat {
                        kind,
                        public: public_addr(i).ip(),
                        out: HashMap::new(),
                        inside: HashMap::new(),
                        next_port: 40000,
                    });
                    (
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), PORT),
                        Some(net.nats.len() - 1),
                    )
                }
            };
            let has_dataplane =
                super::overlay::Overlay::new(&spec, key.public_key()).has_interface();
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
            };
            net.nodes.push(SimNode {
                key,
                addr,
                nat,
                core: None,
                config,
                peers: HashMap::new(),
                received: Vec::new(),
            });
        }
        net
    }

    /// Starts (or restarts, with a fresh state) node `i` now.
    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let host = Box::new(SimHost(n.addr.ip()));
        n.core = Some(Node::new(n.config.clone(), host, self.now).expect("random source"));
        n.peers.clear();
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
    }

    pub fn core(&self, i: usize) -> &Node {
        self.nodes[i].core.as_ref().expect("node is running")
    }

    pub fn core_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].core.as_mut().expect("node is running")
    }

    pub fn public_key(&self, i: usize) -> PublicKey {
        self.nodes[i].key.public_key()
    }

    /// The node index holding `key`.
    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.nodes.iter().position(|n| n.key.public_key() == *key)
    }

    /// Runs the network for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now.mono + d;
        // A core asking for its timeout at the same instant again and
        // again would hang the test: that is a failure of its own.
        let mut spins = 0u32;
        let mut last_timer = None;
        loop {
            let next_packet = self.flight.peek().map(|Reverse(p)| p.at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.core.as_ref().map(|c| (c.poll_timeout(), i)))
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
                    } else if let Some((t, i)) = next_timer {
                        spins = if last_timer == Some((t, i)) {
                            spins + 1
                        } else {
                            0
                        };
                        assert!(spins < 10_000, "node {i} spins: its timeout stays at {t:?}");
                        last_timer = Some((t, i));
                        self.timeout(i);
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
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.handle_timeout(now);
        }
        self.drain(i, SimWire::default());
    }

    /// Node `i`'s data plane sends one WireGuard data datagram to node `j`.
    pub fn send_data(&mut self, i: usize, j: usize, marker: u8) {
        let to = self.public_key(j);
        let datagram = vec![4, 0, 0, 0, marker, i as u8, j as u8, 0];
        match self.nodes[i].peers.get(&to).copied().flatten() {
            Some(endpoint) => {
                let from = self.nodes[i].addr;
                self.emit(i, from, endpoint, datagram);
            }
            None => {
                let now = self.now;
                let mut wire = SimWire::default();
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.handle_outgoing(now, Outgoing::one(to, datagram), &mut wire);
                }
                self.drain(i, wire);
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
    pub fn request(&mut self, i: usize, id: u64, req: crate::control::Request) -> Reply {
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
        let Some((j, from)) = self.route_in(p.from, p.to) else {
            self.undeliverable += 1;
            return;
        };
        let now = self.now;
        let mut wire = SimWire::default();
        let mut bytes = p.bytes;
        let len = bytes.len();
        match self.nodes[j].core.as_mut() {
            Some(c) => c.handle_datagrams(now, from, &mut bytes, len, &mut wire),
            None => {
                self.undeliverable += 1;
                return;
            }
        }
        self.drain(j, wire);
    }

    /// Which node a datagram to `to` reaches, and from which source.
    fn route_in(&self, from: SocketAddr, to: SocketAddr) -> Option<(usize, SocketAddr)> {
        if let Some(n) = self.nats.iter().position(|n| n.public == to.ip()) {
            let inside = self.nats[n].translate_in(from, to.port())?;
            let j = self
                .nodes
                .iter()
                .position(|x| x.nat == Some(n) && x.addr == inside)?;
            return Some((j, from));
        }
        let j = self
            .nodes
            .iter()
            .position(|x| x.nat.is_none() && x.addr == to)?;
        Some((j, from))
    }

    /// Puts a datagram of node `i` on the wire (through its NAT).
    fn emit(&mut self, i: usize, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.muted.contains(&i) {
            return;
        }
        let source = match self.nodes[i].nat {
            Some(n) => self.nats[n].translate_out(from, to),
            None => from,
        };
        self.seq += 1;
        self.flight.push(Reverse(InFlight {
            at: self.now.mono + LATENCY,
            seq: self.seq,
            from: source,
            to,
            bytes,
        }));
    }

    /// Carries out what node `i`'s core asks, and records its data plane.
    fn drain(&mut self, i: usize, wire: SimWire) {
        let addr = self.nodes[i].addr;
        let now = self.now.mono;
        for (_, d, _) in wire.delivered {
            self.nodes[i].received.push((now, d));
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
            match op {
                DataplaneOp::SetPeer(p) => {
                    self.nodes[i].peers.insert(p.key, p.endpoint);
                }
                DataplaneOp::RemovePeer(k) => {
                    self.nodes[i].peers.remove(&k);
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
                let core = self.nodes[i].core.as_mut().expect("running");
                core.on_resolved(now, purpose, addr);
                self.drain(i, SimWire::default());
            }
        }
        for (to, d) in out {
            self.emit(i, addr, to, d);
        }
    }
}

/// The public address of host `i`.
fn public_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8)), PORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Request;
    use crate::node::overlay::PeerPath;

    const S: Duration = Duration::from_secs(1);

    fn is_direct(net: &Net, i: usize, j: usize) -> bool {
        matches!(
            net.core(i).path(&net.public_key(j)),
            Some(PeerPath::Direct(_))
        )
    }

    fn relay_in_use(net: &Net, i: usize, j: usize) -> Option<PublicKey> {
        match net.core(i).path(&net.public_key(j)) {
            Some(PeerPath::Relayed(r)) => r.first().map(|r| r.0),
            _ => None,
        }
    }

    /// Asserts that data goes from i to j and back, each within 2 s.
    fn assert_reach_each_other(net: &mut Net, i: usize, j: usize) {
        assert!(
            time_to_deliver(net, i, j, 1, 2 * S).is_some(),
            "n{i} cannot reach n{j}"
        );
        assert!(
            time_to_deliver(net, j, i, 2, 2 * S).is_some(),
            "n{j} cannot reach n{i}"
        );
    }

    /// Sends `marker` from i to j every 100 ms until it arrives; the time it took.
    fn time_to_deliver(
        net: &mut Net,
        i: usize,
        j: usize,
        marker: u8,
        limit: Duration,
    ) -> Option<Duration> {
        let start = net.now.mono;
        while net.now.mono - start < limit {
            net.send_data(i, j, marker);
            net.run_for(Duration::from_millis(100));
            if net.got(j, i, marker) {
                return Some(net.now.mono - start);
            }
        }
        None
    }

    #[test]
    fn three_public_nodes_find_each_other_and_agree_on_direct_paths() {
        let mut net = Net::new(&[Place::Public, Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        for i in 1..=3 {
            for j in 1..=3 {
                if i != j {
                    assert!(is_direct(&net, i, j), "n{i} has no direct path to n{j}");
                    assert_eq!(
                        net.nodes[i].peers.get(&net.public_key(j)),
                        Some(&Some(net.nodes[j].addr)),
                        "n{i}'s data plane does not send to n{j}'s address"
                    );
                }
            }
        }
        for (i, j) in [(1, 2), (2, 3), (3, 1)] {
            assert!(
                time_to_deliver(&mut net, i, j, 1, S).is_some(),
                "n{i} cannot reach n{j}"
            );
        }
    }

    #[test]
    fn a_node_behind_a_nat_that_has_heard_only_from_the_bootstrap_gets_a_relay() {
        let mut net = Net::new(&[Place::Behind(NatKind::AddressAndPortDependent)]);
        net.start_all();
        net.run_for(5 * S);
        let relays = net.core(1).kept_relays();
        assert_eq!(
            relays.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![net.public_key(0)],
            "the node behind a NAT keeps the bootstrap as its relay"
        );
        assert!(
            net.core(1).own_record().relays.contains(&relays[0]),
            "and publishes it"
        );
    }

    #[test]
    fn two_nodes_behind_hard_nats_reach_each_other_through_a_public_node() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = Net::new(&[Place::Public, hard, hard]);
        net.start_all();
        net.run_for(5 * S);
        assert!(
            relay_in_use(&net, 2, 3).is_some(),
            "n2 has no relayed path to n3"
        );
        assert_reach_each_other(&mut net, 2, 3);
    }

    #[test]
    fn two_nodes_behind_easy_nats_punch_a_direct_path() {
        let easy = Place::Behind(NatKind::EndpointIndependent);
        let mut net = Net::new(&[Place::Public, easy, easy]);
        net.start_all();
        net.run_for(10 * S);
        assert!(
            is_direct(&net, 2, 3) && is_direct(&net, 3, 2),
            "n2 and n3 did not punch through"
        );
        assert!(time_to_deliver(&mut net, 2, 3, 1, S).is_some());
    }

    #[test]
    fn the_relay_in_use_dies_and_traffic_moves_to_another_within_1_s() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = Net::new(&[Place::Public, Place::Public, hard, hard]);
        net.start_all();
        net.run_for(8 * S);
        assert!(
            time_to_deliver(&mut net, 3, 4, 1, 2 * S).is_some(),
            "n3 cannot reach n4"
        );
        let relay = relay_in_use(&net, 3, 4).expect("a relayed path");
        let dead = net.index_of(&relay).expect("the relay is a node");
        net.kill(dead);
        let took = time_to_deliver(&mut net, 3, 4, 2, 3 * S).expect("traffic never moved");
        eprintln!("relay in use died while flowing: data again after {took:?}");
        assert!(took <= S, "traffic moved after {took:?}");
        assert_ne!(relay_in_use(&net, 3, 4), Some(relay));
    }

    #[test]
    fn a_reload_that_fails_keeps_the_running_network() {
        let mut net = Net::new(&[Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        assert!(is_direct(&net, 1, 2));
        let now = net.now;
        // A file that does not parse: nothing changes.
        let answer = net
            .core_mut(1)
            .reload(now, Err(anyhow::anyhow!("config:3: 'trust' needs a key")));
        match answer {
            Response::Error(e) => assert!(
                e.contains("config:3") && e.contains("nothing was changed"),
                "{e}"
            ),
            other => panic!("a bad file was taken: {other:?}"),
        }
        // A file that parses but names another network and drops n2: refused whole.
        let mut other = net.core(1).spec().clone();
        other.name = "elsewhere".into();
        let n2 = net.public_key(2);
        other.peers.retain(|p| p.key != n2);
        let before = net.core(1).spec().clone();
        let now = net.now;
        assert!(net.core_mut(1).apply_spec(now, other).is_err());
        assert_eq!(
            net.core(1).spec(),
            &before,
            "the refused network replaced the running one"
        );
        let mut changed = false;
        while let Some(e) = net.core_mut(1).poll_event() {
            changed |= e == Event::NetworkChanged;
        }
        assert!(
            !changed,
            "names and CNI were told of a network that was refused"
        );
        net.run_for(S);
        assert!(is_direct(&net, 1, 2), "the path went with the bad reload");
        assert!(time_to_deliver(&mut net, 1, 2, 9, S).is_some());
        // `wh reload` asks the shell for the file.
        let now = net.now;
        let reply =
            net.core_mut(1)
                .handle_request(now, 1, Request::Reload, &DataplaneView::default());
        assert_eq!(reply, Reply::ReadNetworkFile);
    }

    #[test]
    fn a_bootstrap_alone_connects_a_node_behind_an_easy_nat_and_one_behind_a_hard_nat() {
        let mut net = Net::new(&[
            Place::Behind(NatKind::EndpointIndependent),
            Place::Behind(NatKind::AddressAndPortDependent),
        ]);
        net.start_all();
        net.run_for(15 * S);
        assert!(
            net.core(1).path(&net.public_key(2)).is_some(),
            "n1 has no path to n2: {:?}",
            net.core(1).own_record()
        );
        assert_reach_each_other(&mut net, 1, 2);
    }

    #[test]
    fn an_idle_relayed_path_survives_losing_the_relay_in_use_and_another_public_node() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let easy = Place::Behind(NatKind::EndpointIndependent);
        let mut net = Net::new(&[Place::Public, Place::Public, hard, easy]);
        net.start_all();
        net.run_for(8 * S);
        assert!(
            time_to_deliver(&mut net, 3, 4, 1, 2 * S).is_some(),
            "n3 cannot reach n4"
        );
        let relay = relay_in_use(&net, 3, 4).expect("a relayed path");
        let dead = net.index_of(&relay).expect("the relay is a node");
        net.run_for(3 * S);
        net.kill(dead);
        // A second public node goes with it: one remains.
        let second = [1, 2, 0].into_iter().find(|i| *i != dead).unwrap_or(1);
        net.kill(second);
        let took = time_to_deliver(&mut net, 3, 4, 2, 10 * S).expect("traffic never moved");
        eprintln!(
            "relay in use and a second public node died while idle: data again after {took:?}"
        );
        assert!(took <= 3 * S, "traffic moved after {took:?}");
    }

    #[test]
    fn a_peer_endpoint_given_by_host_name_is_resolved_by_the_shell_and_pinged() {
        let mut net = Net::new(&[Place::Public, Place::Public]);
        // No bootstrap: only n1's static endpoint for n2 can join them.
        let n2 = net.public_key(2);
        for p in net.nodes[1].config.spec.peers.iter_mut() {
            if p.key == n2 {
                p.endpoint = Some(crate::config::Endpoint {
                    host: "n2.sim".into(),
                    port: PORT,
                });
            }
        }
        net.names.insert("n2.sim".into(), net.nodes[2].addr);
        net.start(1);
        net.start(2);
        assert_eq!(
            net.resolved,
            vec!["n2.sim".to_string()],
            "the core asked the shell to resolve the name"
        );
        net.run_for(2 * S);
        assert!(
            is_direct(&net, 1, 2) && is_direct(&net, 2, 1),
            "n1 and n2 did not meet at the resolved address"
        );
    }

    #[test]
    fn wh_lookup_and_wh_ping_are_answered_when_the_network_answers() {
        let mut net = Net::new(&[Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        let n2 = net.public_key(2).to_string();
        let lookup = net.request(1, 41, Request::Lookup { peer: n2 });
        let ping = net.request(1, 42, Request::Ping { peer: "n2".into() });
        assert_eq!((lookup, ping), (Reply::Later, Reply::Later));
        net.run_for(S);
        let answer = |id| {
            net.answers
                .iter()
                .find(|a| a.0 == 1 && a.1 == id)
                .map(|a| a.2.clone())
        };
        match answer(41) {
            Some(Response::Ok(v)) => assert_eq!(v["key"], net.public_key(2).to_string()),
            other => panic!("wh lookup got {other:?}"),
        }
        match answer(42) {
            Some(Response::Ok(v)) => assert!(
                v["rtt_ms"]
                    .as_f64()
                    .is_some_and(|r| (30.0..100.0).contains(&r)),
                "{v}"
            ),
            other => panic!("wh ping got {other:?}"),
        }
        // A peer that is not in the network is an error at once.
        let r = net.request(
            1,
            43,
            Request::Ping {
                peer: "nobody".into(),
            },
        );
        assert!(matches!(r, Reply::Now(Response::Error(e)) if e.contains("'nobody'")));
    }

    #[test]
    fn the_relay_in_use_dies_and_the_sender_alone_moves_to_another_within_1_s() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = Net::new(&[Place::Public, Place::Public, hard, hard]);
        net.start_all();
        net.run_for(8 * S);
        assert!(
            time_to_deliver(&mut net, 3, 4, 1, 2 * S).is_some(),
            "n3 cannot reach n4"
        );
        let relay = relay_in_use(&net, 3, 4).expect("a relayed path");
        let dead = net.index_of(&relay).expect("the relay is a node");
        net.kill(dead);
        // n4 says nothing more: only n3's own watch on its relay can move it.
        net.muted.push(4);
        let took = time_to_deliver(&mut net, 3, 4, 2, 3 * S).expect("traffic never moved");
        assert!(took <= S, "traffic moved after {took:?}");
        assert_ne!(relay_in_use(&net, 3, 4), Some(relay));
    }
}
