//! The connect plan: what two copies of a mirror do once their link is up and both
//! sent their [`CopyState`]. One pure function, [`plan`], of both sides' states and the
//! split-brain policy, returns whether they replicate at all, who resyncs from whom and
//! which blocks, and each side's disk state from then on.
//!
//! The rules, on top of the generations' comparison ([`decide`]):
//! - copies of different sizes or mirrors never connect;
//! - a copy that never held data (generation 0, no history) takes everything;
//! - a primary never becomes a resync target, and two primaries never connect: either is
//!   a split brain, like a secondary holding newer data than a primary;
//! - a split brain is resolved only by the [`SplitBrainPolicy`] or an administrator's
//!   [`Resolution`] (through the state a copy shows, [`advertised`]), never into a
//!   primary;
//! - nothing moves between two secondaries (unless a split brain is being resolved):
//!   a copy takes resyncs from a primary only, which reconciles with every copy when
//!   it is promoted, and only a copy holding every acknowledged write is promoted;
//! - in sync but with dirty blocks on either side (crash-dirty, or ranges a secondary
//!   could not prove when it lost its primary: `mirror::reconcile`): the primary sends;
//! - a sender sends its bitmap for the peer; when the peer has dirty blocks of its own,
//!   the peer first sends its bitmap ([`ConnectPlan::send_bitmap`]) and the sender
//!   resyncs the union ([`Blocks::Union`]), so a crashed primary that returns gets
//!   what changed plus its activity log, not the whole volume; every used block only
//!   when the bitmap for the gap is gone.
//!
//! A copy that becomes primary while connected reconciles the same way, in session:
//! each connected secondary sends its bitmap, and the new primary resyncs the union
//! (an empty resync if both are clean) before the secondary adopts its generation
//! (`replica::Mirror::on_state_update`).
//!
//! Both sides compute the plan independently and agree: each side's
//! [`ConnectPlan::peer_disk`] is what the other's plan sets as its
//! [`ConnectPlan::local_disk`]. `replica::Mirror::on_first_state` applies the plan, and
//! `tests/mirror_sim.rs` drives the same function for both copies.

use crate::mirror::generation::{
    decide, resolve_split_brain, DiskState, PeerView, Resolution, SplitBrainPolicy, SyncDecision,
};
use crate::mirror::wire::compress::Compress;
use crate::mirror::wire::CopyState;

/// Which blocks a resync source sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// The blocks set in its dirty bitmap for the peer.
    Bitmap,
    /// Its bitmap for the peer merged with the peer's for it (sent first).
    Union,
    /// Every used block (the whole bitmap is marked first).
    All,
}

/// This copy's part in a resync right after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Nothing to send (the peer may still send crash-dirty blocks: see [`plan`]).
    None,
    /// This copy is the source: it tracks the peer from its current generation and
    /// sends these blocks (possibly none: the resync still runs to hand the peer the
    /// generation when the peer becomes a sync target).
    Send(Blocks),
    /// This copy is the target: it waits for the peer's resync.
    Receive,
}

/// What this copy does on connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectPlan {
    /// The generations' verdict after the role rules; `SplitBrain` here is one the
    /// policy resolved (into [`Resync::Send`] or [`Resync::Receive`] of every block).
    pub decision: SyncDecision,
    pub resync: Resync,
    /// This copy's disk state from now on (`SyncTarget` is persisted when the resync
    /// begins).
    pub local_disk: DiskState,
    /// The peer's disk state from now on, as its own plan sets it.
    pub peer_disk: DiskState,
    /// This copy sends its bitmap for the peer first: the peer resyncs the union.
    pub send_bitmap: bool,
}

/// Why two copies stay apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("peer copy is {peer_size} bytes of mirror {peer_mirror:?}; this one {size} bytes of {mirror:?}")]
    Mismatch {
        size: u64,
        mirror: String,
        peer_size: u64,
        peer_mirror: String,
    },
    /// Both copies changed since they last shared data, and the policy did not resolve it.
    #[error("split brain: both copies changed since they last shared data")]
    SplitBrain,
    /// No generation in common.
    #[error("the copies have no generation in common (unrelated data)")]
    Unrelated,
}

