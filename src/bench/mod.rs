//! Benchmarks against other programs, built only with the `bench` cargo feature (on by
//! default; the appliance image is built without it):
//!
//! - [`mirror`]: `tandem bench mirror`, NBD write throughput vs nbdkit and qemu-nbd, and
//!   the replicated rows (sync, async, resync) across two network namespaces.
//! - [`snmp`]: `tandem bench snmp`, whole-tree walk time vs net-snmp's snmpd and
//!   event-to-trap latency.
//!
//! The lab's failover benchmark (`tandem lab bench failover`) is `lab::bench`, behind
//! the same feature. Benchmarks may use the lab; no product module imports them.

pub mod mirror;
pub mod snmp;
