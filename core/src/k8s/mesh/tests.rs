use super::*;
use crate::k8s::convert::{INVALID_SPEC, cluster_spec};
use crate::k8s::crd::{RemoteCluster, SecretKey};
use crate::k8s::fixtures::{lab_spec, node};
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

fn a_nodes() -> Vec<ClusterNode> {
    vec![
        node("cp", 1, "10.0.0.254", "10.244.0.0/24"),
        node("n1", 2, "10.0.0.253", "10.244.1.0/24"),
    ]
}

fn local() -> ClusterSpec {
    cluster_spec("wirehub", &a_spec(), &a_nodes(), true).unwrap()
}

/// Cluster B's network: the same subnet, its nodes in 10.0.0.64/26, pods
/// in 10.245.0.0/16.
fn b_spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        node_subnet: Some("10.0.0.64/26".into()),
        pod_subnet: Some("10.245.0.0/16".into()),
        ..lab_spec()
    }
}

fn b(nodes: Vec<ClusterNode>) -> RemoteMembers {
    RemoteMembers {
        cluster: "b".into(),
        network: RemoteNetwork::Present(Box::new(b_spec())),
        nodes,
        over_limit: 0,
    }
}

/// Cluster B's nodes, its network being `network`.
fn b_with(network: RemoteNetwork) -> RemoteMembers {
    RemoteMembers {
        network,
        ..b(b_nodes())
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
        ..b(Vec::new())
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
            ..b(Vec::new())
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

/// The problems of merging cluster B whose network is `theirs`.
fn refused_with(theirs: WireHubNetworkSpec) -> Vec<Problem> {
    let m = merge(
        local(),
        &a_spec(),
        &[b_with(RemoteNetwork::Present(Box::new(theirs)))],
    );
    assert!(m.remote_members.is_empty(), "{:?}", m.remote_members);
    assert_eq!(m.cluster.spec.peers, local().spec.peers);
    m.refused
}

fn one_mismatch(problems: &[Problem]) -> &str {
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, REMOTE_NETWORK_MISMATCH);
    &problems[0].message
}

#[test]
fn a_cluster_whose_network_is_not_listed_yet_waits_quietly() {
    let m = merge(local(), &a_spec(), &[b_with(RemoteNetwork::Unknown)]);
    assert!(m.refused.is_empty());
    assert!(m.remote_members.is_empty());
    assert_eq!(m.waiting, 2);
}

#[test]
fn a_cluster_without_a_network_of_this_name_is_refused_saying_so() {
    let m = merge(local(), &a_spec(), &[b_with(RemoteNetwork::Absent)]);
    let msg = one_mismatch(&m.refused);
    assert_eq!(
        msg,
        "remote cluster b's nodes are left out: it has no WireHubNetwork named wirehub: create it there with the same subnet, workbits and namespace"
    );
    assert!(m.remote_members.is_empty());
}

#[test]
fn a_cluster_on_another_subnet_is_refused_naming_both_subnets() {
    let problems = refused_with(WireHubNetworkSpec {
        subnet: "10.9.0.0/24".into(),
        node_subnet: None,
        ..b_spec()
    });
    assert!(one_mismatch(&problems).contains("its spec.subnet is 10.9.0.0/24, ours 10.0.0.0/24"));
}

#[test]
fn a_cluster_with_other_workbits_or_namespace_is_refused() {
    let workbits = refused_with(WireHubNetworkSpec {
        workbits: Some(8),
        ..b_spec()
    });
    assert!(one_mismatch(&workbits).contains("its spec.workbits is 8, ours 0"));
    let namespace = refused_with(WireHubNetworkSpec {
        namespace: Some("other".into()),
        ..b_spec()
    });
    assert!(one_mismatch(&namespace).contains("its spec.namespace is 'other'"));
}

#[test]
fn a_cluster_whose_pod_subnet_overlaps_ours_is_refused_as_a_whole() {
    let problems = refused_with(WireHubNetworkSpec {
        pod_subnet: Some("10.244.128.0/17".into()),
        ..b_spec()
    });
    assert!(
        one_mismatch(&problems)
            .contains("its pod subnet 10.244.128.0/17 overlaps ours 10.244.0.0/16")
    );
}

#[test]
fn a_cluster_whose_node_subnet_overlaps_ours_is_refused() {
    let problems = refused_with(WireHubNetworkSpec {
        node_subnet: Some("10.0.0.0/24".into()),
        ..b_spec()
    });
    assert!(
        one_mismatch(&problems)
            .contains("its spec.nodeSubnet 10.0.0.0/24 overlaps ours 10.0.0.128/25")
    );
}

#[test]
fn a_cluster_whose_network_is_invalid_there_is_refused_with_its_reasons() {
    let problems = refused_with(WireHubNetworkSpec {
        subnet: "10.0.0.1/24".into(),
        ..b_spec()
    });
    assert!(
        one_mismatch(&problems)
            .contains("is invalid there: spec.subnet 10.0.0.1/24 has host bits set")
    );
}
