//! Real WireGuard in the whole-node simulator: [`WgDataplane`], a data
//! plane of `wirehub-core`'s `node::sim` (its [`SimDataplane`] seam) made of
//! boringtun's `Tunn`s, one per peer, as the daemon's embedded data plane
//! uses them, driven at the simulated time. See docs/simulator.md.
//!
//! Contract:
//! - It owns one `Tunn` per peer the core programs (at most [`MAX_PEERS`];
//!   past that a peer is refused and counted), the table from session
//!   index to peer, and its timer. It owns no socket and no thread.
//! - The clock: boringtun is built here with its `mock-instant` feature,
//!   so every `Tunn` reads `mock_instant`'s clock, which is per thread.
//!   Before every call into a `Tunn` it sets that clock to the simulated
//!   time since the network's start (`now - origin`): a simulated network
//!   must run whole on one thread, and one network at a time per thread
//!   (`node::sim::cli` does so). Handshakes, retries, keepalives, rekeys
//!   and session expiry all happen at the simulated time.
//! - "Delivered" means a `Tunn` decrypted the datagram into the IPv4 packet
//!   the other side's `Tunn` encrypted: the payload handed back is that
//!   packet's contents. Datagrams of a key it has no peer for, or that fail
//!   to decrypt, deliver nothing and are counted by reason ([`Drops`]).
//! - Not deterministic to the byte: boringtun draws each handshake's
//!   ephemeral key and each `Tunn`'s cookie secret from the operating
//!   system, and stamps initiations from the system clock at the `Tunn`'s
//!   creation, so datagram bytes differ between runs; their sizes, times
//!   and order do not depend on those bytes.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use mock_instant::MockClock;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wirehub_core::dataplane::{HANDSHAKE_RATE_LIMIT, PeerConfig, yields_to_crossing_initiation};
use wirehub_core::keys::{PrivateKey, PublicKey};
use wirehub_core::node::core::Now;
use wirehub_core::node::sim::dataplane::{Received, Sent, SimDataplane};

/// How often the `Tunn`s' timers run (the daemon's tick).
pub const TICK: Duration = Duration::from_millis(100);
/// Peers one data plane holds; past this, new ones are refused.
pub const MAX_PEERS: usize = 1024;
/// Room for one datagram or packet (the simulator's payloads are small).
const BUF_LEN: usize = 2048;
/// IPv4 header length of the packets it wraps payloads in.
const IPV4_HEADER: usize = 20;

/// What a data plane dropped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// Not a WireGuard message at all.
    pub not_wireguard: u64,
    /// A handshake from a key it has no peer for, or a session index it
    /// does not know (e.g. of a peer that restarted).
    pub unknown_peer: u64,
    /// A `Tunn` refused it (bad MAC or tag, replay, old timestamp, ...).
    pub rejected: u64,
    /// A payload for a peer it does not have.
    pub no_peer: u64,
    /// A peer past [`MAX_PEERS`].
    pub no_room: u64,
    /// A timer error other than a session that expired.
    pub timer: u64,
    /// A handshake initiation left unanswered because ours crossed it
    /// (`yields_to_crossing_initiation`).
    pub crossing_yielded: u64,
}

struct WgPeer {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    /// The last handshake initiation sent, and when (the mock clock): a
    /// path that moves before a session exists gets this one again, as the
    /// daemon's data plane does (`embedded.rs`, `initiate_again`).
    last_init: Option<(Vec<u8>, Duration)>,
}

impl WgPeer {
    /// `bytes` to send to `to`, noting a handshake initiation.
    fn out(&mut self, to: PublicKey, direct: Option<SocketAddr>, bytes: &[u8]) -> Sent {
        if bytes.len() == HANDSHAKE_INIT_LEN && bytes.first() == Some(&1) {
            self.last_init = Some((bytes.to_vec(), MockClock::time()));
        }
        sent(to, direct, bytes)
    }
}

/// The size of a WireGuard handshake initiation (message type 1).
const HANDSHAKE_INIT_LEN: usize = 148;
/// How long an initiation is worth sending again: WireGuard's
/// REKEY_TIMEOUT, after which boringtun sends a new one itself.
const INIT_REUSABLE: Duration = Duration::from_secs(5);

