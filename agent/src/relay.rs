//! Relays, free of I/O.
//!
//! - [`RelayLimiter`]: what a node that relays for others lets through: only
//!   sealed messages addressed to a key it can reach, within per-source rate
//!   and byte limits. It never sees inside WireGuard traffic.
//! - [`RelaySet`]: the relays a node behind NAT keeps alive and publishes in
//!   its record: at least two public DHT nodes, diverse and quick.
//! - [`RelayHealth`]: liveness of the relays a node sends through, so traffic
//!   moves to another relay within seconds when one dies.
//! - [`channel`]: once a relayed flow is established, its WireGuard
//!   datagrams travel through the relay on an announced channel, unsealed
//!   (WireGuard protects them end to end).

pub mod channel;

use crate::keys::PublicKey;
use crate::proto::NatKind;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Sources tracked by the limiter; the least recently seen is forgotten first.
const MAX_SOURCES: usize = 4096;

/// Per-source limits of a relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Sustained bytes per second per source.
    pub bytes_per_sec: u64,
    /// Burst, in bytes.
    pub burst_bytes: u64,
    /// Sustained datagrams per second per source.
    pub packets_per_sec: u64,
}

/// Default per-source rate a node relays, in Mbit/s (`wh up relay-limit`).
pub const DEFAULT_RELAY_MBIT: u32 = 2000;

impl RelayLimits {
    /// Limits for a sustained `mbit` Mbit/s per source: a burst of an
    /// eighth of a second (at least 1 MiB), and a datagram rate that
    /// allows full-sized WireGuard datagrams (a flood of small ones hits it
    /// first).
    pub fn from_mbit(mbit: u32) -> RelayLimits {
        let bytes_per_sec = u64::from(mbit.max(1)) * 125_000;
        RelayLimits {
            bytes_per_sec,
            burst_bytes: (bytes_per_sec / 8).max(1024 * 1024),
            packets_per_sec: (bytes_per_sec / 1000).max(1000),
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits::from_mbit(DEFAULT_RELAY_MBIT)
    }
}

#[derive(Debug)]
struct Bucket {
    bytes: f64,
    packets: f64,
    last: Instant,
}

/// Counters of what a relay did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RelayCounters {
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    pub dropped_rate: u64,
    pub dropped_unknown_destination: u64,
}

/// Token buckets per source key.
#[derive(Debug, Default)]
pub struct RelayLimiter {
    limits: RelayLimits,
    buckets: HashMap<PublicKey, Bucket>,
    pub counters: RelayCounters,
}

impl RelayLimiter {
    pub fn new(limits: RelayLimits) -> Self {
        RelayLimiter {
            limits,
            buckets: HashMap::new(),
            counters: RelayCounters::default(),
        }
    }

    /// May `source` have `bytes` forwarded now? Counts the decision.
    pub fn allow(&mut self, source: PublicKey, bytes: usize, now: Instant) -> bool {
        self.allow_many(source, bytes, 1, now)
    }

    /// May `source` have `packets` datagrams of `bytes` in all forwarded
    /// now (a batch the kernel coalesced)? Counts the decision.
    pub fn allow_many(
        &mut self,
        source: PublicKey,
        bytes: usize,
        packets: usize,
        now: Instant,
    ) -> bool {
        if !self.buckets.contains_key(&source)
            && self.buckets.len() >= MAX_SOURCES
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| *k)
        {
            self.buckets.remove(&oldest);
        }
        let l = self.limits;
        let b = self.buckets.entry(source).or_insert(Bucket {
            bytes: l.burst_bytes as f64,
            packets: l.packets_per_sec as f64,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.bytes = (b.bytes + dt * l.bytes_per_sec as f64).min(l.burst_bytes as f64);
        b.packets = (b.packets + dt * l.packets_per_sec as f64).min(l.packets_per_sec as f64);
        let n = packets as f64;
        if b.bytes >= bytes as f64 && b.packets >= n {
            b.bytes -= bytes as f64;
            b.packets -= n;
            self.counters.forwarded += packets as u64;
            self.counters.forwarded_bytes += bytes as u64;
            true
        } else {
            self.counters.dropped_rate += 1;
            false
        }
    }
}

/// How many relays a node behind NAT keeps.
pub const RELAYS_WANTED: usize = 2;
/// A kept relay is pinged this often (it also holds the NAT mapping).
pub const RELAY_KEEPALIVE: Duration = Duration::from_secs(5);
/// Missed pings before a kept relay is replaced.
pub const RELAY_MISSES: u32 = 3;

#[derive(Debug, Clone)]
struct Kept {
    key: PublicKey,
    addr: SocketAddr,
    rtt: Option<Duration>,
    last_ping: Option<Instant>,
    last_pong: Option<Instant>,
    misses: u32,
}

/// The relays a node behind NAT keeps alive.
#[derive(Debug, Default)]
pub struct RelaySet {
    kept: Vec<Kept>,
}

/// A DHT node that could relay.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PublicKey,
    pub addr: SocketAddr,
    pub nat: NatKind,
    pub rtt: Option<Duration>,
}

