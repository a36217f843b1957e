//! Kubernetes' own `[sig-network]` `[Conformance]` tests against a lab
//! cluster: `e2e.test` and its test images, built from Debian's
//! `kubernetes` source package by e2e/k8s/build-e2e.sh and cached outside
//! the repository (`$WH_K8S_CACHE/current/e2e`).
//!
//! Owns: which tests run ([`Selection`]: the small CI subset, or the whole
//! set less the tests that need cluster DNS, each listed with its reason in
//! [`NEEDS_CLUSTER_DNS`]), the import of the test images into the nodes'
//! containerd, running `e2e.test` inside the control plane's network
//! namespace with the lab's kubeconfig, and reading its ginkgo summary
//! ([`parse_summary`], pure).
//!
//! Promises: the counts come from `e2e.test`'s own summary lines, never
//! assumed; a missing or self-contradicting summary is an error naming the
//! log file; the list of failures is bounded ([`MAX_FAILURES`]) and what
//! does not fit is counted, not lost silently. `e2e.test` is killed when it
//! outlives its time limit.
//!
//! For the run only, the API server gets a way to the kubelets of NAT'd
//! nodes (tcp/10250, which the tests' `exec` into pods needs; see
//! [`KubeletPaths`]), removed afterwards.
//!
//! Never: pulls an image (the repo list names `localhost/...` images the
//! nodes already hold; kubelet's `IfNotPresent` finds them), sends traffic
//! anywhere but inside the lab's namespaces, touches WireHub's own traffic
//! or the pod network, or leaves anything in the cluster beyond what
//! `e2e.test` itself leaves.

use crate::Host;
use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// At most this many failures are kept by [`parse_summary`]; the rest are
/// counted in [`Summary::failures_dropped`].
pub const MAX_FAILURES: usize = 64;

/// The conformance tests that need cluster DNS (the lab has none: Debian
/// packages no CoreDNS), with the reason. Each entry is a prefix of the
/// full ginkgo name; they are skipped in every [`Selection`].
pub const NEEDS_CLUSTER_DNS: &[(&str, &str)] = &[
    (
        "[sig-network] DNS ",
        "queries the cluster DNS service (kube-dns)",
    ),
    (
        "[sig-network] Services should be able to create a functioning NodePort service",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should be able to change the type from ExternalName to ClusterIP",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should be able to change the type from ExternalName to NodePort",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should be able to change the type from ClusterIP to ExternalName",
        "resolves the ExternalName service with nslookup",
    ),
    (
        "[sig-network] Services should be able to change the type from NodePort to ExternalName",
        "resolves the ExternalName service with nslookup",
    ),
    (
        "[sig-network] Services should have session affinity work for service with type clusterIP",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should have session affinity timeout work for service with type clusterIP",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should be able to switch session affinity for service with type clusterIP",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should have session affinity work for NodePort service",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should have session affinity timeout work for NodePort service",
        "reaches the service by its name (CheckServiceReachability)",
    ),
    (
        "[sig-network] Services should be able to switch session affinity for NodePort service",
        "reaches the service by its name (CheckServiceReachability)",
    ),
];

/// The CI subset: pod-to-pod and node-to-pod traffic over WireHub, http and
/// udp, across the three nodes (each test puts a server pod on every node).
const CI_SUBSET: &[&str] = &[
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http",
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp",
    "[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http",
    "[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp",
];

/// Which conformance tests a run selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// [`CI_SUBSET`]: a few minutes.
    CiSubset,
    /// Every `[sig-network]` `[Conformance]` test but [`NEEDS_CLUSTER_DNS`].
    Full,
}

