//! The data plane: WireGuard between this node and its peers, behind one
//! interface whatever the backend.
//!
//! The node has a single public UDP port. WireHub control messages (first
//! byte `0xFF`, relay formats `0xFE`/`0xFD`) and WireGuard datagrams (first
//! byte 1..=4) share it, so NAT mappings are shared and relays can carry
//! WireGuard. Usually the daemon's socket holds it; kernel WireGuard holds it
//! itself where nftables can hand WireHub's datagrams to the daemon's
//! private socket ([`kernel_port`], [`DataPlane::create_with`]), and then
//! direct WireGuard traffic never enters the daemon. The data plane never
//! reads the daemon's socket:
//!
//! - the daemon hands every WireGuard datagram it receives to
//!   [`DataPlane::receive`], naming the source key when a relay delivered it;
//! - the data plane sends datagrams for a peer with a direct path
//!   ([`PeerConfig::endpoint`] `Some`) itself, through the shared socket
//!   (`try_send_to`, the fast path), and hands datagrams for a relayed peer
//!   (`endpoint` `None`) to the daemon as [`Outgoing`] values on the channel
//!   returned by [`DataPlane::create`].
//!
//! Backends ([`BackendKind`]):
//! - `Embedded`: boringtun's `noise::Tunn` per peer, our own TUN device, our
//!   own timers. The default where the kernel has no WireGuard.
//! - `Kernel` / `Userspace`: an external WireGuard (the kernel module, or
//!   wireguard-go through its UAPI socket) programmed with wireguard-control.
//!   Kernel WireGuard owning the public port: a direct peer's endpoint is its
//!   real address, a relayed peer's a per-peer proxy socket on 127.0.0.1
//!   that we own. Otherwise WireGuard listens on a port used only over
//!   loopback and every peer's endpoint is its proxy, so the daemon's socket
//!   stays the only public port.
//!
//! Interface addresses, MTU, link state and routes go through rtnetlink.
//! Everything that touches the kernel happens in the network namespace of
//! the thread that calls [`DataPlane::create`].

pub mod embedded;
pub mod external;
pub mod kernel_port;
pub mod netlink;
pub mod netns;
pub mod offload;
pub mod pmtu;
pub mod relay_fast;
pub mod session_watch;
pub mod table;
pub mod tun;
pub mod udp;

use crate::keys::{PrivateKey, PublicKey};
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

pub use netlink::NetlinkError;
pub use wirehub_core::dataplane::{
    HANDSHAKE_RATE_LIMIT, Outgoing, PeerConfig, PeerStats, yields_to_crossing_initiation,
};

/// Default MTU of the overlay interface (WireGuard's usual value).
pub const DEFAULT_MTU: u32 = 1420;

/// How many `Outgoing` datagrams may wait for the daemon.
pub const OUTGOING_CAPACITY: usize = 4096;

/// Whether a datagram on the shared socket is WireGuard's (message types
/// 1..=4, as opposed to WireHub control messages, which start with 0xFF).
pub fn is_wireguard_datagram(datagram: &[u8]) -> bool {
    datagram.len() >= 4 && matches!(datagram[0], 1..=4)
}

/// Which WireGuard implementation carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// Kernel WireGuard if the module is there, else `Embedded`.
    #[default]
    Auto,
    /// boringtun's `Tunn` and our own TUN device, in this process.
    Embedded,
    /// The kernel module, through netlink (wireguard-control).
    Kernel,
    /// An external userspace WireGuard (wireguard-go) through its UAPI
    /// socket (wireguard-control); started if its socket is missing.
    Userspace,
}

impl BackendKind {
    /// Resolves `Auto`: `Kernel` if a WireGuard link can be created in the
    /// current network namespace, else `Embedded`. Other kinds are returned
    /// as they are. Must run inside a tokio runtime.
    pub async fn resolve(self) -> BackendKind {
        match self {
            BackendKind::Auto => match netlink::Netlink::new() {
                Ok(nl) if nl.kernel_wireguard_available().await => BackendKind::Kernel,
                _ => BackendKind::Embedded,
            },
            other => other,
        }
    }

