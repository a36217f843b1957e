//! Generated networks of real node cores with real WireGuard data planes:
//! every trusted pair's first data, and its data after each fault, is a
//! packet a `Tunn` decrypted. CI runs this (e2e/test.sh).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wirehub_core::node::sim::network_seed;
use wirehub_core::node::sim::scenario::{Bounds, Tally, generate, run_caught_with};
use wirehub_sim_wg::wireguard;

const NETWORKS: u64 = 50;

/// The quick profile, but first data within 20 s rather than 10 s: pairs
/// behind two address-and-port-dependent NATs whose core keeps moving the
/// direct path between ports for seconds (e.g. seed 4142392546787701029)
/// handshake late with real WireGuard (docs/simulator.md, "Found with real
/// WireGuard"); the run prints how many pairs took longer than 10 s.
fn bounds() -> Bounds {
    Bounds {
        first: Duration::from_secs(20),
        ..Bounds::quick()
    }
}

/// 50 networks on two workers (each network whole on one thread: the mock
/// clock is per thread). A failure names its seed; `net-sim-wg --seed S
/// --one --quick` replays it (with the 10 s bound).
#[test]
fn fifty_generated_networks_with_real_wireguard_connect_and_keep_their_properties() {
    let started = Instant::now();
    let tally = std::sync::Mutex::new(Tally::default());
    let failures = std::sync::Mutex::new(Vec::new());
    let late = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for job in 0..2 {
            let (tally, failures, late) = (&tally, &failures, &late);
            s.spawn(move || {
                for k in (job..NETWORKS).step_by(2) {
                    let scn = generate(network_seed(12, k));
                    let o = run_caught_with(&scn, bounds(), false, wireguard);
                    let pairs = o.direct_by_pair.len();
                    let over = o
                        .first_data
                        .iter()
                        .filter(|(d, _)| *d > Bounds::quick().first);
                    late.fetch_add(over.count(), Ordering::Relaxed);
                    // Pairs with a node killed for good (a trusted relay in
                    // use) leave `direct_by_pair` but had their first data.
                    if !o.passed() || o.first_data.len() < 2 * pairs {
                        let trace: Vec<String> =
                            o.trace.iter().rev().take(20).rev().cloned().collect();
                        failures.lock().expect("no worker panics").push(format!(
                            "{o}  first data of {} of {} ordered pairs; trace:\n    {}",
                            o.first_data.len(),
                            2 * pairs,
                            trace.join("\n    ")
                        ));
                    }
                    tally.lock().expect("no worker panics").add(&o);
                }
            });
        }
    });
    let tally = tally.into_inner().expect("no worker panics");
    let late = late.load(Ordering::Relaxed);
    eprintln!(
        "{tally}first data later than 10 s: {late} pairs\nin {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failures = failures.into_inner().expect("no worker panics");
    assert_eq!(tally.networks, NETWORKS as usize);
    assert!(
        failures.is_empty(),
        "{} of {NETWORKS} networks failed (replay: net-sim-wg --seed SEED --one --quick):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Found with real WireGuard (docs/simulator.md): n6 and n8, both behind
/// address-and-port-dependent mappings, get a direct path whose port the
/// core moves five times within 0.06 s; each move sends a new handshake
/// initiation (as the daemon's data plane does), the two sides' sessions
/// cross, and each sends data on a session the other does not have
/// (`NoCurrentSession`), until WireGuard's 15 s retry: first data after
/// 15.9 s. Fixed in the data plane (here and in the daemon's): a move
/// before a session exists sends the initiation in flight again, not a
/// new one.
#[test]
fn two_nodes_behind_hard_nats_get_first_data_within_ten_seconds_with_real_wireguard() {
    let o = run_caught_with(
        &generate(5367838300114716957),
        Bounds::quick(),
        false,
        wireguard,
    );
    assert!(o.passed(), "{o}");
}
