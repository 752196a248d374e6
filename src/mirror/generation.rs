//! Generation identifiers and disk states: which copy is newer, who resyncs from whom,
//! and when two copies have both changed (split brain).
//!
//! Every copy of a volume carries a `current` generation: a random 64-bit identifier of
//! "the data as it is now". A primary mints a new one whenever its data starts to
//! diverge from a peer it cannot reach (promotion without the peer, or losing the peer
//! while primary). It then records, per such peer, the generation the two last shared in
//! `bitmap`: from that moment the peer's dirty bitmap holds everything the peer lacks.
//! Older generations go to `history`. Comparing two copies' generations on connect
//! tells, without reading any data:
//! - equal `current`: the same data (apart from crash-dirty blocks in the bitmaps);
//! - my `bitmap[peer]` equals the peer's `current`: only I changed; a partial resync from
//!   my bitmap brings the peer up to date (and the reverse);
//! - one side's `current` is in the other's `history`: that side is older, but the
//!   bitmap for the gap is gone; a full resync (which still skips unused space);
//! - both sides moved on from the same shared generation: split brain, never resolved
//!   silently: a [`SplitBrainPolicy`] decides, and the default is to stay disconnected;
//! - nothing in common: unrelated data, refused.
//!
//! Generations say which data is newer; the [`OwnershipEpoch`] says which primary is
//! allowed to write at all (the group's ownership epoch, committed by the quorum log):
//! see `replica::core::EpochGuard`.
//!
//! Pure: no I/O. The caller persists [`Generations`] with the disk state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many past generations a copy remembers.
pub const HISTORY_LEN: usize = 32;

/// The ownership epoch of the group a mirror belongs to: the `Assignment.epoch` under
/// which a node started the group and promoted its copy. Epochs only grow; a copy never
/// applies data from a primary of a lower epoch than the highest it has followed. `0`
/// is the lowest (no epoch: an old metadata file, or two-node mode, whose register is
/// not durable across a restart of both nodes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct OwnershipEpoch(pub u64);

impl std::fmt::Display for OwnershipEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The state of one copy of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    /// Holds the newest data the cluster knows of: may be promoted.
    UpToDate,
    /// Consistent but known to miss writes (the primary went on without it).
    Outdated,
    /// Partly written by an interrupted resync, or never synced: unusable.
    Inconsistent,
    /// Sending a resync to a peer (and up to date itself).
    SyncSource,
    /// Receiving a resync: inconsistent until it finishes.
    SyncTarget,
}

impl DiskState {
    /// Whether a copy in this state may become primary.
    pub fn promotable(self) -> bool {
        matches!(self, DiskState::UpToDate | DiskState::SyncSource)
    }

    /// The snake_case name (also the MIB's and the metrics' label).
    pub fn name(self) -> &'static str {
        match self {
            DiskState::UpToDate => "up_to_date",
            DiskState::Outdated => "outdated",
            DiskState::Inconsistent => "inconsistent",
            DiskState::SyncSource => "sync_source",
            DiskState::SyncTarget => "sync_target",
        }
    }
}

/// The generation identifiers of one copy (persisted with its metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    /// The data as it is now. 0 only for a copy that was never written or synced.
    pub current: u64,
    /// Per peer: the generation both shared when this copy started tracking the peer's
    /// missing blocks in its bitmap; absent (or 0) while in sync with that peer.
    pub bitmap: BTreeMap<String, u64>,
    /// Earlier `current` values, newest first, at most [`HISTORY_LEN`].
    pub history: Vec<u64>,
}

