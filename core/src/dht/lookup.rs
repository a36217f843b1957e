//! One iterative lookup: the candidates closest to a target, which of them
//! were asked, answered, stalled (asked long enough ago that the next may
//! be asked) or failed, and when it is over.

use super::table::distance;
use crate::keys::PublicKey;
use crate::proto::{NatKind, NodeRecord};
use std::net::SocketAddr;
use std::time::Duration;

/// Identifies a lookup in [`super::DhtEvent::LookupDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup cost and how deep it went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Rounds of answers needed to learn the target's record: 0 when it was
    /// in our own table, 1 when a node of our table knew it, and so on.
    /// For a lookup that did not find its target, the deepest round reached.
    pub hops: u8,
    /// Find-node requests sent, retries included.
    pub requests: u32,
    /// Answers received.
    pub responses: u32,
    /// Requests that got no answer after their retries.
    pub failures: u32,
    /// Sealed bytes of the requests sent and of the answers received.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration: Duration,
    /// The lookup was refused because too many were running.
    pub refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Waiting,
    InFlight,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub dist: [u8; 32],
    pub record: NodeRecord,
    pub addr: SocketAddr,
    pub state: State,
    pub hop: u8,
    /// When its request in flight stalls (ms since the DHT's epoch; see
    /// [`Lookup::next`]); `None`: never.
    pub stall_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Asked for by the caller: ends early when the target itself answers.
    User,
    /// The self-lookup of a bootstrap.
    Bootstrap,
    /// A bucket refresh (random key in the bucket).
    Refresh,
}

pub(crate) struct Lookup {
    pub id: LookupId,
    pub target: PublicKey,
    pub purpose: Purpose,
    pub started: u64,
    pub deadline: u64,
    /// Sorted by distance to the target, closest first.
    pub cands: Vec<Candidate>,
    pub found: Option<NodeRecord>,
    pub found_hop: Option<u8>,
    pub target_answered: bool,
    /// A [`crate::dht::DhtEvent::RecordSeen`] was emitted for this lookup.
    pub record_reported: bool,
    pub stats: LookupStats,
    /// Most candidates that are neither failed nor in flight.
    cap: usize,
    /// When [`Self::next`] last ran (ms since the DHT's epoch).
    stepped_at: u64,
}

impl Lookup {
    pub fn new(
        id: LookupId,
        target: PublicKey,
        purpose: Purpose,
        now: u64,
        deadline: u64,
        k: usize,
    ) -> Self {
        Lookup {
            id,
            target,
            purpose,
            started: now,
            deadline,
            cands: Vec::new(),
            found: None,
            found_hop: None,
            target_answered: false,
            record_reported: false,
            stats: LookupStats::default(),
            cap: 2 * k,
            stepped_at: now,
        }
    }

    /// Adds a candidate learned at `hop` (0 = from our own table). Nodes
    /// with no endpoint cannot be asked; they still count as the target.
    /// Returns true when this is a better record of the target than the
    /// lookup had (see [`says_more`]).
    ///
    /// Once the target answered, what it said of itself (at the address
    /// it answered from) is never replaced by what others say of it.
    pub fn add(&mut self, record: NodeRecord, hop: u8) -> bool {
        let better = record.key == self.target
            && !self.target_answered
            && self.found.as_ref().is_none_or(|f| says_more(&record, f));
        if better {
            self.found = Some(record.clone());
            self.found_hop = Some(hop);
        }
        self.add_candidate(record, hop);
        better
    }

