//! What a node that relays for others lets through, free of I/O.
//!
//! Owns three layers of token buckets (bytes and datagrams): one per source
//! key, one per source network (an IPv4 /24 or an IPv6 /64: where a host's
//! keys and addresses come from), and one for the whole node. A forwarded
//! datagram needs room in all three; so a source that rotates keys stays
//! within its network's share, and sources that rotate keys and addresses
//! stay within the node's total, whatever they do.
//!
//! Promises: memory bounded ([`MAX_SOURCES`] keys, [`MAX_SOURCES`]
//! networks), eviction in O(1) (the oldest entry goes first; an evicted
//! bucket comes back full, so eviction never starves an honest source and
//! the node-wide bucket still bounds an attacker who churns the table);
//! every decision counted by reason.
//!
//! [`SharedLimiter`] is one [`RelayLimiter`] behind a mutex, shared by the
//! node core (sealed relay traffic) and the shell's relay fast path
//! ([`super::fastpath`], channel traffic on other threads): every source
//! has one set of buckets whatever thread forwards for it. A run of
//! datagrams is charged under one lock.
//!
//! Never: looks inside what it limits, or decides where it goes.

use crate::keys::PublicKey;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Keys (and networks) tracked; beyond, the oldest is forgotten first.
pub const MAX_SOURCES: usize = 4096;
/// The node-wide limit, in multiples of one source's.
pub const TOTAL_SOURCES: u64 = 4;

/// The highest `relay-limit` (Mbit/s); 0 switches relaying off.
pub const MAX_RELAY_MBIT: u32 = 1_000_000;

/// Whether `mbit` is a `relay-limit` a node takes: 0 (relay for nobody) to
/// [`MAX_RELAY_MBIT`].
pub fn valid_relay_mbit(mbit: u32) -> bool {
    mbit <= MAX_RELAY_MBIT
}

/// A relay's limits.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Sustained bytes per second per source key, and per source network.
    pub bytes_per_sec: u64,
    /// Burst, in bytes.
    pub burst_bytes: u64,
    /// Sustained datagrams per second per source.
    pub packets_per_sec: u64,
    /// The node's total, as a multiple of the above ([`TOTAL_SOURCES`]).
    pub total_sources: u64,
    /// False: the node relays for nobody (`relay-limit 0`).
    pub enabled: bool,
}

/// Default per-source rate a node relays, in Mbit/s (`wh up relay-limit`).
pub const DEFAULT_RELAY_MBIT: u32 = 2000;

impl RelayLimits {
    /// Limits for a sustained `mbit` Mbit/s per source: a burst of an
    /// eighth of a second (at least 1 MiB), and a datagram rate that
    /// allows full-sized WireGuard datagrams (a flood of small ones hits it
    /// first). 0: relaying off.
    pub fn from_mbit(mbit: u32) -> RelayLimits {
        let bytes_per_sec = u64::from(mbit.max(1)) * 125_000;
        RelayLimits {
            bytes_per_sec,
            burst_bytes: (bytes_per_sec / 8).max(1024 * 1024),
            packets_per_sec: (bytes_per_sec / 1000).max(1000),
            total_sources: TOTAL_SOURCES,
            enabled: mbit > 0,
        }
    }

