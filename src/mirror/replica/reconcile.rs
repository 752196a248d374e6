//! The replicated volume's side of reconciliation (the rules are pure, in
//! `mirror::reconcile` and `mirror::connect`): a primary's peer-acks, a secondary's
//! unproven ranges and its activity log, marking them when the primary is lost, and
//! the bitmap exchange that lets a resync source send the union of both sides' bitmaps.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::mirror::bitmap::{BLOCK_BYTES, EXTENT_BYTES};
use crate::mirror::reconcile::{copies_to_mark, peer_acks, AckInput};
use crate::mirror::wire::{Frame, MAX_RUNS};

use super::{Mirror, State};

impl State {
    /// Marks `ranges` in this copy's bitmaps toward `copies` (each starts being tracked
    /// from the current generation if it was in sync).
    pub(super) fn mark_toward(&mut self, copies: &[String], ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            return;
        }
        for c in copies {
            let Some(p) = self.peers.get_mut(c) else {
                continue;
            };
            for &(offset, len) in ranges {
                p.core.mark_range(offset, len);
            }
            if !p.core.bitmap().is_clean() {
                self.gens.track(c);
            }
        }
    }

    /// The primary this copy followed is lost (its link dropped, it stepped down, or
    /// another copy became primary): every range no peer-ack covered is marked toward
    /// every other copy but that primary (it wrote them; had it crashed first, its own
    /// activity log covers them).
    pub(super) fn primary_lost(&mut self) -> usize {
        let ranges = self.unproven.take_all();
        let followed = self.followed.take();
        let others: Vec<String> = self
            .peers
            .keys()
            .filter(|n| Some(*n) != followed.as_ref())
            .cloned()
            .collect();
        self.mark_toward(&others, &ranges);
        ranges.len()
    }

    /// The first operation number of a new primary: above everything this copy applied
    /// or numbered, and above the clock's microseconds, so numbers keep growing across
    /// primaries (they only order copies that followed the same stream).
    pub(super) fn start_numbering(&mut self) {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.next_seq = self.next_seq.max(self.unproven.last_seq() + 1).max(micros);
    }
}

impl State {
    /// This copy follows `primary` from now on: a resync it takes from a secondary
    /// ends (its session is closed; the connect plan gives it none while it follows),
    /// since the primary resyncs it now.
    pub(super) fn follow(&mut self, primary: &str) {
        self.followed = Some(primary.to_string());
        for (name, p) in self.peers.iter_mut() {
            if name != primary && !p.peer_primary && p.resync_target.is_some() {
                p.end_cause = Some(crate::mirror::status::LinkDownCause::Error);
                if let Some(end) = &p.end_session {
                    end.notify_one();
                }
            }
        }
    }
}

impl Mirror {
    /// As primary, after an acknowledgement: the peer-acks that moved on go out.
    pub(super) fn send_peer_acks(&self, st: &mut State) {
        if !st.primary {
            return;
        }
        let inputs: Vec<AckInput<'_>> = st
            .peers
            .iter()
            .map(|(name, p)| AckInput {
                name,
                replicating: p.core.replicating() && p.tx.is_some(),
                holds_through: p.core.holds_through(),
                durable_seq: p.core.durable_seq(),
            })
            .collect();
        let mut sent = std::mem::take(&mut st.peer_acks_sent);
        let acks = peer_acks(&inputs, &mut sent);
        st.peer_acks_sent = sent;
        for a in acks {
            if let Some(tx) = st.peers.get(&a.to).and_then(|p| p.tx.as_ref()) {
                let _ = tx.send(Frame::PeerAck {
                    upto: a.upto,
                    holders: a.holders,
                });
            }
        }
    }

    /// As secondary, `peer` stepped down or became primary: whichever primary this copy
    /// followed is lost. A new one reconciles with this copy: it gets this copy's bitmap
    /// and resyncs the union before this copy adopts its generation. Returns whether the
    /// State needs nothing more (a new primary).
    pub(super) fn primary_changed(
        &self,
        st: &mut State,
        peer: &str,
        theirs: &crate::mirror::wire::CopyState,
    ) -> bool {
        st.primary_lost();
        if !theirs.primary {
            return false;
        }
        st.follow(peer);
        // A copy that never held data has nothing to reconcile: it takes the new
        // primary's generation at once (a brand-new pair).
        if st.gens.current == 0 && st.gens.history.is_empty() {
            st.gens.synced_with(peer, theirs.generations.current);
        }
        self.send_bitmap(st, peer);
        true
    }