    /// Whether this backend, resolved, takes the node's public UDP port
    /// itself: kernel WireGuard where nftables can share the port with the
    /// daemon (checked with a throwaway table). Then the daemon's socket
    /// binds a private port and [`DataPlane::create_with`] gets the public
    /// one.
    pub fn owns_public_port(self) -> bool {
        self == BackendKind::Kernel && kernel_port::available()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Embedded => "embedded",
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
        })
    }
}

impl FromStr for BackendKind {
    type Err = DataPlaneError;
    fn from_str(s: &str) -> Result<Self, DataPlaneError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendKind::Auto),
            "embedded" => Ok(BackendKind::Embedded),
            "kernel" => Ok(BackendKind::Kernel),
            "userspace" => Ok(BackendKind::Userspace),
            other => Err(DataPlaneError::UnknownBackend(other.to_string())),
        }
    }
}

/// The overlay interface.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    pub name: String,
    pub private_key: PrivateKey,
    /// Default [`DEFAULT_MTU`].
    pub mtu: u32,
    /// Addresses with their prefix, e.g. `10.0.42.2/24` and an `fd..::/64`
    /// address; the kernel adds the matching prefix routes.
    pub addresses: Vec<IpNet>,
    /// Extra routes into the interface.
    pub routes: Vec<IpNet>,
}

impl InterfaceConfig {
    /// A config with the default MTU and no addresses or routes.
    pub fn new(name: impl Into<String>, private_key: PrivateKey) -> Self {
        InterfaceConfig {
            name: name.into(),
            private_key,
            mtu: DEFAULT_MTU,
            addresses: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// Why the data plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("unknown data plane backend {0:?} (embedded, kernel, userspace, auto)")]
    UnknownBackend(String),
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/' or whitespace")]
    InvalidName(String),
    #[error("invalid MTU {0} (576..=65535)")]
    InvalidMtu(u32),
    #[error("cannot create TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("WireGuard ({backend}) on {iface}: {source}")]
    WireGuard {
        backend: BackendKind,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a local proxy socket: {0}")]
    Proxy(#[source] std::io::Error),
    #[error("no peer {0}")]
    NoSuchPeer(PublicKey),
    #[error("the data plane must be created inside a tokio runtime")]
    NoRuntime,
}

fn check_config(cfg: &InterfaceConfig) -> Result<(), DataPlaneError> {
    let n = &cfg.name;
    if n.is_empty()
        || n.len() > 15
        || n.contains('/')
        || n.contains('\0')
        || n.chars().any(char::is_whitespace)
        || n == "."
        || n == ".."
    {
        return Err(DataPlaneError::InvalidName(n.clone()));
    }
    if !(576..=65535).contains(&cfg.mtu) {
        return Err(DataPlaneError::InvalidMtu(cfg.mtu));
    }
    Ok(())
}

enum Backend {
    Embedded(embedded::Embedded),
    External(Box<external::External>),
}

/// A WireGuard interface and its peers.
pub struct DataPlane {
    backend: Backend,
    kind: BackendKind,
}

impl fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlane")
            .field("interface", &self.interface())
            .field("kind", &self.kind)
            .finish()
    }
}

impl DataPlane {
    /// Creates the interface (addresses, MTU, up, routes) in the calling
    /// thread's network namespace. `socket` is the daemon's public socket;
    /// the returned receiver yields datagrams for relayed peers.
    pub async fn create(
        kind: BackendKind,
        cfg: InterfaceConfig,
        socket: Arc<UdpSocket>,
    ) -> Result<(DataPlane, mpsc::Receiver<Outgoing>), DataPlaneError> {
        DataPlane::create_with(kind, cfg, socket, None).await
    }

    /// [`DataPlane::create`]; with `public_port` `Some(p)` and the `Kernel`
    /// backend, WireGuard listens on the public port `p` (0: any free one,
    /// see [`DataPlane::public_port`]) while `socket` is bound to a private
    /// port, and nftables hands WireHub's datagrams between them (see
    /// [`kernel_port`]). Other backends ignore `public_port`.
    pub async fn create_with(
        kind: BackendKind,
        cfg: InterfaceConfig,
        socket: Arc<UdpSocket>,
        public_port: Option<u16>,
    ) -> Result<(DataPlane, mpsc::Receiver<Outgoing>), DataPlaneError> {
        check_config(&cfg)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DataPlaneError::NoRuntime);
        }
        let kind = kind.resolve().await;
        let (tx, rx) = mpsc::channel(OUTGOING_CAPACITY);
        let backend = match kind {
            BackendKind::Embedded | BackendKind::Auto => {
                Backend::Embedded(embedded::Embedded::create(cfg, socket, tx).await?)
            }
            BackendKind::Kernel => Backend::External(Box::new(
                external::External::create(
                    wireguard_control::Backend::Kernel,
                    cfg,
                    socket,
                    tx,
                    public_port,
                )
                .await?,
            )),
            BackendKind::Userspace => Backend::External(Box::new(
                external::External::create(
                    wireguard_control::Backend::Userspace,
                    cfg,
                    socket,
                    tx,
                    None,
                )
                .await?,
            )),
        };
        tracing::info!(%kind, "data plane up");
        Ok((DataPlane { backend, kind }, rx))
    }

