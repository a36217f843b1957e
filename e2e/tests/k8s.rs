//! WireHub on a real Kubernetes cluster in the lab: kube-apiserver,
//! kube-controller-manager, kube-scheduler, and three nodes (containerd,
//! kubelet, kube-proxy), built from Debian's `kubernetes` source package and
//! cached outside the repository (e2e/k8s/build-k8s.sh). The control plane
//! sits on the lab's internet; one node has a public address, one is behind
//! an easy NAT, one behind a hard (symmetric) NAT. The control plane's host
//! is not a node: it joins the overlay as an edge host, with plain `wh up`
//! and the network file printed from the resource, as a control plane
//! outside the cluster's nodes must (the API server then reaches pods, as
//! Kubernetes' proxy tests need). WireHub is installed with the Helm chart's own templates,
//! rendered here (there is no helm binary; see `render_chart`).
//!
//! Skipped (with a message) when not root. Needs the packages of
//! e2e/install-deps.sh (containerd, etcd-server, kubectl, ...).

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, Nat, wh_bin};

/// Host-wide sysctls kubelet (and kube-proxy) may change: saved before,
/// restored after.
const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
];

const NETWORK: &str = "lab";
const AGENT_NS: &str = "kube-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn log(t0: Instant, what: &str) {
    eprintln!("[k8s {:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it gives a value or `timeout` passes.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} {last_err}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_wirehub_chart_renders_to_valid_manifests() {
    // The whole chart renders, and every document is valid YAML.
    let (text, crds) =
        wirehub_e2e::chart::render_chart(&repo().join("charts/wirehub"), &json!({}), "kube-system")
            .unwrap();
    assert_eq!(crds.len(), 1);
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
            kinds.push(k.to_string());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "ServiceAccount",
            "WireHubNetwork"
        ]
    );
    assert!(text.contains("add: [NET_ADMIN, NET_RAW]"), "{text}");
    // The agents write WireHubNodes, never Nodes.
    let role: Value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ClusterRole")
        .unwrap();
    let verbs = |resource: &str| -> Vec<String> {
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
            .flat_map(|r| {
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(verbs("nodes"), ["get", "list", "watch"]);
    assert_eq!(
        verbs("wirehubnodes"),
        ["get", "list", "watch", "create", "patch"]
    );
    assert_eq!(verbs("wirehubnodes/status"), ["get", "patch"]);
    assert!(text.contains("readOnlyRootFilesystem: true"), "{text}");
}

#[test]
fn chart_serves_a_service_monitor_and_the_dashboard_on_request() {
    let (text, _) = wirehub_e2e::chart::render_chart(
        &repo().join("charts/wirehub"),
        &json!({"metrics": {"serviceMonitor": true, "grafanaDashboard": true}}),
        "kube-system",
    )
    .unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d.get("kind").and_then(|v| v.as_str()) == Some(k))
    };
    let monitor = kind("ServiceMonitor").expect("a ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    assert_eq!(
        kind("Service").expect("a Service")["spec"]["clusterIP"].as_str(),
        Some("None")
    );
    let dashboard = kind("ConfigMap").expect("the dashboard's ConfigMap");
    let json = dashboard["data"]["wirehub.json"]
        .as_str()
        .expect("wirehub.json");
    let parsed: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(parsed["uid"].as_str(), Some("wirehub-overview"));
    // Off by default.
    let (text, _) =
        wirehub_e2e::chart::render_chart(&repo().join("charts/wirehub"), &json!({}), "kube-system")
            .unwrap();
    assert!(!text.contains("ServiceMonitor") && !text.contains("wirehub-dashboard"));
}

// ---------------------------------------------------------------- the cluster

struct NodeInfo {
    name: String,
    host: Host,
}

/// The cluster; dropping it stops and removes everything it started
/// (before the [`Lab`] removes the namespaces).
/// The last `n` lines of `text`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last kernel messages (a device that cannot be freed, a hung task).
fn kernel_tail() -> String {
    run(Command::new("sh").arg("-c").arg("dmesg | tail -n 20"))
        .map(|s| format!("kernel messages:\n{s}"))
        .unwrap_or_default()
}

/// Whether process `pid` still runs (a zombie has exited).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// What process `pid` is doing: the state and kernel wait channel of each
/// of its threads, and the kernel stack of those not running or sleeping
/// in user space (what a process that does not exit waits for).
fn process_report(pid: u32) -> String {
    let mut s = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        let (name, state) = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .map(|(n, r)| (n.to_string(), r.chars().next().unwrap_or('?')))
            .unwrap_or_default();
        s += &format!(
            "thread {} {name} state {state} wchan {}\n",
            t.file_name().to_string_lossy(),
            read("wchan")
        );
        if state == 'D' {
            s += &read("stack");
        }
    }
    s
}

/// One ping from a pod's network namespace (the pod's process `pid`).
fn ping_from(pid: u32, target: &str, wait_s: u32) -> bool {
    Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
        ])
        .arg(wait_s.to_string())
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    cp: Host,
    nodes: Vec<NodeInfo>,
    sysctls: Vec<(String, String)>,
    kubectl: String,
    /// Whether containerd's cgroup parent (k8s.io) was there before.
    cgroup_parent_existed: bool,
}

