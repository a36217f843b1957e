//! Test support for the network-namespace lab: a data plane with the part
//! of the daemon it needs around it (the public UDP socket and a receive
//! loop that feeds [`DataPlane::receive`]).
//!
//! Shared by the data plane lab test (`agent/tests/dataplane.rs`) and the
//! `wg-bench` tool; the daemon does not use it. Call [`start`] on a tokio
//! runtime whose worker threads are inside the node's namespace: the socket
//! and the TUN device belong to the namespace of the thread that opens them.

use crate::dataplane::{BackendKind, DataPlane, InterfaceConfig, Outgoing, udp};
use anyhow::{Context, Result};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running lab node: its data plane, the datagrams it hands to the
/// daemon (for relays), and the receive loop's task.
pub struct LabNode {
    pub dp: Arc<DataPlane>,
    pub outgoing: mpsc::Receiver<Outgoing>,
    /// [`receive_loop`]; it holds a reference to `dp` until aborted.
    pub pump: JoinHandle<()>,
}

/// Binds the daemon's socket on `0.0.0.0:port`, creates a `kind` data plane
/// on it and spawns [`receive_loop`] (reading with UDP_GRO when `udp_gro`;
/// an error if the socket refuses it).
pub async fn start(
    kind: BackendKind,
    cfg: InterfaceConfig,
    port: u16,
    udp_gro: bool,
) -> Result<LabNode> {
    let socket = Arc::new(
        UdpSocket::bind(("0.0.0.0", port))
            .await
            .context("bind the daemon socket")?,
    );
    if udp_gro {
        udp::enable_gro(&socket).context("UDP_GRO")?;
    }
    let (dp, outgoing) = DataPlane::create(kind, cfg, Arc::clone(&socket))
        .await
        .context("create the data plane")?;
    let dp = Arc::new(dp);
    let pump = tokio::spawn(receive_loop(socket, Arc::clone(&dp), udp_gro));
    Ok(LabNode { dp, outgoing, pump })
}

/// The daemon's receive loop, reduced to the data plane's part: every
/// datagram that is not a WireHub control message (first byte 0xFF) goes
/// to `dp`. With `gro` (the socket must have UDP_GRO enabled) one system
/// call reads a run of same-sized datagrams from one source. Returns when
/// the socket fails.
pub async fn receive_loop(socket: Arc<UdpSocket>, dp: Arc<DataPlane>, gro: bool) {
    let mut buf = vec![0u8; 65536];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        loop {
            let read = if gro {
                udp::try_recv_gro(&socket, &mut buf)
            } else {
                socket
                    .try_recv_from(&mut buf)
                    .map(|(n, from)| (n, from, n.max(1)))
            };
            // WouldBlock (drained) or an error: wait for readiness again.
            let Ok((n, from, segment)) = read else { break };
            for datagram in buf[..n].chunks(segment.max(1)) {
                if datagram[0] != 0xFF {
                    dp.receive(from, datagram, None);
                }
            }
        }
    }
}
