//! The relay fast path's shell: more sockets on the node's port, each read
//! by a thread of its own, forwarding channel data (relay-data) in runs
//! without the node core's event loop.
//!
//! Owns: the fast-path sockets (joined to the node's socket with
//! `SO_REUSEPORT`), their threads, and the kernel's steering program for
//! the group: a classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`) that sends
//! every datagram whose first byte is not `0xFE` (relay-data) to the node's
//! own socket, index 0 of the group, and relay-data to fast-path socket
//! `1 + (low 32 bits of its channel id) mod n`. So one channel (both
//! directions of one relayed pair) is always read by one thread: no
//! reordering within a flow; different pairs spread over the threads by
//! their random channel ids. Every socket of the group has the same port,
//! so a reply leaves from the port the peer sent to, whichever thread
//! sends it.
//!
//! Promises: each thread only executes what [`FastPath`] (the core's
//! policy, unit-tested there) decides: forward a run in one GSO send, drop
//! it (counted), or hand what is not relay-data to the node core (bounded
//! queue of [`HAND_OVER_QUEUE`]; when full, dropped and counted as
//! `fast-path-hand-over-full`). The threads use the newest channel table
//! the core published ([`FastPathHandle::publish`]) and stop when the
//! handle is dropped. Where the kernel refuses the steering program or the
//! group, the node runs with its one socket as before (logged).
//!
//! Never: decides anything about a channel, opens or closes one, or looks
//! past the 9-byte header; binds a port another socket already holds (the
//! port is proved free by a plain bind first, so a second daemon on the
//! same port still fails with "address in use" rather than joining the
//! group).

use super::udp;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use wirehub_core::relay::SharedLimiter;
use wirehub_core::relay::channel::{ChannelTable, RELAY_DATA};
use wirehub_core::relay::fastpath::{FastPath, FastWire};

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; x86 and arm).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Fast-path sockets (threads) at most.
pub const MAX_THREADS: usize = 8;
/// Datagrams that are not relay-data, waiting for the node core.
pub const HAND_OVER_QUEUE: usize = 256;
/// Reads a thread does in a row before it looks at its other inputs.
const BATCH: usize = 64;
/// Largest datagram read (a GRO run).
const RECV_BUFFER: usize = 65536;

/// How many fast-path threads a relaying node runs: `WH_RELAY_THREADS`
/// where set (0: none, the node's one socket does everything; at most
/// [`MAX_THREADS`]), else one per CPU, at most 4. A node that relays for
/// nobody (`relay-limit 0`) runs none.
pub fn threads_wanted(relaying: bool, env: Option<&str>) -> Result<usize, ThreadsError> {
    if !relaying {
        return Ok(0);
    }
    match env {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= MAX_THREADS => Ok(n),
            _ => Err(ThreadsError(v.to_string())),
        },
        None => Ok(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4)),
    }
}

/// `WH_RELAY_THREADS` is not a number of threads.
#[derive(Debug, thiserror::Error)]
#[error("WH_RELAY_THREADS={0:?}: expected a number of relay threads from 0 to {MAX_THREADS}")]
pub struct ThreadsError(String);

/// The node's socket and, where the kernel lets us, `n` fast-path sockets
/// on the same port behind the steering program. With `n` = 0, or when the
/// group cannot be made, the node's socket alone (as
/// [`udp::bind_dual_stack`]). Fails only as that would (the port is taken).
pub fn bind(port: u16, n: usize) -> io::Result<(std::net::UdpSocket, Vec<std::net::UdpSocket>)> {
    let plain = udp::bind_node_socket(port, None)?;
    if n == 0 {
        return Ok((plain, Vec::new()));
    }
    // The plain bind proved the port free (and chose it, for port 0).
    let local = plain.local_addr()?;
    drop(plain);
    match group(local.port(), local.is_ipv6(), n) {
        Ok(g) => Ok(g),
        Err(e) => {
            tracing::warn!(error = %e, port = local.port(), "no relay fast path: one socket");
            Ok((udp::bind_node_socket(local.port(), None)?, Vec::new()))
        }
    }
}

