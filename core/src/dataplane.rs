//! The data plane's vocabulary, as the node core speaks it: the peers it
//! wants ([`PeerConfig`]), what the data plane tells it about them
//! ([`PeerStats`]), and WireGuard datagrams it must deliver itself because a
//! peer has no direct path ([`Outgoing`]). Plain values; the data planes
//! (TUN, sockets, kernel and userspace WireGuard) are the `wirehub` crate's
//! `dataplane` module.

use crate::keys::PublicKey;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Handshake initiations a node's userspace WireGuard verifies per second
/// (all peers, all sources) before the senders must echo a cookie first:
/// one limiter for the whole node, in the embedded and the external
/// backends and in the simulator's real WireGuard (sim-wg), never one per
/// peer (boringtun's default, 10 a second per peer, turned a path that
/// moved a few times before its session into a 5 s wait: net-sim-wg seed
/// 3418350723699841351).
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// How long our own handshake initiation to a peer counts as in flight:
/// WireGuard's REKEY_TIMEOUT, after which boringtun sends a new one itself.
pub const INITIATION_IN_FLIGHT: Duration = Duration::from_secs(5);

/// Whether to leave a peer's handshake initiation unanswered because ours
/// to it is in flight: crossing initiations, broken by key order.
///
/// boringtun answers an initiation by forgetting its own, so the answer to
/// its own is refused when it comes; and with packets queued and no
/// session, it initiates again at once. Two ends that both initiated can
/// so answer each other's initiations for ever without either completing:
/// over a relay (a round trip of a few hundred ms) net-sim-wg seed
/// `7351719995460706832` saw 57 initiations each way in 10 s and no
/// session. The rule: while it has no session with the peer and sent its
/// own initiation less than [`INITIATION_IN_FLIGHT`] ago, the end with the
/// lower public key does not answer; the other end answers ours, and we
/// complete as the initiator one round trip after we sent it. An end with
/// a session, or without an initiation in flight, answers as usual.
pub fn yields_to_crossing_initiation(
    me: &PublicKey,
    peer: &PublicKey,
    has_session: bool,
    own_initiation_age: Option<Duration>,
) -> bool {
    !has_session && me < peer && own_initiation_age.is_some_and(|age| age < INITIATION_IN_FLIGHT)
}

/// One peer as the daemon wants it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: PublicKey,
    pub allowed_ips: Vec<IpNet>,
    /// `Some(addr)`: the path is direct, WireGuard datagrams go to `addr`
    /// through the shared socket. `None`: relayed or unknown, datagrams go
    /// to the daemon as [`Outgoing`].
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive interval in seconds.
    pub keepalive: Option<u16>,
}

/// WireGuard datagrams for a peer without a direct path: the daemon
/// delivers them (through a relay). Several datagrams of one packet travel
/// together, laid end to end, each `segment` bytes long but the last (which
/// may be shorter), so that the daemon can send them in one system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: PublicKey,
    pub datagrams: Vec<u8>,
    pub segment: usize,
}

impl Outgoing {
    /// One datagram.
    pub fn one(to: PublicKey, datagram: Vec<u8>) -> Outgoing {
        Outgoing {
            to,
            segment: datagram.len(),
            datagrams: datagram,
        }
    }

    /// The datagrams, one by one.
    pub fn iter(&self) -> std::slice::Chunks<'_, u8> {
        self.datagrams.chunks(self.segment.max(1))
    }
}

/// What the data plane knows about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    /// WireGuard bytes received from / sent to the peer.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    #[test]
    fn of_two_crossing_initiations_only_the_higher_key_answers() {
        let (low, high) = (key(1), key(2));
        let in_flight = Some(Duration::from_millis(300));
        assert!(yields_to_crossing_initiation(&low, &high, false, in_flight));
        assert!(!yields_to_crossing_initiation(
            &high, &low, false, in_flight
        ));
    }

    #[test]
    fn an_end_answers_when_it_has_a_session_or_no_initiation_in_flight() {
        let (low, high) = (key(1), key(2));
        assert!(!yields_to_crossing_initiation(
            &low,
            &high,
            true,
            Some(Duration::ZERO)
        ));
        assert!(!yields_to_crossing_initiation(&low, &high, false, None));
        assert!(!yields_to_crossing_initiation(
            &low,
            &high,
            false,
            Some(INITIATION_IN_FLIGHT)
        ));
    }
}
