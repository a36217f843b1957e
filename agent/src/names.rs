//! Names on the overlay: the pure layer (resolvers, the DNS wire format) is
//! `wirehub_core::names`, re-exported here; this module adds the I/O around
//! it: [`server`], the DNS responder (UDP and TCP on a socket address, rate
//! limited per source, counters, and a watch channel so that `wh reload`
//! swaps the names under a running server), and [`hosts`], opt-in
//! management of a marked block in `/etc/hosts`. See docs/names.md.

pub use wirehub_core::names::*;

pub mod hosts;
pub mod server;

pub use server::{DnsCounters, DnsHandle, serve_dns, serve_dns_with};
