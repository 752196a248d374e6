//! Announcing a (newly acquired) address to the LAN.
//!
//! * IPv4: gratuitous ARP in the "ARP announcement" form of RFC 5227 s3: an
//!   ARP *request* with sender IP = target IP = the address, broadcast.
//! * IPv6: unsolicited neighbour advertisement (RFC 4861 s7.2.6) to the
//!   all-nodes group with the Override flag and a target link-layer address
//!   option, so neighbours replace any cached MAC.
//!
//! Frames are built by pure functions (full Ethernet frames, checksums
//! included) and sent through an `AF_PACKET` raw socket bound to the
//! interface. This module also hosts the packet-socket and checksum helpers
//! shared with [`probe`](super::probe).

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::netlink::link_state;
use super::NetError;

pub(super) const ETH_P_ARP: u16 = 0x0806;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
pub(super) const ETH_HLEN: usize = 14;
pub(super) const IPV6_HLEN: usize = 40;
pub(super) const IPPROTO_ICMPV6: u8 = 58;
pub(super) const ICMPV6_NS: u8 = 135;
pub(super) const ICMPV6_NA: u8 = 136;
pub(super) const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Length of an Ethernet + IPv6 + NA(with TLLA option) frame.
#[cfg(test)]
pub(super) const NA_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + 32;

/// Build a 42-byte Ethernet/ARP frame (RFC 826 layout).
pub(super) fn arp_frame(
    op: u16,
    eth_dst: [u8; 6],
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// Gratuitous ARP announcement for `ip` owned by `mac`.
///
/// RFC 5227 s3: an ARP Request, broadcast, with sender and target protocol
/// address both set to the announced address and the target hardware
/// address zeroed ("ignored and SHOULD be set to all zeroes").
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    arp_frame(1, BROADCAST_MAC, mac, ip, [0; 6], ip)
}

/// Ethernet multicast MAC for an IPv6 multicast group (RFC 2464 s7).
pub(super) fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Solicited-node multicast address ff02::1:ffXX:XXXX (RFC 4291 s2.7.1).
pub(super) fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// ICMPv6 checksum over the IPv6 pseudo-header and `msg` (RFC 4443 s2.3,
/// RFC 8200 s8.1). `msg` must have its checksum field zeroed.
pub(super) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let hi = u64::from(chunk[0]) << 8;
            let lo = chunk.get(1).map_or(0, |b| u64::from(*b));
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer packet length (32 bits) then 3 zero bytes + next header.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Truncation is exact: the loop above folded `sum` into 16 bits.
    !(sum as u16)
}

/// Build Ethernet + IPv6 header + ICMPv6 `msg` (hop limit 255, as required
/// for all ND messages by RFC 4861 s7.1.1/s7.1.2), filling in the checksum
/// at bytes 2..4 of `msg`.
pub(super) fn icmpv6_frame(
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut msg: Vec<u8>,
) -> Vec<u8> {
    if msg.len() >= 4 {
        msg[2] = 0;
        msg[3] = 0;
        let c = icmpv6_checksum(src, dst, &msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let payload_len = u16::try_from(msg.len()).unwrap_or(u16::MAX);
    let mut f = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + msg.len());
    f.extend_from_slice(&ipv6_multicast_mac(dst));
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, tclass 0, flow 0
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.push(IPPROTO_ICMPV6);
    f.push(255); // hop limit
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// Unsolicited neighbour advertisement for `ip` owned by `mac`, as a full
/// 86-byte Ethernet frame with the ICMPv6 checksum filled in.
///
/// RFC 4861 s7.2.6: sent to the all-nodes multicast address, Solicited flag
/// clear, Override flag set, with a Target Link-Layer Address option. The
/// IPv6 source is the announced address itself (it is assigned to the
/// interface, which satisfies s7.2.4's "an address assigned to the
/// interface").
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&[ICMPV6_NA, 0, 0, 0]); // type, code, checksum
    msg.extend_from_slice(&[0x20, 0, 0, 0]); // R=0 S=0 O=1, reserved
    msg.extend_from_slice(&ip.octets()); // target address
    msg.extend_from_slice(&[2, 1]); // option: Target Link-Layer Address, 8 bytes
    msg.extend_from_slice(&mac);
    icmpv6_frame(mac, ip, all_nodes, msg)
}

