//! External WireGuard: the kernel module (netlink) or a userspace
//! implementation such as wireguard-go (UAPI socket), both programmed with
//! wireguard-control.
//!
//! Two ways to share the node's single public UDP port:
//!
//! - **Kernel owns the port** (kernel WireGuard where nftables works, see
//!   [`super::kernel_port`]): WireGuard listens on the public port, the
//!   daemon's socket on a private one, and two stateless nftables rules
//!   move WireHub's datagrams between them. A peer with a direct path has
//!   its real address as WireGuard endpoint: its datagrams never enter the
//!   daemon. Only a relayed peer's WireGuard endpoint is its loopback proxy
//!   (below).
//! - **Daemon owns the port** (wireguard-go, or a kernel without nftables):
//!   the WireGuard's port is used over loopback only, and each peer's
//!   WireGuard endpoint is a proxy socket on 127.0.0.1 that we own:
//!
//! ```text
//!   WireGuard :wg  --(lo)-->  proxy(peer) --> shared socket -> peer endpoint
//!                                         \-> Outgoing{to: peer} (relayed)
//!   daemon -> receive(from, dg) -> proxy(peer) --(lo)--> WireGuard :wg
//! ```
//!
//! Because every datagram of a peer reaches WireGuard from that peer's proxy,
//! WireGuard's endpoint for the peer never moves, and changing the real path
//! (direct, relayed, another address) never touches WireGuard's session.
//! (Changing a kernel peer's endpoint between its proxy and a real address
//! keeps the session too: WireGuard sessions are not bound to endpoints.)
//!
//! **Adoption.** A kernel interface owning the port outlives a daemon that
//! crashed (only `destroy` or a clean drop removes it). A new daemon finding
//! the interface with its own private key adopts it: the peers keep their
//! endpoints and sessions, so direct traffic does not stop; the daemon then
//! programs each peer again as it learns its path, and adopted peers it has
//! not programmed within [`ADOPTED_GRACE`] are removed.
//!
//! [`External::via_daemon`] counts the WireGuard transport-data datagrams
//! that went through the daemon (both ways): zero on direct paths when the
//! kernel owns the port.
//!
//! **Handshake attribution is gated** ([`HandshakeGate`]): a handshake
//! initiation is decrypted (one X25519) to learn its sender only after its
//! mac1 checks (keyed by our public key, as WireGuard does), within the
//! node's handshake rate (beyond it the sender must first echo a cookie
//! for its address: the WireGuard cookie reply, sent from here) and within
//! a per-source-address budget; otherwise it is attributed by its source
//! address alone or dropped, and counted by reason
//! ([`HandshakeDrops`], in [`External::dropped`]).

use super::kernel_port::PortShare;
use super::netns::Netns;
use super::session_watch::{Sample, SessionWatch};
use super::udp;
use super::{
    BackendKind, DataPlaneError, HANDSHAKE_RATE_LIMIT, InterfaceConfig, Link, Outgoing, PeerConfig,
    PeerStats, netlink::Netlink,
};
use crate::keys::PublicKey;
use crate::names::limit::RateLimiter as SourceLimiter;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

struct ProxyPeer {
    key: PublicKey,
    sock: Arc<UdpSocket>,
    endpoint: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
    rx_bytes: Arc<AtomicU64>,
    tx_bytes: Arc<AtomicU64>,
    /// Transport-data datagrams of this peer handed to WireGuard.
    fed: AtomicU64,
    /// The allowed IPs WireGuard was last given for this peer.
    allowed_ips: Mutex<Vec<IpNet>>,
}

impl Drop for ProxyPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The external backend.
pub struct External {
    backend: Backend,
    iface: InterfaceName,
    link: Link,
    /// Where WireGuard listens, seen from loopback.
    wg_addr: SocketAddr,
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    socket: Arc<UdpSocket>,
    outgoing: mpsc::Sender<Outgoing>,
    peers: RwLock<HashMap<PublicKey, Arc<ProxyPeer>>>,
    by_endpoint: RwLock<HashMap<SocketAddr, PublicKey>>,
    runtime: tokio::runtime::Handle,
    /// The wireguard-go process we started, if any.
    started_pid: Option<i32>,
    /// Where sockets and netlink requests must be made.
    netns: Netns,
    /// The nftables rules when WireGuard owns the public port.
    share: Mutex<Option<PortShare>>,
    /// WireGuard transport-data datagrams through the daemon (both ways).
    via_daemon: Arc<AtomicU64>,
    /// Peers of an adopted interface not programmed again yet.
    adopted: Mutex<Option<Adopted>>,
    /// What WireGuard had received from each peer at the last
    /// [`External::direct_receipts`], and when that was.
    receipts: Mutex<(Option<std::time::Instant>, HashMap<PublicKey, u64>)>,
    /// Proxied peers whose data WireGuard stopped opening.
    watch: Mutex<SessionWatch>,
    /// Peers reset by the watch.
    resets: AtomicU64,
    /// What a handshake initiation must pass before it is decrypted.
    gate: HandshakeGate,
    destroyed: bool,
}

