//! Reverse names (`in-addr.arpa`, `ip6.arpa`): from addresses and networks to
//! names and back. Pure and strict: only canonical labels parse (decimal
//! octets without sign or leading zero, single hexadecimal nibbles).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a name under `in-addr.arpa` or `ip6.arpa` denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arpa {
    /// A whole address: the owner of its PTR record.
    Addr(IpAddr),
    /// An inner node of the tree (fewer labels than an address).
    Prefix(IpNet),
    /// Under a reverse tree, but not a valid address nor prefix.
    Invalid,
}

/// Parses a name given as its labels, leftmost first. `None` when the name
/// is not under `in-addr.arpa` or `ip6.arpa`.
pub fn parse(labels: &[&str]) -> Option<Arpa> {
    let n = labels.len();
    if n < 2 || !labels[n - 1].eq_ignore_ascii_case("arpa") {
        return None;
    }
    let tree = labels[n - 2];
    let inner = &labels[..n - 2];
    if tree.eq_ignore_ascii_case("in-addr") {
        Some(parse_v4(inner))
    } else if tree.eq_ignore_ascii_case("ip6") {
        Some(parse_v6(inner))
    } else {
        None
    }
}

fn parse_v4(labels: &[&str]) -> Arpa {
    if labels.len() > 4 {
        return Arpa::Invalid;
    }
    let mut octets = [0u8; 4];
    for (i, label) in labels.iter().rev().enumerate() {
        let canonical = !label.is_empty()
            && label.len() <= 3
            && label.bytes().all(|b| b.is_ascii_digit())
            && (label.len() == 1 || !label.starts_with('0'));
        match label.parse::<u8>() {
            Ok(o) if canonical => octets[i] = o,
            _ => return Arpa::Invalid,
        }
    }
    let addr = Ipv4Addr::from(octets);
    if labels.len() == 4 {
        return Arpa::Addr(IpAddr::V4(addr));
    }
    // 8 * at most 3 is a valid IPv4 prefix length.
    match Ipv4Net::new(addr, 8 * labels.len() as u8) {
        Ok(net) => Arpa::Prefix(IpNet::V4(net)),
        Err(_) => Arpa::Invalid,
    }
}

fn parse_v6(labels: &[&str]) -> Arpa {
    if labels.len() > 32 {
        return Arpa::Invalid;
    }
    let mut bits: u128 = 0;
    for (i, label) in labels.iter().rev().enumerate() {
        let nibble = match label.as_bytes() {
            [c] => match (*c as char).to_digit(16) {
                Some(d) => d as u128,
                None => return Arpa::Invalid,
            },
            _ => return Arpa::Invalid,
        };
        bits |= nibble << (124 - 4 * i);
    }
    let addr = Ipv6Addr::from(bits);
    if labels.len() == 32 {
        return Arpa::Addr(IpAddr::V6(addr));
    }
    match Ipv6Net::new(addr, 4 * labels.len() as u8) {
        Ok(net) => Arpa::Prefix(IpNet::V6(net)),
        Err(_) => Arpa::Invalid,
    }
}

