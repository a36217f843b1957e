//! Overlay addresses and pod CIDRs for cluster nodes. One agent at a time
//! (the holder of the network's Lease) allocates, and records the result on
//! the Node, so a restart, or another agent, always finds the same values.
//! [`Written`] keeps what the holder wrote until its watch shows it, so it
//! never gives one address twice while its watch lags. No I/O here.

use super::convert::{ClusterNode, Problem};
use crate::config::FIRST_HOST;
use ipnet::Ipv4Net;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// What a node needs recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub node: String,
    /// A new overlay address (None: it has one).
    pub overlay_ip: Option<Ipv4Addr>,
    /// A new pod CIDR (None: it has one, or the cluster gives it one).
    pub pod_cidr: Option<Ipv4Net>,
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

/// The first block of `/prefix` in `pool` that overlaps none of `taken`.
pub fn next_pod_cidr(pool: Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    if prefix < pool.prefix_len() || prefix > 32 {
        return None;
    }
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    pool.subnets(prefix)
        .ok()?
        .find(|c| !taken.iter().any(|t| overlaps(c, t)))
}

/// What every selected node with a key still lacks, given what is in use:
/// `in_use` holds every overlay address of the current network (external
/// peers, static and numbered). Nodes are served in name order.
pub fn plan(
    subnet: Ipv4Net,
    pod_subnet: Option<Ipv4Net>,
    pod_prefix: u8,
    nodes: &[&ClusterNode],
    in_use: &HashSet<Ipv4Addr>,
) -> (Vec<Allocation>, Vec<Problem>) {
    let mut taken_ips: HashSet<Ipv4Addr> = in_use.clone();
    taken_ips.extend(nodes.iter().filter_map(|n| n.overlay_ip));
    let mut taken_cidrs: Vec<Ipv4Net> = nodes.iter().filter_map(|n| n.pod_cidr()).collect();
    let mut sorted: Vec<&&ClusterNode> = nodes.iter().filter(|n| n.key.is_some()).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for n in sorted {
        let mut a = Allocation {
            node: n.name.clone(),
            overlay_ip: None,
            pod_cidr: None,
        };
        if n.overlay_ip.is_none_or(|ip| !subnet.contains(&ip)) {
            match next_overlay_ip(subnet, &taken_ips) {
                Some(ip) => {
                    taken_ips.insert(ip);
                    a.overlay_ip = Some(ip);
                }
                None => problems.push(Problem {
                    reason: "AllocationFailed",
                    message: format!(
                        "no overlay address left in {subnet} for node {}; use a larger subnet",
                        n.name
                    ),
                }),
            }
        }
        if n.pod_cidr().is_none() {
            match pod_subnet {
                None => problems.push(Problem {
                    reason: "AllocationFailed",
                    message: format!(
                        "node {} has no spec.podCIDR and the network has no spec.podSubnet to allocate one from",
                        n.name
                    ),
                }),
                Some(pool) => match next_pod_cidr(pool, pod_prefix, &taken_cidrs) {
                    Some(c) => {
                        taken_cidrs.push(c);
                        a.pod_cidr = Some(c);
                    }
                    None => problems.push(Problem {
                        reason: "AllocationFailed",
                        message: format!(
                            "no /{pod_prefix} block left in pod subnet {pool} for node {}",
                            n.name
                        ),
                    }),
                },
            }
        }
        if a.overlay_ip.is_some() || a.pod_cidr.is_some() {
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
    by_node: HashMap<String, (Option<Ipv4Addr>, Option<Ipv4Net>)>,
}

impl Written {
    /// Notes an allocation written for `node`.
    pub fn note(&mut self, node: &str, ip: Option<Ipv4Addr>, cidr: Option<Ipv4Net>) {
        self.by_node.insert(node.to_string(), (ip, cidr));
    }

    /// `nodes` with what was written and is not shown yet filled in (to
    /// plan from); forgets what the view shows now and the nodes gone.
    pub fn fill(&mut self, nodes: &[ClusterNode]) -> Vec<ClusterNode> {
        let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        self.by_node.retain(|name, _| names.contains(name.as_str()));
        let mut out = nodes.to_vec();
        for n in &mut out {
            let Some(&(ip, cidr)) = self.by_node.get(&n.name) else {
                continue;
            };
            let shown = (ip.is_none() || n.overlay_ip.is_some())
                && (cidr.is_none() || n.pod_cidr().is_some());
            if shown {
                self.by_node.remove(&n.name);
            } else {
                n.overlay_ip = n.overlay_ip.or(ip);
                n.recorded_pod_cidr = n.recorded_pod_cidr.or(cidr);
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
