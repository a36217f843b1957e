//! Conversions between the `WireHubNetwork` resource and the network file's
//! [`NetworkSpec`], both ways, and the spec a cluster node runs: every
//! participating node as a `router` of its pod CIDRs (one per family of the
//! cluster: IPv4, or IPv4 and IPv6, the primary family first), plus the
//! resource's boot nodes and external peers. No I/O here; [`NetworkMemo`]
//! keeps the last network built (one) so an agent does not build it again
//! for changes that leave it as it was, and only extends it when one node
//! joins (the result always equals a full build).

use super::crd::{
    BootNode, ExternalPeer, PeerRole, WireHubNetwork, WireHubNetworkSpec, WireHubNode,
};
use crate::config::{Claims, DEFAULT_PORT, Endpoint, NetworkSpec, PeerSpec, Role};
use crate::keys::{DEFAULT_NAMESPACE, DEFAULT_WORKBITS, PublicKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Default prefix length of the IPv4 pod CIDR blocks the agents allocate.
pub const DEFAULT_POD_CIDR_PREFIX: u8 = 24;
/// Default prefix length of the IPv6 pod CIDR blocks the agents allocate
/// (kube-controller-manager's `--node-cidr-mask-size-ipv6` default).
pub const DEFAULT_POD_CIDR_PREFIX_V6: u8 = 64;

/// One thing wrong with a resource or the cluster's state, for status and
/// events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A CamelCase word (the condition's and the event's reason).
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The reason of problems that make the resource unusable as a whole.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// The cluster's pod subnets, at most one per family, as the resource gives
/// them (`podSubnet`, `podSubnets`), checked, with the block sizes the
/// agents allocate from each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSubnets {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
    /// IPv6 is the primary family (listed first): its block comes first in
    /// a node's routes, hence in its CNI ranges and its pods' addresses.
    pub v6_first: bool,
    /// Prefix length of the IPv4 blocks.
    pub prefix_v4: u8,
    /// Prefix length of the IPv6 blocks.
    pub prefix_v6: u8,
}

impl Default for PodSubnets {
    fn default() -> Self {
        PodSubnets {
            v4: None,
            v6: None,
            v6_first: false,
            prefix_v4: DEFAULT_POD_CIDR_PREFIX,
            prefix_v6: DEFAULT_POD_CIDR_PREFIX_V6,
        }
    }
}

