//! Pins: the first WireHub key, overlay address and recorded pod CIDRs an
//! agent saw for each Node object, so that other values published later
//! for the same Node are refused.
//!
//! Why: every agent may write every `WireHubNode` (the agents share one
//! service account, and Kubernetes 1.20's RBAC cannot narrow a DaemonSet's
//! writes to "its own" object), and the other agents trust the key, the
//! overlay address and the pod CIDR a `WireHubNode` names. Without pins,
//! one agent's stolen token could replace another node's key with its own
//! and receive that node's pod traffic, or move its pod CIDR.
//!
//! A Node whose record says something else than its pins keeps its pinned
//! values (the forged ones are ignored and reported): its tunnel, routes
//! and traffic stay as they were, and the impostor's key gets nothing.
//!
//! Owns: the pins (Node UID → name, key, overlay address, recorded pod
//! CIDRs, one per family), their text form (one JSON file beside the node's private key, in
//! the agent's host path). Promises: a Node keeps the key first seen for
//! its UID until the Node object is deleted (a node that is reinstalled
//! with a new key registers a new Node object, hence a new UID); its
//! allocations, once seen, never change (the lease holder records them
//! once); the node's own agent never refuses its own key; pins of Nodes
//! that are gone are forgotten, so the set is bounded by the cluster's
//! Nodes. Never: I/O (the agent reads and writes the file), a decision
//! about a Node without a UID (tests, objects built by hand): those pass.
//!
//! The limit: trust on first use. An agent that first starts after a key
//! was replaced pins the replacement.

use super::convert::{ClusterNode, Problem};
use crate::keys::PublicKey;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// The reason of a Node left out because its key changed.
pub const KEY_CHANGED: &str = "KeyChanged";
/// The reason of a Node left out because its overlay address or recorded
/// pod CIDR changed.
pub const ALLOCATION_CHANGED: &str = "AllocationChanged";

/// What is pinned for one Node object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub node: String,
    pub key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The recorded IPv6 pod CIDR (absent from pins written before
    /// dual-stack: pinned when first seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Net>,
}

/// Every pin, by Node UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    by_uid: BTreeMap<String, Pin>,
}

/// What one check found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Every node, with its pinned key and allocations in place of other
    /// values its record gives.
    pub nodes: Vec<ClusterNode>,
    /// Nodes whose record says something else than their pins, and what.
    pub refused: Vec<(String, Problem)>,
    /// Whether the pins changed (to be saved).
    pub changed: bool,
}

