//! Names on the overlay in the lab: a bootstrap node and two trusted nodes,
//! real `wh` daemons serving DNS on their overlay IPv4 (port 53), and the
//! system resolver of node_a's namespace pointed at its own responder.
//!
//! `ip netns exec NS` bind-mounts `/etc/netns/NS/resolv.conf` over
//! `/etc/resolv.conf`, so writing that file is all it takes to make
//! `getent` and `ping` in the namespace ask the responder.
//!
//! The raw DNS probes (rcodes, the flood) run inside a namespace by
//! re-executing this test binary there as the `dns_probe` helper: it builds
//! plain RFC 1035 queries (a header and one question) and reads back the
//! header of each answer, which is all a test needs to tell NXDOMAIN from
//! NOERROR.

use serde_json::{Value, json};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, require_lab};

const NAMES: [&str; 2] = ["node_a", "node_b"];
/// Overlay IPv4 of node_a and node_b (first trusted nodes of 10.0.42.0/24).
const IP_A: &str = "10.0.42.2";
const IP_B: &str = "10.0.42.3";

/// DNS response codes.
const NOERROR: u64 = 0;
const NXDOMAIN: u64 = 3;

struct Net {
    lab: Lab,
    nodes: Vec<Host>,
    /// The nodes' public keys.
    keys: Vec<String>,
    config: PathBuf,
    /// Dropped after the lab (fields drop in order): the daemons are gone
    /// before their files.
    _etc: Vec<NetnsEtc>,
}

/// A bootstrap node and the two trusted nodes, all up ([`Lab::trusted_network`]),
/// with extra `wh up` arguments for some nodes (by index).
fn network_with(extra: &[(usize, &[&str])]) -> Net {
    network_prepared(extra, |_| Vec::new())
}

/// Like [`network_with`]; `prepare` runs for each node before its daemon
/// starts (files under `/etc/netns` must exist before `ip netns exec`).
fn network_prepared(extra: &[(usize, &[&str])], prepare: impl Fn(&Host) -> Vec<NetnsEtc>) -> Net {
    let mut lab = Lab::new().expect("lab");
    let mut etc = Vec::new();
    let net = lab
        .trusted_network_prepared(NAMES.len(), extra, |host| etc.extend(prepare(host)))
        .expect("trusted network");
    let keys = net.keys.into_iter().map(|(_, pk)| pk).collect();
    Net {
        lab,
        nodes: net.nodes,
        keys,
        config: net.config,
        _etc: etc,
    }
}

/// `/etc/netns/NS/`, whose files `ip netns exec NS` bind-mounts over
/// `/etc/`: removed when dropped, also when the test fails.
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(netns: &str) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        NetnsEtc { dir }
    }

    fn write(self, file: &str, text: &str) -> NetnsEtc {
        std::fs::write(self.dir.join(file), text).expect("write a file in /etc/netns/NS");
        self
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // /etc/netns itself only when no other test uses it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Runs the `dns_probe` helper inside a namespace; returns its report.
fn probe(lab: &Lab, host: &Host, job: Value) -> Value {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(exe)
        .args(["--exact", "dns_probe", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("WH_DNS_PROBE", job.to_string())
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "the probe on {} said nothing: {stdout}{}\n--- log:\n{}",
                host.name,
                String::from_utf8_lossy(&out.stderr),
                lab.log(host)
            )
        });
    serde_json::from_str(line).expect("probe report")
}

/// One query from inside `host`: (rcode, answer count), or None on timeout.
fn ask(lab: &Lab, host: &Host, server: &str, name: &str, qtype: u16) -> Option<(u64, u64)> {
    let r = probe(
        lab,
        host,
        json!({"server": server, "queries": [[name, qtype]], "timeout_ms": 1000, "tries": 3}),
    );
    let a = &r["answers"][0];
    a["rcode"]
        .as_u64()
        .map(|rc| (rc, a["ancount"].as_u64().unwrap_or(0)))
}

