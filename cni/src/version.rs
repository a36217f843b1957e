//! CNI spec versions this plugin speaks.

use crate::error::{CniError, CniResult, INCOMPATIBLE_VERSION};

/// Every spec version the plugin accepts, oldest first (VERSION prints them).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when nothing else is known (VERSION, early errors).
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.');
        let a = it.next()?.parse().ok()?;
        let b = it.next()?.parse().ok()?;
        let c = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(Version(a, b, c))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Accept a configuration's `cniVersion`, or fail with code 1.
pub fn check_supported(v: &str) -> CniResult<Version> {
    if SUPPORTED.contains(&v)
        && let Some(p) = Version::parse(v)
    {
        return Ok(p);
    }
    Err(CniError::new(
        INCOMPATIBLE_VERSION,
        format!(
            "incompatible CNI version {v:?}: this plugin supports {}",
            SUPPORTED.join(", ")
        ),
    ))
}

/// The VERSION verb's answer.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("1.1.0"), Some(Version(1, 1, 0)));
        assert_eq!(Version::parse("1.1"), None);
        assert_eq!(Version::parse("1.x.0"), None);
        assert!(Version::parse("0.4.0").unwrap() < Version::V1_0_0);
    }

    #[test]
    fn unknown_versions_are_code_1() {
        for v in ["0.2.0", "0.1.0", "2.0.0", "1.0", "", "banana"] {
            let e = check_supported(v).unwrap_err();
            assert_eq!(e.code, 1, "{v}");
        }
        for v in SUPPORTED {
            assert!(check_supported(v).is_ok());
        }
    }
}
