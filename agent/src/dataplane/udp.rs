//! Sending many WireGuard datagrams to one address in one system call:
//! UDP generic segmentation offload (`UDP_SEGMENT`), with a fallback to one
//! `send_to` per datagram where the kernel refuses it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::Interest;
use tokio::net::UdpSocket;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Kernel limit on segments per send (`UDP_MAX_SEGMENTS`, 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Stay below the 64 KiB IP datagram limit.
const MAX_GSO_BYTES: usize = 65_000;

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

/// Room for one `cmsghdr` carrying a u16, 8-byte aligned.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// One `sendmsg` of `buf` cut by the kernel into datagrams of `segment`
/// bytes (the last may be shorter).
fn sendmsg_gso(fd: RawFd, buf: &[u8], segment: u16, addr: &RawAddr) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = Control([0; 64]);
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
    enabled: AtomicBool,
}

impl GsoSender {
    pub fn new(socket: &UdpSocket) -> GsoSender {
        GsoSender {
            socket_v6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            enabled: AtomicBool::new(true),
        }
    }

    /// Sends the datagrams laid end to end in `buf`, whose lengths are
    /// `lens`, to `addr`. Waits when the socket buffer is full.
    pub async fn send(&self, socket: &UdpSocket, buf: &[u8], lens: &[usize], addr: SocketAddr) {
        if lens.len() > 1 && self.enabled.load(Ordering::Relaxed) {
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
                    if j - i > 1 && no_offload(&e) {
                        // Send them one by one; if that works, the kernel
                        // (or the route) cannot segment: stop trying.
                        let mut o = off;
                        let mut sent = 0;
                        for len in &lens[i..j] {
                            match send_one(socket, &buf[o..o + len], addr).await {
                                Ok(()) => sent += 1,
                                Err(e) => tracing::debug!(%addr, "send: {e}"),
                            }
                            o += len;
                        }
                        if sent > 0 {
                            tracing::info!(
                                "UDP segmentation offload unavailable ({e}), sending one by one"
                            );
                            self.enabled.store(false, Ordering::Relaxed);
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
            Ok(seg) if per_call >= 2 && self.enabled.load(Ordering::Relaxed) => seg,
            _ => return send_each(socket, buf, segment, addr),
        };
        let raw = RawAddr::new(addr, self.socket_v6);
        let fd = socket.as_raw_fd();
        for group in buf.chunks(per_call * segment) {
            if group.len() <= segment {
                send_now(socket, group, addr)?;
                continue;
            }
            match sendmsg_gso(fd, group, seg, &raw) {
                Ok(_) => {}
                Err(e) if no_offload(&e) => {
                    send_each(socket, group, segment, addr)?;
                    tracing::info!(
                        "UDP segmentation offload unavailable ({e}), sending one by one"
                    );
                    self.enabled.store(false, Ordering::Relaxed);
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

/// The kernel (or the route) cannot segment: send one by one.
fn no_offload(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
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

/// Binds the node's UDP socket on `port`: one dual-stack socket (`[::]`,
/// IPv4 arriving as IPv4-mapped addresses) where the host has IPv6, else
/// `0.0.0.0`. Non-blocking, for tokio.
pub fn bind_dual_stack(port: u16) -> io::Result<UdpSocket> {
    let v6 = || -> io::Result<std::net::UdpSocket> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s.into())
    };
    let std_socket = match v6() {
        Ok(s) => s,
        // No IPv6 on this host (disabled, or no such family): IPv4 only.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
            ) =>
        {
            tracing::info!(error = %e, "no IPv6 socket on this host: IPv4 only");
            std::net::UdpSocket::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))?
        }
        Err(e) => return Err(e),
    };
    std_socket.set_nonblocking(true)?;
    UdpSocket::from_std(std_socket)
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
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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

fn recvmsg_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 64]);
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
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let s = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                if s > 0 {
                    segment = s as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = from_raw(&storage)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        Ok((n, from, segment.max(1)))
    }
}

/// Receives without waiting on a socket with [`enable_gro`]: `(bytes,
/// source, segment size)`; the buffer holds `bytes / segment` datagrams of
/// `segment` bytes, the last one possibly shorter (split them with
/// `buf[..bytes].chunks(segment)`). `WouldBlock` when nothing is waiting.
/// `buf` should hold 64 KiB.
pub fn try_recv_gro(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::READABLE, || recvmsg_gro(fd, buf))
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

    #[test]
    fn mapped_addresses_are_plain_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:62096".parse().expect("mapped");
        assert_eq!(canonical(mapped), "198.51.100.7:62096".parse().expect("v4"));
        let v6: SocketAddr = "[2001:db8::1]:62096".parse().expect("v6");
        assert_eq!(canonical(v6), v6);
    }
}
