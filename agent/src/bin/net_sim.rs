//! `net-sim`: runs generated networks of real node cores on the simulated
//! internet of `wirehub::node::sim`, with the fake data plane, and prints
//! distributions, or replays one network with its trace. The command line
//! is `wirehub::node::sim::cli` (shared with `net-sim-wg`, the same with
//! real WireGuard: sim-wg/); see docs/simulator.md.
//!
//! ```text
//! net-sim [--networks N] [--seed S] [--jobs J]   N networks from seed S
//! net-sim --seed S --one                          replay network S, traced
//! ```
//!
//! With `--one`, `RUST_LOG` (e.g. `wirehub=debug`) prints the cores' own
//! log lines too, each with the node and the simulated time.

use std::process::ExitCode;
use wirehub::node::sim::{cli, dataplane};

/// The cores' own log lines, each in a span naming the node and the
/// simulated time (e.g. RUST_LOG=wirehub=debug): none unless asked for.
fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .init();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cli::main("net-sim", &args, dataplane::fake, init_logs)
}
