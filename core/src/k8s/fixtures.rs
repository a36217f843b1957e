//! Test fixtures shared by the Kubernetes modules' tests: keys from a seed,
//! the lab's network spec (10.0.0.0/24, pods 10.244.0.0/16, no work bits)
//! and its nodes. For tests only (this crate's and the agent's).

use super::convert::ClusterNode;
use super::crd::WireHubNetworkSpec;
use crate::keys::{PrivateKey, PublicKey};
use std::collections::BTreeMap;

/// The public key of the private key made of 32 bytes `seed`.
pub fn key(seed: u8) -> PublicKey {
    PrivateKey::from_bytes([seed; 32]).public_key()
}

/// The lab network, without external peers.
pub fn lab_spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        subnet: "10.0.0.0/24".into(),
        workbits: Some(0),
        namespace: None,
        pod_subnet: Some("10.244.0.0/16".into()),
        pod_subnets: Vec::new(),
        pod_cidr_prefix: None,
        pod_cidr_prefix_v6: None,
        listen_port: None,
        node_selector: BTreeMap::new(),
        boot_nodes: Vec::new(),
        peers: Vec::new(),
        node_subnet: None,
        remote_clusters: Vec::new(),
    }
}

/// A node with key `seed`, overlay address `ip`, recorded pod CIDR `cidr`
/// and internal address 203.0.113.`seed`.
pub fn node(name: &str, seed: u8, ip: &str, cidr: &str) -> ClusterNode {
    ClusterNode {
        name: name.into(),
        key: Some(key(seed)),
        overlay_ip: ip.parse().ok(),
        recorded_pod_cidr: cidr.parse().ok(),
        internal_ip: Some(format!("203.0.113.{seed}")),
        ..ClusterNode::default()
    }
}
