//! The CNI result object, read leniently (prevResult, IPAM output of any
//! supported version) and written in the exact shape of the requested version.

use crate::version::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    /// Only in results before 1.0.0 ("4" or "6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CniOutput {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "dns_is_empty")]
    pub dns: Option<Value>,
}

fn dns_is_empty(d: &Option<Value>) -> bool {
    match d {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        _ => false,
    }
}

impl CniOutput {
    /// Read a result (prevResult or an IPAM answer) of any supported version.
    pub fn from_value(v: &Value) -> Result<CniOutput, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// Shape the result for `version`: `ips[].version` exists before 1.0.0
    /// only, `interfaces[].mtu` from 1.1.0 on.
    pub fn for_version(mut self, cni_version: &str, version: Version) -> CniOutput {
        self.cni_version = cni_version.to_string();
        for ip in &mut self.ips {
            if version < Version::V1_0_0 {
                let v6 = ip.address.contains(':');
                ip.version = Some(if v6 { "6" } else { "4" }.to_string());
            } else {
                ip.version = None;
            }
        }
        if version < Version::V1_1_0 {
            for i in &mut self.interfaces {
                i.mtu = None;
            }
        }
        self
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_old_and_new_shapes_and_writes_per_version() {
        let old = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        });
        let r = CniOutput::from_value(&old).unwrap();
        let new = r.clone().for_version("1.0.0", Version::V1_0_0);
        let v: Value = serde_json::from_str(&new.to_json()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v.get("dns").is_none());
        let back = r.for_version("0.4.0", Version::V0_4_0);
        let v: Value = serde_json::from_str(&back.to_json()).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn mtu_only_in_1_1() {
        let mut r = CniOutput::default();
        r.interfaces.push(Interface {
            name: "eth0".into(),
            mtu: Some(1420),
            ..Default::default()
        });
        let a = r.clone().for_version("1.1.0", Version::V1_1_0).to_json();
        assert!(a.contains("\"mtu\":1420"));
        let b = r.for_version("1.0.0", Version::V1_0_0).to_json();
        assert!(!b.contains("mtu"));
    }

    #[test]
    fn unknown_fields_survive() {
        let v = json!({"cniVersion":"1.1.0","routes":[{"dst":"0.0.0.0/0","priority":5}],
                       "interfaces":[{"name":"x","socketPath":"/s"}]});
        let r = CniOutput::from_value(&v).unwrap();
        let out: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(out["routes"][0]["priority"], 5);
        assert_eq!(out["interfaces"][0]["socketPath"], "/s");
    }
}
