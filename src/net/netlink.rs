//! Address and link management through rtnetlink.
//!
//! Each call opens its own short-lived rtnetlink socket (in the network
//! namespace of the calling thread), drives it on the current tokio runtime
//! and closes it when done. Nothing here shells out to `ip`.
//!
//! Idempotence: [`add_address`] treats `EEXIST` as success and
//! [`del_address`] treats `EADDRNOTAVAIL` / a missing interface as success,
//! so a reconciliation loop can call them blindly.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlag, AddressHeaderFlag, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkLayerType, LinkMessage};
use netlink_packet_route::AddressFamily;

use super::{valid_ifname, NetError};

/// Snapshot of one interface as seen by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// False when no interface of that name exists (all other fields are
    /// then zero/false/None).
    pub exists: bool,
    /// `IFF_UP`: administratively up (`ip link set X up`).
    pub admin_up: bool,
    /// `IFF_LOWER_UP`: the driver reports carrier (RFC 2863 "lower layer
    /// up"). Always false while the link is administratively down.
    pub carrier: bool,
    /// Kernel interface index (0 when absent).
    pub index: u32,
    /// Ethernet hardware address (ARPHRD_ETHER links with a non-zero
    /// 6-byte address only; `None` for `lo`, tun, ...).
    pub mac: Option<[u8; 6]>,
}

impl LinkState {
    /// Admin up and carrier present: the link can carry a VIP.
    pub fn usable(&self) -> bool {
        self.exists && self.admin_up && self.carrier
    }
}

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// An rtnetlink handle whose background connection task is aborted on drop.
struct Conn {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn connect(op: &'static str) -> Result<Conn, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetError::NetlinkConnect { op, source })?;
    let task = tokio::spawn(conn);
    Ok(Conn { handle, task })
}

/// The positive errno carried by a netlink NACK, if any.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().saturating_abs()),
        _ => None,
    }
}

fn nl_err(op: &'static str, context: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        context,
        source: Box::new(source),
    }
}

fn check_prefix(op: &'static str, addr: IpAddr, prefix: u8) -> Result<(), NetError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(NetError::InvalidPrefix { op, addr, prefix });
    }
    Ok(())
}

fn check_ifname(op: &'static str, ifname: &str) -> Result<(), NetError> {
    if valid_ifname(ifname) {
        Ok(())
    } else {
        Err(NetError::InvalidInterfaceName {
            op,
            ifname: ifname.to_owned(),
        })
    }
}

/// Look a link up by name; `Ok(None)` when it does not exist.
async fn get_link(
    conn: &Conn,
    op: &'static str,
    ifname: &str,
) -> Result<Option<LinkMessage>, NetError> {
    let mut stream = conn
        .handle
        .link()
        .get()
        .match_name(ifname.to_owned())
        .execute();
    match stream.try_next().await {
        Ok(msg) => Ok(msg),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(op, format!("get link {ifname}"))(e)),
    }
}

async fn ifindex(conn: &Conn, op: &'static str, ifname: &str) -> Result<Option<u32>, NetError> {
    Ok(get_link(conn, op, ifname).await?.map(|m| m.header.index))
}

fn link_state_of(msg: &LinkMessage) -> LinkState {
    // Only real Ethernet-style addresses: `lo` reports 00:00:00:00:00:00.
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .filter(|m| msg.header.link_layer_type == LinkLayerType::Ether && *m != [0; 6]);
    LinkState {
        exists: true,
        admin_up: msg.header.flags.contains(&LinkFlag::Up),
        carrier: msg.header.flags.contains(&LinkFlag::LowerUp),
        index: msg.header.index,
        mac,
    }
}

/// The interface address of an `RTM_NEWADDR` message: `IFA_LOCAL` for IPv4
/// (IFA_ADDRESS is the peer on point-to-point links), else `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Current state of `ifname`. A missing (or impossible) interface name is
/// reported as `exists: false`, not as an error.
pub async fn link_state(ifname: &str) -> Result<LinkState, NetError> {
    const OP: &str = "link_state";
    if !valid_ifname(ifname) {
        return Ok(LinkState::default());
    }
    let conn = connect(OP)?;
    Ok(get_link(&conn, OP, ifname)
        .await?
        .map(|m| link_state_of(&m))
        .unwrap_or_default())
}

