//! NAT detection from the addresses peers report seeing (the `observed`
//! field of pongs), free of I/O.
//!
//! - An observed endpoint equal to one of the node's own addresses and port:
//!   no NAT (`Public`).
//! - The same observed endpoint from at least two peers at different IP
//!   addresses: endpoint-independent mapping (`EndpointIndependent`).
//! - Different observed endpoints from different peers: endpoint-dependent
//!   mapping (`EndpointDependent`, "symmetric").
//! - Nothing observed for a while although we keep asking: `Unreachable`.
//!
//! Samples expire, so a changed network (a new public address or port) is
//! seen as soon as fresh pongs arrive; [`NatDetector::changed`] tells the
//! caller to republish its record. When one reporter sees our endpoint move,
//! the other reporters' samples of the old endpoint are stale too: they are
//! dropped at once, so that a router that changed its public port is not
//! taken for an endpoint-dependent one until they expire.

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

#[derive(Debug, Clone, Copy)]
struct Sample {
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
}

/// Learns the NAT kind from observed endpoints.
#[derive(Debug)]
pub struct NatDetector {
    local_port: u16,
    local_ips: Vec<IpAddr>,
    samples: VecDeque<Sample>,
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
            forced: None,
            started: now,
            last: Verdict {
                kind: NatKind::Unknown,
                reflexive: None,
                reflexive6: None,
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

    /// A peer at `reporter` saw our packets come from `observed`.
    pub fn observe(&mut self, reporter: SocketAddr, observed: SocketAddr, now: Instant) {
        let moved_from = self
            .samples
            .iter()
            .find(|s| s.reporter == reporter.ip())
            .map(|s| s.observed)
            .filter(|old| *old != observed);
        self.samples.retain(|s| s.reporter != reporter.ip());
        if let Some(old) = moved_from {
            self.samples.retain(|s| s.observed != old);
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
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
        if let Some(kind) = self.forced {
            return Verdict {
                kind,
                reflexive,
                reflexive6,
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
            };
        }
        if fresh.iter().any(|s| {
            s.observed.port() == self.local_port && self.local_ips.contains(&s.observed.ip())
        }) {
            return Verdict {
                kind: NatKind::Public,
                reflexive,
                reflexive6,
            };
        }
        let mut reporters: Vec<IpAddr> = fresh.iter().map(|s| s.reporter).collect();
        reporters.sort();
        reporters.dedup();
        let all_same = fresh.iter().all(|s| Some(s.observed) == reflexive);
        let kind = if !all_same {
            NatKind::EndpointDependent
        } else if reporters.len() >= 2 {
            NatKind::EndpointIndependent
        } else {
            // One reporter only: the mapping looks stable, not proven.
            NatKind::Unknown
        };
        Verdict {
            kind,
            reflexive: if all_same { reflexive } else { None },
            reflexive6,
        }
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

    #[test]
    fn own_address_reported_back_means_public() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["203.0.113.5".parse().unwrap()], now);
        d.observe(a("203.0.113.1:62096"), a("203.0.113.5:62096"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Public);
    }

    #[test]
    fn same_mapping_from_two_peers_is_endpoint_independent() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec!["198.51.100.18".parse().unwrap()], now);
        d.observe(a("203.0.113.1:62096"), a("203.0.113.20:62096"), now);
        assert_eq!(
            d.verdict(now).kind,
            NatKind::Unknown,
            "one reporter proves nothing"
        );
        d.observe(a("203.0.113.2:62096"), a("203.0.113.20:62096"), now);
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
        d.observe(a("[2001:db8::1]:62096"), a("[2001:db8::20]:62096"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Unknown);
        assert_eq!(d.verdict(now).reflexive, Some(a("[2001:db8::20]:62096")));
        d.observe(a("203.0.113.1:62096"), a("203.0.113.20:62096"), now);
        d.observe(a("203.0.113.2:62096"), a("203.0.113.20:62096"), now);
        d.observe(a("[2001:db8::2]:62096"), a("[2001:db8::20]:62096"), now);
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointIndependent);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:62096")));
        assert_eq!(v.reflexive6, Some(a("[2001:db8::20]:62096")));
    }

    #[test]
    fn different_mappings_are_endpoint_dependent() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        d.observe(a("203.0.113.1:62096"), a("203.0.113.20:40001"), now);
        d.observe(a("203.0.113.2:62096"), a("203.0.113.20:51234"), now);
        let v = d.verdict(now);
        assert_eq!(v.kind, NatKind::EndpointDependent);
        assert_eq!(v.reflexive, None);
    }

    #[test]
    fn a_new_public_port_is_noticed_and_old_samples_expire() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        d.observe(a("203.0.113.1:1"), a("203.0.113.20:62096"), now);
        d.observe(a("203.0.113.2:1"), a("203.0.113.20:62096"), now);
        assert_eq!(
            d.changed(now).map(|v| v.kind),
            Some(NatKind::EndpointIndependent)
        );
        assert_eq!(d.changed(now), None);
        // The router changed its port: the same reporters now see another one.
        d.observe(a("203.0.113.1:1"), a("203.0.113.20:7000"), now);
        d.observe(a("203.0.113.2:1"), a("203.0.113.20:7000"), now);
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
            d.observe(a(r), a("203.0.113.20:62096"), now);
        }
        assert_eq!(d.verdict(now).kind, NatKind::EndpointIndependent);
        // One reporter sees the new port: the others' samples are stale.
        let t1 = now + Duration::from_secs(1);
        d.observe(a("203.0.113.1:1"), a("203.0.113.20:40000"), t1);
        let v = d.verdict(t1);
        assert_ne!(v.kind, NatKind::EndpointDependent);
        assert_eq!(v.reflexive, Some(a("203.0.113.20:40000")));
        d.observe(a("203.0.113.2:1"), a("203.0.113.20:40000"), t1);
        assert_eq!(d.verdict(t1).kind, NatKind::EndpointIndependent);
        // A symmetric NAT: each reporter keeps seeing its own mapping.
        let mut h = NatDetector::new(62096, vec![], now);
        for _ in 0..2 {
            h.observe(a("203.0.113.1:1"), a("203.0.113.20:40001"), now);
            h.observe(a("203.0.113.2:1"), a("203.0.113.20:40002"), now);
        }
        assert_eq!(h.verdict(now).kind, NatKind::EndpointDependent);
    }

    #[test]
    fn forced_mode_wins() {
        let now = Instant::now();
        let mut d = NatDetector::new(62096, vec![], now);
        d.force(NatKind::Public);
        d.observe(a("203.0.113.1:1"), a("203.0.113.20:40001"), now);
        d.observe(a("203.0.113.2:1"), a("203.0.113.20:40002"), now);
        assert_eq!(d.verdict(now).kind, NatKind::Public);
    }
}