impl Selection {
    /// The `--ginkgo.focus` expression (a Go regexp). Not anchored: ginkgo
    /// matches it against the suite's name ("Kubernetes e2e suite"), then
    /// the test's.
    pub fn focus(self) -> String {
        match self {
            Selection::CiSubset => format!(
                "({})",
                CI_SUBSET
                    .iter()
                    .map(|t| regex_quote(t))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            Selection::Full => r"\[sig-network\] .*\[Conformance\]".to_string(),
        }
    }

    /// The `--ginkgo.skip` expression: the tests that need cluster DNS.
    pub fn skip(self) -> String {
        format!(
            "({})",
            NEEDS_CLUSTER_DNS
                .iter()
                .map(|(t, _)| regex_quote(t))
                .collect::<Vec<_>>()
                .join("|")
        )
    }

    /// How long a run may take before `e2e.test` is killed.
    pub fn time_limit(self) -> Duration {
        match self {
            Selection::CiSubset => Duration::from_secs(15 * 60),
            Selection::Full => Duration::from_secs(90 * 60),
        }
    }
}

/// `s` as a Go regexp matching it literally.
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One failed spec of a run: its full name and where it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub location: String,
}

/// What one `e2e.test` run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Specs selected to run (focus and skip applied).
    pub ran: u32,
    /// Specs in the binary.
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub pending: u32,
    /// Ginkgo's count: the specs filtered out plus those skipped at run time.
    pub skipped: u32,
    pub seconds: f64,
    pub failures: Vec<Failure>,
    /// Failures beyond [`MAX_FAILURES`], counted only.
    pub failures_dropped: usize,
}

impl Summary {
    /// Selected specs that skipped themselves at run time (a missing
    /// feature or provider), neither passed nor failed.
    pub fn skipped_at_run_time(&self) -> u32 {
        self.ran
            .saturating_sub(self.passed + self.failed + self.pending)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} selected: {} passed, {} failed, {} skipped at run time ({:.0} s)",
            self.ran,
            self.passed,
            self.failed,
            self.skipped_at_run_time(),
            self.seconds
        )?;
        for x in &self.failures {
            write!(f, "\n  FAILED {} ({})", x.name, x.location)?;
        }
        if self.failures_dropped > 0 {
            write!(f, "\n  ... and {} more failures", self.failures_dropped)?;
        }
        Ok(())
    }
}

/// What is wrong with an `e2e.test` output.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No "Ran N of M Specs" line: the suite did not finish (a setup
    /// failure, a crash).
    NoRanLine,
    /// No "SUCCESS!/FAIL! -- ... Passed | ... Skipped" line after it.
    NoCountsLine,
    /// A line of the summary whose numbers do not parse.
    BadLine { line: usize, text: String },
    /// The counts contradict each other.
    Inconsistent(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoRanLine => {
                write!(f, "no \"Ran N of M Specs\" line (the suite did not finish)")
            }
            ParseError::NoCountsLine => write!(
                f,
                "no \"-- N Passed | N Failed | N Pending | N Skipped\" line after \"Ran N of M Specs\""
            ),
            ParseError::BadLine { line, text } => {
                write!(f, "line {line}: cannot read the numbers of {text:?}")
            }
            ParseError::Inconsistent(why) => write!(f, "the summary contradicts itself: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Removes terminal colour sequences (ESC [ ... m).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn number(word: Option<&str>, line: usize, text: &str) -> Result<u32, ParseError> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| ParseError::BadLine {
            line,
            text: text.to_string(),
        })
}

