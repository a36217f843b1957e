//! Relays, free of I/O.
//!
//! - [`RelayLimiter`] ([`limiter`]): what a node that relays for others lets
//!   through: within per-key, per-network and node-wide rates, or nothing
//!   (`relay-limit 0`). It never sees inside WireGuard traffic.
//! - [`RelaySet`]: the relays a node behind NAT keeps alive and publishes in
//!   its record: at least two public DHT nodes, diverse and quick.
//! - [`RelayHealth`]: liveness of the relays a node sends through, so traffic
//!   moves to another relay within a second when one dies (a relay found
//!   dead on one path is dead for every path through it).
//! - [`delivery`]: whether the relay in use for a peer delivers data (a
//!   relay that answers pings but drops what it forwards is left within
//!   seconds).
//! - [`channel`]: once a relayed flow is established, its WireGuard
//!   datagrams travel through the relay on an announced channel, unsealed
//!   (WireGuard protects them end to end).
//! - [`fastpath`]: what a relay does with channel data on its fast-path
//!   sockets (other threads): the channel checks and limits of the core,
//!   from a snapshot of the core's channels and the limiter it shares.

pub mod channel;
pub mod delivery;
pub mod fastpath;
pub mod limiter;

pub use delivery::{DeliveryAction, RelayDelivery};
pub use limiter::{
    DEFAULT_RELAY_MBIT, MAX_RELAY_MBIT, RelayCounters, RelayLimiter, RelayLimits, SharedLimiter,
    valid_relay_mbit,
};

