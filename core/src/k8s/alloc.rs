//! Overlay addresses and pod CIDRs for cluster nodes. One agent at a time
//! (the holder of the network's Lease) allocates, and records the result on
//! the Node, so a restart, or another agent, always finds the same values.
//! A node gets a pod CIDR of each family of the cluster's pod subnets
//! (IPv4, or IPv4 and IPv6) that its Node object does not give. [`Written`]
//! keeps what the holder wrote until its watch shows it, so it never gives
//! one address or block twice while its watch lags. No I/O here.

use super::convert::{ClusterNode, PodSubnets, Problem};
use crate::config::FIRST_HOST;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a node needs recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub node: String,
    /// A new overlay address (None: it has one).
    pub overlay_ip: Option<Ipv4Addr>,
    /// A new IPv4 pod CIDR (None: it has one, the cluster gives it one, or
    /// the cluster has no IPv4 pod subnet).
    pub pod_cidr: Option<Ipv4Net>,
    /// A new IPv6 pod CIDR (the same for IPv6).
    pub pod_cidr_v6: Option<Ipv6Net>,
}

impl Allocation {
    fn is_empty(&self) -> bool {
        self.overlay_ip.is_none() && self.pod_cidr.is_none() && self.pod_cidr_v6.is_none()
    }
}