    /// As secondary: a peer-ack from the primary `peer`. The ranges it covers are
    /// marked toward the copies that do not hold them.
    pub(crate) fn on_peer_ack(
        &self,
        peer: &str,
        session: u64,
        upto: u64,
        holders: &[String],
    ) -> Result<(), String> {
        let mut st = self.lock();
        let live = st
            .peers
            .get(peer)
            .is_some_and(|p| p.session == session && p.peer_primary);
        if !live || st.primary {
            return Ok(());
        }
        let ranges = st.unproven.covered(upto);
        let me = self.spec.local_node.as_str();
        let to = copies_to_mark(st.peers.keys().map(String::as_str), me, peer, holders);
        st.mark_toward(&to, &ranges);
        Ok(())
    }

    /// As secondary, before applying replicated operation `seq` on `[offset, offset +
    /// len)`: the range is unproven from now on (before it is written, so no shrink of
    /// the log can miss a write in flight), and its activity-log extents are hot
    /// (persisted first if one turns hot). An extent leaving the log takes its unproven
    /// ranges along: they are marked toward every other copy and the bitmaps persisted
    /// before the log forgets it.
    pub(super) async fn secondary_activity(
        &self,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), crate::mirror::ExportError> {
        let _g = self.al_io.lock().await;
        let extents = {
            let mut st = self.lock();
            st.unproven.applied(seq, offset, len);
            let before = st.al.extents().to_vec();
            if st.al.begin_write(offset, len) == crate::mirror::bitmap::ActivityChange::None {
                return Ok(());
            }
            let after = st.al.extents().to_vec();
            let all: Vec<String> = st.peers.keys().cloned().collect();
            for e in before.into_iter().filter(|e| !after.contains(e)) {
                let ranges = st.unproven.touching(e * EXTENT_BYTES, EXTENT_BYTES);
                st.mark_toward(&all, &ranges);
            }
            after
        };
        self.save_bitmaps(false).await.map_err(super::io_error)?;
        self.save_al(extents).await
    }

    /// As secondary, now and then: extents with no unproven range left leave the
    /// activity log (the bitmaps, holding every mark made so far, are persisted first),
    /// so a crash of this copy resyncs only what it could not prove.
    pub(super) async fn shrink_secondary_al(&self) -> Result<(), crate::mirror::ExportError> {
        let _g = self.al_io.lock().await;
        // Holding `al_io`, nothing is applied meanwhile (it takes the lock first).
        let keep = {
            let st = self.lock();
            if st.primary {
                return Ok(());
            }
            let used = st.unproven.extents(EXTENT_BYTES);
            let keep: Vec<u64> = st
                .al
                .extents()
                .iter()
                .copied()
                .filter(|e| used.contains(e))
                .collect();
            if keep.len() == st.al.extents().len() {
                return Ok(());
            }
            keep
        };
        self.save_bitmaps(false).await.map_err(super::io_error)?;
        self.lock().al =
            crate::mirror::bitmap::ActivityLog::from_extents(super::AL_EXTENTS, keep.clone());
        self.save_al(keep).await
    }

    /// Sends this copy's bitmap toward `peer` (the resync source, which sends the
    /// union): runs of dirty blocks, then the end with their count.
    pub(super) fn send_bitmap(&self, st: &State, peer: &str) {
        let Some(p) = st.peers.get(peer) else {
            return;
        };
        let Some(tx) = &p.tx else {
            return;
        };
        let bitmap = p.core.bitmap();
        let mut runs = Vec::new();
        let mut from = 0;
        while let Some((first, n)) = bitmap.next_dirty_run(from, u64::from(u32::MAX)) {
            runs.push((first, n as u32));
            from = first + n + 1;
            if runs.len() == MAX_RUNS {
                let _ = tx.send(Frame::BitmapRuns {
                    runs: std::mem::take(&mut runs),
                });
            }
        }
        if !runs.is_empty() {
            let _ = tx.send(Frame::BitmapRuns { runs });
        }
        let _ = tx.send(Frame::BitmapEnd {
            dirty_blocks: bitmap.dirty_blocks(),
        });
    }

