//! The agent's decisions, as values: from a [`Snapshot`] of what one agent
//! knows (the network, the trusted nodes, the `WireHubNode`s, its key, what
//! its node core runs and reports, the problems it met) to a [`Plan`]: its
//! own object (the spec it publishes, the status it reports), the network
//! it runs, the network's status and conditions (when it holds the Lease),
//! the events to publish and the problems found.
//!
//! Owns: the rules (who takes part, what "ready" means, how conditions and
//! their transition times follow from the nodes' states, when a write is
//! due). Promises: the same snapshot always gives the same plan; the
//! network's status stays O(1) in the cluster's size; a status that only
//! differs by handshake ages or timestamps is not a change. Never: I/O, the
//! clock (the snapshot carries `now`), the API (the agent applies the plan).
//! The Lease's rules (who takes it, when its holder renews it) are
//! [`lease`]'s (pure too; the agent's lease keeper applies them).

pub mod lease;

use super::convert::{self, ClusterNode, ClusterSpec, Problem};
use super::crd::{
    Condition, PathSummary, PeerPath, WireHubNetwork, WireHubNetworkStatus, WireHubNode,
    WireHubNodeSpec, WireHubNodeStatus,
};
use crate::config::NetworkSpec;
use crate::control::{self, PathStatus};
use crate::keys::PublicKey;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// A node's status is rewritten at least this often (a heartbeat), so the
/// lease holder can tell a gone agent from a quiet one.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// A node status older than this counts as not ready.
pub const STALE: Duration = Duration::from_secs(150);
/// Longest condition or node message kept.
const MAX_MESSAGE: usize = 1000;
/// At most this many node names in a condition's message.
const MAX_NAMED: usize = 10;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An Event about the network, published once per `key` and generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub key: String,
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// What one agent knows at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// This agent's Node name.
    pub me: &'a str,
    pub network: &'a WireHubNetwork,
    /// The cluster's nodes that passed the pins (key and allocations as
    /// first seen), with what their `WireHubNode`s say.
    pub nodes: &'a [ClusterNode],
    /// Every `WireHubNode` (their statuses: readiness, messages); read only
    /// for the network's status, so only when `leader`.
    pub records: &'a [WireHubNode],
    /// The network built from `network` and `nodes`, when the agent built
    /// it already ([`convert::NetworkMemo`]); None: the plan builds it.
    pub built: Option<&'a Result<ClusterSpec, Vec<Problem>>>,
    /// This node's public key, once it has one.
    pub key: Option<&'a PublicKey>,
    /// The port the node listens on (the running one, else the spec's).
    pub listen_port: u16,
    /// The network the node core runs, if it runs.
    pub running: Option<&'a NetworkSpec>,
    /// The generation of the spec the node core runs.
    pub running_generation: Option<i64>,
    /// What the node core last reported (`wh show`'s data).
    pub inspect: Option<&'a control::Status>,
    /// Problems of this node met outside the plan (no key, a refused
    /// update, a failed node core).
    pub node_problems: &'a [Problem],
    /// Problems of the network met outside the plan (refused pins,
    /// allocation failures).
    pub network_problems: &'a [Problem],
    /// Whether this agent holds the network's Lease.
    pub leader: bool,
    pub now: Timestamp,
}

/// What the agent should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The spec of its own `WireHubNode` (its fields only: the
    /// allocations are the lease holder's).
    pub own_spec: Option<WireHubNodeSpec>,
    /// Its own `WireHubNode`'s status (without `lastUpdate`: set when
    /// written).
    pub own_status: WireHubNodeStatus,
    /// The network this node should run (None: not a member, or the
    /// resource cannot be used).
    pub run: Option<ClusterSpec>,
    /// Leader only: the network's status.
    pub network_status: Option<WireHubNetworkStatus>,
    pub events: Vec<PlannedEvent>,
    /// Problems of this node (its status message).
    pub node_problems: Vec<Problem>,
    /// Problems of the network (the Degraded condition).
    pub network_problems: Vec<Problem>,
    /// Whether the resource can be used at all.
    pub spec_valid: bool,
}

