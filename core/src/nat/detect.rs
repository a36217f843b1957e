//! NAT detection from the addresses peers report seeing (the `observed`
//! field of pongs), free of I/O.
//!
//! Only pongs that answer a ping of ours count: the caller tells the
//! detector each ping it sends ([`NatDetector::pinged`]: the peer's key
//! and the ping id) and each pong it receives ([`NatDetector::on_pong`]);
//! a pong whose (key, id) was not pinged within [`PONG_WITHIN`], or was
//! answered already, is refused. One sample per reporting key and per
//! reporting address, so one key or one address is one voice; a verdict
//! follows the majority (see below), so one lying reporter among honest
//! ones changes nothing.
//!
//! - Observed endpoints equal to one of the node's own addresses and port,
//!   from at least as many reporters as see another: no NAT (`Public`).
//! - The same observed endpoint from at least two peers at different IP
//!   addresses (and more of them than report any other endpoint):
//!   endpoint-independent mapping (`EndpointIndependent`).
//! - Different observed endpoints from different peers, none confirmed by
//!   two: endpoint-dependent mapping (`EndpointDependent`, "symmetric").
//! - Nothing observed for a while although we keep asking: `Unreachable`.
//! - One reporter only, seeing an address that is not ours: the kind is not
//!   known yet (`Unknown`), but the node knows it is behind a NAT
//!   ([`Verdict::behind_nat`]), and so wants relays.
//!
//! Too few reporters to conclude: [`NatDetector::wants_probe`] says which
//! nodes that contacted us to ping, so that a node that is only ever asked
//! (a bootstrap node nobody pings) learns that it is public, and a node
//! behind a NAT hears from a second peer when there is one. Probes are
//! bounded: each address at most once per [`PROBE_AGAIN`], at most
//! [`MAX_PROBED`] remembered.
//!
//! Samples expire, so a changed network (a new public address or port) is
//! seen as soon as fresh pongs arrive; [`NatDetector::changed`] tells the
//! caller to republish its record. When one reporter sees our endpoint move,
//! the other reporters' samples of the old endpoint are stale too: they are
//! dropped at once, so that a router that changed its public port is not
//! taken for an endpoint-dependent one until they expire.

use crate::keys::PublicKey;
use crate::proto::NatKind;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Samples kept (one per reporting peer address at most).
const MAX_SAMPLES: usize = 16;
/// A sample older than this no longer counts.
const SAMPLE_TTL: Duration = Duration::from_secs(120);
/// No sample for this long while asking: the node is unreachable.
const SILENT_AFTER: Duration = Duration::from_secs(30);
/// Reporters (distinct addresses) wanted before the verdict is settled.
const REPORTERS_WANTED: usize = 2;
/// A pong counts only if it answers a ping sent at most this long ago.
pub const PONG_WITHIN: Duration = Duration::from_secs(10);
/// Pings remembered while their pong is awaited (the oldest forgotten).
const MAX_AWAITED: usize = 256;
/// Addresses remembered as probed.
pub const MAX_PROBED: usize = 16;
/// An address probed is not probed again before this long.
pub const PROBE_AGAIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Sample {
    key: PublicKey,
    reporter: IpAddr,
    observed: SocketAddr,
    at: Instant,
}

/// What the detector concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub kind: NatKind,
    /// The endpoint peers see, when it is the same for all of them.
    pub reflexive: Option<SocketAddr>,
    /// The IPv6 endpoint peers that reach us over IPv6 see (the most
    /// common), when the kind and `reflexive` are learnt over IPv4.
    pub reflexive6: Option<SocketAddr>,
    /// A peer saw us at an address that is not ours: we are behind a NAT,
    /// even while the kind is `Unknown` (one reporter only).
    pub behind_nat: bool,
}

/// Learns the NAT kind from observed endpoints.
#[derive(Debug)]
pub struct NatDetector {
    local_port: u16,
    local_ips: Vec<IpAddr>,
    samples: VecDeque<Sample>,
    /// Pings sent whose pong is awaited: (peer key, ping id, when).
    awaited: VecDeque<(PublicKey, u64, Instant)>,
    /// Pongs refused: they answered no ping of ours.
    unsolicited: u64,
    /// Addresses pinged to learn more (see [`NatDetector::wants_probe`]).
    probed: VecDeque<(IpAddr, Instant)>,
    forced: Option<NatKind>,
    started: Instant,
    last: Verdict,
}

