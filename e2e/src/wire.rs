//! The delay wire: a userspace stand-in for `netem` on kernels without it
//! (`CONFIG_NET_SCH_NETEM` unset).
//!
//! A wire is two TAP devices (`IFF_TAP | IFF_NO_PI`), each opened inside its
//! own network namespace, and two threads of the lab's process that copy
//! Ethernet frames between them, one thread per direction. Each frame is held
//! for the configured delay and a configured fraction is dropped; frames
//! leave in the order they came (one FIFO per direction, one delay). ARP
//! frames alone go through at once and are never lost: the lab's internet is
//! one flat Ethernet, where a router resolves every host it talks to, while a
//! real router resolves only its upstream gateway, once. The
//! threads sleep in `ppoll` until a frame arrives or the oldest held frame
//! is due: an idle wire costs nothing.
//!
//! The TAP devices are not persistent: they vanish when the wire (the last
//! holder of their file descriptors) is dropped, or when the process ends,
//! however it ends. Nothing outlives the lab.

use anyhow::{Context, Result, bail};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Frames held per direction at most; beyond, frames are dropped (as a
/// qdisc's limit would; netem's default is 1,000 packets).
const QUEUE_LIMIT: usize = 20_000;
/// Frames read in one go before the due ones are written.
const READ_BATCH: usize = 256;
/// Largest frame a TAP device hands out (64 KiB, GSO off or on).
const SCRATCH: usize = 65_536;

/// What a wire does to each frame, in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    /// Time each frame is held.
    pub delay: Duration,
    /// Fraction of frames dropped, 0.0 to 1.0.
    pub loss: f64,
}

/// Frames that went through a wire, and frames it dropped (loss or a full
/// queue), both directions together.
#[derive(Debug, Default)]
pub struct Counters {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running wire. Dropping it stops its threads and removes its TAP devices.
pub struct Wire {
    /// Write end of the stop pipe: closing it wakes both threads, which exit.
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

/// Runs `f` on a thread of its own inside the network namespace `netns` (a
/// name under `/run/netns`, as `ip netns add` makes) and returns what it
/// returns. setns changes only the calling thread's namespace, and that
/// thread ends with `f`; descriptors it opens keep their namespace and work
/// from any thread.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("no network namespace {netns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            // SAFETY: `ns` is an open namespace file; setns affects this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in namespace {netns} panicked"))?
    })
}

/// Opens a TAP device named `name` inside the network namespace `netns`.
/// The device exists while the returned descriptor is open.
pub fn open_tap_in(netns: &str, name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is empty or too long");
    }
    in_netns(netns, || open_tap(name))
}

fn open_tap(name: &str) -> Result<OwnedFd> {
    // SAFETY: plain open(2) of a constant, NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("cannot open /dev/net/tun");
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back) one ifreq, which `ifr` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(fd)
}

impl Wire {
    /// Starts copying frames between two open TAP devices, shaped by `shape`
    /// in each direction.
    pub fn start(a: OwnedFd, b: OwnedFd, shape: Shape) -> Result<Wire> {
        if !(0.0..=1.0).contains(&shape.loss) {
            bail!("loss {} is not a fraction", shape.loss);
        }
        let mut pipe = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array on success.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error()).context("pipe2");
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (stop_rx, stop_tx) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let a = Arc::new(a);
        let b = Arc::new(b);
        let stop_rx = Arc::new(stop_rx);
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let stop = stop_rx.clone();
            let counters = counters.clone();
            let seed = seed(i as u64);
            let t = std::thread::Builder::new()
                .name(format!("wire-{i}"))
                .spawn(move || pump(&from, &to, &stop, shape, seed, &counters))
                .context("cannot start a wire thread")?;
            threads.push(t);
        }
        Ok(Wire {
            stop: Some(stop_tx),
            threads,
            counters,
        })
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn seed(salt: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// xorshift64*: a uniform number in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

fn wait(from: RawFd, stop: RawFd, timeout: Option<Duration>) -> io::Result<(i16, i16)> {
    let mut fds = [
        libc::pollfd {
            fd: from,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` holds two valid pollfd; `tsp` is null or points at `ts`.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((0, 0));
        }
        return Err(e);
    }
    Ok((fds[0].revents, fds[1].revents))
}

/// One direction: frames read from `from` are written to `to` `shape.delay`
/// later, in order, less the lost ones, until the stop pipe closes or a
/// device goes away.
fn pump(from: &OwnedFd, to: &OwnedFd, stop: &OwnedFd, shape: Shape, mut rng: u64, c: &Counters) {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    loop {
        let timeout = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()));
        let Ok((ready, stopped)) = wait(from.as_raw_fd(), stop.as_raw_fd(), timeout) else {
            return;
        };
        if stopped != 0 || ready & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return;
        }
        if ready & libc::POLLIN != 0 {
            let now = Instant::now();
            for _ in 0..READ_BATCH {
                // SAFETY: `scratch` is a writable buffer of its length.
                let n = unsafe {
                    libc::read(from.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len())
                };
                if n < 0 {
                    match io::Error::last_os_error().kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return,
                    }
                }
                if n == 0 {
                    return;
                }
                let frame = &scratch[..n as usize];
                if is_arp(frame) {
                    // Address resolution is the link's own business, not
                    // the path's: a router resolves its upstream once, not
                    // every host it talks to across the internet. ARP goes
                    // through at once, never lost (and may pass held frames).
                    // SAFETY: `frame` is a readable buffer of its length.
                    let w =
                        unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                    let counter = if w < 0 { &c.dropped } else { &c.passed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if (shape.loss > 0.0 && uniform(&mut rng) < shape.loss) || held.len() >= QUEUE_LIMIT
                {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut held_frame = spare.pop().unwrap_or_default();
                held_frame.clear();
                held_frame.extend_from_slice(frame);
                held.push_back((now + shape.delay, held_frame));
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, frame)) = held.pop_front() else {
                break;
            };
            // A write that fails (device down, full backlog) loses the
            // frame, as a full link would.
            // SAFETY: `frame` is a readable buffer of its length.
            let n = unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n < 0 {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                c.passed.fetch_add(1, Ordering::Relaxed);
            }
            if spare.len() < 1024 {
                spare.push(frame);
            }
        }
    }
}

/// An Ethernet frame carrying ARP (EtherType 0x0806, untagged).
fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_spread() {
        let mut s = seed(7);
        let v: Vec<f64> = (0..10_000).map(|_| uniform(&mut s)).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let below = v.iter().filter(|x| **x < 0.25).count();
        assert!((2_000..3_000).contains(&below), "{below}");
    }

    #[test]
    fn arp_is_told_apart() {
        let mut f = [0u8; 42];
        f[12] = 0x08;
        f[13] = 0x06;
        assert!(is_arp(&f));
        f[13] = 0x00;
        assert!(!is_arp(&f));
        assert!(!is_arp(&f[..10]));
    }
}
