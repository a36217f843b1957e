//! Every control message and its plain (unsealed) byte encoding.
//!
//! The encoding is strict: every count and length is bounded, every enum
//! value must be known, and trailing bytes are an error, so one message has
//! exactly one encoding. See docs/protocol.md for the byte layout.

use crate::keys::{KEY_LEN, PublicKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most endpoints a node record or a punch request may carry.
pub const MAX_ENDPOINTS: usize = 8;
/// Most relays a node record may carry.
pub const MAX_RELAYS: usize = 4;
/// Bit 7 of a record's NAT byte: the node does not relay for others.
pub const NO_RELAY_SERVICE: u8 = 0x80;
/// Most node records one `Nodes` answer may carry.
pub const MAX_NODES: usize = 32;
/// Most bytes a relayed payload (a sealed inner datagram or a WireGuard
/// datagram) may have. A WireGuard transport packet on a 1420-byte overlay
/// MTU is 1452 bytes; this leaves room for an MTU up to 1868.
pub const MAX_RELAY_PAYLOAD: usize = 1900;

/// Length of an alias proof.
pub const PROOF_LEN: usize = 32;

/// What a node knows of the NAT in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum NatKind {
    /// Not determined yet.
    #[default]
    Unknown = 0,
    /// No NAT: the node's own address is public.
    Public = 1,
    /// Endpoint-independent mapping ("cone"): one mapped port for every peer.
    EndpointIndependent = 2,
    /// Endpoint-dependent mapping ("symmetric"): a new port per peer.
    EndpointDependent = 3,
    /// Reachable only through its relays.
    Unreachable = 4,
}

impl NatKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => NatKind::Unknown,
            1 => NatKind::Public,
            2 => NatKind::EndpointIndependent,
            3 => NatKind::EndpointDependent,
            4 => NatKind::Unreachable,
            _ => return None,
        })
    }
}

/// What a node says about how to reach it: its key, its endpoints, its NAT
/// kind, and the relays it keeps alive when it is behind a NAT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRecord {
    pub key: PublicKey,
    /// At most [`MAX_ENDPOINTS`].
    pub endpoints: Vec<SocketAddr>,
    pub nat: NatKind,
    /// At most [`MAX_RELAYS`]: (relay key, relay address).
    pub relays: Vec<(PublicKey, SocketAddr)>,
    /// The node relays for others (`relay-limit` above 0). On the wire:
    /// bit 7 of the NAT byte set when it does not ([`NO_RELAY_SERVICE`]).
    pub relay_service: bool,
}

impl NodeRecord {
    /// A record with one endpoint, NAT kind unknown, no relays.
    pub fn new(key: PublicKey, addr: SocketAddr) -> Self {
        NodeRecord {
            key,
            endpoints: vec![addr],
            nat: NatKind::Unknown,
            relays: Vec::new(),
            relay_service: true,
        }
    }

    /// Bytes of this record's encoding.
    pub fn encoded_len(&self) -> usize {
        KEY_LEN
            + 1
            + self.endpoints.iter().map(addr_len).sum::<usize>()
            + 1
            + 1
            + self
                .relays
                .iter()
                .map(|(_, a)| KEY_LEN + addr_len(a))
                .sum::<usize>()
    }
}