/// Add `addr/prefix` to `ifname`. Already present is success.
///
/// IPv6 addresses are added with `IFA_F_NODAD` so they are usable at once:
/// the caller is expected to have probed with
/// the probe module's `address_in_use` first (RFC 4862 s5.4
/// DAD would otherwise keep the address tentative for ~1 s).
pub async fn add_address(ifname: &str, addr: IpAddr, prefix: u8) -> Result<(), NetError> {
    const OP: &str = "add_address";
    check_ifname(OP, ifname)?;
    check_prefix(OP, addr, prefix)?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(NetError::UnsupportedAddress {
            op: OP,
            addr,
            reason: "unspecified or multicast address",
        });
    }
    let conn = connect(OP)?;
    let index = ifindex(&conn, OP, ifname)
        .await?
        .ok_or_else(|| NetError::NoSuchInterface {
            op: OP,
            ifname: ifname.to_owned(),
        })?;
    let mut req = conn.handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags.push(AddressHeaderFlag::Nodad);
        msg.attributes
            .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl_err(OP, format!("{addr}/{prefix} on {ifname}"))(e)),
    }
}

/// Remove `addr/prefix` from `ifname`. Absent (including a missing
/// interface) is success. The kernel matches IPv4 addresses on address
/// *and* prefix length, so a different prefix is left alone.
pub async fn del_address(ifname: &str, addr: IpAddr, prefix: u8) -> Result<(), NetError> {
    const OP: &str = "del_address";
    check_ifname(OP, ifname)?;
    check_prefix(OP, addr, prefix)?;
    let conn = connect(OP)?;
    let Some(index) = ifindex(&conn, OP, ifname).await? else {
        return Ok(());
    };
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    match conn.handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL) | Some(ENODEV)) => Ok(()),
        Err(e) => Err(nl_err(OP, format!("{addr}/{prefix} on {ifname}"))(e)),
    }
}

/// All addresses (IPv4 and IPv6, including link-local) on `ifname`.
pub async fn addresses(ifname: &str) -> Result<Vec<(IpAddr, u8)>, NetError> {
    const OP: &str = "addresses";
    check_ifname(OP, ifname)?;
    let conn = connect(OP)?;
    let index = ifindex(&conn, OP, ifname)
        .await?
        .ok_or_else(|| NetError::NoSuchInterface {
            op: OP,
            ifname: ifname.to_owned(),
        })?;
    let msgs: Vec<AddressMessage> = conn
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(OP, format!("dump addresses of {ifname}")))?;
    Ok(msgs
        .iter()
        .filter_map(|m| address_of(m).map(|a| (a, m.header.prefix_len)))
        .collect())
}

