//! The vocabulary of the local control socket: what the CLI asks a daemon
//! ([`Request`]) and what it answers ([`Response`], [`Status`]). Plain
//! serialisable types; the socket itself (paths, client, server) is the
//! `wirehub` crate's `control` module.

use serde::{Deserialize, Serialize};

/// What the CLI asks a daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The state `wh show` prints.
    Show,
    /// Everything, as JSON.
    Inspect,
    /// Stop the daemon and remove what it made.
    Down,
    /// Re-read the network file.
    Reload,
    /// Look a peer up in the DHT.
    Lookup { peer: String },
    /// Ping a peer over the control protocol.
    Ping { peer: String },
    /// Forget a peer's path and DHT entry.
    Forget { peer: String },
    /// Resolve a name or address of this network.
    Resolve { name: String },
}

/// The daemon's answer to [`Request::Down`], sent as it starts stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// Whether the daemon's process ends with the node (`wh up`): `wh down`
    /// then waits for it to exit. False where the node is one part of a
    /// longer-lived process (the Kubernetes agent).
    pub process_exits: bool,
}

/// A daemon's answer: a JSON value on success, a message on failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PathStatus {
    /// Directly at an endpoint.
    Direct { endpoint: String },
    /// Through relays (the first is in use).
    Relayed { via: Vec<String> },
    /// Not found yet.
    Unknown,
}

/// One peer in `wh show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub key: String,
    pub hostname: Option<String>,
    pub role: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub path: PathStatus,
    /// The peer's NAT kind, as it published it.
    pub nat: Option<String>,
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One DHT neighbour in `wh show I all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhtNodeStatus {
    pub key: String,
    pub endpoint: String,
    pub bucket: usize,
    pub rtt_ms: Option<u64>,
}

/// The state of one interface, as `wh show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interface: String,
    pub network: String,
    pub node: Option<String>,
    pub nat: String,
    pub public_key: String,
    pub listen_port: u16,
    pub backend: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub dht: Vec<DhtNodeStatus>,
    /// This node's clock minus the network's (the median of what distinct
    /// peers show), in milliseconds; None until 3 peers were heard from.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}
