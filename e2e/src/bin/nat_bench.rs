//! NAT timings, median of N trials per case (each trial a fresh lab):
//! - time from both `wh up` to the first ping reply, for a direct pair
//!   (public - easy NAT) and a relayed pair (hard NAT - hard NAT);
//! - time for a pair of easy NATs to have a direct path.
//!
//! Each router's WAN link adds LATENCY_MS (default 20) of one-way delay each
//! way (netem where the kernel has it, else the lab's delay wire).
//!
//! Run as root: `cargo run --release -p wirehub-e2e --bin nat-bench [-- TRIALS [LATENCY_MS]]`
//! (with `WH_BIN` pointing at a release `wh`).

use anyhow::{Result, bail};
use std::time::{Duration, Instant};
use wirehub_e2e::Nat;
use wirehub_e2e::nat::{Kind, scenario, wait_direct};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn first_ping(ka: Kind, kb: Kind, latency: u32) -> Result<f64> {
    let (s, start) = scenario(ka, kb, latency);
    s.lab
        .ping_until(&s.a, "10.0.42.3", Duration::from_secs(20))?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn to_direct(latency: u32) -> Result<f64> {
    let (s, start) = scenario(Kind::Behind(Nat::Easy), Kind::Behind(Nat::Easy), latency);
    match wait_direct(&s.lab, &s.a, "node_b", Duration::from_secs(20)) {
        Some(_) => Ok(start.elapsed().as_secs_f64() * 1000.0),
        None => bail!("the easy pair never became direct"),
    }
}

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let latency: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let t0 = Instant::now();
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    let mut becomes_direct = Vec::new();
    for _ in 0..trials {
        direct.push(first_ping(Kind::Public, Kind::Behind(Nat::Easy), latency)?);
        relayed.push(first_ping(
            Kind::Behind(Nat::Hard),
            Kind::Behind(Nat::Hard),
            latency,
        )?);
        becomes_direct.push(to_direct(latency)?);
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "trials: {trials}, one-way delay per router WAN link, each way: {latency} ms (netem, or the lab's delay wire)"
    );
    println!(
        "first ping, direct pair (public - easy): median {:.0} ms  [{}]",
        median(direct.clone()),
        show(&direct)
    );
    println!(
        "first ping, relayed pair (hard - hard): median {:.0} ms  [{}]",
        median(relayed.clone()),
        show(&relayed)
    );
    println!(
        "easy - easy direct after: median {:.0} ms  [{}]",
        median(becomes_direct.clone()),
        show(&becomes_direct)
    );
    println!("wall: {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
