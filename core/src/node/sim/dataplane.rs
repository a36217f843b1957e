//! The seam between a simulated host and its data plane: what the
//! simulator asks of a data plane ([`SimDataplane`]) and the fake one the
//! core's own tests and `net-sim` run ([`FakeDataplane`]).
//!
//! Contract:
//! - A data plane owns its peers and their sessions; the simulator owns
//!   the routing. A data plane says which peer each datagram is for and,
//!   for a reply to a datagram that came straight from an address, that
//!   address ([`Sent::direct`]); the simulator sends it there, or to the
//!   endpoint the core programmed, or hands it to the core as `Outgoing`.
//! - It is driven only at the simulated time it is given (`now`) and owns
//!   no socket, thread or clock of its own; its next timer is a value
//!   ([`SimDataplane::next_timer`]) the event loop waits for.
//! - The fake encrypts nothing and keeps no session: a payload leaves as
//!   one datagram, unchanged, and every datagram the core hands it is
//!   delivered as it is. The real WireGuard implementation (boringtun's
//!   `Tunn`) lives outside the workspace (sim-wg/, docs/simulator.md).

use crate::dataplane::PeerConfig;
use crate::keys::{PrivateKey, PublicKey};
use crate::node::core::Now;
use std::net::SocketAddr;
use std::time::Instant;

/// A datagram a data plane wants sent to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub to: PublicKey,
    /// `Some(addr)`: to this address (a reply to a datagram that came
    /// straight from it). `None`: the peer's path as the core programmed it.
    pub direct: Option<SocketAddr>,
    pub bytes: Vec<u8>,
}

/// What came of a datagram the core handed to the data plane.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    /// The payload it carried (decrypted), for the host.
    pub payload: Option<Vec<u8>>,
    /// Datagrams to send in answer (handshake responses, queued packets).
    pub sent: Vec<Sent>,
}

/// A host's data plane, as the simulator drives it. Every call is at the
/// simulated time `now`, never earlier than the call before.
pub trait SimDataplane {
    /// The core programmed `peer` (new, or a new path or keepalive).
    fn set_peer(&mut self, now: Now, peer: &PeerConfig) -> Vec<Sent>;
    /// The core removed the peer `key`.
    fn remove_peer(&mut self, now: Now, key: &PublicKey);
    /// The host sends `payload` (an IP packet's contents) to the peer `to`.
    fn send(&mut self, now: Now, to: &PublicKey, payload: &[u8]) -> Vec<Sent>;
    /// The core hands over a WireGuard datagram from `from`; `peer` is the
    /// sender a relay names (None: it came straight from `from`).
    fn receive(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &[u8],
        peer: Option<PublicKey>,
    ) -> Received;
    /// When [`SimDataplane::on_timer`] is due next (None: no timer).
    fn next_timer(&self) -> Option<Instant>;
    /// Its timers (handshake retries, keepalives, rekeys), due now.
    fn on_timer(&mut self, now: Now) -> Vec<Sent>;
}

/// Builds the data plane of a host that starts with key `key`, in a
/// network whose clock started at `origin`.
pub type MakeDataplane = fn(key: &PrivateKey, origin: Instant) -> Box<dyn SimDataplane>;

/// The fake data plane: payloads leave as they are, datagrams arrive as
/// they are. See the module's contract.
#[derive(Debug, Default)]
pub struct FakeDataplane;

/// [`MakeDataplane`] for the fake.
pub fn fake(_: &PrivateKey, _: Instant) -> Box<dyn SimDataplane> {
    Box::new(FakeDataplane)
}

impl SimDataplane for FakeDataplane {
    fn set_peer(&mut self, _: Now, _: &PeerConfig) -> Vec<Sent> {
        Vec::new()
    }

    fn remove_peer(&mut self, _: Now, _: &PublicKey) {}

    fn send(&mut self, _: Now, to: &PublicKey, payload: &[u8]) -> Vec<Sent> {
        vec![Sent {
            to: *to,
            direct: None,
            bytes: payload.to_vec(),
        }]
    }

    fn receive(
        &mut self,
        _: Now,
        _: SocketAddr,
        datagram: &[u8],
        _: Option<PublicKey>,
    ) -> Received {
        Received {
            payload: Some(datagram.to_vec()),
            sent: Vec::new(),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _: Now) -> Vec<Sent> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PrivateKey {
        PrivateKey::from_bytes([b; 32])
    }

    #[test]
    fn the_fake_sends_a_payload_unchanged_and_delivers_a_datagram_unchanged() {
        let now = Now::system();
        let mut plane = fake(&key(1), now.mono);
        let to = key(2).public_key();
        let sent = plane.send(now, &to, &[4, 1, 2, 3]);
        assert_eq!(
            sent,
            vec![Sent {
                to,
                direct: None,
                bytes: vec![4, 1, 2, 3]
            }]
        );
        let from: SocketAddr = "198.51.100.10:62096".parse().expect("an address");
        let got = plane.receive(now, from, &[4, 9], None);
        assert_eq!(got.payload, Some(vec![4, 9]));
        assert!(got.sent.is_empty());
        assert_eq!(plane.next_timer(), None);
    }
}
