//! The node's UDP socket: sending many WireGuard datagrams to one address
//! in one system call (UDP generic segmentation offload, `UDP_SEGMENT`),
//! with a fallback to one `send_to` per datagram where the kernel refuses,
//! and receiving runs of them in one call (`UDP_GRO`), each with the time
//! the kernel queued it where asked (`SO_TIMESTAMPNS`): how long it waited
//! is reported, never judged here (the node core sheds what is too late).
//!
//! Path MTU: like kernel WireGuard, the socket never sets DF on IPv4
//! (`IP_PMTUDISC_DONT`), so a router before a smaller link fragments an
//! outer datagram rather than dropping it and counting on an ICMP message
//! that firewalls often eat; over IPv6, where only the sender fragments,
//! the kernel fragments what exceeds the path MTU that routers' "packet
//! too big" taught it. The kernel does not segment and fragment in one
//! call, so a run to a destination whose known path MTU is below the
//! datagrams goes one by one (for a while, [`NO_GSO_FOR`]), without
//! giving up segmentation for the other destinations, and again to it for
//! runs that fit its path MTU. [`super::pmtu`] probes IPv4 paths so that
//! the kernel learns their MTU although data never carries DF.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Kernel limit on segments per send (`UDP_MAX_SEGMENTS`, 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Stay below the 64 KiB IP datagram limit.
const MAX_GSO_BYTES: usize = 65_000;
/// How long runs to a destination go one by one after the kernel refused
/// to segment them for it (its path MTU is below the datagrams); then it
/// is tried again (path MTUs the kernel learnt expire after 10 minutes).
pub const NO_GSO_FOR: Duration = Duration::from_secs(10);
/// Destinations remembered as [`NO_GSO_FOR`]: beyond, the oldest goes.
const NO_GSO_MAX: usize = 1024;