/// Decides everything one round needs.
pub fn plan(s: &Snapshot) -> Plan {
    let name = s.network.metadata.name.clone().unwrap_or_default();
    let generation = s.network.metadata.generation.unwrap_or_default();
    let mut node_problems = s.node_problems.to_vec();
    let mut network_problems = s.network_problems.to_vec();
    let mut events = Vec::new();
    let mut run = None;
    let built = match s.built {
        Some(b) => b.clone(),
        None => convert::cluster_spec(&name, &s.network.spec, s.nodes, true),
    };
    let spec_valid = built.is_ok();
    match built {
        Err(problems) => {
            let message = join(problems.iter().map(|p| p.message.clone()));
            network_problems.extend(problems);
            if s.leader {
                events.push(PlannedEvent {
                    key: format!("invalid/{generation}"),
                    type_: EventType::Warning,
                    reason: convert::INVALID_SPEC,
                    action: "Validate",
                    note: format!(
                        "generation {generation} cannot be used, the nodes keep the last good network: {message}"
                    ),
                });
            }
        }
        Ok(cs) => {
            for (node, p) in &cs.left_out {
                if node == s.me {
                    node_problems.push(p.clone());
                } else if p.reason != "WaitingForKey" {
                    network_problems.push(p.clone());
                }
            }
            if cs.members.iter().any(|m| m == s.me) {
                run = Some(cs);
            } else if s.running.is_some() {
                node_problems.push(Problem {
                    reason: "LeftOut",
                    message: "this node is no longer in the network; it keeps running the last network until its agent restarts".into(),
                });
            }
        }
    }
    let spec_port = s
        .network
        .spec
        .listen_port
        .unwrap_or(crate::config::DEFAULT_PORT);
    if s.running.is_some() && spec_port != s.listen_port {
        node_problems.push(Problem {
            reason: "RestartNeeded",
            message: format!(
                "spec.listenPort changed to {spec_port}; the node listens on {} until its agent restarts",
                s.listen_port
            ),
        });
    }
    let me = s.nodes.iter().find(|n| n.name == s.me);
    let own_spec = s.key.map(|k| WireHubNodeSpec {
        network: name.clone(),
        public_key: Some(k.to_string()),
        endpoints: me
            .and_then(|n| n.internal_ip.as_deref())
            .map(|ip| vec![endpoint_text(ip, s.listen_port)])
            .unwrap_or_default(),
        overlay_ipv4: None,
        pod_cidr: None,
        pod_cidrs: Vec::new(),
    });
    if s.leader {
        // Other clusters' refusals and failures (super::mesh,
        // super::remote): one Warning each, naming the cluster.
        for p in network_problems
            .iter()
            .filter(|p| p.reason.starts_with("Remote"))
        {
            events.push(PlannedEvent {
                key: format!("remote/{}", p.message),
                type_: EventType::Warning,
                reason: p.reason,
                action: "JoinClusters",
                note: p.message.clone(),
            });
        }
    }
    let own_status = own_status(s, &node_problems);
    let network_status = s.leader.then(|| network_status(s, &network_problems));
    Plan {
        own_spec,
        own_status,
        run,
        network_status,
        events,
        node_problems,
        network_problems,
        spec_valid,
    }
}

/// `ip:port`, or `[ip]:port` for IPv6.
pub fn endpoint_text(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Whether the agent's own fields of its `WireHubNode` must be written:
/// the record is missing, or says something else than `desired`.
pub fn own_spec_differs(current: Option<&WireHubNode>, desired: &WireHubNodeSpec) -> bool {
    current.is_none_or(|r| {
        r.spec.network != desired.network
            || r.spec.public_key != desired.public_key
            || r.spec.endpoints != desired.endpoints
    })
}

/// Whether a node status must be written: it changed (handshake ages and
/// the write time aside), or the last write is a heartbeat old.
pub fn status_due(
    last: Option<&WireHubNodeStatus>,
    since_last: Duration,
    next: &WireHubNodeStatus,
) -> bool {
    let strip = |s: &WireHubNodeStatus| {
        let mut s = s.clone();
        s.last_update = None;
        if let Some(w) = s.paths.as_mut().and_then(|p| p.worst.as_mut()) {
            w.last_handshake_seconds = None;
        }
        s
    };
    last.is_none_or(|l| strip(l) != strip(next) || since_last >= HEARTBEAT)
}

/// Who a key is, for the status: a node name or a peer's hostname.
fn names(s: &Snapshot) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for p in s.running.iter().flat_map(|r| r.peers.iter()) {
        if let Some(h) = &p.hostname {
            m.insert(p.key.to_string(), h.clone());
        }
    }
    for n in s.nodes {
        if let Some(k) = n.key {
            m.insert(k.to_string(), n.name.clone());
        }
    }
    m
}