/// Reads the summary ginkgo prints at the end of an `e2e.test` run:
/// "Ran N of M Specs in S seconds", "SUCCESS!|FAIL! -- P Passed | F Failed
/// | X Pending | K Skipped" and, on failures, "Summarizing K Failures:"
/// with one "[Fail] NAME" line (the failing block marked "[It]", ...) and
/// its location line each.
pub fn parse_summary(output: &str) -> Result<Summary, ParseError> {
    let text = strip_ansi(output);
    let lines: Vec<&str> = text.lines().collect();
    let ran_at = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("Ran ") && l.contains(" Specs in "))
        .ok_or(ParseError::NoRanLine)?;
    let ran_line = lines[ran_at].trim();
    let w: Vec<&str> = ran_line.split_whitespace().collect();
    // Ran N of M Specs in S seconds
    if w.len() < 7 || w[2] != "of" {
        return Err(ParseError::BadLine {
            line: ran_at + 1,
            text: ran_line.to_string(),
        });
    }
    let mut s = Summary {
        ran: number(w.get(1).copied(), ran_at + 1, ran_line)?,
        total: number(w.get(3).copied(), ran_at + 1, ran_line)?,
        seconds: w[6].parse().map_err(|_| ParseError::BadLine {
            line: ran_at + 1,
            text: ran_line.to_string(),
        })?,
        ..Summary::default()
    };
    let (counts_at, counts) = lines[ran_at + 1..]
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(" -- ") && l.contains(" Passed |"))
        .map(|(i, l)| (ran_at + 2 + i, l.trim()))
        .ok_or(ParseError::NoCountsLine)?;
    let after = counts
        .split_once(" -- ")
        .map(|(_, r)| r)
        .unwrap_or_default();
    for part in after.split('|') {
        let mut it = part.split_whitespace();
        let n = number(it.next(), counts_at, counts)?;
        match it.next() {
            Some("Passed") => s.passed = n,
            Some("Failed") => s.failed = n,
            Some("Pending") => s.pending = n,
            Some("Skipped") => s.skipped = n,
            Some("Flaked") => {}
            _ => {
                return Err(ParseError::BadLine {
                    line: counts_at,
                    text: counts.to_string(),
                });
            }
        }
    }
    if s.passed + s.failed + s.pending > s.ran {
        return Err(ParseError::Inconsistent(format!(
            "{} passed + {} failed + {} pending > {} ran",
            s.passed, s.failed, s.pending, s.ran
        )));
    }
    if s.ran > s.total {
        return Err(ParseError::Inconsistent(format!(
            "{} ran of only {} specs",
            s.ran, s.total
        )));
    }
    let succeeded = counts.starts_with("SUCCESS!");
    if succeeded && s.failed > 0 {
        return Err(ParseError::Inconsistent(format!(
            "SUCCESS! with {} failed",
            s.failed
        )));
    }
    // The failures, listed before the "Ran" line.
    let start = lines[..ran_at]
        .iter()
        .rposition(|l| l.trim_start().starts_with("Summarizing ") && l.contains("Failure"));
    if let Some(start) = start {
        let mut i = start + 1;
        while i < ran_at {
            let l = lines[i].trim();
            let name = ["[Fail] ", "[Panic!] ", "[Timeout...] "]
                .iter()
                .find_map(|p| l.strip_prefix(p));
            if let Some(name) = name {
                let location = lines
                    .get(i + 1)
                    .map(|x| x.trim().to_string())
                    .unwrap_or_default();
                if s.failures.len() < MAX_FAILURES {
                    s.failures.push(Failure {
                        name: name.trim().replace(" [It] ", " "),
                        location,
                    });
                } else {
                    s.failures_dropped += 1;
                }
                i += 2;
            } else {
                i += 1;
            }
        }
    }
    Ok(s)
}

/// The `e2e.test` build: binary, repo list and image archives.
#[derive(Clone, Debug)]
pub struct Build {
    pub dir: PathBuf,
}

impl Build {
    /// The build under `$WH_K8S_CACHE` (default /var/cache/wirehub-k8s),
    /// checked complete (e2e/k8s/build-e2e.sh makes it).
    pub fn cached() -> Result<Build> {
        let cache =
            std::env::var("WH_K8S_CACHE").unwrap_or_else(|_| "/var/cache/wirehub-k8s".into());
        let b = Build {
            dir: Path::new(&cache).join("current/e2e"),
        };
        for p in [b.e2e_test(), b.repo_list()] {
            if !p.exists() {
                bail!("{} is missing: run e2e/k8s/build-e2e.sh", p.display());
            }
        }
        if b.images()?.is_empty() {
            bail!(
                "no image archives in {}: run e2e/k8s/build-e2e.sh",
                b.dir.join("images").display()
            );
        }
        Ok(b)
    }

    pub fn e2e_test(&self) -> PathBuf {
        self.dir.join("bin/e2e.test")
    }

    pub fn repo_list(&self) -> PathBuf {
        self.dir.join("repo-list.yaml")
    }

    pub fn images(&self) -> Result<Vec<PathBuf>> {
        let d = self.dir.join("images");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        v.sort();
        Ok(v)
    }
}

/// A node of the lab cluster.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    /// Its address (private behind a NAT router).
    pub ip: String,
}

