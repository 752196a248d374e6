//! Split-brain recovery of a [`Mirror`]: the administrator's `tandem mirror resolve
//! NAME --keep NODE` (DRBD's "discard my data"), the connect step that saves a losing
//! copy's changed blocks ([`super::dump`]) before anything overwrites them, the events
//! of every resolution, and the slow retry of a link that stays in split brain.
//!
//! The decision itself is pure and lives in the connect plan: a pending
//! [`Resolution`] changes only the state this copy shows the peer
//! ([`connect::advertised`]), so both sides run the same [`connect::plan`] over the same
//! two states and agree without a new wire field. It is persisted
//! (`resolutions.json`) and holds until it took effect: it is dropped at a connect to
//! that peer once the data it is bound to is gone (the discarded copy finished its
//! resync and took the survivor's generation, or moved on otherwise), so a resync cut
//! short, or refused because the dump could not be written, is taken up again.
//!
//! Run on the node to keep, it records "keep mine" against every peer in split brain
//! with it (each bound to the generation that peer last showed); run on another node,
//! it records "discard mine" toward the survivor (bound to this copy's generation)
//! and writes the dump right away, so a dump that cannot be written refuses the command.
//! A link in split brain retries every [`SPLIT_BRAIN_RETRY`], so a resolution recorded
//! on either side reaches the other without restarting anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::core::EpochGuard;
use super::dump::{self, DumpError, DumpFile, DumpHeader, DumpInfo};
use super::{Conn, Mirror, MirrorError, PeerState};
use crate::event::{unix_ms, EventKind};
use crate::mirror::bitmap::BLOCK_BYTES;
use crate::mirror::connect::{self, ConnectPlan};
use crate::mirror::generation::{DiskState, OwnershipEpoch, Resolution, SyncDecision};
use crate::mirror::wire::{CopyState, Frame, MAX_DATA};

/// How often a link in split brain tries again (each try plans anew; a resolution
/// recorded on either side then connects).
pub const SPLIT_BRAIN_RETRY: Duration = Duration::from_secs(2);
/// The `resolved_by` of an administrator's resolution (the policies use their names).
const ADMINISTRATOR: &str = "administrator";

/// The split-brain bookkeeping of one peer link (part of its locked state).
#[derive(Debug, Default)]
pub(super) struct PeerSplit {
    /// The state the peer sent on the last connect that planned.
    seen: Option<CopyState>,
    /// The last reason reported for staying apart (reported once).
    reported: Option<String>,
    /// The last resolution reported (reported once while it is retried).
    announced: Option<String>,
}

impl PeerSplit {
    /// Records `reason` for staying apart; true if it is news.
    pub(super) fn report(&mut self, reason: &str) -> bool {
        self.reported.replace(reason.to_string()).as_deref() != Some(reason)
    }

    /// Records a resolution reported as `key`; true if it is news.
    fn announce(&mut self, key: String) -> bool {
        self.announced.replace(key.clone()) != Some(key)
    }
}

/// Whether a resolution is spent or void: this copy's data (at `current`) left the
/// generation it would discard, or the peer's (at `peer_current`) left the one it would
/// lose (after the resync, both are the survivor's).
fn spent(r: Resolution, current: u64, peer_current: u64) -> bool {
    match r {
        Resolution::Theirs { generation } => generation != current,
        Resolution::Mine { peer_generation } => peer_generation != peer_current,
    }
}

impl PeerState {
    /// An administrative down that still retries: a split brain waits for a resolution
    /// on either side.
    pub(super) fn held_down(&self) -> bool {
        self.admin_down && self.conn != Conn::SplitBrain
    }
}

/// Whether `why` keeps a link in split brain (shown, reported and retried as one).
pub(super) fn is_split_brain(why: &MirrorError) -> bool {
    match why {
        MirrorError::Connect(r) => r.is_split_brain(),
        MirrorError::Dump(_) => true,
        _ => false,
    }
}

/// What this side of a connect resolves, as the events and the dump need it.
struct Outcome {
    plan: ConnectPlan,
    /// This copy loses its changes (and saves them first).
    discards: bool,
    /// This copy keeps its data against a peer that loses its changes.
    keeps: bool,
    resolved_by: String,
}

