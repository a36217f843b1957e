//! The plugin configuration read from stdin, validated field by field.
//!
//! Parsing goes through `serde_json::Value` so that every complaint names the
//! field it is about (code 7), while text that is not JSON at all is code 6.

use crate::error::{CniError, CniResult, DECODE};
use crate::net::IpNet;
use crate::version::{self, Version};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The overlay interface's default MTU, as the agent's `dataplane::DEFAULT_MTU`
/// (this crate stays free of the agent's dependencies); the agent writes
/// the real one into the configuration.
pub const DEFAULT_MTU: u32 = 1420;
pub const DEFAULT_READY_FILE: &str = "/run/wirehub/ready";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/wirehub";
pub const DEFAULT_NFT_TABLE: &str = "wirehub-cni";

/// One attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    /// The whole object as received: handed unchanged (bar `cniVersion`) to IPAM.
    pub raw: Map<String, Value>,
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub mtu: u32,
    /// Cluster-wide pod subnets (all nodes): never masqueraded.
    pub pod_subnets: Vec<IpNet>,
    /// The WireHub overlay's own subnets: never masqueraded either.
    pub overlay_subnets: Vec<IpNet>,
    pub ip_masq: bool,
    pub ipam_type: String,
    pub ready_file: PathBuf,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub nft_table: String,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// GC only: `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parse stdin into JSON, code 6 on failure.
pub fn decode(stdin: &[u8]) -> CniResult<Map<String, Value>> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            DECODE,
            "failed to decode the network configuration on stdin",
        )
        .with_details(e.to_string())
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(CniError::new(
            DECODE,
            "the network configuration on stdin must be a JSON object",
        )
        .with_details(format!("got {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn req_str<'a>(m: &'a Map<String, Value>, field: &str) -> CniResult<&'a str> {
    match m.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(CniError::config(format!(
            "field `{field}` must not be empty"
        ))),
        Some(other) => Err(CniError::config(format!(
            "field `{field}` must be a string, got {}",
            kind(other)
        ))),
        None => Err(CniError::config(format!("field `{field}` is required"))),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, field: &str) -> CniResult<Option<&'a str>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_str(m, field).map(Some),
    }
}

fn opt_path(m: &Map<String, Value>, field: &str) -> CniResult<Option<PathBuf>> {
    match opt_str(m, field)? {
        None => Ok(None),
        Some(s) if s.starts_with('/') => Ok(Some(PathBuf::from(s))),
        Some(s) => Err(CniError::config(format!(
            "field `{field}` must be an absolute path, got {s:?}"
        ))),
    }
}

/// A CIDR or a list of CIDRs.
fn opt_subnets(m: &Map<String, Value>, field: &str) -> CniResult<Option<Vec<IpNet>>> {
    let items: Vec<&Value> = match m.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::String(_)) => vec![v],
        Some(other) => {
            return Err(CniError::config(format!(
                "field `{field}` must be a CIDR string or a list of them, got {}",
                kind(other)
            )));
        }
    };
    let mut out = Vec::new();
    for it in items {
        let Value::String(s) = it else {
            return Err(CniError::config(format!(
                "field `{field}`: every entry must be a CIDR string, got {}",
                kind(it)
            )));
        };
        let n: IpNet = s
            .parse()
            .map_err(|e| CniError::config(format!("field `{field}`: {e}")))?;
        out.push(n.trunc());
    }
    if out.is_empty() {
        return Err(CniError::config(format!(
            "field `{field}` must list at least one CIDR"
        )));
    }
    Ok(Some(out))
}

/// Network name rule of the spec: alphanumeric first, then `[A-Za-z0-9_.-]`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_table(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

