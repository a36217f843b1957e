//! Lab helpers for the integration tests: namespaces with a per-run prefix,
//! commands with a time limit, and the skip rule (not root, tool missing).
//!
//! The tests may spawn `ip`, `nsenter` and `podman`; the plugin itself never
//! spawns anything but its IPAM plugin and `nft`.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_wirehub-cni");
pub const CNI_DIR: &str = "/usr/lib/cni";

pub fn is_root() -> bool {
    // SAFETY-free: read our own effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn in_path(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).is_file())
}

/// `Some(reason)` when the lab cannot run here.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !in_path(t)).collect();
    if !missing.is_empty() {
        return Some(format!("missing {}", missing.join(", ")));
    }
    None
}

#[macro_export]
macro_rules! skip_unless {
    ($($tool:expr),*) => {
        if let Some(why) = common::skip_reason(&[$($tool),*]) {
            eprintln!("skipped: {why} (this lab test needs root and: {})", [$($tool),*].join(", "));
            return;
        }
    };
}

/// Run a command with a time limit; panics with its output on timeout.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            panic!("timed out after {limit:?}: {desc}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {desc}: {e}"))
}

/// Run, and panic unless it succeeds. Returns stdout.
pub fn must(args: &[&str]) -> String {
    let out = run_timeout(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and ignore the result (cleanup).
pub fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Call the plugin (or any CNI plugin) as a runtime does, inside `host_ns`.
pub fn cni(
    plugin: &str,
    host_ns: &str,
    command: &str,
    env: &[(&str, &str)],
    config: &serde_json::Value,
) -> (i32, String) {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{host_ns}"))
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("[{command} stderr] {}", stderr.trim());
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Namespaces, a directory, and PIDs made by one test; all removed on drop
/// (also when the test panics).
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    pub netns: Vec<String>,
    pub pids: Vec<u32>,
    pub on_drop: Vec<Box<dyn FnMut()>>,
}

impl Lab {
    /// `tag` must be short: it prefixes interface names (15 characters max).
    pub fn new(suffix: &str) -> Lab {
        let tag = format!("whc{}{suffix}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab dir");
        Lab {
            tag,
            dir,
            netns: Vec::new(),
            pids: Vec::new(),
            on_drop: Vec::new(),
        }
    }

    /// Create `<tag>-<name>` with loopback up; returns its name.
    pub fn netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        quiet(&["ip", "netns", "del", &ns]);
        must(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for f in self.on_drop.iter_mut().rev() {
            f();
        }
        for p in &self.pids {
            quiet(&["kill", "-9", &p.to_string()]);
        }
        // Deleting a namespace deletes its interfaces, routes and nft tables.
        for ns in self.netns.iter().rev() {
            quiet(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Files host-local keeps for allocated addresses (everything but its
/// bookkeeping files).
pub fn ipam_allocations(data_dir: &Path, network: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join(network))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn links(ns: &str) -> String {
    must(&["ip", "-n", ns, "-o", "link", "show"])
}
