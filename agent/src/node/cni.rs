//! The CNI configuration a router node writes (Kubernetes): owns the file
//! `CNI_CONFIG_NAME` in the node's CNI directory while the node routes a
//! pod CIDR, and turns on IP forwarding (IPv6 too when it routes an IPv6
//! block). The decision (which CIDRs) is the overlay's; the text is
//! [`config`]'s (pure: one host-local range per CIDR the node routes, in
//! its order, so a dual-stack node's pods get an address of each family,
//! the primary first); [`publish`] is the I/O.

use super::overlay::Overlay;
use crate::config::NetworkSpec;
use crate::control;
use ipnet::{IpNet, Ipv4Net};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The name of the CNI configuration a router node writes.
pub const CNI_CONFIG_NAME: &str = "10-wirehub.conflist";

/// The CNI configuration of a node that routes `own` (its pod CIDRs, the
/// primary family first), in a network whose members route `all`: one
/// host-local range set per CIDR of `own`, in its order. Run-time state
/// (the ready file, IPAM and plugin state) lives in `run_dir`.
pub fn config(
    own: &[IpNet],
    all: &[IpNet],
    subnet: Option<Ipv4Net>,
    mtu: u32,
    run_dir: &Path,
) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = own
        .iter()
        .map(|n| json!([{"subnet": n.to_string()}]))
        .collect();
    let ready = run_dir.join("ready").display().to_string();
    // IPAM and plugin state live beside the node's other run-time state.
    let ipam_dir = run_dir.join("cni-ipam").display().to_string();
    let state_dir = run_dir.join("cni-state").display().to_string();
    json!({
        "cniVersion": "1.0.0",
        "name": "wirehub",
        "plugins": [
            {
                "type": "wirehub-cni",
                "mtu": mtu,
                "podSubnet": all.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "overlaySubnet": subnet.map(|s| s.to_string()),
                "readyFile": ready,
                "stateDir": state_dir,
                "ipam": {"type": "host-local", "ranges": ranges, "dataDir": ipam_dir},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Writes the node's CNI configuration into `dir` when it routes a pod CIDR
/// (and removes the one in `written` when it no longer does).
pub fn publish(
    dir: Option<&Path>,
    written: &mut Option<PathBuf>,
    overlay: &Overlay,
    spec: &NetworkSpec,
    mtu: u32,
) {
    let Some(dir) = dir else {
        return;
    };
    let own = overlay.own_routes();
    let path = dir.join(CNI_CONFIG_NAME);
    if own.is_empty() {
        if let Some(p) = written.take() {
            let _ = std::fs::remove_file(p);
        }
        return;
    }
    let conf = config(
        &own,
        &overlay.all_routes(),
        spec.subnet,
        mtu,
        &control::run_dir(),
    );
    let Ok(text) = serde_json::to_string_pretty(&conf) else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        tracing::warn!(dir = %dir.display(), "cannot create the CNI configuration directory");
        return;
    }
    // Written aside then renamed, so a runtime never reads half a file.
    let tmp = dir.join(format!(".{CNI_CONFIG_NAME}.tmp"));
    match std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
        Ok(()) => {
            if written.is_none() {
                tracing::info!(path = %path.display(), pod_cidrs = ?own, "CNI configuration written");
            }
            *written = Some(path);
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the CNI configuration")
        }
    }
    // Pods' traffic crosses this node: it must forward.
    let mut files = vec!["/proc/sys/net/ipv4/ip_forward"];
    if own.iter().any(|n| matches!(n, ipnet::IpNet::V6(_))) {
        files.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for file in files {
        if let Err(e) = std::fs::write(file, "1") {
            tracing::warn!(file, error = %e, "cannot enable forwarding");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_node_gives_host_local_one_range_per_family_the_primary_first() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let own = [net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
        let all = [
            net("10.244.0.0/24"),
            net("10.244.1.0/24"),
            net("fd00:10:244::/64"),
            net("fd00:10:244:1::/64"),
        ];
        let c = config(
            &own,
            &all,
            "10.99.0.0/24".parse().ok(),
            1420,
            Path::new("/run/wirehub"),
        );
        let plugin = &c["plugins"][0];
        assert_eq!(
            plugin["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(plugin["podSubnet"].as_array().map(Vec::len), Some(4));
        assert_eq!(plugin["overlaySubnet"], "10.99.0.0/24");
        assert_eq!(plugin["readyFile"], "/run/wirehub/ready");
        // IPv6 primary: its range first.
        let c = config(
            &[own[1], own[0]],
            &all,
            None,
            1420,
            Path::new("/run/wirehub"),
        );
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0],
            json!([{"subnet": "fd00:10:244:1::/64"}])
        );
    }
}