impl NetConf {
    /// Parse and validate the configuration for a verb.
    pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
        let raw = decode(stdin)?;
        Self::from_map(raw)
    }

    pub fn from_map(raw: Map<String, Value>) -> CniResult<NetConf> {
        let cni_version = req_str(&raw, "cniVersion")?.to_string();
        let version = version::check_supported(&cni_version)?;
        if let Some(v) = raw.get("cniVersions")
            && !matches!(v, Value::Array(a) if a.iter().all(Value::is_string))
        {
            return Err(CniError::config(
                "field `cniVersions` must be a list of version strings",
            ));
        }

        let name = req_str(&raw, "name")?.to_string();
        if !valid_name(&name) {
            return Err(CniError::config(format!(
                "field `name`: {name:?} must start with a letter or digit and contain only letters, digits, `_`, `.`, `-`"
            )));
        }
        let plugin_type = req_str(&raw, "type")?.to_string();

        let mtu = match raw.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v @ 576..=65535) => v as u32,
                _ => {
                    return Err(CniError::config(format!(
                        "field `mtu` must be an integer between 576 and 65535, got {n}"
                    )));
                }
            },
            Some(other) => {
                return Err(CniError::config(format!(
                    "field `mtu` must be a number, got {}",
                    kind(other)
                )));
            }
        };

        let pod = opt_subnets(&raw, "podSubnet")?;
        let cluster = opt_subnets(&raw, "clusterCIDR")?;
        let pod_subnets = match (pod, cluster) {
            (Some(_), Some(_)) => {
                return Err(CniError::config(
                    "fields `podSubnet` and `clusterCIDR` are the same setting: give only one",
                ));
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => {
                return Err(CniError::config(
                    "field `podSubnet` is required (the cluster-wide pod CIDR, e.g. \"10.244.0.0/16\")",
                ));
            }
        };
        if !pod_subnets.iter().any(IpNet::is_ipv4) {
            return Err(CniError::config(
                "field `podSubnet` must contain an IPv4 CIDR",
            ));
        }
        let overlay_subnets = opt_subnets(&raw, "overlaySubnet")?.unwrap_or_default();

        let ip_masq = match raw.get("ipMasq") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(CniError::config(format!(
                    "field `ipMasq` must be a boolean, got {}",
                    kind(other)
                )));
            }
        };

        let ipam_type = match raw.get("ipam") {
            Some(Value::Object(ipam)) => {
                let t = req_str(ipam, "type").map_err(|e| CniError {
                    msg: e.msg.replace("field `type`", "field `ipam.type`"),
                    ..e
                })?;
                if t.contains('/') || t == "." || t == ".." {
                    return Err(CniError::config(format!(
                        "field `ipam.type`: {t:?} must be a plugin file name, not a path"
                    )));
                }
                t.to_string()
            }
            Some(other) => {
                return Err(CniError::config(format!(
                    "field `ipam` must be an object, got {}",
                    kind(other)
                )));
            }
            None => {
                return Err(CniError::config(
                    "field `ipam` is required (e.g. {\"type\":\"host-local\",...})",
                ));
            }
        };

        let ready_file =
            opt_path(&raw, "readyFile")?.unwrap_or_else(|| PathBuf::from(DEFAULT_READY_FILE));
        let state_dir =
            opt_path(&raw, "stateDir")?.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let log_file = opt_path(&raw, "logFile")?;
        let nft_table = opt_str(&raw, "nftTable")?
            .unwrap_or(DEFAULT_NFT_TABLE)
            .to_string();
        if !valid_table(&nft_table) {
            return Err(CniError::config(format!(
                "field `nftTable`: {nft_table:?} must be 1-64 letters, digits, `_` or `-`"
            )));
        }

        let dns = match raw.get("dns") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(CniError::config(format!(
                    "field `dns` must be an object, got {}",
                    kind(other)
                )));
            }
        };
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(CniError::config(format!(
                    "field `prevResult` must be an object, got {}",
                    kind(other)
                )));
            }
        };
        let valid_attachments = parse_attachments(&raw)?;

        Ok(NetConf {
            raw,
            cni_version,
            version,
            name,
            plugin_type,
            mtu,
            pod_subnets,
            overlay_subnets,
            ip_masq,
            ipam_type,
            ready_file,
            state_dir,
            log_file,
            nft_table,
            dns,
            prev_result,
            valid_attachments,
        })
    }

    /// Subnets whose destinations are never masqueraded.
    pub fn no_masq_subnets(&self) -> Vec<IpNet> {
        let mut v = self.pod_subnets.clone();
        v.extend(self.overlay_subnets.iter().copied());
        v
    }
}

