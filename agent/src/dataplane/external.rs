//! External WireGuard: the kernel module (netlink) or a userspace
//! implementation such as wireguard-go (UAPI socket), both programmed with
//! wireguard-control.
//!
//! The external WireGuard owns a UDP port of its own, but the daemon's socket
//! must stay the node's only public port. So the WireGuard's port is used
//! over loopback only, and each peer's WireGuard endpoint is a proxy socket on
//! 127.0.0.1 that we own:
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

use super::netns::Netns;
use super::udp;
use super::{
    BackendKind, DataPlaneError, InterfaceConfig, Link, Outgoing, PeerConfig, PeerStats,
    netlink::Netlink,
};
use crate::keys::PublicKey;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519;
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
    destroyed: bool,
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
    pub(crate) async fn create(
        backend: Backend,
        cfg: InterfaceConfig,
        socket: Arc<UdpSocket>,
        outgoing: mpsc::Sender<Outgoing>,
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
        // Creates the link (kernel) or starts wireguard-go (userspace) when
        // missing, sets the key and a random port.
        DeviceUpdate::new()
            .set_private_key(Key(*cfg.private_key.as_bytes()))
            .set_listen_port(0)
            .replace_peers()
            .apply(&iface, backend)
            .map_err(wg_err)?;
        let started_pid = if ours_to_start {
            find_wireguard_go(&cfg.name)
        } else {
            None
        };
        let configured = async {
            let device = Device::get(&iface, backend).map_err(wg_err)?;
            let port = device.listen_port.filter(|p| *p != 0).ok_or_else(|| {
                wg_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "WireGuard reports no listen port",
                ))
            })?;
            let netlink = Netlink::new()?;
            let link = Link::configure(netlink, &cfg).await?;
            Ok::<_, DataPlaneError>((port, link))
        }
        .await;
        let (port, link) = match configured {
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
        tracing::info!(iface = cfg.name, %kind, port, "external WireGuard up");
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
            destroyed: false,
        })
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
            Arc::clone(&tx_bytes),
        ));
        Ok(ProxyPeer {
            key,
            sock,
            endpoint,
            task,
            rx_bytes,
            tx_bytes,
        })
    }

    pub(crate) fn set_peer(&self, cfg: PeerConfig) -> Result<(), DataPlaneError> {
        let existing = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cfg.key)
            .cloned();
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
        let mut peer = PeerConfigBuilder::new(&Key(cfg.key.0))
            .set_endpoint(proxy_addr)
            .set_persistent_keepalive_interval(cfg.keepalive.unwrap_or(0))
            .replace_allowed_ips();
        for net in &cfg.allowed_ips {
            peer = peer.add_allowed_ip(net.addr(), net.prefix_len());
        }
        let update = DeviceUpdate::new().add_peer(peer);
        self.netns
            .run(|| update.apply(&self.iface, self.backend))
            .and_then(|r| r)
            .map_err(|e| self.wg_err(e))?;
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
        if removed.is_none() {
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

    pub(crate) fn stats(&self) -> Vec<PeerStats> {
        let device = match self
            .netns
            .run(|| Device::get(&self.iface, self.backend))
            .and_then(|r| r)
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(iface = self.link.name(), "WireGuard stats: {e}");
                return Vec::new();
            }
        };
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
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
                    rx_bytes: proxy.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: proxy.tx_bytes.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by_key(|s| s.key);
        out
    }

    /// Which peer sent a direct datagram: a handshake initiation names its
    /// sender (decrypted with our key); anything else by source address.
    fn attribute(&self, from: SocketAddr, datagram: &[u8]) -> Option<PublicKey> {
        let from = canonical(from);
        if let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) {
            let hh = parse_handshake_anon(&self.private, &self.public, &init).ok()?;
            let key = PublicKey(hh.peer_static_public);
            let known = self
                .peers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key);
            if known {
                self.by_endpoint
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(from, key);
                return Some(key);
            }
            return None;
        }
        self.by_endpoint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .copied()
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
        tracing::trace!(peer = ?key, %from, len = datagram.len(), "to WireGuard");
        if let Err(e) = udp::send_now(&proxy.sock, datagram, self.wg_addr) {
            tracing::debug!(peer = ?proxy.key, "to WireGuard: {e}");
        }
    }

    pub(crate) async fn destroy(mut self) -> Result<(), DataPlaneError> {
        self.destroyed = true;
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

/// Datagrams WireGuard sends to a peer's proxy go to the peer: directly
/// through the shared socket, or to the daemon for relaying.
async fn proxy_loop(
    key: PublicKey,
    sock: Arc<UdpSocket>,
    wg_addr: SocketAddr,
    endpoint: Arc<Mutex<Option<SocketAddr>>>,
    socket: Arc<UdpSocket>,
    outgoing: mpsc::Sender<Outgoing>,
    tx_bytes: Arc<AtomicU64>,
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
        tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
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
