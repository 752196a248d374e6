//! The sans-IO core of the replication: per-peer sequence numbers, in-flight tracking,
//! sync completion, async queue accounting and lag, dirty-bitmap marking when a peer
//! cannot take a write, the resync planner (window, token bucket, EWMA rate) and the
//! verify comparison, and the ownership-epoch rule ([`EpochGuard`]: which primary a copy
//! follows, and when a primary learns it was deposed), and [`admission`] (whether an
//! application write goes, waits or fails). Time is an input (`now`, time
//! since an arbitrary origin); nothing here touches a socket or a disk. The tokio tasks
//! in `link` and `mod` carry out what these types decide.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::ReplicationMode;
use crate::mirror::bitmap::{DirtyBitmap, BLOCK_BYTES};
use crate::mirror::generation::OwnershipEpoch;

/// Largest resync or verify chunk (also the wire's payload limit).
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Resync bytes (range lengths) that may be unacknowledged at once.
pub const RESYNC_WINDOW_BYTES: u64 = 32 << 20;
/// Verify requests that may be outstanding at once.
pub const VERIFY_WINDOW: usize = 8;

/// Errors of the pure core.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("acknowledgement for seq {0}, which was never sent")]
    AckFromFuture(u64),
    #[error("resync acknowledgement for a range that is not in flight: {offset}+{len}")]
    UnknownResyncAck { offset: u64, len: u64 },
}

/// A client operation the primary replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, len: u64, fua: bool },
    Trim { offset: u64, len: u64 },
    Zeroes { offset: u64, len: u64 },
    Flush,
}

impl Op {
    fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Trim { offset, len }
            | Op::Zeroes { offset, len } => Some((offset, len)),
            Op::Flush => None,
        }
    }
    fn payload(&self) -> u64 {
        match *self {
            Op::Write { len, .. } => len,
            _ => 0,
        }
    }
}

/// Where one operation goes for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it with this sequence number; with `wait`, the client's request completes
    /// only after the peer's Ack for it.
    Send { seq: u64, wait: bool },
    /// The peer cannot take it now (down, paused, queue full): its blocks are marked in
    /// the peer's bitmap and the client does not wait for the peer.
    Tracked,
}

#[derive(Debug, Clone)]
struct Unacked {
    seq: u64,
    range: Option<(u64, u64)>,
    payload: u64,
    sent_at: Duration,
    wait: bool,
    /// A flush or FUA write: once acked, everything up to it is durable on the peer.
    durable_point: bool,
}

/// The replication state of this copy towards one peer.
#[derive(Debug, Clone)]
pub struct PeerCore {
    mode: ReplicationMode,
    queue_limit: u64,
    up: bool,
    paused: bool,
    /// Above every sequence number sent so far (the primary numbers operations once
    /// for all its peers, so a peer's numbers may skip).
    next_seq: u64,
    /// Every operation up to this one is applied and durable on the peer (its last
    /// acknowledged flush or FUA write).
    durable_seq: u64,
    unacked: VecDeque<Unacked>,
    unacked_payload: u64,
    /// Acked (applied) but not yet known durable on the peer: a power loss there could
    /// lose them, so they are marked if the link drops before a flush covers them
    /// (DRBD's transfer log).
    undurable: VecDeque<(u64, u64)>,
    bitmap: DirtyBitmap,
    bitmap_changed: bool,
    volume_bytes: u64,
}

impl PeerCore {
    /// A peer that is not connected yet, with the bitmap read back from the metadata.
    pub fn new(
        mode: ReplicationMode,
        queue_limit: u64,
        bitmap: DirtyBitmap,
        volume_bytes: u64,
    ) -> PeerCore {
        PeerCore {
            mode,
            queue_limit: queue_limit.max(1),
            up: false,
            paused: false,
            next_seq: 1,
            durable_seq: 0,
            unacked: VecDeque::new(),
            unacked_payload: 0,
            undurable: VecDeque::new(),
            bitmap,
            bitmap_changed: false,
            volume_bytes,
        }
    }

    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// The link is up and the peer takes replicated writes from now on.
    pub fn link_up(&mut self) {
        self.up = true;
    }

