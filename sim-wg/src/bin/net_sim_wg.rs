//! `net-sim-wg`: `net-sim` with real WireGuard. The same generated networks
//! of real node cores on the simulated internet, each trusted host's data
//! plane made of boringtun `Tunn`s on the simulated clock
//! (`wirehub_sim_wg::WgDataplane`); "reaches" means a `Tunn` decrypted the
//! packet. The same flags as `net-sim` (`node::sim::cli`); see
//! docs/simulator.md.

use std::process::ExitCode;
use wirehub_core::node::sim::cli;

/// The cores' own log lines with `--one` when `RUST_LOG` asks for them.
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
    cli::main("net-sim-wg", &args, wirehub_sim_wg::wireguard, init_logs)
}
