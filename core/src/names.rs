//! Names on the overlay: every trusted node of a network resolves as `NAME`
//! and `NAME.NETWORK` (and by a unique prefix of its public key) to its
//! overlay addresses, and back.
//!
//! The pieces:
//!
//! - [`Resolver`]: the trait every source of names implements. It answers
//!   in plain Rust types (names, addresses), knows nothing of DNS, and does
//!   no I/O, so it is cheap to call for every query.
//! - [`ConfigNames`]: the first resolver, built from the network file.
//! - [`Chain`]: several resolvers asked in order, to plug more in.
//! - [`dns`]: the pure DNS layer: one query datagram in, one answer out, from
//!   any [`Resolver`], with the crate `hickory-proto` for the wire format.
//! - The I/O around them lives in the `wirehub` crate: `names::server`, the
//!   DNS responder (UDP and TCP, rate limited per source, swapped under a
//!   running server by `wh reload`), and `names::hosts`, opt-in management
//!   of a marked block in `/etc/hosts`. This module does no I/O.
//!
//! See docs/names.md for the behaviour in detail and for how to add a resolver.

pub mod arpa;
pub mod config_names;
pub mod dns;
pub mod limit;

pub use config_names::ConfigNames;
pub use dns::{DnsConfig, Outside};

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// A host that a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host's canonical name, `NAME.NETWORK` (the name `wh show` and PTR
    /// answers use).
    pub name: String,
    /// Its overlay addresses, IPv4 first.
    pub addrs: Vec<IpAddr>,
}

/// What a resolver says about a (forward) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name denotes this host.
    Found(Host),
    /// The name is a key prefix that several hosts share (their canonical
    /// names); over DNS this is NXDOMAIN, `wh resolve` lists them.
    Ambiguous(Vec<String>),
    /// The name is in this resolver's namespace, but no host has it.
    NotFound,
    /// The name is none of this resolver's business (another zone).
    NotOurs,
}

/// What a resolver says about an address (reverse lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverse {
    /// The address belongs to a host with these names (canonical first).
    Found(Vec<String>),
    /// The address is inside this resolver's networks, but no host has it.
    NotFound,
    /// The address is outside this resolver's networks.
    NotOurs,
}

/// The zones a resolver is authoritative for, for the DNS layer: the forward
/// zones (the network's name) and the networks whose reverse zones
/// (`in-addr.arpa`, `ip6.arpa`) it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zones {
    /// Forward zone names, lower case, without the trailing dot (`lab`).
    pub forward: Vec<String>,
    /// Networks answered in reverse.
    pub reverse: Vec<IpNet>,
    /// A serial number for SOA records, changed when the names change.
    pub serial: u32,
}

/// One line of a hosts file: an address and its names, canonical first.
pub type HostEntry = (IpAddr, Vec<String>);

/// A source of names. Implementations must be cheap and must not block: the
/// DNS responder calls them for every query, on its own task.
///
/// Names come as the client wrote them: any case, no trailing dot. Matching
/// is ASCII case-insensitive (DNS is), except where a resolver knows better
/// (key prefixes prefer an exact-case match).
pub trait Resolver: Send + Sync {
    /// The zones this resolver answers for.
    fn zones(&self) -> Zones;

    /// A name to the host it denotes.
    fn lookup(&self, name: &str) -> Lookup;

    /// An address to the names of its host.
    fn reverse(&self, addr: IpAddr) -> Reverse;

    /// Every host with its names, for a hosts file; empty when a resolver
    /// cannot enumerate its names.
    fn entries(&self) -> Vec<HostEntry> {
        Vec::new()
    }
}

/// The shared form the DNS responder takes (through a watch channel).
pub type SharedResolver = Arc<dyn Resolver + Send + Sync>;

/// Several resolvers asked in order: the first one whose answer is not
/// [`Lookup::NotOurs`] / [`Reverse::NotOurs`] answers. Zones and entries
/// are the union of all.
pub struct Chain {
    resolvers: Vec<SharedResolver>,
}

impl Chain {
    pub fn new(resolvers: Vec<SharedResolver>) -> Self {
        Chain { resolvers }
    }
}

impl Resolver for Chain {
    fn zones(&self) -> Zones {
        let mut z = Zones::default();
        for r in &self.resolvers {
            let more = r.zones();
            for f in more.forward {
                if !z.forward.contains(&f) {
                    z.forward.push(f);
                }
            }
            for n in more.reverse {
                if !z.reverse.contains(&n) {
                    z.reverse.push(n);
                }
            }
            z.serial = z.serial.wrapping_add(more.serial);
        }
        z
    }

