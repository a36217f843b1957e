use super::*;
use crate::k8s::convert::{INVALID_SPEC, cluster_spec};
use crate::k8s::crd::{RemoteCluster, SecretKey};
use crate::k8s::fixtures::{key, lab_spec};
use proptest::prelude::*;

/// Cluster A: overlay 10.0.0.0/24, its nodes in 10.0.0.128/25, pods in
/// 10.244.0.0/16.
fn a_spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        node_subnet: Some("10.0.0.128/25".into()),
        remote_clusters: vec![RemoteCluster {
            name: "b".into(),
            kubeconfig_secret: SecretKey {
                name: "cluster-b".into(),
                key: None,
            },
        }],
        ..lab_spec()
    }
}

fn node(name: &str, seed: u8, ip: &str, cidr: &str) -> ClusterNode {
    ClusterNode {
        name: name.into(),
        key: Some(key(seed)),
        overlay_ip: ip.parse().ok(),
        recorded_pod_cidr: cidr.parse().ok(),
        internal_ip: Some(format!("203.0.113.{seed}")),
        ..ClusterNode::default()
    }
}

fn a_nodes() -> Vec<ClusterNode> {
    vec![
        node("cp", 1, "10.0.0.254", "10.244.0.0/24"),
        node("n1", 2, "10.0.0.253", "10.244.1.0/24"),
    ]
}

fn local() -> ClusterSpec {
    cluster_spec("wirehub", &a_spec(), &a_nodes(), true).unwrap()
}

fn b(nodes: Vec<ClusterNode>) -> RemoteMembers {
    RemoteMembers {
        cluster: "b".into(),
        nodes,
    }
}

fn b_nodes() -> Vec<ClusterNode> {
    vec![
        node("cp", 11, "10.0.0.126", "10.245.0.0/24"),
        node("n3", 12, "10.0.0.125", "10.245.1.0/24"),
    ]
}

#[test]
fn a_remote_clusters_nodes_become_routers_of_their_pod_cidrs_after_every_local_peer() {
    let before = local();
    let m = merge(before.clone(), &a_spec(), &[b(b_nodes())]);
    assert!(m.refused.is_empty(), "{:?}", m.refused);
    assert_eq!(m.remote_members, ["b/cp", "b/n3"]);
    let peers = &m.cluster.spec.peers;
    assert_eq!(peers[..before.spec.peers.len()], before.spec.peers[..]);
    let added = &peers[before.spec.peers.len()..];
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].role, Role::Router);
    assert_eq!(added[0].hostname.as_deref(), Some("b-cp"));
    assert_eq!(added[0].static_ip, "10.0.0.126".parse().ok());
    assert_eq!(
        added[1].routes,
        vec!["10.245.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        m.cluster.members, before.members,
        "members stay the local nodes"
    );
}

#[test]
fn a_remote_pod_cidr_inside_this_clusters_pod_subnet_is_refused_naming_cluster_node_and_cidrs() {
    let before = local();
    let m = merge(
        before.clone(),
        &a_spec(),
        &[b(vec![node("n3", 12, "10.0.0.125", "10.244.7.0/24")])],
    );
    assert_eq!(m.cluster, before, "the local network is kept as it was");
    assert_eq!(m.refused.len(), 1);
    assert_eq!(m.refused[0].reason, REMOTE_POD_CIDR_CONFLICT);
    let msg = &m.refused[0].message;
    for part in ["cluster b", "node n3", "10.244.7.0/24", "10.244.0.0/16"] {
        assert!(msg.contains(part), "{msg} names {part}");
    }
}

#[test]
fn a_remote_address_inside_this_clusters_node_subnet_is_refused() {
    let m = merge(
        local(),
        &a_spec(),
        &[b(vec![node("n3", 12, "10.0.0.200", "10.245.1.0/24")])],
    );
    assert_eq!(m.refused.len(), 1);
    assert_eq!(m.refused[0].reason, REMOTE_ADDRESS_CONFLICT);
    assert!(m.refused[0].message.contains("10.0.0.128/25"));
    assert!(m.remote_members.is_empty());
}

#[test]
fn a_remote_address_outside_the_shared_subnet_is_refused() {
    let m = merge(
        local(),
        &a_spec(),
        &[b(vec![node("n3", 12, "10.1.0.5", "10.245.1.0/24")])],
    );
    assert_eq!(m.refused[0].reason, REMOTE_ADDRESS_CONFLICT);
    assert!(
        m.refused[0]
            .message
            .contains("outside spec.subnet 10.0.0.0/24")
    );
}

#[test]
fn a_remote_node_with_a_local_nodes_key_is_refused() {
    let m = merge(
        local(),
        &a_spec(),
        &[b(vec![node("n3", 1, "10.0.0.125", "10.245.1.0/24")])],
    );
    assert_eq!(m.refused.len(), 1);
    assert_eq!(m.refused[0].reason, REMOTE_KEY_CONFLICT);
}