/// A lab cluster as e2e/k8s/cp-up.sh and node-up.sh lay it out in `dir`.
#[derive(Clone, Debug)]
pub struct Target {
    /// The control plane host's network namespace (where the API server is)
    /// and address.
    pub netns: String,
    pub ip: String,
    pub kubeconfig: PathBuf,
    pub kubectl: String,
    pub nodes: Vec<Node>,
    /// Each node's containerd socket.
    pub sockets: Vec<PathBuf>,
    /// Where the run's log and reports go.
    pub out: PathBuf,
}

impl Target {
    pub fn lab(dir: &Path, cp: &Host, kubectl: &str, nodes: &[&Host]) -> Target {
        Target {
            netns: cp.netns.clone(),
            ip: cp.ip.clone(),
            kubeconfig: dir.join("cp/admin.kubeconfig"),
            kubectl: kubectl.to_string(),
            nodes: nodes
                .iter()
                .map(|h| Node {
                    name: h.name.clone(),
                    netns: h.netns.clone(),
                    ip: h.ip.clone(),
                })
                .collect(),
            sockets: nodes
                .iter()
                .map(|h| dir.join(&h.name).join("containerd/containerd.sock"))
                .collect(),
            out: dir.join("conformance"),
        }
    }
}

/// The comment that marks the router rules [`KubeletPaths`] adds.
const RULE_TAG: &str = "wh-conformance-kubelet";

/// The API server's way to the kubelets of NAT'd nodes, for the tests'
/// `exec` into pods (Kubernetes needs API server -> kubelet on tcp/10250;
/// the lab's NAT routers refuse anything unsolicited): a route in the
/// control plane's namespace to the node's private address through its
/// router, and one forward rule on the router for tcp/10250 from the
/// control plane only. Pod traffic and WireHub's own UDP are untouched.
/// Removed when dropped.
struct KubeletPaths {
    /// (router netns, node ip)
    opened: Vec<(String, String)>,
    cp_netns: String,
}

fn ip_netns(netns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {args:?} in {netns}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {netns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The address on `dev` in `ip -4 -o addr` output.
fn first_ipv4(addr_output: &str) -> Option<String> {
    let w: Vec<&str> = addr_output.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "inet")?;
    w.get(i + 1)?.split('/').next().map(str::to_string)
}

/// The handles of the rules tagged [`RULE_TAG`] in `nft -a list chain`.
fn tagged_handles(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.contains(RULE_TAG))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
        .collect()
}

impl KubeletPaths {
    fn open(t: &Target) -> Result<KubeletPaths> {
        let mut paths = KubeletPaths {
            opened: Vec::new(),
            cp_netns: t.netns.clone(),
        };
        for n in &t.nodes {
            // The lab names a home host's router after it (Lab::home_host).
            let router = format!("{}r", n.netns);
            if !Path::new("/run/netns").join(&router).exists() {
                continue;
            }
            let wan = first_ipv4(&ip_netns(
                &router,
                &["ip", "-4", "-o", "addr", "show", "dev", "wan"],
            )?)
            .with_context(|| format!("router {router} of node {} has no wan address", n.name))?;
            let comment = format!("\"{RULE_TAG}\"");
            ip_netns(
                &router,
                &[
                    "nft", "insert", "rule", "ip", "filter", "forward", "ip", "saddr", &t.ip, "ip",
                    "daddr", &n.ip, "tcp", "dport", "10250", "accept", "comment", &comment,
                ],
            )?;
            paths.opened.push((router.clone(), n.ip.clone()));
            ip_netns(
                &t.netns,
                &[
                    "ip",
                    "route",
                    "replace",
                    &format!("{}/32", n.ip),
                    "via",
                    &wan,
                ],
            )?;
        }
        Ok(paths)
    }
}

impl Drop for KubeletPaths {
    fn drop(&mut self) {
        for (router, node_ip) in &self.opened {
            let _ = ip_netns(
                &self.cp_netns,
                &["ip", "route", "del", &format!("{node_ip}/32")],
            );
            if let Ok(l) = ip_netns(
                router,
                &["nft", "-a", "list", "chain", "ip", "filter", "forward"],
            ) {
                for h in tagged_handles(&l) {
                    let _ = ip_netns(
                        router,
                        &[
                            "nft", "delete", "rule", "ip", "filter", "forward", "handle", &h,
                        ],
                    );
                }
            }
        }
    }
}

