//! Fuzz target: the SNMP agent's request path (`RequestHandler::handle`: decode,
//! community and source check, GET/GETNEXT/GETBULK/SET, encode) must never panic,
//! whatever arrives on UDP port 161, and every answer must fit the response limit.
//!
//! Run with `cargo +nightly fuzz run snmp_request` (or `scripts/fuzz-smoke.sh`).
//! Besides raw datagrams, the target wraps the input in a valid v2c header with
//! the configured community, so the fuzzer reaches the PDU decoder and the MIB view.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem::config::{CommunityConfig, SnmpConfig};
use tandem::snmp::agent::{RequestHandler, MAX_RESPONSE_SIZE};
use tandem::snmp::mib::{MibView, SystemInfo};
use tandem::snmp::usm::Usm;
use tandem::status::Status;

const COMMUNITY: &[u8] = b"public";
const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn handler() -> &'static Mutex<RequestHandler> {
    static HANDLER: OnceLock<Mutex<RequestHandler>> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let cfg = SnmpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 161)),
            engine_id: None,
            contact: "fuzz".into(),
            location: String::new(),
            allow_no_auth_no_priv: false,
            communities: vec![CommunityConfig {
                name: "public".into(),
                source: "127.0.0.0/8".into(),
            }],
            users: Vec::new(),
            receivers: Vec::new(),
        };
        // The shared sample snapshot: every table of the MIB has rows to walk.
        let status = Status::sample();
        let view = MibView::build(&status, &SystemInfo::default());
        let usm = Usm::new(vec![0x80, 0, 0, 0, 4], 1, &[], false).expect("usm");
        Mutex::new(RequestHandler::new(&cfg, usm, view).expect("handler"))
    })
}

/// SEQUENCE { INTEGER 1, OCTET STRING community, <pdu> } with definite lengths.
fn wrap_v2c(pdu: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x01, 0x04, COMMUNITY.len() as u8];
    body.extend_from_slice(COMMUNITY);
    body.extend_from_slice(pdu);
    let mut msg = vec![0x30];
    let len = body.len();
    if len < 0x80 {
        msg.push(len as u8);
    } else {
        msg.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    msg.extend_from_slice(&body);
    msg
}

fuzz_target!(|data: &[u8]| {
    let mut h = handler().lock().unwrap_or_else(|p| p.into_inner());
    for datagram in [data.to_vec(), wrap_v2c(data)] {
        if let Some(reply) = h.handle(&datagram, SOURCE, Instant::now()) {
            assert!(
                reply.len() <= MAX_RESPONSE_SIZE,
                "reply of {} bytes",
                reply.len()
            );
        }
    }
});