#[test]
fn of_two_remote_clusters_with_overlapping_pod_cidrs_the_later_one_is_refused() {
    let c = RemoteMembers {
        cluster: "c".into(),
        nodes: vec![node("x", 21, "10.0.0.60", "10.245.0.0/16")],
    };
    let m = merge(local(), &a_spec(), &[b(b_nodes()), c]);
    assert_eq!(m.remote_members, ["b/cp", "b/n3"]);
    assert_eq!(m.refused.len(), 1);
    let msg = &m.refused[0].message;
    assert!(msg.contains("cluster c's node x"), "{msg}");
    assert!(msg.contains("cluster b's node cp"), "{msg}");
}

#[test]
fn remote_nodes_still_waiting_for_an_allocation_are_counted_not_refused() {
    let mut waiting = node("n4", 13, "", "10.245.2.0/24");
    waiting.overlay_ip = None;
    let m = merge(local(), &a_spec(), &[b(vec![waiting])]);
    assert!(m.refused.is_empty());
    assert_eq!(m.waiting, 1);
}

#[test]
fn clusters_beyond_the_limit_are_dropped_and_counted() {
    let remotes: Vec<RemoteMembers> = (0..MAX_REMOTE_CLUSTERS + 2)
        .map(|i| RemoteMembers {
            cluster: format!("c{i}"),
            nodes: Vec::new(),
        })
        .collect();
    let m = merge(local(), &a_spec(), &remotes);
    assert_eq!(m.dropped_over_cluster_limit, 2);
}

#[test]
fn a_node_subnet_outside_the_subnet_makes_the_spec_invalid() {
    let spec = WireHubNetworkSpec {
        node_subnet: Some("10.1.0.0/25".into()),
        ..a_spec()
    };
    let problems = cluster_spec("wirehub", &spec, &a_nodes(), true).unwrap_err();
    assert!(problems.iter().any(|p| {
        p.reason == INVALID_SPEC
            && p.message
                .contains("spec.nodeSubnet 10.1.0.0/25 lies outside spec.subnet")
    }));
}

#[test]
fn a_remote_cluster_listed_twice_makes_the_spec_invalid() {
    let mut spec = a_spec();
    spec.remote_clusters.push(spec.remote_clusters[0].clone());
    let problems = cluster_spec("wirehub", &spec, &a_nodes(), true).unwrap_err();
    assert!(problems.iter().any(|p| {
        p.message
            .contains("spec.remoteClusters[1].name 'b' is listed twice")
    }));
}

#[test]
fn without_remote_clusters_the_network_is_the_local_one() {
    let before = local();
    let m = merge(before.clone(), &a_spec(), &[]);
    assert_eq!(m.cluster, before);
}

/// A member of a generated cluster: address and pod CIDR picked from small
/// ranges so that collisions are common.
fn arb_nodes(prefix: &'static str, seed0: u8) -> impl Strategy<Value = Vec<ClusterNode>> {
    prop::collection::vec((0u8..40, 0u8..6, 16u8..25), 0..6).prop_map(move |v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (host, third, len))| {
                let cidr = Ipv4Net::new(Ipv4Addr::new(10, 244 + (third % 3), third, 0), len)
                    .map(|n| n.trunc().to_string())
                    .unwrap_or_default();
                node(
                    &format!("{prefix}{i}"),
                    seed0 + (host % 30),
                    &format!("10.0.0.{}", 100 + u16::from(host) * 4),
                    &cidr,
                )
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn merging_two_clusters_never_yields_overlapping_pod_cidrs_or_shared_addresses(
        local_nodes in arb_nodes("a", 1),
        remote_nodes in arb_nodes("b", 20),
    ) {
        let spec = WireHubNetworkSpec { pod_subnet: None, ..a_spec() };
        let Ok(local) = cluster_spec("wirehub", &spec, &local_nodes, true) else {
            return Ok(());
        };
        let m = merge(local, &spec, &[b(remote_nodes)]);
        let peers = &m.cluster.spec.peers;
        let addresses: Vec<Ipv4Addr> =
            m.cluster.spec.ipv4_addresses().into_iter().flatten().collect();
        let unique: HashSet<&Ipv4Addr> = addresses.iter().collect();
        prop_assert_eq!(unique.len(), addresses.len());
        let routes: Vec<(usize, IpNet)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.routes.iter().map(move |r| (i, *r)))
            .collect();
        for (i, a) in &routes {
            for (j, b) in &routes {
                prop_assert!(i == j || !crate::config::overlaps(a, b), "{} and {}", a, b);
            }
        }
        let keys: HashSet<PublicKey> = peers.iter().map(|p| p.key).collect();
        prop_assert_eq!(keys.len(), peers.len());
    }
}
