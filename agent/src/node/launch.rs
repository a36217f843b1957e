//! `wh up`: reads the options, the network file and the key, then runs the
//! daemon in the foreground or starts it in the background and waits until
//! its control socket answers.

use crate::cli::Args;
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

/// Default MTU of the overlay interface.
pub const DEFAULT_MTU: u32 = 1420;

/// How long `wh up` waits for a background daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// NAT mode, as the original's `mode` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect.
    Unknown,
    /// The node has a public address.
    Direct,
    /// The node is behind NAT.
    Nat,
}

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
            .with_context(|| format!("cannot read private key file {path}"))?;
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

/// `wh up CONFIG [private-key F] [interface I] [listen-port P] [mode M] [backend B] [mtu N] [relay-limit MBIT] [--foreground]`
pub fn up(args: &Args) -> Outcome {
    let config_path = PathBuf::from(args.positional(0).unwrap_or_default());
    let spec = load_spec(&config_path)?;
    let listen_port = args.number::<u16>("listen-port")?.unwrap_or(DEFAULT_PORT);
    let mtu = args.number::<u32>("mtu")?.unwrap_or(DEFAULT_MTU);
    if !(1280..=9000).contains(&mtu) && !(576..1280).contains(&mtu) {
        return Err(usage(format!("mtu {mtu} is out of range; use 576 to 9000")));
    }
    let relay_mbit = args
        .number::<u32>("relay-limit")?
        .unwrap_or(crate::relay::DEFAULT_RELAY_MBIT);
    if !(1..=1_000_000).contains(&relay_mbit) {
        return Err(usage(format!(
            "relay-limit {relay_mbit} is out of range; use 1 to 1000000 (Mbit/s)"
        )));
    }
    let mode = match args.get("mode") {
        Some("direct") => Mode::Direct,
        Some("nat") => Mode::Nat,
        _ => Mode::Unknown,
    };
    let backend: BackendKind = args
        .get("backend")
        .unwrap_or("auto")
        .parse()
        .map_err(|e| usage(format!("{e}")))?;
    let key = match args.get("private-key") {
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
    let interface = match args.get("interface") {
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
        cni_dir: Some(PathBuf::from(
            args.get("cni-dir").unwrap_or(DEFAULT_CNI_DIR),
        )),
        dns: args.get("dns") != Some("off"),
        dns_port: args.number::<u16>("dns-port")?.unwrap_or(53),
        hosts_file: (args.get("hosts") == Some("on")).then(|| PathBuf::from("/etc/hosts")),
        relay_mbit,
    };
    if args.flag("--foreground") {
        crate::node::daemon::run_blocking(opts, spec, key, None)?;
        return Ok(0);
    }
    start_background(args, &opts, &key)
}

/// Starts `wh up ... --foreground` detached, hands it the key on stdin, and
/// waits until its control socket answers.
fn start_background(args: &Args, opts: &UpOptions, key: &PrivateKey) -> Outcome {
    let exe = std::env::current_exe().context("cannot find the wh executable")?;
    let dir = control::run_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create run directory {}", dir.display()))?;
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
    for k in [
        "mode",
        "backend",
        "cni-dir",
        "dns",
        "dns-port",
        "hosts",
        "relay-limit",
    ] {
        if let Some(v) = args.get(k) {
            cmd.args([k, v]);
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
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(anyhow!("the daemon stopped ({status}):\n{}", tail.join("\n")).into());
        }
        if control::client::request(&opts.interface, &control::Request::Show).is_ok() {
            println!("{}", opts.interface);
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