    /// Part of the peer's bitmap toward this copy: merged into this copy's bitmap
    /// toward the peer (it lacks those blocks, or may).
    pub(crate) fn on_bitmap_runs(&self, peer: &str, session: u64, runs: &[(u64, u32)]) {
        let mut st = self.lock();
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return;
        };
        for &(first, n) in runs {
            p.core
                .mark_range(first * BLOCK_BYTES, u64::from(n) * BLOCK_BYTES);
        }
    }

    /// The peer's bitmap is complete. A source waiting for it starts the resync of
    /// the union; with nothing to send it answers with an empty bitmap of its own
    /// ("reconciled"), and a peer whose generation differs adopts this copy's. A
    /// secondary that hears "reconciled" from its primary adopts the primary's
    /// generation: it holds everything the primary has.
    pub(crate) fn on_bitmap_end(&self, peer: &str, session: u64, dirty_blocks: u64) {
        let adopted = {
            let mut st = self.lock();
            let (primary, current, disk) = (st.primary, st.gens.current, st.disk);
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return;
            };
            p.peer_marked_blocks = dirty_blocks;
            if std::mem::take(&mut p.awaiting_bitmap) {
                if p.core.bitmap().is_clean() {
                    if let Some(tx) = &p.tx {
                        let _ = tx.send(Frame::BitmapEnd { dirty_blocks: 0 });
                    }
                    return;
                }
                st.gens.track(peer);
                self.start_resync_now(&mut st, peer);
                return;
            }
            let adopt = !primary
                && p.peer_primary
                && p.resync_target.is_none()
                && disk.promotable()
                && p.peer_generation != current;
            if adopt {
                let generation = p.peer_generation;
                st.gens.synced_with(peer, generation);
            }
            adopt
        };
        if adopted {
            let copy = self.lock().copy_meta(self.size);
            if let Err(e) = self.meta.save_copy(&copy) {
                tracing::error!(error = %e, "cannot persist the adopted generation");
            }
        }
    }
}

impl Mirror {
    /// Pauses replication to `peer` during `windows` every day (`pause_during`).
    pub fn set_pause_schedule(
        &self,
        peer: &str,
        windows: Vec<crate::mirror::schedule::PauseWindow>,
    ) {
        let mut st = self.lock();
        if windows.is_empty() || !st.peers.contains_key(peer) {
            st.schedules.remove(peer);
            return;
        }
        st.schedules
            .insert(peer.to_string(), (windows, Default::default()));
    }

    /// Pauses or resumes links whose schedule window opened or closed by `unix_ms`.
    pub(super) async fn follow_schedules(&self, unix_ms: u64) {
        use crate::mirror::schedule::{in_any, utc_minute, ScheduleAction};
        let minute = utc_minute(unix_ms);
        let actions: Vec<(String, ScheduleAction)> = {
            let mut st = self.lock();
            let paused: std::collections::BTreeMap<String, bool> = st
                .peers
                .iter()
                .map(|(n, p)| (n.clone(), p.core.paused()))
                .collect();
            st.schedules
                .iter_mut()
                .filter_map(|(peer, (windows, state))| {
                    let now_paused = paused.get(peer).copied().unwrap_or(false);
                    let action = state.step(in_any(windows, minute), now_paused)?;
                    Some((peer.clone(), action))
                })
                .collect()
        };
        for (peer, action) in actions {
            let done = match action {
                ScheduleAction::Pause => self.pause_for(Some(&peer), "schedule").await,
                ScheduleAction::Resume => self.resume_for(Some(&peer), "schedule").await,
            };
            if let Err(e) = done {
                tracing::error!(%peer, error = %e, "scheduled pause or resume failed");
            }
        }
    }
}
