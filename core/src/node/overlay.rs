//! The overlay's membership logic, free of I/O: which trusted peers the node
//! keeps, when to look them up, which path each one takes, and what changes
//! the data plane must apply. The daemon feeds it events and time.
//!
//! Records: a peer's record (endpoints, NAT kind, relays) is taken as its
//! own only from a message the peer itself sealed ([`Overlay::on_record`]
//! refuses a record whose key is not its sender's). A record a third party
//! gave (a lookup's) fills in only while the peer's own is missing or older
//! than [`OWN_RECORD_TTL`]: the peer's own word wins.
//!
//! Contact: a path is made only by a message the peer sealed
//! ([`Overlay::on_direct_contact`]). Datagrams a busy node dropped unread
//! ([`Overlay::on_unread_contacts`]) only keep an existing direct path at
//! their very source address from being taken for silent.

use crate::config::{NetworkSpec, PeerSpec};
use crate::control::{PathStatus, PeerStatus};
use crate::dataplane::PeerStats;
use crate::dht::LookupId;
use crate::dht::says_more;
use crate::keys::PublicKey;
use crate::proto::{Message, NatKind, NodeRecord};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

/// First delay before a failed lookup is retried; it doubles up to the maximum.
const LOOKUP_RETRY_MIN: Duration = Duration::from_millis(250);
const LOOKUP_RETRY_MAX: Duration = Duration::from_secs(30);
/// A peer without a path is looked up again this long after the last lookup
/// started, even if that one still runs ...
const LOOKUP_OVERLAP: Duration = Duration::from_millis(500);
/// ... but never more than this many lookups of one peer run at once: a
/// node started before its bootstrap (whose lookups wait on requests nobody
/// answers) would otherwise fill the DHT's lookup slots and have the next
/// ones refused.
const MAX_LOOKUPS_PER_PEER: usize = 2;
/// A found peer behind a NAT whose record names no relay (an early record,
/// or a bare hint) is looked up again at least this often while it has no
/// direct path: its record gains relays within seconds.
const BARE_RECORD_RETRY: Duration = Duration::from_secs(2);
/// A peer found or heard from this recently most likely exists: a lookup
/// that misses it (the DHT's fault: a bootstrap that restarted with an
/// empty table, nodes that have not told it their new record yet) is
/// tried again within [`RECENT_RETRY`], not after the grown back-off.
const RECENTLY_KNOWN: Duration = Duration::from_secs(30);
const RECENT_RETRY: Duration = Duration::from_millis(500);
/// A peer silent for this long is looked up again.
const SILENCE: Duration = Duration::from_secs(60);
/// A peer's control message through another relay moves its relayed path
/// only when data sent through the relay in use got nothing back for this
/// long (see [`Overlay::on_relayed_control`]).
pub const FOLLOW_AFTER_SILENCE: Duration = Duration::from_millis(400);
/// Control pings to direct peers keep NAT mappings and liveness fresh.
const KEEPALIVE: Duration = Duration::from_millis(1500);
/// A keepalive unanswered this long is followed by another, this often,
/// until the peer answers or the path is given up (`expire_direct`).
const PROBE_EVERY: Duration = Duration::from_millis(400);
/// A record a peer gave about itself outranks third parties' this long.
pub const OWN_RECORD_TTL: Duration = Duration::from_secs(120);
/// A found peer that gave no endpoint nor relay is looked up again this soon.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(300);
/// A node that knows nobody pings the static endpoints again this long
/// after its start, then at doubling intervals up to the maximum.
const ALONE_REPING_FIRST: Duration = Duration::from_secs(3);
const ALONE_REPING_MAX: Duration = Duration::from_secs(60);

/// When a node that knows nobody (its DHT is empty: no boot node nor peer
/// answered, nobody contacted it) pings the static endpoints of the network
/// file again. They are pinged at start, but the peers may not have been
/// listening yet (nodes started together, a peer's host still booting),
/// and boot nodes alone are retried by the DHT.
#[derive(Debug)]
pub struct AloneRepings {
    next: Instant,
    delay: Duration,
}

impl AloneRepings {
    pub fn new(now: Instant) -> Self {
        AloneRepings {
            next: now + ALONE_REPING_FIRST,
            delay: ALONE_REPING_FIRST,
        }
    }

    /// Whether to ping the static endpoints again now; `alone`: the DHT
    /// is empty. Knowing somebody resets the schedule.
    pub fn due(&mut self, alone: bool, now: Instant) -> bool {
        if !alone {
            *self = AloneRepings::new(now);
            return false;
        }
        if now < self.next {
            return false;
        }
        self.delay = (self.delay * 2).min(ALONE_REPING_MAX);
        self.next = now + self.delay;
        true
    }
}

/// How the data plane reaches a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    Direct(SocketAddr),
    /// Through these relays, the first in use.
    Relayed(Vec<(PublicKey, SocketAddr)>),
}

/// What the data plane must do for one peer: program it (with a path) or
/// remove it (`path: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    pub key: PublicKey,
    pub allowed_ips: Vec<IpNet>,
    pub path: Option<PeerPath>,
}

#[derive(Debug)]
struct Peer {
    spec: PeerSpec,
    ipv4: Option<Ipv4Addr>,
    ipv6: Ipv6Addr,
    path: Option<PeerPath>,
    record: Option<NodeRecord>,
    /// When `record` came from the peer itself (else a third party's).
    own_record_at: Option<Instant>,
    last_contact: Option<Instant>,
    last_keepalive: Option<Instant>,
    /// The lookups running, and when each started, the latest last (at
    /// most [`MAX_LOOKUPS_PER_PEER`]).
    lookups_in_flight: Vec<(LookupId, Instant)>,
    /// When a lookup last found a record of it.
    found_at: Option<Instant>,
    next_lookup: Instant,
    backoff: Duration,
}

impl Peer {
    /// What the data plane must apply for this peer now.
    fn change(&self) -> PathChange {
        PathChange {
            key: self.spec.key,
            allowed_ips: self.allowed_ips(),
            path: self.path.clone(),
        }
    }

    fn allowed_ips(&self) -> Vec<IpNet> {
        let mut ips = Vec::new();
        if let Some(v4) = self.ipv4 {
            ips.push(IpNet::V4(Ipv4Net::from(v4)));
        }
        ips.push(IpNet::V6(Ipv6Net::from(self.ipv6)));
        ips.extend(self.spec.routes.iter().copied());
        ips
    }
}

/// The trusted peers of the network and their paths.
#[derive(Debug)]
pub struct Overlay {
    network: String,
    own: PublicKey,
    own_spec: Option<PeerSpec>,
    own_ipv4: Option<(Ipv4Addr, u8)>,
    own_ipv6: Ipv6Addr,
    peers: BTreeMap<PublicKey, Peer>,
    /// Trusted peers by the first 8 bytes of their key (relayed data names
    /// its sender so).
    by_prefix: BTreeMap<u64, PublicKey>,
    changes: Vec<PathChange>,
    transmits: Vec<(PublicKey, SocketAddr, Message)>,
    next_ping: u64,
}

