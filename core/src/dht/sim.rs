//! A simulator of many nodes in one process: the real [`Dht`] and the real
//! wire encoding (and, for a sampled fraction of messages, the real sealing
//! with a [`Codec`] per node) over a simulated network with a fake clock.
//!
//! Events (deliveries, timers, joins, lookups) are processed in time order
//! from one queue. Each link has a latency derived from a hash of the pair
//! (10 to 150 ms one way); packets may be lost; after the network has formed
//! a fraction of the nodes may be killed without warning, and then lookups
//! of random live keys from random live nodes are measured.
//!
//! In the clock mode (`clock_skew_ms` > 0) a fraction of the nodes get a
//! random wall-clock offset (up to the given bound either way), every pair
//! is sealed, and codecs challenge what they cannot judge fresh, as the
//! daemon does; the report then counts challenges and how well each node
//! estimated its own offset from its peers.
//!
//! With a service time (`service_us`) each node handles its datagrams one
//! at a time behind a bounded receive queue, so overload becomes delay and
//! loss as on a real host; `shed_late` applies the daemon's policy (a
//! datagram that waited more than [`CONTROL_WAIT_MAX`] is dropped unread).

use super::{Dht, DhtConfig, DhtEvent, LookupId};
use crate::keys::{PrivateKey, PublicKey};
use crate::node::core::CONTROL_WAIT_MAX;
use crate::proto::{Codec, CodecConfig, FirstContact, Message, OpenError, Received};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    /// Fraction of nodes killed once the network has formed.
    pub churn: f64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Lookups measured.
    pub lookups: usize,
    pub k: usize,
    pub alpha: usize,
    /// The original's approach: ask all K closest at once (α = K).
    pub all_at_once: bool,
    pub seed: u64,
    /// Fraction of node pairs whose datagrams are all really sealed and
    /// opened (the others' are encoded and decoded in the clear). Sampling
    /// pairs rather than datagrams keeps each node's key cache as useful as
    /// in a real node, where X25519 runs once per peer.
    pub seal_fraction: f64,
    /// Time between two joins.
    pub join_interval_ms: u64,
    /// Quiet time after the last join, before churn and lookups.
    pub settle_ms: u64,
    /// Time between two measured lookups.
    pub lookup_interval_ms: u64,
    /// See [`DhtConfig::join_refresh_buckets`].
    pub join_refresh_buckets: usize,
    /// Clock mode: the largest wall-clock offset (either way) of a skewed
    /// node; 0 = every clock agrees. Non-zero seals every pair.
    pub clock_skew_ms: u64,
    /// Clock mode: the fraction of nodes whose clock is skewed.
    pub skewed_fraction: f64,
    /// How codecs judge a first contact (the daemon challenges).
    pub first_contact: FirstContact,
    /// Every node boots from node 0 (a fleet started at once with one
    /// bootstrap), instead of from a random node that joined before.
    pub single_boot: bool,
    /// Fraction of nodes on a busy machine: each datagram to one of them
    /// waits up to `busy_max_ms` more (at random) before it is handled.
    pub busy_fraction: f64,
    pub busy_max_ms: u64,
    /// Time a node takes to read and handle one datagram, in µs; a busy
    /// node takes [`BUSY_SLOWDOWN`] times as long. 0: no receive queue,
    /// every datagram is handled the moment it arrives, however many
    /// arrive together.
    pub service_us: u64,
    /// Datagrams a node's receive queue holds (its socket's buffer); one
    /// arriving to a full queue is lost. 0: unbounded.
    pub queue_cap: usize,
    /// The daemon's policy: a datagram that waited in the queue longer
    /// than [`CONTROL_WAIT_MAX`] is dropped unread (at a tenth of the
    /// service time).
    pub shed_late: bool,
    /// How long a lookup waits for a request before it asks the next
    /// candidate too, in ms ([`DhtConfig::stall_after`]); 0, the default
    /// here: never (strict α). The daemon's default is 250.
    pub stall_after_ms: u64,
}

