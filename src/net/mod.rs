//! Network plumbing for floating (virtual) IP addresses.
//!
//! * [`netlink`]: add, remove and list addresses and read link state through
//!   rtnetlink (no shelling out to `ip`).
//! * [`announce`](mod@announce): gratuitous ARP (RFC 5227 s3) and unsolicited neighbour
//!   advertisements (RFC 4861 s7.2.6), plus the pure frame builders.
//! * [`probe`]: "is this address already in use on the LAN?" using an ARP
//!   probe (RFC 5227 s2.1.1) or a DAD-style neighbour solicitation
//!   (RFC 4862 s5.4).
//! * [`vip`]: the pure, sans-IO reconciliation core that decides where a VIP
//!   must live, including IP local recovery onto a backup NIC.
//!
//! All socket and netlink operations act in the network namespace of the
//! calling thread at the moment the socket is opened.

pub mod announce;
pub mod http;
pub mod netlink;
pub mod probe;
pub mod vip;

use std::net::IpAddr;

pub use announce::{announce, garp_frame, unsolicited_na};
pub use netlink::{add_address, addresses, del_address, find_address, link_state, LinkState};
pub use probe::{address_in_use, arp_probe_frame, dad_ns_frame};
pub use vip::{reconcile, LinkHealth, Observed, VipAction, VipOutcome, VipSpec};

/// Errors from the network layer. Every variant carries enough context
/// (operation, interface, address) to be logged on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The rtnetlink socket could not be opened.
    #[error("cannot open rtnetlink connection for {op}: {source}")]
    NetlinkConnect {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel rejected (or failed to answer) an rtnetlink request.
    #[error("netlink {op} failed ({context}): {source}")]
    Netlink {
        op: &'static str,
        context: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The named interface does not exist in this network namespace.
    #[error("{op}: no such interface {ifname:?}")]
    NoSuchInterface { op: &'static str, ifname: String },
    /// The interface name can never be valid (empty, too long, bad chars).
    #[error("{op}: invalid interface name {ifname:?}")]
    InvalidInterfaceName { op: &'static str, ifname: String },
    /// The interface has no 6-byte Ethernet hardware address (e.g. `lo`,
    /// tun devices), so ARP/ND frames cannot be built for it.
    #[error("{op}: interface {ifname} has no Ethernet hardware address")]
    NoHardwareAddress { op: &'static str, ifname: String },
    /// The prefix length is larger than the address family allows.
    #[error("{op}: invalid prefix length /{prefix} for {addr}")]
    InvalidPrefix {
        op: &'static str,
        addr: IpAddr,
        prefix: u8,
    },
    /// The address can not be announced/probed/assigned (multicast,
    /// unspecified, broadcast, loopback...).
    #[error("{op}: unsupported address {addr}: {reason}")]
    UnsupportedAddress {
        op: &'static str,
        addr: IpAddr,
        reason: &'static str,
    },
    /// A packet-socket operation failed.
    #[error("{op} on interface {ifname}: {source}")]
    Socket {
        op: &'static str,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

/// Linux `IFNAMSIZ` minus the terminating NUL.
const IFNAME_MAX: usize = 15;

/// Whether `name` could be a Linux interface name (see `dev_valid_name()`).
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Shared helpers for tests that need real network namespaces.
#[cfg(test)]
pub(crate) mod testutil {
    use std::fs::File;
    use std::future::Future;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// Interface name of the veth end inside namespace `a`.
    pub const IF_A: &str = "tdm0";
    /// Interface name of the veth end inside namespace `b`.
    pub const IF_B: &str = "tdm1";

    /// True when running as root; otherwise prints the skip notice.
    pub fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            true
        } else {
            println!("skipped: not root");
            false
        }
    }

    /// Run a command, panicking with its stderr when it fails.
    pub fn sh(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Two fresh namespaces joined by a veth pair (`tdm0` in `a`, `tdm1` in
    /// `b`), both ends up. Dropping the guard deletes both namespaces (and
    /// with them the veth), also when a test panics.
    pub struct NetnsPair {
        pub a: String,
        pub b: String,
    }

    impl NetnsPair {
        pub fn new() -> Self {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let pid = std::process::id();
            let pair = NetnsPair {
                a: format!("tdmtest-net-{pid}-{n}a"),
                b: format!("tdmtest-net-{pid}-{n}b"),
            };
            // Guard exists before the first command so a failure cleans up.
            sh(&["ip", "netns", "add", &pair.a]);
            sh(&["ip", "netns", "add", &pair.b]);
            sh(&[
                "ip", "-n", &pair.a, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B,
                "netns", &pair.b,
            ]);
            sh(&["ip", "-n", &pair.a, "link", "set", IF_A, "up"]);
            sh(&["ip", "-n", &pair.b, "link", "set", IF_B, "up"]);
            pair
        }

        /// `ip -n <ns> args...`
        pub fn ip(&self, ns: &str, args: &[&str]) -> String {
            let mut v = vec!["ip", "-n", ns];
            v.extend_from_slice(args);
            sh(&v)
        }

        /// MAC address of `ifname` in `ns`, read with `ip`.
        pub fn mac(&self, ns: &str, ifname: &str) -> [u8; 6] {
            let out = self.ip(ns, &["-o", "link", "show", ifname]);
            let s = out
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .expect("link/ether");
            let mut mac = [0u8; 6];
            for (i, p) in s.split(':').enumerate() {
                mac[i] = u8::from_str_radix(p, 16).unwrap();
            }
            mac
        }
    }

    impl Drop for NetnsPair {
        fn drop(&mut self) {
            for ns in [&self.a, &self.b] {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }

    /// Run `f` on a fresh thread that has joined network namespace `ns`,
    /// inside a current-thread tokio runtime. Panics propagate.
    pub fn run_in<F, Fut, T>(ns: &str, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        match spawn_in(ns, f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Like [`run_in`] but returns the join handle, for concurrent work.
    pub fn spawn_in<F, Fut, T>(ns: &str, f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(f())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_ifname;

    #[test]
    fn ifname_validation() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("."));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("eth0:1"));
    }
}
