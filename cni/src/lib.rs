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
