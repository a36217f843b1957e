//! The node's sans-I/O core ([`core::Node`]): it holds every protocol
//! decision of a node — trust, paths, relays, punching, its own record — fed
//! datagrams, time, requests and spec updates as values and returning
//! transmits, data-plane operations and events as values. [`overlay`] keeps
//! the paths to trusted peers; [`sim`] runs many cores on a simulated
//! internet. The tokio daemon that gives a core sockets, the data plane,
//! timers and the control socket is the `wirehub` crate's `node::daemon`.
//! See docs/node.md.

pub mod core;
pub mod overlay;
#[cfg(test)]
mod pair;
pub mod sim;

/// NAT mode, as the original's `mode` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect.
    Unknown,
    /// The node has a public address.
    Direct,
    /// The node is behind NAT.
    Nat,
}