use crate::keys::PublicKey;
use crate::proto::NatKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How many relays a node behind NAT keeps.
pub const RELAYS_WANTED: usize = 2;
/// A kept relay is pinged this often (it also holds the NAT mapping). A
/// node whose path is idle learns of a dead relay only from these pings.
pub const RELAY_KEEPALIVE: Duration = Duration::from_secs(1);
/// An unanswered kept relay is pinged again this often.
pub const RELAY_REPING: Duration = Duration::from_millis(250);
/// A kept relay silent this long, with a ping unanswered for at least
/// [`RELAY_UNANSWERED`], is dead: it is replaced, so that every relay a
/// node keeps may die at once and its peers reach it again within seconds.
pub const RELAY_DEAD: Duration = Duration::from_millis(1500);
/// How long a ping may wait for its answer (a slow path) before silence
/// counts.
pub const RELAY_UNANSWERED: Duration = Duration::from_millis(750);
/// A relay dropped as dead is not picked again for this long.
pub const RELAY_SHUNNED_FOR: Duration = Duration::from_secs(30);
/// Dead relays remembered.
const MAX_SHUNNED: usize = 64;
/// While fewer than [`RELAYS_WANTED`] are kept, a shunned candidate is
/// pinged this often: its answer (or any message from it) forgives it, so
/// a relay that restarted is kept again within seconds, not after
/// [`RELAY_SHUNNED_FOR`] (a lone public node that restarts is the only
/// relay there is).
pub const SHUNNED_PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Shunned {
    key: PublicKey,
    at: Instant,
    probed: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Kept {
    key: PublicKey,
    addr: SocketAddr,
    rtt: Option<Duration>,
    last_ping: Option<Instant>,
    /// The last pong, or when it was kept.
    last_heard: Instant,
    /// The first ping still waiting for its answer.
    unanswered_since: Option<Instant>,
}

/// The relays a node behind NAT keeps alive.
#[derive(Debug, Default)]
pub struct RelaySet {
    kept: Vec<Kept>,
    /// Relays found dead lately: never kept, never fallen back on.
    shunned: Vec<Shunned>,
}

/// A DHT node that could relay.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PublicKey,
    pub addr: SocketAddr,
    pub nat: NatKind,
    pub rtt: Option<Duration>,
    /// Its record says it relays for others (`relay-limit` above 0).
    pub relay_service: bool,
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

    /// The kept relay at `addr`.
    pub fn key_at(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.kept.iter().find(|k| k.addr == addr).map(|k| k.key)
    }

    /// The relays kept now, quickest first: what the node publishes.
    pub fn relays(&self) -> Vec<(PublicKey, SocketAddr)> {
        let mut v = self.kept.clone();
        v.sort_by_key(|k| k.rtt.unwrap_or(Duration::MAX));
        v.into_iter().map(|k| (k.key, k.addr)).collect()
    }

    /// Relays found dead within [`RELAY_SHUNNED_FOR`] of `now`.
    pub fn shunned(&self, now: Instant) -> Vec<PublicKey> {
        self.shunned
            .iter()
            .filter(|s| now.saturating_duration_since(s.at) < RELAY_SHUNNED_FOR)
            .map(|s| s.key)
            .collect()
    }

    fn shun(&mut self, key: PublicKey, now: Instant) {
        self.shunned
            .retain(|s| s.key != key && now.saturating_duration_since(s.at) < RELAY_SHUNNED_FOR);
        if self.shunned.len() >= MAX_SHUNNED {
            self.shunned.remove(0);
        }
        self.shunned.push(Shunned {
            key,
            at: now,
            probed: None,
        });
    }

    /// Shunned candidates to ping now, while fewer than [`RELAYS_WANTED`]
    /// relays are kept (each at most every [`SHUNNED_PROBE_EVERY`]).
    pub fn probe_shunned(
        &mut self,
        candidates: &[Candidate],
        now: Instant,
    ) -> Vec<(PublicKey, SocketAddr)> {
        if self.kept.len() >= RELAYS_WANTED {
            return Vec::new();
        }
        let mut out = Vec::new();
        for s in &mut self.shunned {
            if now.saturating_duration_since(s.at) >= RELAY_SHUNNED_FOR
                || s.probed
                    .is_some_and(|t| now.saturating_duration_since(t) < SHUNNED_PROBE_EVERY)
            {
                continue;
            }
            let Some(c) = candidates
                .iter()
                .find(|c| c.key == s.key && c.nat == NatKind::Public && c.relay_service)
            else {
                continue;
            };
            s.probed = Some(now);
            out.push((c.key, c.addr));
        }
        out
    }

    /// Any authenticated message from `key` shows it alive: a kept relay
    /// is heard from, a shunned one forgiven.
    pub fn on_contact(&mut self, key: &PublicKey, now: Instant) {
        if let Some(k) = self.kept.iter_mut().find(|k| &k.key == key) {
            k.last_heard = now;
            k.unanswered_since = None;
        }
        self.shunned.retain(|s| &s.key != key);
    }

    /// Fills the set from candidates (public nodes that relay for others
    /// only, never `own` nor a relay found dead lately), preferring other /24 networks than the
    /// kept ones, then lower round-trip times. Returns true when the set
    /// changed.
    pub fn fill(&mut self, own: &PublicKey, candidates: &[Candidate], now: Instant) -> bool {
        let mut changed = false;
        let shunned = self.shunned(now);
        let mut pool: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.nat == NatKind::Public && c.relay_service)
            .filter(|c| &c.key != own && !shunned.contains(&c.key))
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
                last_heard: now,
                unanswered_since: None,
            });
            changed = true;
        }
        changed
    }

    /// A kept relay answered.
    pub fn on_pong(&mut self, key: &PublicKey, rtt: Option<Duration>, now: Instant) {
        self.on_contact(key, now);
        if let Some(k) = self.kept.iter_mut().find(|k| &k.key == key)
            && rtt.is_some()
        {
            k.rtt = rtt;
        }
    }

    /// A relay this node sent through went silent ([`RelayHealth`]): it is
    /// dropped if kept, never picked again for a while, and the other kept
    /// relays are pinged at the next tick (relays often die together).
    /// Returns true when the kept set changed (refill and republish).
    pub fn lost(&mut self, key: &PublicKey, now: Instant) -> bool {
        self.shun(*key, now);
        let before = self.kept.len();
        self.kept.retain(|k| &k.key != key);
        for k in self
            .kept
            .iter_mut()
            .filter(|k| k.unanswered_since.is_none())
        {
            k.last_ping = None;
        }
        self.kept.len() != before
    }

    /// Relays to ping now; relays silent for [`RELAY_DEAD`] with a ping
    /// unanswered for [`RELAY_UNANSWERED`] are dropped (returned second, so the caller refills and
    /// republishes).
    pub fn on_tick(&mut self, now: Instant) -> (Vec<(PublicKey, SocketAddr)>, Vec<PublicKey>) {
        let mut ping = Vec::new();
        for k in &mut self.kept {
            let every = if k.unanswered_since.is_some() {
                RELAY_REPING
            } else {
                RELAY_KEEPALIVE
            };
            if k.last_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= every)
            {
                k.unanswered_since.get_or_insert(now);
                k.last_ping = Some(now);
                ping.push((k.key, k.addr));
            }
        }
        let dead: Vec<PublicKey> = self
            .kept
            .iter()
            .filter(|k| {
                k.unanswered_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= RELAY_UNANSWERED)
                    && now.saturating_duration_since(k.last_heard) >= RELAY_DEAD
            })
            .map(|k| k.key)
            .collect();
        for key in &dead {
            self.shun(*key, now);
        }
        self.kept.retain(|k| !dead.contains(&k.key));
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

