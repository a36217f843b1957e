//! Data plane tests in network namespaces (root only; skipped otherwise).
//!
//! Two namespaces joined by a veth (203.0.113.1 / .2), a data plane in each
//! with a static peer pointing at the other, and `ping` over the overlay
//! (10.0.42.0/24 and fd42::/64).

mod dataplane_lab;

use dataplane_lab::{Lab, is_root, link_exists, ping, ping_until, run_in, runtime_in, unique_tag};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wirehub::dataplane::netns::lab;
use wirehub::dataplane::{
    BackendKind, DataPlane, InterfaceConfig, Outgoing, PeerConfig, PeerStats,
};
use wirehub::keys::{PrivateKey, PublicKey};

const PORT: u16 = 62096;

macro_rules! require_root {
    () => {
        dataplane_lab::init_tracing();
        if !is_root() {
            println!("skipped: the data plane tests need root (network namespaces)");
            return;
        }
    };
}

fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

/// One side: a runtime in its namespace, the daemon's socket, the data
/// plane, and a loop standing in for the daemon that feeds `receive`.
struct Node {
    ns: String,
    iface: String,
    key: PrivateKey,
    underlay: SocketAddr,
    rt: tokio::runtime::Runtime,
    dp: Option<Arc<DataPlane>>,
    outgoing: Option<mpsc::Receiver<Outgoing>>,
    pump: Option<JoinHandle<()>>,
}

impl Node {
    fn start(
        ns: &str,
        iface: &str,
        kind: BackendKind,
        underlay: &str,
        overlay: u8,
        udp_gro: bool,
    ) -> Node {
        let rt = runtime_in(ns, 2);
        let key = PrivateKey::generate().expect("key");
        let mut cfg = InterfaceConfig::new(iface, key.clone());
        cfg.addresses = vec![
            net(&format!("10.0.42.{overlay}/24")),
            net(&format!("fd42::{overlay}/64")),
        ];
        let node = run_in(&rt, lab::start(kind, cfg, PORT, udp_gro)).expect("start the node");
        Node {
            ns: ns.to_string(),
            iface: iface.to_string(),
            key,
            underlay: SocketAddr::new(underlay.parse().expect("ip"), PORT),
            rt,
            dp: Some(node.dp),
            outgoing: Some(node.outgoing),
            pump: Some(node.pump),
        }
    }

    fn dp(&self) -> &Arc<DataPlane> {
        self.dp.as_ref().expect("data plane")
    }

    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    fn peer_config(&self, overlay: u8, direct: bool) -> PeerConfig {
        PeerConfig {
            key: self.public(),
            allowed_ips: vec![
                net(&format!("10.0.42.{overlay}/32")),
                net(&format!("fd42::{overlay}/128")),
            ],
            endpoint: direct.then_some(self.underlay),
            keepalive: None,
        }
    }

    fn stats_of(&self, key: &PublicKey) -> PeerStats {
        self.dp()
            .stats()
            .into_iter()
            .find(|s| s.key == *key)
            .expect("peer in stats")
    }

