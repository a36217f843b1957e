//! 1,000 simulated nodes, no churn, no loss: every lookup must succeed.
//! Runs the real DHT and wire code (a sample of the pairs really sealed).

use wirehub::dht::sim::{SimConfig, run};

#[test]
fn thousand_nodes_without_churn_all_lookups_succeed() {
    let report = run(&SimConfig {
        nodes: 1000,
        lookups: 200,
        seal_fraction: 0.01,
        seed: 7,
        ..SimConfig::default()
    });
    println!("{report}");
    assert_eq!(report.succeeded, report.lookups, "{report}");
    assert_eq!(report.open_failures, 0, "{report}");
    assert!(report.sealed > 0, "{report}");
    assert!(report.hops.p95 <= 5.0, "{report}");
}
