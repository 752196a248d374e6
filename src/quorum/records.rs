//! What the consensus log persists: plain records, free of raft-rs types, so that the
//! durable log on disk (`quorum::disk`) and the simulation's crash-testing disk share
//! them.
//!
//! The node core returns a [`PersistBatch`] before the messages that depend on it; the
//! runtime writes it (with fsync) before it sends them, as raft requires.

use serde::{Deserialize, Serialize};

/// Raft's hard state: the current term, the vote in it, the commit index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardStateRec {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// One log entry. `data` is an encoded `Decision` (empty for the leader's no-op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRec {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// A snapshot: the applied register (`data`) as of `index`, and the voter ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRec {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub data: Vec<u8>,
}

/// One write to the durable log, in this order: the snapshot (which replaces every
/// entry up to its index), then the entries (an entry at an index that exists already
/// replaces it and drops every later one, as raft's log truncation does), then the
/// hard state; then the compaction. A snapshot (received or `compact`) older than the
/// one already held is ignored, see [`Restored::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistBatch {
    pub snapshot: Option<SnapshotRec>,
    pub entries: Vec<EntryRec>,
    pub hard_state: Option<HardStateRec>,
    /// After this batch, entries up to and including this index are covered by
    /// `compact` (a local snapshot) and may be dropped from the log file.
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

/// Why a batch cannot be written: it would leave a hole in the log or rewrite what a
/// snapshot covers. Raft never produces such a batch; the durable log refuses it before
/// it writes anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("entry {index} would leave a hole after the last index {last}")]
    Hole { index: u64, last: u64 },
    #[error("entry {index} is covered by the snapshot at index {snapshot}")]
    Covered { index: u64, snapshot: u64 },
}

