//! An agent upgrade: SIGTERM with `WH_KEEP_INTERFACE=1` (what the chart
//! sets) leaves the home router's port mapping for the next daemon, which
//! takes it over; a plain stop removes it. (Adopting a kernel WireGuard
//! interface is checked in the kernel VM: e2e/kernel/overlay.sh.)

use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, scenario};
use wirehub_e2e::{Host, Lab, Nat, require_lab};

const PORT: u16 = 62096;

/// Waits up to `secs` for miniupnpd on `router` to forward the port (or not).
fn wait_forwarded(lab: &Lab, router: &Host, want: bool, secs: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < wirehub_e2e::patience(Duration::from_secs(secs)) {
        if lab.upnp_forwards(router, PORT) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn sigterm_with_keep_leaves_the_port_mapping_to_the_next_daemon() {
    require_lab!();
    let (mut s, _) = scenario(Kind::Behind(Nat::Upnp), Kind::Public, 0);
    let router = s.routers[0].clone();
    let (config, key) = (s.config.clone(), s.keys[0].clone());
    assert!(
        wait_forwarded(&s.lab, &router, true, 10),
        "no mapping:\n{}",
        s.lab.log(&s.a)
    );
    // The daemon restarts as an upgraded agent's would.
    s.lab.kill_daemon(&s.a, "-TERM").expect("stop a");
    s.lab.env.push(("WH_KEEP_INTERFACE".into(), "1".into()));
    s.lab
        .wh_up(&s.a, &config, Some(&key), &[])
        .expect("a up, keeping");
    assert!(
        wait_forwarded(&s.lab, &router, true, 10),
        "no mapping:\n{}",
        s.lab.log(&s.a)
    );
    s.lab.kill_daemon(&s.a, "-TERM").expect("stop a, keeping");
    let log = s.lab.log(&s.a);
    assert!(
        log.contains("port mapping left for the next daemon"),
        "{log}"
    );
    assert!(
        s.lab.upnp_forwards(&router, PORT),
        "SIGTERM with WH_KEEP_INTERFACE=1 removed the mapping:\n{log}"
    );
    // The next daemon takes the mapping over; `wh down` removes it.
    s.lab.env.retain(|(k, _)| k != "WH_KEEP_INTERFACE");
    s.lab
        .wh_up(&s.a, &config, Some(&key), &[])
        .expect("a up again");
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}{}", s.lab.report(&[&s.a, &s.b])));
    // Kernel WireGuard (adopted) may carry the ping before the daemon answers.
    s.lab
        .wait_daemon(&s.a, Duration::from_secs(10))
        .expect("a's daemon answers");
    let iface = s
        .lab
        .wh_ok(&s.a, &["show", "interfaces"])
        .expect("interfaces")
        .trim()
        .to_string();
    s.lab.wh_ok(&s.a, &["down", &iface]).expect("down");
    assert!(
        wait_forwarded(&s.lab, &router, false, 10),
        "mapping left after wh down"
    );
}
