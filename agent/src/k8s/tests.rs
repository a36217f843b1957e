use super::alloc::{next_overlay_ip, next_pod_cidr, plan};
use super::convert::{
    ClusterNode, INVALID_SPEC, NetworkMemo, PodSubnets, cluster_spec, file_name,
    network_to_resource, resource_to_network,
};
use super::crd::{
    ExternalPeer, PeerRole, WireHubNetwork, WireHubNetworkSpec, WireHubNode, WireHubNodeSpec,
};
use super::fixtures::{key, lab_spec, node};
use super::*;
use crate::config::{self, Role};
use std::collections::HashSet;
use std::net::Ipv4Addr;

fn spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        peers: vec![ExternalPeer {
            hostname: Some("edge".into()),
            key: key(9).to_string(),
            role: None,
            static_ip: None,
            endpoint: None,
            routes: Vec::new(),
        }],
        ..lab_spec()
    }
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = crd_yaml().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for dir in ["crds", "charts/wirehub/crds"] {
        let files: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            ["wirehub.yaml"],
            "{dir} holds exactly `wh crd`'s output"
        );
    }
    for path in ["crds/wirehub.yaml", "charts/wirehub/crds/wirehub.yaml"] {
        let committed = std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} differs from what the Rust types generate: run `wh crd > {path}`"
        );
    }
}

#[test]
fn crd_has_the_shape_kubernetes_needs() {
    let yaml = crd_yaml().unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["wirehubnetworks.wirehub.io", "wirehubnodes.wirehub.io"]
    );
    let v = &docs[0];
    assert_eq!(v["spec"]["scope"].as_str(), Some("Cluster"));
    assert_eq!(v["spec"]["group"].as_str(), Some("wirehub.io"));
    let version = &v["spec"]["versions"][0];
    assert_eq!(version["name"].as_str(), Some("v1alpha1"));
    assert!(version["subresources"]["status"].is_mapping());
    let cols = version["additionalPrinterColumns"].as_sequence().unwrap();
    assert!(cols.iter().any(|c| c["name"].as_str() == Some("Ready")));
    let schema = &version["schema"]["openAPIV3Schema"];
    let spec = &schema["properties"]["spec"];
    assert!(spec["description"].as_str().is_some());
    assert!(spec["properties"]["subnet"]["pattern"].as_str().is_some());
    assert!(
        spec["properties"]["subnet"]["description"]
            .as_str()
            .unwrap()
            .contains("IPv4")
    );
    assert_eq!(
        spec["properties"]["listenPort"]["maximum"].as_f64(),
        Some(65535.0)
    );
    let peer = &spec["properties"]["peers"]["items"];
    assert!(peer["properties"]["key"]["pattern"].as_str().is_some());
    assert!(
        peer["properties"]["routes"]["items"]["pattern"]
            .as_str()
            .is_some()
    );
    // The network's status is O(1): counts and conditions, no list of nodes.
    let status: Vec<&str> = schema["properties"]["status"]["properties"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        [
            "conditions",
            "nodeCount",
            "observedGeneration",
            "readyNodes"
        ]
    );
    // A WireHubNode: cluster-scoped, a status, and a table that says how
    // each node fares.
    let node = &docs[1]["spec"];
    assert_eq!(node["scope"].as_str(), Some("Cluster"));
    let version = &node["versions"][0];
    assert!(version["subresources"]["status"].is_mapping());
    let cols: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in [
        "Overlay IP",
        "Pod CIDRs",
        "NAT",
        "Ready",
        "Relayed",
        "Worst Peer",
    ] {
        assert!(cols.contains(&c), "{cols:?}");
    }
    let node_spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert!(node_spec["publicKey"]["pattern"].as_str().is_some());
    assert!(node_spec["podCidr"]["pattern"].as_str().is_some());
    // Structural: no $ref, no anyOf/oneOf at all.
    assert!(
        !yaml.contains("$ref") && !yaml.contains("anyOf") && !yaml.contains("oneOf"),
        "{yaml}"
    );
}

#[test]
fn schema_patterns_accept_and_refuse_what_they_should() {
    use super::crd::*;
    let re = regex_lite;
    let cidr = re(IPV4_CIDR_PATTERN);
    assert!(
        cidr("10.244.0.0/16")
            && cidr("0.0.0.0/0")
            && !cidr("10.244.0.0")
            && !cidr("300.1.1.1/8")
            && !cidr("10.0.0.0/33")
    );
    let any = re(CIDR_PATTERN);
    assert!(any("fd00:1::/64") && any("10.1.0.0/24") && !any("fd00::/129") && !any("x/1"));
    let k = re(KEY_PATTERN);
    assert!(k(&key(1).to_string()) && !k("short"));
    let e = re(ENDPOINT_PATTERN);
    assert!(e("203.0.113.1:62096") && e("gw.example.org") && e("[fd00::1]:5") && !e("a b"));
}

/// The schema's patterns, as the API server (RE2) reads them; these
/// patterns use nothing RE2 and the regex crate read differently.
fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool + use<> {
    let re = regex::Regex::new(pattern).unwrap();
    move |s: &str| re.is_match(s)
}