    fn scaled(&self, n: u64) -> RelayLimits {
        RelayLimits {
            bytes_per_sec: self.bytes_per_sec.saturating_mul(n),
            burst_bytes: self.burst_bytes.saturating_mul(n),
            packets_per_sec: self.packets_per_sec.saturating_mul(n),
            total_sources: 1,
            enabled: self.enabled,
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits::from_mbit(DEFAULT_RELAY_MBIT)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    bytes: f64,
    packets: f64,
    last: Instant,
}

impl Bucket {
    fn full(l: &RelayLimits, now: Instant) -> Bucket {
        Bucket {
            bytes: l.burst_bytes as f64,
            packets: l.packets_per_sec as f64,
            last: now,
        }
    }

    fn refill(&mut self, l: &RelayLimits, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.bytes = (self.bytes + dt * l.bytes_per_sec as f64).min(l.burst_bytes as f64);
        self.packets = (self.packets + dt * l.packets_per_sec as f64).min(l.packets_per_sec as f64);
    }

    fn has(&self, bytes: f64, packets: f64) -> bool {
        self.bytes >= bytes && self.packets >= packets
    }

    fn take(&mut self, bytes: f64, packets: f64) {
        self.bytes -= bytes;
        self.packets -= packets;
    }
}

/// Buckets by key, at most [`MAX_SOURCES`], oldest evicted first in O(1).
#[derive(Debug)]
struct Table<K> {
    buckets: HashMap<K, Bucket>,
    order: VecDeque<K>,
}

impl<K: Copy + Eq + Hash> Table<K> {
    fn new() -> Self {
        Table {
            buckets: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The refilled bucket of `k` (a full one for a new key).
    fn get(&mut self, k: K, l: &RelayLimits, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&k) {
            while self.buckets.len() >= MAX_SOURCES {
                match self.order.pop_front() {
                    Some(old) => {
                        self.buckets.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(k);
        }
        let b = self
            .buckets
            .entry(k)
            .or_insert_with(|| Bucket::full(l, now));
        b.refill(l, now);
        b
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The network a source address belongs to: its /24 (IPv4) or /64 (IPv6).
fn network(ip: IpAddr) -> [u8; 8] {
    let mut n = [0u8; 8];
    match ip {
        IpAddr::V4(v4) => n[..3].copy_from_slice(&v4.octets()[..3]),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => n[..3].copy_from_slice(&v4.octets()[..3]),
            None => n.copy_from_slice(&v6.octets()[..8]),
        },
    }
    n
}

/// Counters of what a relay did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RelayCounters {
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Refused: the source key's rate.
    pub dropped_rate: u64,
    /// Refused: the source network's rate (keys rotated from one place).
    pub dropped_network_rate: u64,
    /// Refused: the node's total.
    pub dropped_total_rate: u64,
    pub dropped_unknown_destination: u64,
    /// Refused: this node relays for nobody (`relay-limit 0`).
    pub dropped_relay_off: u64,
    /// Channel datagrams the fast path did not forward, by reason
    /// ([`super::fastpath::FastDrop::reason`]; a fixed set of names).
    pub fast_path_drops: std::collections::BTreeMap<&'static str, u64>,
    /// Datagrams the fast path's sockets received that are not channel
    /// data, handed to the node core.
    pub fast_path_handed_over: u64,
}

/// Token buckets per source key, per source network and for the node.
#[derive(Debug)]
pub struct RelayLimiter {
    limits: RelayLimits,
    keys: Table<PublicKey>,
    networks: Table<[u8; 8]>,
    total: Option<Bucket>,
    pub counters: RelayCounters,
}

impl RelayLimiter {
    pub fn new(limits: RelayLimits) -> Self {
        RelayLimiter {
            limits,
            keys: Table::new(),
            networks: Table::new(),
            total: None,
            counters: RelayCounters::default(),
        }
    }

    /// May `source`, sending from `from`, have `bytes` forwarded now?
    /// Counts the decision.
    pub fn allow(&mut self, source: PublicKey, from: IpAddr, bytes: usize, now: Instant) -> bool {
        self.allow_many(source, from, bytes, 1, now)
    }

    /// May `source`, sending from `from`, have `packets` datagrams of
    /// `bytes` in all forwarded now (a batch the kernel coalesced)? Counts
    /// the decision.
    pub fn allow_many(
        &mut self,
        source: PublicKey,
        from: IpAddr,
        bytes: usize,
        packets: usize,
        now: Instant,
    ) -> bool {
        let (b, n) = (bytes as f64, packets as f64);
        let l = self.limits;
        if !l.enabled {
            self.counters.dropped_relay_off += packets as u64;
            return false;
        }
        let total_limits = l.scaled(l.total_sources);
        if !self.keys.get(source, &l, now).has(b, n) {
            self.counters.dropped_rate += 1;
            return false;
        }
        if !self.networks.get(network(from), &l, now).has(b, n) {
            self.counters.dropped_network_rate += 1;
            return false;
        }
        let total = self
            .total
            .get_or_insert_with(|| Bucket::full(&total_limits, now));
        total.refill(&total_limits, now);
        if !total.has(b, n) {
            self.counters.dropped_total_rate += 1;
            return false;
        }
        self.keys.get(source, &l, now).take(b, n);
        self.networks.get(network(from), &l, now).take(b, n);
        if let Some(t) = self.total.as_mut() {
            t.take(b, n);
        }
        self.counters.forwarded += packets as u64;
        self.counters.forwarded_bytes += bytes as u64;
        true
    }
}

/// One [`RelayLimiter`] shared by the node core and the relay fast path's
/// threads (clones share the buckets and the counters).
#[derive(Debug, Clone)]
pub struct SharedLimiter(Arc<Mutex<RelayLimiter>>);

impl SharedLimiter {
    pub fn new(limits: RelayLimits) -> Self {
        SharedLimiter(Arc::new(Mutex::new(RelayLimiter::new(limits))))
    }

    /// The limiter, for one decision or a few (a panic elsewhere while it
    /// was held leaves buckets that are still valid numbers: it is used on).
    pub fn lock(&self) -> MutexGuard<'_, RelayLimiter> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`RelayLimiter::allow`] under the lock.
    pub fn allow(&self, source: PublicKey, from: IpAddr, bytes: usize, now: Instant) -> bool {
        self.lock().allow(source, from, bytes, now)
    }

    /// [`RelayLimiter::allow_many`] under the lock.
    pub fn allow_many(
        &self,
        source: PublicKey,
        from: IpAddr,
        bytes: usize,
        packets: usize,
        now: Instant,
    ) -> bool {
        self.lock().allow_many(source, from, bytes, packets, now)
    }

    /// False when this node relays for nobody (`relay-limit 0`).
    pub fn relaying(&self) -> bool {
        self.lock().limits.enabled
    }

    /// A copy of the counters.
    pub fn counters(&self) -> RelayCounters {
        self.lock().counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use std::time::Duration;

    fn key() -> PublicKey {
        PrivateKey::generate().unwrap().public_key()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> RelayLimits {
        RelayLimits {
            bytes_per_sec: 1000,
            burst_bytes: 2000,
            packets_per_sec: 100,
            total_sources: 4,
            enabled: true,
        }
    }

    #[test]
    fn a_node_with_relay_limit_0_forwards_nothing_and_counts_it() {
        let mut l = RelayLimiter::new(RelayLimits::from_mbit(0));
        let now = Instant::now();
        assert!(!l.allow(key(), ip("198.51.100.1"), 100, now));
        assert!(!l.allow_many(key(), ip("198.51.100.1"), 300, 3, now));
        assert_eq!(l.counters.dropped_relay_off, 4);
        assert_eq!(l.counters.forwarded, 0);
        assert!(valid_relay_mbit(0) && valid_relay_mbit(MAX_RELAY_MBIT));
        assert!(!valid_relay_mbit(MAX_RELAY_MBIT + 1));
    }

    #[test]
    fn a_source_gets_its_rate_and_refills() {
        let mut l = RelayLimiter::new(small());
        let s = key();
        let now = Instant::now();
        assert!(l.allow(s, ip("198.51.100.1"), 1500, now));
        assert!(!l.allow(s, ip("198.51.100.1"), 1500, now), "over the burst");
        let later = now + Duration::from_secs(1);
        assert!(l.allow(s, ip("198.51.100.1"), 1500, later), "refilled");
        // Another source elsewhere has its own buckets.
        assert!(l.allow(key(), ip("203.0.113.9"), 1500, now));
        assert_eq!(l.counters.dropped_rate, 1);
        assert_eq!(l.counters.forwarded, 3);
    }

    #[test]
    fn a_source_rotating_keys_stays_within_its_networks_rate() {
        let mut l = RelayLimiter::new(small());
        let now = Instant::now();
        let passed: usize = (0..100)
            .map(|i| l.allow(key(), ip(&format!("198.51.100.{i}")), 500, now))
            .filter(|ok| *ok)
            .count();
        assert_eq!(passed * 500, 2000, "one network's burst, whatever the keys");
        assert!(l.counters.dropped_network_rate > 0);
    }

    #[test]
    fn sources_rotating_keys_and_networks_stay_within_the_nodes_total() {
        let mut l = RelayLimiter::new(small());
        let t0 = Instant::now();
        let mut passed = 0u64;
        // Ten seconds of 1,000 fresh keys from 1,000 networks a second.
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            let n = ms as u32;
            let from = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + (n << 8)));
            if l.allow(key(), from, 100, now) {
                passed += 100;
            }
        }
        // The total: 4 x 1,000 B/s for 10 s, plus its 4 x 2,000 B burst.
        assert!(passed <= 4 * 1000 * 10 + 4 * 2000, "{passed} bytes passed");
        assert!(passed >= 4 * 1000 * 9, "the total is usable: {passed}");
        assert!(l.counters.dropped_total_rate > 0);
        assert!(l.keys.len() <= MAX_SOURCES && l.networks.len() <= MAX_SOURCES);
    }

    #[test]
    fn the_tables_stay_bounded_under_churn() {
        let mut l = RelayLimiter::new(RelayLimits::default());
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let from = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
            l.allow(key(), from, 10, now);
        }
        assert!(l.keys.len() <= MAX_SOURCES);
        assert!(l.networks.len() <= MAX_SOURCES);
        assert!(l.keys.order.len() <= MAX_SOURCES + 1);
    }

    #[test]
    fn clones_of_a_shared_limiter_charge_the_same_buckets() {
        let shared = SharedLimiter::new(small());
        let other_thread = shared.clone();
        let (s, now) = (key(), Instant::now());
        assert!(shared.allow(s, ip("198.51.100.1"), 1500, now));
        assert!(
            !other_thread.allow_many(s, ip("198.51.100.1"), 1000, 2, now),
            "the burst is spent whichever clone charged it"
        );
        assert_eq!(shared.counters().forwarded, 1);
        assert_eq!(other_thread.counters().dropped_rate, 1);
    }

    #[test]
    fn mapped_ipv4_is_the_same_network_as_ipv4() {
        assert_eq!(
            network(ip("::ffff:198.51.100.7")),
            network(ip("198.51.100.99"))
        );
        assert_ne!(
            network(ip("2001:db8:0:1::1")),
            network(ip("2001:db8:0:2::1"))
        );
        assert_eq!(
            network(ip("2001:db8:0:1::1")),
            network(ip("2001:db8:0:1::ff"))
        );
    }
}
