//! Tandem: high-availability appliance firmware.
//!
//! One binary runs the failover daemon and the admin commands. The decisions live in
//! pure, sans-IO cores that take time as an input; tokio tasks only carry out the
//! actions they return. See `ARCHITECTURE.md` for the diagram.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`event`]: the one ordered event stream, timelines, persistence.
//! - [`cluster`]: heartbeat wire format and the membership core.
//! - [`placement`]: the placement core and the resource hierarchy.
//! - [`node`]: the node core: membership, placement and fencing wired, sans-IO.
//! - [`resources`]: resource agents, health probes, the group executor.
//! - [`net`]: netlink addresses, GARP/NA announcements, address probes, VIP reconciliation.
//! - [`runtime`]: the daemon's event loop and heartbeat transport.
//! - [`control`]: control requests and their typed errors.
//! - [`api`]: the HTTP/JSON control API and its client.
//! - [`metrics`]: the Prometheus `/metrics` endpoint.
//! - [`lease`]: disk leases for shared storage (a delta lease, pure core).
//! - [`lab`]: a cluster of network namespaces on one machine, and the failover benchmark.
//! - `bench` (cargo feature `bench`, on by default, left out of the appliance image):
//!   `tandem bench mirror` and `tandem bench snmp`.
//! - [`logging`]: where log lines go: the journal under systemd, stderr, or a rotated file.
//! - [`mirror`]: block volumes, the `Export` seam and the NBD server that serves them.
//! - [`snmp`]: TANDEM-MIB, the SNMP agent (v2c, v3 USM) and notifications.
//! - [`demo`]: the demo service the lab protects.
//! - [`image`]: the appliance image's A/B boot slots: boot counting, blessing, updates.
//! - [`cli`]: the command line.
//! - [`rotate`]: append-only files rotated by size (the event log, the daemon log).
//! - [`status`]: the read model (the status snapshot) every observer reads.
//! - [`witness`]: `tandem witness`, a voter with no resources for one or more clusters.

pub mod api;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod control;
pub mod demo;
pub mod event;
pub mod fence;
pub mod human;
pub mod image;
pub mod lab;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod resources;
pub mod rotate;
pub mod runtime;
pub mod snmp;
pub mod status;
pub mod utc;
pub mod witness;
