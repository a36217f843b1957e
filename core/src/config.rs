//! The single-file network description, in the original WireHub grammar:
//!
//! ```text
//! name tutorial                 # name of the network
//! subnet 10.0.42.0/24           # private IPv4 subnetwork
//! workbit 8                     # proof of work required of every key
//! namespace public              # namespace of the proof of work
//! boot  [hostname] [static-ip] <key> <endpoint>
//! trust [hostname] [static-ip] <key> [endpoint]
//! router [hostname] [static-ip] <key> [endpoint] [subnet,...]
//! alias|peer [hostname] [static-ip] <key> [endpoint]
//! ```
//!
//! `#` starts a comment. An endpoint is `host[:port]` (IPv6 literals in
//! brackets), the port defaults to 62096; host names are kept as text and
//! resolved only when used, never while parsing.
//!
//! Parsing reports every error of a file at once, each with its line and
//! column; unknown directives are warnings. The result is a [`NetworkSpec`],
//! the type the daemon and the Kubernetes resource share.
//! [`NetworkSpec::validate`] runs the same checks on a spec built elsewhere
//! (a Kubernetes resource), on the spec itself without printing it, and
//! names peers where the parser names lines: it passes exactly the specs
//! that print and parse back unchanged.
//!
//! Nothing here does I/O but [`load`].