impl PodSubnets {
    /// Every pod subnet, IPv4 first.
    pub fn all(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.v6.map(IpNet::V6))
    }

    /// The pod subnets of `spec`, or every reason they cannot be used (each
    /// naming the field). `subnet` is the overlay's IPv4 subnet (when it
    /// parses) and `network` the network file's name (its IPv6 overlay
    /// prefix derives from it): no pod subnet may overlap them.
    pub fn from_spec(
        spec: &WireHubNetworkSpec,
        subnet: Option<Ipv4Net>,
        network: &str,
    ) -> Result<PodSubnets, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = PodSubnets {
            prefix_v4: spec.pod_cidr_prefix.unwrap_or(DEFAULT_POD_CIDR_PREFIX),
            prefix_v6: spec
                .pod_cidr_prefix_v6
                .unwrap_or(DEFAULT_POD_CIDR_PREFIX_V6),
            ..PodSubnets::default()
        };
        if let (Some(one), Some(first)) = (&spec.pod_subnet, spec.pod_subnets.first())
            && one.trim() != first.trim()
        {
            problems.push(format!(
                "spec.podSubnet {one} is not spec.podSubnets[0] {first}: set podSubnets alone, or podSubnet as its first entry"
            ));
        }
        let listed: Vec<(String, &String)> = if spec.pod_subnets.is_empty() {
            spec.pod_subnet
                .iter()
                .map(|p| ("spec.podSubnet".to_string(), p))
                .collect()
        } else {
            spec.pod_subnets
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("spec.podSubnets[{i}]"), p))
                .collect()
        };
        if listed.len() > 2 {
            problems.push(format!(
                "spec.podSubnets has {} entries: at most two, one IPv4 and one IPv6",
                listed.len()
            ));
        }
        let overlay_v6 = overlay_v6(network);
        for (i, (field, text)) in listed.iter().enumerate() {
            let n = match text.trim().parse::<IpNet>() {
                Ok(n) if n.trunc() == n => n,
                Ok(n) => {
                    problems.push(format!(
                        "{field} {text} has host bits set; did you mean {}?",
                        n.trunc()
                    ));
                    continue;
                }
                Err(_) => {
                    problems.push(format!(
                        "{field} '{text}' is not a network such as 10.244.0.0/16 or fd00:10:244::/56"
                    ));
                    continue;
                }
            };
            if let Some(problem) = crate::config::routed_subnet_problem(&n) {
                problems.push(format!("{field} {n} {problem}"));
                continue;
            }
            match n {
                IpNet::V4(v4) => {
                    if let Some(s) = subnet.filter(|s| crate::config::overlaps(&n, &IpNet::V4(*s)))
                    {
                        problems.push(format!("{field} {n} overlaps spec.subnet {s}"));
                    } else if out.v4.is_some() {
                        problems.push(format!(
                            "{field} {n} is a second IPv4 pod subnet: give one IPv4 and one IPv6"
                        ));
                    } else if out.prefix_v4 < v4.prefix_len() {
                        problems.push(format!(
                            "spec.podCidrPrefix /{} is wider than {field} {n}: use /{} or longer",
                            out.prefix_v4,
                            v4.prefix_len()
                        ));
                    } else {
                        out.v4 = Some(v4);
                    }
                }
                IpNet::V6(v6) => {
                    if crate::config::overlaps(&n, &overlay_v6) {
                        problems.push(format!(
                            "{field} {n} overlaps the overlay's IPv6 addresses {overlay_v6}"
                        ));
                    } else if out.v6.is_some() {
                        problems.push(format!(
                            "{field} {n} is a second IPv6 pod subnet: give one IPv4 and one IPv6"
                        ));
                    } else if out.prefix_v6 < v6.prefix_len() {
                        problems.push(format!(
                            "spec.podCidrPrefixV6 /{} is wider than {field} {n}: use /{} or longer",
                            out.prefix_v6,
                            v6.prefix_len()
                        ));
                    } else {
                        out.v6 = Some(v6);
                        out.v6_first = i == 0;
                    }
                }
            }
        }
        if out.v6.is_some() && out.v4.is_none() && problems.is_empty() {
            problems.push(format!(
                "the pod subnets have no IPv4 network: wirehub-cni gives every pod an IPv4 address (IPv6-only pods are not supported); add one, as in podSubnets: [10.244.0.0/16, {}]",
                out.v6.map(|n| n.to_string()).unwrap_or_default()
            ));
        }
        if out.prefix_v4 > 30 {
            problems.push(format!(
                "spec.podCidrPrefix /{} leaves no room for pods: use /30 or shorter",
                out.prefix_v4
            ));
        }
        if out.prefix_v6 > 120 {
            problems.push(format!(
                "spec.podCidrPrefixV6 /{} leaves too little room for pods: use /120 or shorter",
                out.prefix_v6
            ));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Whether the resource names no pod subnet (the cluster allocates).
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

/// The overlay's IPv6 addresses of the network named `network` (in the
/// network file): the /48 its ULA prefix starts (docs/addressing.md).
pub fn overlay_v6(network: &str) -> IpNet {
    let mut prefix = [0u8; 16];
    prefix[..8].copy_from_slice(&crate::keys::ula_prefix(network));
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(prefix), 48).unwrap_or_default())
}

/// What the agents know of one cluster node: from its Node object (name,
/// UID, labels, Node.spec.podCIDRs, InternalIP) and its `WireHubNode` (key,
/// endpoint, recorded overlay address and pod CIDRs). One pod CIDR per
/// family at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    /// The Node object's UID (new when a node registers again).
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub key: Option<PublicKey>,
    pub endpoint: Option<Endpoint>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// Node.spec.podCIDRs' IPv4 block when set (the cluster allocates).
    pub spec_pod_cidr: Option<Ipv4Net>,
    /// Node.spec.podCIDRs' IPv6 block when set.
    pub spec_pod_cidr_v6: Option<Ipv6Net>,
    /// The IPv4 pod CIDR the lease holder recorded (WireHubNode
    /// spec.podCidrs, spec.podCidr).
    pub recorded_pod_cidr: Option<Ipv4Net>,
    /// The IPv6 pod CIDR the lease holder recorded (spec.podCidrs).
    pub recorded_pod_cidr_v6: Option<Ipv6Net>,
    /// The Node's InternalIP.
    pub internal_ip: Option<String>,
}

/// Whether `record` may speak for `node` in `network`: it is named after
/// the Node, owned by this very Node object (its UID: a record left by a
/// deleted Node of the same name does not count) and about this network.
pub fn record_belongs(record: &WireHubNode, node: &Node, network: &str) -> bool {
    let uid = node.metadata.uid.as_deref();
    record.metadata.name == node.metadata.name
        && record.spec.network == network
        && record
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "Node" && o.api_version == "v1" && Some(o.uid.as_str()) == uid)
}

impl ClusterNode {
    /// The IPv4 pod CIDR the node routes: the cluster's, else the
    /// recorded one.
    pub fn pod_cidr(&self) -> Option<Ipv4Net> {
        self.spec_pod_cidr.or(self.recorded_pod_cidr)
    }

