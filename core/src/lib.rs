//! WireHub's protocol core, sans-I/O: everything here is fed bytes, time
//! and randomness as values and returns what to do as values, so it runs
//! the same under the daemon, under tests with a fake clock, and in the
//! simulators (`dht-sim`, `net-sim`).
//!
//! What it owns: keys and workbits ([`keys`]), the network file
//! ([`config`]), the wire format ([`proto`]), the DHT ([`dht`]), relays
//! ([`relay`]), NAT decisions ([`nat`]), names and the DNS wire format
//! ([`names`]), the vocabulary of the control socket ([`control`]) and of
//! the data plane ([`dataplane`]), the node core ([`node`]) that joins
//! them, and the Kubernetes conversions and plans ([`k8s`]; resource types
//! with kube's derive, no client). What it never does: open a socket, start a thread of its own for
//! I/O, read the clock, or depend on tokio (this crate's manifest has no
//! tokio: the compiler keeps the boundary). The `wirehub` crate is the
//! shell that does the I/O and re-exports these modules under the same
//! paths.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod dht;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod keys;
pub mod names;
pub mod nat;
pub mod node;
pub mod proto;
pub mod relay;
