//! The daemon: the thin tokio shell around the node core ([`super::core`]).
//!
//! It owns the I/O and nothing else: the UDP socket shared by WireGuard and
//! the WireHub control protocol, the data plane (TUN or kernel WireGuard),
//! one timer, the control socket, signals, the UPnP/NAT-PMP task, the DNS
//! responder, the hosts file and CNI configuration, and name resolution —
//! spawned off the event loop, so a slow or dead DNS server never delays a
//! datagram. Every protocol decision is the core's: the shell feeds it
//! datagrams, timer expiry, requests, updates and resolved names with the
//! current time, and carries out what it returns (transmits, data-plane
//! operations, events).

pub use super::cni::CNI_CONFIG_NAME;
pub use super::core::AliasJoin;
use super::core::{
    DataplaneOp, DataplaneView, Event, Host, Node, NodeConfig, Now, Purpose, Reply, RequestId, Wire,
};
use super::launch::{Mode, UpOptions, load_spec};
use crate::config::{Endpoint, NetworkSpec};
use crate::control::server::{Call, ControlSocket};
use crate::control::{self, Request, Response};
use crate::dataplane::relay_fast::{self, FastPathHandle, HandOver};
use crate::dataplane::{DataPlane, InterfaceConfig, Outgoing, udp};
use crate::keys::{PrivateKey, PublicKey, RandomStream};
use crate::nat::upnp::{self, UpnpEvent};
use anyhow::Context;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Largest datagram read from the socket.
const RECV_BUFFER: usize = 65536;

/// Datagrams handled in a row before the loop's bookkeeping runs.
const BATCH: usize = 64;

/// How long a host name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often kernel WireGuard's receipts are read.
const RECEIPTS_EVERY: Duration = super::core::TICK;

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