impl Generations {
    /// A brand-new copy.
    pub fn new() -> Generations {
        Generations {
            current: 0,
            bitmap: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    fn push_history(&mut self, g: u64) {
        if g != 0 && !self.history.contains(&g) {
            self.history.insert(0, g);
            self.history.truncate(HISTORY_LEN);
        }
    }

    /// The data starts to diverge from `absent` peers (this copy is primary and cannot
    /// reach them): starts their bitmaps at the shared generation and mints `fresh` as
    /// the new current. Peers already tracked keep their older starting point.
    pub fn diverge(&mut self, absent: &[&str], fresh: u64) {
        for p in absent {
            self.track(p);
        }
        let old = self.current;
        self.push_history(old);
        self.current = fresh;
    }

    /// Starts tracking `peer`'s missing blocks from the current generation, unless they
    /// are tracked already (from an older one): a peer that was in sync now lacks
    /// blocks (crash-dirty, queued, or about to be resynced).
    pub fn track(&mut self, peer: &str) {
        let e = self.bitmap.entry(peer.to_string()).or_insert(0);
        if *e == 0 {
            *e = self.current;
        }
    }

    /// A resync with `peer` finished (either direction) or the two were found equal:
    /// nothing is tracked for it any more. A sync target adopts the source's generation.
    pub fn synced_with(&mut self, peer: &str, source_current: u64) {
        self.bitmap.remove(peer);
        if self.current != source_current {
            let old = self.current;
            self.push_history(old);
            self.current = source_current;
        }
    }

    fn bitmap_for(&self, peer: &str) -> u64 {
        self.bitmap.get(peer).copied().unwrap_or(0)
    }
}

impl Default for Generations {
    fn default() -> Self {
        Generations::new()
    }
}

/// What two copies do when they connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDecision {
    /// Same data: replicate from now on (blocks dirty from a crash are resynced from
    /// the primary's side).
    InSync,
    /// This copy is newer: send the blocks in its bitmap for the peer.
    SourcePartial,
    /// The peer is newer and tracked this copy: receive its bitmap's blocks.
    TargetPartial,
    /// This copy is newer but the gap's bitmap is gone: send every used block.
    SourceFull,
    /// The peer is newer and the gap's bitmap is gone: receive every used block.
    TargetFull,
    /// Both changed since they last shared data.
    SplitBrain,
    /// The copies have no generation in common.
    Unrelated,
}

/// What a copy tells its peer on connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub generations: Generations,
    pub disk: DiskState,
    /// Blocks this copy changed since the shared generation (its bitmap for the other).
    pub changed_blocks: u64,
    pub primary: bool,
    /// A pending split-brain resolution (see `CopyState::resolving`).
    #[serde(default)]
    pub resolving: bool,
    /// A primary's ownership epoch (the one it was promoted under); a secondary's is the
    /// highest it followed or was promoted at (see [`SplitBrainPolicy::DiscardYoungerPrimary`]).
    pub epoch: OwnershipEpoch,
}

/// Compares this copy with the peer's, on connect.
pub fn decide(me: &PeerView, peer: &PeerView) -> SyncDecision {
    use SyncDecision::*;
    let mine = &me.generations;
    let theirs = &peer.generations;
    // A copy that never held data, or was cut off mid-resync, takes the other's.
    let me_usable = !matches!(me.disk, DiskState::Inconsistent | DiskState::SyncTarget);
    let peer_usable = !matches!(peer.disk, DiskState::Inconsistent | DiskState::SyncTarget);
    match (me_usable, peer_usable) {
        (false, false) => return Unrelated,
        (false, true) => {
            return if theirs.bitmap_for(&me.name) != 0
                && theirs.bitmap_for(&me.name) == mine.current
            {
                TargetPartial
            } else {
                TargetFull
            }
        }
        (true, false) => {
            return if mine.bitmap_for(&peer.name) != 0
                && mine.bitmap_for(&peer.name) == theirs.current
            {
                SourcePartial
            } else {
                SourceFull
            }
        }
        (true, true) => {}
    }
    if mine.current == theirs.current {
        return InSync;
    }
    let my_base = mine.bitmap_for(&peer.name);
    let their_base = theirs.bitmap_for(&me.name);
    // Both tracked each other from the same shared generation, and both minted a new
    // one since: both went on writing apart. A side still at the shared generation
    // (a crashed primary that comes back: its bitmap only holds crash-dirty blocks)
    // did not; it is simply older.
    if my_base != 0
        && my_base == their_base
        && mine.current != my_base
        && theirs.current != their_base
    {
        return SplitBrain;
    }
    if my_base != 0 && my_base == theirs.current {
        return SourcePartial;
    }
    if their_base != 0 && their_base == mine.current {
        return TargetPartial;
    }
    if theirs.current != 0 && mine.history.contains(&theirs.current) {
        return SourceFull;
    }
    if mine.current != 0 && theirs.history.contains(&mine.current) {
        return TargetFull;
    }
    if mine.history.iter().any(|g| theirs.history.contains(g))
        || (my_base != 0 && theirs.history.contains(&my_base))
        || (their_base != 0 && mine.history.contains(&their_base))
    {
        return SplitBrain;
    }
    Unrelated
}