/// A host's data plane of real WireGuard `Tunn`s. See the module's contract.
pub struct WgDataplane {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    /// The simulated network's start: the mock clock reads `now - origin`.
    origin: Instant,
    peers: BTreeMap<PublicKey, WgPeer>,
    /// Session index (a `Tunn`'s index, the top 24 bits) -> peer.
    by_index: BTreeMap<u32, PublicKey>,
    /// One handshake limiter for the node, as the daemon's data planes
    /// have (`HANDSHAKE_RATE_LIMIT`), not boringtun's 10 a second per peer.
    rate_limiter: Arc<RateLimiter>,
    next_index: u32,
    next_tick: Option<Instant>,
    /// Payloads delivered (decrypted) in all.
    pub delivered: u64,
    pub drops: Drops,
}

/// The [`wirehub_core::node::sim::dataplane::MakeDataplane`] of real
/// WireGuard.
pub fn wireguard(key: &PrivateKey, origin: Instant) -> Box<dyn SimDataplane> {
    Box::new(WgDataplane::new(key, origin))
}

impl WgDataplane {
    pub fn new(key: &PrivateKey, origin: Instant) -> WgDataplane {
        let private = x25519::StaticSecret::from(*key.as_bytes());
        let public = x25519::PublicKey::from(&private);
        // The limiter notes the (mock, per thread) clock of its creation:
        // the start of the simulated network, never a time left over by an
        // earlier network on this thread (its count would never reset).
        MockClock::set_time(Duration::ZERO);
        WgDataplane {
            private,
            public,
            origin,
            peers: BTreeMap::new(),
            by_index: BTreeMap::new(),
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            next_index: 1,
            next_tick: None,
            delivered: 0,
            drops: Drops::default(),
        }
    }

    /// Sets the `Tunn`s' clock (this thread's) to `now`.
    fn clock(&self, now: Now) {
        MockClock::set_time(now.mono.saturating_duration_since(self.origin));
    }

    fn index_of(&self, key: &PublicKey) -> Option<u32> {
        self.by_index
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(i, _)| *i)
    }

    /// A handshake initiation to `key` (`force`: replacing one in flight).
    fn initiate(&mut self, key: PublicKey, force: bool) -> Vec<Sent> {
        let mut buf = [0u8; BUF_LEN];
        let Some(p) = self.peers.get_mut(&key) else {
            return Vec::new();
        };
        match p.tunn.format_handshake_initiation(&mut buf, force) {
            TunnResult::WriteToNetwork(d) => vec![p.out(key, None, d)],
            _ => Vec::new(),
        }
    }

    /// Which peer a datagram is from: the one a relay names, else the key
    /// in a handshake initiation, else its session index.
    fn sender(&mut self, packet: &Packet, relay_says: Option<PublicKey>) -> Option<PublicKey> {
        let key = match (relay_says, packet) {
            (Some(k), _) => Some(k),
            (None, Packet::HandshakeInit(p)) => {
                match parse_handshake_anon(&self.private, &self.public, p) {
                    Ok(h) => Some(PublicKey(h.peer_static_public)),
                    Err(_) => {
                        self.drops.rejected += 1;
                        return None;
                    }
                }
            }
            (None, Packet::HandshakeResponse(p)) => {
                self.by_index.get(&(p.receiver_idx >> 8)).copied()
            }
            (None, Packet::PacketCookieReply(p)) => {
                self.by_index.get(&(p.receiver_idx >> 8)).copied()
            }
            (None, Packet::PacketData(p)) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
        };
        let known = key.filter(|k| self.peers.contains_key(k));
        if known.is_none() {
            self.drops.unknown_peer += 1;
        }
        known
    }

    fn arm_timer(&mut self, now: Now) {
        self.next_tick = if self.peers.is_empty() {
            None
        } else {
            Some(self.next_tick.unwrap_or(now.mono + TICK))
        };
    }
}

fn sent(to: PublicKey, direct: Option<SocketAddr>, bytes: &[u8]) -> Sent {
    Sent {
        to,
        direct,
        bytes: bytes.to_vec(),
    }
}

/// `payload` as the contents of an IPv4 packet (a `Tunn` delivers only IP
/// packets). The addresses are placeholders: allowed IPs are not checked.
fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let total = (IPV4_HEADER + payload.len()) as u16;
    let mut p = vec![0u8; IPV4_HEADER];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 9, 0, 1]);
    p[16..20].copy_from_slice(&[10, 9, 0, 2]);
    p.extend_from_slice(payload);
    p
}

/// The contents of an IPv4 packet a `Tunn` delivered.
fn ipv4_payload(packet: &[u8]) -> Option<&[u8]> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    packet.get(header..)
}

