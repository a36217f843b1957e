//! The node core's datagram path: runs of any bytes cut at any segment size
//! (what GRO hands the daemon), relay-data and relayed-data framing among
//! them, from any address, through `Node::handle_datagrams`. Never panics;
//! nothing goes out bigger than what came in, and the core's queues stay
//! bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use wirehub_core::keys::{PrivateKey, PublicKey, RandomStream};
use wirehub_core::node::core::{Host, Node, NodeConfig, Now, Wire};
use wirehub_core::node::Mode;

struct NoHost;
impl Host for NoHost {
    fn local_ip_towards(&self, _: SocketAddr) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)))
    }
    fn global_ipv6(&self) -> Vec<Ipv6Addr> {
        Vec::new()
    }
}

struct Check {
    limit: usize,
}
impl Wire for Check {
    fn send_run(&mut self, _: SocketAddr, datagrams: &[u8], segment: usize) {
        assert!(segment > 0 || datagrams.is_empty());
        assert!(
            datagrams.len() <= self.limit,
            "a run out larger than what came in"
        );
    }
    fn deliver(&mut self, _: SocketAddr, datagram: &[u8], _: Option<PublicKey>) {
        assert!(datagram.len() <= self.limit);
    }
}

fuzz_target!(|data: &[u8]| {
    let [seg_hi, seg_lo, port, rest @ ..] = data else {
        return;
    };
    let key = PrivateKey::from_bytes([9; 32]);
    let spec = wirehub_core::config::parse("name fuzz\nsubnet 10.0.42.0/24\n")
        .expect("the fuzz network parses")
        .spec;
    let config = NodeConfig {
        key,
        spec,
        interface: "wh-fuzz".into(),
        listen_port: 62096,
        mode: Mode::Unknown,
        relay_mbit: 100,
        force_relay: false,
        from_file: true,
        has_dataplane: true,
        join: None,
        random: RandomStream::from_seed([5; 32]),
    };
    let start = Now {
        mono: Instant::now(),
        unix_ms: 1_800_000_000_000,
    };
    let mut node = Node::new(config, Box::new(NoHost), start);
    let segment = usize::from(u16::from_be_bytes([*seg_hi, *seg_lo]));
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, *port)), 40_000);
    let mut bytes = rest.to_vec();
    let mut wire = Check { limit: rest.len() };
    node.handle_datagrams(start, from, &mut bytes, segment, &mut wire);
    let later = Now {
        mono: start.mono + Duration::from_secs(1),
        unix_ms: start.unix_ms + 1000,
    };
    node.handle_timeout(later);
    let mut out = 0;
    while let Some(t) = node.poll_transmit() {
        assert!(t.contents.len() <= 65_535);
        out += 1;
        assert!(out < 100_000, "unbounded transmits");
    }
    while node.poll_event().is_some() {}
    while node.poll_dataplane_op().is_some() {}
});