impl Mirror {
    /// `tandem mirror resolve NAME --keep NODE`: the copy on `keep` survives the split
    /// brain; every copy in split brain with it discards its changes and becomes a full
    /// sync target of it at the next connect (which starts now). Refused unless this
    /// copy is in split brain with `keep` (or, on `keep` itself, with some peer), and if
    /// a copy to discard is primary.
    pub async fn resolve(&self, keep: &str) -> Result<(), MirrorError> {
        if keep == self.spec.local_node {
            return self.keep_mine().await;
        }
        self.peer_names(Some(keep))?;
        let (generation, shared) = {
            let st = self.lock();
            let p = st
                .peers
                .get(keep)
                .ok_or_else(|| MirrorError::UnknownPeer(keep.into()))?;
            if p.conn != Conn::SplitBrain {
                return Err(MirrorError::Refused(format!(
                    "this copy is not in split brain with {keep}"
                )));
            }
            if st.primary {
                return Err(MirrorError::Refused(
                    "this copy is primary: its data is never discarded (stop its group first)"
                        .into(),
                ));
            }
            (st.gens.current, st.gens.moved_on_from(keep))
        };
        if shared.is_some() {
            self.save_discarded(keep, ADMINISTRATOR).await?;
        }
        self.record(keep, Some(Resolution::Theirs { generation }))
            .await?;
        tracing::warn!(%keep, "split brain resolved by the administrator: discarding this copy's changes");
        self.connect(Some(keep)).await
    }

    /// `resolve --keep <this node>`: "keep mine" against every peer in split brain.
    async fn keep_mine(&self) -> Result<(), MirrorError> {
        let victims: Vec<(String, u64)> = {
            let st = self.lock();
            let mut victims = Vec::new();
            for (name, p) in st.peers.iter().filter(|(_, p)| p.conn == Conn::SplitBrain) {
                let Some(seen) = &p.split.seen else {
                    continue;
                };
                if seen.primary || p.peer_primary {
                    return Err(MirrorError::Refused(format!(
                        "{name} is primary: its data is never discarded (stop its group first)"
                    )));
                }
                victims.push((name.clone(), seen.generations.current));
            }
            victims
        };
        if victims.is_empty() {
            return Err(MirrorError::Refused(format!(
                "this copy ({}) is not in split brain with any peer",
                self.spec.local_node
            )));
        }
        for (peer, peer_generation) in &victims {
            let mine = Resolution::Mine {
                peer_generation: *peer_generation,
            };
            self.record(peer, Some(mine)).await?;
            tracing::warn!(%peer, "split brain resolved by the administrator: keeping this copy");
        }
        for (peer, _) in &victims {
            self.connect(Some(peer)).await?;
        }
        Ok(())
    }

    /// Persists a resolution toward `peer` (replacing any earlier one), or drops it.
    async fn record(&self, peer: &str, r: Option<Resolution>) -> Result<(), MirrorError> {
        let (meta, peer) = (self.meta.clone(), peer.to_string());
        tokio::task::spawn_blocking(move || meta.set_resolution(&peer, r))
            .await
            .map_err(|_| MirrorError::Shutdown)??;
        Ok(())
    }

    /// The connect step after the epoch check: plans, saves what this copy is about to
    /// lose (refusing the connect if that fails), applies the plan
    /// ([`Mirror::on_first_state`]), consumes a resolution and reports it.
    pub(crate) async fn connect_planned(
        &self,
        peer: &str,
        theirs: &CopyState,
        tx: mpsc::UnboundedSender<Frame>,
        end: Arc<Notify>,
    ) -> Result<u64, MirrorError> {
        let current = self.lock().gens.current;
        if let Some(r) = self.meta.resolution(peer) {
            if spent(r, current, theirs.generations.current) {
                if let Err(e) = self.record(peer, None).await {
                    tracing::error!(error = %e, "cannot drop a spent split-brain resolution");
                }
            }
        }
        let outcome = {
            let mut st = self.lock();
            st.peer(peer)?.split.seen = Some(theirs.clone());
            let shown = self.copy_state(&st, peer);
            let mut own = shown.clone();
            own.generations = st.gens.clone();
            own.disk = match st.disk {
                DiskState::SyncSource => DiskState::UpToDate,
                d => d,
            };
            let plan = connect::plan(&shown, theirs, self.spec.split_brain)?;
            let resolved_by = if plan.decision == SyncDecision::SplitBrain {
                self.spec.split_brain.name().to_string()
            } else {
                ADMINISTRATOR.to_string()
            };
            Outcome {
                discards: connect::discards_changes(&plan, &own, peer),
                keeps: connect::peer_discards_changes(&plan, theirs, &self.spec.local_node),
                plan,
                resolved_by,
            }
        };
        let mut dumped = String::new();
        if outcome.discards {
            dumped = self.dump_once(peer, &outcome.resolved_by).await?;
        }
        let discarded_blocks = self.discarded_blocks(peer, theirs, &outcome);
        let id = self.on_first_state(peer, theirs, tx, end)?;
        if outcome.discards {
            // After the plan (which must see the epoch this copy showed the peer) and
            // before the session applies anything.
            self.follow_survivor(theirs.epoch).await;
        }
        self.after_connect(peer);
        if outcome.discards || outcome.keeps {
            let (kept, discarded) = if outcome.discards {
                (peer.to_string(), self.spec.local_node.clone())
            } else {
                (self.spec.local_node.clone(), peer.to_string())
            };
            let key = format!(
                "{} {kept} {discarded} {discarded_blocks}",
                outcome.resolved_by
            );
            let news = self
                .lock()
                .peers
                .get_mut(peer)
                .is_some_and(|p| p.split.announce(key));
            if !news {
                return Ok(id);
            }
            tracing::warn!(plan = ?outcome.plan, %kept, %discarded, by = %outcome.resolved_by, "split brain resolved");
            self.emit(
                EventKind::MirrorSplitBrainResolved,
                &[
                    ("peer", peer.to_string()),
                    ("policy", outcome.resolved_by.clone()),
                    ("kept", kept),
                    ("discarded", discarded),
                    ("blocks", discarded_blocks.to_string()),
                    ("dump", dumped),
                ],
            );
        }
        Ok(id)
    }

