//! The custom resources (group `wirehub.io`, version `v1alpha1`, both
//! cluster-scoped): `WireHubNetwork`, what the network file carries plus
//! what a cluster needs, with O(1) status (counts, conditions); and
//! `WireHubNode`, one per Node, named after it and owned by it, written by
//! that node's agent (its key, endpoints, state and a summary of its paths)
//! and by the lease holder (the allocations it recorded). The doc comments
//! of the fields are the descriptions `kubectl explain` shows; the files of
//! `crds/` are generated from these types by `wh crd` (never edited by
//! hand). Never: a list that grows with the cluster inside one object
//! (remote clusters are listed in the spec, at most 8; their members are
//! read from their API servers, never copied into this cluster's objects).

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An IPv4 address in dotted decimal.
pub const IPV4_PATTERN: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";
/// An IPv4 network in CIDR notation.
pub const IPV4_CIDR_PATTERN: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$";
/// An IPv4 or IPv6 network in CIDR notation (IPv6 checked loosely here,
/// exactly by the agent).
pub const CIDR_PATTERN: &str = r"^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])|[0-9a-fA-F]*:[0-9a-fA-F:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))$";
/// A WireHub public key: 43 characters of URL-safe base64.
pub const KEY_PATTERN: &str = r"^[A-Za-z0-9_-]{43}$";
/// `host[:port]` or `[ipv6]:port`.
pub const ENDPOINT_PATTERN: &str =
    r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?)(:[0-9]{1,5})?$";
/// A node name of the network file.
pub const HOSTNAME_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$";

/// A WireHub overlay network for the nodes of this cluster: every
/// participating node runs the WireHub node (the `wh agent` DaemonSet),
/// routes its pod CIDRs (IPv4, or IPv4 and IPv6) over the overlay and
/// trusts the other nodes plus the external peers listed here.
// The printer columns repeat `type_`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "wirehub.io",
    version = "v1alpha1",
    kind = "WireHubNetwork",
    plural = "wirehubnetworks",
    singular = "wirehubnetwork",
    shortname = "whn",
    category = "wirehub",
    status = "WireHubNetworkStatus",
    doc = "A WireHub overlay network: the nodes of this cluster and the external peers they trust, over WireGuard with DHT discovery, NAT hole punching and relays.",
    printcolumn(
        name = "Subnet",
        type_ = "string",
        json_path = ".spec.subnet",
        description = "the overlay's IPv4 subnet"
    ),
    printcolumn(
        name = "Pod Subnets",
        type_ = "string",
        json_path = ".spec.podSubnets",
        description = "the cluster's pod subnets (dual-stack)"
    ),
    printcolumn(
        name = "Pod Subnet",
        type_ = "string",
        json_path = ".spec.podSubnet",
        description = "the cluster's pod subnet"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodeCount",
        description = "nodes taking part"
    ),
    printcolumn(
        name = "Ready Nodes",
        type_ = "integer",
        json_path = ".status.readyNodes",
        description = "nodes whose overlay is up"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "every node is up and reaches the others"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "why the network is degraded, if it is"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireHubNetworkSpec {
    /// The overlay's private IPv4 network (CIDR, /30 or larger). Cluster
    /// nodes take addresses from the top of it, or of nodeSubnet (recorded
    /// in each node's WireHubNode, so they never change); external peers
    /// without staticIp take addresses from the bottom (.2, .3, ...) in
    /// list order.
    #[schemars(pattern(IPV4_CIDR_PATTERN))]
    pub subnet: String,

    /// Proof of work every key of the network must meet: the number of
    /// leading zero bits of BLAKE2b-256(key || namespace). Nodes drop every
    /// message from a key below it. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub workbits: Option<u8>,

    /// Namespace of the proof of work. Default "public".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,

    /// The cluster's pod network (CIDR). Each node routes one
    /// block of it: Node.spec.podCIDRs' block of its family when the cluster
    /// allocates pod CIDRs, else a block the agents allocate and record in
    /// the node's WireHubNode (spec.podCidrs). For a dual-stack cluster use
    /// podSubnets; when both are set, podSubnet must be podSubnets[0] (as
    /// Node.spec.podCIDR is podCIDRs[0]). Required, in one of the two
    /// fields, when the cluster does not allocate pod CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(CIDR_PATTERN))]
    pub pod_subnet: Option<String>,

    /// The cluster's pod networks, at most one IPv4 and one IPv6, as
    /// kube-controller-manager's --cluster-cidr lists them: for example
    /// [10.244.0.0/16, fd00:10:244::/56]. The first is the pods' primary
    /// family (their status.podIP); every node routes a block of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(CIDR_PATTERN)), length(max = 2))]
    pub pod_subnets: Vec<String>,

    /// Prefix length of the IPv4 pod CIDR blocks the agents allocate from
    /// the IPv4 pod subnet. Default 24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 30))]
    pub pod_cidr_prefix: Option<u8>,

    /// Prefix length of the IPv6 pod CIDR blocks the agents allocate from
    /// the IPv6 pod subnet. Default 64 (kube-controller-manager's
    /// --node-cidr-mask-size-ipv6 default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 120))]
    pub pod_cidr_prefix_v6: Option<u8>,

    /// The UDP port every node listens on, for WireGuard and WireHub's
    /// control protocol alike. Default 62096. A change takes effect when the
    /// agents restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: Option<u16>,

    /// Labels a Node must have to take part (all of them). Empty: every
    /// node where the agent runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// DHT bootstrap nodes (for example public WireHub nodes, or another
    /// cluster's gateways). Empty: the nodes of this cluster bootstrap each
    /// other through their endpoints (InternalIP:listenPort).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_nodes: Vec<BootNode>,

    /// Peers outside the cluster: edge hosts running plain `wh up`, another
    /// cluster's nodes, relays. Trusted peers (role trust or router) get an
    /// overlay address and a tunnel to every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<ExternalPeer>,

    /// The part of subnet this cluster's nodes take their overlay addresses
    /// from (IPv4 CIDR inside subnet). Default: all of subnet. When clusters
    /// share the overlay (remoteClusters), give each a disjoint part: the
    /// agents refuse a remote node whose address lies in this one. Set it
    /// when the network is made: nodes outside it get a new address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IPV4_CIDR_PATTERN))]
    pub node_subnet: Option<String>,

    /// Other clusters running the same overlay (same network name, same
    /// subnet, disjoint nodeSubnet and pod subnets): every agent reads their
    /// WireHubNodes, read-only, from their API servers and adds their nodes
    /// as routers of their pod CIDRs. At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub remote_clusters: Vec<RemoteCluster>,
}

/// A name of a remote cluster: a DNS label.
pub const CLUSTER_NAME_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$";

/// Another cluster of the same overlay, read through its API server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCluster {
    /// A short name for the cluster (a DNS label, at most 32): it names the
    /// cluster in conditions and events and prefixes its nodes' names in
    /// the overlay.
    #[schemars(pattern(CLUSTER_NAME_PATTERN))]
    pub name: String,
    /// The Secret, in the agents' namespace, holding a kubeconfig of the
    /// remote cluster whose credentials may only get, list and watch
    /// wirehubnodes and wirehubnetworks (the chart's ClusterRole
    /// wirehub-remote-reader).
    pub kubeconfig_secret: SecretKey,
}

