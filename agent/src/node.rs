//! The node: a sans-I/O core ([`core::Node`]) that holds every protocol
//! decision, and the tokio daemon ([`daemon`]) that gives it sockets, the
//! data plane, timers and the control socket. See docs/node.md.

pub mod cni;
pub mod core;
pub mod daemon;
pub mod launch;
pub mod overlay;
#[cfg(test)]
mod pair;
pub mod sim;
