//! Several clusters, one overlay: the pure half. Owns the merge of other
//! clusters' members (as their `WireHubNode`s tell them, read from their
//! API servers by [`super::remote`]) into the network this cluster runs,
//! and every check that keeps the merge from routing wrongly.
//!
//! Promises: a remote node becomes a `router` of its pod CIDRs with its
//! overlay address pinned, appended after every local peer (so no local
//! peer is renumbered), named `<cluster>-<node>` when that name is free;
//! a remote node whose key, overlay address or pod CIDRs meet anything
//! already in the network (this cluster's nodes, nodeSubnet or pod subnets,
//! the resource's peers, an earlier remote node) is refused with a
//! [`Problem`] naming the cluster, the node and the addresses or CIDRs, and
//! the local network is kept as it was; a remote cluster whose
//! `WireHubNetwork` of this name is missing or disagrees with ours
//! ([`network_mismatch`]) has all its nodes refused with one problem. The result never holds two peers
//! with overlapping pod CIDRs or the same overlay address (property-tested).
//! Bounded: at most [`MAX_REMOTE_CLUSTERS`] clusters and
//! [`MAX_REMOTE_NODES`] nodes per cluster are taken, the rest counted as
//! dropped. Never: I/O, a change to a local peer.

use super::convert::{
    ClusterNode, ClusterSpec, PodSubnets, Problem, file_name, node_subnet, overlay_v6,
    resource_peers,
};
use super::crd::WireHubNetworkSpec;
use crate::config::{Claims, NetworkSpec, PeerSpec, Role};
use crate::keys::PublicKey;
use ipnet::{IpNet, Ipv4Net};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The most remote clusters a network lists (spec.remoteClusters).
pub const MAX_REMOTE_CLUSTERS: usize = 8;
/// The most nodes taken from one remote cluster.
pub const MAX_REMOTE_NODES: usize = 4096;

/// A reason of a refused remote node: its pod CIDR overlaps something.
pub const REMOTE_POD_CIDR_CONFLICT: &str = "RemotePodCIDRConflict";
/// ... its overlay address is taken or outside this cluster's reach.
pub const REMOTE_ADDRESS_CONFLICT: &str = "RemoteAddressConflict";
/// ... its key is already in the network.
pub const REMOTE_KEY_CONFLICT: &str = "RemoteKeyConflict";
/// ... the network with the remote nodes does not validate.
pub const REMOTE_CLUSTER_REFUSED: &str = "RemoteClusterRefused";

/// ... its `WireHubNetwork` of this name is missing or disagrees with ours
/// (subnet, workbits, namespace, overlapping pod subnets or nodeSubnets).
pub const REMOTE_NETWORK_MISMATCH: &str = "RemoteNetworkMismatch";

/// What a remote cluster's `WireHubNetwork` of this network's name says,
/// as its watch last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RemoteNetwork {
    /// Not listed yet: the cluster's nodes wait, quietly.
    #[default]
    Unknown,
    /// The remote cluster has no network of this name.
    Absent,
    /// Its spec.
    Present(Box<WireHubNetworkSpec>),
}

/// One remote cluster's members as read from its API server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteMembers {
    /// The cluster's name in spec.remoteClusters.
    pub cluster: String,
    /// Its `WireHubNetwork` of this network's name: its nodes are taken
    /// only when it agrees with ours ([`network_mismatch`]).
    pub network: RemoteNetwork,
    /// Its nodes ([`super::convert::record_nodes`] of its `WireHubNode`s).
    pub nodes: Vec<ClusterNode>,
    /// Its nodes not even read: beyond the watch's store at its last list.
    pub over_limit: usize,
}