    fn add_candidate(&mut self, record: NodeRecord, hop: u8) {
        let Some(&addr) = record.endpoints.first() else {
            return;
        };
        if self.cands.iter().any(|c| c.record.key == record.key) {
            return;
        }
        let dist = distance(&record.key, &self.target);
        let pos = self.cands.partition_point(|c| c.dist < dist);
        let live = if self.cands.len() < self.cap {
            self.cands.len()
        } else {
            self.cands
                .iter()
                .filter(|c| !matches!(c.state, State::Failed | State::InFlight))
                .count()
        };
        if live >= self.cap && pos >= self.cands.len() {
            return;
        }
        self.cands.insert(
            pos,
            Candidate {
                dist,
                record,
                addr,
                state: State::Waiting,
                hop,
                stall_at: None,
            },
        );
        if live + 1 > self.cap {
            // Drop the farthest that is neither in flight nor failed (failed
            // ones stay, so that they are not asked again).
            if let Some(i) = self
                .cands
                .iter()
                .rposition(|c| matches!(c.state, State::Waiting | State::Succeeded))
            {
                self.cands.remove(i);
            }
        }
        // Failed entries are bounded too, by a hard cap on the whole list.
        while self.cands.len() > 2 * self.cap {
            if let Some(i) = self.cands.iter().rposition(|c| c.state != State::InFlight) {
                self.cands.remove(i);
            } else {
                break;
            }
        }
    }

    pub fn candidate_mut(&mut self, key: &PublicKey) -> Option<&mut Candidate> {
        self.cands.iter_mut().find(|c| c.record.key == *key)
    }

    /// Over when the target itself answered (for a user lookup), or when
    /// the `k` closest candidates that did not fail have all answered, or
    /// (a user lookup that found a record of its target) when the only
    /// ones left have stalled: a node behind a NAT that never answers held the
    /// lookup, and the caller's next one, for its request timeout and
    /// retries; its answer, should it come, is taken by the table.
    pub fn is_done(&self, k: usize, now: u64) -> bool {
        let user = self.purpose == Purpose::User;
        if user && self.target_answered {
            return true;
        }
        let mut closest = self
            .cands
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(k);
        if !self.could_end_stalled() {
            return closest.all(|c| c.state == State::Succeeded);
        }
        closest.all(|c| c.state == State::Succeeded || Self::stalled(c, now))
    }

    /// Whether the lookup may end with stalled requests left: a user
    /// lookup that has found a record of its target (a lookup that found
    /// nothing waits for every answer: a node slowed by a busy machine
    /// may hold the record).
    fn could_end_stalled(&self) -> bool {
        self.purpose == Purpose::User && self.found.is_some()
    }

    /// Whether a request of `c` in flight has stalled by `now`.
    fn stalled(c: &Candidate, now: u64) -> bool {
        c.state == State::InFlight && c.stall_at.is_some_and(|s| s <= now)
    }

    /// Picks the next candidates to ask (marked in flight), keeping at most
    /// `alpha` requests in flight that have not stalled; `budget` caps how
    /// many may start now. A request to `key` stalls `stall(key)` ms after
    /// it is sent (`None`: never): it still waits for its answer, but no
    /// longer holds the next candidate back (nodes behind NATs often never
    /// answer).
    pub fn next(
        &mut self,
        k: usize,
        alpha: usize,
        budget: usize,
        now: u64,
        stall: impl Fn(&PublicKey) -> Option<u64>,
    ) -> Vec<(PublicKey, SocketAddr)> {
        self.stepped_at = now;
        let active = self
            .cands
            .iter()
            .filter(|c| c.state == State::InFlight && !Self::stalled(c, now))
            .count();
        let mut room = alpha.saturating_sub(active).min(budget);
        let mut out = Vec::new();
        for c in self
            .cands
            .iter_mut()
            .filter(|c| c.state != State::Failed)
            .take(k)
        {
            if room == 0 {
                break;
            }
            if c.state == State::Waiting {
                c.state = State::InFlight;
                c.stall_at = stall(&c.record.key).map(|ms| now.saturating_add(ms));
                out.push((c.record.key, c.addr));
                room -= 1;
            }
        }
        out
    }

