//! NAT decisions: learning the node's reflexive endpoint and NAT kind from
//! what peers report seeing ([`detect`]) and the hole-punching schedule
//! ([`punch`]). Pure: fed observations and time, returning what to do. The
//! I/O (the host's own addresses, UPnP IGD and NAT-PMP port mappings) lives
//! in the `wirehub` crate's `nat` module.

pub mod detect;
pub mod punch;

pub use detect::NatDetector;
pub use punch::Puncher;
