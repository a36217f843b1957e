//! The DNS layer of the responder, free of I/O: one query message in, one
//! answer out (or nothing, for what must be dropped), from any [`Resolver`].
//! The wire format is `hickory-proto`'s; nothing here encodes by hand.
//!
//! What gets which answer (docs/names.md has the table):
//!
//! - a host of the network, as `NAME`, `NAME.NETWORK` or a unique key
//!   prefix: NOERROR, authoritative, with its A / AAAA records (ANY gives
//!   both; a type the host has not, such as MX or an AAAA-less A, gives an
//!   empty NOERROR, "NODATA");
//! - an overlay address under `in-addr.arpa` / `ip6.arpa`: PTR records;
//! - an unknown name in the network's zone, an unknown bare label, an
//!   ambiguous key prefix, an unknown address of the network: NXDOMAIN,
//!   authoritative (with the zone's SOA when there is a zone);
//! - any other name (another network's `x.othernet`, `www.example.com`, a
//!   class other than IN): the [`Outside`] policy, NXDOMAIN by default, not
//!   authoritative. There is no recursion: RA is always 0;
//! - an opcode other than QUERY, and zone transfers (AXFR, IXFR): REFUSED;
//! - a message with other than one question: FORMERR; an EDNS version other
//!   than 0: BADVERS;
//! - what does not parse as a DNS query, and responses: dropped.

use super::{Lookup, Resolver, Reverse, Zones, arpa};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

/// What to answer for names that are not the network's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outside {
    /// NXDOMAIN (not authoritative): the name does not exist as far as the
    /// overlay is concerned. The default, as issue 8 asks: a name of another
    /// network is as unknown here as an unknown name.
    #[default]
    NxDomain,
    /// REFUSED: for setups that list this responder next to another name
    /// server, since stub resolvers try the next server on REFUSED but stop
    /// at NXDOMAIN.
    Refused,
}

/// How the responder behaves. [`DnsConfig::default`] is what the daemon uses.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// TTL of A, AAAA and PTR answers, in seconds.
    pub ttl: u32,
    /// TTL of negative answers (the SOA's minimum), in seconds: short, so a
    /// node added by `wh reload` is found soon by caching clients.
    pub negative_ttl: u32,
    /// Answer for names that are not the network's.
    pub outside: Outside,
    /// Largest UDP answer with EDNS (the 2020 DNS flag day's 1232).
    pub udp_payload: u16,
    /// Queries per second each source address may send (sustained).
    pub rate_per_source: u32,
    /// Queries a source may send in a burst.
    pub burst_per_source: u32,
    /// Sources remembered by the rate limiter; beyond, new sources share one
    /// bucket until old ones are forgotten.
    pub max_sources: usize,
    /// Serve DNS over TCP too (on the same address).
    pub tcp: bool,
    /// TCP connections served at once; more are closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle: Duration,
    /// Queries answered on one TCP connection before it is closed.
    pub max_queries_per_connection: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ttl: 60,
            negative_ttl: 5,
            outside: Outside::NxDomain,
            udp_payload: 1232,
            rate_per_source: 200,
            burst_per_source: 400,
            max_sources: 4096,
            tcp: true,
            max_tcp_connections: 32,
            tcp_idle: Duration::from_secs(10),
            max_queries_per_connection: 1000,
        }
    }
}

/// The transport a query came on (it decides the size limit of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// How an answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NOERROR, with or without records.
    Answered,
    NxDomain,
    Refused,
    FormErr,
    /// BADVERS or SERVFAIL (an answer that could not be encoded).
    OtherError,
}

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes back.
    Reply { bytes: Vec<u8>, kind: Kind },
    /// Send nothing: the packet is not a DNS query.
    Drop,
}

/// Answers one DNS message. Never panics on any input; the work is bounded by
/// the message's size (which the transport bounds).
pub fn respond(
    packet: &[u8],
    resolver: &dyn Resolver,
    cfg: &DnsConfig,
    transport: Transport,
) -> Verdict {
    // The header is 12 bytes; QR set means a response, which a server never
    // answers (that is how answer loops start).
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Verdict::Drop;
    }
    let decoded = std::panic::catch_unwind(|| Message::from_vec(packet));
    let req = match decoded {
        Ok(Ok(m)) => m,
        _ => return Verdict::Drop,
    };
    if req.metadata.message_type != MessageType::Query {
        return Verdict::Drop;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.recursion_available = false;
    if req.queries.len() == 1 {
        resp.add_query(req.queries[0].clone());
    }
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => match &req.edns {
            Some(e) => e.max_payload().clamp(512, cfg.udp_payload.max(512)) as usize,
            None => 512,
        },
    };
    if let Some(e) = &req.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(cfg.udp_payload.max(512));
        edns.set_version(0);
        resp.set_edns(edns);
        if e.version() != 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return finish(resp, Kind::OtherError, limit);
        }
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::Refused;
        return finish(resp, Kind::Refused, limit);
    }
    let [query] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return finish(resp, Kind::FormErr, limit);
    };
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        resp.metadata.response_code = ResponseCode::Refused;
        return finish(resp, Kind::Refused, limit);
    }
    let kind = answer(query, resolver, cfg, &mut resp);
    finish(resp, kind, limit)
}