fn group(
    port: u16,
    v6: bool,
    n: usize,
) -> io::Result<(std::net::UdpSocket, Vec<std::net::UdpSocket>)> {
    let main = udp::bind_node_socket(port, Some(v6))?;
    let port = main.local_addr()?.port();
    // Steering first: until the fast sockets join, every datagram still
    // lands on the node's socket (an index past the group falls back to
    // the kernel's hash over the sockets there are).
    attach_steering(&main, n)?;
    let fast = (0..n)
        .map(|_| udp::bind_node_socket(port, Some(v6)))
        .collect::<io::Result<Vec<_>>>()?;
    Ok((main, fast))
}

/// The steering program for a group of the node's socket and `n` fast-path
/// sockets (see the module's contract). A datagram too short for a load
/// makes the program return 0: the node's socket.
pub fn steering_program(n: usize) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let n = n.clamp(1, MAX_THREADS) as u32;
    vec![
        // A = payload[0]
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        // relay-data? skip the next instruction
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            1,
            0,
            u32::from(RELAY_DATA),
        ),
        // anything else: the node's socket
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        // A = payload[5..9], the channel id's low 32 bits
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 5),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, n),
        op(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K, 0, 0, 1),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
    ]
}

fn attach_steering(socket: &std::net::UdpSocket, n: usize) -> io::Result<()> {
    let mut program = steering_program(n);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt with a pointer to a live sock_fprog and its size;
    // the kernel copies the program during the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams a fast-path socket received that are the node core's.
#[derive(Debug)]
pub struct HandOver {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
    pub segment: usize,
    /// How long they waited in the socket's queue, where known.
    pub waited: Option<Duration>,
}

/// The running fast path: dropping it stops the threads.
pub struct FastPathHandle {
    tables: watch::Sender<Arc<ChannelTable>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FastPathHandle {
    /// Starts one thread per socket, forwarding with `limiter` from
    /// `table`; what is not relay-data goes to `handed`.
    pub fn start(
        sockets: Vec<std::net::UdpSocket>,
        limiter: SharedLimiter,
        table: ChannelTable,
        handed: mpsc::Sender<HandOver>,
    ) -> io::Result<FastPathHandle> {
        let (tables, rx) = watch::channel(Arc::new(table));
        let mut threads = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let fast = FastPath::new(rx.borrow().clone(), limiter.clone());
            let (rx, handed, limiter) = (rx.clone(), handed.clone(), limiter.clone());
            let thread = std::thread::Builder::new()
                .name(format!("wh-relay-{i}"))
                .spawn(move || {
                    if let Err(e) = serve(socket, fast, rx, handed, limiter) {
                        tracing::warn!(error = %e, thread = i, "relay fast path thread ended");
                    }
                })?;
            threads.push(thread);
        }
        Ok(FastPathHandle { tables, threads })
    }

    /// The version of the table the threads use.
    pub fn published(&self) -> u64 {
        self.tables.borrow().version()
    }

    /// Hands the threads a newer table.
    pub fn publish(&self, table: ChannelTable) {
        self.tables.send_replace(Arc::new(table));
    }

    /// Threads running.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// One thread: reads its socket, forwards, hands over; ends when the
/// handle is dropped.
fn serve(
    socket: std::net::UdpSocket,
    mut fast: FastPath,
    mut tables: watch::Receiver<Arc<ChannelTable>>,
    handed: mpsc::Sender<HandOver>,
    limiter: SharedLimiter,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let socket = UdpSocket::from_std(socket)?;
        if let Err(e) = udp::enable_gro(&socket) {
            tracing::debug!(error = %e, "no UDP GRO on a relay socket");
        }
        if let Err(e) = udp::enable_arrival_times(&socket) {
            tracing::debug!(error = %e, "no arrival times on a relay socket");
        }
        let gso = udp::GsoSender::new(&socket);
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            tokio::select! {
                r = socket.readable() => {
                    r?;
                    let mut wire = ThreadWire {
                        socket: &socket,
                        gso: &gso,
                        handed: &handed,
                        limiter: &limiter,
                        waited: None,
                    };
                    drain(&socket, &fast, &mut buf, &mut wire);
                }
                changed = tables.changed() => match changed {
                    Ok(()) => {
                        let table = tables.borrow_and_update().clone();
                        fast.set_table(table);
                    }
                    Err(_) => return Ok(()),
                },
            }
        }
    })
}