    /// Stops the pump and destroys the data plane.
    fn destroy(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        if let Some(dp) = self.dp.take() {
            let rt = &self.rt;
            // The pump held a reference; wait until it is dropped.
            let mut dp = dp;
            let dp = loop {
                match Arc::try_unwrap(dp) {
                    Ok(dp) => break dp,
                    Err(again) => {
                        dp = again;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            };
            run_in(rt, async move { dp.destroy().await }).expect("destroy");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        if let Some(dp) = self.dp.take() {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(dp) = Arc::try_unwrap(dp) {
                let _ = self
                    .rt
                    .block_on(async { self.rt.spawn(async move { dp.destroy().await }).await });
            }
        }
    }
}

/// Two namespaces joined by a veth, a node in each.
fn two_nodes(lab: &mut Lab, kind_a: BackendKind, kind_b: BackendKind) -> (Node, Node) {
    two_nodes_with(lab, kind_a, kind_b, false)
}

fn two_nodes_with(
    lab: &mut Lab,
    kind_a: BackendKind,
    kind_b: BackendKind,
    udp_gro: bool,
) -> (Node, Node) {
    let tag = unique_tag("whdp");
    let (ns_a, ns_b) = lab.netns_pair(&tag);
    let if_a = format!("{tag}w");
    let if_b = format!("{tag}x");
    if kind_a == BackendKind::Userspace {
        lab.track_wireguard_go(&if_a);
    }
    if kind_b == BackendKind::Userspace {
        lab.track_wireguard_go(&if_b);
    }
    let a = Node::start(&ns_a, &if_a, kind_a, "203.0.113.1", 1, udp_gro);
    let b = Node::start(&ns_b, &if_b, kind_b, "203.0.113.2", 2, udp_gro);
    (a, b)
}

/// Forwards `from`'s Outgoing datagrams to `to.receive(.., Some(from_key))`,
/// as a relay and the daemon would.
fn relay(from: &mut Node, to: &Node) -> JoinHandle<()> {
    let mut rx = from.outgoing.take().expect("outgoing receiver");
    let dp = Arc::downgrade(to.dp());
    let from_key = from.public();
    let relay_addr: SocketAddr = "203.0.113.254:62096".parse().expect("addr");
    from.rt.spawn(async move {
        while let Some(out) = rx.recv().await {
            let Some(dp) = dp.upgrade() else { return };
            for datagram in out.iter() {
                assert_eq!(datagram.first().map(|b| (1..=4).contains(b)), Some(true));
                dp.receive(relay_addr, datagram, Some(from_key));
            }
        }
    })
}

fn assert_pings(from: &Node, to_v4: &str, to_v6: &str) {
    assert!(
        ping_until(&from.ns, to_v4, 10),
        "no ping {} -> {to_v4}",
        from.ns
    );
    assert!(
        ping_until(&from.ns, to_v6, 10),
        "no ping {} -> {to_v6}",
        from.ns
    );
}

#[test]
fn dataplane_embedded_direct_ping_v4_v6_and_teardown() {
    require_root!();
    let mut lab = Lab::new();
    let (mut a, mut b) = two_nodes(&mut lab, BackendKind::Embedded, BackendKind::Embedded);
    a.dp().set_peer(b.peer_config(2, true)).expect("set peer");
    b.dp().set_peer(a.peer_config(1, true)).expect("set peer");

    assert_pings(&a, "10.0.42.2", "fd42::2");
    assert_pings(&b, "10.0.42.1", "fd42::1");

    let sa = a.stats_of(&b.public());
    assert!(sa.last_handshake.is_some(), "{sa:?}");
    assert!(sa.rx_bytes > 0 && sa.tx_bytes > 0, "{sa:?}");
    assert_eq!(sa.endpoint, Some(b.underlay));

    // Routes into the interface.
    run_in(&a.rt, {
        let dp = Arc::clone(a.dp());
        async move {
            dp.add_route(net("10.99.0.0/16")).await.expect("add route");
            dp.add_route(net("fd99::/64")).await.expect("add route v6");
            dp.remove_route(net("fd99::/64"))
                .await
                .expect("remove route");
        }
    });
    dataplane_lab::run(&["ip", "-n", &a.ns, "route", "get", "10.99.1.1"]);

    // Removing the peer stops the traffic.
    a.dp().remove_peer(&b.public()).expect("remove peer");
    assert!(!ping(&a.ns, "10.0.42.2"), "ping after remove_peer");
    assert!(a.dp().stats().is_empty());

    // Destroy leaves no interface behind.
    a.destroy();
    b.destroy();
    assert!(!link_exists(&a.ns, &a.iface));
    assert!(!link_exists(&b.ns, &b.iface));
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `data` over TCP from `client` to `server_addr` (listening in
/// `server`) and returns what the server received.
fn tcp_transfer(client: &Node, server: &Node, server_addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = run_in(&server.rt, async move {
        tokio::net::TcpListener::bind(server_addr)
            .await
            .expect("listen")
    });
    let receiver = server.rt.spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.expect("read");
        got
    });
    run_in(&client.rt, async move {
        let mut conn = tokio::net::TcpStream::connect(server_addr)
            .await
            .expect("connect");
        conn.write_all(&data).await.expect("write");
        conn.shutdown().await.expect("shutdown");
    });
    server.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), receiver)
            .await
            .expect("transfer timed out")
            .expect("receiver task")
    })
}

/// Bulk TCP through the tunnel arrives intact: exercises segmentation of
/// the TUN device's large packets, UDP GSO, and coalescing on receive
/// (where the kernel no longer checks TCP checksums for us); once with the
/// plain daemon loop, once with one reading with UDP_GRO.
#[test]
fn dataplane_embedded_bulk_tcp_is_intact() {
    require_root!();
    for udp_gro in [false, true] {
        bulk_tcp(udp_gro);
    }
}

