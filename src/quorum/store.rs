//! The raft log in memory: a `raft::Storage` over the entries after the latest
//! snapshot, the hard state and the voters. It mirrors what the durable log
//! (`quorum::disk`) holds; the node core turns each change into a
//! [`PersistBatch`](super::records::PersistBatch) for the runtime to write first.
//!
//! Unlike raft-rs's `MemStorage`, a compaction here always goes with a snapshot that
//! carries the applied register at exactly the compacted index, so a follower that
//! falls behind the log receives a register consistent with the entries that follow.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::records::{EntryRec, HardStateRec, Restored, SnapshotRec};

/// The in-memory raft log.
#[derive(Debug, Clone)]
pub struct Store {
    hard: HardState,
    conf: ConfState,
    /// The latest snapshot: its metadata (index, term) and the register as of it.
    snap: Snapshot,
    /// Entries after `snap`'s index, contiguous.
    entries: Vec<Entry>,
}

pub fn entry_of(r: &EntryRec) -> Entry {
    Entry {
        index: r.index,
        term: r.term,
        data: r.data.clone().into(),
        ..Default::default()
    }
}

pub fn rec_of_entry(e: &Entry) -> EntryRec {
    EntryRec {
        index: e.index,
        term: e.term,
        data: e.data.to_vec(),
    }
}

pub fn rec_of_hard(h: &HardState) -> HardStateRec {
    HardStateRec {
        term: h.term,
        vote: h.vote,
        commit: h.commit,
    }
}

pub fn snapshot_of(r: &SnapshotRec) -> Snapshot {
    let mut s = Snapshot::default();
    let mut m = SnapshotMetadata {
        index: r.index,
        term: r.term,
        ..Default::default()
    };
    m.set_conf_state(ConfState {
        voters: r.voters.clone(),
        ..Default::default()
    });
    s.set_metadata(m);
    s.data = r.data.clone().into();
    s
}

pub fn rec_of_snapshot(s: &Snapshot) -> SnapshotRec {
    let m = s.get_metadata();
    SnapshotRec {
        index: m.index,
        term: m.term,
        voters: m.get_conf_state().voters.clone(),
        data: s.data.to_vec(),
    }
}

impl Store {
    /// A store for `voters`, holding what the durable log restored.
    pub fn new(voters: &[u64], restored: &Restored) -> Store {
        let conf = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let mut store = Store {
            hard: HardState::default(),
            conf,
            snap: Snapshot::default(),
            entries: Vec::new(),
        };
        if let Some(s) = &restored.snapshot {
            store.snap = snapshot_of(s);
            store.snap.mut_metadata().set_conf_state(store.conf.clone());
        }
        let after = store.snap_index();
        store.entries = restored
            .entries
            .iter()
            .filter(|e| e.index > after)
            .map(entry_of)
            .collect();
        // Keep only a contiguous run after the snapshot.
        let mut expect = after + 1;
        store.entries.retain(|e| {
            let keep = e.index == expect;
            if keep {
                expect += 1;
            }
            keep
        });
        let h = restored.hard_state;
        store.hard.term = h.term.max(store.snap.get_metadata().term);
        store.hard.vote = h.vote;
        store.hard.commit = h.commit.clamp(after, store.last());
        store
    }

    fn snap_index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snap_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard = hs;
    }

    /// The latest snapshot (a default one before any).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snap
    }

    /// Appends entries from raft's Ready, truncating any conflicting suffix.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        if first.index <= self.snap_index() {
            // Already covered by the snapshot: keep only what follows it.
            let skip = (self.snap_index() + 1 - first.index) as usize;
            if skip < ents.len() {
                self.append(&ents[skip..]);
            }
            return;
        }
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        self.entries.extend_from_slice(ents);
    }

    /// Installs a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) {
        let m = snap.get_metadata();
        if m.index <= self.snap_index() {
            return;
        }
        self.entries.retain(|e| e.index > m.index);
        if self.entries.first().is_some_and(|e| e.index != m.index + 1) {
            self.entries.clear();
        }
        if self.entries.is_empty() || m.index > self.last() {
            self.entries.clear();
        }
        self.snap = snap.clone();
        self.snap.mut_metadata().set_conf_state(self.conf.clone());
        self.hard.term = self.hard.term.max(m.term);
        self.hard.commit = self.hard.commit.max(m.index);
    }

    /// Compacts the log up to `index` (applied), with the register as of it.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Option<SnapshotRec> {
        if index <= self.snap_index() || index > self.last() {
            return None;
        }
        let term = self.term_of(index)?;
        let mut s = Snapshot::default();
        let mut m = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        m.set_conf_state(self.conf.clone());
        s.set_metadata(m);
        s.data = data.into();
        self.entries.retain(|e| e.index > index);
        self.snap = s;
        Some(rec_of_snapshot(&self.snap))
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.snap_index() {
            return Some(self.snap.get_metadata().term);
        }
        if idx < self.first() || idx > self.last() {
            return None;
        }
        Some(self.entries[(idx - self.first()) as usize].term)
    }

    /// Entries in `[low, high)` that the store holds.
    pub fn slice(&self, low: u64, high: u64) -> &[Entry] {
        let f = self.first();
        if low < f || high <= low || high > self.last() + 1 {
            return &[];
        }
        &self.entries[(low - f) as usize..(high - f) as usize]
    }

    /// Number of entries held after the snapshot.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Storage for Store {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut ents = self.slice(low, high).to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snap_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snap_index() < request_index || self.snap_index() == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snap.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_truncates_a_conflicting_suffix_and_compaction_keeps_terms() {
        let mut s = Store::new(&[1, 2, 3], &Restored::default());
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.append(&[ent(2, 2)]);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        s.append(&[ent(3, 2), ent(4, 2)]);
        let snap = s.compact(3, b"reg".to_vec()).unwrap();
        assert_eq!((snap.index, snap.term), (3, 2));
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2, "the compacted index keeps its term");
        assert!(s.term(2).is_err());
        assert!(s
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(s.snapshot(0, 2).unwrap().data.to_vec(), b"reg".to_vec());
    }

    #[test]
    fn a_restored_store_keeps_a_contiguous_log_after_its_snapshot() {
        let restored = Restored {
            snapshot: Some(SnapshotRec {
                index: 5,
                term: 2,
                voters: vec![1, 2, 3],
                data: vec![],
            }),
            hard_state: HardStateRec {
                term: 3,
                vote: 1,
                commit: 9,
            },
            entries: vec![
                EntryRec {
                    index: 6,
                    term: 3,
                    data: vec![],
                },
                EntryRec {
                    index: 8,
                    term: 3,
                    data: vec![],
                },
            ],
        };
        let s = Store::new(&[1, 2, 3], &restored);
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.last_index().unwrap(), 6);
        assert_eq!(s.hard_state().commit, 6, "commit never passes the log");
    }
}