/// How much slower a busy node handles each datagram (with `service_us`).
pub const BUSY_SLOWDOWN: u64 = 10;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            churn: 0.0,
            loss: 0.0,
            lookups: 200,
            k: 20,
            alpha: 3,
            all_at_once: false,
            seed: 1,
            seal_fraction: 0.05,
            join_interval_ms: 5,
            settle_ms: 20_000,
            lookup_interval_ms: 10,
            join_refresh_buckets: DhtConfig::default().join_refresh_buckets,
            clock_skew_ms: 0,
            skewed_fraction: 1.0,
            first_contact: FirstContact::ClockWindow,
            single_boot: false,
            busy_fraction: 0.0,
            busy_max_ms: 0,
            service_us: 0,
            queue_cap: 0,
            shed_late: false,
            stall_after_ms: 0,
        }
    }
}

/// p50, p95 and maximum of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Spread {
            p50: at(0.5),
            p95: at(0.95),
            max: v[v.len() - 1],
        }
    }
}

/// What a simulation measured.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub nodes: usize,
    pub alive: usize,
    pub lookups: usize,
    /// Lookups that returned the target's record.
    pub succeeded: usize,
    /// Lookups whose target itself answered.
    pub verified: usize,
    pub hops: Spread,
    pub messages_per_lookup: f64,
    pub bytes_per_lookup: f64,
    pub latency_ms: Spread,
    /// Datagrams sent during formation (joins and settling), per node.
    pub formation_messages_per_node: f64,
    pub messages: u64,
    pub sealed: u64,
    pub open_failures: u64,
    pub dh_computations: u64,
    pub table_entries_avg: f64,
    /// The smallest table of a live node.
    pub table_entries_min: usize,
    /// Timeouts, refused lookups and unmatched responses of all live nodes.
    pub timeouts: u64,
    pub lookups_refused: u64,
    pub unmatched_responses: u64,
    /// Receive queues (with `service_us`): datagrams lost to a full queue,
    /// dropped unread for waiting too long, and the longest wait of a
    /// datagram that was handled, in ms.
    pub queue_full: u64,
    pub shed_late: u64,
    pub queue_wait_max_ms: u64,
    /// Heap and inline bytes of a node's DHT and codec (by capacity).
    pub memory_per_node: f64,
    /// Of which the DHT's heap, and the codec's (key and replay caches).
    pub dht_heap_per_node: f64,
    pub codec_heap_per_node: f64,
    /// Challenges sent, not believed (a datagram of the same millisecond
    /// was already answered), and messages sealed again after one.
    pub challenges: u64,
    pub challenges_ignored: u64,
    pub resent: u64,
    /// Clock mode: nodes whose own-clock estimate exists, and its error
    /// against the node's true offset, in ms.
    pub clock_estimates: usize,
    pub clock_error_ms: Spread,
    pub wall_formation: Duration,
    pub wall: Duration,
    pub sim_time: Duration,
}

