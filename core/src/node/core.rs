//! The node as a sans-I/O core: every protocol decision of a running node.
//!
//! [`Node`] joins the cores (`proto`'s codec, `dht`, `overlay`, `relay`,
//! `nat`) into one state machine, in the manner of quinn-proto's
//! `Endpoint`/`Connection` and boringtun's `Tunn`. It owns: trust decisions
//! (who may steer our paths, fill our channel book, use us as a relay),
//! relay forwarding and rotation, the own record (endpoints, NAT kind,
//! relays) and when it is republished, reply-path steering, hole punching,
//! the alias join, the clock report, control requests, reloads.
//!
//! Contract:
//! - It does no I/O and reads no clock: the caller gives it the time
//!   ([`Now`]) with every input — datagrams ([`Node::handle_datagrams`];
//!   [`Node::handle_received`] with how long they waited in the socket's
//!   queue: control datagrams late beyond [`CONTROL_WAIT_MAX`] are shed),
//!   WireGuard datagrams the data plane wants sent
//!   ([`Node::handle_outgoing`]), timer expiry ([`Node::handle_timeout`]),
//!   control requests ([`Node::handle_request`]), new versions of the
//!   network ([`Node::apply_spec`]), resolved host names
//!   ([`Node::on_resolved`]), port mappings ([`Node::on_port_mapping`]),
//!   what the data plane refused or received ([`Node::on_peer_refused`],
//!   [`Node::on_direct_receipts`]). The host's addresses come through the
//!   [`Host`] it is built with (a fake one in tests).
//! - It returns everything as values, drained by the caller after each
//!   input: datagrams to send ([`Node::poll_transmit`], one [`Transmit`]
//!   type for DHT, overlay keepalives, punching, relay announcements and
//!   replies), data-plane operations ([`Node::poll_dataplane_op`]), events
//!   for the shell ([`Node::poll_event`]: answers to requests, names to
//!   resolve, "the network changed", "the alias was accepted"), and when to
//!   call [`Node::handle_timeout`] next ([`Node::poll_timeout`]).
//! - The per-packet path stays fast: WireGuard datagrams for the data plane
//!   and runs of relayed data go through a [`Wire`] the caller passes with
//!   the datagrams, without a copy (the shell's `Wire` is its socket and
//!   data plane; the tests' is an in-memory network).
//! - Every collection is bounded; every datagram it drops is counted by a
//!   named reason ([`Node::drops`]). Given the same inputs it makes the same
//!   outputs, but for the codec's nonces and relay channel ids (random).

use super::Mode;
use super::overlay::{AloneRepings, Overlay, PeerPath};
use crate::config::{Endpoint, NetworkSpec, Role};
use crate::control::{self, Request, Response};
use crate::dataplane::{Outgoing, PeerConfig, PeerStats};
use crate::dht::{Dht, DhtConfig, DhtEvent, LookupId, says_more};
use crate::keys::{PrivateKey, PublicKey, RandomStream};
use crate::nat::punch::PunchAction;
use crate::nat::{NatDetector, Puncher};
use crate::proto::{Codec, CodecConfig, FirstContact, Message, NatKind, NodeRecord, Received};
use crate::relay::channel::{self, ChannelBook, RelayChannels};
use crate::relay::{
    Candidate, DeliveryAction, RelayDelivery, RelayHealth, RelayLimits, RelaySet, SharedLimiter,
};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often the overlay's timers run.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest a control datagram may have waited in the socket's receive
/// queue and still be read. A node that falls behind (a storm of starts
/// on a loaded machine) would otherwise work through seconds of backlog:
/// its answers come after the asker gave up, its challenges echo
/// timestamps older than the 10 s a challenge is believed, and what it
/// judges against its clock looks stale — the loss feeds itself. Dropped
/// unread, a late datagram costs one receive call, and the queue drains
/// at once; the asker's retry finds a short queue. Below the DHT's
/// longest request timeout (4 s) and the codec's 10 s windows.
pub const CONTROL_WAIT_MAX: Duration = Duration::from_secs(2);

/// Sources of shed datagrams remembered between two ticks.
const MAX_UNREAD_SOURCES: usize = 4096;

/// How many datagrams of `bytes` (cut in `segment`s) to drop unread
/// because they waited `waited` in the receive queue: all of them when
/// more than [`CONTROL_WAIT_MAX`] and every one is a control datagram
/// (WireHub message or challenge); none otherwise (WireGuard and relayed
/// data are the data plane's, which has its own timers).
pub fn waited_too_long(bytes: &[u8], segment: usize, waited: Option<Duration>) -> usize {
    if waited.is_none_or(|w| w <= CONTROL_WAIT_MAX) || bytes.is_empty() {
        return 0;
    }
    let mut n = 0;
    for d in bytes.chunks(segment.max(1)) {
        if !(crate::proto::is_control(d) || crate::proto::is_challenge(d)) {
            return 0;
        }
        n += 1;
    }
    n
}
/// Datagrams held per peer while it has no path, and for how long.
const WAITING_PER_PEER: usize = 16;
const WAITING_TTL: Duration = Duration::from_secs(3);
/// Peers with datagrams waiting for a path.
const MAX_WAITING_PEERS: usize = 1024;
/// How often the alias proof is resent until the listener answers.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// Keys remembered in `recent`.
const MAX_RECENT: usize = 8192;
/// A direct path silent this long falls back to relays: keepalives go
/// every 1.5 s and, once one is unanswered, every 400 ms, so it takes four
/// lost in a row.
const DIRECT_QUIET: Duration = Duration::from_secs(3);
/// How often the host's global IPv6 addresses are read again.
const LOCAL_IPV6_EVERY: Duration = Duration::from_secs(30);
/// A peer the data plane refused is programmed again after this long.
const REPROGRAM_AFTER: Duration = Duration::from_secs(1);
/// Public nodes a moved node asks to carry its punch requests.
const MOVE_ANNOUNCERS: usize = 2;
/// Own record changes are republished at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// A `wh ping` unanswered this long fails.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Control requests waiting for the network (lookups, pings).
const MAX_PENDING_REQUESTS: usize = 256;
/// Queued outputs: past this, the oldest transmit is dropped and counted.
const MAX_TRANSMITS: usize = 65536;
/// Host names waiting to be resolved by the shell.
const MAX_RESOLVING: usize = 1024;

/// The time, as the core takes it: a monotonic instant for timers and the
/// wall clock (milliseconds since the Unix epoch) for the codec's freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// The system's clocks.
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// `d` later on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// What the core asks of the host it runs on: the addresses it has. The
/// daemon's reads the kernel; tests give fixed answers.
pub trait Host: Send {
    /// The local address the host would send from towards `peer`.
    fn local_ip_towards(&self, peer: SocketAddr) -> Option<IpAddr>;
    /// The host's global IPv6 addresses to publish (empty: none, or the
    /// socket is IPv4 only).
    fn global_ipv6(&self) -> Vec<Ipv6Addr>;
}

/// The per-packet path: where WireGuard datagrams go without being copied.
pub trait Wire {
    /// Sends `datagrams`, each `segment` bytes long but the last, to `to`.
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize);
    /// Hands a WireGuard datagram to the data plane; `peer` is the trusted
    /// peer a relay says it comes from (None: straight from `from`).
    fn deliver(&mut self, from: SocketAddr, datagram: &[u8], peer: Option<PublicKey>);
}

/// One datagram (or a run of datagrams of `segment` bytes, the last maybe
/// shorter) to send from the node's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub contents: Vec<u8>,
    pub segment: usize,
}

/// What the data plane must apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneOp {
    /// Add or change a WireGuard peer. If the data plane refuses, tell the
    /// core ([`Node::on_peer_refused`]): it tries again.
    SetPeer(PeerConfig),
    RemovePeer(PublicKey),
    /// Route a peer's subnet into the interface.
    AddRoute(ipnet::IpNet),
    RemoveRoute(ipnet::IpNet),
}

/// Identifies a control request the shell passed in, so that a late answer
/// ([`Event::Answer`]) finds its caller.
pub type RequestId = u64;

/// What the core tells the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The answer to a request that waited for the network.
    Answer { id: RequestId, response: Response },
    /// Resolve this host name (off the event loop) and give the address to
    /// [`Node::on_resolved`] with the same `purpose`.
    Resolve {
        purpose: Purpose,
        endpoint: Endpoint,
    },
    /// The network (spec) changed: names, hosts file and CNI configuration
    /// follow [`Node::spec`].
    NetworkChanged,
    /// The listener accepted our alias proof.
    Joined,
}

/// Why a host name is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A boot node of the network file.
    Boot(PublicKey),
    /// A peer's static endpoint, pinged to start a direct path.
    Ping(PublicKey),
}

/// How the core answers a control request at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Now(Response),
    /// Later, as an [`Event::Answer`] with the request's id.
    Later,
    /// `wh reload`: the shell reads the network file and gives the result
    /// to [`Node::reload`].
    ReadNetworkFile,
}

/// What the shell knows of its data plane, for `wh show` and `inspect`.
#[derive(Debug, Clone, Default)]
pub struct DataplaneView {
    pub stats: Vec<PeerStats>,
    pub kind: Option<String>,
    pub dropped: u64,
    pub wireguard_via_daemon: Option<u64>,
    /// Peers an external WireGuard had reset for a broken session.
    pub session_resets: Option<u64>,
    /// Handshake initiations the embedded WireGuard left unanswered
    /// because its own to that peer crossed them.
    pub crossing_yielded: Option<u64>,
    pub owns_port: bool,
    /// The kernel's UDP counters of the node's namespace, by name
    /// (`SndbufErrors`, `RcvbufErrors`...): losses outside the daemon.
    pub kernel_udp: BTreeMap<String, u64>,
}

/// An alias proof for a listener: `alias` vouches for our own key.
#[derive(Debug, Clone, Copy)]
pub struct AliasJoin {
    pub listener: PublicKey,
    pub alias: PublicKey,
    pub proof: [u8; 32],
}

