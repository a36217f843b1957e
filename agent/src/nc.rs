//! Zero-netcat (`wh nc`, or `0nc`): an end-to-end encrypted, peer-to-peer
//! pipe between two machines anywhere, from one invitation string.
//!
//! The listener makes an ephemeral key `L` and a one-time alias key pair,
//! and prints an invitation: `L` and the alias secret. Both sides then run a
//! private WireHub network of two, named and numbered from `L`: the listener
//! trusts itself and the alias; the joiner trusts the listener and itself,
//! and proves to the listener (through the DHT, relayed if need be) that it
//! holds the alias secret. The listener binds the alias to the joiner's real
//! key, once: a second use of the invitation finds no alias left. Standard
//! input of each side then flows to standard output of the other over TCP
//! inside the tunnel, until either side closes.

use crate::config::{self, Endpoint, NetworkSpec, PeerSpec, Role};
use crate::keys::{Blake2b256, PrivateKey, PublicKey, search};
use crate::node::daemon::{AliasJoin, Extras, run_with};
use crate::node::launch::{DEFAULT_MTU, Mode, UpOptions};
use crate::proto::alias_proof;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use blake2::Digest;
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The public network's file, built in: its `boot` lines are the default.
const PUBLIC_CONFIG: &str = include_str!("../../config/public");

/// Version byte of the invitation format.
const INVITATION_VERSION: u8 = 1;
/// version (1) + listener key (32) + alias secret (32) + checksum (4).
const INVITATION_LEN: usize = 69;
/// TCP port of the pipe inside the tunnel.
pub const PIPE_PORT: u16 = 5555;
/// How long the joiner waits for the listener to accept it (the
/// environment variable `WH_NC_TIMEOUT_SECS` changes it).
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

fn join_timeout() -> Duration {
    std::env::var("WH_NC_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(JOIN_TIMEOUT, Duration::from_secs)
}

/// Exit codes of `wh nc`.
pub mod exit {
    /// The pipe ran and the other side closed it.
    pub const OK: i32 = 0;
    /// A runtime failure (network, interface, I/O).
    pub const FAILED: i32 = 1;
    /// The invitation is damaged, or was refused (already used).
    pub const REFUSED: i32 = 3;
    /// No peer came in time.
    pub const TIMEOUT: i32 = 4;
}

/// Why an invitation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvitationError {
    #[error("this is not an invitation: it is not URL-safe base64 ({0})")]
    Base64(String),
    #[error("this is not an invitation: it is {0} bytes, an invitation is {INVITATION_LEN}")]
    Length(usize),
    #[error("this invitation is of version {0}; this wh reads version {INVITATION_VERSION}")]
    Version(u8),
    #[error("this invitation is damaged (its checksum does not match): copy it again, whole")]
    Checksum,
}

/// What an invitation carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    pub listener: PublicKey,
    pub alias_secret: PrivateKey,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the alias secret.
        f.debug_struct("Invitation")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let mut h = Blake2b256::new();
    h.update(b"wirehub invitation v1");
    h.update(body);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl Invitation {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(INVITATION_LEN);
        bytes.push(INVITATION_VERSION);
        bytes.extend_from_slice(self.listener.as_bytes());
        bytes.extend_from_slice(self.alias_secret.as_bytes());
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Invitation, InvitationError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim().as_bytes())
            .map_err(|e| InvitationError::Base64(e.to_string()))?;
        if bytes.len() != INVITATION_LEN {
            return Err(InvitationError::Length(bytes.len()));
        }
        if bytes[0] != INVITATION_VERSION {
            return Err(InvitationError::Version(bytes[0]));
        }
        if checksum(&bytes[..65]) != bytes[65..] {
            return Err(InvitationError::Checksum);
        }
        let mut listener = [0u8; 32];
        listener.copy_from_slice(&bytes[1..33]);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes[33..65]);
        Ok(Invitation {
            listener: PublicKey(listener),
            alias_secret: PrivateKey::from_bytes(secret),
        })
    }
}

