//! `wh-attack`: a hostile peer for the lab's attack tests (e2e/tests/hostile.rs).
//! Never for use outside a test network: it floods, forges and spoofs.
//!
//! ```text
//! wh-attack garbage    TARGET KEYFILE RATE SECONDS   sealed-looking garbage under one key
//! wh-attack handshakes TARGET RATE SECONDS           WireGuard type-1 garbage (148 bytes)
//! wh-attack record     TARGET KEYFILE VICTIM SECONDS records of VICTIM's key, relayed by us
//! wh-attack pong       TARGET KEYFILE OBSERVED SECONDS  unsolicited pongs, forged `observed`
//! wh-attack reflect    TARGET KEYFILE SPOOF_IP       requests from a second address
//! wh-attack relay      TARGET KEYS VICTIM SIZE RATE SECONDS  WireGuard-sized datagrams for
//!                      VICTIM's key through the target as a relay, from KEYS fresh keys in turn
//! ```
//!
//! TARGET is IP:PORT; RATE datagrams per second (0: as fast as it can);
//! KEYFILE a private key file (`wh genkey`). Each prints one line of
//! `name=value` figures on stdout.

use anyhow::{Context, Result, anyhow, bail};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wirehub::keys::{PrivateKey, PublicKey};
use wirehub::proto::{Codec, CodecConfig, Message, NatKind, NodeRecord, Received};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("wh-attack: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("missing argument {i}; see the module doc"))
    };
    let target: SocketAddr = arg(1)?.parse().context("TARGET")?;
    match arg(0)? {
        "garbage" => garbage(target, &key(arg(2)?)?, arg(3)?.parse()?, arg(4)?.parse()?),
        "handshakes" => handshakes(target, arg(2)?.parse()?, arg(3)?.parse()?),
        "record" => record(target, key(arg(2)?)?, arg(3)?.parse()?, arg(4)?.parse()?),
        "pong" => pong(target, key(arg(2)?)?, arg(3)?.parse()?, arg(4)?.parse()?),
        "reflect" => reflect(target, key(arg(2)?)?, arg(3)?.parse()?),
        "relay" => relay(
            target,
            arg(2)?.parse()?,
            arg(3)?.parse().map_err(|e| anyhow!("VICTIM: {e:?}"))?,
            arg(4)?.parse()?,
            arg(5)?.parse()?,
            arg(6)?.parse()?,
        ),
        other => bail!("unknown attack {other:?}"),
    }
}

