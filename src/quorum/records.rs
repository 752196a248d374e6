//! What the consensus log persists: plain records, free of raft-rs types, so that the
//! durable log on disk (`quorum::disk`) and the simulation's crash-testing disk share
//! them.
//!
//! The node core returns a [`PersistBatch`] before the messages that depend on it; the
//! runtime writes it (with fsync) before it sends them, as raft requires.

use serde::{Deserialize, Serialize};

/// Raft's hard state: the current term, the vote in it, the commit index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardStateRec {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// One log entry. `data` is an encoded `Decision` (empty for the leader's no-op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRec {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// A snapshot: the applied register (`data`) as of `index`, and the voter ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRec {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub data: Vec<u8>,
}

/// One write to the durable log, in this order: the snapshot (which replaces every
/// entry up to its index), then the entries (an entry at an index that exists already
/// replaces it and drops every later one, as raft's log truncation does), then the
/// hard state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistBatch {
    pub snapshot: Option<SnapshotRec>,
    pub entries: Vec<EntryRec>,
    pub hard_state: Option<HardStateRec>,
    /// After this batch, entries up to and including this index are covered by
    /// `compact_snapshot` and may be dropped from the log file.
    pub compact: Option<SnapshotRec>,
}

impl PersistBatch {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compact.is_none()
    }
}

/// What the durable log held at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub snapshot: Option<SnapshotRec>,
    pub hard_state: HardStateRec,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<EntryRec>,
}

impl Restored {
    /// Replays batches in memory, as the disk would after writing them: the reference
    /// the durable log is tested against, and the simulation's disk.
    pub fn apply(&mut self, b: &PersistBatch) {
        if let Some(s) = &b.snapshot {
            self.entries.retain(|e| e.index > s.index);
            if self.entries.first().is_some_and(|e| e.index != s.index + 1) {
                self.entries.clear();
            }
            self.snapshot = Some(s.clone());
        }
        for e in &b.entries {
            self.entries.retain(|x| x.index < e.index);
            self.entries.push(e.clone());
        }
        if let Some(hs) = b.hard_state {
            self.hard_state = hs;
        }
        if let Some(s) = &b.compact {
            self.entries.retain(|e| e.index > s.index);
            self.snapshot = Some(s.clone());
        }
    }
}
