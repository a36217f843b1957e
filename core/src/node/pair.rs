//! A test driver for whole nodes, in the manner of quinn-proto's `Pair`:
//! several [`Node`](super::core::Node) cores in one process on the
//! simulated internet of [`super::sim::net`], with a fixed seed. Host 0 is a
//! public bootstrap; the others are public or behind a home router with an
//! endpoint-independent ("easy") or address-and-port-dependent ("hard")
//! mapping, filtering by the flows the inside opened, no hairpinning.
//! Every datagram takes 20 ms per router hop. Each trusted node has the
//! simulator's fake data plane: "reaches" means a data datagram went from
//! one node's data plane to the other's.
//!
//! It owns nothing outside the process: no socket, no clock, no thread.

use super::sim::net::{Attach, HostSpec, LinkModel, NatModel, Topology};
pub use super::sim::net::{Net, PORT};

/// How a NAT maps the flows of its inside hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// One public port per inside socket, whatever the destination
    /// ("easy": hole punching works).
    EndpointIndependent,
    /// A new public port per destination ("hard", symmetric).
    AddressAndPortDependent,
}

/// How a node of a test network is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Public,
    Behind(NatKind),
}

/// A network with one public bootstrap node (index 0) and the given
/// trusted nodes, none started yet (see [`Net::start`]).
pub fn network(trusted: &[Place]) -> Net {
    let boot = HostSpec {
        attach: Attach::Public,
        trusted: false,
    };
    let hosts = std::iter::once(boot)
        .chain(trusted.iter().map(|p| HostSpec {
            attach: match p {
                Place::Public => Attach::Public,
                Place::Behind(NatKind::EndpointIndependent) => Attach::Behind {
                    home: NatModel::easy(),
                    cgnat: None,
                },
                Place::Behind(NatKind::AddressAndPortDependent) => Attach::Behind {
                    home: NatModel::hard(),
                    cgnat: None,
                },
            },
            trusted: true,
        }))
        .collect();
    let topology = Topology {
        hosts,
        cgnats: Vec::new(),
        link: LinkModel::default(),
    };
    Net::build(&topology, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Request, Response};
    use crate::keys::PublicKey;
    use crate::node::core::{DataplaneView, Event, Reply};
    use crate::node::overlay::PeerPath;
    use std::time::Duration;

    const S: Duration = Duration::from_secs(1);

    fn is_direct(net: &Net, i: usize, j: usize) -> bool {
        matches!(
            net.core(i).path(&net.public_key(j)),
            Some(PeerPath::Direct(_))
        )
    }

    fn relay_in_use(net: &Net, i: usize, j: usize) -> Option<PublicKey> {
        match net.core(i).path(&net.public_key(j)) {
            Some(PeerPath::Relayed(r)) => r.first().map(|r| r.0),
            _ => None,
        }
    }

    /// Asserts that data goes from i to j and back, each within 2 s.
    fn assert_reach_each_other(net: &mut Net, i: usize, j: usize) {
        assert!(
            time_to_deliver(net, i, j, 1, 2 * S).is_some(),
            "n{i} cannot reach n{j}"
        );
        assert!(
            time_to_deliver(net, j, i, 2, 2 * S).is_some(),
            "n{j} cannot reach n{i}"
        );
    }

    /// Sends `marker` from i to j every 100 ms until it arrives; the time it took.
    fn time_to_deliver(
        net: &mut Net,
        i: usize,
        j: usize,
        marker: u8,
        limit: Duration,
    ) -> Option<Duration> {
        let start = net.now.mono;
        while net.now.mono - start < limit {
            net.send_data(i, j, marker);
            net.run_for(Duration::from_millis(100));
            if net.got(j, i, marker) {
                return Some(net.now.mono - start);
            }
        }
        None
    }

    #[test]
    fn three_public_nodes_find_each_other_and_agree_on_direct_paths() {
        let mut net = network(&[Place::Public, Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        for i in 1..=3 {
            for j in 1..=3 {
                if i != j {
                    assert!(is_direct(&net, i, j), "n{i} has no direct path to n{j}");
                    assert_eq!(
                        net.nodes[i].peers.get(&net.public_key(j)),
                        Some(&Some(net.nodes[j].addr)),
                        "n{i}'s data plane does not send to n{j}'s address"
                    );
                }
            }
        }
        for (i, j) in [(1, 2), (2, 3), (3, 1)] {
            assert!(
                time_to_deliver(&mut net, i, j, 1, S).is_some(),
                "n{i} cannot reach n{j}"
            );
        }
    }

    #[test]
    fn a_node_behind_a_nat_that_has_heard_only_from_the_bootstrap_gets_a_relay() {
        let mut net = network(&[Place::Behind(NatKind::AddressAndPortDependent)]);
        net.start_all();
        net.run_for(5 * S);
        let relays = net.core(1).kept_relays();
        assert_eq!(
            relays.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![net.public_key(0)],
            "the node behind a NAT keeps the bootstrap as its relay"
        );
        assert!(
            net.core(1).own_record().relays.contains(&relays[0]),
            "and publishes it"
        );
    }

    /// The moment a node behind a NAT publishes a record naming a relay,
    /// the relay (here the bootstrap, which answers lookups) holds it
    /// within a round trip: before, only the self-lookup carried it, and
    /// it was refused while the DHT's lookup slots were full (here with
    /// lookups of eight peers that are not up), or asked nodes that never
    /// answer first, so lookups met the bare record for seconds (net-sim
    /// seed 2161010223833890263).
    #[test]
    fn a_record_naming_a_relay_reaches_the_relay_within_a_round_trip() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = network(&[hard; 9]);
        net.start(0);
        net.start(1);
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        while net.core(1).own_record().relays.is_empty() {
            assert!(waited < 5 * S, "no relay picked");
            net.run_for(step);
            waited += step;
        }
        let published = net.core(1).own_record().clone();
        net.run_for(Duration::from_millis(150));
        let held = net.core(0).dht_record_of(&net.public_key(1));
        assert_eq!(
            held.map(|r| r.relays),
            Some(published.relays),
            "the relay holds the record that names it"
        );
    }

    #[test]
    fn two_nodes_behind_hard_nats_reach_each_other_through_a_public_node() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = network(&[Place::Public, hard, hard]);
        net.start_all();
        net.run_for(5 * S);
        assert!(
            relay_in_use(&net, 2, 3).is_some(),
            "n2 has no relayed path to n3"
        );
        assert_reach_each_other(&mut net, 2, 3);
    }

    #[test]
    fn two_nodes_behind_easy_nats_punch_a_direct_path() {
        let easy = Place::Behind(NatKind::EndpointIndependent);
        let mut net = network(&[Place::Public, easy, easy]);
        net.start_all();
        net.run_for(10 * S);
        assert!(
            is_direct(&net, 2, 3) && is_direct(&net, 3, 2),
            "n2 and n3 did not punch through"
        );
        assert!(time_to_deliver(&mut net, 2, 3, 1, S).is_some());
    }

    /// Two public nodes and two nodes behind hard NATs (n3, n4) relayed
    /// through one of them, which has just been killed: the network and the
    /// dead relay's key.
    fn two_hard_nat_nodes_whose_relay_in_use_just_died() -> (Net, PublicKey) {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let mut net = network(&[Place::Public, Place::Public, hard, hard]);
        net.start_all();
        net.run_for(8 * S);
        assert!(
            time_to_deliver(&mut net, 3, 4, 1, 2 * S).is_some(),
            "n3 cannot reach n4"
        );
        let relay = relay_in_use(&net, 3, 4).expect("a relayed path");
        let dead = net.index_of(&relay).expect("the relay is a node");
        net.kill(dead);
        (net, relay)
    }

    #[test]
    fn the_relay_in_use_dies_and_traffic_moves_to_another_within_1_s() {
        let (mut net, relay) = two_hard_nat_nodes_whose_relay_in_use_just_died();
        let took = time_to_deliver(&mut net, 3, 4, 2, 3 * S).expect("traffic never moved");
        eprintln!("relay in use died while flowing: data again after {took:?}");
        assert!(took <= S, "traffic moved after {took:?}");
        assert_ne!(relay_in_use(&net, 3, 4), Some(relay));
    }

    #[test]
    fn a_reload_that_fails_keeps_the_running_network() {
        let mut net = network(&[Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        assert!(is_direct(&net, 1, 2));
        let now = net.now;
        // A file that does not parse: nothing changes.
        let answer = net
            .core_mut(1)
            .reload(now, Err("config:3: 'trust' needs a key"));
        match answer {
            Response::Error(e) => assert!(
                e.contains("config:3") && e.contains("nothing was changed"),
                "{e}"
            ),
            other => panic!("a bad file was taken: {other:?}"),
        }
        // A file that parses but names another network and drops n2: refused whole.
        let mut other = net.core(1).spec().clone();
        other.name = "elsewhere".into();
        let n2 = net.public_key(2);
        other.peers.retain(|p| p.key != n2);
        let before = net.core(1).spec().clone();
        let now = net.now;
        assert!(net.core_mut(1).apply_spec(now, other).is_err());
        assert_eq!(
            net.core(1).spec(),
            &before,
            "the refused network replaced the running one"
        );
        let mut changed = false;
        while let Some(e) = net.core_mut(1).poll_event() {
            changed |= e == Event::NetworkChanged;
        }
        assert!(
            !changed,
            "names and CNI were told of a network that was refused"
        );
        net.run_for(S);
        assert!(is_direct(&net, 1, 2), "the path went with the bad reload");
        assert!(time_to_deliver(&mut net, 1, 2, 9, S).is_some());
        // `wh reload` asks the shell for the file.
        let now = net.now;
        let reply =
            net.core_mut(1)
                .handle_request(now, 1, Request::Reload, &DataplaneView::default());
        assert_eq!(reply, Reply::ReadNetworkFile);
    }

    #[test]
    fn a_bootstrap_alone_connects_a_node_behind_an_easy_nat_and_one_behind_a_hard_nat() {
        let mut net = network(&[
            Place::Behind(NatKind::EndpointIndependent),
            Place::Behind(NatKind::AddressAndPortDependent),
        ]);
        net.start_all();
        net.run_for(15 * S);
        assert!(
            net.core(1).path(&net.public_key(2)).is_some(),
            "n1 has no path to n2: {:?}",
            net.core(1).own_record()
        );
        assert_reach_each_other(&mut net, 1, 2);
    }

    #[test]
    fn an_idle_relayed_path_survives_losing_the_relay_in_use_and_another_public_node() {
        let hard = Place::Behind(NatKind::AddressAndPortDependent);
        let easy = Place::Behind(NatKind::EndpointIndependent);
        let mut net = network(&[Place::Public, Place::Public, hard, easy]);
        net.start_all();
        net.run_for(8 * S);
        assert!(
            time_to_deliver(&mut net, 3, 4, 1, 2 * S).is_some(),
            "n3 cannot reach n4"
        );
        let relay = relay_in_use(&net, 3, 4).expect("a relayed path");
        let dead = net.index_of(&relay).expect("the relay is a node");
        net.run_for(3 * S);
        net.kill(dead);
        // A second public node goes with it: one remains.
        let second = [1, 2, 0].into_iter().find(|i| *i != dead).unwrap_or(1);
        net.kill(second);
        let took = time_to_deliver(&mut net, 3, 4, 2, 10 * S).expect("traffic never moved");
        eprintln!(
            "relay in use and a second public node died while idle: data again after {took:?}"
        );
        assert!(took <= 3 * S, "traffic moved after {took:?}");
    }

    #[test]
    fn a_peer_endpoint_given_by_host_name_is_resolved_by_the_shell_and_pinged() {
        let mut net = network(&[Place::Public, Place::Public]);
        // No bootstrap: only n1's static endpoint for n2 can join them.
        let n2 = net.public_key(2);
        for p in net.nodes[1].config.spec.peers.iter_mut() {
            if p.key == n2 {
                p.endpoint = Some(crate::config::Endpoint {
                    host: "n2.sim".into(),
                    port: PORT,
                });
            }
        }
        net.names.insert("n2.sim".into(), net.nodes[2].addr);
        net.start(1);
        net.start(2);
        assert_eq!(
            net.resolved,
            vec!["n2.sim".to_string()],
            "the core asked the shell to resolve the name"
        );
        net.run_for(2 * S);
        assert!(
            is_direct(&net, 1, 2) && is_direct(&net, 2, 1),
            "n1 and n2 did not meet at the resolved address"
        );
    }

    #[test]
    fn wh_lookup_and_wh_ping_are_answered_when_the_network_answers() {
        let mut net = network(&[Place::Public, Place::Public]);
        net.start_all();
        net.run_for(3 * S);
        let n2 = net.public_key(2).to_string();
        let lookup = net.request(1, 41, Request::Lookup { peer: n2 });
        let ping = net.request(1, 42, Request::Ping { peer: "n2".into() });
        assert_eq!((lookup, ping), (Reply::Later, Reply::Later));
        net.run_for(S);
        let answer = |id| {
            net.answers
                .iter()
                .find(|a| a.0 == 1 && a.1 == id)
                .map(|a| a.2.clone())
        };
        match answer(41) {
            Some(Response::Ok(v)) => assert_eq!(v["key"], net.public_key(2).to_string()),
            other => panic!("wh lookup got {other:?}"),
        }
        match answer(42) {
            Some(Response::Ok(v)) => assert!(
                v["rtt_ms"]
                    .as_f64()
                    .is_some_and(|r| (30.0..100.0).contains(&r)),
                "{v}"
            ),
            other => panic!("wh ping got {other:?}"),
        }
        // A peer that is not in the network is an error at once.
        let r = net.request(
            1,
            43,
            Request::Ping {
                peer: "nobody".into(),
            },
        );
        assert!(matches!(r, Reply::Now(Response::Error(e)) if e.contains("'nobody'")));
    }

    #[test]
    fn the_relay_in_use_dies_and_the_sender_alone_moves_to_another_within_1_s() {
        let (mut net, relay) = two_hard_nat_nodes_whose_relay_in_use_just_died();
        // n4 says nothing more: only n3's own watch on its relay can move it.
        net.muted.push(4);
        let took = time_to_deliver(&mut net, 3, 4, 2, 3 * S).expect("traffic never moved");
        assert!(took <= S, "traffic moved after {took:?}");
        assert_ne!(relay_in_use(&net, 3, 4), Some(relay));
    }
}