use crate::keys::{DEFAULT_NAMESPACE, DEFAULT_WORKBITS, KeyError, PublicKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// WireHub's default UDP port, as in the original.
pub const DEFAULT_PORT: u16 = 62096;

/// The host number the first trusted node takes in the subnet.
pub const FIRST_HOST: u32 = 2;

/// Longest hostname accepted (a DNS label).
pub const MAX_HOSTNAME: usize = 63;

/// What a peer line says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A DHT bootstrap node (needs an endpoint). Not part of the overlay.
    Boot,
    /// A trusted node of the overlay: it gets a private IP and a tunnel.
    Trust,
    /// A trusted node that also routes subnets behind it.
    Router,
    /// An alias key, bound later to a real key (zero-netcat invitations).
    Alias,
    /// A known, untrusted node (a relay or DHT node with a known endpoint).
    Peer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Boot,
        Role::Trust,
        Role::Router,
        Role::Alias,
        Role::Peer,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            Role::Boot => "boot",
            Role::Trust => "trust",
            Role::Router => "router",
            Role::Alias => "alias",
            Role::Peer => "peer",
        }
    }

    fn from_keyword(word: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.keyword() == word)
    }

    /// Trusted roles are members of the overlay: they get addresses and tunnels.
    pub fn is_trusted(self) -> bool {
        matches!(self, Role::Trust | Role::Router)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// Where a peer can be reached: a host (IP literal or name, unresolved) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Parses `host[:port]`, `[v6]:port`, or a bare IPv6 literal.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if text.is_empty() {
            return Err("an endpoint is host[:port], this is empty".into());
        }
        if let Some(rest) = text.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("endpoint '{text}' opens '[' but never closes it"));
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!("'{host}' between brackets is not an IPv6 address"));
            }
            let port =
                match after {
                    "" => DEFAULT_PORT,
                    p => parse_port(p.strip_prefix(':').ok_or_else(|| {
                        format!("expected ':port' after ']' in endpoint '{text}'")
                    })?)?,
                };
            return Ok(Endpoint {
                host: host.to_string(),
                port,
            });
        }
        if text.parse::<Ipv6Addr>().is_ok() {
            return Ok(Endpoint {
                host: text.to_string(),
                port: DEFAULT_PORT,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (text, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(format!("endpoint '{text}' has no host before ':'"));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_'))
        {
            return Err(format!(
                "endpoint host '{host}' has the character '{c}', which no host name or IPv4 address has"
            ));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port; use 1 to 65535".into()),
        Ok(n) if n <= u16::MAX as u32 => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is out of range; use 1 to 65535")),
        Err(_) => Err(format!("port '{p}' is not a number")),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One peer line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "staticIp")]
    pub static_ip: Option<Ipv4Addr>,
    pub key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Subnets a `router` routes (pod CIDRs, sites behind it): they join its
    /// WireGuard allowed IPs and get routes into the overlay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
}

/// A whole network, as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    pub workbits: u8,
    pub namespace: String,
    pub peers: Vec<PeerSpec>,
}

/// A peer with the addresses the network gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member<'a> {
    #[serde(flatten)]
    pub peer: &'a PeerSpec,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl NetworkSpec {
    /// An empty network with the defaults of the original.
    pub fn new(name: impl Into<String>) -> Self {
        NetworkSpec {
            name: name.into(),
            subnet: None,
            workbits: DEFAULT_WORKBITS,
            namespace: DEFAULT_NAMESPACE.to_string(),
            peers: Vec::new(),
        }
    }

    /// The IPv4 address of each peer, in file order: static IPs as given, other
    /// trusted peers host numbers 2, 3, ... skipping static IPs; `None` for
    /// untrusted peers, for a network without subnet, or past the subnet's end
    /// (which validation refuses).
    pub fn ipv4_addresses(&self) -> Vec<Option<Ipv4Addr>> {
        let Some(subnet) = self.subnet else {
            return vec![None; self.peers.len()];
        };
        let taken: HashSet<Ipv4Addr> = self
            .peers
            .iter()
            .filter(|p| p.role.is_trusted())
            .filter_map(|p| p.static_ip)
            .collect();
        let base = u32::from(subnet.network());
        let last = u32::from(subnet.broadcast());
        let mut next = base.saturating_add(FIRST_HOST);
        self.peers
            .iter()
            .map(|p| {
                if !p.role.is_trusted() {
                    return None;
                }
                if let Some(ip) = p.static_ip {
                    return Some(ip);
                }
                while next < last && taken.contains(&Ipv4Addr::from(next)) {
                    next += 1;
                }
                if next >= last {
                    return None;
                }
                let ip = Ipv4Addr::from(next);
                next += 1;
                Some(ip)
            })
            .collect()
    }

    /// Every peer with its overlay addresses (IPv6 for trusted peers only).
    pub fn members(&self) -> Vec<Member<'_>> {
        self.peers
            .iter()
            .zip(self.ipv4_addresses())
            .map(|(peer, ipv4)| Member {
                peer,
                ipv4,
                ipv6: peer.role.is_trusted().then(|| self.ipv6_of(&peer.key)),
            })
            .collect()
    }

    /// The stable IPv6 overlay address of a key in this network: the ULA prefix
    /// comes from the network's name (see docs/addressing.md).
    pub fn ipv6_of(&self, key: &PublicKey) -> Ipv6Addr {
        key.orchid(&self.name)
    }

    /// The peer line of a key, if the file has one.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerSpec> {
        self.peers.iter().find(|p| &p.key == key)
    }

    /// Trusted peers (the overlay's members).
    pub fn trusted(&self) -> impl Iterator<Item = &PeerSpec> {
        self.peers.iter().filter(|p| p.role.is_trusted())
    }

    /// Runs the file's checks on a spec built elsewhere (such as from a
    /// Kubernetes resource), directly on the spec: it passes exactly when
    /// printing the spec and parsing it back would give the same spec
    /// without an error. Each error names the peer it is about, by its
    /// place (1-based), role and hostname or key, and so does a message
    /// that compares two peers.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut sink = PeerSink {
            peers: &self.peers,
            errors: Vec::new(),
        };
        self.check_header(&mut sink.errors);
        for (i, peer) in self.peers.iter().enumerate() {
            for message in peer_problems(peer, self.subnet.is_some()) {
                sink.error(i, Field::Key, message);
            }
        }
        check_peers(&mut sink, self);
        if sink.errors.is_empty() {
            Ok(())
        } else {
            Err(sink.errors)
        }
    }

    /// Whether the spec passes [`NetworkSpec::validate`], knowing that it
    /// passed without its peer `added`: runs only the checks that one peer
    /// can fail (its own, and against each other peer once), so a join
    /// costs one pass over the peers, not the whole validation. Says no
    /// more than yes or no: the caller validates the whole spec for the
    /// messages.
    pub fn valid_with_added(&self, added: usize) -> bool {
        let Some(new) = self.peers.get(added) else {
            return false;
        };
        if !peer_problems(new, self.subnet.is_some()).is_empty() {
            return false;
        }
        if new.hostname.as_deref() == Some(self.name.as_str()) {
            return false;
        }
        if let (Some(ip), Some(net)) = (new.static_ip, self.subnet)
            && (!net.contains(&ip) || ip == net.network() || ip == net.broadcast())
        {
            return false;
        }
        let mut prefix = [0u8; 16];
        prefix[..8].copy_from_slice(&crate::keys::ula_prefix(&self.name));
        let overlay_v6 = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(prefix), 48).expect("48 <= 128"));
        for (i, net) in new.routes.iter().enumerate() {
            if self.subnet.is_some_and(|s| overlaps(net, &IpNet::V4(s)))
                || overlaps(net, &overlay_v6)
                || new.routes[..i].iter().any(|r| overlaps(net, r))
            {
                return false;
            }
        }
        let clash = self.peers.iter().enumerate().any(|(i, p)| {
            i != added
                && (p.key == new.key
                    || (p.hostname.is_some() && p.hostname == new.hostname)
                    || (p.static_ip.is_some() && p.static_ip == new.static_ip)
                    || p.routes
                        .iter()
                        .any(|r| new.routes.iter().any(|n| overlaps(n, r))))
        });
        if clash {
            return false;
        }
        // Room: an added peer may take an address another one had.
        self.ipv4_addresses()
            .into_iter()
            .zip(&self.peers)
            .all(|(ip, p)| ip.is_some() || !p.role.is_trusted() || self.subnet.is_none())
    }

    /// The checks of the header lines (name, subnet, workbit, namespace).
    fn check_header(&self, errors: &mut Vec<String>) {
        if let Err(e) = valid_name(&self.name) {
            errors.push(format!("network name {e}"));
        }
        if let Some(net) = self.subnet {
            if net.trunc() != net {
                errors.push(format!(
                    "subnet {net} is not a network address: its host bits are set; did you mean {}?",
                    net.trunc()
                ));
            } else if net.prefix_len() > 30 {
                errors.push(format!(
                    "subnet {net} is too small: a /{} holds no host past .1; use /30 or larger",
                    net.prefix_len()
                ));
            }
        }
        if self.workbits > 64 {
            errors.push(format!(
                "workbit '{}' is not a number from 0 to 64",
                self.workbits
            ));
        }
        let ns = &self.namespace;
        if ns.is_empty() || ns.contains(|c: char| c.is_whitespace() || c == '#') {
            errors.push(format!(
                "namespace '{ns}' must be one word, without spaces or '#'"
            ));
        }
    }
}