fn network_of(ip: IpAddr) -> [u8; 3] {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            [o[0], o[1], o[2]]
        }
        IpAddr::V6(v) => {
            let o = v.octets();
            [o[0], o[1], o[2] ^ o[3]]
        }
    }
}

impl RelaySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The relays kept now, quickest first: what the node publishes.
    /// The kept relay at `addr`.
    pub fn key_at(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.kept.iter().find(|k| k.addr == addr).map(|k| k.key)
    }

    pub fn relays(&self) -> Vec<(PublicKey, SocketAddr)> {
        let mut v = self.kept.clone();
        v.sort_by_key(|k| k.rtt.unwrap_or(Duration::MAX));
        v.into_iter().map(|k| (k.key, k.addr)).collect()
    }

    /// Fills the set from candidates (public nodes only, never `own` nor the
    /// excluded keys), preferring other /24 networks than the kept ones, then
    /// lower round-trip times. Returns true when the set changed.
    pub fn fill(
        &mut self,
        own: &PublicKey,
        candidates: &[Candidate],
        exclude: &[PublicKey],
    ) -> bool {
        let mut changed = false;
        let mut pool: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.nat == NatKind::Public && &c.key != own && !exclude.contains(&c.key))
            .filter(|c| !self.kept.iter().any(|k| k.key == c.key))
            .collect();
        pool.sort_by_key(|c| c.rtt.unwrap_or(Duration::from_secs(10)));
        while self.kept.len() < RELAYS_WANTED && !pool.is_empty() {
            let nets: Vec<[u8; 3]> = self.kept.iter().map(|k| network_of(k.addr.ip())).collect();
            let pick = pool
                .iter()
                .position(|c| !nets.contains(&network_of(c.addr.ip())))
                .unwrap_or(0);
            let c = pool.remove(pick);
            self.kept.push(Kept {
                key: c.key,
                addr: c.addr,
                rtt: c.rtt,
                last_ping: None,
                last_pong: None,
                misses: 0,
            });
            changed = true;
        }
        changed
    }

    /// A kept relay answered.
    pub fn on_pong(&mut self, key: &PublicKey, rtt: Option<Duration>, now: Instant) {
        if let Some(k) = self.kept.iter_mut().find(|k| &k.key == key) {
            k.last_pong = Some(now);
            k.misses = 0;
            if rtt.is_some() {
                k.rtt = rtt;
            }
        }
    }

    /// Relays to ping now; relays that missed too many pings are dropped
    /// (returned second, so the caller republishes and refills).
    pub fn on_tick(&mut self, now: Instant) -> (Vec<(PublicKey, SocketAddr)>, Vec<PublicKey>) {
        let mut ping = Vec::new();
        for k in &mut self.kept {
            if k.last_ping
                .is_none_or(|t| now.duration_since(t) >= RELAY_KEEPALIVE)
            {
                if let Some(t) = k.last_ping
                    && k.last_pong.is_none_or(|p| p < t)
                {
                    k.misses += 1;
                }
                k.last_ping = Some(now);
                ping.push((k.key, k.addr));
            }
        }
        let dead: Vec<PublicKey> = self
            .kept
            .iter()
            .filter(|k| k.misses >= RELAY_MISSES)
            .map(|k| k.key)
            .collect();
        self.kept.retain(|k| k.misses < RELAY_MISSES);
        (ping, dead)
    }

    /// Forgets every relay (the node turned out to be public).
    pub fn clear(&mut self) -> bool {
        let had = !self.kept.is_empty();
        self.kept.clear();
        had
    }
}

/// A relay in use is pinged this often while traffic goes through it.
pub const IN_USE_PING: Duration = Duration::from_millis(150);
/// No pong for this long: the relay in use is dead, the next one is used.
pub const IN_USE_DEAD: Duration = Duration::from_millis(600);

#[derive(Debug, Clone, Copy)]
struct Watch {
    last_ping: Instant,
    /// Oldest ping not answered yet.
    unanswered_since: Option<Instant>,
}

/// Liveness of the relays this node sends through.
#[derive(Debug, Default)]
pub struct RelayHealth {
    watched: HashMap<PublicKey, Watch>,
}

