//! A TCP transfer between two lab namespaces whose every byte is checked:
//! the sender writes a deterministic pseudo-random stream, the receiver
//! generates the same stream and compares as it reads, so any length of
//! data (a gibibyte) is verified in constant memory, and a difference is
//! reported at its offset.
//!
//! Owns nothing beyond one transfer's two sockets and threads; never leaves
//! a thread blocked (every socket operation has a timeout).

use crate::wire::in_netns;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The stream's bytes: xorshift32, one byte per step.
struct Pattern(u32);

impl Pattern {
    fn new() -> Pattern {
        Pattern(0x9e37_79b9)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            *b = self.0 as u8;
        }
    }
}

/// What a transfer achieved.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e6
    }
}

/// Sends `bytes` over TCP from namespace `from` to `to_ip` in namespace
/// `to`, checking every byte on arrival; fails when a byte differs, the
/// stream ends short, nothing moves for 5 s or the whole takes longer than
/// `deadline`.
pub fn tcp_intact(
    from: &str,
    to: &str,
    to_ip: IpAddr,
    bytes: u64,
    deadline: Duration,
) -> Result<Transfer> {
    let listener = in_netns(to, || Ok(TcpListener::bind(SocketAddr::new(to_ip, 0))?))
        .with_context(|| format!("listen on {to_ip}"))?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || receive_checked(listener, bytes, deadline));
    let start = Instant::now();
    let sent = in_netns(from, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut pattern = Pattern::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            s.write_all(&buf[..n])?;
            left -= n as u64;
            if start.elapsed() > deadline {
                bail!("sending took longer than {deadline:?}");
            }
        }
        Ok(s)
    });
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            // Unblock the receiver's accept.
            let _ = in_netns(from, || Ok(TcpStream::connect(addr)?));
            let _ = receiver.join();
            return Err(e.context(format!("send to {addr}")));
        }
    };
    drop(sent);
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("TCP to {addr}: {got} of {bytes} bytes arrived");
    }
    Ok(Transfer { bytes, secs })
}

/// Accepts one connection and reads it to its end, comparing with the
/// pattern; returns the bytes read.
fn receive_checked(listener: TcpListener, bytes: u64, deadline: Duration) -> Result<u64> {
    let (mut s, _) = listener.accept().context("accept")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut pattern = Pattern::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut want = vec![0u8; 1 << 16];
    let mut got: u64 = 0;
    let start = Instant::now();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => n,
            Err(e) => bail!("receive (after {got} bytes): {e}"),
        };
        pattern.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            bail!("byte {} of the stream changed", got + i as u64);
        }
        got += n as u64;
        if got > bytes {
            bail!("more than the {bytes} bytes sent arrived");
        }
        if start.elapsed() > deadline {
            bail!("only {got} bytes arrived in {deadline:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new().fill(&mut whole);
        let mut cut = vec![0u8; 1000];
        let mut p = Pattern::new();
        p.fill(&mut cut[..7]);
        p.fill(&mut cut[7..500]);
        p.fill(&mut cut[500..]);
        assert_eq!(whole, cut);
        assert!(whole.iter().any(|b| *b != whole[0]), "not constant");
    }
}