impl Refusal {
    /// Whether this is shown and raised as a split brain (unrelated data is one too).
    pub fn is_split_brain(&self) -> bool {
        !matches!(self, Refusal::Mismatch { .. })
    }
}

/// The plan of copy `mine` for connecting to copy `theirs` (both as sent on the link).
pub fn plan(
    mine: &CopyState,
    theirs: &CopyState,
    policy: SplitBrainPolicy,
) -> Result<ConnectPlan, Refusal> {
    if mine.size_bytes != theirs.size_bytes || mine.mirror != theirs.mirror {
        return Err(Refusal::Mismatch {
            size: mine.size_bytes,
            mirror: mine.mirror.clone(),
            peer_size: theirs.size_bytes,
            peer_mirror: theirs.mirror.clone(),
        });
    }
    let (me, peer) = (view(mine), view(theirs));
    let local = side(&me, &peer, policy)?;
    let remote = side(&peer, &me, policy)?;
    Ok(ConnectPlan {
        decision: local.decision,
        resync: local.resync,
        local_disk: local.disk,
        peer_disk: remote.disk,
        send_bitmap: remote.resync == Resync::Send(Blocks::Union),
    })
}

/// One side's half of the plan.
struct Side {
    decision: SyncDecision,
    resync: Resync,
    disk: DiskState,
}

fn view(s: &CopyState) -> PeerView {
    PeerView {
        name: s.node.clone(),
        generations: s.generations.clone(),
        disk: s.disk,
        changed_blocks: s.changed_blocks,
        primary: s.primary,
        resolving: s.resolving,
        epoch: s.epoch,
    }
}

fn side(me: &PeerView, peer: &PeerView, policy: SplitBrainPolicy) -> Result<Side, Refusal> {
    use SyncDecision::*;
    let decision = with_roles(me, peer, decide_with_fresh(me, peer));
    let send_bitmap_or_union = if peer.changed_blocks > 0 {
        Blocks::Union
    } else {
        Blocks::Bitmap
    };
    let (resync, disk) = match decision {
        InSync => {
            let disk = if me.disk == DiskState::Outdated && peer.disk.promotable() {
                DiskState::UpToDate
            } else {
                me.disk
            };
            let dirty = me.changed_blocks > 0 || peer.changed_blocks > 0;
            let resync = if dirty && in_sync_sender(me, peer) {
                Resync::Send(send_bitmap_or_union)
            } else {
                Resync::None
            };
            (resync, disk)
        }
        // The peer may have changes of its own (a crashed primary's activity log, a
        // secondary's unproven ranges): they come over first, and the union goes.
        SourcePartial => (Resync::Send(send_bitmap_or_union), me.disk),
        SourceFull => (Resync::Send(Blocks::All), me.disk),
        TargetPartial | TargetFull => (Resync::Receive, DiskState::SyncTarget),
        SplitBrain => match resolve_split_brain(policy, me, peer) {
            Some(false) if !peer.primary => (Resync::Send(Blocks::All), me.disk),
            Some(true) if !me.primary => (Resync::Receive, DiskState::SyncTarget),
            _ => return Err(Refusal::SplitBrain),
        },
        Unrelated => return Err(Refusal::Unrelated),
    };
    let (resync, disk) = no_resync_between_secondaries(me, peer, decision, resync, disk);
    Ok(Side {
        decision,
        resync,
        disk,
    })
}

