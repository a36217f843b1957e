//! A deterministic simulator of whole nodes (issue 12): many real [`Node`]
//! cores (real codec, crypto, DHT, overlay, relays, punching) in one
//! process, on a simulated internet with NAT routers, a fake clock and
//! faults. See docs/simulator.md.
//!
//! Contract:
//! - [`net`] owns the simulated internet (hosts, NAT routers, links, the
//!   event queue and the clock); [`scenario`] owns generated networks (topology,
//!   start order, faults, all from one seed), the traffic between trusted
//!   pairs and the properties checked on each run.
//! - Every random choice of the simulator comes from one seeded [`Rng`]:
//!   the same seed builds the same network, schedule and link fates.
//! - [`cli`] is the command line `net-sim` and `net-sim-wg` share.
//! - [`dataplane`] is the seam to a host's data plane ([`SimDataplane`]):
//!   here only the fake ([`dataplane::FakeDataplane`]: payloads travel as
//!   datagrams marked as WireGuard data, not encrypted), which the core's
//!   tests and `net-sim` run; "reaches" then means such a datagram went from
//!   one node's data plane to the other's through the real cores. The real
//!   WireGuard (boringtun's `Tunn` on the simulated clock) is the crate
//!   `wirehub-sim-wg` (sim-wg/, outside the workspace) and `net-sim-wg`.
//! - It owns no socket and no clock, and no thread outside [`cli`] (one
//!   per job, each running whole networks); every collection it keeps is
//!   bounded.
//!
//! [`Node`]: crate::node::core::Node
//! [`SimDataplane`]: dataplane::SimDataplane

pub mod cli;
pub mod dataplane;
pub mod net;
pub mod scenario;

/// The simulator's random numbers: SplitMix64, seeded.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// The seed of network `k` of a run started with `seed`.
pub fn network_seed(seed: u64, k: u64) -> u64 {
    Rng::new(seed ^ k.wrapping_mul(0xA24B_AED4_963E_E407)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(network_seed(1, 0), network_seed(1, 1));
    }
}
