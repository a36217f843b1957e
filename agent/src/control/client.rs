//! The CLI's side of the control socket, and the rendering of `wh show`.

use super::{PathStatus, Request, Response, Status, Stopping, log_path, run_dir, socket_path};
use crate::cli::commands::{Failure, Outcome};
use crate::cli::{Args, out};
use anyhow::{Context, anyhow};
use std::io::{BufRead, BufReader, ErrorKind, IsTerminal, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long the CLI waits for an answer (a lookup may take several rounds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `wh down` waits for the daemon to stop and exit.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to the daemon of `interface` and returns its answer.
pub fn request(interface: &str, req: &Request) -> anyhow::Result<serde_json::Value> {
    exchange(&mut connect(interface)?, req)
}

/// Connects to the control socket of `interface`, saying why not in terms
/// of what to do.
fn connect(interface: &str) -> anyhow::Result<BufReader<UnixStream>> {
    let path = socket_path(interface);
    let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow!(
            "cannot use the control socket {} of interface {interface}: permission denied; run wh as root",
            path.display()
        ),
        _ => anyhow!(
            "interface {interface} is not running (no answer on {}: {e}); 'wh show interfaces' lists the running ones",
            path.display()
        ),
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok();
    Ok(BufReader::new(stream))
}

/// Sends `req` on a connection and reads the answer.
fn exchange(conn: &mut BufReader<UnixStream>, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut line = serde_json::to_string(req).context("cannot encode the request")?;
    line.push('\n');
    conn.get_mut()
        .write_all(line.as_bytes())
        .context("cannot send the request")?;
    let mut answer = String::new();
    conn.read_line(&mut answer)
        .context("no answer from the daemon")?;
    match serde_json::from_str::<Response>(&answer)
        .context("the daemon's answer is not understood")?
    {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(anyhow!("{e}")),
    }
}

/// `wh down I`: asks the daemon to stop, then waits (at most
/// [`DOWN_TIMEOUT`]) until it has: its node closed the control connection,
/// and, when the node owns its process (`wh up`), the process has exited,
/// which releases its UDP port, interface and routes for good. Past the
/// wait it fails, naming the process still alive.
fn down(interface: &str) -> Outcome {
    let mut conn = connect(interface)?;
    // The kernel says who serves the socket, in our own PID namespace.
    let pid = peer_pid(conn.get_ref());
    let answer = exchange(&mut conn, &Request::Down)?;
    // A daemon from before `Stopping` answered a bare string: it exits too.
    let stopping = serde_json::from_value(answer).unwrap_or(Stopping {
        process_exits: true,
    });
    let deadline = Instant::now() + DOWN_TIMEOUT;
    let closed = wait_closed(conn.into_inner(), deadline);
    let exited = match pid {
        Some(pid) if stopping.process_exits => wait_exit(pid, deadline),
        _ => true,
    };
    if closed && exited {
        return Ok(0);
    }
    let log = log_path(interface);
    Err(match pid {
        Some(pid) => anyhow!(
            "the daemon of interface {interface} (pid {pid}) is still stopping after {} s; see {}, or end it with 'kill -9 {pid}'",
            DOWN_TIMEOUT.as_secs(),
            log.display()
        ),
        None => anyhow!(
            "the daemon of interface {interface} did not stop within {} s; see {}",
            DOWN_TIMEOUT.as_secs(),
            log.display()
        ),
    }
    .into())
}

/// Waits until the daemon closes `stream` (its node has stopped), at most
/// until `deadline`.
fn wait_closed(mut stream: UnixStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            // A reset is a close too.
            Err(_) => return true,
        }
    }
}

/// Waits until process `pid` has exited (gone, or a zombie whose parent has
/// not reaped it yet: it holds nothing any more), at most until `deadline`.
fn wait_exit(pid: u32, deadline: Instant) -> bool {
    let proc_stat = format!("/proc/{pid}/stat");
    loop {
        let alive = std::fs::read_to_string(&proc_stat).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            !state.starts_with(['Z', 'X'])
        });
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process serving the other end of a Unix socket (`SO_PEERCRED`);
/// `None` when it lives in a PID namespace we cannot see.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cred`, a ucred
    // owned by this frame; the descriptor is open for the call's duration.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then(|| cred.pid.unsigned_abs())
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
/// `wh up`'s words as the node layer takes them.
fn up_request(args: &Args) -> Result<crate::node::launch::UpRequest, crate::cli::Usage> {
    Ok(crate::node::launch::UpRequest {
        config_path: std::path::PathBuf::from(args.positional(0).unwrap_or_default()),
        private_key: args.get("private-key").map(str::to_string),
        interface: args.get("interface").map(str::to_string),
        listen_port: args.number("listen-port")?,
        mode: args.get("mode").map(str::to_string),
        backend: args.get("backend").map(str::to_string),
        mtu: args.number("mtu")?,
        cni_dir: args.get("cni-dir").map(std::path::PathBuf::from),
        dns: args.get("dns").map(str::to_string),
        dns_port: args.number("dns-port")?,
        hosts: args.get("hosts").map(str::to_string),
        relay_limit: args.number("relay-limit")?,
        foreground: args.flag("--foreground"),
    })
}

