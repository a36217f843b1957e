//! The host's own global IPv6 addresses: endpoints a node can publish as
//! they are (IPv6 needs no NAT), so that peers reach it over IPv6 even when
//! no peer has reported seeing it over IPv6 yet. Read from
//! `/proc/net/if_inet6`.

use std::net::Ipv6Addr;

/// `IFA_F_DADFAILED`, `IFA_F_DEPRECATED`, `IFA_F_TENTATIVE`: addresses not
/// to publish.
const UNUSABLE: u32 = 0x08 | 0x20 | 0x40;
/// `RT_SCOPE_UNIVERSE` as `/proc/net/if_inet6` writes it.
const SCOPE_GLOBAL: u32 = 0x00;

/// The usable global IPv6 addresses in a `/proc/net/if_inet6` text, but
/// those of interface `skip` (the node's own overlay interface) and unique
/// local ones (`fc00::/7`, private like RFC 1918).
pub fn global_ipv6(if_inet6: &str, skip: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [hex, _index, _prefix, scope, flags, name] = f[..] else {
            continue;
        };
        let (Ok(bits), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(hex, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        if hex.len() != 32
            || name == skip
            || scope != SCOPE_GLOBAL
            || flags & UNUSABLE != 0
            || ip.is_loopback()
            || ip.is_unique_local()
            || ip.to_ipv4_mapped().is_some()
        {
            continue;
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// [`global_ipv6`] of this host (none where IPv6 is off).
pub fn host_global_ipv6(skip: &str) -> Vec<Ipv6Addr> {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|text| global_ipv6(&text, skip))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_usable_global_addresses_of_other_interfaces() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000a8bbccfffedd0001 02 40 20 80     eth0
20010db8000100000000000000000011 02 40 00 80     eth0
20010db8000100000000000000000012 02 40 00 20     eth0
20010db8000100000000000000000013 02 40 00 40     eth0
fd000000000000000000000000000001 02 40 00 80     eth0
20010010000000000000000000000abc 05 1c 00 80 wh-abcdef
20010db8000200000000000000000021 03 40 00 00     eth1
garbage line
";
        assert_eq!(
            global_ipv6(text, "wh-abcdef"),
            vec![
                "2001:db8:1::11".parse::<Ipv6Addr>().expect("ip"),
                "2001:db8:2::21".parse().expect("ip"),
            ]
        );
    }
}
