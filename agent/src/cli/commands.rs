//! What each `wh` command does. Commands that talk to a running daemon live in
//! `crate::control::client`; this file holds the local ones and the dispatch.

use super::{Args, COMMANDS, Usage, command, completion, general_help, out, parse_args};
use crate::config::{self, NetworkSpec};
use crate::keys::{DEFAULT_NAMESPACE, PrivateKey, PublicKey, search};
use anyhow::{Context, anyhow};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    Usage(Usage),
    Runtime(anyhow::Error),
    /// Standard output was closed by its reader: the command's work is over.
    StdoutClosed,
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Self {
        Failure::Usage(u)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

pub type Outcome = Result<i32, Failure>;

/// Parses the command name and runs it.
pub fn dispatch(argv: &[String]) -> Outcome {
    let (name, rest) = match argv.split_first() {
        None => ("show", &[][..]),
        Some((first, rest)) => (first.as_str(), rest),
    };
    match name {
        "--version" | "-V" => return version(),
        "--help" | "-h" => return help(None),
        "__complete" => return completion::complete(rest),
        _ => {}
    }
    let Some(cmd) = command(name) else {
        return Err(Usage {
            command: None,
            message: format!("unknown command '{name}'"),
        }
        .into());
    };
    if rest.iter().any(|w| w == "--help" || w == "-h") {
        return help(Some(cmd.name));
    }
    // `boot KEY HOST:PORT` takes two values: nc parses its own words.
    if cmd.name == "nc" {
        return crate::nc::main(rest);
    }
    let args = parse_args(cmd, rest)?;
    match cmd.name {
        "help" => help(args.positional(0)),
        "version" => version(),
        "genkey" => genkey(&args),
        "pubkey" => pubkey(),
        "workbit" => workbit(&args),
        "orchid" => orchid(&args),
        "check" => check(&args),
        "completion" => completion::print(args.positional(0).unwrap_or_default()),
        "agent" => crate::k8s::agent::run(|k| args.get(k).map(str::to_string)),
        "crd" => crate::k8s::crd_command(&args),
        "network" => crate::k8s::network_command(&args),
        other => crate::control::client::run(other, &args),
    }
}

fn help(topic: Option<&str>) -> Outcome {
    match topic {
        None => out(general_help())?,
        Some(t) => match command(t) {
            Some(c) => out(c.help())?,
            None => {
                let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
                return Err(Usage {
                    command: None,
                    message: format!("no command '{t}' (commands: {})", names.join(", ")),
                }
                .into());
            }
        },
    }
    Ok(0)
}

fn version() -> Outcome {
    out(format_args!("wh {}\n", env!("CARGO_PKG_VERSION")))?;
    Ok(0)
}

fn read_stdin_key() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read a key on stdin")?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(anyhow!(
            "no key on stdin; pipe one in, as in 'wh genkey | wh pubkey'"
        ));
    }
    Ok(text)
}

/// Reads a key on stdin: a private key when it has standard-base64 padding or
/// characters ('=', '+', '/'), otherwise a public key.
fn read_stdin_public_key() -> anyhow::Result<PublicKey> {
    let text = read_stdin_key()?;
    if text.contains(['=', '+', '/']) {
        let sk: PrivateKey = text.parse().context("stdin does not hold a key")?;
        Ok(sk.public_key())
    } else {
        text.parse().context("stdin does not hold a key")
    }
}

fn pubkey() -> Outcome {
    let text = read_stdin_key()?;
    let sk: PrivateKey = text.parse().context("stdin does not hold a private key")?;
    out(format_args!("{}\n", sk.public_key()))?;
    Ok(0)
}

fn workbit(args: &Args) -> Outcome {
    let pk = read_stdin_public_key()?;
    let bits = pk.workbits(args.get("namespace").unwrap_or(DEFAULT_NAMESPACE));
    out(format_args!("{bits}\n"))?;
    Ok(0)
}

fn load_config(path: &str) -> anyhow::Result<NetworkSpec> {
    let parsed = config::load(Path::new(path))?;
    for w in &parsed.warnings {
        eprintln!("{path}:{w}");
    }
    Ok(parsed.spec)
}

fn orchid(args: &Args) -> Outcome {
    let network = match args.positional(0) {
        Some(path) => load_config(path)?.name,
        None => args
            .get("namespace")
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string(),
    };
    let pk = read_stdin_public_key()?;
    out(format_args!("{}\n", pk.orchid(&network)))?;
    Ok(0)
}

