//! Netlink through rtnetlink, and network namespaces through setns(2).
//!
//! A netlink socket belongs to the namespace of the thread that opened it,
//! so a handle for the pod is made by entering the pod's namespace, opening
//! the socket, and coming back (the guard restores the original namespace
//! even on error). Everything runs on one thread (tokio current-thread).

use crate::error::{CniError, CniResult, NETNS};
use crate::net::IpNet;
use futures_util::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteVia,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// An open network namespace (`CNI_NETNS`).
pub struct Netns {
    pub file: File,
    pub path: String,
}

impl Netns {
    pub fn open(path: &str) -> std::io::Result<Netns> {
        Ok(Netns {
            file: File::open(path)?,
            path: path.to_string(),
        })
    }
}

/// Restores the thread's original network namespace when dropped.
struct NsGuard {
    orig: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.orig, CloneFlags::CLONE_NEWNET) {
            // Cannot happen with a valid fd; say so loudly if it does.
            crate::error!("cannot return to the original network namespace: {e}");
        }
    }
}

fn enter(ns: &Netns) -> CniResult<NsGuard> {
    let orig = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::new(NETNS, format!("open own network namespace: {e}")))?;
    setns(&ns.file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::new(NETNS, format!("enter network namespace {}: {e}", ns.path)))?;
    Ok(NsGuard { orig })
}

/// A netlink handle in `ns` (or in the current namespace). Must be called
/// inside the tokio runtime.
pub fn connect(ns: Option<&Netns>) -> CniResult<Handle> {
    let _guard = match ns {
        Some(ns) => Some(enter(ns)?),
        None => None,
    };
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| CniError::netlink("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn is_errno(e: &rtnetlink::Error, n: nix::errno::Errno) -> bool {
    errno(e) == Some(n as i32)
}

pub async fn link_by_name(h: &Handle, name: &str) -> CniResult<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_errno(&e, nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(CniError::netlink(format!("look up link {name}"), e)),
    }
}

/// Delete a link; a link that is already gone is fine.
pub async fn del_link(h: &Handle, index: u32) -> CniResult<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, nix::errno::Errno::ENODEV) => Ok(()),
        Err(e) => Err(CniError::netlink(format!("delete link {index}"), e)),
    }
}

pub async fn del_link_by_name(h: &Handle, name: &str) -> CniResult<bool> {
    match link_by_name(h, name).await? {
        Some(l) => {
            del_link(h, l.header.index).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Create the veth pair: `host` here, `peer` created directly inside
/// `peer_ns` under its final name, both with `mtu`.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    peer_ns: &Netns,
    mtu: u32,
) -> Result<(), rtnetlink::Error> {
    let peer_msg = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .setns_by_fd(peer_ns.file.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, peer)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link().add(msg).execute().await
}

pub async fn set_up(h: &Handle, index: u32) -> CniResult<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| CniError::netlink(format!("set link {index} up"), e))
}

pub fn mac(l: &LinkMessage) -> Vec<u8> {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

/// Add `addr/prefix`; IPv6 addresses skip duplicate address detection so
/// they are usable at once.
pub async fn add_addr(h: &Handle, index: u32, net: IpNet) -> CniResult<()> {
    let mut req = h.address().add(index, net.addr, net.prefix);
    if net.addr.is_ipv6() {
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(|e| CniError::netlink(format!("add address {net} to link {index}"), e))
}

/// Addresses of a link.
pub async fn addrs(h: &Handle, index: u32) -> CniResult<Vec<IpNet>> {
    let mut s = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| CniError::netlink("list addresses", e))?
    {
        if m.header.index != index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a
                && let Some(n) = IpNet::new(*ip, m.header.prefix_len)
            {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// A route `dst` out of `oif`, via `gw` if given, else scope link.
pub async fn add_route(h: &Handle, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> CniResult<()> {
    let msg = route_msg(dst, gw, oif);
    h.route().add(msg).execute().await.map_err(|e| {
        let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
        CniError::netlink(format!("add route {dst}{via} dev {oif}"), e)
    })
}

fn route_msg(dst: IpNet, gw: Option<IpAddr>, oif: u32) -> RouteMessage {
    match dst.addr {
        IpAddr::V4(d) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, dst.prefix)
                .output_interface(oif);
            match gw {
                Some(IpAddr::V4(g)) => b = b.gateway(g),
                Some(IpAddr::V6(g)) => b = b.via(g),
                None => b = b.scope(RouteScope::Link),
            }
            b.build()
        }
        IpAddr::V6(d) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, dst.prefix)
                .output_interface(oif);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            b.build()
        }
    }
}

/// A route as read back: destination, gateway, output interface.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// Routes of the main table of one family.
pub async fn routes(h: &Handle, v6: bool) -> CniResult<Vec<RouteInfo>> {
    let q = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut s = h.route().get(q).execute();
    let mut out = Vec::new();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| CniError::netlink("list routes", e))?
    {
        if m.header.table != 254 {
            // Main table only (the dump of table 255 "local" is noise here);
            // tables above 255 carry RouteAttribute::Table, also not ours.
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gw = Some(IpAddr::V6(*a)),
                RouteAttribute::Via(RouteVia::Inet6(a)) => gw = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let unspecified = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        if let Some(dst) = IpNet::new(
            dst.unwrap_or(unspecified),
            m.header.destination_prefix_length,
        ) {
            out.push(RouteInfo { dst, gw, oif });
        }
    }
    Ok(out)
}

/// A permanent neighbour entry `ip -> mac` on `index`.
pub async fn add_neigh(h: &Handle, index: u32, ip: IpAddr, mac: &[u8]) -> CniResult<()> {
    h.neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .flags(NeighbourFlags::empty())
        .replace()
        .execute()
        .await
        .map_err(|e| CniError::netlink(format!("add neighbour {ip} on link {index}"), e))
}

/// Write a sysctl under /proc/sys (of the current network namespace) unless
/// it already has the value.
pub fn ensure_sysctl(path: &str, value: &str) -> CniResult<()> {
    let p = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&p, value)
        .map_err(|e| CniError::new(crate::error::NETLINK, format!("set {p} = {value}: {e}")))
}
