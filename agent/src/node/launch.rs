//! `wh up`: reads the options, the network file and the key, then runs the
//! daemon in the foreground or starts it in the background and waits until
//! its control socket answers.

use crate::cli::commands::{Failure, Outcome};
use crate::config::{self, DEFAULT_PORT, NetworkSpec};
use crate::control;
use crate::dataplane::BackendKind;
use crate::keys::{PrivateKey, search};
use anyhow::{Context, anyhow};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest Linux interface name.
pub const MAX_IFNAME: usize = 15;

pub use crate::dataplane::DEFAULT_MTU;

/// How long `wh up` waits for a background daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub use wirehub_core::node::Mode;

/// Everything `wh up` was told.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config_path: PathBuf,
    pub interface: String,
    pub listen_port: u16,
    pub mode: Mode,
    pub backend: BackendKind,
    pub mtu: u32,
    /// Where the node writes its CNI configuration when it routes a pod
    /// CIDR (`None`: never).
    pub cni_dir: Option<PathBuf>,
    /// Serve DNS for the network's names on the overlay IPv4 (`dns on|off`).
    pub dns: bool,
    /// Port of the DNS responder (`dns-port`, default 53).
    pub dns_port: u16,
    /// Keep the network's names in a block of this hosts file (`hosts on`).
    pub hosts_file: Option<PathBuf>,
    /// Per-source rate this node relays for others, Mbit/s (`relay-limit`).
    pub relay_mbit: u32,
}

/// Default directory of CNI configurations.
pub const DEFAULT_CNI_DIR: &str = "/etc/cni/net.d";

fn usage(message: String) -> Failure {
    Failure::Usage(crate::cli::Usage {
        command: Some("up"),
        message,
    })
}

/// Reads a private key file (or `-` for stdin), naming the file on error.
pub fn read_private_key(path: &str) -> anyhow::Result<PrivateKey> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut text)
            .context("cannot read the private key on stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow!(
                    "private key file {path} does not exist; make one with 'wh genkey > {path}'"
                ),
                std::io::ErrorKind::IsADirectory => anyhow!(
                    "private key file {path} is a directory; give the file 'wh genkey' wrote"
                ),
                _ => anyhow!("cannot read private key file {path}: {e}"),
            })?;
    }
    text.trim().parse().with_context(|| {
        format!("{path} does not hold a private key (expected the base64 text 'wh genkey' prints)")
    })
}

pub fn load_spec(path: &Path) -> anyhow::Result<NetworkSpec> {
    let parsed = config::load(path)?;
    for w in &parsed.warnings {
        tracing::warn!("{}:{w}", path.display());
        eprintln!("{}:{w}", path.display());
    }
    Ok(parsed.spec)
}

/// What `wh up` was asked, as typed values (the CLI reads its words into
/// this; its argument types never reach the node).
#[derive(Debug, Clone, Default)]
pub struct UpRequest {
    pub config_path: PathBuf,
    /// A private key file, or `-` for stdin; None: an ephemeral key.
    pub private_key: Option<String>,
    pub interface: Option<String>,
    pub listen_port: Option<u16>,
    /// `direct`, `nat` or anything else (detect).
    pub mode: Option<String>,
    pub backend: Option<String>,
    pub mtu: Option<u32>,
    pub cni_dir: Option<PathBuf>,
    /// `dns off` turns the responder off.
    pub dns: Option<String>,
    pub dns_port: Option<u16>,
    /// `hosts on` keeps the names in /etc/hosts.
    pub hosts: Option<String>,
    pub relay_limit: Option<u32>,
    pub foreground: bool,
}

/// `wh up CONFIG [private-key F] [interface I] [listen-port P] [mode M] [backend B] [mtu N] [relay-limit MBIT] [--foreground]`
pub fn up(req: &UpRequest) -> Outcome {
    up_with(req).map_err(|f| match f {
        Failure::Runtime(e) => Failure::Runtime(with_advice(e)),
        other => other,
    })
}

