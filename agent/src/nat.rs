//! Getting through NATs. The decisions — learning the node's reflexive
//! endpoint and NAT kind ([`detect`]) and the hole-punching schedule
//! ([`punch`]) — are `wirehub_core::nat`, re-exported here. This module adds
//! the I/O: the host's own global IPv6 addresses ([`local`]) and asking the
//! home router for a port mapping ([`upnp`] and [`natpmp`]).

pub use wirehub_core::nat::*;

pub mod local;
pub mod natpmp;
pub mod upnp;