    /// A copy that discards its data for the survivor's takes the survivor's ownership
    /// epoch as the highest it followed, when it had followed (or been promoted at) a
    /// newer one during the split: it gives up that epoch's data, and the epoch rule
    /// would otherwise refuse every resync frame of the survivor. Persisted before any
    /// frame of the session is applied, with no frame of another session being applied.
    async fn follow_survivor(&self, epoch: OwnershipEpoch) {
        let _exclusive = self.epoch_gate.write().await;
        {
            let mut st = self.lock();
            let highest = st.epoch.highest();
            if st.primary || highest <= epoch {
                return;
            }
            tracing::warn!(%highest, survivor = %epoch, "discarding this copy's data: following the survivor's older ownership epoch");
            st.epoch = EpochGuard::new(epoch);
        }
        if let Err(e) = self.save_copy().await {
            tracing::error!(error = %e, "cannot persist the survivor's ownership epoch");
        }
    }

    /// Blocks the losing side changed since the split (this copy's bitmap for the
    /// peer, or what the peer said it changed).
    fn discarded_blocks(&self, peer: &str, theirs: &CopyState, o: &Outcome) -> u64 {
        if o.discards {
            self.lock()
                .peers
                .get(peer)
                .map(|p| p.core.bitmap().dirty_blocks())
                .unwrap_or(0)
        } else {
            theirs.changed_blocks
        }
    }

    /// A connect that followed a plan: the link is no longer held down (it was after a
    /// split brain), and the next refusal is news again.
    fn after_connect(&self, peer: &str) {
        if let Some(p) = self.lock().peers.get_mut(peer) {
            p.split.reported = None;
            p.admin_down = false;
        }
    }

    /// Saves the blocks this copy wrote apart from `survivor` unless a dump of this
    /// very generation for it exists already (written by `resolve`). Returns its name.
    async fn dump_once(&self, survivor: &str, by: &str) -> Result<String, MirrorError> {
        let generation = format!("{:016x}", self.lock().gens.current);
        let existing = self.split_brain_dumps().await.unwrap_or_default();
        if let Some(d) = existing
            .iter()
            .find(|d| d.header.survivor == survivor && d.header.generation == generation)
        {
            return Ok(d.name.clone());
        }
        self.save_discarded(survivor, by).await
    }