impl NatDetector {
    /// `local_port` is the node's UDP port; `local_ips` its own addresses.
    pub fn new(local_port: u16, local_ips: Vec<IpAddr>, now: Instant) -> Self {
        NatDetector {
            local_port,
            local_ips,
            samples: VecDeque::new(),
            awaited: VecDeque::new(),
            unsolicited: 0,
            probed: VecDeque::new(),
            forced: None,
            started: now,
            last: Verdict {
                kind: NatKind::Unknown,
                reflexive: None,
                reflexive6: None,
                behind_nat: false,
            },
        }
    }

    /// Skips detection: the kind is what the user said (`mode direct|nat`).
    pub fn force(&mut self, kind: NatKind) {
        self.forced = Some(kind);
    }

    pub fn set_local_ips(&mut self, ips: Vec<IpAddr>) {
        self.local_ips = ips;
    }

    /// We sent ping `id` to `key`: its pong may report our address.
    pub fn pinged(&mut self, key: PublicKey, id: u64, now: Instant) {
        while self.awaited.len() >= MAX_AWAITED
            || self
                .awaited
                .front()
                .is_some_and(|(_, _, t)| now.saturating_duration_since(*t) > PONG_WITHIN)
        {
            self.awaited.pop_front();
        }
        self.awaited.push_back((key, id, now));
    }

    /// A pong `id` from `key` at `reporter` says our packets came from
    /// `observed`. Counted only if it answers a ping of ours to that key
    /// (each ping once); returns whether it was.
    pub fn on_pong(
        &mut self,
        key: PublicKey,
        reporter: SocketAddr,
        id: u64,
        observed: SocketAddr,
        now: Instant,
    ) -> bool {
        let answered = self.awaited.iter().position(|(k, i, t)| {
            *k == key && *i == id && now.saturating_duration_since(*t) <= PONG_WITHIN
        });
        match answered {
            Some(i) => {
                self.awaited.remove(i);
                self.observe(key, reporter, observed, now);
                true
            }
            None => {
                self.unsolicited += 1;
                false
            }
        }
    }

    /// Pongs refused because they answered no ping of ours.
    pub fn unsolicited(&self) -> u64 {
        self.unsolicited
    }

    /// The peer `key` at `reporter` saw our packets come from `observed`.
    fn observe(
        &mut self,
        key: PublicKey,
        reporter: SocketAddr,
        observed: SocketAddr,
        now: Instant,
    ) {
        let moved_from = self
            .samples
            .iter()
            .find(|s| s.key == key || s.reporter == reporter.ip())
            .map(|s| s.observed)
            .filter(|old| *old != observed);
        self.samples
            .retain(|s| s.key != key && s.reporter != reporter.ip());
        if let Some(old) = moved_from {
            self.samples.retain(|s| s.observed != old);
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            key,
            reporter: reporter.ip(),
            observed,
            at: now,
        });
    }

    /// The current verdict. The kind comes from what IPv4 peers see (NATs
    /// are an IPv4 matter), or from IPv6 peers when no IPv4 peer reports.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let (v4, v6): (Vec<&Sample>, Vec<&Sample>) = self
            .samples
            .iter()
            .filter(|s| now.duration_since(s.at) <= SAMPLE_TTL)
            .partition(|s| s.observed.is_ipv4());
        let reflexive6 = most_common(v6.iter().map(|s| s.observed));
        let fresh = if v4.is_empty() { v6 } else { v4 };
        let reflexive = most_common(fresh.iter().map(|s| s.observed));
        let own = |s: &&&Sample| {
            s.observed.port() == self.local_port && self.local_ips.contains(&s.observed.ip())
        };
        let seen_own = fresh.iter().filter(own).count();
        let public = seen_own > 0 && 2 * seen_own >= fresh.len();
        let behind_nat = !public && !fresh.is_empty();
        if let Some(kind) = self.forced {
            return Verdict {
                kind,
                reflexive,
                reflexive6,
                behind_nat: kind != NatKind::Public && behind_nat,
            };
        }
        if fresh.is_empty() {
            let silent = now.duration_since(self.started) > SILENT_AFTER;
            let kind = if silent && !self.samples.is_empty() {
                NatKind::Unreachable
            } else {
                NatKind::Unknown
            };
            return Verdict {
                kind,
                reflexive: None,
                reflexive6,
                behind_nat: false,
            };
        }
        if public {
            return Verdict {
                kind: NatKind::Public,
                reflexive,
                reflexive6,
                behind_nat: false,
            };
        }
        let all_same = fresh.iter().all(|s| Some(s.observed) == reflexive);
        // An endpoint two reporters agree on, seen by more than any other:
        // the others are outliers (a liar, a stale sample), not a hard NAT.
        let agreed = confirmed(&fresh, reflexive);
        let kind = if !all_same && !agreed {
            NatKind::EndpointDependent
        } else if reporters(&fresh) >= REPORTERS_WANTED {
            NatKind::EndpointIndependent
        } else {
            // One reporter only: behind a NAT, whose kind is not proven.
            NatKind::Unknown
        };
        Verdict {
            kind,
            reflexive: if all_same || agreed { reflexive } else { None },
            reflexive6,
            behind_nat,
        }
    }

    /// A node at `addr` contacted us: should we ping it, to learn our
    /// address as it sees us? Yes while too few peers reported (and we did
    /// not probe this address lately); the caller then pings it once.
    pub fn wants_probe(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.forced.is_some() {
            return false;
        }
        let fresh: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| now.duration_since(s.at) <= SAMPLE_TTL)
            .filter(|s| s.observed.is_ipv4() == addr.is_ipv4())
            .collect();
        if reporters(&fresh) >= REPORTERS_WANTED || fresh.iter().any(|s| s.reporter == addr.ip()) {
            return false;
        }
        self.probed
            .retain(|(_, at)| now.duration_since(*at) < PROBE_AGAIN);
        if self.probed.iter().any(|(ip, _)| *ip == addr.ip()) || self.probed.len() >= MAX_PROBED {
            return false;
        }
        self.probed.push_back((addr.ip(), now));
        true
    }

    /// Whether [`NatDetector::changed`] would report a new verdict now.
    pub fn has_news(&self, now: Instant) -> bool {
        self.verdict(now) != self.last
    }

    /// The verdict if it differs from the one last returned by this method.
    pub fn changed(&mut self, now: Instant) -> Option<Verdict> {
        let v = self.verdict(now);
        (v != self.last).then(|| {
            self.last = v;
            v
        })
    }
}

