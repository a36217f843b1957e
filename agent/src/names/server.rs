//! The DNS responder's I/O: UDP and TCP on one socket address, answering
//! with [`dns::respond`] from the resolver currently in a watch channel.
//!
//! One task reads UDP; a second accepts TCP connections (each served by its
//! own task, a bounded number at once). Each query costs a rate-limiter
//! check before anything is parsed, so a flood from one source is dropped
//! cheaply and the others keep being answered. Dropping the [`DnsHandle`]
//! (or [`DnsHandle::stop`]) ends every task and closes the sockets.

use super::SharedResolver;
use super::dns::{self, DnsConfig, Kind, Transport, Verdict};
use super::limit::RateLimiter;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest UDP datagram read; longer ones arrive cut and do not parse.
const UDP_BUFFER: usize = 4096;
/// Largest query accepted over TCP (queries are small; answers may be large).
const TCP_MAX_QUERY: usize = 4096;

/// What the responder has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsCounters {
    /// Every message received (UDP datagrams and TCP messages).
    pub queries: u64,
    /// NOERROR answers (with records, or empty).
    pub answered: u64,
    /// NXDOMAIN answers (unknown names, and names that are not ours).
    pub nxdomain: u64,
    /// REFUSED answers (other opcodes, zone transfers, and names that are
    /// not ours under [`dns::Outside::Refused`]).
    pub refused: u64,
    /// FORMERR answers (not exactly one question).
    pub formerr: u64,
    /// Other error answers (BADVERS, SERVFAIL).
    pub other_errors: u64,
    /// Messages dropped because they are not DNS queries.
    pub dropped_malformed: u64,
    /// Messages dropped because their source sent too many.
    pub dropped_rate: u64,
    /// TCP connections closed at once because too many were open.
    pub tcp_rejected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    other_errors: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_rate: AtomicU64,
    tcp_rejected: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DnsCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCounters {
            queries: g(&self.queries),
            answered: g(&self.answered),
            nxdomain: g(&self.nxdomain),
            refused: g(&self.refused),
            formerr: g(&self.formerr),
            other_errors: g(&self.other_errors),
            dropped_malformed: g(&self.dropped_malformed),
            dropped_rate: g(&self.dropped_rate),
            tcp_rejected: g(&self.tcp_rejected),
        }
    }

    fn count(&self, kind: Kind) {
        bump(match kind {
            Kind::Answered => &self.answered,
            Kind::NxDomain => &self.nxdomain,
            Kind::Refused => &self.refused,
            Kind::FormErr => &self.formerr,
            Kind::OtherError => &self.other_errors,
        });
    }
}

/// A running responder. Dropping it stops it.
#[derive(Debug)]
pub struct DnsHandle {
    counters: Arc<Counters>,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsHandle {
    /// What the responder has done so far.
    pub fn counters(&self) -> DnsCounters {
        self.counters.snapshot()
    }

    /// The UDP address it answers on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP address, when TCP is served.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops the responder (as dropping it does).
    pub fn stop(self) {}

    /// Stops the responder and waits until its sockets are closed, so that
    /// the address can be bound again at once.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the responder on `bind` (UDP, and TCP on the same address) with
/// the default [`DnsConfig`]. Must be called inside a tokio runtime.
pub async fn serve_dns(
    bind: SocketAddr,
    names: watch::Receiver<SharedResolver>,
) -> io::Result<DnsHandle> {
    serve_dns_with(bind, names, DnsConfig::default()).await
}

/// Like [`serve_dns`], with a configuration. The sockets may be bound before
/// the address exists on an interface (`IP_FREEBIND`), so the responder can
/// start before the overlay interface has its address. A TCP port that
/// cannot be bound is logged and only UDP is served.
pub async fn serve_dns_with(
    bind: SocketAddr,
    names: watch::Receiver<SharedResolver>,
    cfg: DnsConfig,
) -> io::Result<DnsHandle> {
    let udp = bind_udp(bind)?;
    let udp_addr = udp.local_addr()?;
    let counters = Arc::new(Counters::default());
    let limiter = Arc::new(Mutex::new(RateLimiter::new(
        cfg.rate_per_source,
        cfg.burst_per_source,
        cfg.max_sources,
        Instant::now(),
    )));
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    let mut tcp_addr = None;
    if cfg.tcp {
        match bind_tcp(udp_addr) {
            Ok(listener) => {
                tcp_addr = listener.local_addr().ok();
                tasks.push(tokio::spawn(tcp_loop(
                    listener,
                    names.clone(),
                    Arc::clone(&cfg),
                    Arc::clone(&limiter),
                    Arc::clone(&counters),
                )));
            }
            Err(e) => tracing::warn!(addr = %udp_addr, error = %e, "DNS over TCP not served"),
        }
    }
    tasks.push(tokio::spawn(udp_loop(
        udp,
        names,
        cfg,
        limiter,
        Arc::clone(&counters),
    )));
    tracing::info!(addr = %udp_addr, tcp = tcp_addr.is_some(), "DNS responder up");
    Ok(DnsHandle {
        counters,
        udp_addr,
        tcp_addr,
        tasks,
    })
}

fn new_socket(bind: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(bind), ty, Some(proto))?;
    // Best effort: lets the responder bind the overlay address before the
    // interface has it.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = match bind {
        SocketAddr::V4(_) => s.set_freebind_v4(true),
        SocketAddr::V6(_) => s.set_freebind_v6(true),
    };
    s.set_nonblocking(true)?;
    Ok(s)
}