fn key(path: &str) -> Result<PrivateKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    text.trim()
        .parse()
        .map_err(|e| anyhow!("{path}: not a private key: {e:?}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn socket_towards(target: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    Ok(UdpSocket::bind(any)?)
}

/// Sends `make(i)` at `rate` a second (0: flat out) for `seconds`; returns
/// the datagrams and bytes sent.
fn flood(
    target: SocketAddr,
    rate: u64,
    seconds: f64,
    mut make: impl FnMut(u64) -> Vec<u8>,
) -> Result<(u64, u64)> {
    let sock = socket_towards(target)?;
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let (mut sent, mut bytes) = (0u64, 0u64);
    while start.elapsed() < end {
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let d = make(sent);
        if sock.send_to(&d, target).is_ok() {
            sent += 1;
            bytes += d.len() as u64;
        }
    }
    Ok((sent, bytes))
}

/// A cheap, non-cryptographic stream of bytes (garbage needs no quality).
fn scramble(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn garbage(target: SocketAddr, key: &PrivateKey, rate: u64, seconds: f64) -> Result<()> {
    let public = key.public_key();
    let (sent, bytes) = flood(target, rate, seconds, |i| {
        let mut d = vec![0u8; 120];
        scramble(i, &mut d);
        d[0] = wirehub::proto::MAGIC;
        d[1] = wirehub::proto::VERSION;
        d[2..34].copy_from_slice(public.as_bytes());
        d
    })?;
    println!("sent={sent} bytes={bytes} seconds={seconds}");
    Ok(())
}

fn handshakes(target: SocketAddr, rate: u64, seconds: f64) -> Result<()> {
    let (sent, bytes) = flood(target, rate, seconds, |i| {
        let mut d = vec![0u8; 148];
        scramble(i, &mut d);
        d[..4].copy_from_slice(&[1, 0, 0, 0]);
        d
    })?;
    println!("sent={sent} bytes={bytes} seconds={seconds}");
    Ok(())
}

/// A peer speaking the protocol from one socket: it answers challenges and
/// collects the messages it gets.
struct Peer {
    codec: Codec,
    sock: UdpSocket,
    target: SocketAddr,
    target_key: Option<PublicKey>,
    got: Vec<Message>,
}

impl Peer {
    fn new(key: PrivateKey, target: SocketAddr, sock: UdpSocket) -> Result<Peer> {
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Peer {
            codec: Codec::new(key, CodecConfig::default()).map_err(|e| anyhow!("{e}"))?,
            sock,
            target,
            target_key: None,
            got: Vec::new(),
        })
    }

    /// Seals `msg` for the target and sends it; returns its size.
    fn send(&mut self, msg: &Message) -> Result<usize> {
        let to = self
            .target_key
            .ok_or_else(|| anyhow!("the target's key is not known yet"))?;
        let d = self.codec.seal(now_ms(), &to, msg)?;
        self.sock.send_to(&d, self.target)?;
        Ok(d.len())
    }

    /// Reads for `wait`, answering challenges.
    fn pump(&mut self, wait: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < wait {
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            match self.codec.receive_from(now_ms(), from.ip(), &buf[..n]) {
                // An answer from an address the target has not proven to
                // us: ours to match, and this tool takes every answer.
                Ok(
                    Received::Message { from: k, message }
                    | Received::Answer {
                        from: k, message, ..
                    },
                ) => {
                    self.target_key.get_or_insert(k);
                    self.got.push(message);
                }
                Ok(Received::Challenge { challenge, .. }) => {
                    let _ = self.sock.send_to(&challenge, from);
                }
                Ok(Received::Challenged { resend, .. }) => {
                    for d in resend {
                        let _ = self.sock.send_to(&d, from);
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Pings the target until it answers (the challenge round trip done).
    fn meet(&mut self, target_key: PublicKey) -> Result<()> {
        self.target_key = Some(target_key);
        for id in 1..=20u64 {
            self.send(&Message::Ping { id, info: None })?;
            self.pump(Duration::from_millis(250));
            if self.got.iter().any(|m| matches!(m, Message::Pong { .. })) {
                return Ok(());
            }
        }
        bail!("the target never answered")
    }
}

/// The target's public key, from the environment (`WH_ATTACK_TARGET_KEY`):
/// the attacks that talk need it.
fn target_key() -> Result<PublicKey> {
    let k = std::env::var("WH_ATTACK_TARGET_KEY").context("WH_ATTACK_TARGET_KEY")?;
    k.trim()
        .parse()
        .map_err(|e| anyhow!("WH_ATTACK_TARGET_KEY: {e:?}"))
}

fn record(target: SocketAddr, key: PrivateKey, victim: PublicKey, seconds: f64) -> Result<()> {
    let sock = socket_towards(target)?;
    let own_addr = SocketAddr::new(local_ip_towards(target)?, sock.local_addr()?.port());
    let mut p = Peer::new(key.clone(), target, sock)?;
    p.meet(target_key()?)?;
    let forged = NodeRecord {
        key: victim,
        endpoints: vec![own_addr],
        nat: NatKind::EndpointDependent,
        relays: vec![(key.public_key(), own_addr)],
        relay_service: true,
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        sent += 1;
        p.send(&Message::Ping {
            id: 1000 + sent,
            info: Some(forged.clone()),
        })?;
        p.send(&Message::FindNode {
            id: 2000 + sent,
            target: victim,
            info: Some(forged.clone()),
        })?;
        p.pump(Duration::from_millis(100));
    }
    println!("forged_records={}", 2 * sent);
    Ok(())
}

fn pong(target: SocketAddr, key: PrivateKey, observed: SocketAddr, seconds: f64) -> Result<()> {
    let sock = socket_towards(target)?;
    let mut p = Peer::new(key, target, sock)?;
    p.meet(target_key()?)?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        sent += 1;
        p.send(&Message::Pong {
            id: sent,
            observed,
            info: None,
        })?;
        p.pump(Duration::from_millis(50));
    }
    println!("forged_pongs={sent}");
    Ok(())
}

/// Proves our own address to the target, then sends requests from a second
/// address of ours, as a spoofer would with a victim's, and counts what
/// that address gets back.
fn reflect(target: SocketAddr, key: PrivateKey, spoof: IpAddr) -> Result<()> {
    let mut p = Peer::new(key, target, socket_towards(target)?)?;
    p.meet(target_key()?)?;
    let victim = UdpSocket::bind(SocketAddr::new(spoof, 0)).context("bind the spoofed address")?;
    victim.set_read_timeout(Some(Duration::from_millis(50)))?;
    let to = p.target_key.ok_or_else(|| anyhow!("no target key"))?;
    let mut sent = 0usize;
    for id in 0..10u64 {
        for msg in [
            Message::FindNode {
                id: 3000 + id,
                target: to,
                info: None,
            },
            Message::Ping {
                id: 4000 + id,
                info: None,
            },
        ] {
            let d = p.codec.seal(now_ms(), &to, &msg)?;
            victim.send_to(&d, target)?;
            sent += d.len();
        }
    }
    let mut received = 0usize;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok((n, _)) = victim.recv_from(&mut buf) {
            received += n;
        }
    }
    println!("sent_from_spoofed={sent} received_at_spoofed={received}");
    Ok(())
}

/// A fresh key with the default proof of work (what a relay asks of a
/// sender before it relays).
fn fresh_key() -> Result<PrivateKey> {
    loop {
        let k = PrivateKey::generate().map_err(|e| anyhow!("no random source: {e}"))?;
        if k.public_key().workbits(wirehub::keys::DEFAULT_NAMESPACE)
            >= wirehub::keys::DEFAULT_WORKBITS
        {
            return Ok(k);
        }
    }
}

/// `keys` fresh keys, each of which meets the target (the challenge round
/// trip), then take turns asking it to relay `size`-byte WireGuard-looking
/// datagrams to `victim`, `rate` a second in all, for `seconds`.
fn relay(
    target: SocketAddr,
    keys: usize,
    victim: PublicKey,
    size: usize,
    rate: u64,
    seconds: f64,
) -> Result<()> {
    let target_key = target_key()?;
    let mut peers = Vec::with_capacity(keys);
    for _ in 0..keys {
        let mut p = Peer::new(fresh_key()?, target, socket_towards(target)?)?;
        p.sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        p.target_key = Some(target_key);
        p.send(&Message::Ping { id: 1, info: None })?;
        peers.push(p);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let mut waiting = 0;
        for p in peers.iter_mut().filter(|p| p.got.is_empty()) {
            waiting += 1;
            p.pump(Duration::from_millis(2));
        }
        if waiting == 0 {
            break;
        }
    }
    peers.retain(|p| !p.got.is_empty());
    if peers.is_empty() {
        bail!("the target answered none of the {keys} keys");
    }
    let met = peers.len();
    let mut packet = vec![0u8; size.max(32)];
    scramble(7, &mut packet);
    packet[..4].copy_from_slice(&[4, 0, 0, 0]);
    let msg = Message::RelayWg { to: victim, packet };
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let (mut sent, mut bytes) = (0u64, 0u64);
    while start.elapsed() < end {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if rate > 0 && sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let i = (sent as usize) % met;
        if let Ok(n) = peers[i].send(&msg) {
            sent += 1;
            bytes += n as u64;
        }
    }
    println!("keys={met} sent={sent} bytes={bytes} seconds={seconds}");
    Ok(())
}

fn local_ip_towards(target: SocketAddr) -> Result<IpAddr> {
    let s = socket_towards(target)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}