// Handshake initiations decrypted per second (all sources) before the
// senders must echo a cookie first: `HANDSHAKE_RATE_LIMIT`, as the
// embedded backend.
/// Handshake initiations decrypted per second from one source address,
/// and at once.
const HANDSHAKES_PER_SOURCE: u32 = 10;
const HANDSHAKE_SOURCE_BURST: u32 = 20;
/// Source addresses whose handshake budget is remembered.
const HANDSHAKE_SOURCES: usize = 4_096;

/// Handshake initiations not decrypted, by reason.
#[derive(Debug, Default)]
pub(crate) struct HandshakeDrops {
    /// mac1 wrong: not made for our key (garbage, or another interface).
    pub bad_mac1: AtomicU64,
    /// Over the node's rate: a cookie reply went back instead.
    pub cookie_sent: AtomicU64,
    /// Over its source address's budget (and not from a known endpoint).
    pub source_limited: AtomicU64,
    /// Decrypted, but not from a peer of ours, or not decryptable.
    pub unknown_sender: AtomicU64,
}

impl HandshakeDrops {
    fn total(&self) -> u64 {
        [
            &self.bad_mac1,
            &self.cookie_sent,
            &self.source_limited,
            &self.unknown_sender,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// The checks in front of the X25519 of a handshake initiation: mac1 and
/// the cookie round trip under load (boringtun's rate limiter, keyed by
/// our public key), then a per-source budget.
struct HandshakeGate {
    macs: RateLimiter,
    per_source: Mutex<SourceLimiter>,
    drops: HandshakeDrops,
}

/// What the gate says of a handshake initiation.
enum GateVerdict {
    /// Decrypt it.
    Open,
    /// Send this cookie reply back, decrypt nothing.
    Cookie(Vec<u8>),
    /// Its source spent its budget: attribute it by address only.
    ByAddress,
    /// Not for us: drop.
    Drop,
}

impl HandshakeGate {
    fn new(public: &x25519::PublicKey) -> Self {
        HandshakeGate {
            macs: RateLimiter::new(public, HANDSHAKE_RATE_LIMIT),
            per_source: Mutex::new(SourceLimiter::new(
                HANDSHAKES_PER_SOURCE,
                HANDSHAKE_SOURCE_BURST,
                HANDSHAKE_SOURCES,
                std::time::Instant::now(),
            )),
            drops: HandshakeDrops::default(),
        }
    }

    fn check(&self, from: SocketAddr, datagram: &[u8]) -> GateVerdict {
        // Resets the node's count once a second at most (it checks).
        self.macs.reset_count();
        let mut buf = [0u8; 64];
        match self.macs.verify_packet(Some(from.ip()), datagram, &mut buf) {
            Ok(Packet::HandshakeInit(_)) => {}
            Ok(_) => return GateVerdict::Drop,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.drops.cookie_sent.fetch_add(1, Ordering::Relaxed);
                return GateVerdict::Cookie(cookie.to_vec());
            }
            Err(_) => {
                self.drops.bad_mac1.fetch_add(1, Ordering::Relaxed);
                return GateVerdict::Drop;
            }
        }
        let allowed = self
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(from.ip(), std::time::Instant::now());
        if allowed {
            GateVerdict::Open
        } else {
            GateVerdict::ByAddress
        }
    }
}

/// Whether a datagram has the type and size of a handshake initiation.
fn is_handshake_init(datagram: &[u8]) -> bool {
    datagram.len() == HANDSHAKE_INIT_LEN && datagram.first() == Some(&1)
}

const HANDSHAKE_INIT_LEN: usize = 148;

/// How often [`External::direct_receipts`] asks WireGuard.
const RECEIPTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long adopted peers may wait for the daemon to program them again.
pub const ADOPTED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The peers a previous daemon left on an adopted interface, with the
/// allowed IPs each still routes.
struct Adopted {
    since: std::time::Instant,
    unclaimed: HashMap<PublicKey, Vec<IpNet>>,
}

/// The peers of a kernel WireGuard interface `iface` that already runs with
/// `key` (a previous daemon crashed), with their allowed IPs; `None` if
/// there is no such interface.
fn running_peers(iface: &InterfaceName, key: &[u8; 32]) -> Option<HashMap<PublicKey, Vec<IpNet>>> {
    let device = Device::get(iface, Backend::Kernel).ok()?;
    (device.private_key.as_ref().map(|k| &k.0) == Some(key)).then(|| {
        device
            .peers
            .iter()
            .map(|p| {
                let ips = p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                    .collect();
                (PublicKey(p.config.public_key.0), ips)
            })
            .collect()
    })
}

/// Whether two lists of allowed IPs route the same (order aside).
fn same_ips(a: &[IpNet], b: &[IpNet]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// WireGuard's message type 4 (transport data), as opposed to handshakes,
/// cookies.
fn is_transport_data(datagram: &[u8]) -> bool {
    datagram.first() == Some(&4)
}

fn kind_of(backend: Backend) -> BackendKind {
    match backend {
        Backend::Kernel => BackendKind::Kernel,
        Backend::Userspace => BackendKind::Userspace,
    }
}

/// Reads the command line of a process as its NUL-separated arguments.
fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn is_wireguard_go_for(args: &[String], iface: &str) -> bool {
    args.len() >= 2
        && Path::new(&args[0])
            .file_name()
            .is_some_and(|n| n == "wireguard-go")
        && args.last().is_some_and(|a| a == iface)
}

/// The wireguard-go process serving `iface` (its command line ends in it).
fn find_wireguard_go(iface: &str) -> Option<i32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .find(|pid| cmdline(*pid).is_some_and(|args| is_wireguard_go_for(&args, iface)))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so that a dual-stack socket's view of
/// a source matches the endpoint the daemon configured.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn uapi_socket_exists(iface: &str) -> bool {
    ["/var/run/wireguard", "/run/wireguard"]
        .iter()
        .any(|d| Path::new(d).join(format!("{iface}.sock")).exists())
}

impl External {
    /// Creates the interface. `public_port` `Some(p)`: kernel WireGuard
    /// listens on `p` (0: any free port) and shares it with `socket` (bound
    /// elsewhere) through nftables; `None`: loopback proxies for every peer.
    pub(crate) async fn create(
        backend: Backend,
        cfg: InterfaceConfig,
        socket: Arc<UdpSocket>,
        outgoing: mpsc::Sender<Outgoing>,
        public_port: Option<u16>,
    ) -> Result<External, DataPlaneError> {
        let kind = kind_of(backend);
        let wg_err = |source: io::Error| DataPlaneError::WireGuard {
            backend: kind,
            iface: cfg.name.clone(),
            source,
        };
        let iface: InterfaceName = cfg
            .name
            .parse()
            .map_err(|_| DataPlaneError::InvalidName(cfg.name.clone()))?;
        let netns = Netns::current().map_err(wg_err)?;
        let ours_to_start = backend == Backend::Userspace && !uapi_socket_exists(&cfg.name);
        // Only an interface that owned the port can be adopted (proxies die
        // with their daemon).
        let adopted = match (backend, public_port) {
            (Backend::Kernel, Some(_)) => running_peers(&iface, cfg.private_key.as_bytes()),
            _ => None,
        };
        // Creates the link (kernel) or starts wireguard-go (userspace) when
        // missing, sets the key and the port (0: random, once up); an
        // adopted interface keeps its peers and, for port 0, its port.
        let mut update = DeviceUpdate::new().set_private_key(Key(*cfg.private_key.as_bytes()));
        match (&adopted, public_port) {
            (Some(_), Some(0)) => {}
            (_, port) => update = update.set_listen_port(port.unwrap_or(0)),
        }
        if adopted.is_none() {
            update = update.replace_peers();
        }
        update.apply(&iface, backend).map_err(wg_err)?;
        if let Some(peers) = &adopted {
            tracing::info!(
                iface = cfg.name,
                peers = peers.len(),
                "adopted the running WireGuard interface and its peers"
            );
        }
        let started_pid = if ours_to_start {
            find_wireguard_go(&cfg.name)
        } else {
            None
        };
        let configured = async {
            // WireGuard binds its port when the link goes up: read it after.
            let netlink = Netlink::new()?;
            let link = Link::configure(netlink, &cfg).await?;
            let device = Device::get(&iface, backend).map_err(wg_err)?;
            let port = device.listen_port.filter(|p| *p != 0).ok_or_else(|| {
                wg_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "WireGuard reports no listen port",
                ))
            })?;
            let share = match public_port {
                Some(_) => {
                    let private = socket.local_addr().map_err(wg_err)?.port();
                    Some(PortShare::install(&netns, &cfg.name, port, private).map_err(wg_err)?)
                }
                None => None,
            };
            Ok::<_, DataPlaneError>((port, link, share))
        }
        .await;
        let (port, link, share) = match configured {
            Ok(r) => r,
            Err(e) => {
                // Take down what apply made.
                let cleanup = match backend {
                    Backend::Userspace => {
                        wireguard_control::backends::userspace::delete_interface(&iface)
                    }
                    Backend::Kernel => {
                        wireguard_control::backends::kernel::delete_interface(&iface)
                    }
                };
                if let Err(c) = cleanup {
                    tracing::debug!("cleanup after failed create: {c}");
                }
                if let Some(pid) = started_pid {
                    stop_process(pid, &cfg.name).await;
                }
                return Err(e);
            }
        };
        let private = x25519::StaticSecret::from(*cfg.private_key.as_bytes());
        let public = x25519::PublicKey::from(&private);
        tracing::info!(
            iface = cfg.name,
            %kind,
            port,
            owns_public_port = share.is_some(),
            "external WireGuard up"
        );
        Ok(External {
            backend,
            iface,
            link,
            wg_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            private,
            public,
            socket,
            outgoing,
            peers: RwLock::new(HashMap::new()),
            by_endpoint: RwLock::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            started_pid,
            netns,
            share: Mutex::new(share),
            via_daemon: Arc::new(AtomicU64::new(0)),
            adopted: Mutex::new(adopted.map(|unclaimed| Adopted {
                since: std::time::Instant::now(),
                unclaimed,
            })),
            receipts: Mutex::new((None, HashMap::new())),
            watch: Mutex::new(SessionWatch::default()),
            resets: AtomicU64::new(0),
            gate: HandshakeGate::new(&public),
            destroyed: false,
        })
    }