    /// The IPv6 pod CIDR the node routes: the cluster's, else the
    /// recorded one.
    pub fn pod_cidr_v6(&self) -> Option<Ipv6Net> {
        self.spec_pod_cidr_v6.or(self.recorded_pod_cidr_v6)
    }

    /// Every pod CIDR the node routes, IPv4 first unless `v6_first`.
    pub fn pod_cidrs(&self, v6_first: bool) -> Vec<IpNet> {
        let v4 = self.pod_cidr().map(IpNet::V4);
        let v6 = self.pod_cidr_v6().map(IpNet::V6);
        let (a, b) = if v6_first { (v6, v4) } else { (v4, v6) };
        a.into_iter().chain(b).collect()
    }

    /// Reads what matters from a Node object alone (no WireHub state yet).
    pub fn from_node(node: &Node) -> ClusterNode {
        let meta = &node.metadata;
        let spec_cidrs: Vec<IpNet> = node
            .spec
            .iter()
            .flat_map(|s| {
                s.pod_cidr
                    .iter()
                    .chain(s.pod_cidrs.iter().flatten())
                    .filter_map(|c| c.trim().parse::<IpNet>().ok())
            })
            .collect();
        let (spec_pod_cidr, spec_pod_cidr_v6) = split_families(&spec_cidrs);
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        ClusterNode {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            spec_pod_cidr,
            spec_pod_cidr_v6,
            internal_ip,
            ..ClusterNode::default()
        }
    }

    /// The Node with what its `WireHubNode` says, when that record belongs
    /// to it ([`record_belongs`]); a record that does not is ignored (the
    /// node then waits for its key). Unparsable fields count as missing.
    pub fn from_objects(node: &Node, record: Option<&WireHubNode>, network: &str) -> ClusterNode {
        let mut c = ClusterNode::from_node(node);
        if let Some(r) = record.filter(|r| record_belongs(r, node, network)) {
            c.take_record(r);
        }
        c
    }

    /// Fills the key, endpoint and allocations from a record.
    fn take_record(&mut self, r: &WireHubNode) {
        let s = &r.spec;
        self.key = s.public_key.as_deref().and_then(|k| k.trim().parse().ok());
        self.endpoint = s
            .endpoints
            .iter()
            .find_map(|e| Endpoint::parse(e.trim()).ok());
        self.overlay_ip = s
            .overlay_ipv4
            .as_deref()
            .and_then(|i| i.trim().parse().ok());
        let listed: Vec<IpNet> = s
            .pod_cidrs
            .iter()
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let (v4, v6) = split_families(&listed);
        // podCidr first: the field agents before dual-stack write and read.
        self.recorded_pod_cidr = s
            .pod_cidr
            .as_deref()
            .and_then(|c| c.trim().parse().ok())
            .or(v4);
        self.recorded_pod_cidr_v6 = v6;
    }

    /// Whether the node takes part in a network with this node selector.
    pub fn selected(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }
}

/// The first IPv4 and the first IPv6 network of `nets`.
pub fn split_families(nets: &[IpNet]) -> (Option<Ipv4Net>, Option<Ipv6Net>) {
    let v4 = nets.iter().find_map(|n| match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    });
    let v6 = nets.iter().find_map(|n| match n {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    });
    (v4, v6)
}

/// A Kubernetes name turned into a name of the network file (letters,
/// digits, '-', '_', starting with a letter, at most 63): dots become '-',
/// a leading digit gets an 'n' in front.
pub fn file_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert(0, 'n');
    }
    s.truncate(crate::config::MAX_HOSTNAME);
    s
}