/// One key of a Secret in the agents' namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of its data holding the kubeconfig. Default "kubeconfig".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// A DHT bootstrap node: a `boot` line of the network file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootNode {
    /// The node's public key (43 characters of URL-safe base64, as `wh
    /// pubkey` prints it).
    #[schemars(pattern(KEY_PATTERN))]
    pub key: String,
    /// Where it listens: host[:port] (port default 62096), [ipv6]:port.
    #[schemars(pattern(ENDPOINT_PATTERN))]
    pub endpoint: String,
}

/// The peer's role: trust (a member of the overlay: an overlay address
/// and a tunnel to every node), router (a member that routes the subnets of
/// routes), or peer (known but untrusted: a relay or DHT node). Default:
/// router when routes are given, else trust.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    /// A trusted member of the overlay (an overlay address and a tunnel).
    Trust,
    /// A trusted member that routes subnets behind it (see routes).
    Router,
    /// Known but untrusted: a relay or DHT node with a known endpoint.
    Peer,
}

/// A peer outside the cluster: a `trust`, `router` or `peer` line of the
/// network file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPeer {
    /// Its name in the overlay (letters, digits, '-', '_'; starts with a
    /// letter; at most 63).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(HOSTNAME_PATTERN))]
    pub hostname: Option<String>,
    /// Its public key (43 characters of URL-safe base64).
    #[schemars(pattern(KEY_PATTERN))]
    pub key: String,
    /// trust, router or peer (default: router when routes are given, else
    /// trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<PeerRole>,
    /// A fixed overlay address inside subnet (trusted peers only).
    /// Recommended: peers without one are numbered from the bottom of the
    /// subnet in list order, so inserting a peer before them would renumber
    /// them (the agents refuse such a change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IPV4_PATTERN))]
    pub static_ip: Option<String>,
    /// Where it can be reached, if it has a fixed address: host[:port].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(ENDPOINT_PATTERN))]
    pub endpoint: Option<String>,
    /// Subnets it routes (a site's LAN, another cluster's pod CIDR): the
    /// nodes send traffic for them through it. Router peers only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(CIDR_PATTERN)))]
    pub routes: Vec<String>,
}

/// What the agents report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireHubNetworkStatus {
    /// The generation of the spec the conditions are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes taking part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Nodes whose overlay is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<i32>,
    /// Ready: every node is up and reaches the others. Degraded: something
    /// is wrong (an invalid spec, a refused change, a node down); the
    /// reason and message say what.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A condition of the network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A CamelCase word saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a person needs to know, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation of the spec this condition is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One cluster node's part of the network, named after its Node (which