impl Cluster {
    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.cp.netns,
            &self.kubectl,
            "--kubeconfig",
        ])
        .arg(self.dir.join("cp/admin.kubeconfig"))
        .args(["--request-timeout=20s"])
        .args(args);
        c
    }

    fn k(&self, args: &[&str]) -> Result<String> {
        run(&mut self.kubectl_cmd(args))
    }

    fn k_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let mut c = self.kubectl_cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        if let Some(mut s) = child.stdin.take() {
            use std::io::Write;
            s.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.k(&a)?)?)
    }

    /// `kubectl get pods` of the WireHub agents (on `node` only, if given),
    /// with more arguments (the output format).
    fn agent_pods(&self, node: Option<&str>, more: &[&str]) -> Result<String> {
        let on_node = node.map(|n| format!("spec.nodeName={n}"));
        let mut args = vec![
            "-n",
            AGENT_NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=wirehub-agent",
        ];
        if let Some(f) = &on_node {
            args.extend(["--field-selector", f.as_str()]);
        }
        args.extend_from_slice(more);
        self.k(&args)
    }

    /// `kubectl patch` of the test's WireHubNetwork: a `merge` or `json` patch.
    fn patch_network(&self, kind: &str, patch: &Value) -> Result<String> {
        self.k(&[
            "patch",
            "wirehubnetwork",
            NETWORK,
            "--type",
            kind,
            "-p",
            &patch.to_string(),
        ])
    }

    /// [`Cluster::agent_pods`] as JSON.
    fn agent_pods_json(&self, node: Option<&str>) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.agent_pods(node, &["-o", "json"])?,
        )?)
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    /// The Ready condition of each node: name -> (status, message).
    fn node_ready(&self) -> Result<BTreeMap<String, (String, String)>> {
        let v = self.json(&["get", "nodes"])?;
        let mut m = BTreeMap::new();
        for n in v["items"].as_array().cloned().unwrap_or_default() {
            let name = n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let cond = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or(Value::Null);
            m.insert(
                name,
                (
                    cond["status"].as_str().unwrap_or("Unknown").to_string(),
                    cond["message"].as_str().unwrap_or_default().to_string(),
                ),
            );
        }
        Ok(m)
    }

    /// PIDs of the containers of a node (from its containerd).
    fn task_pids(&self, node: &str) -> Result<Vec<u32>> {
        let sock = self.node_dir(node).join("containerd/containerd.sock");
        let out = run(Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "task", "ls"]))?;
        Ok(out
            .lines()
            .skip(1)
            .filter(|l| l.contains("RUNNING"))
            .filter_map(|l| l.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            .collect())
    }

    /// The PID of the agent container of the agent pod `pod` on `node`
    /// (its `wh agent` process, as containerd started it).
    fn agent_pid(&self, node: &str, pod: &str) -> Result<u32> {
        let v = self.json(&["-n", AGENT_NS, "get", "pod", pod])?;
        let id = v["status"]["containerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "agent"))
            .and_then(|s| s["containerID"].as_str())
            .and_then(|id| id.strip_prefix("containerd://"))
            .ok_or_else(|| anyhow!("pod {pod} has no agent container ID"))?
            .to_string();
        let sock = self.node_dir(node).join("containerd/containerd.sock");
        let out = run(Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "task", "ls"]))?;
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("containerd on {node} has no task {id} (pod {pod})"))
    }

    /// A PID in the network namespace of the pod with address `ip` on `node`.
    fn pod_pid(&self, node: &str, ip: &str) -> Result<u32> {
        for pid in self.task_pids(node)? {
            let out = Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-n",
                    "ip",
                    "-4",
                    "-o",
                    "addr",
                    "show",
                ])
                .output();
            if let Ok(o) = out
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/"))
            {
                return Ok(pid);
            }
        }
        bail!("no container on {node} has address {ip}")
    }

    /// The log file of the agent container of agent pod `pod` on `node`,
    /// opened: it stays readable after kubelet removes the pod's logs.
    fn open_agent_log(&self, node: &str, pod: &str) -> Result<std::fs::File> {
        let logdir = self.node_dir(node).join("mnt/varlogpods");
        let prefix = format!("{AGENT_NS}_{pod}_");
        let pod_dir = std::fs::read_dir(&logdir)?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .ok_or_else(|| anyhow!("no log directory for pod {pod} in {}", logdir.display()))?
            .path()
            .join("agent");
        // N.log, N the container's restart count: the newest.
        let newest = std::fs::read_dir(&pod_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max_by_key(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
            })
            .ok_or_else(|| anyhow!("no agent log in {}", pod_dir.display()))?;
        Ok(std::fs::File::open(newest)?)
    }

    fn agent_logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let pods = self
                .agent_pods(Some(&n.name), &["-o", "name"])
                .unwrap_or_default();
            for p in pods.lines() {
                s += &format!("==== {} {p}\n", n.name);
                // The kubelet of a NAT'd node is not reachable for `kubectl logs`:
                // read the container logs from the node's directory instead.
                let _ = p;
            }
            let logdir = self.node_dir(&n.name).join("mnt/varlogpods");
            if let Ok(out) = run(Command::new("sh").arg("-c").arg(format!(
                "for f in {}/kube-system_wirehub-agent-*/agent/*.log; do echo \"-- $f\"; tail -n 60 \"$f\"; done 2>/dev/null",
                logdir.display()
            ))) {
                s += &out;
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        eprintln!("[k8s] tearing the cluster down");
        // Pods first, gracefully, so the runtime removes what it made.
        let _ = Command::new("timeout")
            .args(["25", "ip"])
            .args(
                self.kubectl_cmd(&[
                    "delete",
                    "daemonsets,deployments,pods",
                    "--all",
                    "-n",
                    "default",
                    "--grace-period=2",
                    "--wait=true",
                ])
                .get_args(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let down = repo().join("e2e/k8s/node-down.sh");
        for n in &self.nodes {
            let _ = Command::new("bash")
                .arg(&down)
                .arg(&self.dir)
                .arg(&n.name)
                .status();
        }
        // The control plane, by PID.
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("pids")) {
            for line in pids.lines().rev() {
                let mut w = line.split_whitespace();
                if let (Some(pid), Some(name)) = (w.next(), w.next())
                    && ["sched", "cm", "apiserver", "etcd"].contains(&name)
                {
                    let _ = Command::new("kill").arg(pid).status();
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            for line in pids.lines() {
                if let Some(pid) = line.split_whitespace().next() {
                    let _ = Command::new("kill")
                        .args(["-9", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // containerd's cgroup parent of the k8s.io namespace, when this
        // run made it (node-down.sh removed the containers' own).
        if !self.cgroup_parent_existed {
            let _ = Command::new("sh")
                .arg("-c")
                .arg("for c in /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io; do [ -d $c ] && rmdir $c; done 2>/dev/null; true")
                .status();
        }
        for (k, v) in &self.sysctls {
            let _ = Command::new("sysctl")
                .args(["-qw", &format!("{k}={v}")])
                .status();
        }
        if let Ok(dirs) = std::fs::read_to_string(self.dir.join("created-host-dirs")) {
            let mut dirs: Vec<&str> = dirs.lines().collect();
            dirs.sort();
            dirs.dedup();
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sysctl(k: &str) -> Option<String> {
    let out = Command::new("sysctl").args(["-n", k]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------- the test

#[test]
fn wirehub_on_a_real_cluster() {
    if !wirehub_e2e::available() {
        eprintln!(
            "skipped: the Kubernetes lab needs root (network namespaces, containerd, kubelet)"
        );
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

/// One Kubernetes lab at a time on a machine: the runs share host mount
/// points (/run/wirehub, /var/lib/wirehub, ...) that each removes when
/// done, and the host sysctls it restores. Held while the value lives.
fn lab_lock() -> Result<std::fs::File> {
    let cache = std::env::var("WH_K8S_CACHE").unwrap_or_else(|_| "/var/cache/wirehub-k8s".into());
    std::fs::create_dir_all(&cache)?;
    let lock = std::fs::File::create(Path::new(&cache).join("e2e.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("[k8s] another Kubernetes lab runs on this machine; waiting for it");
        lock.lock()?;
    }
    Ok(lock)
}

/// The Kubernetes binaries (built once, cached outside the repository) and
/// the kubectl to use.
fn kubernetes_binaries() -> Result<(PathBuf, String)> {
    let cache = std::env::var("WH_K8S_CACHE").unwrap_or_else(|_| "/var/cache/wirehub-k8s".into());
    // build-e2e.sh runs build-k8s.sh, then builds e2e.test and its images.
    let build = repo().join("e2e/k8s/build-e2e.sh");
    let status = Command::new("bash")
        .arg(&build)
        .status()
        .context("cannot run build-e2e.sh")?;
    if !status.success() {
        bail!("building Kubernetes failed ({status})");
    }
    let bin = PathBuf::from(&cache).join("current/bin");
    let kubectl = if bin.join("kubectl").exists() {
        bin.join("kubectl").display().to_string()
    } else if have("kubectl") {
        "kubectl".to_string()
    } else {
        bail!("no kubectl (build-k8s.sh builds one when the machine has none)");
    };
    Ok((bin, kubectl))
}

fn scenario() -> Result<()> {
    let t0 = Instant::now();
    let _lock = lab_lock()?;
    for tool in [
        "containerd",
        "ctr",
        "etcd",
        "etcdctl",
        "runc",
        "openssl",
        "nsenter",
        "unshare",
        "nft",
        "iptables",
        "strip",
    ] {
        if !have(tool) {
            bail!("{tool} is missing: run e2e/install-deps.sh");
        }
    }
    let (bin, kubectl) = kubernetes_binaries()?;
    log(t0, "Kubernetes binaries ready");

    let wh = wh_bin();
    let cni = wh.with_file_name("wirehub-cni");
    for b in [&wh, &cni] {
        if !b.exists() {
            bail!("{} is missing: cargo build --workspace --bins", b.display());
        }
    }
    run(Command::new(&wh).args(["help", "agent"]))
        .with_context(|| format!("{} has no 'agent' command (a stale build?)", wh.display()))?;

    let mut lab = Lab::new()?;
    let dir = lab.dir.join("k8s");
    std::fs::create_dir_all(&dir)?;
    let images = dir.join("images");
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/images.sh"))
        .arg(&images)
        .arg(&wh)
        .arg(&cni)
        .arg(bin.join("pause")))?;
    log(t0, "images built");

    let cp = lab.public_host("cp")?;
    let n1 = lab.public_host("n1")?;
    let (n2, _r2) = lab.home_host("n2", Nat::Easy)?;
    let (n3, _r3) = lab.home_host("n3", Nat::Hard)?;
    // The edge host is the control plane's own host.
    let edge = cp.clone();
    let sysctls = SYSCTLS
        .iter()
        .filter_map(|k| sysctl(k).map(|v| (k.to_string(), v)))
        .collect();
    let cluster = Cluster {
        dir: dir.clone(),
        bin: bin.clone(),
        cp: cp.clone(),
        nodes: vec![
            NodeInfo {
                name: "n1".into(),
                host: n1,
            },
            NodeInfo {
                name: "n2".into(),
                host: n2,
            },
            NodeInfo {
                name: "n3".into(),
                host: n3,
            },
        ],
        sysctls,
        kubectl,
        cgroup_parent_existed: Path::new("/sys/fs/cgroup/memory/k8s.io").exists()
            || Path::new("/sys/fs/cgroup/k8s.io").exists(),
    };
    let result = exercise(&mut lab, &cluster, &edge, t0);
    if let Err(e) = &result {
        // The failure first: what follows is long and may be cut.
        eprintln!("[k8s] FAILED: {e:#}");
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        ] {
            if let Ok(s) = cluster.k(args) {
                eprintln!("$ kubectl {}\n{s}", args.join(" "));
            }
        }
        for n in &cluster.nodes {
            let log = cluster.node_dir(&n.name).join("logs/kubelet.log");
            if let Ok(out) = run(Command::new("sh").arg("-c").arg(format!(
                "grep -E '^E|CNI|cni' {} | tail -n 15",
                log.display()
            ))) {
                eprintln!("== kubelet {} errors:\n{out}", n.name);
            }
        }
        eprintln!("{}", cluster.agent_logs());
        eprintln!("{}", kernel_tail());
        if let Ok(s) = cluster.k(&["get", "wirehubnetwork,wirehubnodes", "-o", "yaml"]) {
            eprintln!("{s}");
        }
        eprintln!("edge daemon log:\n{}", lab.log(&edge));
    }
    // Every log of the run (the last run's), kept for a look after the
    // namespaces are gone: target/tmp/k8s-logs.
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("k8s-logs");
    let _ = std::fs::remove_dir_all(&keep);
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
        "mkdir -p {k} && cd {d} && find . -name '*.log' -not -path '*/varlogcontainers/*' | while read f; do mkdir -p {k}/$(dirname $f); cp $f {k}/$f; done",
        k = keep.display(),
        d = cluster.dir.display()
        ))
        .status();
    eprintln!("logs kept in {}", keep.display());
    drop(cluster);
    log(t0, "cluster removed");
    result
}

type Pods = BTreeMap<String, String>;
type Pids = BTreeMap<String, u32>;

/// The scenario, phase by phase; each phase leaves the cluster as the next
/// one expects it.
fn exercise(lab: &mut Lab, c: &Cluster, edge: &Host, t0: Instant) -> Result<()> {
    start_cluster(c, t0)?;
    install_chart(c, t0)?;
    wirehub_nodes_report_every_node(c, t0)?;
    let (pods, pids) = pods_reach_each_other(c, t0)?;
    a_service_answers_across_nodes(c, &pids, t0)?;
    an_edge_host_joins_without_restarts(lab, c, edge, &pods, t0)?;
    an_invalid_edit_is_reported_and_changes_nothing(lab, c, edge, &pods, &pids, t0)?;
    an_agent_token_cannot_move_another_node(lab, c, &pods, &pids, t0)?;
    a_restarted_agent_keeps_its_node(c, &pods, &pids, t0)?;
    kubernetes_conformance(c, t0)?;
    metrics_are_served(c, t0)
}

/// The control plane and three nodes, registered but NotReady (no CNI
/// configuration yet).
fn start_cluster(c: &Cluster, t0: Instant) -> Result<()> {
    let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut cp_args: Vec<String> = vec![
        c.dir.display().to_string(),
        c.cp.netns.clone(),
        c.cp.ip.clone(),
        c.bin.display().to_string(),
    ];
    cp_args.extend(names.iter().map(|s| s.to_string()));
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/cp-up.sh"))
        .args(&cp_args))?;
    log(t0, "control plane up");
    for n in &c.nodes {
        run(Command::new("bash")
            .arg(repo().join("e2e/k8s/node-up.sh"))
            .arg(&c.dir)
            .arg(&n.name)
            .arg(&n.host.netns)
            .arg(&n.host.ip)
            .arg(&c.bin)
            .arg(c.dir.join("images")))?;
    }
    // Registered, but NotReady: no CNI configuration yet.
    let ready = wait_for(
        Duration::from_secs(120),
        "the three nodes to register",
        || {
            let r = c.node_ready()?;
            Ok((r.len() == 3).then_some(r))
        },
    )?;
    log(t0, &format!("nodes registered: {ready:?}"));
    std::thread::sleep(Duration::from_secs(5));
    for (name, (status, message)) in c.node_ready()? {
        if status == "True" {
            bail!("node {name} is Ready before WireHub is installed");
        }
        if !(message.contains("cni") || message.contains("network")) {
            bail!("node {name} is NotReady for another reason than its network: {message}");
        }
    }
    log(t0, "all nodes NotReady: network plugin not initialized");
    Ok(())
}

/// The chart's CRDs (the schema refuses what it can tell is wrong) and
/// templates; the nodes turn Ready once the DaemonSet installed the plugin.
fn install_chart(c: &Cluster, t0: Instant) -> Result<()> {
    // Install the chart's own templates, rendered here.
    let overrides = json!({
        "image": {"repository": "localhost/wirehub-agent", "tag": "e2e", "pullPolicy": "Never"},
        // Dual-stack pods: a block of each family per node (docs/kubernetes.md).
        "network": {"name": NETWORK, "subnet": "10.99.0.0/24", "podSubnets": ["10.244.0.0/16", POD_SUBNET_V6]},
        "agent": {
            "kubernetesServiceHost": c.cp.ip,
            "kubernetesServicePort": "6443",
            "logLevel": "info",
        },
    });
    let (manifests, crds) =
        wirehub_e2e::chart::render_chart(&repo().join("charts/wirehub"), &overrides, AGENT_NS)?;
    std::fs::write(c.dir.join("chart.yaml"), &manifests)?;
    for crd in &crds {
        c.k_stdin(&["apply", "-f", "-"], &std::fs::read_to_string(crd)?)?;
    }
    c.k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/wirehubnetworks.wirehub.io",
        "crd/wirehubnodes.wirehub.io",
    ])?;
    // The schema refuses what it can tell is wrong.
    let bad = "apiVersion: wirehub.io/v1alpha1\nkind: WireHubNetwork\nmetadata: {name: bad}\nspec: {subnet: 10.99.0.0/33, peers: [{key: short}]}\n".to_string();
    match c.k_stdin(&["apply", "-f", "-"], &bad) {
        Ok(_) => bail!("the API server accepted an invalid WireHubNetwork"),
        Err(e) => {
            let e = e.to_string();
            if !(e.contains("spec.subnet") && e.contains("spec.peers")) {
                bail!("unexpected refusal: {e}");
            }
        }
    }
    // The CRD's schema reaches the published OpenAPI a few seconds later.
    let explain = wait_for(
        Duration::from_secs(60),
        "kubectl explain to show the descriptions",
        || {
            let e = c.k(&["explain", "wirehubnetwork.spec"])?;
            Ok((e.contains("podSubnet") && e.contains("overlay")).then_some(e))
        },
    )?;
    log(
        t0,
        &format!(
            "kubectl explain wirehubnetwork.spec: {} lines",
            explain.lines().count()
        ),
    );
    c.k_stdin(&["apply", "-f", "-"], &manifests)?;
    log(t0, "chart applied");

    // Nodes turn Ready once the DaemonSet installed the plugin and its configuration.
    wait_for(Duration::from_secs(180), "every node Ready", || {
        let r = c.node_ready()?;
        Ok(r.values().all(|(s, _)| s == "True").then_some(()))
    })?;
    for n in &c.nodes {
        let d = c.node_dir(&n.name);
        for f in [
            d.join("cni/bin/wirehub-cni"),
            d.join("cni/bin/host-local"),
            d.join("cni/net.d/10-wirehub.conflist"),
        ] {
            if !f.exists() {
                bail!("node {} is Ready without {}", n.name, f.display());
            }
        }
    }
    log(
        t0,
        "all nodes Ready, with wirehub-cni and 10-wirehub.conflist installed",
    );
    Ok(())
}

/// Every node's WireHubNode: its key, allocations and a summary of its
/// paths, ready; the network's status counts them (O(1)); `kubectl get`
/// prints both tables; the hard-NAT node is relayed.
fn wirehub_nodes_report_every_node(c: &Cluster, t0: Instant) -> Result<()> {
    let records = wait_for(
        Duration::from_secs(120),
        "three ready WireHubNodes whose paths all work, and Ready=True on the network",
        || {
            let v = c.json(&["get", "wirehubnodes"])?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let complete = items.len() == 3
                && items.iter().all(|n| {
                    let p = &n["status"]["paths"];
                    n["status"]["ready"] == true
                        && n["spec"]["publicKey"].is_string()
                        && n["spec"]["overlayIpv4"].is_string()
                        && n["status"]["podCidr"].is_string()
                        && p["direct"].as_u64().unwrap_or(0) + p["relayed"].as_u64().unwrap_or(0)
                            >= 2
                        && p["unknown"].as_u64() == Some(0)
                });
            let net = c.json(&["get", "wirehubnetwork", NETWORK])?;
            let ready = net["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }) && net["status"]["nodeCount"] == 3
                && net["status"]["readyNodes"] == 3;
            Ok((complete && ready).then_some(items))
        },
    )?;
    for n in &records {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let owner = &n["metadata"]["ownerReferences"][0];
        if owner["kind"] != "Node" || owner["name"] != name {
            bail!("WireHubNode {name} is not owned by its Node: {owner}");
        }
        let st = &n["status"];
        log(
            t0,
            &format!(
                "WireHubNode {name}: nat {} pod {} overlay {} paths direct {} relayed {} worst {}",
                st["nat"],
                st["podCidr"],
                n["spec"]["overlayIpv4"],
                st["paths"]["direct"],
                st["paths"]["relayed"],
                st["paths"]["worst"]
            ),
        );
    }
    let n3 = records
        .iter()
        .find(|n| n["metadata"]["name"] == "n3")
        .cloned()
        .unwrap_or(Value::Null);
    if n3["status"]["paths"]["relayed"].as_u64().unwrap_or(0) == 0 {
        bail!("the hard-NAT node reaches every node directly; expected a relay: {n3}");
    }
    let net = c.json(&["get", "wirehubnetwork", NETWORK])?;
    if net["status"].get("nodes").is_some() {
        bail!("the network's status still lists nodes: {}", net["status"]);
    }
    let printed = c.k(&["get", "wirehubnetworks"])?;
    if !printed.contains("SUBNET") || !printed.contains("10.99.0.0/24") || !printed.contains("True")
    {
        bail!("kubectl get wirehubnetworks lacks the printer columns:\n{printed}");
    }
    log(t0, &format!("kubectl get wirehubnetworks:\n{printed}"));
    let printed = c.k(&["get", "wirehubnodes"])?;
    for col in [
        "OVERLAY IP",
        "POD CIDR",
        "NAT",
        "READY",
        "RELAYED",
        "WORST PEER",
        "n3",
    ] {
        if !printed.contains(col) {
            bail!("kubectl get wirehubnodes lacks {col}:\n{printed}");
        }
    }
    log(t0, &format!("kubectl get wirehubnodes:\n{printed}"));
    Ok(())
}

/// The lab's IPv6 pod subnet (beside 10.244.0.0/16).
const POD_SUBNET_V6: &str = "fd00:10:244::/56";

/// The global IPv6 address (DAD done) of the pod whose process is `pid`.
fn pod_ipv6(pid: u32) -> Option<String> {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-6",
            "-o",
            "addr",
            "show",
        ])
        .args(["scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("tentative"))
        .find_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| *w != "inet6");
            words.nth(1)?.split('/').next().map(str::to_string)
        })
}

/// Pods of a DaemonSet on the three nodes reach each other, over IPv4 and
/// IPv6 (dual-stack); returns each node's pod IPv4 address and the pod's
/// process.
fn pods_reach_each_other(c: &Cluster, t0: Instant) -> Result<(Pods, Pids)> {
    // Pods of a DaemonSet on the three nodes reach each other.
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: pinger}\nspec:\n  selector: {matchLabels: {app: pinger}}\n  template:\n    metadata: {labels: {app: pinger}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: bb\n        image: localhost/busybox:1.35\n        imagePullPolicy: Never\n        env: [{name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]\n        command: [sh, -c, 'echo $NODE > /www/index.html && exec httpd -f -p 8080 -h /www']\n";
    c.k_stdin(&["apply", "-f", "-"], ds)?;
    let pods = wait_for(
        Duration::from_secs(120),
        "three pinger pods running",
        || {
            let v = c.json(&["get", "pods", "-l", "app=pinger"])?;
            let mut pods = BTreeMap::new();
            for p in v["items"].as_array().cloned().unwrap_or_default() {
                if p["status"]["phase"] == "Running"
                    && let (Some(n), Some(ip)) = (
                        p["spec"]["nodeName"].as_str(),
                        p["status"]["podIP"].as_str(),
                    )
                {
                    pods.insert(n.to_string(), ip.to_string());
                }
            }
            Ok((pods.len() == 3).then_some(pods))
        },
    )?;
    log(t0, &format!("pinger pods: {pods:?}"));
    let pids: BTreeMap<String, u32> = pods
        .iter()
        .map(|(n, ip)| {
            Ok((
                n.clone(),
                wait_for(Duration::from_secs(30), "the pod's process", || {
                    Ok(c.pod_pid(n, ip).ok())
                })?,
            ))
        })
        .collect::<Result<_>>()?;
    ping_all(&pids, &pods, Duration::from_secs(30), t0)?;
    // IPv6: every pod has an address of its node's IPv6 block too (from
    // the CNI); 1.20 without the IPv6DualStack gate lists only the primary
    // (IPv4) one in status.podIPs.
    let pods6: Pods = pids
        .iter()
        .map(|(n, pid)| {
            let ip = wait_for(Duration::from_secs(30), "the pod's IPv6 address", || {
                Ok(pod_ipv6(*pid))
            })?;
            let block = c.json(&["get", "wirehubnode", n])?["status"]["podCidrs"][1].clone();
            let inside = block
                .as_str()
                .and_then(|b| b.split_once('/'))
                .and_then(|(net, len)| {
                    let net = u128::from(net.parse::<std::net::Ipv6Addr>().ok()?);
                    let ip = u128::from(ip.parse::<std::net::Ipv6Addr>().ok()?);
                    let mask = u128::MAX.checked_shl(128 - len.parse::<u32>().ok()?)?;
                    Some(ip & mask == net)
                })
                .unwrap_or(false);
            if !inside {
                bail!(
                    "the pod on {n} has IPv6 address {ip}, outside its node's IPv6 block {block}"
                );
            }
            Ok((n.clone(), ip))
        })
        .collect::<Result<_>>()?;
    let pod_ips = c.k(&[
        "get",
        "pods",
        "-l",
        "app=pinger",
        "-o",
        "jsonpath={.items[*].status.podIPs}",
    ])?;
    log(
        t0,
        &format!("pinger pods' IPv6 addresses: {pods6:?}; status.podIPs: {pod_ips}"),
    );
    ping_all(&pids, &pods6, Duration::from_secs(30), t0)?;
    // A PreferDualStack Service: what this API server makes of it (1.20
    // without the IPv6DualStack gate drops the policy: one IPv4 ClusterIP).
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: pinger-dual}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  selector: {app: pinger}\n  ports: [{port: 80, targetPort: 8080}]\n";
    c.k_stdin(&["apply", "-f", "-"], svc)?;
    let got = c.json(&["get", "service", "pinger-dual"])?["spec"].clone();
    c.k(&["delete", "service", "pinger-dual"])?;
    let ips = got["clusterIPs"].as_array().map(Vec::len).unwrap_or(0);
    let kept = got["ipFamilyPolicy"] == "PreferDualStack";
    if ips != if kept { 2 } else { 1 } {
        bail!("a PreferDualStack Service came out half dual-stack: {got}");
    }
    log(
        t0,
        &format!(
            "a PreferDualStack Service: ipFamilyPolicy {}, ipFamilies {}, clusterIPs {}",
            got["ipFamilyPolicy"], got["ipFamilies"], got["clusterIPs"]
        ),
    );
    Ok((pods, pids))
}

/// A ClusterIP service backed by the pod on n3, from the pod on n1
/// (kube-proxy).
fn a_service_answers_across_nodes(c: &Cluster, pids: &Pids, t0: Instant) -> Result<()> {
    let svc = "apiVersion: v1\nkind: Pod\nmetadata: {name: backend, labels: {app: backend}}\nspec:\n  nodeName: n3\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    image: localhost/busybox:1.35\n    imagePullPolicy: Never\n    command: [sh, -c, 'echo backend-on-n3 > /www/index.html && exec httpd -f -p 8080 -h /www']\n---\napiVersion: v1\nkind: Service\nmetadata: {name: backend}\nspec:\n  selector: {app: backend}\n  ports: [{port: 80, targetPort: 8080}]\n";
    c.k_stdin(&["apply", "-f", "-"], svc)?;
    let cluster_ip = c.k(&[
        "get",
        "service",
        "backend",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let n1_pid = pids
        .get("n1")
        .copied()
        .ok_or_else(|| anyhow!("no pod on n1"))?;
    let answer = wait_for(
        Duration::from_secs(60),
        "the ClusterIP service to answer from n1",
        || {
            let out = Command::new("nsenter")
            .args(["-t", &n1_pid.to_string(), "-n", "timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{cluster_ip}/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"))
            .output()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            Ok(text.contains("backend-on-n3").then_some(text))
        },
    )?;
    log(
        t0,
        &format!(
            "ClusterIP {cluster_ip} from the pod on n1 answered from n3 ({} bytes)",
            answer.len()
        ),
    );
    Ok(())
}

/// An edge host outside the cluster joins with plain `wh up` and the
/// network file printed from the resource and its WireHubNodes, without
/// restarting any agent.
fn an_edge_host_joins_without_restarts(
    lab: &mut Lab,
    c: &Cluster,
    edge: &Host,
    pods: &Pods,
    t0: Instant,
) -> Result<()> {
    // An edge host outside the cluster joins with plain `wh up`, without
    // restarting any agent.
    let agents_before = c.agent_pods_json(None)?;
    let uid_restarts = |v: &Value| -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(-1),
                )
            })
            .collect();
        out.sort();
        out
    };
    let (edge_sk, edge_pk) = lab.genkey("edge")?;
    let patch = json!({"spec": {"peers": [{"hostname": "edge", "key": edge_pk, "staticIp": "10.99.0.50", "endpoint": format!("{}:62096", edge.ip)}]}});
    c.patch_network("merge", &patch)?;
    // The network with its WireHubNodes, as an operator would print it.
    let yaml = c.k(&["get", "wirehubnetworks,wirehubnodes", "-o", "yaml"])?;
    let file = Command::new(wh_bin())
        .args(["network", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            if let Some(mut s) = ch.stdin.take() {
                s.write_all(yaml.as_bytes())?;
            }
            ch.wait_with_output()
        })?;
    if !file.status.success() {
        bail!(
            "wh network failed: {}",
            String::from_utf8_lossy(&file.stderr)
        );
    }
    let file = String::from_utf8_lossy(&file.stdout).to_string();
    log(t0, &format!("network file for the edge host:\n{file}"));
    // The same, read from the API server by `wh network cluster NAME`.
    let from_api = run(Command::new("ip")
        .args(["netns", "exec", &c.cp.netns])
        .arg(wh_bin())
        .args(["network", "cluster", NETWORK])
        .env("KUBECONFIG", c.dir.join("cp/admin.kubeconfig")))?;
    let body = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    if body(&from_api) != body(&file) {
        bail!("wh network cluster {NETWORK} printed another network:\n{from_api}");
    }
    for n in ["n1", "n2", "n3"] {
        if !file.contains(&format!("router {n} ")) {
            bail!("the printed file lacks node {n}");
        }
    }
    let conf = lab.write("edge.conf", &file)?;
    lab.wh_up(edge, &conf, Some(&edge_sk), &[])?;
    lab.wait_daemon(edge, Duration::from_secs(20))?;
    for (node, ip) in pods {
        let took = lab.ping_until(edge, ip, Duration::from_secs(60))?;
        log(
            t0,
            &format!(
                "edge -> pod on {node} ({ip}): ok in {:.1}s",
                took.as_secs_f64()
            ),
        );
    }
    let agents_after = c.agent_pods_json(None)?;
    if uid_restarts(&agents_before) != uid_restarts(&agents_after) {
        bail!("an agent restarted when the edge host was added");
    }
    log(t0, "edge host added without restarting any agent");
    Ok(())
}

/// An invalid edit: reported in the status and as an event; the network
/// keeps running; fixed, Degraded clears.
fn an_invalid_edit_is_reported_and_changes_nothing(
    lab: &mut Lab,
    c: &Cluster,
    edge: &Host,
    pods: &Pods,
    pids: &Pids,
    t0: Instant,
) -> Result<()> {
    // An invalid edit: reported in status and events, the network keeps running.
    let bad_key = lab.genkey("bad")?.1;
    let bad = json!([{"op": "add", "path": "/spec/peers/-", "value": {"hostname": "bad", "key": bad_key, "staticIp": "10.98.0.5"}}]);
    c.patch_network("json", &bad)?;
    let degraded = wait_for(
        Duration::from_secs(60),
        "Degraded=InvalidSpec on the status",
        || {
            let v = c.json(&["get", "wirehubnetwork", NETWORK])?;
            let cond = v["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
                .unwrap_or(Value::Null);
            Ok((cond["status"] == "True" && cond["reason"] == "InvalidSpec").then_some(cond))
        },
    )?;
    log(
        t0,
        &format!("invalid edit reported: {}", degraded["message"]),
    );
    let event = wait_for(Duration::from_secs(60), "an InvalidSpec event", || {
        let v = c.json(&["get", "events", "-n", "default"])?;
        Ok(v["items"].as_array().and_then(|a| {
            a.iter()
                .find(|e| e["reason"] == "InvalidSpec" && e["involvedObject"]["name"] == NETWORK)
                .cloned()
        }))
    })?;
    log(
        t0,
        &format!("event: {} {}", event["type"], event["message"]),
    );
    let described = c.k(&["describe", "wirehubnetwork", NETWORK])?;
    if !described.contains("InvalidSpec") {
        bail!("kubectl describe does not show the InvalidSpec event:\n{described}");
    }
    for (from, pid) in pids {
        for (to, ip) in pods {
            if from != to && !ping_from(*pid, ip, 2) {
                bail!("after the invalid edit, the pod on {from} cannot reach the pod on {to}");
            }
        }
    }
    lab.ping_until(edge, &pods["n3"], Duration::from_secs(10))?;
    log(t0, "the network kept running");
    let fix = json!([{"op": "remove", "path": "/spec/peers/1"}]);
    c.patch_network("json", &fix)?;
    wait_for(Duration::from_secs(60), "Degraded to clear", || {
        let v = c.json(&["get", "wirehubnetwork", NETWORK])?;
        Ok(v["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Degraded" && c["status"] == "False")
            })
            .then_some(()))
    })?;
    log(t0, "fixed: Degraded=False");
    Ok(())
}

/// Every node's routes, for comparing before and after.
fn host_routes(c: &Cluster) -> Result<BTreeMap<String, String>> {
    c.nodes
        .iter()
        .map(|n| {
            Ok((
                n.name.clone(),
                run(Command::new("ip").args([
                    "-n",
                    &n.host.netns,
                    "route",
                    "show",
                    "table",
                    "all",
                ]))?,
            ))
        })
        .collect()
}

/// What one agent's token may do to another node (issue 13): it cannot
/// write Nodes at all; it can write another node's WireHubNode (RBAC in
/// 1.20 cannot narrow that), but a forged key or pod CIDR is ignored by
/// every agent (pins), put back (by the node's own agent, by the lease
/// holder), and no route of any node changes; pod traffic flows throughout.
fn an_agent_token_cannot_move_another_node(
    lab: &mut Lab,
    c: &Cluster,
    pods: &Pods,
    pids: &Pids,
    t0: Instant,
) -> Result<()> {
    let agent = format!("--as=system:serviceaccount:{AGENT_NS}:wirehub-agent");
    let can = |verb: &str, what: &str| -> Result<String> {
        let out = c
            .kubectl_cmd(&["auth", "can-i", verb, what, &agent])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if can("patch", "nodes")? != "no" {
        bail!("the agent's service account may patch Nodes");
    }
    if can("patch", "wirehubnodes")? != "yes" {
        bail!("the agent's service account may not patch WireHubNodes");
    }
    let victim = "n2";
    let before = c.json(&["get", "wirehubnode", victim])?;
    let routes_before = host_routes(c)?;
    let forged_key = lab.genkey("forger")?.1;
    let forged = json!({"spec": {"publicKey": forged_key, "podCidr": "10.244.200.0/24", "overlayIpv4": "10.99.0.77"}});
    let forged_at = Instant::now();
    c.k(&[
        "patch",
        "wirehubnode",
        victim,
        &agent,
        "--type",
        "merge",
        "-p",
        &forged.to_string(),
    ])?;
    log(
        t0,
        &format!("forged {victim}'s WireHubNode with the agents' token: {forged}"),
    );
    // While the forgery stands (the lease holder has not put the
    // allocations back yet), nothing moves.
    std::thread::sleep(Duration::from_millis(1500));
    let routes_during = host_routes(c)?;
    // Put back: the key by n2's own agent, the allocations by the lease holder.
    let spec_of = |v: &Value| {
        ["publicKey", "podCidr", "overlayIpv4"]
            .map(|k| v["spec"][k].as_str().unwrap_or_default().to_string())
    };
    wait_for(
        Duration::from_secs(30),
        "the forged WireHubNode to be put back",
        || {
            let now = c.json(&["get", "wirehubnode", victim])?;
            Ok((spec_of(&now) == spec_of(&before)).then_some(()))
        },
    )?;
    log(
        t0,
        &format!(
            "{victim}'s WireHubNode put back within {:.1}s of the forgery",
            forged_at.elapsed().as_secs_f64()
        ),
    );
    // The lease holder says what it put back; the forged key is seen only
    // by agents that read the record before n2's agent rewrote it.
    let logs = c.agent_logs();
    if !logs.contains("put the pinned allocations back") {
        bail!("the lease holder did not say it put the allocations back");
    }
    log(
        t0,
        &format!(
            "agents that saw the forged key and ignored it: {}",
            logs.matches("now publishes key").count()
        ),
    );
    for (from, pid) in pids {
        for (to, ip) in pods {
            if from != to && !ping_from(*pid, ip, 2) {
                bail!("after the forgery, the pod on {from} cannot reach the pod on {to}");
            }
        }
    }
    for routes in [routes_during, host_routes(c)?] {
        for (node, r) in &routes_before {
            if routes.get(node) != Some(r) {
                bail!(
                    "the routes of {node} changed with the forgery:\nbefore:\n{r}\nafter:\n{}",
                    routes.get(node).cloned().unwrap_or_default()
                );
            }
        }
    }
    log(
        t0,
        "the forgery changed no route and no path; pods kept talking",
    );
    Ok(())
}

/// Deleting an agent pod: recreated, same key, WireHubNode and pod CIDR,
/// the node stays Ready, traffic back within 10 s of the replacement.
fn a_restarted_agent_keeps_its_node(
    c: &Cluster,
    pods: &Pods,
    pids: &Pids,
    t0: Instant,
) -> Result<()> {
    // Deleting an agent pod: recreated, same key and pod CIDR, traffic back within 10 s.
    let victim = "n3";
    let node_before = c.json(&["get", "node", victim])?;
    let record_before = c.json(&["get", "wirehubnode", victim])?;
    let field = |v: &Value, k: &str| v["spec"][k].as_str().unwrap_or_default().to_string();
    let old_pod = c.agent_pods(Some(victim), &["-o", "jsonpath={.items[0].metadata.name}"])?;
    let old_pid = c.agent_pid(victim, &old_pod)?;
    let mut old_log = c.open_agent_log(victim, &old_pod)?;
    let from_pid = pids["n1"];
    let target = pods[victim].clone();
    // A pinger from the pod on n1 to the pod on the victim node, every
    // 200 ms, for the whole restart: the outage is the longest run of lost
    // pings.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = std::sync::Arc::clone(&stop);
        let target = target.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = start.elapsed();
                let ok = ping_from(from_pid, &target, 1);
                samples.push((sent, ok));
                std::thread::sleep(Duration::from_millis(200));
            }
            (start, samples)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let deleted = Instant::now();
    c.k(&["-n", AGENT_NS, "delete", "pod", &old_pod, "--wait=false"])?;
    let pods_on_victim = || -> Result<Vec<(String, String)>> {
        let v = c.agent_pods_json(Some(victim))?;
        Ok(v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect())
    };
    // The old agent stops at once on SIGTERM, long before kubelet's 10 s
    // grace period would kill it: its process is watched directly, since
    // kubelet may report the container's end late.
    let stopped = wait_for(Duration::from_secs(30), "the old agent to stop", || {
        Ok((!process_runs(old_pid)).then(|| deleted.elapsed()))
    })
    .map_err(|e| {
        anyhow!(
            "{e}: its process {old_pid}:\n{}{}",
            process_report(old_pid),
            kernel_tail()
        )
    })?;
    log(
        t0,
        &format!(
            "old agent (process {old_pid}) stopped {:.1}s after its pod was deleted",
            stopped.as_secs_f64()
        ),
    );
    if stopped > Duration::from_secs(5) {
        bail!("the old agent took {stopped:?} to stop on SIGTERM (more than 5 s)");
    }
    // And cleanly: its last words say so (its log was opened before the
    // deletion: kubelet may remove it at once), and kubelet reports exit code 0 (if it reports before
    // the pod is gone; it may take long: it is not a condition).
    let mut last_words = String::new();
    std::io::Read::read_to_string(&mut old_log, &mut last_words)?;
    if !last_words.contains("wirehub agent stopped") {
        bail!(
            "the old agent did not stop cleanly on SIGTERM; its log ends:\n{}",
            tail_lines(&last_words, 30)
        );
    }
    let exit_code = wait_for(
        Duration::from_secs(60),
        "kubelet to report the old agent's exit",
        || {
            let v = c.agent_pods_json(Some(victim))?;
            let Some(old) = v["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|p| p["metadata"]["name"] == old_pod.as_str())
            }) else {
                return Ok(Some(None));
            };
            Ok(old["status"]["containerStatuses"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "agent"))
                .map(|s| &s["state"]["terminated"])
                .filter(|t| t.is_object())
                .map(|t| t["exitCode"].as_i64()))
        },
    )
    .unwrap_or_else(|e| {
        log(t0, &format!("{e}"));
        None
    });
    log(
        t0,
        &format!("kubelet reports the old agent's exit code as {exit_code:?}"),
    );
    if exit_code.is_some_and(|c| c != 0) {
        bail!("the old agent did not stop cleanly on SIGTERM: exit code {exit_code:?}");
    }
    // Kubelet 1.20 then keeps the terminated pod until its container
    // garbage collection, which runs once a minute, has removed the pod's
    // sandbox (PodResourcesAreReclaimed), plus up to its 10 s status sync:
    // 1 to 70 s. Only then may the DaemonSet create the replacement.
    let old_gone = wait_for(Duration::from_secs(120), "the old agent pod to go", || {
        Ok((!pods_on_victim()?.iter().any(|(n, _)| *n == old_pod)).then(|| deleted.elapsed()))
    })?;
    let (new_pod, created) = wait_for(
        Duration::from_secs(60),
        "the agent pod to be recreated",
        || {
            Ok(pods_on_victim()?
                .into_iter()
                .find(|(n, _)| *n != old_pod)
                .map(|(n, _)| (n, deleted.elapsed())))
        },
    )?;
    wait_for(Duration::from_secs(60), "the new agent pod to run", || {
        Ok(pods_on_victim()?
            .iter()
            .any(|(n, phase)| *n == new_pod && phase == "Running")
            .then_some(()))
    })?;
    let recreated = deleted.elapsed();
    wait_for(Duration::from_secs(30), "pod traffic to recover", || {
        Ok(ping_from(from_pid, &target, 1).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ping_start, samples) = pinger
        .join()
        .map_err(|_| anyhow!("the pinger thread panicked"))?;
    let offset = deleted.saturating_duration_since(ping_start);
    let mut outage = Duration::ZERO;
    let mut lost_since: Option<Duration> = None;
    let mut first_lost: Option<Duration> = None;
    let mut back: Option<Duration> = None;
    for (t, ok) in &samples {
        match (ok, lost_since) {
            (false, None) => {
                lost_since = Some(*t);
                first_lost.get_or_insert(*t);
            }
            (true, Some(since)) => {
                outage = outage.max(t.saturating_sub(since));
                back = Some(*t);
                lost_since = None;
            }
            _ => {}
        }
    }
    let rel = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.1}s", d.as_secs_f64() - offset.as_secs_f64())
        })
    };
    log(
        t0,
        &format!(
            "agent pod {old_pod} deleted: gone after {:.1}s, {new_pod} created after {:.1}s, running after {:.1}s; pings lost from {} to {} after the deletion: outage {:.1}s",
            old_gone.as_secs_f64(),
            created.as_secs_f64(),
            recreated.as_secs_f64(),
            rel(first_lost),
            rel(back),
            outage.as_secs_f64()
        ),
    );
    // Kubelet holds the terminated pod for up to a minute (above) before
    // the DaemonSet may replace it: the outage counts from the moment the
    // replacement exists (what WireHub controls).
    let back_after_created = back
        .map(|b| b.saturating_sub(offset).saturating_sub(created))
        .unwrap_or_default();
    log(
        t0,
        &format!(
            "traffic back {:.1}s after the replacement pod was created",
            back_after_created.as_secs_f64()
        ),
    );
    if back_after_created > Duration::from_secs(10) {
        bail!(
            "pod traffic took {back_after_created:?} to recover after the agent pod was recreated (more than 10 s)"
        );
    }
    // Nothing else may be lost: the only gap is the restart's.
    if outage > old_gone + Duration::from_secs(10) {
        bail!(
            "pod traffic was lost for {outage:?}, more than the {old_gone:?} kubelet held the old pod plus 10 s"
        );
    }
    let node_after = c.json(&["get", "node", victim])?;
    // The node stayed Ready: the agent keeps its CNI configuration across
    // its own restart.
    let ready_since = |v: &Value| {
        v["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .map(|c| (c["status"].clone(), c["lastTransitionTime"].clone()))
    };
    if ready_since(&node_before) != ready_since(&node_after) {
        bail!(
            "{victim} went through NotReady while its agent restarted: {:?} -> {:?}",
            ready_since(&node_before),
            ready_since(&node_after)
        );
    }
    let record_after = c.json(&["get", "wirehubnode", victim])?;
    for k in ["publicKey", "podCidr", "overlayIpv4"] {
        if field(&record_before, k) != field(&record_after, k) || field(&record_after, k).is_empty()
        {
            bail!(
                "{k} of {victim}'s WireHubNode changed across the agent's restart: {} -> {}",
                field(&record_before, k),
                field(&record_after, k)
            );
        }
    }
    if record_before["metadata"]["uid"] != record_after["metadata"]["uid"] {
        bail!("{victim}'s WireHubNode was made anew across the agent's restart");
    }
    let key_file = c.node_dir(victim).join("mnt/varlibwirehub/private.key");
    if !key_file.exists() {
        bail!(
            "the key is not in the node's host path ({})",
            key_file.display()
        );
    }
    log(t0, "kept its key and pod CIDR");
    Ok(())
}