impl Overlay {
    pub fn new(spec: &NetworkSpec, own: PublicKey) -> Self {
        let mut o = Overlay {
            network: spec.name.clone(),
            own,
            own_spec: None,
            own_ipv4: None,
            own_ipv6: spec.ipv6_of(&own),
            peers: BTreeMap::new(),
            by_prefix: BTreeMap::new(),
            changes: Vec::new(),
            transmits: Vec::new(),
            next_ping: 1 << 63,
        };
        o.apply_spec(spec, Instant::now());
        o
    }

    /// The node is a member of the overlay (trusted by its own file).
    pub fn has_interface(&self) -> bool {
        self.own_ipv4.is_some()
    }

    pub fn own_hostname(&self) -> Option<String> {
        self.own_spec.as_ref().and_then(|s| s.hostname.clone())
    }

    pub fn own_ipv4(&self) -> Option<Ipv4Addr> {
        self.own_ipv4.map(|(a, _)| a)
    }

    pub fn own_ipv6(&self) -> Option<Ipv6Addr> {
        self.has_interface().then_some(self.own_ipv6)
    }

    /// Subnets this node routes (its `router` line): its pod CIDRs.
    pub fn own_routes(&self) -> Vec<IpNet> {
        self.own_spec
            .as_ref()
            .map(|s| s.routes.clone())
            .unwrap_or_default()
    }

    /// Subnets a peer routes.
    pub fn routes_of(&self, key: &PublicKey) -> Vec<IpNet> {
        self.peers
            .get(key)
            .map(|p| p.spec.routes.clone())
            .unwrap_or_default()
    }

    /// Every subnet routed by a member of the network, this node included.
    pub fn all_routes(&self) -> Vec<IpNet> {
        let mut v = self.own_routes();
        for p in self.peers.values() {
            v.extend(p.spec.routes.iter().copied());
        }
        v.sort();
        v.dedup();
        v
    }

    /// The interface's addresses: the IPv4 in the subnet, the IPv6 in the /64.
    pub fn own_addresses(&self) -> Vec<IpNet> {
        let mut v = Vec::new();
        if let Some((ip, len)) = self.own_ipv4 {
            if let Ok(n) = Ipv4Net::new(ip, len) {
                v.push(IpNet::V4(n));
            }
            if let Ok(n) = Ipv6Net::new(self.own_ipv6, 64) {
                v.push(IpNet::V6(n));
            }
        }
        v
    }

    fn apply_spec(&mut self, spec: &NetworkSpec, now: Instant) -> (Vec<String>, Vec<String>) {
        let prefix = spec.subnet.map_or(32, |s| s.prefix_len());
        let mut seen = Vec::new();
        let mut added = Vec::new();
        self.own_spec = None;
        self.own_ipv4 = None;
        for m in spec.members() {
            if !m.peer.role.is_trusted() {
                continue;
            }
            if m.peer.key == self.own {
                self.own_spec = Some(m.peer.clone());
                self.own_ipv4 = m.ipv4.map(|a| (a, prefix));
                continue;
            }
            seen.push(m.peer.key);
            let ipv6 = spec.ipv6_of(&m.peer.key);
            match self.peers.get_mut(&m.peer.key) {
                Some(p) => {
                    let changed = p.ipv4 != m.ipv4 || p.spec.routes != m.peer.routes;
                    p.spec = m.peer.clone();
                    p.ipv4 = m.ipv4;
                    p.ipv6 = ipv6;
                    if changed && p.path.is_some() {
                        let change = p.change();
                        self.changes.push(change);
                    }
                }
                None => {
                    added.push(name_of(m.peer));
                    self.peers.insert(
                        m.peer.key,
                        Peer {
                            spec: m.peer.clone(),
                            ipv4: m.ipv4,
                            ipv6,
                            path: None,
                            record: None,
                            own_record_at: None,
                            last_contact: None,
                            last_keepalive: None,
                            lookups_in_flight: Vec::new(),
                            found_at: None,
                            next_lookup: now,
                            backoff: LOOKUP_RETRY_MIN,
                        },
                    );
                }
            }
        }
        let gone: Vec<PublicKey> = self
            .peers
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        let mut removed = Vec::new();
        for k in gone {
            if let Some(p) = self.peers.remove(&k) {
                removed.push(name_of(&p.spec));
                self.changes.push(PathChange {
                    key: k,
                    allowed_ips: Vec::new(),
                    path: None,
                });
            }
        }
        self.by_prefix = self.peers.keys().map(|k| (k.prefix(), *k)).collect();
        (added, removed)
    }

    /// The trusted peer whose key starts with these 8 bytes.
    pub fn trusted_by_prefix(&self, prefix: u64) -> Option<PublicKey> {
        self.by_prefix.get(&prefix).copied()
    }

    /// Applies a new version of the file. Refused, changing nothing, when it
    /// would renumber a node that exists in both versions or this node itself.
    pub fn reload(&mut self, spec: &NetworkSpec, now: Instant) -> Result<String, String> {
        if spec.name != self.network {
            return Err(format!(
                "the file now names network '{}', but this interface runs '{}'; nothing was changed (bring it down and up to switch networks)",
                spec.name, self.network
            ));
        }
        let mut problems = Vec::new();
        for m in spec.members() {
            if !m.peer.role.is_trusted() {
                continue;
            }
            let old = if m.peer.key == self.own {
                self.own_ipv4.map(|(a, _)| a)
            } else {
                match self.peers.get(&m.peer.key) {
                    Some(p) => p.ipv4,
                    None => continue,
                }
            };
            if old.is_some() && old != m.ipv4 {
                problems.push(format!(
                    "node {} ({}) would move from {} to {}: renumbering a running node breaks its connections; give it 'static-ip {}' on its line, or put new nodes after the existing ones",
                    name_of(m.peer),
                    m.peer.key.short(10),
                    old.map_or("-".into(), |a| a.to_string()),
                    m.ipv4.map_or("-".into(), |a| a.to_string()),
                    old.map_or("-".into(), |a| a.to_string()),
                ));
            }
        }
        let own_trusted_now = spec.trusted().any(|p| p.key == self.own);
        if own_trusted_now != self.has_interface() {
            problems.push("this node would join or leave the overlay; bring the interface down and up instead".into());
        }
        if !problems.is_empty() {
            return Err(format!("{}\nnothing was changed", problems.join("\n")));
        }
        let (added, removed) = self.apply_spec(spec, now);
        Ok(format!(
            "reloaded network {}: {} peer(s) added{}, {} removed{}",
            spec.name,
            added.len(),
            list(&added),
            removed.len(),
            list(&removed)
        ))
    }

    /// Trusted peers whose lookup is due now.
    /// The peers to look up now, the longest waiting first.
    pub fn lookups_due(&mut self, now: Instant) -> Vec<PublicKey> {
        let mut due: Vec<(Instant, PublicKey)> = self
            .peers
            .values()
            .filter(|p| p.next_lookup <= now)
            .filter(|p| match p.lookups_in_flight.last() {
                None => true,
                // Without any path, a lookup stuck waiting for the peer
                // itself (behind NAT, it never answers) does not hold the
                // next one back: records improve as peers pick relays.
                Some((_, started)) => {
                    p.path.is_none()
                        && p.lookups_in_flight.len() < MAX_LOOKUPS_PER_PEER
                        && now.saturating_duration_since(*started) >= LOOKUP_OVERLAP
                }
            })
            .filter(|p| {
                p.last_contact
                    .is_none_or(|t| now.duration_since(t) > SILENCE)
            })
            .map(|p| (p.next_lookup, p.spec.key))
            .collect();
        due.sort();
        due.into_iter().map(|(_, key)| key).collect()
    }