/// The header of the network (name, subnet, workbits, namespace) and the
/// resource's own peers (boot nodes first, then the external peers), or why
/// it cannot be used.
pub fn resource_peers(
    name: &str,
    spec: &WireHubNetworkSpec,
) -> Result<(NetworkSpec, Vec<PeerSpec>, Vec<PeerSpec>), Vec<Problem>> {
    let mut problems = Vec::new();
    let mut bad = |m: String| problems.push(Problem::new(INVALID_SPEC, m));
    let mut net = NetworkSpec::new(file_name(name));
    match spec.subnet.parse::<Ipv4Net>() {
        Ok(s) if s.trunc() != s => bad(format!(
            "spec.subnet {} has host bits set; did you mean {}?",
            spec.subnet,
            s.trunc()
        )),
        Ok(s) if s.prefix_len() > 30 => bad(format!(
            "spec.subnet {} is too small: use /30 or larger",
            spec.subnet
        )),
        Ok(s) => net.subnet = Some(s),
        Err(_) => bad(format!(
            "spec.subnet '{}' is not an IPv4 network such as 10.0.0.0/24",
            spec.subnet
        )),
    }
    net.workbits = spec.workbits.unwrap_or(DEFAULT_WORKBITS);
    if net.workbits > 64 {
        bad(format!("spec.workbits {} is above 64", net.workbits));
    }
    net.namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if net.namespace.is_empty() || net.namespace.contains(char::is_whitespace) {
        bad(format!(
            "spec.namespace '{}' must be one word without spaces",
            net.namespace
        ));
    }
    if let Err(e) = PodSubnets::from_spec(spec, net.subnet, &net.name) {
        e.into_iter().for_each(&mut bad);
    }
    if let Err(e) = node_subnet(spec, net.subnet) {
        bad(e);
    }
    let mut cluster_names = HashSet::new();
    for (i, r) in spec.remote_clusters.iter().enumerate() {
        if !cluster_names.insert(r.name.as_str()) {
            bad(format!(
                "spec.remoteClusters[{i}].name '{}' is listed twice",
                r.name
            ));
        }
        if r.name.is_empty()
            || r.name.len() > 32
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bad(format!(
                "spec.remoteClusters[{i}].name '{}' is not a DNS label of at most 32 characters",
                r.name
            ));
        }
    }
    if spec.remote_clusters.len() > super::mesh::MAX_REMOTE_CLUSTERS {
        bad(format!(
            "spec.remoteClusters has {} entries: at most {}",
            spec.remote_clusters.len(),
            super::mesh::MAX_REMOTE_CLUSTERS
        ));
    }
    let mut boots = Vec::new();
    for (i, b) in spec.boot_nodes.iter().enumerate() {
        match boot_peer(b) {
            Ok(p) => boots.push(p),
            Err(e) => bad(format!("spec.bootNodes[{i}]: {e}")),
        }
    }
    let mut externals = Vec::new();
    for (i, p) in spec.peers.iter().enumerate() {
        match external_peer(p) {
            Ok(p) => externals.push(p),
            Err(e) => bad(format!("spec.peers[{i}]: {e}")),
        }
    }
    if problems.is_empty() {
        Ok((net, boots, externals))
    } else {
        Err(problems)
    }
}

/// The part of the overlay subnet this cluster's nodes take addresses
/// from: spec.nodeSubnet, which must lie inside spec.subnet, else the whole
/// subnet (None when the subnet does not parse).
pub fn node_subnet(
    spec: &WireHubNetworkSpec,
    subnet: Option<Ipv4Net>,
) -> Result<Option<Ipv4Net>, String> {
    let Some(text) = &spec.node_subnet else {
        return Ok(subnet);
    };
    let n = match text.trim().parse::<Ipv4Net>() {
        Ok(n) if n.trunc() == n => n,
        Ok(n) => {
            return Err(format!(
                "spec.nodeSubnet {text} has host bits set; did you mean {}?",
                n.trunc()
            ));
        }
        Err(_) => {
            return Err(format!(
                "spec.nodeSubnet '{text}' is not an IPv4 network such as 10.0.0.128/25"
            ));
        }
    };
    match subnet {
        Some(s) if !s.contains(&n) => {
            Err(format!("spec.nodeSubnet {n} lies outside spec.subnet {s}"))
        }
        Some(_) if n.prefix_len() > 30 => Err(format!(
            "spec.nodeSubnet {n} is too small: use /30 or larger"
        )),
        _ => Ok(Some(n)),
    }
}

fn parse_key(k: &str) -> Result<PublicKey, String> {
    k.parse::<PublicKey>()
        .map_err(|e| format!("key '{k}' is not a public key: {e}"))
}

fn boot_peer(b: &BootNode) -> Result<PeerSpec, String> {
    Ok(PeerSpec {
        role: Role::Boot,
        hostname: None,
        static_ip: None,
        key: parse_key(&b.key)?,
        endpoint: Some(Endpoint::parse(&b.endpoint)?),
        routes: Vec::new(),
    })
}

fn external_peer(p: &ExternalPeer) -> Result<PeerSpec, String> {
    let role = match p.role {
        Some(PeerRole::Trust) => Role::Trust,
        Some(PeerRole::Router) => Role::Router,
        Some(PeerRole::Peer) => Role::Peer,
        None if p.routes.is_empty() => Role::Trust,
        None => Role::Router,
    };
    if role != Role::Router && !p.routes.is_empty() {
        return Err(format!("routes are for router peers; this one is '{role}'"));
    }
    let static_ip = match &p.static_ip {
        None => None,
        Some(ip) => Some(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| format!("staticIp '{ip}' is not an IPv4 address"))?,
        ),
    };
    let endpoint = match &p.endpoint {
        None => None,
        Some(e) => Some(Endpoint::parse(e)?),
    };
    let mut routes = Vec::new();
    for r in &p.routes {
        match r.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => routes.push(n),
            Ok(n) => {
                return Err(format!(
                    "route {r} has host bits set; did you mean {}?",
                    n.trunc()
                ));
            }
            Err(_) => return Err(format!("route '{r}' is not a network")),
        }
    }
    Ok(PeerSpec {
        role,
        hostname: p.hostname.clone(),
        static_ip,
        key: parse_key(&p.key)?,
        endpoint,
        routes,
    })
}