    /// The backend actually in use (`Auto` resolved).
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The public port, when WireGuard owns it (kernel with nftables).
    pub fn public_port(&self) -> Option<u16> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::External(b) => b.public_port(),
        }
    }

    /// Peers an external WireGuard owning the public port received from at
    /// a direct endpoint since the previous call (checked at most once a
    /// second; empty otherwise and for other backends): their direct path
    /// is alive even when their daemon does not answer (it restarts).
    pub fn direct_receipts(&self) -> Vec<(PublicKey, SocketAddr)> {
        match &self.backend {
            Backend::Embedded(_) => Vec::new(),
            Backend::External(b) => b.direct_receipts(),
        }
    }

    /// Handshake initiations left unanswered because ours to that peer
    /// crossed them ([`yields_to_crossing_initiation`]); `None` for the
    /// external backends, whose WireGuard answers every one.
    pub fn crossing_yielded(&self) -> Option<u64> {
        match &self.backend {
            Backend::Embedded(b) => Some(b.crossing_yielded()),
            Backend::External(_) => None,
        }
    }

    /// Peers an external WireGuard had reset because it opened none of
    /// their data (see [`session_watch`]); `None` for the embedded backend.
    pub fn session_resets(&self) -> Option<u64> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::External(b) => Some(b.session_resets()),
        }
    }

    /// WireGuard transport-data datagrams that went through the daemon
    /// (both ways) for an external WireGuard; `None` for the embedded
    /// backend, where the daemon is the WireGuard.
    pub fn wireguard_via_daemon(&self) -> Option<u64> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::External(b) => Some(b.via_daemon()),
        }
    }

    /// Adds a peer or updates one. Updating the endpoint, the allowed IPs or
    /// the keepalive keeps the running session.
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), DataPlaneError> {
        match &self.backend {
            Backend::Embedded(b) => b.set_peer(peer),
            Backend::External(b) => b.set_peer(peer),
        }
    }

    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), DataPlaneError> {
        match &self.backend {
            Backend::Embedded(b) => b.remove_peer(key),
            Backend::External(b) => b.remove_peer(key),
        }
    }

    /// A WireGuard datagram the daemon received from `from`. `from_key`:
    /// `None` for a datagram that came directly (the data plane attributes
    /// it by receiver index, handshake or source address), `Some(key)` for
    /// one a relay delivered from `key`.
    pub fn receive(&self, from: SocketAddr, datagram: &[u8], from_key: Option<PublicKey>) {
        match &self.backend {
            Backend::Embedded(b) => b.receive(from, datagram, from_key),
            Backend::External(b) => b.receive(from, datagram, from_key),
        }
    }

    /// WireGuard datagrams dropped on receive (malformed, unknown peer,
    /// failed authentication); the external backends report the handshake
    /// initiations they refused to attribute.
    pub fn dropped(&self) -> u64 {
        match &self.backend {
            Backend::Embedded(b) => b.dropped(),
            Backend::External(b) => b.dropped(),
        }
    }

    pub fn stats(&self) -> Vec<PeerStats> {
        match &self.backend {
            Backend::Embedded(b) => b.stats(),
            Backend::External(b) => b.stats(),
        }
    }

    /// Routes `net` into the interface (e.g. another node's pod CIDR).
    pub async fn add_route(&self, net: IpNet) -> Result<(), DataPlaneError> {
        match &self.backend {
            Backend::Embedded(b) => b.link().add_route(net).await,
            Backend::External(b) => b.link().add_route(net).await,
        }
    }

    pub async fn remove_route(&self, net: IpNet) -> Result<(), DataPlaneError> {
        match &self.backend {
            Backend::Embedded(b) => b.link().remove_route(net).await,
            Backend::External(b) => b.link().remove_route(net).await,
        }
    }

    /// Leaves a kernel interface that owns the public port running, with its
    /// peers, routes and nftables table, for the next daemon to adopt
    /// (returns `None`); any other data plane is handed back, to destroy.
    pub fn leave_running(self) -> Option<DataPlane> {
        match self.backend {
            Backend::External(b) if b.public_port().is_some() => {
                b.leave_running();
                tracing::info!("interface left running for the next daemon");
                None
            }
            backend => Some(DataPlane {
                backend,
                kind: self.kind,
            }),
        }
    }

    /// Removes the interface, its routes, its tasks and (for `Userspace`)
    /// the WireGuard process.
    pub async fn destroy(self) -> Result<(), DataPlaneError> {
        match self.backend {
            Backend::Embedded(b) => b.destroy().await,
            Backend::External(b) => b.destroy().await,
        }
    }

    pub fn interface(&self) -> &str {
        match &self.backend {
            Backend::Embedded(b) => b.link().name(),
            Backend::External(b) => b.link().name(),
        }
    }
}