/// What is wrong with one peer on its own, as the parser would find it on
/// the peer's printed line. `has_subnet`: whether the network has one.
fn peer_problems(peer: &PeerSpec, has_subnet: bool) -> Vec<String> {
    let role = peer.role;
    let mut out = Vec::new();
    if let Some(h) = &peer.hostname {
        if let Err(e) = valid_name(h) {
            out.push(format!("hostname {e}"));
        } else if h.parse::<PublicKey>().is_ok() {
            out.push(format!(
                "hostname '{h}' would be read as a public key; a name must not be one"
            ));
        }
    }
    if peer.static_ip.is_some() && !role.is_trusted() {
        out.push(format!(
            "only trusted nodes ('trust', 'router') have a private IP; '{role}' cannot take one"
        ));
    }
    if role.is_trusted() && !has_subnet {
        out.push(format!(
            "'{role}' gives a node a private IP, so the network needs a 'subnet'"
        ));
    }
    match &peer.endpoint {
        None if role == Role::Boot => out.push(
            "a 'boot' peer needs an endpoint (host[:port]): a bootstrap node must be reachable"
                .into(),
        ),
        None => {}
        Some(e) => match Endpoint::parse(&e.to_string()) {
            Ok(back) if &back == e => {}
            Ok(back) => out.push(format!("endpoint '{e}' would be read back as '{back}'")),
            Err(why) => out.push(why),
        },
    }
    if role != Role::Router && !peer.routes.is_empty() {
        out.push(format!(
            "only 'router' peers route subnets; '{role}' cannot route {}",
            peer.routes[0]
        ));
    }
    for net in &peer.routes {
        if net.trunc() != *net {
            out.push(format!(
                "routed subnet '{net}' has host bits set; did you mean {}?",
                net.trunc()
            ));
        } else if let Some(problem) = routed_subnet_problem(net) {
            out.push(format!("routed subnet {net} {problem}"));
        }
    }
    out
}

/// Which word of a peer's line a check is about (the parser reports at
/// its column).
#[derive(Debug, Clone, Copy)]
enum Field {
    Key,
    Host,
    Ip,
    Routes,
}

/// Where the checks across peers report: the parser at a line and
/// column, [`NetworkSpec::validate`] by peer.
trait Sink {
    fn error(&mut self, peer: usize, field: Field, message: String);
    /// How a message names another peer: "on line 3", "by peer 2 (trust a)".
    fn place(&self, peer: usize) -> String;
}

/// The parser's sink: peer `i` is `lines[i]`.
struct LineSink<'a> {
    p: &'a mut Parser,
    lines: &'a [PeerLine],
}

impl Sink for LineSink<'_> {
    fn error(&mut self, peer: usize, field: Field, message: String) {
        let pos = &self.lines[peer];
        let column = match field {
            Field::Key => pos.key_col,
            Field::Host => pos.host_col,
            Field::Ip => pos.ip_col,
            Field::Routes => pos.routes_col,
        };
        self.p.error(pos.line, column, message);
    }

    fn place(&self, peer: usize) -> String {
        format!("on line {}", self.lines[peer].line)
    }
}