/// A relay in use found dead stays dead this long for every path through
/// it (unless it is heard from again), ...
pub const DEAD_REMEMBERED: Duration = Duration::from_secs(10);
/// ... and at most this many are remembered (the oldest forgotten first).
const MAX_DEAD: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Watch {
    last_ping: Instant,
    /// Oldest ping not answered yet.
    unanswered_since: Option<Instant>,
}

/// Liveness of the relays this node sends through.
#[derive(Debug, Default)]
pub struct RelayHealth {
    watched: BTreeMap<PublicKey, Watch>,
    /// Relays found dead, and when (see [`RelayHealth::mark_dead`]).
    dead: BTreeMap<PublicKey, Instant>,
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

    /// Any authenticated message from `relay` proves it alive. True when
    /// it was found dead within [`DEAD_REMEMBERED`]: it is back.
    pub fn on_contact(&mut self, relay: &PublicKey, now: Instant) -> bool {
        let was_dead = self
            .dead
            .remove(relay)
            .is_some_and(|t| now.saturating_duration_since(t) < DEAD_REMEMBERED);
        if let Some(w) = self.watched.get_mut(relay) {
            w.unanswered_since = None;
        }
        was_dead
    }

    /// True when `relay` has been silent past [`IN_USE_DEAD`], or was
    /// found dead within [`DEAD_REMEMBERED`] and not heard from since.
    pub fn is_dead(&self, relay: &PublicKey, now: Instant) -> bool {
        self.dead
            .get(relay)
            .is_some_and(|t| now.saturating_duration_since(*t) < DEAD_REMEMBERED)
            || self
                .watched
                .get(relay)
                .and_then(|w| w.unanswered_since)
                .is_some_and(|t| now.duration_since(t) >= IN_USE_DEAD)
    }

