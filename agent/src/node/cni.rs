//! The CNI configuration a router node writes (Kubernetes): owns the file
//! `CNI_CONFIG_NAME` in the node's CNI directory while the node routes a
//! pod CIDR, and turns on IP forwarding. I/O of the shell; the decision
//! (which CIDRs) is the overlay's.

use super::overlay::Overlay;
use crate::config::NetworkSpec;
use crate::control;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The name of the CNI configuration a router node writes.
pub const CNI_CONFIG_NAME: &str = "10-wirehub.conflist";

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
    let ranges: Vec<serde_json::Value> = own
        .iter()
        .map(|n| json!([{"subnet": n.to_string()}]))
        .collect();
    let run_dir = control::run_dir();
    let ready = run_dir.join("ready").display().to_string();
    // IPAM and plugin state live beside the node's other run-time state.
    let ipam_dir = run_dir.join("cni-ipam").display().to_string();
    let state_dir = run_dir.join("cni-state").display().to_string();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "wirehub",
        "plugins": [
            {
                "type": "wirehub-cni",
                "mtu": mtu,
                "podSubnet": overlay.all_routes().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "overlaySubnet": spec.subnet.map(|s| s.to_string()),
                "readyFile": ready,
                "stateDir": state_dir,
                "ipam": {"type": "host-local", "ranges": ranges, "dataDir": ipam_dir},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
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
