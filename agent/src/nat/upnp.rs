//! Port mapping on the home router: UPnP IGD (igd-next), else NAT-PMP
//! ([`super::natpmp`]). Maps the node's UDP port when a gateway answers,
//! renews the lease before it expires, and removes the mapping on shutdown,
//! waiting at most [`UNMAP_TIMEOUT`] for the gateway (a stopping node never
//! waits longer on it), unless the node stops for the next daemon
//! ([`Stop::Keep`]: the mapping stays, the next daemon renews it, the lease
//! ends it otherwise). No gateway, or a refusal, is logged once and costs
//! nothing else.

use super::natpmp;
use igd_next::aio::tokio::search_gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Lease asked for, as the original.
pub const LEASE: Duration = Duration::from_secs(600);
/// The mapping is re-asked this often: it renews the lease long before it
/// ends and re-creates the mapping soon after a router restart. The
/// environment variable `WH_UPNP_RENEW_SECS` changes it (the lab uses it).
const RENEW_EVERY: Duration = Duration::from_secs(30);

fn renew_every() -> Duration {
    std::env::var("WH_UPNP_RENEW_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(RENEW_EVERY, Duration::from_secs)
}
/// How long a gateway search may take.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before searching again after no gateway answered.
const RETRY: Duration = Duration::from_secs(60);
/// How long a stopping node waits for the gateway to remove its mapping: a
/// gateway answers in milliseconds; one that does not must not hold `wh
/// down` (the lease ends the mapping anyway).
pub const UNMAP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the node tells the mapping task (through a `watch` channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The node runs: keep the mapping alive.
    Running,
    /// The node stops: remove the mapping.
    Unmap,
    /// The node stops and a next daemon takes over its port
    /// (`WH_KEEP_INTERFACE=1`): leave the mapping to it.
    Keep,
}

/// Whether a stopping node keeps its mapping (a dropped sender unmaps).
fn keeps(stop: &watch::Receiver<Stop>) -> bool {
    let keep = *stop.borrow() == Stop::Keep;
    if keep {
        tracing::info!("port mapping left for the next daemon");
    }
    keep
}

/// What the mapping task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpnpEvent {
    /// The router forwards `external` (its address, our port) to us; `via`
    /// names the protocol ("UPnP" or "NAT-PMP").
    Mapped {
        external: SocketAddr,
        via: &'static str,
    },
    /// The mapping is gone (router restarted, refused renewal).
    Lost,
}

