//! The hole-punching schedule, free of I/O. For each peer being punched it
//! says when to probe the peer's endpoints and when to ask the peer, through
//! one of its relays, to probe ours: a burst of rounds every 500 ms (as the
//! original), then retries with a doubling back-off while the peer stays
//! relayed. A direct contact ends the punching.

use crate::keys::PublicKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Time between rounds of a burst.
pub const ROUND: Duration = Duration::from_millis(500);
/// Rounds in a burst.
pub const ROUNDS: u32 = 10;
/// First pause after a failed burst; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// Peers punched at once.
pub const MAX_TARGETS: usize = 256;

/// What to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchAction {
    /// Probe each of these endpoints of `peer` (an authenticated ping).
    Probe {
        peer: PublicKey,
        endpoints: Vec<SocketAddr>,
    },
    /// Ask `peer`, through `relay`, to probe our endpoints.
    Request {
        peer: PublicKey,
        relay: (PublicKey, SocketAddr),
    },
}

#[derive(Debug)]
struct Target {
    endpoints: Vec<SocketAddr>,
    relays: Vec<(PublicKey, SocketAddr)>,
    round: u32,
    next: Instant,
    backoff: Duration,
}

/// Punching state for every peer being punched.
#[derive(Debug, Default)]
pub struct Puncher {
    targets: BTreeMap<PublicKey, Target>,
}

impl Puncher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or restarts, with fresh endpoints and relays) punching `peer`.
    pub fn start(
        &mut self,
        peer: PublicKey,
        endpoints: Vec<SocketAddr>,
        relays: Vec<(PublicKey, SocketAddr)>,
        now: Instant,
    ) {
        if endpoints.is_empty() && relays.is_empty() {
            return;
        }
        if !self.targets.contains_key(&peer) && self.targets.len() >= MAX_TARGETS {
            return;
        }
        self.targets.insert(
            peer,
            Target {
                endpoints,
                relays,
                round: 0,
                next: now,
                backoff: FIRST_BACKOFF,
            },
        );
    }

    /// A direct path exists: stop punching `peer`.
    pub fn stop(&mut self, peer: &PublicKey) {
        self.targets.remove(peer);
    }

    pub fn is_punching(&self, peer: &PublicKey) -> bool {
        self.targets.contains_key(peer)
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<PunchAction> {
        let mut out = Vec::new();
        for (peer, t) in &mut self.targets {
            if t.next > now {
                continue;
            }
            if !t.endpoints.is_empty() {
                out.push(PunchAction::Probe {
                    peer: *peer,
                    endpoints: t.endpoints.clone(),
                });
            }
            // Ask the peer to probe us on the first round and every third,
            // through its relays in turn.
            if t.round % 3 == 0 && !t.relays.is_empty() {
                let relay = t.relays[(t.round as usize / 3) % t.relays.len()];
                out.push(PunchAction::Request { peer: *peer, relay });
            }
            t.round += 1;
            if t.round % ROUNDS == 0 {
                t.next = now + t.backoff;
                t.backoff = (t.backoff * 2).min(MAX_BACKOFF);
            } else {
                t.next = now + ROUND;
            }
        }
        out
    }

    /// When [`Puncher::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.targets.values().map(|t| t.next).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn bursts_then_backs_off_and_stops_on_contact() {
        let peer = PrivateKey::generate().unwrap().public_key();
        let relay = (
            PrivateKey::generate().unwrap().public_key(),
            "203.0.113.9:1".parse().unwrap(),
        );
        let mut p = Puncher::new();
        let now = Instant::now();
        p.start(
            peer,
            vec!["203.0.113.20:62096".parse().unwrap()],
            vec![relay],
            now,
        );
        let first = p.poll(now);
        assert_eq!(first.len(), 2, "probe and request at once: {first:?}");
        assert!(p.poll(now).is_empty(), "nothing before the next round");
        let mut t = now;
        let mut probes = 1;
        for _ in 1..ROUNDS {
            t += ROUND;
            probes += p
                .poll(t)
                .iter()
                .filter(|a| matches!(a, PunchAction::Probe { .. }))
                .count();
        }
        assert_eq!(probes, ROUNDS as usize);
        assert!(p.poll(t + ROUND).is_empty(), "backing off after a burst");
        assert_eq!(p.next_deadline(), Some(t + FIRST_BACKOFF));
        p.stop(&peer);
        assert!(p.next_deadline().is_none());
    }
}
