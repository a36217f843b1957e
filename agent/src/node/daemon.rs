//! The daemon's event loop. One task owns the UDP socket: WireGuard datagrams
//! (first byte 1..4) go to the data plane, WireHub control messages (first
//! byte 0xFF) are opened by the codec and fed to the DHT and to the overlay
//! logic; what those cores ask to send is sealed and sent from here.

use super::launch::{Mode, UpOptions, load_spec};
use super::overlay::{AloneRepings, Overlay, PeerPath};
use crate::config::{Endpoint, NetworkSpec};
use crate::control::server::{Call, ControlSocket};
use crate::control::{self, Request, Response};
use crate::dataplane::{DataPlane, InterfaceConfig, Outgoing, PeerConfig, udp};
use crate::dht::{Dht, DhtConfig, DhtEvent};
use crate::keys::{PrivateKey, PublicKey};
use crate::nat::punch::PunchAction;
use crate::nat::upnp::{self, UpnpEvent};
use crate::nat::{NatDetector, Puncher};
use crate::proto::{Codec, CodecConfig, Message, NatKind, NodeRecord};
use crate::relay::channel::{self, ChannelBook, RelayChannels};
use crate::relay::{Candidate, RelayHealth, RelayLimiter, RelayLimits, RelaySet};
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Largest datagram read from the socket.
const RECV_BUFFER: usize = 65536;

/// Datagrams handled in a row before the loop's bookkeeping runs.
const BATCH: usize = 64;

/// How often the overlay's timers run.
const TICK: Duration = Duration::from_millis(250);

/// Runs the daemon on a fresh tokio runtime until it is told to stop.
pub fn run_blocking(
    opts: UpOptions,
    spec: NetworkSpec,
    key: PrivateKey,
    updates: Option<mpsc::Receiver<SpecUpdate>>,
) -> anyhow::Result<()> {
    init_logging("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(opts, spec, key, updates))
}

/// Logs to stderr, filtered by `WH_LOG` (else `default_level`). A second
/// call in the same process changes nothing.
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resolves an endpoint of the network file (a literal or a host name).
async fn resolve(e: &Endpoint) -> Option<SocketAddr> {
    if let Some(ip) = e.ip() {
        return Some(SocketAddr::new(ip, e.port));
    }
    let query = tokio::net::lookup_host((e.host.as_str(), e.port));
    match tokio::time::timeout(Duration::from_secs(5), query).await {
        // IPv4 first (NAT traversal is for IPv4), else IPv6.
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
        }
        _ => {
            tracing::warn!(host = %e.host, "cannot resolve endpoint host");
            None
        }
    }
}

/// A `wh ping` waiting for its pong.
struct PendingPing {
    key: PublicKey,
    sent: Instant,
    reply: oneshot::Sender<Response>,
}

