//! The embedded backend: boringtun's `noise::Tunn` per peer, our own TUN
//! device, our own timers, the daemon's socket.
//!
//! Hot paths:
//! - outbound: one task per TUN queue reads packets (TSO packets of up to
//!   64 KiB when offloads are on, cut into segments here, in the read
//!   buffer itself: no copy per segment), finds the peer by
//!   longest-prefix match on a snapshot of the peer table (refreshed only when
//!   its generation changes: no lock), encrypts under the peer's own lock
//!   into a task-owned buffer, and sends the segments of one packet in one
//!   `sendmsg` with `UDP_SEGMENT` (or `try_send_to` one by one);
//! - inbound: [`Embedded::receive`] runs on the daemon's task, finds the peer
//!   by receiver index under a read lock of the table, decrypts into a
//!   per-thread buffer, and writes to the TUN device, coalescing consecutive
//!   TCP segments into one packet (GRO) until the daemon's task yields.
//!
//! No allocation per packet on either path, except the `Outgoing` values a
//! relayed peer needs.
//!
//! Path MTU: a TCP packet bigger than what the kernel knows the path to a
//! direct peer carries (less WireGuard's overhead) is sent anyway (the
//! kernel fragments it) and its sender is answered ICMP "fragmentation
//! needed" / "packet too big" through the TUN device, so that TCP lowers
//! its segment size (see docs/dataplane.md, Path MTU).

use super::offload::{self, Push, TcpCoalescer, TcpSegmenter, VNET_HDR_LEN, VnetHdr};
use super::table::AllowedIps;
use super::tun::{self, TunQueue};
use super::udp::{self, GsoSender};
use super::{
    DataPlaneError, HANDSHAKE_RATE_LIMIT, InterfaceConfig, Link, Outgoing, PeerConfig, PeerStats,
    netlink::Netlink, yields_to_crossing_initiation,
};
use crate::keys::PublicKey;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest IP packet the TUN device can hand us.
const MAX_PACKET: usize = 65536;
/// Room for WireGuard's header and tag (and at least a handshake message).
const BUF_LEN: usize = MAX_PACKET + 64;
/// Timer resolution: `update_timers` runs this often for every peer.
const TICK: Duration = Duration::from_millis(100);
const TICKS_PER_SECOND: u64 = 10;
// Handshakes per second before the rate limiter asks for cookies:
// `HANDSHAKE_RATE_LIMIT`, shared with the external backend and sim-wg.
// Each handshake is verified twice (attribution, then `Tunn`).

/// How many TUN queues to open: one per core, at most 4.
fn default_queues() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

struct PeerState {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<IpNet>,
    keepalive: Option<u16>,
    /// Coarse time (ticks) of the last datagram sent, for keepalives.
    last_tx_tick: u64,
    last_handshake: Option<SystemTime>,
    /// The last handshake initiation sent and its tick: a path that moves
    /// before a session exists gets this one again rather than a new
    /// handshake (see [`EmbeddedDataPlane::set_peer`]).
    last_init: Option<(Vec<u8>, u64)>,
}

/// The size of a WireGuard handshake initiation (message type 1).
const HANDSHAKE_INIT_LEN: usize = 148;
/// How long a handshake initiation is worth sending again: WireGuard's
/// REKEY_TIMEOUT, after which boringtun sends a new one itself.
const INIT_REUSABLE_TICKS: u64 = 5 * TICKS_PER_SECOND;

impl PeerState {
    /// Notes `datagram`, about to be sent at `tick`, if it is a handshake
    /// initiation.
    fn note_sent(&mut self, datagram: &[u8], tick: u64) {
        if datagram.len() == HANDSHAKE_INIT_LEN && datagram.first() == Some(&1) {
            self.last_init = Some((datagram.to_vec(), tick));
        }
    }
}

struct Peer {
    key: PublicKey,
    /// Our 24-bit index: the high bits of every receiver index we hand out.
    index: u32,
    state: Mutex<PeerState>,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An immutable snapshot of the peers; replaced whole on every change.
#[derive(Default, Clone)]
struct Table {
    by_key: HashMap<PublicKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    allowed: AllowedIps<Arc<Peer>>,
}

impl Table {
    fn rebuild_allowed(&mut self) {
        let mut allowed = AllowedIps::new();
        // Deterministic order: the lowest index wins a duplicate prefix.
        let mut peers: Vec<&Arc<Peer>> = self.by_key.values().collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.index));
        for p in peers {
            for net in &p.lock().allowed_ips {
                allowed.insert(*net, Arc::clone(p));
            }
        }
        self.allowed = allowed;
    }
}