#[test]
fn cluster_spec_has_nodes_then_external_peers() {
    let nodes = vec![
        node("n2", 2, "10.0.0.253", "10.244.1.0/24"),
        node("n1", 1, "10.0.0.254", "10.244.0.0/24"),
        ClusterNode {
            name: "n3".into(),
            ..ClusterNode::default()
        },
    ];
    let cs = cluster_spec("lab", &spec(), &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["n1", "n2"]);
    assert_eq!(cs.left_out.len(), 1);
    assert_eq!(cs.left_out[0].1.reason, "WaitingForKey");
    let s = &cs.spec;
    assert_eq!(s.peers.len(), 3);
    assert_eq!(s.peers[0].role, Role::Router);
    assert_eq!(s.peers[0].hostname.as_deref(), Some("n1"));
    assert_eq!(s.peers[0].routes[0].to_string(), "10.244.0.0/24");
    assert_eq!(
        s.peers[0].endpoint.as_ref().unwrap().to_string(),
        "203.0.113.1:62096"
    );
    assert_eq!(s.peers[2].role, Role::Trust);
    // The external peer without static IP takes .2; the nodes keep theirs.
    let ips = s.ipv4_addresses();
    assert_eq!(ips[0], Some(Ipv4Addr::new(10, 0, 0, 254)));
    assert_eq!(ips[2], Some(Ipv4Addr::new(10, 0, 0, 2)));
    // Printed and parsed back: the same network.
    let parsed = config::parse(&s.to_string()).unwrap();
    assert_eq!(&parsed.spec, s);
}

#[test]
fn the_network_is_built_again_only_when_a_node_that_takes_part_changes() {
    let mut memo = NetworkMemo::default();
    let mut nodes = vec![
        node("n2", 2, "10.0.0.253", "10.244.1.0/24"),
        node("n1", 1, "10.0.0.254", "10.244.0.0/24"),
    ];
    let mut check = |nodes: &[ClusterNode]| {
        let got = memo.cluster_spec("lab", &spec(), nodes, true);
        assert_eq!(got, cluster_spec("lab", &spec(), nodes, true));
        (
            memo.builds(),
            memo.extended(),
            got.map(|cs| cs.left_out.len()).unwrap_or(99),
        )
    };
    assert_eq!(check(&nodes), (1, 0, 0));
    // A Node registers, then its agent publishes a key: the same network,
    // one more node waiting, not built again.
    nodes.push(ClusterNode {
        name: "n0".into(),
        ..ClusterNode::default()
    });
    assert_eq!(check(&nodes), (1, 0, 1));
    nodes[2].key = Some(key(3));
    assert_eq!(check(&nodes), (1, 0, 1));
    // Its allocation makes it take part: the network is extended by it.
    nodes[2] = node("n0", 3, "10.0.0.252", "10.244.2.0/24");
    assert_eq!(check(&nodes), (1, 1, 0));
    // A member's endpoint moves: built again.
    nodes[0].internal_ip = Some("203.0.113.99".into());
    assert_eq!(check(&nodes), (2, 1, 0));
}

#[test]
fn a_join_extends_the_network_and_gives_what_a_full_build_gives() {
    let all = many_nodes(60);
    let mut memo = NetworkMemo::default();
    // Joining in an order that is not the names' order.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|i| (i * 37) % all.len());
    let mut nodes = Vec::new();
    for i in order {
        nodes.push(all[i].clone());
        let got = memo.cluster_spec("bench", &big_spec(), &nodes, true);
        assert_eq!(got, cluster_spec("bench", &big_spec(), &nodes, true));
    }
    assert_eq!((memo.builds(), memo.extended()), (1, 59));
}

/// One step of a generated cluster's life.
#[derive(Debug, Clone)]
enum Step {
    /// A node joins with these (name, key seed, address, pod CIDR) indexes
    /// into small pools, so that they collide now and then.
    Join(usize, u8, usize, usize),
    /// A node's Node registers before its agent (waiting, no key).
    Register(usize),
    /// A member's endpoint moves.
    Move(usize),
}

const NAMES: [&str; 12] = [
    "a", "b", "c", "d", "e.f", "e-f", "lab", "edge", "9z", "g", "h", "i",
];
const CIDRS: [&str; 10] = [
    "10.244.1.0/24",
    "10.244.2.0/24",
    "10.244.3.0/24",
    "10.244.4.0/24",
    "10.244.5.0/24",
    "10.244.0.0/22",
    "10.245.0.0/24",
    "10.0.0.0/28",
    "127.0.0.0/24",
    "10.244.6.0/24",
];

fn step_strategy() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0..NAMES.len(), 1u8..14, 0usize..14, 0..CIDRS.len())
            .prop_map(|(n, k, ip, c)| Step::Join(n, k, ip, c)),
        1 => (0..NAMES.len()).prop_map(Step::Register),
        1 => (0..NAMES.len()).prop_map(Step::Move),
    ]
}

proptest::proptest! {
    /// Whatever the joins (conflicting keys, addresses and pod CIDRs,
    /// refused CIDRs, names that read alike, a node named after the
    /// network or an external peer), the memo's network, extended join by
    /// join, is the one a full build of the same nodes gives.
    #[test]
    fn generated_joins_extend_the_network_as_a_full_build_would(
        steps in proptest::collection::vec(step_strategy(), 1..30),
    ) {
        let mut memo = NetworkMemo::default();
        let mut nodes: Vec<ClusterNode> = Vec::new();
        for step in steps {
            match step {
                Step::Join(n, k, ip, c) => {
                    // 10.0.0.9 is the external peer's address below.
                    let joined = node(NAMES[n], k, &format!("10.0.0.{}", 240 + ip - 5), CIDRS[c]);
                    nodes.retain(|x| x.name != joined.name);
                    nodes.push(joined);
                }
                Step::Register(n) => {
                    if nodes.iter().all(|x| x.name != NAMES[n]) {
                        nodes.push(ClusterNode { name: NAMES[n].into(), ..ClusterNode::default() });
                    }
                }
                Step::Move(n) => {
                    if let Some(x) = nodes.iter_mut().find(|x| x.name == NAMES[n]) {
                        x.internal_ip = Some("203.0.113.200".into());
                    }
                }
            }
            let mut spec = spec();
            spec.peers[0].static_ip = Some("10.0.0.240".into());
            let got = memo.cluster_spec("lab", &spec, &nodes, true);
            proptest::prop_assert_eq!(got, cluster_spec("lab", &spec, &nodes, true));
        }
    }
}