struct Daemon {
    /// `WH_FORCE_RELAY=1`: never use direct paths to trusted peers (for
    /// measuring relayed paths between hosts that could talk directly).
    force_relay: bool,
    /// Our alias proof for a listener, until it acknowledges.
    join: Option<AliasJoin>,
    joined: Option<oneshot::Sender<()>>,
    last_join_attempt: Option<Instant>,
    /// Reloads read the network file (else they come from `updates`).
    from_file: bool,
    /// Peers changed: the routes must be checked.
    routes_dirty: bool,
    /// Routes into the interface for peers' routed subnets.
    routes_installed: Vec<ipnet::IpNet>,
    /// The CNI configuration file this node wrote.
    cni_written: Option<std::path::PathBuf>,
    opts: UpOptions,
    spec: NetworkSpec,
    public: PublicKey,
    socket: Arc<UdpSocket>,
    codec: Codec,
    dht: Dht,
    overlay: Overlay,
    dataplane: Option<DataPlane>,
    pending_lookups: HashMap<crate::dht::LookupId, oneshot::Sender<Response>>,
    pending_pings: HashMap<u64, PendingPing>,
    next_ping_id: u64,
    own_record: NodeRecord,
    observed: Option<SocketAddr>,
    stopping: bool,
    drops: HashMap<&'static str, u64>,
    nat: NatDetector,
    puncher: Puncher,
    relays: RelaySet,
    health: RelayHealth,
    limiter: RelayLimiter,
    /// As a relay: the channels of the flows we forward.
    channels: RelayChannels,
    /// As an end of relayed flows: the channels relays announced to us.
    book: ChannelBook,
    /// Reused to frame relay-data datagrams.
    frame_buf: Vec<u8>,
    /// Sends runs of datagrams in one system call (UDP GSO) where it can.
    gso: udp::GsoSender,
    /// Where each key last sent us an authenticated message from (bounded):
    /// where a relay forwards to.
    recent: HashMap<PublicKey, (SocketAddr, Instant)>,
    /// The port mapping the home router made, and the protocol that made it.
    upnp_mapped: Option<(SocketAddr, &'static str)>,
    waiting: HashMap<PublicKey, std::collections::VecDeque<(Instant, Outgoing)>>,
    /// Peers the data plane refused to take (e.g. the WireGuard's
    /// configuration socket failed): programmed again when due.
    unprogrammed: HashMap<PublicKey, Instant>,
    local_ips: Vec<IpAddr>,
    last_publish: Option<Instant>,
    publish_pending: bool,
    /// The host's global IPv6 addresses (published with our port when the
    /// socket is dual-stack), and when they were last read.
    local_ipv6: Vec<std::net::Ipv6Addr>,
    local_ipv6_read: Option<Instant>,
    /// Static endpoints of peers to ping (see `ping_static_endpoints`).
    endpoints_to_ping: Vec<(PublicKey, Endpoint)>,
    /// While the DHT is empty: when the static endpoints are pinged again.
    alone: AloneRepings,
    /// The names the DNS responder answers from (updated on reload).
    names_tx: watch::Sender<crate::names::SharedResolver>,
    /// The DNS responder, while it runs.
    dns: Option<crate::names::DnsHandle>,
}

/// The name of the CNI configuration a router node writes.
pub const CNI_CONFIG_NAME: &str = "10-wirehub.conflist";

/// Datagrams held per peer while it has no path, and for how long.
const WAITING_PER_PEER: usize = 16;
const WAITING_TTL: Duration = Duration::from_secs(3);

/// How often the alias proof is resent until the listener answers.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// How to reach a peer with a control message.
#[derive(Debug, Clone, Copy)]
enum ReplyVia {
    Direct(SocketAddr),
    Relay((PublicKey, SocketAddr)),
}

/// Keys remembered in [`Daemon::recent`].
const MAX_RECENT: usize = 8192;
/// A direct path silent this long falls back to relays: keepalives go
/// every 1.5 s and, once one is unanswered, every 400 ms, so it takes four
/// lost in a row.
const DIRECT_QUIET: Duration = Duration::from_secs(3);
/// How often the host's global IPv6 addresses are read again.
const LOCAL_IPV6_EVERY: Duration = Duration::from_secs(30);
/// A peer the data plane refused is programmed again after this long.
const REPROGRAM_AFTER: Duration = Duration::from_secs(1);
/// Own record changes are republished at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// A new version of the network from another source than the file (the
/// Kubernetes agent); the answer says what changed, or why nothing did.
pub struct SpecUpdate {
    pub spec: NetworkSpec,
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// What an embedding program (zero-netcat) adds to a node.
#[derive(Default)]
pub struct Extras {
    /// Join a network through an alias: send this proof to the listener
    /// until it acknowledges.
    pub join: Option<AliasJoin>,
    /// Turns true to stop the node (besides `wh down` and signals).
    pub stop: Option<watch::Receiver<bool>>,
    /// Told once the listener accepted our alias proof.
    pub joined: Option<oneshot::Sender<()>>,
}

/// An alias proof for a listener: `alias` vouches for our own key.
#[derive(Debug, Clone, Copy)]
pub struct AliasJoin {
    pub listener: PublicKey,
    pub alias: PublicKey,
    pub proof: [u8; 32],
}

/// Runs the node until it is told to stop (`wh down`, SIGTERM, Ctrl-C).
/// `updates`, when given, replaces the network file as the source of
/// reloads (`wh reload` then refuses).
pub async fn run(
    opts: UpOptions,
    spec: NetworkSpec,
    key: PrivateKey,
    updates: Option<mpsc::Receiver<SpecUpdate>>,
) -> anyhow::Result<()> {
    run_with(opts, spec, key, updates, Extras::default()).await
}

/// [`run`], with what an embedding program adds.
pub async fn run_with(
    mut opts: UpOptions,
    spec: NetworkSpec,
    key: PrivateKey,
    updates: Option<mpsc::Receiver<SpecUpdate>>,
    extras: Extras,
) -> anyhow::Result<()> {
    let from_file = updates.is_none();
    let mut stop = extras.stop.unwrap_or_else(|| watch::channel(false).1);
    let mut updates = updates.unwrap_or_else(|| mpsc::channel(1).1);
    let public = key.public_key();
    let socket = udp::bind_dual_stack(opts.listen_port)
        .with_context(|| format!("cannot bind UDP port {}", opts.listen_port))?;
    // `listen-port 0` asks for any free port: the rest uses the real one.
    if let Ok(local) = socket.local_addr() {
        opts.listen_port = local.port();
    }
    // Runs of datagrams from one source come as one buffer (fewer system
    // calls; a relay forwards them in one send). Without it, one by one.
    if let Err(e) = udp::enable_gro(&socket) {
        tracing::debug!(error = %e, "no UDP GRO on this kernel");
    }
    let socket = Arc::new(socket);
    let control_socket =
        ControlSocket::bind(&opts.interface, &control::socket_path(&opts.interface))?;

    let overlay = Overlay::new(&spec, public);
    let (dataplane, mut outgoing) = if overlay.has_interface() {
        let cfg = InterfaceConfig {
            name: opts.interface.clone(),
            private_key: key.clone(),
            mtu: opts.mtu,
            addresses: overlay.own_addresses(),
            routes: Vec::new(),
        };
        let (dp, rx) = DataPlane::create(opts.backend, cfg, Arc::clone(&socket))
            .await
            .with_context(|| format!("cannot create interface {}", opts.interface))?;
        (Some(dp), rx)
    } else {
        let (_tx, rx) = mpsc::channel::<Outgoing>(1);
        (None, rx)
    };

    let names: crate::names::SharedResolver =
        Arc::new(crate::names::ConfigNames::new(&spec, public));
    let (names_tx, names_rx) = watch::channel(names);
    let dns = match overlay.own_ipv4() {
        Some(ip) if opts.dns => {
            let bind = SocketAddr::new(IpAddr::V4(ip), opts.dns_port);
            match crate::names::serve_dns(bind, names_rx).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(%bind, error = %e, "DNS responder not started");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(path) = &opts.hosts_file {
        let entries = names_tx.borrow().entries();
        if let Err(e) = crate::names::hosts::apply(path, &spec.name, &entries) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the hosts block");
        }
    }

    let now = Instant::now();
    let dht_config = DhtConfig {
        required_workbits: spec.workbits,
        namespace: spec.namespace.clone(),
        ..DhtConfig::default()
    };
    let mut dht = Dht::new(public, dht_config, now);
    for boot in spec
        .peers
        .iter()
        .filter(|p| p.role == crate::config::Role::Boot)
    {
        if boot.key == public {
            continue;
        }
        if let Some(e) = &boot.endpoint
            && let Some(addr) = resolve(e).await
        {
            dht.add_bootstrap(boot.key, addr);
        }
    }
    let own_record = NodeRecord {
        key: public,
        endpoints: Vec::new(),
        nat: match opts.mode {
            Mode::Direct => NatKind::Public,
            _ => NatKind::Unknown,
        },
        relays: Vec::new(),
    };
    dht.set_own_record(own_record.clone());
    dht.bootstrap(now);
    let mut nat_detector = NatDetector::new(opts.listen_port, Vec::new(), now);
    match opts.mode {
        Mode::Direct => nat_detector.force(NatKind::Public),
        Mode::Nat | Mode::Unknown => {}
    }
    let (upnp_tx, mut upnp_events) = mpsc::channel::<UpnpEvent>(4);
    let (upnp_stop, upnp_stop_rx) = watch::channel(false);
    let upnp_task = (opts.mode != Mode::Direct)
        .then(|| tokio::spawn(upnp::run(opts.listen_port, upnp_tx, upnp_stop_rx)));

    let codec = Codec::new(
        key.clone(),
        CodecConfig {
            required_workbits: spec.workbits,
            namespace: spec.namespace.clone(),
            ..CodecConfig::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("no random source for nonces: {e}"))?;
    let limits = RelayLimits::from_mbit(opts.relay_mbit);
    let mut d = Daemon {
        force_relay: std::env::var("WH_FORCE_RELAY").is_ok_and(|v| v == "1"),
        join: extras.join,
        joined: extras.joined,
        last_join_attempt: None,
        from_file,
        routes_dirty: false,
        routes_installed: Vec::new(),
        cni_written: None,
        codec,
        opts,
        spec,
        public,
        socket: Arc::clone(&socket),
        dht,
        overlay,
        dataplane,
        pending_lookups: HashMap::new(),
        pending_pings: HashMap::new(),
        next_ping_id: 1,
        own_record,
        observed: None,
        stopping: false,
        drops: HashMap::new(),
        nat: nat_detector,
        puncher: Puncher::new(),
        relays: RelaySet::new(),
        health: RelayHealth::new(),
        limiter: RelayLimiter::new(limits),
        channels: RelayChannels::new(),
        book: ChannelBook::new(),
        frame_buf: Vec::with_capacity(2048),
        gso: udp::GsoSender::new(&socket),
        recent: HashMap::new(),
        upnp_mapped: None,
        endpoints_to_ping: Vec::new(),
        alone: AloneRepings::new(Instant::now()),
        waiting: HashMap::new(),
        unprogrammed: HashMap::new(),
        local_ips: Vec::new(),
        last_publish: None,
        publish_pending: false,
        local_ipv6: Vec::new(),
        local_ipv6_read: None,
        names_tx,
        dns,
    };
    d.publish_cni_config();
    d.endpoints_to_ping = d.static_endpoints(&d.spec);
    d.ping_static_endpoints().await;
    d.apply_paths();
    d.flush();

    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let control_task = tokio::spawn(control_socket.serve(calls_tx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch SIGINT")?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECV_BUFFER];
    tracing::info!(interface = %d.opts.interface, key = %d.public, port = d.opts.listen_port, "node up");
    if let Some(dir) = control::socket_path(&d.opts.interface).parent() {
        let _ = std::fs::write(dir.join("ready"), d.opts.interface.as_bytes());
    }

    while !d.stopping {
        let dht_deadline = match (d.dht.poll_timeout(), d.puncher.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep_until = dht_deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + TICK);
        tokio::select! {
            r = d.socket.readable() => match r {
                // Drain what is queued (runs of datagrams the kernel
                // coalesced come as one buffer) before the bookkeeping.
                Ok(()) => {
                    for _ in 0..BATCH {
                        match udp::try_recv_gro(&d.socket, &mut buf) {
                            Ok((n, from, segment)) => d.on_datagrams(from, &mut buf[..n], segment),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "recv failed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "recv failed"),
            },
            Some(out) = outgoing.recv() => {
                d.on_outgoing(out);
                for _ in 0..BATCH {
                    match outgoing.try_recv() {
                        Ok(out) => d.on_outgoing(out),
                        Err(_) => break,
                    }
                }
            }
            Some(ev) = upnp_events.recv() => d.on_upnp(ev),
            Some(update) = updates.recv() => {
                let result = d.apply_spec(update.spec);
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "network update refused");
                }
                if let Some(reply) = update.reply {
                    let _ = reply.send(result);
                }
            }
            Some((req, reply)) = calls.recv() => d.on_request(req, reply).await,
            _ = tick.tick() => d.on_tick(),
            _ = tokio::time::sleep_until(sleep_until) => {
                d.dht.handle_timeout(Instant::now());
                d.punch(Instant::now());
            }
            _ = interrupt.recv() => { tracing::info!("interrupted"); d.stopping = true; }
            _ = term.recv() => { tracing::info!("terminated"); d.stopping = true; }
            Ok(()) = stop.changed() => if *stop.borrow() { d.stopping = true; },
        }
        d.after_event();
        if d.routes_dirty {
            d.sync_routes().await;
        }
        if !d.endpoints_to_ping.is_empty() {
            d.ping_static_endpoints().await;
        }
    }
    control_task.abort();
    if let Some(dns) = d.dns.take() {
        tracing::info!(counters = ?dns.counters(), "DNS responder down");
        dns.shutdown().await;
    }
    if let Some(path) = &d.opts.hosts_file
        && let Err(e) = crate::names::hosts::remove(path, &d.spec.name)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the hosts block");
    }
    let _ = upnp_stop.send(true);
    if let Some(task) = upnp_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    if let Some(dp) = d.dataplane.take()
        && let Err(e) = dp.destroy().await
    {
        tracing::warn!(error = %e, "cannot remove the interface");
    }
    if let Some(dir) = control::socket_path(&d.opts.interface).parent() {
        let _ = std::fs::remove_file(dir.join("ready"));
    }
    if let Some(p) = d.cni_written.take() {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("node down");
    Ok(())
}

impl Daemon {
    fn count_drop(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }

    /// The endpoints the network file gives for peers (not boot nodes).
    fn static_endpoints(&self, spec: &NetworkSpec) -> Vec<(PublicKey, Endpoint)> {
        spec.peers
            .iter()
            .filter(|p| p.role != crate::config::Role::Boot && p.key != self.public)
            .filter_map(|p| p.endpoint.clone().map(|e| (p.key, e)))
            .collect()
    }

    /// Pings the static endpoints waiting for it (all of them at start, the
    /// new or changed ones after a reload), so that a direct path starts
    /// without waiting for a lookup.
    async fn ping_static_endpoints(&mut self) {
        for (key, e) in std::mem::take(&mut self.endpoints_to_ping) {
            if let Some(addr) = resolve(&e).await {
                self.send(
                    key,
                    addr,
                    &Message::Ping {
                        id: 0,
                        info: Some(self.own_record.clone()),
                    },
                );
            }
        }
    }

    fn send(&mut self, to: PublicKey, addr: SocketAddr, msg: &Message) {
        match self.codec.seal(now_ms(), &to, msg) {
            Ok(bytes) => {
                if let Err(e) = udp::send_now(&self.socket, &bytes, addr) {
                    tracing::debug!(error = %e, %addr, "send failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot seal a message"),
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.dht.poll_transmit() {
            self.send(t.to_key, t.to_addr, &t.message);
        }
        let now = Instant::now();
        while let Some(ev) = self.dht.poll_event() {
            self.on_dht_event(now, ev);
        }
        for (key, addr, msg) in self.overlay.poll_transmits() {
            self.send(key, addr, &msg);
        }
    }

    fn after_event(&mut self) {
        for key in self.overlay.lookups_due(Instant::now()) {
            tracing::debug!(target = %key.short(10), "looking up a trusted peer");
            let id = self.dht.lookup(key, Instant::now());
            self.overlay.lookup_started(key, id, Instant::now());
        }
        self.flush();
        self.apply_paths();
    }

    /// Pushes path changes to the data plane.
    fn apply_paths(&mut self) {
        let Some(dp) = &self.dataplane else {
            self.overlay.take_changes();
            return;
        };
        let mut released = Vec::new();
        let mut routes_wanted = false;
        for change in self.overlay.take_changes() {
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
            let wanted = change.path.is_some();
            let result = match change.path {
                Some(path) => dp.set_peer(PeerConfig {
                    key: change.key,
                    allowed_ips: change.allowed_ips,
                    endpoint: match path {
                        PeerPath::Direct(addr) => Some(addr),
                        _ => None,
                    },
                    keepalive: Some(25),
                }),
                None => dp.remove_peer(&change.key),
            };
            match result {
                Err(e) if wanted => {
                    tracing::warn!(peer = %change.key.short(10), error = %e, "cannot program the peer; trying again in 1 s");
                    self.unprogrammed
                        .insert(change.key, Instant::now() + REPROGRAM_AFTER);
                }
                Err(e) => {
                    tracing::debug!(peer = %change.key.short(10), error = %e, "removing the peer");
                    self.unprogrammed.remove(&change.key);
                }
                Ok(()) => {
                    self.unprogrammed.remove(&change.key);
                }
            }
            released.push(change.key);
            routes_wanted = true;
        }
        if routes_wanted {
            self.routes_dirty = true;
        }
        for key in released {
            if self.overlay.path(&key).is_some() {
                self.release_waiting(key);
            }
        }
    }

    /// Datagrams of `segment` bytes (the last may be shorter) from `from`.
    fn on_datagrams(&mut self, from: SocketAddr, bytes: &mut [u8], segment: usize) {
        let segment = segment.clamp(1, bytes.len().max(1));
        match bytes.first() {
            Some(&channel::RELAY_DATA) => self.on_relay_data(from, bytes, segment),
            Some(&channel::RELAYED_DATA) => self.on_relayed_data(from, bytes, segment),
            _ => self.each_datagram(from, bytes, segment),
        }
    }

    /// Datagrams one by one, each by its own first byte (a run the kernel
    /// coalesced may mix kinds of one size).
    fn each_datagram(&mut self, from: SocketAddr, bytes: &mut [u8], segment: usize) {
        for d in bytes.chunks_mut(segment) {
            let n = d.len();
            match d.first() {
                Some(&channel::RELAY_DATA) => self.on_relay_data(from, d, n),
                Some(&channel::RELAYED_DATA) => self.on_relayed_data(from, d, n),
                _ => self.on_datagram(from, d),
            }
        }
    }

    /// As a relay: relay-data datagrams to forward. A run of one channel
    /// goes on in one send, its headers rewritten to name the sender.
    fn on_relay_data(&mut self, from: SocketAddr, bytes: &mut [u8], segment: usize) {
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
            return self.each_datagram(from, bytes, segment);
        };
        let now = Instant::now();
        let (source, to) = match self.channels.route(id, from, now) {
            Ok(r) => r,
            Err(e) => return self.count_drop(e.reason()),
        };
        let packets = bytes.len().div_ceil(segment);
        let payload = bytes.len().saturating_sub(packets * channel::HEADER_LEN);
        if self.limiter.allow_many(source, payload, packets, now) {
            channel::rewrite_as_relayed(bytes, segment, &source);
            if let Err(e) = self.gso.try_send_segments(&self.socket, bytes, segment, to) {
                tracing::debug!(error = %e, %to, "relay-data send failed");
            }
            return;
        }
        // Over the limit as a run: what fits goes on, one by one.
        for d in bytes.chunks_mut(segment) {
            if self
                .limiter
                .allow(source, d.len().saturating_sub(channel::HEADER_LEN), now)
            {
                channel::rewrite_as_relayed(d, d.len(), &source);
                if let Err(e) = udp::send_now(&self.socket, d, to) {
                    tracing::debug!(error = %e, %to, "relay-data send failed");
                }
            }
        }
    }

    /// As an end: relayed-data, WireGuard datagrams a relay delivers from
    /// the trusted peer its header names.
    fn on_relayed_data(&mut self, from: SocketAddr, bytes: &mut [u8], segment: usize) {
        let now = Instant::now();
        let mut last: Option<(u64, PublicKey)> = None;
        for d in bytes.chunks_mut(segment) {
            if d.first() != Some(&channel::RELAYED_DATA) {
                let n = d.len();
                self.each_datagram(from, d, n);
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
                        self.overlay.on_relayed_contact(k, (relay, from), now);
                    }
                    last = Some((prefix, k));
                    k
                }
            };
            match &self.dataplane {
                Some(dp) => dp.receive(from, wireguard, Some(peer)),
                None => self.count_drop("wireguard-without-interface"),
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

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        match bytes.first() {
            Some(0xFF) => self.on_control(from, bytes),
            Some(1..=4) => match &self.dataplane {
                Some(dp) => dp.receive(from, bytes, None),
                None => self.count_drop("wireguard-without-interface"),
            },
            _ => self.count_drop("unknown-first-byte"),
        }
    }

    fn on_control(&mut self, from: SocketAddr, bytes: &[u8]) {
        let (key, msg) = match self.codec.open(now_ms(), bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::trace!(%from, error = %e, "dropped control message");
                return;
            }
        };
        let now = Instant::now();
        self.remember(key, from, now);
        self.health.on_contact(&key);
        match &msg {
            Message::Pong { id, observed, info } => {
                self.observed = Some(*observed);
                self.note_local_ip(from);
                self.nat.observe(from, *observed, now);
                self.relays.on_pong(&key, None, now);
                if let Some(PendingPing {
                    key: k,
                    sent,
                    reply,
                }) = self.pending_pings.remove(id)
                {
                    if k == key {
                        let rtt = sent.elapsed().as_secs_f64() * 1000.0;
                        let _ = reply.send(Response::Ok(
                            json!({"rtt_ms": rtt, "via": from.to_string()}),
                        ));
                    } else {
                        self.pending_pings.insert(
                            *id,
                            PendingPing {
                                key: k,
                                sent,
                                reply,
                            },
                        );
                    }
                }
                if let Some(info) = info {
                    self.overlay.on_record(info.clone());
                }
            }
            Message::Ping {
                info: Some(info), ..
            }
            | Message::FindNode {
                info: Some(info), ..
            } => {
                self.overlay.on_record(info.clone());
            }
            Message::Relay { to, inner } => {
                let inner = inner.clone();
                self.forward(key, *to, inner.len(), |from| Message::Relayed {
                    from,
                    inner,
                });
                return;
            }
            Message::RelayWg { to, packet } => {
                let packet = packet.clone();
                let to = *to;
                if self.forward(key, to, packet.len(), |from| Message::RelayedWg {
                    from,
                    packet,
                }) {
                    self.open_channel((key, from), to, now);
                }
                return;
            }
            Message::Relayed { from: src, inner } => {
                self.on_relayed_control(*src, inner, (key, from), now);
            }
            Message::AliasAuth { alias, real, proof } => {
                let (alias, real, proof) = (*alias, *real, *proof);
                if real == key {
                    self.on_alias_auth(alias, real, &proof, ReplyVia::Direct(from));
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
                    self.book.learn(key, *peer, *channel, now);
                }
                return;
            }
            Message::RelayedWg { from: src, packet } => {
                if self.overlay.is_trusted(src) {
                    if self.relay_at(src, from) == Some(key) {
                        self.overlay.on_relayed_contact(*src, (key, from), now);
                    }
                    if let Some(dp) = &self.dataplane {
                        dp.receive(from, packet, Some(*src));
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
        if self.overlay.is_trusted(&key) && !self.force_relay {
            self.overlay.on_direct_contact(key, from, now);
            self.puncher.stop(&key);
        }
        self.dht.handle_message(now, from, key, &msg);
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
        let any = match peer {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(any, 0)) else {
            return;
        };
        if s.connect(peer).is_ok()
            && let Ok(local) = s.local_addr()
        {
            self.local_ips.retain(|ip| *ip != local.ip());
            self.local_ips.push(local.ip());
            self.local_ips.truncate(8);
            self.nat.set_local_ips(self.local_ips.clone());
        }
    }

    /// Relays a sealed message from `source` to `to`, within limits.
    /// Returns whether it went out.
    fn forward(
        &mut self,
        source: PublicKey,
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
            self.limiter.counters.dropped_unknown_destination += 1;
            return false;
        };
        if !self.limiter.allow(source, len, Instant::now()) {
            return false;
        }
        let msg = wrap(source);
        self.send(to, addr, &msg);
        true
    }

    /// After forwarding sealed WireGuard traffic from `source` to `to`:
    /// open (or refresh) their channel when both addresses are
    /// authenticated, and tell both ends.
    fn open_channel(&mut self, source: (PublicKey, SocketAddr), to: PublicKey, now: Instant) {
        let Some(&(to_addr, _)) = self.recent.get(&to) else {
            return;
        };
        let announcements =
            self.channels
                .on_sealed_forward(source, (to, to_addr), now, crate::keys::random_u64);
        for (key, addr, msg) in announcements {
            self.send(key, addr, &msg);
        }
    }

    /// A control message `src` sent us through `relay`.
    fn on_relayed_control(
        &mut self,
        src: PublicKey,
        inner: &[u8],
        relay: (PublicKey, SocketAddr),
        now: Instant,
    ) {
        let (sender, msg) = match self.codec.open(now_ms(), inner) {
            Ok(v) => v,
            Err(_) => return,
        };
        if sender != src {
            self.count_drop("relayed-control-mismatch");
            return;
        }
        match msg {
            Message::AliasAuth { alias, real, proof } if real == src => {
                self.on_alias_auth(alias, real, &proof, ReplyVia::Relay(relay));
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
        self.overlay.on_relayed_contact(src, relay, now);
        if let Message::PunchRequest { endpoints, .. } = msg {
            // Probe the peer's endpoints now: our outgoing probes open our
            // NAT for its probes, and its probes arrive through ours.
            self.puncher.start(src, endpoints, Vec::new(), now);
            self.punch(now);
        }
    }

    fn on_dht_event(&mut self, now: Instant, ev: DhtEvent) {
        match ev {
            DhtEvent::LookupDone {
                id, target, found, ..
            } => {
                tracing::debug!(
                    target = %target.short(10),
                    found = found.is_some(),
                    endpoints = ?found.as_ref().map(|r| r.endpoints.clone()),
                    relays = found.as_ref().map_or(0, |r| r.relays.len()),
                    nat = ?found.as_ref().map(|r| r.nat),
                    "lookup done"
                );
                if let Some(reply) = self.pending_lookups.remove(&id) {
                    let answer = match &found {
                        Some(r) => Response::Ok(record_json(r)),
                        None => Response::Error(format!(
                            "{} was not found in the DHT",
                            target.short(10)
                        )),
                    };
                    let _ = reply.send(answer);
                }
                if let Some(record) = self.overlay.lookup_done(now, id, target, found)
                    && !matches!(self.overlay.path(&target), Some(PeerPath::Direct(_)))
                {
                    self.puncher.start(
                        target,
                        record.endpoints.clone(),
                        record.relays.clone(),
                        now,
                    );
                    self.punch(now);
                }
            }
            DhtEvent::RecordSeen { target, record, .. }
                if self.overlay.record_seen(target, &record) =>
            {
                self.puncher
                    .start(target, record.endpoints.clone(), record.relays.clone(), now);
                self.punch(now);
            }
            DhtEvent::Pong { key, observed, rtt } => {
                self.observed = Some(observed);
                self.relays.on_pong(&key, Some(rtt), now);
            }
            _ => {}
        }
    }

    /// Someone proves it holds the secret of one of our `alias` keys: the
    /// alias is bound to its real key (once: the alias line is consumed).
    fn on_alias_auth(
        &mut self,
        alias: PublicKey,
        real: PublicKey,
        proof: &[u8; 32],
        via: ReplyVia,
    ) {
        let Some(index) = self
            .spec
            .peers
            .iter()
            .position(|p| p.role == crate::config::Role::Alias && p.key == alias)
        else {
            tracing::info!(alias = %alias.short(10), from = %real.short(10), "refused an alias proof: no such alias (already used?)");
            self.count_drop("alias-unknown-or-used");
            return;
        };
        if !self.codec.verify_alias(&alias, &real, proof) {
            tracing::warn!(alias = %alias.short(10), from = %real.short(10), "refused a bad alias proof");
            self.count_drop("alias-bad-proof");
            return;
        }
        let mut spec = self.spec.clone();
        let line = &mut spec.peers[index];
        line.role = crate::config::Role::Trust;
        line.key = real;
        match self.apply_spec(spec) {
            Ok(_) => {
                tracing::info!(alias = %alias.short(10), real = %real.short(10), "alias bound")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot bind the alias");
                return;
            }
        }
        let ack = Message::AliasAck { alias };
        self.send_to_peer(real, via, &ack);
    }

    fn on_alias_ack(&mut self) {
        if let Some(j) = self.join.take() {
            tracing::info!(listener = %j.listener.short(10), "the listener accepted our alias proof");
            if let Some(tx) = self.joined.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Sends our alias proof to the listener while it has not answered.
    fn try_join(&mut self, now: Instant) {
        let Some(j) = self.join else {
            return;
        };
        if self
            .last_join_attempt
            .is_some_and(|t| now.duration_since(t) < JOIN_RETRY)
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
        self.last_join_attempt = Some(now);
        let msg = Message::AliasAuth {
            alias: j.alias,
            real: self.public,
            proof: j.proof,
        };
        self.send_to_peer(j.listener, via, &msg);
    }

    /// Sends a control message to `to`, straight or sealed inside a relay request.
    fn send_to_peer(&mut self, to: PublicKey, via: ReplyVia, msg: &Message) {
        match via {
            ReplyVia::Direct(addr) => self.send(to, addr, msg),
            ReplyVia::Relay((relay, addr)) => match self.codec.seal(now_ms(), &to, msg) {
                Ok(inner) => self.send(relay, addr, &Message::Relay { to, inner }),
                Err(e) => tracing::debug!(error = %e, "cannot seal a relayed message"),
            },
        }
    }

    /// Sends what the hole-punching schedule says is due.
    fn punch(&mut self, now: Instant) {
        for action in self.puncher.poll(now) {
            match action {
                PunchAction::Probe { peer, endpoints } => {
                    for e in endpoints {
                        self.send(
                            peer,
                            e,
                            &Message::Ping {
                                id: 0,
                                info: Some(self.own_record.clone()),
                            },
                        );
                    }
                }
                PunchAction::Request { peer, relay } => {
                    let request = Message::PunchRequest {
                        id: 0,
                        endpoints: self.own_record.endpoints.clone(),
                    };
                    match self.codec.seal(now_ms(), &peer, &request) {
                        Ok(inner) => {
                            self.send(relay.0, relay.1, &Message::Relay { to: peer, inner })
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot seal a punch request"),
                    }
                }
            }
        }
    }

    fn on_outgoing(&mut self, out: Outgoing) {
        match self.overlay.path(&out.to) {
            Some(PeerPath::Direct(addr)) => {
                let _ = self
                    .gso
                    .try_send_segments(&self.socket, &out.datagrams, out.segment, addr);
            }
            Some(PeerPath::Relayed(relays)) => {
                let now = Instant::now();
                let Some(mut relay) = relays.first().copied() else {
                    return;
                };
                if self.health.is_dead(&relay.0, now) {
                    tracing::info!(peer = %out.to.short(10), relay = %relay.0.short(10), "relay in use is silent; moving to the next");
                    self.health.forget(&relay.0);
                    self.book.forget_relay(&relay.0);
                    match self.overlay.rotate_relay(&out.to, &relay.0, now) {
                        Some(next) => relay = next,
                        None => {
                            self.count_drop("no-live-relay");
                            return;
                        }
                    }
                }
                if self.health.due(relay.0, now) {
                    self.send(
                        relay.0,
                        relay.1,
                        &Message::Ping {
                            id: 0,
                            info: Some(self.own_record.clone()),
                        },
                    );
                }
                let route = self.book.send_via(relay.0, out.to, now);
                // Sealed: every datagram without a channel, else the first
                // when the channel's refresh is due.
                let sealed = match route.channel {
                    None => usize::MAX,
                    Some(_) => usize::from(route.seal_first),
                };
                for d in out.iter().take(sealed) {
                    let msg = Message::RelayWg {
                        to: out.to,
                        packet: d.to_vec(),
                    };
                    self.send(relay.0, relay.1, &msg);
                }
                let rest = out
                    .datagrams
                    .get(sealed.saturating_mul(out.segment)..)
                    .unwrap_or_default();
                if let Some(id) = route.channel
                    && !rest.is_empty()
                {
                    channel::frame(&mut self.frame_buf, id, rest, out.segment);
                    if let Err(e) = self.gso.try_send_segments(
                        &self.socket,
                        &self.frame_buf,
                        out.segment + channel::HEADER_LEN,
                        relay.1,
                    ) {
                        tracing::debug!(error = %e, "relay-data send failed");
                    }
                }
            }
            None => {
                // No path yet: hold the datagram briefly (a WireGuard
                // handshake would otherwise wait 5 s for its retry).
                let queue = self.waiting.entry(out.to).or_default();
                let full = queue.len() >= WAITING_PER_PEER;
                if full {
                    queue.pop_front();
                }
                queue.push_back((Instant::now(), out));
                if full {
                    self.count_drop("no-path-to-peer");
                }
            }
        }
    }

    /// Routes into the interface every subnet a reachable peer routes, and
    /// removes the routes of peers gone.
    async fn sync_routes(&mut self) {
        self.routes_dirty = false;
        let Some(dp) = &self.dataplane else {
            return;
        };
        let mut wanted: Vec<ipnet::IpNet> = Vec::new();
        for p in self.spec.trusted().filter(|p| p.key != self.public) {
            if self.overlay.path(&p.key).is_some() {
                wanted.extend(self.overlay.routes_of(&p.key));
            }
        }
        wanted.sort();
        wanted.dedup();
        for n in wanted.iter().filter(|n| !self.routes_installed.contains(n)) {
            if let Err(e) = dp.add_route(*n).await {
                tracing::warn!(route = %n, error = %e, "cannot add a route into the overlay");
            }
        }
        for n in self.routes_installed.iter().filter(|n| !wanted.contains(n)) {
            if let Err(e) = dp.remove_route(*n).await {
                tracing::debug!(route = %n, error = %e, "cannot remove a route");
            }
        }
        self.routes_installed = wanted;
    }

    /// Sends what waited for a path to `key`, now that it has one.
    fn release_waiting(&mut self, key: PublicKey) {
        let Some(queue) = self.waiting.remove(&key) else {
            return;
        };
        for (at, out) in queue {
            if at.elapsed() <= WAITING_TTL {
                self.on_outgoing(out);
            }
        }
    }

    fn on_upnp(&mut self, ev: UpnpEvent) {
        self.upnp_mapped = match ev {
            UpnpEvent::Mapped { external, via } => Some((external, via)),
            UpnpEvent::Lost => None,
        };
        self.publish_pending = true;
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.overlay.on_tick(now);
        self.overlay.expire_direct(now, DIRECT_QUIET);
        let due: Vec<PublicKey> = self
            .unprogrammed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.unprogrammed.remove(&key);
            self.overlay.reprogram(&key);
        }
        // Relays in use that went silent are dropped from the paths.
        let in_use: Vec<PublicKey> = self
            .overlay
            .relayed_paths()
            .iter()
            .map(|(_, r)| r.0)
            .collect();
        self.health.retain(&in_use);
        self.channels.expire(now);
        self.book.expire(now);
        self.waiting.retain(|_, q| {
            q.retain(|(at, _)| at.elapsed() <= WAITING_TTL);
            !q.is_empty()
        });
        self.update_own_record(now);
        self.try_join(now);
        if self.alone.due(self.dht.is_empty(), now) {
            let again = self.static_endpoints(&self.spec);
            if !again.is_empty() {
                tracing::info!(
                    endpoints = again.len(),
                    "nobody answered nor contacted us yet: pinging the static endpoints again"
                );
                self.endpoints_to_ping.extend(again);
            }
        }
        // Expire control pings that got no answer.
        let expired: Vec<u64> = self
            .pending_pings
            .iter()
            .filter(|(_, p)| p.sent.elapsed() > Duration::from_secs(5))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(PendingPing { key, reply, .. }) = self.pending_pings.remove(&id) {
                let _ = reply.send(Response::Error(format!(
                    "no pong from {} within 5 s",
                    key.short(10)
                )));
            }
        }
    }

    /// Keeps the own record (endpoints, NAT kind, relays) current and
    /// republishes it when it changes.
    fn update_own_record(&mut self, now: Instant) {
        if let Some(v) = self.nat.changed(now) {
            tracing::info!(nat = ?v.kind, reflexive = ?v.reflexive, "NAT verdict");
            self.publish_pending = true;
        }
        if self
            .local_ipv6_read
            .is_none_or(|t| now.duration_since(t) >= LOCAL_IPV6_EVERY)
        {
            self.local_ipv6_read = Some(now);
            let dual_stack = self.socket.local_addr().is_ok_and(|a| a.is_ipv6());
            let found = if dual_stack {
                crate::nat::local::host_global_ipv6(&self.opts.interface)
            } else {
                Vec::new()
            };
            if found != self.local_ipv6 {
                tracing::info!(addresses = ?found, "global IPv6 addresses");
                self.local_ipv6 = found;
                self.publish_pending = true;
            }
        }
        let verdict = self.nat.verdict(now);
        let behind_nat = verdict.kind != NatKind::Public || self.force_relay;
        if behind_nat {
            let candidates: Vec<Candidate> = self
                .dht
                .nodes()
                .map(|n| Candidate {
                    key: n.key,
                    addr: n.addr,
                    nat: n.nat,
                    rtt: n.rtt,
                })
                .collect();
            if self.relays.fill(&self.public, &candidates, &[]) {
                self.publish_pending = true;
            }
            let (ping, dead) = self.relays.on_tick(now);
            for (k, a) in ping {
                self.send(
                    k,
                    a,
                    &Message::Ping {
                        id: 0,
                        info: Some(self.own_record.clone()),
                    },
                );
            }
            if !dead.is_empty() {
                tracing::info!(
                    count = dead.len(),
                    "kept relays went silent; replacing them"
                );
                self.relays.fill(&self.public, &candidates, &dead);
                self.publish_pending = true;
            }
        } else if self.relays.clear() {
            self.publish_pending = true;
        }
        if !self.publish_pending
            || self
                .last_publish
                .is_some_and(|t| now.duration_since(t) < PUBLISH_EVERY)
        {
            return;
        }
        let mut endpoints = Vec::new();
        match verdict.kind {
            NatKind::Public | NatKind::EndpointIndependent | NatKind::Unknown => {
                endpoints.extend(verdict.reflexive);
            }
            _ => {}
        }
        if let Some((mapped, _)) = self.upnp_mapped {
            // The router forwards its public port to us: publish it at the
            // address peers see (and the one the router reports, if other).
            if let Some(r) = verdict.reflexive {
                endpoints.push(SocketAddr::new(r.ip(), mapped.port()));
            }
            endpoints.push(mapped);
        }
        // IPv6: where IPv6 peers see us, and the host's global addresses.
        endpoints.extend(verdict.reflexive6);
        let port = self.opts.listen_port;
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
        let record = NodeRecord {
            key: self.public,
            endpoints,
            nat: verdict.kind,
            relays: self.relays.relays(),
        };
        self.publish_pending = false;
        if record != self.own_record {
            self.own_record = record.clone();
            self.dht.set_own_record(record);
            self.last_publish = Some(now);
            // Tell the nodes closest to us (who answer lookups for our key).
            self.dht.lookup(self.public, now);
        }
    }

    fn find_peer(&self, name: &str) -> Result<PublicKey, String> {
        self.overlay.find(name).ok_or_else(|| {
            format!(
                "'{name}' is neither a hostname of network {} nor a unique key prefix",
                self.spec.name
            )
        })
    }

    async fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match req {
            Request::Show => serde_json::to_value(self.status()).map_err(|e| e.to_string()),
            Request::Inspect => Ok(self.inspect()),
            Request::Down => {
                self.stopping = true;
                Ok(json!("down"))
            }
            Request::Reload => self.reload(),
            Request::Forget { peer } => self.find_peer(&peer).map(|k| {
                self.overlay.forget(&k, Instant::now());
                json!("forgotten")
            }),
            Request::Resolve { name } => Ok(json!(self.overlay.resolve(&name))),
            Request::Lookup { peer } => {
                match peer.parse::<PublicKey>().or_else(|_| self.find_peer(&peer)) {
                    Ok(k) => {
                        let id = self.dht.lookup(k, Instant::now());
                        self.pending_lookups.insert(id, reply);
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Ping { peer } => match self.find_peer(&peer) {
                Ok(k) => match self.overlay.path(&k) {
                    Some(PeerPath::Direct(addr)) => {
                        let id = self.next_ping_id;
                        self.next_ping_id += 1;
                        self.pending_pings.insert(
                            id,
                            PendingPing {
                                key: k,
                                sent: Instant::now(),
                                reply,
                            },
                        );
                        self.send(k, addr, &Message::Ping { id, info: None });
                        return;
                    }
                    _ => Err(format!("no direct path to {peer} yet")),
                },
                Err(e) => Err(e),
            },
        };
        let _ = reply.send(match answer {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        });
    }

    fn reload(&mut self) -> Result<serde_json::Value, String> {
        if !self.from_file {
            return Err("this node takes its network from Kubernetes, not from a file; edit the WireHubNetwork resource instead".into());
        }
        let spec =
            load_spec(&self.opts.config_path).map_err(|e| format!("{e:#}\nnothing was changed"))?;
        self.apply_spec(spec).map(|s| json!(s))
    }

    /// Applies a new version of the network, or refuses it whole.
    fn apply_spec(&mut self, spec: NetworkSpec) -> Result<String, String> {
        let summary = self.overlay.reload(&spec, Instant::now())?;
        let before = self.static_endpoints(&self.spec);
        let fresh: Vec<_> = self
            .static_endpoints(&spec)
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect();
        self.endpoints_to_ping.extend(fresh);
        self.spec = spec;
        let names: crate::names::SharedResolver =
            Arc::new(crate::names::ConfigNames::new(&self.spec, self.public));
        if let Some(path) = &self.opts.hosts_file
            && let Err(e) = crate::names::hosts::apply(path, &self.spec.name, &names.entries())
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot update the hosts block");
        }
        self.names_tx.send_replace(names);
        self.publish_cni_config();
        Ok(summary)
    }

    /// Writes the node's CNI configuration when it routes a pod CIDR (and
    /// removes it when it no longer does).
    fn publish_cni_config(&mut self) {
        let Some(dir) = self.opts.cni_dir.clone() else {
            return;
        };
        let own = self.overlay.own_routes();
        let path = dir.join(CNI_CONFIG_NAME);
        if own.is_empty() {
            if let Some(p) = self.cni_written.take() {
                let _ = std::fs::remove_file(p);
            }
            return;
        }
        let ranges: Vec<serde_json::Value> = own
            .iter()
            .map(|n| json!([{"subnet": n.to_string()}]))
            .collect();
        let run_dir = control::run_dir();
        let ready = run_dir.join("ready").display().to_string();
        // IPAM and plugin state live beside the node's other run-time state.
        let ipam_dir = run_dir.join("cni-ipam").display().to_string();
        let state_dir = run_dir.join("cni-state").display().to_string();
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "wirehub",
            "plugins": [
                {
                    "type": "wirehub-cni",
                    "mtu": self.opts.mtu,
                    "podSubnet": self.overlay.all_routes().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "overlaySubnet": self.spec.subnet.map(|s| s.to_string()),
                    "readyFile": ready,
                    "stateDir": state_dir,
                    "ipam": {"type": "host-local", "ranges": ranges, "dataDir": ipam_dir},
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        let Ok(text) = serde_json::to_string_pretty(&conf) else {
            return;
        };
        if std::fs::create_dir_all(&dir).is_err() {
            tracing::warn!(dir = %dir.display(), "cannot create the CNI configuration directory");
            return;
        }
        // Written aside then renamed, so a runtime never reads half a file.
        let tmp = dir.join(format!(".{CNI_CONFIG_NAME}.tmp"));
        match std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                if self.cni_written.is_none() {
                    tracing::info!(path = %path.display(), pod_cidrs = ?own, "CNI configuration written");
                }
                self.cni_written = Some(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the CNI configuration")
            }
        }
        // Pods' traffic crosses this node: it must forward.
        let mut files = vec!["/proc/sys/net/ipv4/ip_forward"];
        if own.iter().any(|n| matches!(n, ipnet::IpNet::V6(_))) {
            files.push("/proc/sys/net/ipv6/conf/all/forwarding");
        }
        for file in files {
            if let Err(e) = std::fs::write(file, "1") {
                tracing::warn!(file, error = %e, "cannot enable forwarding");
            }
        }
    }

    fn status(&self) -> control::Status {
        let stats = self
            .dataplane
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default();
        control::Status {
            interface: self.opts.interface.clone(),
            network: self.spec.name.clone(),
            node: self.overlay.own_hostname(),
            nat: {
                let kind = match (self.opts.mode, self.nat.verdict(Instant::now()).kind) {
                    (Mode::Direct, _) | (_, NatKind::Public) => "DIRECT",
                    (_, NatKind::EndpointIndependent) => "NAT easy",
                    (_, NatKind::EndpointDependent) => "NAT hard",
                    (_, NatKind::Unreachable) => "UNREACHABLE",
                    (Mode::Nat, NatKind::Unknown) => "NAT",
                    (Mode::Unknown, NatKind::Unknown) => "UNKNOWN",
                };
                match self.upnp_mapped {
                    Some((m, via)) => format!("{kind}, {via} {m}"),
                    None => kind.to_string(),
                }
            },
            public_key: self.public.to_string(),
            listen_port: self.opts.listen_port,
            backend: self
                .dataplane
                .as_ref()
                .map_or("none".into(), |d| d.kind().to_string()),
            ipv4: self.overlay.own_ipv4().map(|i| i.to_string()),
            ipv6: self.overlay.own_ipv6().map(|i| i.to_string()),
            peers: self.overlay.peer_status(&stats),
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
        }
    }

    fn inspect(&self) -> serde_json::Value {
        json!({
            "status": self.status(),
            "observed": self.observed.map(|o| o.to_string()),
            "codec": self.codec.counters(),
            "drops": self.drops,
            "dht_size": self.dht.nodes().count(),
            "dht_counters": self.dht.counters(),
            "dataplane": {"dropped": self.dataplane.as_ref().map_or(0, |d| d.dropped())},
            "relay": self.limiter.counters,
            "relay_channels": {"forwarding": self.channels.len(), "ours": self.book.len()},
            "wireguard_peers": self
                .dataplane
                .as_ref()
                .map(|d| d.stats().iter().map(|s| s.key.to_string()).collect::<Vec<_>>())
                .unwrap_or_default(),
        })
    }
}

fn record_json(r: &NodeRecord) -> serde_json::Value {
    json!({
        "key": r.key.to_string(),
        "endpoints": r.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "nat": r.nat,
        "relays": r.relays.iter().map(|(k, a)| json!({"key": k.to_string(), "endpoint": a.to_string()})).collect::<Vec<_>>(),
    })
}