/// This node's status, from its node core's state.
fn own_status(s: &Snapshot, problems: &[Problem]) -> WireHubNodeStatus {
    let me = s.nodes.iter().find(|n| n.name == s.me);
    let name = s.network.metadata.name.as_deref().unwrap_or_default();
    let v6_first = convert::PodSubnets::from_spec(
        &s.network.spec,
        s.network.spec.subnet.parse().ok(),
        &convert::file_name(name),
    )
    .is_ok_and(|p| p.v6_first);
    let pod_cidrs: Vec<String> = me
        .map(|n| n.pod_cidrs(v6_first))
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut status = WireHubNodeStatus {
        pod_cidr: pod_cidrs.first().cloned(),
        pod_cidrs,
        observed_generation: s.running_generation,
        ..WireHubNodeStatus::default()
    };
    let members: HashSet<String> = s
        .running
        .map(|r| r.trusted().map(|p| p.key.to_string()).collect())
        .unwrap_or_default();
    if let Some(i) = s.inspect {
        status.nat = Some(i.nat.clone());
        status.overlay_ipv6 = i.ipv6.clone();
        let names = names(s);
        let peers: Vec<&control::PeerStatus> = i
            .peers
            .iter()
            .filter(|p| members.contains(&p.key))
            .collect();
        let cluster_keys: HashSet<String> = s
            .nodes
            .iter()
            .filter(|n| n.name != s.me)
            .filter_map(|n| n.key.map(|k| k.to_string()))
            .collect();
        let all_nodes_reached = peers
            .iter()
            .filter(|p| cluster_keys.contains(&p.key))
            .all(|p| !matches!(p.path, PathStatus::Unknown));
        status.ready = s.running.is_some() && all_nodes_reached;
        status.paths = Some(summary(&peers, &names));
    }
    let mut parts: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.reason, p.message))
        .collect();
    if s.running.is_none() {
        parts.push("the node is not running yet".into());
    }
    status.message = (!parts.is_empty()).then(|| truncate(&parts.join("; ")));
    status
}

/// Counts by kind, and the worst path: not reached, then relayed, then the
/// oldest handshake (ties by name).
fn summary(peers: &[&control::PeerStatus], names: &HashMap<String, String>) -> PathSummary {
    let mut out = PathSummary::default();
    let rank = |p: &control::PeerStatus| match p.path {
        PathStatus::Unknown => 2,
        PathStatus::Relayed { .. } => 1,
        PathStatus::Direct { .. } => 0,
    };
    let name_of = |p: &control::PeerStatus| {
        names
            .get(&p.key)
            .cloned()
            .or_else(|| p.hostname.clone())
            .unwrap_or_else(|| p.key.chars().take(10).collect())
    };
    let mut worst: Option<(&control::PeerStatus, String)> = None;
    for p in peers {
        match p.path {
            PathStatus::Direct { .. } => out.direct += 1,
            PathStatus::Relayed { .. } => out.relayed += 1,
            PathStatus::Unknown => out.unknown += 1,
        }
        let name = name_of(p);
        let key = |p: &control::PeerStatus, n: &str| {
            (
                rank(p),
                p.last_handshake_secs.unwrap_or(u64::MAX),
                std::cmp::Reverse(n.to_string()),
            )
        };
        if worst
            .as_ref()
            .is_none_or(|(w, wn)| key(p, &name) > key(w, wn))
        {
            worst = Some((p, name));
        }
    }
    out.worst = worst.map(|(p, name)| {
        let (path, via) = match &p.path {
            PathStatus::Direct { endpoint } => ("direct", Some(endpoint.clone())),
            PathStatus::Relayed { via } => ("relayed", via.first().map(|v| name_relay(v, names))),
            PathStatus::Unknown => ("unknown", None),
        };
        PeerPath {
            name,
            path: path.into(),
            via,
            last_handshake_seconds: p.last_handshake_secs,
        }
    });
    out
}