/// The private network of two, derived from the listener's key so both
/// sides build the same one.
fn pipe_network(listener: &PublicKey, joiner: PeerSpec, boot: &[PeerSpec]) -> NetworkSpec {
    let mut h = Blake2b256::new();
    h.update(b"wirehub nc network v1");
    h.update(listener.as_bytes());
    let d = h.finalize();
    // A /29 inside 100.64.0.0/10 (shared address space), picked by the key.
    let block = u32::from_be_bytes([0, d[0] & 0x3f, d[1], d[2] & 0xf8]);
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) | block;
    let subnet = Ipv4Net::new(Ipv4Addr::from(base), 29).unwrap_or_else(|_| Ipv4Net::default());
    let mut spec = NetworkSpec::new(format!("nc{:02x}{:02x}{:02x}", d[3], d[4], d[5]));
    spec.subnet = Some(subnet);
    spec.peers.extend(boot.iter().cloned());
    spec.peers.push(PeerSpec {
        role: Role::Trust,
        hostname: Some("listener".into()),
        static_ip: None,
        key: *listener,
        endpoint: None,
        routes: Vec::new(),
    });
    spec.peers.push(joiner);
    spec
}

fn overlay_ip(spec: &NetworkSpec, key: &PublicKey) -> Option<Ipv4Addr> {
    spec.members()
        .into_iter()
        .find(|m| &m.peer.key == key)
        .and_then(|m| m.ipv4)
}

/// The overlay address the joiner takes: the one of the trusted peer after
/// the listener in the network the joiner builds (whatever its key).
fn joiner_ip(listener: &PublicKey, alias: &PublicKey, boot: &[PeerSpec]) -> Option<Ipv4Addr> {
    let joiner = PeerSpec {
        role: Role::Trust,
        hostname: Some("joiner".into()),
        static_ip: None,
        key: *alias,
        endpoint: None,
        routes: Vec::new(),
    };
    let spec = pipe_network(listener, joiner, boot);
    spec.members().last().and_then(|m| m.ipv4)
}

/// Boot lines: the ones given (`boot KEY HOST:PORT`), else `config/public`'s.
pub fn boot_peers(given: &[(String, String)]) -> anyhow::Result<Vec<PeerSpec>> {
    if given.is_empty() {
        let parsed = config::parse(PUBLIC_CONFIG).map_err(|d| {
            anyhow::anyhow!(
                "the built-in config/public is invalid: {}",
                d.render("config/public")
            )
        })?;
        return Ok(parsed
            .spec
            .peers
            .into_iter()
            .filter(|p| p.role == Role::Boot)
            .collect());
    }
    given
        .iter()
        .map(|(k, e)| {
            let key: PublicKey = k
                .parse()
                .map_err(|err| anyhow::anyhow!("boot key '{k}': {err}"))?;
            let endpoint =
                Endpoint::parse(e).map_err(|err| anyhow::anyhow!("boot endpoint '{e}': {err}"))?;
            Ok(PeerSpec {
                role: Role::Boot,
                hostname: None,
                static_ip: None,
                key,
                endpoint: Some(endpoint),
                routes: Vec::new(),
            })
        })
        .collect()
}

fn options(key: &PublicKey) -> UpOptions {
    UpOptions {
        config_path: PathBuf::from("(zero-netcat)"),
        interface: format!("wh-{}", key.short(8)),
        listen_port: 0,
        mode: Mode::Unknown,
        backend: crate::dataplane::BackendKind::Auto,
        mtu: DEFAULT_MTU,
        cni_dir: None,
        dns: false,
        dns_port: 53,
        hosts_file: None,
        relay_mbit: crate::relay::DEFAULT_RELAY_MBIT,
    }
}

fn ephemeral_key() -> anyhow::Result<PrivateKey> {
    let state = search::SearchState::new();
    search::search(
        crate::keys::DEFAULT_WORKBITS,
        crate::keys::DEFAULT_NAMESPACE,
        2,
        &state,
    )
    .ok_or_else(|| anyhow::anyhow!("could not make an ephemeral key"))
}

