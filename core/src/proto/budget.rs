//! The work budgets of a codec: how many new sender keys it derives (one
//! X25519 each), per source address and in all, and how many datagrams
//! failing authentication (one AEAD check each) a source may send before it
//! is held off for a while.
//!
//! Owns token-bucket limiters (the DNS responder's,
//! [`crate::names::limit::RateLimiter`]): per source (an IPv4 address, an
//! IPv6 /64, in a bounded table) and for the whole node, and a bounded set
//! of held-off sources. Promises: a new key is derived only when both
//! budgets have a token, the source's first (so a source over its budget
//! spends none of the node's); a source not known (a datagram a relay
//! delivered) meets the aggregate budget only; a source held off costs a
//! table lookup per datagram. Never does I/O and reads no clock after its
//! creation: times come in as milliseconds and only their differences
//! count.

use super::codec::OpenError;
use crate::names::limit::RateLimiter;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The budgets, in new keys per second and at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhLimits {
    /// Per source address (IPv6: per /64).
    pub per_source_rate: u32,
    pub per_source_burst: u32,
    /// For the whole node.
    pub rate: u32,
    pub burst: u32,
    /// Source addresses remembered at most.
    pub max_sources: usize,
    /// Datagrams failing authentication a source may send per second (and
    /// at once) before it is held off for `hold_off_ms`.
    pub failures_rate: u32,
    pub failures_burst: u32,
    pub hold_off_ms: u64,
}

impl Default for DhLimits {
    /// A node meets at most a few hundred peers at once (a DHT join, a
    /// cluster start): 20 new keys a second per address (40 at once), 2,000
    /// a second in all (4,000 at once), about 6 % of a core at 30 µs each.
    fn default() -> Self {
        DhLimits {
            per_source_rate: 20,
            per_source_burst: 40,
            rate: 2_000,
            burst: 4_000,
            max_sources: 4_096,
            failures_rate: 50,
            failures_burst: 100,
            hold_off_ms: 2_000,
        }
    }
}

/// The node-wide bucket's key in its one-entry limiter.
const ALL: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

pub(super) struct DhBudget {
    per_source: RateLimiter,
    aggregate: RateLimiter,
    failures: RateLimiter,
    /// Sources held off, until when (ms).
    held_off: HashMap<IpAddr, u64>,
    limits: DhLimits,
    /// An arbitrary origin; `origin_ms` is the first time fed in.
    origin: Instant,
    origin_ms: Option<u64>,
}

impl DhBudget {
    pub(super) fn new(limits: DhLimits) -> Self {
        let origin = Instant::now();
        DhBudget {
            per_source: RateLimiter::new(
                limits.per_source_rate,
                limits.per_source_burst,
                limits.max_sources,
                origin,
            ),
            aggregate: RateLimiter::new(limits.rate, limits.burst, 1, origin),
            failures: RateLimiter::new(
                limits.failures_rate,
                limits.failures_burst,
                limits.max_sources,
                origin,
            ),
            held_off: HashMap::new(),
            limits,
            origin,
            origin_ms: None,
        }
    }

    fn instant(&mut self, now_ms: u64) -> Instant {
        let base = *self.origin_ms.get_or_insert(now_ms);
        self.origin + Duration::from_millis(now_ms.saturating_sub(base))
    }

    /// Whether `src` is held off (it sent too many datagrams that failed
    /// authentication lately).
    pub(super) fn held_off(&mut self, now_ms: u64, src: IpAddr) -> bool {
        let unit = source_of(src);
        match self.held_off.get(&unit) {
            Some(until) if *until > now_ms => true,
            Some(_) => {
                self.held_off.remove(&unit);
                false
            }
            None => false,
        }
    }

    /// A datagram from `src` failed authentication: one more against its
    /// budget; beyond it, `src` is held off.
    pub(super) fn failed(&mut self, now_ms: u64, src: IpAddr) {
        let unit = source_of(src);
        let now = self.instant(now_ms);
        if self.failures.allow(unit, now) {
            return;
        }
        if self.held_off.len() >= self.limits.max_sources {
            self.held_off.retain(|_, until| *until > now_ms);
        }
        if self.held_off.len() < self.limits.max_sources {
            self.held_off
                .insert(unit, now_ms.saturating_add(self.limits.hold_off_ms));
        }
    }

    pub(super) fn held_off_len(&self) -> usize {
        self.held_off.len()
    }

    /// Takes one X25519 from `src`'s budget and the node's, or says which
    /// one is spent.
    pub(super) fn allow(&mut self, now_ms: u64, src: Option<IpAddr>) -> Result<(), OpenError> {
        let now = self.instant(now_ms);
        if let Some(ip) = src
            && !self.per_source.allow(source_of(ip), now)
        {
            return Err(OpenError::DhSourceLimited);
        }
        if !self.aggregate.allow(ALL, now) {
            return Err(OpenError::DhBusy);
        }
        Ok(())
    }
}

/// The unit a budget is kept for: an IPv4 address (or one mapped in IPv6),
/// an IPv6 /64 (what one host is usually given).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DhLimits {
        DhLimits {
            per_source_rate: 10,
            per_source_burst: 10,
            rate: 100,
            burst: 25,
            max_sources: 16,
            failures_rate: 5,
            failures_burst: 5,
            hold_off_ms: 1_000,
        }
    }

    #[test]
    fn a_source_failing_too_often_is_held_off_for_a_while() {
        let mut b = DhBudget::new(limits());
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..5 {
            b.failed(0, a);
        }
        assert!(!b.held_off(0, a), "within its budget");
        b.failed(0, a);
        assert!(b.held_off(0, a));
        assert!(!b.held_off(0, "203.0.113.2".parse().unwrap()));
        assert!(b.held_off(999, a));
        assert!(!b.held_off(1_000, a), "released after hold_off_ms");
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut b = DhBudget::new(limits());
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let passed = (0..100).filter(|_| b.allow(0, Some(a)).is_ok()).count();
        assert_eq!(passed, 10);
        assert_eq!(b.allow(0, Some(a)), Err(OpenError::DhSourceLimited));
        let passed = (0..100).filter(|_| b.allow(1_000, Some(a)).is_ok()).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn the_node_budget_caps_all_sources_together() {
        let mut b = DhBudget::new(limits());
        let passed = (0..100u8)
            .filter(|i| b.allow(0, Some(IpAddr::from([10, 0, 0, *i]))).is_ok())
            .count();
        assert_eq!(passed, 25);
        assert_eq!(b.allow(0, None), Err(OpenError::DhBusy));
    }

    #[test]
    fn one_ipv6_host_is_one_source() {
        let mut b = DhBudget::new(limits());
        let passed = (0..100u16)
            .filter(|i| {
                let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, *i);
                b.allow(0, Some(IpAddr::V6(ip))).is_ok()
            })
            .count();
        assert_eq!(passed, 10);
    }
}
