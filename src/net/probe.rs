//! "Is this address already in use on the LAN?" probes.
//!
//! * IPv4: ARP probe (RFC 5227 s2.1.1): an ARP request with sender IP
//!   0.0.0.0 (so no neighbour caches are polluted) and target IP = the
//!   candidate address. Any ARP packet whose *sender* IP is the candidate
//!   and whose sender MAC is not ours means someone owns it.
//! * IPv6: DAD-style neighbour solicitation (RFC 4862 s5.4.2): source `::`,
//!   destination the target's solicited-node multicast group, no source
//!   link-layer option (RFC 4861 s7.1.1). A neighbour advertisement for the
//!   target from another MAC means it is in use (RFC 4862 s5.4.4).
//!
//! Up to three probes are spread evenly over the timeout and we listen on
//! the same packet socket until the timeout expires (or return early on the
//! first answer). Frames from our own MAC (e.g. the outgoing copies the
//! packet socket sees) are always ignored.
//!
//! Unlike full RFC 5227/4862 conflict detection, a *simultaneous probe* by
//! another host (sender IP 0.0.0.0 / source `::` for the same target) is not
//! reported: only answers from an owner count.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

use super::announce::{
    arp_frame, check_unicast, icmpv6_checksum, icmpv6_frame, iface_for_frames, solicited_node,
    PacketSocket, BROADCAST_MAC, ETH_HLEN, ETH_P_ARP, ETH_P_IPV6, ICMPV6_NA, ICMPV6_NS,
    IPPROTO_ICMPV6, IPV6_HLEN,
};
use super::NetError;

/// Number of probes sent over the timeout (RFC 5227 s1.1 PROBE_NUM = 3;
/// RFC 4862 uses DupAddrDetectTransmits = 1, more is allowed).
const PROBE_NUM: u32 = 3;

/// ARP probe for `ip` from `mac` (RFC 5227 s2.1.1): request, broadcast,
/// sender IP all zeroes, target hardware address all zeroes.
pub fn arp_probe_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    arp_frame(1, BROADCAST_MAC, mac, Ipv4Addr::UNSPECIFIED, [0; 6], ip)
}

/// DAD neighbour solicitation for `ip` from `mac` as a full 78-byte
/// Ethernet frame (RFC 4862 s5.4.2): IPv6 source `::`, destination the
/// solicited-node multicast address of `ip`, hop limit 255, no Source
/// Link-Layer Address option (forbidden with an unspecified source,
/// RFC 4861 s7.1.1).
pub fn dad_ns_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut msg = Vec::with_capacity(24);
    msg.extend_from_slice(&[ICMPV6_NS, 0, 0, 0]); // type, code, checksum
    msg.extend_from_slice(&[0, 0, 0, 0]); // reserved
    msg.extend_from_slice(&ip.octets()); // target address
    icmpv6_frame(mac, Ipv6Addr::UNSPECIFIED, solicited_node(ip), msg)
}

/// Does this received Ethernet frame show another host using `addr`? The decoder
/// behind [`address_in_use`]; it reads frames straight off the LAN, so it is fuzzed
/// (`fuzz/fuzz_targets/probe_reply.rs`).
pub fn frame_shows_owner(frame: &[u8], addr: IpAddr, our_mac: [u8; 6]) -> bool {
    match addr {
        IpAddr::V4(ip) => arp_answer(frame, ip, our_mac),
        IpAddr::V6(ip) => nd_answer(frame, ip, our_mac),
    }
}

/// Does this Ethernet frame show another host using `ip`?
/// RFC 5227 s2.1.1: any ARP packet (request or reply) whose sender IP is
/// the probed address, from a hardware address other than ours.
fn arp_answer(frame: &[u8], ip: Ipv4Addr, our_mac: [u8; 6]) -> bool {
    if frame.len() < ETH_HLEN + 28 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return false;
    }
    let arp = &frame[ETH_HLEN..];
    let eth_src = &frame[6..12];
    let well_formed =
        arp[0..2] == [0, 1] && arp[2..4] == [0x08, 0x00] && arp[4] == 6 && arp[5] == 4;
    let sha = &arp[8..14];
    let spa = &arp[14..18];
    well_formed && sha != our_mac && eth_src != our_mac && spa == ip.octets()
}