/// What to do after a split brain. Never silent: every choice raises an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitBrainPolicy {
    /// Stay disconnected until an administrator picks the survivor (the default).
    #[default]
    Disconnect,
    /// If exactly one side changed nothing since the split, it becomes the target.
    DiscardZeroChanges,
    /// The side that is not primary now becomes the target (if exactly one is primary).
    DiscardSecondary,
    /// The side that became primary later (the higher ownership epoch) becomes the
    /// target. A copy's epoch is its promotion's while it is primary; once demoted it is
    /// the highest it followed or was promoted at. Both sides of a split brain wrote
    /// apart, so each was promoted during the split and neither followed the other:
    /// each epoch is at least its own last promotion's, and only a third copy's newer
    /// primary can have raised it further (then that copy is the younger line anyway).
    /// Equal epochs (two-node mode, whose epochs are all 0) are a tie: stay apart. The
    /// epoch rule still holds first: a primary meeting a copy of a newer epoch is
    /// deposed, so this policy resolves once the older primary stepped down; the losing
    /// copy then follows the survivor's epoch (`replica::resolve`).
    DiscardYoungerPrimary,
    /// The side with fewer changed blocks since the split becomes the target; a tie
    /// stays apart.
    DiscardLeastChanges,
}

impl SplitBrainPolicy {
    /// Every policy, in the order of the documentation.
    pub const ALL: [SplitBrainPolicy; 5] = [
        SplitBrainPolicy::Disconnect,
        SplitBrainPolicy::DiscardZeroChanges,
        SplitBrainPolicy::DiscardSecondary,
        SplitBrainPolicy::DiscardYoungerPrimary,
        SplitBrainPolicy::DiscardLeastChanges,
    ];

    /// The policy of this snake_case name.
    pub fn from_name(name: &str) -> Option<SplitBrainPolicy> {
        SplitBrainPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The snake_case name (config value, event field).
    pub fn name(self) -> &'static str {
        match self {
            SplitBrainPolicy::Disconnect => "disconnect",
            SplitBrainPolicy::DiscardZeroChanges => "discard_zero_changes",
            SplitBrainPolicy::DiscardSecondary => "discard_secondary",
            SplitBrainPolicy::DiscardYoungerPrimary => "discard_younger_primary",
            SplitBrainPolicy::DiscardLeastChanges => "discard_least_changes",
        }
    }
}

/// Which side loses its changes, if the policy decides: `Some(true)` means this copy
/// becomes the (full) sync target, `Some(false)` the peer does, `None` stay apart.
/// The caller never lets a current primary lose (see `connect::plan`).
pub fn resolve_split_brain(
    policy: SplitBrainPolicy,
    me: &PeerView,
    peer: &PeerView,
) -> Option<bool> {
    use std::cmp::Ordering;
    match policy {
        SplitBrainPolicy::Disconnect => None,
        SplitBrainPolicy::DiscardZeroChanges => match (me.changed_blocks, peer.changed_blocks) {
            (0, n) if n > 0 => Some(true),
            (n, 0) if n > 0 => Some(false),
            _ => None,
        },
        SplitBrainPolicy::DiscardSecondary => match (me.primary, peer.primary) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        },
        SplitBrainPolicy::DiscardYoungerPrimary => match me.epoch.cmp(&peer.epoch) {
            Ordering::Greater => Some(true),
            Ordering::Less => Some(false),
            Ordering::Equal => None,
        },
        SplitBrainPolicy::DiscardLeastChanges => {
            match me.changed_blocks.cmp(&peer.changed_blocks) {
                Ordering::Less => Some(true),
                Ordering::Greater => Some(false),
                Ordering::Equal => None,
            }
        }
    }
}

