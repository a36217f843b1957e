//! A real CNI runtime: podman 4.3 with its CNI backend and runc, inside a
//! lab namespace ("the node") made by the test, with a second namespace as
//! "the internet" (203.0.113.0/24). Containers run from a busybox root file
//! system (no image).
//!
//! Checks: two containers ping each other and the node; a container reaches
//! the internet through our masquerade (the listener there sees the node's
//! address, and the masquerade counter moved only then); `podman stop`
//! releases the host-local address; a container killed hard leaks its
//! attachment until a GC (called as a 1.1 runtime would) cleans its veth and
//! its address; the nft table goes with the last container.
//!
//! Needs root, podman, runc, busybox (busybox-static), nsenter, ip, nft and
//! /usr/lib/cni/{host-local,portmap}; skips with a message otherwise.

mod common;

use common::{Lab, PLUGIN, cni, ipam_allocations, links, must, run_timeout};
use serde_json::json;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wirehub_cni::net::host_veth_name;

const NET: &str = "whcpod";

struct Podman {
    host_ns: String,
    conf: PathBuf,
    storage: PathBuf,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage);
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = run_timeout(&mut self.cmd(args), Duration::from_secs(90));
        let so = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            eprintln!(
                "podman {args:?}: {}\n{so}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (out.status.success(), so)
    }

    fn must(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "podman {args:?} failed");
        out
    }

    fn ip_of(&self, cid: &str) -> String {
        let out = self.must(&["exec", cid, "ip", "-4", "-o", "addr", "show", "eth0"]);
        // "2: eth0    inet 10.244.1.2/32 scope global eth0"
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address in {out:?}"))
            .to_string()
    }
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("rootfs dir");
    }
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox");
    std::fs::copy(bb, dir.join("bin/busybox")).expect("copy busybox");
    for a in ["sh", "ping", "ip", "nc", "sleep", "true", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).expect("symlink");
    }
}

/// One TCP connection accepted in namespace `ns`: (peer, bytes).
fn listen_once(ns: &str, addr: SocketAddr) -> mpsc::Receiver<Result<(SocketAddr, String), String>> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let res = (|| -> Result<(SocketAddr, String), String> {
            // This thread alone moves into the namespace.
            let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())?;
            let l = TcpListener::bind(addr).map_err(|e| e.to_string())?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            let start = Instant::now();
            loop {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).map_err(|e| e.to_string())?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))
                            .map_err(|e| e.to_string())?;
                        let mut buf = Vec::new();
                        let _ = s.read_to_end(&mut buf);
                        return Ok((peer, String::from_utf8_lossy(&buf).into_owned()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if start.elapsed() > Duration::from_secs(30) {
                            return Err("no connection within 30 s".into());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        })();
        let _ = ready_tx.send(());
        let _ = tx.send(res);
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(10));
    rx
}