struct Shared {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    rate_limiter: Arc<RateLimiter>,
    socket: Arc<UdpSocket>,
    gso: GsoSender,
    outgoing: mpsc::Sender<Outgoing>,
    queues: Vec<Arc<AsyncFd<TunQueue>>>,
    table: RwLock<Arc<Table>>,
    generation: AtomicU64,
    next_index: AtomicU32,
    ticks: AtomicU64,
    /// Inbound TCP segments waiting to go to the TUN device as one packet,
    /// flushed when a segment does not fit, or by `gro_flusher` once the
    /// daemon's task yields (that is, when its socket is drained).
    gro: Mutex<TcpCoalescer>,
    gro_notify: tokio::sync::Notify,
    /// Datagrams dropped on receive: malformed, for no known peer, failing
    /// authentication, or with a source outside the peer's allowed IPs.
    dropped: AtomicU64,
    /// Handshake initiations left unanswered because ours to that peer
    /// crossed them ([`yields_to_crossing_initiation`]).
    crossing_yielded: AtomicU64,
}

/// Where a datagram for a peer goes.
#[derive(Clone, Copy)]
enum Dest {
    Direct(SocketAddr),
    Relay,
}

impl Dest {
    fn of(endpoint: Option<SocketAddr>) -> Dest {
        endpoint.map_or(Dest::Relay, Dest::Direct)
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends without waiting: used off the outbound hot path.
    fn send_now(&self, peer: &Peer, dest: Dest, datagram: &[u8]) {
        peer.tx_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        match dest {
            Dest::Direct(addr) => {
                if let Err(e) = udp::send_now(&self.socket, datagram, addr) {
                    tracing::debug!(peer = ?peer.key, %addr, "send: {e}");
                }
            }
            Dest::Relay => {
                let out = Outgoing::one(peer.key, datagram.to_vec());
                if let Err(e) = self.outgoing.try_send(out) {
                    tracing::debug!(peer = ?peer.key, "outgoing channel: {e}");
                }
            }
        }
    }

    /// Sends, waiting for room when the socket or the channel is full.
    async fn send(&self, peer: &Peer, dest: Dest, datagram: &[u8]) {
        peer.tx_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        match dest {
            Dest::Direct(addr) => {
                if let Err(e) = udp::send_one(&self.socket, datagram, addr).await {
                    tracing::debug!(peer = ?peer.key, %addr, "send: {e}");
                }
            }
            Dest::Relay => {
                let out = Outgoing::one(peer.key, datagram.to_vec());
                if self.outgoing.send(out).await.is_err() {
                    tracing::debug!(peer = ?peer.key, "outgoing channel closed");
                }
            }
        }
    }

    /// Whether to leave `peer`'s handshake initiation unanswered, ours to
    /// it being in flight ([`yields_to_crossing_initiation`]); counted.
    /// The caller sends a new initiation instead, the way the peer's came:
    /// the peer answers it (or the one before, which boringtun still
    /// takes), also when ours was lost.
    fn yield_to_crossing(&self, peer: &Peer, st: &PeerState) -> bool {
        let Some((_, at)) = &st.last_init else {
            return false;
        };
        let ticks = self.ticks.load(Ordering::Relaxed).saturating_sub(*at);
        let age = TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX));
        let me = PublicKey(*self.public.as_bytes());
        let has_session = st.tunn.stats().0.is_some();
        if !yields_to_crossing_initiation(&me, &peer.key, has_session, Some(age)) {
            return false;
        }
        self.crossing_yielded.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = ?peer.key, "crossing handshake initiations: ours goes again, theirs is not answered");
        true
    }

    /// Whether TUN packets carry a virtio header.
    fn vnet_hdr(&self) -> bool {
        self.queues.first().is_some_and(|q| q.get_ref().vnet_hdr())
    }

    fn write_framed(&self, framed: &[u8]) {
        if let Some(q) = self.queues.first()
            && let Err(e) = q.get_ref().write(framed)
        {
            tracing::debug!("tun write: {e}");
        }
    }

    fn gro(&self) -> MutexGuard<'_, TcpCoalescer> {
        self.gro.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers a decrypted packet framed with room for the virtio header:
    /// coalesced with its neighbours when it is TCP data, else written now.
    fn deliver(&self, framed: &mut [u8]) {
        let mut gro = self.gro();
        match gro.push(&framed[VNET_HDR_LEN..]) {
            Push::Appended => {}
            Push::Started => self.gro_notify.notify_one(),
            Push::Refused => {
                if let Some(pending) = gro.take() {
                    self.write_framed(pending);
                }
                match gro.push(&framed[VNET_HDR_LEN..]) {
                    Push::Started | Push::Appended => self.gro_notify.notify_one(),
                    Push::Refused => {
                        drop(gro);
                        self.write_tun(framed);
                    }
                }
            }
        }
    }

    fn flush_gro(&self) {
        let mut gro = self.gro();
        if let Some(pending) = gro.take() {
            self.write_framed(pending);
        }
    }

    /// Writes a packet that starts with room for the virtio header when the
    /// device has one (the header is filled in here).
    fn write_tun(&self, framed: &mut [u8]) {
        let Some(q) = self.queues.first() else {
            return;
        };
        if q.get_ref().vnet_hdr() {
            // Authenticated by WireGuard: no need to verify checksums again.
            VnetHdr {
                flags: offload::F_DATA_VALID,
                ..VnetHdr::default()
            }
            .write(&mut framed[..VNET_HDR_LEN]);
        }
        if let Err(e) = q.get_ref().write(framed) {
            tracing::debug!("tun write: {e}");
        }
    }

    fn alloc_index(&self, table: &Table) -> u32 {
        loop {
            let i = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if !table.by_index.contains_key(&i) {
                return i;
            }
        }
    }
}