fn parse_attachments(raw: &Map<String, Value>) -> CniResult<Option<Vec<Attachment>>> {
    let (field, v) = match (
        raw.get("cni.dev/valid-attachments"),
        raw.get("cni.dev/attachments"),
    ) {
        (Some(v), _) => ("cni.dev/valid-attachments", v),
        (None, Some(v)) => ("cni.dev/attachments", v),
        (None, None) => return Ok(None),
    };
    let Value::Array(items) = v else {
        return Err(CniError::config(format!(
            "field `{field}` must be a list of {{\"containerID\",\"ifname\"}} objects"
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let Value::Object(o) = it else {
            return Err(CniError::config(format!(
                "field `{field}[{i}]` must be an object"
            )));
        };
        let cid = match o.get("containerID") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(CniError::config(format!(
                    "field `{field}[{i}].containerID` must be a non-empty string"
                )));
            }
        };
        let ifname = match o.get("ifname") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(CniError::config(format!(
                    "field `{field}[{i}].ifname` must be a non-empty string"
                )));
            }
        };
        out.push(Attachment {
            container_id: cid,
            ifname,
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "wirehub",
            "type": "wirehub-cni",
            "podSubnet": "10.244.0.0/16",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}
        })
    }

    fn with(field: &str, v: Value) -> Vec<u8> {
        let mut b = base();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(field);
        } else {
            b[field] = v;
        }
        serde_json::to_vec(&b).unwrap()
    }

    #[test]
    fn defaults() {
        let c = NetConf::parse(&serde_json::to_vec(&base()).unwrap()).unwrap();
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.ready_file, PathBuf::from("/run/wirehub/ready"));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.nft_table, "wirehub-cni");
        assert!(c.ip_masq);
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.pod_subnets[0].to_string(), "10.244.0.0/16");
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn malformed_is_6() {
        for s in [&b"{"[..], b"", b"[1,2]", b"\"x\"", b"nul"] {
            assert_eq!(NetConf::parse(s).unwrap_err().code, 6);
        }
    }

    #[test]
    fn bad_version_is_1() {
        assert_eq!(
            NetConf::parse(&with("cniVersion", "9.9.9".into()))
                .unwrap_err()
                .code,
            1
        );
    }

    #[test]
    fn invalid_fields_are_7_and_named() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("mtu", "big".into(), "`mtu`"),
            ("mtu", 10.into(), "`mtu`"),
            ("mtu", 70000.into(), "`mtu`"),
            ("podSubnet", Value::Null, "`podSubnet`"),
            ("podSubnet", "10.244.0.0".into(), "`podSubnet`"),
            ("podSubnet", "fd00::/64".into(), "`podSubnet`"),
            ("podSubnet", 5.into(), "`podSubnet`"),
            ("overlaySubnet", "x/8".into(), "`overlaySubnet`"),
            ("name", "-bad".into(), "`name`"),
            ("name", Value::Null, "`name`"),
            ("type", 3.into(), "`type`"),
            ("ipam", Value::Null, "`ipam`"),
            ("ipam", "host-local".into(), "`ipam`"),
            ("ipam", serde_json::json!({}), "`ipam.type`"),
            ("ipam", serde_json::json!({"type": "../x"}), "`ipam.type`"),
            ("readyFile", "relative".into(), "`readyFile`"),
            ("stateDir", 1.into(), "`stateDir`"),
            ("logFile", "x.log".into(), "`logFile`"),
            ("ipMasq", "yes".into(), "`ipMasq`"),
            ("nftTable", "a b".into(), "`nftTable`"),
            ("dns", "8.8.8.8".into(), "`dns`"),
            ("prevResult", 1.into(), "`prevResult`"),
            ("cniVersions", "1.1.0".into(), "`cniVersions`"),
            (
                "cni.dev/valid-attachments",
                serde_json::json!([{"ifname": "eth0"}]),
                "containerID",
            ),
            (
                "cni.dev/valid-attachments",
                serde_json::json!({}),
                "valid-attachments",
            ),
        ];
        for (field, v, needle) in cases {
            let e = NetConf::parse(&with(field, v.clone())).unwrap_err();
            assert_eq!(e.code, 7, "{field}={v}: {e}");
            assert!(e.msg.contains(needle), "{field}={v}: {e}");
        }
    }

    #[test]
    fn cluster_cidr_alias_and_lists() {
        let mut b = base();
        b.as_object_mut().unwrap().remove("podSubnet");
        b["clusterCIDR"] = serde_json::json!(["10.244.0.0/16", "fd00:244::/56"]);
        b["overlaySubnet"] = "10.0.0.0/24".into();
        let c = NetConf::parse(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(c.pod_subnets.len(), 2);
        assert_eq!(c.no_masq_subnets().len(), 3);
        b["podSubnet"] = "10.244.0.0/16".into();
        assert_eq!(
            NetConf::parse(&serde_json::to_vec(&b).unwrap())
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn example_conflist_of_the_docs_parses() {
        let list: Value =
            serde_json::from_str(include_str!("../../e2e/cni/wirehub.conflist")).unwrap();
        let mut p = list["plugins"][0].clone();
        p["cniVersion"] = list["cniVersion"].clone();
        p["name"] = list["name"].clone();
        let c = NetConf::parse(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.overlay_subnets[0].to_string(), "10.0.0.0/24");
    }

    #[test]
    fn attachments_both_keys() {
        let c = NetConf::parse(&with(
            "cni.dev/attachments",
            serde_json::json!([{"containerID": "a", "ifname": "eth0"}]),
        ))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }
}