/// Encodes the answer, truncating it (TC, no records) when it is too large
/// for the transport.
fn finish(mut resp: Message, kind: Kind, limit: usize) -> Verdict {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return Verdict::Reply { bytes, kind },
        Ok(_) => {
            resp.metadata.truncation = true;
            resp.answers.clear();
            resp.authorities.clear();
            resp.additionals.clear();
            if let Ok(bytes) = resp.to_vec() {
                return Verdict::Reply { bytes, kind };
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot encode a DNS answer"),
    }
    resp.answers.clear();
    resp.authorities.clear();
    resp.additionals.clear();
    resp.metadata.response_code = ResponseCode::ServFail;
    match resp.to_vec() {
        Ok(bytes) => Verdict::Reply {
            bytes,
            kind: Kind::OtherError,
        },
        Err(_) => Verdict::Drop,
    }
}

/// The labels of a name as text, leftmost first; `None` when a label holds
/// a dot or a byte that no name of ours has (such a name is nobody's).
fn labels_of(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .map(|l| {
            let ok = !l.is_empty() && l.iter().all(|b| b.is_ascii_graphic() && *b != b'.');
            ok.then(|| String::from_utf8_lossy(l).into_owned())
        })
        .collect()
}

fn ends_with_ci(labels: &[String], suffix: &[&str]) -> bool {
    labels.len() >= suffix.len()
        && labels[labels.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// Fills the answer for one question; returns how it counts.
fn answer(query: &Query, resolver: &dyn Resolver, cfg: &DnsConfig, resp: &mut Message) -> Kind {
    let qname = query.name().clone();
    let qtype = query.query_type();
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return outside(cfg, resp);
    }
    let zones = resolver.zones();
    let Some(labels) = labels_of(&qname) else {
        // A name with odd bytes: ours (and absent) when under one of our zones.
        let ours = qname.iter().next_back().is_some_and(|l| {
            zones
                .forward
                .iter()
                .any(|z| z.as_bytes().eq_ignore_ascii_case(l))
        });
        return if ours {
            nxdomain(resp, cfg, None, &zones)
        } else {
            outside(cfg, resp)
        };
    };
    if labels.is_empty() {
        return outside(cfg, resp);
    }
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    if let Some(a) = arpa::parse(&refs) {
        return answer_reverse(a, &labels, &qname, qtype, resolver, &zones, cfg, resp);
    }
    // The apex of a forward zone (unless a host has the zone's name).
    let zone = zones
        .forward
        .iter()
        .find(|z| ends_with_ci(&labels, &[z.as_str()]))
        .cloned();
    let name = labels.join(".");
    match resolver.lookup(&name) {
        Lookup::Found(host) => {
            let mut n = 0;
            for addr in host.addrs {
                let rdata = match (addr, qtype) {
                    (IpAddr::V4(a), RecordType::A | RecordType::ANY) => RData::A(A(a)),
                    (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(a)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(qname.clone(), cfg.ttl, rdata));
                n += 1;
            }
            resp.metadata.authoritative = true;
            if n == 0 {
                add_soa(resp, cfg, zone.as_deref().map(ZoneRef::Forward), &zones);
            }
            Kind::Answered
        }
        Lookup::Ambiguous(_) | Lookup::NotFound => {
            if labels.len() == 1 && zone.is_some() {
                return apex(resp, cfg, qname, qtype, zone.as_deref(), &zones);
            }
            nxdomain(resp, cfg, zone.as_deref().map(ZoneRef::Forward), &zones)
        }
        Lookup::NotOurs => {
            if zone.is_some() {
                // The resolver gave the zone away, but we are authoritative:
                // an absent name.
                if labels.len() == 1 {
                    return apex(resp, cfg, qname, qtype, zone.as_deref(), &zones);
                }
                return nxdomain(resp, cfg, zone.as_deref().map(ZoneRef::Forward), &zones);
            }
            outside(cfg, resp)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ZoneRef<'a> {
    Forward(&'a str),
    Reverse(IpNet),
}

/// The answer at a zone apex: its SOA when asked, an empty NOERROR otherwise.
fn apex(
    resp: &mut Message,
    cfg: &DnsConfig,
    qname: Name,
    qtype: RecordType,
    zone: Option<&str>,
    zones: &Zones,
) -> Kind {
    resp.metadata.authoritative = true;
    let z = zone.map(ZoneRef::Forward);
    match (qtype, z.and_then(|z| soa(cfg, z, zones))) {
        (RecordType::SOA | RecordType::ANY, Some(rdata)) => {
            resp.add_answer(Record::from_rdata(qname, cfg.ttl, rdata));
        }
        _ => add_soa(resp, cfg, z, zones),
    }
    Kind::Answered
}

#[allow(clippy::too_many_arguments)]
fn answer_reverse(
    a: arpa::Arpa,
    labels: &[String],
    qname: &Name,
    qtype: RecordType,
    resolver: &dyn Resolver,
    zones: &Zones,
    cfg: &DnsConfig,
    resp: &mut Message,
) -> Kind {
    let zone_for = |addr: IpAddr| {
        zones
            .reverse
            .iter()
            .map(|z| arpa::zone_of(*z))
            .find(|z| z.contains(&addr))
    };
    match a {
        arpa::Arpa::Addr(ip) => match resolver.reverse(ip) {
            Reverse::Found(names) => {
                resp.metadata.authoritative = true;
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    for n in names {
                        let Ok(mut target) = Name::from_ascii(&n) else {
                            continue;
                        };
                        target.set_fqdn(true);
                        let rdata = RData::PTR(PTR(target));
                        resp.add_answer(Record::from_rdata(qname.clone(), cfg.ttl, rdata));
                    }
                } else {
                    add_soa(resp, cfg, zone_for(ip).map(ZoneRef::Reverse), zones);
                }
                Kind::Answered
            }
            Reverse::NotFound => nxdomain(resp, cfg, zone_for(ip).map(ZoneRef::Reverse), zones),
            Reverse::NotOurs => match zone_for(ip) {
                Some(z) => nxdomain(resp, cfg, Some(ZoneRef::Reverse(z)), zones),
                None => outside(cfg, resp),
            },
        },
        arpa::Arpa::Prefix(net) => {
            let zone = zones
                .reverse
                .iter()
                .map(|z| arpa::zone_of(*z))
                .find(|z| net.prefix_len() >= z.prefix_len() && z.contains(&net.network()));
            let Some(zone) = zone else {
                return outside(cfg, resp);
            };
            if net == zone {
                resp.metadata.authoritative = true;
                match (qtype, soa(cfg, ZoneRef::Reverse(zone), zones)) {
                    (RecordType::SOA | RecordType::ANY, Some(rdata)) => {
                        resp.add_answer(Record::from_rdata(qname.clone(), cfg.ttl, rdata));
                    }
                    _ => add_soa(resp, cfg, Some(ZoneRef::Reverse(zone)), zones),
                }
                return Kind::Answered;
            }
            // An inner node exists when some host's address is below it.
            let exists = resolver
                .entries()
                .iter()
                .any(|(addr, _)| net.contains(addr));
            if exists {
                resp.metadata.authoritative = true;
                add_soa(resp, cfg, Some(ZoneRef::Reverse(zone)), zones);
                Kind::Answered
            } else {
                nxdomain(resp, cfg, Some(ZoneRef::Reverse(zone)), zones)
            }
        }
        arpa::Arpa::Invalid => {
            let zone = zones.reverse.iter().map(|z| arpa::zone_of(*z)).find(|z| {
                let name = arpa::zone_name(*z);
                let suffix: Vec<&str> = name.split('.').collect();
                ends_with_ci(labels, &suffix)
            });
            match zone {
                Some(z) => nxdomain(resp, cfg, Some(ZoneRef::Reverse(z)), zones),
                None => outside(cfg, resp),
            }
        }
    }
}

/// The SOA data of a zone: the apex as primary, `hostmaster.APEX` as contact.
fn soa(cfg: &DnsConfig, zone: ZoneRef<'_>, zones: &Zones) -> Option<RData> {
    let apex = zone_apex(zone)?;
    let rname = apex.prepend_label("hostmaster").ok()?;
    Some(RData::SOA(SOA::new(
        apex,
        rname,
        zones.serial,
        3600,
        600,
        86400,
        cfg.negative_ttl,
    )))
}

fn zone_apex(zone: ZoneRef<'_>) -> Option<Name> {
    let text = match zone {
        ZoneRef::Forward(z) => z.to_string(),
        ZoneRef::Reverse(net) => arpa::zone_name(net),
    };
    let mut name = Name::from_ascii(&text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Adds the zone's SOA to the authority section (negative answers).
fn add_soa(resp: &mut Message, cfg: &DnsConfig, zone: Option<ZoneRef<'_>>, zones: &Zones) {
    let Some(zone) = zone else {
        return;
    };
    if let (Some(apex), Some(rdata)) = (zone_apex(zone), soa(cfg, zone, zones)) {
        resp.add_authority(Record::from_rdata(apex, cfg.negative_ttl, rdata));
    }
}

/// An authoritative NXDOMAIN, with the zone's SOA when there is one.
fn nxdomain(resp: &mut Message, cfg: &DnsConfig, zone: Option<ZoneRef<'_>>, zones: &Zones) -> Kind {
    resp.metadata.authoritative = true;
    resp.metadata.response_code = ResponseCode::NXDomain;
    add_soa(resp, cfg, zone, zones);
    Kind::NxDomain
}

/// The answer for a name that is not ours.
fn outside(cfg: &DnsConfig, resp: &mut Message) -> Kind {
    resp.metadata.authoritative = false;
    match cfg.outside {
        Outside::NxDomain => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            Kind::NxDomain
        }
        Outside::Refused => {
            resp.metadata.response_code = ResponseCode::Refused;
            Kind::Refused
        }
    }
}

#[cfg(test)]
mod tests;