/// Names of the interfaces that currently hold `addr` (any prefix).
pub async fn find_address(addr: IpAddr) -> Result<Vec<String>, NetError> {
    const OP: &str = "find_address";
    let conn = connect(OP)?;
    let msgs: Vec<AddressMessage> = conn
        .handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(OP, format!("dump addresses looking for {addr}")))?;
    let mut indexes: Vec<u32> = msgs
        .iter()
        .filter(|m| address_of(m) == Some(addr))
        .map(|m| m.header.index)
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<LinkMessage> = conn
        .handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(OP, "dump links".to_owned()))?;
    let mut names = Vec::new();
    for idx in indexes {
        let name = links
            .iter()
            .filter(|l| l.header.index == idx)
            .find_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            });
        // An interface that vanished between the two dumps no longer
        // holds the address; skip it.
        if let Some(n) = name {
            names.push(n);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{root_or_skip, run_in, NetnsPair, IF_A, IF_B};
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn add_del_list_v4_v6() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        run_in(&ns.a, move || async move {
            add_address(IF_A, v4, 24).await.unwrap();
            add_address(IF_A, v4, 24).await.unwrap(); // idempotent
            add_address(IF_A, v6, 64).await.unwrap();
            add_address(IF_A, v6, 64).await.unwrap();
            let addrs = addresses(IF_A).await.unwrap();
            assert!(addrs.contains(&(v4, 24)), "{addrs:?}");
            assert!(addrs.contains(&(v6, 64)), "{addrs:?}");
            assert_eq!(find_address(v4).await.unwrap(), vec![IF_A.to_owned()]);
            assert_eq!(find_address(v6).await.unwrap(), vec![IF_A.to_owned()]);
        });
        // Verify with iproute2: present, and the v6 one is not tentative.
        let out = ns.ip(&ns.a, &["addr", "show", "dev", IF_A]);
        assert!(out.contains("192.0.2.10/24"), "{out}");
        let v6line = out
            .lines()
            .find(|l| l.contains("2001:db8::10/64"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(!v6line.contains("tentative"), "{v6line}");
        assert!(v6line.contains("nodad"), "{v6line}");

        run_in(&ns.a, move || async move {
            del_address(IF_A, v4, 24).await.unwrap();
            del_address(IF_A, v4, 24).await.unwrap(); // idempotent
            del_address(IF_A, v6, 64).await.unwrap();
            del_address(IF_A, v6, 64).await.unwrap();
            del_address("nosuchif0", v4, 24).await.unwrap();
            let addrs = addresses(IF_A).await.unwrap();
            assert!(
                !addrs.iter().any(|(a, _)| *a == v4 || *a == v6),
                "{addrs:?}"
            );
            assert!(find_address(v4).await.unwrap().is_empty());
        });
        let out = ns.ip(&ns.a, &["addr", "show", "dev", IF_A]);
        assert!(!out.contains("192.0.2.10"), "{out}");
        assert!(!out.contains("2001:db8::10"), "{out}");
    }

    #[test]
    fn errors_have_context() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        run_in(&ns.a, || async {
            let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
            let e = add_address("nosuchif0", v4, 24).await.unwrap_err();
            assert!(matches!(e, NetError::NoSuchInterface { .. }), "{e}");
            assert!(e.to_string().contains("nosuchif0"));
            let e = add_address(IF_A, v4, 33).await.unwrap_err();
            assert!(matches!(e, NetError::InvalidPrefix { .. }), "{e}");
            let e = add_address("bad/name", v4, 24).await.unwrap_err();
            assert!(matches!(e, NetError::InvalidInterfaceName { .. }), "{e}");
            let e = add_address(IF_A, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 64)
                .await
                .unwrap_err();
            assert!(matches!(e, NetError::UnsupportedAddress { .. }), "{e}");
            assert!(matches!(
                addresses("nosuchif0").await,
                Err(NetError::NoSuchInterface { .. })
            ));
        });
    }

    #[test]
    fn link_state_tracks_admin_and_carrier() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        let mac = ns.mac(&ns.a, IF_A);
        let st = run_in(&ns.a, || async { link_state(IF_A).await.unwrap() });
        assert!(
            st.exists && st.admin_up && st.carrier && st.index > 0,
            "{st:?}"
        );
        assert_eq!(st.mac, Some(mac));
        assert!(st.usable());

        // Peer down: we stay admin up but lose carrier.
        ns.ip(&ns.b, &["link", "set", IF_B, "down"]);
        let st = run_in(&ns.a, || async { link_state(IF_A).await.unwrap() });
        assert!(st.exists && st.admin_up && !st.carrier, "{st:?}");

        // Peer back up, ourselves down: admin down.
        ns.ip(&ns.b, &["link", "set", IF_B, "up"]);
        ns.ip(&ns.a, &["link", "set", IF_A, "down"]);
        let st = run_in(&ns.a, || async { link_state(IF_A).await.unwrap() });
        assert!(st.exists && !st.admin_up && !st.carrier, "{st:?}");

        ns.ip(&ns.a, &["link", "set", IF_A, "up"]);
        let st = run_in(&ns.a, || async { link_state(IF_A).await.unwrap() });
        assert!(st.usable(), "{st:?}");

        let missing = run_in(&ns.a, || async {
            (
                link_state("nosuchif0").await.unwrap(),
                link_state("").await.unwrap(),
                link_state("waytoolonginterfacename").await.unwrap(),
            )
        });
        assert_eq!(missing.0, LinkState::default());
        assert!(!missing.1.exists && !missing.2.exists);
    }
}