impl SimReport {
    pub fn success_pct(&self) -> f64 {
        if self.lookups == 0 {
            return 0.0;
        }
        100.0 * self.succeeded as f64 / self.lookups as f64
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes: {} alive {}", self.nodes, self.alive)?;
        writeln!(f, "lookups: {}", self.lookups)?;
        writeln!(f, "success: {:.2} %", self.success_pct())?;
        let v = if self.lookups == 0 {
            0.0
        } else {
            100.0 * self.verified as f64 / self.lookups as f64
        };
        writeln!(f, "verified: {v:.2} %")?;
        writeln!(
            f,
            "hops: p50 {} p95 {} max {}",
            self.hops.p50, self.hops.p95, self.hops.max
        )?;
        writeln!(f, "messages per lookup: {:.1}", self.messages_per_lookup)?;
        writeln!(f, "bytes per lookup: {:.0}", self.bytes_per_lookup)?;
        writeln!(
            f,
            "latency: p50 {:.0} ms p95 {:.0} ms max {:.0} ms",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.max
        )?;
        writeln!(
            f,
            "formation messages per node: {:.1}",
            self.formation_messages_per_node
        )?;
        writeln!(
            f,
            "datagrams: {} sealed {} open failures {} x25519 {}",
            self.messages, self.sealed, self.open_failures, self.dh_computations
        )?;
        writeln!(
            f,
            "challenges: {} (not believed {}) resent {}",
            self.challenges, self.challenges_ignored, self.resent
        )?;
        writeln!(
            f,
            "clock estimates: {} nodes, error p50 {:.0} ms p95 {:.0} ms max {:.0} ms",
            self.clock_estimates,
            self.clock_error_ms.p50,
            self.clock_error_ms.p95,
            self.clock_error_ms.max
        )?;
        writeln!(
            f,
            "table entries: {:.1} (smallest {})",
            self.table_entries_avg, self.table_entries_min
        )?;
        writeln!(
            f,
            "timeouts {} refused lookups {} unmatched responses {}",
            self.timeouts, self.lookups_refused, self.unmatched_responses
        )?;
        writeln!(
            f,
            "receive queues: full {} shed late {} longest wait {} ms",
            self.queue_full, self.shed_late, self.queue_wait_max_ms
        )?;
        writeln!(f, "sim time: {:.1} s", self.sim_time.as_secs_f64())?;
        writeln!(
            f,
            "wall: {:.2} s (formation {:.2} s)",
            self.wall.as_secs_f64(),
            self.wall_formation.as_secs_f64()
        )?;
        write!(
            f,
            "memory per node: {:.1} KiB (dht heap {:.1} KiB, codec heap {:.1} KiB)",
            self.memory_per_node / 1024.0,
            self.dht_heap_per_node / 1024.0,
            self.codec_heap_per_node / 1024.0
        )
    }
}

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Node `i`'s address: 198.18.0.0/15, the range set aside for benchmarks.
/// Nothing is sent anywhere: the simulated network is a queue in memory.
fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32),
        62096,
    ))
}

fn index_of(a: &SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) => {
            let i = u32::from(*v4.ip()).checked_sub(u32::from(Ipv4Addr::new(198, 18, 0, 0)))?;
            Some(i as usize)
        }
        SocketAddr::V6(_) => None,
    }
}

/// One-way latency of a link, 10 to 150 ms, the same both ways.
fn latency(a: usize, b: usize, seed: u64) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut r = Rng(seed ^ ((lo as u64) << 32 | hi as u64));
    10 + r.next() % 141
}

/// Whether node `i` runs on a busy machine.
fn busy(i: usize, seed: u64, fraction: f64) -> bool {
    Rng(seed.rotate_left(17) ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)).chance(fraction)
}

/// Whether the pair (a, b) is in the sealed sample.
fn pair_sampled(a: usize, b: usize, seed: u64, fraction: f64) -> bool {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut r = Rng(!seed ^ ((hi as u64) << 32 | lo as u64));
    r.chance(fraction)
}

enum Ev {
    Deliver {
        to: u32,
        from: u32,
        data: Vec<u8>,
        sealed: bool,
        /// It went through the node's receive queue already.
        queued: bool,
    },
    Timer {
        node: u32,
    },
    Join {
        node: u32,
    },
    Churn,
    Lookup {
        node: u32,
        target: u32,
    },
}