    /// True while writes are sent to the peer.
    pub fn replicating(&self) -> bool {
        self.up && !self.paused
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses or resumes replication (writes go to the bitmap while paused).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Decides where `op` goes, numbered by this core. Marks the bitmap when the peer
    /// cannot take it.
    pub fn submit(&mut self, op: Op, now: Duration) -> Route {
        let seq = self.next_seq;
        self.submit_as(op, now, seq)
    }

    /// [`PeerCore::submit`] with the primary's own number for `op` (one number per
    /// operation across all peers, so peer-acks can name a point in the write stream);
    /// numbers must grow.
    pub fn submit_as(&mut self, op: Op, now: Duration, seq: u64) -> Route {
        if !self.replicating() {
            self.mark(op);
            return Route::Tracked;
        }
        let payload = op.payload();
        let wait = self.mode == ReplicationMode::Sync;
        if !wait && self.unacked_payload + payload > self.queue_limit {
            self.mark(op);
            return Route::Tracked;
        }
        let seq = seq.max(self.next_seq);
        self.next_seq = seq + 1;
        self.unacked.push_back(Unacked {
            seq,
            range: op.range(),
            payload,
            sent_at: now,
            wait,
            durable_point: matches!(op, Op::Flush | Op::Write { fua: true, .. }),
        });
        self.unacked_payload += payload;
        Route::Send { seq, wait }
    }

    fn mark(&mut self, op: Op) {
        if let Some((offset, len)) = op.range() {
            self.mark_range(offset, len);
        }
    }

    /// Marks a byte range out of sync on the peer.
    pub fn mark_range(&mut self, offset: u64, len: u64) {
        if len > 0 && self.bitmap.mark(offset, len) > 0 {
            self.bitmap_changed = true;
        }
    }

    /// A cumulative Ack: every operation up to `seq` is applied on the peer. Returns the
    /// sequence numbers that a client was waiting for.
    pub fn ack(&mut self, seq: u64) -> Result<Vec<u64>, CoreError> {
        if seq >= self.next_seq {
            return Err(CoreError::AckFromFuture(seq));
        }
        let mut done = Vec::new();
        while self.unacked.front().is_some_and(|u| u.seq <= seq) {
            if let Some(u) = self.unacked.pop_front() {
                self.unacked_payload -= u.payload;
                if u.wait {
                    done.push(u.seq);
                }
                if u.durable_point {
                    self.undurable.clear();
                    self.durable_seq = u.seq;
                } else if let Some(r) = u.range {
                    self.undurable.push_back(r);
                }
            }
        }
        Ok(done)
    }

    /// The link went down: every unacknowledged operation may be missing on the peer,
    /// so its blocks are marked. Returns the sequence numbers clients were waiting for.
    pub fn link_down(&mut self) -> Vec<u64> {
        self.up = false;
        while let Some((offset, len)) = self.undurable.pop_front() {
            self.mark_range(offset, len);
        }
        let mut waiting = Vec::new();
        while let Some(u) = self.unacked.pop_front() {
            if let Some((offset, len)) = u.range {
                self.mark_range(offset, len);
            }
            if u.wait {
                waiting.push(u.seq);
            }
        }
        self.unacked_payload = 0;
        waiting
    }

    /// The point in the write stream up to which this peer provably holds every
    /// write: its last acknowledged flush, if it is replicating and nothing is marked
    /// for it (a marked block is a write it lacks). `None`: it holds no proven prefix.
    pub fn holds_through(&self) -> Option<u64> {
        (self.replicating() && self.bitmap.is_clean()).then_some(self.durable_seq)
    }

    /// The last acknowledged flush or FUA write (durable on the peer).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Marks every range in flight to the peer (sent and unacknowledged, or acknowledged
    /// but not yet durable there) that touches `[offset, offset + len)`: an activity-log
    /// extent is leaving the primary's log, and after a crash nothing else would say
    /// the peer may lack them (an async peer that lags, typically).
    pub fn mark_in_flight(&mut self, offset: u64, len: u64) {
        let touches = |(o, l): (u64, u64)| o < offset + len && offset < o + l;
        let ranges: Vec<(u64, u64)> = self
            .unacked
            .iter()
            .filter_map(|u| u.range)
            .chain(self.undurable.iter().copied())
            .filter(|r| touches(*r))
            .collect();
        for (o, l) in ranges {
            self.mark_range(o, l);
        }
    }

    /// Makes the client wait for `seq` too (a demote drains async peers).
    pub fn require_wait(&mut self, seq: u64) {
        if let Some(u) = self.unacked.iter_mut().find(|u| u.seq == seq) {
            u.wait = true;
        }
    }

    /// Async: payload bytes written locally and not yet acknowledged.
    pub fn lag_bytes(&self) -> u64 {
        self.unacked_payload
    }

    /// Async: age of the oldest unacknowledged operation.
    pub fn lag(&self, now: Duration) -> Duration {
        self.unacked
            .front()
            .map(|u| now.saturating_sub(u.sent_at))
            .unwrap_or_default()
    }

    /// Acked operations not yet covered by a flush on the peer (a periodic Flush
    /// bounds them).
    pub fn undurable_ops(&self) -> usize {
        self.undurable.len()
    }

    pub fn unacked_ops(&self) -> usize {
        self.unacked.len()
    }

    pub fn bitmap(&self) -> &DirtyBitmap {
        &self.bitmap
    }

    pub fn bitmap_mut(&mut self) -> &mut DirtyBitmap {
        self.bitmap_changed = true;
        &mut self.bitmap
    }

    /// Bytes the peer is known to lack.
    pub fn out_of_sync_bytes(&self) -> u64 {
        self.bitmap.dirty_bytes(self.volume_bytes)
    }

    /// Whether the bitmap changed since the last [`PeerCore::take_changed`].
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.bitmap_changed)
    }
}