/// A non-blocking `AF_PACKET`/`SOCK_RAW` socket bound to one interface and
/// one ethertype, driven by tokio.
pub(super) struct PacketSocket {
    fd: AsyncFd<Socket>,
    ifname: String,
}

impl PacketSocket {
    /// Open and bind. Frames sent must include the Ethernet header.
    pub(super) fn open(ifname: &str, ifindex: u32, ethertype: u16) -> Result<Self, NetError> {
        let sock_err = |op: &'static str| {
            let ifname = ifname.to_owned();
            move |source: io::Error| NetError::Socket { op, ifname, source }
        };
        // Protocol 0 receives nothing until `bind` sets interface and
        // ethertype together, so no frame from another interface can slip
        // in between socket() and bind().
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .map_err(sock_err("open packet socket"))?;
        let ifindex = i32::try_from(ifindex).map_err(|_| {
            sock_err("bind packet socket")(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        let ll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as libc::sa_family_t,
            sll_protocol: ethertype.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `try_init` hands us a zeroed, properly aligned
        // `sockaddr_storage` (which is larger than `sockaddr_ll`) and its
        // length slot; we write a fully initialised `sockaddr_ll` into it and
        // set the length to exactly that struct's size.
        let ((), addr) = unsafe {
            SockAddr::try_init(|storage, len| {
                std::ptr::write(storage.cast::<libc::sockaddr_ll>(), ll);
                *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                Ok(())
            })
        }
        .map_err(sock_err("bind packet socket"))?;
        sock.bind(&addr).map_err(sock_err("bind packet socket"))?;
        sock.set_nonblocking(true)
            .map_err(sock_err("set packet socket non-blocking"))?;
        // SAFETY: `Socket` owns its descriptor: it stays open and
        // `as_raw_fd()` returns the same value until the `Socket` (moved into
        // and owned by the `AsyncFd`) is dropped together with it.
        let fd = unsafe { AsyncFd::register(sock) }
            .map_err(|e| sock_err("register packet socket")(io::Error::from(e)))?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_owned(),
        })
    }

    fn err(&self, op: &'static str, source: io::Error) -> NetError {
        NetError::Socket {
            op,
            ifname: self.ifname.clone(),
            source,
        }
    }

