//! The names of the network file: every trusted node (`trust` and `router`
//! lines, this node included) with its IPv4 and IPv6 overlay addresses.
//!
//! A node resolves as
//! - `NAME` and `NAME.NETWORK` (hostnames match without regard to case; when
//!   two hostnames differ only by case, the first in the file wins);
//! - a prefix of its public key of at least [`MIN_KEY_PREFIX`] characters
//!   that no other member's key shares, alone or followed by `.NETWORK`. An
//!   exact-case match is preferred; when there is none, a case-insensitive
//!   one is tried (DNS clients may change case). A hostname always wins over
//!   a key prefix.
//!
//! The canonical name of a node is `HOSTNAME.NETWORK`, or the first ten
//! characters of its key followed by `.NETWORK` when it has no hostname.

use super::{Host, HostEntry, Lookup, Resolver, Reverse, Zones, arpa};
use crate::config::NetworkSpec;
use crate::keys::{PublicKey, ula_prefix};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Shortest key prefix that resolves, as in the original.
pub const MIN_KEY_PREFIX: usize = 4;

/// Length of the key prefix that names a node without hostname.
const KEY_NAME_LEN: usize = 10;

#[derive(Debug, Clone)]
struct Member {
    hostname: Option<String>,
    key: PublicKey,
    key_text: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Ipv6Addr,
}

impl Member {
    fn label(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| self.key.short(KEY_NAME_LEN))
    }

    fn addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.ipv4.map(IpAddr::V4).into_iter().collect();
        v.push(IpAddr::V6(self.ipv6));
        v
    }
}

/// The names of one network, from its [`NetworkSpec`].
#[derive(Debug, Clone)]
pub struct ConfigNames {
    network: String,
    own: PublicKey,
    members: Vec<Member>,
    zones: Zones,
}

impl ConfigNames {
    /// The names of `spec`, seen from the node whose key is `own` (the node
    /// resolves too, as any other member).
    pub fn new(spec: &NetworkSpec, own: PublicKey) -> Self {
        let members: Vec<Member> = spec
            .members()
            .into_iter()
            .filter(|m| m.peer.role.is_trusted())
            .map(|m| Member {
                hostname: m.peer.hostname.clone(),
                key: m.peer.key,
                key_text: m.peer.key.to_base64(),
                ipv4: m.ipv4,
                ipv6: m.ipv6.unwrap_or_else(|| spec.ipv6_of(&m.peer.key)),
            })
            .collect();
        let mut reverse = Vec::new();
        if let Some(subnet) = spec.subnet {
            reverse.push(arpa::zone_of(IpNet::V4(subnet)));
        }
        let ula = ula_prefix(&spec.name);
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&ula);
        if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(octets), 64) {
            reverse.push(IpNet::V6(net));
        }
        // Static IPs outside the subnet still answer in reverse.
        for m in &members {
            if let Some(ip) = m.ipv4 {
                let inside = reverse.iter().any(|z| z.contains(&IpAddr::V4(ip)));
                if !inside && let Ok(n) = Ipv4Net::new(ip, 24) {
                    reverse.push(arpa::zone_of(IpNet::V4(n.trunc())));
                }
            }
            let v6 = IpAddr::V6(m.ipv6);
            if !reverse.iter().any(|z| z.contains(&v6))
                && let Ok(n) = Ipv6Net::new(m.ipv6, 64)
            {
                reverse.push(IpNet::V6(n.trunc()));
            }
        }
        let serial = serial_of(spec);
        ConfigNames {
            network: spec.name.to_ascii_lowercase(),
            own,
            members,
            zones: Zones {
                forward: vec![spec.name.to_ascii_lowercase()],
                reverse,
                serial,
            },
        }
    }

    /// The network's name (the forward zone).
    pub fn network(&self) -> &str {
        &self.network
    }

    /// This node's own canonical name, when it is a member.
    pub fn own_name(&self) -> Option<String> {
        self.members
            .iter()
            .find(|m| m.key == self.own)
            .map(|m| self.canonical(m))
    }

    fn canonical(&self, m: &Member) -> String {
        format!("{}.{}", m.label(), self.network)
    }

    fn host(&self, m: &Member) -> Host {
        Host {
            name: self.canonical(m),
            addrs: m.addrs(),
        }
    }

    /// A single label: hostname first, then a unique key prefix.
    fn lookup_label(&self, label: &str) -> Lookup {
        if let Some(m) = self.members.iter().find(|m| {
            m.hostname
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(label))
        }) {
            return Lookup::Found(self.host(m));
        }
        if label.len() < MIN_KEY_PREFIX {
            return Lookup::NotFound;
        }
        let exact: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.key_text.starts_with(label))
            .collect();
        let hits = if exact.is_empty() {
            self.members
                .iter()
                .filter(|m| {
                    m.key_text.len() >= label.len()
                        && m.key_text.as_bytes()[..label.len()]
                            .eq_ignore_ascii_case(label.as_bytes())
                })
                .collect()
        } else {
            exact
        };
        match hits.as_slice() {
            [] => Lookup::NotFound,
            [m] => Lookup::Found(self.host(m)),
            many => Lookup::Ambiguous(many.iter().map(|m| self.canonical(m)).collect()),
        }
    }
}