/// Metrics and readiness endpoints of an agent (n1's, from its namespace,
/// on the node's address: the chart binds them there, not to 0.0.0.0).
fn metrics_are_served(c: &Cluster, t0: Instant) -> Result<()> {
    // Metrics and readiness endpoints of an agent (n1's, from its namespace,
    // on the node's address: the chart binds them there, not to 0.0.0.0).
    let metrics = run(Command::new("ip")
        .args(["netns", "exec", &c.nodes[0].host.netns, "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/{}/9796; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
            c.nodes[0].host.ip
        )))?;
    for m in [
        "wirehub_peers{path=\"direct\"}",
        "wirehub_dht_nodes",
        "wirehub_peer_last_handshake_seconds",
    ] {
        if !metrics.contains(m) {
            bail!("metrics lack {m}:\n{metrics}");
        }
    }
    log(t0, "metrics served");
    Ok(())
}

// ---------------------------------------------------------- the scale bench

/// The scale bench (issue 15): N simulated nodes on the lab's real API
/// server (etcd, kube-apiserver, kube-controller-manager, kube-scheduler
/// 1.20, as in the scenario): N Node objects, and for each a real `wh
/// agent` process without a data plane (`WH_SIMULATE=1`: it does all its
/// Kubernetes work, watches, pins, the Lease, allocations, its
/// WireHubNode, and notes the network it would run). Prints, per N: the
/// largest object, API writes per node per minute at steady state, the time
/// for a new node to be known to every agent (and where it goes, from the
/// agents' log stamps), the API server's CPU and memory, the agents' memory. A benchmark, so ignored by default:
/// `WH_SCALE_N=100,300 cargo test -p wirehub-e2e --test k8s k8s_scale_bench
/// -- --ignored --nocapture` (default N = 100; `WH_SCALE_STEADY_S`, the
/// steady-state window, default 120). Agents start 20 per second (`WH_SCALE_RATE`). The
/// agents run the `wh` of this build unless `WH_BIN` names another: a
/// debug-built agent takes about 25 MiB, so N = 1,000 wants a release
/// build (`cargo build --release -p wirehub --bin wh`, then
/// `WH_BIN=target/release/wh`). `WH_SCALE_GROUP=G` runs the agents G to a
/// process (`WH_SIMULATE_NODES`: each the whole agent, its own client,
/// watches, Lease keeper and WireHubNode; the new node's agent is always
/// a process of its own); the memory columns are then a process's figure
/// split among its agents. The bench reads only what the agents' logs
/// gained since its last read, and stops the agents when less than half
/// its memory floor is left.
#[test]
#[ignore = "a benchmark: prints figures"]
fn k8s_scale_bench() {
    if !wirehub_e2e::available() {
        eprintln!("skipped: the Kubernetes lab needs root");
        return;
    }
    let sizes: Vec<usize> = std::env::var("WH_SCALE_N")
        .unwrap_or_else(|_| "100".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mut rows = Vec::new();
    for n in sizes {
        match bench(n) {
            Ok(row) => rows.push(row),
            Err(e) => panic!("N={n}: {e:#}"),
        }
    }
    eprintln!(
        "\n| N | largest WireHubNode | WireHubNetwork | wirehub.io writes/node/min | lease writes/min | all agents know a new node (p50 / p95 / max) | kube-apiserver CPU | kube-apiserver RSS | agent RSS median / max (PSS median) |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        eprintln!("{r}");
    }
}

/// The simulated agents: their processes (one agent each, or a group of
/// agents each with `WH_SCALE_GROUP`), stopped (by PID) when dropped, and
/// what their logs told so far.
struct SimAgents {
    /// Each process, how many agents it runs, and its log.
    procs: Vec<(std::process::Child, usize, LogTail)>,
    /// Every agent's node, in the order started.
    names: Vec<String>,
    seen: Seen,
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.procs {
            let _ = c.kill();
        }
        for (c, _, _) in &mut self.procs {
            let _ = c.wait();
        }
    }
}

