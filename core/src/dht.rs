//! The Kademlia DHT as a sans-I/O state machine.
//!
//! Contract, in the manner of quinn-proto: [`Dht`] does no networking and
//! reads no clock. The caller feeds it authenticated messages
//! ([`Dht::handle_message`], after [`crate::proto::Codec::open`]) and the
//! time ([`Dht::handle_timeout`] when [`Dht::poll_timeout`] is reached), and
//! drains what it asks for: datagrams to seal and send
//! ([`Dht::poll_transmit`]) and events ([`Dht::poll_event`]). The same core
//! runs in the daemon, in tests with a fake clock, and in the simulator
//! ([`sim`]). Given the same inputs it makes the same outputs.
//!
//! Node ID = public key, distance = XOR, K = 20, α = 3. A lookup keeps α
//! requests in flight to the closest candidates not yet asked and ends when
//! the K closest candidates that did not fail have all answered (a user
//! lookup also ends as soon as its target answers). Buckets keep K live
//! entries and a bounded replacement cache: a newcomer never evicts a live
//! node, it waits until a stale entry fails its ping. Buckets no lookup went
//! into for `refresh_interval` are refreshed. Every collection is bounded.
//! See docs/dht.md.

mod lookup;
pub mod sim;
mod table;
#[cfg(test)]
mod tests;

pub(crate) use lookup::says_more;
pub use lookup::{LookupId, LookupStats};
pub use table::{bucket_index, distance};

use crate::keys::PublicKey;
use crate::proto::{
    CONTROL_BUDGET, MAX_NODES, Message, NatKind, NodeRecord, SEAL_OVERHEAD, sealed_len,
};
use lookup::{Lookup, Purpose, State};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use table::{Seen, Table};

/// Settings of a [`Dht`].
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Bucket size and lookup width (K).
    pub k: usize,
    /// Requests in flight per lookup (α).
    pub alpha: usize,
    /// How long to wait for an answer before a retry.
    pub request_timeout: Duration,
    /// Retries of a request before the node counts as failed.
    pub retries: u8,
    /// A user lookup's request unanswered this long no longer counts
    /// against α: the next candidate is asked, while the first may still
    /// answer (nodes behind NATs often never do, and waiting
    /// `request_timeout` and its retries for them held lookups for
    /// seconds). Zero: requests never stall.
    pub stall_after: Duration,
    /// A bucket no lookup went into for this long is refreshed.
    pub refresh_interval: Duration,
    /// An entry not heard from for this long is pinged when it matters.
    pub stale_after: Duration,
    /// Keys with fewer workbits never enter the table nor a lookup.
    pub required_workbits: u8,
    pub namespace: String,
    /// Replacement cache per bucket.
    pub replacement_cache: usize,
    /// Lookups running at once (user, bootstrap and refresh together).
    pub max_lookups: usize,
    /// Requests awaiting an answer at once.
    pub max_pending: usize,
    /// A lookup is given up after this long.
    pub lookup_timeout: Duration,
    /// How often stale entries and idle buckets are looked at.
    pub maintenance_interval: Duration,
    /// Liveness pings started per maintenance round.
    pub max_pings_per_round: usize,
    /// Transmits and events queued until polled (oldest dropped beyond).
    pub max_queue: usize,
    /// Bootstrap nodes kept.
    pub max_bootstrap: usize,
    /// After the bootstrap self-lookup, refresh this many of the farthest
    /// buckets (those farther than the closest neighbour, as in Kademlia's
    /// join), filling the far buckets at once. Each costs a lookup; the far
    /// ones cover most of the key space (bucket 0 is half of it). 0 = none.
    pub join_refresh_buckets: usize,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_millis(1000),
            retries: 1,
            stall_after: Duration::from_millis(250),
            refresh_interval: Duration::from_secs(15 * 60),
            stale_after: Duration::from_secs(5 * 60),
            required_workbits: crate::keys::DEFAULT_WORKBITS,
            namespace: crate::keys::DEFAULT_NAMESPACE.to_string(),
            replacement_cache: 5,
            max_lookups: 16,
            max_pending: 256,
            lookup_timeout: Duration::from_secs(30),
            maintenance_interval: Duration::from_secs(5),
            max_pings_per_round: 8,
            max_queue: 1024,
            max_bootstrap: 16,
            join_refresh_buckets: 4,
        }
    }
}

/// A message for the caller to seal (for `to_key`) and send to `to_addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to_key: PublicKey,
    pub to_addr: SocketAddr,
    pub message: Message,
}