/// What the merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The local network with the remote nodes appended.
    pub cluster: ClusterSpec,
    /// `cluster/node` of every remote node taken, in the spec's order.
    pub remote_members: Vec<String>,
    /// Every remote node refused, and why (loud: status and events).
    pub refused: Vec<Problem>,
    /// Remote nodes not taken yet (no key, address or pod CIDR): quiet.
    pub waiting: usize,
    /// Nodes beyond [`MAX_REMOTE_NODES`] and clusters beyond
    /// [`MAX_REMOTE_CLUSTERS`], dropped (counted, by reason).
    pub dropped_over_node_limit: usize,
    pub dropped_over_cluster_limit: usize,
}

fn refuse(reason: &'static str, message: String) -> Problem {
    Problem { reason, message }
}

/// The network `local` (built by [`super::convert::cluster_spec`] from
/// `spec`) with the members of `remotes` added as routers of their pod
/// CIDRs, each checked against everything already in it. Clusters are taken
/// in the order given, their nodes in name order.
pub fn merge(local: ClusterSpec, spec: &WireHubNetworkSpec, remotes: &[RemoteMembers]) -> Merged {
    let mut out = Merged {
        cluster: local,
        remote_members: Vec::new(),
        refused: Vec::new(),
        waiting: 0,
        dropped_over_node_limit: 0,
        dropped_over_cluster_limit: remotes.len().saturating_sub(MAX_REMOTE_CLUSTERS),
    };
    if remotes.is_empty() {
        return out;
    }
    let net = &out.cluster.spec;
    let pods = PodSubnets::from_spec(spec, net.subnet, &net.name).unwrap_or_default();
    let local_slice = super::convert::node_subnet(spec, net.subnet)
        .ok()
        .flatten()
        // Without a slice of its own, this cluster may number any address.
        .or(net.subnet);
    let v6 = overlay_v6(&net.name);
    let mut keys: HashSet<PublicKey> = net.peers.iter().map(|p| p.key).collect();
    let mut addresses: HashMap<Ipv4Addr, String> = HashMap::new();
    for (p, ip) in net.peers.iter().zip(net.ipv4_addresses()) {
        if let Some(ip) = ip {
            addresses.insert(ip, peer_name(p));
        }
    }
    let mut names: HashSet<String> = net
        .peers
        .iter()
        .filter_map(|p| p.hostname.clone())
        .collect();
    names.insert(net.name.clone());
    // Every route already in the network, with who routes it.
    let mut owners: Vec<String> = Vec::new();
    let mut routes = Claims::default();
    for p in &net.peers {
        for r in &p.routes {
            routes.claim(*r, owners.len());
        }
        owners.push(peer_name(p));
    }
    let local_pools: Vec<IpNet> = pods.all().collect();
    let mut added = Vec::new();
    for remote in remotes.iter().take(MAX_REMOTE_CLUSTERS) {
        match network_mismatch(&remote.cluster, &remote.network, net, spec) {
            Ok(true) => {}
            Ok(false) => {
                out.waiting += remote.nodes.len();
                continue;
            }
            Err(p) => {
                out.refused.push(p);
                continue;
            }
        }
        let mut nodes: Vec<&ClusterNode> = remote.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        out.dropped_over_node_limit +=
            nodes.len().saturating_sub(MAX_REMOTE_NODES) + remote.over_limit;
        for n in nodes.into_iter().take(MAX_REMOTE_NODES) {
            let who = format!("cluster {}'s node {}", remote.cluster, n.name);
            let (Some(key), Some(ip), Some(_)) = (n.key, n.overlay_ip, n.pod_cidr()) else {
                out.waiting += 1;
                continue;
            };
            let cidrs = n.pod_cidrs(pods.v6_first);
            let problem = check(
                &who,
                key,
                ip,
                &cidrs,
                &Context {
                    keys: &keys,
                    addresses: &addresses,
                    subnet: net.subnet,
                    local_slice,
                    local_pools: &local_pools,
                    v6,
                    routes: &routes,
                    owners: &owners,
                },
            );
            if let Some(p) = problem {
                out.refused.push(p);
                continue;
            }
            let name = file_name(&format!("{}-{}", remote.cluster, n.name));
            let hostname = names.insert(name.clone()).then_some(name);
            keys.insert(key);
            addresses.insert(ip, who.clone());
            for c in &cidrs {
                routes.claim(*c, owners.len());
            }
            owners.push(who);
            out.remote_members
                .push(format!("{}/{}", remote.cluster, n.name));
            added.push(PeerSpec {
                role: Role::Router,
                hostname,
                static_ip: Some(ip),
                key,
                endpoint: n.endpoint.clone(),
                routes: cidrs,
            });
        }
    }
    let local_peers = out.cluster.spec.peers.len();
    out.cluster.spec.peers.extend(added);
    match out.cluster.spec.validate() {
        Ok(()) => {}
        Err(errors) => {
            // Keep the local network: a remote cluster never breaks it.
            out.cluster.spec.peers.truncate(local_peers);
            out.refused.push(refuse(
                REMOTE_CLUSTER_REFUSED,
                format!(
                    "the remote nodes {} are left out: with them the network does not validate: {}",
                    out.remote_members.join(", "),
                    errors.join("; ")
                ),
            ));
            out.remote_members.clear();
        }
    }
    out
}