/// Distinct reporting addresses among `samples`.
fn reporters(samples: &[&Sample]) -> usize {
    let mut ips: Vec<IpAddr> = samples.iter().map(|s| s.reporter).collect();
    ips.sort();
    ips.dedup();
    ips.len()
}

/// Whether `top` is reported by at least two samples and by more than any
/// other endpoint.
fn confirmed(samples: &[&Sample], top: Option<SocketAddr>) -> bool {
    let Some(top) = top else {
        return false;
    };
    let n = samples.iter().filter(|s| s.observed == top).count();
    n >= REPORTERS_WANTED
        && samples
            .iter()
            .filter(|s| s.observed != top)
            .all(|o| samples.iter().filter(|s| s.observed == o.observed).count() < n)
}

fn most_common(it: impl Iterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut counts: Vec<(SocketAddr, usize)> = Vec::new();
    for a in it {
        match counts.iter_mut().find(|(x, _)| *x == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((a, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The key of the lab peer at `addr` (one per address).
    fn key_at(addr: SocketAddr) -> PublicKey {
        let mut k = [0u8; 32];
        let text = addr.to_string();
        k[..text.len().min(32)].copy_from_slice(&text.as_bytes()[..text.len().min(32)]);
        PublicKey(k)
    }

    /// We ping the peer at `reporter`; its pong says it saw `observed`.
    fn obs(d: &mut NatDetector, reporter: SocketAddr, observed: SocketAddr, now: Instant) {
        let key = key_at(reporter);
        d.pinged(key, 7, now);
        assert!(d.on_pong(key, reporter, 7, observed, now));
    }

    #[test]
    fn own_address_reported_back_means_public() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["203.0.113.5".parse().unwrap()], now);
        obs(&mut d, a("203.0.113.1:62096"), a("203.0.113.5:62096"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Public);
    }

    #[test]
    fn same_mapping_from_two_peers_is_endpoint_independent() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["198.51.100.18".parse().unwrap()], now);
        obs(&mut d, a("203.0.113.1:62096"), a("203.0.113.20:62096"), now);
        assert_eq!(
            d.verdict(now).kind,
            NatKind::Unknown,
            "one reporter proves nothing"
        );
        obs(&mut d, a("203.0.113.2:62096"), a("203.0.113.20:62096"), now);
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointIndependent);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:62096")));
    }

    /// A dual-stack node: IPv6 peers see its IPv6 endpoint, which neither
    /// makes its IPv4 NAT look endpoint-dependent nor hides it.
    #[test]
    fn ipv6_reports_do_not_mix_with_the_ipv4_verdict() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        obs(
            &mut d,
            a("[2001:db8::1]:62096"),
            a("[2001:db8::20]:62096"),
            now,
        );
        assert_eq!(d.verdict(now).kind, NatKind::Unknown);
        assert_eq!(d.verdict(now).reflexive, Some(a("[2001:db8::20]:62096")));
        obs(&mut d, a("203.0.113.1:62096"), a("203.0.113.20:62096"), now);
        obs(&mut d, a("203.0.113.2:62096"), a("203.0.113.20:62096"), now);
        obs(
            &mut d,
            a("[2001:db8::2]:62096"),
            a("[2001:db8::20]:62096"),
            now,
        );
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointIndependent);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:62096")));
        assert_eq!(v.reflexive6, Some(a("[2001:db8::20]:62096")));
    }

    #[test]
    fn different_mappings_are_endpoint_dependent() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        obs(&mut d, a("203.0.113.1:62096"), a("203.0.113.20:40001"), now);
        obs(&mut d, a("203.0.113.2:62096"), a("203.0.113.20:51234"), now);
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointDependent);
        assert_eq!(v.reflexive, None);
    }

    #[test]
    fn a_new_public_port_is_noticed_and_old_samples_expire() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        obs(&mut d, a("203.0.113.1:1"), a("203.0.113.20:62096"), now);
        obs(&mut d, a("203.0.113.2:1"), a("203.0.113.20:62096"), now);
        assert_eq!(
            d.changed(now).map(|v| v.kind),
            Some(NatKind::EndpointIndependent)
        );
        assert_eq!(d.changed(now), None);
        // The router changed its port: the same reporters now see another one.
        obs(&mut d, a("203.0.113.1:1"), a("203.0.113.20:7000"), now);
        obs(&mut d, a("203.0.113.2:1"), a("203.0.113.20:7000"), now);
        let v = d.changed(now).unwrap();
        assert_eq!(v.reflexive, Some(a("203.0.113.20:7000")));
        let later = now + SAMPLE_TTL + Duration::from_secs(1);
        assert_eq!(d.verdict(later).kind, NatKind::Unreachable);
    }

    #[test]
    fn a_port_change_seen_first_by_one_reporter_is_not_taken_for_a_hard_nat() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        for r in ["203.0.113.1:1", "203.0.113.2:1", "203.0.113.3:1"] {
            obs(&mut d, a(r), a("203.0.113.20:62096"), now);
        }
        assert_eq!(d.verdict(now).kind, NatKind::EndpointIndependent);
        // One reporter sees the new port: the others' samples are stale.
        let t1 = now + Duration::from_secs(1);
        obs(&mut d, a("203.0.113.1:1"), a("203.0.113.20:40000"), t1);
        let v = d.verdict(t1);
        assert_ne!(v.kind, NatKind::EndpointDependent);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:40000")));
        obs(&mut d, a("203.0.113.2:1"), a("203.0.113.20:40000"), t1);
        assert_eq!(d.verdict(t1).kind, NatKind::EndpointIndependent);
        // A symmetric NAT: each reporter keeps seeing its own mapping.
        let mut h = NatDetector::new(62096, vec![], now);
        for _ in 0..2 {
            obs(&mut h, a("203.0.113.1:1"), a("203.0.113.20:40001"), now);
            obs(&mut h, a("203.0.113.2:1"), a("203.0.113.20:40002"), now);
        }
        assert_eq!(h.verdict(now).kind, NatKind::EndpointDependent);
    }

    /// The shape of most first networks: one public bootstrap node, the
    /// only node that ever answers a node behind a NAT.
    #[test]
    fn one_reporter_seeing_another_address_means_behind_a_nat() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["198.51.100.18".parse().unwrap()], now);
        assert!(!d.verdict(now).behind_nat, "nothing heard yet");
        obs(
            &mut d,
            a("203.0.113.10:62096"),
            a("203.0.113.20:40001"),
            now,
        );
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::Unknown, "the kind needs a second reporter");
        assert!(v.behind_nat);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:40001")));
        // A public node is never taken for one behind a NAT.
        let mut p = NatDetector::new(62096, vec!["203.0.113.10".parse().unwrap()], now);
        obs(&mut p, a("198.51.100.1:7"), a("203.0.113.10:62096"), now);
        assert_eq!(p.verdict(now).kind, NatKind::Public);
        assert!(!p.verdict(now).behind_nat);
    }

    /// A bootstrap node is only ever asked, never answered: it pings the
    /// nodes that contact it until two reported, each address once.
    #[test]
    fn a_node_nobody_answers_probes_its_callers_until_two_reported() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["203.0.113.10".parse().unwrap()], now);
        let caller = a("203.0.113.30:62096");
        assert!(d.wants_probe(caller, now));
        assert!(!d.wants_probe(caller, now), "once per address");
        assert!(d.wants_probe(caller, now + PROBE_AGAIN), "again later");
        obs(&mut d, caller, a("203.0.113.10:62096"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Public);
        assert!(
            d.wants_probe(a("203.0.113.31:62096"), now),
            "a second reporter is still welcome"
        );
        obs(
            &mut d,
            a("203.0.113.31:62096"),
            a("203.0.113.10:62096"),
            now,
        );
        assert!(!d.wants_probe(a("203.0.113.32:62096"), now), "two reported");
        // Bounded: at most MAX_PROBED addresses outstanding.
        let mut e = NatDetector::new(62096, vec![], now);
        let probes = (0..100u8)
            .filter(|i| e.wants_probe(a(&format!("203.0.113.{i}:1")), now))
            .count();
        assert_eq!(probes, MAX_PROBED);
        // A forced kind probes nobody.
        let mut f = NatDetector::new(62096, vec![], now);
        f.force(NatKind::Public);
        assert!(!f.wants_probe(caller, now));
    }

    #[test]
    fn forced_mode_wins() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        d.force(NatKind::Public);
        obs(&mut d, a("203.0.113.1:1"), a("203.0.113.20:40001"), now);
        obs(&mut d, a("203.0.113.2:1"), a("203.0.113.20:40002"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Public);
    }

    #[test]
    fn unsolicited_pongs_do_not_count() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        for r in ["203.0.113.1:1", "203.0.113.2:1"] {
            obs(&mut d, a(r), a("203.0.113.20:62096"), now);
        }
        let before = d.verdict(now);
        assert_eq!(before.kind, NatKind::EndpointIndependent);
        // A stranger we never pinged, and a peer answering a ping id we
        // never sent it, each claim another mapping: refused.
        let stranger = key_at(a("203.0.113.66:1"));
        for id in 0..50 {
            assert!(!d.on_pong(stranger, a("203.0.113.66:1"), id, a("203.0.113.20:9"), now));
        }
        let peer = key_at(a("203.0.113.1:1"));
        assert!(!d.on_pong(peer, a("203.0.113.1:1"), 99, a("203.0.113.20:9"), now));
        assert_eq!(d.unsolicited(), 51);
        assert_eq!(d.verdict(now), before);
        // A ping is answered once; a pong later than PONG_WITHIN is refused.
        d.pinged(stranger, 5, now);
        let late = now + PONG_WITHIN + Duration::from_secs(1);
        assert!(!d.on_pong(stranger, a("203.0.113.66:1"), 5, a("203.0.113.20:9"), late));
    }

    #[test]
    fn one_lying_reporter_among_honest_ones_changes_nothing() {
        let now = Instant::now();
        let own = "203.0.113.20".parse().unwrap();
        let mut d = NatDetector::new(62096, vec![own], now);
        for r in ["203.0.113.1:1", "203.0.113.2:1"] {
            obs(&mut d, a(r), a("203.0.113.20:62096"), now);
        }
        assert_eq!(d.verdict(now).kind, NatKind::Public);
        // A peer we pinged lies: it says we are behind a NAT.
        obs(&mut d, a("203.0.113.3:1"), a("198.51.100.7:4000"), now);
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::Public);
        assert!(!v.behind_nat);
        // Behind a NAT, a liar claiming another mapping does not make it
        // look endpoint-dependent.
        let mut n = NatDetector::new(62096, vec![], now);
        for r in ["203.0.113.1:1", "203.0.113.2:1"] {
            obs(&mut n, a(r), a("198.51.100.7:62096"), now);
        }
        obs(&mut n, a("203.0.113.3:1"), a("198.51.100.7:1234"), now);
        let v = n.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointIndependent);
        assert_eq!(v.reflexive, Some(a("198.51.100.7:62096")));
        // One key is one voice, from whatever address it answers.
        let liar = key_at(a("203.0.113.3:1"));
        for i in 0..5u8 {
            let from = a(&format!("203.0.113.{}:1", 100 + i));
            n.pinged(liar, u64::from(i), now);
            n.on_pong(liar, from, u64::from(i), a("198.51.100.7:1234"), now);
        }
        assert_eq!(n.verdict(now).kind, NatKind::EndpointIndependent);
    }
}