    /// Owning the port: the peers WireGuard received from at a direct
    /// (non-loopback) endpoint since the previous call, with that endpoint.
    /// At most once per [`RECEIPTS_EVERY`] (else empty); always empty with
    /// proxies (the daemon sees every datagram then). On the way, peers
    /// whose session WireGuard cannot open are reset ([`SessionWatch`]).
    pub(crate) fn direct_receipts(&self) -> Vec<(PublicKey, SocketAddr)> {
        let mut receipts = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if receipts
            .0
            .is_some_and(|t| now.duration_since(t) < RECEIPTS_EVERY)
        {
            return Vec::new();
        }
        receipts.0 = Some(now);
        let device = match self.device() {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(iface = self.link.name(), "WireGuard receipts: {e}");
                return Vec::new();
            }
        };
        self.watch_sessions(now, &device);
        if !self.owns_public_port() {
            return Vec::new();
        }
        let mut seen = HashMap::with_capacity(device.peers.len());
        let mut out = Vec::new();
        for info in &device.peers {
            let key = PublicKey(info.config.public_key.0);
            let rx = info.stats.rx_bytes;
            seen.insert(key, rx);
            let grew = receipts.1.get(&key).is_some_and(|before| rx > *before);
            if let Some(ep) = info.config.endpoint
                && grew
                && !ep.ip().is_loopback()
            {
                out.push((key, canonical(ep)));
            }
        }
        receipts.1 = seen;
        out
    }

    /// Feeds the session watch what went into WireGuard for each proxied
    /// peer and what WireGuard opened; removes and adds again the peers it
    /// names, so that a fresh handshake replaces the broken session.
    fn watch_sessions(&self, now: std::time::Instant, device: &Device) {
        let samples: Vec<Sample> = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            device
                .peers
                .iter()
                .filter_map(|info| {
                    let key = PublicKey(info.config.public_key.0);
                    let proxy = peers.get(&key)?;
                    Some(Sample {
                        key,
                        fed: proxy.fed.load(Ordering::Relaxed),
                        accepted: info.stats.rx_bytes,
                    })
                })
                .collect()
        };
        let reset = self
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(now, &samples);
        for key in reset {
            let Some(info) = device.peers.iter().find(|i| i.config.public_key.0 == key.0) else {
                continue;
            };
            tracing::warn!(
                peer = ?key,
                "WireGuard opens none of this peer's data (a broken session): resetting the peer"
            );
            self.resets.fetch_add(1, Ordering::Relaxed);
            let remove = DeviceUpdate::new().remove_peer_by_key(&Key(key.0));
            let add = DeviceUpdate::new()
                .add_peer(PeerConfigBuilder::from_peer_config(info.config.clone()));
            let applied = self.netns.run(|| {
                remove.apply(&self.iface, self.backend)?;
                add.apply(&self.iface, self.backend)
            });
            if let Err(e) = applied.and_then(|r| r) {
                tracing::warn!(peer = ?key, "cannot reset the peer: {e}");
            }
        }
    }

    /// Peers the session watch reset.
    pub(crate) fn session_resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// The public port WireGuard listens on, when it owns it.
    pub(crate) fn public_port(&self) -> Option<u16> {
        self.share
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(PortShare::public_port)
    }

    fn owns_public_port(&self) -> bool {
        self.public_port().is_some()
    }

    /// WireGuard transport-data datagrams that went through the daemon.
    pub(crate) fn via_daemon(&self) -> u64 {
        self.via_daemon.load(Ordering::Relaxed)
    }

    /// Whether `key` is an adopted peer not programmed again yet.
    fn adopted_unclaimed(&self, key: &PublicKey) -> bool {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|a| a.unclaimed.contains_key(key))
    }

    /// The allowed IPs an adopted peer not programmed again yet still has.
    fn adopted_ips(&self, key: &PublicKey) -> Option<Vec<IpNet>> {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|a| a.unclaimed.get(key).cloned())
    }

    /// `key` is programmed (or removed) now; once the grace is over, the
    /// adopted peers never programmed again are removed from WireGuard.
    fn claim_adopted(&self, key: &PublicKey) {
        let stale = {
            let mut adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
            let Some(a) = adopted.as_mut() else {
                return;
            };
            a.unclaimed.remove(key);
            if a.since.elapsed() < ADOPTED_GRACE && !a.unclaimed.is_empty() {
                return;
            }
            adopted
                .take()
                .map(|a| a.unclaimed.into_keys().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        for key in stale {
            tracing::info!(peer = ?key, "removing an adopted peer the network no longer has");
            let update = DeviceUpdate::new().remove_peer_by_key(&Key(key.0));
            if let Err(e) = self
                .netns
                .run(|| update.apply(&self.iface, self.backend))
                .and_then(|r| r)
            {
                tracing::warn!(peer = ?key, "cannot remove an adopted peer: {e}");
            }
        }
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    fn wg_err(&self, source: io::Error) -> DataPlaneError {
        DataPlaneError::WireGuard {
            backend: kind_of(self.backend),
            iface: self.link.name().to_string(),
            source,
        }
    }

    fn new_proxy(&self, key: PublicKey, endpoint: Option<SocketAddr>) -> io::Result<ProxyPeer> {
        let std_sock = self
            .netns
            .run(|| std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))??;
        std_sock.set_nonblocking(true)?;
        let _enter = self.runtime.enter();
        let sock = Arc::new(UdpSocket::from_std(std_sock)?);
        let endpoint = Arc::new(Mutex::new(endpoint));
        let rx_bytes = Arc::new(AtomicU64::new(0));
        let tx_bytes = Arc::new(AtomicU64::new(0));
        let task = self.runtime.spawn(proxy_loop(
            key,
            Arc::clone(&sock),
            self.wg_addr,
            Arc::clone(&endpoint),
            Arc::clone(&self.socket),
            self.outgoing.clone(),
            ProxyCounters {
                tx_bytes: Arc::clone(&tx_bytes),
                via_daemon: Arc::clone(&self.via_daemon),
            },
        ));
        Ok(ProxyPeer {
            key,
            sock,
            endpoint,
            task,
            rx_bytes,
            tx_bytes,
            fed: AtomicU64::new(0),
            allowed_ips: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn set_peer(&self, cfg: PeerConfig) -> Result<(), DataPlaneError> {
        let adopted_ips = self.adopted_ips(&cfg.key);
        self.claim_adopted(&cfg.key);
        let existing = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cfg.key)
            .cloned();
        let known = existing.is_some();
        let proxy = match existing {
            Some(p) => {
                *p.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = cfg.endpoint;
                p
            }
            None => Arc::new(
                self.new_proxy(cfg.key, cfg.endpoint)
                    .map_err(DataPlaneError::Proxy)?,
            ),
        };
        let proxy_addr = proxy.sock.local_addr().map_err(DataPlaneError::Proxy)?;
        // Owning the port, WireGuard talks to a direct peer itself.
        let wg_endpoint = match cfg.endpoint {
            Some(addr) if self.owns_public_port() => canonical(addr),
            _ => proxy_addr,
        };
        let mut peer = PeerConfigBuilder::new(&Key(cfg.key.0))
            .set_endpoint(wg_endpoint)
            .set_persistent_keepalive_interval(cfg.keepalive.unwrap_or(0));
        // A path change (relayed to direct, a new endpoint), or a peer of an
        // adopted interface programmed again, leaves the allowed IPs alone:
        // replacing them removes and re-adds them, and kernel WireGuard
        // drops what it routes in between.
        let unchanged = if known {
            *proxy.allowed_ips.lock().unwrap_or_else(|e| e.into_inner()) == cfg.allowed_ips
        } else {
            adopted_ips.is_some_and(|ips| same_ips(&ips, &cfg.allowed_ips))
        };
        if !unchanged {
            peer = peer.replace_allowed_ips();
            for net in &cfg.allowed_ips {
                peer = peer.add_allowed_ip(net.addr(), net.prefix_len());
            }
        }
        let update = DeviceUpdate::new().add_peer(peer);
        self.netns
            .run(|| update.apply(&self.iface, self.backend))
            .and_then(|r| r)
            .map_err(|e| self.wg_err(e))?;
        proxy
            .allowed_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone_from(&cfg.allowed_ips);
        {
            let mut by_ep = self.by_endpoint.write().unwrap_or_else(|e| e.into_inner());
            by_ep.retain(|_, k| *k != cfg.key);
            if let Some(ep) = cfg.endpoint {
                by_ep.insert(canonical(ep), cfg.key);
            }
        }
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cfg.key, proxy);
        Ok(())
    }

    pub(crate) fn remove_peer(&self, key: &PublicKey) -> Result<(), DataPlaneError> {
        let removed = self
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let adopted = self.adopted_unclaimed(key);
        self.claim_adopted(key);
        if removed.is_none() && !adopted {
            return Err(DataPlaneError::NoSuchPeer(*key));
        }
        self.by_endpoint
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, k| k != key);
        let update = DeviceUpdate::new().remove_peer_by_key(&Key(key.0));
        self.netns
            .run(|| update.apply(&self.iface, self.backend))
            .and_then(|r| r)
            .map_err(|e| self.wg_err(e))
    }

    /// The interface as WireGuard reports it now, read in its namespace.
    fn device(&self) -> io::Result<Device> {
        self.netns
            .run(|| Device::get(&self.iface, self.backend))
            .and_then(|r| r)
    }

    pub(crate) fn stats(&self) -> Vec<PeerStats> {
        let device = match self.device() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(iface = self.link.name(), "WireGuard stats: {e}");
                return Vec::new();
            }
        };
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        // Owning the port, only WireGuard sees every datagram.
        let wg_counts = self.owns_public_port();
        let mut out: Vec<PeerStats> = device
            .peers
            .iter()
            .filter_map(|info| {
                let key = PublicKey(info.config.public_key.0);
                let proxy = peers.get(&key)?;
                Some(PeerStats {
                    key,
                    endpoint: *proxy.endpoint.lock().unwrap_or_else(|e| e.into_inner()),
                    last_handshake: info.stats.last_handshake_time,
                    rx_bytes: if wg_counts {
                        info.stats.rx_bytes
                    } else {
                        proxy.rx_bytes.load(Ordering::Relaxed)
                    },
                    tx_bytes: if wg_counts {
                        info.stats.tx_bytes
                    } else {
                        proxy.tx_bytes.load(Ordering::Relaxed)
                    },
                })
            })
            .collect();
        out.sort_by_key(|s| s.key);
        out
    }

    /// Which peer sent a direct datagram: a handshake initiation that
    /// passes the [`HandshakeGate`] names its sender (decrypted with our
    /// key); anything else by source address.
    fn attribute(&self, from: SocketAddr, datagram: &[u8]) -> Option<PublicKey> {
        let from = canonical(from);
        if is_handshake_init(datagram) {
            match self.gate.check(from, datagram) {
                GateVerdict::Open => return self.open_handshake(from, datagram),
                GateVerdict::Cookie(reply) => {
                    if let Err(e) = udp::send_now(&self.socket, &reply, from) {
                        tracing::debug!(%from, "cookie reply: {e}");
                    }
                    return None;
                }
                GateVerdict::Drop => return None,
                GateVerdict::ByAddress => {
                    let known = self.by_endpoint_of(from);
                    if known.is_none() {
                        self.gate
                            .drops
                            .source_limited
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return known;
                }
            }
        }
        self.by_endpoint_of(from)
    }

    fn by_endpoint_of(&self, from: SocketAddr) -> Option<PublicKey> {
        self.by_endpoint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .copied()
    }

    /// Decrypts the sender of a handshake initiation (one X25519); learns
    /// its address when it is one of our peers.
    fn open_handshake(&self, from: SocketAddr, datagram: &[u8]) -> Option<PublicKey> {
        let hh = match boringtun::noise::Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(init)) => {
                parse_handshake_anon(&self.private, &self.public, &init).ok()
            }
            _ => None,
        };
        let Some(hh) = hh else {
            self.gate
                .drops
                .unknown_sender
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let key = PublicKey(hh.peer_static_public);
        let known = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key);
        if !known {
            self.gate
                .drops
                .unknown_sender
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.by_endpoint
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(from, key);
        Some(key)
    }

    /// Handshake initiations dropped undecrypted or unattributed (the
    /// cookie replies sent instead included); by reason in
    /// [`HandshakeDrops`].
    pub(crate) fn dropped(&self) -> u64 {
        self.gate.drops.total()
    }

    pub(crate) fn receive(&self, from: SocketAddr, datagram: &[u8], from_key: Option<PublicKey>) {
        let Some(key) = from_key.or_else(|| self.attribute(from, datagram)) else {
            tracing::trace!(%from, "datagram from no known peer");
            return;
        };
        let proxy = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let Some(proxy) = proxy else {
            tracing::trace!(peer = ?key, "datagram for a removed peer");
            return;
        };
        proxy
            .rx_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        if is_transport_data(datagram) {
            self.via_daemon.fetch_add(1, Ordering::Relaxed);
            proxy.fed.fetch_add(1, Ordering::Relaxed);
        }
        tracing::trace!(peer = ?key, %from, len = datagram.len(), "to WireGuard");
        if let Err(e) = udp::send_now(&proxy.sock, datagram, self.wg_addr) {
            tracing::debug!(peer = ?proxy.key, "to WireGuard: {e}");
        }
    }

    fn remove_port_share(&self) {
        if let Some(share) = self
            .share
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            share.remove(&self.netns);
        }
    }

    /// Drops our side (proxies, tasks) and leaves the interface, its peers
    /// and the nftables table as they are.
    pub(crate) fn leave_running(mut self) {
        self.destroyed = true;
    }

    pub(crate) async fn destroy(mut self) -> Result<(), DataPlaneError> {
        self.destroyed = true;
        self.remove_port_share();
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if self.backend == Backend::Userspace {
            // Removing the UAPI socket makes wireguard-go exit; make sure.
            if let Err(e) = wireguard_control::backends::userspace::delete_interface(&self.iface) {
                tracing::debug!("removing UAPI socket: {e}");
            }
            if let Some(pid) = self.started_pid {
                stop_process(pid, self.link.name()).await;
            }
        }
        self.link.delete().await
    }
}

