//! The DNS layer against real messages built and read with hickory-proto.

use super::*;
use crate::config::{NetworkSpec, PeerSpec, Role};
use crate::keys::{PrivateKey, PublicKey};
use crate::names::{ConfigNames, Host, Lookup, Resolver, Reverse, Zones};
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv6Addr};

fn key(seed: u8) -> PublicKey {
    PrivateKey::from_bytes([seed; 32]).public_key()
}

fn spec() -> NetworkSpec {
    let mut s = NetworkSpec::new("lab");
    s.subnet = Some("10.0.42.0/24".parse().unwrap());
    for (i, h) in ["node_a", "node_b", "node_c"].iter().enumerate() {
        s.peers.push(PeerSpec {
            role: Role::Trust,
            hostname: Some(h.to_string()),
            static_ip: None,
            key: key(i as u8 + 1),
            endpoint: None,
            routes: Vec::new(),
        });
    }
    s
}

fn names() -> ConfigNames {
    ConfigNames::new(&spec(), key(1))
}

fn query_with(name: &str, qtype: RecordType, f: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    f(&mut m);
    m.to_vec().unwrap()
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_with(name, qtype, |_| {})
}

fn ask_with(packet: &[u8], r: &dyn Resolver, cfg: &DnsConfig, t: Transport) -> (Message, Kind) {
    match respond(packet, r, cfg, t) {
        Verdict::Reply { bytes, kind } => (Message::from_vec(&bytes).unwrap(), kind),
        Verdict::Drop => panic!("dropped"),
    }
}