/// What the agents' logs told, per node.
#[derive(Default)]
struct Seen {
    /// The most nodes a network each agent ran had ("members=N").
    members: HashMap<String, usize>,
    /// Once set: the stamp (seconds since midnight UTC) of each agent's
    /// first line running a network of at least this many nodes.
    target: Option<usize>,
    reached: HashMap<String, f64>,
    /// The agents that logged holding the Lease.
    holders: HashSet<String>,
    /// How often the agents applied their own `WireHubNode`.
    published: usize,
    /// Requests the API server answered 504 (Gateway Timeout: a LIST
    /// past its 60 s).
    timeouts: usize,
}

impl Seen {
    /// Takes one log line, from the agent of `node` unless the line's span
    /// names another (`agent{node=NAME}`: a process of several agents).
    fn line(&mut self, line: &str, node: Option<&str>) {
        let spanned = line
            .split_once("agent{node=")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(name, _)| name);
        let Some(node) = spanned.or(node) else {
            return;
        };
        self.published += usize::from(line.contains("published my WireHubNode"));
        self.timeouts += usize::from(line.contains("504 Gateway Timeout"));
        if line.contains("network lease") && line.contains("leader=true") {
            self.holders.insert(node.to_string());
        }
        if !line.contains("simulated node: network") {
            return;
        }
        let members = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("members="))
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let most = self.members.entry(node.to_string()).or_default();
        *most = (*most).max(members);
        if self.target.is_some_and(|t| members >= t)
            && !self.reached.contains_key(node)
            && let Some(stamp) = line_stamp(line)
        {
            self.reached.insert(node.to_string(), stamp);
        }
    }

    fn members(&self, node: &str) -> usize {
        self.members.get(node).copied().unwrap_or(0)
    }
}