impl Pins {
    /// Reads the pins' file text; `None` for text that is not a pin file.
    pub fn from_text(text: &str) -> Option<Pins> {
        serde_json::from_str(text).ok()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Pins the keys of Nodes seen for the first time, leaves out the Nodes
    /// whose key differs from their pin, and forgets the pins of Nodes that
    /// are gone. `own` is this agent's Node name.
    pub fn check(&mut self, nodes: Vec<ClusterNode>, own: &str) -> Checked {
        let mut out = Checked::default();
        let present: HashSet<&str> = nodes.iter().filter_map(|n| n.uid.as_deref()).collect();
        let before = self.by_uid.len();
        self.by_uid.retain(|uid, _| present.contains(uid.as_str()));
        out.changed = self.by_uid.len() != before;
        for node in nodes {
            let (Some(uid), Some(key)) = (node.uid.clone(), node.key) else {
                out.nodes.push(node);
                continue;
            };
            let mut node = node;
            match self.by_uid.get_mut(&uid) {
                Some(pin) if pin.key != key && node.name != own => {
                    out.refused
                        .push((node.name.clone(), key_changed(&node.name, &pin.key, &key)));
                    node.key = Some(pin.key);
                    keep_allocations(pin, &mut node, &mut out.refused);
                    out.nodes.push(node);
                }
                Some(pin) => {
                    if keep_allocations(pin, &mut node, &mut out.refused) {
                        out.nodes.push(node);
                        continue;
                    }
                    let before = pin.clone();
                    pin.key = key;
                    pin.overlay_ip = pin.overlay_ip.or(node.overlay_ip);
                    pin.pod_cidr = pin.pod_cidr.or(node.recorded_pod_cidr);
                    pin.pod_cidr_v6 = pin.pod_cidr_v6.or(node.recorded_pod_cidr_v6);
                    out.changed |= *pin != before;
                    out.nodes.push(node);
                }
                None => {
                    self.by_uid.insert(
                        uid,
                        Pin {
                            node: node.name.clone(),
                            key,
                            overlay_ip: node.overlay_ip,
                            pod_cidr: node.recorded_pod_cidr,
                            pod_cidr_v6: node.recorded_pod_cidr_v6,
                        },
                    );
                    out.changed = true;
                    out.nodes.push(node);
                }
            }
        }
        out
    }
}

/// Puts the pinned allocations back in place of others the record gives
/// (a value not recorded yet, or gone, is no change: the pinned one
/// stands in); says which were changed. True when one was.
fn keep_allocations(
    pin: &Pin,
    node: &mut ClusterNode,
    refused: &mut Vec<(String, Problem)>,
) -> bool {
    let mut what = Vec::new();
    if let (Some(a), Some(b)) = (pin.overlay_ip, node.overlay_ip)
        && a != b
    {
        what.push(format!("overlay address {b}, first seen {a}"));
    }
    if let (Some(a), Some(b)) = (pin.pod_cidr, node.recorded_pod_cidr)
        && a != b
    {
        what.push(format!("pod CIDR {b}, first seen {a}"));
    }
    if let (Some(a), Some(b)) = (pin.pod_cidr_v6, node.recorded_pod_cidr_v6)
        && a != b
    {
        what.push(format!("pod CIDR {b}, first seen {a}"));
    }
    node.overlay_ip = pin.overlay_ip.or(node.overlay_ip);
    node.recorded_pod_cidr = pin.pod_cidr.or(node.recorded_pod_cidr);
    node.recorded_pod_cidr_v6 = pin.pod_cidr_v6.or(node.recorded_pod_cidr_v6);
    if what.is_empty() {
        return false;
    }
    refused.push((
        node.name.clone(),
        Problem {
            reason: ALLOCATION_CHANGED,
            message: format!(
                "node {} now has {}: ignored, it keeps the first (allocations are recorded once; anyone with an agent's token can write WireHubNodes); delete its Node object so that it registers again if this is wanted",
                node.name,
                what.join(" and ")
            ),
        },
    ));
    true
}

fn key_changed(node: &str, pinned: &PublicKey, published: &PublicKey) -> Problem {
    Problem {
        reason: KEY_CHANGED,
        message: format!(
            "node {node} now publishes key {}, but this agent first saw {} for it: ignored, the node keeps its first key (anyone with an agent's token can write WireHubNodes); if the node was reinstalled with a new key, delete its Node object (kubectl delete node {node}) so that it registers again",
            published.short(10),
            pinned.short(10)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from_bytes([seed; 32]).public_key()
    }

    fn node(name: &str, uid: &str, seed: u8) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            uid: Some(uid.into()),
            key: Some(key(seed)),
            ..ClusterNode::default()
        }
    }

