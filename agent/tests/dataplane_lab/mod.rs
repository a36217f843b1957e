//! A small network-namespace lab for the data plane tests and `wg-bench`:
//! namespaces with a per-run prefix, a veth pair, tokio runtimes whose
//! threads live inside a namespace, and guards that delete everything on
//! drop (also when a test fails).
//!
//! Test code may spawn `ip` and `ping`; the product never does.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Logs to the test output, filtered by `RUST_LOG` (nothing by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A per-run, per-call unique tag, short enough for interface names
/// (tag + one letter <= 15 bytes).
pub fn unique_tag(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Runs a command, returning whether it succeeded (output discarded).
pub fn run_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command and panics with its output when it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and processes of one test; all removed on drop.
#[derive(Default)]
pub struct Lab {
    namespaces: Vec<String>,
    /// Interface names whose wireguard-go (if any) must not outlive the lab.
    wg_ifaces: Vec<String>,
}

impl Lab {
    pub fn new() -> Lab {
        Lab::default()
    }

    /// Creates a namespace with `lo` up.
    pub fn netns(&mut self, name: &str) -> String {
        run(&["ip", "netns", "add", name]);
        self.namespaces.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        name.to_string()
    }

    /// A veth pair `a_if` (in `a`, address `a_addr`) <-> `b_if` (in `b`).
    pub fn veth(&mut self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        run(&["ip", "-n", a, "addr", "add", a_addr, "dev", a_if]);
        run(&["ip", "-n", b, "addr", "add", b_addr, "dev", b_if]);
        run(&["ip", "-n", a, "link", "set", a_if, "up"]);
        run(&["ip", "-n", b, "link", "set", b_if, "up"]);
    }

    /// Two namespaces `{tag}a` and `{tag}b` joined by a veth, 203.0.113.1/24
    /// in the first, .2 in the second; returns their names.
    pub fn netns_pair(&mut self, tag: &str) -> (String, String) {
        let a = self.netns(&format!("{tag}a"));
        let b = self.netns(&format!("{tag}b"));
        self.veth(
            &a,
            &format!("{tag}va"),
            "203.0.113.1/24",
            &b,
            &format!("{tag}vb"),
            "203.0.113.2/24",
        );
        (a, b)
    }

    pub fn track_wireguard_go(&mut self, iface: &str) {
        self.wg_ifaces.push(iface.to_string());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for iface in &self.wg_ifaces {
            for pid in wireguard_go_pids(iface) {
                // SAFETY: plain syscall on a process this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            for dir in ["/var/run/wireguard", "/run/wireguard"] {
                let _ = std::fs::remove_file(format!("{dir}/{iface}.sock"));
                let _ = std::fs::remove_file(format!("{dir}/{iface}.name"));
            }
        }
        for ns in &self.namespaces {
            run_ok(&["ip", "netns", "del", ns]);
        }
    }
}

/// PIDs of wireguard-go processes whose command line ends in `iface`.
pub fn wireguard_go_pids(iface: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
            args.len() >= 2
                && args[0].ends_with(b"wireguard-go")
                && args.last().is_some_and(|a| *a == iface.as_bytes())
        })
        .collect()
}

/// A tokio runtime whose worker threads live in network namespace `ns`:
/// sockets, TUN devices and netlink connections opened by tasks spawned on
/// it belong there. (`block_on` runs on the caller's thread: spawn instead.)
pub fn runtime_in(ns: &str, workers: usize) -> tokio::runtime::Runtime {
    let path = format!("/run/netns/{ns}");
    let rt = std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace descriptor affects this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
    .join()
    .expect("runtime thread");
    // Check that tasks really run inside the namespace.
    let want = std::fs::metadata(format!("/run/netns/{ns}"))
        .expect("netns file")
        .ino();
    let got = rt
        .block_on(rt.spawn(async {
            std::fs::metadata("/proc/thread-self/ns/net")
                .expect("own netns")
                .ino()
        }))
        .expect("probe task");
    assert_eq!(got, want, "runtime threads are not in namespace {ns}");
    rt
}

/// Runs `fut` on a worker of `rt` (inside its namespace) and waits for it.
pub fn run_in<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), rt.spawn(fut))
            .await
            .expect("task timed out")
            .expect("task panicked")
    })
}

/// One ping (1 s timeout) from namespace `ns`.
pub fn ping(ns: &str, addr: &str) -> bool {
    run_ok(&[
        "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q", addr,
    ])
}

/// Pings until one answer comes back, `tries` times at most.
pub fn ping_until(ns: &str, addr: &str, tries: usize) -> bool {
    (0..tries).any(|_| ping(ns, addr))
}

/// Whether interface `name` exists in namespace `ns`.
pub fn link_exists(ns: &str, name: &str) -> bool {
    run_ok(&["ip", "-n", ns, "link", "show", "dev", name])
}