#[test]
fn adding_a_node_renumbers_nobody() {
    let mut nodes = vec![node("b", 2, "10.0.0.254", "10.244.1.0/24")];
    let before = cluster_spec("lab", &spec(), &nodes, true).unwrap().spec;
    nodes.push(node("a", 1, "10.0.0.253", "10.244.0.0/24"));
    let after = cluster_spec("lab", &spec(), &nodes, true).unwrap().spec;
    let addr = |s: &crate::config::NetworkSpec, k| {
        s.members()
            .iter()
            .find(|m| m.peer.key == k)
            .and_then(|m| m.ipv4)
    };
    for k in [key(2), key(9)] {
        assert_eq!(addr(&before, k), addr(&after, k));
    }
}

#[test]
fn invalid_resources_are_refused_with_reasons() {
    let mut s = spec();
    s.peers[0].static_ip = Some("10.9.9.9".into());
    let e = cluster_spec("lab", &s, &[], true).unwrap_err();
    assert_eq!(e[0].reason, INVALID_SPEC);
    assert!(e[0].message.contains("outside the subnet"), "{e:?}");
    let mut s = spec();
    s.subnet = "10.0.0.1/24".into();
    let e = cluster_spec("lab", &s, &[], true).unwrap_err();
    assert!(e[0].message.contains("host bits"), "{e:?}");
    let mut s = spec();
    s.peers[0].routes = vec!["10.1.0.0/16".into()];
    s.peers[0].role = Some(PeerRole::Trust);
    let e = cluster_spec("lab", &s, &[], true).unwrap_err();
    assert!(e[0].message.contains("router"), "{e:?}");
}

#[test]
fn conflicting_nodes_are_left_out_not_fatal() {
    let s = spec();
    let nodes = vec![
        node("a", 1, "10.0.0.254", "10.244.0.0/24"),
        node("b", 2, "10.0.0.254", "10.244.1.0/24"),
        node("c", 3, "10.0.0.252", "10.244.0.0/25"),
        node("d", 9, "10.0.0.251", "10.244.3.0/24"),
    ];
    let cs = cluster_spec("lab", &s, &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["a"]);
    let reasons: Vec<&str> = cs.left_out.iter().map(|(_, p)| p.reason).collect();
    assert_eq!(
        reasons,
        vec!["AddressConflict", "PodCIDRConflict", "KeyConflict"]
    );
}

#[test]
fn node_selector_picks_nodes() {
    let mut s = spec();
    s.node_selector.insert("wirehub".into(), "yes".into());
    let mut a = node("a", 1, "10.0.0.254", "10.244.0.0/24");
    a.labels.insert("wirehub".into(), "yes".into());
    let b = node("b", 2, "10.0.0.253", "10.244.1.0/24");
    let cs = cluster_spec("lab", &s, &[a, b], true).unwrap();
    assert_eq!(cs.members, vec!["a"]);
}

#[test]
fn allocation_takes_addresses_from_the_top_and_blocks_from_the_bottom() {
    let subnet = "10.0.0.0/24".parse().unwrap();
    let mut taken = HashSet::new();
    assert_eq!(
        next_overlay_ip(subnet, &taken),
        Some(Ipv4Addr::new(10, 0, 0, 254))
    );
    taken.insert(Ipv4Addr::new(10, 0, 0, 254));
    assert_eq!(
        next_overlay_ip(subnet, &taken),
        Some(Ipv4Addr::new(10, 0, 0, 253))
    );
    let tiny = "10.0.0.0/30".parse().unwrap();
    assert_eq!(
        next_overlay_ip(tiny, &HashSet::new()),
        Some(Ipv4Addr::new(10, 0, 0, 2))
    );
    let mut full = HashSet::new();
    full.insert(Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(next_overlay_ip(tiny, &full), None);

    let pool: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
    assert_eq!(
        next_pod_cidr(pool, 24, &[]).unwrap().to_string(),
        "10.244.0.0/24"
    );
    let used = [
        "10.244.0.0/24".parse().unwrap(),
        "10.244.1.0/25".parse().unwrap(),
    ];
    assert_eq!(
        next_pod_cidr(pool, 24, &used).unwrap().to_string(),
        "10.244.2.0/24"
    );
    assert!(next_pod_cidr(pool, 8, &[]).is_none());

    let a = node("a", 1, "", "");
    let mut b = node("b", 2, "10.0.0.254", "");
    b.spec_pod_cidr = Some("10.244.0.0/24".parse().unwrap());
    let c = ClusterNode {
        name: "c".into(),
        ..ClusterNode::default()
    };
    let pods = PodSubnets {
        v4: Some("10.244.0.0/16".parse().unwrap()),
        ..PodSubnets::default()
    };
    let (p, problems) = plan(subnet, &pods, &[&a, &b, &c], &HashSet::new());
    assert!(problems.is_empty());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].node, "a");
    assert_eq!(p[0].overlay_ip, Some(Ipv4Addr::new(10, 0, 0, 253)));
    assert_eq!(p[0].pod_cidr.unwrap().to_string(), "10.244.1.0/24");
    let (_, problems) = plan(subnet, &PodSubnets::default(), &[&a], &HashSet::new());
    assert_eq!(problems[0].reason, "AllocationFailed");
}

#[test]
fn names_become_file_names() {
    assert_eq!(file_name("node-1.example.org"), "node-1-example-org");
    assert_eq!(file_name("1node"), "n1node");
    assert_eq!(file_name(&"x".repeat(100)).len(), 63);
}