struct Item {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

struct Node {
    private: PrivateKey,
    key: PublicKey,
    dht: Option<Dht>,
    codec: Option<Codec>,
    alive: bool,
    timer: Option<u64>,
    /// Its wall clock minus true time.
    clock_offset: i64,
    /// When it is done with the datagrams queued so far, in µs.
    free_at_us: u64,
}

/// Milliseconds since the Unix epoch at simulated time 0 (for timestamps).
const UNIX_BASE_MS: u64 = 1_700_000_000_000;

struct Sim {
    cfg: SimConfig,
    dht_cfg: DhtConfig,
    codec_cfg: CodecConfig,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<Item>>,
    seq: u64,
    rng: Rng,
    base: Instant,
    now: u64,
    messages: u64,
    sealed: u64,
    open_failures: u64,
    challenges: u64,
    challenges_ignored: u64,
    resent: u64,
    measured: HashMap<(u32, LookupId), u32>,
    done: Vec<(bool, bool, f64, f64, u64, u64)>,
    buf: Vec<u8>,
    queue_full: u64,
    shed_late: u64,
    queue_wait_max_us: u64,
}

impl Sim {
    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Item {
            t,
            seq: self.seq,
            ev,
        }));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    /// Node `i`'s wall clock, in ms since the Unix epoch.
    fn wall_ms(&self, i: usize) -> u64 {
        (UNIX_BASE_MS + self.now).saturating_add_signed(self.nodes[i].clock_offset)
    }

    /// Sends a datagram a codec made (a challenge, or a message sealed again).
    fn send_raw(&mut self, from: usize, to: usize, data: Vec<u8>) {
        self.messages += 1;
        if self.rng.chance(self.cfg.loss) {
            return;
        }
        let t = self.now + latency(from, to, self.cfg.seed);
        self.push(
            t,
            Ev::Deliver {
                to: to as u32,
                from: from as u32,
                data,
                sealed: true,
                queued: false,
            },
        );
    }

    fn codec(&mut self, i: usize) -> &mut Codec {
        let (cfg, seed) = (&self.codec_cfg, self.cfg.seed);
        let n = &mut self.nodes[i];
        n.codec.get_or_insert_with(|| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            Codec::with_nonce_seed(n.private.clone(), cfg.clone(), s)
        })
    }

    /// Sends what node `i` queued, arms its timer, collects its events.
    fn flush(&mut self, i: usize) {
        while let Some(tx) = self.nodes[i].dht.as_mut().and_then(|d| d.poll_transmit()) {
            let Some(to) = index_of(&tx.to_addr).filter(|&j| j < self.nodes.len()) else {
                continue;
            };
            self.messages += 1;
            let seal = pair_sampled(i, to, self.cfg.seed, self.cfg.seal_fraction);
            let data = if seal {
                let now_ms = self.wall_ms(i);
                match self.codec(i).seal(now_ms, &tx.to_key, &tx.message) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "sim: seal failed");
                        continue;
                    }
                }
            } else {
                self.buf.clear();
                if tx.message.encode_into(&mut self.buf).is_err() {
                    continue;
                }
                self.buf.clone()
            };
            if seal {
                self.sealed += 1;
            }
            if self.rng.chance(self.cfg.loss) {
                continue;
            }
            let mut t = self.now + latency(i, to, self.cfg.seed);
            if busy(to, self.cfg.seed, self.cfg.busy_fraction) {
                t += self.rng.below(self.cfg.busy_max_ms as usize + 1) as u64;
            }
            self.push(
                t,
                Ev::Deliver {
                    to: to as u32,
                    from: i as u32,
                    data,
                    sealed: seal,
                    queued: false,
                },
            );
        }
        while let Some(e) = self.nodes[i].dht.as_mut().and_then(|d| d.poll_event()) {
            if let DhtEvent::LookupDone {
                id,
                target,
                found,
                verified,
                stats,
                closest,
            } = e
                && let Some(t) = self.measured.remove(&(i as u32, id))
            {
                let want = self.nodes[t as usize].key;
                debug_assert_eq!(want, target);
                let ok = found.is_some_and(|r| r.key == want);
                if !ok {
                    tracing::debug!(
                        node = i,
                        target = t,
                        ?stats,
                        closest = closest.len(),
                        "sim: lookup failed"
                    );
                }
                self.done.push((
                    ok,
                    verified,
                    stats.hops as f64,
                    stats.duration.as_millis() as f64,
                    (stats.requests + stats.responses) as u64,
                    stats.bytes_sent + stats.bytes_received,
                ));
            }
        }
        if let Some(next) = self.nodes[i].dht.as_ref().and_then(|d| d.poll_timeout()) {
            let next = (next.saturating_duration_since(self.base).as_millis() as u64).max(self.now);
            let n = &mut self.nodes[i];
            if n.timer.is_none_or(|t| next < t) {
                n.timer = Some(next);
                self.push(next, Ev::Timer { node: i as u32 });
            }
        }
    }

    /// Puts a datagram arriving now at `to` in its receive queue: `None`
    /// when it is lost there (a full queue, or dropped unread for its
    /// wait), else when the node will have handled it (ms).
    fn enqueue(&mut self, to: usize) -> Option<u64> {
        let mut service = self.cfg.service_us.max(1);
        if busy(to, self.cfg.seed, self.cfg.busy_fraction) {
            service *= BUSY_SLOWDOWN;
        }
        let now_us = self.now * 1000;
        let start = now_us.max(self.nodes[to].free_at_us);
        let wait = start - now_us;
        if self.cfg.queue_cap > 0 && wait / service >= self.cfg.queue_cap as u64 {
            self.queue_full += 1;
            return None;
        }
        if self.cfg.shed_late && Duration::from_micros(wait) > CONTROL_WAIT_MAX {
            self.shed_late += 1;
            self.nodes[to].free_at_us = start + service / 10;
            return None;
        }
        self.queue_wait_max_us = self.queue_wait_max_us.max(wait);
        self.nodes[to].free_at_us = start + service;
        Some((start + service).div_ceil(1000))
    }

    fn random_alive(&mut self) -> usize {
        loop {
            let i = self.rng.below(self.nodes.len());
            if self.nodes[i].alive && self.nodes[i].dht.is_some() {
                return i;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                to,
                from,
                data,
                sealed,
                queued,
            } => {
                let (to, from) = (to as usize, from as usize);
                if !self.nodes[to].alive || self.nodes[to].dht.is_none() {
                    return;
                }
                if self.cfg.service_us > 0 && !queued {
                    if let Some(t) = self.enqueue(to) {
                        let ev = Ev::Deliver {
                            to: to as u32,
                            from: from as u32,
                            data,
                            sealed,
                            queued: true,
                        };
                        self.push(t, ev);
                    }
                    return;
                }
                let from_key = self.nodes[from].key;
                let msg = if sealed {
                    let now_ms = self.wall_ms(to);
                    match self.codec(to).receive(now_ms, &data) {
                        Ok(Received::Message { from: k, message }) if k == from_key => message,
                        Ok(Received::Challenge {
                            to: k, challenge, ..
                        }) if k == from_key => {
                            self.challenges += 1;
                            return self.send_raw(to, from, challenge);
                        }
                        Ok(Received::Challenged { from: k, resend }) if k == from_key => {
                            self.resent += resend.len() as u64;
                            for d in resend {
                                self.send_raw(to, from, d);
                            }
                            return;
                        }
                        // A second challenge for datagrams one challenge
                        // already answered for (sent in the same millisecond).
                        Err(OpenError::BadChallenge(_)) => {
                            self.challenges_ignored += 1;
                            return;
                        }
                        _ => {
                            self.open_failures += 1;
                            return;
                        }
                    }
                } else {
                    match Message::decode(&data) {
                        Ok(m) => m,
                        Err(_) => {
                            self.open_failures += 1;
                            return;
                        }
                    }
                };
                let now = self.instant();
                if let Some(d) = self.nodes[to].dht.as_mut() {
                    d.handle_message(now, addr_of(from), from_key, &msg);
                }
                self.flush(to);
            }
            Ev::Timer { node } => {
                let i = node as usize;
                if self.nodes[i].timer != Some(self.now) || !self.nodes[i].alive {
                    return;
                }
                self.nodes[i].timer = None;
                let now = self.instant();
                if let Some(d) = self.nodes[i].dht.as_mut() {
                    d.handle_timeout(now);
                }
                self.flush(i);
            }
            Ev::Join { node } => {
                let i = node as usize;
                let now = self.instant();
                let mut dht = Dht::new(self.nodes[i].key, self.dht_cfg.clone(), now);
                if i > 0 {
                    // Boot from a random node that joined before.
                    let b = if self.cfg.single_boot {
                        0
                    } else {
                        loop {
                            let b = self.rng.below(i);
                            if self.nodes[b].dht.is_some() {
                                break b;
                            }
                        }
                    };
                    dht.add_bootstrap(self.nodes[b].key, addr_of(b));
                    dht.bootstrap(now);
                }
                self.nodes[i].dht = Some(dht);
                self.flush(i);
            }
            Ev::Churn => {
                let kill = (self.nodes.len() as f64 * self.cfg.churn).round() as usize;
                let mut killed = 0;
                while killed < kill.min(self.nodes.len().saturating_sub(2)) {
                    let i = self.rng.below(self.nodes.len());
                    if self.nodes[i].alive {
                        let n = &mut self.nodes[i];
                        n.alive = false;
                        n.dht = None;
                        n.codec = None;
                        killed += 1;
                    }
                }
            }
            Ev::Lookup { node, target } => {
                let (i, t) = (node as usize, target as usize);
                let key = self.nodes[t].key;
                let now = self.instant();
                if let Some(d) = self.nodes[i].dht.as_mut() {
                    let id = d.lookup(key, now);
                    self.measured.insert((node, id), target);
                }
                self.flush(i);
            }
        }
    }
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> SimReport {
    let wall = Instant::now();
    let n = cfg.nodes.max(2);
    let mut rng = Rng(cfg.seed);
    let mut clocks = Rng(cfg.seed ^ 0xC10C);
    let nodes: Vec<Node> = (0..n)
        .map(|_| {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes());
            }
            let private = PrivateKey::from_bytes(b);
            let key = private.public_key();
            let span = cfg.clock_skew_ms.min(i64::MAX as u64 / 2);
            let clock_offset = if span > 0 && clocks.chance(cfg.skewed_fraction) {
                (clocks.next() % (2 * span + 1)) as i64 - span as i64
            } else {
                0
            };
            Node {
                private,
                key,
                dht: None,
                codec: None,
                alive: true,
                timer: None,
                clock_offset,
                free_at_us: 0,
            }
        })
        .collect();
    let alpha = if cfg.all_at_once { cfg.k } else { cfg.alpha };
    let dht_cfg = DhtConfig {
        k: cfg.k,
        alpha,
        required_workbits: 0,
        join_refresh_buckets: cfg.join_refresh_buckets,
        // Strict α by default, as measured before stalled requests
        // existed: with them (the daemon's default) the queued 300-node
        // storm of `a_storm_of_nodes_that_shed_late_datagrams_forms_a_network`
        // found 199 of 200 targets (docs/dht.md, "Lookups").
        stall_after: Duration::from_millis(cfg.stall_after_ms),
        ..DhtConfig::default()
    };
    let codec_cfg = CodecConfig {
        required_workbits: 0,
        key_cache: 64,
        replay_cache: 512,
        first_contact: cfg.first_contact,
        ..CodecConfig::default()
    };
    let mut sim_cfg = cfg.clone();
    if cfg.clock_skew_ms > 0 {
        // An unsealed pair would not see the clocks.
        sim_cfg.seal_fraction = 1.0;
    }
    let mut sim = Sim {
        cfg: sim_cfg,
        dht_cfg,
        codec_cfg,
        nodes,
        queue: BinaryHeap::new(),
        seq: 0,
        rng: Rng(cfg.seed.wrapping_mul(31).wrapping_add(7)),
        base: Instant::now(),
        now: 0,
        messages: 0,
        sealed: 0,
        open_failures: 0,
        challenges: 0,
        challenges_ignored: 0,
        resent: 0,
        measured: HashMap::new(),
        done: Vec::new(),
        buf: Vec::new(),
        queue_full: 0,
        shed_late: 0,
        queue_wait_max_us: 0,
    };
    for i in 0..n {
        sim.push(i as u64 * cfg.join_interval_ms, Ev::Join { node: i as u32 });
    }
    let churn_at = n as u64 * cfg.join_interval_ms + cfg.settle_ms;
    sim.push(churn_at, Ev::Churn);
    let lookups_at = churn_at + 1000;
    let end = lookups_at + cfg.lookups as u64 * cfg.lookup_interval_ms + 120_000;
    let mut formation_messages = 0;
    let mut wall_formation = Duration::ZERO;
    let mut lookups_scheduled = false;
    while let Some(Reverse(item)) = sim.queue.pop() {
        if item.t > end {
            break;
        }
        sim.now = item.t;
        if matches!(item.ev, Ev::Churn) {
            formation_messages = sim.messages;
            wall_formation = wall.elapsed();
        }
        sim.handle(item.ev);
        if sim.now >= churn_at && !lookups_scheduled {
            lookups_scheduled = true;
            for j in 0..cfg.lookups {
                let src = sim.random_alive();
                let dst = loop {
                    let d = sim.random_alive();
                    if d != src {
                        break d;
                    }
                };
                sim.push(
                    lookups_at + j as u64 * cfg.lookup_interval_ms,
                    Ev::Lookup {
                        node: src as u32,
                        target: dst as u32,
                    },
                );
            }
        }
        if lookups_scheduled && sim.measured.is_empty() && sim.done.len() >= cfg.lookups {
            break;
        }
    }
    let alive: Vec<&Node> = sim.nodes.iter().filter(|n| n.alive).collect();
    let mem: usize = alive
        .iter()
        .map(|n| {
            std::mem::size_of::<Node>()
                + n.dht
                    .as_ref()
                    .map_or(0, |d| d.heap_bytes() + std::mem::size_of::<Dht>())
                + n.codec
                    .as_ref()
                    .map_or(0, |c| c.heap_bytes() + std::mem::size_of::<Codec>())
        })
        .sum();
    let dht_heap: usize = alive
        .iter()
        .filter_map(|n| n.dht.as_ref())
        .map(|d| d.heap_bytes())
        .sum();
    let codec_heap: usize = alive
        .iter()
        .filter_map(|n| n.codec.as_ref())
        .map(|c| c.heap_bytes())
        .sum();
    let entries: usize = alive
        .iter()
        .filter_map(|n| n.dht.as_ref())
        .map(|d| d.len())
        .sum();
    let counters: Vec<super::DhtCounters> = alive
        .iter()
        .filter_map(|n| n.dht.as_ref())
        .map(|d| d.counters())
        .collect();
    let dh: u64 = alive
        .iter()
        .filter_map(|n| n.codec.as_ref())
        .map(|c| c.counters().dh_computations)
        .sum();
    let now_ms = UNIX_BASE_MS + sim.now;
    let clock_errors: Vec<f64> = alive
        .iter()
        .filter_map(|n| {
            let own = now_ms.saturating_add_signed(n.clock_offset);
            let e = n.codec.as_ref()?.clock_estimate(own)?;
            Some((e.offset_ms - n.clock_offset).unsigned_abs() as f64)
        })
        .collect();
    let done = &sim.done;
    let lookups = cfg.lookups;
    let succeeded = done.iter().filter(|d| d.0).count();
    let verified = done.iter().filter(|d| d.1).count();
    let denom = done.len().max(1) as f64;
    SimReport {
        nodes: n,
        alive: alive.len(),
        lookups,
        succeeded,
        verified,
        hops: Spread::of(done.iter().filter(|d| d.0).map(|d| d.2).collect()),
        messages_per_lookup: done.iter().map(|d| d.4 as f64).sum::<f64>() / denom,
        bytes_per_lookup: done.iter().map(|d| d.5 as f64).sum::<f64>() / denom,
        latency_ms: Spread::of(done.iter().map(|d| d.3).collect()),
        formation_messages_per_node: formation_messages as f64 / n as f64,
        messages: sim.messages,
        sealed: sim.sealed,
        open_failures: sim.open_failures,
        dh_computations: dh,
        table_entries_avg: entries as f64 / alive.len().max(1) as f64,
        table_entries_min: alive
            .iter()
            .filter_map(|n| n.dht.as_ref())
            .map(|d| d.len())
            .min()
            .unwrap_or(0),
        timeouts: counters.iter().map(|c| c.timeouts).sum(),
        lookups_refused: counters.iter().map(|c| c.lookups_refused).sum(),
        unmatched_responses: counters.iter().map(|c| c.unmatched_responses).sum(),
        queue_full: sim.queue_full,
        shed_late: sim.shed_late,
        queue_wait_max_ms: sim.queue_wait_max_us / 1000,
        memory_per_node: mem as f64 / alive.len().max(1) as f64,
        dht_heap_per_node: dht_heap as f64 / alive.len().max(1) as f64,
        codec_heap_per_node: codec_heap as f64 / alive.len().max(1) as f64,
        challenges: sim.challenges,
        challenges_ignored: sim.challenges_ignored,
        resent: sim.resent,
        clock_estimates: clock_errors.len(),
        clock_error_ms: Spread::of(clock_errors),
        wall_formation,
        wall: wall.elapsed(),
        sim_time: Duration::from_millis(sim.now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_percentiles() {
        let s = Spread::of((1..=100).map(|x| x as f64).collect());
        assert_eq!((s.p50, s.p95, s.max), (50.0, 95.0, 100.0));
    }

    #[test]
    fn addresses_map_back() {
        for i in [0, 1, 255, 256, 9999, 100_000] {
            assert_eq!(index_of(&addr_of(i)), Some(i));
        }
    }

    /// A fleet started at once with one bootstrap, a third of the nodes
    /// on busy machines (each datagram to them waits up to 3 s): once the
    /// storm is over, every lookup finds its target and no table is empty.
    #[test]
    fn a_storm_of_nodes_started_at_once_on_busy_machines_heals() {
        let r = run(&SimConfig {
            nodes: 300,
            lookups: 100,
            join_interval_ms: 5,
            single_boot: true,
            busy_fraction: 0.3,
            busy_max_ms: 3000,
            settle_ms: 300_000,
            seal_fraction: 0.0,
            ..SimConfig::default()
        });
        assert_eq!(r.succeeded, 100, "{r}");
        assert!(r.table_entries_min >= 20, "{r}");
    }

    /// A fleet of 300 started within 0.3 s with one bootstrap, every node
    /// taking 5 ms to handle a datagram (a third of them, on a busy
    /// machine, 50 ms) behind a receive queue of 2,000, every pair sealed
    /// and challenged as the daemon does. `shed_late`: the daemon's policy.
    fn queued_storm(shed_late: bool) -> SimReport {
        run(&SimConfig {
            nodes: 300,
            lookups: 200,
            join_interval_ms: 1,
            settle_ms: 60_000,
            single_boot: true,
            busy_fraction: 0.3,
            service_us: 5000,
            queue_cap: 2000,
            shed_late,
            first_contact: FirstContact::Challenge,
            seal_fraction: 1.0,
            ..SimConfig::default()
        })
    }

    /// Without shedding, queues seconds deep make every answer late: the
    /// storm never passes (the lab's fifty-node failure, issue 12)...
    #[test]
    fn a_storm_of_nodes_working_through_deep_queues_never_forms_a_network() {
        let r = queued_storm(false);
        assert!(r.queue_wait_max_ms > 5000, "{r}");
        assert!(r.success_pct() < 50.0, "the storm passed: {r}");
    }

    /// ...and dropping unread what waited more than 2 s, every node finds
    /// every target and fills its table.
    #[test]
    fn a_storm_of_nodes_that_shed_late_datagrams_forms_a_network() {
        let r = queued_storm(true);
        assert!(r.shed_late > 0, "{r}");
        assert_eq!(r.succeeded, r.lookups, "{r}");
        assert!(r.table_entries_min >= 20, "{r}");
    }

    #[test]
    fn small_network_all_lookups_succeed() {
        let r = run(&SimConfig {
            nodes: 200,
            lookups: 50,
            seal_fraction: 0.2,
            ..SimConfig::default()
        });
        assert_eq!(r.succeeded, 50, "{r}");
        assert_eq!(r.open_failures, 0, "{r}");
        assert!(r.sealed > 0);
    }

    #[test]
    fn clocks_a_day_apart_still_find_every_node() {
        let r = run(&SimConfig {
            nodes: 100,
            lookups: 50,
            clock_skew_ms: 86_400_000,
            first_contact: FirstContact::Challenge,
            ..SimConfig::default()
        });
        assert_eq!(r.succeeded, 50, "{r}");
        assert_eq!(r.open_failures, 0, "{r}");
        assert!(r.challenges > 0, "{r}");
    }

    #[test]
    fn a_skewed_minority_learns_its_offset_from_the_median() {
        let r = run(&SimConfig {
            nodes: 100,
            lookups: 20,
            clock_skew_ms: 3_600_000,
            skewed_fraction: 0.3,
            ..SimConfig::default()
        });
        assert_eq!(r.succeeded, 20, "{r}");
        assert!(r.clock_estimates > 95, "{r}");
        // Links are 10 to 150 ms one way: offsets are measured that close.
        assert!(r.clock_error_ms.p95 < 1_000.0, "{r}");
    }
}
