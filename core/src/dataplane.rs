//! The data plane's vocabulary, as the node core speaks it: the peers it
//! wants ([`PeerConfig`]), what the data plane tells it about them
//! ([`PeerStats`]), and WireGuard datagrams it must deliver itself because a
//! peer has no direct path ([`Outgoing`]). Plain values; the data planes
//! (TUN, sockets, kernel and userspace WireGuard) are the `wirehub` crate's
//! `dataplane` module.

use crate::keys::PublicKey;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::SystemTime;

/// Handshake initiations a node's userspace WireGuard verifies per second
/// (all peers, all sources) before the senders must echo a cookie first:
/// one limiter for the whole node, in the embedded and the external
/// backends and in the simulator's real WireGuard (sim-wg), never one per
/// peer (boringtun's default, 10 a second per peer, turned a path that
/// moved a few times before its session into a 5 s wait: net-sim-wg seed
/// 3418350723699841351).
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

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