/// Whether the nodes of remote cluster `cluster`, whose `WireHubNetwork`
/// of this name is `remote`, may join the network `net` built from
/// `spec`: Ok(false) while its network is not listed yet; a
/// [`REMOTE_NETWORK_MISMATCH`] naming the cluster and both values when it
/// is missing, invalid there, or differs in subnet, workbits or namespace
/// (its nodes could never talk to ours), or when its pod subnets or its
/// nodeSubnet overlap ours (they would route wrongly).
pub fn network_mismatch(
    cluster: &str,
    remote: &RemoteNetwork,
    net: &NetworkSpec,
    spec: &WireHubNetworkSpec,
) -> Result<bool, Problem> {
    let mismatch = |m: String| {
        Err(refuse(
            REMOTE_NETWORK_MISMATCH,
            format!("remote cluster {cluster}'s nodes are left out: {m}"),
        ))
    };
    let theirs = match remote {
        RemoteNetwork::Unknown => return Ok(false),
        RemoteNetwork::Absent => {
            return mismatch(format!(
                "it has no WireHubNetwork named {}: create it there with the same subnet, workbits and namespace",
                net.name
            ));
        }
        RemoteNetwork::Present(theirs) => theirs,
    };
    let their_net = match resource_peers(&net.name, theirs) {
        Ok((their_net, _, _)) => their_net,
        Err(problems) => {
            let why: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            return mismatch(format!(
                "its WireHubNetwork {} is invalid there: {}",
                net.name,
                why.join("; ")
            ));
        }
    };
    let show = |s: Option<Ipv4Net>| s.map_or_else(|| "none".to_string(), |s| s.to_string());
    if their_net.subnet != net.subnet {
        return mismatch(format!(
            "its spec.subnet is {}, ours {}: both clusters must share one subnet",
            show(their_net.subnet),
            show(net.subnet)
        ));
    }
    if their_net.workbits != net.workbits {
        return mismatch(format!(
            "its spec.workbits is {}, ours {}: keys valid there would be refused here",
            their_net.workbits, net.workbits
        ));
    }
    if their_net.namespace != net.namespace {
        return mismatch(format!(
            "its spec.namespace is '{}', ours '{}'",
            their_net.namespace, net.namespace
        ));
    }
    let ours = PodSubnets::from_spec(spec, net.subnet, &net.name).unwrap_or_default();
    let their_pods = PodSubnets::from_spec(theirs, net.subnet, &net.name).unwrap_or_default();
    for t in their_pods.all() {
        if let Some(o) = ours.all().find(|o| crate::config::overlaps(&t, o)) {
            return mismatch(format!(
                "its pod subnet {t} overlaps ours {o}: clusters need disjoint pod subnets"
            ));
        }
    }
    let our_slice = spec
        .node_subnet
        .as_ref()
        .and(node_subnet(spec, net.subnet).ok().flatten());
    let their_slice = theirs
        .node_subnet
        .as_ref()
        .and(node_subnet(theirs, net.subnet).ok().flatten());
    if let (Some(o), Some(t)) = (our_slice, their_slice)
        && (o.contains(&t.network()) || t.contains(&o.network()))
    {
        return mismatch(format!(
            "its spec.nodeSubnet {t} overlaps ours {o}: give each cluster a disjoint nodeSubnet"
        ));
    }
    Ok(true)
}