    pub fn lookup_started(&mut self, key: PublicKey, id: LookupId, now: Instant) {
        if let Some(p) = self.peers.get_mut(&key) {
            if p.lookups_in_flight.len() >= MAX_LOOKUPS_PER_PEER {
                p.lookups_in_flight.remove(0);
            }
            p.lookups_in_flight.push((id, now));
        }
    }

    /// The DHT refused to start a lookup (too many running): it is tried
    /// again soon, and does not count as a failure.
    pub fn lookup_refused(&mut self, now: Instant, id: LookupId, target: PublicKey) {
        if let Some(p) = self.peers.get_mut(&target) {
            p.lookups_in_flight.retain(|(l, _)| *l != id);
            p.next_lookup = now + LOOKUP_RETRY_MIN;
        }
    }

    /// A lookup ended without any node answering it (our bootstrap is not
    /// up yet, or we know nobody): it says nothing about the peer, so it
    /// does not back off; the peer is looked up again in
    /// [`LOOKUP_OVERLAP`]. Before, such failures doubled the pause of a
    /// node started before its bootstrap, which then met the bootstrap
    /// up to a second after it came up.
    pub fn lookup_unanswered(&mut self, now: Instant, id: LookupId, target: PublicKey) {
        if let Some(p) = self.peers.get_mut(&target) {
            p.lookups_in_flight.retain(|(l, _)| *l != id);
            p.next_lookup = now + LOOKUP_OVERLAP;
        }
    }

    /// A lookup ended. With a record, the caller punches towards the
    /// endpoints and relays it returns (see [`LookupOutcome`]); meanwhile,
    /// a peer without a direct path is reached through its relays at once,
    /// so the first packet never waits for punching.
    pub fn lookup_done(
        &mut self,
        now: Instant,
        id: LookupId,
        target: PublicKey,
        found: Option<NodeRecord>,
    ) -> Option<NodeRecord> {
        let found = found.map(|r| without_unusable_relays(r, &self.own));
        let p = self.peers.get_mut(&target)?;
        let started = p
            .lookups_in_flight
            .iter()
            .find(|(l, _)| *l == id)
            .map(|(_, t)| *t);
        p.lookups_in_flight.retain(|(l, _)| *l != id);
        if p.own_record_at
            .is_some_and(|t| now.saturating_duration_since(t) > OWN_RECORD_TTL)
        {
            p.own_record_at = None;
        }
        // The peer's own recent record wins over what others said of it.
        let found = match (&p.record, p.own_record_at) {
            (Some(own), Some(_)) if found.is_some() => Some(own.clone()),
            _ => found,
        };
        match found {
            Some(record) => {
                // Until the peer answers directly, look it up again with a
                // growing pause: its record improves as it learns its NAT
                // and picks relays. A record that says more than the one
                // we had (the first found, or one that gained a NAT kind
                // or relays) starts the pause again from the shortest: the
                // peer is starting, and the pause grown while it was not
                // in the DHT yet (or bare) would hide its relays for
                // seconds. A record that gives no way in at all is
                // looked up again soon. A direct contact pushes the next
                // lookup back (see `on_direct_contact`).
                if p.record.as_ref().is_none_or(|old| says_more(&record, old)) {
                    p.backoff = LOOKUP_RETRY_MIN;
                }
                let direct = matches!(p.path, Some(PeerPath::Direct(_)));
                if record.endpoints.is_empty() && record.relays.is_empty() {
                    p.next_lookup = now + UNREACHABLE_RETRY;
                } else {
                    let bare = !direct && record.relays.is_empty() && record.nat != NatKind::Public;
                    let pause = if bare {
                        p.backoff.min(BARE_RECORD_RETRY)
                    } else {
                        p.backoff
                    };
                    p.next_lookup = now + pause;
                    p.backoff = (p.backoff * 2).min(LOOKUP_RETRY_MAX);
                }
                if !direct && !record.relays.is_empty() {
                    // The relays the peer publishes, the one in use first
                    // when it is among them: a lookup refreshes the
                    // fallbacks, it does not move working traffic (the
                    // two ends would chase each other between relays).
                    let mut relays = record.relays.clone();
                    if let Some(PeerPath::Relayed(current)) = &p.path
                        && let Some(first) = current.first()
                        && let Some(at) = relays.iter().position(|r| r == first)
                    {
                        relays[..=at].rotate_right(1);
                    }
                    let path = Some(PeerPath::Relayed(relays));
                    if p.path != path {
                        p.path = path;
                        self.changes.push(p.change());
                    }
                }
                p.record = Some(record.clone());
                p.found_at = Some(now);
                Some(record)
            }
            // A lookup started before the peer was last found (it waited
            // on nodes that never answered, or on a bootstrap that was
            // down) says nothing about the peer now: it does not push
            // back the next lookup the newer record scheduled.
            None if started.is_some_and(|s| p.found_at.is_some_and(|f| f > s)) => None,
            None => {
                let known = [p.found_at, p.last_contact]
                    .into_iter()
                    .flatten()
                    .any(|t| now.saturating_duration_since(t) < RECENTLY_KNOWN);
                let pause = if known {
                    p.backoff.min(RECENT_RETRY)
                } else {
                    p.backoff
                };
                p.next_lookup = now + pause;
                p.backoff = (p.backoff * 2).min(LOOKUP_RETRY_MAX);
                None
            }
        }
    }

    /// A lookup still running learned the peer's record from another node:
    /// use its relays at once (the peer itself may never answer the lookup,
    /// being behind a NAT). Returns true when the record is worth punching.
    pub fn record_seen(&mut self, target: PublicKey, record: &NodeRecord, now: Instant) -> bool {
        let record = &without_unusable_relays(record.clone(), &self.own);
        let Some(p) = self.peers.get_mut(&target) else {
            return false;
        };
        p.found_at = Some(now);
        // As in `lookup_done`: a record that says more restarts the pause.
        if p.record.as_ref().is_none_or(|old| says_more(record, old)) {
            p.backoff = LOOKUP_RETRY_MIN;
        }
        if matches!(p.path, Some(PeerPath::Direct(_))) || p.own_record_at.is_some() {
            return false;
        }
        if !record.relays.is_empty() && p.path.is_none() {
            p.path = Some(PeerPath::Relayed(record.relays.clone()));
            self.changes.push(p.change());
        }
        p.record = Some(record.clone());
        !record.endpoints.is_empty() || !record.relays.is_empty()
    }