/// A socket address in the form `sendmsg` wants, mapped to IPv6 when the
/// socket is IPv6 (dual stack).
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: SocketAddr, socket_v6: bool) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let ip = match (addr.ip(), socket_v6) {
            (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
            (ip, _) => ip,
        };
        let len = match ip {
            IpAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: addr.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(v6) => {
                let scope_id = match addr {
                    SocketAddr::V6(a) => a.scope_id(),
                    SocketAddr::V4(_) => 0,
                };
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: addr.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    sin6_scope_id: scope_id,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Room for the control messages of one call (a segment size, an arrival
/// time), 8-byte aligned.
#[repr(C, align(8))]
struct Control([u8; 128]);

/// One `sendmsg` of `buf` cut by the kernel into datagrams of `segment`
/// bytes (the last may be shorter).
fn sendmsg_gso(fd: RawFd, buf: &[u8], segment: u16, addr: &RawAddr) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = Control([0; 128]);
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives
    // the call, and the control buffer is large and aligned enough for one
    // cmsghdr with 2 bytes of data (CMSG_SPACE(2) = 24 on 64-bit Linux).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &addr.storage as *const libc::sockaddr_storage as *mut libc::c_void;
        msg.msg_namelen = addr.len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(2) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for a control message"));
        }
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        let n = libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT);
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Sends datagrams to one address, in as few system calls as the kernel
/// allows.
pub struct GsoSender {
    socket_v6: bool,
    /// False once the kernel (or the route) proved unable to segment at all.
    enabled: AtomicBool,
    /// Destinations whose path MTU is below the datagrams sent them: until
    /// when their runs go one by one (the kernel fragments each), and that
    /// path MTU as the kernel knows it.
    no_gso: Mutex<HashMap<SocketAddr, NoGso>>,
    /// Whether `no_gso` may hold anything (skips its lock when not).
    any_no_gso: AtomicBool,
    /// Runs the kernel refused to segment for their destination's path MTU.
    too_big_runs: AtomicU64,
    /// Teaches the kernel IPv4 path MTUs (see [`super::pmtu`]).
    probe: super::pmtu::Prober,
}

/// A destination whose runs go one by one.
#[derive(Clone, Copy)]
struct NoGso {
    until: Instant,
    /// Its path MTU as the kernel knew it at `checked`.
    mtu: Option<usize>,
    checked: Instant,
}

/// How often [`GsoSender::path_mtu`] asks the kernel again: the path MTU
/// may have dropped further since.
const PATH_MTU_RECHECK: Duration = Duration::from_secs(1);

/// What a failed segmented send says.
enum Refusal {
    /// The kernel or the route cannot segment: stop trying.
    NoOffload,
    /// The destination's path MTU is below the segment: the kernel
    /// fragments datagrams only one per call.
    PathTooSmall,
    /// Anything else (a full buffer, an unreachable network).
    Other,
}

fn refusal(e: &io::Error) -> Refusal {
    match e.raw_os_error() {
        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => Refusal::NoOffload,
        Some(libc::EINVAL | libc::EMSGSIZE) => Refusal::PathTooSmall,
        _ => Refusal::Other,
    }
}

impl GsoSender {
    pub fn new(socket: &UdpSocket) -> GsoSender {
        GsoSender {
            socket_v6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            enabled: AtomicBool::new(true),
            no_gso: Mutex::new(HashMap::new()),
            any_no_gso: AtomicBool::new(false),
            too_big_runs: AtomicU64::new(0),
            probe: super::pmtu::Prober::new(socket.local_addr().map_or(0, |a| a.port())),
        }
    }

    /// Path MTU probes sent (see [`super::pmtu`]).
    pub fn probes_sent(&self) -> u64 {
        self.probe.sent()
    }

    /// The path MTU to `addr`, when it is below the datagrams lately sent
    /// there (a run was refused within [`NO_GSO_FOR`]) and the kernel knows
    /// it: the largest IP packet (outer headers included) the path carries.
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<usize> {
        if !self.any_no_gso.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let entry = {
            let map = self.no_gso.lock().unwrap_or_else(|e| e.into_inner());
            *map.get(&addr).filter(|e| now < e.until)?
        };
        if now.duration_since(entry.checked) < PATH_MTU_RECHECK {
            return entry.mtu;
        }
        let mtu = kernel_path_mtu(addr);
        let mut map = self.no_gso.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&addr) {
            e.mtu = mtu;
            e.checked = now;
        }
        mtu
    }

    /// Runs the kernel refused to segment because their destination's path
    /// MTU is below their datagrams (they went one by one, fragmented).
    pub fn too_big_runs(&self) -> u64 {
        self.too_big_runs.load(Ordering::Relaxed)
    }

    /// Whether runs of `size`-byte datagrams to `addr` may be segmented
    /// now: not while its path MTU is known to be below them.
    fn segments_to(&self, addr: SocketAddr, size: usize) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        if !self.any_no_gso.load(Ordering::Relaxed) {
            return true;
        }
        let mut map = self.no_gso.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&addr) {
            Some(e) if Instant::now() < e.until => {
                e.mtu.is_some_and(|mtu| size + outer_headers(addr) <= mtu)
            }
            Some(_) => {
                map.remove(&addr);
                self.any_no_gso.store(!map.is_empty(), Ordering::Relaxed);
                true
            }
            None => true,
        }
    }

    /// Acts on a refused segmented send of `size`-byte datagrams to `addr`
    /// which then went one by one (`sent` of them).
    fn refused(&self, e: &io::Error, addr: SocketAddr, size: usize, sent: usize) {
        if sent == 0 {
            return;
        }
        match refusal(e) {
            Refusal::NoOffload => {
                tracing::info!("UDP segmentation offload unavailable ({e}), sending one by one");
                self.enabled.store(false, Ordering::Relaxed);
            }
            Refusal::PathTooSmall => {
                self.too_big_runs.fetch_add(1, Ordering::Relaxed);
                // Refused, so the path is below these datagrams whatever a
                // fresh route lookup says (a socket's own MTU option).
                let mtu = kernel_path_mtu(addr).filter(|m| *m < size + outer_headers(addr));
                let mut map = self.no_gso.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() >= NO_GSO_MAX && !map.contains_key(&addr) {
                    let oldest = map.iter().min_by_key(|(_, v)| v.until).map(|(a, _)| *a);
                    if let Some(a) = oldest {
                        map.remove(&a);
                    }
                }
                let now = Instant::now();
                let entry = NoGso {
                    until: now + NO_GSO_FOR,
                    mtu,
                    checked: now,
                };
                if map.insert(addr, entry).is_none() {
                    tracing::debug!(%addr, ?mtu, "path MTU below the datagrams: sending one by one ({e})");
                }
                self.any_no_gso.store(true, Ordering::Relaxed);
            }
            Refusal::Other => {}
        }
    }

    /// Sends the datagrams laid end to end in `buf`, whose lengths are
    /// `lens`, to `addr`. Waits when the socket buffer is full.
    /// Probes the path first where that is due ([`super::pmtu`]).
    pub async fn send(&self, socket: &UdpSocket, buf: &[u8], lens: &[usize], addr: SocketAddr) {
        let largest = lens.iter().copied().max().unwrap_or(0);
        self.probe.before_send(addr, largest, Instant::now());
        if lens.len() > 1 && self.segments_to(addr, largest) {
            let raw = RawAddr::new(addr, self.socket_v6);
            let mut i = 0;
            let mut off = 0;
            while i < lens.len() {
                // A run: equal sizes, except that a shorter one ends it.
                let size = lens[i];
                let mut j = i;
                let mut bytes = 0;
                while j < lens.len()
                    && j - i < MAX_SEGMENTS
                    && lens[j] <= size
                    && bytes + lens[j] <= MAX_GSO_BYTES
                {
                    bytes += lens[j];
                    j += 1;
                    if lens[j - 1] < size {
                        break;
                    }
                }
                let chunk = &buf[off..off + bytes];
                let result = if j - i == 1 {
                    send_one(socket, chunk, addr).await
                } else {
                    send_gso(socket, chunk, size as u16, &raw).await
                };
                if let Err(e) = result {
                    if j - i > 1 && !matches!(refusal(&e), Refusal::Other) {
                        // Send them one by one; if that works, the kernel
                        // cannot segment (stop trying), or not for this
                        // destination's path MTU (not for a while).
                        let mut o = off;
                        let mut sent = 0;
                        for len in &lens[i..j] {
                            match send_one(socket, &buf[o..o + len], addr).await {
                                Ok(()) => sent += 1,
                                Err(e) => tracing::debug!(%addr, "send: {e}"),
                            }
                            o += len;
                        }
                        self.refused(&e, addr, size, sent);
                        if sent > 0 && !self.segments_to(addr, size) {
                            // The rest of this batch goes one by one too.
                            off += bytes;
                            for len in &lens[j..] {
                                if let Err(e) = send_one(socket, &buf[off..off + len], addr).await {
                                    tracing::debug!(%addr, "send: {e}");
                                }
                                off += len;
                            }
                            return;
                        }
                    } else {
                        tracing::debug!(%addr, "send: {e}");
                    }
                }
                off += bytes;
                i = j;
            }
            return;
        }
        let mut off = 0;
        for len in lens {
            if let Err(e) = send_one(socket, &buf[off..off + len], addr).await {
                tracing::debug!(%addr, "send: {e}");
            }
            off += len;
        }
    }

    /// Sends `buf` to `addr` as datagrams of `segment` bytes (the last may
    /// be shorter), like [`GsoSender::send`] but never waiting (a full
    /// socket buffer drops, as UDP may): for the daemon's loop.
    pub fn try_send_segments(
        &self,
        socket: &UdpSocket,
        buf: &[u8],
        segment: usize,
        addr: SocketAddr,
    ) -> io::Result<()> {
        if segment == 0 || buf.len() <= segment {
            return send_now(socket, buf, addr);
        }
        let per_call = (MAX_GSO_BYTES / segment).min(MAX_SEGMENTS);
        let seg = match u16::try_from(segment) {
            Ok(seg) if per_call >= 2 && self.segments_to(addr, segment) => seg,
            _ => return send_each(socket, buf, segment, addr),
        };
        let raw = RawAddr::new(addr, self.socket_v6);
        let fd = socket.as_raw_fd();
        let mut groups = buf.chunks(per_call * segment);
        while let Some(group) = groups.next() {
            if group.len() <= segment {
                send_now(socket, group, addr)?;
                continue;
            }
            match sendmsg_gso(fd, group, seg, &raw) {
                Ok(_) => {}
                Err(e) if !matches!(refusal(&e), Refusal::Other) => {
                    send_each(socket, group, segment, addr)?;
                    self.refused(&e, addr, segment, group.len().div_ceil(segment));
                    if !self.segments_to(addr, segment) {
                        for rest in groups.by_ref() {
                            send_each(socket, rest, segment, addr)?;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Sends one datagram now, or fails (a full socket buffer drops it, as UDP
/// may): the system call itself, not tokio's `try_send_to`, which refuses
/// without trying while the reactor has not yet seen the socket writable.
/// A socket made a moment ago (a new peer's proxy, the daemon's socket at
/// start) would otherwise drop its first datagrams — a handshake
/// initiation among them.
pub fn send_now(socket: &UdpSocket, buf: &[u8], addr: SocketAddr) -> io::Result<()> {
    socket2::SockRef::from(socket)
        .send_to(buf, &addr.into())
        .map(drop)
}

fn send_each(socket: &UdpSocket, buf: &[u8], segment: usize, addr: SocketAddr) -> io::Result<()> {
    for chunk in buf.chunks(segment) {
        send_now(socket, chunk, addr)?;
    }
    Ok(())
}

/// Sends one datagram, waiting for room in a full socket buffer.
pub async fn send_one(socket: &UdpSocket, buf: &[u8], addr: SocketAddr) -> io::Result<()> {
    match send_now(socket, buf, addr) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            socket.send_to(buf, addr).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

async fn send_gso(socket: &UdpSocket, buf: &[u8], segment: u16, addr: &RawAddr) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    loop {
        match socket.try_io(Interest::WRITABLE, || sendmsg_gso(fd, buf, segment, addr)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// Why the kernel's UDP counters could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnmpError {
    #[error("/proc/net/snmp has no `Udp:` header line followed by a value line")]
    NoUdpLines,
    #[error("/proc/net/snmp: `Udp:` has {names} names but {values} values")]
    Mismatch { names: usize, values: usize },
    #[error("/proc/net/snmp: `Udp:` value {value:?} of {name} is not a number")]
    NotANumber { name: String, value: String },
}

/// The kernel's UDP counters of the network namespace (`Udp:` lines of
/// `/proc/net/snmp`), by name: `SndbufErrors` counts datagrams the kernel
/// dropped on their way out although the send said it went (no
/// neighbour entry, a full device queue), `RcvbufErrors` those dropped
/// for a full receive buffer: losses the daemon cannot see otherwise.
/// Namespace-wide (the node's own, in a pod or the lab).
pub fn parse_snmp_udp(text: &str) -> Result<std::collections::BTreeMap<String, u64>, SnmpError> {
    let mut udp = text
        .lines()
        .filter_map(|l| l.strip_prefix("Udp:"))
        .map(str::split_whitespace);
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Err(SnmpError::NoUdpLines);
    };
    let (names, values): (Vec<&str>, Vec<&str>) = (names.collect(), values.collect());
    if names.len() != values.len() {
        return Err(SnmpError::Mismatch {
            names: names.len(),
            values: values.len(),
        });
    }
    names
        .iter()
        .zip(&values)
        .map(|(n, v)| {
            v.parse::<u64>()
                .map(|v| (n.to_string(), v))
                .map_err(|_| SnmpError::NotANumber {
                    name: n.to_string(),
                    value: v.to_string(),
                })
        })
        .collect()
}

/// [`parse_snmp_udp`] of this namespace's `/proc/net/snmp`; empty where
/// it cannot be read (not Linux, no procfs), with the reason logged.
pub fn kernel_udp_counters() -> std::collections::BTreeMap<String, u64> {
    let read = std::fs::read_to_string("/proc/net/snmp")
        .map_err(|e| e.to_string())
        .and_then(|t| parse_snmp_udp(&t).map_err(|e| e.to_string()));
    read.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no kernel UDP counters");
        Default::default()
    })
}

/// Binds the node's UDP socket on `port`: one dual-stack socket (`[::]`,
/// IPv4 arriving as IPv4-mapped addresses) where the host has IPv6, else
/// `0.0.0.0`. Non-blocking, for tokio.
pub fn bind_dual_stack(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_node_socket(port, None)?)
}

/// The node's socket as [`bind_dual_stack`] makes it, not yet registered
/// with tokio; with `SO_REUSEPORT` set before the bind when `reuse_port`
/// names the family (`Some(true)`: IPv6 dual stack, `Some(false)`: IPv4),
/// so that more sockets of the same family join it on the same port
/// (the relay fast path, [`super::relay_fast`]).
pub(crate) fn bind_node_socket(
    port: u16,
    reuse_port: Option<bool>,
) -> io::Result<std::net::UdpSocket> {
    let bind = |domain: socket2::Domain| -> io::Result<std::net::UdpSocket> {
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let addr = if domain == socket2::Domain::IPV6 {
            s.set_only_v6(false)?;
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))
        };
        if reuse_port.is_some() {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    let std_socket = match reuse_port {
        Some(true) => bind(socket2::Domain::IPV6)?,
        Some(false) => bind(socket2::Domain::IPV4)?,
        None => match bind(socket2::Domain::IPV6) {
            Ok(s) => s,
            // No IPv6 on this host (disabled, or no such family): IPv4 only.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
                ) =>
            {
                tracing::info!(error = %e, "no IPv6 socket on this host: IPv4 only");
                bind(socket2::Domain::IPV4)?
            }
            Err(e) => return Err(e),
        },
    };
    never_set_df(&std_socket)?;
    size_buffers(&std_socket);
    std_socket.set_nonblocking(true)?;
    Ok(std_socket)
}

/// Send and receive buffer of the node's socket, as wireguard-go sizes its
/// own: bursts (a fleet starting at once, a GSO run, many peers' replies)
/// fit instead of failing with ENOBUFS.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Gives the socket [`SOCKET_BUFFER`] each way: beyond the system's
/// `net.core.{w,r}mem_max` where the process may (CAP_NET_ADMIN), else as
/// much as those allow. Never fails: the defaults work, only smaller.
fn size_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, size).is_err()
            && let Err(e) = set_int_option(fd, libc::SOL_SOCKET, plain, size)
        {
            tracing::debug!(error = %e, "cannot size the socket's buffers");
        }
    }
}

/// The path MTU the kernel knows to `addr` (its route's, lowered by what
/// ICMP "packet too big" taught it), read through a socket connected
/// there and closed at once: no datagram is sent.
fn kernel_path_mtu(addr: SocketAddr) -> Option<usize> {
    let addr = canonical(addr);
    let (domain, level, name) = match addr {
        SocketAddr::V4(_) => (socket2::Domain::IPV4, libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (socket2::Domain::IPV6, libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None).ok()?;
    socket.connect(&addr.into()).ok()?;
    let mtu = get_int_option(socket.as_raw_fd(), level, name).ok()?;
    (mtu > 0).then_some(mtu as usize)
}

/// Sets an int socket option of `fd` (the twin of [`get_int_option`]).
pub(crate) fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An int socket option of `fd`.
fn get_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a live c_int with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// IPv4 datagrams from this socket (also those a dual-stack socket sends
/// to IPv4-mapped addresses) leave without DF: a router before a smaller
/// link fragments them (see the module's contract).
fn never_set_df(socket: &std::net::UdpSocket) -> io::Result<()> {
    set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
}

/// IP and UDP header bytes around a datagram's payload to `addr`.
fn outer_headers(addr: SocketAddr) -> usize {
    match canonical(addr) {
        SocketAddr::V4(_) => 20 + 8,
        SocketAddr::V6(_) => 40 + 8,
    }
}

/// An address as the rest of WireHub keys it: an IPv4-mapped IPv6 address
/// (what a dual-stack socket reports for IPv4 peers) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

const UDP_GRO: libc::c_int = 104;

/// Asks the kernel to hand this socket runs of same-sized datagrams from one
/// source as one buffer (`UDP_GRO`). Only for a receive loop that splits
/// them again: [`try_recv_gro`].
pub fn enable_gro(socket: &UdpSocket) -> io::Result<()> {
    set_int_option(socket.as_raw_fd(), SOL_UDP, UDP_GRO, 1)
}

fn from_raw(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(canonical(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))))
        }
        _ => None,
    }
}

