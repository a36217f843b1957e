//! Interop of the three WireGuard implementations a network can mix: node_a
//! on the default backend (kernel WireGuard where the module exists, as in
//! the kernel VM: e2e/kernel/all.sh; embedded elsewhere), node_b on the
//! embedded backend, node_c on wireguard-go. Every node pings every other.

use std::time::Duration;
use wirehub_e2e::{Lab, TrustedNetwork, require_lab};

/// The backend `wh inspect` reports for the only interface of a host.
fn backend(lab: &Lab, host: &wirehub_e2e::Host) -> String {
    let i = lab
        .wh_ok(host, &["show", "interfaces"])
        .expect("interfaces")
        .trim()
        .to_string();
    let inspect = lab.wh_ok(host, &["inspect", &i]).expect("inspect");
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    v["status"]["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn default_embedded_and_wireguard_go_nodes_all_ping_each_other() {
    require_lab!();
    if std::process::Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: wireguard-go is not installed");
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let TrustedNetwork { nodes, .. } = lab
        .trusted_network(
            3,
            &[
                (1, &["backend", "embedded"]),
                (2, &["backend", "userspace"]),
            ],
        )
        .expect("trusted network");
    let kernel = std::path::Path::new("/sys/module/wireguard").exists();
    let want = [
        if kernel { "kernel" } else { "embedded" },
        "embedded",
        "userspace",
    ];
    for (host, want) in nodes.iter().zip(want) {
        lab.wait_daemon(host, Duration::from_secs(10))
            .expect("daemon");
        assert_eq!(backend(&lab, host), want, "{}", host.name);
    }
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let ip = format!("10.0.42.{}", to + 2);
            if let Err(e) = lab.ping_until(&nodes[from], &ip, Duration::from_secs(10)) {
                panic!("{e}{}", lab.report(&[&nodes[from], &nodes[to]]));
            }
        }
    }
}
