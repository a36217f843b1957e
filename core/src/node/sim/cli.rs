//! The command line shared by `net-sim` (the fake data plane) and
//! `net-sim-wg` (real WireGuard, sim-wg/): its arguments, a batch of
//! generated networks on worker threads, or one network replayed with its
//! trace. See docs/simulator.md.
//!
//! ```text
//! net-sim [--networks N] [--seed S] [--jobs J]   N networks from seed S
//! net-sim --seed S --one                          replay network S, traced
//! ```
//!
//! `--quick` runs with the CI test's profile (`Bounds::quick`: shorter
//! quiet times, a run ends once the pairs that must be direct are): a
//! failure of the test replays with `net-sim --seed S --one --quick`.
//! `--quiet-ms` and `--converge-ms` override the quiet time before a fault
//! and the time every node runs before the first one. `--fake-dataplane`
//! runs the fake data plane whatever the binary's own (`net-sim-wg
//! --fake-dataplane` is `net-sim`: the same seeds, side by side).
//!
//! Contract:
//! - [`parse`] is pure: every bad argument is an [`ArgError`] naming it.
//! - [`main`] prints the distributions (or the trace) to stdout, failures
//!   as they come, progress every 1,000 networks to stderr; each network
//!   runs whole on one thread (a data plane may keep its clock per thread).
//!   It sets up no logging: the binary passes `init_logs`, called only for
//!   `--one`.

use super::dataplane::MakeDataplane;
use super::network_seed;
use super::scenario::{Bounds, Outcome, Tally, generate, run_caught_with, summary};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    pub networks: u64,
    pub seed: u64,
    pub jobs: u64,
    pub one: bool,
    pub quick: bool,
    pub fake_dataplane: bool,
    pub quiet_ms: Option<u64>,
    pub converge_ms: Option<u64>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            networks: 100,
            seed: 1,
            jobs: 1,
            one: false,
            quick: false,
            fake_dataplane: false,
            quiet_ms: None,
            converge_ms: None,
        }
    }
}

/// A command line that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("help asked for")]
    Help,
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{flag} {value}: not a whole number ({reason})")]
    NotANumber {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("unknown option {0}")]
    Unknown(String),
}

/// The usage line of the binary `name`.
pub fn usage(name: &str) -> String {
    format!(
        "usage: {name} [--networks N] [--seed S] [--jobs J] [--quick] [--fake-dataplane] [--quiet-ms MS] [--converge-ms MS] | {name} --seed S --one [--quick] ..."
    )
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Args, ArgError> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Err(ArgError::Help),
            "--one" => {
                a.one = true;
                continue;
            }
            "--quick" => {
                a.quick = true;
                continue;
            }
            "--fake-dataplane" => {
                a.fake_dataplane = true;
                continue;
            }
            "--networks" | "--seed" | "--jobs" | "--quiet-ms" | "--converge-ms" => {}
            other => return Err(ArgError::Unknown(other.to_string())),
        }
        let value = it
            .next()
            .ok_or_else(|| ArgError::MissingValue(flag.clone()))?;
        let n: u64 = value
            .parse()
            .map_err(|e: std::num::ParseIntError| ArgError::NotANumber {
                flag: flag.clone(),
                value: value.clone(),
                reason: e.to_string(),
            })?;
        match flag.as_str() {
            "--networks" => a.networks = n,
            "--seed" => a.seed = n,
            "--jobs" => a.jobs = n.clamp(1, 64),
            "--quiet-ms" => a.quiet_ms = Some(n),
            _ => a.converge_ms = Some(n),
        }
    }
    Ok(a)
}

impl Args {
    /// The bounds the runs check.
    pub fn bounds(&self) -> Bounds {
        let mut bounds = if self.quick {
            Bounds::quick()
        } else {
            Bounds::default()
        };
        if let Some(ms) = self.quiet_ms {
            bounds.quiet = Duration::from_millis(ms);
        }
        if let Some(ms) = self.converge_ms {
            bounds.converge = Duration::from_millis(ms);
        }
        bounds
    }
}

/// The whole binary `name`: parses `args` (without the program name) and
/// runs, each host with the data plane `plane` builds.
pub fn main(name: &str, args: &[String], plane: MakeDataplane, init_logs: fn()) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(ArgError::Help) => {
            eprintln!("{}", usage(name));
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{name}: {e}\n{}", usage(name));
            return ExitCode::from(2);
        }
    };
    let plane = if a.fake_dataplane {
        super::dataplane::fake
    } else {
        plane
    };
    if a.one {
        init_logs();
        return one(name, a.seed, a.bounds(), plane);
    }
    batch(name, a, plane)
}

/// A failed network: its violations, the end of its trace, how to replay.
fn report_failure(name: &str, o: &Outcome) {
    print!("{o}");
    for line in o.trace.iter().rev().take(25).rev() {
        println!("    | {line}");
    }
    println!(
        "  replay: {name} --seed {} --one (add --quick if the run had it)",
        o.seed
    );
}

fn one(name: &str, seed: u64, bounds: Bounds, plane: MakeDataplane) -> ExitCode {
    let scn = generate(seed);
    println!("{name}: network {}", summary(&scn));
    let o = run_caught_with(&scn, bounds, true, plane);
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

fn batch(name: &str, a: Args, plane: MakeDataplane) -> ExitCode {
    let bounds = a.bounds();
    let started = Instant::now();
    let tally = std::sync::Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for job in 0..a.jobs {
            let tally = &tally;
            s.spawn(move || {
                let mut k = job;
                while k < a.networks {
                    let scn = generate(network_seed(a.seed, k));
                    let o = run_caught_with(&scn, bounds, false, plane);
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    if !o.passed() {
                        report_failure(name, &o);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_flags_set_what_they_name_and_the_rest_keeps_its_default() {
        let a = parse(&args(
            "--networks 50 --seed 7 --jobs 2 --quick --quiet-ms 300",
        ))
        .expect("valid");
        assert_eq!(
            a,
            Args {
                networks: 50,
                seed: 7,
                jobs: 2,
                one: false,
                quick: true,
                fake_dataplane: false,
                quiet_ms: Some(300),
                converge_ms: None,
            }
        );
        assert_eq!(a.bounds().quiet, Duration::from_millis(300));
        assert!(parse(&args("--seed 3 --one")).expect("valid").one);
        assert!(
            parse(&args("--fake-dataplane"))
                .expect("valid")
                .fake_dataplane
        );
    }

    #[test]
    fn a_bad_argument_is_named_in_the_error() {
        assert_eq!(
            parse(&args("--seed")),
            Err(ArgError::MissingValue("--seed".into()))
        );
        assert_eq!(
            parse(&args("--frobnicate 1")),
            Err(ArgError::Unknown("--frobnicate".into()))
        );
        let e = parse(&args("--networks ten")).expect_err("not a number");
        assert!(
            e.to_string()
                .starts_with("--networks ten: not a whole number"),
            "{e}"
        );
    }
}