/// Resolves an endpoint of the network file (a literal or a host name).
async fn resolve(e: &Endpoint) -> Option<SocketAddr> {
    if let Some(ip) = e.ip() {
        return Some(SocketAddr::new(ip, e.port));
    }
    let query = tokio::net::lookup_host((e.host.as_str(), e.port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, query).await {
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

/// The kernel's answers about this host's addresses.
struct SystemHost {
    interface: String,
    dual_stack: bool,
}

impl Host for SystemHost {
    fn local_ip_towards(&self, peer: SocketAddr) -> Option<IpAddr> {
        let any = match peer {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
        s.connect(peer).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    }

    fn global_ipv6(&self) -> Vec<std::net::Ipv6Addr> {
        match self.dual_stack {
            true => crate::nat::local::host_global_ipv6(&self.interface),
            false => Vec::new(),
        }
    }
}

/// The per-packet path of the shell: the socket and the data plane.
struct SocketWire<'a> {
    socket: &'a UdpSocket,
    gso: &'a udp::GsoSender,
    dataplane: Option<&'a DataPlane>,
}

impl Wire for SocketWire<'_> {
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize) {
        if let Err(e) = self
            .gso
            .try_send_segments(self.socket, datagrams, segment, to)
        {
            tracing::debug!(error = %e, %to, "data send failed");
        }
    }

    fn deliver(&mut self, from: SocketAddr, datagram: &[u8], peer: Option<PublicKey>) {
        if let Some(dp) = self.dataplane {
            dp.receive(from, datagram, peer);
        }
    }
}

/// The shell's state: I/O handles and the core.
struct Shell {
    node: Node,
    opts: UpOptions,
    socket: Arc<UdpSocket>,
    gso: udp::GsoSender,
    dataplane: Option<DataPlane>,
    /// Control requests the core answers later.
    replies: HashMap<RequestId, oneshot::Sender<Response>>,
    next_request: RequestId,
    joined: Option<oneshot::Sender<()>>,
    /// Host names resolved off the loop come back here.
    resolved_tx: mpsc::Sender<(Purpose, Option<SocketAddr>)>,
    /// The names the DNS responder answers from (updated on reload).
    names_tx: watch::Sender<crate::names::SharedResolver>,
    dns: Option<crate::names::DnsHandle>,
    /// The CNI configuration file this node wrote.
    cni_written: Option<PathBuf>,
    receipts_read: Instant,
    /// The relay fast path's threads, when this node runs them.
    fast_path: Option<FastPathHandle>,
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
    let has_interface = super::overlay::Overlay::new(&spec, public).has_interface();
    // Kernel WireGuard takes the public port itself where it can share it
    // (nftables): then our socket gets a private port.
    let backend = match has_interface {
        true => opts.backend.resolve().await,
        false => opts.backend,
    };
    let wg_owns_port = has_interface && backend.owns_public_port();
    let socket_port = if wg_owns_port { 0 } else { opts.listen_port };
    // A relaying node reads channel data on more sockets of its port, each
    // on a thread of its own (the relay fast path).
    let relay_threads = relay_fast::threads_wanted(
        opts.relay_mbit > 0,
        std::env::var("WH_RELAY_THREADS").ok().as_deref(),
    )?;
    let (socket, fast_sockets) = relay_fast::bind(socket_port, relay_threads)
        .with_context(|| format!("cannot bind UDP port {socket_port}"))?;
    let socket = UdpSocket::from_std(socket)
        .with_context(|| format!("cannot use UDP port {socket_port}"))?;
    // `listen-port 0` asks for any free port: the rest uses the real one.
    if let Ok(local) = socket.local_addr()
        && !wg_owns_port
    {
        opts.listen_port = local.port();
    }
    // Runs of datagrams from one source come as one buffer (fewer system
    // calls; a relay forwards them in one send). Without it, one by one.
    if let Err(e) = udp::enable_gro(&socket) {
        tracing::debug!(error = %e, "no UDP GRO on this kernel");
    }
    // Each datagram carries the time it was queued: the core sheds
    // control datagrams that waited too long (a node fallen behind).
    if let Err(e) = udp::enable_arrival_times(&socket) {
        tracing::debug!(error = %e, "no arrival times on this socket");
    }
    let socket = Arc::new(socket);
    let control_socket =
        ControlSocket::bind(&opts.interface, &control::socket_path(&opts.interface))?;

    let (dataplane, mut outgoing) = if has_interface {
        let cfg = InterfaceConfig {
            name: opts.interface.clone(),
            private_key: key.clone(),
            mtu: opts.mtu,
            addresses: super::overlay::Overlay::new(&spec, public).own_addresses(),
            routes: Vec::new(),
        };
        let public_port = wg_owns_port.then_some(opts.listen_port);
        let (dp, rx) = DataPlane::create_with(backend, cfg, Arc::clone(&socket), public_port)
            .await
            .with_context(|| format!("cannot create interface {}", opts.interface))?;
        if let Some(port) = dp.public_port() {
            opts.listen_port = port;
        }
        (Some(dp), rx)
    } else {
        let (_tx, rx) = mpsc::channel::<Outgoing>(1);
        (None, rx)
    };

    let (names_tx, dns) = start_names(&opts, &spec, public).await;
    let host = SystemHost {
        interface: opts.interface.clone(),
        dual_stack: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
    };
    let config = NodeConfig {
        key: key.clone(),
        spec,
        interface: opts.interface.clone(),
        listen_port: opts.listen_port,
        mode: opts.mode,
        relay_mbit: opts.relay_mbit,
        force_relay: std::env::var("WH_FORCE_RELAY").is_ok_and(|v| v == "1"),
        from_file,
        has_dataplane: dataplane.is_some(),
        join: extras.join,
        random: RandomStream::from_os()
            .map_err(|e| anyhow::anyhow!("no random source for the node: {e}"))?,
    };
    let node = Node::new(config, Box::new(host), Now::system());
    let (handed_tx, mut handed) = mpsc::channel::<HandOver>(relay_fast::HAND_OVER_QUEUE);
    let fast_path = match fast_sockets.is_empty() {
        true => None,
        false => {
            let (limiter, table) = node.relay_fast_path();
            let h = FastPathHandle::start(fast_sockets, limiter, table, handed_tx)
                .context("cannot start the relay fast path")?;
            tracing::info!(threads = h.threads(), "relay fast path");
            Some(h)
        }
    };
    let (upnp_tx, mut upnp_events) = mpsc::channel::<UpnpEvent>(4);
    let (upnp_stop, upnp_stop_rx) = watch::channel(upnp::Stop::Running);
    let upnp_task = (opts.mode != Mode::Direct)
        .then(|| tokio::spawn(upnp::run(opts.listen_port, upnp_tx, upnp_stop_rx)));
    let (resolved_tx, mut resolved) = mpsc::channel(64);
    let mut d = Shell {
        node,
        opts,
        gso: udp::GsoSender::new(&socket),
        socket,
        dataplane,
        replies: HashMap::new(),
        next_request: 0,
        joined: extras.joined,
        resolved_tx,
        names_tx,
        dns,
        cni_written: None,
        receipts_read: Instant::now(),
        fast_path,
    };
    d.publish_cni_config();
    d.carry_out().await;

    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let control_task = tokio::spawn(control_socket.serve(calls_tx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch SIGINT")?;
    let mut terminated = false;
    let mut stopping = false;
    let mut buf = vec![0u8; RECV_BUFFER];
    tracing::info!(interface = %d.opts.interface, key = %public, port = d.opts.listen_port, "node up");
    if let Some(dir) = control::socket_path(&d.opts.interface).parent() {
        let _ = std::fs::write(dir.join("ready"), d.opts.interface.as_bytes());
    }

    while !stopping && !d.node.is_stopping() {
        let deadline = tokio::time::Instant::from_std(d.node.poll_timeout());
        tokio::select! {
            r = d.socket.readable() => match r {
                Ok(()) => d.on_readable(&mut buf),
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
            Some(ev) = upnp_events.recv() => d.node.on_port_mapping(Now::system(), match ev {
                UpnpEvent::Mapped { external, via } => Some((external, via)),
                UpnpEvent::Lost => None,
            }),
            Some(update) = updates.recv() => {
                let result = d.node.apply_spec(Now::system(), update.spec);
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "network update refused");
                }
                if let Some(reply) = update.reply {
                    let _ = reply.send(result);
                }
            }
            Some(h) = handed.recv() => d.on_handed_over(h),
            Some((req, reply)) = calls.recv() => d.on_request(req, reply),
            Some((purpose, addr)) = resolved.recv() => d.node.on_resolved(Now::system(), purpose, addr),
            _ = tokio::time::sleep_until(deadline) => d.on_timeout(),
            _ = interrupt.recv() => { tracing::info!("interrupted"); stopping = true; }
            _ = term.recv() => { tracing::info!("terminated"); stopping = true; terminated = true; }
            Ok(()) = stop.changed() => if *stop.borrow() { stopping = true; },
        }
        d.carry_out().await;
    }
    control_task.abort();
    // WH_KEEP_INTERFACE=1 (an agent being upgraded): on SIGTERM, a kernel
    // interface owning the port keeps running for the next daemon to adopt,
    // and so does the port mapping.
    let keep = terminated && std::env::var("WH_KEEP_INTERFACE").is_ok_and(|v| v == "1");
    // The gateway removes the port mapping (unless kept) while the rest is
    // taken down.
    let _ = upnp_stop.send(if keep {
        upnp::Stop::Keep
    } else {
        upnp::Stop::Unmap
    });
    d.shut_down(keep).await;
    if let Some(task) = upnp_task {
        // A renewal in flight may finish first: bounded all the same.
        let _ = tokio::time::timeout(2 * upnp::UNMAP_TIMEOUT, task).await;
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

/// The DNS responder (on the overlay IPv4) and the hosts file block.
async fn start_names(
    opts: &UpOptions,
    spec: &NetworkSpec,
    public: PublicKey,
) -> (
    watch::Sender<crate::names::SharedResolver>,
    Option<crate::names::DnsHandle>,
) {
    let names: crate::names::SharedResolver =
        Arc::new(crate::names::ConfigNames::new(spec, public));
    let (names_tx, names_rx) = watch::channel(names);
    let own_ipv4 = super::overlay::Overlay::new(spec, public).own_ipv4();
    let dns = match own_ipv4 {
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
    (names_tx, dns)
}

impl Shell {
    /// Drains what is queued (runs of datagrams the kernel coalesced come
    /// as one buffer) before the bookkeeping, each with how long it waited
    /// in the queue (the core decides what is too late).
    fn on_readable(&mut self, buf: &mut [u8]) {
        let now = Now::system();
        for _ in 0..BATCH {
            match udp::try_recv_timed(&self.socket, buf) {
                Ok(r) => {
                    let mut wire = SocketWire {
                        socket: &self.socket,
                        gso: &self.gso,
                        dataplane: self.dataplane.as_ref(),
                    };
                    let waited = r.waited(udp::kernel_wall_clock());
                    let bytes = &mut buf[..r.bytes];
                    self.node
                        .handle_received(now, r.from, bytes, r.segment, waited, &mut wire);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "recv failed");
                    break;
                }
            }
        }
    }

    /// What a relay fast-path thread received that is not channel data.
    fn on_handed_over(&mut self, mut h: HandOver) {
        let mut wire = SocketWire {
            socket: &self.socket,
            gso: &self.gso,
            dataplane: self.dataplane.as_ref(),
        };
        self.node.handle_received(
            Now::system(),
            h.from,
            &mut h.bytes,
            h.segment,
            h.waited,
            &mut wire,
        );
    }

    fn on_outgoing(&mut self, out: Outgoing) {
        let mut wire = SocketWire {
            socket: &self.socket,
            gso: &self.gso,
            dataplane: self.dataplane.as_ref(),
        };
        self.node.handle_outgoing(Now::system(), out, &mut wire);
    }

    fn on_timeout(&mut self) {
        let now = Now::system();
        if now.mono.saturating_duration_since(self.receipts_read) >= RECEIPTS_EVERY {
            self.receipts_read = now.mono;
            if let Some(dp) = &self.dataplane {
                let receipts = dp.direct_receipts();
                self.node.on_direct_receipts(now, &receipts);
            }
        }
        self.node.handle_timeout(now);
    }

    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let view = match req {
            Request::Show | Request::Inspect => self.view(),
            _ => DataplaneView::default(),
        };
        let id = self.next_request;
        self.next_request += 1;
        let now = Now::system();
        match self.node.handle_request(now, id, req, &view) {
            Reply::Now(r) => {
                let _ = reply.send(r);
            }
            Reply::Later => {
                self.replies.insert(id, reply);
            }
            Reply::ReadNetworkFile => {
                let read = load_spec(&self.opts.config_path);
                let response = self.node.reload(now, read);
                // Names, the hosts block and the CNI file follow the new
                // network before `wh reload` returns.
                while let Some(ev) = self.node.poll_event() {
                    self.on_event(ev);
                }
                let _ = reply.send(response);
            }
        }
    }

    fn view(&self) -> DataplaneView {
        let kernel_udp = udp::kernel_udp_counters();
        let Some(dp) = &self.dataplane else {
            return DataplaneView {
                kernel_udp,
                ..DataplaneView::default()
            };
        };
        DataplaneView {
            kernel_udp,
            stats: dp.stats(),
            kind: Some(dp.kind().to_string()),
            dropped: dp.dropped(),
            wireguard_via_daemon: dp.wireguard_via_daemon(),
            session_resets: dp.session_resets(),
            crossing_yielded: dp.crossing_yielded(),
            owns_port: dp.public_port().is_some(),
        }
    }

    /// Carries out what the core asks: data-plane operations, datagrams,
    /// events.
    async fn carry_out(&mut self) {
        while let Some(op) = self.node.poll_dataplane_op() {
            self.apply(op).await;
        }
        let mut failed = Vec::new();
        while let Some(t) = self.node.poll_transmit() {
            if let Err(e) = self
                .gso
                .try_send_segments(&self.socket, &t.contents, t.segment, t.to)
            {
                tracing::debug!(error = %e, to = %t.to, "send failed");
                let full = e.kind() == std::io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS);
                failed.push(if full {
                    "send-buffer-full"
                } else {
                    "send-failed"
                });
            }
        }
        for reason in failed {
            self.node.count_drop(reason);
        }
        while let Some(ev) = self.node.poll_event() {
            self.on_event(ev);
        }
        if let Some(fast) = &self.fast_path
            && fast.published() != self.node.relay_channels_version()
        {
            fast.publish(self.node.relay_fast_path().1);
        }
    }

    async fn apply(&mut self, op: DataplaneOp) {
        let Some(dp) = &self.dataplane else {
            return;
        };
        match op {
            DataplaneOp::SetPeer(peer) => {
                let key = peer.key;
                if let Err(e) = dp.set_peer(peer) {
                    tracing::warn!(peer = %key.short(10), error = %e, "cannot program the peer; trying again in 1 s");
                    self.node.on_peer_refused(Now::system(), key);
                }
            }
            DataplaneOp::RemovePeer(key) => {
                if let Err(e) = dp.remove_peer(&key) {
                    tracing::debug!(peer = %key.short(10), error = %e, "removing the peer");
                }
            }
            DataplaneOp::AddRoute(n) => {
                if let Err(e) = dp.add_route(n).await {
                    tracing::warn!(route = %n, error = %e, "cannot add a route into the overlay");
                }
            }
            DataplaneOp::RemoveRoute(n) => {
                if let Err(e) = dp.remove_route(n).await {
                    tracing::debug!(route = %n, error = %e, "cannot remove a route");
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Answer { id, response } => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(response);
                }
            }
            Event::Resolve { purpose, endpoint } => {
                let tx = self.resolved_tx.clone();
                tokio::spawn(async move {
                    let addr = resolve(&endpoint).await;
                    let _ = tx.send((purpose, addr)).await;
                });
            }
            Event::NetworkChanged => self.on_network_changed(),
            Event::Joined => {
                if let Some(tx) = self.joined.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Names, hosts file and CNI configuration follow the new network.
    fn on_network_changed(&mut self) {
        let spec = self.node.spec();
        let names: crate::names::SharedResolver =
            Arc::new(crate::names::ConfigNames::new(spec, self.node.public_key()));
        if let Some(path) = &self.opts.hosts_file
            && let Err(e) = crate::names::hosts::apply(path, &spec.name, &names.entries())
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot update the hosts block");
        }
        self.names_tx.send_replace(names);
        self.publish_cni_config();
    }

    fn publish_cni_config(&mut self) {
        super::cni::publish(
            self.opts.cni_dir.as_deref(),
            &mut self.cni_written,
            self.node.overlay(),
            self.node.spec(),
            self.opts.mtu,
        );
    }

    /// The DNS responder, the hosts block and the interface go (`keep`: a
    /// kernel interface owning the port stays for the next daemon).
    async fn shut_down(&mut self, keep: bool) {
        // The relay threads end and close their sockets.
        self.fast_path = None;
        if let Some(dns) = self.dns.take() {
            tracing::info!(counters = ?dns.counters(), "DNS responder down");
            dns.shutdown().await;
        }
        if let Some(path) = &self.opts.hosts_file
            && let Err(e) = crate::names::hosts::remove(path, &self.node.spec().name)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the hosts block");
        }
        if let Some(dp) = self.dataplane.take() {
            let dp = match keep {
                true => dp.leave_running(),
                false => Some(dp),
            };
            if let Some(dp) = dp
                && let Err(e) = dp.destroy().await
            {
                tracing::warn!(error = %e, "cannot remove the interface");
            }
        }
    }
}