fn getent(lab: &Lab, host: &Host, args: &[&str]) -> Option<String> {
    let mut all = vec!["getent"];
    all.extend_from_slice(args);
    let out = lab.exec_output(&host.netns, &all).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until node_a's responder answers for node_b (the daemon starts it
/// once the interface is up).
fn wait_responder(lab: &Lab, host: &Host, server: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Some((NOERROR, 1)) = ask(lab, host, server, "node_b.lab", 1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "no DNS answer from {server} within 15 s\n--- {} log:\n{}",
        host.name,
        lab.log(host)
    );
}

#[test]
fn names_resolve_through_the_responder_and_survive_a_flood() {
    require_lab!();
    let net = network_with(&[]);
    let lab = &net.lab;
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let server = format!("{IP_A}:53");
    let _resolv = NetnsEtc::new(&a.netns).write(
        "resolv.conf",
        &format!("nameserver {IP_A}\nsearch lab\noptions timeout:1 attempts:3\n"),
    );
    wait_responder(lab, a, &server);
    let b_ips: Vec<String> = lab
        .wh_ok(a, &["resolve", "node_b"])
        .expect("wh resolve")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(b_ips.len(), 2, "{b_ips:?}");
    assert_eq!(b_ips[0], IP_B);

    // The system resolver, through the responder: forward (getent hosts
    // asks AAAA first), IPv4 only, reverse, and a bare name via `search`.
    let out = getent(lab, a, &["hosts", "node_b.lab"]).expect("getent hosts node_b.lab");
    assert!(
        out.contains(&b_ips[1]) && out.contains("node_b.lab"),
        "{out}"
    );
    let out = getent(lab, a, &["ahostsv4", "node_b.lab"]).expect("getent ahostsv4");
    assert!(out.contains(IP_B), "{out}");
    let out = getent(lab, a, &["hosts", IP_B]).expect("getent hosts by address");
    assert!(out.contains("node_b.lab"), "{out}");
    let out = getent(lab, a, &["hosts", "node_b"]).expect("getent hosts node_b");
    assert!(out.contains(&b_ips[1]), "{out}");
    assert!(getent(lab, a, &["hosts", "nobody.lab"]).is_none());

    // ping by name.
    if let Err(e) = lab.ping_until(a, "node_b", Duration::from_secs(10)) {
        panic!("{e}\n--- node_a log:\n{}", lab.log(a));
    }

    // Another network's name and unknown names: NXDOMAIN.
    for name in ["node_b.othernet", "nobody.lab", "nobody", "www.example.com"] {
        assert_eq!(ask(lab, a, &server, name, 1), Some((NXDOMAIN, 0)), "{name}");
    }
    // A key prefix and a reverse name, raw.
    let prefix = format!("{}.lab", &net.keys[1][..8]);
    assert_eq!(
        ask(lab, a, &server, &prefix, 1),
        Some((NOERROR, 1)),
        "{prefix}"
    );
    assert_eq!(
        ask(lab, a, &server, "3.42.0.10.in-addr.arpa", 12),
        Some((NOERROR, 1))
    );

    // A flood of 20,000 queries from node_b (over the overlay) while node_a
    // keeps asking its responder: every one of node_a's queries is answered.
    let flood = {
        let exe = std::env::current_exe().expect("test binary");
        Command::new("ip")
            .args(["netns", "exec", &b.netns])
            .arg(exe)
            .args(["--exact", "dns_probe", "--ignored", "--nocapture"])
            .env(
                "WH_DNS_PROBE",
                json!({"server": server, "flood": 20000, "queries": []}).to_string(),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("flood")
    };
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let r = probe(
            lab,
            a,
            json!({"server": server, "queries": [["node_b.lab", 1], ["node_a", 28]], "timeout_ms": 1000, "tries": 3}),
        );
        for x in r["answers"].as_array().into_iter().flatten() {
            assert_eq!(x["rcode"].as_u64(), Some(NOERROR), "during the flood: {r}");
            answered += 1;
        }
    }
    let out = flood.wait_with_output().expect("flood ends");
    let report = String::from_utf8_lossy(&out.stdout);
    let report: Value = report
        .lines()
        .find_map(|l| l.split_once("PROBE ").map(|(_, r)| r))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("flood report: {report}"));
    eprintln!("flood: {report}; node_a answered {answered} queries meanwhile");
    assert_eq!(report["sent"].as_u64(), Some(20000), "{report}");
    assert!(answered >= 4, "{answered}");
    // The flood was limited: node_b got far fewer answers than it asked.
    assert!(report["received"].as_u64().unwrap_or(0) < 15000, "{report}");
    // node_b itself is answered again once its bucket has refilled.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ask(lab, b, &server, "node_a.lab", 1), Some((NOERROR, 1)));
    assert!(getent(lab, a, &["hosts", "node_b.lab"]).is_some());
}

#[test]
fn dns_off_serves_nothing() {
    require_lab!();
    let net = network_with(&[(1, &["dns", "off"])]);
    let lab = &net.lab;
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    lab.ping_until(a, IP_B, Duration::from_secs(10))
        .expect("a reaches b");
    // node_a serves (its own default), node_b does not.
    wait_responder(lab, b, &format!("{IP_A}:53"));
    let r = probe(
        lab,
        a,
        json!({"server": format!("{IP_B}:53"), "queries": [["node_a.lab", 1]], "timeout_ms": 500, "tries": 2}),
    );
    assert!(r["answers"][0]["rcode"].is_null(), "{r}");
}

const USER_HOSTS: &str = "127.0.0.1\tlocalhost\n# the user's own lines\n192.0.2.7 printer\n";