    fn lookup(&self, name: &str) -> Lookup {
        let mut seen_not_found = false;
        for r in &self.resolvers {
            match r.lookup(name) {
                Lookup::NotOurs => {}
                Lookup::NotFound => seen_not_found = true,
                other => return other,
            }
        }
        if seen_not_found {
            Lookup::NotFound
        } else {
            Lookup::NotOurs
        }
    }

    fn reverse(&self, addr: IpAddr) -> Reverse {
        let mut seen_not_found = false;
        for r in &self.resolvers {
            match r.reverse(addr) {
                Reverse::NotOurs => {}
                Reverse::NotFound => seen_not_found = true,
                found => return found,
            }
        }
        if seen_not_found {
            Reverse::NotFound
        } else {
            Reverse::NotOurs
        }
    }

    fn entries(&self) -> Vec<HostEntry> {
        self.resolvers.iter().flat_map(|r| r.entries()).collect()
    }
}

/// `wh resolve` in one call: an address gives the names of its host, a name
/// gives the addresses of its host (as text); nothing when unknown. An
/// ambiguous key prefix is an error listing the candidates.
pub fn resolve_text(resolver: &dyn Resolver, text: &str) -> Result<Vec<String>, String> {
    let text = text.trim().trim_end_matches('.');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(match resolver.reverse(ip) {
            Reverse::Found(names) => names.into_iter().take(1).collect(),
            Reverse::NotFound | Reverse::NotOurs => Vec::new(),
        });
    }
    match resolver.lookup(text) {
        Lookup::Found(h) => Ok(h.addrs.iter().map(IpAddr::to_string).collect()),
        Lookup::Ambiguous(names) => Err(format!(
            "'{text}' is the beginning of several keys ({}); give more characters",
            names.join(", ")
        )),
        Lookup::NotFound | Lookup::NotOurs => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetworkSpec, PeerSpec, Role};
    use crate::keys::PrivateKey;

    fn network(name: &str, subnet: &str, hosts: &[&str], seed: u8) -> ConfigNames {
        let mut s = NetworkSpec::new(name);
        s.subnet = Some(subnet.parse().unwrap());
        for (i, h) in hosts.iter().enumerate() {
            s.peers.push(PeerSpec {
                role: Role::Trust,
                hostname: Some(h.to_string()),
                static_ip: None,
                key: PrivateKey::from_bytes([seed + i as u8; 32]).public_key(),
                endpoint: None,
                routes: Vec::new(),
            });
        }
        let own = s.peers[0].key;
        ConfigNames::new(&s, own)
    }

    #[test]
    fn chain_asks_in_order_and_unites_zones() {
        let lab = network("lab", "10.0.42.0/24", &["node_a", "node_b"], 1);
        let home = network("home", "10.0.7.0/24", &["nas", "node_b"], 50);
        let chain = Chain::new(vec![Arc::new(lab), Arc::new(home)]);
        let addrs = |name: &str| match chain.lookup(name) {
            Lookup::Found(h) => h.addrs[0].to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(addrs("nas.home"), "10.0.7.2");
        assert_eq!(addrs("node_b.home"), "10.0.7.3");
        // A bare name: the first resolver that knows it wins.
        assert_eq!(addrs("node_b"), "10.0.42.3");
        // Unknown in the first, not ours in the second: unknown.
        assert_eq!(chain.lookup("nobody.lab"), Lookup::NotFound);
        assert_eq!(chain.lookup("x.example"), Lookup::NotOurs);
        assert_eq!(
            chain.reverse("10.0.7.2".parse().unwrap()),
            Reverse::Found(vec!["nas.home".into()])
        );
        assert_eq!(
            chain.reverse("10.0.7.99".parse().unwrap()),
            Reverse::NotFound
        );
        assert_eq!(
            chain.reverse("192.0.2.1".parse().unwrap()),
            Reverse::NotOurs
        );
        let z = chain.zones();
        assert_eq!(z.forward, vec!["lab".to_string(), "home".to_string()]);
        assert_eq!(z.reverse.len(), 4);
        assert_eq!(chain.entries().len(), 8);
        assert_eq!(
            resolve_text(&chain, "nas").unwrap(),
            chain_addrs(&chain, "nas.home")
        );
        assert!(resolve_text(&chain, "nobody").unwrap().is_empty());
    }

    fn chain_addrs(r: &dyn Resolver, name: &str) -> Vec<String> {
        match r.lookup(name) {
            Lookup::Found(h) => h.addrs.iter().map(IpAddr::to_string).collect(),
            _ => Vec::new(),
        }
    }
}