/// A primary of an older ownership epoch than one this copy has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale ownership epoch {stale} < {newer}")]
pub struct StaleEpoch {
    pub stale: OwnershipEpoch,
    pub newer: OwnershipEpoch,
}

/// What the write path knows when an application write asks to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteGate {
    pub primary: bool,
    pub shutting_down: bool,
    /// A newer owner exists (see [`EpochGuard::deposed`]).
    pub deposed: Option<StaleEpoch>,
    /// A lost sync peer is not outdated yet (fencing).
    pub fenced: bool,
    /// I/O is suspended: the node lost its lease with `on_no_quorum = "suspend"`.
    pub suspended: bool,
}

/// What an application write does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It goes (in flight from now on).
    Go,
    /// It waits for the next change (fencing or suspension).
    Hold,
    /// EIO: a newer owner exists, nothing more is acknowledged here.
    Deposed(StaleEpoch),
    /// EIO: it was held and the copy stepped down meanwhile; it was never
    /// acknowledged, and the new owner's copy may not have it.
    SteppedDown,
    /// This copy is secondary (and the write was never held).
    ReadOnly,
    /// The mirror is shutting down.
    Shutdown,
}

/// Whether a write goes, waits or fails; `held` says it already waited.
pub fn admission(gate: &WriteGate, held: bool) -> Admission {
    if !gate.primary {
        return if gate.shutting_down {
            Admission::Shutdown
        } else if held {
            Admission::SteppedDown
        } else {
            Admission::ReadOnly
        };
    }
    if let Some(stale) = gate.deposed {
        return Admission::Deposed(stale);
    }
    if gate.fenced || gate.suspended {
        Admission::Hold
    } else {
        Admission::Go
    }
}

/// What a peer's `State` means for this copy under the epoch rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochVerdict {
    /// Go on. With `raised`, this copy's highest epoch rose to the peer's: persist it
    /// before anything from the peer is applied.
    Accept { raised: bool },
    /// The peer is a primary of an older epoch: refuse the link, apply nothing of it.
    RefusePeer(StaleEpoch),
    /// This copy is a primary of an older epoch than the peer has followed: a newer
    /// owner exists, so it stops acknowledging writes. The highest epoch rose to the
    /// peer's (persist it), so a later promotion at the stale epoch is refused too.
    Deposed(StaleEpoch),
}

/// The ownership-epoch rule of one copy (clocks play no part in it): a copy follows the
/// primary with the highest epoch it has seen and durably remembers that epoch; it
/// refuses a primary of a lower one and every data frame stamped with a lower one. A
/// primary stamps its frames with the epoch it was promoted under; a secondary
/// announces the highest it followed, so a stale primary that reaches it learns it was
/// deposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochGuard {
    highest: OwnershipEpoch,
    /// The epoch this copy was promoted under, while primary.
    primary_at: Option<OwnershipEpoch>,
}

impl EpochGuard {
    /// The guard of a secondary that has followed (or been promoted at) `highest`.
    pub fn new(highest: OwnershipEpoch) -> EpochGuard {
        EpochGuard {
            highest,
            primary_at: None,
        }
    }

    /// The highest epoch this copy has accepted (persisted in the metadata).
    pub fn highest(&self) -> OwnershipEpoch {
        self.highest
    }

    /// The epoch this copy stamps on its `State` and data frames: its promotion epoch
    /// while primary, else the highest it followed.
    pub fn stamp(&self) -> OwnershipEpoch {
        self.primary_at.unwrap_or(self.highest)
    }