/// The interface as the kernel sees it: index, netlink connection, the
/// routes we added. Shared by every backend.
pub(crate) struct Link {
    name: String,
    index: u32,
    netlink: netlink::Netlink,
    routes: std::sync::Mutex<Vec<IpNet>>,
}

impl Link {
    /// Configures an existing link: MTU, up, addresses, routes.
    pub(crate) async fn configure(
        netlink: netlink::Netlink,
        cfg: &InterfaceConfig,
    ) -> Result<Link, DataPlaneError> {
        let index = netlink.index(&cfg.name)?;
        netlink.set_up(index, cfg.mtu).await?;
        for a in &cfg.addresses {
            netlink.add_address(index, *a).await?;
        }
        let link = Link {
            name: cfg.name.clone(),
            index,
            netlink,
            routes: std::sync::Mutex::new(Vec::new()),
        };
        for r in &cfg.routes {
            link.add_route(*r).await?;
        }
        Ok(link)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn add_route(&self, net: IpNet) -> Result<(), DataPlaneError> {
        self.netlink.add_route(self.index, net).await?;
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains(&net) {
            routes.push(net);
        }
        Ok(())
    }

    pub(crate) async fn remove_route(&self, net: IpNet) -> Result<(), DataPlaneError> {
        self.netlink.remove_route(self.index, net).await?;
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| *r != net);
        Ok(())
    }

    /// Removes our routes and the link itself; a link already gone is fine.
    pub(crate) async fn delete(&self) -> Result<(), DataPlaneError> {
        let routes = std::mem::take(&mut *self.routes.lock().unwrap_or_else(|e| e.into_inner()));
        for r in routes {
            if let Err(e) = self.netlink.remove_route(self.index, r).await {
                tracing::debug!("removing route {r}: {e}");
            }
        }
        // Only if the name still points at our link (an external WireGuard
        // may have removed it already, and indices can be reused).
        if self.netlink.find_link(&self.name).await? == Some(self.index)
            && let Err(e) = self.netlink.delete_link(self.index).await
            && self.netlink.find_link(&self.name).await? == Some(self.index)
        {
            return Err(e.into());
        }
        Ok(())
    }
}