/// An administrator's choice of the survivor of a split brain with one peer
/// (`tandem mirror resolve --keep`), persisted with the copy until the next connect to
/// that peer applies it (one shot). Each is bound to the generation the administrator
/// resolved: if that data moved on meanwhile (a promotion mints a new generation), the
/// choice no longer applies and the copies stay apart as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keep", rename_all = "snake_case")]
pub enum Resolution {
    /// This copy discards its changes (while it is still at `generation`) and becomes a
    /// full sync target of the peer.
    Theirs { generation: u64 },
    /// This copy keeps its data against the peer's copy at `peer_generation`, which
    /// becomes a full sync target.
    Mine { peer_generation: u64 },
}

impl Generations {
    /// The generations this copy shows `peer` while it keeps its data against the
    /// peer's `peer_generation` ([`Resolution::Mine`]): that generation is presented as
    /// superseded (in the history) and the shared base for the peer is left out, so
    /// [`decide`] finds the peer older with no bitmap for the gap: a full resync to it.
    pub fn superseding(&self, peer: &str, peer_generation: u64) -> Generations {
        let mut g = self.clone();
        if peer_generation != 0 && peer_generation != g.current {
            g.bitmap.remove(peer);
            g.history.retain(|h| *h != peer_generation);
            g.history.insert(0, peer_generation);
            g.history.truncate(HISTORY_LEN);
        }
        g
    }

    /// The generation this copy shared with `peer` when it started tracking it, if
    /// this copy changed its data since (its current is another one).
    pub fn moved_on_from(&self, peer: &str) -> Option<u64> {
        let base = self.bitmap_for(peer);
        (base != 0 && base != self.current).then_some(base)
    }
}