/// Why a node's pod CIDR cannot be routed, if it cannot: it must lie inside
/// the resource's pod subnet of its family (when there is one), be a subnet
/// any router may claim, and stay clear of the overlay's own addresses
/// (IPv4 and IPv6). A node's pod CIDR comes from its Node object, which a
/// compromised agent may write: a CIDR such as `0.0.0.0/1` would otherwise
/// become every node's route.
fn pod_cidr_problem(cidr: IpNet, pods: &PodSubnets, net: &NetworkSpec) -> Option<String> {
    let pool = match cidr {
        IpNet::V4(_) => pods.v4.map(IpNet::V4),
        IpNet::V6(_) => pods.v6.map(IpNet::V6),
    };
    if let Some(ps) = pool.filter(|ps| !ps.contains(&cidr)) {
        return Some(format!("lies outside the pod subnet {ps}"));
    }
    if let Some(problem) = crate::config::routed_subnet_problem(&cidr) {
        return Some(problem);
    }
    if let Some(s) = net
        .subnet
        .filter(|s| crate::config::overlaps(&cidr, &IpNet::V4(*s)))
    {
        return Some(format!("overlaps the overlay subnet {s}"));
    }
    let v6 = overlay_v6(&net.name);
    crate::config::overlaps(&cidr, &v6)
        .then(|| format!("overlaps the overlay's IPv6 addresses {v6}"))
}

/// The network a cluster runs, built from the resource and the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub spec: NetworkSpec,
    /// Names of the nodes in the spec, in its order.
    pub members: Vec<String>,
    /// Nodes left out, and why (waiting for a key or an allocation,
    /// conflicts). Not fatal.
    pub left_out: Vec<(String, Problem)>,
}

/// Builds the spec every node of the cluster runs: the resource's boot nodes,
/// then every selected node that has a key, an overlay address and an IPv4
/// pod CIDR (sorted by name, each a `router` of its pod CIDRs, IPv6 too
/// once it has one, with its overlay
/// address pinned), then the external peers in the resource's order.
/// `use_selector` is false when the nodes come from the resource's status
/// (they take part by definition).
///
/// Fails, with every reason, when the resource cannot be used as a whole;
/// the agents then keep running the last good spec.
pub fn cluster_spec(
    name: &str,
    spec: &WireHubNetworkSpec,
    nodes: &[ClusterNode],
    use_selector: bool,
) -> Result<ClusterSpec, Vec<Problem>> {
    NetworkMemo::default().cluster_spec(name, spec, nodes, use_selector)
}

/// [`cluster_spec`], remembering the last network built and what from (the
/// resource and the nodes that can take part): when only nodes still
/// waiting for a key or an allocation changed (a Node registered, an agent
/// published its key), the network is not built and checked again; when
/// one node more takes part (a join) and nothing else changed, the network
/// is extended by that node, checking only what it can break. Every agent
/// rebuilds at every change, so this spares a cluster O(N) work per agent
/// for most changes, and turns a join's full build and validation into
/// one pass over the peers. Bounded: it holds one network. Gives exactly
/// what [`cluster_spec`] gives.
#[derive(Debug, Default)]
pub struct NetworkMemo {
    inputs: Option<(String, WireHubNetworkSpec, Vec<ClusterNode>)>,
    built: Option<Result<ClusterSpec, Vec<Problem>>>,
    builds: u64,
    extended: u64,
}