/// owns it: it goes when the Node goes). Its agent writes the key and the
/// endpoints, the holder of the network's Lease records the overlay address
/// and the pod CIDRs once; the status is what the agent sees. The other
/// agents trust it only as far as it matches what they pinned for the Node
/// (see docs/threat-model.md).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "wirehub.io",
    version = "v1alpha1",
    kind = "WireHubNode",
    plural = "wirehubnodes",
    singular = "wirehubnode",
    shortname = "whnode",
    category = "wirehub",
    status = "WireHubNodeStatus",
    doc = "One node of a WireHub network, named after its Node: its key, endpoints, overlay address, pod CIDRs, NAT, readiness and a summary of its paths.",
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.network",
        description = "the WireHubNetwork the node runs"
    ),
    printcolumn(
        name = "Overlay IP",
        type_ = "string",
        json_path = ".spec.overlayIpv4",
        description = "the node's overlay IPv4 address"
    ),
    printcolumn(
        name = "Pod CIDRs",
        type_ = "string",
        json_path = ".status.podCidrs",
        description = "the pod CIDRs the node routes, one per family"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoints[0]",
        description = "where the node listens"
    ),
    printcolumn(
        name = "NAT",
        type_ = "string",
        json_path = ".status.nat",
        description = "the NAT the node found itself behind"
    ),
    printcolumn(
        name = "Ready",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "the node's overlay is up and reaches every other node"
    ),
    printcolumn(
        name = "Direct",
        type_ = "integer",
        json_path = ".status.paths.direct",
        description = "peers reached directly"
    ),
    printcolumn(
        name = "Relayed",
        type_ = "integer",
        json_path = ".status.paths.relayed",
        description = "peers reached through a relay"
    ),
    printcolumn(
        name = "Unknown",
        type_ = "integer",
        json_path = ".status.paths.unknown",
        description = "peers not reached (yet)"
    ),
    printcolumn(
        name = "Worst Peer",
        type_ = "string",
        json_path = ".status.paths.worst.name",
        description = "the peer reached the worst way"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireHubNodeSpec {
    /// The WireHubNetwork the node runs.
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
    /// The node's WireHub public key (43 characters of URL-safe base64).
    /// Written by the node's agent; the other agents keep the first key they
    /// saw for the Node and refuse another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(KEY_PATTERN))]
    pub public_key: Option<String>,
    /// Where the node listens (InternalIP:listenPort first). Written by the
    /// node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(ENDPOINT_PATTERN)), length(max = 8))]
    pub endpoints: Vec<String>,
    /// The node's overlay IPv4 address, recorded once by the lease holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IPV4_PATTERN))]
    pub overlay_ipv4: Option<String>,
    /// The IPv4 pod CIDR the lease holder allocated from the network's IPv4
    /// pod subnet, when the cluster does not set one in Node.spec.podCIDRs.
    /// Recorded once; also in podCidrs (kept for agents that read only
    /// this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IPV4_CIDR_PATTERN))]
    pub pod_cidr: Option<String>,
    /// The pod CIDRs the lease holder allocated, at most one per family
    /// (from the network's pod subnets, for each family Node.spec.podCIDRs
    /// lacks). Recorded once each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(CIDR_PATTERN)), length(max = 2))]
    pub pod_cidrs: Vec<String>,
}

/// What a node's agent sees.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireHubNodeStatus {
    /// The node's overlay is up and reaches every other node.
    #[serde(default)]
    pub ready: bool,
    /// The node's first pod CIDR (of the primary family), as podCidrs[0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// The pod CIDRs the node routes, one per family, the primary first:
    /// for each family Node.spec.podCIDRs' block, else spec.podCidrs'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// The node's overlay IPv6 address (derived from its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_ipv6: Option<String>,
    /// The NAT the node found itself behind, as `wh show` says it: DIRECT
    /// (a public address), NAT easy (endpoint-independent mapping), NAT
    /// hard (symmetric), UNKNOWN (not decided yet); with the UPnP mapping
    /// when the router gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// How the node reaches the network's trusted peers, in counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathSummary>,
    /// What is wrong on this node, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// The generation of the network's spec this node runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the agent last wrote this status (RFC 3339); rewritten at least
    /// once a minute, so an older one means the agent is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

/// Paths by kind, and the worst one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathSummary {
    /// Peers reached directly.
    pub direct: u32,
    /// Peers reached through a relay.
    pub relayed: u32,
    /// Peers not reached (yet).
    pub unknown: u32,
    /// The peer reached the worst way: not reached before relayed before
    /// direct, then the oldest handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<PeerPath>,
}

/// How a node reaches one peer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPath {
    /// The peer's node name or hostname (else the start of its key).
    pub name: String,
    /// direct, relayed or unknown.
    pub path: String,
    /// The endpoint (direct) or the relay in use (relayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Seconds since the last WireGuard handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake_seconds: Option<u64>,
}
