//! Routes into the overlay never take a host's route: a route the host
//! already has to a peer's subnet stays as it was (and keeps carrying that
//! subnet's traffic) through `wh up`, a reload that drops the peer's subnet,
//! and `wh down`; WireHub's own route sits beside it and goes with it, and
//! the daemon warns that the subnet is not reached through the overlay.

use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, require_lab};

const SUBNET_A: &str = "10.244.1.0/24";

/// The routes to `prefix` in `host`'s main table, split into the host's own
/// and WireHub's (those into a `wh-` interface).
fn routes_to(lab: &Lab, host: &Host, prefix: &str) -> (Vec<String>, Vec<String>) {
    let out = lab
        .exec(&host.netns, &["ip", "route", "show", "exact", prefix])
        .expect("ip route");
    let (ours, theirs): (Vec<String>, Vec<String>) = out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .partition(|l| l.contains("dev wh-"));
    (theirs, ours)
}

/// Waits until WireHub's route to `prefix` on `host` is there (`present`)
/// or gone; panics with the routes after `timeout`.
fn wait_for_our_route(lab: &Lab, host: &Host, prefix: &str, present: bool, timeout: Duration) {
    let start = Instant::now();
    loop {
        let (_, ours) = routes_to(lab, host, prefix);
        if ours.is_empty() != present {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{}: WireHub's route to {prefix} still {} after {timeout:?}: {ours:?}\n{}",
            host.name,
            if present { "missing" } else { "there" },
            lab.log(host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_host_route_to_a_peers_subnet_is_unchanged_by_up_reload_and_down() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let a = lab.public_host("node_a").expect("a");
    let b = lab.public_host("node_b").expect("b");
    // node_b's host routes node_a's subnet itself (a LAN route) before wh up.
    lab.exec(&b.netns, &["ip", "route", "add", SUBNET_A, "dev", "eth0"])
        .expect("host route");
    let (host_before, _) = routes_to(&lab, &b, SUBNET_A);
    assert_eq!(host_before.len(), 1, "{host_before:?}");

    lab.router_pair(&boot_pk, &boot.ip, &a, &b)
        .expect("routers up");
    // Where the host routes nothing, the overlay's route carries the subnet:
    // node_a reaches a "pod" of node_b.
    lab.exec(
        &b.netns,
        &["ip", "addr", "add", "10.244.2.7/32", "dev", "lo"],
    )
    .expect("addr");
    lab.ping_until(&a, "10.244.2.7", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.report(&[&a, &b])));
    // node_b's route to node_a's subnet sits beside the host's, which keeps
    // its place and its traffic.
    wait_for_our_route(&lab, &b, SUBNET_A, true, Duration::from_secs(10));
    let (host_after_up, ours) = routes_to(&lab, &b, SUBNET_A);
    assert_eq!(host_after_up, host_before, "after wh up; ours: {ours:?}");
    let get = lab
        .exec(&b.netns, &["ip", "route", "get", "10.244.1.7"])
        .expect("route get");
    assert!(
        get.contains("dev eth0"),
        "the host's route lost its traffic: {get}"
    );
    // And the daemon says so: that subnet is not reached through the overlay.
    let log = lab.log(&b);
    assert!(
        log.contains("the host already routes 10.244.1.0/24"),
        "no warning about the host's route:\n{log}"
    );
    // node_a's host routes nothing to node_b's subnet: no warning there.
    let log_a = lab.log(&a);
    assert!(
        !log_a.contains("the host already routes"),
        "a warning about a subnet the host does not route:\n{log_a}"
    );

    // A reload that drops node_a's subnet removes only WireHub's route.
    let config = lab.dir.join("pods.conf");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .lines()
        .map(|l| match l.strip_prefix("router node_a ") {
            Some(rest) => format!(
                "trust node_a {}",
                rest.split_whitespace().next().expect("key")
            ),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text + "\n").expect("write config");
    let iface = lab
        .wh_ok(&b, &["show", "interfaces"])
        .expect("interfaces")
        .trim()
        .to_string();
    lab.wh_ok(&b, &["reload", &iface]).expect("reload");
    wait_for_our_route(&lab, &b, SUBNET_A, false, Duration::from_secs(10));
    let (host_after_reload, _) = routes_to(&lab, &b, SUBNET_A);
    assert_eq!(host_after_reload, host_before, "after the reload");

    lab.wh_ok(&b, &["down", &iface]).expect("down");
    let (host_after_down, ours) = routes_to(&lab, &b, SUBNET_A);
    assert_eq!(host_after_down, host_before, "after wh down");
    assert!(ours.is_empty(), "{ours:?}");
}