impl NetworkMemo {
    /// What [`cluster_spec`] gives for these inputs.
    pub fn cluster_spec(
        &mut self,
        name: &str,
        spec: &WireHubNetworkSpec,
        nodes: &[ClusterNode],
        use_selector: bool,
    ) -> Result<ClusterSpec, Vec<Problem>> {
        let mut sorted: Vec<&ClusterNode> = nodes
            .iter()
            .filter(|n| !use_selector || n.selected(&spec.node_selector))
            .collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut waiting = Vec::new();
        let mut complete = Vec::new();
        for n in sorted {
            match waiting_for(n) {
                Some(p) => waiting.push((n.name.clone(), p)),
                None => complete.push(n.clone()),
            }
        }
        let inputs = (name.to_string(), spec.clone(), complete);
        let built = match (&self.inputs, &self.built) {
            (Some(seen), Some(built)) if *seen == inputs => built.clone(),
            _ => {
                let extended = match (&self.inputs, &self.built) {
                    (Some(seen), Some(Ok(built))) if seen.0 == inputs.0 && seen.1 == inputs.1 => {
                        one_more(&seen.2, &inputs.2)
                            .and_then(|added| add_one(name, spec, built, &seen.2, added))
                    }
                    _ => None,
                };
                let built = match extended {
                    Some(cs) => {
                        self.extended = self.extended.saturating_add(1);
                        Ok(cs)
                    }
                    None => {
                        self.builds = self.builds.saturating_add(1);
                        build(name, spec, &inputs.2)
                    }
                };
                self.inputs = Some(inputs);
                self.built = Some(built.clone());
                built
            }
        };
        built.map(|mut cs| {
            // In name order, as the nodes are taken.
            cs.left_out.extend(waiting);
            cs.left_out.sort_by(|a, b| a.0.cmp(&b.0));
            cs
        })
    }

    /// How many times the whole network was built (not reused, not
    /// extended by one node).
    pub fn builds(&self) -> u64 {
        self.builds
    }

    /// How many times the network was extended by one node.
    pub fn extended(&self) -> u64 {
        self.extended
    }
}

/// The node inserted, when `now` is `before` with one node inserted.
fn one_more<'a>(before: &[ClusterNode], now: &'a [ClusterNode]) -> Option<&'a ClusterNode> {
    if now.len() != before.len() + 1 {
        return None;
    }
    let i = before
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .unwrap_or(before.len());
    (before[i..] == now[i + 1..]).then(|| &now[i])
}

/// Why a node cannot take part yet: no key (its agent has not started),
/// or no overlay address or no IPv4 pod CIDR (not allocated yet; every pod
/// gets an IPv4 address). A node without its IPv6 block takes part with
/// its IPv4 one until the block is recorded: a network that gains an IPv6
/// pod subnet drops no node meanwhile.
fn waiting_for(n: &ClusterNode) -> Option<Problem> {
    if n.key.is_none() {
        return Some(Problem::new(
            "WaitingForKey",
            format!(
                "node {} has no WireHub key yet (its agent has not started)",
                n.name
            ),
        ));
    }
    let what = if n.overlay_ip.is_none() {
        "overlay address"
    } else if n.pod_cidr().is_none() {
        "IPv4 pod CIDR"
    } else {
        return None;
    };
    Some(Problem::new(
        "WaitingForAllocation",
        format!("node {} has no {what} yet", n.name),
    ))
}

/// The network of the resource and `sorted`: selected nodes, in name
/// order, none of them waiting ([`waiting_for`]).
fn build(
    name: &str,
    spec: &WireHubNetworkSpec,
    sorted: &[ClusterNode],
) -> Result<ClusterSpec, Vec<Problem>> {
    let (mut net, boots, externals) = resource_peers(name, spec)?;
    let listen_port = spec.listen_port.unwrap_or(DEFAULT_PORT);
    // resource_peers checked them.
    let pods = PodSubnets::from_spec(spec, net.subnet, &net.name).unwrap_or_default();
    let external_keys: HashSet<PublicKey> = boots.iter().chain(&externals).map(|p| p.key).collect();
    let external_ips: HashSet<Ipv4Addr> = externals.iter().filter_map(|p| p.static_ip).collect();
    let external_names: HashSet<&str> = externals
        .iter()
        .filter_map(|p| p.hostname.as_deref())
        .collect();
    let network = net.name.clone();
    let lines = RouterLines {
        listen_port,
        external_names: &external_names,
        network: &network,
    };
    let mut left_out = Vec::new();
    let mut members = Vec::new();
    let mut node_peers = Vec::new();
    let mut seen_keys: HashMap<PublicKey, String> = HashMap::new();
    let mut seen_ips: HashMap<Ipv4Addr, String> = HashMap::new();
    // Pod CIDRs of the nodes taken so far, by their index in `members`.
    let mut seen_cidrs = Claims::default();
    let mut leave = |n: &ClusterNode, reason: &'static str, m: String| {
        left_out.push((n.name.clone(), Problem::new(reason, m)));
    };
    for n in sorted {
        // waiting_for() took the others out.
        let cidrs = n.pod_cidrs(pods.v6_first);
        let (Some(key), Some(ip), Some(_)) = (n.key, n.overlay_ip, n.pod_cidr()) else {
            continue;
        };
        if let Some((cidr, problem)) = cidrs
            .iter()
            .find_map(|c| pod_cidr_problem(*c, &pods, &net).map(|p| (c, p)))
        {
            leave(
                n,
                "PodCIDRRefused",
                format!("node {}'s pod CIDR {cidr} {problem}", n.name),
            );
            continue;
        }
        if external_keys.contains(&key) {
            leave(
                n,
                "KeyConflict",
                format!(
                    "node {}'s key {} is also a peer of spec.bootNodes or spec.peers",
                    n.name,
                    key.short(10)
                ),
            );
            continue;
        }
        if let Some(other) = seen_keys.get(&key) {
            leave(
                n,
                "KeyConflict",
                format!(
                    "nodes {other} and {} have the same key {}",
                    n.name,
                    key.short(10)
                ),
            );
            continue;
        }
        if external_ips.contains(&ip) {
            leave(
                n,
                "AddressConflict",
                format!(
                    "node {}'s overlay address {ip} is also a staticIp of spec.peers",
                    n.name
                ),
            );
            continue;
        }
        if let Some(other) = seen_ips.get(&ip) {
            leave(
                n,
                "AddressConflict",
                format!(
                    "nodes {other} and {} have the same overlay address {ip}",
                    n.name
                ),
            );
            continue;
        }
        if let Some((cidr, other)) = cidrs.iter().find_map(|c| {
            seen_cidrs
                .first_overlap(c)
                .and_then(|(_, i)| members.get(i))
                .map(|other| (c, other))
        }) {
            leave(
                n,
                "PodCIDRConflict",
                format!("node {}'s pod CIDR {cidr} overlaps node {other}'s", n.name),
            );
            continue;
        }
        seen_keys.insert(key, n.name.clone());
        seen_ips.insert(ip, n.name.clone());
        for c in &cidrs {
            seen_cidrs.claim(*c, members.len());
        }
        members.push(n.name.clone());
        node_peers.push(lines.of(n, key, ip, cidrs));
    }
    net.peers = boots;
    net.peers.extend(node_peers);
    net.peers.extend(externals);
    if let Err(errors) = net.validate() {
        return Err(errors
            .into_iter()
            .map(|e| Problem::new(INVALID_SPEC, e))
            .collect());
    }
    Ok(ClusterSpec {
        spec: net,
        members,
        left_out,
    })
}