/// What the durable log held at start.
///
/// Invariants after [`Restored::apply`] of batches that [`Restored::check`] accepts:
/// `entries` are contiguous and start right after the snapshot's index (or at any
/// index without a snapshot), and `hard_state.commit` is at least the snapshot's index.
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
    ///
    /// In the documented order: the snapshot, the entries (an entry at an index that
    /// exists replaces it and every later one), the hard state, the compaction. Then:
    ///
    /// - A snapshot (received or `compact`) whose index is below the one held is stale
    ///   and ignored: taking it would drop entries the newer snapshot covers. (A local
    ///   compaction can race with a snapshot received from the leader.)
    /// - A snapshot keeps the entries after its index only if they follow it without a
    ///   hole.
    /// - The commit index is raised to the snapshot's index if it is below: a snapshot
    ///   holds committed state, and raft-rs refuses to start from a hard state that
    ///   commits less than its first index (as raft-rs's `MemStorage` does on
    ///   `apply_snapshot`). This matters when a crash persists a batch's snapshot but
    ///   not its hard state.
    ///
    /// The batch is expected to pass [`Restored::check`].
    pub fn apply(&mut self, b: &PersistBatch) {
        if let Some(s) = &b.snapshot {
            self.install(s);
        }
        for e in &b.entries {
            self.entries.retain(|x| x.index < e.index);
            self.entries.push(e.clone());
        }
        if let Some(hs) = b.hard_state {
            self.hard_state = hs;
        }
        if let Some(s) = &b.compact {
            self.install(s);
        }
        if let Some(s) = &self.snapshot {
            self.hard_state.commit = self.hard_state.commit.max(s.index);
        }
    }

    /// Whether `s` would replace the snapshot held (it is not older).
    pub fn takes_snapshot(&self, s: &SnapshotRec) -> bool {
        self.snapshot
            .as_ref()
            .is_none_or(|held| held.index <= s.index)
    }

    /// The index of the last entry, or of the snapshot when no entry follows it (0 when
    /// there is neither).
    pub fn last_index(&self) -> u64 {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => e.index,
            (None, Some(s)) => s.index,
            (None, None) => 0,
        }
    }

    /// Checks that `b` keeps the log contiguous: each entry lands after the snapshot
    /// (after the batch's own, if it takes one) and at most one past the last index.
    pub fn check(&self, b: &PersistBatch) -> Result<(), BatchError> {
        let (floor, mut last) = match b.snapshot.as_ref().filter(|s| self.takes_snapshot(s)) {
            Some(s) => {
                let follows = self
                    .entries
                    .iter()
                    .find(|e| e.index > s.index)
                    .is_some_and(|e| e.index == s.index + 1);
                (s.index, if follows { self.last_index() } else { s.index })
            }
            None => (
                self.snapshot.as_ref().map_or(0, |s| s.index),
                self.last_index(),
            ),
        };
        for e in &b.entries {
            if e.index <= floor {
                return Err(BatchError::Covered {
                    index: e.index,
                    snapshot: floor,
                });
            }
            if e.index > last + 1 {
                return Err(BatchError::Hole {
                    index: e.index,
                    last,
                });
            }
            last = e.index;
        }
        Ok(())
    }

    fn install(&mut self, s: &SnapshotRec) {
        if !self.takes_snapshot(s) {
            return;
        }
        self.entries.retain(|e| e.index > s.index);
        if self.entries.first().is_some_and(|e| e.index != s.index + 1) {
            self.entries.clear();
        }
        self.snapshot = Some(s.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> EntryRec {
        EntryRec {
            index,
            term,
            data: vec![],
        }
    }

    fn snap(index: u64) -> SnapshotRec {
        SnapshotRec {
            index,
            term: 1,
            voters: vec![1],
            data: vec![],
        }
    }

    fn with_entries(range: std::ops::RangeInclusive<u64>) -> Restored {
        let mut r = Restored::default();
        r.apply(&PersistBatch {
            entries: range.map(|i| entry(i, 1)).collect(),
            ..PersistBatch::default()
        });
        r
    }

    fn indexes(r: &Restored) -> Vec<u64> {
        r.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn apply_follows_the_documented_order() {
        let mut r = with_entries(1..=8);
        r.apply(&PersistBatch {
            snapshot: Some(snap(3)),
            entries: vec![entry(5, 2)],
            hard_state: Some(HardStateRec {
                term: 2,
                vote: 1,
                commit: 4,
            }),
            compact: Some(snap(4)),
        });
        assert_eq!(r.snapshot, Some(snap(4)));
        assert_eq!(indexes(&r), vec![5]);
        assert_eq!(r.entries[0].term, 2);
        assert_eq!(r.hard_state.commit, 4);
        assert_eq!(r.last_index(), 5);
    }

    #[test]
    fn a_snapshot_keeps_only_entries_that_follow_it() {
        let mut r = with_entries(1..=8);
        r.apply(&PersistBatch {
            snapshot: Some(snap(5)),
            ..PersistBatch::default()
        });
        assert_eq!(indexes(&r), vec![6, 7, 8]);
        r.apply(&PersistBatch {
            snapshot: Some(snap(20)),
            ..PersistBatch::default()
        });
        assert_eq!(indexes(&r), Vec::<u64>::new());
        assert_eq!(r.last_index(), 20);
    }

    #[test]
    fn a_stale_snapshot_is_ignored() {
        let mut r = with_entries(1..=8);
        r.apply(&PersistBatch {
            compact: Some(snap(6)),
            ..PersistBatch::default()
        });
        let before = r.clone();
        for stale in [
            PersistBatch {
                snapshot: Some(snap(4)),
                ..PersistBatch::default()
            },
            PersistBatch {
                compact: Some(snap(5)),
                ..PersistBatch::default()
            },
        ] {
            assert!(!r.takes_snapshot(stale.snapshot.as_ref().or(stale.compact.as_ref()).unwrap()));
            r.apply(&stale);
            assert_eq!(r, before);
        }
    }

    #[test]
    fn the_commit_index_is_at_least_the_snapshot() {
        let mut r = with_entries(1..=3);
        r.apply(&PersistBatch {
            snapshot: Some(snap(10)),
            ..PersistBatch::default()
        });
        assert_eq!(r.hard_state.commit, 10);
        r.apply(&PersistBatch {
            hard_state: Some(HardStateRec {
                term: 3,
                vote: 0,
                commit: 2,
            }),
            ..PersistBatch::default()
        });
        assert_eq!(r.hard_state.commit, 10);
        assert_eq!(r.hard_state.term, 3);
    }

    #[test]
    fn check_refuses_holes_and_covered_entries() {
        let mut r = with_entries(1..=3);
        let b = |snapshot: Option<u64>, idx: &[u64]| PersistBatch {
            snapshot: snapshot.map(snap),
            entries: idx.iter().map(|&i| entry(i, 2)).collect(),
            ..PersistBatch::default()
        };
        assert_eq!(r.check(&b(None, &[4, 5])), Ok(()));
        assert_eq!(r.check(&b(None, &[2, 3, 4])), Ok(()));
        assert_eq!(
            r.check(&b(None, &[5])),
            Err(BatchError::Hole { index: 5, last: 3 })
        );
        assert_eq!(
            r.check(&b(None, &[4, 6])),
            Err(BatchError::Hole { index: 6, last: 4 })
        );
        // After the batch's snapshot: entries follow it, not the old log.
        assert_eq!(r.check(&b(Some(10), &[11])), Ok(()));
        assert_eq!(r.check(&b(Some(2), &[4])), Ok(()));
        assert_eq!(
            r.check(&b(Some(10), &[4])),
            Err(BatchError::Covered {
                index: 4,
                snapshot: 10
            })
        );
        r.apply(&b(Some(2), &[]));
        assert_eq!(
            r.check(&b(None, &[2])),
            Err(BatchError::Covered {
                index: 2,
                snapshot: 2
            })
        );
        // A stale snapshot in the batch does not move the floor.
        assert_eq!(
            r.check(&b(Some(1), &[2])),
            Err(BatchError::Covered {
                index: 2,
                snapshot: 2
            })
        );
    }
}
