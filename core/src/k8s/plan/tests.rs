//! The plan, from snapshots built by hand.

use super::*;
use crate::k8s::crd::ExternalPeer;
use crate::k8s::fixtures::{key, lab_spec};
use k8s_openapi::jiff::SignedDuration;

fn network() -> WireHubNetwork {
    let mut n = WireHubNetwork::new("lab", lab_spec());
    n.metadata.generation = Some(3);
    n
}

/// Node `i` (1-based): key seed i, overlay .(255-i), pod CIDR 10.244.i.0/24.
fn node(i: u8) -> ClusterNode {
    ClusterNode {
        name: format!("n{i}"),
        key: Some(key(i)),
        overlay_ip: Some(format!("10.0.0.{}", 255 - i).parse().unwrap()),
        recorded_pod_cidr: Some(format!("10.244.{i}.0/24").parse().unwrap()),
        internal_ip: Some(format!("203.0.113.{i}")),
        ..ClusterNode::default()
    }
}

fn peer(i: u8, path: PathStatus, handshake: Option<u64>) -> control::PeerStatus {
    control::PeerStatus {
        key: key(i).to_string(),
        hostname: None,
        role: "router".into(),
        ipv4: None,
        ipv6: None,
        path,
        nat: None,
        last_handshake_secs: handshake,
        rx_bytes: 0,
        tx_bytes: 0,
    }
}

fn direct() -> PathStatus {
    PathStatus::Direct {
        endpoint: "203.0.113.9:62096".into(),
    }
}

fn relayed() -> PathStatus {
    PathStatus::Relayed {
        via: vec!["abc@198.51.100.1:62096".into()],
    }
}

fn inspect(peers: Vec<control::PeerStatus>) -> control::Status {
    control::Status {
        interface: "wh-x".into(),
        network: "lab".into(),
        node: None,
        nat: "NAT easy".into(),
        public_key: key(1).to_string(),
        listen_port: 62096,
        backend: "userspace".into(),
        ipv4: Some("10.0.0.254".into()),
        ipv6: Some("fd00::1".into()),
        peers,
        dht: Vec::new(),
        clock_offset_ms: None,
    }
}

fn now() -> Timestamp {
    "2026-12-06T00:00:00Z".parse().unwrap()
}

/// A record of node `i` with a status written `age` seconds before now.
fn record(i: u8, ready: bool, age: i64, message: Option<&str>) -> WireHubNode {
    let mut r = WireHubNode::new(
        &format!("n{i}"),
        WireHubNodeSpec {
            network: "lab".into(),
            public_key: Some(key(i).to_string()),
            endpoints: Vec::new(),
            overlay_ipv4: None,
            pod_cidr: None,
            pod_cidrs: Vec::new(),
        },
    );
    r.status = Some(WireHubNodeStatus {
        ready,
        message: message.map(str::to_string),
        last_update: Some((now() - SignedDuration::from_secs(age)).to_string()),
        ..WireHubNodeStatus::default()
    });
    r
}

struct World {
    network: WireHubNetwork,
    nodes: Vec<ClusterNode>,
    records: Vec<WireHubNode>,
    running: Option<NetworkSpec>,
    inspect: Option<control::Status>,
    leader: bool,
}

impl World {
    /// Three nodes; n1 is "me", running the network they make.
    fn three() -> World {
        let network = network();
        let nodes = vec![node(1), node(2), node(3)];
        let running = convert::cluster_spec("lab", &network.spec, &nodes, true)
            .unwrap()
            .spec;
        World {
            network,
            nodes,
            records: vec![record(1, true, 5, None), record(2, true, 5, None)],
            running: Some(running),
            inspect: Some(inspect(vec![
                peer(2, direct(), Some(3)),
                peer(3, relayed(), Some(40)),
            ])),
            leader: true,
        }
    }

    fn plan(&self) -> Plan {
        let k = key(1);
        plan(&Snapshot {
            me: "n1",
            network: &self.network,
            nodes: &self.nodes,
            records: &self.records,
            built: None,
            key: Some(&k),
            listen_port: 62096,
            running: self.running.as_ref(),
            running_generation: Some(3),
            inspect: self.inspect.as_ref(),
            node_problems: &[],
            network_problems: &[],
            leader: self.leader,
            now: now(),
        })
    }
}

