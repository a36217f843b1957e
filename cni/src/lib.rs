//! `wirehub-cni`: the CNI plugin (spec 0.3.0 to 1.1.0) that puts pods on a
//! WireHub node. One veth pair per pod, addresses from a delegated IPAM
//! plugin, /32 routes with a link-local gateway, masquerade to the outside
//! with an nftables table of our own. See `docs/cni.md`.

pub mod log;

pub mod config;
pub mod delegate;
pub mod error;
pub mod link;
pub mod net;
pub mod nft;
pub mod plugin;
pub mod result;
pub mod state;
pub mod version;

pub use plugin::{Outcome, dispatch};

/// Tests that write a fake plugin and tests that run one hold this: a fork
/// in another test thread while a script is open for writing would make its
/// exec fail with ETXTBSY.
#[cfg(test)]
pub(crate) static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
pub(crate) fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