/// [`NetworkSpec::validate`]'s sink: messages open with the peer.
struct PeerSink<'a> {
    peers: &'a [PeerSpec],
    errors: Vec<String>,
}

impl PeerSink<'_> {
    /// "peer 3 (router node-a)", or with the key's start when unnamed.
    fn name(&self, i: usize) -> String {
        match self.peers.get(i) {
            Some(p) => match &p.hostname {
                Some(h) => format!("peer {} ({} {h})", i + 1, p.role),
                None => format!("peer {} ({} {})", i + 1, p.role, p.key.short(10)),
            },
            None => format!("peer {}", i + 1),
        }
    }
}

impl Sink for PeerSink<'_> {
    fn error(&mut self, peer: usize, _field: Field, message: String) {
        let name = self.name(peer);
        self.errors.push(format!("{name}: {message}"));
    }

    fn place(&self, peer: usize) -> String {
        format!("by {}", self.name(peer))
    }
}

/// Prints the spec in the file format; parsing it back gives the same spec.
impl fmt::Display for NetworkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "name {}", self.name)?;
        if let Some(subnet) = self.subnet {
            writeln!(f, "subnet {subnet}")?;
        }
        if self.workbits != DEFAULT_WORKBITS {
            writeln!(f, "workbit {}", self.workbits)?;
        }
        if self.namespace != DEFAULT_NAMESPACE {
            writeln!(f, "namespace {}", self.namespace)?;
        }
        for p in &self.peers {
            write!(f, "{}", p.role)?;
            if let Some(h) = &p.hostname {
                write!(f, " {h}")?;
            }
            if let Some(ip) = p.static_ip {
                write!(f, " {ip}")?;
            }
            write!(f, " {}", p.key)?;
            if let Some(e) = &p.endpoint {
                write!(f, " {e}")?;
            }
            if !p.routes.is_empty() {
                let nets: Vec<String> = p.routes.iter().map(|n| n.to_string()).collect();
                write!(f, " {}", nets.join(","))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}: {sev}: {}", self.line, self.column, self.message)
    }
}

/// A parsed file: the spec and the warnings it raised.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub spec: NetworkSpec,
    pub warnings: Vec<Diagnostic>,
}

/// Every error of a file (and its warnings), in line order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    /// One line per diagnostic, prefixed with the file's name.
    pub fn render(&self, file: &str) -> String {
        let mut all: Vec<&Diagnostic> = self.errors.iter().chain(&self.warnings).collect();
        all.sort_by_key(|d| (d.line, d.column));
        all.iter()
            .map(|d| format!("{file}:{d}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s)", self.errors.len())
    }
}

/// Why a network file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .diagnostics.render(.path))]
    Invalid {
        path: String,
        diagnostics: Diagnostics,
    },
}

/// Reads and parses a network file.
pub fn load(path: &Path) -> Result<Parsed, LoadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    parse(&text).map_err(|diagnostics| LoadError::Invalid {
        path: shown,
        diagnostics,
    })
}

/// A word of a line and the 1-based column it starts at.
#[derive(Clone, Copy)]
struct Word<'a> {
    text: &'a str,
    column: usize,
}

fn words(line: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, line.len()));
    }
    out.into_iter()
        .map(|(s, e)| Word {
            text: &line[s..e],
            column: line[..s].chars().count() + 1,
        })
        .collect()
}

struct Parser {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Parser {
    fn error(&mut self, line: usize, column: usize, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            severity: Severity::Error,
            line,
            column,
            message: message.into(),
        });
    }

    fn warning(&mut self, line: usize, column: usize, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            severity: Severity::Warning,
            line,
            column,
            message: message.into(),
        });
    }
}