#[test]
fn resource_and_file_convert_both_ways() {
    let text = format!(
        "name lab\nsubnet 10.0.0.0/24\nworkbit 4\nnamespace corp\nboot {} 203.0.113.5:62096\ntrust edge 10.0.0.9 {} 198.51.100.7\nrouter site {} 10.1.0.0/16\npeer {}\n",
        key(1),
        key(2),
        key(3),
        key(4)
    );
    let net = config::parse(&text).unwrap().spec;
    let (res, warnings) = network_to_resource(&net).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(res.metadata.name.as_deref(), Some("lab"));
    assert_eq!(res.spec.boot_nodes.len(), 1);
    assert_eq!(res.spec.peers.len(), 3);
    assert_eq!(res.spec.peers[1].role, Some(PeerRole::Router));
    // YAML round trip through the resource type.
    let yaml = serde_yaml::to_string(&res).unwrap();
    let (back, records) = parse_resource(&yaml).unwrap().unwrap();
    assert_eq!(back.spec, res.spec);
    let cs = resource_to_network(&back, &records).unwrap();
    assert_eq!(cs.spec, net);
}

fn record(name: &str, uid: &str, network: &str) -> WireHubNode {
    let mut r = WireHubNode::new(
        name,
        WireHubNodeSpec {
            network: network.into(),
            public_key: Some(key(1).to_string()),
            endpoints: vec!["203.0.113.11:62096".into()],
            overlay_ipv4: Some("10.0.0.254".into()),
            pod_cidr: Some("10.244.7.0/24".into()),
            pod_cidrs: Vec::new(),
        },
    );
    r.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.into(),
            uid: uid.into(),
            ..Default::default()
        },
    ]);
    r
}

#[test]
fn the_edge_file_lists_the_nodes_of_their_records() {
    let res = WireHubNetwork::new("lab", spec());
    let mut other = record("n9", "u9", "elsewhere");
    other.spec.public_key = Some(key(5).to_string());
    let cs = resource_to_network(&res, &[record("n1", "u1", "lab"), other.clone()]).unwrap();
    let text = cs.spec.to_string();
    assert!(
        text.contains(&format!(
            "router n1 10.0.0.254 {} 203.0.113.11:62096 10.244.7.0/24",
            key(1)
        )),
        "{text}"
    );
    assert!(!text.contains("n9"), "another network's node: {text}");
    assert!(text.contains(&format!("trust edge {}", key(9))), "{text}");
    // kubectl's List form, with the records, is understood too.
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        serde_yaml::to_string(&vec![&res]).unwrap(),
        serde_yaml::to_string(&vec![record("n1", "u1", "lab")]).unwrap()
    );
    let (parsed, records) = parse_resource(&list).unwrap().unwrap();
    assert_eq!(parsed.metadata.name.as_deref(), Some("lab"));
    assert_eq!(records.len(), 1);
    assert!(
        parse_resource("name lab\nsubnet 10.0.0.0/24\n")
            .unwrap()
            .is_none()
    );
}

#[test]
fn keys_are_made_once_and_kept() {
    let dir = std::env::temp_dir().join(format!("wh-k8s-key-{}", std::process::id()));
    let path = dir.join("sub/private.key");
    let (k1, made) = agent::load_or_create_key(&path, 4, "public").unwrap();
    assert!(made);
    assert!(k1.public_key().workbits("public") >= 4);
    let (k2, made) = agent::load_or_create_key(&path, 4, "public").unwrap();
    assert!(!made);
    assert_eq!(k1.public_key(), k2.public_key());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0);
    std::fs::write(&path, "garbage").unwrap();
    assert!(agent::load_or_create_key(&path, 4, "public").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nodes_are_read_from_their_node_and_the_record_it_owns() {
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1", "uid": "u1", "labels": {"a": "b"}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "203.0.113.11"}]}
    }))
    .unwrap();
    let c = ClusterNode::from_objects(&n, Some(&record("n1", "u1", "lab")), "lab");
    assert_eq!(c.key, Some(key(1)));
    assert_eq!(c.pod_cidr().unwrap().to_string(), "10.244.0.0/24");
    assert_eq!(c.recorded_pod_cidr.unwrap().to_string(), "10.244.7.0/24");
    assert_eq!(c.internal_ip.as_deref(), Some("203.0.113.11"));
    assert_eq!(c.overlay_ip, Some(Ipv4Addr::new(10, 0, 0, 254)));
    assert_eq!(c.endpoint.unwrap().to_string(), "203.0.113.11:62096");
    // A record not owned by this Node object (left by a deleted Node of
    // the same name, or made by someone else), another node's, or another
    // network's, says nothing about it.
    for stranger in [
        record("n1", "u0", "lab"),
        record("n2", "u1", "lab"),
        record("n1", "u1", "other"),
    ] {
        let c = ClusterNode::from_objects(&n, Some(&stranger), "lab");
        assert_eq!((c.key, c.overlay_ip), (None, None), "{stranger:?}");
    }
    let mut unowned = record("n1", "u1", "lab");
    unowned.metadata.owner_references = None;
    assert_eq!(
        ClusterNode::from_objects(&n, Some(&unowned), "lab").key,
        None
    );
}

#[test]
fn a_pod_cidr_outside_the_pod_subnet_or_too_wide_leaves_its_node_out() {
    let mut s = spec();
    let nodes = vec![
        node("a", 1, "10.0.0.254", "10.244.0.0/24"),
        node("b", 2, "10.0.0.253", "0.0.0.0/1"),
        node("c", 3, "10.0.0.252", "10.0.0.0/24"),
        node("d", 4, "10.0.0.251", "192.168.7.0/24"),
    ];
    let cs = cluster_spec("lab", &s, &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["a"]);
    let said: Vec<(&str, &str)> = cs
        .left_out
        .iter()
        .map(|(n, p)| (n.as_str(), p.reason))
        .collect();
    assert_eq!(
        said,
        vec![
            ("b", "PodCIDRRefused"),
            ("c", "PodCIDRRefused"),
            ("d", "PodCIDRRefused")
        ]
    );
    assert!(
        cs.left_out[0]
            .1
            .message
            .contains("outside the pod subnet 10.244.0.0/16")
    );
    // Without a podSubnet, the route itself is still judged.
    s.pod_subnet = None;
    let cs = cluster_spec("lab", &s, &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["a", "d"]);
    assert!(
        cs.left_out[0].1.message.contains("too wide"),
        "{:?}",
        cs.left_out
    );
    assert!(
        cs.left_out[1]
            .1
            .message
            .contains("overlay subnet 10.0.0.0/24"),
        "{:?}",
        cs.left_out
    );
    // A podSubnet that would route everything is refused as a whole.
    s.pod_subnet = Some("0.0.0.0/0".into());
    let e = cluster_spec("lab", &s, &nodes, true).unwrap_err();
    assert!(
        e[0].message
            .contains("spec.podSubnet 0.0.0.0/0 is too wide"),
        "{e:?}"
    );
}