    /// An authenticated control message from `key` through `relay`. With
    /// no path it gives one. On a relayed path through another relay it
    /// moves the path only when `in_use_silent(relay in use)` says the
    /// caller has sent the peer data through the relay in use for
    /// [`FOLLOW_AFTER_SILENCE`] and heard nothing back through it (asked
    /// only then). The peer sends control messages
    /// through any of our relays: following each moved idle or working
    /// traffic back and forth; but when the relay in use dies, the peer's
    /// first word through the next one moves us there at once (not after
    /// our own watch on the dead relay gives up). A direct path is never
    /// moved by relayed traffic.
    pub fn on_relayed_control(
        &mut self,
        key: PublicKey,
        relay: (PublicKey, SocketAddr),
        now: Instant,
        in_use_silent: impl FnOnce(&(PublicKey, SocketAddr)) -> bool,
    ) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let follow = match &p.path {
            None => true,
            Some(PeerPath::Direct(_)) => false,
            Some(PeerPath::Relayed(r)) => r
                .first()
                .is_some_and(|in_use| *in_use == relay || in_use_silent(in_use)),
        };
        if follow {
            self.on_relayed_contact(key, relay, now);
        }
    }

    pub fn on_relayed_contact(
        &mut self,
        key: PublicKey,
        relay: (PublicKey, SocketAddr),
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if matches!(p.path, Some(PeerPath::Direct(_))) {
            return;
        }
        // Know the relays the peer publishes: they are the fallbacks if this
        // relay dies.
        if p.record.is_none() && p.lookups_in_flight.is_empty() && p.next_lookup > now {
            p.next_lookup = now;
        }
        let first = match &p.path {
            Some(PeerPath::Relayed(r)) => r.first().copied(),
            _ => None,
        };
        if first != Some(relay) {
            let mut relays = vec![relay];
            if let Some(PeerPath::Relayed(r)) = &p.path {
                relays.extend(r.iter().filter(|x| **x != relay).copied());
            }
            // The relays the peer published are the fallbacks.
            if let Some(r) = &p.record {
                for x in &r.relays {
                    if !relays.contains(x) {
                        relays.push(*x);
                    }
                }
            }
            relays.truncate(crate::proto::MAX_RELAYS * 2);
            p.path = Some(PeerPath::Relayed(relays));
            self.changes.push(p.change());
        }
    }

    /// The relay in use for `key` is dead: the next live one is used, and
    /// the peer is looked up again for fresh relays. `dead` are the relays
    /// known dead (skipped); when no relay of the path nor of the peer's
    /// record is left, the node's `own` relays are tried: the peer, behind
    /// a NAT too, keeps the same public nodes when few remain, and answers
    /// through the relay it hears from. Returns the new relay.
    pub fn rotate_relay(
        &mut self,
        key: &PublicKey,
        dead: &PublicKey,
        now: Instant,
        known_dead: &[PublicKey],
        own: &[(PublicKey, SocketAddr)],
    ) -> Option<(PublicKey, SocketAddr)> {
        let p = self.peers.get_mut(key)?;
        let Some(PeerPath::Relayed(relays)) = &mut p.path else {
            return None;
        };
        let alive = |k: &PublicKey| k != dead && !known_dead.contains(k);
        relays.retain(|(k, _)| alive(k));
        p.next_lookup = now;
        if relays.is_empty() {
            // Fall back on the relays the peer published, then on ours.
            let published = p.record.as_ref().map(|r| r.relays.as_slice());
            for r in published.unwrap_or_default().iter().chain(own) {
                // Never the peer itself (one of our relays may be it).
                if alive(&r.0) && r.0 != *key && !relays.contains(r) {
                    relays.push(*r);
                }
            }
            relays.truncate(crate::proto::MAX_RELAYS * 2);
        }
        if relays.is_empty() {
            p.path = None;
            return None;
        }
        relays.first().copied()
    }

    /// A direct path went quiet (no authenticated message for a while):
    /// fall back to the relays the peer published, and look it up (and
    /// punch) again at once.
    pub fn expire_direct(&mut self, now: Instant, quiet: Duration) {
        for p in self.peers.values_mut() {
            let Some(PeerPath::Direct(_)) = p.path else {
                continue;
            };
            if p.last_contact
                .is_some_and(|t| now.duration_since(t) > quiet)
            {
                let relays = p
                    .record
                    .as_ref()
                    .map(|r| r.relays.clone())
                    .unwrap_or_default();
                p.path = if relays.is_empty() {
                    None
                } else {
                    Some(PeerPath::Relayed(relays))
                };
                // Not in contact any more: a peer heard from within
                // SILENCE would not be looked up.
                p.last_contact = None;
                p.next_lookup = now;
                self.changes.push(p.change());
            }
        }
    }

    /// Keys of trusted peers (for relays: which paths to watch).
    /// `relay` (key and address) when it is one of the relays of `key`'s
    /// relayed path.
    pub fn relay_of_path(
        &self,
        key: &PublicKey,
        relay: &PublicKey,
    ) -> Option<(PublicKey, SocketAddr)> {
        match &self.peers.get(key)?.path {
            Some(PeerPath::Relayed(r)) => r.iter().find(|x| &x.0 == relay).copied(),
            _ => None,
        }
    }

    /// Peers on a direct path, and its address.
    pub fn direct_paths(&self) -> Vec<(PublicKey, SocketAddr)> {
        self.peers
            .values()
            .filter_map(|p| match p.path {
                Some(PeerPath::Direct(a)) => Some((p.spec.key, a)),
                _ => None,
            })
            .collect()
    }

    pub fn relayed_paths(&self) -> Vec<(PublicKey, (PublicKey, SocketAddr))> {
        self.peers
            .values()
            .filter_map(|p| match &p.path {
                Some(PeerPath::Relayed(r)) => r.first().map(|f| (p.spec.key, *f)),
                _ => None,
            })
            .collect()
    }

    pub fn is_trusted(&self, key: &PublicKey) -> bool {
        self.peers.contains_key(key)
    }

    /// A record that came in a message `sender` sealed: kept as the
    /// peer's own when it is `sender`'s; a record of another key is refused
    /// (returns false), whoever sent it.
    pub fn on_record(&mut self, sender: PublicKey, record: NodeRecord, now: Instant) -> bool {
        if record.key != sender {
            return false;
        }
        let record = without_unusable_relays(record, &self.own);
        if let Some(p) = self.peers.get_mut(&record.key) {
            p.record = Some(record);
            p.own_record_at = Some(now);
        }
        true
    }

    /// `relay`, found dead before, is heard from again at `addr` (it
    /// restarted, or its network healed): every peer left without a path
    /// whose record names it as a relay gets a relayed path through it at
    /// once, without waiting for a lookup (the DHT may have lost the
    /// records with the relay: it restarted empty). Returns how many.
    pub fn relay_returned(&mut self, relay: PublicKey, addr: SocketAddr) -> usize {
        let mut n = 0;
        for (key, p) in &mut self.peers {
            if p.path.is_some() || *key == relay {
                continue;
            }
            let named = p
                .record
                .as_ref()
                .is_some_and(|r| r.relays.iter().any(|(k, _)| *k == relay));
            if named {
                p.path = Some(PeerPath::Relayed(vec![(relay, addr)]));
                self.changes.push(p.change());
                n += 1;
            }
        }
        n
    }

    /// An authenticated message came straight from `key` at `from`.
    pub fn on_direct_contact(&mut self, key: PublicKey, from: SocketAddr, now: Instant) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        p.last_contact = Some(now);
        p.backoff = LOOKUP_RETRY_MIN;
        if p.path != Some(PeerPath::Direct(from)) {
            p.path = Some(PeerPath::Direct(from));
            p.next_lookup = now + SILENCE;
            self.changes.push(p.change());
        }
    }

    /// Datagrams came from these addresses (at these times) that the node
    /// shed unread, being behind on its receive queue (see the core's
    /// `CONTROL_WAIT_MAX`). A direct peer at one of them is not silent,
    /// only unheard by a node too busy to read it: it counts as contact
    /// for keepalive pacing and path expiry only, so that a node's own lag
    /// neither gives up its paths (each given up path costs a lookup,
    /// more load) nor speeds up its probes. Unauthenticated: it keeps an
    /// existing direct path at that very address, never makes one.
    pub fn on_unread_contacts(&mut self, unread: &std::collections::HashMap<SocketAddr, Instant>) {
        if unread.is_empty() {
            return;
        }
        for p in self.peers.values_mut() {
            let Some(PeerPath::Direct(addr)) = p.path else {
                continue;
            };
            if let Some(&at) = unread.get(&addr)
                && p.last_contact.is_some_and(|c| c < at)
            {
                p.last_contact = Some(at);
            }
        }
    }

    pub fn on_tick(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            let Some(PeerPath::Direct(addr)) = p.path else {
                continue;
            };
            // The last keepalive went unanswered: probe more often, so that
            // a dead path is given up soon and a lost pong or two is not
            // taken for one.
            let unanswered = p
                .last_keepalive
                .is_some_and(|k| p.last_contact.is_none_or(|c| c < k));
            let every = if unanswered { PROBE_EVERY } else { KEEPALIVE };
            if p.last_keepalive
                .is_none_or(|t| now.duration_since(t) >= every)
            {
                p.last_keepalive = Some(now);
                self.next_ping += 1;
                self.transmits.push((
                    p.spec.key,
                    addr,
                    Message::Ping {
                        id: self.next_ping,
                        info: None,
                    },
                ));
            }
        }
    }

    /// Forgets a peer's path: it is looked up again at once.
    pub fn forget(&mut self, key: &PublicKey, now: Instant) {
        if let Some(p) = self.peers.get_mut(key) {
            p.last_contact = None;
            p.record = None;
            p.own_record_at = None;
            p.next_lookup = now;
            p.backoff = LOOKUP_RETRY_MIN;
        }
    }

    pub fn path(&self, key: &PublicKey) -> Option<PeerPath> {
        self.peers.get(key).and_then(|p| p.path.clone())
    }

    /// Hands the data plane `key`'s current path again (it failed to
    /// take the last change).
    pub fn reprogram(&mut self, key: &PublicKey) {
        if let Some(p) = self.peers.get(key) {
            self.changes.push(p.change());
        }
    }

    pub fn take_changes(&mut self) -> Vec<PathChange> {
        std::mem::take(&mut self.changes)
    }

    pub fn poll_transmits(&mut self) -> Vec<(PublicKey, SocketAddr, Message)> {
        std::mem::take(&mut self.transmits)
    }

    /// A peer by hostname, `hostname.network`, or unique key prefix.
    pub fn find(&self, name: &str) -> Option<PublicKey> {
        let short = name
            .strip_suffix(&format!(".{}", self.network))
            .unwrap_or(name);
        if let Some(p) = self
            .peers
            .values()
            .find(|p| p.spec.hostname.as_deref() == Some(short))
        {
            return Some(p.spec.key);
        }
        if name.len() < 4 {
            return None;
        }
        let mut hits = self
            .peers
            .keys()
            .filter(|k| k.to_string().starts_with(name));
        match (hits.next(), hits.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        }
    }

    /// Names to addresses (`name`, `name.network`, key prefix) and addresses to names.
    pub fn resolve(&self, name: &str) -> Vec<String> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            let own = self.own_ipv4.map(|(a, _)| IpAddr::V4(a)) == Some(ip)
                || (self.has_interface() && IpAddr::V6(self.own_ipv6) == ip);
            if own {
                return self
                    .own_hostname()
                    .map(|h| format!("{h}.{}", self.network))
                    .into_iter()
                    .collect();
            }
            return self
                .peers
                .values()
                .filter(|p| p.ipv4.map(IpAddr::V4) == Some(ip) || IpAddr::V6(p.ipv6) == ip)
                .map(|p| format!("{}.{}", name_of(&p.spec), self.network))
                .collect();
        }
        let short = name
            .strip_suffix(&format!(".{}", self.network))
            .unwrap_or(name);
        if self.own_hostname().as_deref() == Some(short) {
            let mut v: Vec<String> = self.own_ipv4().map(|a| a.to_string()).into_iter().collect();
            v.push(self.own_ipv6.to_string());
            return v;
        }
        match self.find(name).and_then(|k| self.peers.get(&k)) {
            Some(p) => {
                let mut v: Vec<String> = p.ipv4.map(|a| a.to_string()).into_iter().collect();
                v.push(p.ipv6.to_string());
                v
            }
            None => Vec::new(),
        }
    }

    /// The peers as `wh show` prints them, sorted by name.
    pub fn peer_status(&self, stats: &[PeerStats]) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| {
                let s = stats.iter().find(|s| s.key == p.spec.key);
                PeerStatus {
                    key: p.spec.key.to_string(),
                    hostname: p.spec.hostname.clone(),
                    role: p.spec.role.to_string(),
                    ipv4: p.ipv4.map(|a| a.to_string()),
                    ipv6: Some(p.ipv6.to_string()),
                    path: match &p.path {
                        Some(PeerPath::Direct(a)) => PathStatus::Direct {
                            endpoint: a.to_string(),
                        },
                        Some(PeerPath::Relayed(r)) => PathStatus::Relayed {
                            via: r.iter().map(|(k, _)| k.short(10)).collect(),
                        },
                        None => PathStatus::Unknown,
                    },
                    nat: p.record.as_ref().map(|r| nat_name(r.nat).to_string()),
                    last_handshake_secs: s
                        .and_then(|s| s.last_handshake)
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: s.map_or(0, |s| s.rx_bytes),
                    tx_bytes: s.map_or(0, |s| s.tx_bytes),
                }
            })
            .collect();
        v.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.key.cmp(&b.key)));
        v
    }
}

