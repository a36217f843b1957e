//! The CLI's side of the control socket, and the rendering of `wh show`.

use super::{PathStatus, Request, Response, Status, run_dir, socket_path};
use crate::cli::Args;
use crate::cli::commands::{Failure, Outcome};
use anyhow::{Context, anyhow};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long the CLI waits for an answer (a lookup may take several rounds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the daemon of `interface` and returns its answer.
pub fn request(interface: &str, req: &Request) -> anyhow::Result<serde_json::Value> {
    let path = socket_path(interface);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        anyhow!(
            "interface {interface} is not running (no answer on {}: {e}); 'wh show interfaces' lists the running ones",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok();
    let mut line = serde_json::to_string(req).context("cannot encode the request")?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("cannot send the request")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("no answer from the daemon")?;
    match serde_json::from_str::<Response>(&answer)
        .context("the daemon's answer is not understood")?
    {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(anyhow!("{e}")),
    }
}

/// Names of the interfaces whose daemons answer, sorted.
pub fn interface_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(run_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let iface = name.strip_suffix(".sock")?.to_string();
            UnixStream::connect(e.path()).ok().map(|_| iface)
        })
        .collect();
    names.sort();
    names
}

/// Hostnames and key prefixes of an interface's peers, for completion.
pub fn peer_names(interface: &str) -> Vec<String> {
    let Ok(v) = request(interface, &Request::Show) else {
        return Vec::new();
    };
    let Ok(status) = serde_json::from_value::<Status>(v) else {
        return Vec::new();
    };
    status
        .peers
        .into_iter()
        .map(|p| p.hostname.unwrap_or(p.key))
        .collect()
}

fn status_of(interface: &str) -> anyhow::Result<Status> {
    let v = request(interface, &Request::Show)?;
    serde_json::from_value(v).context("the daemon's status is not understood")
}

/// Runs a command that needs a daemon.
pub fn run(name: &str, args: &Args) -> Outcome {
    let arg = |i: usize| args.positional(i).unwrap_or_default().to_string();
    match name {
        "up" => crate::node::launch::up(args),
        "show" => show(args),
        "down" => {
            request(&arg(0), &Request::Down)?;
            Ok(0)
        }
        "reload" => {
            let v = request(&arg(0), &Request::Reload)?;
            if let Some(s) = v.as_str() {
                println!("{s}");
            }
            Ok(0)
        }
        "inspect" => {
            let v = request(&arg(0), &Request::Inspect)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).context("cannot print JSON")?
            );
            Ok(0)
        }
        "lookup" => {
            let v = request(&arg(0), &Request::Lookup { peer: arg(1) })?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).context("cannot print JSON")?
            );
            Ok(0)
        }
        "ping" => {
            let v = request(&arg(0), &Request::Ping { peer: arg(1) })?;
            let rtt = v.get("rtt_ms").and_then(|r| r.as_f64()).unwrap_or_default();
            let via = v.get("via").and_then(|r| r.as_str()).unwrap_or("?");
            println!("pong from {} via {via}: time={rtt:.3} ms", arg(1));
            Ok(0)
        }
        "forget" => {
            request(&arg(0), &Request::Forget { peer: arg(1) })?;
            Ok(0)
        }
        "resolve" => resolve(&arg(0)),
        other => Err(Failure::Runtime(anyhow!(
            "'{other}' is not a daemon command"
        ))),
    }
}

fn resolve(name: &str) -> Outcome {
    let interfaces = interface_names();
    if interfaces.is_empty() {
        return Err(anyhow!(
            "no WireHub interface is running; names resolve through a running network"
        )
        .into());
    }
    for i in &interfaces {
        if let Ok(v) = request(
            i,
            &Request::Resolve {
                name: name.to_string(),
            },
        ) && let Some(list) = v.as_array()
            && !list.is_empty()
        {
            for item in list {
                println!("{}", item.as_str().unwrap_or_default());
            }
            return Ok(0);
        }
    }
    Err(anyhow!("'{name}' is not a name or address of any running network").into())
}

fn show(args: &Args) -> Outcome {
    let which = args.positional(0);
    let all = args.positional(1) == Some("all")
        || (which == Some("all") && args.positional(1) != Some("light"));
    let interfaces = match which {
        None | Some("all") => interface_names(),
        Some("interfaces") => {
            for i in interface_names() {
                println!("{i}");
            }
            return Ok(0);
        }
        Some(i) => vec![i.to_string()],
    };
    if interfaces.is_empty() {
        println!("no WireHub interface is running; start one with 'wh up CONFIG'");
        return Ok(0);
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut first = true;
    for i in interfaces {
        let status = status_of(&i)?;
        if !first {
            println!();
        }
        first = false;
        print!("{}", render(&status, all, colour));
    }
    Ok(0)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The original's layout: a header, the public key, then one line per peer.
pub fn render(s: &Status, all: bool, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut out = format!(
        "interface {}, network {}, node {} <{}>\n",
        paint("1", &s.interface),
        s.network,
        s.node.as_deref().unwrap_or(""),
        s.nat
    );
    out += &format!("public key: {}\n", s.public_key);
    if let Some(ip) = &s.ipv4 {
        out += &format!("address: {ip}");
        if let Some(ip6) = &s.ipv6 {
            out += &format!(", {ip6}");
        }
        out += &format!(" (port {}, {})\n", s.listen_port, s.backend);
    }
    out += "peers\n";
    for p in &s.peers {
        let name = p
            .hostname
            .clone()
            .unwrap_or_else(|| p.key.chars().take(10).collect());
        let (glyph, path) = match &p.path {
            PathStatus::Direct { endpoint } => {
                let g = if p
                    .nat
                    .as_deref()
                    .is_some_and(|n| n != "none" && n != "unknown")
                {
                    "◒"
                } else {
                    "●"
                };
                (paint("32", g), endpoint.clone())
            }
            PathStatus::Relayed { via } => {
                (paint("33", "○"), format!("relayed via {}", via.join(", ")))
            }
            PathStatus::Unknown => (paint("31", "◌"), "(not found yet)".to_string()),
        };
        let mut line = format!("{glyph} {name}: {path}");
        if let Some(h) = p.last_handshake_secs {
            line += &format!(", handshake {h} s ago");
        }
        if p.rx_bytes + p.tx_bytes > 0 {
            line += &format!(", rx {} tx {}", bytes(p.rx_bytes), bytes(p.tx_bytes));
        }
        out += &line;
        out += "\n";
    }
    if all {
        out += "dht\n";
        for n in &s.dht {
            let rtt = n.rtt_ms.map(|r| format!(", {r} ms")).unwrap_or_default();
            out += &format!(
                "◒ {}: {} (bucket:{}{rtt})\n",
                &n.key.chars().take(10).collect::<String>(),
                n.endpoint,
                n.bucket
            );
        }
    }
    out
}