    /// Send one complete Ethernet frame out of the bound interface.
    pub(super) async fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| self.err("wait for packet socket", e))?;
            match guard.try_io(|s| s.get_ref().send(frame)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(self.err("send frame", e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receive one frame (including outgoing copies of our own frames).
    pub(super) async fn recv(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| self.err("wait for packet socket", e))?;
            match guard.try_io(|s| s.get_ref().read(buf)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(self.err("receive frame", e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Interface index and MAC for sending frames, with context on failure.
pub(super) async fn iface_for_frames(
    op: &'static str,
    ifname: &str,
) -> Result<(u32, [u8; 6]), NetError> {
    if !super::valid_ifname(ifname) {
        return Err(NetError::InvalidInterfaceName {
            op,
            ifname: ifname.to_owned(),
        });
    }
    let st = link_state(ifname).await?;
    if !st.exists {
        return Err(NetError::NoSuchInterface {
            op,
            ifname: ifname.to_owned(),
        });
    }
    let mac = st.mac.ok_or_else(|| NetError::NoHardwareAddress {
        op,
        ifname: ifname.to_owned(),
    })?;
    Ok((st.index, mac))
}

/// Reject addresses that can never be owned by a host.
pub(super) fn check_unicast(op: &'static str, addr: IpAddr) -> Result<(), NetError> {
    let reason = match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback address"),
        _ => None,
    };
    match reason {
        Some(reason) => Err(NetError::UnsupportedAddress { op, addr, reason }),
        None => Ok(()),
    }
}

/// Send `count` announcements for `addr` out of `ifname`, `spacing` apart
/// (no sleep after the last one). Returns the number of frames sent.
///
/// IPv4 uses [`garp_frame`] (RFC 5227 s3 suggests two announcements two
/// seconds apart); IPv6 uses [`unsolicited_na`] (RFC 4861 s7.2.6 allows up
/// to MAX_NEIGHBOR_ADVERTISEMENT = 3, at least RetransTimer = 1 s apart).
pub async fn announce(
    ifname: &str,
    addr: IpAddr,
    count: u32,
    spacing: Duration,
) -> Result<u32, NetError> {
    const OP: &str = "announce";
    check_unicast(OP, addr)?;
    let (index, mac) = iface_for_frames(OP, ifname).await?;
    let (ethertype, frame) = match addr {
        IpAddr::V4(a) => (ETH_P_ARP, garp_frame(mac, a).to_vec()),
        IpAddr::V6(a) => (ETH_P_IPV6, unsolicited_na(mac, a)),
    };
    let sock = PacketSocket::open(ifname, index, ethertype)?;
    let mut sent = 0;
    for i in 0..count {
        if i > 0 && !spacing.is_zero() {
            tokio::time::sleep(spacing).await;
        }
        sock.send(&frame).await?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{root_or_skip, run_in, spawn_in, NetnsPair, IF_A, IF_B};
    use std::sync::mpsc;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_bytes() {
        let f = garp_frame(MAC, Ipv4Addr::new(192, 0, 2, 10));
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst broadcast
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // eth src
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, // Ethernet/IPv4
            0x00, 0x01, // request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sha
            192, 0, 2, 10, // spa
            0, 0, 0, 0, 0, 0, // tha zero (RFC 5227 s3)
            192, 0, 2, 10, // tpa == spa
        ];
        assert_eq!(f, expected);
    }

    /// Verify an RFC 1071 checksum: summing the whole message including the
    /// checksum field must give 0xffff, i.e. our function returns 0.
    fn checksum_ok(frame: &[u8]) -> bool {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap());
        icmpv6_checksum(src, dst, &frame[54..]) == 0
    }

    #[test]
    fn na_bytes() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        assert_eq!(f.len(), NA_FRAME_LEN);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]); // all-nodes MAC
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32); // payload length
        assert_eq!(f[20], 58); // next header ICMPv6
        assert_eq!(f[21], 255); // hop limit (RFC 4861 s7.1.2)
        assert_eq!(&f[22..38], &ip.octets()); // source = the VIP
        assert_eq!(&f[38..54], &"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[1], 0);
        assert_eq!(icmp[4], 0x20, "only Override set");
        assert_eq!(&icmp[5..8], &[0, 0, 0]);
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
        assert!(checksum_ok(&f));
    }

    #[test]
    fn checksum_known_vector() {
        // Flip one bit and the checksum must no longer verify.
        let ip: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut f = unsolicited_na(MAC, ip);
        assert!(checksum_ok(&f));
        f[60] ^= 1;
        assert!(!checksum_ok(&f));
        // Odd-length input is padded with a zero byte (RFC 1071); only the
        // pseudo-header length differs (3 vs 4), shifting the sum by one.
        let a = Ipv6Addr::LOCALHOST;
        let c3 = icmpv6_checksum(a, a, &[1, 2, 3]);
        let c4 = icmpv6_checksum(a, a, &[1, 2, 3, 0]);
        assert_eq!(c3.wrapping_sub(c4), 1);
    }

    #[test]
    fn multicast_helpers() {
        let ip: Ipv6Addr = "2001:db8::1:2345:6789".parse().unwrap();
        let sn = solicited_node(ip);
        assert_eq!(sn, "ff02::1:ff45:6789".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ipv6_multicast_mac(sn), [0x33, 0x33, 0xff, 0x45, 0x67, 0x89]);
    }

    #[test]
    fn rejects_bad_addresses() {
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "::",
            "ff02::1",
            "::1",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert!(matches!(
                check_unicast("t", addr),
                Err(NetError::UnsupportedAddress { .. })
            ));
        }
        assert!(check_unicast("t", "192.0.2.1".parse().unwrap()).is_ok());
    }

    /// Capture frames of `ethertype` on IF_B in namespace `ns` for `dur`.
    /// `ready` is signalled once the socket is bound.
    fn capture(
        ns: &str,
        ethertype: u16,
        dur: Duration,
        ready: mpsc::Sender<()>,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        spawn_in(ns, move || async move {
            let st = link_state(IF_B).await.unwrap();
            let sock = PacketSocket::open(IF_B, st.index, ethertype).unwrap();
            ready.send(()).unwrap();
            let mut frames = Vec::new();
            let deadline = tokio::time::Instant::now() + dur;
            let mut buf = vec![0u8; 2048];
            while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                let n = r.unwrap();
                frames.push(buf[..n].to_vec());
            }
            frames
        })
    }

    fn neigh_mac(ns: &NetnsPair, ip: &str) -> String {
        ns.ip(&ns.b, &["neigh", "show", ip, "dev", IF_B])
    }

    #[test]
    fn announce_v4_reaches_peer() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        ns.ip(&ns.b, &["addr", "add", "192.0.2.2/24", "dev", IF_B]);
        // A stale entry with a wrong MAC: a GARP must override it.
        ns.ip(
            &ns.b,
            &[
                "neigh",
                "add",
                "192.0.2.10",
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                IF_B,
                "nud",
                "stale",
            ],
        );
        let mac = ns.mac(&ns.a, IF_A);
        let (tx, rx) = mpsc::channel();
        let cap = capture(&ns.b, ETH_P_ARP, Duration::from_millis(1500), tx);
        rx.recv().unwrap();
        let sent = run_in(&ns.a, || async {
            announce(
                IF_A,
                "192.0.2.10".parse().unwrap(),
                3,
                Duration::from_millis(50),
            )
            .await
            .unwrap()
        });
        assert_eq!(sent, 3);
        let frames = cap.join().unwrap();
        let want = garp_frame(mac, Ipv4Addr::new(192, 0, 2, 10));
        let seen = frames
            .iter()
            .filter(|f| f.get(..42) == Some(&want[..]))
            .count();
        assert_eq!(seen, 3, "captured {frames:?}");
        let n = neigh_mac(&ns, "192.0.2.10");
        let mac_s = mac.map(|b| format!("{b:02x}")).join(":");
        assert!(n.contains(&mac_s), "neighbour table: {n}");
    }

    #[test]
    fn announce_v6_reaches_peer() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        ns.ip(
            &ns.b,
            &["addr", "add", "2001:db8::2/64", "dev", IF_B, "nodad"],
        );
        ns.ip(
            &ns.b,
            &[
                "neigh",
                "add",
                "2001:db8::10",
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                IF_B,
                "nud",
                "stale",
            ],
        );
        let mac = ns.mac(&ns.a, IF_A);
        let (tx, rx) = mpsc::channel();
        let cap = capture(&ns.b, ETH_P_IPV6, Duration::from_millis(1500), tx);
        rx.recv().unwrap();
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let sent = run_in(&ns.a, move || async move {
            announce(IF_A, IpAddr::V6(ip), 2, Duration::from_millis(50))
                .await
                .unwrap()
        });
        assert_eq!(sent, 2);
        let frames = cap.join().unwrap();
        let want = unsolicited_na(mac, ip);
        let seen = frames.iter().filter(|f| **f == want).count();
        assert_eq!(seen, 2, "captured {} frames", frames.len());
        // The peer kernel validated (checksum, hop limit) and applied it.
        let n = neigh_mac(&ns, "2001:db8::10");
        let mac_s = mac.map(|b| format!("{b:02x}")).join(":");
        assert!(n.contains(&mac_s), "neighbour table: {n}");
    }

    #[test]
    fn announce_errors() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        run_in(&ns.a, || async {
            let a: IpAddr = "192.0.2.10".parse().unwrap();
            let e = announce("nosuchif0", a, 1, Duration::ZERO)
                .await
                .unwrap_err();
            assert!(matches!(e, NetError::NoSuchInterface { .. }), "{e}");
            let e = announce("lo", a, 1, Duration::ZERO).await.unwrap_err();
            assert!(matches!(e, NetError::NoHardwareAddress { .. }), "{e}");
            assert_eq!(announce(IF_A, a, 0, Duration::ZERO).await.unwrap(), 0);
        });
    }
}
