//! `net-sim`: runs generated networks of real node cores on the simulated
//! internet of `wirehub::node::sim` and prints distributions, or replays
//! one network with its trace. See docs/simulator.md.
//!
//! ```text
//! net-sim [--networks N] [--seed S] [--jobs J]   N networks from seed S
//! net-sim --seed S --one                          replay network S, traced
//! ```
//!
//! With `--one`, `RUST_LOG` (e.g. `wirehub=debug`) prints the cores' own
//! log lines too, each with the node and the simulated time.
//!
//! `--quick` runs with the CI test's profile (`Bounds::quick`: shorter
//! quiet times, a run ends once the pairs that must be direct are): a
//! failure of the test replays with `net-sim --seed S --one --quick`.
//! `--quiet-ms` and `--converge-ms` override the quiet time before a fault
//! and the time every node runs before the first one.

use std::process::ExitCode;
use std::time::Instant;
use wirehub::node::sim::network_seed;
use wirehub::node::sim::scenario::{Bounds, Outcome, Tally, generate, run_caught, summary};

const USAGE: &str = "usage: net-sim [--networks N] [--seed S] [--jobs J] [--quick] [--quiet-ms MS] [--converge-ms MS] | net-sim --seed S --one [--quick] ...";

struct Args {
    networks: u64,
    seed: u64,
    jobs: u64,
    one: bool,
    quick: bool,
    quiet_ms: Option<u64>,
    converge_ms: Option<u64>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        networks: 100,
        seed: 1,
        jobs: 1,
        one: false,
        quick: false,
        quiet_ms: None,
        converge_ms: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--one" => {
                a.one = true;
                continue;
            }
            "--quick" => {
                a.quick = true;
                continue;
            }
            _ => {}
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let n: u64 = value
            .parse()
            .map_err(|e| format!("{flag} {value}: {e}\n{USAGE}"))?;
        match flag.as_str() {
            "--networks" => a.networks = n,
            "--seed" => a.seed = n,
            "--jobs" => a.jobs = n.clamp(1, 64),
            "--quiet-ms" => a.quiet_ms = Some(n),
            "--converge-ms" => a.converge_ms = Some(n),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// A failed network: its violations, the end of its trace, how to replay.
fn report_failure(o: &Outcome) {
    print!("{o}");
    for line in o.trace.iter().rev().take(25).rev() {
        println!("    | {line}");
    }
    println!(
        "  replay: net-sim --seed {} --one (add --quick if the run had it)",
        o.seed
    );
}

fn one(seed: u64, bounds: Bounds) -> ExitCode {
    // The cores' own log lines, each in a span naming the node and the
    // simulated time (e.g. RUST_LOG=wirehub=debug): none unless asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .init();
    }
    let scn = generate(seed);
    println!("network {}", summary(&scn));
    let o = run_caught(&scn, bounds, true);
    for line in &o.trace {
        println!("  {line}");
    }
    let mut t = Tally::default();
    t.add(&o);
    print!("{t}");
    print!("{o}");
    if o.passed() {
        println!("passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut bounds = if a.quick {
        Bounds::quick()
    } else {
        Bounds::default()
    };
    if let Some(ms) = a.quiet_ms {
        bounds.quiet = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = a.converge_ms {
        bounds.converge = std::time::Duration::from_millis(ms);
    }
    if a.one {
        return one(a.seed, bounds);
    }
    let started = Instant::now();
    let tally = std::sync::Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for job in 0..a.jobs {
            let tally = &tally;
            s.spawn(move || {
                let mut k = job;
                while k < a.networks {
                    let o = run_caught(&generate(network_seed(a.seed, k)), bounds, false);
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    if !o.passed() {
                        report_failure(&o);
                    }
                    t.add(&o);
                    if t.networks.is_multiple_of(1000) {
                        eprint!("after {:.0} s:\n{t}", started.elapsed().as_secs_f64());
                    }
                    k += a.jobs;
                }
            });
        }
    });
    let t = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    print!("{t}");
    println!(
        "wall time {:.1} s ({} jobs), seed {}",
        started.elapsed().as_secs_f64(),
        a.jobs,
        a.seed
    );
    if t.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