impl SimDataplane for WgDataplane {
    fn set_peer(&mut self, now: Now, cfg: &PeerConfig) -> Vec<Sent> {
        self.clock(now);
        if let Some(p) = self.peers.get_mut(&cfg.key) {
            let moved = p.endpoint != cfg.endpoint;
            p.endpoint = cfg.endpoint;
            // No session yet and a new path: the pending initiation went the
            // old way; send it again the new way now, as the daemon does (a
            // new one per move undid the answer to the last: seed
            // 5367838300114716957 waited for WireGuard's 15 s retry).
            if moved && p.tunn.stats().0.is_none() {
                if let Some((init, at)) = &p.last_init
                    && MockClock::time().saturating_sub(*at) < INIT_REUSABLE
                {
                    return vec![sent(cfg.key, None, init)];
                }
                return self.initiate(cfg.key, true);
            }
            return Vec::new();
        }
        if self.peers.len() >= MAX_PEERS {
            self.drops.no_room += 1;
            return Vec::new();
        }
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.private.clone(),
            x25519::PublicKey::from(cfg.key.0),
            None,
            cfg.keepalive.filter(|k| *k > 0),
            index,
            Some(Arc::clone(&self.rate_limiter)),
        );
        self.by_index.insert(index, cfg.key);
        self.peers.insert(
            cfg.key,
            WgPeer {
                tunn,
                endpoint: cfg.endpoint,
                last_init: None,
            },
        );
        self.arm_timer(now);
        // A new peer: handshake at once, as the daemon does.
        self.initiate(cfg.key, false)
    }

    fn remove_peer(&mut self, _: Now, key: &PublicKey) {
        self.peers.remove(key);
        if let Some(i) = self.index_of(key) {
            self.by_index.remove(&i);
        }
    }

    fn send(&mut self, now: Now, to: &PublicKey, payload: &[u8]) -> Vec<Sent> {
        self.clock(now);
        let Some(p) = self.peers.get_mut(to) else {
            self.drops.no_peer += 1;
            return Vec::new();
        };
        let packet = ipv4_packet(payload);
        let mut buf = [0u8; BUF_LEN];
        match p.tunn.encapsulate(&packet, &mut buf) {
            TunnResult::WriteToNetwork(d) => vec![p.out(*to, None, d)],
            // Queued until the handshake completes, or dropped.
            _ => Vec::new(),
        }
    }

    fn receive(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &[u8],
        relay_says: Option<PublicKey>,
    ) -> Received {
        self.clock(now);
        let mut got = Received::default();
        let Ok(packet) = Tunn::parse_incoming_packet(datagram) else {
            self.drops.not_wireguard += 1;
            return got;
        };
        let Some(key) = self.sender(&packet, relay_says) else {
            return got;
        };
        let Some(p) = self.peers.get_mut(&key) else {
            return got;
        };
        // Replies to a direct datagram go back where it came from; replies
        // to a relayed one take the peer's programmed path.
        let reply_to = relay_says.is_none().then_some(from);
        let mut buf = [0u8; BUF_LEN];
        // Crossing initiations: the lower key does not answer, and sends a
        // new initiation of its own the way the peer's came (the answer to
        // the last one is still taken).
        if matches!(packet, Packet::HandshakeInit(_))
            && let Some((_, at)) = &p.last_init
        {
            let me = PublicKey(*self.public.as_bytes());
            let own_age = MockClock::time().saturating_sub(*at);
            let has_session = p.tunn.stats().0.is_some();
            if yields_to_crossing_initiation(&me, &key, has_session, Some(own_age)) {
                self.drops.crossing_yielded += 1;
                if let TunnResult::WriteToNetwork(d) =
                    p.tunn.format_handshake_initiation(&mut buf, true)
                {
                    got.sent.push(p.out(key, reply_to, d));
                }
                return got;
            }
        }
        match p.tunn.decapsulate(Some(from.ip()), datagram, &mut buf) {
            TunnResult::WriteToNetwork(d) => got.sent.push(p.out(key, reply_to, d)),
            TunnResult::WriteToTunnelV4(packet, _) => {
                got.payload = ipv4_payload(packet).map(<[u8]>::to_vec);
            }
            TunnResult::WriteToTunnelV6(..) | TunnResult::Done => {}
            TunnResult::Err(_) => self.drops.rejected += 1,
        }
        // Packets queued while the handshake was in flight.
        while let TunnResult::WriteToNetwork(d) = p.tunn.decapsulate(None, &[], &mut buf) {
            got.sent.push(p.out(key, None, d));
        }
        if got.payload.is_some() {
            self.delivered += 1;
        }
        got
    }

    fn next_timer(&self) -> Option<Instant> {
        self.next_tick
    }

    fn on_timer(&mut self, now: Now) -> Vec<Sent> {
        self.clock(now);
        // Zeroes the count once a second has passed since the last reset.
        self.rate_limiter.reset_count();
        let mut out = Vec::new();
        let mut buf = [0u8; BUF_LEN];
        for (key, p) in self.peers.iter_mut() {
            match p.tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(d) => out.push(p.out(*key, None, d)),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(_) => self.drops.timer += 1,
                _ => {}
            }
        }
        self.next_tick = None;
        if !self.peers.is_empty() {
            self.next_tick = Some(now.mono + TICK);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PrivateKey {
        PrivateKey::from_bytes([b; 32])
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 62096))
    }

    fn peer(k: &PrivateKey, i: u8) -> PeerConfig {
        PeerConfig {
            key: k.public_key(),
            allowed_ips: Vec::new(),
            endpoint: Some(addr(i)),
            keepalive: None,
        }
    }

    /// Carries datagrams between planes (index = address's last byte - 1)
    /// until none is left; returns the payloads each plane delivered.
    fn exchange(
        planes: &mut [&mut WgDataplane],
        keys: &[PublicKey],
        now: Now,
        mut queue: Vec<(usize, Sent)>,
    ) -> Vec<Vec<Vec<u8>>> {
        let mut got = vec![Vec::new(); planes.len()];
        let mut steps = 0;
        while let Some((from, s)) = queue.pop() {
            steps += 1;
            assert!(steps < 100, "the planes keep answering each other");
            let Some(to) = keys.iter().position(|k| *k == s.to) else {
                continue;
            };
            let r = planes[to].receive(now, addr(from as u8 + 1), &s.bytes, None);
            got[to].extend(r.payload);
            queue.extend(r.sent.into_iter().map(|x| (to, x)));
        }
        got
    }

    /// The time, two keys and a plane for each, made at that time.
    fn two_planes() -> (Now, PrivateKey, PrivateKey, WgDataplane, WgDataplane) {
        let origin = Instant::now();
        let now = Now {
            mono: origin,
            unix_ms: 1_800_000_000_000,
        };
        let (ka, kb) = (key(1), key(2));
        let (a, b) = (WgDataplane::new(&ka, origin), WgDataplane::new(&kb, origin));
        (now, ka, kb, a, b)
    }

    #[test]
    fn two_trusting_planes_handshake_and_deliver_what_the_other_encrypted() {
        let (now, ka, kb, mut a, mut b) = two_planes();
        b.set_peer(now, &peer(&ka, 1));
        let hello = a.set_peer(now, &peer(&kb, 2));
        assert_eq!(hello.len(), 1, "a new peer gets a handshake initiation");
        assert_eq!(hello[0].bytes.first(), Some(&1));
        let keys = [ka.public_key(), kb.public_key()];
        let queue = hello.into_iter().map(|s| (0, s)).collect();
        exchange(&mut [&mut a, &mut b], &keys, now, queue);
        let data = a.send(now, &kb.public_key(), &[4, 7, 7]);
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].bytes.first(), Some(&4), "a transport-data message");
        assert!(
            !data[0].bytes.windows(3).any(|w| w == [4, 7, 7]),
            "encrypted"
        );
        let queue = data.into_iter().map(|s| (0, s)).collect();
        let got = exchange(&mut [&mut a, &mut b], &keys, now, queue);
        assert_eq!(got[1], vec![vec![4, 7, 7]]);
        assert_eq!(b.delivered, 1);
    }

    /// Both ends initiate before either hears the other, with a packet
    /// queued on each: the lower key waits for the answer to its own, so
    /// a session forms and both packets arrive, instead of each end
    /// answering the other's initiations for ever (net-sim-wg seed
    /// 7351719995460706832).
    #[test]
    fn crossing_initiations_make_one_session_and_deliver_both_queued_packets() {
        let (now, ka, kb, mut a, mut b) = two_planes();
        let hello_a = a.set_peer(now, &peer(&kb, 2));
        let hello_b = b.set_peer(now, &peer(&ka, 1));
        assert!(a.send(now, &kb.public_key(), &[1, 1]).is_empty(), "queued");
        assert!(b.send(now, &ka.public_key(), &[2, 2]).is_empty(), "queued");
        // Both initiations are on the wire at once; datagrams arrive in
        // the order they were sent.
        let mut wire: std::collections::VecDeque<(usize, Sent)> =
            (hello_a.into_iter().map(|s| (0, s)))
                .chain(hello_b.into_iter().map(|s| (1, s)))
                .collect();
        let mut got = [Vec::new(), Vec::new()];
        let mut carried = 0;
        while let Some((from, s)) = wire.pop_front() {
            carried += 1;
            assert!(carried < 50, "the ends keep answering each other");
            let to = 1 - from;
            let plane = if to == 0 { &mut a } else { &mut b };
            let r = plane.receive(now, addr(from as u8 + 1), &s.bytes, None);
            got[to].extend(r.payload);
            wire.extend(r.sent.into_iter().map(|x| (to, x)));
        }
        assert_eq!(got[1], vec![vec![1, 1]], "a's packet reached b");
        assert_eq!(got[0], vec![vec![2, 2]], "b's packet reached a");
        let lower = if ka.public_key() < kb.public_key() {
            &a
        } else {
            &b
        };
        assert!(lower.drops.crossing_yielded > 0);
    }

    #[test]
    fn an_untrusted_node_gets_nothing_decrypted_and_nothing_answered() {
        let origin = Instant::now();
        let now = Now {
            mono: origin,
            unix_ms: 1_800_000_000_000,
        };
        let (ka, kc) = (key(1), key(3));
        // A has no peer C; C programs A as its peer anyway.
        let mut a = WgDataplane::new(&ka, origin);
        a.set_peer(now, &peer(&key(2), 2));
        let mut c = WgDataplane::new(&kc, origin);
        let mut sent = c.set_peer(now, &peer(&ka, 1));
        sent.extend(c.send(now, &ka.public_key(), &[4, 6, 6]));
        assert!(!sent.is_empty());
        for s in &sent {
            let r = a.receive(now, addr(3), &s.bytes, None);
            assert_eq!(r.payload, None);
            assert!(r.sent.is_empty(), "no handshake response to a stranger");
            // Even with a relay naming it.
            let r = a.receive(now, addr(3), &s.bytes, Some(kc.public_key()));
            assert_eq!(r.payload, None);
        }
        assert_eq!(a.delivered, 0);
        assert_eq!(a.drops.unknown_peer, 2 * sent.len() as u64);
    }

    #[test]
    fn the_tunns_run_on_the_simulated_clock_and_rekey_after_two_simulated_minutes() {
        let origin = Instant::now();
        let mut now = Now {
            mono: origin,
            unix_ms: 1_800_000_000_000,
        };
        let (ka, kb) = (key(1), key(2));
        let mut a = WgDataplane::new(&ka, origin);
        let mut b = WgDataplane::new(&kb, origin);
        b.set_peer(now, &peer(&ka, 1));
        let keys = [ka.public_key(), kb.public_key()];
        let hello = a.set_peer(now, &peer(&kb, 2));
        let queue = hello.into_iter().map(|s| (0, s)).collect();
        exchange(&mut [&mut a, &mut b], &keys, now, queue);
        let mut initiations_at = Vec::new();
        // Three simulated minutes of traffic every second, in no real time.
        while now.mono < origin + Duration::from_secs(180) {
            now = now.after(TICK);
            let mut out = a.on_timer(now);
            if (now.mono - origin).subsec_millis() == 0 {
                out.extend(a.send(now, &kb.public_key(), &[4, 1]));
            }
            for s in &out {
                if s.bytes.first() == Some(&1) {
                    initiations_at.push((now.mono - origin).as_secs());
                }
            }
            let mut queue: Vec<(usize, Sent)> = out.into_iter().map(|s| (0, s)).collect();
            // B answers with its keepalives (WireGuard's passive keepalive).
            queue.extend(b.on_timer(now).into_iter().map(|s| (1, s)));
            exchange(&mut [&mut a, &mut b], &keys, now, queue);
        }
        assert!(
            initiations_at
                .first()
                .is_some_and(|t| (120..=125).contains(t)),
            "rekey initiations at {initiations_at:?} s"
        );
        assert!(b.delivered >= 170, "delivered {}", b.delivered);
    }
}