/// Short names of NAT kinds, as `wh show` prints them.
pub fn nat_name(n: NatKind) -> &'static str {
    match n {
        NatKind::Unknown => "unknown",
        NatKind::Public => "none",
        NatKind::EndpointIndependent => "easy",
        NatKind::EndpointDependent => "hard",
        NatKind::Unreachable => "unreachable",
    }
}

fn name_of(p: &PeerSpec) -> String {
    p.hostname.clone().unwrap_or_else(|| p.key.short(10))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

/// A peer's record without the relays that cannot carry traffic between
/// us and it: ourselves (a peer behind NAT may keep us, a public node, as
/// one of its relays) and the peer itself.
fn without_unusable_relays(mut record: NodeRecord, own: &PublicKey) -> NodeRecord {
    let peer = record.key;
    record.relays.retain(|(k, _)| k != own && *k != peer);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::keys::PrivateKey;

    fn keys(n: usize) -> Vec<PublicKey> {
        (0..n)
            .map(|_| PrivateKey::generate().unwrap().public_key())
            .collect()
    }

    fn spec(lines: &[(&str, PublicKey)]) -> NetworkSpec {
        let mut text = String::from("name t\nsubnet 10.0.0.0/24\n");
        for (h, k) in lines {
            text += &format!("trust {h} {k}\n");
        }
        parse(&text).unwrap().spec
    }

    #[test]
    fn a_node_alone_repings_later_and_later_until_it_knows_somebody() {
        let t0 = Instant::now();
        let mut r = AloneRepings::new(t0);
        let s = Duration::from_secs;
        let due_at: Vec<u64> = (0..=200).filter(|i| r.due(true, t0 + s(*i))).collect();
        assert_eq!(due_at, vec![3, 9, 21, 45, 93, 153]);
        // Knowing somebody resets it; losing everybody starts it over.
        assert!(!r.due(false, t0 + s(201)));
        assert!(!r.due(true, t0 + s(203)));
        assert!(r.due(true, t0 + s(204)));
    }

    #[test]
    fn direct_contact_programs_the_peer_once() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        assert!(o.has_interface());
        assert_eq!(o.own_ipv4(), Some("10.0.0.2".parse().unwrap()));
        let now = Instant::now();
        assert_eq!(o.lookups_due(now), vec![k[1]]);
        let addr: SocketAddr = "203.0.113.2:62096".parse().unwrap();
        o.on_direct_contact(k[1], addr, now);
        let ch = o.take_changes();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].path, Some(PeerPath::Direct(addr)));
        assert_eq!(ch[0].allowed_ips.len(), 2);
        o.on_direct_contact(k[1], addr, now);
        assert!(o.take_changes().is_empty());
        assert!(
            o.lookups_due(now).is_empty(),
            "a peer in contact is not looked up"
        );
        assert_eq!(
            o.lookups_due(now + SILENCE + Duration::from_secs(1)),
            vec![k[1]]
        );
    }

    #[test]
    fn an_unanswered_keepalive_is_followed_by_probes_and_a_dead_path_falls_back() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let addr: SocketAddr = "203.0.113.3:1".parse().unwrap();
        let t0 = Instant::now();
        o.on_direct_contact(k[1], addr, t0);
        let pings = |o: &mut Overlay, at: Instant| {
            o.on_tick(at);
            o.poll_transmits().len()
        };
        assert_eq!(pings(&mut o, t0), 1, "first keepalive");
        // Answered: the next one a keepalive period later.
        o.on_direct_contact(k[1], addr, t0 + Duration::from_millis(50));
        assert_eq!(pings(&mut o, t0 + PROBE_EVERY), 0);
        let t1 = t0 + KEEPALIVE;
        assert_eq!(pings(&mut o, t1), 1);
        // Unanswered: probes every PROBE_EVERY.
        assert_eq!(pings(&mut o, t1 + PROBE_EVERY / 2), 0);
        assert_eq!(pings(&mut o, t1 + PROBE_EVERY), 1);
        assert_eq!(pings(&mut o, t1 + PROBE_EVERY * 2), 1);
        // Silent long enough: the path is given up and looked up again.
        o.take_changes();
        o.expire_direct(t1 + Duration::from_secs(4), Duration::from_millis(3500));
        let changes = o.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, None);
        assert_eq!(o.path(&k[1]), None);
        assert_eq!(
            o.lookups_due(t1 + Duration::from_secs(4)),
            vec![k[1]],
            "the peer is looked up again at once"
        );
    }

    #[test]
    fn a_direct_peer_a_busy_node_could_not_read_keeps_its_path() {
        let k = keys(3);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1]), ("c", k[2])]), k[0]);
        let b: SocketAddr = "203.0.113.3:1".parse().unwrap();
        let c: SocketAddr = "203.0.113.4:1".parse().unwrap();
        let t0 = Instant::now();
        o.on_direct_contact(k[1], b, t0);
        o.on_direct_contact(k[2], c, t0);
        o.take_changes();
        // b's datagrams came, shed unread; c's did not, nor did a stranger
        // claiming c's peer's place from another address.
        let t1 = t0 + Duration::from_secs(2);
        let unread =
            std::collections::HashMap::from([(b, t1), ("203.0.113.9:1".parse().unwrap(), t1)]);
        o.on_unread_contacts(&unread);
        o.expire_direct(t0 + Duration::from_secs(4), Duration::from_secs(3));
        assert_eq!(o.path(&k[1]), Some(PeerPath::Direct(b)), "b was heard");
        assert_eq!(o.path(&k[2]), None, "c was silent");
    }

    /// The record of `key` behind a hard NAT, reachable through `relays`.
    fn behind_hard_nat(key: PublicKey, relays: &[(PublicKey, SocketAddr)]) -> NodeRecord {
        NodeRecord {
            key,
            endpoints: vec![],
            nat: NatKind::EndpointDependent,
            relays: relays.to_vec(),
            relay_service: true,
        }
    }

    /// The relay in use and the peer's other relay die together: the path
    /// skips every relay known dead (never cycling back to one) and falls
    /// back on the node's own live relays.
    #[test]
    fn a_dead_relay_rotates_past_known_dead_ones_to_our_own_relays() {
        let k = keys(5);
        let (x, y, z) = (k[2], k[3], k[4]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let now = Instant::now();
        o.lookup_started(k[1], LookupId(1), now);
        let record = behind_hard_nat(k[1], &[(x, at(10)), (y, at(11))]);
        o.lookup_done(now, LookupId(1), k[1], Some(record));
        assert_eq!(
            o.path(&k[1]),
            Some(PeerPath::Relayed(vec![(x, at(10)), (y, at(11))]))
        );
        let own = [(y, at(11)), (z, at(12))];
        // x dies: y is next (not known dead yet).
        assert_eq!(
            o.rotate_relay(&k[1], &x, now, &[x], &own),
            Some((y, at(11)))
        );
        // y dies too: not x again (known dead), but our own live relay z.
        assert_eq!(
            o.rotate_relay(&k[1], &y, now, &[x, y], &own),
            Some((z, at(12)))
        );
        // z dies as well: no relay left, no path (looked up again at once).
        assert_eq!(o.rotate_relay(&k[1], &z, now, &[x, y, z], &own), None);
        assert_eq!(o.path(&k[1]), None);
        assert_eq!(o.lookups_due(now), vec![k[1]]);
    }

    /// The only relay restarts: the peer is left without a path; the relay
    /// is heard from again: the peer's relayed path through it comes back
    /// at once, without a lookup (the restarted DHT may not hold the
    /// peer's record yet). A peer whose record names another relay stays
    /// as it is.
    #[test]
    fn a_relay_back_from_the_dead_gives_its_peers_their_relayed_path_again() {
        let k = keys(4);
        let (x, y) = (k[2], k[3]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let now = Instant::now();
        o.lookup_started(k[1], LookupId(1), now);
        o.lookup_done(
            now,
            LookupId(1),
            k[1],
            Some(behind_hard_nat(k[1], &[(x, at(10))])),
        );
        assert_eq!(o.rotate_relay(&k[1], &x, now, &[x], &[]), None);
        o.take_changes();
        assert_eq!(o.relay_returned(y, at(11)), 0, "not its relay");
        assert_eq!(o.path(&k[1]), None);
        assert_eq!(o.relay_returned(x, at(20)), 1);
        assert_eq!(
            o.path(&k[1]),
            Some(PeerPath::Relayed(vec![(x, at(20))])),
            "through the relay, at the address it answered from"
        );
        assert_eq!(o.take_changes().len(), 1, "the data plane is told");
        assert_eq!(
            o.relay_returned(x, at(20)),
            0,
            "a peer with a path is left alone"
        );
    }

    /// A lookup refreshes a relayed peer's relays without moving traffic
    /// off the relay in use (both ends would chase each other otherwise).
    #[test]
    fn a_lookup_keeps_the_relay_in_use_first() {
        let k = keys(4);
        let (x, y) = (k[2], k[3]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let now = Instant::now();
        let record = behind_hard_nat(k[1], &[(x, at(10)), (y, at(11))]);
        o.lookup_started(k[1], LookupId(1), now);
        o.lookup_done(now, LookupId(1), k[1], Some(record.clone()));
        // The peer's traffic arrives through y: replies go through y.
        o.on_relayed_contact(k[1], (y, at(11)), now);
        o.lookup_started(k[1], LookupId(2), now);
        o.lookup_done(now, LookupId(2), k[1], Some(record));
        assert_eq!(
            o.path(&k[1]),
            Some(PeerPath::Relayed(vec![(y, at(11)), (x, at(10))]))
        );
    }

    /// While the relay in use answers (or the pair is idle), the peer's
    /// control messages through another relay do not move the path; once
    /// our data through it has gone unanswered, the first one does.
    #[test]
    fn a_control_message_through_another_relay_moves_the_path_only_when_the_relay_in_use_is_silent()
    {
        let k = keys(4);
        let (x, y) = (k[2], k[3]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let t0 = Instant::now();
        o.on_relayed_control(k[1], (x, at(10)), t0, |_| false);
        let in_use = |o: &Overlay| match o.path(&k[1]) {
            Some(PeerPath::Relayed(r)) => r.first().map(|f| f.0),
            _ => None,
        };
        assert_eq!(in_use(&o), Some(x), "no path: the first word gives one");
        o.on_relayed_control(k[1], (y, at(11)), t0, |_| false);
        assert_eq!(in_use(&o), Some(x), "moved while x answered (or idle)");
        o.on_relayed_control(k[1], (y, at(11)), t0, |_| true);
        assert_eq!(
            in_use(&o),
            Some(y),
            "stayed on a relay that answers nothing"
        );
    }

    #[test]
    fn neither_we_nor_the_peer_is_ever_a_relay_between_us() {
        let k = keys(4);
        let (a, b, x) = (k[0], k[1], k[2]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", a), ("b", b)]), a);
        let now = Instant::now();
        let record = behind_hard_nat(b, &[(a, at(1)), (b, at(2)), (x, at(10))]);
        o.lookup_started(b, LookupId(1), now);
        o.lookup_done(now, LookupId(1), b, Some(record));
        assert_eq!(o.path(&b), Some(PeerPath::Relayed(vec![(x, at(10))])));
        // x dies: our own relays are the fallback, but not b itself.
        let next = o.rotate_relay(&b, &x, now, &[], &[(b, at(2)), (k[3], at(11))]);
        assert_eq!(next, Some((k[3], at(11))));
    }

    #[test]
    fn failed_lookups_back_off() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let now = Instant::now();
        o.lookup_started(k[1], LookupId(1), now);
        o.lookup_done(now, LookupId(1), k[1], None);
        assert!(o.lookups_due(now).is_empty());
        assert_eq!(o.lookups_due(now + LOOKUP_RETRY_MIN), vec![k[1]]);
        o.lookup_done(now, LookupId(1), k[1], None);
        assert!(o.lookups_due(now + LOOKUP_RETRY_MIN).is_empty());
    }

    #[test]
    fn no_more_than_two_lookups_of_one_peer_run_at_once() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let t0 = Instant::now();
        o.lookup_started(k[1], LookupId(1), t0);
        let t1 = t0 + LOOKUP_OVERLAP;
        o.lookup_started(k[1], LookupId(2), t1);
        let t2 = t1 + LOOKUP_OVERLAP * 4;
        assert!(o.lookups_due(t2).is_empty(), "two already run");
        o.lookup_done(t2, LookupId(1), k[1], None);
        let t3 = t2 + LOOKUP_RETRY_MIN;
        assert_eq!(o.lookups_due(t3), vec![k[1]], "one ended: room again");
    }

    #[test]
    fn a_refused_lookup_is_tried_again_soon_without_backing_off() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let now = Instant::now();
        for id in 1..=5 {
            o.lookup_started(k[1], LookupId(id), now);
            o.lookup_refused(now, LookupId(id), k[1]);
        }
        assert_eq!(o.lookups_due(now + LOOKUP_RETRY_MIN), vec![k[1]]);
    }

    #[test]
    fn a_peer_behind_a_nat_found_without_relays_is_looked_up_again_within_two_seconds() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let mut now = Instant::now();
        let bare = NodeRecord::new(k[1], "203.0.113.9:4000".parse().unwrap());
        for id in 1..=8 {
            o.lookup_started(k[1], LookupId(id), now);
            o.lookup_done(now, LookupId(id), k[1], Some(bare.clone()));
            now += BARE_RECORD_RETRY;
            assert_eq!(o.lookups_due(now), vec![k[1]], "lookup {id}");
        }
    }

    /// Lookups of a peer not in the DHT yet failed and backed off; once
    /// found (bare: it is starting), it is looked up again after the
    /// shortest pause, and again when its record gained relays.
    #[test]
    fn a_peer_found_at_last_or_with_more_in_its_record_is_looked_up_again_soon() {
        let k = keys(3);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let mut now = Instant::now();
        for id in 1..=5 {
            o.lookup_started(k[1], LookupId(id), now);
            o.lookup_done(now, LookupId(id), k[1], None);
            now += LOOKUP_RETRY_MAX;
        }
        let bare = NodeRecord::new(k[1], "203.0.113.9:4000".parse().unwrap());
        o.lookup_started(k[1], LookupId(6), now);
        // Seen while the lookup runs (net-sim seed 2161010223833890263:
        // the record came this way, and the lookup's end then found
        // nothing new and kept the grown pause: 2 s).
        o.record_seen(k[1], &bare, now);
        o.lookup_done(now, LookupId(6), k[1], Some(bare.clone()));
        assert_eq!(
            o.lookups_due(now + LOOKUP_RETRY_MIN),
            vec![k[1]],
            "found at last"
        );
        let t = now + LOOKUP_RETRY_MIN;
        o.lookup_started(k[1], LookupId(7), t);
        o.lookup_done(t, LookupId(7), k[1], Some(bare));
        assert!(
            o.lookups_due(t + LOOKUP_RETRY_MIN).is_empty(),
            "the same: backs off"
        );
        let relayed = NodeRecord {
            nat: NatKind::EndpointDependent,
            ..behind_hard_nat(k[1], &[(k[2], "198.51.100.1:62096".parse().unwrap())])
        };
        o.lookup_started(k[1], LookupId(8), t);
        o.lookup_done(t, LookupId(8), k[1], Some(relayed));
        assert_eq!(
            o.lookups_due(t + LOOKUP_RETRY_MIN),
            vec![k[1]],
            "gained relays: soon again"
        );
    }

    /// A lookup started before the bootstrap came back fails after a
    /// newer one found the peer: the retry the record scheduled stands
    /// (before, the stale failure pushed it back by the grown back-off:
    /// 8 s without data after a bootstrap restart, net-sim seed
    /// 14981760154525512136).
    #[test]
    fn a_lookup_older_than_the_last_find_that_fails_does_not_push_the_next_back() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let t0 = Instant::now();
        for id in 1..=6 {
            o.lookup_started(k[1], LookupId(id), t0);
            o.lookup_done(t0, LookupId(id), k[1], None);
        }
        o.lookup_started(k[1], LookupId(7), t0);
        let t1 = t0 + LOOKUP_OVERLAP;
        o.lookup_started(k[1], LookupId(8), t1);
        let bare = NodeRecord::new(k[1], "203.0.113.9:4000".parse().unwrap());
        o.lookup_done(t1, LookupId(8), k[1], Some(bare));
        o.lookup_done(t1, LookupId(7), k[1], None);
        assert_eq!(o.lookups_due(t1 + LOOKUP_RETRY_MIN), vec![k[1]]);
    }

    /// The bootstrap restarted with an empty table: lookups of a peer
    /// found a moment ago miss it; they are tried again within 0.5 s,
    /// not after the back-off grown meanwhile (net-sim seed
    /// 5471972043027283100: 8.9 s without data after the restart).
    #[test]
    fn a_peer_found_recently_that_a_lookup_misses_is_looked_up_again_soon() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let t0 = Instant::now();
        let bare = NodeRecord::new(k[1], "203.0.113.9:4000".parse().unwrap());
        o.lookup_started(k[1], LookupId(1), t0);
        o.lookup_done(t0, LookupId(1), k[1], Some(bare));
        let mut t = t0;
        for id in 2..=8 {
            t += RECENT_RETRY;
            o.lookup_started(k[1], LookupId(id), t);
            o.lookup_done(t, LookupId(id), k[1], None);
            assert_eq!(o.lookups_due(t + RECENT_RETRY), vec![k[1]], "lookup {id}");
        }
        let later = t0 + RECENTLY_KNOWN;
        o.lookup_started(k[1], LookupId(9), later);
        o.lookup_done(later, LookupId(9), k[1], None);
        assert!(
            o.lookups_due(later + RECENT_RETRY).is_empty(),
            "backs off once forgotten"
        );
    }

    #[test]
    fn a_lookup_nobody_answered_does_not_back_off() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let mut now = Instant::now();
        for id in 1..=6 {
            o.lookup_started(k[1], LookupId(id), now);
            o.lookup_unanswered(now, LookupId(id), k[1]);
            now += LOOKUP_OVERLAP;
            assert_eq!(o.lookups_due(now), vec![k[1]], "lookup {id}");
        }
    }

    #[test]
    fn a_stuck_lookup_does_not_hold_back_the_next_while_there_is_no_path() {
        let k = keys(2);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        let t0 = Instant::now();
        assert_eq!(o.lookups_due(t0), vec![k[1]]);
        o.lookup_started(k[1], LookupId(1), t0);
        assert!(
            o.lookups_due(t0).is_empty(),
            "one lookup at a time at first"
        );
        let t1 = t0 + LOOKUP_OVERLAP;
        assert_eq!(o.lookups_due(t1), vec![k[1]], "no path: overlap");
        o.lookup_started(k[1], LookupId(2), t1);
        assert!(o.lookups_due(t1).is_empty());
        // The old lookup ending does not clear the newer one.
        o.lookup_done(t1, LookupId(1), k[1], None);
        assert!(o.lookups_due(t1 + LOOKUP_OVERLAP / 2).is_empty());
        // With a path, lookups never overlap.
        o.on_direct_contact(k[1], "203.0.113.3:1".parse().unwrap(), t1);
        o.lookup_started(k[1], LookupId(3), t1);
        assert!(o.lookups_due(t1 + SILENCE * 4).is_empty());
    }

    #[test]
    fn reload_adds_removes_and_refuses_renumbering() {
        let k = keys(4);
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1]), ("c", k[2])]), k[0]);
        let now = Instant::now();
        o.on_direct_contact(k[2], "203.0.113.3:1".parse().unwrap(), now);
        o.take_changes();
        // Removing b would move c from .4 to .3: refused.
        let err = o
            .reload(&spec(&[("a", k[0]), ("c", k[2])]), now)
            .unwrap_err();
        assert!(
            err.contains("node c")
                && err.contains("10.0.0.4")
                && err.contains("nothing was changed"),
            "{err}"
        );
        assert!(o.take_changes().is_empty());
        // Adding d at the end is fine.
        let msg = o
            .reload(
                &spec(&[("a", k[0]), ("b", k[1]), ("c", k[2]), ("d", k[3])]),
                now,
            )
            .unwrap();
        assert!(msg.contains("1 peer(s) added (d)"), "{msg}");
        assert!(o.find("d").is_some());
        assert!(o.find("d.t").is_some());
    }

    #[test]
    fn resolve_names_prefixes_and_addresses() {
        let k = keys(2);
        let o = Overlay::new(&spec(&[("a", k[0]), ("b", k[1])]), k[0]);
        assert_eq!(o.resolve("b")[0], "10.0.0.3");
        assert_eq!(o.resolve("b.t")[0], "10.0.0.3");
        assert_eq!(o.resolve(&k[1].to_string()[..8])[0], "10.0.0.3");
        assert_eq!(o.resolve("10.0.0.3"), vec!["b.t".to_string()]);
        assert_eq!(o.resolve("a")[0], "10.0.0.2");
        assert!(o.resolve("zz").is_empty());
    }

    /// A stranger tells a record of `b` (its own endpoint and relay): it is
    /// refused; once `b` told its own, a third party's does not replace it.
    #[test]
    fn records_count_only_from_their_own_key_and_the_peers_own_wins() {
        let k = keys(3);
        let (b, stranger) = (k[1], k[2]);
        let at = |i: u8| -> SocketAddr { format!("203.0.113.{i}:62096").parse().unwrap() };
        let mut o = Overlay::new(&spec(&[("a", k[0]), ("b", b)]), k[0]);
        let now = Instant::now();
        let forged = NodeRecord {
            key: b,
            endpoints: vec![at(66)],
            nat: NatKind::EndpointDependent,
            relays: vec![(stranger, at(66))],
            relay_service: true,
        };
        assert!(!o.on_record(stranger, forged.clone(), now));
        let nat_of_b = |o: &Overlay| {
            o.peer_status(&[])
                .iter()
                .find(|p| p.key == b.to_string())
                .and_then(|p| p.nat.clone())
        };
        assert_eq!(nat_of_b(&o), None);
        let own = NodeRecord {
            key: b,
            endpoints: vec![at(2)],
            nat: NatKind::Public,
            relays: vec![],
            relay_service: true,
        };
        assert!(o.on_record(b, own, now));
        assert_eq!(nat_of_b(&o).as_deref(), Some("none"));
        assert!(
            !o.record_seen(b, &forged, now),
            "a third party's record is not used"
        );
        o.lookup_started(b, LookupId(1), now);
        o.lookup_done(now, LookupId(1), b, Some(forged.clone()));
        assert_eq!(o.path(&b), None, "no path through the stranger");
        assert_eq!(nat_of_b(&o).as_deref(), Some("none"));
        // Once the peer's own word is old, a lookup's record is taken.
        let later = now + OWN_RECORD_TTL + Duration::from_secs(1);
        o.lookup_started(b, LookupId(2), later);
        o.lookup_done(later, LookupId(2), b, Some(forged));
        assert_eq!(nat_of_b(&o).as_deref(), Some("hard"));
    }
}