/// The embedded backend.
pub struct Embedded {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    link: Link,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

thread_local! {
    static RX_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; BUF_LEN]);
}

impl Embedded {
    pub(crate) async fn create(
        cfg: InterfaceConfig,
        socket: Arc<UdpSocket>,
        outgoing: mpsc::Sender<Outgoing>,
    ) -> Result<Embedded, DataPlaneError> {
        let tun_err = |source| DataPlaneError::Tun {
            name: cfg.name.clone(),
            source,
        };
        // WIREHUB_TUN_OFFLOAD=0 turns TSO/GRO off (diagnosis, benchmarks).
        let offload = std::env::var("WIREHUB_TUN_OFFLOAD").map_or(true, |v| v != "0");
        let queues = tun::create(&cfg.name, default_queues(), offload).map_err(tun_err)?;
        let queues: Vec<Arc<AsyncFd<TunQueue>>> = queues
            .into_iter()
            .map(|q| {
                // SAFETY: the queue owns its descriptor, which stays open and
                // the same until the queue (inside the AsyncFd) is dropped.
                unsafe { AsyncFd::register_with_interest(q, Interest::READABLE) }
                    .map(Arc::new)
                    .map_err(io::Error::from)
            })
            .collect::<Result<_, _>>()
            .map_err(tun_err)?;
        let netlink = Netlink::new()?;
        let link = Link::configure(netlink, &cfg).await?;

        let private = x25519::StaticSecret::from(*cfg.private_key.as_bytes());
        let public = x25519::PublicKey::from(&private);
        let shared = Arc::new(Shared {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            public,
            gso: GsoSender::new(&socket),
            socket,
            outgoing,
            queues,
            table: RwLock::new(Arc::new(Table::default())),
            generation: AtomicU64::new(0),
            next_index: AtomicU32::new(crate::keys::random_u64() as u32),
            ticks: AtomicU64::new(0),
            gro: Mutex::new(TcpCoalescer::new()),
            gro_notify: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
            crossing_yielded: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for q in &shared.queues {
            tasks.push(tokio::spawn(
                Tx::new(Arc::clone(&shared), Arc::clone(q)).run(),
            ));
        }
        tasks.push(tokio::spawn(timers(Arc::clone(&shared))));
        tasks.push(tokio::spawn(gro_flusher(Arc::clone(&shared))));
        tracing::info!(
            iface = cfg.name,
            queues = shared.queues.len(),
            offload = shared.vnet_hdr(),
            "embedded WireGuard up"
        );
        Ok(Embedded {
            shared,
            tasks,
            link,
        })
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    fn update_table(&self, f: impl FnOnce(&mut Table)) {
        let mut guard = self.shared.table.write().unwrap_or_else(|e| e.into_inner());
        let mut t = Table::clone(&guard);
        f(&mut t);
        *guard = Arc::new(t);
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn set_peer(&self, cfg: PeerConfig) -> Result<(), DataPlaneError> {
        let existing = self.shared.snapshot().by_key.get(&cfg.key).cloned();
        if let Some(peer) = existing {
            let (allowed_changed, handshaking_moved) = {
                let mut st = peer.lock();
                let moved = st.endpoint != cfg.endpoint;
                st.endpoint = cfg.endpoint;
                st.keepalive = cfg.keepalive.filter(|k| *k > 0);
                let changed = st.allowed_ips != cfg.allowed_ips;
                st.allowed_ips = cfg.allowed_ips;
                (
                    changed,
                    moved && st.tunn.time_since_last_handshake().is_none(),
                )
            };
            if allowed_changed {
                self.update_table(Table::rebuild_allowed);
            }
            // No session yet and a new path: the pending initiation went the
            // old way (perhaps into a NAT that was not open yet). Send it
            // again the new way now rather than after WireGuard's 5 s retry:
            // the same one, so that an answer to any copy completes it. A
            // new initiation per move undid the answer to the last; with a
            // path that moved five times in 60 ms and both ends initiating,
            // first data waited for WireGuard's 15 s retry (net-sim-wg seed
            // 5367838300114716957).
            if handshaking_moved {
                self.initiate_again(&peer);
            }
            return Ok(());
        }
        let shared = &self.shared;
        self.update_table(|t| {
            if t.by_key.contains_key(&cfg.key) {
                // Added concurrently: keep that one (and its session).
                return;
            }
            let index = shared.alloc_index(t);
            let tunn = Tunn::new(
                shared.private.clone(),
                x25519::PublicKey::from(cfg.key.0),
                None,
                None,
                index,
                Some(Arc::clone(&shared.rate_limiter)),
            );
            let peer = Arc::new(Peer {
                key: cfg.key,
                index,
                state: Mutex::new(PeerState {
                    tunn,
                    endpoint: cfg.endpoint,
                    allowed_ips: cfg.allowed_ips,
                    keepalive: cfg.keepalive.filter(|k| *k > 0),
                    last_tx_tick: 0,
                    last_handshake: None,
                    last_init: None,
                }),
                rx_bytes: AtomicU64::new(0),
                tx_bytes: AtomicU64::new(0),
            });
            t.by_index.insert(index, Arc::clone(&peer));
            t.by_key.insert(cfg.key, peer);
            t.rebuild_allowed();
        });
        // Handshake at once with a new peer rather than at its first packet:
        // a peer that restarted (and lost its session) is told so now, not
        // after the other side's rekey timeout.
        if let Some(peer) = self.shared.snapshot().by_key.get(&cfg.key).cloned() {
            self.initiate(&peer, false);
        }
        Ok(())
    }

    /// Sends `peer` the handshake initiation in flight again, on its
    /// current path, if one was sent within [`INIT_REUSABLE_TICKS`]; else a
    /// new one.
    fn initiate_again(&self, peer: &Arc<Peer>) {
        let now = self.shared.ticks.load(Ordering::Relaxed);
        {
            let st = peer.lock();
            if let Some((init, at)) = &st.last_init
                && now.saturating_sub(*at) < INIT_REUSABLE_TICKS
            {
                tracing::debug!(peer = ?peer.key, "handshake initiation sent again on a new path");
                self.shared.send_now(peer, Dest::of(st.endpoint), init);
                return;
            }
        }
        self.initiate(peer, true);
    }

    /// Sends a handshake initiation to `peer` on its current path; `force`
    /// replaces one still waiting for its response.
    fn initiate(&self, peer: &Arc<Peer>, force: bool) {
        let mut buf = [0u8; 256];
        let mut st = peer.lock();
        let dest = Dest::of(st.endpoint);
        match st.tunn.format_handshake_initiation(&mut buf, force) {
            TunnResult::WriteToNetwork(out) => {
                tracing::debug!(peer = ?peer.key, force, "handshake initiated");
                let tick = self.shared.ticks.load(Ordering::Relaxed);
                st.note_sent(out, tick);
                self.shared.send_now(peer, dest, out);
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = ?peer.key, "cannot initiate a handshake: {e:?}")
            }
            _ => tracing::debug!(peer = ?peer.key, "no handshake initiation needed"),
        }
    }

    pub(crate) fn remove_peer(&self, key: &PublicKey) -> Result<(), DataPlaneError> {
        let mut found = false;
        self.update_table(|t| {
            if let Some(p) = t.by_key.remove(key) {
                found = true;
                t.by_index.remove(&p.index);
                t.allowed.retain(|v| !Arc::ptr_eq(v, &p));
            }
        });
        if found {
            Ok(())
        } else {
            Err(DataPlaneError::NoSuchPeer(*key))
        }
    }

    /// Datagrams dropped on receive.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Handshake initiations left unanswered because ours crossed them.
    pub(crate) fn crossing_yielded(&self) -> u64 {
        self.shared.crossing_yielded.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> Vec<PeerStats> {
        let table = self.shared.snapshot();
        let mut out: Vec<PeerStats> = table
            .by_key
            .values()
            .map(|p| {
                let st = p.lock();
                PeerStats {
                    key: p.key,
                    endpoint: st.endpoint,
                    last_handshake: st.last_handshake,
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by_key(|s| s.key);
        out
    }

    pub(crate) fn receive(&self, from: SocketAddr, datagram: &[u8], from_key: Option<PublicKey>) {
        RX_BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => self.receive_into(from, datagram, from_key, &mut buf),
            Err(_) => {
                // Re-entered on this thread (cannot happen today): use a fresh buffer.
                let mut buf = vec![0u8; BUF_LEN];
                self.receive_into(from, datagram, from_key, &mut buf)
            }
        })
    }

    fn receive_into(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        from_key: Option<PublicKey>,
        buf: &mut [u8],
    ) {
        let shared = &*self.shared;
        let table = shared.table.read().unwrap_or_else(|e| e.into_inner());
        // Parse, check mac1, and answer with a cookie when under load.
        let packet = match shared
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, buf)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load: the sender must prove its address first.
                match from_key {
                    None => {
                        if let Err(e) = udp::send_now(&shared.socket, cookie, from) {
                            tracing::debug!(%from, "cookie reply: {e}");
                        }
                    }
                    Some(to) => {
                        let out = Outgoing::one(to, cookie.to_vec());
                        if let Err(e) = shared.outgoing.try_send(out) {
                            tracing::debug!(peer = ?to, "cookie reply: {e}");
                        }
                    }
                }
                return;
            }
            Err(_) => {
                tracing::trace!(%from, len = datagram.len(), "not a WireGuard datagram");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let is_handshake = matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        let peer = match (from_key, &packet) {
            (Some(k), _) => table.by_key.get(&k),
            (None, Packet::HandshakeInit(p)) => {
                match parse_handshake_anon(&shared.private, &shared.public, p) {
                    Ok(hh) => table.by_key.get(&PublicKey(hh.peer_static_public)),
                    Err(e) => {
                        tracing::debug!(%from, "handshake initiation: {e:?}");
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            (None, Packet::HandshakeResponse(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
            (None, Packet::PacketCookieReply(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
            (None, Packet::PacketData(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
        };
        let Some(peer) = peer else {
            tracing::trace!(%from, ?from_key, "datagram for no known peer");
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut st = peer.lock();
        // Replies to a direct datagram go back where it came from; replies
        // to a relayed one take the peer's configured path.
        let reply = match from_key {
            None => Dest::Direct(from),
            Some(_) => Dest::of(st.endpoint),
        };
        if matches!(packet, Packet::HandshakeInit(_)) && shared.yield_to_crossing(peer, &st) {
            let mut init = [0u8; 256];
            if let TunnResult::WriteToNetwork(out) =
                st.tunn.format_handshake_initiation(&mut init, true)
            {
                let tick = shared.ticks.load(Ordering::Relaxed);
                st.last_tx_tick = tick;
                st.note_sent(out, tick);
                shared.send_now(peer, reply, out);
            }
            return;
        }
        let head = if shared.vnet_hdr() { VNET_HDR_LEN } else { 0 };
        let base = buf[head..].as_ptr();
        let result = st
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut buf[head..]);
        if !matches!(result, TunnResult::Err(_)) {
            // Authenticated (or a cookie reply): count it.
            peer.rx_bytes
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        }
        let to_tun = match result {
            TunnResult::Done => None,
            TunnResult::Err(e) => {
                tracing::debug!(peer = ?peer.key, %from, "decapsulate: {e:?}");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            TunnResult::WriteToNetwork(out) => {
                if is_handshake {
                    st.last_handshake = Some(SystemTime::now());
                }
                st.last_tx_tick = shared.ticks.load(Ordering::Relaxed);
                let tick = st.last_tx_tick;
                st.note_sent(out, tick);
                shared.send_now(peer, reply, out);
                None
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                Some((pkt.as_ptr() == base, pkt.len(), IpAddr::V4(src)))
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                Some((pkt.as_ptr() == base, pkt.len(), IpAddr::V6(src)))
            }
        };
        if let Some((in_place, len, src)) = to_tun {
            if !in_place {
                tracing::debug!("decrypted packet not at the start of the buffer");
            } else if allowed(&table.allowed, src, peer) {
                if head > 0 {
                    shared.deliver(&mut buf[..head + len]);
                } else {
                    shared.write_tun(&mut buf[..len]);
                }
            } else {
                tracing::debug!(peer = ?peer.key, %src, "source not in allowed IPs");
            }
        }
        // Packets queued while the handshake was in flight.
        let dest = Dest::of(st.endpoint);
        while let TunnResult::WriteToNetwork(out) = st.tunn.decapsulate(None, &[], buf) {
            let tick = shared.ticks.load(Ordering::Relaxed);
            st.last_tx_tick = tick;
            st.note_sent(out, tick);
            shared.send_now(peer, dest, out);
        }
    }

    pub(crate) async fn destroy(mut self) -> Result<(), DataPlaneError> {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.link.delete().await
    }
}

#[inline]
fn allowed(table: &AllowedIps<Arc<Peer>>, src: IpAddr, peer: &Arc<Peer>) -> bool {
    table.lookup(src).is_some_and(|p| Arc::ptr_eq(p, peer))
}

/// Outbound state of one TUN queue: its buffers, and a snapshot of the
/// peer table refreshed when the table's generation moves.
struct Tx {
    shared: Arc<Shared>,
    queue: Arc<AsyncFd<TunQueue>>,
    /// What the TUN device gave us (virtio header first when offloading).
    /// A TSO packet is cut into segments inside it, one after the other
    /// (see [`TcpSegmenter::segment_in_place`]): no copy per segment.
    src: Vec<u8>,
    /// Encrypted datagrams laid end to end, and their lengths.
    out: Vec<u8>,
    lens: Vec<usize>,
    /// Datagrams other than data (handshake initiations): rare.
    extra: Vec<Vec<u8>>,
    table: Arc<Table>,
    generation: u64,
    /// When this queue last told a sender its packets are too big.
    last_too_big: Option<Instant>,
}

/// Room for WireGuard's overhead (32) and padding per segment.
const PER_SEGMENT_OVERHEAD: usize = 48;
/// Bytes a WireGuard transport datagram adds to an inner packet on the
/// wire: its header and tag (32), UDP (8), IPv4 (20) or IPv6 (40).
const WIRE_OVERHEAD_V4: usize = 60;
const WIRE_OVERHEAD_V6: usize = 80;
/// At most one "too big" answer per queue this often: the sender's TCP
/// acts on the first; packets already queued would only repeat it.
const TOO_BIG_EVERY: Duration = Duration::from_millis(20);

impl Tx {
    fn new(shared: Arc<Shared>, queue: Arc<AsyncFd<TunQueue>>) -> Tx {
        let table = shared.snapshot();
        let generation = shared.generation.load(Ordering::Acquire);
        Tx {
            shared,
            queue,
            src: vec![0u8; VNET_HDR_LEN + MAX_PACKET],
            out: vec![0u8; 2 * BUF_LEN],
            lens: Vec::with_capacity(64),
            extra: Vec::new(),
            table,
            generation,
            last_too_big: None,
        }
    }

    /// When the kernel has told us the path to `addr` carries less than
    /// the largest packet of this batch (`largest` bytes, inner) plus
    /// WireGuard's overhead, tells the packet's sender so, as a router
    /// would: ICMP "fragmentation needed" / "packet too big" written into
    /// the TUN device, for TCP only (see [`offload::too_big`]). The packet
    /// itself still goes, fragmented; the sender's TCP then sends segments
    /// that fit, and segmentation offload works again. The answer quotes
    /// the start of the read buffer: the packet, or its first segment once
    /// it has been cut in place (same addresses, ports and sequence).
    fn tell_too_big(&mut self, start: usize, n: usize, largest: usize, addr: SocketAddr) {
        let Some(path) = self.shared.gso.path_mtu(addr) else {
            return;
        };
        let overhead = match udp::canonical(addr) {
            SocketAddr::V4(_) => WIRE_OVERHEAD_V4,
            SocketAddr::V6(_) => WIRE_OVERHEAD_V6,
        };
        let limit = path.saturating_sub(overhead);
        if largest <= limit {
            return;
        }
        let now = Instant::now();
        if self
            .last_too_big
            .is_some_and(|t| now.duration_since(t) < TOO_BIG_EVERY)
        {
            return;
        }
        let head = if self.queue.get_ref().vnet_hdr() {
            VNET_HDR_LEN
        } else {
            0
        };
        // An all-zero virtio header: no offload, checksums complete.
        let mut reply = [0u8; VNET_HDR_LEN + offload::TOO_BIG_MAX];
        if let Some(len) = offload::too_big(&self.src[start..n], limit, &mut reply[head..]) {
            self.last_too_big = Some(now);
            tracing::debug!(%addr, path, limit, largest, "inner packet too big for the path");
            if let Err(e) = self.queue.get_ref().write(&reply[..head + len]) {
                tracing::debug!("tun write: {e}");
            }
        }
    }

    async fn run(mut self) {
        loop {
            let queue = Arc::clone(&self.queue);
            let mut guard = match queue.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("tun poll: {e}");
                    return;
                }
            };
            loop {
                let n = match guard.try_io(|q| q.get_ref().read(&mut self.src)) {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        tracing::error!("tun read: {e}");
                        return;
                    }
                    Err(_would_block) => break,
                };
                self.packet(n).await;
            }
        }
    }

    /// Encrypts `plain` for the locked peer, appending to `out`.
    fn encapsulate(
        st: &mut PeerState,
        plain: &[u8],
        out: &mut Vec<u8>,
        pos: &mut usize,
        lens: &mut Vec<usize>,
        extra: &mut Vec<Vec<u8>>,
    ) {
        let need = *pos + plain.len() + PER_SEGMENT_OVERHEAD + 148;
        if out.len() < need {
            out.resize(need, 0);
        }
        match st.tunn.encapsulate(plain, &mut out[*pos..]) {
            TunnResult::WriteToNetwork(d) => {
                if d.first() == Some(&4) {
                    lens.push(d.len());
                    *pos += d.len();
                } else {
                    let tick = st.last_tx_tick;
                    st.note_sent(d, tick);
                    extra.push(d.to_vec());
                }
            }
            TunnResult::Err(e) => tracing::debug!("encapsulate: {e:?}"),
            _ => {}
        }
    }

    async fn packet(&mut self, n: usize) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.table = self.shared.snapshot();
        }
        let vnet = self.queue.get_ref().vnet_hdr();
        let (hdr, start) = if vnet {
            match VnetHdr::parse(&self.src[..n]) {
                Some(h) => (h, VNET_HDR_LEN),
                None => return,
            }
        } else {
            (VnetHdr::default(), 0)
        };
        let pkt = &mut self.src[start..n];
        let gso = hdr.gso_type & !offload::GSO_ECN;
        let segmenter = if gso == offload::GSO_NONE {
            if hdr.flags & offload::F_NEEDS_CSUM != 0
                && !offload::complete_checksum(
                    pkt,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                return;
            }
            None
        } else if gso == offload::GSO_TCPV4 || gso == offload::GSO_TCPV6 {
            match TcpSegmenter::new(pkt, usize::from(hdr.gso_size)) {
                Some(s) => Some(s),
                None => {
                    tracing::debug!(gso, "TSO packet we cannot segment");
                    return;
                }
            }
        } else {
            tracing::debug!(gso, "unexpected GSO type");
            return;
        };
        let pkt = &self.src[start..n];
        let largest = segmenter.map_or(pkt.len(), |s| s.max_segment_len());
        let Some(dst_ip) = Tunn::dst_address(pkt) else {
            return;
        };
        // The original headers, kept aside: cutting in place overwrites them.
        let mut headers = [0u8; offload::MAX_TCP_HEADERS];
        if let Some(s) = segmenter {
            let h = s.header_len();
            headers[..h].copy_from_slice(&pkt[..h]);
        }
        let Some(peer) = self.table.allowed.lookup(dst_ip).cloned() else {
            tracing::trace!(%dst_ip, "no peer for destination");
            return;
        };
        let mut pos = 0;
        let dest = {
            let mut st = peer.lock();
            match segmenter {
                None => Self::encapsulate(
                    &mut st,
                    pkt,
                    &mut self.out,
                    &mut pos,
                    &mut self.lens,
                    &mut self.extra,
                ),
                Some(s) => {
                    let pkt = &mut self.src[start..n];
                    for i in 0..s.count() {
                        let seg = s.segment_in_place(pkt, &headers, i);
                        Self::encapsulate(
                            &mut st,
                            &pkt[seg],
                            &mut self.out,
                            &mut pos,
                            &mut self.lens,
                            &mut self.extra,
                        );
                    }
                }
            }
            st.last_tx_tick = self.shared.ticks.load(Ordering::Relaxed);
            Dest::of(st.endpoint)
        };
        for d in std::mem::take(&mut self.extra) {
            self.shared.send(&peer, dest, &d).await;
        }
        if self.lens.is_empty() {
            return;
        }
        if let Dest::Direct(addr) = dest {
            self.tell_too_big(start, n, largest, addr);
        }
        match dest {
            Dest::Direct(addr) => {
                peer.tx_bytes.fetch_add(pos as u64, Ordering::Relaxed);
                self.shared
                    .gso
                    .send(&self.shared.socket, &self.out[..pos], &self.lens, addr)
                    .await;
            }
            Dest::Relay => {
                // The segments of one packet go to the daemon together: all
                // of one size but the last, so that it can send them to the
                // relay in one system call.
                let segment = self.lens[0];
                let uniform = self.lens[..self.lens.len() - 1]
                    .iter()
                    .all(|l| *l == segment)
                    && self.lens[self.lens.len() - 1] <= segment;
                if uniform {
                    peer.tx_bytes.fetch_add(pos as u64, Ordering::Relaxed);
                    let out = Outgoing {
                        to: peer.key,
                        datagrams: self.out[..pos].to_vec(),
                        segment,
                    };
                    if self.shared.outgoing.send(out).await.is_err() {
                        tracing::debug!(peer = ?peer.key, "outgoing channel closed");
                    }
                } else {
                    let mut off = 0;
                    for len in &self.lens {
                        self.shared
                            .send(&peer, dest, &self.out[off..off + len])
                            .await;
                        off += len;
                    }
                }
            }
        }
        self.lens.clear();
    }
}

/// Writes the coalesced inbound packet once the task that fed it yields.
async fn gro_flusher(shared: Arc<Shared>) {
    loop {
        shared.gro_notify.notified().await;
        shared.flush_gro();
    }
}

/// WireGuard's timers, our persistent keepalives, the rate limiter's clock.
async fn timers(shared: Arc<Shared>) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = shared.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        shared.flush_gro();
        if now.is_multiple_of(TICKS_PER_SECOND) {
            shared.rate_limiter.reset_count();
        }
        let table = shared.snapshot();
        for peer in table.by_key.values() {
            let mut st = peer.lock();
            let dest = Dest::of(st.endpoint);
            match st.tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(out) => {
                    st.last_tx_tick = now;
                    st.note_sent(out, now);
                    shared.send_now(peer, dest, out);
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => tracing::debug!(peer = ?peer.key, "timers: {e:?}"),
                _ => {}
            }
            if let Some(k) = st.keepalive
                && now.saturating_sub(st.last_tx_tick) >= u64::from(k) * TICKS_PER_SECOND
            {
                st.last_tx_tick = now;
                if let TunnResult::WriteToNetwork(out) = st.tunn.encapsulate(&[], &mut buf) {
                    shared.send_now(peer, dest, out);
                }
            }
        }
    }
}