/// `n` nodes that all take part, as a bench's cluster of up to 1,000: key
/// from the index, addresses from the top of 10.0.0.0/16, pod CIDRs
/// 10.244.i.0/24 upwards.
fn many_nodes(n: usize) -> Vec<ClusterNode> {
    (0..n)
        .map(|i| {
            let mut k = [7u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let base = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + ((i as u32) << 8);
            ClusterNode {
                name: format!("sim-{i:04}"),
                key: Some(crate::keys::PublicKey(k)),
                overlay_ip: Some(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 0, 255, 254)) - i as u32,
                )),
                recorded_pod_cidr: Some(ipnet::Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap()),
                internal_ip: Some(format!("10.250.{}.{}", i / 250, i % 250 + 1)),
                ..ClusterNode::default()
            }
        })
        .collect()
}

fn big_spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        subnet: "10.0.0.0/16".into(),
        pod_subnet: Some("10.244.0.0/14".into()),
        ..lab_spec()
    }
}

/// The median of `runs` timings of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// What one agent spends on a join, at N = 100, 300 and 1,000 nodes:
/// building the whole network again (what a join costs every agent), and
/// of that, checking the spec, directly and the old way (printing it as a
/// file and parsing it back). Figures, not assertions:
/// `cargo test -p wirehub --lib k8s::tests::rebuild_cost -- --ignored --nocapture`
/// (add `--release` for a release build's figures).
#[test]
#[ignore = "a benchmark: prints figures"]
fn rebuild_cost() {
    eprintln!(
        "| N | build the network (N+1 nodes) | of which: validate() | print + parse (the old check) | a join: extend N nodes by one |"
    );
    eprintln!("|---|---|---|---|---|");
    for n in [100, 300, 1000] {
        let nodes = many_nodes(n + 1);
        let spec = big_spec();
        let built = cluster_spec("bench", &spec, &nodes, true).unwrap();
        assert_eq!(built.members.len(), n + 1, "{:?}", built.left_out.first());
        let runs = if n >= 1000 { 5 } else { 11 };
        let build = median_ms(runs, || {
            let mut memo = NetworkMemo::default();
            assert!(memo.cluster_spec("bench", &spec, &nodes, true).is_ok());
        });
        let validate = median_ms(runs, || assert!(built.spec.validate().is_ok()));
        let printed = median_ms(runs, || {
            assert!(config::parse(&built.spec.to_string()).is_ok_and(|p| p.spec == built.spec))
        });
        // The memo holds N nodes; the (N+1)th joins.
        let mut joins: Vec<f64> = (0..runs)
            .map(|_| {
                let mut memo = NetworkMemo::default();
                assert!(memo.cluster_spec("bench", &spec, &nodes[..n], true).is_ok());
                let start = std::time::Instant::now();
                let got = memo.cluster_spec("bench", &spec, &nodes, true);
                let took = start.elapsed().as_secs_f64() * 1e3;
                assert_eq!(got.as_ref().ok(), Some(&built));
                assert_eq!(memo.extended(), 1);
                took
            })
            .collect();
        joins.sort_by(f64::total_cmp);
        let join = joins[joins.len() / 2];
        eprintln!("| {n} | {build:.2} ms | {validate:.2} ms | {printed:.2} ms | {join:.2} ms |");
    }
}

#[test]
fn a_holder_whose_watch_lags_never_gives_one_address_twice() {
    let subnet: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let pods = PodSubnets {
        v4: Some("10.244.0.0/16".parse().unwrap()),
        ..PodSubnets::default()
    };
    let waiting = |name: &str, seed: u8| ClusterNode {
        name: name.into(),
        key: Some(key(seed)),
        ..ClusterNode::default()
    };
    let mut written = super::alloc::Written::default();
    let allocate = |written: &mut super::alloc::Written, view: &[ClusterNode]| {
        let filled = written.fill(view);
        let selected: Vec<&ClusterNode> = filled.iter().collect();
        let (planned, _) = plan(subnet, &pods, &selected, &HashSet::new());
        for a in &planned {
            written.note(a);
        }
        planned
    };
    // b is allocated; the watch does not show it yet when c arrives.
    let first = allocate(&mut written, &[waiting("b", 2)]);
    assert_eq!(first.len(), 1);
    let second = allocate(&mut written, &[waiting("b", 2), waiting("c", 3)]);
    assert_eq!(second.len(), 1, "b is not allocated again: {second:?}");
    assert_eq!(second[0].node, "c");
    assert_ne!(second[0].overlay_ip, first[0].overlay_ip);
    assert_ne!(second[0].pod_cidr, first[0].pod_cidr);
    assert_eq!(written.len(), 2);
    // Once the watch shows b's allocation, it is forgotten; a node gone
    // (c) is forgotten too.
    let mut b = waiting("b", 2);
    b.overlay_ip = first[0].overlay_ip;
    b.recorded_pod_cidr = first[0].pod_cidr;
    assert!(written.fill(&[b]).iter().all(|n| n.name == "b"));
    assert!(written.is_empty());
}

/// The lab network, dual-stack: pods in 10.244.0.0/16 and fd00:10:244::/56.
fn dual_spec() -> WireHubNetworkSpec {
    WireHubNetworkSpec {
        pod_subnet: None,
        pod_subnets: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()],
        ..spec()
    }
}