impl RelayHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// `relay` is in use: returns true when it is due for a ping.
    pub fn due(&mut self, relay: PublicKey, now: Instant) -> bool {
        match self.watched.get_mut(&relay) {
            None => {
                self.watched.insert(
                    relay,
                    Watch {
                        last_ping: now,
                        unanswered_since: Some(now),
                    },
                );
                true
            }
            Some(w) if now.duration_since(w.last_ping) >= IN_USE_PING => {
                w.last_ping = now;
                w.unanswered_since.get_or_insert(now);
                true
            }
            Some(_) => false,
        }
    }

    /// Any authenticated message from `relay` proves it alive.
    pub fn on_contact(&mut self, relay: &PublicKey) {
        if let Some(w) = self.watched.get_mut(relay) {
            w.unanswered_since = None;
        }
    }

    /// True when `relay` has been silent past [`IN_USE_DEAD`].
    pub fn is_dead(&self, relay: &PublicKey, now: Instant) -> bool {
        self.watched
            .get(relay)
            .and_then(|w| w.unanswered_since)
            .is_some_and(|t| now.duration_since(t) >= IN_USE_DEAD)
    }

    /// Stops watching relays no longer in use.
    pub fn retain(&mut self, in_use: &[PublicKey]) {
        self.watched.retain(|k, _| in_use.contains(k));
    }

    pub fn forget(&mut self, relay: &PublicKey) {
        self.watched.remove(relay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::generate().unwrap().public_key()
    }

    #[test]
    fn limiter_enforces_bytes_and_refills() {
        let mut l = RelayLimiter::new(RelayLimits {
            bytes_per_sec: 1000,
            burst_bytes: 2000,
            packets_per_sec: 100,
        });
        let s = key();
        let now = Instant::now();
        assert!(l.allow(s, 1500, now));
        assert!(!l.allow(s, 1500, now), "over the burst");
        assert!(l.allow(s, 1500, now + Duration::from_secs(1)), "refilled");
        // Another source has its own bucket.
        assert!(l.allow(key(), 1500, now));
        assert_eq!(l.counters.dropped_rate, 1);
        assert_eq!(l.counters.forwarded, 3);
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let mut l = RelayLimiter::new(RelayLimits::default());
        let now = Instant::now();
        for _ in 0..(MAX_SOURCES + 10) {
            l.allow(key(), 10, now);
        }
        assert!(l.buckets.len() <= MAX_SOURCES);
    }

    #[test]
    fn relay_set_prefers_public_diverse_quick_nodes_and_drops_dead_ones() {
        let own = key();
        let c = |ip: &str, nat, rtt| Candidate {
            key: key(),
            addr: format!("{ip}:62096").parse().unwrap(),
            nat,
            rtt: Some(Duration::from_millis(rtt)),
        };
        let cands = vec![
            c("203.0.113.10", NatKind::Public, 5),
            c("203.0.113.11", NatKind::Public, 6),
            c("198.51.100.10", NatKind::Public, 50),
            c("203.0.113.12", NatKind::EndpointIndependent, 1),
        ];
        let mut s = RelaySet::new();
        assert!(s.fill(&own, &cands, &[]));
        let r = s.relays();
        assert_eq!(r.len(), RELAYS_WANTED);
        assert_eq!(r[0].0, cands[0].key, "quickest first");
        assert_eq!(
            r[1].0, cands[2].key,
            "another network before a quicker node of the same"
        );
        let now = Instant::now();
        let (ping, dead) = s.on_tick(now);
        assert_eq!(ping.len(), 2);
        assert!(dead.is_empty());
        s.on_pong(&cands[0].key, None, now);
        let mut t = now;
        let mut gone = Vec::new();
        for _ in 0..RELAY_MISSES {
            t += RELAY_KEEPALIVE;
            s.on_pong(&cands[0].key, None, t);
            gone.extend(s.on_tick(t).1);
        }
        assert_eq!(gone, vec![cands[2].key]);
        assert!(s.fill(&own, &cands, &gone));
        assert_eq!(s.relays().len(), 2);
    }

    #[test]
    fn health_declares_a_silent_relay_dead() {
        let r = key();
        let mut h = RelayHealth::new();
        let now = Instant::now();
        assert!(h.due(r, now));
        assert!(!h.is_dead(&r, now + Duration::from_millis(500)));
        h.on_contact(&r);
        assert!(h.due(r, now + IN_USE_PING));
        assert!(!h.is_dead(&r, now + IN_USE_PING + Duration::from_millis(100)));
        assert!(h.is_dead(&r, now + IN_USE_PING + IN_USE_DEAD));
    }
}
