//! The node: the sans-I/O core (`wirehub_core::node`: [`core::Node`] holds
//! every protocol decision, [`overlay`], [`sim`]), re-exported here, and the
//! tokio daemon ([`daemon`]) that gives it sockets, the data plane, timers
//! and the control socket; [`launch`] turns `wh up`'s options into a running
//! daemon; [`cni`] writes the CNI configuration of a routed pod network.
//! See docs/node.md.

pub use wirehub_core::node::{Mode, core, overlay, sim};

pub mod cni;
pub mod daemon;
pub mod launch;