    /// Why this primary may no longer acknowledge writes: a newer epoch was seen.
    pub fn deposed(&self) -> Option<StaleEpoch> {
        let own = self.primary_at?;
        (own < self.highest).then_some(StaleEpoch {
            stale: own,
            newer: self.highest,
        })
    }

    /// Promotion under `epoch`: refused below the highest seen (this node's view of the
    /// ownership is stale); otherwise it becomes the highest. Returns whether it rose.
    pub fn promote(&mut self, epoch: OwnershipEpoch) -> Result<bool, StaleEpoch> {
        self.check(epoch)?;
        let raised = epoch > self.highest;
        self.highest = epoch;
        self.primary_at = Some(epoch);
        Ok(raised)
    }

    /// Whether I/O suspended under this promotion may go on at `epoch`: the copy is
    /// still primary at exactly that epoch and no newer one was seen.
    pub fn resumes_at(&self, epoch: OwnershipEpoch) -> bool {
        self.primary_at == Some(epoch) && self.deposed().is_none()
    }

    /// This copy is secondary again.
    pub fn demote(&mut self) {
        self.primary_at = None;
    }

    /// A peer's `State`: its epoch and whether it is primary.
    pub fn on_peer_state(
        &mut self,
        peer_epoch: OwnershipEpoch,
        peer_primary: bool,
    ) -> EpochVerdict {
        if let Some(own) = self.primary_at {
            if peer_epoch > own {
                self.highest = self.highest.max(peer_epoch);
                return EpochVerdict::Deposed(StaleEpoch {
                    stale: own,
                    newer: peer_epoch,
                });
            }
        }
        if !peer_primary {
            // A secondary's epoch only tells a primary whether it was deposed.
            return EpochVerdict::Accept { raised: false };
        }
        match self.check(peer_epoch) {
            Err(stale) => EpochVerdict::RefusePeer(stale),
            Ok(()) => {
                let raised = peer_epoch > self.highest;
                self.highest = peer_epoch;
                EpochVerdict::Accept { raised }
            }
        }
    }

    /// A data frame (write, trim, zeroes, flush, resync) stamped with `epoch`, right
    /// before it is applied.
    pub fn check(&self, epoch: OwnershipEpoch) -> Result<(), StaleEpoch> {
        if epoch < self.highest {
            Err(StaleEpoch {
                stale: epoch,
                newer: self.highest,
            })
        } else {
            Ok(())
        }
    }
}

/// A token bucket for the resync rate cap.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    pub fn new(bytes_per_second: u64, now: Duration) -> TokenBucket {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 10.0).max(CHUNK_BYTES as f64);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes `n` tokens, or says how long to wait until they are there.
    pub fn take(&mut self, n: u64, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n.min(self.burst) {
            self.tokens -= n;
            Ok(())
        } else {
            let missing = n.min(self.burst) - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate))
        }
    }
}

/// What the resync source does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncStep {
    /// Not begun: send ResyncBegin first (a primary flushes its own disk before, see
    /// `replica::Mirror::begin_resync`), then call [`ResyncSource::begin`].
    Begin,
    /// Read and send `[offset, offset + len)` (whole blocks, at most 1 MiB, dirty).
    Chunk { offset: u64, len: u64 },
    /// The window is full: wait for a ResyncAck.
    WaitAck,
    /// The rate cap: wait this long.
    WaitRate(Duration),
    /// Nothing dirty is left and nothing is in flight: send ResyncEnd.
    End,
    /// Nothing dirty is left but acks are outstanding.
    Drain,
}

/// A running resync on the source side.
#[derive(Debug, Clone)]
pub struct ResyncSource {
    pub full: bool,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub started: Duration,
    volume_bytes: u64,
    cursor: u64,
    wrapped: bool,
    in_flight: VecDeque<(u64, u64)>,
    in_flight_bytes: u64,
    bucket: Option<TokenBucket>,
    rate: f64,
    rate_sample_start: Duration,
    rate_sample_bytes: u64,
    begun: bool,
}

impl ResyncSource {
    /// Plans a resync of the blocks dirty in `bitmap` (mark everything first for a full
    /// one).
    pub fn new(
        full: bool,
        bitmap: &DirtyBitmap,
        volume_bytes: u64,
        rate_limit: Option<u64>,
        now: Duration,
    ) -> ResyncSource {
        ResyncSource {
            full,
            total_bytes: bitmap.dirty_bytes(volume_bytes),
            done_bytes: 0,
            started: now,
            volume_bytes,
            cursor: 0,
            wrapped: false,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            bucket: rate_limit.map(|r| TokenBucket::new(r, now)),
            rate: 0.0,
            rate_sample_start: now,
            rate_sample_bytes: 0,
            begun: false,
        }
    }