/// What happened, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// A lookup started with [`Dht::lookup`] is over. `found` is the
    /// target's record: as the target itself answered from it when it did,
    /// else as another node told it (unverified), else `None`.
    LookupDone {
        id: LookupId,
        target: PublicKey,
        found: Option<NodeRecord>,
        /// True when the target itself answered.
        verified: bool,
        /// The K closest nodes that answered, closest first.
        closest: Vec<NodeRecord>,
        stats: LookupStats,
    },
    /// A user lookup learned a record of its target from another node
    /// (unverified); the lookup goes on and ends with `LookupDone`.
    RecordSeen {
        id: LookupId,
        target: PublicKey,
        record: NodeRecord,
    },
    /// The bootstrap self-lookup is over; `nodes` are in the table.
    Bootstrapped {
        nodes: usize,
    },
    NodeAdded {
        key: PublicKey,
        addr: SocketAddr,
    },
    NodeRemoved {
        key: PublicKey,
    },
    /// A ping was answered; `observed` is our address as the peer saw it.
    Pong {
        key: PublicKey,
        observed: SocketAddr,
        rtt: Duration,
    },
    /// A ping got no answer after its retries.
    PingTimeout {
        key: PublicKey,
        addr: SocketAddr,
    },
}

/// One routing table entry, for `wh show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub key: PublicKey,
    pub addr: SocketAddr,
    pub bucket: usize,
    pub last_seen: Instant,
    pub rtt: Option<Duration>,
    pub nat: NatKind,
    /// It relays for others.
    pub relay_service: bool,
}

/// Counters of the DHT, for `wh show` and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DhtCounters {
    pub requests_sent: u64,
    pub requests_answered: u64,
    pub timeouts: u64,
    pub lookups_started: u64,
    pub lookups_refused: u64,
    pub low_workbits_ignored: u64,
    pub unmatched_responses: u64,
    /// Requests sent again at once because a later one to the same node
    /// was answered first (see `Dht::resend_lost`).
    pub requests_resent: u64,
    pub transmits_dropped: u64,
    pub events_dropped: u64,
}

#[derive(Debug, Clone, Copy)]
enum PendingKind {
    Ping,
    Find { lookup: LookupId, target: PublicKey },
}

#[derive(Debug, Clone)]
struct Pending {
    key: PublicKey,
    addr: SocketAddr,
    sent_at: u64,
    deadline: u64,
    tries: u8,
    kind: PendingKind,
}

/// The Kademlia state machine of one node.
pub struct Dht {
    own: PublicKey,
    config: DhtConfig,
    epoch: Instant,
    table: Table,
    boot: Vec<(PublicKey, SocketAddr)>,
    own_record: Option<NodeRecord>,
    lookups: Vec<Lookup>,
    pending: HashMap<u64, Pending>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DhtEvent>,
    next_lookup: u64,
    rng: u64,
    next_maintenance: u64,
    last_bootstrap: Option<u64>,
    /// While the table holds fewer than K entries after a bootstrap, the
    /// self-lookup is repeated with a doubling delay.
    rebootstrap: Option<(u64, u64)>,
    counters: DhtCounters,
}

/// Ping ids with this bit set (and id 0) are the caller's own (keepalives,
/// probes of other state machines): their pongs update the table but are
/// not counted as unmatched responses.
pub const CALLER_IDS: u64 = 1 << 63;

/// Whether a ping id can be one of the DHT's requests.
fn is_dht_id(id: u64) -> bool {
    id != 0 && id & CALLER_IDS == 0
}

