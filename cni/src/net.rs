//! Small address helpers: a CIDR type and the gateway scheme.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The IPv4 next hop every pod uses: link-local, never on the wire as a
/// source or destination, resolved by a permanent neighbour entry.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 next hop every pod uses (link-local, per link).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// An address with a prefix length, e.g. `10.244.1.5/24`. The address part
/// is kept as given (it need not be the network address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// A host route for `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// The same prefix with host bits cleared (`10.244.1.5/24` -> `10.244.1.0/24`).
    pub fn trunc(&self) -> Self {
        Self {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.is_ipv4() {
            return false;
        }
        IpNet {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.network()
    }

    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR form (address/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        IpNet::new(addr, prefix)
            .ok_or_else(|| format!("prefix length {prefix} too long for {addr}"))
    }
}

/// The host-side veth name: `wh` + 11 hex digits of a stable hash of the
/// container ID and interface name (13 characters, under IFNAMSIZ).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64: stable across builds and architectures, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .as_bytes()
        .iter()
        .chain(b"/")
        .chain(ifname.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("wh{:011x}", h & 0x0fff_ffff_ffff)
}

/// `aa:bb:cc:dd:ee:ff`
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let n: IpNet = "10.244.0.0/16".parse().unwrap();
        assert!(n.contains("10.244.3.4".parse().unwrap()));
        assert!(!n.contains("10.245.0.1".parse().unwrap()));
        assert!(!n.contains("fd00::1".parse().unwrap()));
        let h: IpNet = "10.244.1.5/24".parse().unwrap();
        assert_eq!(h.trunc().to_string(), "10.244.1.0/24");
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0.0".parse::<IpNet>().is_err());
        let v6: IpNet = "fd00:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:1::5".parse().unwrap()));
        let d: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(d.is_default() && d.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn veth_names_are_short_stable_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("wh"));
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }

    #[test]
    fn mac_format() {
        assert_eq!(format_mac(&[0, 0x1a, 0xff, 1, 2, 3]), "00:1a:ff:01:02:03");
    }
}
