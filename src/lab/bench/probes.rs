//! The failover benchmark's clocks, each a thread in a namespace that starts on a
//! signal: a prober that GETs the VIP from the client until another node answers, and
//! a watcher that notices when an address becomes local on the survivor.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::lab::net::{self, check_interrupt};
use crate::lab::probe::{http_get, service_on};
use crate::lab::topology::identify_node;
use crate::lab::topology::VIP;
use crate::lab::LabError;

/// First answer from a node other than the previous owner.
#[derive(Debug, Clone)]
pub struct Takeover {
    /// Unix ms when the answer arrived.
    pub at_ms: f64,
    /// Node that answered.
    pub node: String,
    /// Number of probes sent.
    pub probes: u64,
}

/// Start a prober in the client namespace. It waits for the start time on
/// `start`, then sends a GET to the VIP every `period` (connect timeout
/// `period`) until a node other than `old_owner` answers or `limit` passes.
pub fn spawn_takeover_prober(
    client_ns: &str,
    names: Vec<String>,
    old_owner: String,
    period: Duration,
    limit: Duration,
    start: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Result<Option<Takeover>, LabError>> {
    net::spawn_in_netns(client_ns, move || {
        if start.recv().is_err() {
            return Ok(None);
        }
        let addr = service_on(VIP);
        let begin = Instant::now();
        let mut probes = 0u64;
        let mut next = begin;
        while begin.elapsed() < limit {
            check_interrupt()?;
            probes += 1;
            if let Ok((200, body)) = http_get(addr, period, Duration::from_millis(200)) {
                let node = identify_node(&body, &names);
                if node != old_owner {
                    return Ok(Some(Takeover {
                        at_ms: net::unix_ms(),
                        node,
                        probes,
                    }));
                }
            }
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        Ok(None)
    })
}

/// Start a watcher in namespace `ns` that reports (unix ms) when `addr`
/// becomes a local address there: it tries to bind a socket to it every
/// 2 ms (bind fails with EADDRNOTAVAIL until the address is configured).
pub fn spawn_local_addr_watcher(
    ns: &str,
    addr: Ipv4Addr,
    limit: Duration,
    start: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Result<Option<f64>, LabError>> {
    net::spawn_in_netns(ns, move || {
        if start.recv().is_err() {
            return Ok(None);
        }
        let begin = Instant::now();
        while begin.elapsed() < limit {
            check_interrupt()?;
            if std::net::UdpSocket::bind(SocketAddr::from((addr, 0))).is_ok() {
                return Ok(Some(net::unix_ms()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(None)
    })
}