/// Why this copy may not become primary, if it may not.
pub fn promotion_refusal(disk: DiskState) -> Option<String> {
    match disk {
        DiskState::UpToDate | DiskState::SyncSource => None,
        DiskState::Outdated => Some(
            "this copy is Outdated: the primary went on writing without it; promote the up-to-date copy or resync first".into(),
        ),
        DiskState::Inconsistent => Some(
            "this copy is Inconsistent (never synced, or its resync was interrupted)".into(),
        ),
        DiskState::SyncTarget => Some("this copy is still receiving a resync".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_crashed_primary_that_returns_is_older_not_split() {
        // n1 was primary at generation 7 and crashed; its restart marked its activity
        // log against n2 (base 7, current still 7). n2 promoted and minted 9.
        let mut n1 = Generations::new();
        n1.current = 7;
        n1.bitmap.insert("n2".into(), 7);
        let mut n2 = Generations::new();
        n2.current = 7;
        n2.diverge(&["n1"], 9);
        let view = |name: &str, g: &Generations, changed: u64, primary: bool| PeerView {
            name: name.into(),
            generations: g.clone(),
            disk: DiskState::UpToDate,
            changed_blocks: changed,
            primary,
            resolving: false,
            epoch: OwnershipEpoch(0),
        };
        let v1 = view("n1", &n1, 12, false);
        let v2 = view("n2", &n2, 40, true);
        assert_eq!(decide(&v1, &v2), SyncDecision::TargetPartial);
        assert_eq!(decide(&v2, &v1), SyncDecision::SourcePartial);
    }

    use super::*;

    fn view(name: &str, g: &Generations, disk: DiskState) -> PeerView {
        PeerView {
            name: name.into(),
            generations: g.clone(),
            disk,
            changed_blocks: 0,
            primary: false,
            resolving: false,
            epoch: OwnershipEpoch(0),
        }
    }

    /// Two copies in sync at generation 100.
    fn pair() -> (Generations, Generations) {
        let mut a = Generations::new();
        let mut b = Generations::new();
        a.current = 100;
        b.current = 100;
        (a, b)
    }

    #[test]
    fn equal_generations_are_in_sync() {
        let (a, b) = pair();
        let d = decide(
            &view("a", &a, DiskState::UpToDate),
            &view("b", &b, DiskState::UpToDate),
        );
        assert_eq!(d, SyncDecision::InSync);
    }

    #[test]
    fn primary_that_went_on_alone_resyncs_partially_and_both_sides_agree() {
        let (mut a, b) = pair();
        a.diverge(&["b"], 200);
        let va = view("a", &a, DiskState::UpToDate);
        let vb = view("b", &b, DiskState::UpToDate);
        assert_eq!(decide(&va, &vb), SyncDecision::SourcePartial);
        assert_eq!(decide(&vb, &va), SyncDecision::TargetPartial);
        // After the resync both are equal again.
        let mut b = b;
        b.synced_with("a", a.current);
        a.synced_with("b", a.current);
        assert_eq!(
            decide(
                &view("a", &a, DiskState::UpToDate),
                &view("b", &b, DiskState::UpToDate)
            ),
            SyncDecision::InSync
        );
    }

    #[test]
    fn a_failover_reverses_the_direction() {
        // a was primary; it died; b promoted without a and wrote.
        let (a, mut b) = pair();
        b.diverge(&["a"], 300);
        let va = view("a", &a, DiskState::UpToDate);
        let vb = view("b", &b, DiskState::UpToDate);
        assert_eq!(
            decide(&va, &vb),
            SyncDecision::TargetPartial,
            "a returns as target"
        );
        assert_eq!(decide(&vb, &va), SyncDecision::SourcePartial);
    }

    #[test]
    fn both_sides_writing_after_a_split_is_split_brain_both_ways() {
        let (mut a, mut b) = pair();
        a.diverge(&["b"], 200);
        b.diverge(&["a"], 300);
        let va = view("a", &a, DiskState::UpToDate);
        let vb = view("b", &b, DiskState::UpToDate);
        assert_eq!(decide(&va, &vb), SyncDecision::SplitBrain);
        assert_eq!(decide(&vb, &va), SyncDecision::SplitBrain);
    }

    #[test]
    fn a_lost_bitmap_means_a_full_resync_not_a_guess() {
        let (mut a, b) = pair();
        a.diverge(&["b"], 200);
        // The bitmap for b was lost (e.g. b was removed and re-added), history remains.
        a.bitmap.clear();
        let va = view("a", &a, DiskState::UpToDate);
        let vb = view("b", &b, DiskState::UpToDate);
        assert_eq!(decide(&va, &vb), SyncDecision::SourceFull);
        assert_eq!(decide(&vb, &va), SyncDecision::TargetFull);
    }

    #[test]
    fn new_or_interrupted_copies_take_the_other_side() {
        let (a, _) = pair();
        let fresh = Generations::new();
        let va = view("a", &a, DiskState::UpToDate);
        let vn = view("n", &fresh, DiskState::Inconsistent);
        assert_eq!(decide(&va, &vn), SyncDecision::SourceFull);
        assert_eq!(decide(&vn, &va), SyncDecision::TargetFull);
        assert_eq!(decide(&vn, &vn.clone()), SyncDecision::Unrelated);
    }

    #[test]
    fn unrelated_data_is_refused() {
        let mut a = Generations::new();
        let mut b = Generations::new();
        a.current = 1;
        b.current = 2;
        assert_eq!(
            decide(
                &view("a", &a, DiskState::UpToDate),
                &view("b", &b, DiskState::UpToDate)
            ),
            SyncDecision::Unrelated
        );
    }

    #[test]
    fn split_brain_policies() {
        let (a, b) = pair();
        let mut va = view("a", &a, DiskState::UpToDate);
        let mut vb = view("b", &b, DiskState::UpToDate);
        assert_eq!(
            resolve_split_brain(SplitBrainPolicy::Disconnect, &va, &vb),
            None
        );
        va.changed_blocks = 10;
        assert_eq!(
            resolve_split_brain(SplitBrainPolicy::DiscardZeroChanges, &va, &vb),
            Some(false)
        );
        vb.changed_blocks = 1;
        assert_eq!(
            resolve_split_brain(SplitBrainPolicy::DiscardZeroChanges, &va, &vb),
            None
        );
        vb.primary = true;
        assert_eq!(
            resolve_split_brain(SplitBrainPolicy::DiscardSecondary, &va, &vb),
            Some(true)
        );
    }

    #[test]
    fn the_younger_primary_and_the_fewer_changes_lose_and_ties_stay_apart() {
        let (a, b) = pair();
        let mut va = view("a", &a, DiskState::UpToDate);
        let mut vb = view("b", &b, DiskState::UpToDate);
        let younger = SplitBrainPolicy::DiscardYoungerPrimary;
        assert_eq!(resolve_split_brain(younger, &va, &vb), None, "equal epochs");
        va.epoch = OwnershipEpoch(7);
        vb.epoch = OwnershipEpoch(5);
        assert_eq!(resolve_split_brain(younger, &va, &vb), Some(true));
        assert_eq!(resolve_split_brain(younger, &vb, &va), Some(false));
        let least = SplitBrainPolicy::DiscardLeastChanges;
        va.changed_blocks = 3;
        vb.changed_blocks = 3;
        assert_eq!(resolve_split_brain(least, &va, &vb), None, "a tie");
        vb.changed_blocks = 9;
        assert_eq!(resolve_split_brain(least, &va, &vb), Some(true));
        assert_eq!(resolve_split_brain(least, &vb, &va), Some(false));
        for p in [younger, least, SplitBrainPolicy::DiscardSecondary] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
    }

    #[test]
    fn a_superseded_generation_makes_the_peer_older_not_split() {
        let (mut a, mut b) = pair();
        a.diverge(&["b"], 200);
        b.diverge(&["a"], 300);
        assert_eq!(a.moved_on_from("b"), Some(100));
        assert_eq!(Generations::new().moved_on_from("b"), None);
        // b keeps its data against a's 200: a is older, with no bitmap for the gap.
        let shown = b.superseding("a", 200);
        let va = view("a", &a, DiskState::UpToDate);
        let vb = view("b", &shown, DiskState::UpToDate);
        assert_eq!(decide(&vb, &va), SyncDecision::SourceFull);
        assert_eq!(decide(&va, &vb), SyncDecision::TargetFull);
        // Bound to a's generation: once a moved on, still a split brain.
        a.diverge(&["b"], 400);
        let va = view("a", &a, DiskState::UpToDate);
        assert_eq!(decide(&vb, &va), SyncDecision::SplitBrain);
        assert_eq!(decide(&va, &vb), SyncDecision::SplitBrain);
    }

    #[test]
    fn only_up_to_date_copies_are_promoted() {
        assert!(promotion_refusal(DiskState::UpToDate).is_none());
        for s in [
            DiskState::Outdated,
            DiskState::Inconsistent,
            DiskState::SyncTarget,
        ] {
            assert!(promotion_refusal(s).is_some(), "{s:?}");
            assert!(!s.promotable());
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut g = Generations::new();
        g.current = 50;
        let minted = HISTORY_LEN as u64 + 6;
        for i in 1..=minted {
            g.diverge(&["b"], i);
        }
        assert_eq!(g.history.len(), HISTORY_LEN);
        assert_eq!(g.history[0], minted - 1, "the newest first");
        assert_eq!(g.bitmap["b"], 50, "tracked from the last shared generation");
    }
}