impl Drop for External {
    /// Dropped without `destroy`: still take down what we made, without
    /// waiting (wireguard-go exits once its UAPI socket is gone, and takes
    /// its interface with it; a kernel link is deleted).
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        self.remove_port_share();
        let result = match self.backend {
            Backend::Userspace => {
                wireguard_control::backends::userspace::delete_interface(&self.iface)
            }
            Backend::Kernel => self
                .netns
                .run(|| wireguard_control::backends::kernel::delete_interface(&self.iface))
                .and_then(|r| r),
        };
        if let Err(e) = result {
            tracing::debug!(iface = self.link.name(), "cleanup on drop: {e}");
        }
    }
}

/// Stops the wireguard-go we started once its socket is gone: it should
/// exit by itself; else SIGTERM, then SIGKILL.
async fn stop_process(pid: i32, iface: &str) {
    let ours = || cmdline(pid).is_some_and(|a| is_wireguard_go_for(&a, iface));
    let wait_exit = |ms: u64| async move {
        for _ in 0..ms / 20 {
            if !ours() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        !ours()
    };
    for sig in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
        if let Some(sig) = sig {
            // SAFETY: plain syscall; the pid was just checked to be the
            // wireguard-go serving our interface.
            unsafe {
                libc::kill(pid, sig);
            }
        }
        if wait_exit(1000).await {
            return;
        }
    }
    tracing::warn!(pid, "wireguard-go did not exit");
}