    /// ResyncBegin went out: blocks may follow.
    pub fn begin(&mut self) {
        self.begun = true;
    }

    /// The next step, given the peer's bitmap.
    pub fn next(&mut self, bitmap: &DirtyBitmap, now: Duration) -> ResyncStep {
        if !self.begun {
            return ResyncStep::Begin;
        }
        if self.in_flight_bytes >= RESYNC_WINDOW_BYTES {
            return ResyncStep::WaitAck;
        }
        let max_blocks = CHUNK_BYTES / BLOCK_BYTES;
        let run = match bitmap.next_dirty_run(self.cursor, max_blocks) {
            Some(r) => Some(r),
            None if !self.wrapped || self.cursor > 0 => {
                self.wrapped = true;
                self.cursor = 0;
                bitmap.next_dirty_run(0, max_blocks)
            }
            None => None,
        };
        let Some((first, count)) = run else {
            return if self.in_flight.is_empty() {
                ResyncStep::End
            } else {
                ResyncStep::Drain
            };
        };
        let offset = first * BLOCK_BYTES;
        let len = (count * BLOCK_BYTES).min(self.volume_bytes - offset);
        if let Some(bucket) = &mut self.bucket {
            if let Err(wait) = bucket.take(len, now) {
                return ResyncStep::WaitRate(wait);
            }
        }
        ResyncStep::Chunk { offset, len }
    }

    /// The chunk went out: its blocks are clear in the bitmap from now on (a later
    /// write marks them again) and it is in flight until acked.
    pub fn sent(&mut self, offset: u64, len: u64, bitmap: &mut DirtyBitmap) {
        let first = offset / BLOCK_BYTES;
        let end = (offset + len).div_ceil(BLOCK_BYTES);
        bitmap.clear_blocks(first, end);
        self.cursor = end;
        self.in_flight.push_back((offset, len));
        self.in_flight_bytes += len;
    }

    /// The target applied (and made durable) a chunk.
    pub fn acked(&mut self, offset: u64, len: u64, now: Duration) -> Result<(), CoreError> {
        let Some(i) = self.in_flight.iter().position(|&r| r == (offset, len)) else {
            return Err(CoreError::UnknownResyncAck { offset, len });
        };
        self.in_flight.remove(i);
        self.in_flight_bytes -= len;
        self.done_bytes += len;
        self.rate_sample_bytes += len;
        let dt = now.saturating_sub(self.rate_sample_start).as_secs_f64();
        if dt >= 0.2 {
            let sample = self.rate_sample_bytes as f64 / dt;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.7 * self.rate + 0.3 * sample
            };
            self.rate_sample_start = now;
            self.rate_sample_bytes = 0;
        }
        Ok(())
    }

    /// The link dropped: what was in flight may be missing on the target.
    pub fn abort(&mut self, bitmap: &mut DirtyBitmap) {
        for (offset, len) in self.in_flight.drain(..) {
            bitmap.mark(offset, len);
        }
        self.in_flight_bytes = 0;
    }

    /// Ranges sent and not yet acknowledged (persisted with the bitmap as dirty).
    pub fn in_flight(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.in_flight.iter()
    }

    /// Bytes per second (EWMA), falling back to the average so far.
    pub fn bytes_per_second(&self, now: Duration) -> f64 {
        if self.rate > 0.0 {
            return self.rate;
        }
        let dt = now.saturating_sub(self.started).as_secs_f64();
        if dt > 0.0 {
            self.done_bytes as f64 / dt
        } else {
            0.0
        }
    }

    /// Seconds to go at the current rate.
    pub fn eta_seconds(&self, now: Duration) -> Option<f64> {
        let rate = self.bytes_per_second(now);
        (rate > 0.0).then(|| self.total_bytes.saturating_sub(self.done_bytes) as f64 / rate)
    }
}

/// A running online verify on the source side.
#[derive(Debug, Clone)]
pub struct VerifyRun {
    pub total_bytes: u64,
    pub checked_bytes: u64,
    pub out_of_sync_bytes: u64,
    cursor: u64,
    outstanding: usize,
}

impl VerifyRun {
    pub fn new(volume_bytes: u64) -> VerifyRun {
        VerifyRun {
            total_bytes: volume_bytes,
            checked_bytes: 0,
            out_of_sync_bytes: 0,
            cursor: 0,
            outstanding: 0,
        }
    }