fn bind_udp(bind: SocketAddr) -> io::Result<UdpSocket> {
    let s = new_socket(bind, Type::DGRAM, Protocol::UDP)?;
    s.bind(&bind.into())?;
    UdpSocket::from_std(s.into())
}

fn bind_tcp(bind: SocketAddr) -> io::Result<TcpListener> {
    let s = new_socket(bind, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&bind.into())?;
    s.listen(64)?;
    TcpListener::from_std(s.into())
}

/// Checks the rate limit, then answers; `None` when nothing is to be sent.
fn handle(
    packet: &[u8],
    from: SocketAddr,
    names: &watch::Receiver<SharedResolver>,
    cfg: &DnsConfig,
    limiter: &Mutex<RateLimiter>,
    counters: &Counters,
    transport: Transport,
) -> Option<Vec<u8>> {
    bump(&counters.queries);
    let allowed = match limiter.lock() {
        Ok(mut l) => l.allow(from.ip(), Instant::now()),
        Err(poisoned) => poisoned.into_inner().allow(from.ip(), Instant::now()),
    };
    if !allowed {
        bump(&counters.dropped_rate);
        return None;
    }
    let resolver = names.borrow().clone();
    match dns::respond(packet, &*resolver, cfg, transport) {
        Verdict::Reply { bytes, kind } => {
            counters.count(kind);
            Some(bytes)
        }
        Verdict::Drop => {
            bump(&counters.dropped_malformed);
            None
        }
    }
}

async fn udp_loop(
    sock: UdpSocket,
    names: watch::Receiver<SharedResolver>,
    cfg: Arc<DnsConfig>,
    limiter: Arc<Mutex<RateLimiter>>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(reply) = handle(
            &buf[..n],
            from,
            &names,
            &cfg,
            &limiter,
            &counters,
            Transport::Udp,
        ) else {
            continue;
        };
        if let Err(e) = sock.send_to(&reply, from).await {
            tracing::debug!(to = %from, error = %e, "DNS send failed");
        }
    }
}

async fn tcp_loop(
    listener: TcpListener,
    names: watch::Receiver<SharedResolver>,
    cfg: Arc<DnsConfig>,
    limiter: Arc<Mutex<RateLimiter>>,
    counters: Arc<Counters>,
) {
    // Owned here, so aborting this task aborts every connection too.
    let mut conns = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::debug!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.len() >= cfg.max_tcp_connections {
            bump(&counters.tcp_rejected);
            drop(stream);
            continue;
        }
        conns.spawn(serve_connection(
            stream,
            from,
            names.clone(),
            Arc::clone(&cfg),
            Arc::clone(&limiter),
            Arc::clone(&counters),
        ));
    }
}

/// Serves one TCP connection: length-prefixed messages, until the client
/// closes, idles, errs, sends something that is not a query, or reaches the
/// per-connection limit.
async fn serve_connection(
    mut stream: TcpStream,
    from: SocketAddr,
    names: watch::Receiver<SharedResolver>,
    cfg: Arc<DnsConfig>,
    limiter: Arc<Mutex<RateLimiter>>,
    counters: Arc<Counters>,
) {
    let idle = cfg.tcp_idle;
    let mut buf = Vec::with_capacity(512);
    for _ in 0..cfg.max_queries_per_connection {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if !(12..=TCP_MAX_QUERY).contains(&n) {
            bump(&counters.queries);
            bump(&counters.dropped_malformed);
            return;
        }
        buf.resize(n, 0);
        match tokio::time::timeout(idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = handle(
            &buf,
            from,
            &names,
            &cfg,
            &limiter,
            &counters,
            Transport::Tcp,
        ) else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(idle, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests;