/// What a proxy counts: the WireGuard bytes it sent for its peer, and the
/// transport-data datagrams through the daemon (shared by all proxies).
struct ProxyCounters {
    tx_bytes: Arc<AtomicU64>,
    via_daemon: Arc<AtomicU64>,
}

/// Datagrams WireGuard sends to a peer's proxy go to the peer: directly
/// through the shared socket, or to the daemon for relaying.
async fn proxy_loop(
    key: PublicKey,
    sock: Arc<UdpSocket>,
    wg_addr: SocketAddr,
    endpoint: Arc<Mutex<Option<SocketAddr>>>,
    socket: Arc<UdpSocket>,
    outgoing: mpsc::Sender<Outgoing>,
    counters: ProxyCounters,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = ?key, "proxy receive: {e}");
                continue;
            }
        };
        if src != wg_addr {
            tracing::debug!(peer = ?key, %src, "proxy: datagram not from WireGuard");
            continue;
        }
        let datagram = &buf[..n];
        tracing::trace!(peer = ?key, len = n, "from WireGuard");
        counters.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if is_transport_data(datagram) {
            counters.via_daemon.fetch_add(1, Ordering::Relaxed);
        }
        let dest = *endpoint.lock().unwrap_or_else(|e| e.into_inner());
        match dest {
            Some(addr) => {
                if let Err(e) = udp::send_one(&socket, datagram, addr).await {
                    tracing::debug!(peer = ?key, %addr, "send: {e}");
                }
            }
            None => {
                let out = Outgoing::one(key, datagram.to_vec());
                if outgoing.send(out).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(seed: u8) -> x25519::StaticSecret {
        x25519::StaticSecret::from([seed; 32])
    }

    /// A handshake initiation `from` makes for `to` (a real one: mac1 right).
    fn initiation(from: u8, to: &x25519::PublicKey) -> Vec<u8> {
        let mut t = boringtun::noise::Tunn::new(secret(from), *to, None, None, 1, None);
        let mut buf = vec![0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, last], 51820))
    }

    #[test]
    fn garbage_initiations_fail_mac1_before_any_x25519() {
        let ours = x25519::PublicKey::from(&secret(1));
        let gate = HandshakeGate::new(&ours);
        let mut garbage = vec![0x5a; HANDSHAKE_INIT_LEN];
        garbage[..4].copy_from_slice(&[1, 0, 0, 0]);
        assert!(is_handshake_init(&garbage));
        for _ in 0..100 {
            assert!(matches!(gate.check(addr(9), &garbage), GateVerdict::Drop));
        }
        assert_eq!(gate.drops.bad_mac1.load(Ordering::Relaxed), 100);
        // One made for another key fails mac1 too.
        let other = x25519::PublicKey::from(&secret(3));
        let elsewhere = initiation(2, &other);
        assert!(matches!(gate.check(addr(9), &elsewhere), GateVerdict::Drop));
        assert_eq!(gate.drops.bad_mac1.load(Ordering::Relaxed), 101);
    }

    #[test]
    fn one_source_gets_its_budget_of_decryptions_then_is_known_by_address_only() {
        let ours = x25519::PublicKey::from(&secret(1));
        let gate = HandshakeGate::new(&ours);
        let init = initiation(2, &ours);
        let opened = (0..100)
            .filter(|_| matches!(gate.check(addr(7), &init), GateVerdict::Open))
            .count();
        assert_eq!(opened, HANDSHAKE_SOURCE_BURST as usize);
        // Another source is not affected.
        assert!(matches!(gate.check(addr(8), &init), GateVerdict::Open));
    }

    #[test]
    fn over_the_node_rate_senders_get_a_cookie_reply_first() {
        let ours = x25519::PublicKey::from(&secret(1));
        let gate = HandshakeGate::new(&ours);
        let init = initiation(2, &ours);
        let mut cookies = 0;
        for i in 0..(HANDSHAKE_RATE_LIMIT + 50) {
            if let GateVerdict::Cookie(reply) = gate.check(addr((i % 250) as u8), &init) {
                assert_eq!(reply.len(), 64, "a WireGuard cookie reply");
                cookies += 1;
            }
        }
        assert_eq!(cookies, 50);
    }
}