/// The reverse name of an address, without the trailing dot.
pub fn name_of(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(72);
            for byte in a.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The reverse zone that holds a network: its prefix rounded down to a label
/// boundary (8 bits for IPv4, 4 for IPv6), so `10.0.42.0/26` is answered in
/// `42.0.10.in-addr.arpa`.
pub fn zone_of(net: IpNet) -> IpNet {
    match net {
        IpNet::V4(n) => {
            let len = n.prefix_len() / 8 * 8;
            Ipv4Net::new(n.network(), len)
                .map(|z| IpNet::V4(z.trunc()))
                .unwrap_or(net)
        }
        IpNet::V6(n) => {
            let len = n.prefix_len() / 4 * 4;
            Ipv6Net::new(n.network(), len)
                .map(|z| IpNet::V6(z.trunc()))
                .unwrap_or(net)
        }
    }
}

/// The name of a reverse zone (a network whose prefix is on a label
/// boundary), without the trailing dot: `42.0.10.in-addr.arpa`.
pub fn zone_name(zone: IpNet) -> String {
    let zone = zone_of(zone);
    match zone {
        IpNet::V4(n) => {
            let labels = (n.prefix_len() / 8) as usize;
            let o = n.network().octets();
            let mut parts: Vec<String> = o[..labels].iter().rev().map(u8::to_string).collect();
            parts.push("in-addr.arpa".into());
            parts.join(".")
        }
        IpNet::V6(n) => {
            let nibbles = (n.prefix_len() / 4) as usize;
            let bits = u128::from(n.network());
            let mut parts: Vec<String> = (0..nibbles)
                .rev()
                .map(|i| format!("{:x}", (bits >> (124 - 4 * i)) & 0xf))
                .collect();
            parts.push("ip6.arpa".into());
            parts.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Vec<&str> {
        s.split('.').collect()
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["10.0.42.3", "0.0.0.0", "255.1.2.30", "fd12:3456::1", "::"] {
            let ip: IpAddr = a.parse().unwrap();
            let name = name_of(ip);
            assert_eq!(parse(&labels(&name)), Some(Arpa::Addr(ip)), "{name}");
        }
        assert_eq!(
            name_of("10.0.42.3".parse().unwrap()),
            "3.42.0.10.in-addr.arpa"
        );
        assert!(name_of("fd00::1".parse().unwrap()).starts_with("1.0.0.0.0.0.0.0"));
        assert!(name_of("fd00::1".parse().unwrap()).ends_with("0.0.d.f.ip6.arpa"));
    }

    #[test]
    fn prefixes_and_invalid_names() {
        assert_eq!(
            parse(&labels("42.0.10.in-addr.arpa")),
            Some(Arpa::Prefix("10.0.42.0/24".parse().unwrap()))
        );
        assert_eq!(
            parse(&labels("in-addr.arpa")),
            Some(Arpa::Prefix("0.0.0.0/0".parse().unwrap()))
        );
        assert_eq!(
            parse(&labels("d.f.ip6.arpa")),
            Some(Arpa::Prefix("fd00::/8".parse().unwrap()))
        );
        for bad in [
            "1.2.3.4.5.in-addr.arpa",
            "01.0.0.10.in-addr.arpa",
            "+1.0.0.10.in-addr.arpa",
            "256.0.0.10.in-addr.arpa",
            "x.in-addr.arpa",
            ".0.0.10.in-addr.arpa",
            "10.d.f.ip6.arpa",
            "g.d.f.ip6.arpa",
        ] {
            assert_eq!(parse(&labels(bad)), Some(Arpa::Invalid), "{bad}");
        }
        assert_eq!(parse(&labels("node_b.lab")), None);
        assert_eq!(parse(&labels("arpa")), None);
        assert_eq!(parse(&labels("example.arpa")), None);
        // Case does not matter in the fixed labels.
        assert!(matches!(
            parse(&labels("3.42.0.10.IN-ADDR.ARPA")),
            Some(Arpa::Addr(_))
        ));
    }

    #[test]
    fn zones_round_down_to_label_boundaries() {
        let z = zone_of("10.0.42.0/26".parse().unwrap());
        assert_eq!(z, "10.0.42.0/24".parse::<IpNet>().unwrap());
        assert_eq!(zone_name(z), "42.0.10.in-addr.arpa");
        assert_eq!(zone_name("10.0.0.0/12".parse().unwrap()), "10.in-addr.arpa");
        let v6: IpNet = "fd12:3456:789a:0::/64".parse().unwrap();
        assert_eq!(zone_name(v6), "0.0.0.0.a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa");
        assert_eq!(parse(&labels(&zone_name(v6))), Some(Arpa::Prefix(v6)));
    }
}
