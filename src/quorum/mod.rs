//! Quorum: consensus among the voters (every node, and an optional witness) through
//! raft-rs, the replicated register of cluster decisions, and owner leases.
//!
//! - [`records`]: what the consensus log persists (plain records).
//! - [`disk`]: the durable log in the state directory (fsync, snapshots, compaction).
//! - [`wire`]: the quorum datagram codec (HMAC), fuzzed.
//! - [`outbox`]: the core's actions as datagrams (coalesced, in raft's order), and the
//!   receive side's filter; shared by the node core and `tandem witness`.

pub mod core;
pub mod decision;
pub mod disk;
pub mod lease;
pub mod outbox;
pub mod records;
pub mod store;
pub mod wire;
