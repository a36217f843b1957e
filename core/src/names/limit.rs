//! Per-source rate limiting for the DNS responder: a token bucket per source
//! address, in a table of bounded size. Pure: time comes from the caller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a full table is swept for idle sources, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets per source address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by new sources while the table is full of busy ones.
    overflow: Bucket,
    last_prune: Instant,
}

impl RateLimiter {
    /// `rate` queries per second sustained, `burst` at once, per source; a
    /// `rate` of 0 turns limiting off.
    pub fn new(rate: u32, burst: u32, max_sources: usize, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            overflow: Bucket::full(burst, now),
            last_prune: now,
        }
    }

    /// Whether a query from `src` may be answered now (and counts it).
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&src) {
            return b.take(rate, burst, now);
        }
        if self.buckets.len() >= self.max_sources
            && now.saturating_duration_since(self.last_prune) >= PRUNE_EVERY
        {
            self.last_prune = now;
            // Forget the sources whose bucket has filled up again: idle ones.
            self.buckets.retain(|_, b| {
                b.refill(rate, burst, now);
                b.tokens < burst
            });
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(rate, burst, now);
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(rate, burst, now);
        self.buckets.insert(src, b);
        ok
    }

    /// Sources currently remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_rate_per_source() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 20, 100, t0);
        let a = ip("10.0.0.1");
        let passed = (0..100).filter(|_| l.allow(a, t0)).count();
        assert_eq!(passed, 20);
        // Another source is not affected.
        assert!(l.allow(ip("10.0.0.2"), t0));
        // A second later, ten more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..100).filter(|_| l.allow(a, t1)).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn table_is_bounded_and_idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 2, 4, t0);
        for i in 0..4 {
            assert!(l.allow(ip(&format!("10.0.0.{i}")), t0));
        }
        assert_eq!(l.len(), 4);
        // Full: newcomers share the overflow bucket.
        assert!(l.allow(ip("10.0.1.1"), t0));
        assert!(l.allow(ip("10.0.1.2"), t0));
        assert!(!l.allow(ip("10.0.1.3"), t0));
        assert_eq!(l.len(), 4);
        // Later, the idle ones are swept and newcomers get their own bucket.
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.allow(ip("10.0.1.3"), t1));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 1, 1, t0);
        assert!((0..1000).all(|_| l.allow(ip("10.0.0.1"), t0)));
        assert!(l.is_empty());
    }
}