/// A node with both pod CIDRs recorded.
fn dual_node(name: &str, seed: u8, ip: &str, v4: &str, v6: &str) -> ClusterNode {
    ClusterNode {
        recorded_pod_cidr_v6: v6.parse().ok(),
        ..node(name, seed, ip, v4)
    }
}

fn pod_subnets(spec: &WireHubNetworkSpec) -> Result<PodSubnets, Vec<String>> {
    PodSubnets::from_spec(spec, spec.subnet.parse().ok(), "lab")
}

#[test]
fn pod_subnets_take_one_network_of_each_family_the_primary_first() {
    let p = pod_subnets(&dual_spec()).unwrap();
    assert_eq!(p.v4.unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(p.v6.unwrap().to_string(), "fd00:10:244::/56");
    assert!(!p.v6_first);
    assert_eq!((p.prefix_v4, p.prefix_v6), (24, 64));
    // IPv6 first: the primary family.
    let mut s = dual_spec();
    s.pod_subnets.reverse();
    assert!(pod_subnets(&s).unwrap().v6_first);
    // podSubnet alone still works.
    let p = pod_subnets(&spec()).unwrap();
    assert_eq!((p.v4.is_some(), p.v6), (true, None));
    // IPv6 alone is refused: the CNI plugin gives every pod an IPv4 address.
    let mut s = spec();
    s.pod_subnet = Some("fd00:10:244::/56".into());
    let e = pod_subnets(&s).unwrap_err().join("; ");
    assert!(
        e.contains("no IPv4 network") && e.contains("IPv6-only pods are not supported"),
        "{e}"
    );
    // podSubnet beside podSubnets: allowed as its first entry.
    let mut s = dual_spec();
    s.pod_subnet = Some("10.244.0.0/16".into());
    assert!(pod_subnets(&s).is_ok());
}

#[test]
fn bad_pod_subnets_are_refused_naming_the_field_and_the_fault() {
    let refused = |subnets: &[&str], single: Option<&str>, v4: Option<u8>, v6: Option<u8>| {
        let mut s = dual_spec();
        s.pod_subnets = subnets.iter().map(|p| p.to_string()).collect();
        s.pod_subnet = single.map(str::to_string);
        s.pod_cidr_prefix = v4;
        s.pod_cidr_prefix_v6 = v6;
        pod_subnets(&s).unwrap_err().join("; ")
    };
    let e = refused(&["10.244.0.0/16", "10.245.0.0/16"], None, None, None);
    assert!(
        e.contains("spec.podSubnets[1] 10.245.0.0/16 is a second IPv4 pod subnet"),
        "{e}"
    );
    let e = refused(&["fd00:1::/56", "fd00:2::/56"], None, None, None);
    assert!(
        e.contains("spec.podSubnets[1] fd00:2::/56 is a second IPv6"),
        "{e}"
    );
    let e = refused(&["10.0.0.0/16", "fd00:1::/56"], None, None, None);
    assert!(
        e.contains("spec.podSubnets[0] 10.0.0.0/16 overlaps spec.subnet 10.0.0.0/24"),
        "{e}"
    );
    let overlay = super::convert::overlay_v6("lab").to_string();
    let e = refused(&["10.244.0.0/16", &overlay], None, None, None);
    assert!(e.contains("overlaps the overlay's IPv6 addresses"), "{e}");
    let e = refused(&["10.244.0.0/16", "fd00:1::1/56"], None, None, None);
    assert!(
        e.contains("spec.podSubnets[1] fd00:1::1/56 has host bits set; did you mean fd00:1::/56?"),
        "{e}"
    );
    let e = refused(&["10.244.0.0/16", "pods"], None, None, None);
    assert!(
        e.contains("spec.podSubnets[1] 'pods' is not a network"),
        "{e}"
    );
    let e = refused(&["10.244.0.0/16", "fd00:1::/56"], None, None, Some(48));
    assert!(
        e.contains("spec.podCidrPrefixV6 /48 is wider than spec.podSubnets[1] fd00:1::/56"),
        "{e}"
    );
    let e = refused(&["10.244.0.0/16", "fd00:1::/56"], None, Some(12), None);
    assert!(
        e.contains("spec.podCidrPrefix /12 is wider than spec.podSubnets[0] 10.244.0.0/16"),
        "{e}"
    );
    let e = refused(&["10.244.0.0/16", "fd00:1::/56"], None, None, Some(127));
    assert!(
        e.contains("spec.podCidrPrefixV6 /127 leaves too little room"),
        "{e}"
    );
    let e = refused(
        &["10.244.0.0/16", "fd00:1::/56"],
        Some("10.245.0.0/16"),
        None,
        None,
    );
    assert!(
        e.contains("spec.podSubnet 10.245.0.0/16 is not spec.podSubnets[0] 10.244.0.0/16"),
        "{e}"
    );
    let e = refused(
        &["10.244.0.0/16", "fd00:1::/56", "10.9.0.0/16"],
        None,
        None,
        None,
    );
    assert!(e.contains("spec.podSubnets has 3 entries"), "{e}");
    let e = refused(&["10.244.0.0/16", "::/0"], None, None, None);
    assert!(e.contains("spec.podSubnets[1] ::/0 is too wide"), "{e}");
    // The resource as a whole is refused with the same words.
    let mut s = dual_spec();
    s.pod_subnets.push("fd00:2::/56".into());
    let e = cluster_spec("lab", &s, &[], true).unwrap_err();
    assert!(e.iter().all(|p| p.reason == INVALID_SPEC), "{e:?}");
    assert!(
        e.iter()
            .any(|p| p.message.contains("spec.podSubnets has 3 entries")),
        "{e:?}"
    );
}

#[test]
fn a_dual_stack_node_routes_both_pod_cidrs_the_primary_family_first() {
    let nodes = vec![
        dual_node("a", 1, "10.0.0.254", "10.244.0.0/24", "fd00:10:244::/64"),
        dual_node("b", 2, "10.0.0.253", "10.244.1.0/24", "fd00:10:244:1::/64"),
    ];
    let cs = cluster_spec("lab", &dual_spec(), &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["a", "b"]);
    let routes: Vec<Vec<String>> = cs
        .spec
        .peers
        .iter()
        .filter(|p| p.role == Role::Router)
        .map(|p| p.routes.iter().map(|r| r.to_string()).collect())
        .collect();
    assert_eq!(
        routes,
        vec![
            vec!["10.244.0.0/24", "fd00:10:244::/64"],
            vec!["10.244.1.0/24", "fd00:10:244:1::/64"]
        ]
    );
    // The network file says the same (what the node core runs).
    assert!(
        cs.spec.to_string().contains("fd00:10:244:1::/64"),
        "{}",
        cs.spec
    );
    // IPv6 primary: its block first, so the node's CNI ranges list it first.
    let mut s = dual_spec();
    s.pod_subnets.reverse();
    let cs = cluster_spec("lab", &s, &nodes, true).unwrap();
    let a = cs
        .spec
        .peers
        .iter()
        .find(|p| p.hostname.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(a.routes[0].to_string(), "fd00:10:244::/64");
}

#[test]
fn a_dual_stack_node_conflicts_by_either_block_and_routes_ipv4_until_its_ipv6_block_comes() {
    let nodes = vec![
        dual_node("a", 1, "10.0.0.254", "10.244.0.0/24", "fd00:10:244::/64"),
        // b has no IPv6 block yet: it routes its IPv4 one meanwhile.
        node("b", 2, "10.0.0.253", "10.244.1.0/24"),
        // c's IPv6 block is a's.
        dual_node("c", 3, "10.0.0.252", "10.244.2.0/24", "fd00:10:244::/64"),
        // d's IPv6 block lies outside the IPv6 pod subnet.
        dual_node("d", 4, "10.0.0.251", "10.244.3.0/24", "fd00:99::/64"),
        // e has an IPv6 block only: it waits (every pod needs IPv4).
        dual_node("e", 5, "10.0.0.250", "", "fd00:10:244:5::/64"),
    ];
    let cs = cluster_spec("lab", &dual_spec(), &nodes, true).unwrap();
    assert_eq!(cs.members, vec!["a", "b"]);
    let b = cs
        .spec
        .peers
        .iter()
        .find(|p| p.hostname.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(
        b.routes,
        vec!["10.244.1.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    let said: Vec<(&str, &str, &str)> = cs
        .left_out
        .iter()
        .map(|(n, p)| (n.as_str(), p.reason, p.message.as_str()))
        .collect();
    assert_eq!(
        said,
        vec![
            (
                "c",
                "PodCIDRConflict",
                "node c's pod CIDR fd00:10:244::/64 overlaps node a's"
            ),
            (
                "d",
                "PodCIDRRefused",
                "node d's pod CIDR fd00:99::/64 lies outside the pod subnet fd00:10:244::/56"
            ),
            (
                "e",
                "WaitingForAllocation",
                "node e has no IPv4 pod CIDR yet"
            ),
        ]
    );
    // The memo, extending join by join, gives the same.
    let mut memo = NetworkMemo::default();
    for i in 1..=nodes.len() {
        assert_eq!(
            memo.cluster_spec("lab", &dual_spec(), &nodes[..i], true),
            cluster_spec("lab", &dual_spec(), &nodes[..i], true)
        );
    }
}

#[test]
fn a_running_network_that_gains_an_ipv6_pod_subnet_keeps_every_node() {
    let nodes = vec![
        node("a", 1, "10.0.0.254", "10.244.0.0/24"),
        node("b", 2, "10.0.0.253", "10.244.1.0/24"),
    ];
    let before = cluster_spec("lab", &spec(), &nodes, true).unwrap();
    let after = cluster_spec("lab", &dual_spec(), &nodes, true).unwrap();
    assert_eq!(after.members, before.members);
    assert_eq!(after.spec, before.spec);
    // The holder then allocates each node its IPv6 block, and only that.
    let subnet = "10.0.0.0/24".parse().unwrap();
    let pods = pod_subnets(&dual_spec()).unwrap();
    let (planned, problems) = plan(subnet, &pods, &[&nodes[0], &nodes[1]], &HashSet::new());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        planned
            .iter()
            .all(|a| a.overlay_ip.is_none() && a.pod_cidr.is_none() && a.pod_cidr_v6.is_some()),
        "{planned:?}"
    );
}

#[test]
fn both_pod_cidrs_are_read_from_the_node_and_its_record() {
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1", "uid": "u1"},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
    }))
    .unwrap();
    let c = ClusterNode::from_node(&n);
    assert_eq!(c.pod_cidr().unwrap().to_string(), "10.244.0.0/24");
    assert_eq!(c.pod_cidr_v6().unwrap().to_string(), "fd00:10:244::/64");
    let mut r = record("n1", "u1", "lab");
    r.spec.pod_cidr = Some("10.244.7.0/24".into());
    r.spec.pod_cidrs = vec!["10.244.7.0/24".into(), "fd00:10:244:7::/64".into()];
    let c = ClusterNode::from_objects(&n, Some(&r), "lab");
    assert_eq!(c.recorded_pod_cidr.unwrap().to_string(), "10.244.7.0/24");
    assert_eq!(
        c.recorded_pod_cidr_v6.unwrap().to_string(),
        "fd00:10:244:7::/64"
    );
    // The Node's blocks come before the recorded ones.
    assert_eq!(c.pod_cidr_v6().unwrap().to_string(), "fd00:10:244::/64");
    // An IPv6-only record.
    r.spec.pod_cidr = None;
    r.spec.pod_cidrs = vec!["fd00:10:244:7::/64".into()];
    let c = ClusterNode::from_objects(&n, Some(&r), "lab");
    assert_eq!(c.recorded_pod_cidr, None);
    assert!(c.recorded_pod_cidr_v6.is_some());
}

#[test]
fn the_holder_allocates_the_blocks_of_each_family_a_node_lacks() {
    let subnet = "10.0.0.0/24".parse().unwrap();
    let pods = pod_subnets(&dual_spec()).unwrap();
    let a = node("a", 1, "", "");
    // b's Node gives it an IPv4 block: it gets an IPv6 one only.
    let mut b = node("b", 2, "10.0.0.254", "");
    b.spec_pod_cidr = Some("10.244.0.0/24".parse().unwrap());
    let (p, problems) = plan(subnet, &pods, &[&a, &b], &HashSet::new());
    assert!(problems.is_empty(), "{problems:?}");
    let got: Vec<(String, Option<String>, Option<String>)> = p
        .iter()
        .map(|a| {
            (
                a.node.clone(),
                a.pod_cidr.map(|c| c.to_string()),
                a.pod_cidr_v6.map(|c| c.to_string()),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "a".into(),
                Some("10.244.1.0/24".into()),
                Some("fd00:10:244::/64".into())
            ),
            ("b".into(), None, Some("fd00:10:244:1::/64".into())),
        ]
    );
    // A full IPv6 pool is a problem named for the node.
    let mut s = dual_spec();
    s.pod_subnets[1] = "fd00:10:244::/64".into();
    let pods = pod_subnets(&s).unwrap();
    let (_, problems) = plan(subnet, &pods, &[&a, &b], &HashSet::new());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].message,
        "no /64 block left in pod subnet fd00:10:244::/64 for node b"
    );
}

