//! The plugin called directly as a runtime calls it, in namespaces the test
//! makes: dual stack ADD/CHECK/DEL, idempotent DEL, undo on a failed ADD,
//! GC. Needs root, `ip`, `nsenter`, `nft`, busybox and host-local; skips
//! otherwise.

mod common;

use common::{Lab, PLUGIN, cni, ipam_allocations, links, must};
use serde_json::{Value, json};

fn conf(lab: &Lab, name: &str, ranges: Value, pod_subnet: Value) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "wirehub-cni",
        "mtu": 1400,
        "podSubnet": pod_subnet,
        "stateDir": lab.path("state"),
        "logFile": lab.path("plugin.log"),
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": lab.path("ipam")},
    })
}

fn env<'a>(cid: &'a str, netns: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", common::CNI_DIR),
    ]
}

fn nft_ruleset(ns: &str) -> String {
    must(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"])
}

fn ping(ns: &str, addr: &str) -> bool {
    let out = common::run_timeout(
        std::process::Command::new("ip").args([
            "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", addr,
        ]),
        std::time::Duration::from_secs(10),
    );
    out.status.success()
}

#[test]
fn dual_stack_add_check_del() {
    skip_unless!("ip", "nsenter", "nft", "busybox", "/usr/lib/cni/host-local");
    let mut lab = Lab::new("d");
    let host = lab.netns("host");
    let p1 = lab.netns("p1");
    let p2 = lab.netns("p2");
    let (ns1, ns2) = (format!("/run/netns/{p1}"), format!("/run/netns/{p2}"));
    let c = conf(
        &lab,
        "dual",
        json!([[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:244:0:7::/64"}]]),
        json!(["10.244.0.0/16", "fd00:244::/56"]),
    );

    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c1", &ns1), &c);
    assert_eq!(rc, 0, "ADD: {out}");
    let r1: Value = serde_json::from_str(&out).expect("result JSON");
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["mtu"], 1400);
    assert_eq!(r1["interfaces"][1]["sandbox"], ns1.as_str());
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r1["ips"][1]["gateway"], "fe80::1");
    let a1 = r1["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(a1.starts_with("10.244.7.") && a1.ends_with("/32"), "{a1}");
    // Chained after another plugin: its result is kept, ours appended.
    let mut chained = c.clone();
    chained["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "earlier0", "mac": "02:00:00:00:00:01"}],
        "ips": [], "dns": {"nameservers": ["10.96.0.10"]}
    });
    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c2", &ns2), &chained);
    assert_eq!(rc, 0, "ADD 2: {out}");
    let r2: Value = serde_json::from_str(&out).expect("result JSON");
    assert_eq!(r2["interfaces"][0]["name"], "earlier0", "{r2}");
    assert_eq!(r2["interfaces"][2]["name"], "eth0", "{r2}");
    assert_eq!(r2["ips"][0]["interface"], 2, "{r2}");
    assert_eq!(r2["dns"]["nameservers"][0], "10.96.0.10", "{r2}");
    let ip4_2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let ip6_2 = r2["ips"][1]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();

    // What ADD made.
    let l = must(&["ip", "-n", &p1, "-o", "link", "show", "eth0"]);
    assert!(l.contains("mtu 1400"), "{l}");
    let routes = must(&["ip", "-n", &p1, "route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    let routes6 = must(&["ip", "-n", &p1, "-6", "route"]);
    assert!(
        routes6.contains("default via fe80::1 dev eth0"),
        "{routes6}"
    );
    assert!(nft_ruleset(&host).contains("table inet wirehub-cni"));
    assert!(ping(&p1, &ip4_2), "pod to pod, IPv4");
    assert!(ping(&p1, &ip6_2), "pod to pod, IPv6");

    // CHECK passes, then fails once something is broken.
    let mut chk = c.clone();
    chk["prevResult"] = r1.clone();
    let (rc, out) = cni(PLUGIN, &host, "CHECK", &env("c1", &ns1), &chk);
    assert_eq!((rc, out.as_str()), (0, ""), "CHECK");
    must(&["ip", "-n", &p1, "route", "del", "default"]);
    let (rc, out) = cni(PLUGIN, &host, "CHECK", &env("c1", &ns1), &chk);
    assert_eq!(rc, 1);
    let e: Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(e["code"], 105, "{e}");

    // ADD on an interface that exists fails, and leaks no address.
    let before = ipam_allocations(&lab.path("ipam"), "dual");
    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c1", &ns1), &c);
    assert_eq!(rc, 1);
    let e: Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(e["code"], 104, "{e}");
    assert_eq!(ipam_allocations(&lab.path("ipam"), "dual"), before);

    // DEL, DEL again, DEL with the namespace gone.
    let mut del = c.clone();
    del["prevResult"] = r1.clone();
    assert_eq!(cni(PLUGIN, &host, "DEL", &env("c1", &ns1), &del).0, 0);
    assert_eq!(cni(PLUGIN, &host, "DEL", &env("c1", &ns1), &del).0, 0);
    assert!(!links(&p1).contains("eth0"));
    assert!(
        nft_ruleset(&host).contains("wirehub-cni"),
        "table stays while c2 is attached"
    );
    must(&["ip", "netns", "del", &p2]);
    lab.netns.retain(|n| n != &p2);
    let (rc, out) = cni(PLUGIN, &host, "DEL", &env("c2", &ns2), &c);
    assert_eq!(rc, 0, "DEL after the netns is gone: {out}");
    assert_eq!(
        ipam_allocations(&lab.path("ipam"), "dual"),
        Vec::<String>::new()
    );
    assert!(!links(&host).contains("wh"), "{}", links(&host));
    assert!(
        !nft_ruleset(&host).contains("wirehub-cni"),
        "table goes with the last pod"
    );
}

#[test]
fn failed_add_releases_its_address() {
    skip_unless!("ip", "nsenter", "nft", "/usr/lib/cni/host-local");
    let mut lab = Lab::new("f");
    let host = lab.netns("host");
    let p1 = lab.netns("p1");
    let ns1 = format!("/run/netns/{p1}");
    // A range of one address, and a host route to it that is in the way.
    let c = conf(
        &lab,
        "fail",
        json!([[{"subnet": "10.244.9.0/24", "rangeStart": "10.244.9.10", "rangeEnd": "10.244.9.10"}]]),
        json!("10.244.0.0/16"),
    );
    must(&[
        "ip", "-n", &host, "link", "add", "blocker", "type", "veth", "peer", "name", "blocker1",
    ]);
    must(&["ip", "-n", &host, "link", "set", "blocker", "up"]);
    must(&["ip", "-n", &host, "link", "set", "blocker1", "up"]);
    must(&[
        "ip",
        "-n",
        &host,
        "route",
        "add",
        "10.244.9.10/32",
        "dev",
        "blocker",
    ]);
    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c1", &ns1), &c);
    assert_eq!(rc, 1, "{out}");
    let e: Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(e["code"], 100, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("10.244.9.10/32"),
        "{e}"
    );
    assert_eq!(
        ipam_allocations(&lab.path("ipam"), "fail"),
        Vec::<String>::new()
    );
    assert!(!links(&p1).contains("eth0"));
    assert!(!links(&host).contains("wh"));
    assert!(!nft_ruleset(&host).contains("wirehub-cni"));
    // With the obstacle gone the same attachment works.
    must(&["ip", "-n", &host, "route", "del", "10.244.9.10/32"]);
    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c1", &ns1), &c);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(cni(PLUGIN, &host, "DEL", &env("c1", &ns1), &c).0, 0);

    // An interface that is not ours: ADD refuses it, and the DEL a runtime
    // sends after the failed ADD leaves it alone.
    let p2 = lab.netns("p2");
    let ns2 = format!("/run/netns/{p2}");
    must(&[
        "ip", "-n", &p2, "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let (rc, out) = cni(PLUGIN, &host, "ADD", &env("c2", &ns2), &c);
    assert_eq!(rc, 1);
    assert!(out.contains("\"code\":104"), "{out}");
    assert_eq!(cni(PLUGIN, &host, "DEL", &env("c2", &ns2), &c).0, 0);
    assert!(
        links(&p2).contains("eth0"),
        "DEL removed an interface it did not make"
    );
    assert_eq!(
        ipam_allocations(&lab.path("ipam"), "fail"),
        Vec::<String>::new()
    );
}

#[test]
fn gc_removes_only_stale_attachments() {
    skip_unless!("ip", "nsenter", "nft", "/usr/lib/cni/host-local");
    let mut lab = Lab::new("g");
    let host = lab.netns("host");
    let p1 = lab.netns("p1");
    let p2 = lab.netns("p2");
    let c = conf(
        &lab,
        "gc",
        json!([[{"subnet": "10.244.8.0/24"}]]),
        json!("10.244.0.0/16"),
    );
    let (ns1, ns2) = (format!("/run/netns/{p1}"), format!("/run/netns/{p2}"));
    assert_eq!(cni(PLUGIN, &host, "ADD", &env("keep", &ns1), &c).0, 0);
    assert_eq!(cni(PLUGIN, &host, "ADD", &env("stale", &ns2), &c).0, 0);
    assert_eq!(ipam_allocations(&lab.path("ipam"), "gc").len(), 2);

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let (rc, out) = cni(PLUGIN, &host, "GC", &[("CNI_PATH", common::CNI_DIR)], &gc);
    assert_eq!((rc, out.as_str()), (0, ""));
    assert_eq!(ipam_allocations(&lab.path("ipam"), "gc").len(), 1);
    assert!(links(&p1).contains("eth0"));
    assert!(!links(&p2).contains("eth0"));
    let set = must(&[
        "ip",
        "netns",
        "exec",
        &host,
        "nft",
        "list",
        "set",
        "inet",
        "wirehub-cni",
        "pods4",
    ]);
    assert_eq!(set.matches("10.244.8.").count(), 1, "{set}");

    // GC of a 1.0.0 config is refused: the verb is 1.1 only.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    let (rc, out) = cni(PLUGIN, &host, "GC", &[("CNI_PATH", common::CNI_DIR)], &old);
    assert_eq!(rc, 1);
    assert!(out.contains("\"code\":1"), "{out}");

    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        cni(PLUGIN, &host, "GC", &[("CNI_PATH", common::CNI_DIR)], &gc).0,
        0
    );
    assert!(ipam_allocations(&lab.path("ipam"), "gc").is_empty());
    assert!(!nft_ruleset(&host).contains("wirehub-cni"));
}

#[test]
fn parallel_adds_and_dels() {
    skip_unless!("ip", "nsenter", "nft", "/usr/lib/cni/host-local");
    const N: usize = 6;
    let mut lab = Lab::new("c");
    let host = lab.netns("host");
    let pods: Vec<String> = (0..N).map(|i| lab.netns(&format!("p{i}"))).collect();
    let c = conf(
        &lab,
        "par",
        json!([[{"subnet": "10.244.6.0/24"}]]),
        json!("10.244.0.0/16"),
    );
    let verb = |v: &'static str| {
        std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (host, c) = (host.clone(), c.clone());
                    s.spawn(move || {
                        let (cid, ns) = (format!("par{i}"), format!("/run/netns/{p}"));
                        cni(PLUGIN, &host, v, &env(&cid, &ns), &c)
                    })
                })
                .collect();
            for h in hs {
                let (rc, out) = h.join().expect("thread");
                assert_eq!(rc, 0, "{v}: {out}");
            }
        });
    };
    verb("ADD");
    assert_eq!(ipam_allocations(&lab.path("ipam"), "par").len(), N);
    let set = must(&[
        "ip",
        "netns",
        "exec",
        &host,
        "nft",
        "list",
        "set",
        "inet",
        "wirehub-cni",
        "pods4",
    ]);
    assert_eq!(set.matches("10.244.6.").count(), N, "{set}");
    verb("DEL");
    assert!(ipam_allocations(&lab.path("ipam"), "par").is_empty());
    assert!(!nft_ruleset(&host).contains("wirehub-cni"));
}
