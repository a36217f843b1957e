//! The local control socket: one Unix socket per interface under the run
//! directory (`/run/wirehub`, or `$WH_RUN_DIR`), mode 0600, speaking one JSON
//! request per line and one JSON response per line. The requests and
//! responses are `wirehub_core::control`'s types, re-exported here.

pub use wirehub_core::control::*;

pub mod client;
pub mod server;

use std::path::PathBuf;

/// Default directory of the control sockets, logs and pid files.
pub const DEFAULT_RUN_DIR: &str = "/run/wirehub";

/// The run directory: `$WH_RUN_DIR` or `/run/wirehub`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("WH_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The control socket of an interface.
pub fn socket_path(interface: &str) -> PathBuf {
    run_dir().join(format!("{interface}.sock"))
}

/// The log file of a daemon started in the background.
pub fn log_path(interface: &str) -> PathBuf {
    run_dir().join(format!("{interface}.log"))
}
