//! Our own TUN device: `/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`
//! (and `IFF_MULTI_QUEUE` when several queues are asked for), non-blocking
//! file descriptors that tokio polls.
//!
//! The interface lives as long as one of its queues is open (it is not made
//! persistent), so dropping the last [`TunQueue`] removes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a TUN device.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    /// Every packet read or written starts with a `virtio_net_hdr`, and the
    /// kernel may hand us TSO packets (see `offload`).
    vnet_hdr: bool,
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl TunQueue {
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one IP packet; `WouldBlock` when there is none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one IP packet into the kernel.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn open_queue(name: &str, multi_queue: bool, offload: bool) -> io::Result<TunQueue> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1 to 15 bytes)"),
        ));
    }
    // SAFETY: the path is a valid C string; the flags are plain constants.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN
            | IFF_NO_PI
            | if multi_queue { IFF_MULTI_QUEUE } else { 0 }
            | if offload { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
    // mirrors in size and layout.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if offload {
        let features = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes an unsigned int by value.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, features) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(TunQueue {
        fd,
        vnet_hdr: offload,
    })
}

/// Creates the TUN interface `name` with `queues` queues (at least one).
/// With `offload`, the queues carry `virtio_net_hdr`s and accept TSO
/// packets from the kernel; if the kernel refuses, the device is created
/// without (check [`TunQueue::vnet_hdr`]).
pub fn create(name: &str, queues: usize, offload: bool) -> io::Result<Vec<TunQueue>> {
    let queues = queues.max(1);
    let multi = queues > 1;
    if offload {
        match (0..queues)
            .map(|_| open_queue(name, multi, true))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(q) => return Ok(q),
            Err(e) => tracing::info!("TUN offloads unavailable ({e}), going without"),
        }
    }
    (0..queues)
        .map(|_| open_queue(name, multi, false))
        .collect()
}