/// The local address used to reach `gateway`.
fn local_ip_towards(gateway: SocketAddr) -> Option<IpAddr> {
    let s = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect(gateway).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Runs until `stop` leaves [`Stop::Running`]: searches a gateway, maps
/// `port`, renews, and removes the mapping when stopping (unless told to
/// keep it). A UPnP IGD is tried first, then
/// NAT-PMP on the default gateway.
pub async fn run(port: u16, events: mpsc::Sender<UpnpEvent>, mut stop: watch::Receiver<Stop>) {
    let mut logged_absent = false;
    loop {
        let mut options = SearchOptions::default();
        options.timeout = Some(SEARCH_TIMEOUT);
        options.single_search_timeout = Some(SEARCH_TIMEOUT);
        let gateway = tokio::select! {
            g = search_gateway(options) => g,
            _ = stop.changed() => return,
        };
        let igd_error = match gateway {
            Ok(g) => return igd_session(g, port, &events, &mut stop).await,
            Err(e) => e,
        };
        match natpmp_session(port, &events, &mut stop).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Lost) => continue,
            Err(e) => {
                if !logged_absent {
                    tracing::info!(upnp = %igd_error, nat_pmp = %e, "no UPnP IGD or NAT-PMP gateway answered; the node will rely on hole punching and relays");
                    logged_absent = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How a NAT-PMP session that had a mapping ended.
enum Ended {
    Stopped,
    Lost,
}

/// Maps `port` with NAT-PMP and keeps it until `stop` (then removes it) or
/// until a renewal fails. An error: no mapping was made.
async fn natpmp_session(
    port: u16,
    events: &mpsc::Sender<UpnpEvent>,
    stop: &mut watch::Receiver<Stop>,
) -> Result<Ended, natpmp::NatPmpError> {
    let gateway = natpmp::default_gateway()?;
    let (external, granted) = tokio::select! {
        r = natpmp::map(gateway, port, LEASE) => r?,
        _ = stop.changed() => return Ok(Ended::Stopped),
    };
    tracing::info!(%external, %gateway, lease_s = granted.as_secs(), "NAT-PMP port mapping added");
    let _ = events
        .send(UpnpEvent::Mapped {
            external,
            via: "NAT-PMP",
        })
        .await;
    let mut current = external;
    let mut lease = granted;
    loop {
        let wait = renew_every().min(lease / 2).max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                if keeps(stop) {
                    return Ok(Ended::Stopped);
                }
                match tokio::time::timeout(UNMAP_TIMEOUT, natpmp::unmap(gateway, port)).await {
                    Ok(Ok(())) => tracing::info!("NAT-PMP port mapping removed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the NAT-PMP port mapping"),
                    Err(_) => tracing::warn!(timeout_ms = UNMAP_TIMEOUT.as_millis() as u64, "the gateway did not remove the NAT-PMP port mapping in time; its lease ends it"),
                }
                return Ok(Ended::Stopped);
            }
        }
        match natpmp::map(gateway, port, LEASE).await {
            Ok((external, granted)) => {
                lease = granted;
                if external != current {
                    tracing::info!(%external, "NAT-PMP mapping moved");
                    current = external;
                    let _ = events
                        .send(UpnpEvent::Mapped {
                            external,
                            via: "NAT-PMP",
                        })
                        .await;
                }
            }
            Err(e) => {
                tracing::info!(error = %e, %gateway, "NAT-PMP renewal failed");
                let _ = events.send(UpnpEvent::Lost).await;
                return Ok(Ended::Lost);
            }
        }
    }
}

/// Maps `port` on an IGD and keeps it until `stop`, then removes it.
async fn igd_session(
    gateway: igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>,
    port: u16,
    events: &mpsc::Sender<UpnpEvent>,
    stop: &mut watch::Receiver<Stop>,
) {
    let Some(local) = local_ip_towards(gateway.addr) else {
        tracing::info!(gateway = %gateway.addr, "UPnP gateway found but no local address towards it");
        return;
    };
    let local = SocketAddr::new(local, port);
    let mut mapped = false;
    loop {
        let added = gateway
            .add_port(
                PortMappingProtocol::UDP,
                port,
                local,
                LEASE.as_secs() as u32,
                "wirehub",
            )
            .await;
        match added {
            Ok(()) => {
                let external = match gateway.get_external_ip().await {
                    Ok(ip) => SocketAddr::new(ip, port),
                    Err(_) => SocketAddr::new(gateway.addr.ip(), port),
                };
                if !mapped {
                    tracing::info!(%external, gateway = %gateway.addr, "UPnP port mapping added");
                    let _ = events
                        .send(UpnpEvent::Mapped {
                            external,
                            via: "UPnP",
                        })
                        .await;
                    mapped = true;
                }
            }
            Err(e) => {
                tracing::info!(error = %e, gateway = %gateway.addr, "the UPnP gateway refused the port mapping");
                if mapped {
                    let _ = events.send(UpnpEvent::Lost).await;
                }
                mapped = false;
            }
        }
        let wait = if mapped {
            renew_every()
        } else {
            RETRY.min(renew_every())
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                if keeps(stop) {
                    return;
                }
                // Also when the last request failed: a gateway that did
                // not answer in time may still have made the mapping.
                let removed = gateway.remove_port(PortMappingProtocol::UDP, port);
                match tokio::time::timeout(UNMAP_TIMEOUT, removed).await {
                    Ok(Ok(())) => tracing::info!("UPnP port mapping removed"),
                    Ok(Err(e)) if mapped => tracing::warn!(error = %e, "cannot remove the UPnP port mapping"),
                    Ok(Err(e)) => tracing::debug!(error = %e, "no UPnP port mapping to remove"),
                    Err(_) => tracing::warn!(timeout_ms = UNMAP_TIMEOUT.as_millis() as u64, "the UPnP gateway did not remove the port mapping in time; its lease ends it"),
                }
                return;
            }
        }
    }
}
