//! Quorum: consensus among the voters (every node, and an optional witness) through
//! raft-rs, the replicated register of cluster decisions, and owner leases.
//!
//! - [`records`]: what the consensus log persists (plain records).
//! - [`disk`]: the durable log in the state directory (fsync, snapshots, compaction).
//! - [`wire`]: the quorum datagram codec (HMAC), fuzzed.

pub mod core;
pub mod decision;
pub mod disk;
pub mod lease;
pub mod records;
pub mod store;
pub mod wire;