#[test]
fn a_block_is_found_past_taken_blocks_without_walking_the_pool() {
    let pool: ipnet::IpNet = "fd00::/16".parse().unwrap();
    // Half the pool taken by one block, the next /64 by another: the
    // first free /64 is right after them (2^47 blocks are not walked).
    let taken: Vec<ipnet::IpNet> = vec![
        "fd00::/17".parse().unwrap(),
        "fd00:8000::/64".parse().unwrap(),
    ];
    assert_eq!(
        next_pod_cidr(pool, 64, &taken).unwrap().to_string(),
        "fd00:8000:0:1::/64"
    );
    // Blocks of the other family are no obstacle; a full pool gives none.
    assert_eq!(
        next_pod_cidr(
            "10.0.0.0/30".parse().unwrap(),
            30,
            &["fd00::/8".parse().unwrap()]
        )
        .unwrap()
        .to_string(),
        "10.0.0.0/30"
    );
    assert_eq!(
        next_pod_cidr(pool, 64, &["fd00::/16".parse().unwrap()]),
        None
    );
    assert_eq!(next_pod_cidr(pool, 8, &[]), None);
}

proptest::proptest! {
    /// Whatever the nodes (some with blocks from their Node object, some
    /// recorded, some with none, in any order, over rounds where the
    /// holder's view lags), no two nodes ever share a block of either
    /// family, and every block lies in its family's pod subnet.
    #[test]
    fn no_two_nodes_share_a_pod_cidr_of_either_family(
        given in proptest::collection::vec((proptest::option::of(0u8..8), proptest::option::of(0u8..8)), 1..12),
        rounds in 1usize..4,
    ) {
        let subnet = "10.0.0.0/24".parse().unwrap();
        let mut s = dual_spec();
        s.pod_subnets = vec!["10.244.0.0/20".into(), "fd00:10:244::/60".into()];
        let pods = pod_subnets(&s).unwrap();
        // Nodes whose Node objects give blocks (distinct ones per family).
        let mut seen4 = HashSet::new();
        let mut seen6 = HashSet::new();
        let mut nodes: Vec<ClusterNode> = given
            .iter()
            .enumerate()
            .map(|(i, (v4, v6))| {
                let mut n = node(&format!("n{i:02}"), i as u8 + 1, "", "");
                n.spec_pod_cidr = v4
                    .filter(|b| seen4.insert(*b))
                    .map(|b| format!("10.244.{b}.0/24").parse().unwrap());
                n.spec_pod_cidr_v6 = v6
                    .filter(|b| seen6.insert(*b))
                    .map(|b| format!("fd00:10:244:{b}::/64").parse().unwrap());
                n
            })
            .collect();
        let mut written = super::alloc::Written::default();
        for round in 0..rounds {
            // The view shows what was recorded in earlier rounds only on
            // even rounds (a lagging watch otherwise).
            let view: Vec<ClusterNode> = if round % 2 == 0 { nodes.clone() } else {
                nodes.iter().map(|n| ClusterNode { recorded_pod_cidr: None, recorded_pod_cidr_v6: None, overlay_ip: None, ..n.clone() }).collect()
            };
            let filled = written.fill(&view);
            let selected: Vec<&ClusterNode> = filled.iter().collect();
            let (planned, _) = plan(subnet, &pods, &selected, &HashSet::new());
            for a in &planned {
                written.note(a);
                let n = nodes.iter_mut().find(|n| n.name == a.node).unwrap();
                n.recorded_pod_cidr = n.recorded_pod_cidr.or(a.pod_cidr);
                n.recorded_pod_cidr_v6 = n.recorded_pod_cidr_v6.or(a.pod_cidr_v6);
                n.overlay_ip = n.overlay_ip.or(a.overlay_ip);
            }
        }
        let blocks: Vec<ipnet::IpNet> = nodes.iter().flat_map(|n| n.pod_cidrs(false)).collect();
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                proptest::prop_assert!(!config::overlaps(a, b), "{a} and {b} overlap: {nodes:?}");
            }
        }
        for n in &nodes {
            proptest::prop_assert!(n.pod_cidr().is_some_and(|c| pods.v4.unwrap().contains(&c)));
            proptest::prop_assert!(n.pod_cidr_v6().is_some_and(|c| pods.v6.unwrap().contains(&c)));
        }
    }
}