    /// The next range to request, if the window allows.
    pub fn next_request(&mut self) -> Option<(u64, u64)> {
        if self.outstanding >= VERIFY_WINDOW || self.cursor >= self.total_bytes {
            return None;
        }
        let len = CHUNK_BYTES.min(self.total_bytes - self.cursor);
        let offset = self.cursor;
        self.cursor += len;
        self.outstanding += 1;
        Some((offset, len))
    }

    /// Compares the peer's digests with ours for the range at `offset`; returns the
    /// differing byte ranges (whole blocks) to mark.
    pub fn answered(
        &mut self,
        offset: u64,
        local: &[[u8; 32]],
        remote: &[[u8; 32]],
    ) -> Vec<(u64, u64)> {
        self.outstanding = self.outstanding.saturating_sub(1);
        let len = (local.len() as u64 * BLOCK_BYTES).min(self.total_bytes.saturating_sub(offset));
        self.checked_bytes += len;
        let differing = differing_blocks(local, remote);
        let mut out = Vec::new();
        for i in differing {
            let o = offset + i as u64 * BLOCK_BYTES;
            let l = BLOCK_BYTES.min(self.total_bytes - o);
            self.out_of_sync_bytes += l;
            out.push((o, l));
        }
        out
    }

    pub fn finished(&self) -> bool {
        self.cursor >= self.total_bytes && self.outstanding == 0
    }
}

/// Indices of the blocks whose digests differ (a missing digest differs).
pub fn differing_blocks(local: &[[u8; 32]], remote: &[[u8; 32]]) -> Vec<usize> {
    (0..local.len().max(remote.len()))
        .filter(|&i| local.get(i) != remote.get(i))
        .collect()
}