    fn names(nodes: &[ClusterNode]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn a_node_keeps_the_key_first_seen_for_its_node_object() {
        let mut pins = Pins::default();
        let first = pins.check(vec![node("a", "u1", 1), node("b", "u2", 2)], "a");
        assert_eq!(names(&first.nodes), ["a", "b"]);
        assert!(first.changed && first.refused.is_empty());
        // Another agent's token rewrites b's key: b keeps its pinned key.
        let swapped = pins.check(vec![node("a", "u1", 1), node("b", "u2", 9)], "a");
        assert_eq!(names(&swapped.nodes), ["a", "b"]);
        assert_eq!(swapped.nodes[1].key, Some(key(2)));
        assert_eq!(swapped.refused.len(), 1);
        let (who, problem) = &swapped.refused[0];
        assert_eq!((who.as_str(), problem.reason), ("b", KEY_CHANGED));
        assert!(
            problem.message.contains("kubectl delete node b"),
            "{}",
            problem.message
        );
        assert!(!swapped.changed);
        // Put back: accepted again.
        let back = pins.check(vec![node("a", "u1", 1), node("b", "u2", 2)], "a");
        assert_eq!(names(&back.nodes), ["a", "b"]);
    }

    #[test]
    fn a_node_registered_again_may_bring_a_new_key() {
        let mut pins = Pins::default();
        pins.check(vec![node("b", "u2", 2)], "a");
        let again = pins.check(vec![node("b", "u3", 9)], "a");
        assert_eq!(names(&again.nodes), ["b"]);
        assert!(again.refused.is_empty() && again.changed);
        assert_eq!(pins.len(), 1, "the old Node's pin is forgotten");
    }

    #[test]
    fn an_agent_never_refuses_its_own_node() {
        let mut pins = Pins::default();
        pins.check(vec![node("a", "u1", 1)], "a");
        let own = pins.check(vec![node("a", "u1", 7)], "a");
        assert_eq!(names(&own.nodes), ["a"]);
    }

    #[test]
    fn nodes_without_a_uid_or_a_key_pass_unpinned() {
        let mut pins = Pins::default();
        let bare = ClusterNode {
            name: "x".into(),
            key: Some(key(3)),
            ..ClusterNode::default()
        };
        let keyless = ClusterNode {
            name: "y".into(),
            uid: Some("u9".into()),
            ..ClusterNode::default()
        };
        let c = pins.check(vec![bare, keyless], "a");
        assert_eq!(names(&c.nodes), ["x", "y"]);
        assert!(pins.is_empty());
    }

    #[test]
    fn allocations_once_seen_never_move() {
        let mut pins = Pins::default();
        let with = |ip: &str, cidr: &str| ClusterNode {
            overlay_ip: ip.parse().ok(),
            recorded_pod_cidr: cidr.parse().ok(),
            ..node("b", "u2", 2)
        };
        // Not recorded yet, then recorded: pinned.
        assert_eq!(names(&pins.check(vec![with("", "")], "a").nodes), ["b"]);
        let first = pins.check(vec![with("10.0.0.254", "10.244.1.0/24")], "a");
        assert!(first.changed && first.refused.is_empty());
        // Another agent's token moves b's pod CIDR, or its address: the
        // pinned ones stay, even on b's own agent, and the change is named.
        let pinned = with("10.0.0.254", "10.244.1.0/24");
        for (moved, own) in [
            (with("10.0.0.254", "10.244.0.0/24"), "a"),
            (with("10.0.0.9", "10.244.1.0/24"), "b"),
        ] {
            let c = pins.check(vec![moved], own);
            assert_eq!(c.nodes, std::slice::from_ref(&pinned));
            assert_eq!(c.refused[0].1.reason, ALLOCATION_CHANGED);
            assert!(!c.changed);
        }
        // The record put back, or lost: the pinned values, nothing said.
        for same in [with("10.0.0.254", "10.244.1.0/24"), with("", "")] {
            let c = pins.check(vec![same], "a");
            assert_eq!(c.nodes, std::slice::from_ref(&pinned));
            assert!(c.refused.is_empty());
        }
    }

    #[test]
    fn an_ipv6_pod_cidr_once_seen_never_moves_and_old_pin_files_still_read() {
        let mut pins = Pins::default();
        let with = |v6: &str| ClusterNode {
            overlay_ip: "10.0.0.254".parse().ok(),
            recorded_pod_cidr: "10.244.1.0/24".parse().ok(),
            recorded_pod_cidr_v6: v6.parse().ok(),
            ..node("b", "u2", 2)
        };
        // A pin from before dual-stack (no IPv6 block): the block recorded
        // later is pinned when first seen.
        pins.check(vec![with("")], "a");
        let old = pins.to_text();
        assert!(!old.contains("pod_cidr_v6"), "{old}");
        let mut pins = Pins::from_text(&old).unwrap();
        let c = pins.check(vec![with("fd00:10:244:1::/64")], "a");
        assert!(c.changed && c.refused.is_empty());
        let c = pins.check(vec![with("fd00:10:244:9::/64")], "a");
        assert_eq!(c.nodes, [with("fd00:10:244:1::/64")]);
        assert_eq!(c.refused[0].1.reason, ALLOCATION_CHANGED);
        assert!(
            c.refused[0]
                .1
                .message
                .contains("pod CIDR fd00:10:244:9::/64, first seen fd00:10:244:1::/64"),
            "{:?}",
            c.refused
        );
    }

    #[test]
    fn pins_survive_their_file_and_garbage_is_no_file() {
        let mut pins = Pins::default();
        pins.check(vec![node("a", "u1", 1), node("b", "u2", 2)], "a");
        assert_eq!(Pins::from_text(&pins.to_text()), Some(pins));
        assert_eq!(Pins::from_text("not json"), None);
    }
}