/// First delay before a sparse table's self-lookup is repeated.
const REBOOTSTRAP_FIRST_MS: u64 = 2_000;
/// Lookup slots that [`Dht::room_for_lookups`] leaves to the DHT's own
/// self-lookups and refreshes.
pub const LOOKUP_SLOTS_KEPT: usize = 2;
/// Longest delay between the self-lookups of a sparse table: a node whose
/// table a storm emptied keeps looking for the others.
const REBOOTSTRAP_MAX_MS: u64 = 60_000;
/// A sparse table that gains a node looks itself up within this long (a
/// node that lost its whole table rebuilds it as soon as anyone answers).
const REBOOTSTRAP_ON_CONTACT_MS: u64 = 500;
/// Longest delay between the self-lookups of an empty table (they ask the
/// boot nodes): a node whose last entry failed (its lone bootstrap died)
/// finds the bootstrap within this long of its return.
const REBOOTSTRAP_EMPTY_MAX_MS: u64 = 4_000;

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Dht {
    pub fn new(own: PublicKey, config: DhtConfig, now: Instant) -> Self {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for chunk in own.0.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            seed = seed.rotate_left(17) ^ u64::from_le_bytes(b);
        }
        let k = config.k.clamp(1, MAX_NODES);
        let config = DhtConfig {
            k,
            alpha: config.alpha.max(1),
            ..config
        };
        let next_maintenance = ms(config.maintenance_interval);
        Dht {
            table: Table::new(own, k, config.replacement_cache, 0),
            own,
            config,
            epoch: now,
            boot: Vec::new(),
            own_record: None,
            lookups: Vec::new(),
            pending: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_lookup: 1,
            rng: seed | 1,
            next_maintenance,
            last_bootstrap: None,
            rebootstrap: None,
            counters: DhtCounters::default(),
        }
    }

    pub fn own_key(&self) -> PublicKey {
        self.own
    }

    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    pub fn counters(&self) -> DhtCounters {
        self.counters.clone()
    }

    /// Entries in the routing table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups running (user, bootstrap and refresh).
    pub fn active_lookups(&self) -> usize {
        self.lookups.len()
    }

    /// How many lookups a caller may start now without any being refused
    /// and while [`LOOKUP_SLOTS_KEPT`] slots stay free for the DHT's own
    /// self-lookups and refreshes: a caller with more to look up keeps the
    /// rest for later instead of having them refused.
    pub fn room_for_lookups(&self) -> usize {
        self.config
            .max_lookups
            .saturating_sub(LOOKUP_SLOTS_KEPT)
            .saturating_sub(self.lookups.len())
    }

    fn now_ms(&self, now: Instant) -> u64 {
        ms(now.saturating_duration_since(self.epoch))
    }

    fn instant(&self, t: u64) -> Instant {
        self.epoch + Duration::from_millis(t)
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh request id, never 0 and below 2^63 (see [`is_dht_id`]).
    fn request_id(&mut self) -> u64 {
        loop {
            let id = self.random() & !CALLER_IDS;
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    fn workbits_ok(&self, key: &PublicKey) -> bool {
        self.config.required_workbits == 0
            || key.workbits(&self.config.namespace) >= self.config.required_workbits
    }

    fn push_transmit(&mut self, to_key: PublicKey, to_addr: SocketAddr, message: Message) {
        if self.transmits.len() >= self.config.max_queue {
            self.transmits.pop_front();
            self.counters.transmits_dropped += 1;
        }
        self.transmits.push_back(Transmit {
            to_key,
            to_addr,
            message,
        });
    }

    fn push_event(&mut self, e: DhtEvent) {
        if self.events.len() >= self.config.max_queue {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Adds a bootstrap node (from a `boot` line). At most `max_bootstrap`.
    pub fn add_bootstrap(&mut self, key: PublicKey, addr: SocketAddr) {
        if key == self.own {
            return;
        }
        if let Some(b) = self.boot.iter_mut().find(|b| b.0 == key) {
            b.1 = addr;
        } else if self.boot.len() < self.config.max_bootstrap {
            self.boot.push((key, addr));
        }
    }

    /// Pings the bootstrap nodes and starts the self-lookup.
    pub fn bootstrap(&mut self, now: Instant) {
        let t = self.now_ms(now);
        self.last_bootstrap = Some(t);
        for (k, a) in self.boot.clone() {
            self.send_ping(k, a, t, 0);
        }
        if !self.lookups.iter().any(|l| l.purpose == Purpose::Bootstrap) {
            self.start_lookup(self.own, Purpose::Bootstrap, t);
        }
    }

    /// What we tell others about ourselves (endpoints, NAT kind, relays),
    /// attached to our pings, pongs and find-node requests.
    pub fn set_own_record(&mut self, record: NodeRecord) {
        self.own_record = Some(NodeRecord {
            key: self.own,
            ..record
        });
    }

    /// Starts a lookup of `target`; its end is a [`DhtEvent::LookupDone`].
    pub fn lookup(&mut self, target: PublicKey, now: Instant) -> LookupId {
        let t = self.now_ms(now);
        self.start_lookup(target, Purpose::User, t)
    }

    /// Pings a node; the answer is a [`DhtEvent::Pong`] (and the node
    /// enters the table), silence a [`DhtEvent::PingTimeout`].
    pub fn ping(&mut self, key: PublicKey, addr: SocketAddr, now: Instant) {
        let t = self.now_ms(now);
        self.send_ping(key, addr, t, 0);
    }

    /// The table's entries, for `wh show all`.
    pub fn nodes(&self) -> impl Iterator<Item = NodeInfo> + '_ {
        self.table.iter().map(move |(bucket, e)| NodeInfo {
            key: e.key,
            addr: e.addr,
            bucket,
            last_seen: self.instant(e.last_seen),
            rtt: (e.rtt_ms != u32::MAX).then(|| Duration::from_millis(e.rtt_ms as u64)),
            nat: e.nat,
            relay_service: e.relay_service,
        })
    }

    /// The records of the `n` known nodes closest to `target`.
    pub fn closest(&self, target: &PublicKey, n: usize) -> Vec<NodeRecord> {
        self.table
            .closest(target, n, None)
            .into_iter()
            .map(|e| e.record())
            .collect()
    }

    /// The record of a node in the table.
    pub fn record_of(&self, key: &PublicKey) -> Option<NodeRecord> {
        self.table.get(key).map(|e| e.record())
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_maintenance;
        for p in self.pending.values() {
            t = t.min(p.deadline);
        }
        for l in &self.lookups {
            t = t.min(l.deadline);
            if let Some(at) = l.next_stall(self.config.k) {
                t = t.min(at);
            }
        }
        if let Some((at, _)) = self.rebootstrap {
            t = t.min(at);
        }
        Some(self.instant(t))
    }

    /// Bytes this DHT holds on the heap (by capacity), for memory estimates.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
            + self.boot.capacity() * std::mem::size_of::<(PublicKey, SocketAddr)>()
            + self.lookups.capacity() * std::mem::size_of::<Lookup>()
            + self.lookups.iter().map(Lookup::heap_bytes).sum::<usize>()
            + self.pending.capacity() * (std::mem::size_of::<(u64, Pending)>() + 1)
            + self.transmits.capacity() * std::mem::size_of::<Transmit>()
            + self.events.capacity() * std::mem::size_of::<DhtEvent>()
    }

    /// A node was heard from: table update, liveness ping of a stale entry
    /// when its bucket is full.
    fn seen(
        &mut self,
        key: PublicKey,
        addr: SocketAddr,
        t: u64,
        info: Option<&NodeRecord>,
        rtt: Option<u32>,
    ) {
        if key == self.own {
            return;
        }
        if !self.table.contains(&key) && !self.workbits_ok(&key) {
            self.counters.low_workbits_ignored += 1;
            return;
        }
        let info = info.filter(|i| i.key == key);
        match self
            .table
            .seen(key, addr, t, info, rtt, ms(self.config.stale_after))
        {
            Seen::Added => {
                self.push_event(DhtEvent::NodeAdded { key, addr });
                self.sparse_table_grew(t);
            }
            Seen::Full { ping: Some((k, a)) } => self.send_ping(k, a, t, 0),
            Seen::Full { ping: None } | Seen::Updated | Seen::Ignored => {}
        }
    }

    /// How long to wait for `key`'s answer: `request_timeout`, or three of
    /// its last measured round trips when that is longer (a node on a busy
    /// machine answers late, not never), at most 4 `request_timeout`.
    fn timeout_for(&self, key: &PublicKey) -> u64 {
        let base = ms(self.config.request_timeout);
        match self.table.get(key) {
            Some(e) if e.rtt_ms != u32::MAX => (3 * u64::from(e.rtt_ms)).clamp(base, 4 * base),
            _ => base,
        }
    }

    fn send_ping(&mut self, key: PublicKey, addr: SocketAddr, t: u64, tries: u8) {
        if key == self.own || self.pending.len() >= self.config.max_pending {
            return;
        }
        let id = self.request_id();
        self.pending.insert(
            id,
            Pending {
                key,
                addr,
                sent_at: t,
                deadline: t + self.timeout_for(&key),
                tries,
                kind: PendingKind::Ping,
            },
        );
        self.counters.requests_sent += 1;
        let info = self.own_record.clone();
        self.push_transmit(key, addr, Message::Ping { id, info });
    }

    fn send_find(&mut self, lookup: usize, key: PublicKey, addr: SocketAddr, t: u64, tries: u8) {
        let id = self.request_id();
        let (lid, target) = (self.lookups[lookup].id, self.lookups[lookup].target);
        self.pending.insert(
            id,
            Pending {
                key,
                addr,
                sent_at: t,
                deadline: t + self.timeout_for(&key),
                tries,
                kind: PendingKind::Find {
                    lookup: lid,
                    target,
                },
            },
        );
        let msg = Message::FindNode {
            id,
            target,
            info: self.own_record.clone(),
        };
        let l = &mut self.lookups[lookup];
        l.stats.requests += 1;
        l.stats.bytes_sent += sealed_len(&msg) as u64;
        self.counters.requests_sent += 1;
        self.push_transmit(key, addr, msg);
    }

    fn start_lookup(&mut self, target: PublicKey, purpose: Purpose, t: u64) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.counters.lookups_started += 1;
        if self.lookups.len() >= self.config.max_lookups {
            self.counters.lookups_refused += 1;
            if purpose == Purpose::User {
                self.push_event(DhtEvent::LookupDone {
                    id,
                    target,
                    found: None,
                    verified: false,
                    closest: Vec::new(),
                    stats: LookupStats {
                        refused: true,
                        ..LookupStats::default()
                    },
                });
            }
            return id;
        }
        self.table.touch(&target, t);
        let k = self.config.k;
        let mut l = Lookup::new(
            id,
            target,
            purpose,
            t,
            t + ms(self.config.lookup_timeout),
            k,
        );
        for e in self.table.closest(&target, k, None) {
            l.add(e.record(), 0);
        }
        if purpose == Purpose::Bootstrap || l.cands.is_empty() {
            for (k, a) in &self.boot {
                l.add(NodeRecord::new(*k, *a), 0);
            }
        }
        self.lookups.push(l);
        let idx = self.lookups.len() - 1;
        self.step_lookup(idx, t);
        id
    }

    /// After how many ms a request of lookup `idx` to `key` stalls:
    /// `stall_after`, or twice the node's measured round trip when that
    /// is longer (at most its request timeout). User lookups only: the
    /// DHT's own self-lookups and refreshes keep strict α, so that a crowd
    /// joining at once asks no more than before.
    fn stall_for(&self, purpose: Purpose, key: &PublicKey) -> Option<u64> {
        let base = ms(self.config.stall_after);
        if purpose != Purpose::User || base == 0 {
            return None;
        }
        let rtt = self.table.get(key).map_or(0, |e| e.rtt_ms);
        let rtt = if rtt == u32::MAX { 0 } else { u64::from(rtt) };
        Some(base.max(2 * rtt).min(self.timeout_for(key)))
    }

    /// Sends what the lookup at `idx` may send, or ends it. Returns whether
    /// it ended (and so was removed).
    fn step_lookup(&mut self, idx: usize, t: u64) -> bool {
        let k = self.config.k;
        if self.lookups[idx].is_done(k, t) {
            self.finish_lookup(idx, t);
            return true;
        }
        let budget = self.config.max_pending.saturating_sub(self.pending.len());
        let alpha = self.config.alpha;
        let purpose = self.lookups[idx].purpose;
        let stalls: Vec<(PublicKey, Option<u64>)> = self.lookups[idx]
            .cands
            .iter()
            .filter(|c| c.state == State::Waiting)
            .take(k)
            .map(|c| (c.record.key, self.stall_for(purpose, &c.record.key)))
            .collect();
        let stall = |key: &PublicKey| stalls.iter().find(|(k, _)| k == key).and_then(|(_, s)| *s);
        let next = self.lookups[idx].next(k, alpha, budget, t, stall);
        for (key, addr) in next {
            self.send_find(idx, key, addr, t, 0);
        }
        false
    }

    fn finish_lookup(&mut self, idx: usize, t: u64) {
        let mut l = self.lookups.swap_remove(idx);
        let k = self.config.k;
        l.stats.duration = Duration::from_millis(t.saturating_sub(l.started));
        l.stats.hops = match l.found_hop {
            Some(h) => h,
            None => l
                .cands
                .iter()
                .filter(|c| c.state == State::Succeeded)
                .map(|c| c.hop)
                .max()
                .unwrap_or(0),
        };
        match l.purpose {
            Purpose::User => {
                let closest = l.closest(k);
                self.push_event(DhtEvent::LookupDone {
                    id: l.id,
                    target: l.target,
                    found: l.found,
                    verified: l.target_answered,
                    closest,
                    stats: l.stats,
                });
            }
            Purpose::Bootstrap => {
                let nodes = self.table.len();
                self.push_event(DhtEvent::Bootstrapped { nodes });
                // A sparse table (joined with many others at once, or among
                // the first nodes) looks itself up again, later and later.
                self.rebootstrap = if nodes < k {
                    let delay = self
                        .rebootstrap
                        .map_or(REBOOTSTRAP_FIRST_MS, |(_, d)| d.saturating_mul(2));
                    let max = if nodes == 0 {
                        REBOOTSTRAP_EMPTY_MAX_MS
                    } else {
                        REBOOTSTRAP_MAX_MS
                    };
                    let delay = delay.min(ms(self.config.refresh_interval)).clamp(1, max);
                    Some((t + delay, delay))
                } else {
                    None
                };
                if self.config.join_refresh_buckets > 0 {
                    self.refresh_far_buckets(t);
                }
            }
            Purpose::Refresh => {}
        }
    }

    /// A node entered a table holding fewer than K (once bootstrapped): the
    /// next self-lookup comes soon (not after a back-off grown while nobody answered), so
    /// that a table emptied by a storm, or the table of a bootstrap node
    /// that has nobody to ask, fills again from the first node heard.
    fn sparse_table_grew(&mut self, t: u64) {
        if self.last_bootstrap.is_none()
            || self.table.len() >= self.config.k
            || self.lookups.iter().any(|l| l.purpose == Purpose::Bootstrap)
        {
            return;
        }
        let soon = t + REBOOTSTRAP_ON_CONTACT_MS;
        self.rebootstrap = match self.rebootstrap {
            Some((at, _)) if at <= soon => self.rebootstrap,
            _ => Some((soon, REBOOTSTRAP_FIRST_MS)),
        };
    }

    /// The last entry failed: look ourselves up (through the boot nodes)
    /// soon and often again, not after a back-off grown while the table
    /// was merely sparse.
    fn table_emptied(&mut self, t: u64) {
        if self.last_bootstrap.is_none() {
            return;
        }
        let soon = t + REBOOTSTRAP_FIRST_MS;
        self.rebootstrap = match self.rebootstrap {
            Some((at, d)) if at <= soon => Some((at, d.min(REBOOTSTRAP_FIRST_MS))),
            _ => Some((soon, REBOOTSTRAP_FIRST_MS)),
        };
    }

    /// Kademlia's join: refresh every bucket farther than our closest neighbour.
    fn refresh_far_buckets(&mut self, t: u64) {
        let Some(closest) = self
            .table
            .closest(&self.own, 1, None)
            .first()
            .map(|e| e.key)
        else {
            return;
        };
        let Some(deepest) = bucket_index(&self.own, &closest) else {
            return;
        };
        for i in 0..deepest.min(self.config.join_refresh_buckets) {
            if self.lookups.len() >= self.config.max_lookups {
                break;
            }
            let target = self.random_key_in_bucket(i);
            self.start_lookup(target, Purpose::Refresh, t);
        }
    }

    /// A random key whose common prefix with ours is exactly `i` bits.
    fn random_key_in_bucket(&mut self, i: usize) -> PublicKey {
        let mut k = self.own.0;
        for chunk in k.chunks_mut(8) {
            let r = self.random().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        for bit in 0..=i.min(255) {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let own = self.own.0[byte] & mask;
            let v = if bit == i { own ^ mask } else { own };
            k[byte] = (k[byte] & !mask) | v;
        }
        PublicKey(k)
    }

    fn lookup_index(&self, id: LookupId) -> Option<usize> {
        self.lookups.iter().position(|l| l.id == id)
    }

    /// Whether `msg` answers a request of ours still waiting, sent to `key`
    /// at `addr` (its random id matches): then it is fresh whatever its
    /// source proved, and taking it in sends nothing back (see
    /// `Received::Answer` of the codec).
    pub fn expects_answer(&self, key: &PublicKey, addr: SocketAddr, msg: &Message) -> bool {
        let (id, find) = match msg {
            Message::Pong { id, .. } => (id, false),
            Message::Nodes { id, .. } => (id, true),
            _ => return false,
        };
        self.pending.get(id).is_some_and(|p| {
            p.key == *key && p.addr == addr && matches!(p.kind, PendingKind::Find { .. }) == find
        })
    }

    /// Takes in an authenticated message (opened by the codec) from
    /// `from_key` at `from_addr`. Answers pings and find-node requests
    /// itself (see [`Dht::poll_transmit`]); other messages are ignored.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from_addr: SocketAddr,
        from_key: PublicKey,
        msg: &Message,
    ) {
        if from_key == self.own {
            return;
        }
        let t = self.now_ms(now);
        match msg {
            Message::Ping { id, info } => {
                self.seen(from_key, from_addr, t, info.as_ref(), None);
                let info = self.own_record.clone();
                self.push_transmit(
                    from_key,
                    from_addr,
                    Message::Pong {
                        id: *id,
                        observed: from_addr,
                        info,
                    },
                );
            }
            Message::Pong { id, observed, info } => {
                let rtt = match self.pending.get(id) {
                    Some(p) if p.key == from_key && matches!(p.kind, PendingKind::Ping) => {
                        let (rtt, sent_at) = (t.saturating_sub(p.sent_at), p.sent_at);
                        self.pending.remove(id);
                        self.resend_lost(from_key, sent_at, t);
                        self.counters.requests_answered += 1;
                        self.push_event(DhtEvent::Pong {
                            key: from_key,
                            observed: *observed,
                            rtt: Duration::from_millis(rtt),
                        });
                        Some(rtt.min(u32::MAX as u64 - 1) as u32)
                    }
                    _ => {
                        if is_dht_id(*id) {
                            self.counters.unmatched_responses += 1;
                        }
                        None
                    }
                };
                self.seen(from_key, from_addr, t, info.as_ref(), rtt);
            }
            Message::FindNode { id, target, info } => {
                self.seen(from_key, from_addr, t, info.as_ref(), None);
                let nodes = self.answer_find(target, &from_key);
                self.push_transmit(from_key, from_addr, Message::Nodes { id: *id, nodes });
            }
            Message::Nodes { id, nodes } => {
                self.handle_nodes(t, from_addr, from_key, *id, nodes, msg)
            }
            _ => {}
        }
    }

    /// The closest records we know to `target`, as many as fit the budget.
    fn answer_find(&self, target: &PublicKey, requester: &PublicKey) -> Vec<NodeRecord> {
        let budget = CONTROL_BUDGET - SEAL_OVERHEAD - 1 - 8 - 1;
        let mut used = 0;
        let mut out = Vec::new();
        for e in self.table.closest(target, self.config.k, Some(requester)) {
            let r = e.record();
            let n = r.encoded_len();
            if used + n > budget {
                break;
            }
            used += n;
            out.push(r);
        }
        out
    }

    fn handle_nodes(
        &mut self,
        t: u64,
        from_addr: SocketAddr,
        from_key: PublicKey,
        id: u64,
        nodes: &[NodeRecord],
        msg: &Message,
    ) {
        let p = match self.pending.get(&id) {
            Some(p) if p.key == from_key => p.clone(),
            _ => {
                self.counters.unmatched_responses += 1;
                self.seen(from_key, from_addr, t, None, None);
                return;
            }
        };
        self.pending.remove(&id);
        self.counters.requests_answered += 1;
        self.resend_lost(from_key, p.sent_at, t);
        let rtt = t.saturating_sub(p.sent_at).min(u32::MAX as u64 - 1) as u32;
        self.seen(from_key, from_addr, t, None, Some(rtt));
        let PendingKind::Find { lookup, target } = p.kind else {
            return;
        };
        let Some(idx) = self.lookup_index(lookup) else {
            return;
        };
        let check_workbits = self.config.required_workbits > 0;
        let own = self.own;
        let valid: Vec<NodeRecord> = nodes
            .iter()
            .filter(|r| r.key != own && r.key != from_key)
            .filter(|r| !check_workbits || self.workbits_ok(&r.key))
            .cloned()
            .collect();
        // The target answering speaks for itself: what it told us (the
        // table keeps only records a node gave of itself) at the address
        // it answered from, never a record a third party gave of it.
        let own_answer = (from_key == target).then(|| {
            let mut r = self
                .table
                .get(&target)
                .map(|e| e.record())
                .unwrap_or_else(|| NodeRecord::new(target, from_addr));
            r.endpoints.retain(|e| *e != from_addr);
            r.endpoints.insert(0, from_addr);
            r.endpoints.truncate(crate::proto::MAX_ENDPOINTS);
            r
        });
        let l = &mut self.lookups[idx];
        l.stats.responses += 1;
        l.stats.bytes_received += sealed_len(msg) as u64;
        let hop = match l.candidate_mut(&from_key) {
            Some(c) => {
                c.state = State::Succeeded;
                // Ask it at the address it answered from.
                c.addr = from_addr;
                if c.record.endpoints.first() != Some(&from_addr) {
                    c.record.endpoints.retain(|e| *e != from_addr);
                    c.record.endpoints.insert(0, from_addr);
                    c.record.endpoints.truncate(crate::proto::MAX_ENDPOINTS);
                }
                c.hop
            }
            None => 0,
        };
        if let Some(record) = own_answer {
            l.target_answered = true;
            l.found = Some(record);
        }
        let next_hop = hop.saturating_add(1);
        // The first record of the target another node gives, and any later
        // one that says more: tell the caller now, while the lookup goes on
        // (the target itself may never answer, being behind a NAT; its
        // relays are in the record).
        let mut early = None;
        let user = l.purpose == Purpose::User;
        for r in valid {
            if r.key == target {
                tracing::trace!(target = %target.short(10), from = %from_key.short(10), hop = next_hop, relays = r.relays.len(), nat = ?r.nat, "a record of the target");
            }
            let first = (user && r.key == target && !l.record_reported).then(|| r.clone());
            if l.add(r, next_hop) && user {
                early = l.found.clone();
            } else if first.is_some() {
                early = first;
            }
        }
        if let Some(record) = early {
            l.record_reported = true;
            let id = l.id;
            self.push_event(DhtEvent::RecordSeen { id, target, record });
        }
        self.step_lookup(idx, t);
    }

    /// Runs what is due at `now`: retries and failures of unanswered
    /// requests, lookups past their deadline, liveness pings, refreshes.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.now_ms(now);
        for id in self.pending_ids(|p| p.deadline <= t) {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            self.request_timed_out(p, t);
        }
        let mut i = 0;
        while i < self.lookups.len() {
            if self.lookups[i].deadline <= t {
                self.finish_lookup(i, t);
            } else if !self.step_lookup(i, t) {
                i += 1;
            }
        }
        // Look ourselves up again while the table is sparse.
        if let Some((at, delay)) = self.rebootstrap
            && t >= at
        {
            let running = self.lookups.iter().any(|l| l.purpose == Purpose::Bootstrap);
            if running || self.lookups.len() >= self.config.max_lookups {
                self.rebootstrap = Some((t + delay, delay));
            } else {
                // Armed again when this lookup ends, if still sparse.
                self.rebootstrap = Some((u64::MAX, delay));
                self.start_lookup(self.own, Purpose::Bootstrap, t);
            }
        }
        if t >= self.next_maintenance {
            self.next_maintenance = t + ms(self.config.maintenance_interval).max(1);
            self.maintenance(t);
        }
    }

    /// The ids of the pending requests `pick` chooses, in id order (not
    /// the map's): the same inputs time out and resend the same way.
    fn pending_ids(&self, pick: impl Fn(&Pending) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| pick(p))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// `key` answered a request sent at `answered_sent_at`: the requests
    /// to it sent before that one and still unanswered were lost (it was
    /// down and is back, or its NAT had no mapping yet). Finds are sent
    /// again now, not after their timeout and retry (a node started before
    /// its bootstrap has its lookups' requests waiting on it); older pings
    /// are answered by this one and dropped. A request is sent again only
    /// when a later one is answered, so this is bounded by the pending
    /// requests, and it adds no datagram to a node that answers nothing
    /// (more probes of a silent bootstrap would flood it when it is only
    /// slow: `a_storm_of_nodes_that_shed_late_datagrams_forms_a_network`).
    fn resend_lost(&mut self, key: PublicKey, answered_sent_at: u64, t: u64) {
        for id in self.pending_ids(|p| p.key == key && p.sent_at < answered_sent_at) {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            if let PendingKind::Find { lookup, .. } = p.kind
                && let Some(idx) = self.lookup_index(lookup)
            {
                self.counters.requests_resent += 1;
                self.send_find(idx, p.key, p.addr, t, p.tries);
            }
        }
    }

    fn request_timed_out(&mut self, p: Pending, t: u64) {
        let retry = p.tries < self.config.retries;
        match p.kind {
            PendingKind::Ping => {
                if retry {
                    self.send_ping(p.key, p.addr, t, p.tries + 1);
                    return;
                }
            }
            PendingKind::Find { lookup, .. } => {
                // A late answer to a lookup that is over proves nothing
                // either way: no retry, no failure.
                let Some(idx) = self.lookup_index(lookup) else {
                    return;
                };
                if retry {
                    self.send_find(idx, p.key, p.addr, t, p.tries + 1);
                    return;
                }
                let l = &mut self.lookups[idx];
                l.stats.failures += 1;
                if let Some(c) = l.candidate_mut(&p.key) {
                    c.state = State::Failed;
                }
            }
        }
        self.counters.timeouts += 1;
        let (removed, promoted) = self.table.failed(&p.key);
        if removed {
            self.push_event(DhtEvent::NodeRemoved { key: p.key });
            if self.is_empty() {
                self.table_emptied(t);
            }
        }
        if let Some(k) = promoted
            && let Some(e) = self.table.get(&k)
        {
            let addr = e.addr;
            self.push_event(DhtEvent::NodeAdded { key: k, addr });
        }
        if matches!(p.kind, PendingKind::Ping) {
            self.push_event(DhtEvent::PingTimeout {
                key: p.key,
                addr: p.addr,
            });
        }
    }

    fn maintenance(&mut self, t: u64) {
        // Give back what bursts (a join, a busy lookup) left allocated.
        if self.transmits.is_empty() {
            self.transmits.shrink_to_fit();
        }
        if self.events.is_empty() {
            self.events.shrink_to_fit();
        }
        if self.lookups.is_empty() {
            self.lookups.shrink_to_fit();
        }
        if self.pending.capacity() > 2 * self.pending.len() + 8 {
            self.pending.shrink_to_fit();
        }
        // Liveness: ping the least recently seen stale entries.
        let stale_after = ms(self.config.stale_after);
        let room = self.config.max_pending.saturating_sub(self.pending.len());
        let mut stale: Vec<(u64, PublicKey, SocketAddr)> = self
            .table
            .iter()
            .map(|(_, e)| e)
            .filter(|e| !e.pinging && t.saturating_sub(e.last_seen) >= stale_after)
            .map(|e| (e.last_seen, e.key, e.addr))
            .collect();
        stale.sort_unstable_by_key(|s| s.0);
        stale.truncate(self.config.max_pings_per_round.min(room));
        for (_, key, addr) in stale {
            if let Some(e) = self.table.get_mut(&key) {
                e.pinging = true;
            }
            self.send_ping(key, addr, t, 0);
        }
        // Re-bootstrap a node that lost every entry.
        if self.table.len() == 0
            && !self.boot.is_empty()
            && self
                .last_bootstrap
                .is_none_or(|b| t.saturating_sub(b) >= 30_000)
        {
            self.bootstrap(self.instant(t));
        }
        // Refresh one idle bucket per round.
        let interval = ms(self.config.refresh_interval);
        let idle = self
            .table
            .buckets
            .iter()
            .enumerate()
            .find(|(_, b)| t.saturating_sub(b.last_refresh) >= interval)
            .map(|(i, _)| i);
        if let Some(i) = idle
            && self.lookups.len() < self.config.max_lookups
        {
            let target = self.random_key_in_bucket(i);
            self.start_lookup(target, Purpose::Refresh, t);
        }
    }
}