/// What one receive call got: `bytes` in the buffer, from `from`, cut in
/// datagrams of `segment` bytes, and, where the socket has
/// [`enable_arrival_times`], when the kernel queued them (wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub bytes: usize,
    pub from: SocketAddr,
    pub segment: usize,
    pub arrived: Option<std::time::SystemTime>,
}

/// A wait longer than this is not believed: the wall clock stepped
/// between the kernel's stamp and the read (a datagram that really waited
/// this long is shed anyway, long before).
pub const MAX_BELIEVED_WAIT: Duration = Duration::from_secs(60);

impl Receipt {
    /// How long the datagrams waited in the socket's receive queue before
    /// `now`, which must be the kernel's clock ([`kernel_wall_clock`]):
    /// zero when the clock stepped back meanwhile, `None` without an
    /// arrival time or when the wait is past belief ([`MAX_BELIEVED_WAIT`]:
    /// the clock stepped forward).
    pub fn waited(&self, now: std::time::SystemTime) -> Option<Duration> {
        self.arrived
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
            .filter(|w| *w <= MAX_BELIEVED_WAIT)
    }
}

/// The kernel's wall clock, read with the system call itself: the clock
/// the kernel stamps arrivals with (`SO_TIMESTAMPNS`), also where the
/// process's own view of time is shifted (a libfaketime preload, as the
/// lab's wrong-clock test runs nodes). `SystemTime::now()` there would make
/// every datagram look minutes old.
pub fn kernel_wall_clock() -> std::time::SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill; the call
    // reads no other memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_REALTIME,
            &mut ts as *mut libc::timespec,
        )
    };
    match (rc, u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (0, Ok(secs), Ok(nanos)) => std::time::UNIX_EPOCH + Duration::new(secs, nanos),
        _ => std::time::SystemTime::now(),
    }
}

