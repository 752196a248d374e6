//! Cluster communication: the authenticated heartbeat wire format
//! ([`packet`]) and the sans-IO membership core that turns received
//! heartbeats and timer ticks into path/node up/down events ([`membership`]).
//!
//! Both are pure: no sockets, no clocks. The runtime owns the UDP transport
//! and feeds decoded packets and the current monotonic time in.

pub mod membership;
pub mod packet;