fn up_with(req: &UpRequest) -> Outcome {
    let config_path = req.config_path.clone();
    let spec = load_spec(&config_path)?;
    let listen_port = req.listen_port.unwrap_or(DEFAULT_PORT);
    let mtu = req.mtu.unwrap_or(DEFAULT_MTU);
    if !(1280..=9000).contains(&mtu) && !(576..1280).contains(&mtu) {
        return Err(usage(format!("mtu {mtu} is out of range; use 576 to 9000")));
    }
    let relay_mbit = req.relay_limit.unwrap_or(crate::relay::DEFAULT_RELAY_MBIT);
    if !crate::relay::valid_relay_mbit(relay_mbit) {
        return Err(usage(format!(
            "relay-limit {relay_mbit} is out of range; use 0 (relay for nobody) to {} (Mbit/s)",
            crate::relay::MAX_RELAY_MBIT
        )));
    }
    let mode = match req.mode.as_deref() {
        Some("direct") => Mode::Direct,
        Some("nat") => Mode::Nat,
        _ => Mode::Unknown,
    };
    let backend: BackendKind = req
        .backend
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .map_err(|e| usage(format!("{e}")))?;
    let key = match req.private_key.as_deref() {
        Some(path) => read_private_key(path)?,
        None => {
            let state = search::SearchState::new();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            search::search(spec.workbits, &spec.namespace, threads, &state)
                .ok_or_else(|| anyhow!("could not generate an ephemeral key"))?
        }
    };
    let public = key.public_key();
    if public.workbits(&spec.namespace) < spec.workbits {
        return Err(anyhow!(
            "the private key's public key {} has {} workbits in namespace '{}'; the network requires {}: make one with 'wh genkey {}'",
            public.short(10),
            public.workbits(&spec.namespace),
            spec.namespace,
            spec.workbits,
            config_path.display()
        )
        .into());
    }
    let interface = match req.interface.as_deref() {
        Some(i) => i.to_string(),
        None => format!("wh-{}", public.short(8)),
    };
    if interface.is_empty()
        || interface.len() > MAX_IFNAME
        || !interface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(usage(format!(
            "interface name '{interface}' is not valid: 1 to {MAX_IFNAME} letters, digits, '-', '_' or '.'"
        )));
    }
    if control::client::request(&interface, &control::Request::Show).is_ok() {
        return Err(
            anyhow!("interface {interface} is already up; 'wh down {interface}' stops it").into(),
        );
    }
    let opts = UpOptions {
        config_path,
        interface,
        listen_port,
        mode,
        backend,
        mtu,
        cni_dir: Some(
            req.cni_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_DIR)),
        ),
        dns: req.dns.as_deref() != Some("off"),
        dns_port: req.dns_port.unwrap_or(53),
        hosts_file: (req.hosts.as_deref() == Some("on")).then(|| PathBuf::from("/etc/hosts")),
        relay_mbit,
    };
    if let Some(dir) = &opts.cni_dir
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(usage(format!(
            "cni-dir {} is a file; give a directory",
            dir.display()
        )));
    }
    if req.foreground {
        crate::node::daemon::run_blocking(opts, spec, key, None)?;
        return Ok(0);
    }
    start_background(req, &opts, &key)
}

/// A failure to start a node, with what to do about it when the cause is a
/// usual one: a port in use, no root, no TUN device.
fn with_advice(e: anyhow::Error) -> anyhow::Error {
    use crate::dataplane::DataPlaneError;
    use std::io::ErrorKind;
    let no_tun = e.chain().any(|c| {
        matches!(c.downcast_ref::<DataPlaneError>(),
            Some(DataPlaneError::Tun { source, .. }) if source.kind() == ErrorKind::NotFound)
    });
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let advice = match kind {
        _ if no_tun => {
            "this host has no /dev/net/tun: load the tun module (modprobe tun), or give the container the device"
        }
        Some(ErrorKind::AddrInUse) => {
            "another program uses that port ('wh show interfaces' lists the running interfaces): stop it, or choose another port with 'listen-port P'"
        }
        Some(ErrorKind::PermissionDenied) => "wh up needs root (or the CAP_NET_ADMIN capability)",
        _ => return e,
    };
    anyhow!("{}; {advice}", crate::cli::one_line(&e))
}

/// The run directory, made when missing.
fn make_run_dir() -> anyhow::Result<()> {
    let dir = control::run_dir();
    if dir.exists() && !dir.is_dir() {
        return Err(anyhow!(
            "the run directory {} is a file; remove it, or choose another directory with WH_RUN_DIR",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create run directory {}", dir.display()))
}

/// Why a background daemon stopped at once: the error it printed last (its
/// stderr is the log), else the end of its log.
fn daemon_failed(status: std::process::ExitStatus, log_path: &Path) -> anyhow::Error {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    if let Some(error) = log.lines().rev().find_map(|l| l.strip_prefix("wh: ")) {
        return anyhow!("{error} (the daemon's log: {})", log_path.display());
    }
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    anyhow!("the daemon stopped ({status}):\n{}", tail.join("\n"))
}

/// Starts `wh up ... --foreground` detached, hands it the key on stdin, and
/// waits until its control socket answers.
fn start_background(req: &UpRequest, opts: &UpOptions, key: &PrivateKey) -> Outcome {
    let exe = std::env::current_exe().context("cannot find the wh executable")?;
    make_run_dir()?;
    let log_path = control::log_path(&opts.interface);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create log file {}", log_path.display()))?;
    let log_err = log.try_clone().context("cannot duplicate the log file")?;
    let mut cmd = Command::new(exe);
    cmd.arg("up")
        .arg(&opts.config_path)
        .args(["private-key", "-", "interface", &opts.interface])
        .args(["listen-port", &opts.listen_port.to_string()])
        .args(["mtu", &opts.mtu.to_string()]);
    // What was given is passed on as it was given.
    let given = [
        ("mode", req.mode.clone()),
        ("backend", req.backend.clone()),
        (
            "cni-dir",
            req.cni_dir.as_ref().map(|d| d.display().to_string()),
        ),
        ("dns", req.dns.clone()),
        ("dns-port", req.dns_port.map(|p| p.to_string())),
        ("hosts", req.hosts.clone()),
        ("relay-limit", req.relay_limit.map(|m| m.to_string())),
    ];
    for (k, v) in given {
        if let Some(v) = v {
            cmd.args([k, v.as_str()]);
        }
    }
    cmd.arg("--foreground")
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log_err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(key.to_base64().as_bytes())
            .context("cannot hand the key to the daemon")?;
    }
    let start = Instant::now();
    while start.elapsed() < START_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(daemon_failed(status, &log_path).into());
        }
        if control::client::request(&opts.interface, &control::Request::Show).is_ok() {
            crate::cli::out(format_args!("{}\n", opts.interface))?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!(
        "the daemon did not answer within {} s; see {}",
        START_TIMEOUT.as_secs(),
        log_path.display()
    )
    .into())
}