/// Between two secondaries nothing moves, except to resolve a split brain: a copy
/// takes resyncs from a primary only, which reconciles with every copy when it is
/// promoted (and only a copy holding every acknowledged write is promoted). Which of
/// two secondaries holds the acknowledged writes cannot be told from the copies: a
/// primary that crashed and returns has them in its crash-dirty extents while an async
/// copy that followed it is further along the write stream and lacks them (found in the
/// lab: the async copy overwrote them, and a copy a primary was resyncing took a
/// secondary's older blocks in the simulation).
fn no_resync_between_secondaries(
    me: &PeerView,
    peer: &PeerView,
    decision: SyncDecision,
    resync: Resync,
    disk: DiskState,
) -> (Resync, DiskState) {
    // Not even to a copy without usable data (the simulation: a sync target took an
    // async secondary's blocks while the primary resynced it, and was promoted).
    let resolving = me.resolving || peer.resolving;
    if me.primary || peer.primary || decision == SyncDecision::SplitBrain || resolving {
        return (resync, disk);
    }
    match resync {
        Resync::Send(_) => (Resync::None, disk),
        Resync::Receive => (Resync::None, me.disk),
        Resync::None => (resync, disk),
    }
}

/// [`decide`] with the one rule it leaves to the caller: a copy that never held data
/// (generation 0, no history) takes everything from the other.
fn decide_with_fresh(me: &PeerView, peer: &PeerView) -> SyncDecision {
    let fresh = |v: &PeerView| v.generations.current == 0 && v.generations.history.is_empty();
    match (fresh(me), fresh(peer)) {
        (true, false) => SyncDecision::TargetFull,
        (false, true) => SyncDecision::SourceFull,
        _ => decide(me, peer),
    }
}

/// The roles overrule the generations: a primary is never a target, and a secondary
/// newer than a primary means both moved on.
fn with_roles(me: &PeerView, peer: &PeerView, decision: SyncDecision) -> SyncDecision {
    use SyncDecision::*;
    let split = match decision {
        _ if me.primary && peer.primary => true,
        TargetFull | TargetPartial => me.primary,
        SourceFull | SourcePartial => peer.primary,
        _ => false,
    };
    if split {
        SplitBrain
    } else {
        decision
    }
}

/// In sync with dirty blocks: the primary sends, else (resolving a split brain) the
/// first name.
fn in_sync_sender(me: &PeerView, peer: &PeerView) -> bool {
    if me.primary != peer.primary {
        me.primary
    } else {
        me.name < peer.name
    }
}

/// The state this copy sends `peer` and plans with, given its pending [`Resolution`]
/// for that peer (`tandem mirror resolve --keep`). Both sides then run [`plan`] over
/// the same two states and agree, and the wire format stays as it is:
/// - discarding its data ([`Resolution::Theirs`]), the copy shows itself Inconsistent,
///   so both plans make it a full sync target; void while it is primary or once its
///   data moved on from the resolved generation;
/// - keeping its data ([`Resolution::Mine`]), the copy shows the peer's resolved
///   generation as superseded ([`Generations::superseding`]), so both plans find the
///   peer older with no bitmap for the gap: a full resync to it; void once the peer's
///   data moved on (still a split brain), and a primary peer is still never a target.
///
/// [`Generations::superseding`]: crate::mirror::generation::Generations::superseding
pub fn advertised(mut state: CopyState, peer: &str, resolution: Option<Resolution>) -> CopyState {
    match resolution {
        Some(Resolution::Theirs { generation })
            if !state.primary && state.generations.current == generation =>
        {
            state.disk = DiskState::Inconsistent;
            state.resolving = true;
        }
        Some(Resolution::Mine { peer_generation }) => {
            state.generations = state.generations.superseding(peer, peer_generation);
            state.resolving = true;
        }
        _ => {}
    }
    state
}

/// Whether following `plan` discards changes of this copy's own: it becomes a resync
/// target while usable and holding data it wrote since it last shared a generation
/// with `peer` (a split brain resolved by the policy or by an administrator). `mine` is
/// this copy's own state, not as [`advertised`]. Such a copy saves the blocks it wrote
/// apart before anything is overwritten (`replica::dump`).
pub fn discards_changes(plan: &ConnectPlan, mine: &CopyState, peer: &str) -> bool {
    plan.resync == Resync::Receive
        && matches!(mine.disk, DiskState::UpToDate | DiskState::Outdated)
        && mine.generations.moved_on_from(peer).is_some()
}