pub fn run(name: &str, args: &Args) -> Outcome {
    let arg = |i: usize| args.positional(i).unwrap_or_default().to_string();
    match name {
        "up" => crate::node::launch::up(&up_request(args)?),
        "show" => show(args),
        "down" => down(&arg(0)),
        "reload" => {
            let v = request(&arg(0), &Request::Reload)?;
            if let Some(s) = v.as_str() {
                out(format_args!("{s}\n"))?;
            }
            Ok(0)
        }
        "inspect" => print_json(&request(&arg(0), &Request::Inspect)?),
        "lookup" => print_json(&request(&arg(0), &Request::Lookup { peer: arg(1) })?),
        "ping" => {
            let v = request(&arg(0), &Request::Ping { peer: arg(1) })?;
            let rtt = v.get("rtt_ms").and_then(|r| r.as_f64()).unwrap_or_default();
            let via = v.get("via").and_then(|r| r.as_str()).unwrap_or("?");
            out(format_args!(
                "pong from {} via {via}: time={rtt:.3} ms\n",
                arg(1)
            ))?;
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

/// Prints a value as indented JSON.
fn print_json(v: &impl serde::Serialize) -> Outcome {
    let text = serde_json::to_string_pretty(v).context("cannot print JSON")?;
    out(format_args!("{text}\n"))?;
    Ok(0)
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
            let lines: String = list
                .iter()
                .map(|item| format!("{}\n", item.as_str().unwrap_or_default()))
                .collect();
            out(lines)?;
            return Ok(0);
        }
    }
    Err(anyhow!("'{name}' is not a name or address of any running network").into())
}

fn show(args: &Args) -> Outcome {
    let which = args.positional(0);
    let all = args.positional(1) == Some("all")
        || (which == Some("all") && args.positional(1) != Some("light"));
    let json = args.flag("--json");
    let statuses: Vec<Status> = match which {
        None | Some("all") => interface_names()
            .iter()
            .map(|i| status_of(i))
            .collect::<anyhow::Result<_>>()?,
        Some("interfaces") if json => return print_json(&interface_names()),
        Some("interfaces") => {
            let names: String = interface_names().iter().map(|i| format!("{i}\n")).collect();
            out(names)?;
            return Ok(0);
        }
        Some(i) => {
            let status = status_of(i)?;
            if json {
                return print_json(&Shown::of(&status));
            }
            vec![status]
        }
    };
    if json {
        return print_json(&statuses.iter().map(Shown::of).collect::<Vec<_>>());
    }
    if statuses.is_empty() {
        out("no WireHub interface is running; start one with 'wh up CONFIG'\n")?;
        return Ok(0);
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let tables: Vec<String> = statuses.iter().map(|s| render(s, all, colour)).collect();
    out(tables.join("\n"))?;
    Ok(0)
}

/// One interface in `wh show --json`: its status as the daemon gave it (every
/// field the table shows: peers, their paths, relays and NAT kinds, the DHT
/// neighbours), and the name the table's header gives the node.
#[derive(Debug, serde::Serialize)]
pub struct Shown<'a> {
    #[serde(flatten)]
    pub status: &'a Status,
    /// See [`node_label`].
    pub node_label: String,
}

impl<'a> Shown<'a> {
    pub fn of(status: &'a Status) -> Self {
        Shown {
            status,
            node_label: node_label(status),
        }
    }
}

/// What the node is called in the header: its hostname in the network; a
/// member without one by its key's first characters (as peers are); a node
/// without an overlay address serves the DHT (and relays) only.
pub fn node_label(s: &Status) -> String {
    match &s.node {
        Some(name) => name.clone(),
        None if s.ipv4.is_none() && s.ipv6.is_none() => "public DHT node".into(),
        None => s.public_key.chars().take(10).collect(),
    }
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
    let clock = s
        .clock_offset_ms
        .filter(|o| o.abs() >= crate::proto::CLOCK_REPORT_MS)
        .map(|o| {
            let text = format!("clock {}", crate::proto::describe_offset(o));
            format!(", {}", paint("33", &text))
        })
        .unwrap_or_default();
    let mut out = format!(
        "interface {}, network {}, node {} <{}>{clock}\n",
        paint("1", &s.interface),
        s.network,
        node_label(s),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: Option<&str>, ipv4: Option<&str>) -> Status {
        Status {
            interface: "wh0".into(),
            network: "public".into(),
            node: node.map(String::from),
            nat: "DIRECT".into(),
            public_key: "zW-1lBeQ7IkT6NW6hL_NsV4eOPOwJi_rt1vO-omOEmQ".into(),
            listen_port: 62096,
            backend: "none".into(),
            ipv4: ipv4.map(String::from),
            ipv6: None,
            peers: Vec::new(),
            dht: Vec::new(),
            clock_offset_ms: None,
        }
    }

    fn header(s: &Status) -> String {
        render(s, false, false)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_node_without_hostname_or_address_is_called_a_public_dht_node() {
        assert_eq!(
            header(&status(None, None)),
            "interface wh0, network public, node public DHT node <DIRECT>"
        );
    }

    #[test]
    fn a_member_without_hostname_is_called_by_its_key_as_peers_are() {
        assert_eq!(
            header(&status(None, Some("10.0.42.2"))),
            "interface wh0, network public, node zW-1lBeQ7I <DIRECT>"
        );
        assert_eq!(
            header(&status(Some("node_a"), Some("10.0.42.2"))),
            "interface wh0, network public, node node_a <DIRECT>"
        );
    }

    #[test]
    fn show_json_is_the_status_with_the_headers_name_for_the_node() {
        let s = status(None, None);
        let v = serde_json::to_value(Shown::of(&s)).unwrap();
        assert_eq!(v["node_label"], "public DHT node");
        assert_eq!(v["nat"], "DIRECT");
        assert_eq!(v["public_key"], s.public_key.as_str());
        assert!(v["peers"].is_array() && v["dht"].is_array(), "{v}");
    }
}