/// An agent process's log, read as it grows: each read takes only the
/// bytes appended since the last (a byte offset per file; a line not
/// finished yet waits for the next read). Reading every whole log every
/// 100 ms slowed the agents it measured (186 MB a read at N = 300).
struct LogTail {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// The node of a process of one agent (its lines name none).
    node: Option<String>,
}

impl LogTail {
    fn new(path: PathBuf, node: Option<String>) -> LogTail {
        LogTail {
            path,
            offset: 0,
            partial: Vec::new(),
            node,
        }
    }

    /// Reads what was appended since the last call into `seen`.
    fn catch_up(&mut self, seen: &mut Seen) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut new = Vec::new();
        let Ok(read) = f.read_to_end(&mut new) else {
            return;
        };
        self.offset += read as u64;
        self.partial.extend_from_slice(&new);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let lines: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&lines).lines() {
            seen.line(line, self.node.as_deref());
        }
    }
}

#[test]
fn a_log_tail_reads_only_what_was_appended_and_waits_for_whole_lines() -> Result<()> {
    use std::io::Write;
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("log-tail-test.log");
    let mut f = std::fs::File::create(&path)?;
    let mut tail = LogTail::new(path.clone(), Some("a".into()));
    let mut seen = Seen::default();
    writeln!(f, "T INFO simulated node: network members=3 generation=1")?;
    // Half a line: its number is not read until the line ends.
    write!(f, "T INFO simulated node: network members=1")?;
    f.flush()?;
    tail.catch_up(&mut seen);
    assert_eq!(seen.members("a"), 3);
    let read = tail.offset;
    writeln!(f, "2 generation=1")?;
    writeln!(f, "T INFO allocated members=99")?;
    f.flush()?;
    tail.catch_up(&mut seen);
    assert_eq!(
        seen.members("a"),
        12,
        "the finished line, not the other message"
    );
    assert!(tail.offset > read);
    assert!(tail.partial.is_empty());
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[test]
fn a_group_log_is_told_apart_by_the_span_naming_each_agents_node() {
    let mut seen = Seen {
        target: Some(5),
        ..Seen::default()
    };
    let line = |node: &str, what: &str| {
        format!(
            "2026-12-06T08:22:20.500000Z  INFO agent{{node={node}}}: wirehub::k8s::agent: {what}"
        )
    };
    seen.line(
        &line("sim-0001", "simulated node: network members=4 generation=1"),
        None,
    );
    seen.line(
        &line("sim-0002", "simulated node: network members=5 generation=1"),
        None,
    );
    seen.line(
        &line("sim-0002", "network lease leader=true lease=wirehub-bench"),
        None,
    );
    assert_eq!(seen.members("sim-0001"), 4);
    assert_eq!(seen.members("sim-0002"), 5);
    assert!(!seen.reached.contains_key("sim-0001"));
    assert_eq!(
        seen.reached.get("sim-0002"),
        Some(&(8.0 * 3600.0 + 22.0 * 60.0 + 20.5))
    );
    assert_eq!(seen.holders.iter().collect::<Vec<_>>(), ["sim-0002"]);
    seen.line(
        &line("sim-0001", "published my WireHubNode node=sim-0001"),
        None,
    );
    assert_eq!((seen.published, seen.timeouts), (1, 0));
}

impl SimAgents {
    /// Starts one process running the agents of `names`: a `wh agent` of
    /// its own for one name, else one process with `WH_SIMULATE_NODES`
    /// (its agents started every `every`, each with a key folder of its
    /// own under the process's folder).
    fn start(&mut self, c: &Cluster, names: &[String], every: Duration) -> Result<()> {
        let Some(first) = names.first() else {
            return Ok(());
        };
        let dir = c.dir.join("sim").join(first);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("agent.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &c.cp.netns])
            .arg(wh_bin())
            .arg("agent")
            .env("NODE_NAME", first)
            .env("KUBECONFIG", c.dir.join("cp/admin.kubeconfig"))
            .env("WH_SIMULATE", "1")
            .env("WH_NETWORK", "bench")
            .env("WH_KEY_FILE", dir.join("private.key"))
            .env("WH_METRICS_ADDRESS", "127.0.0.1:0")
            .env("WH_CNI_DIR", "none")
            .env("POD_NAMESPACE", "default")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if names.len() > 1 {
            cmd.env("WH_SIMULATE_NODES", names.join(","))
                .env("WH_SIMULATE_EVERY_MS", every.as_millis().to_string());
        }
        let child = cmd.spawn()?;
        let node = (names.len() == 1).then(|| first.clone());
        self.procs
            .push((child, names.len(), LogTail::new(log, node)));
        self.names.extend(names.iter().cloned());
        Ok(())
    }

    /// Reads what every log gained since the last call.
    fn catch_up(&mut self) {
        for (_, _, log) in &mut self.procs {
            log.catch_up(&mut self.seen);
        }
    }

    /// How many agents logged that they run a network of at least
    /// `members` nodes (nodes only join in the bench).
    fn knowing(&mut self, members: usize) -> usize {
        self.catch_up();
        self.names
            .iter()
            .filter(|n| self.seen.members(n) >= members)
            .count()
    }

    /// Copies the logs of the processes whose agents held the Lease (the
    /// lab's folder goes with the lab) beside the test binary's files:
    /// `k8s-bench-holder-N-NODE.log`.
    fn keep_holders_logs(&self, n: usize) {
        let mut i = 0;
        for (_, agents, log) in &self.procs {
            let names = &self.names[i..(i + agents).min(self.names.len())];
            i += agents;
            if let Some(holder) = names.iter().find(|m| self.seen.holders.contains(*m)) {
                let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("k8s-bench-holder-{n}-{holder}.log"));
                let _ = std::fs::copy(&log.path, keep);
            }
        }
    }

    /// Memory of each agent, KiB, by `measure` (a process's figure split
    /// evenly among its agents).
    fn per_agent_kib(&self, measure: fn(u32) -> Option<u64>) -> Vec<u64> {
        self.procs
            .iter()
            .filter_map(|(c, agents, _)| Some(measure(c.id())? / (*agents).max(1) as u64))
            .collect()
    }
}

/// The stamp of a log line (seconds since midnight UTC): tracing's
/// `2026-12-06T08:22:20.123456Z` first.
fn line_stamp(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.trim_end_matches('Z').split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Proportional memory of a process, KiB (shared pages such as the
/// binary's, counted in every agent's RSS, split among their users).
fn proc_pss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The host's available memory, KiB.
fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The bench stops starting agents below this much available memory
/// (the host is shared).
const BENCH_MEMORY_FLOOR_KIB: u64 = 3 << 20;

fn proc_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The kube-apiserver's PID (cp-up.sh records what it started).
fn apiserver_pid(c: &Cluster) -> Result<u32> {
    let pids = std::fs::read_to_string(c.dir.join("pids"))?;
    for line in pids.lines() {
        let mut w = line.split_whitespace();
        if let (Some(pid), Some("apiserver")) = (w.next(), w.next()) {
            return Ok(pid.parse()?);
        }
    }
    bail!("no apiserver in {}", c.dir.join("pids").display())
}

/// Mutating requests the API server served so far: (to wirehub.io
/// resources, to leases).
fn api_writes(c: &Cluster) -> Result<(f64, f64)> {
    let text = c.k(&["get", "--raw", "/metrics"])?;
    let (mut wirehub, mut leases) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let reads = [
            "verb=\"GET\"",
            "verb=\"LIST\"",
            "verb=\"WATCH\"",
            "verb=\"WATCHLIST\"",
        ];
        if reads.iter().any(|r| labels.contains(r)) {
            continue;
        }
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        if labels.contains("group=\"wirehub.io\"") {
            wirehub += v;
        } else if labels.contains("resource=\"leases\"") {
            leases += v;
        }
    }
    Ok((wirehub, leases))
}

/// Node objects named `names`, the first the `first`th of the bench: each
/// its own InternalIP (10.250.0.1 onwards; before, every chunk of a
/// hundred repeated the same hundred addresses).
fn node_list(first: usize, names: &[String]) -> String {
    let items: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let i = first + i;
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
                   "status": {"addresses": [{"type": "InternalIP", "address": format!("10.250.{}.{}", i / 250, i % 250 + 1)}]}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Seconds since midnight UTC, now (as the agents' log stamps say it).
fn seconds_of_day_now() -> f64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_secs_f64() % 86_400.0
}

/// The stamp (seconds since midnight UTC) of the first line of `log` that
/// holds every one of `needles`.
fn first_stamp(log: &Path, needles: &[&str]) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))?;
    line_stamp(line)
}