fn masq_packets(host: &str) -> u64 {
    let out = must(&[
        "ip",
        "netns",
        "exec",
        host,
        "nft",
        "list",
        "chain",
        "inet",
        "wirehub-cni",
        "postrouting",
    ]);
    out.lines()
        .filter(|l| l.contains("ip saddr @pods4"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn podman_containers_on_the_pod_network() {
    skip_unless!(
        "podman",
        "runc",
        "busybox",
        "nsenter",
        "ip",
        "nft",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap"
    );
    let mut lab = Lab::new("p");
    let host = lab.netns("host");
    let inet = lab.netns("inet");
    let (vh, vi) = (format!("{}h", lab.tag), format!("{}i", lab.tag));
    must(&[
        "ip", "-n", &host, "link", "add", &vh, "type", "veth", "peer", "name", &vi, "netns", &inet,
    ]);
    must(&[
        "ip",
        "-n",
        &host,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        &vh,
    ]);
    must(&[
        "ip",
        "-n",
        &inet,
        "addr",
        "add",
        "203.0.113.2/24",
        "dev",
        &vi,
    ]);
    must(&["ip", "-n", &host, "link", "set", &vh, "up"]);
    must(&["ip", "-n", &inet, "link", "set", &vi, "up"]);

    let d = lab.dir.clone();
    for sub in ["plugins", "net", "tmp", "storage", "run", "R"] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(PLUGIN, d.join("plugins/wirehub-cni")).expect("plugin link");
    rootfs(&d.join("R"));
    write(
        &d.join("containers.conf"),
        &format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [network]\nnetwork_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{p}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{n}\"\ndefault_network = \"{NET}\"\n\
             default_subnet = \"198.51.100.0/27\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\ntmp_dir = \"{t}\"\n",
            p = d.join("plugins").display(),
            n = d.join("net").display(),
            t = d.join("tmp").display()
        ),
    );
    write(
        &d.join("storage.conf"),
        &format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("storage").display(),
            d.join("run").display()
        ),
    );
    // podman 4.3's libcni reads results up to 1.0.0; GC below speaks 1.1.0.
    let plugin_conf = json!({
        "type": "wirehub-cni",
        "mtu": 1420,
        "podSubnet": "10.244.0.0/16",
        "overlaySubnet": "10.0.0.0/24",
        "stateDir": d.join("state"),
        "logFile": d.join("plugin.log"),
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": d.join("ipam")},
    });
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [plugin_conf.clone(), {"type": "portmap", "capabilities": {"portMappings": true}}],
    });
    write(
        &d.join(format!("net/{NET}.conflist")),
        &conflist.to_string(),
    );

    let pm = Podman {
        host_ns: host.clone(),
        conf: d.join("containers.conf"),
        storage: d.join("storage.conf"),
    };
    {
        let (h, c, s) = (host.clone(), pm.conf.clone(), pm.storage.clone());
        lab.on_drop.push(Box::new(move || {
            // Remove every container of this lab's own storage (twice: see
            // the note on killed containers below).
            for _ in 0..2 {
                let _ = run_timeout(
                    Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{h}"))
                        .args(["podman", "rm", "-f", "-a", "-t", "0"])
                        .env("CONTAINERS_CONF", &c)
                        .env("CONTAINERS_STORAGE_CONF", &s),
                    Duration::from_secs(120),
                );
            }
        }));
    }
    let rootfs_dir = d.join("R").display().to_string();
    let start = |name: &str| -> String {
        pm.must(&[
            "run",
            "-d",
            "--name",
            name,
            "--rootfs",
            &rootfs_dir,
            "sleep",
            "600",
        ])
    };

    // Two containers reach each other and the node.
    let a = start(&format!("{}-a", lab.tag));
    let b = start(&format!("{}-b", lab.tag));
    let (ip_a, ip_b) = (pm.ip_of(&a), pm.ip_of(&b));
    eprintln!("a={ip_a} b={ip_b}");
    assert!(ip_a.starts_with("10.244.1.") && ip_b.starts_with("10.244.1.") && ip_a != ip_b);
    let mtu = pm.must(&["exec", &a, "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1420");
    assert!(links(&host).contains(&host_veth_name(&a, "eth0")));
    pm.must(&["exec", &a, "ping", "-c", "2", "-W", "2", &ip_b]);
    pm.must(&["exec", &b, "ping", "-c", "2", "-W", "2", &ip_a]);
    pm.must(&["exec", &a, "ping", "-c", "1", "-W", "2", "203.0.113.1"]);
    must(&[
        "ip", "netns", "exec", &host, "busybox", "ping", "-c", "1", "-W", "2", &ip_a,
    ]);
    assert_eq!(
        masq_packets(&host),
        0,
        "pod-to-pod traffic must not be masqueraded"
    );

    // The internet sees the node's address, not the pod's.
    let rx = listen_once(
        &inet,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)), 8080),
    );
    pm.must(&[
        "exec",
        &a,
        "sh",
        "-c",
        "echo hello-from-pod | nc -w 3 203.0.113.2 8080",
    ]);
    let (peer, data) = rx
        .recv_timeout(Duration::from_secs(40))
        .expect("listener thread")
        .expect("listener");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        "source seen outside"
    );
    assert!(data.contains("hello-from-pod"), "{data:?}");
    assert!(
        masq_packets(&host) >= 1,
        "the masquerade rule counted the connection"
    );

    // Stopping a container releases its address and its veth.
    let ipam_dir = d.join("ipam");
    assert!(ipam_allocations(&ipam_dir, NET).contains(&ip_b));
    pm.must(&["stop", "-t", "0", &b]);
    assert!(
        !ipam_allocations(&ipam_dir, NET).contains(&ip_b),
        "stop released the address"
    );
    assert!(!links(&host).contains(&host_veth_name(&b, "eth0")));
    pm.must(&["rm", &b]);

    // A container killed hard: no DEL comes, the attachment leaks...
    let c = start(&format!("{}-c", lab.tag));
    let ip_c = pm.ip_of(&c);
    let pids = pm.must(&["inspect", "-f", "{{.State.ConmonPid}} {{.State.Pid}}", &c]);
    for pid in pids.split_whitespace() {
        must(&["kill", "-9", pid]);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(ipam_allocations(&ipam_dir, NET).contains(&ip_c));
    assert!(links(&host).contains(&host_veth_name(&c, "eth0")));
    // ...until GC, called as a 1.1 runtime would with the attachments it knows.
    let mut gc = plugin_conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["name"] = json!(NET);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a, "ifname": "eth0"}]);
    let cni_path = format!("{}:/usr/lib/cni", d.join("plugins").display());
    let (rc, out) = cni(PLUGIN, &host, "GC", &[("CNI_PATH", cni_path.as_str())], &gc);
    assert_eq!((rc, out.as_str()), (0, ""), "GC");
    assert!(
        !ipam_allocations(&ipam_dir, NET).contains(&ip_c),
        "GC released the address"
    );
    assert!(
        ipam_allocations(&ipam_dir, NET).contains(&ip_a),
        "GC kept the valid one"
    );
    assert!(
        !links(&host).contains(&host_veth_name(&c, "eth0")),
        "GC removed the veth"
    );
    pm.must(&["exec", &a, "ping", "-c", "1", "-W", "2", "203.0.113.1"]);
    // The runtime's own cleanup of the dead container still succeeds.
    // (podman 4.3 may fail the first `rm -f` of a container whose conmon
    // died with "container state improper"; the next one succeeds.)
    let ok = (0..3).any(|_| pm.run(&["rm", "-f", "-t", "0", &c]).0);
    assert!(ok, "rm -f of the killed container");

    // The last container goes: no address, no veth, no table.
    pm.must(&["rm", "-f", "-t", "0", &a]);
    assert!(ipam_allocations(&ipam_dir, NET).is_empty());
    assert!(
        !links(&host).contains(&host_veth_name(&a, "eth0")),
        "{}",
        links(&host)
    );
    let rules = must(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]);
    assert!(!rules.contains("wirehub-cni"), "{rules}");
}