fn bulk_tcp(udp_gro: bool) {
    let mut lab = Lab::new();
    let (a, b) = two_nodes_with(
        &mut lab,
        BackendKind::Embedded,
        BackendKind::Embedded,
        udp_gro,
    );
    a.dp().set_peer(b.peer_config(2, true)).expect("set peer");
    b.dp().set_peer(a.peer_config(1, true)).expect("set peer");
    assert_pings(&a, "10.0.42.2", "fd42::2");

    let data = pattern(24 << 20, 42);
    let got = tcp_transfer(
        &a,
        &b,
        "10.0.42.2:5001".parse().expect("addr"),
        data.clone(),
    );
    assert_eq!(got.len(), data.len());
    assert!(got == data, "IPv4 transfer corrupted");

    let data = pattern(24 << 20, 7);
    let got = tcp_transfer(
        &b,
        &a,
        "[fd42::1]:5002".parse().expect("addr"),
        data.clone(),
    );
    assert_eq!(got.len(), data.len());
    assert!(got == data, "IPv6 transfer corrupted");

    let s = a.stats_of(&b.public());
    assert!(s.tx_bytes > 24 << 20 && s.rx_bytes > 24 << 20, "{s:?}");
}

/// A persistent keepalive goes out with no traffic, and changing it keeps
/// the session.
#[test]
fn dataplane_embedded_persistent_keepalive() {
    require_root!();
    let mut lab = Lab::new();
    let (a, b) = two_nodes(&mut lab, BackendKind::Embedded, BackendKind::Embedded);
    a.dp().set_peer(b.peer_config(2, true)).expect("set peer");
    b.dp().set_peer(a.peer_config(1, true)).expect("set peer");
    assert_pings(&a, "10.0.42.2", "fd42::2");
    let hs = a.stats_of(&b.public()).last_handshake;
    let mut cfg = b.peer_config(2, true);
    cfg.keepalive = Some(1);
    a.dp().set_peer(cfg).expect("keepalive");
    std::thread::sleep(Duration::from_millis(1500));
    let tx0 = a.stats_of(&b.public()).tx_bytes;
    let rx0 = b.stats_of(&a.public()).rx_bytes;
    std::thread::sleep(Duration::from_millis(2500));
    let tx1 = a.stats_of(&b.public()).tx_bytes;
    let rx1 = b.stats_of(&a.public()).rx_bytes;
    // Keepalives are 32-byte WireGuard data messages.
    assert!(tx1 >= tx0 + 64, "keepalives sent: {tx0} -> {tx1}");
    assert!(rx1 >= rx0 + 64, "keepalives received: {rx0} -> {rx1}");
    assert_eq!(a.stats_of(&b.public()).last_handshake, hs);
}

#[test]
fn dataplane_embedded_relayed_then_direct_keeps_session() {
    require_root!();
    let mut lab = Lab::new();
    let (mut a, mut b) = two_nodes(&mut lab, BackendKind::Embedded, BackendKind::Embedded);
    // Relayed both ways: the data plane hands every datagram to the daemon.
    a.dp().set_peer(b.peer_config(2, false)).expect("set peer");
    b.dp().set_peer(a.peer_config(1, false)).expect("set peer");
    let r_ab = relay(&mut a, &b);
    let r_ba = relay(&mut b, &a);

    assert_pings(&a, "10.0.42.2", "fd42::2");
    assert_pings(&b, "10.0.42.1", "fd42::1");
    let hs_a = a.stats_of(&b.public()).last_handshake;
    let hs_b = b.stats_of(&a.public()).last_handshake;
    assert!(hs_a.is_some() && hs_b.is_some());
    assert_eq!(a.stats_of(&b.public()).endpoint, None);

    // The path becomes direct: same session, no new handshake.
    a.dp()
        .set_peer(b.peer_config(2, true))
        .expect("update peer");
    b.dp()
        .set_peer(a.peer_config(1, true))
        .expect("update peer");
    r_ab.abort();
    r_ba.abort();
    for _ in 0..3 {
        assert_pings(&a, "10.0.42.2", "fd42::2");
    }
    assert_pings(&b, "10.0.42.1", "fd42::1");
    assert_eq!(a.stats_of(&b.public()).last_handshake, hs_a);
    assert_eq!(b.stats_of(&a.public()).last_handshake, hs_b);
    assert_eq!(a.stats_of(&b.public()).endpoint, Some(b.underlay));

    // Allowed IPs and keepalive updates keep it too.
    let mut cfg = b.peer_config(2, true);
    cfg.allowed_ips.push(net("10.77.0.0/16"));
    cfg.keepalive = Some(25);
    a.dp().set_peer(cfg).expect("update peer");
    assert_pings(&a, "10.0.42.2", "fd42::2");
    assert_eq!(a.stats_of(&b.public()).last_handshake, hs_a);

    a.destroy();
    b.destroy();
    assert!(!link_exists(&a.ns, &a.iface));
}