/// The host's load average (1, 5, 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many agents run networks of how many nodes, in tenths of `n`
/// ("0-99: 3, 900-999: 2, 1000: 995"): where a run that does not
/// converge stands.
fn members_histogram(agents: &SimAgents, n: usize) -> String {
    let step = (n / 10).max(1);
    let mut bins: BTreeMap<usize, usize> = BTreeMap::new();
    for name in &agents.names {
        let m = agents.seen.members(name).min(n);
        *bins
            .entry(if m == n { n } else { m / step * step })
            .or_default() += 1;
    }
    bins.iter()
        .map(|(lo, count)| {
            if *lo == n {
                format!("{n}: {count}")
            } else {
                format!("{lo}-{}: {count}", (lo + step - 1).min(n - 1))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(n: usize) -> Result<String> {
    let t0 = Instant::now();
    let _lock = lab_lock()?;
    let (bin, kubectl) = kubernetes_binaries()?;
    let mut lab = Lab::new()?;
    let dir = lab.dir.join("k8s-bench");
    std::fs::create_dir_all(&dir)?;
    let cp = lab.public_host("cp")?;
    let c = Cluster {
        dir: dir.clone(),
        bin: bin.clone(),
        cp: cp.clone(),
        nodes: Vec::new(),
        sysctls: Vec::new(),
        kubectl,
        cgroup_parent_existed: true,
    };
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/cp-up.sh"))
        .arg(&dir)
        .arg(&cp.netns)
        .arg(&cp.ip)
        .arg(&bin))?;
    c.k_stdin(
        &["apply", "-f", "-"],
        &std::fs::read_to_string(repo().join("crds/wirehub.yaml"))?,
    )?;
    c.k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/wirehubnetworks.wirehub.io",
        "crd/wirehubnodes.wirehub.io",
    ])?;
    c.k_stdin(
        &["apply", "-f", "-"],
        "apiVersion: wirehub.io/v1alpha1\nkind: WireHubNetwork\nmetadata: {name: bench}\nspec: {subnet: 10.99.0.0/16, podSubnet: 10.200.0.0/13, workbits: 0}\n",
    )?;
    let names: Vec<String> = (0..n).map(|i| format!("sim-{i:04}")).collect();
    for (i, chunk) in names.chunks(100).enumerate() {
        c.k_stdin(&["apply", "-f", "-"], &node_list(i * 100, chunk))?;
    }
    log(
        t0,
        &format!(
            "N={n}: control plane up, {n} Nodes; agents run {}",
            wh_bin().display()
        ),
    );
    // Agents per process: 1 (each a `wh agent` process of its own), or
    // groups of this many in one process (`WH_SIMULATE_NODES`).
    let group: usize = std::env::var("WH_SCALE_GROUP")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut agents = SimAgents {
        procs: Vec::new(),
        names: Vec::new(),
        seen: Seen::default(),
    };
    // Started at a steady pace, as nodes joining a cluster would (all at
    // once, every agent reacts to every join at the same moment): 20 a
    // second unless `WH_SCALE_RATE` says how many; a group's process
    // starts its agents at the same pace.
    let rate: f64 = std::env::var("WH_SCALE_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r: &f64| *r > 0.0)
        .unwrap_or(20.0);
    let every = Duration::from_secs_f64(1.0 / rate);
    for (i, chunk) in names.chunks(group).enumerate() {
        if let Some(left) = mem_available_kib().filter(|&m| m < BENCH_MEMORY_FLOOR_KIB) {
            bail!(
                "only {} MiB of memory left after {} agents: stopped before the host runs out",
                left / 1024,
                i * group
            );
        }
        agents.start(&c, chunk, every)?;
        std::thread::sleep(every * chunk.len() as u32);
    }
    log(
        t0,
        &format!(
            "N={n}: {n} agents started in {} processes, {rate} a second; load average {}",
            agents.procs.len(),
            load_average()
        ),
    );
    // Every agent must come to run all n nodes; the agents are stopped
    // (dropped) when the host runs short of memory meanwhile.
    let deadline = t0.elapsed() + Duration::from_secs(600.max(n as u64));
    let mut last_report = Instant::now();
    let converged = loop {
        let knowing = agents.knowing(n);
        if knowing == n {
            break t0.elapsed();
        }
        if let Some(left) = mem_available_kib().filter(|&m| m < BENCH_MEMORY_FLOOR_KIB / 2) {
            agents.keep_holders_logs(n);
            bail!(
                "only {} MiB of memory left while {knowing} of {n} agents ran all {n} nodes: agents stopped",
                left / 1024
            );
        }
        if t0.elapsed() > deadline {
            agents.keep_holders_logs(n);
            bail!(
                "timed out after {deadline:?}: {knowing} of {n} agents run a network of {n} nodes ({}); {} applies of the agents' own WireHubNodes, {} answers 504",
                members_histogram(&agents, n),
                agents.seen.published,
                agents.seen.timeouts
            );
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            log(
                t0,
                &format!(
                    "N={n}: {knowing} of {n} agents run all nodes ({}); {} applies of their own WireHubNodes, {} answers 504; load average {}, {} MiB available",
                    members_histogram(&agents, n),
                    agents.seen.published,
                    agents.seen.timeouts,
                    load_average(),
                    mem_available_kib().unwrap_or(0) / 1024
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    log(
        t0,
        &format!(
            "N={n}: every agent runs all {n} nodes; {} applies of their own WireHubNodes, {} answers 504",
            agents.seen.published, agents.seen.timeouts
        ),
    );
    // Steady state: let the first heartbeats pass, then count.
    std::thread::sleep(Duration::from_secs(30));
    let window: u64 = std::env::var("WH_SCALE_STEADY_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let api = apiserver_pid(&c)?;
    let (w1, l1) = api_writes(&c)?;
    let cpu1 = proc_cpu_ticks(api).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(window));
    let (w2, l2) = api_writes(&c)?;
    let cpu2 = proc_cpu_ticks(api).unwrap_or(0);
    let minutes = window as f64 / 60.0;
    let writes_per_node_min = (w2 - w1) / n as f64 / minutes;
    let lease_per_min = (l2 - l1) / minutes;
    let ticks = 100.0; // USER_HZ
    let api_cpu = (cpu2.saturating_sub(cpu1)) as f64 / ticks / window as f64 * 100.0;
    let api_rss = proc_rss_kib(api).unwrap_or(0);
    let mut rss = agents.per_agent_kib(proc_rss_kib);
    rss.sort_unstable();
    let rss_median = rss.get(rss.len() / 2).copied().unwrap_or(0);
    let rss_max = rss.last().copied().unwrap_or(0);
    let mut pss = agents.per_agent_kib(proc_pss_kib);
    pss.sort_unstable();
    let pss_median = pss.get(pss.len() / 2).copied().unwrap_or(0);
    // Object sizes as stored (JSON).
    let records = c.json(&["get", "wirehubnodes"])?;
    let largest = records["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| serde_json::to_vec(i).map_or(0, |v| v.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let network = serde_json::to_vec(&c.json(&["get", "wirehubnetwork", "bench"])?)?.len();
    // A new node: its Node, then its agent; every agent must come to run a
    // network of n + 1 nodes.
    let newcomer = format!("sim-{n:04}");
    let added = Instant::now();
    let added_wall = seconds_of_day_now();
    c.k_stdin(
        &["apply", "-f", "-"],
        &node_list(n, std::slice::from_ref(&newcomer)),
    )?;
    let node_applied = added.elapsed().as_secs_f64();
    // The new node's agent: a process of its own (a node joining).
    agents.catch_up();
    agents.seen.target = Some(n + 1);
    agents.start(&c, std::slice::from_ref(&newcomer), every)?;
    let agent_spawned = added.elapsed().as_secs_f64();
    let mut known: Vec<f64> = Vec::new();
    let mut seen = HashSet::new();
    while seen.len() < n + 1 && added.elapsed() < Duration::from_secs(120) {
        agents.catch_up();
        for name in &agents.names {
            if !seen.contains(name) && agents.seen.members(name) > n {
                seen.insert(name.clone());
                known.push(added.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    known.sort_by(f64::total_cmp);
    // Where the time went, from the logs' stamps (relative to the Node's
    // creation): the harness, the new agent's start and key, the lease
    // holder's allocation, every agent's round.
    let since_added = |t: Option<f64>| t.map_or(f64::NAN, |t| t - added_wall);
    let newcomer_log = agents.procs.last().map(|(_, _, l)| l.path.clone());
    let newcomer_at = |needle: &str| {
        since_added(
            newcomer_log
                .as_deref()
                .and_then(|l| first_stamp(l, &[needle])),
        )
    };
    let allocated_node = format!("node={newcomer}");
    let allocated = agents
        .procs
        .iter()
        .filter_map(|(_, _, l)| first_stamp(&l.path, &["allocated", &allocated_node]))
        .reduce(f64::min);
    // When each agent logged it (the table's figures are when the bench saw
    // it, reading the logs every 100 ms).
    let mut stamped: Vec<f64> = agents
        .seen
        .reached
        .values()
        .map(|t| t - added_wall)
        .collect();
    stamped.sort_by(f64::total_cmp);
    let holders = agents.seen.holders.len();
    log(
        t0,
        &format!(
            "N={n}: load average {}, {} MiB of memory available; new node: Node applied +{node_applied:.2}s, agent spawned +{agent_spawned:.2}s, agent's first log +{:.2}s, key published +{:.2}s, allocated +{:.2}s; by the logs' stamps, {} agents know it: first +{:.2}s, p50 +{:.2}s, p95 +{:.2}s, last +{:.2}s; {holders} agents held the Lease at some point",
            load_average(),
            mem_available_kib().unwrap_or(0) / 1024,
            newcomer_at("wirehub agent starting"),
            newcomer_at("published my WireHubNode"),
            since_added(allocated),
            stamped.len(),
            stamped.first().copied().unwrap_or(f64::NAN),
            percentile(&stamped, 0.5),
            percentile(&stamped, 0.95),
            stamped.last().copied().unwrap_or(f64::NAN),
        ),
    );
    if let Some((_, _, log)) = agents.procs.last() {
        let keep =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("k8s-bench-newcomer-{n}.log"));
        let _ = std::fs::copy(&log.path, keep);
    }
    agents.keep_holders_logs(n);
    log(
        t0,
        &format!(
            "N={n}: converged after {:.0}s; {} of {} agents learned the new node",
            converged.as_secs_f64(),
            known.len(),
            n + 1
        ),
    );
    drop(agents);
    drop(c);
    Ok(format!(
        "| {n} | {:.1} KiB | {:.1} KiB | {writes_per_node_min:.2} | {lease_per_min:.1} | {:.1} s / {:.1} s / {:.1} s ({} of {}) | {api_cpu:.0} % | {} MiB | {:.1} / {:.1} MiB ({:.1} MiB) |",
        largest as f64 / 1024.0,
        network as f64 / 1024.0,
        percentile(&known, 0.5),
        percentile(&known, 0.95),
        known.last().copied().unwrap_or(f64::NAN),
        known.len(),
        n + 1,
        api_rss / 1024,
        rss_median as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        pss_median as f64 / 1024.0,
    ))
}

// ---- Several clusters, one overlay (docs/kubernetes.md, "Several
// clusters"): two clusters, each a public node and a node behind a hard
// NAT, different pod subnets, each reading the other's WireHubNodes.

/// Cluster B's pods (A keeps the lab's 10.244.0.0/16).
const B_POD_SUBNET: &str = "10.245.0.0/16";

#[test]
fn two_clusters_share_one_overlay() {
    if !wirehub_e2e::available() {
        eprintln!(
            "skipped: the Kubernetes lab needs root (network namespaces, containerd, kubelet)"
        );
        return;
    }
    if let Err(e) = two_clusters() {
        panic!("{e:#}");
    }
}

fn two_clusters() -> Result<()> {
    let t0 = Instant::now();
    let _lock = lab_lock()?;
    let (bin, kubectl) = kubernetes_binaries()?;
    let wh = wh_bin();
    let cni = wh.with_file_name("wirehub-cni");
    for b in [&wh, &cni] {
        if !b.exists() {
            bail!("{} is missing: cargo build --workspace --bins", b.display());
        }
    }
    let mut lab = Lab::new()?;
    let dir = lab.dir.join("k8s2");
    std::fs::create_dir_all(&dir)?;
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/images.sh"))
        .arg(dir.join("images"))
        .arg(&wh)
        .arg(&cni)
        .arg(bin.join("pause")))?;
    log(t0, "images built");
    let sysctls: Vec<(String, String)> = SYSCTLS
        .iter()
        .filter_map(|k| sysctl(k).map(|v| (k.to_string(), v)))
        .collect();
    let cgroup_parent_existed = Path::new("/sys/fs/cgroup/memory/k8s.io").exists()
        || Path::new("/sys/fs/cgroup/k8s.io").exists();
    let cluster = |name: &str, nodes: Vec<NodeInfo>, cp: Host| -> Result<Cluster> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(Cluster {
            dir: d,
            bin: bin.clone(),
            cp,
            nodes,
            sysctls: sysctls.clone(),
            kubectl: kubectl.clone(),
            cgroup_parent_existed,
        })
    };
    let node = |name: &str, host: Host| NodeInfo {
        name: name.into(),
        host,
    };
    let a_cp = lab.public_host("acp")?;
    let a1 = lab.public_host("a1")?;
    let (a2, _ra2) = lab.home_host("a2", Nat::Hard)?;
    let b_cp = lab.public_host("bcp")?;
    let b1 = lab.public_host("b1")?;
    let (b2, _rb2) = lab.home_host("b2", Nat::Hard)?;
    let b3 = lab.public_host("b3")?;
    let a = cluster("a", vec![node("a1", a1), node("a2", a2)], a_cp)?;
    let b = cluster(
        "b",
        vec![node("b1", b1), node("b2", b2), node("b3", b3)],
        b_cp,
    )?;
    let result = two_clusters_exercise(&a, &b, t0);
    if let Err(e) = &result {
        eprintln!("[k8s] FAILED: {e:#}");
        for (name, c) in [("a", &a), ("b", &b)] {
            for args in [
                &["get", "pods", "-A", "-o", "wide"][..],
                &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
                &["get", "wirehubnetwork,wirehubnodes", "-o", "yaml"][..],
            ] {
                if let Ok(s) = c.k(args) {
                    eprintln!("$ kubectl --context {name} {}\n{s}", args.join(" "));
                }
            }
            eprintln!("== cluster {name}\n{}", c.agent_logs());
        }
    }
    drop(b);
    drop(a);
    log(t0, "clusters removed");
    result
}

/// A cluster's control plane (with credentials for every node of
/// `c.nodes`) and the first `start` of its nodes, registered.
fn start_control_plane_and_nodes(c: &Cluster, start: usize, t0: Instant) -> Result<()> {
    let mut cp_args: Vec<String> = vec![
        c.dir.display().to_string(),
        c.cp.netns.clone(),
        c.cp.ip.clone(),
        c.bin.display().to_string(),
    ];
    cp_args.extend(c.nodes.iter().map(|n| n.name.clone()));
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/cp-up.sh"))
        .args(&cp_args))?;
    for n in &c.nodes[..start] {
        start_node(c, n)?;
    }
    wait_for(Duration::from_secs(120), "the nodes to register", || {
        Ok((c.node_ready()?.len() == start).then_some(()))
    })?;
    log(
        t0,
        &format!("{}: control plane and {start} nodes up", c.cp.name),
    );
    Ok(())
}

fn start_node(c: &Cluster, n: &NodeInfo) -> Result<()> {
    let images = c.dir.with_file_name("images");
    run(Command::new("bash")
        .arg(repo().join("e2e/k8s/node-up.sh"))
        .arg(&c.dir)
        .arg(&n.name)
        .arg(&n.host.netns)
        .arg(&n.host.ip)
        .arg(&c.bin)
        .arg(images))?;
    Ok(())
}

/// The chart, rendered with `network` (merged over the lab's image and
/// agent values) and `more` top-level values; waits for every started
/// node Ready.
fn install_chart_with(c: &Cluster, network: Value, more: Value, t0: Instant) -> Result<()> {
    let mut overrides = json!({
        "image": {"repository": "localhost/wirehub-agent", "tag": "e2e", "pullPolicy": "Never"},
        "network": network,
        "agent": {
            "kubernetesServiceHost": c.cp.ip,
            "kubernetesServicePort": "6443",
            "logLevel": "info",
        },
    });
    if let (Some(o), Some(m)) = (overrides.as_object_mut(), more.as_object()) {
        o.extend(m.clone());
    }
    let (manifests, crds) =
        wirehub_e2e::chart::render_chart(&repo().join("charts/wirehub"), &overrides, AGENT_NS)?;
    for crd in &crds {
        c.k_stdin(&["apply", "-f", "-"], &std::fs::read_to_string(crd)?)?;
    }
    c.k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/wirehubnetworks.wirehub.io",
        "crd/wirehubnodes.wirehub.io",
    ])?;
    c.k_stdin(&["apply", "-f", "-"], &manifests)?;
    wait_for(Duration::from_secs(180), "every node Ready", || {
        let r = c.node_ready()?;
        Ok(r.values().all(|(s, _)| s == "True").then_some(()))
    })?;
    log(t0, &format!("{}: chart applied, nodes Ready", c.cp.name));
    Ok(())
}

/// A kubeconfig of `c` with the token of its ServiceAccount
/// wirehub-remote-reader (read-only: the chart's remoteReader), stored in
/// `into` as the Secret `name`.
fn share_reader_kubeconfig(c: &Cluster, into: &Cluster, name: &str) -> Result<()> {
    let token = wait_for(Duration::from_secs(60), "the reader's token Secret", || {
        let sa = c.json(&["get", "sa", "wirehub-remote-reader", "-n", AGENT_NS])?;
        let Some(secret) = sa["secrets"][0]["name"].as_str() else {
            return Ok(None);
        };
        let s = c.json(&["get", "secret", secret, "-n", AGENT_NS])?;
        Ok(s["data"]["token"]
            .as_str()
            .zip(s["data"]["ca.crt"].as_str())
            .map(|(t, ca)| (t.to_string(), ca.to_string())))
    })?;
    // The API server's CA as the token controller gives it (the agent's
    // image has no system CA store: the kubeconfig must name its CA).
    let (token, ca) = token;
    let token = run(Command::new("sh")
        .arg("-c")
        .arg(format!("echo {token} | base64 -d")))?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: remote\n  cluster: {{server: \"https://{}:6443\", certificate-authority-data: {}}}\nusers:\n- name: reader\n  user: {{token: {}}}\ncontexts:\n- name: remote\n  context: {{cluster: remote, user: reader}}\ncurrent-context: remote\n",
        c.cp.ip,
        ca,
        token.trim()
    );
    let file = into.dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&file, kubeconfig)?;
    into.k(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        AGENT_NS,
        &format!("--from-file=kubeconfig={}", file.display()),
    ])?;
    // What the reader may do: read members, nothing else.
    let can = |verb: &str, what: &str| {
        c.k(&[
            "auth",
            "can-i",
            verb,
            what,
            &format!("--as=system:serviceaccount:{AGENT_NS}:wirehub-remote-reader"),
        ])
        .map(|s| s.trim() == "yes")
        .unwrap_or(false)
    };
    if !can("watch", "wirehubnodes.wirehub.io") || can("patch", "wirehubnodes.wirehub.io") {
        bail!(
            "the reader of {} may not watch, or may patch, wirehubnodes",
            c.cp.name
        );
    }
    Ok(())
}

/// Pingers on every node of `c`: (node, pod IP) and (node, pid).
fn pingers(c: &Cluster, count: usize) -> Result<(Pods, Pids)> {
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: pinger}\nspec:\n  selector: {matchLabels: {app: pinger}}\n  template:\n    metadata: {labels: {app: pinger}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: bb\n        image: localhost/busybox:1.35\n        imagePullPolicy: Never\n        command: [sh, -c, 'exec sleep 100000']\n";
    c.k_stdin(&["apply", "-f", "-"], ds)?;
    let pods = wait_for(Duration::from_secs(120), "pinger pods running", || {
        let v = c.json(&["get", "pods", "-l", "app=pinger"])?;
        let mut pods = BTreeMap::new();
        for p in v["items"].as_array().cloned().unwrap_or_default() {
            if p["status"]["phase"] == "Running"
                && let (Some(n), Some(ip)) = (
                    p["spec"]["nodeName"].as_str(),
                    p["status"]["podIP"].as_str(),
                )
            {
                pods.insert(n.to_string(), ip.to_string());
            }
        }
        Ok((pods.len() == count).then_some(pods))
    })?;
    let pids = pods
        .iter()
        .map(|(n, ip)| {
            Ok((
                n.clone(),
                wait_for(Duration::from_secs(30), "the pod's process", || {
                    Ok(c.pod_pid(n, ip).ok())
                })?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok((pods, pids))
}

/// The pod of every node of `pids` pings the pod of every other node at
/// its address in `pods` (either family); the longest wait.
fn ping_all(pids: &Pids, pods: &Pods, within: Duration, t0: Instant) -> Result<Duration> {
    let mut worst = Duration::ZERO;
    for (from, pid) in pids {
        for (to, ip) in pods {
            if from == to {
                continue;
            }
            let start = Instant::now();
            wait_for(
                within,
                &format!("pod on {from} to ping pod on {to} ({ip})"),
                || Ok(ping_from(*pid, ip, 1).then_some(())),
            )?;
            worst = worst.max(start.elapsed());
            log(
                t0,
                &format!(
                    "pod on {from} -> pod on {to} ({ip}): ok in {:.1}s",
                    start.elapsed().as_secs_f64()
                ),
            );
        }
    }
    Ok(worst)
}

fn two_clusters_exercise(a: &Cluster, b: &Cluster, t0: Instant) -> Result<()> {
    start_control_plane_and_nodes(a, 2, t0)?;
    start_control_plane_and_nodes(b, 2, t0)?;
    let remote = |name: &str| json!([{"name": name, "kubeconfigSecret": {"name": format!("wirehub-cluster-{name}")}}]);
    install_chart_with(
        a,
        json!({"name": NETWORK, "subnet": "10.99.0.0/24", "nodeSubnet": "10.99.0.128/25",
               "podSubnet": "10.244.0.0/16", "remoteClusters": remote("b")}),
        json!({"remoteSecrets": ["wirehub-cluster-b"], "remoteReader": {"create": true}}),
        t0,
    )?;
    install_chart_with(
        b,
        json!({"name": NETWORK, "subnet": "10.99.0.0/24", "nodeSubnet": "10.99.0.64/26",
               "podSubnet": B_POD_SUBNET, "remoteClusters": remote("a")}),
        json!({"remoteSecrets": ["wirehub-cluster-a"], "remoteReader": {"create": true}}),
        t0,
    )?;
    share_reader_kubeconfig(b, a, "wirehub-cluster-b")?;
    share_reader_kubeconfig(a, b, "wirehub-cluster-a")?;
    log(t0, "each cluster holds a read-only kubeconfig of the other");

    // Pods ping across clusters, both ways.
    let (a_pods, a_pids) = pingers(a, 2)?;
    let (b_pods, b_pids) = pingers(b, 2)?;
    ping_all(&a_pids, &b_pods, Duration::from_secs(120), t0)?;
    ping_all(&b_pids, &a_pods, Duration::from_secs(60), t0)?;
    log(t0, "pods ping across the clusters both ways");
    // a2 and b2 are both behind hard NATs: relayed where they must be.
    let paths = wait_for(
        Duration::from_secs(60),
        "a2 to report a relayed peer",
        || {
            let p = a.json(&["get", "wirehubnode", "a2"])?["status"]["paths"].clone();
            Ok((p["relayed"].as_u64().unwrap_or(0) >= 1).then_some(p))
        },
    )?;
    log(t0, &format!("a2's paths: {paths}"));

    // A third node joins B: A's pods reach its pod with nothing edited in A.
    let generation = a.json(&["get", "wirehubnetwork", NETWORK])?["metadata"]["generation"].clone();
    let joined = Instant::now();
    start_node(b, &b.nodes[2])?;
    let (b_pods3, _) = pingers(b, 3)?;
    let ip = b_pods3
        .get("b3")
        .cloned()
        .ok_or_else(|| anyhow!("no pinger pod on b3"))?;
    let running = joined.elapsed();
    let target: Pods = [("b3".to_string(), ip)].into();
    let reach = ping_all(&a_pids, &target, Duration::from_secs(30), t0)?;
    log(
        t0,
        &format!(
            "b3 joined B: its pod ran {:.1}s after the node started; A's pods reached it {:.1}s after that (bound 30 s)",
            running.as_secs_f64(),
            reach.as_secs_f64()
        ),
    );
    let now = a.json(&["get", "wirehubnetwork", NETWORK])?["metadata"]["generation"].clone();
    if now != generation {
        bail!("A's WireHubNetwork changed generation ({generation} -> {now}): A was edited");
    }

    // An overlapping pod CIDR: a record in B claiming a block of A's pod
    // subnet is refused by A, reported, and changes nothing else.
    let key = run(Command::new("sh").arg("-c").arg(format!(
        "{wh} genkey | {wh} pubkey",
        wh = wh_bin().display()
    )))?;
    let rogue = format!(
        "apiVersion: wirehub.io/v1alpha1\nkind: WireHubNode\nmetadata: {{name: rogue}}\nspec: {{network: {NETWORK}, publicKey: {}, overlayIpv4: 10.99.0.70, podCidrs: [10.244.200.0/24]}}\n",
        key.trim()
    );
    b.k_stdin(&["apply", "-f", "-"], &rogue)?;
    let degraded = wait_for(Duration::from_secs(60), "A to report the overlap", || {
        let n = a.json(&["get", "wirehubnetwork", NETWORK])?;
        let c = n["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["type"] == "Degraded" && c["status"] == "True");
        Ok(c.and_then(|c| c["message"].as_str().map(str::to_string))
            .filter(|m| m.contains("10.244.200.0/24")))
    })?;
    for part in ["cluster b", "rogue", "10.244.0.0/16"] {
        if !degraded.contains(part) {
            bail!("the Degraded message does not name {part}: {degraded}");
        }
    }
    let events = wait_for(Duration::from_secs(30), "a Warning event", || {
        let e = a.k(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=RemotePodCIDRConflict",
        ])?;
        Ok(e.contains("10.244.200.0/24").then_some(e))
    })?;
    log(t0, &format!("overlap refused: {degraded}\n{events}"));
    // Nothing else moved: A's pods still reach B's.
    ping_all(&a_pids, &b_pods3, Duration::from_secs(10), t0)?;
    // ... and A routes nothing of the rogue block over the overlay.
    let route = Command::new("ip")
        .args(["netns", "exec", &a.nodes[0].host.netns])
        .args(["ip", "route", "get", "10.244.200.1"])
        .output()?;
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    if route.contains("dev wh-") {
        bail!("a1 routes the refused block over the overlay: {route}");
    }
    log(t0, "a1 has no overlay route to the refused block");
    Ok(())
}

// ------------------------------------ Kubernetes' own conformance tests

use wirehub_e2e::conformance;

thread_local! {
    /// Which conformance tests the scenario's conformance phase runs on
    /// this test's thread: the CI subset unless the whole set was asked for.
    static CONFORMANCE: std::cell::Cell<conformance::Selection> =
        const { std::cell::Cell::new(conformance::Selection::CiSubset) };
}

/// Kubernetes' own `[sig-network]` `[Conformance]` tests (e2e.test, built by
/// e2e/k8s/build-e2e.sh) against the cluster with WireHub as its network:
/// the CI subset must pass; the whole set reports its counts and failures.
fn kubernetes_conformance(c: &Cluster, t0: Instant) -> Result<()> {
    use conformance::Selection;
    let sel = CONFORMANCE.with(|s| s.get());
    let nodes: Vec<&Host> = c.nodes.iter().map(|n| &n.host).collect();
    let target = conformance::Target::lab(&c.dir, &c.cp, &c.kubectl, &nodes);
    log(t0, &format!("conformance: {sel:?} starts"));
    let summary = conformance::run(&conformance::Build::cached()?, &target, sel)?;
    log(t0, &format!("conformance ({sel:?}): {summary}"));
    if summary.ran == 0 {
        bail!("the conformance selection {sel:?} matched no test");
    }
    if sel == Selection::Full {
        eprintln!("skipped, they need cluster DNS (the lab has none):");
        for (name, why) in conformance::NEEDS_CLUSTER_DNS {
            eprintln!("  {name}...: {why}");
        }
    } else if summary.ran == 0 || summary.passed != summary.ran {
        bail!("the conformance subset did not pass: {summary}");
    }
    Ok(())
}

/// The whole `[sig-network]` `[Conformance]` set (less the tests that need
/// cluster DNS) on the same lab cluster, by hand (docs/kubernetes.md,
/// "Conformance"): `cargo test -p wirehub-e2e --test k8s
/// kubernetes_network_conformance_full_set -- --ignored --nocapture`.
#[test]
#[ignore = "the whole conformance set takes long; run by hand (docs/kubernetes.md)"]
fn kubernetes_network_conformance_full_set() {
    if !wirehub_e2e::available() {
        eprintln!("skipped: the Kubernetes lab needs root");
        return;
    }
    CONFORMANCE.with(|s| s.set(conformance::Selection::Full));
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}
