//! WireHub: decentralized, peer-to-peer, secure overlay networks on WireGuard.
//!
//! The protocol core lives in the `wirehub-core` crate, which has no tokio
//! and does no I/O: its modules (`keys`, `config`, `proto`, `dht`, `relay`,
//! and the pure halves of `nat`, `names`, `control`, `dataplane` and
//! `node`) are re-exported here under the same paths. This crate is the
//! shell around it: sockets, the TUN device and WireGuard backends, the
//! control socket, the CLI, the Kubernetes agent.

pub use wirehub_core::{config, dht, keys, proto, relay};

pub mod cli;
pub mod control;
pub mod dataplane;
pub mod k8s;
pub mod names;
pub mod nat;
pub mod nc;
pub mod node;
