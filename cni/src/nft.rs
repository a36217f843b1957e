//! Masquerade with nftables: one table of our own, `inet wirehub-cni`.
//!
//! ```text
//! table inet wirehub-cni {
//!   set pods4 { type ipv4_addr; }            # one element per attached pod
//!   set pods6 { type ipv6_addr; }
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip  saddr @pods4 ip  daddr != 10.244.0.0/16 ip daddr != 10.0.0.0/24 counter masquerade
//!     ip6 saddr @pods6 ip6 daddr != fd00:244::/56 counter masquerade
//!   }
//! }
//! ```
//! Every change is one `nft -f -` transaction (atomic). Rules are rewritten
//! from the configuration on each ADD (same config on every pod of a node);
//! elements are added on ADD, removed on DEL/GC; the table is deleted when
//! the last attachment goes. Deletes are made idempotent by adding the same
//! object first in the same transaction (nft 1.0.6 has no `destroy`).

use crate::error::{CniError, CniResult, NFTABLES};
use crate::net::IpNet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const SEARCH: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

fn header(table: &str) -> String {
    format!(
        "add table inet {table}\n\
         add set inet {table} pods4 {{ type ipv4_addr; }}\n\
         add set inet {table} pods6 {{ type ipv6_addr; }}\n"
    )
}

fn elements(op: &str, table: &str, addrs: &[IpAddr]) -> String {
    let mut s = String::new();
    let v4: Vec<String> = addrs
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| a.to_string())
        .collect();
    let v6: Vec<String> = addrs
        .iter()
        .filter(|a| a.is_ipv6())
        .map(|a| a.to_string())
        .collect();
    if !v4.is_empty() {
        s += &format!("{op} element inet {table} pods4 {{ {} }}\n", v4.join(", "));
    }
    if !v6.is_empty() {
        s += &format!("{op} element inet {table} pods6 {{ {} }}\n", v6.join(", "));
    }
    s
}

/// The transaction of an ADD that (re)writes the table: table, sets, chain
/// and rules, plus the pod's addresses. Rewriting a chain with a hook costs
/// the kernel a synchronization (about 15 ms here), so ADD only does it when
/// `rules_script` differs from what it last wrote, and otherwise only adds
/// the elements (`elements_script`, about 2 ms).
pub fn add_script(table: &str, no_masq: &[IpNet], pods: &[IpAddr]) -> String {
    let mut s = rules_script(table, no_masq);
    s += &elements("add", table, pods);
    s
}

/// Adding the pod's addresses to an existing table.
pub fn elements_script(table: &str, pods: &[IpAddr]) -> String {
    elements("add", table, pods)
}

/// Table, sets, chain and rules for a configuration (no elements).
pub fn rules_script(table: &str, no_masq: &[IpNet]) -> String {
    let mut s = header(table);
    s += &format!(
        "add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {table} postrouting\n"
    );
    for (fam, sel, is4) in [("ip", "pods4", true), ("ip6", "pods6", false)] {
        let mut rule = format!("add rule inet {table} postrouting {fam} saddr @{sel}");
        for n in no_masq.iter().filter(|n| n.is_ipv4() == is4) {
            rule += &format!(" {fam} daddr != {}", n.trunc());
        }
        rule += " counter masquerade comment \"wirehub-cni: pods to outside the cluster\"\n";
        s += &rule;
    }
    s
}

/// The transaction of a DEL/GC: drop the pod's addresses, or the whole table
/// when no attachment is left.
pub fn del_script(table: &str, pods: &[IpAddr], last: bool) -> String {
    let mut s = header(table);
    if last {
        s += &format!("delete table inet {table}\n");
    } else if !pods.is_empty() {
        s += &elements("add", table, pods);
        s += &elements("delete", table, pods);
    }
    s
}

fn nft_binary() -> CniResult<PathBuf> {
    for p in SEARCH {
        if std::path::Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("nft");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(CniError::new(
        NFTABLES,
        "the nft binary (package nftables) is not installed",
    ))
}

/// Apply a script with `nft -f -` (no shell).
pub fn apply(script: &str) -> CniResult<()> {
    spawn(script)?.wait()
}

/// Start `nft -f -` with `script`; `wait` tells how it went.
pub fn spawn(script: &str) -> CniResult<Pending> {
    let nft = nft_binary()?;
    let mut child = Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(NFTABLES, format!("cannot run {}: {e}", nft.display())))?;
    if let Some(mut si) = child.stdin.take() {
        // Scripts are a few hundred bytes: far below a pipe's buffer.
        let _ = si.write_all(script.as_bytes());
    }
    Ok(Pending {
        child,
        script: script.to_string(),
    })
}

/// A running nft transaction.
pub struct Pending {
    child: std::process::Child,
    script: String,
}

impl Pending {
    pub fn wait(self) -> CniResult<()> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| CniError::new(NFTABLES, format!("nft failed: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(
                CniError::new(NFTABLES, "nftables transaction failed").with_details(format!(
                    "{}; script:\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.script
                )),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_script_excludes_cluster_and_overlay() {
        let nets: Vec<IpNet> = ["10.244.0.0/16", "10.0.0.0/24", "fd00:244::/56"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = add_script(
            "wirehub-cni",
            &nets,
            &[
                "10.244.1.5".parse().unwrap(),
                "fd00:244::5".parse().unwrap(),
            ],
        );
        assert!(s.contains(
            "add rule inet wirehub-cni postrouting ip saddr @pods4 ip daddr != 10.244.0.0/16 ip daddr != 10.0.0.0/24 counter masquerade"
        ));
        assert!(s.contains("ip6 saddr @pods6 ip6 daddr != fd00:244::/56 counter masquerade"));
        assert!(s.contains("add element inet wirehub-cni pods4 { 10.244.1.5 }"));
        assert!(s.contains("add element inet wirehub-cni pods6 { fd00:244::5 }"));
        assert!(s.contains("flush chain inet wirehub-cni postrouting"));
    }

    #[test]
    fn del_script_is_idempotent_shape() {
        let s = del_script("t", &["10.244.1.5".parse().unwrap()], false);
        let add = s.find("add element inet t pods4").unwrap();
        let del = s.find("delete element inet t pods4").unwrap();
        assert!(add < del);
        let s = del_script("t", &[], true);
        assert!(s.starts_with("add table inet t"));
        assert!(s.ends_with("delete table inet t\n"));
    }
}