fn condition<'a>(s: &'a WireHubNetworkStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_node_reports_its_paths_as_counts_and_its_worst_peer() {
    let p = World::three().plan();
    let st = &p.own_status;
    assert!(st.ready, "{st:?}");
    assert_eq!(st.nat.as_deref(), Some("NAT easy"));
    assert_eq!(st.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    let paths = st.paths.as_ref().unwrap();
    assert_eq!((paths.direct, paths.relayed, paths.unknown), (1, 1, 0));
    let worst = paths.worst.as_ref().unwrap();
    assert_eq!(
        (worst.name.as_str(), worst.path.as_str()),
        ("n3", "relayed")
    );
    assert_eq!(worst.last_handshake_seconds, Some(40));
    // Its own object: its key and endpoint, never the leader's allocations.
    let spec = p.own_spec.unwrap();
    assert_eq!(spec.public_key, Some(key(1).to_string()));
    assert_eq!(spec.endpoints, ["203.0.113.1:62096"]);
    assert_eq!((spec.overlay_ipv4, spec.pod_cidr), (None, None));
}

#[test]
fn a_dual_stack_node_reports_both_pod_cidrs_the_primary_family_first() {
    let mut w = World::three();
    w.network.spec.pod_subnet = None;
    w.network.spec.pod_subnets = vec!["fd00:10:244::/56".into(), "10.244.0.0/16".into()];
    for (i, n) in w.nodes.iter_mut().enumerate() {
        n.recorded_pod_cidr_v6 = Some(format!("fd00:10:244:{}::/64", i + 1).parse().unwrap());
    }
    let st = w.plan().own_status;
    assert_eq!(st.pod_cidrs, ["fd00:10:244:1::/64", "10.244.1.0/24"]);
    assert_eq!(st.pod_cidr.as_deref(), Some("fd00:10:244:1::/64"));
    // The network it runs routes both of every node's blocks.
    let run = w.plan().run.unwrap();
    assert!(
        run.spec.peers.iter().all(|p| p.routes.len() == 2),
        "{}",
        run.spec
    );
}

#[test]
fn a_node_that_does_not_reach_another_node_is_not_ready_and_names_it() {
    let mut w = World::three();
    w.inspect = Some(inspect(vec![
        peer(2, direct(), Some(3)),
        peer(3, PathStatus::Unknown, None),
    ]));
    let st = w.plan().own_status;
    assert!(!st.ready);
    let worst = st.paths.unwrap().worst.unwrap();
    assert_eq!(
        (worst.name.as_str(), worst.path.as_str()),
        ("n3", "unknown")
    );
    // Not running yet: not ready, and it says so.
    w.running = None;
    let st = w.plan().own_status;
    assert!(!st.ready);
    assert!(st.message.unwrap().contains("not running yet"));
}

#[test]
fn a_status_is_written_on_change_or_heartbeat_not_when_ages_move() {
    let w = World::three();
    let first = w.plan().own_status;
    assert!(status_due(None, Duration::ZERO, &first));
    // A second later only the handshake ages moved: no write.
    let mut w2 = World::three();
    w2.inspect = Some(inspect(vec![
        peer(2, direct(), Some(4)),
        peer(3, relayed(), Some(41)),
    ]));
    let later = w2.plan().own_status;
    assert_ne!(first, later);
    assert!(!status_due(Some(&first), Duration::from_secs(1), &later));
    // A path changes kind: written at once.
    w2.inspect = Some(inspect(vec![
        peer(2, direct(), Some(4)),
        peer(3, direct(), Some(41)),
    ]));
    let changed = w2.plan().own_status;
    assert!(status_due(Some(&first), Duration::from_secs(1), &changed));
    // Nothing changes: one heartbeat a minute.
    assert!(!status_due(
        Some(&first),
        HEARTBEAT - Duration::from_secs(1),
        &first
    ));
    assert!(status_due(Some(&first), HEARTBEAT, &first));
}

#[test]
fn the_leader_counts_ready_nodes_from_fresh_statuses_only() {
    let mut w = World::three();
    // n3 has no record yet; n2's status is older than STALE.
    w.records = vec![
        record(1, true, 5, None),
        record(2, true, STALE.as_secs() as i64 + 1, None),
    ];
    let st = w.plan().network_status.unwrap();
    assert_eq!((st.node_count, st.ready_nodes), (Some(3), Some(1)));
    assert_eq!(st.observed_generation, Some(3));
    let ready = condition(&st, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message.as_deref(), Some("not ready: n2, n3"));
    let degraded = condition(&st, "Degraded");
    assert_eq!(degraded.reason.as_deref(), Some("NodeProblems"));
    assert!(
        degraded
            .message
            .as_ref()
            .unwrap()
            .contains("n2: no word from its agent")
    );
    // All fresh and ready: Ready=True, Degraded=False.
    w.records = (1..=3).map(|i| record(i, true, 5, None)).collect();
    let st = w.plan().network_status.unwrap();
    assert_eq!(condition(&st, "Ready").status, "True");
    assert_eq!(
        condition(&st, "Degraded").reason.as_deref(),
        Some("AsExpected")
    );
    // Only the lease holder plans the network's status.
    w.leader = false;
    assert!(w.plan().network_status.is_none());
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let mut w = World::three();
    w.records = (1..=3).map(|i| record(i, true, 5, None)).collect();
    let first = w.plan().network_status.unwrap();
    assert_eq!(
        condition(&first, "Ready").last_transition_time,
        Some(now().to_string())
    );
    let mut earlier = first.clone();
    for c in &mut earlier.conditions {
        c.last_transition_time = Some("2026-01-01T00:00:00Z".into());
    }
    w.network.status = Some(earlier);
    let again = w.plan().network_status.unwrap();
    assert_eq!(
        condition(&again, "Ready").last_transition_time.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
}

#[test]
fn the_network_status_stays_small_with_a_thousand_nodes_down() {
    let mut w = World::three();
    w.nodes = (1..=250u8)
        .flat_map(|i| {
            (0..4u8).map(move |j| ClusterNode {
                name: format!("node-{i}-{j}"),
                key: Some(key(i.wrapping_add(j))),
                ..ClusterNode::default()
            })
        })
        .collect();
    w.records = Vec::new();
    let st = w.plan().network_status.unwrap();
    assert_eq!(st.node_count, Some(1000));
    let size = serde_json::to_vec(&st).unwrap().len();
    assert!(size < 4096, "{size} bytes");
    let msg = condition(&st, "Ready").message.clone().unwrap();
    assert!(msg.ends_with("and 990 more"), "{msg}");
}

#[test]
fn an_invalid_resource_runs_nothing_and_the_leader_says_so_once_per_generation() {
    let mut w = World::three();
    w.network.spec.peers.push(ExternalPeer {
        hostname: Some("bad".into()),
        key: "short".into(),
        role: None,
        static_ip: None,
        endpoint: None,
        routes: Vec::new(),
    });
    let p = w.plan();
    assert!(!p.spec_valid && p.run.is_none());
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].key, "invalid/3");
    assert_eq!(p.events[0].reason, convert::INVALID_SPEC);
    let st = p.network_status.unwrap();
    let degraded = condition(&st, "Degraded");
    assert_eq!(degraded.reason.as_deref(), Some(convert::INVALID_SPEC));
    assert!(degraded.message.as_ref().unwrap().contains("spec.peers[0]"));
    // Another agent: the same problem, no event of its own.
    w.leader = false;
    assert!(w.plan().events.is_empty());
}