/// What a remote node is checked against.
struct Context<'a> {
    keys: &'a HashSet<PublicKey>,
    addresses: &'a HashMap<Ipv4Addr, String>,
    subnet: Option<Ipv4Net>,
    local_slice: Option<Ipv4Net>,
    local_pools: &'a [IpNet],
    v6: IpNet,
    routes: &'a Claims,
    owners: &'a [String],
}

/// Why the remote node `who` cannot join, if it cannot.
fn check(
    who: &str,
    key: PublicKey,
    ip: Ipv4Addr,
    cidrs: &[IpNet],
    cx: &Context,
) -> Option<Problem> {
    if cx.keys.contains(&key) {
        return Some(refuse(
            REMOTE_KEY_CONFLICT,
            format!("{who}'s key {} is already in the network", key.short(10)),
        ));
    }
    if let Some(s) = cx.subnet.filter(|s| !s.contains(&ip)) {
        return Some(refuse(
            REMOTE_ADDRESS_CONFLICT,
            format!(
                "{who}'s overlay address {ip} lies outside spec.subnet {s}: both clusters must share one subnet"
            ),
        ));
    }
    if let Some(s) = cx.local_slice.filter(|s| s.contains(&ip)) {
        return Some(refuse(
            REMOTE_ADDRESS_CONFLICT,
            format!(
                "{who}'s overlay address {ip} lies in this cluster's node addresses {s} (spec.nodeSubnet): give each cluster a disjoint nodeSubnet"
            ),
        ));
    }
    if let Some(other) = cx.addresses.get(&ip) {
        return Some(refuse(
            REMOTE_ADDRESS_CONFLICT,
            format!("{who}'s overlay address {ip} is {other}'s"),
        ));
    }
    for c in cidrs {
        let bad = |m: String| Some(refuse(REMOTE_POD_CIDR_CONFLICT, m));
        if let Some(problem) = crate::config::routed_subnet_problem(c) {
            return bad(format!("{who}'s pod CIDR {c} {problem}"));
        }
        if let Some(pool) = cx
            .local_pools
            .iter()
            .find(|p| crate::config::overlaps(c, p))
        {
            return bad(format!(
                "{who}'s pod CIDR {c} overlaps this cluster's pod subnet {pool}: clusters need disjoint pod subnets"
            ));
        }
        if let Some(s) = cx
            .subnet
            .filter(|s| crate::config::overlaps(c, &IpNet::V4(*s)))
        {
            return bad(format!(
                "{who}'s pod CIDR {c} overlaps the overlay subnet {s}"
            ));
        }
        if crate::config::overlaps(c, &cx.v6) {
            return bad(format!(
                "{who}'s pod CIDR {c} overlaps the overlay's IPv6 addresses {}",
                cx.v6
            ));
        }
        if let Some(other) = cx
            .routes
            .first_overlap(c)
            .and_then(|(_, i)| cx.owners.get(i))
        {
            return bad(format!("{who}'s pod CIDR {c} overlaps a route of {other}"));
        }
    }
    None
}

/// A peer's name for messages: its hostname, else the start of its key.
fn peer_name(p: &PeerSpec) -> String {
    p.hostname
        .clone()
        .unwrap_or_else(|| format!("peer {}", p.key.short(10)))
}

#[cfg(test)]
mod tests;