fn ask(name: &str, qtype: RecordType) -> Message {
    ask_with(
        &query(name, qtype),
        &names(),
        &DnsConfig::default(),
        Transport::Udp,
    )
    .0
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

fn ptrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_and_aaaa_for_name_and_name_dot_network() {
    let s = spec();
    let m = ask("node_b.lab.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.recursion_available);
    assert!(m.metadata.recursion_desired);
    assert_eq!(addrs(&m), vec!["10.0.42.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.answers[0].name.to_ascii(), "node_b.lab.");
    assert_eq!(m.answers[0].ttl, 60);
    assert_eq!(m.queries.len(), 1);

    let m = ask("node_b.", RecordType::AAAA);
    assert_eq!(addrs(&m), vec![IpAddr::V6(s.ipv6_of(&key(2)))]);

    let m = ask("node_b.", RecordType::ANY);
    assert_eq!(addrs(&m).len(), 2);

    // Case is kept in the answer, ignored in the match.
    let m = ask("NoDe_B.LAB.", RecordType::A);
    assert_eq!(m.answers[0].name.to_ascii(), "NoDe_B.LAB.");
    assert_eq!(addrs(&m).len(), 1);
}

#[test]
fn key_prefix_resolves() {
    let prefix = key(3).short(6);
    let m = ask(&format!("{prefix}.lab."), RecordType::A);
    assert_eq!(addrs(&m), vec!["10.0.42.4".parse::<IpAddr>().unwrap()]);
}

#[test]
fn other_types_get_nodata_with_soa() {
    let m = ask("node_b.lab.", RecordType::MX);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    let RData::SOA(soa) = &m.authorities[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(soa.minimum, 5);
    assert_eq!(m.authorities[0].name.to_ascii(), "lab.");
    assert_eq!(soa.serial, names().zones().serial);
}

#[test]
fn ptr_for_ipv4_and_ipv6() {
    let s = spec();
    let m = ask("3.42.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptrs(&m), vec!["node_b.lab.".to_string()]);
    assert!(m.metadata.authoritative);
    let v6 = IpAddr::V6(s.ipv6_of(&key(2)));
    let m = ask(&format!("{}.", arpa::name_of(v6)), RecordType::PTR);
    assert_eq!(ptrs(&m), vec!["node_b.lab.".to_string()]);
    // An address of the network that nobody has.
    let m = ask("99.42.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities[0].name.to_ascii(), "42.0.10.in-addr.arpa.");
    // The zone apex and its SOA.
    let m = ask("42.0.10.in-addr.arpa.", RecordType::SOA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    // An address outside the network is not ours.
    let m = ask("1.2.0.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.metadata.authoritative);
    // Garbage under our reverse zone.
    let m = ask("x.42.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
}

#[test]
fn unknown_names_and_other_networks_get_nxdomain() {
    for (name, authoritative) in [
        ("nobody.lab.", true),
        ("nobody.", true),
        ("a.node_b.lab.", true),
        ("node_b.othernet.", false),
        ("www.example.com.", false),
    ] {
        let m = ask(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(m.metadata.authoritative, authoritative, "{name}");
        assert!(!m.metadata.recursion_available);
        assert!(m.answers.is_empty());
    }
    let m = ask("nobody.lab.", RecordType::A);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
}

#[test]
fn outside_names_refused_when_configured() {
    let cfg = DnsConfig {
        outside: Outside::Refused,
        ..DnsConfig::default()
    };
    let (m, kind) = ask_with(
        &query("www.example.com.", RecordType::A),
        &names(),
        &cfg,
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(kind, Kind::Refused);
    // Names of the network are still answered, unknown ones NXDOMAIN.
    let (m, _) = ask_with(
        &query("nobody.lab.", RecordType::A),
        &names(),
        &cfg,
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn zone_apex_answers_soa_and_nodata() {
    let m = ask("lab.", RecordType::SOA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    let m = ask("LAB.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn other_opcodes_zone_transfers_and_classes() {
    let p = query_with("lab.", RecordType::SOA, |m| {
        m.metadata.op_code = OpCode::Update
    });
    let (m, kind) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(kind, Kind::Refused);
    let p = query_with("lab.", RecordType::SOA, |m| {
        m.metadata.op_code = OpCode::Notify
    });
    let (m, _) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = ask("lab.", RecordType::AXFR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let p = query_with("version.bind.", RecordType::TXT, |m| {
        m.queries[0].set_query_class(DNSClass::CH);
    });
    let (m, _) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
}

#[test]
fn question_count_and_edns() {
    let p = query_with("node_b.", RecordType::A, |m| {
        m.queries.clear();
    });
    let (m, kind) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(kind, Kind::FormErr);
    let p = query_with("node_b.", RecordType::A, |m| {
        m.add_query(Query::query(
            Name::from_ascii("node_c.").unwrap(),
            RecordType::A,
        ));
    });
    let (m, _) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let p = query_with("node_b.", RecordType::A, |m| {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    });
    let (m, _) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let p = query_with("node_b.", RecordType::A, |m| {
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
    });
    let (m, _) = ask_with(&p, &names(), &DnsConfig::default(), Transport::Udp);
    // BADVERS is 16 (hickory reads it back as its twin BADSIG).
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert!(m.answers.is_empty());
}

#[test]
fn malformed_input_and_responses_are_dropped() {
    let r = names();
    let cfg = DnsConfig::default();
    let good = query("node_b.", RecordType::A);
    for bad in [
        &b""[..],
        &b"\x00\x01"[..],
        &b"hello world, this is no DNS"[..],
        &good[..good.len() - 3],
    ] {
        assert_eq!(
            respond(bad, &r, &cfg, Transport::Udp),
            Verdict::Drop,
            "{bad:?}"
        );
    }
    // A response (QR=1) is never answered.
    let mut resp = good.clone();
    resp[2] |= 0x80;
    assert_eq!(respond(&resp, &r, &cfg, Transport::Udp), Verdict::Drop);
    // A compression pointer loop.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(respond(&looped, &r, &cfg, Transport::Udp), Verdict::Drop);
}

/// A resolver with far too many addresses for one UDP answer.
struct Many;

impl Resolver for Many {
    fn zones(&self) -> Zones {
        Zones {
            forward: vec!["big".into()],
            ..Zones::default()
        }
    }
    fn lookup(&self, name: &str) -> Lookup {
        if name.eq_ignore_ascii_case("all.big") {
            Lookup::Found(Host {
                name: "all.big".into(),
                addrs: (1..200u16)
                    .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)))
                    .collect(),
            })
        } else if name.eq_ignore_ascii_case("twins.big") {
            Lookup::Ambiguous(vec!["one.big".into(), "two.big".into()])
        } else {
            Lookup::NotOurs
        }
    }
    fn reverse(&self, _: IpAddr) -> Reverse {
        Reverse::NotOurs
    }
}

#[test]
fn large_answers_truncate_over_udp_and_fit_over_tcp() {
    let cfg = DnsConfig::default();
    let p = query("all.big.", RecordType::AAAA);
    let (m, _) = ask_with(&p, &Many, &cfg, Transport::Udp);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let (m, _) = ask_with(&p, &Many, &cfg, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 199);
}

#[test]
fn ambiguous_and_unowned_names_of_a_custom_resolver() {
    let cfg = DnsConfig::default();
    let (m, _) = ask_with(
        &query("twins.big.", RecordType::A),
        &Many,
        &cfg,
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    // The resolver gives `x.big` away, but `big` is its zone: NXDOMAIN, authoritative.
    let (m, _) = ask_with(&query("x.big.", RecordType::A), &Many, &cfg, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let r = names();
        let _ = respond(&bytes, &r, &DnsConfig::default(), Transport::Udp);
    }

    #[test]
    fn never_panics_on_mutated_queries(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6),
        cut in 0usize..64,
    ) {
        let r = names();
        let mut q = query("3.42.0.10.in-addr.arpa.", RecordType::PTR);
        for (i, b) in flips {
            let n = q.len();
            q[i % n] = b;
        }
        q.truncate(q.len().saturating_sub(cut % 8));
        let _ = respond(&q, &r, &DnsConfig::default(), Transport::Udp);
        let _ = respond(&q, &r, &DnsConfig::default(), Transport::Tcp);
    }
}