    /// When the next request in flight stalls (the lookup may then ask the
    /// next candidate, or end: see [`Self::is_done`]), later than the last
    /// [`Self::next`] (a request stalled by then is not waited for twice).
    /// Only while it matters: a candidate waits to be asked among the `k`
    /// closest, or the lookup could end (see [`Self::is_done`]).
    pub fn next_stall(&self, k: usize) -> Option<u64> {
        let live = || {
            self.cands
                .iter()
                .filter(|c| c.state != State::Failed)
                .take(k)
        };
        if !self.could_end_stalled() && !live().any(|c| c.state == State::Waiting) {
            return None;
        }
        self.cands
            .iter()
            .filter(|c| c.state == State::InFlight)
            .filter_map(|c| c.stall_at)
            .filter(|at| *at > self.stepped_at)
            .min()
    }

    /// The records of the `k` closest that answered.
    pub fn closest(&self, k: usize) -> Vec<NodeRecord> {
        self.cands
            .iter()
            .filter(|c| c.state == State::Succeeded)
            .take(k)
            .map(|c| c.record.clone())
            .collect()
    }

    pub fn heap_bytes(&self) -> usize {
        self.cands.capacity() * std::mem::size_of::<Candidate>()
            + self
                .cands
                .iter()
                .map(|c| {
                    c.record.endpoints.capacity() * std::mem::size_of::<SocketAddr>()
                        + c.record.relays.capacity()
                            * std::mem::size_of::<(PublicKey, SocketAddr)>()
                })
                .sum::<usize>()
    }
}

/// Whether record `a` of a node says more than record `b` of it: records
/// carry no version, and a node's early record (before its NAT verdict and
/// relays) or a table entry learnt from a message without its record (a
/// punch probe) says neither, while its later records say both. A lookup
/// keeps the first record of the target unless a later one says more, so
/// that a stale hint of our own table or of a node the target has not
/// talked to since never hides the record the target published.
pub(crate) fn says_more(a: &NodeRecord, b: &NodeRecord) -> bool {
    fn told(r: &NodeRecord) -> u8 {
        u8::from(r.nat != NatKind::Unknown) + u8::from(!r.relays.is_empty())
    }
    told(a) > told(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: PublicKey, nat: NatKind, relays: usize) -> NodeRecord {
        let addr: SocketAddr = "203.0.113.7:40000".parse().expect("literal");
        let relay: SocketAddr = "198.51.100.1:62096".parse().expect("literal");
        NodeRecord {
            nat,
            relays: (0..relays)
                .map(|i| (PublicKey([i as u8 + 1; 32]), relay))
                .collect(),
            ..NodeRecord::new(key, addr)
        }
    }

    fn lookup_of(target: PublicKey) -> Lookup {
        Lookup::new(LookupId(1), target, Purpose::User, 0, 1_000, 20)
    }

    #[test]
    fn a_bare_record_from_our_table_gives_way_to_one_that_names_relays() {
        let target = PublicKey([9; 32]);
        let mut l = lookup_of(target);
        assert!(l.add(record(target, NatKind::Unknown, 0), 0));
        assert!(l.add(record(target, NatKind::EndpointDependent, 1), 2));
        let found = l.found.as_ref().expect("a record of the target");
        assert_eq!(found.relays.len(), 1);
        assert_eq!(l.found_hop, Some(2));
    }

    #[test]
    fn a_record_that_says_no_more_keeps_the_first() {
        let target = PublicKey([9; 32]);
        let mut l = lookup_of(target);
        assert!(l.add(record(target, NatKind::EndpointDependent, 1), 1));
        assert!(!l.add(record(target, NatKind::EndpointIndependent, 1), 2));
        assert!(!l.add(record(target, NatKind::Unknown, 0), 3));
        let found = l.found.as_ref().expect("a record of the target");
        assert_eq!(found.nat, NatKind::EndpointDependent);
        assert_eq!(l.found_hop, Some(1));
    }

    #[test]
    fn what_the_target_said_of_itself_is_never_replaced() {
        let target = PublicKey([9; 32]);
        let mut l = lookup_of(target);
        l.found = Some(record(target, NatKind::Unknown, 0));
        l.target_answered = true;
        assert!(!l.add(record(target, NatKind::EndpointDependent, 2), 2));
        assert_eq!(l.found.as_ref().map(|r| r.nat), Some(NatKind::Unknown));
    }
}
