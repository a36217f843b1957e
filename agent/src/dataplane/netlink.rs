//! Interface plumbing over rtnetlink: link up, MTU, addresses, routes,
//! deletion, and the probe that tells whether the kernel has WireGuard.
//!
//! A netlink socket lives in the network namespace of the thread that opened
//! it, so a [`Netlink`] must be created on a thread inside the namespace the
//! interface belongs to. No `ip` command is ever spawned.

use futures::TryStreamExt;
use ipnet::IpNet;
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

    fn route_message(
        index: u32,
        net: IpNet,
    ) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
        let net = net.trunc();
        let addr: IpAddr = net.network();
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, net.prefix_len())
            .map_err(|_| NetlinkError::InvalidRoute(net))?
            .output_interface(index)
            .build())
    }

    /// Routes `net` into the link (replacing an existing route to `net`).
    pub async fn add_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = Self::route_message(index, net)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add route {net}")))
    }

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
