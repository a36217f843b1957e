//! Nodes with wrong wall clocks (issue 19): under libfaketime, nodes 2 min
//! ahead, 1 h behind and 1 day ahead join a network of nodes whose clocks
//! are right, ping every other node, and say how far off their clock is.
//! Monotonic clocks stay real (`FAKETIME_DONT_FAKE_MONOTONIC=1`): only the
//! wall clock, which sealed timestamps are read from, is off.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, node_name, require_lab};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The nodes of the network, by index: their FAKETIME offset (none: a
/// right clock) and what `wh show` and the log must say.
const CLOCKS: [(Option<&str>, &str); 6] = [
    (None, ""),
    (None, ""),
    (None, ""),
    (Some("+120s"), "2 min ahead of the network"),
    (Some("-3600s"), "1 h behind the network"),
    (Some("+86400s"), "1 d ahead of the network"),
];

/// The environment that runs a daemon with its wall clock moved by `offset`.
fn faketime(offset: &str) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A bootstrap node and the nodes of [`CLOCKS`], each started with its
/// clock, all up. Returns the nodes.
fn network_with_clocks(lab: &mut Lab) -> Vec<Host> {
    let (boot, boot_pk) = lab.public_boot().expect("boot");
    let mut text = format!(
        "name lab\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\n",
        boot.ip
    );
    let mut nodes = Vec::new();
    let mut keys: Vec<PathBuf> = Vec::new();
    for i in 0..CLOCKS.len() {
        let name = node_name(i);
        nodes.push(lab.public_host(&name).expect("host"));
        let (sk, pk) = lab.genkey(&name).expect("key");
        text += &format!("trust {name} {pk}\n");
        keys.push(sk);
    }
    let config = lab.write("lab.conf", &text).expect("config");
    for (i, host) in nodes.iter().enumerate() {
        lab.env = CLOCKS[i].0.map(faketime).unwrap_or_default();
        lab.wh_up(host, &config, Some(&keys[i]), &[])
            .expect("wh up");
    }
    lab.env.clear();
    for host in &nodes {
        lab.wait_daemon(host, Duration::from_secs(10))
            .expect("daemon answers");
    }
    nodes
}

/// Waits until `wh show` on `host` has a header line containing `what`.
fn wait_show(lab: &Lab, host: &Host, what: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let show = lab.wh_ok(host, &["show"]).unwrap_or_default();
        let header = show.lines().next().unwrap_or_default().to_string();
        if header.contains(what) || start.elapsed() > timeout {
            return header;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn nodes_with_wrong_clocks_join_ping_everyone_and_say_their_offset() {
    require_lab!();
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is missing: run e2e/install-deps.sh"
    );
    let mut lab = Lab::new().expect("lab");
    let nodes = network_with_clocks(&mut lab);
    let everyone: Vec<&Host> = nodes.iter().collect();
    for (i, from) in nodes.iter().enumerate() {
        for j in (0..nodes.len()).filter(|j| *j != i) {
            let ip = format!("10.0.42.{}", j + 2);
            if let Err(e) = lab.ping_until(from, &ip, Duration::from_secs(30)) {
                panic!("{e}{}", lab.report(&everyone));
            }
        }
    }
    for (i, host) in nodes.iter().enumerate() {
        let said = CLOCKS[i].1;
        if said.is_empty() {
            let header = lab.wh_ok(host, &["show"]).expect("show");
            assert!(
                !header.contains("clock"),
                "{} has a right clock:\n{header}",
                host.name
            );
            continue;
        }
        let header = wait_show(&lab, host, said, Duration::from_secs(20));
        assert!(
            header.contains(&format!(", clock {said}")),
            "{}: {header}{}",
            host.name,
            lab.report(&[host])
        );
        let line = format!("clock is {said}; joined anyway");
        // `wh show` computes the offset when asked; the log says it at the
        // node's next tick (every 250 ms).
        let _ = lab.wait_log(host, &line, Duration::from_secs(2));
        let log = lab.log(host);
        assert_eq!(log.matches(&line).count(), 1, "{}:\n{log}", host.name);
    }
}
