//! A gibibyte through the overlay, every byte checked: over a direct path
//! (two public hosts, a to b) and over a relayed one (two hosts behind hard
//! NATs, which must go through a public relay, b to a). What a user moving a
//! backup or a disk image relies on: nothing lost, reordered or changed
//! across GSO/GRO batching, rekeys and relay framing at full speed.

use std::time::{Duration, Instant};
use wirehub_e2e::nat::{Kind, Scenario, is_direct, path_glyph, scenario};
use wirehub_e2e::{Nat, require_lab, stream};

const GIB: u64 = 1 << 30;
/// Generous: the lab has moved 1 GiB in 12-40 s on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(240);

/// Waits until node_a shows node_b on a path that `want` accepts.
fn wait_path(s: &Scenario, want: impl Fn(char) -> bool, what: &str) {
    let start = Instant::now();
    loop {
        let g = path_glyph(&s.lab, &s.a, "node_b");
        if want(g) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node_a never showed a {what} path to node_b (last {g}):\n{}",
            s.lab.report(&[&s.a, &s.b])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A gibibyte from a to b (`from_a`) or from b to a, every byte checked.
fn a_gibibyte(s: &Scenario, what: &str, from_a: bool) {
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(30))
        .expect("a pings b");
    let (from, to, to_ip) = if from_a {
        (&s.a, &s.b, "10.0.42.3")
    } else {
        (&s.b, &s.a, "10.0.42.2")
    };
    let to_ip = to_ip.parse().expect("address");
    let t = stream::tcp_intact(&from.netns, &to.netns, to_ip, GIB, DEADLINE).unwrap_or_else(|e| {
        panic!(
            "{what}, {} -> {}: {e:#}\n{}",
            from.name,
            to.name,
            s.lab.report(&[&s.a, &s.b])
        )
    });
    eprintln!(
        "{what}, {} -> {}: 1 GiB intact in {:.1} s ({:.0} Mbit/s)",
        from.name,
        to.name,
        t.secs,
        t.mbit_per_s()
    );
}

#[test]
fn a_gibibyte_crosses_a_direct_path_intact() {
    require_lab!();
    let (s, _) = scenario(Kind::Public, Kind::Public, 0);
    wait_path(&s, is_direct, "direct");
    a_gibibyte(&s, "direct", true);
}

#[test]
fn a_gibibyte_crosses_a_relayed_path_intact() {
    require_lab!();
    let (s, _) = scenario(Kind::Behind(Nat::Hard), Kind::Behind(Nat::Hard), 0);
    wait_path(&s, |g| g == '○', "relayed");
    a_gibibyte(&s, "relayed", false);
}
