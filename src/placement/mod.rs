//! Placement: which node runs which group, and the recovery ladder from a failed check
//! to a local restart, a failover, and finally giving up.
//!
//! - [`hierarchy`]: start/stop order of a group's resources from `depends_on`.
//! - [`policy`]: the sans-IO placement core. Inputs (ticks, peers' adverts, executor
//!   results, admin requests) go in with the time; actions (start, stop, restart,
//!   probe, events, timelines) come out.

pub mod hierarchy;
pub mod policy;