/// Does this Ethernet frame carry a valid neighbour advertisement for `ip`
/// from another host? Validation per RFC 4861 s7.1.2: hop limit 255,
/// ICMP code 0, correct checksum, target = `ip`.
fn nd_answer(frame: &[u8], ip: Ipv6Addr, our_mac: [u8; 6]) -> bool {
    const ICMP_OFF: usize = ETH_HLEN + IPV6_HLEN;
    if frame.len() < ICMP_OFF + 24 || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
        return false;
    }
    if frame[6..12] == our_mac || frame[ETH_HLEN] >> 4 != 6 {
        return false;
    }
    let payload_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    if frame[20] != IPPROTO_ICMPV6 || frame[21] != 255 || payload_len < 24 {
        return false;
    }
    let Some(icmp) = frame.get(ICMP_OFF..ICMP_OFF + payload_len) else {
        return false;
    };
    if icmp[0] != ICMPV6_NA || icmp[1] != 0 || icmp[8..24] != ip.octets() {
        return false;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&frame[22..38]);
    dst.copy_from_slice(&frame[38..54]);
    icmpv6_checksum(Ipv6Addr::from(src), Ipv6Addr::from(dst), icmp) == 0
}

/// Probe whether another host on `ifname`'s LAN already uses `addr`.
///
/// Returns `Ok(true)` as soon as an answer from a foreign MAC arrives,
/// `Ok(false)` when `timeout` passes without one. Sends three
/// probes spaced `timeout / 3` apart, starting immediately. Needs
/// `CAP_NET_RAW`.
pub async fn address_in_use(
    ifname: &str,
    addr: IpAddr,
    timeout: Duration,
) -> Result<bool, NetError> {
    const OP: &str = "address_in_use";
    check_unicast(OP, addr)?;
    let (index, mac) = iface_for_frames(OP, ifname).await?;
    let (ethertype, frame) = match addr {
        IpAddr::V4(a) => (ETH_P_ARP, arp_probe_frame(mac, a).to_vec()),
        IpAddr::V6(a) => (ETH_P_IPV6, dad_ns_frame(mac, a)),
    };
    let is_answer = |f: &[u8]| match addr {
        IpAddr::V4(a) => arp_answer(f, a, mac),
        IpAddr::V6(a) => nd_answer(f, a, mac),
    };
    // Open (and so start capturing) before the first probe goes out.
    let sock = PacketSocket::open(ifname, index, ethertype)?;
    let start = Instant::now();
    let deadline = start + timeout;
    let interval = timeout / PROBE_NUM;
    let mut sent = 0u32;
    let mut next_probe = start;
    let mut buf = vec![0u8; 2048];
    loop {
        while sent < PROBE_NUM && Instant::now() >= next_probe {
            sock.send(&frame).await?;
            sent += 1;
            next_probe += interval;
        }
        let wake = if sent < PROBE_NUM {
            next_probe.min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wake, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if is_answer(&buf[..n]) {
                    return Ok(true);
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => {
                if sent >= PROBE_NUM && Instant::now() >= deadline {
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::announce::{garp_frame, unsolicited_na};
    use crate::net::netlink::add_address;
    use crate::net::testutil::{root_or_skip, run_in, NetnsPair, IF_A, IF_B};

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const OTHER: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

    #[test]
    fn arp_probe_bytes() {
        let f = arp_probe_frame(MAC, Ipv4Addr::new(192, 0, 2, 10));
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sha
            0, 0, 0, 0, // spa 0.0.0.0 (RFC 5227 s2.1.1)
            0, 0, 0, 0, 0, 0, // tha
            192, 0, 2, 10, // tpa
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn dad_ns_bytes() {
        let ip: Ipv6Addr = "2001:db8::1:2345:6789".parse().unwrap();
        let f = dad_ns_frame(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 24);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x45, 0x67, 0x89]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 24);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        assert_eq!(&f[22..38], &[0u8; 16], "source ::");
        assert_eq!(
            &f[38..54],
            &"ff02::1:ff45:6789".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(f[54], 135);
        assert_eq!(f[55], 0);
        assert_eq!(&f[58..62], &[0, 0, 0, 0]);
        assert_eq!(&f[62..78], &ip.octets());
        let c = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, solicited_node(ip), &f[54..]);
        assert_eq!(c, 0, "checksum verifies");
    }

    #[test]
    fn classify_arp() {
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        // Reply from the owner.
        let reply = arp_frame(2, MAC, OTHER, ip, MAC, Ipv4Addr::UNSPECIFIED);
        assert!(arp_answer(&reply, ip, MAC));
        // The owner's own GARP also counts.
        assert!(arp_answer(&garp_frame(OTHER, ip), ip, MAC));
        // Our own probe / announcement never counts.
        assert!(!arp_answer(&arp_probe_frame(MAC, ip), ip, MAC));
        assert!(!arp_answer(&garp_frame(MAC, ip), ip, MAC));
        // Another host probing (spa 0.0.0.0) is not an answer.
        assert!(!arp_answer(&arp_probe_frame(OTHER, ip), ip, MAC));
        // Some other address.
        assert!(!arp_answer(
            &garp_frame(OTHER, Ipv4Addr::new(192, 0, 2, 11)),
            ip,
            MAC
        ));
        // Truncated and garbage frames do not panic.
        for n in 0..reply.len() {
            assert!(!arp_answer(&reply[..n], ip, MAC));
        }
        let mut bad = reply;
        bad[18] = 8; // hlen
        assert!(!arp_answer(&bad, ip, MAC));
    }

    #[test]
    fn classify_nd() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let na = unsolicited_na(OTHER, ip);
        assert!(nd_answer(&na, ip, MAC));
        assert!(!nd_answer(&unsolicited_na(MAC, ip), ip, MAC), "own MAC");
        assert!(!nd_answer(&na, "2001:db8::11".parse().unwrap(), MAC));
        assert!(
            !nd_answer(&dad_ns_frame(OTHER, ip), ip, MAC),
            "NS is no answer"
        );
        let mut bad = na.clone();
        bad[21] = 64; // hop limit
        assert!(!nd_answer(&bad, ip, MAC));
        let mut bad = na.clone();
        bad[70] ^= 0xff; // corrupt target => checksum fails
        assert!(!nd_answer(&bad, ip, MAC));
        let mut bad = na.clone();
        bad[18] = 0xff; // payload length beyond the frame
        assert!(!nd_answer(&bad, ip, MAC));
        for n in 0..na.len() {
            assert!(!nd_answer(&na[..n], ip, MAC));
        }
    }

    fn probe(ns: &str, addr: &str, ms: u64) -> (bool, Duration) {
        let addr: IpAddr = addr.parse().unwrap();
        run_in(ns, move || async move {
            let t = std::time::Instant::now();
            let r = address_in_use(IF_A, addr, Duration::from_millis(ms))
                .await
                .unwrap();
            (r, t.elapsed())
        })
    }

    #[test]
    fn probe_v4_live() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        ns.ip(&ns.b, &["addr", "add", "192.0.2.2/24", "dev", IF_B]);
        // Owned by the peer: answered, and well before the timeout.
        let (used, took) = probe(&ns.a, "192.0.2.2", 3000);
        assert!(used);
        assert!(took < Duration::from_millis(2000), "{took:?}");
        // Nobody owns it: full timeout, false.
        let (used, took) = probe(&ns.a, "192.0.2.10", 600);
        assert!(!used);
        assert!(took >= Duration::from_millis(600), "{took:?}");
        // We own it ourselves: our own frames are ignored.
        run_in(&ns.a, || async {
            add_address(IF_A, "192.0.2.20".parse().unwrap(), 24)
                .await
                .unwrap()
        });
        assert!(!probe(&ns.a, "192.0.2.20", 600).0);
    }

    #[test]
    fn probe_v6_live() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        ns.ip(
            &ns.b,
            &["addr", "add", "2001:db8::2/64", "dev", IF_B, "nodad"],
        );
        let (used, took) = probe(&ns.a, "2001:db8::2", 3000);
        assert!(used);
        assert!(took < Duration::from_millis(2000), "{took:?}");
        let (used, _) = probe(&ns.a, "2001:db8::10", 600);
        assert!(!used);
        run_in(&ns.a, || async {
            add_address(IF_A, "2001:db8::20".parse().unwrap(), 64)
                .await
                .unwrap()
        });
        assert!(!probe(&ns.a, "2001:db8::20", 600).0);
    }

    #[test]
    fn probe_errors() {
        if !root_or_skip() {
            return;
        }
        let ns = NetnsPair::new();
        run_in(&ns.a, || async {
            let t = Duration::from_millis(10);
            let e = address_in_use("nosuchif0", "192.0.2.1".parse().unwrap(), t)
                .await
                .unwrap_err();
            assert!(matches!(e, NetError::NoSuchInterface { .. }), "{e}");
            let e = address_in_use(IF_A, "0.0.0.0".parse().unwrap(), t)
                .await
                .unwrap_err();
            assert!(matches!(e, NetError::UnsupportedAddress { .. }), "{e}");
            // Zero timeout: probes go out, nobody can answer in time.
            assert!(
                !address_in_use(IF_A, "192.0.2.1".parse().unwrap(), Duration::ZERO)
                    .await
                    .unwrap()
            );
        });
    }
}