#[test]
fn hosts_block_follows_up_reload_and_down() {
    require_lab!();
    let real_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    // node_a's /etc/hosts is /etc/netns/NS/hosts (a bind mount, so the
    // daemon rewrites it in place); it must exist before the daemon starts.
    let mut net = network_prepared(&[(0, &["hosts", "on"])], |h| {
        if h.name == "node_a" {
            vec![NetnsEtc::new(&h.netns).write("hosts", USER_HOSTS)]
        } else {
            Vec::new()
        }
    });
    let a = net.nodes[0].clone();
    let etc = &net._etc[0];
    let start = Instant::now();
    while !etc.read("hosts").contains("# END wirehub lab")
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = etc.read("hosts");
    assert!(text.starts_with(USER_HOSTS), "{text}");
    assert!(
        text.contains("# BEGIN wirehub lab\n10.0.42.2\tnode_a.lab node_a\n"),
        "{text}"
    );
    assert!(text.contains("10.0.42.3\tnode_b.lab node_b\n"), "{text}");
    // The system resolver reads it (files come before dns).
    let out = getent(&net.lab, &a, &["ahostsv4", "node_b"]).expect("getent through the hosts file");
    assert!(out.contains(IP_B), "{out}");

    // Reload with a third node: the block is replaced, not duplicated.
    let (_, c_key) = net.lab.genkey("node_c").expect("key c");
    let third = format!("trust node_c {c_key}\n");
    let mut config = std::fs::read_to_string(&net.config).expect("config");
    config.push_str(&third);
    std::fs::write(&net.config, &config).expect("write config");
    let iface = net
        .lab
        .wh_ok(&a, &["show", "interfaces"])
        .expect("interfaces")
        .lines()
        .next()
        .expect("one interface")
        .to_string();
    let out = net.lab.wh_ok(&a, &["reload", &iface]).expect("reload");
    assert!(out.contains("node_c"), "{out}");
    let text = etc.read("hosts");
    assert!(text.contains("10.0.42.4\tnode_c.lab node_c\n"), "{text}");
    assert_eq!(text.matches("# BEGIN wirehub lab").count(), 1, "{text}");
    assert!(text.starts_with(USER_HOSTS), "{text}");

    // Down: the block is gone, the user's lines are as they were.
    net.lab.kill_daemon(&a, "-TERM").expect("stop node_a");
    assert_eq!(etc.read("hosts"), USER_HOSTS);
    assert_eq!(
        std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        real_hosts,
        "the real /etc/hosts was touched"
    );
}

/// Not a test: the probe that [`probe`] runs inside a namespace. Without
/// `WH_DNS_PROBE` it does nothing.
///
/// The job: `{"server": "IP:PORT", "queries": [[name, qtype], ...],
/// "timeout_ms": N, "tries": N, "flood": N}`. With `flood`, it sends that
/// many queries as fast as it can (bounded: at most 10 s), then counts the
/// answers that come within a second. It prints one line, `PROBE {json}`.
#[test]
#[ignore = "helper run inside lab namespaces by the tests above"]
fn dns_probe() {
    let Ok(job) = std::env::var("WH_DNS_PROBE") else {
        return;
    };
    let job: Value = serde_json::from_str(&job).expect("probe job");
    let server: SocketAddr = job["server"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("server");
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let report = if let Some(n) = job["flood"].as_u64() {
        flood(&sock, server, n)
    } else {
        let timeout = Duration::from_millis(job["timeout_ms"].as_u64().unwrap_or(1000));
        let tries = job["tries"].as_u64().unwrap_or(1);
        let mut answers = Vec::new();
        for (i, q) in job["queries"].as_array().into_iter().flatten().enumerate() {
            let name = q[0].as_str().unwrap_or_default();
            let qtype = q[1].as_u64().unwrap_or(1) as u16;
            let id = 0x4000 + i as u16;
            let packet = encode_query(id, name, qtype);
            let mut got = json!({"name": name, "rcode": null});
            'tries: for _ in 0..tries {
                let _ = sock.send_to(&packet, server);
                let deadline = Instant::now() + timeout;
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    let mut buf = [0u8; 1500];
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        break;
                    };
                    if let Some((rid, rcode, ancount)) = decode_header(&buf[..n])
                        && rid == id
                    {
                        got = json!({"name": name, "rcode": rcode, "ancount": ancount});
                        break 'tries;
                    }
                }
            }
            answers.push(got);
        }
        json!({ "answers": answers })
    };
    println!("PROBE {report}");
}

fn flood(sock: &UdpSocket, server: SocketAddr, n: u64) -> Value {
    let start = Instant::now();
    let mut sent = 0u64;
    let _ = sock.set_nonblocking(true);
    let mut buf = [0u8; 1500];
    let mut received = 0u64;
    for i in 0..n {
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        let name = if i % 2 == 0 {
            "node_a.lab"
        } else {
            "nobody.lab"
        };
        let packet = encode_query(i as u16, name, 1);
        loop {
            match sock.send_to(&packet, server) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(_) => break,
            }
        }
        sent += 1;
        while sock.recv_from(&mut buf).is_ok() {
            received += 1;
        }
    }
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if sock.recv_from(&mut buf).is_ok() {
            received += 1;
        }
    }
    json!({"sent": sent, "received": received, "secs": start.elapsed().as_secs_f64()})
}

/// A standard query (RD set) for one name; test-only, the product uses a
/// DNS crate.
fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

/// (id, rcode, answer count) of a response.
fn decode_header(p: &[u8]) -> Option<(u16, u64, u64)> {
    if p.len() < 12 || p[2] & 0x80 == 0 {
        return None;
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let rcode = u64::from(p[3] & 0x0f);
    let ancount = u64::from(u16::from_be_bytes([p[6], p[7]]));
    Some((id, rcode, ancount))
}