/// One control message. The numbers are the type bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// 0x01: are you alive? `info` optionally tells the sender's own record.
    Ping { id: u64, info: Option<NodeRecord> },
    /// 0x02: answer to a ping, with the address the ping came from.
    Pong {
        id: u64,
        observed: SocketAddr,
        info: Option<NodeRecord>,
    },
    /// 0x03: which nodes do you know closest to `target`?
    FindNode {
        id: u64,
        target: PublicKey,
        info: Option<NodeRecord>,
    },
    /// 0x04: answer to a find-node: at most [`MAX_NODES`] records.
    Nodes { id: u64, nodes: Vec<NodeRecord> },
    /// 0x10: please probe these endpoints of mine (sent through a relay).
    PunchRequest { id: u64, endpoints: Vec<SocketAddr> },
    /// 0x11: a hole-punching probe, sent directly to a candidate endpoint.
    Probe { id: u64 },
    /// 0x12: answer to a probe, with the address it came from.
    ProbeAck { id: u64, observed: SocketAddr },
    /// 0x20: relay, please forward `inner` (a sealed datagram for `to`).
    Relay { to: PublicKey, inner: Vec<u8> },
    /// 0x21: a relay delivers `inner`, which `from` asked it to forward.
    Relayed { from: PublicKey, inner: Vec<u8> },
    /// 0x22: relay, please forward this WireGuard datagram to `to`.
    RelayWg { to: PublicKey, packet: Vec<u8> },
    /// 0x23: a relay delivers a WireGuard datagram from `from`.
    RelayedWg { from: PublicKey, packet: Vec<u8> },
    /// 0x24: a relay tells both ends of a relayed flow the channel that
    /// carries it: from now on, relay-data datagrams (first byte 0xFE) with
    /// `channel` travel between the receiver and `peer` through the sender
    /// (the relay), in both directions, without sealing.
    RelayChannel { peer: PublicKey, channel: u64 },
    /// 0x25: end to end through a relay, the way data goes: do you get
    /// what this relay forwards? `padding` makes it as large as the data
    /// (a relay must not tell it from data by its size).
    DeliveryProbe { id: u64, padding: Vec<u8> },
    /// 0x26: answer to a delivery probe, as large, the way it came.
    DeliveryAck { id: u64, padding: Vec<u8> },
    /// 0x30: I (the sender, `real`) hold the secret of `alias`; `proof` is
    /// [`crate::proto::alias_proof`] computed for the receiver.
    AliasAuth {
        alias: PublicKey,
        real: PublicKey,
        proof: [u8; PROOF_LEN],
    },
    /// 0x31: the alias proof was accepted.
    AliasAck { alias: PublicKey },
}

/// Type bytes.
pub mod types {
    pub const PING: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const FIND_NODE: u8 = 0x03;
    pub const NODES: u8 = 0x04;
    pub const PUNCH_REQUEST: u8 = 0x10;
    pub const PROBE: u8 = 0x11;
    pub const PROBE_ACK: u8 = 0x12;
    pub const RELAY: u8 = 0x20;
    pub const RELAYED: u8 = 0x21;
    pub const RELAY_WG: u8 = 0x22;
    pub const RELAYED_WG: u8 = 0x23;
    pub const RELAY_CHANNEL: u8 = 0x24;
    pub const DELIVERY_PROBE: u8 = 0x25;
    pub const DELIVERY_ACK: u8 = 0x26;
    pub const ALIAS_AUTH: u8 = 0x30;
    pub const ALIAS_ACK: u8 = 0x31;
}

/// Why a message cannot be encoded: one of its lists or payloads is over its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what}: {len} is more than the limit {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("message ends early")]
    Truncated,
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("{what}: {len} is more than the limit {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unknown address family {0}")]
    BadAddressFamily(u8),
    #[error("unknown NAT kind {0}")]
    BadNatKind(u8),
    #[error("option flag {0} is neither 0 nor 1")]
    BadOption(u8),
}

fn addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        Err(EncodeError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn put_record(out: &mut Vec<u8>, r: &NodeRecord) -> Result<(), EncodeError> {
    check("endpoints", r.endpoints.len(), MAX_ENDPOINTS)?;
    check("relays", r.relays.len(), MAX_RELAYS)?;
    out.extend_from_slice(r.key.as_bytes());
    out.push(r.endpoints.len() as u8);
    for a in &r.endpoints {
        put_addr(out, a);
    }
    let no_relay = if r.relay_service { 0 } else { NO_RELAY_SERVICE };
    out.push(r.nat as u8 | no_relay);
    out.push(r.relays.len() as u8);
    for (k, a) in &r.relays {
        out.extend_from_slice(k.as_bytes());
        put_addr(out, a);
    }
    Ok(())
}

fn put_info(out: &mut Vec<u8>, info: &Option<NodeRecord>) -> Result<(), EncodeError> {
    match info {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            put_record(out, r)?;
        }
    }
    Ok(())
}

fn put_payload(out: &mut Vec<u8>, what: &'static str, p: &[u8]) -> Result<(), EncodeError> {
    check(what, p.len(), MAX_RELAY_PAYLOAD)?;
    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
    out.extend_from_slice(p);
    Ok(())
}

fn info_len(info: &Option<NodeRecord>) -> usize {
    1 + info.as_ref().map_or(0, NodeRecord::encoded_len)
}

