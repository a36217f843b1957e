//! Interface plumbing over rtnetlink: link up, MTU, addresses, routes,
//! deletion, and the probe that tells whether the kernel has WireGuard.
//!
//! A netlink socket lives in the network namespace of the thread that opened
//! it, so a [`Netlink`] must be created on a thread inside the namespace the
//! interface belongs to. No `ip` command is ever spawned.
//!
//! Routes into the overlay are WireHub's own: main table, metric
//! [`ROUTE_METRIC`], created exclusively. They never replace a route of the
//! host (one to the same prefix keeps its place and, with its lower metric,
//! keeps carrying the traffic), a default route (`/0`) is refused, and a
//! removal deletes only the route with our metric on our interface.

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteHeader, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use std::ffi::CString;
use std::net::IpAddr;
use tokio::task::JoinHandle;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("no interface named {0}")]
    NoSuchLink(String),
    #[error("netlink {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("invalid route {0}")]
    InvalidRoute(IpNet),
    #[error("refusing to route {0} into the overlay: it is a default route (/0)")]
    DefaultRoute(IpNet),
    #[error(
        "cannot route {net} into interface {index}: a route to {net} with metric {metric} already exists and it is not ours"
    )]
    RouteTaken { net: IpNet, index: u32, metric: u32 },
}

/// The metric of every route WireHub adds: higher than any a distribution,
/// DHCP client or network manager gives (kernel 0/256/1024, dhcpcd 200+,
/// NetworkManager 100-20600, systemd-networkd 1024), so a host route to the
/// same prefix always wins, and ours is told apart from it on removal.
/// Its high bytes spell "WH".
pub const ROUTE_METRIC: u32 = 0x5748_0000;

/// Whether `msg` is the route `route_message(index, net)` describes: same
/// destination prefix, main table, our metric, our interface.
fn is_route(msg: &RouteMessage, index: u32, net: IpNet) -> bool {
    use rtnetlink::packet_route::route::RouteAttribute;
    let has = |want: &RouteAttribute| msg.attributes.iter().any(|a| a == want);
    routes_prefix(msg, net)
        && has(&RouteAttribute::Priority(ROUTE_METRIC))
        && has(&RouteAttribute::Oif(index))
}

