//! The responder over loopback: real sockets, real DNS messages built and
//! read with hickory-proto.

use super::*;
use crate::config::{NetworkSpec, PeerSpec, Role};
use crate::keys::{PrivateKey, PublicKey};
use crate::names::dns::Outside;
use crate::names::{ConfigNames, SharedResolver};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use std::net::{IpAddr, Ipv4Addr};
use tokio::net::UdpSocket;

fn key(seed: u8) -> PublicKey {
    PrivateKey::from_bytes([seed; 32]).public_key()
}

fn spec(n: usize) -> NetworkSpec {
    let mut s = NetworkSpec::new("lab");
    s.subnet = Some("10.0.42.0/24".parse().unwrap());
    for i in 0..n {
        s.peers.push(PeerSpec {
            role: Role::Trust,
            hostname: Some(format!("node_{}", (b'a' + i as u8) as char)),
            static_ip: None,
            key: key(i as u8 + 1),
            endpoint: None,
            routes: Vec::new(),
        });
    }
    s
}

fn resolver(n: usize) -> SharedResolver {
    Arc::new(ConfigNames::new(&spec(n), key(1)))
}

fn query(name: &str, qtype: RecordType) -> (u16, Vec<u8>) {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    (m.metadata.id, m.to_vec().unwrap())
}

async fn client(ip: [u8; 4]) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((Ipv4Addr::from(ip), 0)))
        .await
        .unwrap()
}

/// Sends a query and waits for its answer, retrying a few times (loopback
/// may drop under a flood).
async fn ask(sock: &UdpSocket, server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let (id, q) = query(name, qtype);
    let mut buf = vec![0u8; 4096];
    for _ in 0..5 {
        sock.send_to(&q, server).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
        {
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == id
            {
                return m;
            }
        }
    }
    panic!("no answer for {name}");
}

async fn start(cfg: DnsConfig) -> (DnsHandle, watch::Sender<SharedResolver>) {
    let (tx, rx) = watch::channel(resolver(2));
    let h = serve_dns_with("127.0.0.1:0".parse().unwrap(), rx, cfg)
        .await
        .unwrap();
    (h, tx)
}

#[tokio::test]
async fn answers_nxdomain_and_refused_over_udp() {
    let (h, _tx) = start(DnsConfig::default()).await;
    let server = h.local_addr();
    let c = client([127, 0, 0, 1]).await;
    let m = ask(&c, server, "node_b.lab.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.answers[0].data.ip_addr(),
        Some(IpAddr::V4("10.0.42.3".parse().unwrap()))
    );
    let m = ask(&c, server, "3.42.0.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.answers.len(), 1);
    let m = ask(&c, server, "nobody.lab.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&c, server, "node_b.othernet.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // An UPDATE is refused.
    let mut u = Message::query();
    u.metadata.op_code = OpCode::Update;
    u.add_query(Query::query(
        Name::from_ascii("lab.").unwrap(),
        RecordType::SOA,
    ));
    c.send_to(&u.to_vec().unwrap(), server).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let c = h.counters();
    assert_eq!(c.queries, 5);
    assert_eq!(c.answered, 2);
    assert_eq!(c.nxdomain, 2);
    assert_eq!(c.refused, 1);
    assert_eq!(c.dropped_malformed, 0);
}

#[tokio::test]
async fn answers_over_tcp() {
    let (h, _tx) = start(DnsConfig::default()).await;
    let addr = h.tcp_addr().expect("TCP served");
    assert_eq!(addr.port(), h.local_addr().port());
    let mut s = TcpStream::connect(addr).await.unwrap();
    for name in ["node_a.lab.", "node_b."] {
        let (id, q) = query(name, RecordType::AAAA);
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.answers.len(), 1, "{name}");
    }
    // A length that no query has closes the connection.
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
        .await
        .unwrap();
    // Closed, with unread bytes: an orderly end or a reset.
    match r {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(h.counters().dropped_malformed, 1);
}

#[tokio::test]
async fn malformed_packets_are_counted_and_do_not_stop_it() {
    let (h, _tx) = start(DnsConfig::default()).await;
    let server = h.local_addr();
    let c = client([127, 0, 0, 1]).await;
    let junk: [&[u8]; 4] = [b"", b"\x12", b"not a dns message at all", &[0xff; 300]];
    for j in junk {
        c.send_to(j, server).await.unwrap();
    }
    let m = ask(&c, server, "node_a.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let counters = h.counters();
    assert_eq!(counters.dropped_malformed, 4);
    assert_eq!(counters.answered, 1);
}

#[tokio::test]
async fn a_flood_from_one_source_does_not_stop_answers_to_another() {
    let cfg = DnsConfig {
        rate_per_source: 100,
        burst_per_source: 100,
        ..DnsConfig::default()
    };
    let (h, _tx) = start(cfg).await;
    let server = h.local_addr();
    let flooder = client([127, 0, 0, 2]).await;
    let (_, q) = query("node_b.lab.", RecordType::A);
    let flood = tokio::spawn(async move {
        for i in 0..20_000u32 {
            let _ = flooder.send_to(&q, server).await;
            if i % 500 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let other = client([127, 0, 0, 3]).await;
    for _ in 0..20 {
        let m = ask(&other, server, "node_a.lab.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flood.await.unwrap();
    // Let the server drain what the flood left in its socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = h.counters();
    assert!(c.dropped_rate > 1000, "{c:?}");
    assert!(c.answered >= 20, "{c:?}");
    // The flooder got about its burst plus its rate, no more.
    assert!(c.answered < 20 + 100 + 100 * 30, "{c:?}");
    let m = ask(&other, server, "node_b.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn reload_swaps_the_names_and_outside_policy_applies() {
    let cfg = DnsConfig {
        outside: Outside::Refused,
        ..DnsConfig::default()
    };
    let (h, tx) = start(cfg).await;
    let server = h.local_addr();
    let c = client([127, 0, 0, 1]).await;
    let m = ask(&c, server, "node_c.lab.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    tx.send(resolver(3)).unwrap();
    let m = ask(&c, server, "node_c.lab.", RecordType::A).await;
    assert_eq!(
        m.answers[0].data.ip_addr(),
        Some(IpAddr::V4("10.0.42.4".parse().unwrap()))
    );
    let m = ask(&c, server, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // The sender gone, the last names stay.
    drop(tx);
    let m = ask(&c, server, "node_c.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn shutdown_frees_the_address() {
    let (h, _tx) = start(DnsConfig::default()).await;
    let addr = h.local_addr();
    h.shutdown().await;
    let (_tx2, rx) = watch::channel(resolver(1));
    let h2 = serve_dns(addr, rx).await.expect("bind again");
    assert_eq!(h2.local_addr(), addr);
    assert!(h2.tcp_addr().is_some());
    h2.stop();
}

#[tokio::test]
async fn binds_an_address_the_host_does_not_have_yet() {
    // IP_FREEBIND: the overlay address may come up after the responder.
    let (_tx, rx) = watch::channel(resolver(1));
    let r = serve_dns("192.0.2.53:0".parse().unwrap(), rx).await;
    assert!(r.is_ok(), "{r:?}");
}
