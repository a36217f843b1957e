//! Path MTU probes over IPv4: teaching the kernel the path MTU to a peer
//! without ever setting DF on WireGuard's own datagrams.
//!
//! Owns: one raw IPv4 socket (where the process may open one: root or
//! `CAP_NET_RAW`) and, per destination address, when it was last probed
//! (at most [`PROBED_MAX`] addresses; beyond, the oldest is forgotten).
//!
//! Promises: before the node sends a datagram that a path below 1,500 bytes
//! might not carry whole (outer packet over [`SAFE_OUTER`] bytes) to an IPv4
//! address not probed within [`PROBE_EVERY`], one probe of the same outer
//! size leaves from the node's own UDP port, with DF set. If a router on
//! the way has a smaller link, its ICMP "fragmentation needed" comes back
//! to the node's socket and the kernel records that path MTU for the
//! address (for 10 minutes); from then on `udp::GsoSender` sees runs to it
//! refused, sends them fragmented by the kernel, and the TUN reader tells
//! the inner TCP to use smaller segments (`offload::too_big`), which then
//! fit the path whole: full speed instead of every datagram fragmented by
//! a router and reassembled by the peer. A probe that arrives (the path
//! carries it) is a datagram whose first byte is [`PROBE`]: the peer drops
//! and counts it. Probes never carry data, never change what is sent, and
//! their loss (ICMP filtered, no raw socket) leaves things as without
//! them: routers fragment, nothing is black-holed.
//!
//! Never: sets DF on a datagram that carries anything, probes IPv6 (routers
//! never fragment it: their "packet too big" already teaches the kernel),
//! waits, or sends more than one probe per address per [`PROBE_EVERY`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First byte of a probe's payload: neither WireGuard nor WireHub, so every
/// receiver drops it.
pub use crate::proto::PMTU_PROBE as PROBE;
/// An outer IPv4 packet this size or smaller crosses any path that IPv6
/// could (1,280 bytes): not worth a probe.
pub const SAFE_OUTER: usize = 1280;
/// How often one address is probed again while large datagrams go there:
/// a path whose MTU dropped (a route moved onto a tunnel) is learnt within
/// this, and a learnt one never lapses (the kernel keeps it 10 minutes).
/// At most one 1.5 kB packet per peer per period: nothing beside the data.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Addresses whose last probe is remembered.
pub const PROBED_MAX: usize = 1024;
/// IPv4 and UDP headers.
const HEADERS_V4: usize = 20 + 8;

/// Sends path MTU probes (see the module's contract).
pub struct Prober {
    raw: Option<OwnedFd>,
    port: u16,
    probed: Mutex<HashMap<Ipv4Addr, Instant>>,
    sent: AtomicU64,
}

impl Prober {
    /// A prober for datagrams leaving from UDP `port`; without a raw socket
    /// (no permission), one that never probes.
    pub fn new(port: u16) -> Prober {
        let raw = open_raw()
            .inspect_err(|e| {
                tracing::debug!(error = %e, "no raw socket: no path MTU probes (routers fragment)")
            })
            .ok();
        Prober {
            raw,
            port,
            probed: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
        }
    }

    /// Probes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Before sending `payload` bytes of UDP to `addr`: probes the path
    /// there when it is due (see the module's contract).
    pub fn before_send(&self, addr: SocketAddr, payload: usize, now: Instant) {
        let Some(raw) = &self.raw else { return };
        let outer = payload + HEADERS_V4;
        let SocketAddr::V4(dst) = super::udp::canonical(addr) else {
            return;
        };
        if outer <= SAFE_OUTER || !self.due(*dst.ip(), now) {
            return;
        }
        let packet = probe_packet(self.port, dst.ip(), dst.port(), outer);
        let to = socket2::SockAddr::from(SocketAddr::V4(dst));
        match socket2::SockRef::from(raw).send_to(&packet, &to) {
            Ok(_) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, outer, "path MTU probe sent");
            }
            Err(e) => tracing::debug!(%addr, outer, error = %e, "path MTU probe not sent"),
        }
    }

    /// Whether `ip` is due a probe at `now`; if so, records it as probed.
    fn due(&self, ip: Ipv4Addr, now: Instant) -> bool {
        let mut probed = self.probed.lock().unwrap_or_else(|e| e.into_inner());
        if probed
            .get(&ip)
            .is_some_and(|last| now.saturating_duration_since(*last) < PROBE_EVERY)
        {
            return false;
        }
        if probed.len() >= PROBED_MAX && !probed.contains_key(&ip) {
            let oldest = probed.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a);
            if let Some(a) = oldest {
                probed.remove(&a);
            }
        }
        probed.insert(ip, now);
        true
    }
}

/// A raw IPv4 socket whose packets carry their own header (`IPPROTO_RAW`).
fn open_raw() -> std::io::Result<OwnedFd> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

/// A probe: an IPv4 packet of `outer` bytes with DF, from UDP port `from`
/// to `to:port`, whose payload starts with [`PROBE`] and is zero after.
/// The kernel fills in the source address, the identification, the total
/// length and the header checksum (`raw(7)`); the UDP checksum is zero
/// (none, as IPv4 allows).
pub fn probe_packet(from: u16, to: &Ipv4Addr, port: u16, outer: usize) -> Vec<u8> {
    let outer = outer.clamp(HEADERS_V4 + 1, usize::from(u16::MAX));
    let mut p = vec![0u8; outer];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(outer as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_UDP as u8;
    p[16..20].copy_from_slice(&to.octets());
    p[20..22].copy_from_slice(&from.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((outer - 20) as u16).to_be_bytes());
    p[HEADERS_V4] = PROBE;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_a_udp_packet_with_df_from_our_port_of_the_size_asked() {
        let p = probe_packet(62096, &Ipv4Addr::new(203, 0, 113, 7), 4242, 1480);
        assert_eq!(p.len(), 1480);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1480);
        assert_eq!(p[6] & 0x40, 0x40, "DF set");
        assert_eq!(p[9], 17, "UDP");
        assert_eq!(&p[16..20], &[203, 0, 113, 7]);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 62096);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 4242);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 1460, "UDP length");
        assert_eq!(p[28], PROBE);
    }

    #[test]
    fn one_address_is_probed_once_per_period_and_the_memory_is_bounded() {
        let prober = Prober {
            raw: None,
            port: 1,
            probed: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
        };
        let t = Instant::now();
        let a = Ipv4Addr::new(10, 0, 0, 1);
        assert!(prober.due(a, t));
        assert!(!prober.due(a, t + PROBE_EVERY / 2), "again too soon");
        assert!(prober.due(a, t + PROBE_EVERY), "due again after the period");
        for i in 0..(PROBED_MAX as u32 + 10) {
            prober.due(Ipv4Addr::from(0x0a01_0000 + i), t);
        }
        assert!(prober.probed.lock().unwrap().len() <= PROBED_MAX);
    }
}