/// A serial that changes when the names or addresses change.
fn serial_of(spec: &NetworkSpec) -> u32 {
    // FNV-1a over the members' lines: stable across runs, cheap.
    let mut h: u32 = 0x811c_9dc5;
    for m in spec.members().iter().filter(|m| m.peer.role.is_trusted()) {
        let line = format!(
            "{:?} {} {:?} {:?}\n",
            m.peer.hostname, m.peer.key, m.ipv4, m.ipv6
        );
        for b in line.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h.max(1)
}

impl Resolver for ConfigNames {
    fn zones(&self) -> Zones {
        self.zones.clone()
    }

    fn lookup(&self, name: &str) -> Lookup {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Lookup::NotOurs;
        }
        let label = match name.rsplit_once('.') {
            None => name,
            Some((rest, zone)) if zone.eq_ignore_ascii_case(&self.network) => {
                if rest.is_empty() || rest.contains('.') {
                    return Lookup::NotFound;
                }
                rest
            }
            Some(_) => return Lookup::NotOurs,
        };
        self.lookup_label(label)
    }

    fn reverse(&self, addr: IpAddr) -> Reverse {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.addrs().contains(&addr))
            .map(|m| self.canonical(m))
            .collect();
        if !names.is_empty() {
            return Reverse::Found(names);
        }
        if self.zones.reverse.iter().any(|z| z.contains(&addr)) {
            Reverse::NotFound
        } else {
            Reverse::NotOurs
        }
    }

    fn entries(&self) -> Vec<HostEntry> {
        let mut v = Vec::new();
        for m in &self.members {
            let mut names = vec![self.canonical(m)];
            names.push(m.label());
            for a in m.addrs() {
                v.push((a, names.clone()));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PeerSpec, Role};
    use crate::keys::PrivateKey;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from_bytes([seed; 32]).public_key()
    }

    fn peer(role: Role, hostname: Option<&str>, key: PublicKey) -> PeerSpec {
        PeerSpec {
            role,
            hostname: hostname.map(str::to_string),
            static_ip: None,
            key,
            endpoint: None,
            routes: Vec::new(),
        }
    }

    fn spec() -> NetworkSpec {
        let mut s = NetworkSpec::new("lab");
        s.subnet = Some("10.0.42.0/24".parse().unwrap());
        s.peers = vec![
            peer(Role::Boot, Some("boot"), key(9)),
            peer(Role::Trust, Some("node_a"), key(1)),
            peer(Role::Trust, Some("node_b"), key(2)),
            peer(Role::Router, None, key(3)),
            peer(Role::Peer, Some("relay"), key(4)),
        ];
        s
    }

    fn names() -> ConfigNames {
        ConfigNames::new(&spec(), key(1))
    }

    fn found(l: Lookup) -> Host {
        match l {
            Lookup::Found(h) => h,
            other => panic!("expected a host, got {other:?}"),
        }
    }

    #[test]
    fn a_and_aaaa_by_name_and_name_dot_network() {
        let s = spec();
        let n = names();
        let b = found(n.lookup("node_b"));
        assert_eq!(b.name, "node_b.lab");
        assert_eq!(
            b.addrs,
            vec![
                IpAddr::V4("10.0.42.3".parse().unwrap()),
                IpAddr::V6(s.ipv6_of(&key(2)))
            ]
        );
        assert_eq!(found(n.lookup("node_b.lab")), b);
        assert_eq!(found(n.lookup("NODE_B.Lab.")), b);
        // This node resolves too.
        assert_eq!(found(n.lookup("node_a")).addrs[0].to_string(), "10.0.42.2");
        assert_eq!(n.own_name().as_deref(), Some("node_a.lab"));
    }

    #[test]
    fn key_prefix_resolves_like_the_hostname() {
        let n = names();
        let text = key(2).to_base64();
        assert_eq!(found(n.lookup(&text[..6])).name, "node_b.lab");
        assert_eq!(
            found(n.lookup(&format!("{}.lab", &text[..6]))).name,
            "node_b.lab"
        );
        assert_eq!(found(n.lookup(&text)).name, "node_b.lab");
        // Case-insensitive fallback (DNS clients may change case).
        let lower = text[..8].to_ascii_lowercase();
        if !n
            .members
            .iter()
            .any(|m| m.key_text.starts_with(&lower) && m.key != key(2))
        {
            assert_eq!(found(n.lookup(&lower)).name, "node_b.lab");
        }
        // Too short.
        assert_eq!(n.lookup(&text[..3]), Lookup::NotFound);
        // A node without hostname is named by its key.
        let r = key(3).to_base64();
        let h = found(n.lookup(&r[..5]));
        assert_eq!(h.name, format!("{}.lab", &r[..10]));
        assert_eq!(h.addrs[0].to_string(), "10.0.42.4");
    }

    #[test]
    fn ambiguous_prefix() {
        // Find two keys sharing a 4-character prefix.
        let mut by_prefix: std::collections::HashMap<String, Vec<PublicKey>> = Default::default();
        let (a, b) = (0u16..)
            .find_map(|i| {
                let mut seed = [0u8; 32];
                // Clamping ignores some bits of bytes 0 and 31: vary others.
                seed[1..3].copy_from_slice(&i.to_le_bytes());
                seed[3] = 7;
                let k = PrivateKey::from_bytes(seed).public_key();
                let v = by_prefix.entry(k.short(4)).or_default();
                v.push(k);
                (v.len() == 2).then(|| (v[0], v[1]))
            })
            .unwrap();
        let mut s = NetworkSpec::new("lab");
        s.subnet = Some("10.0.42.0/24".parse().unwrap());
        s.peers = vec![
            peer(Role::Trust, Some("one"), a),
            peer(Role::Trust, Some("two"), b),
        ];
        let n = ConfigNames::new(&s, a);
        let prefix = a.short(4);
        match n.lookup(&prefix) {
            Lookup::Ambiguous(v) => {
                assert_eq!(v, vec!["one.lab".to_string(), "two.lab".to_string()])
            }
            other => panic!("{other:?}"),
        }
        assert!(super::super::resolve_text(&n, &prefix).is_err());
        // A longer prefix decides, when the keys differ there.
        let (ta, tb) = (a.to_base64(), b.to_base64());
        let len = (0..43)
            .find(|&i| ta.as_bytes()[i] != tb.as_bytes()[i])
            .unwrap()
            + 1;
        assert_eq!(found(n.lookup(&ta[..len.max(4)])).name, "one.lab");
    }

    #[test]
    fn unknown_names_and_other_networks() {
        let n = names();
        assert_eq!(n.lookup("nobody"), Lookup::NotFound);
        assert_eq!(n.lookup("nobody.lab"), Lookup::NotFound);
        assert_eq!(n.lookup("a.node_b.lab"), Lookup::NotFound);
        assert_eq!(n.lookup("node_b.othernet"), Lookup::NotOurs);
        assert_eq!(n.lookup("www.example.com"), Lookup::NotOurs);
        // Untrusted peers have no overlay address, hence no name.
        assert_eq!(n.lookup("relay"), Lookup::NotFound);
        assert_eq!(n.lookup("boot.lab"), Lookup::NotFound);
    }

    #[test]
    fn ptr_for_ipv4_and_ipv6() {
        let s = spec();
        let n = names();
        assert_eq!(
            n.reverse("10.0.42.3".parse().unwrap()),
            Reverse::Found(vec!["node_b.lab".into()])
        );
        assert_eq!(
            n.reverse(IpAddr::V6(s.ipv6_of(&key(2)))),
            Reverse::Found(vec!["node_b.lab".into()])
        );
        assert_eq!(
            n.reverse("::ffff:10.0.42.3".parse().unwrap()),
            Reverse::Found(vec!["node_b.lab".into()])
        );
        assert_eq!(n.reverse("10.0.42.99".parse().unwrap()), Reverse::NotFound);
        let mut other = s.ipv6_of(&key(2)).octets();
        other[15] ^= 1;
        assert_eq!(n.reverse(IpAddr::V6(other.into())), Reverse::NotFound);
        assert_eq!(n.reverse("192.0.2.1".parse().unwrap()), Reverse::NotOurs);
        assert_eq!(n.reverse("2001:db8::1".parse().unwrap()), Reverse::NotOurs);
        assert_eq!(
            super::super::resolve_text(&n, "10.0.42.3").unwrap(),
            vec!["node_b.lab".to_string()]
        );
    }

    #[test]
    fn zones_entries_and_serial() {
        let s = spec();
        let n = names();
        let z = n.zones();
        assert_eq!(z.forward, vec!["lab".to_string()]);
        assert_eq!(z.reverse[0], "10.0.42.0/24".parse::<IpNet>().unwrap());
        assert!(z.reverse[1].contains(&IpAddr::V6(s.ipv6_of(&key(2)))));
        let e = n.entries();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[2],
            (
                "10.0.42.3".parse().unwrap(),
                vec!["node_b.lab".to_string(), "node_b".to_string()]
            )
        );
        let mut s2 = s.clone();
        s2.peers.push(peer(Role::Trust, Some("node_c"), key(5)));
        assert_ne!(ConfigNames::new(&s2, key(1)).zones().serial, z.serial);
        assert_eq!(ConfigNames::new(&s, key(1)).zones().serial, z.serial);
    }

    #[test]
    fn network_without_subnet_has_ipv6_names_only() {
        let mut s = spec();
        s.subnet = None;
        let n = ConfigNames::new(&s, key(1));
        let h = found(n.lookup("node_b"));
        assert_eq!(h.addrs, vec![IpAddr::V6(s.ipv6_of(&key(2)))]);
        assert_eq!(n.zones().reverse.len(), 1);
    }
}