/// What every node's `router` line is made with: the port nodes listen on
/// and the names a node must not take (an external peer's, the network's).
struct RouterLines<'a> {
    listen_port: u16,
    external_names: &'a HashSet<&'a str>,
    network: &'a str,
}

impl RouterLines<'_> {
    /// The `router` line of a node that takes part: its pod CIDRs routed
    /// (the primary family first: the node's CNI ranges follow this order),
    /// its overlay address pinned, named after it unless an external peer
    /// or the network has that name, reached at its endpoint, else its
    /// InternalIP.
    fn of(&self, n: &ClusterNode, key: PublicKey, ip: Ipv4Addr, cidrs: Vec<IpNet>) -> PeerSpec {
        let hostname = file_name(&n.name);
        let hostname = (!self.external_names.contains(hostname.as_str())
            && hostname != self.network)
            .then_some(hostname);
        let endpoint = n.endpoint.clone().or_else(|| {
            n.internal_ip
                .as_ref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| Endpoint {
                    host: ip.to_string(),
                    port: self.listen_port,
                })
        });
        PeerSpec {
            role: Role::Router,
            hostname,
            static_ip: Some(ip),
            key,
            endpoint,
            routes: cidrs,
        }
    }
}

/// The network of `built` (built from the resource and `before`) with one
/// node more, `added`, checking only what that node can break; `None`
/// when it might change anything else (it conflicts with a node, a peer or
/// the resource, or the spec would not pass validation), and the whole
/// network must be built.
fn add_one(
    name: &str,
    spec: &WireHubNetworkSpec,
    built: &ClusterSpec,
    before: &[ClusterNode],
    added: &ClusterNode,
) -> Option<ClusterSpec> {
    let (net, boots, externals) = resource_peers(name, spec).ok()?;
    let pods = PodSubnets::from_spec(spec, net.subnet, &net.name).ok()?;
    let cidrs = added.pod_cidrs(pods.v6_first);
    let (Some(key), Some(ip), Some(_)) = (added.key, added.overlay_ip, added.pod_cidr()) else {
        return None;
    };
    if cidrs
        .iter()
        .any(|c| pod_cidr_problem(*c, &pods, &net).is_some())
    {
        return None;
    }
    let overlap = |o: &ClusterNode| {
        o.pod_cidrs(pods.v6_first)
            .iter()
            .any(|c| cidrs.iter().any(|a| crate::config::overlaps(a, c)))
    };
    // Any node, taking part or left out: what it conflicts with depends on
    // the order, and so might its reason to be left out.
    let conflict = before
        .iter()
        .any(|o| o.key == Some(key) || o.overlay_ip == Some(ip) || overlap(o))
        || boots.iter().chain(&externals).any(|p| p.key == key)
        || externals.iter().any(|p| p.static_ip == Some(ip));
    if conflict {
        return None;
    }
    let external_names: HashSet<&str> = externals
        .iter()
        .filter_map(|p| p.hostname.as_deref())
        .collect();
    let listen_port = spec.listen_port.unwrap_or(DEFAULT_PORT);
    let at = built
        .members
        .binary_search_by(|m| m.as_str().cmp(&added.name))
        .err()?;
    let mut out = built.clone();
    let index = boots.len() + at;
    out.spec.peers.insert(
        index,
        RouterLines {
            listen_port,
            external_names: &external_names,
            network: &net.name,
        }
        .of(added, key, ip, cidrs),
    );
    out.members.insert(at, added.name.clone());
    out.spec.valid_with_added(index).then_some(out)
}

