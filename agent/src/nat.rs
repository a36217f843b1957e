//! Getting through NATs: learning the node's reflexive endpoint and NAT kind
//! from what peers report seeing ([`detect`]) and the host's own global
//! IPv6 addresses ([`local`]), asking the home router for a
//! port mapping ([`upnp`] and [`natpmp`], the only parts here that do I/O), and the
//! hole-punching schedule ([`punch`]).

pub mod detect;
pub mod local;
pub mod natpmp;
pub mod punch;
pub mod upnp;

pub use detect::NatDetector;
pub use punch::Puncher;
