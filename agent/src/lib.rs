//! WireHub: decentralized, peer-to-peer, secure overlay networks on WireGuard.
//!
//! The pure modules (`keys`, `config`, `proto`, `dht`) do no I/O: they are fed
//! bytes and time and return what to do, so they run the same under the
//! daemon, under tests with a fake clock, and in the 10,000-node simulator.

pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dht;
pub mod k8s;
pub mod keys;
pub mod names;
pub mod nat;
pub mod nc;
pub mod node;
pub mod proto;
pub mod relay;