impl Message {
    /// The type byte.
    pub fn type_byte(&self) -> u8 {
        use types::*;
        match self {
            Message::Ping { .. } => PING,
            Message::Pong { .. } => PONG,
            Message::FindNode { .. } => FIND_NODE,
            Message::Nodes { .. } => NODES,
            Message::PunchRequest { .. } => PUNCH_REQUEST,
            Message::Probe { .. } => PROBE,
            Message::ProbeAck { .. } => PROBE_ACK,
            Message::Relay { .. } => RELAY,
            Message::Relayed { .. } => RELAYED,
            Message::RelayWg { .. } => RELAY_WG,
            Message::RelayedWg { .. } => RELAYED_WG,
            Message::RelayChannel { .. } => RELAY_CHANNEL,
            Message::DeliveryProbe { .. } => DELIVERY_PROBE,
            Message::DeliveryAck { .. } => DELIVERY_ACK,
            Message::AliasAuth { .. } => ALIAS_AUTH,
            Message::AliasAck { .. } => ALIAS_ACK,
        }
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::FindNode { .. } => "find-node",
            Message::Nodes { .. } => "nodes",
            Message::PunchRequest { .. } => "punch-request",
            Message::Probe { .. } => "probe",
            Message::ProbeAck { .. } => "probe-ack",
            Message::Relay { .. } => "relay",
            Message::Relayed { .. } => "relayed",
            Message::RelayWg { .. } => "relay-wg",
            Message::RelayedWg { .. } => "relayed-wg",
            Message::RelayChannel { .. } => "relay-channel",
            Message::DeliveryProbe { .. } => "delivery-probe",
            Message::DeliveryAck { .. } => "delivery-ack",
            Message::AliasAuth { .. } => "alias-auth",
            Message::AliasAck { .. } => "alias-ack",
        }
    }

    /// Bytes of the plain encoding (type byte included).
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Message::Ping { info, .. } => 8 + info_len(info),
            Message::Pong { observed, info, .. } => 8 + addr_len(observed) + info_len(info),
            Message::FindNode { info, .. } => 8 + KEY_LEN + info_len(info),
            Message::Nodes { nodes, .. } => {
                8 + 1 + nodes.iter().map(NodeRecord::encoded_len).sum::<usize>()
            }
            Message::PunchRequest { endpoints, .. } => {
                8 + 1 + endpoints.iter().map(addr_len).sum::<usize>()
            }
            Message::Probe { .. } => 8,
            Message::ProbeAck { observed, .. } => 8 + addr_len(observed),
            Message::Relay { inner: p, .. }
            | Message::Relayed { inner: p, .. }
            | Message::RelayWg { packet: p, .. }
            | Message::RelayedWg { packet: p, .. } => KEY_LEN + 2 + p.len(),
            Message::RelayChannel { .. } => KEY_LEN + 8,
            Message::DeliveryProbe { padding: p, .. } | Message::DeliveryAck { padding: p, .. } => {
                8 + 2 + p.len()
            }
            Message::AliasAuth { .. } => 2 * KEY_LEN + PROOF_LEN,
            Message::AliasAck { .. } => KEY_LEN,
        }
    }

    /// The plain encoding: type byte, then the body.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the plain encoding to `out`. On error `out` may hold a partial
    /// encoding; truncate it back if it is reused.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.type_byte());
        match self {
            Message::Ping { id, info } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_info(out, info)?;
            }
            Message::Pong { id, observed, info } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_addr(out, observed);
                put_info(out, info)?;
            }
            Message::FindNode { id, target, info } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(target.as_bytes());
                put_info(out, info)?;
            }
            Message::Nodes { id, nodes } => {
                check("nodes", nodes.len(), MAX_NODES)?;
                out.extend_from_slice(&id.to_be_bytes());
                out.push(nodes.len() as u8);
                for r in nodes {
                    put_record(out, r)?;
                }
            }
            Message::PunchRequest { id, endpoints } => {
                check("endpoints", endpoints.len(), MAX_ENDPOINTS)?;
                out.extend_from_slice(&id.to_be_bytes());
                out.push(endpoints.len() as u8);
                for a in endpoints {
                    put_addr(out, a);
                }
            }
            Message::Probe { id } => out.extend_from_slice(&id.to_be_bytes()),
            Message::ProbeAck { id, observed } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_addr(out, observed);
            }
            Message::Relay { to: k, inner: p }
            | Message::Relayed { from: k, inner: p }
            | Message::RelayWg { to: k, packet: p }
            | Message::RelayedWg { from: k, packet: p } => {
                out.extend_from_slice(k.as_bytes());
                put_payload(out, "relayed payload", p)?;
            }
            Message::RelayChannel { peer, channel } => {
                out.extend_from_slice(peer.as_bytes());
                out.extend_from_slice(&channel.to_be_bytes());
            }
            Message::DeliveryProbe { id, padding: p } | Message::DeliveryAck { id, padding: p } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_payload(out, "padding", p)?;
            }
            Message::AliasAuth { alias, real, proof } => {
                out.extend_from_slice(alias.as_bytes());
                out.extend_from_slice(real.as_bytes());
                out.extend_from_slice(proof);
            }
            Message::AliasAck { alias } => out.extend_from_slice(alias.as_bytes()),
        }
        Ok(())
    }

    /// Reads a plain encoding; the whole of `bytes` must be one message.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let (&ty, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader { buf: body };
        use types::*;
        let msg = match ty {
            PING => Message::Ping {
                id: r.u64()?,
                info: r.info()?,
            },
            PONG => Message::Pong {
                id: r.u64()?,
                observed: r.addr()?,
                info: r.info()?,
            },
            FIND_NODE => Message::FindNode {
                id: r.u64()?,
                target: r.key()?,
                info: r.info()?,
            },
            NODES => {
                let id = r.u64()?;
                let n = r.count("nodes", MAX_NODES)?;
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(r.record()?);
                }
                Message::Nodes { id, nodes }
            }
            PUNCH_REQUEST => {
                let id = r.u64()?;
                let endpoints = r.addrs()?;
                Message::PunchRequest { id, endpoints }
            }
            PROBE => Message::Probe { id: r.u64()? },
            PROBE_ACK => Message::ProbeAck {
                id: r.u64()?,
                observed: r.addr()?,
            },
            RELAY => Message::Relay {
                to: r.key()?,
                inner: r.payload()?,
            },
            RELAYED => Message::Relayed {
                from: r.key()?,
                inner: r.payload()?,
            },
            RELAY_WG => Message::RelayWg {
                to: r.key()?,
                packet: r.payload()?,
            },
            RELAYED_WG => Message::RelayedWg {
                from: r.key()?,
                packet: r.payload()?,
            },
            RELAY_CHANNEL => Message::RelayChannel {
                peer: r.key()?,
                channel: r.u64()?,
            },
            DELIVERY_PROBE => Message::DeliveryProbe {
                id: r.u64()?,
                padding: r.payload()?,
            },
            DELIVERY_ACK => Message::DeliveryAck {
                id: r.u64()?,
                padding: r.payload()?,
            },
            ALIAS_AUTH => Message::AliasAuth {
                alias: r.key()?,
                real: r.key()?,
                proof: r.array()?,
            },
            ALIAS_ACK => Message::AliasAck { alias: r.key()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(msg)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn key(&mut self) -> Result<PublicKey, DecodeError> {
        Ok(PublicKey(self.array()?))
    }

    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::TooMany { what, len: n, max });
        }
        Ok(n)
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(DecodeError::BadAddressFamily(other)),
        };
        let port = u16::from_be_bytes(self.array()?);
        Ok(SocketAddr::new(ip, port))
    }

    fn addrs(&mut self) -> Result<Vec<SocketAddr>, DecodeError> {
        let n = self.count("endpoints", MAX_ENDPOINTS)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.addr()?);
        }
        Ok(v)
    }

    fn record(&mut self) -> Result<NodeRecord, DecodeError> {
        let key = self.key()?;
        let endpoints = self.addrs()?;
        let byte = self.u8()?;
        let relay_service = byte & NO_RELAY_SERVICE == 0;
        let nat =
            NatKind::from_u8(byte & !NO_RELAY_SERVICE).ok_or(DecodeError::BadNatKind(byte))?;
        let n = self.count("relays", MAX_RELAYS)?;
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            relays.push((self.key()?, self.addr()?));
        }
        Ok(NodeRecord {
            key,
            endpoints,
            nat,
            relays,
            relay_service,
        })
    }

    fn info(&mut self) -> Result<Option<NodeRecord>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.record()?)),
            other => Err(DecodeError::BadOption(other)),
        }
    }

    fn payload(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = u16::from_be_bytes(self.array()?) as usize;
        if n > MAX_RELAY_PAYLOAD {
            return Err(DecodeError::TooMany {
                what: "relayed payload",
                len: n,
                max: MAX_RELAY_PAYLOAD,
            });
        }
        Ok(self.take(n)?.to_vec())
    }
}