    /// `relay` was found dead (on the path of one peer): it is dead for
    /// every path through it at once, not after a watch of its own per
    /// path (before, each peer's next datagram started a new
    /// [`IN_USE_DEAD`] wait on the same dead relay). Bounded by
    /// [`MAX_DEAD`], the oldest forgotten first.
    pub fn mark_dead(&mut self, relay: PublicKey, now: Instant) {
        self.watched.remove(&relay);
        self.dead
            .retain(|_, t| now.saturating_duration_since(*t) < DEAD_REMEMBERED);
        if self.dead.len() >= MAX_DEAD
            && let Some(oldest) = self.dead.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.dead.remove(&oldest);
        }
        self.dead.insert(relay, now);
    }

    /// The relays found dead within [`DEAD_REMEMBERED`].
    pub fn dead(&self, now: Instant) -> Vec<PublicKey> {
        self.dead
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < DEAD_REMEMBERED)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Stops watching relays no longer in use.
    pub fn retain(&mut self, in_use: &[PublicKey]) {
        self.watched.retain(|k, _| in_use.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::generate().unwrap().public_key()
    }

    fn candidate(ip: &str, nat: NatKind, rtt: u64) -> Candidate {
        Candidate {
            key: key(),
            addr: format!("{ip}:62096").parse().unwrap(),
            nat,
            rtt: Some(Duration::from_millis(rtt)),
            relay_service: true,
        }
    }

    /// Two peers relayed through one relay: once it is found dead on the
    /// first peer's path, it is dead for the second at once, until it is
    /// heard from again.
    #[test]
    fn a_relay_found_dead_on_one_path_is_dead_for_every_path_until_heard_from() {
        let (relay, other) = (key(), key());
        let mut h = RelayHealth::new();
        let t0 = Instant::now();
        assert!(h.due(relay, t0));
        let t1 = t0 + IN_USE_DEAD;
        assert!(h.is_dead(&relay, t1));
        h.mark_dead(relay, t1);
        h.retain(&[other]);
        assert!(h.is_dead(&relay, t1), "not a new watch of its own");
        assert_eq!(h.dead(t1), vec![relay]);
        assert!(!h.is_dead(&other, t1));
        assert!(h.on_contact(&relay, t1), "found dead, heard from: back");
        assert!(!h.is_dead(&relay, t1), "heard from: alive");
        assert!(!h.on_contact(&relay, t1), "back once, not at every message");
        h.mark_dead(relay, t1);
        assert!(
            !h.is_dead(&relay, t1 + DEAD_REMEMBERED),
            "forgotten after a while"
        );
        for _ in 0..MAX_DEAD + 3 {
            h.mark_dead(key(), t1);
        }
        assert_eq!(h.dead.len(), MAX_DEAD);
    }

    #[test]
    fn relay_set_prefers_public_diverse_quick_nodes_and_drops_dead_ones() {
        let own = key();
        let c = candidate;
        let cands = vec![
            c("203.0.113.10", NatKind::Public, 5),
            c("203.0.113.11", NatKind::Public, 6),
            c("198.51.100.10", NatKind::Public, 50),
            c("203.0.113.12", NatKind::EndpointIndependent, 1),
        ];
        let mut s = RelaySet::new();
        let now = Instant::now();
        assert!(s.fill(&own, &cands, now));
        let r = s.relays();
        assert_eq!(r.len(), RELAYS_WANTED);
        assert_eq!(r[0].0, cands[0].key, "quickest first");
        assert_eq!(
            r[1].0, cands[2].key,
            "another network before a quicker node of the same"
        );
        let (ping, dead) = s.on_tick(now);
        assert_eq!(ping.len(), 2);
        assert!(dead.is_empty());
        // cands[0] keeps answering, cands[2] went silent.
        let mut t = now;
        let mut gone = Vec::new();
        while t < now + RELAY_DEAD + RELAY_KEEPALIVE {
            s.on_pong(&cands[0].key, None, t);
            t += Duration::from_millis(250);
            gone.extend(s.on_tick(t).1);
        }
        assert_eq!(gone, vec![cands[2].key]);
        assert!(s.fill(&own, &cands, t));
        assert_eq!(s.relays().len(), 2);
        assert!(
            !s.relays().iter().any(|r| r.0 == cands[2].key),
            "a dead relay is not picked again at once"
        );
    }

    #[test]
    fn a_node_that_relays_for_nobody_is_never_kept() {
        let own = key();
        let mut off = candidate("203.0.113.10", NatKind::Public, 1);
        off.relay_service = false;
        let cands = vec![off, candidate("198.51.100.10", NatKind::Public, 50)];
        let mut s = RelaySet::new();
        s.fill(&own, &cands, Instant::now());
        assert_eq!(
            s.relays().iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![cands[1].key],
            "only the node that relays, though slower"
        );
    }

    /// Both kept relays die at once while the node is idle: both are
    /// replaced within about RELAY_KEEPALIVE + RELAY_DEAD, whatever the
    /// phase of the keepalives.
    #[test]
    fn every_kept_relay_dying_at_once_is_replaced_within_seconds() {
        let own = key();
        let cands = vec![
            candidate("203.0.113.10", NatKind::Public, 5),
            candidate("203.0.113.11", NatKind::Public, 6),
            candidate("203.0.113.12", NatKind::Public, 7),
        ];
        let t0 = Instant::now();
        for phase_ms in [0u64, 100, 500, 990] {
            let mut s = RelaySet::new();
            s.fill(&own, &cands, t0);
            let survivor = cands
                .iter()
                .find(|c| !s.relays().iter().any(|r| r.0 == c.key))
                .unwrap()
                .key;
            let tick = Duration::from_millis(250);
            let mut t = t0;
            // Healthy: every ping answered.
            while t < t0 + Duration::from_secs(5) {
                for (k, _) in s.on_tick(t).0 {
                    s.on_pong(&k, None, t);
                }
                t += tick;
            }
            let killed = t + Duration::from_millis(phase_ms);
            let replaced = loop {
                t += tick;
                let (ping, dead) = s.on_tick(t);
                for (k, _) in ping {
                    if t < killed || k == survivor {
                        s.on_pong(&k, None, t);
                    }
                }
                if !dead.is_empty() {
                    s.fill(&own, &cands, t);
                }
                if s.relays().iter().map(|r| r.0).collect::<Vec<_>>() == vec![survivor] {
                    break t.saturating_duration_since(killed);
                }
                assert!(t < killed + Duration::from_secs(10), "never replaced");
            };
            assert!(
                replaced <= RELAY_KEEPALIVE + RELAY_UNANSWERED + Duration::from_millis(250),
                "phase {phase_ms} ms: replaced after {replaced:?}"
            );
        }
    }

    /// A relay far away (600 ms round trips) is slow, not dead.
    #[test]
    fn a_slow_relay_is_kept() {
        let own = key();
        let cands = vec![candidate("203.0.113.10", NatKind::Public, 600)];
        let t0 = Instant::now();
        let mut s = RelaySet::new();
        s.fill(&own, &cands, t0);
        let rtt = Duration::from_millis(600);
        let mut answers: Vec<Instant> = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(30) {
            if answers.first().is_some_and(|a| *a <= t) {
                answers.remove(0);
                s.on_pong(&cands[0].key, Some(rtt), t);
            }
            let (ping, dead) = s.on_tick(t);
            assert!(dead.is_empty(), "declared dead at {:?}", t - t0);
            answers.extend(ping.iter().map(|_| t + rtt));
            t += Duration::from_millis(250);
        }
    }

    /// The only public node restarts: found dead, it is shunned, but pinged
    /// every 2 s while the set is short, and kept again once it answers
    /// (not after the 30 s a shunned relay otherwise waits).
    #[test]
    fn a_lone_relay_that_comes_back_is_kept_again_at_its_first_answer() {
        let own = key();
        let cands = vec![candidate("203.0.113.10", NatKind::Public, 5)];
        let lone = cands[0].key;
        let t0 = Instant::now();
        let mut s = RelaySet::new();
        s.fill(&own, &cands, t0);
        assert!(s.lost(&lone, t0));
        assert!(!s.fill(&own, &cands, t0), "kept while shunned");
        let probes: Vec<u64> = (0..10)
            .map(|i| t0 + Duration::from_millis(500 * i))
            .filter(|t| !s.probe_shunned(&cands, *t).is_empty())
            .map(|t| t.saturating_duration_since(t0).as_millis() as u64)
            .collect();
        assert_eq!(probes, [0, 2000, 4000]);
        let back = t0 + Duration::from_secs(5);
        s.on_pong(&lone, None, back);
        assert!(s.fill(&own, &cands, back));
        assert_eq!(s.relays(), vec![(lone, cands[0].addr)]);
        assert!(s.probe_shunned(&cands, back).is_empty());
    }

    /// Any message from a shunned relay forgives it, a ping as well as a pong.
    #[test]
    fn a_message_from_a_shunned_relay_forgives_it() {
        let own = key();
        let cands = vec![candidate("203.0.113.10", NatKind::Public, 5)];
        let t0 = Instant::now();
        let mut s = RelaySet::new();
        s.fill(&own, &cands, t0);
        s.lost(&cands[0].key, t0);
        assert_eq!(s.shunned(t0), vec![cands[0].key]);
        s.on_contact(&cands[0].key, t0);
        assert!(s.shunned(t0).is_empty());
    }

    /// The relay in use goes silent: it is dropped and shunned, and the
    /// other kept relays are pinged at once (relays often die together).
    #[test]
    fn a_lost_relay_is_dropped_and_the_others_are_checked_at_once() {
        let own = key();
        let cands = vec![
            candidate("203.0.113.10", NatKind::Public, 5),
            candidate("198.51.100.10", NatKind::Public, 6),
            candidate("198.18.0.10", NatKind::Public, 7),
        ];
        let now = Instant::now();
        let mut s = RelaySet::new();
        s.fill(&own, &cands, now);
        for (k, _) in s.on_tick(now).0 {
            s.on_pong(&k, None, now);
        }
        let t = now + Duration::from_millis(300);
        assert!(s.on_tick(t).0.is_empty(), "not due yet");
        let in_use = s.relays()[0].0;
        assert!(s.lost(&in_use, t));
        assert!(s.shunned(t).contains(&in_use));
        let (ping, _) = s.on_tick(t);
        assert_eq!(ping.len(), 1, "the other kept relay is pinged at once");
        assert!(s.fill(&own, &cands, t));
        assert!(!s.relays().iter().any(|r| r.0 == in_use));
        assert!(!s.lost(&key(), t), "a relay not kept changes nothing");
        // Heard from again: no longer shunned.
        s.on_pong(&in_use, None, t);
        assert!(!s.shunned(t).contains(&in_use));
    }

    #[test]
    fn health_declares_a_silent_relay_dead() {
        let r = key();
        let mut h = RelayHealth::new();
        let now = Instant::now();
        assert!(h.due(r, now));
        assert!(!h.is_dead(&r, now + Duration::from_millis(500)));
        assert!(!h.on_contact(&r, now), "never found dead: not back");
        assert!(h.due(r, now + IN_USE_PING));
        assert!(!h.is_dead(&r, now + IN_USE_PING + Duration::from_millis(100)));
        assert!(h.is_dead(&r, now + IN_USE_PING + IN_USE_DEAD));
    }
}
