//! The daemon's event loop. One task owns the UDP socket: WireGuard datagrams
//! (first byte 1..4) go to the data plane, WireHub control messages (first
//! byte 0xFF) are opened by the codec and fed to the DHT and to the overlay
//! logic; what those cores ask to send is sealed and sent from here.

use super::launch::{Mode, UpOptions, load_spec};
use super::overlay::{Overlay, PeerPath};
use crate::config::{Endpoint, NetworkSpec};
use crate::control::server::{Call, ControlSocket};
use crate::control::{self, Request, Response};
use crate::dataplane::{DataPlane, InterfaceConfig, Outgoing, PeerConfig};
use crate::dht::{Dht, DhtConfig, DhtEvent};
use crate::keys::{PrivateKey, PublicKey};
use crate::proto::{Codec, CodecConfig, Message, NatKind, NodeRecord};
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram read from the socket.
const RECV_BUFFER: usize = 65536;

/// How often the overlay's timers run.
const TICK: Duration = Duration::from_millis(250);

/// Runs the daemon on a fresh tokio runtime until it is told to stop.
pub fn run_blocking(opts: UpOptions, spec: NetworkSpec, key: PrivateKey) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(opts, spec, key))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
        Ok(Ok(mut addrs)) => addrs.find(|a| a.is_ipv4()),
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
}

async fn run(opts: UpOptions, spec: NetworkSpec, key: PrivateKey) -> anyhow::Result<()> {
    let public = key.public_key();
    let socket = UdpSocket::bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        opts.listen_port,
    ))
    .await
    .with_context(|| format!("cannot bind UDP port {}", opts.listen_port))?;
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
        if let Some(e) = &boot.endpoint {
            if let Some(addr) = resolve(e).await {
                dht.add_bootstrap(boot.key, addr);
            }
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

    let codec = Codec::new(
        key.clone(),
        CodecConfig {
            required_workbits: spec.workbits,
            namespace: spec.namespace.clone(),
            ..CodecConfig::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("no random source for nonces: {e}"))?;
    let mut d = Daemon {
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
    };
    d.resolve_static_endpoints().await;
    d.apply_paths();
    d.flush();

    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let control_task = tokio::spawn(control_socket.serve(calls_tx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECV_BUFFER];
    tracing::info!(interface = %d.opts.interface, key = %d.public, port = d.opts.listen_port, "node up");
    if let Some(dir) = control::socket_path(&d.opts.interface).parent() {
        let _ = std::fs::write(dir.join("ready"), d.opts.interface.as_bytes());
    }

    while !d.stopping {
        let dht_deadline = d.dht.poll_timeout();
        let sleep_until = dht_deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + TICK);
        tokio::select! {
            r = d.socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => d.on_datagram(from, &buf[..n]),
                Err(e) => tracing::debug!(error = %e, "recv failed"),
            },
            Some(out) = outgoing.recv() => d.on_outgoing(out),
            Some((req, reply)) = calls.recv() => d.on_request(req, reply).await,
            _ = tick.tick() => d.on_tick(),
            _ = tokio::time::sleep_until(sleep_until) => d.dht.handle_timeout(Instant::now()),
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted"); d.stopping = true; }
            _ = term.recv() => { tracing::info!("terminated"); d.stopping = true; }
        }
        d.after_event();
    }
    control_task.abort();
    if let Some(dp) = d.dataplane.take() {
        if let Err(e) = dp.destroy().await {
            tracing::warn!(error = %e, "cannot remove the interface");
        }
    }
    if let Some(dir) = control::socket_path(&d.opts.interface).parent() {
        let _ = std::fs::remove_file(dir.join("ready"));
    }
    tracing::info!("node down");
    Ok(())
}

impl Daemon {
    fn count_drop(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }

    async fn resolve_static_endpoints(&mut self) {
        let wanted: Vec<(PublicKey, Endpoint)> = self
            .spec
            .peers
            .iter()
            .filter(|p| p.role != crate::config::Role::Boot && p.key != self.public)
            .filter_map(|p| p.endpoint.clone().map(|e| (p.key, e)))
            .collect();
        for (key, e) in wanted {
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
                if let Err(e) = self.socket.try_send_to(&bytes, addr) {
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
            let id = self.dht.lookup(key, Instant::now());
            self.overlay.lookup_started(key, id);
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
        for change in self.overlay.take_changes() {
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
            if let Err(e) = result {
                tracing::warn!(peer = %change.key.short(10), error = %e, "cannot program the peer");
            }
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
        match &msg {
            Message::Pong { id, observed, info } => {
                self.observed = Some(*observed);
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
                    }
                }
                if let Some(info) = info {
                    self.overlay.on_record(info.clone());
                }
            }
            Message::Ping {
                info: Some(info), ..
            } => self.overlay.on_record(info.clone()),
            Message::FindNode {
                info: Some(info), ..
            } => self.overlay.on_record(info.clone()),
            Message::RelayedWg { from: src, packet } => {
                if let Some(dp) = &self.dataplane {
                    dp.receive(from, packet, Some(*src));
                }
            }
            _ => {}
        }
        // Any authenticated message straight from a trusted peer proves a direct path.
        self.overlay.on_direct_contact(key, from, now);
        self.dht.handle_message(now, from, key, &msg);
    }

    fn on_dht_event(&mut self, now: Instant, ev: DhtEvent) {
        match ev {
            DhtEvent::LookupDone {
                id, target, found, ..
            } => {
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
                self.overlay.lookup_done(now, target, found);
            }
            DhtEvent::Pong { observed, .. } => {
                self.observed = Some(observed);
            }
            _ => {}
        }
    }

    fn on_outgoing(&mut self, out: Outgoing) {
        match self.overlay.path(&out.to) {
            Some(PeerPath::Direct(addr)) => {
                let _ = self.socket.try_send_to(&out.datagram, addr);
            }
            Some(PeerPath::Relayed(relays)) => {
                if let Some((relay, addr)) = relays.first().copied() {
                    let msg = Message::RelayWg {
                        to: out.to,
                        packet: out.datagram,
                    };
                    self.send(relay, addr, &msg);
                }
            }
            _ => self.count_drop("no-path-to-peer"),
        }
    }

    fn on_tick(&mut self) {
        self.overlay.on_tick(Instant::now());
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
        let spec =
            load_spec(&self.opts.config_path).map_err(|e| format!("{e:#}\nnothing was changed"))?;
        let summary = self.overlay.reload(&spec, Instant::now())?;
        self.spec = spec;
        Ok(json!(summary))
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
            nat: match self.opts.mode {
                Mode::Direct => "DIRECT".into(),
                Mode::Nat => "NAT".into(),
                Mode::Unknown => format!("{:?}", self.own_record.nat).to_uppercase(),
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
