//! Allowed IPs: longest-prefix match from an address to a peer.
//!
//! One hash map per prefix length present, searched from the longest length
//! down: a lookup costs one hash probe per distinct prefix length in use
//! (usually two or three), whatever the number of peers. No I/O.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// A longest-prefix-match table from IP networks to values.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    /// (prefix length, network bits -> value), longest prefix first.
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

fn slot<K, T>(levels: &mut Vec<(u8, HashMap<K, T>)>, len: u8) -> &mut HashMap<K, T> {
    let pos = match levels.binary_search_by(|(l, _)| len.cmp(l)) {
        Ok(pos) => pos,
        Err(pos) => {
            levels.insert(pos, (len, HashMap::new()));
            pos
        }
    };
    &mut levels[pos].1
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `net` (host bits ignored); returns the value it replaces.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let len = net.prefix_len();
        match net.addr() {
            IpAddr::V4(a) => slot(&mut self.v4, len).insert(u32::from(a) & mask4(len), value),
            IpAddr::V6(a) => slot(&mut self.v6, len).insert(u128::from(a) & mask6(len), value),
        }
    }

    /// Removes exactly `net`.
    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        let len = net.prefix_len();
        let removed = match net.addr() {
            IpAddr::V4(a) => self
                .v4
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.remove(&(u32::from(a) & mask4(len)))),
            IpAddr::V6(a) => self
                .v6
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.remove(&(u128::from(a) & mask6(len)))),
        };
        self.v4.retain(|(_, m)| !m.is_empty());
        self.v6.retain(|(_, m)| !m.is_empty());
        removed
    }

    /// Removes every entry whose value matches.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, m) in &mut self.v4 {
            m.retain(|_, v| keep(v));
        }
        for (_, m) in &mut self.v6 {
            m.retain(|_, v| keep(v));
        }
        self.v4.retain(|(_, m)| !m.is_empty());
        self.v6.retain(|(_, m)| !m.is_empty());
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, m)| m.get(&(a & mask4(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, m)| m.get(&(a & mask6(*len))))
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("0.0.0.0/0"), 0);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&3));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&2));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&1));
        assert_eq!(t.lookup(ip("11.0.0.1")), Some(&0));
        assert_eq!(t.lookup(ip("fd00::1")), None);
    }

    #[test]
    fn ipv6_and_host_bits() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00:1:2:3::77/64"), 'a');
        t.insert(net("fd00:1:2:3::1/128"), 'b');
        t.insert(net("::/0"), 'z');
        assert_eq!(t.lookup(ip("fd00:1:2:3::5")), Some(&'a'));
        assert_eq!(t.lookup(ip("fd00:1:2:3::1")), Some(&'b'));
        assert_eq!(t.lookup(ip("fd00:1:2:4::1")), Some(&'z'));
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
    }

    #[test]
    fn remove_and_retain() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/24"), 1);
        t.insert(net("10.0.1.0/24"), 2);
        t.insert(net("fd00::/64"), 2);
        assert_eq!(t.remove(net("10.0.0.9/24")), Some(1));
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        t.retain(|v| *v != 2);
        assert!(t.is_empty());
    }

    #[test]
    fn masks() {
        assert_eq!(mask4(0), 0);
        assert_eq!(mask4(32), u32::MAX);
        assert_eq!(mask4(24), 0xffff_ff00);
        assert_eq!(mask6(0), 0);
        assert_eq!(mask6(128), u128::MAX);
    }
}
