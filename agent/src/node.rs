//! The node daemon: one task owns the UDP socket shared by WireGuard and the
//! WireHub control protocol, feeds the sans-I/O cores (`proto`, `dht`) and
//! applies what they ask: WireGuard peers, paths, routes.

pub mod daemon;
pub mod launch;
pub mod overlay;