/// The nodes of a network as its `WireHubNode`s tell them (for printing
/// the network file of an external host, which has no Node objects to
/// check them against): the pod CIDRs the node reports routing, else the
/// recorded ones.
pub fn record_nodes(network: &str, records: &[WireHubNode]) -> Vec<ClusterNode> {
    records
        .iter()
        .filter(|r| r.spec.network == network)
        .map(|r| {
            let mut c = ClusterNode {
                name: r.metadata.name.clone().unwrap_or_default(),
                ..ClusterNode::default()
            };
            c.take_record(r);
            if let Some(st) = &r.status {
                let reported: Vec<IpNet> = st
                    .pod_cidrs
                    .iter()
                    .chain(&st.pod_cidr)
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                (c.spec_pod_cidr, c.spec_pod_cidr_v6) = split_families(&reported);
            }
            c
        })
        .collect()
}

/// The network file an external host (an edge host running plain `wh up`,
/// another cluster's gateway) uses to join this network: the resource's
/// peers plus every node of its `WireHubNode`s.
pub fn resource_to_network(
    res: &WireHubNetwork,
    records: &[WireHubNode],
) -> Result<ClusterSpec, Vec<Problem>> {
    let name = res.metadata.name.clone().unwrap_or_default();
    cluster_spec(&name, &res.spec, &record_nodes(&name, records), false)
}

/// A network file as a resource: boot lines become spec.bootNodes; trust,
/// router and peer lines spec.peers. Alias lines have no place in a
/// cluster: they are left out, with a warning each.
pub fn network_to_resource(net: &NetworkSpec) -> Result<(WireHubNetwork, Vec<String>), String> {
    let Some(subnet) = net.subnet else {
        return Err(format!(
            "network {} has no subnet; a WireHubNetwork needs one",
            net.name
        ));
    };
    let mut warnings = Vec::new();
    let mut spec = WireHubNetworkSpec {
        subnet: subnet.to_string(),
        workbits: (net.workbits != DEFAULT_WORKBITS).then_some(net.workbits),
        namespace: (net.namespace != DEFAULT_NAMESPACE).then(|| net.namespace.clone()),
        pod_subnet: None,
        pod_subnets: Vec::new(),
        pod_cidr_prefix: None,
        pod_cidr_prefix_v6: None,
        listen_port: None,
        node_selector: BTreeMap::new(),
        boot_nodes: Vec::new(),
        peers: Vec::new(),
        node_subnet: None,
        remote_clusters: Vec::new(),
    };
    for p in &net.peers {
        let role = match p.role {
            Role::Boot => {
                match &p.endpoint {
                    Some(e) => spec.boot_nodes.push(BootNode {
                        key: p.key.to_string(),
                        endpoint: e.to_string(),
                    }),
                    None => warnings.push(format!(
                        "boot {} has no endpoint: left out",
                        p.key.short(10)
                    )),
                }
                continue;
            }
            Role::Alias => {
                warnings.push(format!(
                    "alias {} has no place in a cluster: left out",
                    p.key.short(10)
                ));
                continue;
            }
            Role::Trust => PeerRole::Trust,
            Role::Router => PeerRole::Router,
            Role::Peer => PeerRole::Peer,
        };
        spec.peers.push(ExternalPeer {
            hostname: p.hostname.clone(),
            key: p.key.to_string(),
            role: Some(role),
            static_ip: p.static_ip.map(|i| i.to_string()),
            endpoint: p.endpoint.as_ref().map(|e| e.to_string()),
            routes: p.routes.iter().map(|r| r.to_string()).collect(),
        });
    }
    let mut res = WireHubNetwork::new(&net.name, spec);
    res.status = None;
    Ok((res, warnings))
}

/// The overlay addresses a spec gives, by key (for allocation).
pub fn addresses_in_use(spec: &NetworkSpec) -> HashSet<Ipv4Addr> {
    spec.ipv4_addresses().into_iter().flatten().collect()
}