/// What a node is, apart from its state.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub key: PrivateKey,
    pub spec: NetworkSpec,
    /// The interface name (for `wh show`).
    pub interface: String,
    /// The public port (our socket's, or the kernel WireGuard's).
    pub listen_port: u16,
    pub mode: Mode,
    /// Per-source rate this node relays for others, Mbit/s.
    pub relay_mbit: u32,
    /// Never use direct paths to trusted peers (measuring relayed paths).
    pub force_relay: bool,
    /// Reloads read the network file (else they come from the caller).
    pub from_file: bool,
    /// A data plane takes WireGuard datagrams.
    pub has_dataplane: bool,
    /// Join through an alias: send this proof until the listener answers.
    pub join: Option<AliasJoin>,
    /// The core's randomness (nonce seeds, ids): the daemon draws it from
    /// the operating system, the simulator from its seed.
    pub random: RandomStream,
}

/// How to reach a peer with a control message.
#[derive(Debug, Clone, Copy)]
enum ReplyVia {
    Direct(SocketAddr),
    Relay((PublicKey, SocketAddr)),
}

/// A request waiting for the network.
#[derive(Debug)]
enum Pending {
    Lookup(LookupId),
    Ping {
        id: u64,
        key: PublicKey,
        sent: Instant,
    },
}

/// The node's protocol state. See the module's contract.
pub struct Node {
    config: NodeConfig,
    public: PublicKey,
    spec: NetworkSpec,
    host: Box<dyn Host>,
    codec: Codec,
    dht: Dht,
    overlay: Overlay,
    nat: NatDetector,
    puncher: Puncher,
    relays: RelaySet,
    health: RelayHealth,
    /// Whether the relay in use for each relayed peer delivers data.
    delivery: RelayDelivery,
    /// Shared with the relay fast path ([`Node::relay_fast_path`]).
    limiter: SharedLimiter,
    /// As a relay: the channels of the flows we forward.
    channels: RelayChannels,
    /// As an end of relayed flows: the channels relays announced to us.
    book: ChannelBook,
    /// Reused to frame relay-data datagrams.
    frame_buf: Vec<u8>,
    /// Where each key last sent us an authenticated message from (bounded):
    /// where a relay forwards to.
    recent: BTreeMap<PublicKey, (SocketAddr, Instant)>,
    own_record: NodeRecord,
    observed: Option<SocketAddr>,
    /// The last public endpoint a NAT verdict gave us: when it moves, peers
    /// behind filtering NATs must be told (see [`Node::announce_move`]).
    reflexive: Option<SocketAddr>,
    /// The port mapping the home router made, and the protocol that made it.
    port_mapping: Option<(SocketAddr, &'static str)>,
    waiting: BTreeMap<PublicKey, VecDeque<(Instant, Outgoing)>>,
    /// Peers the data plane refused to take: programmed again when due.
    unprogrammed: BTreeMap<PublicKey, Instant>,
    routes_installed: Vec<ipnet::IpNet>,
    routes_dirty: bool,
    local_ips: Vec<IpAddr>,
    last_publish: Option<Instant>,
    publish_pending: bool,
    local_ipv6: Vec<Ipv6Addr>,
    local_ipv6_read: Option<Instant>,
    /// While the DHT is empty: when the static endpoints are pinged again.
    alone: AloneRepings,
    /// Host names handed to the shell and not answered yet.
    resolving: Vec<Purpose>,
    join: Option<AliasJoin>,
    last_join_attempt: Option<Instant>,
    /// The clock offset last told in the log.
    clock_told: Option<i64>,
    pending: BTreeMap<RequestId, Pending>,
    next_ping_id: u64,
    next_tick: Instant,
    stopping: bool,
    /// Something besides data happened: paths and lookups need a look.
    touched: bool,
    drops: BTreeMap<&'static str, u64>,
    /// Sources of control datagrams shed unread since the last tick, and
    /// when (at most [`MAX_UNREAD_SOURCES`]).
    unread_from: std::collections::HashMap<SocketAddr, Instant>,
    transmits: VecDeque<Transmit>,
    dataplane_ops: VecDeque<DataplaneOp>,
    events: VecDeque<Event>,
    random: RandomStream,
}

impl Node {
    /// A node that starts now: it bootstraps from the boot nodes with
    /// literal addresses and asks for the others to be resolved.
    pub fn new(config: NodeConfig, host: Box<dyn Host>, now: Now) -> Node {
        let public = config.key.public_key();
        let spec = config.spec.clone();
        let mut random = config.random.clone();
        let codec = Codec::with_nonce_seed(
            config.key.clone(),
            CodecConfig {
                required_workbits: spec.workbits,
                namespace: spec.namespace.clone(),
                // Freshness by round trip, never by clocks: safe across restarts.
                first_contact: FirstContact::Challenge,
                ..CodecConfig::default()
            },
            random.next_bytes(),
        );
        let dht_config = DhtConfig {
            required_workbits: spec.workbits,
            namespace: spec.namespace.clone(),
            ..DhtConfig::default()
        };
        let own_record = NodeRecord {
            key: public,
            endpoints: Vec::new(),
            nat: match config.mode {
                Mode::Direct => NatKind::Public,
                _ => NatKind::Unknown,
            },
            relays: Vec::new(),
            relay_service: config.relay_mbit > 0,
        };
        let mut dht = Dht::new(public, dht_config, now.mono);
        dht.set_own_record(own_record.clone());
        let mut nat = NatDetector::new(config.listen_port, Vec::new(), now.mono);
        if config.mode == Mode::Direct {
            nat.force(NatKind::Public);
        }
        let mut node = Node {
            public,
            overlay: Overlay::new(&spec, public),
            limiter: SharedLimiter::new(RelayLimits::from_mbit(config.relay_mbit)),
            join: config.join,
            spec,
            host,
            codec,
            dht,
            nat,
            puncher: Puncher::new(),
            relays: RelaySet::new(),
            health: RelayHealth::new(),
            delivery: RelayDelivery::new(),
            channels: RelayChannels::new(),
            book: ChannelBook::new(),
            frame_buf: Vec::with_capacity(2048),
            recent: BTreeMap::new(),
            own_record,
            observed: None,
            reflexive: None,
            port_mapping: None,
            waiting: BTreeMap::new(),
            unprogrammed: BTreeMap::new(),
            routes_installed: Vec::new(),
            routes_dirty: false,
            local_ips: Vec::new(),
            last_publish: None,
            publish_pending: false,
            local_ipv6: Vec::new(),
            local_ipv6_read: None,
            alone: AloneRepings::new(now.mono),
            resolving: Vec::new(),
            last_join_attempt: None,
            clock_told: None,
            pending: BTreeMap::new(),
            // Apart from the DHT's request ids and the overlay's keepalives.
            next_ping_id: crate::dht::CALLER_IDS | (1 << 62),
            next_tick: now.mono + TICK,
            stopping: false,
            touched: true,
            drops: BTreeMap::new(),
            unread_from: std::collections::HashMap::new(),
            transmits: VecDeque::new(),
            dataplane_ops: VecDeque::new(),
            events: VecDeque::new(),
            random,
            config,
        };
        node.start(now);
        node
    }

    /// Boot nodes into the DHT, static endpoints pinged, paths applied.
    fn start(&mut self, now: Now) {
        let boots: Vec<(PublicKey, Endpoint)> = self
            .spec
            .peers
            .iter()
            .filter(|p| p.role == Role::Boot && p.key != self.public)
            .filter_map(|p| p.endpoint.clone().map(|e| (p.key, e)))
            .collect();
        for (key, e) in boots {
            match e.ip() {
                Some(ip) => self.dht.add_bootstrap(key, SocketAddr::new(ip, e.port)),
                None => self.resolve(Purpose::Boot(key), e),
            }
        }
        self.dht.bootstrap(now.mono);
        for (key, e) in static_endpoints(&self.spec, &self.public) {
            self.ping_endpoint(now, key, e);
        }
        self.after_event(now);
    }

    // ---- what the shell reads ----

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The network as the node runs it now.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The path to a trusted peer.
    pub fn path(&self, key: &PublicKey) -> Option<PeerPath> {
        self.overlay.path(key)
    }

    /// The record the node publishes.
    pub fn own_record(&self) -> &NodeRecord {
        &self.own_record
    }

    /// The relays the node keeps (behind a NAT).
    pub fn kept_relays(&self) -> Vec<(PublicKey, SocketAddr)> {
        self.relays.relays()
    }

    /// What this node's DHT table holds of `key` (what `key` last told it
    /// of itself), as it answers lookups.
    pub fn dht_record_of(&self, key: &PublicKey) -> Option<NodeRecord> {
        self.dht.record_of(key)
    }

    /// Entries in the DHT table.
    pub fn dht_len(&self) -> usize {
        self.dht.len()
    }

    /// `wh down` was asked.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Drops by reason.
    pub fn drops(&self) -> &BTreeMap<&'static str, u64> {
        &self.drops
    }