/// A peer whose first handshake initiation went nowhere (its path was not
/// open yet) and whose path then changes: a new initiation goes the new
/// way at once, not after WireGuard's 5 s retry.
#[test]
fn dataplane_embedded_handshake_follows_a_new_path_at_once() {
    require_root!();
    let mut lab = Lab::new();
    let (a, b) = two_nodes(&mut lab, BackendKind::Embedded, BackendKind::Embedded);
    // b knows a but has no path yet; a sends its initiation to a dead port.
    b.dp().set_peer(a.peer_config(1, false)).expect("set peer");
    let mut dead = b.peer_config(2, true);
    dead.endpoint = Some(SocketAddr::new(b.underlay.ip(), 9));
    a.dp().set_peer(dead).expect("set peer");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.stats_of(&b.public()).last_handshake, None);
    // Both paths open.
    b.dp()
        .set_peer(a.peer_config(1, true))
        .expect("update peer");
    a.dp()
        .set_peer(b.peer_config(2, true))
        .expect("update peer");
    let start = Instant::now();
    while a.stats_of(&b.public()).last_handshake.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no handshake 2 s after the path changed (WireGuard's own retry comes after 5 s)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("handshake {:?} after the path changed", start.elapsed());
    assert_pings(&a, "10.0.42.2", "fd42::2");
}

#[test]
fn dataplane_mixed_embedded_and_wireguard_go() {
    require_root!();
    if !dataplane_lab::run_ok(&["sh", "-c", "command -v wireguard-go"]) {
        println!("skipped: wireguard-go is not installed");
        return;
    }
    let mut lab = Lab::new();
    let (mut a, mut b) = two_nodes(&mut lab, BackendKind::Embedded, BackendKind::Userspace);
    assert_eq!(b.dp().kind(), BackendKind::Userspace);
    a.dp().set_peer(b.peer_config(2, true)).expect("set peer");
    b.dp().set_peer(a.peer_config(1, true)).expect("set peer");

    assert_pings(&a, "10.0.42.2", "fd42::2");
    assert_pings(&b, "10.0.42.1", "fd42::1");
    // Bulk both ways: our segmentation and UDP GSO against wireguard-go.
    let data = pattern(8 << 20, 3);
    let got = tcp_transfer(
        &a,
        &b,
        "10.0.42.2:5003".parse().expect("addr"),
        data.clone(),
    );
    assert!(got == data, "embedded -> wireguard-go transfer corrupted");
    let got = tcp_transfer(
        &b,
        &a,
        "[fd42::1]:5004".parse().expect("addr"),
        data.clone(),
    );
    assert!(got == data, "wireguard-go -> embedded transfer corrupted");
    let sb = b.stats_of(&a.public());
    assert!(sb.last_handshake.is_some(), "{sb:?}");
    assert!(sb.rx_bytes > 0 && sb.tx_bytes > 0, "{sb:?}");

    // wireguard-go's peer goes relayed: its datagrams come out of Outgoing.
    b.dp()
        .set_peer(a.peer_config(1, false))
        .expect("update peer");
    a.dp()
        .set_peer(b.peer_config(2, false))
        .expect("update peer");
    let _r_ab = relay(&mut a, &b);
    let _r_ba = relay(&mut b, &a);
    assert_pings(&b, "10.0.42.1", "fd42::1");
    assert_pings(&a, "10.0.42.2", "fd42::2");

    b.dp().remove_peer(&a.public()).expect("remove peer");
    assert!(!ping(&a.ns, "10.0.42.2"), "ping after remove_peer");

    let iface_b = b.iface.clone();
    a.destroy();
    b.destroy();
    assert!(!link_exists(&b.ns, &iface_b));
    assert!(
        dataplane_lab::wireguard_go_pids(&iface_b).is_empty(),
        "wireguard-go still running"
    );
}

#[test]
fn dataplane_backend_kind_parses() {
    for (s, k) in [
        ("embedded", BackendKind::Embedded),
        ("Kernel", BackendKind::Kernel),
        ("userspace", BackendKind::Userspace),
        ("auto", BackendKind::Auto),
    ] {
        assert_eq!(s.parse::<BackendKind>().expect("kind"), k);
        assert_eq!(k.to_string(), s.to_ascii_lowercase());
    }
    assert!("wireguard".parse::<BackendKind>().is_err());
}

#[test]
fn dataplane_auto_picks_embedded_without_kernel_module() {
    require_root!();
    let mut lab = Lab::new();
    let ns = lab.netns(&unique_tag("whdp"));
    let rt = runtime_in(&ns, 1);
    let kind = run_in(&rt, BackendKind::Auto.resolve());
    let has_module = std::path::Path::new("/sys/module/wireguard").exists();
    if has_module {
        assert_eq!(kind, BackendKind::Kernel);
    } else {
        assert_eq!(kind, BackendKind::Embedded);
    }
    // The probe link is gone.
    let out = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "link"])
        .output()
        .expect("ip link");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("whprobe"));
}