#[test]
fn a_member_runs_the_network_of_every_node() {
    let p = World::three().plan();
    let run = p.run.unwrap();
    assert_eq!(run.members, ["n1", "n2", "n3"]);
    assert!(p.node_problems.is_empty() && p.network_problems.is_empty());
}

#[test]
fn the_own_record_is_rewritten_only_when_it_says_something_else() {
    let desired = World::three().plan().own_spec.unwrap();
    let mut r = WireHubNode::new("n1", desired.clone());
    // The leader's allocations beside the agent's fields are no difference.
    r.spec.overlay_ipv4 = Some("10.0.0.254".into());
    assert!(!own_spec_differs(Some(&r), &desired));
    assert!(own_spec_differs(None, &desired));
    r.spec.public_key = Some(key(7).to_string());
    assert!(own_spec_differs(Some(&r), &desired));
}

#[test]
fn a_refused_remote_node_degrades_the_network_and_the_leader_warns_naming_the_cluster() {
    let w = World::three();
    let k = key(1);
    let refused = [Problem {
        reason: crate::k8s::mesh::REMOTE_POD_CIDR_CONFLICT,
        message: "cluster b's node n3's pod CIDR 10.244.7.0/24 overlaps this cluster's pod subnet 10.244.0.0/16".into(),
    }];
    let snapshot = |leader: bool| Snapshot {
        me: "n1",
        network: &w.network,
        nodes: &w.nodes,
        records: &w.records,
        built: None,
        key: Some(&k),
        listen_port: 62096,
        running: w.running.as_ref(),
        running_generation: Some(3),
        inspect: w.inspect.as_ref(),
        node_problems: &[],
        network_problems: &refused,
        leader,
        now: now(),
    };
    let p = plan(&snapshot(true));
    assert!(p.run.is_some(), "the local network still runs");
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].reason, "RemotePodCIDRConflict");
    assert!(p.events[0].note.contains("cluster b") && p.events[0].note.contains("10.244.7.0/24"));
    let st = p.network_status.unwrap();
    let degraded = condition(&st, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .as_ref()
            .unwrap()
            .contains("cluster b's node n3")
    );
    assert!(
        plan(&snapshot(false)).events.is_empty(),
        "only the leader publishes events"
    );
}