fn recvmsg_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<Receipt> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 128]);
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr; the pointers
    // set below outlive the call; cmsg headers are read only within
    // msg_controllen as the kernel filled it, through the CMSG macros.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut segment = n;
        let mut arrived = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let s = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                if s > 0 {
                    segment = s as usize;
                }
            }
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                if ts.tv_sec >= 0 && (0..1_000_000_000).contains(&ts.tv_nsec) {
                    arrived = Some(
                        std::time::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = from_raw(&storage)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        Ok(Receipt {
            bytes: n,
            from,
            segment: segment.max(1),
            arrived,
        })
    }
}

/// Asks the kernel to stamp each datagram with the time it was queued on
/// the socket (`SO_TIMESTAMPNS`): [`try_recv_timed`] then tells how long
/// it waited there, so that the node can shed what waited too long (a
/// deep queue turns overload into seconds of delay, and late control
/// messages into stale ones; see docs/dht.md, *Storms*).
pub fn enable_arrival_times(socket: &UdpSocket) -> io::Result<()> {
    set_int_option(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        1,
    )
}

/// Like [`try_recv_gro`], with the arrival time where the socket has
/// [`enable_arrival_times`].
pub fn try_recv_timed(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Receipt> {
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::READABLE, || recvmsg_gro(fd, buf))
}

