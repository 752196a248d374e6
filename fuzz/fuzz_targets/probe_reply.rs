//! Fuzz target: the decoder of frames received while probing whether a floating IP
//! is in use (ARP replies, neighbour advertisements) must never panic, whatever the
//! LAN sends.
//!
//! Run with `cargo +nightly fuzz run probe_reply` (or `scripts/fuzz-smoke.sh`).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tandem::net::probe::frame_shows_owner;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100));
    let _ = frame_shows_owner(data, v4, OUR_MAC);
    let _ = frame_shows_owner(data, v6, OUR_MAC);
});