fn drain(socket: &UdpSocket, fast: &FastPath, buf: &mut [u8], wire: &mut ThreadWire<'_>) {
    let now = Instant::now();
    for _ in 0..BATCH {
        match udp::try_recv_timed(socket, buf) {
            Ok(r) => {
                wire.waited = r.waited(udp::kernel_wall_clock());
                fast.on_datagrams(r.from, &mut buf[..r.bytes], r.segment, now, wire);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::debug!(error = %e, "relay recv failed");
                break;
            }
        }
    }
}

struct ThreadWire<'a> {
    socket: &'a UdpSocket,
    gso: &'a udp::GsoSender,
    handed: &'a mpsc::Sender<HandOver>,
    limiter: &'a SharedLimiter,
    waited: Option<Duration>,
}

impl FastWire for ThreadWire<'_> {
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize) {
        if let Err(e) = self
            .gso
            .try_send_segments(self.socket, datagrams, segment, to)
        {
            tracing::debug!(error = %e, %to, "relay send failed");
        }
    }

    fn hand_over(&mut self, from: SocketAddr, datagrams: &[u8], segment: usize) {
        let h = HandOver {
            from,
            bytes: datagrams.to_vec(),
            segment,
            waited: self.waited,
        };
        if self.handed.try_send(h).is_err() {
            let mut l = self.limiter.lock();
            let n = datagrams.len().div_ceil(segment.max(1)) as u64;
            *l.counters
                .fast_path_drops
                .entry("fast-path-hand-over-full")
                .or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn relay_data(channel: u64) -> Vec<u8> {
        let mut d = vec![RELAY_DATA];
        d.extend_from_slice(&channel.to_be_bytes());
        d.extend_from_slice(&[4, 0, 0, 0, 1, 2, 3]);
        d
    }

    /// Which sockets of `group` got a datagram within a moment.
    fn readers(group: &[std::net::UdpSocket]) -> Vec<usize> {
        std::thread::sleep(Duration::from_millis(50));
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for (i, s) in group.iter().enumerate() {
            while s.recv_from(&mut buf).is_ok() {
                got.push(i);
            }
        }
        got
    }

    #[test]
    fn the_kernel_steers_relay_data_by_channel_and_the_rest_to_the_nodes_socket() {
        let (main, fast) = match group(0, false, 3) {
            Ok(g) => g,
            Err(e) => {
                // A kernel without reuseport programs: the daemon then runs
                // with one socket; nothing to check here.
                eprintln!("skipped: {e}");
                return;
            }
        };
        let port = main.local_addr().unwrap().port();
        let mut all = vec![main];
        all.extend(fast);
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let sender = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // A control message, a WireGuard datagram, a runt relay-data.
        for d in [
            &[1u8, 2, 3][..],
            &[4, 0, 0, 0, 9, 9][..],
            &[RELAY_DATA, 1][..],
        ] {
            sender.send_to(d, to).unwrap();
        }
        assert_eq!(readers(&all), vec![0, 0, 0], "all for the node's socket");
        // Relay-data: socket 1 + (channel mod 3), whatever the sender.
        for channel in [3u64, 4, 5, 0x1_0000_0004] {
            sender.send_to(&relay_data(channel), to).unwrap();
            let other = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            other.send_to(&relay_data(channel), to).unwrap();
            let want = 1 + (channel as u32 % 3) as usize;
            assert_eq!(readers(&all), vec![want, want], "channel {channel:#x}");
        }
    }

    #[test]
    fn a_taken_port_is_refused_rather_than_joined() {
        let (main, fast) = bind(0, 2).unwrap();
        let port = main.local_addr().unwrap().port();
        assert!(bind(port, 2).is_err(), "a second node on the port fails");
        drop((main, fast));
    }

    #[test]
    fn the_number_of_threads_comes_from_the_environment_or_the_cpus() {
        assert_eq!(threads_wanted(false, Some("3")).unwrap(), 0, "no relaying");
        assert_eq!(threads_wanted(true, Some("0")).unwrap(), 0);
        assert_eq!(threads_wanted(true, Some(" 2 ")).unwrap(), 2);
        let cpus = threads_wanted(true, None).unwrap();
        assert!((1..=4).contains(&cpus));
        let e = threads_wanted(true, Some("many")).unwrap_err().to_string();
        assert!(e.contains("WH_RELAY_THREADS=\"many\""), "{e}");
        assert!(threads_wanted(true, Some("99")).is_err());
    }
}