fn valid_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_HOSTNAME {
        return Err(format!(
            "'{s}' is {} characters long; a name is at most {MAX_HOSTNAME}",
            s.len()
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("'{s}' does not start with a letter"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "'{s}' has the character '{c}'; names use letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// True when a word looks like an attempt at a key (so a bad key is reported
/// as a bad key rather than as a stray word).
fn looks_like_key(s: &str) -> bool {
    (38..=48).contains(&s.chars().count()) && !s.contains(['.', ':'])
}

/// Position of each parsed peer line, for messages that compare lines.
struct PeerLine {
    line: usize,
    key_col: usize,
    host_col: usize,
    ip_col: usize,
    routes_col: usize,
}

/// Parses a whole file. All errors are reported together.
pub fn parse(text: &str) -> Result<Parsed, Diagnostics> {
    let mut p = Parser {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut name: Option<String> = None;
    let mut subnet: Option<(Ipv4Net, usize)> = None;
    let mut workbits: Option<u8> = None;
    let mut namespace: Option<String> = None;
    let mut peers: Vec<PeerSpec> = Vec::new();
    let mut lines: Vec<PeerLine> = Vec::new();
    let mut last_line = 0;

    for (index, raw) in text.lines().enumerate() {
        let lineno = index + 1;
        last_line = lineno;
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let ws = words(content);
        let Some(first) = ws.first().copied() else {
            continue;
        };
        let args = &ws[1..];
        let single = |p: &mut Parser, what: &str, example: &str| -> Option<Word> {
            match args {
                [w] => Some(*w),
                [] => {
                    p.error(
                        lineno,
                        first.column + first.text.len(),
                        format!("'{}' needs {what}, as in '{example}'", first.text),
                    );
                    None
                }
                [_, extra, ..] => {
                    p.error(
                        lineno,
                        extra.column,
                        format!(
                            "'{}' takes one value; '{}' is one too many",
                            first.text, extra.text
                        ),
                    );
                    None
                }
            }
        };
        match first.text {
            "name" => {
                if let Some(w) = single(&mut p, "the network's name", "name tutorial") {
                    if name.is_some() {
                        p.error(lineno, first.column, "'name' is given twice; a file describes one network");
                    } else if let Err(e) = valid_name(w.text) {
                        p.error(lineno, w.column, format!("network name {e}"));
                    } else {
                        name = Some(w.text.to_string());
                    }
                }
            }
            "subnet" => {
                if let Some(w) = single(&mut p, "an IPv4 network", "subnet 10.0.42.0/24") {
                    if subnet.is_some() {
                        p.error(lineno, first.column, "'subnet' is given twice");
                    } else {
                        match w.text.parse::<Ipv4Net>() {
                            Err(_) => p.error(lineno, w.column, format!("'{}' is not an IPv4 network such as 10.0.42.0/24", w.text)),
                            Ok(net) if net.trunc() != net => p.error(
                                lineno,
                                w.column,
                                format!("'{}' is not a network address: its host bits are set; did you mean {}?", w.text, net.trunc()),
                            ),
                            Ok(net) if net.prefix_len() > 30 => p.error(
                                lineno,
                                w.column,
                                format!("subnet '{}' is too small: a /{} holds no host past .1; use /30 or larger", w.text, net.prefix_len()),
                            ),
                            Ok(net) => subnet = Some((net, lineno)),
                        }
                    }
                }
            }
            "workbit" | "workbits" => {
                if let Some(w) = single(&mut p, "a number of bits", "workbit 8") {
                    if workbits.is_some() {
                        p.error(lineno, first.column, "'workbit' is given twice");
                    } else {
                        match w.text.parse::<u8>() {
                            Ok(n) if n <= 64 => workbits = Some(n),
                            _ => p.error(lineno, w.column, format!("workbit '{}' is not a number from 0 to 64", w.text)),
                        }
                    }
                }
            }
            "namespace" => {
                if let Some(w) = single(&mut p, "a name", "namespace public") {
                    if namespace.is_some() {
                        p.error(lineno, first.column, "'namespace' is given twice");
                    } else {
                        namespace = Some(w.text.to_string());
                    }
                }
            }
            word => match Role::from_keyword(word) {
                Some(role) => {
                    if let Some((peer, pos)) = parse_peer(&mut p, lineno, first, role, args) {
                        if role.is_trusted() && subnet.is_none() {
                            p.error(
                                lineno,
                                first.column,
                                format!("'{word}' gives a node a private IP, so 'subnet' must come before it"),
                            );
                        }
                        peers.push(peer);
                        lines.push(pos);
                    }
                }
                None => p.warning(
                    lineno,
                    first.column,
                    format!(
                        "unknown directive '{word}' ignored; known: name, subnet, workbit, namespace, boot, trust, router, alias, peer"
                    ),
                ),
            },
        }
    }

    if name.is_none() {
        p.error(
            last_line.max(1),
            1,
            "the file has no 'name' line; every network needs one, as in 'name tutorial'",
        );
    }
    let spec = NetworkSpec {
        name: name.unwrap_or_default(),
        subnet: subnet.map(|(s, _)| s),
        workbits: workbits.unwrap_or(DEFAULT_WORKBITS),
        namespace: namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        peers,
    };
    check_peers(
        &mut LineSink {
            p: &mut p,
            lines: &lines,
        },
        &spec,
    );

    if p.errors.is_empty() {
        Ok(Parsed {
            spec,
            warnings: p.warnings,
        })
    } else {
        p.errors.sort_by_key(|d| (d.line, d.column));
        Err(Diagnostics {
            errors: p.errors,
            warnings: p.warnings,
        })
    }
}

fn parse_peer(
    p: &mut Parser,
    lineno: usize,
    first: Word,
    role: Role,
    args: &[Word],
) -> Option<(PeerSpec, PeerLine)> {
    let usage = format!("{role} [hostname] [static-ip] <key> [endpoint]");
    // The key is the first word that parses as one; a word that looks like a
    // key but does not parse is reported as a bad key.
    let key_index = args
        .iter()
        .position(|w| w.text.parse::<PublicKey>().is_ok());
    let Some(ki) = key_index else {
        if let Some(w) = args.iter().find(|w| looks_like_key(w.text)) {
            let why = match w.text.parse::<PublicKey>() {
                Err(KeyError::Length(n)) => {
                    format!("is {n} characters; a public key is 43 characters of URL-safe base64")
                }
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            };
            p.error(lineno, w.column, format!("key '{}' {why}", w.text));
        } else {
            let col = args
                .first()
                .map_or(first.column + first.text.len(), |w| w.column);
            p.error(
                lineno,
                col,
                format!("no public key on this line; expected '{usage}'"),
            );
        }
        return None;
    };
    let key_word = args[ki];
    let key: PublicKey = key_word.text.parse().ok()?;
    let before = &args[..ki];
    let after = &args[ki + 1..];
    let mut ok = true;
    let mut hostname = None;
    let mut static_ip = None;
    let mut host_col = 0;
    let mut ip_col = 0;
    let mut take_ip = |p: &mut Parser, w: Word| match w.text.parse::<Ipv4Addr>() {
        Ok(ip) => {
            static_ip = Some(ip);
            ip_col = w.column;
            true
        }
        Err(_) => {
            p.error(
                lineno,
                w.column,
                format!("'{}' is not an IPv4 address; expected '{usage}'", w.text),
            );
            false
        }
    };
    match before {
        [] => {}
        [w] if w.text.parse::<Ipv4Addr>().is_ok() => ok &= take_ip(p, *w),
        [h] | [h, _] => {
            if let Err(e) = valid_name(h.text) {
                p.error(lineno, h.column, format!("hostname {e}"));
                ok = false;
            } else {
                hostname = Some(h.text.to_string());
                host_col = h.column;
            }
            if let [_, ipw] = before {
                ok &= take_ip(p, *ipw);
            }
        }
        [_, _, extra, ..] => {
            p.error(
                lineno,
                extra.column,
                format!(
                    "'{}' is one word too many before the key; expected '{usage}'",
                    extra.text
                ),
            );
            ok = false;
        }
    }
    // A router's line may end with the subnets it routes (CIDRs, comma
    // separated): `router gw KEY [endpoint] 10.244.1.0/24,fd00:1::/64`.
    let (after, routes_word) = match after.last() {
        Some(w) if role == Role::Router && w.text.contains('/') => {
            (&after[..after.len() - 1], Some(*w))
        }
        _ => (after, None),
    };
    let mut routes = Vec::new();
    if let Some(w) = routes_word {
        for part in w.text.split(',') {
            match part.parse::<IpNet>() {
                Ok(net) if net.trunc() == net => match routed_subnet_problem(&net) {
                    None => routes.push(net),
                    Some(problem) => {
                        p.error(lineno, w.column, format!("routed subnet {net} {problem}"));
                        ok = false;
                    }
                },
                Ok(net) => {
                    p.error(
                        lineno,
                        w.column,
                        format!(
                            "routed subnet '{part}' has host bits set; did you mean {}?",
                            net.trunc()
                        ),
                    );
                    ok = false;
                }
                Err(_) => {
                    p.error(
                        lineno,
                        w.column,
                        format!("'{part}' is not a subnet such as 10.244.1.0/24"),
                    );
                    ok = false;
                }
            }
        }
    }
    let usage = if role == Role::Router {
        format!("{usage} [subnet,...]")
    } else {
        usage
    };
    let endpoint = match after {
        [] => None,
        [w] => match Endpoint::parse(w.text) {
            Ok(e) => Some(e),
            Err(e) => {
                p.error(lineno, w.column, e);
                ok = false;
                None
            }
        },
        [_, extra, ..] => {
            p.error(
                lineno,
                extra.column,
                format!(
                    "'{}' is one word too many after the endpoint; expected '{usage}'",
                    extra.text
                ),
            );
            ok = false;
            None
        }
    };
    if role == Role::Boot && endpoint.is_none() && after.is_empty() {
        p.error(
            lineno,
            key_word.column + key_word.text.len(),
            "a 'boot' line needs an endpoint after the key (host[:port]): a bootstrap node must be reachable",
        );
        ok = false;
    }
    if static_ip.is_some() && !role.is_trusted() {
        p.error(
            lineno,
            ip_col,
            format!(
                "only trusted nodes ('trust', 'router') have a private IP; '{role}' cannot take one"
            ),
        );
        ok = false;
    }
    ok.then_some({
        (
            PeerSpec {
                role,
                hostname,
                static_ip,
                key,
                endpoint,
                routes,
            },
            PeerLine {
                line: lineno,
                key_col: key_word.column,
                host_col,
                ip_col,
                routes_col: routes_word.map_or(key_word.column, |w| w.column),
            },
        )
    })
}

/// The narrowest prefix a router may claim: wider ones would take over a
/// host's default route or most of its address space.
pub const WIDEST_ROUTED_V4: u8 = 8;
pub const WIDEST_ROUTED_V6: u8 = 16;

/// Why a subnet cannot be routed into the overlay, if it cannot: too wide
/// (`/0` would replace every host's default route), or a range whose
/// packets must never leave the host or its link (loopback, link-local,
/// multicast, unspecified).
pub fn routed_subnet_problem(net: &IpNet) -> Option<String> {
    let (widest, special) = match net {
        IpNet::V4(n) => (
            WIDEST_ROUTED_V4,
            [
                ("loopback", "127.0.0.0/8"),
                ("link-local", "169.254.0.0/16"),
                ("multicast", "224.0.0.0/4"),
                ("'this network'", "0.0.0.0/8"),
            ]
            .into_iter()
            .find(|(_, r)| overlaps(&IpNet::V4(*n), &r.parse().expect("a literal network"))),
        ),
        IpNet::V6(n) => (
            WIDEST_ROUTED_V6,
            [
                ("loopback", "::1/128"),
                ("link-local", "fe80::/10"),
                ("multicast", "ff00::/8"),
                ("unspecified", "::/128"),
            ]
            .into_iter()
            .find(|(_, r)| overlaps(&IpNet::V6(*n), &r.parse().expect("a literal network"))),
        ),
    };
    if net.prefix_len() < widest {
        return Some(format!(
            "is too wide: a router may claim /{widest} or narrower (a wider route would take over the hosts' default route)"
        ));
    }
    special.map(|(what, range)| {
        format!("overlaps the {what} range {range}, which never leaves a host")
    })
}

/// Whether two networks share an address (one holds the other's start).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks across peers: duplicates, static IPs, routed subnets, subnet
/// capacity. The same checks for a parsed file and for
/// [`NetworkSpec::validate`]; only where they report differs.
fn check_peers(sink: &mut impl Sink, spec: &NetworkSpec) {
    let mut keys: HashMap<PublicKey, usize> = HashMap::new();
    let mut hosts: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, peer) in spec.peers.iter().enumerate() {
        if let Some(prev) = keys.insert(peer.key, i) {
            let place = sink.place(prev);
            sink.error(
                i,
                Field::Key,
                format!(
                    "key {} is already used {place}; each key appears once",
                    peer.key.short(10)
                ),
            );
        }
        if let Some(h) = &peer.hostname {
            if h == &spec.name {
                sink.error(
                    i,
                    Field::Host,
                    format!("hostname '{h}' is the network's name; a node needs a name of its own"),
                );
            }
            if let Some(prev) = hosts.insert(h, i) {
                let place = sink.place(prev);
                sink.error(
                    i,
                    Field::Host,
                    format!("hostname '{h}' is already used {place}"),
                );
            }
        }
        if let Some(ip) = peer.static_ip {
            if let Some(prev) = ips.insert(ip, i) {
                let place = sink.place(prev);
                sink.error(
                    i,
                    Field::Ip,
                    format!("static IP {ip} is already given {place}"),
                );
            }
            if let Some(net) = spec.subnet {
                if !net.contains(&ip) {
                    sink.error(
                        i,
                        Field::Ip,
                        format!("static IP {ip} is outside the subnet {net}"),
                    );
                } else if ip == net.network() || ip == net.broadcast() {
                    sink.error(
                        i,
                        Field::Ip,
                        format!("static IP {ip} is the network or broadcast address of {net}"),
                    );
                }
            }
        }
    }
    check_routes(sink, spec);
    if let Some(net) = spec.subnet {
        let addrs = spec.ipv4_addresses();
        for (i, (peer, ip)) in spec.peers.iter().zip(addrs).enumerate() {
            if peer.role.is_trusted() && ip.is_none() {
                let room = (u32::from(net.broadcast()) - u32::from(net.network()))
                    .saturating_sub(FIRST_HOST);
                sink.error(
                    i,
                    Field::Key,
                    format!("no address left for this node: subnet {net} holds {room} hosts from .{FIRST_HOST}; use a larger subnet"),
                );
                break;
            }
        }
    }
}

/// Routed subnets must not overlap the overlay's own addresses, nor each
/// other: WireGuard gives an address to the last peer that claims it, so an
/// overlap would silently move one router's traffic to another.
fn check_routes(sink: &mut impl Sink, spec: &NetworkSpec) {
    let mut prefix = [0u8; 16];
    prefix[..8].copy_from_slice(&crate::keys::ula_prefix(&spec.name));
    let overlay_v6 = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(prefix), 48).expect("48 <= 128"));
    let mut claimed = Claims::default();
    for (i, peer) in spec.peers.iter().enumerate() {
        for net in &peer.routes {
            if let Some(subnet) = spec.subnet.filter(|s| overlaps(net, &IpNet::V4(*s))) {
                sink.error(
                    i,
                    Field::Routes,
                    format!("routed subnet {net} overlaps the network's subnet {subnet}"),
                );
            }
            if overlaps(net, &overlay_v6) {
                sink.error(
                    i,
                    Field::Routes,
                    format!("routed subnet {net} overlaps the network's IPv6 overlay prefix {overlay_v6}"),
                );
            }
            if let Some((other, by)) = claimed.first_overlap(net) {
                let place = sink.place(by);
                sink.error(
                    i,
                    Field::Routes,
                    format!("routed subnet {net} overlaps {other}, routed {place}; each address has one router"),
                );
            }
            claimed.claim(*net, i);
        }
    }
}

/// Subnets claimed so far, in claim order, found by overlap without a
/// scan of them all: two networks overlap when one holds the other, so
/// the claims that overlap `net` are its supernets (one per shorter
/// prefix, looked up) and the claims inside it (a range of starts).
#[derive(Debug, Default)]
pub struct Claims {
    /// Each network's first claim: (order, peer).
    first: HashMap<IpNet, (usize, usize)>,
    /// The (family, prefix length) pairs claimed, so a supernet is looked
    /// up only at lengths someone claimed.
    lens: std::collections::BTreeSet<(u8, u8)>,
    /// The same, by (family, start, prefix length), for ranges.
    by_start: std::collections::BTreeMap<(u8, u128, u8), (usize, usize, IpNet)>,
    count: usize,
}

impl Claims {
    fn key(net: &IpNet) -> (u8, u128) {
        match net {
            IpNet::V4(n) => (4, u128::from(u32::from(n.network()))),
            IpNet::V6(n) => (6, u128::from(n.network())),
        }
    }

    /// The first claim (in claim order) that overlaps `net`, and its peer.
    pub fn first_overlap(&self, net: &IpNet) -> Option<(IpNet, usize)> {
        let mut best: Option<(usize, usize, IpNet)> = None;
        let mut take = |order: usize, peer: usize, n: IpNet| {
            if best.is_none_or(|(o, _, _)| order < o) {
                best = Some((order, peer, n));
            }
        };
        // Claims that hold net: net cut to each claimed prefix up to its own.
        let (family, start) = Self::key(net);
        for &(_, len) in self.lens.range((family, 0)..=(family, net.prefix_len())) {
            let Ok(sup) = (match net {
                IpNet::V4(n) => Ipv4Net::new(n.network(), len).map(|s| IpNet::V4(s.trunc())),
                IpNet::V6(n) => Ipv6Net::new(n.network(), len).map(|s| IpNet::V6(s.trunc())),
            }) else {
                continue;
            };
            if let Some(&(order, peer)) = self.first.get(&sup) {
                take(order, peer, sup);
            }
        }
        // Claims inside net: starts from net's first to its last address,
        // longer prefixes.
        let end = match net {
            IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
            IpNet::V6(n) => u128::from(n.broadcast()),
        };
        for (&(_, _, len), &(order, peer, n)) in self
            .by_start
            .range((family, start, 0)..=(family, end, u8::MAX))
        {
            if len > net.prefix_len() {
                take(order, peer, n);
            }
        }
        best.map(|(_, peer, n)| (n, peer))
    }

    /// Notes that `peer` claims `net` (after every claim before it).
    pub fn claim(&mut self, net: IpNet, peer: usize) {
        let order = self.count;
        self.count += 1;
        self.first.entry(net).or_insert((order, peer));
        let (family, start) = Self::key(&net);
        self.lens.insert((family, net.prefix_len()));
        self.by_start
            .entry((family, start, net.prefix_len()))
            .or_insert((order, peer, net));
    }
}

#[cfg(test)]
mod tests;