/// Receives without waiting on a socket with [`enable_gro`]: `(bytes,
/// source, segment size)`; the buffer holds `bytes / segment` datagrams of
/// `segment` bytes, the last one possibly shorter (split them with
/// `buf[..bytes].chunks(segment)`). `WouldBlock` when nothing is waiting.
/// `buf` should hold 64 KiB.
pub fn try_recv_gro(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    try_recv_timed(socket, buf).map(|r| (r.bytes, r.from, r.segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket made a moment ago sends at once: tokio's own
    /// `try_send_to` refuses until the reactor has run (the first
    /// handshake initiation to a new peer's proxy was lost that way).
    #[tokio::test(flavor = "current_thread")]
    async fn a_fresh_socket_sends_now() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("sink");
        let to = sink.local_addr().expect("sink address");
        let fresh = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("non-blocking");
            UdpSocket::from_std(s).expect("tokio socket")
        };
        let tokio_way = fresh().try_send_to(b"tokio", to);
        assert_eq!(
            tokio_way.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "tokio now sends on a fresh socket: send_now may be unneeded"
        );
        send_now(&fresh(), b"now", to).expect("send_now on a fresh socket");
        let mut buf = [0u8; 8];
        let (n, _) = sink.recv_from(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"now");
    }

    /// A datagram left in the queue is handed out with the time it
    /// arrived: how long it waited there shows.
    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_that_waited_in_the_queue_says_how_long() {
        let node = bind_dual_stack(0).expect("bind");
        enable_arrival_times(&node).expect("arrival times");
        // The kernel turns its receive clock on a moment later (deferred
        // work): until then it stamps datagrams as they are read.
        std::thread::sleep(Duration::from_millis(100));
        let port = node.local_addr().expect("local").port();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(b"late", ("127.0.0.1", port)).expect("send");
        std::thread::sleep(Duration::from_millis(300));
        node.readable().await.expect("readable");
        let mut buf = vec![0u8; 65536];
        let r = try_recv_timed(&node, &mut buf).expect("received");
        assert_eq!(&buf[..r.bytes], b"late");
        let waited = r.waited(kernel_wall_clock()).expect("an arrival time");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
    }

    #[test]
    fn a_wait_past_belief_is_a_clock_step_not_a_wait() {
        let arrived = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = Receipt {
            bytes: 1,
            from: "127.0.0.1:1".parse().expect("addr"),
            segment: 1,
            arrived: Some(arrived),
        };
        assert_eq!(
            r.waited(arrived + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(r.waited(arrived + Duration::from_secs(120)), None);
        assert_eq!(
            r.waited(arrived - Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_kernels_wall_clock_is_the_systems_where_nothing_shifts_it() {
        let a = std::time::SystemTime::now();
        let k = kernel_wall_clock();
        let b = std::time::SystemTime::now();
        assert!(k >= a - Duration::from_millis(1) && k <= b + Duration::from_millis(1));
    }

    #[test]
    fn the_kernels_udp_counters_are_read_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 23262 0 0 23418 7 5732\n\
            UdpLite: InDatagrams\nUdpLite: 0\n";
        let c = parse_snmp_udp(text).expect("parsed");
        assert_eq!(c.get("SndbufErrors"), Some(&5732));
        assert_eq!(c.get("RcvbufErrors"), Some(&7));
        assert_eq!(c.get("OutDatagrams"), Some(&23418));
        assert!(!c.contains_key("Forwarding"), "only the Udp: lines");
    }

    #[test]
    fn bad_udp_counter_lines_say_what_is_wrong() {
        assert_eq!(parse_snmp_udp("Ip: a\nIp: 1\n"), Err(SnmpError::NoUdpLines));
        assert_eq!(
            parse_snmp_udp("Udp: A B\nUdp: 1\n"),
            Err(SnmpError::Mismatch {
                names: 2,
                values: 1
            })
        );
        let e = parse_snmp_udp("Udp: A\nUdp: x\n").expect_err("not a number");
        assert_eq!(
            e.to_string(),
            "/proc/net/snmp: `Udp:` value \"x\" of A is not a number"
        );
    }

    #[tokio::test]
    async fn the_node_socket_has_room_for_bursts() {
        let socket = bind_dual_stack(0).unwrap();
        let sock = socket2::SockRef::from(&socket);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            // The kernel reports twice what was set (its own bookkeeping).
            assert!(sock.send_buffer_size().unwrap() >= SOCKET_BUFFER);
            assert!(sock.recv_buffer_size().unwrap() >= SOCKET_BUFFER);
        }
    }

    /// The node's dual-stack socket talks to IPv4 and IPv6 peers, sees IPv4
    /// peers at their plain IPv4 address, and segments runs to both.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dual_stack_socket_speaks_both_families() {
        let node = bind_dual_stack(0).expect("bind");
        let port = node.local_addr().expect("local").port();
        enable_gro(&node).expect("GRO");
        let gso = GsoSender::new(&node);
        for peer_ip in ["127.0.0.1", "::1"] {
            let peer = std::net::UdpSocket::bind((peer_ip, 0)).expect("peer");
            peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
            let peer_addr = peer.local_addr().expect("peer address");
            let node_addr: SocketAddr = (peer_addr.ip(), port).into();
            peer.send_to(b"hello", node_addr).expect("peer sends");
            node.readable().await.expect("readable");
            let mut buf = vec![0u8; 65536];
            let (n, from, _) = try_recv_gro(&node, &mut buf).expect("received");
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from, peer_addr, "source address as the peer has it");
            send_now(&node, b"one", from).expect("send_now");
            let mut got = [0u8; 128];
            let (n, _) = peer.recv_from(&mut got).expect("one");
            assert_eq!(&got[..n], b"one");
            gso.try_send_segments(&node, &[7u8; 300], 100, from)
                .expect("segments");
            for _ in 0..3 {
                let (n, _) = peer.recv_from(&mut got).expect("a segment");
                assert_eq!(n, 100, "one datagram per segment");
            }
        }
    }

    fn int_option(socket: &UdpSocket, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        get_int_option(socket.as_raw_fd(), level, name).expect("getsockopt")
    }

    /// Like kernel WireGuard: IPv4 datagrams leave without DF, so a router
    /// before a smaller link fragments them instead of dropping them.
    #[tokio::test(flavor = "current_thread")]
    async fn the_node_socket_never_sets_df() {
        let node = bind_dual_stack(0).expect("bind");
        assert_eq!(
            int_option(&node, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_DONT
        );
    }

    /// A destination whose path MTU is below the datagrams (here: the
    /// socket's IPv6 MTU cut to 1280) gets them one by one, fragmented and
    /// whole at the other end, while runs to others stay segmented.
    #[tokio::test(flavor = "current_thread")]
    async fn a_path_smaller_than_the_datagrams_gets_them_one_by_one() {
        let node = bind_dual_stack(0).expect("bind");
        set_int_option(node.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU, 1280)
            .expect("IPV6_MTU");
        let gso = GsoSender::new(&node);
        let small = std::net::UdpSocket::bind("[::1]:0").expect("peer");
        small
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let to = small.local_addr().expect("address");
        let run: Vec<u8> = (0..3 * 1400).map(|i| (i % 251) as u8).collect();
        // The daemon's path, then the data plane's, twice each.
        for _ in 0..2 {
            gso.try_send_segments(&node, &run, 1400, to)
                .expect("sent one by one");
            gso.send(&node, &run, &[1400, 1400, 1400], to).await;
        }
        let mut got = [0u8; 2048];
        for i in 0..12 {
            let (n, _) = small.recv_from(&mut got).expect("a datagram");
            let k = i % 3;
            assert_eq!(&got[..n], &run[k * 1400..(k + 1) * 1400], "datagram {i}");
        }
        assert!(gso.too_big_runs() >= 1, "the kernel refused no run");
        assert!(
            !gso.segments_to(to, 1400),
            "still segmenting to the small path"
        );
        let other: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert!(
            gso.segments_to(other, 1400),
            "segmentation given up for every destination"
        );
    }

    #[test]
    fn mapped_addresses_are_plain_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:62096".parse().expect("mapped");
        assert_eq!(canonical(mapped), "198.51.100.7:62096".parse().expect("v4"));
        let v6: SocketAddr = "[2001:db8::1]:62096".parse().expect("v6");
        assert_eq!(canonical(v6), v6);
    }
}