/// Whether `msg` routes exactly `net` in the main table.
fn routes_prefix(msg: &RouteMessage, net: IpNet) -> bool {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let net = net.trunc();
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    msg.header.destination_prefix_length == net.prefix_len()
        && dst.unwrap_or(match net {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }) == net.network()
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// A netlink connection whose background task lives as long as the value.
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// The index of an interface in the current thread's network namespace.
pub fn link_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace. Must be
    /// called from inside a tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    pub fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        link_index(name).ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// Sets the MTU and brings the link up.
    pub async fn set_up(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {index} mtu {mtu} up")))
    }

    /// Brings a link up without touching its MTU (used for `lo`).
    pub async fn up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {index} up")))
    }

    /// Adds an address (with its prefix route) to a link; an address that is
    /// already there is replaced, so this is idempotent.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {net}")))
    }

    /// The route of `net` into link `index` with our metric; `/0` is refused.
    fn route_message(index: u32, net: IpNet) -> Result<RouteMessage, NetlinkError> {
        let net = net.trunc();
        if net.prefix_len() == 0 {
            return Err(NetlinkError::DefaultRoute(net));
        }
        let addr: IpAddr = net.network();
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, net.prefix_len())
            .map_err(|_| NetlinkError::InvalidRoute(net))?
            .output_interface(index)
            .priority(ROUTE_METRIC)
            .build())
    }

    /// Routes `net` into the link with our metric, beside (never instead of)
    /// any route of the host to `net`. A route of ours already there (left by
    /// a daemon whose interface this one adopted) is taken over; the same
    /// prefix with our metric into another interface is an error.
    pub async fn add_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = Self::route_message(index, net)?;
        let added = self.handle.route().add(msg).execute().await;
        match added {
            Ok(()) => {
                if self.host_routes(index, net).await.unwrap_or(false) {
                    tracing::warn!(
                        %net,
                        "the host already routes {net} (a route of lower metric than WireHub's): \
                         traffic to it keeps going there, not through the overlay; \
                         remove that route to reach the overlay"
                    );
                }
                Ok(())
            }
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                if self.has_route(index, net).await? {
                    return Ok(());
                }
                Err(NetlinkError::RouteTaken {
                    net: net.trunc(),
                    index,
                    metric: ROUTE_METRIC,
                })
            }
            Err(source) => Err(NetlinkError::Request {
                what: format!("add route {net}"),
                source,
            }),
        }
    }

    /// Whether our route of `net` into link `index` is in the main table.
    pub async fn has_route(&self, index: u32, net: IpNet) -> Result<bool, NetlinkError> {
        self.any_route(net, |msg| is_route(msg, index, net)).await
    }

    /// Whether the main table has a route to exactly `net` into another link
    /// than `index` (a host route, which keeps carrying its traffic).
    pub async fn host_routes(&self, index: u32, net: IpNet) -> Result<bool, NetlinkError> {
        use rtnetlink::packet_route::route::RouteAttribute;
        self.any_route(net, |msg| {
            routes_prefix(msg, net) && !msg.attributes.contains(&RouteAttribute::Oif(index))
        })
        .await
    }

    /// Whether any route of `net`'s family satisfies `wanted`.
    async fn any_route(
        &self,
        net: IpNet,
        wanted: impl Fn(&RouteMessage) -> bool,
    ) -> Result<bool, NetlinkError> {
        let query = match net {
            IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut routes = self.handle.route().get(query).execute();
        let mut found = false;
        while let Some(msg) = routes.try_next().await.map_err(req("list routes"))? {
            found |= wanted(&msg);
        }
        Ok(found)
    }

    /// Deletes our route of `net` into link `index` (our metric, our
    /// interface): a host route to the same prefix is never touched.
    pub async fn remove_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = Self::route_message(index, net)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!("delete route {net}")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(req(format!("delete link {index}")))
    }

    /// The index of the link named `name` in this connection's namespace
    /// (by a netlink dump, whatever thread calls).
    pub async fn find_link(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut found = None;
        while let Some(msg) = links.try_next().await.map_err(req("list links"))? {
            for attr in &msg.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = attr
                    && n == name
                {
                    found = Some(msg.header.index);
                }
            }
        }
        Ok(found)
    }

    /// Creates a kernel WireGuard link named `name`.
    pub async fn add_wireguard(&self, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(req(format!("add wireguard link {name}")))
    }

    /// Whether the kernel can create WireGuard links: creates a throwaway one
    /// and deletes it again.
    pub async fn kernel_wireguard_available(&self) -> bool {
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        let name = format!("whprobe{}{n}", std::process::id() % 100_000);
        match self.add_wireguard(&name).await {
            Ok(()) => {
                if let Some(index) = link_index(&name)
                    && let Err(e) = self.delete_link(index).await
                {
                    tracing::warn!("cannot delete probe link {name}: {e}");
                }
                true
            }
            Err(e) => {
                tracing::debug!("kernel WireGuard not available: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteAttribute;

    #[test]
    fn a_default_route_is_refused_on_ipv4_and_ipv6() {
        for net in ["0.0.0.0/0", "::/0", "10.1.2.3/0"] {
            let net: IpNet = net.parse().expect("net");
            let err = Netlink::route_message(3, net).expect_err("a /0 is refused");
            assert!(matches!(err, NetlinkError::DefaultRoute(_)), "{err}");
            assert!(err.to_string().contains("default route"), "{err}");
        }
    }

    #[test]
    fn a_peer_route_carries_our_metric_and_interface() {
        let net: IpNet = "10.244.1.9/24".parse().expect("net");
        let msg = Netlink::route_message(7, net).expect("route");
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Priority(ROUTE_METRIC))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(is_route(&msg, 7, net));
        assert!(
            !is_route(&msg, 8, net),
            "another interface's route is not ours"
        );
        let other: IpNet = "10.244.2.0/24".parse().expect("net");
        assert!(!is_route(&msg, 7, other));
    }

    #[test]
    fn a_host_route_to_the_same_prefix_is_not_ours() {
        let net: IpNet = "2001:db8:5::/64".parse().expect("net");
        let mut msg = Netlink::route_message(7, net).expect("route");
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Priority(_)));
        msg.attributes.push(RouteAttribute::Priority(1024));
        assert!(!is_route(&msg, 7, net));
    }
}
