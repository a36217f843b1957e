//! The CNI error object and the codes this plugin uses.
//!
//! Codes 0-99 are the spec's well-known ones; 100 and above are ours and are
//! listed in `docs/cni.md`.

use serde::Serialize;
use std::fmt;

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Container unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Invalid or missing necessary environment variable.
pub const INVALID_ENV: u32 = 4;
/// I/O failure.
pub const IO_FAILURE: u32 = 5;
/// Failed to decode content (stdin is not JSON, or not the expected shape).
pub const DECODE: u32 = 6;
/// Invalid network configuration.
pub const INVALID_CONFIG: u32 = 7;
/// Try again later.
pub const TRY_AGAIN: u32 = 11;
/// STATUS: the plugin cannot serve ADD now.
pub const NOT_AVAILABLE: u32 = 50;
/// STATUS: not available, and existing containers may have limited connectivity.
pub const NOT_AVAILABLE_DEGRADED: u32 = 51;

/// Netlink (links, addresses, routes, neighbours) failed.
pub const NETLINK: u32 = 100;
/// The delegated IPAM plugin could not be run or answered nonsense.
pub const IPAM: u32 = 101;
/// nftables (masquerade) failed.
pub const NFTABLES: u32 = 102;
/// The plugin's own state directory or lock failed.
pub const STATE: u32 = 103;
/// ADD: the interface already exists in the container's namespace.
pub const IFACE_EXISTS: u32 = 104;
/// CHECK: what ADD made is not (or no longer) there.
pub const CHECK_FAILED: u32 = 105;
/// The network namespace could not be opened or entered.
pub const NETNS: u32 = 106;

/// A CNI error: printed on stdout as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("code {code}: {msg}{}", details_suffix(.details))]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        let d = details.into();
        if !d.is_empty() {
            self.details = Some(d);
        }
        self
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(INVALID_CONFIG, msg)
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(INVALID_ENV, msg)
    }

    pub fn netlink(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        Self::new(NETLINK, format!("{what}: {err}"))
    }

    pub fn state(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        Self::new(STATE, format!("{what}: {err}"))
    }

    /// Serialize as the spec's error object.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        let w = Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: self.details.as_deref(),
        };
        serde_json::to_string(&w).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }
}

fn details_suffix(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

pub type CniResult<T> = Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::config("field `mtu`: must be a number").with_details("got \"x\"");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "field `mtu`: must be a number");
        assert_eq!(v["details"], "got \"x\"");
        let e = CniError::new(DECODE, "bad");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert!(v.get("details").is_none());
    }
}