/// SHA-256 of each 4 KiB block of `data` (a short last block is zero-padded, like a
/// hole reads).
pub fn block_digests(data: &[u8]) -> Vec<[u8; 32]> {
    use sha2::{Digest, Sha256};
    data.chunks(BLOCK_BYTES as usize)
        .map(|c| {
            let mut h = Sha256::new();
            h.update(c);
            if c.len() < BLOCK_BYTES as usize {
                h.update(vec![0u8; BLOCK_BYTES as usize - c.len()]);
            }
            h.finalize().into()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspended_write_waits_and_fails_only_once_the_copy_steps_down_or_is_deposed() {
        let suspended = WriteGate {
            primary: true,
            shutting_down: false,
            deposed: None,
            fenced: false,
            suspended: true,
        };
        assert_eq!(admission(&suspended, false), Admission::Hold);
        let resumed = WriteGate {
            suspended: false,
            ..suspended
        };
        assert_eq!(admission(&resumed, true), Admission::Go);
        let stepped_down = WriteGate {
            primary: false,
            suspended: false,
            ..suspended
        };
        assert_eq!(admission(&stepped_down, true), Admission::SteppedDown);
        assert_eq!(admission(&stepped_down, false), Admission::ReadOnly);
        let stale = StaleEpoch {
            stale: OwnershipEpoch(3),
            newer: OwnershipEpoch(4),
        };
        let deposed = WriteGate {
            deposed: Some(stale),
            ..suspended
        };
        assert_eq!(admission(&deposed, true), Admission::Deposed(stale));
    }

    #[test]
    fn suspended_io_resumes_only_at_the_promotion_epoch_and_while_not_deposed() {
        let mut g = EpochGuard::new(OwnershipEpoch(2));
        assert!(!g.resumes_at(OwnershipEpoch(3)), "not primary");
        g.promote(OwnershipEpoch(3)).unwrap();
        assert!(g.resumes_at(OwnershipEpoch(3)));
        assert!(!g.resumes_at(OwnershipEpoch(4)), "another epoch");
        g.demote();
        assert!(!g.resumes_at(OwnershipEpoch(3)), "stepped down");
    }

    const MIB: u64 = 1 << 20;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn an_evicted_extent_marks_what_is_still_in_flight_to_a_lagging_async_peer() {
        let mut p = PeerCore::new(
            ReplicationMode::Async,
            1 << 20,
            DirtyBitmap::new(64 << 20),
            64 << 20,
        );
        p.link_up();
        let w = |offset| Op::Write {
            offset,
            len: 4096,
            fua: false,
        };
        assert!(matches!(p.submit_as(w(0), t(0), 10), Route::Send { .. }));
        assert!(matches!(
            p.submit_as(w(8 << 20), t(0), 11),
            Route::Send { .. }
        ));
        // Acked but not flushed: still in flight as far as durability goes.
        p.ack(10).unwrap();
        p.mark_in_flight(0, 4 << 20);
        assert_eq!(
            p.out_of_sync_bytes(),
            4096,
            "only the evicted extent's write"
        );
        p.mark_in_flight(8 << 20, 4 << 20);
        assert_eq!(p.out_of_sync_bytes(), 8192);
        assert_eq!(
            p.holds_through(),
            None,
            "a peer with marks holds no proven prefix"
        );
    }

    #[test]
    fn sync_writes_wait_for_the_cumulative_ack() {
        let mut p = PeerCore::new(
            ReplicationMode::Sync,
            MIB,
            DirtyBitmap::new(16 * MIB),
            16 * MIB,
        );
        p.link_up();
        let a = p.submit(
            Op::Write {
                offset: 0,
                len: 4096,
                fua: false,
            },
            t(0),
        );
        let b = p.submit(Op::Flush, t(1));
        assert_eq!(a, Route::Send { seq: 1, wait: true });
        assert_eq!(b, Route::Send { seq: 2, wait: true });
        assert_eq!(p.ack(2).unwrap(), vec![1, 2]);
        assert_eq!(p.ack(9), Err(CoreError::AckFromFuture(9)));
        assert!(p.bitmap().is_clean());
        // Applied but not flushed on the peer: marked if the link drops.
        p.submit(
            Op::Write {
                offset: 8192,
                len: 4096,
                fua: false,
            },
            t(2),
        );
        p.ack(3).unwrap();
        assert_eq!(p.undurable_ops(), 1);
        p.link_down();
        assert_eq!(p.out_of_sync_bytes(), 4096);
    }

    #[test]
    fn async_queue_overflow_and_link_loss_go_to_the_bitmap() {
        let mut p = PeerCore::new(
            ReplicationMode::Async,
            MIB,
            DirtyBitmap::new(16 * MIB),
            16 * MIB,
        );
        p.link_up();
        assert!(matches!(
            p.submit(
                Op::Write {
                    offset: 0,
                    len: MIB,
                    fua: false
                },
                t(0)
            ),
            Route::Send { wait: false, .. }
        ));
        assert_eq!(p.lag_bytes(), MIB);
        assert_eq!(p.lag(t(1500)), t(1500));
        // The queue is full: the next write is tracked.
        assert_eq!(
            p.submit(
                Op::Write {
                    offset: 2 * MIB,
                    len: 4096,
                    fua: false
                },
                t(2)
            ),
            Route::Tracked
        );
        assert_eq!(p.out_of_sync_bytes(), 4096);
        // The link drops with the first write unacked: it is marked too.
        assert_eq!(p.undurable_ops(), 0);
        assert!(p.link_down().is_empty());
        assert_eq!(p.out_of_sync_bytes(), MIB + 4096);
        assert_eq!(p.lag_bytes(), 0);
        assert_eq!(
            p.submit(
                Op::Trim {
                    offset: 8 * MIB,
                    len: 8192
                },
                t(3)
            ),
            Route::Tracked
        );
        assert_eq!(p.out_of_sync_bytes(), MIB + 3 * 4096);
    }

    #[test]
    fn resync_walks_the_bitmap_in_a_window_and_remarks_on_abort() {
        let vol = 64 * MIB;
        let mut bm = DirtyBitmap::new(vol);
        bm.mark(0, 40 * MIB);
        let mut r = ResyncSource::new(false, &bm, vol, None, t(0));
        assert_eq!(r.total_bytes, 40 * MIB);
        assert_eq!(
            r.next(&bm, t(0)),
            ResyncStep::Begin,
            "nothing before the begin"
        );
        r.begin();
        let mut sent = 0;
        loop {
            match r.next(&bm, t(0)) {
                ResyncStep::Chunk { offset, len } => {
                    assert!(len <= CHUNK_BYTES);
                    r.sent(offset, len, &mut bm);
                    sent += 1;
                }
                ResyncStep::WaitAck => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sent, RESYNC_WINDOW_BYTES / CHUNK_BYTES);
        r.acked(0, CHUNK_BYTES, t(300)).unwrap();
        assert!(r.acked(0, CHUNK_BYTES, t(300)).is_err());
        r.abort(&mut bm);
        assert_eq!(bm.dirty_bytes(vol), 39 * MIB);
    }

    #[test]
    fn the_rate_cap_delays_chunks() {
        let vol = 64 * MIB;
        let mut bm = DirtyBitmap::new(vol);
        bm.mark(0, 8 * MIB);
        let mut r = ResyncSource::new(false, &bm, vol, Some(MIB), t(0));
        r.begin();
        let ResyncStep::Chunk { offset, len } = r.next(&bm, t(0)) else {
            panic!()
        };
        r.sent(offset, len, &mut bm);
        assert!(matches!(r.next(&bm, t(10)), ResyncStep::WaitRate(_)));
        assert!(matches!(r.next(&bm, t(1100)), ResyncStep::Chunk { .. }));
    }

    fn e(n: u64) -> OwnershipEpoch {
        OwnershipEpoch(n)
    }

    #[test]
    fn a_secondary_refuses_a_primary_of_an_older_epoch() {
        let mut g = EpochGuard::new(e(0));
        assert_eq!(
            g.on_peer_state(e(4), true),
            EpochVerdict::Accept { raised: true }
        );
        let stale = StaleEpoch {
            stale: e(3),
            newer: e(4),
        };
        assert_eq!(g.on_peer_state(e(3), true), EpochVerdict::RefusePeer(stale));
        assert_eq!(stale.to_string(), "stale ownership epoch 3 < 4");
        // Its frames, in flight or not, are refused too.
        assert_eq!(g.check(e(3)), Err(stale));
        assert_eq!(g.highest(), e(4));
    }

    #[test]
    fn equal_and_higher_epochs_are_accepted() {
        let mut g = EpochGuard::new(e(4));
        assert_eq!(
            g.on_peer_state(e(4), true),
            EpochVerdict::Accept { raised: false }
        );
        assert_eq!(g.check(e(4)), Ok(()));
        assert_eq!(
            g.on_peer_state(e(7), true),
            EpochVerdict::Accept { raised: true }
        );
        assert_eq!(g.check(e(7)), Ok(()));
        assert!(g.check(e(4)).is_err());
        // A secondary's epoch never raises this copy's (it followed no one here).
        assert_eq!(
            g.on_peer_state(e(9), false),
            EpochVerdict::Accept { raised: false }
        );
        assert_eq!(g.highest(), e(7));
    }

    #[test]
    fn a_primary_that_meets_a_newer_epoch_is_deposed() {
        let mut g = EpochGuard::new(e(0));
        assert_eq!(g.promote(e(3)), Ok(true));
        assert_eq!(g.stamp(), e(3));
        assert_eq!(
            g.on_peer_state(e(3), false),
            EpochVerdict::Accept { raised: false }
        );
        assert_eq!(g.deposed(), None);
        let stale = StaleEpoch {
            stale: e(3),
            newer: e(4),
        };
        assert_eq!(g.on_peer_state(e(4), false), EpochVerdict::Deposed(stale));
        assert_eq!(g.deposed(), Some(stale));
        // It still stamps its own (stale) epoch, so the peers refuse what it sends.
        assert_eq!(g.stamp(), e(3));
        assert_eq!(g.highest(), e(4));
        // Promoted again at the stale epoch (a restart of the resource): refused.
        g.demote();
        assert_eq!(g.deposed(), None);
        assert_eq!(g.promote(e(3)), Err(stale));
        assert_eq!(g.promote(e(4)), Ok(false));
    }

    #[test]
    fn the_highest_epoch_survives_a_restart_through_the_metadata() {
        use crate::mirror::generation::Generations;
        use crate::mirror::replica::meta::{CopyMeta, MetaStore};
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = MetaStore::open(dir.path(), MIB).unwrap();
        let mut g = EpochGuard::new(loaded.copy.epoch);
        assert_eq!(
            g.on_peer_state(e(4), true),
            EpochVerdict::Accept { raised: true }
        );
        store
            .save_copy(&CopyMeta {
                size_bytes: MIB,
                disk: loaded.copy.disk,
                generations: Generations::new(),
                epoch: g.highest(),
            })
            .unwrap();
        // The store holds the mirror's lock until it is dropped.
        drop(store);
        let (_, loaded) = MetaStore::open(dir.path(), MIB).unwrap();
        let mut g = EpochGuard::new(loaded.copy.epoch);
        assert!(matches!(
            g.on_peer_state(e(3), true),
            EpochVerdict::RefusePeer(_)
        ));
    }

    #[test]
    fn verify_marks_differing_blocks() {
        let mut v = VerifyRun::new(8192);
        assert_eq!(v.next_request(), Some((0, 8192)));
        assert_eq!(v.next_request(), None);
        let a = block_digests(&[0u8; 8192]);
        let mut b = a.clone();
        b[1][0] ^= 1;
        assert_eq!(v.answered(0, &a, &b), vec![(4096, 4096)]);
        assert!(v.finished());
        assert_eq!(v.out_of_sync_bytes, 4096);
    }
}