    /// Counts a drop the shell saw (a send the socket refused).
    pub fn count_drop(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_dataplane_op(&mut self) -> Option<DataplaneOp> {
        self.dataplane_ops.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// As a relay: the limiter and the channels, for the shell's relay
    /// fast path ([`crate::relay::fastpath`]); the channels' snapshot is
    /// taken again when [`Node::relay_channels_version`] moves.
    pub fn relay_fast_path(&self) -> (SharedLimiter, channel::ChannelTable) {
        (self.limiter.clone(), self.channels.table())
    }

    /// Moves whenever the relay's channels change.
    pub fn relay_channels_version(&self) -> u64 {
        self.channels.version()
    }

    /// When [`Node::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Instant {
        [self.dht.poll_timeout(), self.puncher.next_deadline()]
            .into_iter()
            .flatten()
            .fold(self.next_tick, Instant::min)
    }

    // ---- inputs ----

    /// Timers: the DHT's, punching, and every [`TICK`] the overlay's.
    pub fn handle_timeout(&mut self, now: Now) {
        self.dht.handle_timeout(now.mono);
        self.punch(now);
        if now.mono >= self.next_tick {
            self.next_tick = now.mono + TICK;
            self.on_tick(now);
        }
        self.after_event(now);
    }

    /// Datagrams of `segment` bytes (the last may be shorter) from `from`.
    /// Datagrams for the data plane and relay runs go through `wire`.
    pub fn handle_datagrams(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        wire: &mut impl Wire,
    ) {
        let segment = segment.clamp(1, bytes.len().max(1));
        self.dispatch(now, from, bytes, segment, wire);
        if self.touched {
            self.after_event(now);
        }
    }

    /// Datagrams as [`Node::handle_datagrams`], which waited `waited` in
    /// the socket's receive queue (`None`: not known). Control datagrams
    /// (WireHub messages, challenges) that waited longer than
    /// [`CONTROL_WAIT_MAX`] are dropped unread, counted as
    /// `control-waited-too-long` (see [`waited_too_long`]); the rest go on.
    pub fn handle_received(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        waited: Option<Duration>,
        wire: &mut impl Wire,
    ) {
        let shed = waited_too_long(bytes, segment, waited);
        if shed > 0 {
            *self.drops.entry("control-waited-too-long").or_default() += shed as u64;
            // Its direct peer, if any, is not silent (see
            // `Overlay::on_unread_contacts`); bounded, beyond: not noted.
            if self.unread_from.len() < MAX_UNREAD_SOURCES || self.unread_from.contains_key(&from) {
                self.unread_from.insert(from, now.mono);
            }
            return;
        }
        self.handle_datagrams(now, from, bytes, segment, wire);
    }

    /// WireGuard datagrams the data plane wants sent to a peer that has no
    /// direct path in the data plane (relayed, or no path yet).
    pub fn handle_outgoing(&mut self, now: Now, out: Outgoing, wire: &mut impl Wire) {
        self.route_outgoing(now, out, wire);
        if self.touched {
            self.after_event(now);
        }
    }

    /// A control request; `id` names it in a later [`Event::Answer`].
    pub fn handle_request(
        &mut self,
        now: Now,
        id: RequestId,
        req: Request,
        view: &DataplaneView,
    ) -> Reply {
        let answer = match req {
            Request::Show => serde_json::to_value(self.status(now, view)).map_err(|e| e.to_string()),
            Request::Inspect => Ok(self.inspect(now, view)),
            Request::Down => {
                self.stopping = true;
                let process_exits = self.config.from_file;
                serde_json::to_value(control::Stopping { process_exits }).map_err(|e| e.to_string())
            }
            Request::Reload if self.config.from_file => return Reply::ReadNetworkFile,
            Request::Reload => Err("this node takes its network from Kubernetes, not from a file; edit the WireHubNetwork resource instead".into()),
            Request::Forget { peer } => self.find_peer(&peer).map(|k| {
                self.overlay.forget(&k, now.mono);
                json!("forgotten")
            }),
            Request::Resolve { name } => Ok(json!(self.overlay.resolve(&name))),
            Request::Lookup { .. } | Request::Ping { .. }
                if self.pending.len() >= MAX_PENDING_REQUESTS =>
            {
                Err("too many requests waiting; try again".into())
            }
            Request::Lookup { peer } => {
                match peer.parse::<PublicKey>().or_else(|_| self.find_peer(&peer)) {
                    Ok(k) => {
                        let lookup = self.dht.lookup(k, now.mono);
                        self.pending.insert(id, Pending::Lookup(lookup));
                        self.after_event(now);
                        return Reply::Later;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Ping { peer } => match self.find_peer(&peer) {
                Ok(k) => match self.overlay.path(&k) {
                    Some(PeerPath::Direct(addr)) => {
                        let ping = self.next_ping_id;
                        self.next_ping_id += 1;
                        self.pending.insert(
                            id,
                            Pending::Ping {
                                id: ping,
                                key: k,
                                sent: now.mono,
                            },
                        );
                        self.send(now, k, addr, &Message::Ping { id: ping, info: None });
                        return Reply::Later;
                    }
                    _ => Err(format!("no direct path to {peer} yet")),
                },
                Err(e) => Err(e),
            },
        };
        self.after_event(now);
        Reply::Now(match answer {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        })
    }

    /// `wh reload`: the network file as the shell read it (or why it could
    /// not: the error is shown with its whole chain, `{:#}`).
    pub fn reload<E: std::fmt::Display>(
        &mut self,
        now: Now,
        read: Result<NetworkSpec, E>,
    ) -> Response {
        match read
            .map_err(|e| format!("{e:#}\nnothing was changed"))
            .and_then(|spec| self.apply_spec(now, spec))
        {
            Ok(s) => Response::Ok(json!(s)),
            Err(e) => Response::Error(e),
        }
    }

    /// Applies a new version of the network, or refuses it whole (the
    /// running network stays as it was).
    pub fn apply_spec(&mut self, now: Now, spec: NetworkSpec) -> Result<String, String> {
        let summary = self.overlay.reload(&spec, now.mono)?;
        let before = static_endpoints(&self.spec, &self.public);
        let fresh: Vec<_> = static_endpoints(&spec, &self.public)
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect();
        self.spec = spec;
        for (key, e) in fresh {
            self.ping_endpoint(now, key, e);
        }
        self.events.push_back(Event::NetworkChanged);
        self.after_event(now);
        Ok(summary)
    }

    /// The address the shell found for a host name ([`Event::Resolve`]).
    pub fn on_resolved(&mut self, now: Now, purpose: Purpose, addr: Option<SocketAddr>) {
        self.resolving.retain(|p| *p != purpose);
        let Some(addr) = addr else {
            return;
        };
        match purpose {
            Purpose::Boot(key) => {
                self.dht.add_bootstrap(key, addr);
                self.dht.bootstrap(now.mono);
            }
            Purpose::Ping(key) => {
                // Still a peer of the network with that endpoint?
                if self.spec.peers.iter().any(|p| p.key == key) {
                    self.ping_addr(now, key, addr);
                }
            }
        }
        self.after_event(now);
    }

    /// The home router's port mapping (UPnP / NAT-PMP) was made or lost.
    pub fn on_port_mapping(&mut self, now: Now, mapping: Option<(SocketAddr, &'static str)>) {
        self.port_mapping = mapping;
        self.publish_pending = true;
        self.after_event(now);
    }

    /// The data plane refused to program `key`: it is tried again soon.
    pub fn on_peer_refused(&mut self, now: Now, key: PublicKey) {
        if self.overlay.path(&key).is_some() {
            self.unprogrammed.insert(key, now.mono + REPROGRAM_AFTER);
        }
    }

    /// Kernel WireGuard carries direct paths without us: what it received
    /// at a peer's direct address keeps that path, even while the peer's
    /// daemon restarts and does not answer our keepalives.
    pub fn on_direct_receipts(&mut self, now: Now, receipts: &[(PublicKey, SocketAddr)]) {
        for (key, addr) in receipts {
            if let Some(PeerPath::Direct(path)) = self.overlay.path(key)
                && SocketAddr::new(path.ip().to_canonical(), path.port()) == *addr
            {
                self.overlay.on_direct_contact(*key, path, now.mono);
            }
        }
    }

    // ---- sending ----

    fn push_transmit(&mut self, t: Transmit) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.transmits.pop_front();
            self.count_drop("transmit-queue-full");
        }
        self.transmits.push_back(t);
    }

    /// Seals `msg` for `to` and queues it for `addr`.
    fn send(&mut self, now: Now, to: PublicKey, addr: SocketAddr, msg: &Message) {
        if let Message::Ping { id, .. } = msg {
            // Only a pong answering one of our pings informs NAT detection.
            self.nat.pinged(to, *id, now.mono);
        }
        match self.codec.seal(now.unix_ms, &to, msg) {
            Ok(bytes) => self.send_raw(bytes, addr),
            Err(e) => tracing::warn!(error = %e, "cannot seal a message"),
        }
    }

    /// Queues a datagram the codec made (sealed, or a challenge).
    fn send_raw(&mut self, contents: Vec<u8>, to: SocketAddr) {
        let segment = contents.len();
        self.push_transmit(Transmit {
            to,
            contents,
            segment,
        });
    }

    /// Sends a control message to `to`, straight or sealed inside a relay request.
    fn send_to_peer(&mut self, now: Now, to: PublicKey, via: ReplyVia, msg: &Message) {
        match via {
            ReplyVia::Direct(addr) => self.send(now, to, addr, msg),
            ReplyVia::Relay((relay, addr)) => match self.codec.seal(now.unix_ms, &to, msg) {
                Ok(inner) => self.send(now, relay, addr, &Message::Relay { to, inner }),
                Err(e) => tracing::debug!(error = %e, "cannot seal a relayed message"),
            },
        }
    }

    /// Sends `msg` to `peer` through `relay`: on the relay channel, the way
    /// data goes, when `on_channel` and one is announced, else sealed in a
    /// relay request.
    fn send_through_relay(
        &mut self,
        now: Now,
        peer: PublicKey,
        relay: (PublicKey, SocketAddr),
        msg: &Message,
        on_channel: bool,
    ) {
        let inner = match self.codec.seal(now.unix_ms, &peer, msg) {
            Ok(inner) => inner,
            Err(e) => return tracing::debug!(error = %e, "cannot seal a relayed message"),
        };
        match self
            .book
            .channel(relay.0, peer, now.mono)
            .filter(|_| on_channel)
        {
            Some(id) => {
                let mut framed = Vec::with_capacity(inner.len() + channel::HEADER_LEN);
                channel::frame(&mut framed, id, &inner, inner.len());
                self.send_raw(framed, relay.1);
            }
            None => self.send(now, relay.0, relay.1, &Message::Relay { to: peer, inner }),
        }
    }

    /// Probes the peers whose relay delivered nothing lately, and moves
    /// those it failed to their next relay.
    fn check_delivery(&mut self, now: Now) {
        let relayed: Vec<PublicKey> = self
            .overlay
            .relayed_paths()
            .iter()
            .map(|(p, _)| *p)
            .collect();
        self.delivery.retain(&relayed);
        for action in self.delivery.poll(now.mono) {
            match action {
                DeliveryAction::Probe { peer, relay, size } => {
                    let Some(at) = self.overlay.relay_of_path(&peer, &relay) else {
                        continue;
                    };
                    // As large as the data, within what a relay carries.
                    let padding = size.min(crate::proto::MAX_RELAY_PAYLOAD - 200);
                    let probe = Message::DeliveryProbe {
                        id: self.random.next_u64(),
                        padding: vec![0; padding],
                    };
                    self.send_through_relay(now, peer, at, &probe, true);
                }
                DeliveryAction::Failed { peer, relay } => {
                    tracing::info!(peer = %peer.short(10), relay = %relay.short(10), "relay in use delivers nothing; moving to the next");
                    self.count_drop("relay-delivered-nothing");
                    self.touched = true;
                }
            }
        }
    }

    /// A ping carrying our record (probes, static endpoints, relays).
    fn ping_addr(&mut self, now: Now, key: PublicKey, addr: SocketAddr) {
        let msg = Message::Ping {
            id: 0,
            info: Some(self.own_record.clone()),
        };
        self.send(now, key, addr, &msg);
    }

    /// Pings a static endpoint, or asks for its host name to be resolved.
    fn ping_endpoint(&mut self, now: Now, key: PublicKey, e: Endpoint) {
        match e.ip() {
            Some(ip) => self.ping_addr(now, key, SocketAddr::new(ip, e.port)),
            None => self.resolve(Purpose::Ping(key), e),
        }
    }

    fn resolve(&mut self, purpose: Purpose, endpoint: Endpoint) {
        if self.resolving.contains(&purpose) {
            return;
        }
        if self.resolving.len() >= MAX_RESOLVING {
            self.count_drop("resolve-queue-full");
            return;
        }
        self.resolving.push(purpose);
        self.events.push_back(Event::Resolve { purpose, endpoint });
    }

    // ---- after each input ----

    fn after_event(&mut self, now: Now) {
        self.touched = false;
        // Only as many as the DHT has room for: the others stay due, the
        // longest waiting first next time, rather than being refused.
        let room = self.dht.room_for_lookups();
        for key in self.overlay.lookups_due(now.mono).into_iter().take(room) {
            tracing::debug!(target = %key.short(10), "looking up a trusted peer");
            let id = self.dht.lookup(key, now.mono);
            self.overlay.lookup_started(key, id, now.mono);
        }
        self.flush(now);
        self.apply_paths(now);
        if self.routes_dirty {
            self.sync_routes();
        }
    }

    /// What the cores ask to send, sealed; DHT events acted on.
    fn flush(&mut self, now: Now) {
        loop {
            while let Some(t) = self.dht.poll_transmit() {
                self.send(now, t.to_key, t.to_addr, &t.message);
            }
            let Some(ev) = self.dht.poll_event() else {
                break;
            };
            self.on_dht_event(now, ev);
        }
        for (key, addr, msg) in self.overlay.poll_transmits() {
            self.send(now, key, addr, &msg);
        }
    }

    /// Pushes path changes to the data plane.
    fn apply_paths(&mut self, now: Now) {
        let changes = self.overlay.take_changes();
        if !self.config.has_dataplane {
            return;
        }
        for change in changes {
            match &change.path {
                Some(PeerPath::Direct(a)) => {
                    tracing::info!(peer = %change.key.short(10), endpoint = %a, "path: direct")
                }
                Some(PeerPath::Relayed(r)) => tracing::info!(
                    peer = %change.key.short(10),
                    via = ?r.iter().map(|(k, a)| format!("{}@{a}", k.short(6))).collect::<Vec<_>>(),
                    "path: relayed"
                ),
                None => tracing::info!(peer = %change.key.short(10), "path: none"),
            }
            self.unprogrammed.remove(&change.key);
            let key = change.key;
            self.dataplane_ops.push_back(match change.path {
                Some(path) => DataplaneOp::SetPeer(PeerConfig {
                    key,
                    allowed_ips: change.allowed_ips,
                    endpoint: match path {
                        PeerPath::Direct(addr) => Some(addr),
                        _ => None,
                    },
                    keepalive: Some(25),
                }),
                None => DataplaneOp::RemovePeer(key),
            });
            self.routes_dirty = true;
            if self.overlay.path(&key).is_some() {
                self.release_waiting(now, key);
            }
        }
    }

    /// Routes into the interface every subnet a reachable peer routes, and
    /// removes the routes of peers gone.
    fn sync_routes(&mut self) {
        self.routes_dirty = false;
        let mut wanted: Vec<ipnet::IpNet> = Vec::new();
        for p in self.spec.trusted().filter(|p| p.key != self.public) {
            if self.overlay.path(&p.key).is_some() {
                wanted.extend(self.overlay.routes_of(&p.key));
            }
        }
        wanted.sort();
        wanted.dedup();
        for n in wanted.iter().filter(|n| !self.routes_installed.contains(n)) {
            self.dataplane_ops.push_back(DataplaneOp::AddRoute(*n));
        }
        for n in self.routes_installed.iter().filter(|n| !wanted.contains(n)) {
            self.dataplane_ops.push_back(DataplaneOp::RemoveRoute(*n));
        }
        self.routes_installed = wanted;
    }

    /// Sends what waited for a path to `key`, now that it has one.
    fn release_waiting(&mut self, now: Now, key: PublicKey) {
        let Some(queue) = self.waiting.remove(&key) else {
            return;
        };
        let mut wire = QueueWire(Vec::new());
        for (at, out) in queue {
            if now.mono.saturating_duration_since(at) <= WAITING_TTL {
                self.route_outgoing(now, out, &mut wire);
            }
        }
        for t in wire.0 {
            self.push_transmit(t);
        }
    }

    // ---- datagrams ----

    /// A run of datagrams of `segment` bytes, by its first byte: relay
    /// data (to forward) and relayed data (for our data plane) as runs;
    /// anything else one by one (see [`Node::each_datagram`]).
    fn dispatch(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        wire: &mut impl Wire,
    ) {
        match bytes.first() {
            None => {}
            Some(&channel::RELAY_DATA) => self.on_relay_data(now, from, bytes, segment, wire),
            Some(&channel::RELAYED_DATA) => self.on_relayed_data(now, from, bytes, segment, wire),
            Some(_) if bytes.len() > segment => self.each_datagram(now, from, bytes, segment, wire),
            Some(_) => self.on_datagram(now, from, bytes, wire),
        }
    }

    /// Datagrams one by one, each dispatched by its own first byte (a run
    /// the kernel coalesced may mix kinds of one size).
    fn each_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        wire: &mut impl Wire,
    ) {
        for d in bytes.chunks_mut(segment) {
            let n = d.len();
            self.dispatch(now, from, d, n, wire);
        }
    }

    /// As a relay: relay-data datagrams to forward. A run of one channel
    /// goes on in one send, its headers rewritten to name the sender.
    fn on_relay_data(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        wire: &mut impl Wire,
    ) {
        let first = channel::parse(bytes).map(|(id, _)| id);
        let uniform = first.is_some_and(|id| {
            bytes.chunks(segment).all(|d| {
                d.first() == Some(&channel::RELAY_DATA)
                    && channel::parse(d).is_some_and(|(c, _)| c == id)
            })
        });
        let Some(id) = first.filter(|_| uniform) else {
            if segment >= bytes.len() {
                return self.count_drop("relay-data-malformed");
            }
            return self.each_datagram(now, from, bytes, segment, wire);
        };
        let (source, to) = match self.channels.route(id, from, now.mono) {
            Ok(r) => r,
            Err(e) => return self.count_drop(e.reason()),
        };
        let packets = bytes.len().div_ceil(segment);
        let payload = bytes.len().saturating_sub(packets * channel::HEADER_LEN);
        if self
            .limiter
            .allow_many(source, from.ip(), payload, packets, now.mono)
        {
            channel::rewrite_as_relayed(bytes, segment, &source);
            wire.send_run(to, bytes, segment);
            return;
        }
        // Over the limit as a run: what fits goes on, one by one.
        for d in bytes.chunks_mut(segment) {
            if self.limiter.allow(
                source,
                from.ip(),
                d.len().saturating_sub(channel::HEADER_LEN),
                now.mono,
            ) {
                channel::rewrite_as_relayed(d, d.len(), &source);
                wire.send_run(to, d, d.len());
            }
        }
    }

    /// As an end: relayed-data, WireGuard datagrams a relay delivers from
    /// the trusted peer its header names.
    fn on_relayed_data(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        wire: &mut impl Wire,
    ) {
        let mut last: Option<(u64, PublicKey)> = None;
        for d in bytes.chunks_mut(segment) {
            if d.first() != Some(&channel::RELAYED_DATA) {
                let n = d.len();
                self.dispatch(now, from, d, n, wire);
                continue;
            }
            let Some((prefix, wireguard)) = channel::parse(d) else {
                self.count_drop("relayed-data-malformed");
                continue;
            };
            let peer = match last {
                Some((p, k)) if p == prefix => k,
                _ => {
                    let Some(k) = self.overlay.trusted_by_prefix(prefix) else {
                        self.count_drop("relayed-data-from-untrusted");
                        continue;
                    };
                    // Once per run: replies go back through this relay, if
                    // it is one of ours or of the peer's path.
                    if let Some(relay) = self.relay_at(&k, from) {
                        self.overlay.on_relayed_contact(k, (relay, from), now.mono);
                        self.delivery.on_heard(&k, &relay);
                        self.touched = true;
                    }
                    last = Some((prefix, k));
                    k
                }
            };
            if wireguard.first() == Some(&crate::proto::MAGIC) {
                // A delivery probe (or its answer), sent the way data goes.
                match self.relay_at(&peer, from) {
                    Some(relay) => {
                        let inner = wireguard.to_vec();
                        self.on_relayed_control(now, peer, &inner, (relay, from), true);
                    }
                    None => self.count_drop("relayed-probe-from-unknown-relay"),
                }
                continue;
            }
            if self.config.has_dataplane {
                wire.deliver(from, wireguard, Some(peer));
            } else {
                self.count_drop("wireguard-without-interface");
            }
        }
    }

    /// The key of the relay at `addr` delivering `peer`'s traffic, if it is
    /// one we keep (peers send through the relays we publish) or one of our
    /// path to the peer. Relayed traffic from any other address does not
    /// steer our replies.
    fn relay_at(&self, peer: &PublicKey, addr: SocketAddr) -> Option<PublicKey> {
        if let Some(key) = self.relays.key_at(addr) {
            return Some(key);
        }
        match self.overlay.path(peer) {
            Some(PeerPath::Relayed(relays)) => relays.iter().find(|r| r.1 == addr).map(|r| r.0),
            _ => None,
        }
    }

    fn on_datagram(&mut self, now: Now, from: SocketAddr, bytes: &[u8], wire: &mut impl Wire) {
        match bytes.first() {
            Some(&crate::proto::MAGIC | &crate::proto::CHALLENGE) => {
                self.touched = true;
                self.on_control(now, from, bytes, wire)
            }
            Some(1..=4) if self.config.has_dataplane => wire.deliver(from, bytes, None),
            Some(1..=4) => self.count_drop("wireguard-without-interface"),
            Some(&crate::proto::PMTU_PROBE) => self.count_drop("path-mtu-probe"),
            _ => self.count_drop("unknown-first-byte"),
        }
    }

    fn on_control(&mut self, now: Now, from: SocketAddr, bytes: &[u8], wire: &mut impl Wire) {
        let (key, msg) = match self.codec.receive_from(now.unix_ms, from.ip(), bytes) {
            Ok(Received::Message { from: key, message }) => (key, message),
            // Challenges and the messages they make us send again go back
            // where the datagram came from.
            Ok(Received::Challenge { challenge, .. }) => {
                return self.send_raw(challenge, from);
            }
            // An answer from an address its sender did not prove: fresh if
            // it answers one of our DHT requests to that address (a first
            // contact then costs one round trip, not two). The challenge
            // goes back either way: its echoed cookie proves the address
            // for the sender's later requests.
            Ok(Received::Answer {
                from: key,
                message,
                challenge,
            }) => {
                let expected = self.dht.expects_answer(&key, from, &message);
                self.send_raw(challenge, from);
                if !expected {
                    return self.count_drop("unproven-answer-to-no-request");
                }
                (key, message)
            }
            Ok(Received::Challenged { resend, .. }) => {
                for d in resend {
                    self.send_raw(d, from);
                }
                return;
            }
            Err(e) => {
                tracing::trace!(%from, error = %e, "dropped control message");
                return;
            }
        };
        self.remember(key, from, now.mono);
        if self.health.on_contact(&key, now.mono) {
            let n = self.overlay.relay_returned(key, from);
            if n > 0 {
                tracing::info!(relay = %key.short(10), peers = n, "a relay found dead is back: its peers' relayed paths again");
                self.touched = true;
            }
        }
        self.relays.on_contact(&key, now.mono);
        match &msg {
            Message::Pong { id, observed, info } => {
                self.on_pong(now, key, from, *id, *observed, info.clone());
            }
            Message::Ping {
                info: Some(info), ..
            }
            | Message::FindNode {
                info: Some(info), ..
            } if !self.overlay.on_record(key, info.clone(), now.mono) => {
                self.count_drop("record-not-of-its-sender");
            }
            Message::Relay { to, inner } => {
                let inner = inner.clone();
                self.forward(now, (key, from), *to, inner.len(), |from| {
                    Message::Relayed { from, inner }
                });
                return;
            }
            Message::RelayWg { to, packet } => {
                let (to, packet) = (*to, packet.clone());
                if self.forward(now, (key, from), to, packet.len(), |from| {
                    Message::RelayedWg { from, packet }
                }) {
                    self.open_channel(now, (key, from), to);
                }
                return;
            }
            Message::Relayed { from: src, inner } => {
                self.on_relayed_control(now, *src, inner, (key, from), false);
            }
            Message::AliasAuth { alias, real, proof } => {
                if *real == key {
                    self.on_alias_auth(now, *alias, *real, proof, ReplyVia::Direct(from));
                } else {
                    self.count_drop("alias-auth-not-from-its-key");
                }
            }
            Message::AliasAck { alias }
                if self
                    .join
                    .is_some_and(|j| j.listener == key && j.alias == *alias) =>
            {
                self.on_alias_ack();
            }
            Message::RelayChannel { peer, channel } => {
                // Only from a relay we keep or one on our path to the peer
                // (no other node fills our channel book).
                if !self.overlay.is_trusted(peer) {
                    self.count_drop("relay-channel-for-untrusted");
                } else if self.relay_at(peer, from) != Some(key) {
                    self.count_drop("relay-channel-from-unknown-relay");
                } else {
                    self.book.learn(key, *peer, *channel, now.mono);
                }
                return;
            }
            Message::RelayedWg { from: src, packet } => {
                if self.overlay.is_trusted(src) {
                    if self.relay_at(src, from) == Some(key) {
                        self.overlay.on_relayed_contact(*src, (key, from), now.mono);
                        self.delivery.on_heard(src, &key);
                    }
                    if self.config.has_dataplane {
                        wire.deliver(from, packet, Some(*src));
                    }
                } else {
                    self.count_drop("relayed-wireguard-from-untrusted");
                }
                // Data, not news for the DHT.
                return;
            }
            _ => {}
        }
        // Any authenticated message straight from a trusted peer proves a direct path.
        if self.overlay.is_trusted(&key) && !self.config.force_relay {
            self.overlay.on_direct_contact(key, from, now.mono);
            self.puncher.stop(&key);
        }
        self.dht.handle_message(now.mono, from, key, &msg);
    }

    fn on_pong(
        &mut self,
        now: Now,
        key: PublicKey,
        from: SocketAddr,
        id: u64,
        observed: SocketAddr,
        info: Option<NodeRecord>,
    ) {
        self.note_local_ip(from);
        if self.nat.on_pong(key, from, id, observed, now.mono) {
            self.observed = Some(observed);
            // A new verdict goes out now, not at the next tick: peers
            // looking us up wait for the NAT kind and relays it brings.
            if self.nat.has_news(now.mono) {
                self.update_own_record(now);
            }
        } else {
            self.count_drop("pong-answers-no-ping-of-ours");
        }
        let answered = self.pending.iter().find_map(|(req, p)| match p {
            Pending::Ping {
                id: i,
                key: k,
                sent,
            } if *i == id && *k == key => Some((*req, *sent)),
            _ => None,
        });
        if let Some((req, sent)) = answered {
            self.pending.remove(&req);
            let rtt = now.mono.saturating_duration_since(sent).as_secs_f64() * 1000.0;
            self.events.push_back(Event::Answer {
                id: req,
                response: Response::Ok(json!({"rtt_ms": rtt, "via": from.to_string()})),
            });
        }
        if let Some(info) = info
            && !self.overlay.on_record(key, info, now.mono)
        {
            self.count_drop("record-not-of-its-sender");
        }
    }

    /// Remembers where `key` talks from (a relay forwards there).
    fn remember(&mut self, key: PublicKey, from: SocketAddr, now: Instant) {
        if !self.recent.contains_key(&key)
            && self.recent.len() >= MAX_RECENT
            && let Some(oldest) = self
                .recent
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
        {
            self.recent.remove(&oldest);
        }
        if let Some((old, _)) = self.recent.insert(key, (from, now))
            && old != from
        {
            self.channels.rebind(&key, from);
        }
    }

    /// Our own address towards `peer`, so the NAT detector can tell an
    /// observed endpoint that is our own (no NAT) from a mapped one.
    fn note_local_ip(&mut self, peer: SocketAddr) {
        let Some(ip) = self.host.local_ip_towards(peer) else {
            return;
        };
        if self.local_ips.first() == Some(&ip) {
            return;
        }
        self.local_ips.retain(|i| *i != ip);
        self.local_ips.insert(0, ip);
        self.local_ips.truncate(8);
        self.nat.set_local_ips(self.local_ips.clone());
    }

    /// Relays a sealed message from `source` (its key and address) to
    /// `to`, within limits. Returns whether it went out.
    fn forward(
        &mut self,
        now: Now,
        (source, source_addr): (PublicKey, SocketAddr),
        to: PublicKey,
        len: usize,
        wrap: impl FnOnce(PublicKey) -> Message,
    ) -> bool {
        let dest = self.recent.get(&to).map(|(a, _)| *a).or_else(|| {
            self.dht
                .record_of(&to)
                .and_then(|r| r.endpoints.first().copied())
        });
        let Some(addr) = dest else {
            self.limiter.lock().counters.dropped_unknown_destination += 1;
            return false;
        };
        if !self.limiter.allow(source, source_addr.ip(), len, now.mono) {
            return false;
        }
        let msg = wrap(source);
        self.send(now, to, addr, &msg);
        true
    }

    /// After forwarding sealed WireGuard traffic from `source` to `to`:
    /// open (or refresh) their channel when both addresses are
    /// authenticated, and tell both ends.
    fn open_channel(&mut self, now: Now, source: (PublicKey, SocketAddr), to: PublicKey) {
        let Some(&(to_addr, _)) = self.recent.get(&to) else {
            return;
        };
        let announcements =
            self.channels
                .on_sealed_forward(source, (to, to_addr), now.mono, || self.random.next_u64());
        for (key, addr, msg) in announcements {
            self.send(now, key, addr, &msg);
        }
    }

    /// A control message `src` sent us through `relay` (`on_channel`: in
    /// relay-data, the way data goes).
    fn on_relayed_control(
        &mut self,
        now: Now,
        src: PublicKey,
        inner: &[u8],
        relay: (PublicKey, SocketAddr),
        on_channel: bool,
    ) {
        let (sender, msg) = match self.codec.receive(now.unix_ms, inner) {
            Ok(Received::Message { from, message }) => (from, message),
            // A challenge to `src`, or our messages sealed again for it,
            // travel back through the same relay.
            Ok(Received::Challenge { to, challenge, .. }) if to == src => {
                let msg = Message::Relay {
                    to,
                    inner: challenge,
                };
                self.send(now, relay.0, relay.1, &msg);
                return;
            }
            Ok(Received::Challenged { from, resend }) if from == src => {
                for inner in resend {
                    self.send(now, relay.0, relay.1, &Message::Relay { to: from, inner });
                }
                return;
            }
            Ok(_) => {
                self.count_drop("relayed-control-mismatch");
                return;
            }
            Err(_) => return,
        };
        if sender != src {
            self.count_drop("relayed-control-mismatch");
            return;
        }
        match msg {
            Message::AliasAuth { alias, real, proof } if real == src => {
                self.on_alias_auth(now, alias, real, &proof, ReplyVia::Relay(relay));
                return;
            }
            Message::AliasAck { alias } => {
                if self
                    .join
                    .is_some_and(|j| j.listener == src && j.alias == alias)
                {
                    self.on_alias_ack();
                }
                return;
            }
            _ => {}
        }
        if !self.overlay.is_trusted(&src) {
            self.count_drop("relayed-control-from-untrusted");
            return;
        }
        // Where the peer can be reached: when nothing else says so, or our
        // data through the relay in use goes unanswered (see
        // `Overlay::on_relayed_control`).
        let delivery = &self.delivery;
        self.overlay
            .on_relayed_control(src, relay, now.mono, |in_use| {
                in_use.0 != relay.0
                    && delivery
                        .unanswered_for(&src, &in_use.0, now.mono)
                        .is_some_and(|d| d >= crate::node::overlay::FOLLOW_AFTER_SILENCE)
            });
        // Only what is as large as data proves the relay delivers data (a
        // relay may pass small control messages and drop the rest).
        if matches!(
            msg,
            Message::DeliveryProbe { .. } | Message::DeliveryAck { .. }
        ) {
            self.delivery.on_heard(&src, &relay.0);
        }
        if let Message::DeliveryProbe { id, padding } = msg {
            // Answered the way it came, as large.
            let ack = Message::DeliveryAck {
                id,
                padding: vec![0; padding.len()],
            };
            self.send_through_relay(now, src, relay, &ack, on_channel);
            return;
        }
        if let Message::PunchRequest { endpoints, .. } = msg {
            // Probe the peer's endpoints now: our outgoing probes open our
            // NAT for its probes, and its probes arrive through ours.
            self.puncher.start(src, endpoints, Vec::new(), now.mono);
            self.punch(now);
        }
    }

    fn on_dht_event(&mut self, now: Now, ev: DhtEvent) {
        match ev {
            DhtEvent::LookupDone {
                id,
                target,
                found,
                stats,
                ..
            } => {
                tracing::debug!(
                    target = %target.short(10),
                    found = found.is_some(),
                    asked = stats.requests,
                    answers = stats.responses,
                    refused = stats.refused,
                    endpoints = ?found.as_ref().map(|r| r.endpoints.clone()),
                    relays = found.as_ref().map_or(0, |r| r.relays.len()),
                    nat = ?found.as_ref().map(|r| r.nat),
                    "lookup done"
                );
                self.answer_lookup(id, target, found.as_ref());
                if stats.refused {
                    self.overlay.lookup_refused(now.mono, id, target);
                } else if found.is_none() && stats.responses == 0 {
                    self.overlay.lookup_unanswered(now.mono, id, target);
                } else if let Some(record) = self.overlay.lookup_done(now.mono, id, target, found)
                    && !matches!(self.overlay.path(&target), Some(PeerPath::Direct(_)))
                {
                    self.punch_towards(now, target, &record);
                }
            }
            DhtEvent::RecordSeen { target, record, .. }
                if self.overlay.record_seen(target, &record, now.mono) =>
            {
                self.punch_towards(now, target, &record);
            }
            DhtEvent::Pong { key, observed, rtt } => {
                self.observed = Some(observed);
                self.relays.on_pong(&key, Some(rtt), now.mono);
            }
            // Too few peers told us our address yet: ask this one.
            DhtEvent::NodeAdded { key, addr } if self.nat.wants_probe(addr, now.mono) => {
                self.dht.ping(key, addr, now.mono);
            }
            _ => {}
        }
    }

    /// `wh lookup` waiting for this lookup gets its answer.
    fn answer_lookup(&mut self, lookup: LookupId, target: PublicKey, found: Option<&NodeRecord>) {
        let Some(req) = self.pending.iter().find_map(|(req, p)| match p {
            Pending::Lookup(l) if *l == lookup => Some(*req),
            _ => None,
        }) else {
            return;
        };
        self.pending.remove(&req);
        let response = match found {
            Some(r) => Response::Ok(record_json(r)),
            None => Response::Error(format!("{} was not found in the DHT", target.short(10))),
        };
        self.events.push_back(Event::Answer { id: req, response });
    }

    /// Someone proves it holds the secret of one of our `alias` keys: the
    /// alias is bound to its real key (once: the alias line is consumed).
    fn on_alias_auth(
        &mut self,
        now: Now,
        alias: PublicKey,
        real: PublicKey,
        proof: &[u8; 32],
        via: ReplyVia,
    ) {
        let Some(index) = self
            .spec
            .peers
            .iter()
            .position(|p| p.role == Role::Alias && p.key == alias)
        else {
            // Per datagram, and anyone can send them: counted, not logged above debug.
            tracing::debug!(alias = %alias.short(10), from = %real.short(10), "refused an alias proof: no such alias (already used?)");
            self.count_drop("alias-unknown-or-used");
            return;
        };
        if !self.codec.verify_alias(&alias, &real, proof) {
            tracing::debug!(alias = %alias.short(10), from = %real.short(10), "refused a bad alias proof");
            self.count_drop("alias-bad-proof");
            return;
        }
        let mut spec = self.spec.clone();
        let line = &mut spec.peers[index];
        line.role = Role::Trust;
        line.key = real;
        match self.apply_spec(now, spec) {
            Ok(_) => {
                tracing::info!(alias = %alias.short(10), real = %real.short(10), "alias bound")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot bind the alias");
                return;
            }
        }
        let ack = Message::AliasAck { alias };
        self.send_to_peer(now, real, via, &ack);
    }

    fn on_alias_ack(&mut self) {
        if let Some(j) = self.join.take() {
            tracing::info!(listener = %j.listener.short(10), "the listener accepted our alias proof");
            self.events.push_back(Event::Joined);
        }
    }

    /// Sends our alias proof to the listener while it has not answered.
    fn try_join(&mut self, now: Now) {
        let Some(j) = self.join else {
            return;
        };
        if self
            .last_join_attempt
            .is_some_and(|t| now.mono.saturating_duration_since(t) < JOIN_RETRY)
        {
            return;
        }
        let via = match self.overlay.path(&j.listener) {
            Some(PeerPath::Direct(a)) => ReplyVia::Direct(a),
            Some(PeerPath::Relayed(r)) => match r.first() {
                Some(first) => ReplyVia::Relay(*first),
                None => return,
            },
            None => return,
        };
        self.last_join_attempt = Some(now.mono);
        let msg = Message::AliasAuth {
            alias: j.alias,
            real: self.public,
            proof: j.proof,
        };
        self.send_to_peer(now, j.listener, via, &msg);
    }

    /// Starts punching towards `peer` as `record` says (its endpoints, and
    /// through its relays a request to punch back).
    fn punch_towards(&mut self, now: Now, peer: PublicKey, record: &NodeRecord) {
        self.puncher.start(
            peer,
            record.endpoints.clone(),
            record.relays.clone(),
            now.mono,
        );
        self.punch(now);
    }

    /// Our NAT now maps us to another public endpoint (it restarted, its
    /// table was flushed, the ISP moved us): a peer behind a filtering NAT
    /// drops what we send from the new endpoint until it sends there, and
    /// keeps sending to the old one. Punch towards each peer on a direct
    /// path at once, asking it through up to two public relaying nodes of
    /// the DHT to probe our new endpoints (instead of waiting for the path
    /// to go quiet and for lookups to find our new record).
    fn announce_move(&mut self, now: Now) {
        let via: Vec<(PublicKey, SocketAddr)> = self
            .dht
            .nodes()
            .filter(|n| n.nat == NatKind::Public && n.relay_service)
            .take(MOVE_ANNOUNCERS)
            .map(|n| (n.key, n.addr))
            .collect();
        let direct = self.overlay.direct_paths();
        tracing::info!(
            peers = direct.len(),
            via = via.len(),
            "our public endpoint moved: asking peers to punch to it"
        );
        for (peer, addr) in direct {
            self.puncher.start(peer, vec![addr], via.clone(), now.mono);
        }
        self.punch(now);
    }

    /// Sends what the hole-punching schedule says is due.
    fn punch(&mut self, now: Now) {
        for action in self.puncher.poll(now.mono) {
            match action {
                PunchAction::Probe { peer, endpoints } => {
                    for e in endpoints {
                        self.ping_addr(now, peer, e);
                    }
                }
                PunchAction::Request { peer, relay } => {
                    // Where we are now (the record may wait to be published).
                    let request = Message::PunchRequest {
                        id: 0,
                        endpoints: self.own_endpoints(now),
                    };
                    match self.codec.seal(now.unix_ms, &peer, &request) {
                        Ok(inner) => {
                            self.send(now, relay.0, relay.1, &Message::Relay { to: peer, inner })
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot seal a punch request"),
                    }
                }
            }
        }
    }

    // ---- WireGuard datagrams from the data plane ----

    fn route_outgoing(&mut self, now: Now, out: Outgoing, wire: &mut impl Wire) {
        match self.overlay.path(&out.to) {
            Some(PeerPath::Direct(addr)) => wire.send_run(addr, &out.datagrams, out.segment),
            Some(PeerPath::Relayed(relays)) => {
                let Some(relay) = relays.first().copied() else {
                    return;
                };
                let Some(relay) = self.live_relay(now, out.to, relay) else {
                    return self.count_drop("no-live-relay");
                };
                self.send_relayed(now, relay, out, wire);
            }
            None => self.hold(now, out),
        }
    }

    /// The relay in use, or the next one when it went silent or stopped
    /// delivering data to this peer.
    fn live_relay(
        &mut self,
        now: Now,
        peer: PublicKey,
        relay: (PublicKey, SocketAddr),
    ) -> Option<(PublicKey, SocketAddr)> {
        let failed = self.delivery.failed_for(&peer, now.mono);
        if failed.contains(&relay.0) {
            let (mut dead, own) = (self.relays.shunned(now.mono), self.relays.relays());
            dead.extend(failed);
            dead.extend(self.health.dead(now.mono));
            let next = self
                .overlay
                .rotate_relay(&peer, &relay.0, now.mono, &dead, &own);
            if next.is_none() {
                // Every relay failed this peer: more likely the peer is
                // gone; try them again rather than drop its traffic.
                self.delivery.forgive(&peer);
            }
            return next;
        }
        if !self.health.is_dead(&relay.0, now.mono) {
            return Some(relay);
        }
        tracing::info!(peer = %peer.short(10), relay = %relay.0.short(10), "relay in use is silent; moving to the next");
        self.touched = true;
        // Dead for every path through it, not only this peer's.
        self.health.mark_dead(relay.0, now.mono);
        self.book.forget_relay(&relay.0);
        if self.relays.lost(&relay.0, now.mono) {
            self.publish_pending = true;
        }
        let (mut dead, own) = (self.relays.shunned(now.mono), self.relays.relays());
        dead.extend(self.health.dead(now.mono));
        self.overlay
            .rotate_relay(&peer, &relay.0, now.mono, &dead, &own)
    }

    /// Through `relay`: sealed while it has no channel for the peer (and
    /// the first datagram when the channel's refresh is due), else framed.
    fn send_relayed(
        &mut self,
        now: Now,
        relay: (PublicKey, SocketAddr),
        out: Outgoing,
        wire: &mut impl Wire,
    ) {
        if self.health.due(relay.0, now.mono) {
            self.ping_addr(now, relay.0, relay.1);
        }
        self.delivery
            .on_sent(out.to, relay.0, out.segment, now.mono);
        let route = self.book.send_via(relay.0, out.to, now.mono);
        let sealed = match route.channel {
            None => usize::MAX,
            Some(_) => usize::from(route.seal_first),
        };
        for d in out.iter().take(sealed) {
            let msg = Message::RelayWg {
                to: out.to,
                packet: d.to_vec(),
            };
            match self.codec.seal(now.unix_ms, &relay.0, &msg) {
                Ok(bytes) => wire.send_run(relay.1, &bytes, bytes.len()),
                Err(e) => tracing::warn!(error = %e, "cannot seal a message"),
            }
        }
        let rest = out
            .datagrams
            .get(sealed.saturating_mul(out.segment)..)
            .unwrap_or_default();
        if let Some(id) = route.channel
            && !rest.is_empty()
        {
            channel::frame(&mut self.frame_buf, id, rest, out.segment);
            wire.send_run(relay.1, &self.frame_buf, out.segment + channel::HEADER_LEN);
        }
    }

    /// No path yet: hold the datagram briefly (a WireGuard handshake would
    /// otherwise wait 5 s for its retry).
    fn hold(&mut self, now: Now, out: Outgoing) {
        if !self.waiting.contains_key(&out.to) && self.waiting.len() >= MAX_WAITING_PEERS {
            return self.count_drop("no-path-to-peer");
        }
        let queue = self.waiting.entry(out.to).or_default();
        let full = queue.len() >= WAITING_PER_PEER;
        if full {
            queue.pop_front();
        }
        queue.push_back((now.mono, out));
        if full {
            self.count_drop("no-path-to-peer");
        }
    }

    // ---- timers ----

    fn on_tick(&mut self, now: Now) {
        self.overlay.on_unread_contacts(&self.unread_from);
        self.unread_from.clear();
        self.overlay.on_tick(now.mono);
        self.overlay.expire_direct(now.mono, DIRECT_QUIET);
        self.reprogram_due(now);
        // Relays in use that went silent are dropped from the paths.
        let in_use: Vec<PublicKey> = self
            .overlay
            .relayed_paths()
            .iter()
            .map(|(_, r)| r.0)
            .collect();
        self.health.retain(&in_use);
        self.check_delivery(now);
        self.channels.expire(now.mono);
        self.book.expire(now.mono);
        self.waiting.retain(|_, q| {
            q.retain(|(at, _)| now.mono.saturating_duration_since(*at) <= WAITING_TTL);
            !q.is_empty()
        });
        self.update_own_record(now);
        self.tell_clock(now);
        self.try_join(now);
        self.ping_again_when_alone(now);
        self.expire_pings(now);
    }

    fn reprogram_due(&mut self, now: Now) {
        let due: Vec<PublicKey> = self
            .unprogrammed
            .iter()
            .filter(|(_, at)| **at <= now.mono)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.unprogrammed.remove(&key);
            self.overlay.reprogram(&key);
        }
    }

    /// Nobody answered nor contacted us yet: the static endpoints again.
    fn ping_again_when_alone(&mut self, now: Now) {
        if !self.alone.due(self.dht.is_empty(), now.mono) {
            return;
        }
        let again = static_endpoints(&self.spec, &self.public);
        if again.is_empty() {
            return;
        }
        tracing::info!(
            endpoints = again.len(),
            "nobody answered nor contacted us yet: pinging the static endpoints again"
        );
        for (key, e) in again {
            self.ping_endpoint(now, key, e);
        }
    }

    /// Control pings that got no answer fail.
    fn expire_pings(&mut self, now: Now) {
        let expired: Vec<(RequestId, PublicKey)> = self
            .pending
            .iter()
            .filter_map(|(req, p)| match p {
                Pending::Ping { key, sent, .. }
                    if now.mono.saturating_duration_since(*sent) > PING_TIMEOUT =>
                {
                    Some((*req, *key))
                }
                _ => None,
            })
            .collect();
        for (req, key) in expired {
            self.pending.remove(&req);
            self.events.push_back(Event::Answer {
                id: req,
                response: Response::Error(format!("no pong from {} within 5 s", key.short(10))),
            });
        }
    }

    /// Says in the log, once, that our clock is off from the network's (the
    /// median of what distinct peers show), and again only when that changes.
    fn tell_clock(&mut self, now: Now) {
        let Some(estimate) = self.codec.clock_estimate(now.unix_ms) else {
            return;
        };
        let offset = estimate.offset_ms;
        let off = offset.abs() >= crate::proto::CLOCK_REPORT_MS;
        let changed = self
            .clock_told
            .is_none_or(|told| (offset - told).abs() >= crate::proto::CLOCK_REPORT_MS);
        if off && changed {
            tracing::warn!(
                offset_ms = offset,
                peers = estimate.peers,
                "clock is {}; joined anyway",
                crate::proto::describe_offset(offset)
            );
            self.clock_told = Some(offset);
        } else if !off && self.clock_told.is_some() {
            tracing::info!(peers = estimate.peers, "clock now agrees with the network");
            self.clock_told = None;
        }
    }

    /// Keeps the own record (endpoints, NAT kind, relays) current and
    /// republishes it when it changes.
    fn update_own_record(&mut self, now: Now) {
        if let Some(v) = self.nat.changed(now.mono) {
            tracing::info!(nat = ?v.kind, reflexive = ?v.reflexive, "NAT verdict");
            self.publish_pending = true;
            if let Some(new) = v.reflexive {
                if self.reflexive.is_some_and(|old| old != new) {
                    self.announce_move(now);
                }
                self.reflexive = Some(new);
            }
        }
        self.read_local_ipv6(now);
        let verdict = self.nat.verdict(now.mono);
        if verdict.kind != NatKind::Public || self.config.force_relay {
            self.keep_relays(now);
        } else if self.relays.clear() {
            self.publish_pending = true;
        }
        if !self.publish_pending {
            return;
        }
        let record = NodeRecord {
            key: self.public,
            endpoints: self.own_endpoints(now),
            nat: verdict.kind,
            relays: self.relays.relays(),
            relay_service: self.config.relay_mbit > 0,
        };
        // A record that tells more (its first NAT kind, its first relays:
        // what peers behind NATs wait for) goes out at once; other
        // changes at most every PUBLISH_EVERY.
        if !says_more(&record, &self.own_record)
            && self
                .last_publish
                .is_some_and(|t| now.mono.saturating_duration_since(t) < PUBLISH_EVERY)
        {
            return;
        }
        self.publish_pending = false;
        if record != self.own_record {
            tracing::debug!(nat = ?record.nat, endpoints = record.endpoints.len(), relays = record.relays.len(), "publishing the own record");
            self.own_record = record.clone();
            self.dht.set_own_record(record);
            self.last_publish = Some(now.mono);
            // Tell our relays at once (the nodes peers reach us through,
            // and often the ones that answer lookups for our key), then
            // the nodes closest to us: the lookup may be refused when the
            // DHT's lookup slots are full, and it asks nodes behind NATs
            // that never answer first.
            for (key, addr) in self.relays.relays() {
                self.ping_addr(now, key, addr);
            }
            self.dht.lookup(self.public, now.mono);
        }
    }

    fn read_local_ipv6(&mut self, now: Now) {
        if self
            .local_ipv6_read
            .is_some_and(|t| now.mono.saturating_duration_since(t) < LOCAL_IPV6_EVERY)
        {
            return;
        }
        self.local_ipv6_read = Some(now.mono);
        let found = self.host.global_ipv6();
        if found != self.local_ipv6 {
            tracing::info!(addresses = ?found, "global IPv6 addresses");
            self.local_ipv6 = found;
            self.publish_pending = true;
        }
    }

    /// Behind a NAT: relays kept from the DHT's nodes, pinged, replaced.
    fn keep_relays(&mut self, now: Now) {
        let candidates: Vec<Candidate> = self
            .dht
            .nodes()
            .map(|n| Candidate {
                key: n.key,
                addr: n.addr,
                nat: n.nat,
                rtt: n.rtt,
                relay_service: n.relay_service,
            })
            .collect();
        if self.relays.fill(&self.public, &candidates, now.mono) {
            self.publish_pending = true;
        }
        let (mut ping, dead) = self.relays.on_tick(now.mono);
        ping.extend(self.relays.probe_shunned(&candidates, now.mono));
        for (k, a) in ping {
            self.ping_addr(now, k, a);
        }
        if !dead.is_empty() {
            tracing::info!(
                count = dead.len(),
                "kept relays went silent; replacing them"
            );
            self.relays.fill(&self.public, &candidates, now.mono);
            self.publish_pending = true;
        }
    }

    /// The endpoints we publish: where peers see us (when that is the same
    /// for all), the router's port mapping, IPv6.
    fn own_endpoints(&self, now: Now) -> Vec<SocketAddr> {
        let verdict = self.nat.verdict(now.mono);
        let mut endpoints = Vec::new();
        match verdict.kind {
            NatKind::Public | NatKind::EndpointIndependent | NatKind::Unknown => {
                endpoints.extend(verdict.reflexive);
            }
            _ => {}
        }
        if let Some((mapped, _)) = self.port_mapping {
            // The router forwards its public port to us: publish it at the
            // address peers see (and the one the router reports, if other).
            if let Some(r) = verdict.reflexive {
                endpoints.push(SocketAddr::new(r.ip(), mapped.port()));
            }
            endpoints.push(mapped);
        }
        // IPv6: where IPv6 peers see us, and the host's global addresses.
        endpoints.extend(verdict.reflexive6);
        let port = self.config.listen_port;
        endpoints.extend(
            self.local_ipv6
                .iter()
                .map(|ip| SocketAddr::new(IpAddr::V6(*ip), port)),
        );
        let mut seen = Vec::new();
        endpoints.retain(|e| {
            let new = !seen.contains(e);
            seen.push(*e);
            new
        });
        endpoints.truncate(crate::proto::MAX_ENDPOINTS);
        endpoints
    }

    // ---- control ----

    fn find_peer(&self, name: &str) -> Result<PublicKey, String> {
        self.overlay.find(name).ok_or_else(|| {
            format!(
                "'{name}' is neither a hostname of network {} nor a unique key prefix",
                self.spec.name
            )
        })
    }

    /// The state `wh show` prints.
    pub fn status(&self, now: Now, view: &DataplaneView) -> control::Status {
        control::Status {
            interface: self.config.interface.clone(),
            network: self.spec.name.clone(),
            node: self.overlay.own_hostname(),
            nat: self.nat_summary(now),
            public_key: self.public.to_string(),
            listen_port: self.config.listen_port,
            backend: view.kind.clone().unwrap_or_else(|| "none".into()),
            ipv4: self.overlay.own_ipv4().map(|i| i.to_string()),
            ipv6: self.overlay.own_ipv6().map(|i| i.to_string()),
            peers: self.overlay.peer_status(&view.stats),
            dht: self
                .dht
                .nodes()
                .map(|n| control::DhtNodeStatus {
                    key: n.key.to_string(),
                    endpoint: n.addr.to_string(),
                    bucket: n.bucket,
                    rtt_ms: n.rtt.map(|r| r.as_millis() as u64),
                })
                .collect(),
            clock_offset_ms: self.codec.clock_estimate(now.unix_ms).map(|e| e.offset_ms),
        }
    }

    /// The NAT part of `wh show`'s header.
    fn nat_summary(&self, now: Now) -> String {
        let verdict = self.nat.verdict(now.mono);
        let kind = match (self.config.mode, verdict.kind) {
            (Mode::Direct, _) | (_, NatKind::Public) => "DIRECT",
            (_, NatKind::EndpointIndependent) => "NAT easy",
            (_, NatKind::EndpointDependent) => "NAT hard",
            (_, NatKind::Unreachable) => "UNREACHABLE",
            (Mode::Nat, NatKind::Unknown) => "NAT",
            (_, NatKind::Unknown) if verdict.behind_nat => "NAT",
            (Mode::Unknown, NatKind::Unknown) => "UNKNOWN",
        };
        match self.port_mapping {
            Some((m, via)) => format!("{kind}, {via} {m}"),
            None => kind.to_string(),
        }
    }

    fn inspect(&self, now: Now, view: &DataplaneView) -> serde_json::Value {
        json!({
            "status": self.status(now, view),
            "observed": self.observed.map(|o| o.to_string()),
            "codec": self.codec.counters(),
            "drops": self.drops,
            "dht_size": self.dht.nodes().count(),
            "dht_counters": self.dht.counters(),
            "dataplane": {
                "dropped": view.dropped,
                "wireguard_data_via_daemon": view.wireguard_via_daemon,
                "wireguard_session_resets": view.session_resets,
                "wireguard_crossing_initiations_yielded": view.crossing_yielded,
                "wireguard_owns_port": view.owns_port,
            },
            "kernel_udp": view.kernel_udp,
            "relay": self.limiter.counters(),
            "relay_channels": {"forwarding": self.channels.len(), "ours": self.book.len()},
            "wireguard_peers": view.stats.iter().map(|s| s.key.to_string()).collect::<Vec<_>>(),
        })
    }
}

/// The endpoints the network file gives for peers (not boot nodes).
fn static_endpoints(spec: &NetworkSpec, own: &PublicKey) -> Vec<(PublicKey, Endpoint)> {
    spec.peers
        .iter()
        .filter(|p| p.role != Role::Boot && p.key != *own)
        .filter_map(|p| p.endpoint.clone().map(|e| (p.key, e)))
        .collect()
}

fn record_json(r: &NodeRecord) -> serde_json::Value {
    json!({
        "key": r.key.to_string(),
        "endpoints": r.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "nat": r.nat,
        "relays": r.relays.iter().map(|(k, a)| json!({"key": k.to_string(), "endpoint": a.to_string()})).collect::<Vec<_>>(),
    })
}

/// A [`Wire`] that queues what it is given as transmits (datagrams
/// released outside a call that brought a wire).
struct QueueWire(Vec<Transmit>);

impl Wire for QueueWire {
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize) {
        self.0.push(Transmit {
            to,
            contents: datagrams.to_vec(),
            segment,
        });
    }

    fn deliver(&mut self, _: SocketAddr, _: &[u8], _: Option<PublicKey>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHost;

    impl Host for NoHost {
        fn local_ip_towards(&self, _: SocketAddr) -> Option<IpAddr> {
            Some(IpAddr::from([203, 0, 113, 2]))
        }
        fn global_ipv6(&self) -> Vec<Ipv6Addr> {
            Vec::new()
        }
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    /// A node of a one-node network, and a ping to it sealed by a stranger
    /// (whatever the node answers — a pong or a challenge — is a transmit).
    fn node_and_ping() -> (Node, Now, SocketAddr, Vec<u8>) {
        let own = key(7);
        let text = format!(
            "name storm\nsubnet 10.0.42.0/24\nworkbit 0\ntrust n {}\n",
            own.public_key()
        );
        let spec = crate::config::parse(&text).expect("network file").spec;
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        let config = NodeConfig {
            key: own.clone(),
            spec: spec.clone(),
            interface: "wh-test".into(),
            listen_port: 62096,
            mode: Mode::Unknown,
            relay_mbit: 0,
            force_relay: false,
            from_file: true,
            has_dataplane: false,
            join: None,
            random: RandomStream::from_seed([1; 32]),
        };
        let mut node = Node::new(config, Box::new(NoHost), now);
        while node.poll_transmit().is_some() {}
        let mut stranger = Codec::with_nonce_seed(
            key(9),
            CodecConfig {
                required_workbits: spec.workbits,
                namespace: spec.namespace.clone(),
                ..CodecConfig::default()
            },
            [3; 32],
        );
        let ping = stranger
            .seal(
                now.unix_ms,
                &own.public_key(),
                &Message::Ping { id: 5, info: None },
            )
            .expect("sealed");
        (node, now, SocketAddr::from(([203, 0, 113, 9], 62096)), ping)
    }

    /// What the node sent back, through the wire or as transmits.
    fn answers(node: &mut Node, wire: QueueWire) -> usize {
        wire.0.len() + std::iter::from_fn(|| node.poll_transmit()).count()
    }

    #[test]
    fn a_control_datagram_that_waited_too_long_in_the_queue_is_shed_and_counted() {
        let (mut node, now, from, ping) = node_and_ping();
        let mut bytes = ping.clone();
        let len = bytes.len();
        let mut wire = QueueWire(Vec::new());
        let waited = Some(CONTROL_WAIT_MAX + Duration::from_millis(1));
        node.handle_received(now, from, &mut bytes, len, waited, &mut wire);
        assert_eq!(answers(&mut node, wire), 0, "a late datagram was answered");
        assert_eq!(node.drops().get("control-waited-too-long"), Some(&1));
    }

    #[test]
    fn a_control_datagram_that_waited_a_little_is_read() {
        let (mut node, now, from, ping) = node_and_ping();
        let mut bytes = ping.clone();
        let len = bytes.len();
        let mut wire = QueueWire(Vec::new());
        let waited = Some(CONTROL_WAIT_MAX / 4);
        node.handle_received(now, from, &mut bytes, len, waited, &mut wire);
        let seen = format!("{:?} {:?}", node.drops(), node.codec.counters());
        assert!(
            answers(&mut node, wire) > 0,
            "a timely ping got nothing back: {seen}"
        );
        assert_eq!(node.drops().get("control-waited-too-long"), None);
    }

    #[test]
    fn inspect_shows_the_kernels_udp_counters() {
        let (node, now, _, _) = node_and_ping();
        let view = DataplaneView {
            kernel_udp: BTreeMap::from([("SndbufErrors".to_string(), 758)]),
            ..DataplaneView::default()
        };
        assert_eq!(node.inspect(now, &view)["kernel_udp"]["SndbufErrors"], 758);
    }

    #[test]
    fn only_runs_of_control_datagrams_are_shed_never_data() {
        let late = Some(Duration::from_secs(3));
        let control = [crate::proto::MAGIC; 10];
        assert_eq!(waited_too_long(&control, 5, late), 2);
        assert_eq!(waited_too_long(&control, 5, None), 0);
        assert_eq!(waited_too_long(&control, 5, Some(CONTROL_WAIT_MAX)), 0);
        let wireguard = [4u8; 10];
        assert_eq!(waited_too_long(&wireguard, 5, late), 0);
        let challenge = [crate::proto::CHALLENGE; 3];
        assert_eq!(waited_too_long(&challenge, 3, late), 1);
    }
}