/// "KEY@addr" of a relay, with the relay's name for its key when known.
fn name_relay(v: &str, names: &HashMap<String, String>) -> String {
    match v.split_once('@') {
        Some((k, a)) => match names.iter().find(|(key, _)| key.starts_with(k)) {
            Some((_, n)) => format!("{n}@{a}"),
            None => v.to_string(),
        },
        None => v.to_string(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_MESSAGE).collect()
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

/// At most [`MAX_NAMED`] names, then how many more.
fn named(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_NAMED {
        s += &format!(" and {} more", names.len() - MAX_NAMED);
    }
    s
}

fn age(rfc3339: Option<&str>, now: Timestamp) -> Option<Duration> {
    let t: Timestamp = rfc3339?.parse().ok()?;
    now.duration_since(t).try_into().ok()
}

/// The network's status (leader): counts and conditions, from the nodes'
/// own statuses. O(1) in the cluster's size (messages name at most
/// [`MAX_NAMED`] nodes).
fn network_status(s: &Snapshot, problems: &[Problem]) -> WireHubNetworkStatus {
    let generation = s.network.metadata.generation.unwrap_or_default();
    let current = s.network.status.clone().unwrap_or_default();
    let selected: Vec<&ClusterNode> = s
        .nodes
        .iter()
        .filter(|n| n.selected(&s.network.spec.node_selector))
        .collect();
    let statuses: BTreeMap<&str, &WireHubNodeStatus> = s
        .records
        .iter()
        .filter_map(|r| Some((r.metadata.name.as_deref()?, r.status.as_ref()?)))
        .collect();
    // Nodes take part once their agent published a key: a selected node
    // where no agent runs is named, but does not hold the network back.
    let without_agent: Vec<String> = selected
        .iter()
        .filter(|n| n.key.is_none())
        .map(|n| n.name.clone())
        .collect();
    let members: Vec<&&ClusterNode> = selected.iter().filter(|n| n.key.is_some()).collect();
    let node_count = members.len() as i32;
    let mut ready = 0;
    let mut not_ready = Vec::new();
    let mut node_messages = Vec::new();
    for n in &members {
        let fresh = |st: &WireHubNodeStatus| {
            age(st.last_update.as_deref(), s.now).is_some_and(|a| a < STALE)
        };
        match statuses.get(n.name.as_str()) {
            Some(st) if st.ready && fresh(st) => ready += 1,
            Some(st) => {
                not_ready.push(n.name.clone());
                if let Some(m) = &st.message {
                    node_messages.push(format!("{}: {m}", n.name));
                } else if !fresh(st) {
                    node_messages.push(format!("{}: no word from its agent", n.name));
                }
            }
            None => not_ready.push(n.name.clone()),
        }
    }
    let no_agent_note = if without_agent.is_empty() {
        String::new()
    } else {
        format!(" (no agent yet on {})", named(&without_agent))
    };
    let invalid: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.reason == convert::INVALID_SPEC)
        .collect();
    let (ready_status, ready_reason, ready_message) = if node_count == 0 {
        ("False", "NoNodes", "no node takes part yet".to_string())
    } else if not_ready.is_empty() {
        (
            "True",
            "AllNodesReady",
            format!("{ready} of {node_count} nodes are up and reach each other{no_agent_note}"),
        )
    } else {
        (
            "False",
            "NodesNotReady",
            format!("not ready: {}{no_agent_note}", named(&not_ready)),
        )
    };
    let (deg_status, deg_reason, deg_message) = if !invalid.is_empty() {
        (
            "True",
            convert::INVALID_SPEC.to_string(),
            format!(
                "generation {generation} cannot be used, the nodes keep running the last good network: {}",
                join(invalid.iter().map(|p| p.message.clone()))
            ),
        )
    } else if let Some(p) = problems.first() {
        (
            "True",
            p.reason.to_string(),
            join(problems.iter().map(|p| p.message.clone())),
        )
    } else if !node_messages.is_empty() {
        (
            "True",
            "NodeProblems".to_string(),
            join(node_messages.iter().take(MAX_NAMED).cloned()),
        )
    } else if !not_ready.is_empty() {
        (
            "True",
            "NodesNotReady".to_string(),
            format!("not ready: {}", named(&not_ready)),
        )
    } else {
        (
            "False",
            "AsExpected".to_string(),
            "nothing is wrong".to_string(),
        )
    };
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        // The transition time stays while the status does.
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| s.now.to_string());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(truncate(message)),
            last_transition_time: Some(since),
            observed_generation: Some(generation),
        }
    };
    WireHubNetworkStatus {
        observed_generation: Some(generation),
        node_count: Some(node_count),
        ready_nodes: Some(ready),
        conditions: vec![
            condition("Ready", ready_status, ready_reason, &ready_message),
            condition("Degraded", deg_status, &deg_reason, &deg_message),
        ],
    }
}

#[cfg(test)]
mod tests;