/// The other side of [`discards_changes`]: whether following `plan` overwrites changes
/// the peer made since it last shared a generation with this copy (`me`): this copy
/// sends, and the peer (`theirs`, as it showed itself) moved on from that generation.
pub fn peer_discards_changes(plan: &ConnectPlan, theirs: &CopyState, me: &str) -> bool {
    matches!(plan.resync, Resync::Send(_)) && theirs.generations.moved_on_from(me).is_some()
}

/// What the accepting side offers a caller from `caller` in the handshake: zstd when a
/// link configured to a peer at that address asks for it, else nothing (the caller
/// asks for what its own side of the link wants; the handshake keeps what both offer).
/// The listener learns who is calling only from the handshake, so the address decides.
pub fn accepted_compression(
    links: impl IntoIterator<Item = (std::net::IpAddr, Compress)>,
    caller: std::net::IpAddr,
) -> Compress {
    let wanted = links
        .into_iter()
        .any(|(ip, c)| ip == caller && c == Compress::Zstd);
    if wanted {
        Compress::Zstd
    } else {
        Compress::None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_caller_is_offered_compression_when_a_link_to_its_address_asks_for_it() {
        use super::{accepted_compression, Compress};
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let links = [
            (ip("10.0.0.2"), Compress::Zstd),
            (ip("10.0.0.3"), Compress::None),
            // Two peers on one host (loopback tests): one asking is enough.
            (ip("127.0.0.1"), Compress::None),
            (ip("127.0.0.1"), Compress::Zstd),
        ];
        assert_eq!(accepted_compression(links, ip("10.0.0.2")), Compress::Zstd);
        assert_eq!(accepted_compression(links, ip("10.0.0.3")), Compress::None);
        assert_eq!(accepted_compression(links, ip("127.0.0.1")), Compress::Zstd);
        assert_eq!(accepted_compression(links, ip("10.9.9.9")), Compress::None);
    }

    use super::*;
    use crate::mirror::generation::Generations;

    fn state(node: &str, current: u64, disk: DiskState) -> CopyState {
        let mut generations = Generations::new();
        generations.current = current;
        CopyState {
            node: node.into(),
            mirror: "data".into(),
            size_bytes: 1 << 20,
            generations,
            disk,
            primary: false,
            changed_blocks: 0,
            epoch: crate::mirror::generation::OwnershipEpoch(0),
            resolving: false,
        }
    }

    /// Both sides' plans, checked to agree with each other.
    fn both(
        a: &CopyState,
        b: &CopyState,
        policy: SplitBrainPolicy,
    ) -> Result<(ConnectPlan, ConnectPlan), Refusal> {
        let pa = plan(a, b, policy);
        let pb = plan(b, a, policy);
        assert_eq!(
            pa.as_ref().err(),
            pb.as_ref().err(),
            "both sides refuse alike"
        );
        let (pa, pb) = (pa?, pb?);
        assert_eq!(pa.peer_disk, pb.local_disk);
        assert_eq!(pb.peer_disk, pa.local_disk);
        let pair = (pa.resync, pb.resync);
        assert!(
            matches!(
                pair,
                (Resync::None, Resync::None)
                    | (Resync::Send(_), Resync::Receive)
                    | (Resync::Receive, Resync::Send(_))
            ) || (pa.decision == SyncDecision::InSync
                && matches!(
                    pair,
                    (Resync::Send(_), Resync::None) | (Resync::None, Resync::Send(_))
                )),
            "{pair:?}"
        );
        Ok((pa, pb))
    }

    /// `a` went on writing without `b` (primary, minted 200 over the shared 100).
    fn a_ahead() -> (CopyState, CopyState) {
        let mut a = state("a", 100, DiskState::UpToDate);
        let b = state("b", 100, DiskState::UpToDate);
        a.generations.diverge(&["b"], 200);
        a.primary = true;
        a.changed_blocks = 5;
        (a, b)
    }

    #[test]
    fn equal_copies_just_replicate() {
        let a = state("a", 100, DiskState::UpToDate);
        let b = state("b", 100, DiskState::UpToDate);
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pa.decision, SyncDecision::InSync);
        assert_eq!((pa.resync, pb.resync), (Resync::None, Resync::None));
        assert_eq!(pa.local_disk, DiskState::UpToDate);
    }

    #[test]
    fn a_primary_that_went_on_sends_its_bitmap_and_the_peer_becomes_target() {
        let (a, b) = a_ahead();
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert!(!peer_discards_changes(&pa, &b, "a"), "b only missed writes");
        assert!(!discards_changes(&pb, &b, "a"));
        assert_eq!(pa.decision, SyncDecision::SourcePartial);
        assert_eq!(pa.resync, Resync::Send(Blocks::Bitmap));
        assert_eq!(pa.peer_disk, DiskState::SyncTarget);
        assert_eq!(pb.resync, Resync::Receive);
        assert_eq!(pa.local_disk, DiskState::UpToDate);
    }

    #[test]
    fn a_target_with_dirty_blocks_of_its_own_sends_them_and_gets_the_union() {
        let (a, mut b) = a_ahead();
        b.changed_blocks = 3;
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pa.resync, Resync::Send(Blocks::Union));
        assert!(pb.send_bitmap && !pa.send_bitmap);
    }

    #[test]
    fn nothing_moves_between_two_secondaries_until_a_primary_reconciles_them() {
        // Found in the lab: a crashed primary (a, crash-dirty extents holding writes it
        // acknowledged) returns next to the async copy that followed it (b, further
        // along the write stream): b's blocks would have overwritten a's.
        let mut a = state("a", 100, DiskState::UpToDate);
        let mut b = state("b", 100, DiskState::UpToDate);
        a.changed_blocks = 2;
        b.changed_blocks = 9;
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!((pa.resync, pb.resync), (Resync::None, Resync::None));
        assert!(!pa.send_bitmap && !pb.send_bitmap);
        // Newer generations between secondaries: nothing moves either.
        let (mut n, mut o) = a_ahead();
        n.primary = false;
        n.changed_blocks = 0;
        o.changed_blocks = 0;
        let (pn, po) = both(&n, &o, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!((pn.resync, po.resync), (Resync::None, Resync::None));
        assert_eq!(po.local_disk, DiskState::UpToDate);
        // Nor to a copy without usable data: only a primary resyncs it.
        o.disk = DiskState::Inconsistent;
        let (pn, po) = both(&n, &o, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!((pn.resync, po.resync), (Resync::None, Resync::None));
        assert_eq!(po.local_disk, DiskState::Inconsistent);
    }

    #[test]
    fn crash_dirty_blocks_in_sync_go_from_the_primary() {
        let mut a = state("a", 100, DiskState::UpToDate);
        let mut b = state("b", 100, DiskState::UpToDate);
        b.changed_blocks = 4;
        a.primary = true;
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(
            pa.resync,
            Resync::Send(Blocks::Union),
            "b sends its blocks first"
        );
        assert!(pb.send_bitmap);
        assert_eq!(pb.resync, Resync::None);
        a.primary = false;
        b.primary = true;
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(
            (pa.resync, pb.resync),
            (Resync::None, Resync::Send(Blocks::Bitmap))
        );
        // The receiving side stays promotable-looking until the resync begins.
        assert_eq!(pa.local_disk, DiskState::UpToDate);
        a.changed_blocks = 1;
        let (_, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pb.resync, Resync::Send(Blocks::Union));
    }

    #[test]
    fn an_outdated_copy_in_sync_with_an_up_to_date_one_is_up_to_date_again() {
        let a = state("a", 100, DiskState::UpToDate);
        let b = state("b", 100, DiskState::Outdated);
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pb.local_disk, DiskState::UpToDate);
        assert_eq!(pa.peer_disk, DiskState::UpToDate);
        let c = state("c", 100, DiskState::Outdated);
        let (pb, _) = both(&b, &c, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(
            pb.local_disk,
            DiskState::Outdated,
            "two outdated copies stay so"
        );
    }

    #[test]
    fn a_fresh_copy_takes_everything() {
        let mut a = state("a", 100, DiskState::UpToDate);
        a.primary = true;
        let n = state("n", 0, DiskState::UpToDate);
        let (pa, pn) = both(&a, &n, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pa.resync, Resync::Send(Blocks::All));
        assert_eq!(pn.local_disk, DiskState::SyncTarget);
    }

    #[test]
    fn a_primary_is_never_a_target_and_two_primaries_never_connect() {
        let (mut a, mut b) = a_ahead();
        a.primary = false;
        b.primary = true;
        assert_eq!(
            both(&a, &b, SplitBrainPolicy::Disconnect).unwrap_err(),
            Refusal::SplitBrain
        );
        let (mut a, mut b) = (
            state("a", 1, DiskState::UpToDate),
            state("b", 1, DiskState::UpToDate),
        );
        a.primary = true;
        b.primary = true;
        assert_eq!(
            both(&a, &b, SplitBrainPolicy::DiscardZeroChanges).unwrap_err(),
            Refusal::SplitBrain
        );
    }

    #[test]
    fn a_split_brain_stays_apart_unless_the_policy_picks_a_secondary() {
        let (mut a, mut b) = a_ahead();
        b.generations.diverge(&["a"], 300);
        b.changed_blocks = 0;
        let err = both(&a, &b, SplitBrainPolicy::Disconnect).unwrap_err();
        assert!(err.is_split_brain());
        // b changed nothing: it loses; a (primary) sends everything.
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::DiscardZeroChanges).unwrap();
        assert_eq!(pa.decision, SyncDecision::SplitBrain);
        assert_eq!(pa.resync, Resync::Send(Blocks::All));
        assert_eq!(
            (pb.resync, pb.local_disk),
            (Resync::Receive, DiskState::SyncTarget)
        );
        assert_eq!(pa.peer_disk, DiskState::SyncTarget);
        // The policy would discard the primary's changes: refused.
        a.changed_blocks = 0;
        b.changed_blocks = 7;
        assert_eq!(
            both(&a, &b, SplitBrainPolicy::DiscardZeroChanges).unwrap_err(),
            Refusal::SplitBrain
        );
    }

    #[test]
    fn unrelated_or_mismatched_copies_are_refused() {
        let a = state("a", 1, DiskState::UpToDate);
        let b = state("b", 2, DiskState::UpToDate);
        assert_eq!(
            both(&a, &b, SplitBrainPolicy::Disconnect).unwrap_err(),
            Refusal::Unrelated
        );
        let mut c = state("c", 1, DiskState::UpToDate);
        c.size_bytes = 4096;
        let err = plan(&a, &c, SplitBrainPolicy::Disconnect).unwrap_err();
        assert!(!err.is_split_brain());
        assert!(err.to_string().contains("4096 bytes"), "{err}");
    }

    /// Two copies that both wrote apart from the shared 100: a (primary at epoch 4, 5
    /// blocks) and b (secondary now, last promoted at epoch 6, 2 blocks).
    fn split() -> (CopyState, CopyState) {
        let (mut a, mut b) = a_ahead();
        a.epoch = crate::mirror::generation::OwnershipEpoch(4);
        b.generations.diverge(&["a"], 300);
        b.changed_blocks = 2;
        b.epoch = crate::mirror::generation::OwnershipEpoch(6);
        (a, b)
    }

    #[test]
    fn a_resolution_on_either_side_makes_both_plans_agree_on_a_full_resync() {
        let (mut a, b) = split();
        a.primary = false;
        // On b: "discard my data toward a".
        let theirs = Resolution::Theirs {
            generation: b.generations.current,
        };
        let shown_b = advertised(b.clone(), "a", Some(theirs));
        let (pa, pb) = both(&a, &shown_b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pa.resync, Resync::Send(Blocks::All));
        assert_eq!(
            (pb.resync, pb.local_disk),
            (Resync::Receive, DiskState::SyncTarget)
        );
        assert!(
            discards_changes(&pb, &b, "a"),
            "b saves what it wrote apart"
        );
        assert!(!discards_changes(&pa, &a, "b"));
        assert!(peer_discards_changes(&pa, &shown_b, "a"));
        assert!(!peer_discards_changes(&pb, &a, "b"));
        // On a: "keep mine against b".
        let mine = Resolution::Mine {
            peer_generation: b.generations.current,
        };
        let shown_a = advertised(a.clone(), "b", Some(mine));
        let (pa, pb) = both(&shown_a, &b, SplitBrainPolicy::Disconnect).unwrap();
        assert_eq!(pa.resync, Resync::Send(Blocks::All));
        assert_eq!(pb.resync, Resync::Receive);
        assert!(discards_changes(&pb, &b, "a"));
        assert!(peer_discards_changes(&pa, &b, "a"));
        // No resolution: still apart.
        assert!(both(&a, &b, SplitBrainPolicy::Disconnect).is_err());
    }

    #[test]
    fn a_stale_or_primary_resolution_is_void() {
        let (a, mut b) = split();
        // b was told to discard generation 300 but was promoted since (a new one).
        let theirs = Resolution::Theirs { generation: 300 };
        b.generations.diverge(&["a"], 301);
        let shown_b = advertised(b.clone(), "a", Some(theirs));
        assert_eq!(shown_b, b);
        // A primary never shows itself Inconsistent.
        let (mut c, _) = split();
        c.primary = true;
        let gen = c.generations.current;
        let shown = advertised(c.clone(), "b", Some(Resolution::Theirs { generation: gen }));
        assert_eq!(shown.disk, DiskState::UpToDate);
        // Keeping against a generation the peer left: still a split brain.
        let mine = Resolution::Mine {
            peer_generation: 300,
        };
        let shown_a = advertised(a.clone(), "b", Some(mine));
        assert_eq!(
            both(&shown_a, &b, SplitBrainPolicy::Disconnect).unwrap_err(),
            Refusal::SplitBrain
        );
        // Keeping against a primary: it is never the target.
        let (mut a, mut b) = split();
        a.primary = false;
        b.primary = true;
        let mine = Resolution::Mine {
            peer_generation: b.generations.current,
        };
        let shown_a = advertised(a, "b", Some(mine));
        assert!(both(&shown_a, &b, SplitBrainPolicy::Disconnect).is_err());
    }

    #[test]
    fn the_younger_primary_or_the_fewer_changes_lose_but_never_a_primary() {
        let (mut a, b) = split();
        a.primary = false;
        // b was promoted later (epoch 6 > 4): b loses.
        let (pa, pb) = both(&a, &b, SplitBrainPolicy::DiscardYoungerPrimary).unwrap();
        assert_eq!(pa.decision, SyncDecision::SplitBrain);
        assert_eq!(
            (pa.resync, pb.resync),
            (Resync::Send(Blocks::All), Resync::Receive)
        );
        assert!(discards_changes(&pb, &b, "a"));
        // b changed fewer blocks (2 < 5): b loses.
        let (_, pb) = both(&a, &b, SplitBrainPolicy::DiscardLeastChanges).unwrap();
        assert_eq!(pb.resync, Resync::Receive);
        // A tie stays apart.
        let mut tie = b.clone();
        tie.changed_blocks = a.changed_blocks;
        assert!(both(&a, &tie, SplitBrainPolicy::DiscardLeastChanges).is_err());
        let mut same = b.clone();
        same.epoch = a.epoch;
        assert!(both(&a, &same, SplitBrainPolicy::DiscardYoungerPrimary).is_err());
        // b is primary now: never its data, whatever the policy says.
        let mut b = b;
        b.primary = true;
        for p in [
            SplitBrainPolicy::DiscardYoungerPrimary,
            SplitBrainPolicy::DiscardLeastChanges,
        ] {
            assert_eq!(both(&a, &b, p).unwrap_err(), Refusal::SplitBrain, "{p:?}");
        }
    }
}