/// How long a pipe waits for the other side to acknowledge its end.
const END_ACK_WAIT: Duration = Duration::from_secs(5);

/// Waits, at most `limit`, until everything sent on `stream` (its end, the
/// FIN, included) is acknowledged.
async fn until_acknowledged(stream: &TcpStream, limit: Duration) {
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let mut unacknowledged: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one int: the bytes
        // sent but not acknowledged, the FIN counting as one.
        let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unacknowledged) };
        if r != 0 || unacknowledged == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies stdin to the socket and the socket to stdout until the other
/// side closes; returns when the socket reaches its end and ours is
/// acknowledged (at most [`END_ACK_WAIT`] later).
async fn pipe(stream: TcpStream) -> anyhow::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let upload = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let r = tokio::io::copy(&mut stdin, &mut wr).await;
        let _ = wr.shutdown().await;
        r
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let copied = async {
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n]).await?;
            // tokio's stdout holds data until flushed.
            stdout.flush().await?;
        }
        stdout.flush().await
    };
    let result = copied.await;
    // Our end goes out too (dropping the write half sends it), and the
    // process, whose overlay carries it, stays until the other side has
    // acknowledged it: else that side may wait for it for ever.
    upload.abort();
    let _ = upload.await;
    until_acknowledged(rd.as_ref(), END_ACK_WAIT).await;
    match result {
        // Our reader stopped (`wh nc ... | head`): the pipe's work is over.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Listens on the pipe's port of the overlay address, bound to the overlay
/// interface: a connection from this host's own processes arrives on the
/// loopback interface and never reaches this socket.
async fn bind_when_up(ip: Ipv4Addr, interface: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip.into(), PIPE_PORT);
    let bind = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1)?;
        TcpListener::from_std(socket.into())
    };
    let mut last = None;
    for _ in 0..200 {
        match bind() {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow::anyhow!(
        "cannot listen on {addr} of {interface}: the overlay interface did not come up ({})",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Waits for the joiner's connection: the first one from `joiner` (the
/// overlay address only the joiner's key may send from). Any other is
/// closed at once, unread and unwritten.
async fn accept_joiner(tcp: &TcpListener, joiner: Ipv4Addr) -> anyhow::Result<TcpStream> {
    loop {
        let (stream, peer) = tcp.accept().await?;
        if peer.ip() == std::net::IpAddr::V4(joiner) {
            tracing::info!(%peer, "joiner connected");
            return Ok(stream);
        }
        tracing::warn!(%peer, "a connection that is not the joiner's was refused");
        drop(stream);
    }
}

/// The listening side: prints the invitation on stderr, waits for one
/// joiner, pipes.
pub async fn listen(boot: Vec<PeerSpec>) -> anyhow::Result<i32> {
    let key = ephemeral_key()?;
    let listener = key.public_key();
    let alias_secret =
        PrivateKey::generate().map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let alias = alias_secret.public_key();
    let spec = pipe_network(
        &listener,
        PeerSpec {
            role: Role::Alias,
            hostname: Some("joiner".into()),
            static_ip: None,
            key: alias,
            endpoint: None,
            routes: Vec::new(),
        },
        &boot,
    );
    let own_ip = overlay_ip(&spec, &listener)
        .ok_or_else(|| anyhow::anyhow!("no overlay address for the listener"))?;
    let joiner_ip = joiner_ip(&listener, &alias, &boot)
        .ok_or_else(|| anyhow::anyhow!("no overlay address for the joiner"))?;
    let options = options(&listener);
    let interface = options.interface.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let node = tokio::spawn(run_with(
        options,
        spec,
        key,
        None,
        Extras {
            stop: Some(stop_rx),
            ..Extras::default()
        },
    ));
    eprintln!(
        "{}",
        Invitation {
            listener,
            alias_secret
        }
        .encode()
    );
    let result = async {
        let tcp = bind_when_up(own_ip, &interface).await?;
        let stream = accept_joiner(&tcp, joiner_ip).await?;
        drop(tcp);
        pipe(stream).await
    };
    let outcome = tokio::select! {
        r = result => r.map(|_| exit::OK),
        r = node => Err(match r {
            Ok(Ok(())) => anyhow::anyhow!("the node stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("the node failed: {e}"),
        }),
    };
    let _ = stop_tx.send(true);
    // Leave the node a moment to remove its interface.
    tokio::time::sleep(Duration::from_millis(300)).await;
    outcome
}

/// The joining side.
pub async fn join(invitation: &Invitation, boot: Vec<PeerSpec>) -> anyhow::Result<i32> {
    let key = ephemeral_key()?;
    let me = key.public_key();
    let spec = pipe_network(
        &invitation.listener,
        PeerSpec {
            role: Role::Trust,
            hostname: Some("joiner".into()),
            static_ip: None,
            key: me,
            endpoint: None,
            routes: Vec::new(),
        },
        &boot,
    );
    let listener_ip = overlay_ip(&spec, &invitation.listener)
        .ok_or_else(|| anyhow::anyhow!("no overlay address for the listener"))?;
    let proof = alias_proof(&invitation.alias_secret, &me, &invitation.listener);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (joined_tx, joined_rx) = oneshot::channel();
    let node = tokio::spawn(run_with(
        options(&me),
        spec,
        key,
        None,
        Extras {
            join: Some(AliasJoin {
                listener: invitation.listener,
                alias: invitation.alias_secret.public_key(),
                proof,
            }),
            stop: Some(stop_rx),
            joined: Some(joined_tx),
        },
    ));
    let result = async {
        if tokio::time::timeout(join_timeout(), joined_rx)
            .await
            .is_err()
        {
            return Ok(exit::REFUSED);
        }
        let addr = SocketAddr::new(listener_ip.into(), PIPE_PORT);
        let deadline = tokio::time::Instant::now() + join_timeout();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    pipe(stream).await?;
                    return Ok(exit::OK);
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => return Ok(exit::TIMEOUT),
            }
        }
    };
    let outcome: anyhow::Result<i32> = tokio::select! {
        r = result => r,
        r = node => Err(match r {
            Ok(Ok(())) => anyhow::anyhow!("the node stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("the node failed: {e}"),
        }),
    };
    if let Ok(exit::REFUSED) = outcome {
        eprintln!(
            "wh nc: the listener did not accept this invitation within {} s: it was already used, or the listener is gone",
            join_timeout().as_secs()
        );
    }
    if let Ok(exit::TIMEOUT) = outcome {
        eprintln!(
            "wh nc: accepted, but the pipe did not open within {} s",
            join_timeout().as_secs()
        );
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    outcome
}

/// Where the joiner takes the invitation from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InvitationSource {
    /// The first line of standard input (`-`); the rest is the data.
    Stdin,
    /// A file (`file PATH`).
    File(PathBuf),
    /// The command line: works, but every local user sees it in `ps`.
    Argument(String),
}

impl InvitationSource {
    fn read(&self) -> Result<String, String> {
        match self {
            InvitationSource::Stdin => {
                let mut line = String::new();
                // std's stdin is the one buffered handle tokio's stdin reads
                // through: what follows the line stays for the pipe.
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("cannot read the invitation from standard input: {e}"))?;
                Ok(line)
            }
            InvitationSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the invitation from {}: {e}", path.display())),
            InvitationSource::Argument(text) => Ok(text.clone()),
        }
    }
}

/// `wh nc [- | file PATH | INVITATION] [boot KEY HOST:PORT]...`
pub fn main(words: &[String]) -> Result<i32, crate::cli::commands::Failure> {
    use crate::cli::Usage;
    use crate::cli::commands::Failure;
    let mut boot = Vec::new();
    let mut invitation = None;
    let mut i = 0;
    while i < words.len() {
        if invitation.is_none() && words[i] == "-" {
            invitation = Some(InvitationSource::Stdin);
            i += 1;
        } else if invitation.is_none() && words[i] == "file" {
            let Some(path) = words.get(i + 1) else {
                return Err(Failure::Usage(Usage {
                    command: Some("nc"),
                    message: "'file' needs the path of a file holding the invitation".into(),
                }));
            };
            invitation = Some(InvitationSource::File(PathBuf::from(path)));
            i += 2;
        } else if words[i] == "boot" {
            let (Some(k), Some(e)) = (words.get(i + 1), words.get(i + 2)) else {
                return Err(Failure::Usage(Usage {
                    command: Some("nc"),
                    message: "'boot' needs a key and an endpoint: boot KEY HOST:PORT".into(),
                }));
            };
            boot.push((k.clone(), e.clone()));
            i += 3;
        } else if invitation.is_none() {
            invitation = Some(InvitationSource::Argument(words[i].clone()));
            i += 1;
        } else {
            return Err(Failure::Usage(Usage {
                command: Some("nc"),
                message: format!("unexpected argument '{}'", words[i]),
            }));
        }
    }
    if matches!(invitation, Some(InvitationSource::Argument(_))) {
        eprintln!(
            "wh nc: warning: an invitation on the command line is visible to every local user (ps); pass it on standard input ('wh nc -') or in a file ('wh nc file PATH')"
        );
    }
    let text = match invitation.as_ref().map(InvitationSource::read).transpose() {
        Ok(text) => text,
        Err(e) => {
            eprintln!("wh nc: {e}");
            return Ok(exit::FAILED);
        }
    };
    let invitation = match text.map(|t| Invitation::decode(t.trim())).transpose() {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("wh nc: {e}");
            return Ok(exit::REFUSED);
        }
    };
    let boot = boot_peers(&boot).map_err(Failure::Runtime)?;
    // Quiet by default: stderr carries the invitation.
    crate::node::daemon::init_logging("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let result = runtime.block_on(async {
        match &invitation {
            Some(inv) => join(inv, boot).await,
            None => listen(boot).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map_err(Failure::Runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invitation() -> Invitation {
        Invitation {
            listener: PrivateKey::generate().unwrap().public_key(),
            alias_secret: PrivateKey::generate().unwrap(),
        }
    }

    #[test]
    fn invitations_round_trip_on_one_url_safe_line() {
        let inv = invitation();
        let text = inv.encode();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{text}"
        );
        assert_eq!(Invitation::decode(&text).unwrap(), inv);
    }

    #[test]
    fn tampered_invitations_are_rejected_clearly() {
        let text = invitation().encode();
        let mut bytes = text.clone().into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            Invitation::decode(&tampered).unwrap_err(),
            InvitationError::Checksum
        );
        assert!(matches!(
            Invitation::decode(&text[..40]).unwrap_err(),
            InvitationError::Length(_) | InvitationError::Base64(_)
        ));
        assert!(matches!(
            Invitation::decode("not an invitation!").unwrap_err(),
            InvitationError::Base64(_)
        ));
    }

    #[test]
    fn both_sides_build_the_same_network() {
        let inv = invitation();
        let joiner = PrivateKey::generate().unwrap().public_key();
        let boot = boot_peers(&[]).unwrap();
        assert!(!boot.is_empty(), "config/public has a boot line");
        let trust = PeerSpec {
            role: Role::Trust,
            hostname: Some("joiner".into()),
            static_ip: None,
            key: joiner,
            endpoint: None,
            routes: Vec::new(),
        };
        let a = pipe_network(&inv.listener, trust.clone(), &boot);
        let b = pipe_network(&inv.listener, trust, &boot);
        assert_eq!(a, b);
        assert!(a.validate().is_ok(), "{:?}", a.validate());
        let ips = a.ipv4_addresses();
        assert_eq!(ips.iter().flatten().count(), 2);
        assert!(a.subnet.unwrap().network().octets()[0] == 100);
        // The listener expects the joiner's pipe from the address the
        // joiner's network gives it.
        let alias = inv.alias_secret.public_key();
        assert_eq!(
            joiner_ip(&inv.listener, &alias, &boot),
            overlay_ip(&a, &joiner)
        );
    }
}