/// The highest free host address of `subnet`: cluster nodes take addresses
/// from the top, so external peers numbered from the bottom never meet them.
pub fn next_overlay_ip(subnet: Ipv4Net, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let low = u32::from(subnet.network()).saturating_add(FIRST_HOST);
    let high = u32::from(subnet.broadcast()).checked_sub(1)?;
    (low..=high)
        .rev()
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

/// The first block of `/prefix` in `pool` that overlaps none of `taken`
/// (either family: blocks of the other family never overlap). Jumps past
/// each taken block instead of walking the pool's blocks one by one, so it
/// looks at no more than `taken.len() + 1` candidates, even in an IPv6 pool
/// of 2^64 blocks.
pub fn next_pod_cidr(pool: IpNet, prefix: u8, taken: &[IpNet]) -> Option<IpNet> {
    let bits = pool.max_prefix_len();
    if prefix < pool.prefix_len() || prefix > bits {
        return None;
    }
    let num = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let size = 1u128.checked_shl(u32::from(bits - prefix))?;
    let end = num(pool.broadcast());
    let same_family = |t: &&IpNet| {
        matches!(
            (t, pool),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        )
    };
    let ranges: Vec<(u128, u128)> = taken
        .iter()
        .filter(same_family)
        .map(|t| (num(t.network()), num(t.broadcast())))
        .collect();
    let mut at = num(pool.network());
    loop {
        let last = at.checked_add(size - 1)?;
        let blocked = ranges
            .iter()
            .filter(|(lo, hi)| *lo <= last && *hi >= at)
            .map(|(_, hi)| *hi)
            .max();
        let Some(hi) = blocked else {
            return match pool {
                IpNet::V4(_) => Ipv4Net::new(Ipv4Addr::from(u32::try_from(at).ok()?), prefix)
                    .ok()
                    .map(IpNet::V4),
                IpNet::V6(_) => Ipv6Net::new(Ipv6Addr::from(at), prefix).ok().map(IpNet::V6),
            };
        };
        at = (hi / size).checked_add(1)?.checked_mul(size)?;
        if at > end {
            return None;
        }
    }
}

/// What every selected node with a key still lacks, given what is in use:
/// `in_use` holds every overlay address of the current network (external
/// peers, static and numbered). A pod CIDR of each family of `pods` that
/// the node's Node object does not give. Nodes are served in name order.
pub fn plan(
    subnet: Ipv4Net,
    pods: &PodSubnets,
    nodes: &[&ClusterNode],
    in_use: &HashSet<Ipv4Addr>,
) -> (Vec<Allocation>, Vec<Problem>) {
    let mut taken_ips: HashSet<Ipv4Addr> = in_use.clone();
    taken_ips.extend(nodes.iter().filter_map(|n| n.overlay_ip));
    let mut taken_cidrs: Vec<IpNet> = nodes.iter().flat_map(|n| n.pod_cidrs(false)).collect();
    let mut sorted: Vec<&&ClusterNode> = nodes.iter().filter(|n| n.key.is_some()).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let failed = |message: String| Problem {
        reason: "AllocationFailed",
        message,
    };
    for n in sorted {
        let mut a = Allocation {
            node: n.name.clone(),
            ..Allocation::default()
        };
        if n.overlay_ip.is_none_or(|ip| !subnet.contains(&ip)) {
            match next_overlay_ip(subnet, &taken_ips) {
                Some(ip) => {
                    taken_ips.insert(ip);
                    a.overlay_ip = Some(ip);
                }
                None => problems.push(failed(format!(
                    "no overlay address left in {subnet} for node {}; use a larger subnet",
                    n.name
                ))),
            }
        }
        if pods.is_empty() && n.pod_cidr().is_none() && n.pod_cidr_v6().is_none() {
            problems.push(failed(format!(
                "node {} has no spec.podCIDRs and the network has no spec.podSubnets to allocate from",
                n.name
            )));
        }
        let wanted = [
            (
                pods.v4.map(IpNet::V4),
                pods.prefix_v4,
                n.pod_cidr().is_none(),
            ),
            (
                pods.v6.map(IpNet::V6),
                pods.prefix_v6,
                n.pod_cidr_v6().is_none(),
            ),
        ];
        for (pool, prefix, lacking) in wanted {
            let Some(pool) = pool.filter(|_| lacking) else {
                continue;
            };
            match next_pod_cidr(pool, prefix, &taken_cidrs) {
                Some(c) => {
                    taken_cidrs.push(c);
                    match c {
                        IpNet::V4(c) => a.pod_cidr = Some(c),
                        IpNet::V6(c) => a.pod_cidr_v6 = Some(c),
                    }
                }
                None => problems.push(failed(format!(
                    "no /{prefix} block left in pod subnet {pool} for node {}",
                    n.name
                ))),
            }
        }
        if !a.is_empty() {
            out.push(a);
        }
    }
    (out, problems)
}

/// The allocations this lease holder wrote that its view of the records
/// (a watch, which may lag) may not show yet. Planning from a view that
/// lacks them gave one address to two nodes a few seconds apart (seen at
/// N = 300 under load). Bounded: one entry per node still in the view.
#[derive(Debug, Default)]
pub struct Written {
    by_node: HashMap<String, Allocation>,
}

impl Written {
    /// Notes an allocation written.
    pub fn note(&mut self, a: &Allocation) {
        self.by_node.insert(a.node.clone(), a.clone());
    }

    /// `nodes` with what was written and is not shown yet filled in (to
    /// plan from); forgets what the view shows now and the nodes gone.
    pub fn fill(&mut self, nodes: &[ClusterNode]) -> Vec<ClusterNode> {
        let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        self.by_node.retain(|name, _| names.contains(name.as_str()));
        let mut out = nodes.to_vec();
        for n in &mut out {
            let Some(a) = self.by_node.get(&n.name) else {
                continue;
            };
            let shown = (a.overlay_ip.is_none() || n.overlay_ip.is_some())
                && (a.pod_cidr.is_none() || n.pod_cidr().is_some())
                && (a.pod_cidr_v6.is_none() || n.pod_cidr_v6().is_some());
            if shown {
                self.by_node.remove(&n.name);
            } else {
                n.overlay_ip = n.overlay_ip.or(a.overlay_ip);
                n.recorded_pod_cidr = n.recorded_pod_cidr.or(a.pod_cidr);
                n.recorded_pod_cidr_v6 = n.recorded_pod_cidr_v6.or(a.pod_cidr_v6);
            }
        }
        out
    }

    /// How many allocations are not shown yet.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