    /// Writes the dump of the blocks this copy changed apart from `survivor` (its dirty
    /// bitmap for it), fsynced, before anything overwrites them. Returns its file name.
    async fn save_discarded(&self, survivor: &str, by: &str) -> Result<String, MirrorError> {
        let (header, runs) = {
            let st = self.lock();
            let p = st.peer_ref(survivor)?;
            let bitmap = p.core.bitmap();
            let mut runs = Vec::new();
            let mut from = 0;
            let max = MAX_DATA as u64 / BLOCK_BYTES;
            while let Some((first, n)) = bitmap.next_dirty_run(from, max) {
                let offset = first * BLOCK_BYTES;
                let len = (n * BLOCK_BYTES).min(self.size.saturating_sub(offset));
                runs.push((offset, len));
                from = first + n;
            }
            let header = DumpHeader {
                format: dump::FORMAT.into(),
                version: 1,
                mirror: self.spec.name.clone(),
                node: self.spec.local_node.clone(),
                survivor: survivor.to_string(),
                resolved_by: by.to_string(),
                generation: format!("{:016x}", st.gens.current),
                shared_generation: format!("{:016x}", st.gens.moved_on_from(survivor).unwrap_or(0)),
                block_bytes: BLOCK_BYTES,
                runs: runs.len() as u64,
                bytes: runs.iter().map(|r| r.1).sum(),
                created_ms: unix_ms(),
            };
            (header, runs)
        };
        let name = format!("{}-{survivor}.dump", header.created_ms);
        match self.write_dump(&name, &header, &runs).await {
            Ok(()) => {
                tracing::info!(dump = %name, runs = header.runs, bytes = header.bytes, "saved the blocks this copy discards");
                Ok(name)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot save the blocks this copy would discard: staying apart");
                Err(e)
            }
        }
    }

    async fn write_dump(
        &self,
        name: &str,
        header: &DumpHeader,
        runs: &[(u64, u64)],
    ) -> Result<(), MirrorError> {
        let dir = self.meta.dir().to_owned();
        let (n, h) = (name.to_string(), header.clone());
        let mut file = blocking(move || DumpFile::create(&dir, &n, &h)).await?;
        for &(offset, len) in runs {
            let data = match crate::mirror::Export::read(&self.volume, offset, len as u32).await {
                Ok(d) => d,
                Err(e) => {
                    file.abandon();
                    return Err(MirrorError::Export(e));
                }
            };
            file = blocking(move || match file.append(offset, &data) {
                Ok(()) => Ok(file),
                Err(e) => {
                    file.abandon();
                    Err(e)
                }
            })
            .await?;
        }
        blocking(move || file.finish()).await?;
        Ok(())
    }

    /// The split-brain dumps of this copy, oldest first.
    pub async fn split_brain_dumps(&self) -> Result<Vec<DumpInfo>, MirrorError> {
        let dir = self.meta.dir().to_owned();
        blocking(move || dump::list(&dir)).await
    }

    /// One dump's bytes (None: the newest), with its name.
    pub async fn split_brain_dump(
        &self,
        name: Option<String>,
    ) -> Result<(String, Vec<u8>), MirrorError> {
        let dir = self.meta.dir().to_owned();
        blocking(move || dump::read(&dir, name.as_deref())).await
    }

    /// After a connect stayed apart: a link in split brain waits before it tries again
    /// (or until the administrator acts on it).
    pub(crate) async fn split_brain_pause(&self, peer: &str) {
        let kick = self
            .lock()
            .peers
            .get(peer)
            .filter(|p| p.conn == Conn::SplitBrain)
            .map(|p| Arc::clone(&p.kick));
        if let Some(kick) = kick {
            tokio::select! {
                _ = tokio::time::sleep(SPLIT_BRAIN_RETRY) => {}
                _ = kick.notified() => {}
            }
        }
    }
}

impl super::State {
    fn peer_ref(&self, name: &str) -> Result<&PeerState, MirrorError> {
        self.peers
            .get(name)
            .ok_or_else(|| MirrorError::UnknownPeer(name.to_string()))
    }
}

/// Runs a dump's file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DumpError> + Send + 'static,
) -> Result<T, MirrorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| MirrorError::Shutdown)?
        .map_err(MirrorError::Dump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_or_a_resolution_is_reported_once_until_it_changes() {
        let mut p = PeerSplit::default();
        assert!(p.report("split brain"));
        assert!(!p.report("split brain"));
        assert!(p.report("dump failed"));
        assert!(p.announce("administrator a b 2".into()));
        assert!(!p.announce("administrator a b 2".into()));
    }

    #[test]
    fn a_resolution_holds_until_the_data_it_is_bound_to_is_gone() {
        let theirs = Resolution::Theirs { generation: 5 };
        let mine = Resolution::Mine { peer_generation: 9 };
        assert!(!spent(theirs, 5, 1), "still at the discarded generation");
        assert!(spent(theirs, 7, 1), "took the survivor's (or moved on)");
        assert!(!spent(mine, 5, 9), "the peer still holds what it loses");
        assert!(spent(mine, 5, 5));
    }

    #[test]
    fn a_failed_dump_keeps_the_link_in_split_brain() {
        let e = MirrorError::Dump(DumpError::NotFound("x".into()));
        assert!(is_split_brain(&e));
        assert!(!is_split_brain(&MirrorError::NotPrimary));
    }
}
