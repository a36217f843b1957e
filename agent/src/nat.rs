//! Getting through NATs: learning the node's reflexive endpoint and NAT kind
//! from what peers report seeing ([`detect`]), asking the home router for a
//! port mapping ([`upnp`], the only part here that does I/O), and the
//! hole-punching schedule ([`punch`]).

pub mod detect;
pub mod punch;
pub mod upnp;

pub use detect::NatDetector;
pub use punch::Puncher;
