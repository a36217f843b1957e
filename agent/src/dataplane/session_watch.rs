//! Finds the peers of an external WireGuard whose session is broken on our
//! side: the daemon keeps handing WireGuard a peer's transport data, and
//! WireGuard opens none of it.
//!
//! Why: when both ends initiate a handshake at the same moment (both learn
//! the path at once), wireguard-go can process the peer's initiation and
//! its response concurrently and keep a keypair under an index the peer
//! does not use. The peer then sends on a session we dropped, every
//! datagram fails, and nothing recovers before WireGuard's own 15 s timer.
//!
//! Owns: per peer, the counters seen at the previous check. Promises: a
//! peer is named for a reset only after transport data went in for
//! [`CHECKS_BEFORE_RESET`] checks in a row with nothing accepted, and at
//! most once per [`RESET_GAP`]. Never does I/O: fed counters and time,
//! it returns the keys to reset; the backend removes and adds them again
//! (a fresh handshake follows at once). Bounded by the peers it is fed:
//! a key not fed at a check is forgotten.

use crate::keys::PublicKey;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Consecutive checks with data in and nothing accepted before a reset.
pub const CHECKS_BEFORE_RESET: u32 = 2;
/// Transport datagrams handed to WireGuard within one check for it to
/// count as one where the peer sent data.
pub const MIN_FED: u64 = 3;
/// Shortest time between two resets of one peer.
pub const RESET_GAP: Duration = Duration::from_secs(10);

/// One peer's counters at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub key: PublicKey,
    /// Transport-data datagrams of this peer handed to WireGuard so far.
    pub fed: u64,
    /// Bytes WireGuard reports it received (opened) from this peer so far.
    pub accepted: u64,
}

#[derive(Debug)]
struct Seen {
    fed: u64,
    accepted: u64,
    failing: u32,
    last_reset: Option<Instant>,
}

/// The watch over every peer fed to it.
#[derive(Debug, Default)]
pub struct SessionWatch {
    peers: HashMap<PublicKey, Seen>,
}

impl SessionWatch {
    /// One check: the peers to reset now.
    pub fn check(&mut self, now: Instant, samples: &[Sample]) -> Vec<PublicKey> {
        let fed: HashSet<&PublicKey> = samples.iter().map(|s| &s.key).collect();
        self.peers.retain(|k, _| fed.contains(k));
        let mut reset = Vec::new();
        for s in samples {
            let seen = self.peers.entry(s.key).or_insert(Seen {
                fed: s.fed,
                accepted: s.accepted,
                failing: 0,
                last_reset: None,
            });
            let fed = s.fed.saturating_sub(seen.fed);
            let opened = s.accepted != seen.accepted;
            seen.fed = s.fed;
            seen.accepted = s.accepted;
            if opened || fed < MIN_FED {
                seen.failing = 0;
                continue;
            }
            seen.failing += 1;
            let rested = seen
                .last_reset
                .is_none_or(|t| now.saturating_duration_since(t) >= RESET_GAP);
            if seen.failing >= CHECKS_BEFORE_RESET && rested {
                seen.failing = 0;
                seen.last_reset = Some(now);
                reset.push(s.key);
            }
        }
        reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    /// Drives one peer through checks one second apart: each step gives
    /// the datagrams fed and the bytes accepted during that second.
    fn run(steps: &[(u64, u64)]) -> Vec<bool> {
        let mut watch = SessionWatch::default();
        let start = Instant::now();
        let (mut fed, mut accepted) = (0, 0);
        let mut out = vec![!watch.check(start, &[sample(1, 0, 0)]).is_empty()];
        for (i, (f, a)) in steps.iter().enumerate() {
            fed += f;
            accepted += a;
            let now = start + Duration::from_secs(i as u64 + 1);
            out.push(!watch.check(now, &[sample(1, fed, accepted)]).is_empty());
        }
        out
    }

    fn sample(n: u8, fed: u64, accepted: u64) -> Sample {
        Sample {
            key: key(n),
            fed,
            accepted,
        }
    }

    #[test]
    fn a_peer_whose_data_wireguard_never_opens_is_reset_after_two_checks() {
        assert_eq!(run(&[(20, 0), (20, 0)]), [false, false, true]);
    }

    #[test]
    fn a_peer_whose_data_is_opened_is_never_reset() {
        assert_eq!(run(&[(20, 1000); 5]), [false; 6]);
    }

    #[test]
    fn an_idle_peer_or_a_trickle_is_not_taken_for_a_broken_session() {
        assert_eq!(run(&[(0, 0), (2, 0), (2, 0), (0, 0)]), [false; 5]);
    }

    #[test]
    fn one_good_check_between_bad_ones_starts_the_count_again() {
        assert_eq!(
            run(&[(20, 0), (20, 500), (20, 0), (20, 0)]),
            [false, false, false, false, true]
        );
    }

    #[test]
    fn a_peer_is_reset_at_most_once_per_gap() {
        let resets = run(&[(20, 0); 25]);
        let at: Vec<usize> = (0..resets.len()).filter(|i| resets[*i]).collect();
        assert_eq!(at, [2, 12, 22]);
    }

    #[test]
    fn peers_no_longer_fed_are_forgotten() {
        let mut watch = SessionWatch::default();
        let now = Instant::now();
        watch.check(now, &[sample(1, 0, 0), sample(2, 0, 0)]);
        watch.check(now, &[sample(2, 0, 0)]);
        assert_eq!(watch.peers.len(), 1);
    }
}
