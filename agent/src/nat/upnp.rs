//! UPnP IGD: maps the node's UDP port on the home router when one answers,
//! renews the lease before it expires, and removes the mapping on shutdown.
//! No gateway, or a refusal, is logged once and costs nothing else.

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

/// What the mapping task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpnpEvent {
    /// The router forwards `external` (its address, our port) to us.
    Mapped { external: SocketAddr },
    /// The mapping is gone (router restarted, refused renewal).
    Lost,
}

/// The local address used to reach `gateway`.
fn local_ip_towards(gateway: SocketAddr) -> Option<IpAddr> {
    let s = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect(gateway).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Runs until `stop` turns true: searches a gateway, maps `port`, renews,
/// and removes the mapping when stopping.
pub async fn run(port: u16, events: mpsc::Sender<UpnpEvent>, mut stop: watch::Receiver<bool>) {
    let mut logged_absent = false;
    loop {
        let mut options = SearchOptions::default();
        options.timeout = Some(SEARCH_TIMEOUT);
        options.single_search_timeout = Some(SEARCH_TIMEOUT);
        let gateway = tokio::select! {
            g = search_gateway(options) => g,
            _ = stop.changed() => return,
        };
        let gateway = match gateway {
            Ok(g) => g,
            Err(e) => {
                if !logged_absent {
                    tracing::info!(error = %e, "no UPnP gateway answered; the node will rely on hole punching and relays");
                    logged_absent = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
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
                        let _ = events.send(UpnpEvent::Mapped { external }).await;
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
                    if mapped {
                        match gateway.remove_port(PortMappingProtocol::UDP, port).await {
                            Ok(()) => tracing::info!("UPnP port mapping removed"),
                            Err(e) => tracing::warn!(error = %e, "cannot remove the UPnP port mapping"),
                        }
                    }
                    return;
                }
            }
        }
    }
}
