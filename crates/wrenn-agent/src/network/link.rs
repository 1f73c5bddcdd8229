//! rtnetlink operations on the calling thread's network namespace: links, addresses, routes.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetError;

/// A netlink connection bound to the namespace of the thread that opens it.
pub(crate) fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Io {
        context: "open netlink socket".into(),
        source: e,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| {
        if errno(&source) == Some(libc::EEXIST) {
            NetError::AlreadyExists { what: op }
        } else {
            NetError::Netlink { op, source }
        }
    }
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Index of the link called `name`, or `None` if there is none.
pub(crate) async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

async fn require_index(h: &Handle, name: &str) -> Result<u32, NetError> {
    index(h, name).await?.ok_or_else(|| NetError::Netlink {
        op: format!("link {name} vanished"),
        source: rtnetlink::Error::RequestFailed,
    })
}

/// Names of all links.
pub(crate) async fn names(h: &Handle) -> Result<Vec<String>, NetError> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect())
}

/// Deletes the link called `name`; `Ok(false)` if there was none. Deleting one end of a veth
/// pair deletes both, and the routes through it.
pub(crate) async fn delete(h: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(idx) = index(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(idx).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(format!("delete link {name}"))(e)),
    }
}

/// Creates a veth pair `name` <-> `peer` in this namespace.
pub(crate) async fn add_veth(h: &Handle, name: &str, peer: &str) -> Result<(), NetError> {
    h.link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .map_err(nl(format!("veth pair {name}/{peer}")))
}

/// Moves link `name` into the namespace open at `ns_fd`.
pub(crate) async fn move_to_netns(h: &Handle, name: &str, ns_fd: RawFd) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_name(name).setns_by_fd(ns_fd).build())
        .execute()
        .await
        .map_err(nl(format!("move {name} to its namespace")))
}

/// Sets link `name` up and returns its index.
pub(crate) async fn up(h: &Handle, name: &str) -> Result<u32, NetError> {
    let idx = require_index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {name} up")))?;
    Ok(idx)
}

/// Adds `addr/prefix` to link `name`.
pub(crate) async fn add_addr(
    h: &Handle,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    let idx = require_index(h, name).await?;
    h.address()
        .add(idx, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .map_err(nl(format!("address {addr}/{prefix} on {name}")))
}

/// Adds the route `dst/prefix via gw` (a default route when `prefix` is 0).
pub(crate) async fn add_route(
    h: &Handle,
    dst: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
) -> Result<(), NetError> {
    let mut route = RouteMessageBuilder::<Ipv4Addr>::new();
    if prefix > 0 {
        route = route.destination_prefix(dst, prefix);
    }
    h.route()
        .add(route.gateway(gw).build())
        .execute()
        .await
        .map_err(nl(format!("route {dst}/{prefix} via {gw}")))
}
