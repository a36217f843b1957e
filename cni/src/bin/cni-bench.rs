//! ADD/DEL latency of wirehub-cni against the reference `bridge` plugin,
//! both with host-local IPAM, called as a runtime calls them (env + stdin,
//! one process per call), N sequential attachments each, in network
//! namespaces this program makes and removes (`whcb<pid>-*`).
//!
//! Run as root: `cargo run --release -p wirehub-cni --bin cni-bench [-- N]`.
//! Needs `ip` (to make the namespaces), nft, iptables (bridge's ipMasq) and
//! /usr/lib/cni/{bridge,host-local}.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CNI_DIR: &str = "/usr/lib/cni";

struct Guard {
    netns: Vec<String>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Guard {
    fn add_netns(&mut self, name: &str) -> Result<()> {
        let st = Command::new("ip").args(["netns", "add", name]).status()?;
        if !st.success() {
            bail!("ip netns add {name} failed");
        }
        self.netns.push(name.to_string());
        Ok(())
    }

    fn del_netns(&mut self, name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        self.netns.retain(|n| n != name);
    }
}

fn call(
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            format!(
                "{}:{CNI_DIR}",
                plugin
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let dt = t.elapsed();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} {cmd} {cid}: {so} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((dt, so))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

struct Run {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// One plugin under test.
struct Case<'a> {
    key: &'a str,
    plugin: &'a Path,
    conf: Value,
}

/// N attachments for every case, interleaved call by call (ADD i of each
/// case, then ADD i+1, ...; then the DELs the same way) so that all cases
/// see the same load on a shared machine.
fn run_cases(g: &mut Guard, tag: &str, cases: &[Case], n: usize) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = cases
        .iter()
        .map(|_| Run {
            add: Vec::with_capacity(n),
            del: Vec::with_capacity(n),
        })
        .collect();
    let mut results: Vec<Vec<Value>> = cases.iter().map(|_| Vec::with_capacity(n)).collect();
    for i in 0..n {
        for (k, c) in cases.iter().enumerate() {
            let ns = format!("{tag}-{}{i}", c.key);
            g.add_netns(&ns)?;
            let (dt, out) = call(
                c.plugin,
                "ADD",
                &format!("{}{i}", c.key),
                &format!("/run/netns/{ns}"),
                &c.conf,
            )?;
            runs[k].add.push(dt);
            results[k].push(serde_json::from_str::<Value>(&out).context("ADD result")?);
        }
    }
    for i in 0..n {
        for (k, c) in cases.iter().enumerate() {
            let ns = format!("{tag}-{}{i}", c.key);
            let mut conf = c.conf.clone();
            conf["prevResult"] = results[k].get(i).cloned().unwrap_or(Value::Null);
            let (dt, _) = call(
                c.plugin,
                "DEL",
                &format!("{}{i}", c.key),
                &format!("/run/netns/{ns}"),
                &conf,
            )?;
            runs[k].del.push(dt);
            g.del_netns(&ns);
        }
    }
    Ok(runs)
}

fn main() -> Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().context("N must be a number")?,
        None => 100,
    };
    if n == 0 {
        bail!("N must be at least 1");
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    if !status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    {
        bail!("cni-bench must run as root (it creates network namespaces)");
    }
    let ours = match std::env::var_os("WIREHUB_CNI_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("wirehub-cni"),
    };
    if !ours.exists() {
        bail!(
            "{} not found (build it: cargo build --release -p wirehub-cni)",
            ours.display()
        );
    }
    let bridge = PathBuf::from(CNI_DIR).join("bridge");
    if !bridge.exists() {
        bail!(
            "{} not found (package containernetworking-plugins)",
            bridge.display()
        );
    }

    let tag = format!("whcb{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let mut g = Guard {
        netns: Vec::new(),
        dir: dir.clone(),
    };
    // The "node": every plugin call runs inside it (inherited from us).
    let host = format!("{tag}-host");
    g.add_netns(&host)?;
    let f = std::fs::File::open(format!("/run/netns/{host}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("enter the bench namespace")?;
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();

    let mut rows = Vec::new();
    for masq in [true, false] {
        let wh = json!({
            "cniVersion": "1.0.0", "name": format!("whbench{}", masq as u8), "type": "wirehub-cni",
            "mtu": 1420, "podSubnet": "10.244.0.0/16", "ipMasq": masq,
            "stateDir": dir.join("state"),
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/16"}]], "dataDir": dir.join("ipam")},
        });
        let br = json!({
            "cniVersion": "1.0.0", "name": format!("brbench{}", masq as u8), "type": "bridge",
            "bridge": format!("{tag}br"), "isGateway": true, "ipMasq": masq, "mtu": 1420,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.0.0/16"}]], "dataDir": dir.join("ipam")},
        });
        let cases = [
            Case {
                key: "w",
                plugin: &ours,
                conf: wh,
            },
            Case {
                key: "b",
                plugin: &bridge,
                conf: br,
            },
        ];
        let mut runs = run_cases(&mut g, &tag, &cases, n)?.into_iter();
        let (mut w, mut b) = match (runs.next(), runs.next()) {
            (Some(w), Some(b)) => (w, b),
            _ => bail!("missing runs"),
        };
        rows.push((
            masq,
            median(&mut w.add),
            p90(&mut w.add),
            median(&mut w.del),
            p90(&mut w.del),
            median(&mut b.add),
            p90(&mut b.add),
            median(&mut b.del),
            p90(&mut b.del),
        ));
    }

    println!("cni-bench: {n} sequential attachments per plugin, host-local IPAM, times per call");
    println!(
        "{:<8} {:<12} {:>12} {:>12} {:>12} {:>12}",
        "ipMasq", "plugin", "ADD median", "ADD p90", "DEL median", "DEL p90"
    );
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    for (masq, wa, wa9, wd, wd9, ba, ba9, bd, bd9) in &rows {
        println!(
            "{:<8} {:<12} {:>12} {:>12} {:>12} {:>12}",
            masq,
            "wirehub-cni",
            ms(*wa),
            ms(*wa9),
            ms(*wd),
            ms(*wd9)
        );
        println!(
            "{:<8} {:<12} {:>12} {:>12} {:>12} {:>12}",
            masq,
            "bridge",
            ms(*ba),
            ms(*ba9),
            ms(*bd),
            ms(*bd9)
        );
        println!(
            "{:<8} {:<12} {:>12.2} {:>12} {:>12.2}",
            masq,
            "ratio w/b",
            wa.as_secs_f64() / ba.as_secs_f64(),
            "",
            wd.as_secs_f64() / bd.as_secs_f64()
        );
    }
    Ok(())
}