fn genkey(args: &Args) -> Outcome {
    let (mut bits, mut namespace) = (0u8, DEFAULT_NAMESPACE.to_string());
    if let Some(path) = args.positional(0) {
        let spec = load_config(path)?;
        bits = spec.workbits;
        namespace = spec.namespace;
    }
    if let Some(b) = args.number::<u8>("workbit")? {
        bits = b;
    }
    if let Some(ns) = args.get("namespace") {
        namespace = ns.to_string();
    }
    if bits > 64 {
        return Err(Usage {
            command: Some("genkey"),
            message: format!("workbit {bits} is beyond reach; use at most 64"),
        }
        .into());
    }
    let threads = match args.number::<usize>("threads")? {
        Some(0) => {
            return Err(Usage {
                command: Some("genkey"),
                message: "'threads' must be at least 1".into(),
            }
            .into());
        }
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let key = if bits == 0 {
        PrivateKey::generate().map_err(|e| anyhow!("no random source: {e}"))?
    } else {
        match search_with_progress(bits, &namespace, threads)? {
            Some(k) => k,
            None => {
                eprintln!("wh: key search interrupted");
                return Ok(130);
            }
        }
    };
    out(format_args!("{}\n", key.to_base64()))?;
    Ok(0)
}

fn search_with_progress(
    bits: u8,
    namespace: &str,
    threads: usize,
) -> anyhow::Result<Option<PrivateKey>> {
    let state = search::SearchState::new();
    let on_interrupt = state.clone();
    // Only one handler per process may be set; a second call is harmless to skip.
    let _ = ctrlc::set_handler(move || on_interrupt.stop());
    let show = std::io::stderr().is_terminal();
    let expected = search::expected_tries(bits);
    let found = std::thread::scope(|scope| {
        let worker = scope.spawn(|| search::search(bits, namespace, threads, &state));
        let start = Instant::now();
        let mut shown = false;
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
            let elapsed = start.elapsed();
            if show && elapsed > Duration::from_secs(1) && !state.is_stopped() {
                let tries = state.tries() as f64;
                let rate = tries / elapsed.as_secs_f64();
                let eta = if rate > 0.0 {
                    expected / rate
                } else {
                    f64::INFINITY
                };
                eprint!(
                    "\rsearching a key with {bits} workbits: {:.0} tried, {:.0}/s on {threads} threads, {:.0} s of an expected {:.0} s",
                    tries,
                    rate,
                    elapsed.as_secs_f64(),
                    eta
                );
                let _ = std::io::stderr().flush();
                shown = true;
            }
        }
        if shown {
            eprintln!();
        }
        worker.join().ok().flatten()
    });
    Ok(found)
}

fn check(args: &Args) -> Outcome {
    let path = args.positional(0).unwrap_or_default();
    let parsed = match config::load(Path::new(path)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            if let config::LoadError::Invalid { diagnostics, .. } = &e {
                eprintln!("{path}: {} error(s)", diagnostics.errors.len());
            }
            return Ok(1);
        }
    };
    for w in &parsed.warnings {
        eprintln!("{path}:{w}");
    }
    let spec = &parsed.spec;
    if args.flag("--json") {
        let doc = serde_json::json!({
            "name": spec.name,
            "subnet": spec.subnet,
            "workbits": spec.workbits,
            "namespace": spec.namespace,
            "nodes": spec.members(),
        });
        let text = serde_json::to_string_pretty(&doc).context("cannot print JSON")?;
        out(format_args!("{text}\n"))?;
        return Ok(0);
    }
    out(check_table(spec))?;
    Ok(0)
}

/// The table `wh check` prints.
pub fn check_table(spec: &NetworkSpec) -> String {
    let mut out = format!(
        "network {}, subnet {}, workbit {}, namespace {}\n",
        spec.name,
        spec.subnet.map_or("none".to_string(), |s| s.to_string()),
        spec.workbits,
        spec.namespace
    );
    let rows: Vec<[String; 6]> = spec
        .members()
        .iter()
        .map(|m| {
            [
                m.peer.hostname.clone().unwrap_or_else(|| "-".into()),
                m.peer.key.short(10),
                m.ipv4.map_or("-".into(), |i| i.to_string()),
                m.ipv6.map_or("-".into(), |i| i.to_string()),
                m.peer
                    .endpoint
                    .as_ref()
                    .map_or("-".into(), |e| e.to_string()),
                m.peer.role.to_string(),
            ]
        })
        .collect();
    let header = ["HOSTNAME", "KEY", "IPV4", "IPV6", "ENDPOINT", "ROLE"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        s + "\n"
    };
    out += &line(&header.map(String::from));
    for r in &rows {
        out += &line(r);
    }
    out
}