/// Imports the test images into every node's containerd (namespace
/// k8s.io, where kubelet looks).
pub fn import_images(build: &Build, target: &Target) -> Result<()> {
    let images = build.images()?;
    for sock in &target.sockets {
        for img in &images {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(sock)
                .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
                .arg(img)
                .output()
                .context("cannot run ctr")?;
            if !out.status.success() {
                bail!(
                    "importing {} into {} failed: {}",
                    img.display(),
                    sock.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    Ok(())
}

/// Runs the selected tests and reads their summary; the whole output is
/// kept in `target.out/<selection>.log`. An `Err` means the suite could not
/// run or report; failed tests are in the `Ok` summary.
pub fn run(build: &Build, target: &Target, sel: Selection) -> Result<Summary> {
    import_images(build, target)?;
    let _paths = KubeletPaths::open(target)?;
    std::fs::create_dir_all(&target.out)
        .with_context(|| format!("cannot create {}", target.out.display()))?;
    let name = match sel {
        Selection::CiSubset => "ci-subset",
        Selection::Full => "full",
    };
    let log = target.out.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &target.netns])
        .arg(build.e2e_test())
        .arg(format!("--kubeconfig={}", target.kubeconfig.display()))
        .arg(format!("--kubectl-path={}", target.kubectl))
        .arg("--provider=skeleton")
        .arg(format!("--report-dir={}", target.out.join(name).display()))
        .args([
            "--disable-log-dump=true",
            "--system-pods-startup-timeout=2m",
            "--node-schedulable-timeout=2m",
            "--ginkgo.noColor",
        ])
        .arg(format!("--ginkgo.focus={}", sel.focus()))
        .arg(format!("--ginkgo.skip={}", sel.skip()))
        .env("KUBE_TEST_REPO_LIST", build.repo_list())
        .env("KUBECONFIG", &target.kubeconfig)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", build.e2e_test().display()))?;
    let started = Instant::now();
    let limit = sel.time_limit();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "e2e.test ran past its {} s limit and was killed; see {}",
                limit.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let output =
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    parse_summary(&output).with_context(|| format!("e2e.test output {}", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSED: &str = "\
------------------------------
[sig-network] Networking Granular Checks: Pods
  should function for intra-pod communication: http
\u{1b}[1mRan 4 of 5047 Specs in 141.733 seconds\u{1b}[0m
\u{1b}[1;32mSUCCESS!\u{1b}[0m -- 4 Passed | 0 Failed | 0 Pending | 5043 Skipped
PASS
";

    const FAILED: &str = "\
Summarizing 2 Failures:

[Fail] [sig-network] Proxy version v1 [It] should proxy through a service and a pod  [Conformance]
/build/test/e2e/network/proxy.go:268

[Timeout...] [sig-network] Services [It] should serve multiport endpoints from pods  [Conformance]
/build/test/e2e/network/service.go:831

Ran 13 of 5047 Specs in 900.2 seconds
FAIL! -- 10 Passed | 2 Failed | 0 Pending | 5035 Skipped
--- FAIL: TestE2E (900.25s)
";

    #[test]
    fn a_passing_run_reads_as_its_counts_with_colours_removed() {
        let s = parse_summary(PASSED).unwrap();
        assert_eq!((s.ran, s.total, s.passed, s.failed), (4, 5047, 4, 0));
        assert_eq!(s.skipped, 5043);
        assert!((s.seconds - 141.733).abs() < 1e-6);
        assert!(s.failures.is_empty());
        assert_eq!(s.skipped_at_run_time(), 0);
    }

    #[test]
    fn a_failing_run_names_each_failure_and_where_it_failed() {
        let s = parse_summary(FAILED).unwrap();
        assert_eq!((s.ran, s.passed, s.failed), (13, 10, 2));
        assert_eq!(s.skipped_at_run_time(), 1);
        assert_eq!(
            s.failures[0].name,
            "[sig-network] Proxy version v1 should proxy through a service and a pod  [Conformance]"
        );
        assert_eq!(
            s.failures[0].location,
            "/build/test/e2e/network/proxy.go:268"
        );
        assert!(s.failures[1].name.contains("multiport endpoints"));
        assert!(s.to_string().contains("FAILED [sig-network] Proxy"));
    }

    #[test]
    fn failures_beyond_the_bound_are_counted_not_kept() {
        let mut out = String::from("Summarizing 70 Failures:\n");
        for i in 0..70 {
            out.push_str(&format!("\n[Fail] [sig-network] T{i} [It] x\n/f.go:{i}\n"));
        }
        out.push_str("Ran 70 of 80 Specs in 1.0 seconds\nFAIL! -- 0 Passed | 70 Failed | 0 Pending | 10 Skipped\n");
        let s = parse_summary(&out).unwrap();
        assert_eq!(s.failures.len(), MAX_FAILURES);
        assert_eq!(s.failures_dropped, 70 - MAX_FAILURES);
    }

    #[test]
    fn a_run_that_never_finished_is_an_error_not_zero_counts() {
        let out = "Failure [BeforeSuite]\nunable to reach the API server\n";
        assert_eq!(parse_summary(out), Err(ParseError::NoRanLine));
        assert_eq!(
            parse_summary("Ran 3 of 9 Specs in 2.0 seconds\n"),
            Err(ParseError::NoCountsLine)
        );
    }

    #[test]
    fn a_summary_that_contradicts_itself_is_refused_with_the_line() {
        let e = parse_summary(
            "Ran 2 of 9 Specs in 2.0 seconds\nSUCCESS! -- 3 Passed | 0 Failed | 0 Pending | 7 Skipped\n",
        );
        assert!(matches!(e, Err(ParseError::Inconsistent(_))), "{e:?}");
        let e = parse_summary(
            "Ran 2 of 9 Specs in 2.0 seconds\nFAIL! -- two Passed | 0 Failed | 0 Pending | 7 Skipped\n",
        );
        assert_eq!(
            e,
            Err(ParseError::BadLine {
                line: 2,
                text: "FAIL! -- two Passed | 0 Failed | 0 Pending | 7 Skipped".into()
            })
        );
    }

    #[test]
    fn the_ci_subset_focuses_on_exactly_the_four_granular_pod_checks() {
        let f = Selection::CiSubset.focus();
        assert!(f.starts_with(r"(\[sig-network\] Networking Granular Checks: Pods should function for intra-pod communication: http|"));
        assert_eq!(f.matches('|').count(), 3);
        assert!(!f.contains("DNS"));
    }

    #[test]
    fn the_dns_skip_list_quotes_every_name_and_covers_the_dns_tests() {
        let s = Selection::Full.skip();
        assert!(s.contains(r"\[sig-network\] DNS "));
        assert!(s.contains("session affinity timeout work for NodePort service"));
        // Every bracket is quoted: the names match literally.
        assert!(!s.contains(" [") && !s.contains("(Check"));
        assert_eq!(s.matches('|').count(), NEEDS_CLUSTER_DNS.len() - 1);
        for (name, why) in NEEDS_CLUSTER_DNS {
            assert!(name.starts_with("[sig-network] "), "{name}");
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn the_router_rules_are_found_by_their_tag_and_the_wan_address_by_inet() {
        let listing = "table ip filter {\n\tchain forward {\n\t\tct state established,related accept # handle 3\n\t\tip saddr 203.0.113.2 ip daddr 198.51.100.2 tcp dport 10250 accept comment \"wh-conformance-kubelet\" # handle 7\n\t}\n}\n";
        assert_eq!(tagged_handles(listing), vec!["7".to_string()]);
        assert_eq!(
            first_ipv4("5: wan    inet 203.0.113.4/24 brd 203.0.113.255 scope global wan"),
            Some("203.0.113.4".to_string())
        );
        assert_eq!(first_ipv4("5: wan    link/ether"), None);
    }

    #[test]
    fn quoting_escapes_every_regexp_operator() {
        assert_eq!(regex_quote("a.b(c)[d]|e*"), r"a\.b\(c\)\[d\]\|e\*");
    }
}
