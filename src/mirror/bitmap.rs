//! The dirty-block bitmap a primary keeps for each peer: one bit per 4 KiB block that
//! the peer may not have. Writes set bits; resync and acknowledged replication clear
//! them. It is persisted (with a checksum) so a restart knows what to resync, and
//! [`ActivityLog`] bounds what a crash of the primary can leave unrecorded.
//!
//! Pure: no I/O. The caller stores [`DirtyBitmap::encode`]'s bytes and feeds them back to
//! [`DirtyBitmap::decode`].

use sha2::{Digest, Sha256};

/// Bitmap granularity: one bit per 4 KiB block.
pub const BLOCK_BYTES: u64 = 4096;

const MAGIC: &[u8; 4] = b"TDMB";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 32;

/// Errors of the persisted bitmap and activity log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BitmapError {
    #[error("bitmap: bad magic or version")]
    BadHeader,
    #[error("bitmap: {0} bytes is shorter than its header says")]
    Truncated(usize),
    #[error("bitmap: checksum mismatch (torn or corrupted write)")]
    Checksum,
    #[error("bitmap: it covers {stored} blocks, the volume has {volume}")]
    SizeMismatch { stored: u64, volume: u64 },
}

/// Which blocks a peer may lack. Bit `i` covers bytes `[i * 4096, (i + 1) * 4096)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    blocks: u64,
    dirty: u64,
}

/// The blocks a byte range touches: `[first, end)`.
fn block_span(offset: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (0, 0);
    }
    let first = offset / BLOCK_BYTES;
    let end = (offset + len).div_ceil(BLOCK_BYTES);
    (first, end)
}

impl DirtyBitmap {
    /// A clean bitmap for a volume of `volume_bytes`.
    pub fn new(volume_bytes: u64) -> DirtyBitmap {
        let blocks = volume_bytes.div_ceil(BLOCK_BYTES);
        DirtyBitmap {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            dirty: 0,
        }
    }

    /// The bitmap of a volume of `volume_bytes` from raw words (bit `i` of word `w` is
    /// block `64 * w + i`): missing words are clean, extra words and bits past the
    /// last block are dropped.
    pub fn from_words(volume_bytes: u64, mut words: Vec<u64>) -> DirtyBitmap {
        let blocks = volume_bytes.div_ceil(BLOCK_BYTES);
        words.resize(blocks.div_ceil(64) as usize, 0);
        if !blocks.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << (blocks % 64)) - 1;
            }
        }
        let dirty = words.iter().map(|w| u64::from(w.count_ones())).sum();
        DirtyBitmap {
            words,
            blocks,
            dirty,
        }
    }

    /// The raw words (see [`DirtyBitmap::from_words`]).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Number of dirty blocks.
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty
    }

    /// Bytes a resync would copy (the last block may be short).
    pub fn dirty_bytes(&self, volume_bytes: u64) -> u64 {
        let tail = volume_bytes % BLOCK_BYTES;
        let mut bytes = self.dirty * BLOCK_BYTES;
        if tail != 0 && self.blocks > 0 && self.is_dirty(self.blocks - 1) {
            bytes -= BLOCK_BYTES - tail;
        }
        bytes
    }

    pub fn is_clean(&self) -> bool {
        self.dirty == 0
    }

    pub fn is_dirty(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn set_blocks(&mut self, first: u64, end: u64, value: bool) -> u64 {
        let end = end.min(self.blocks);
        let mut changed = 0;
        let mut b = first;
        while b < end {
            let w = (b / 64) as usize;
            let lo = b % 64;
            let hi = (end - (b - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let before = self.words[w];
            self.words[w] = if value { before | mask } else { before & !mask };
            changed += u64::from((before ^ self.words[w]).count_ones());
            b = b - lo + hi;
        }
        if value {
            self.dirty += changed;
        } else {
            self.dirty -= changed;
        }
        changed
    }

    /// Marks every block the byte range touches; returns how many became dirty.
    pub fn mark(&mut self, offset: u64, len: u64) -> u64 {
        let (first, end) = block_span(offset, len);
        self.set_blocks(first, end, true)
    }

    /// Marks the whole volume (a new or replaced disk: full resync).
    pub fn mark_all(&mut self) {
        self.set_blocks(0, self.blocks, true);
    }

    /// Clears blocks `[first, end)` (they are now on the peer); returns how many.
    pub fn clear_blocks(&mut self, first: u64, end: u64) -> u64 {
        self.set_blocks(first, end, false)
    }

    /// The first run of dirty blocks at or after `from`, at most `max_blocks` long:
    /// `(first, count)`.
    pub fn next_dirty_run(&self, from: u64, max_blocks: u64) -> Option<(u64, u64)> {
        let mut b = from;
        // Skip clean words fast.
        while b < self.blocks {
            let w = self.words[(b / 64) as usize] >> (b % 64);
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            b += u64::from(w.trailing_zeros());
            break;
        }
        if b >= self.blocks {
            return None;
        }
        let mut n = 0;
        while b + n < self.blocks && n < max_blocks && self.is_dirty(b + n) {
            n += 1;
        }
        Some((b, n))
    }

    /// Adds every dirty block of `other` (same volume size).
    pub fn merge(&mut self, other: &DirtyBitmap) {
        assert_eq!(self.blocks, other.blocks, "bitmaps of different volumes");
        let mut dirty = 0;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
            dirty += u64::from(a.count_ones());
        }
        self.dirty = dirty;
    }

    /// The persisted form: magic, version, block count, SHA-256 of the words, words
    /// (little endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.words.len() * 8);
        for w in &self.words {
            body.extend_from_slice(&w.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.blocks.to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Reads a persisted bitmap for a volume of `volume_bytes`.
    pub fn decode(bytes: &[u8], volume_bytes: u64) -> Result<DirtyBitmap, BitmapError> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err(BitmapError::BadHeader);
        }
        let blocks = u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes"));
        let volume = volume_bytes.div_ceil(BLOCK_BYTES);
        if blocks != volume {
            return Err(BitmapError::SizeMismatch {
                stored: blocks,
                volume,
            });
        }
        let words = blocks.div_ceil(64) as usize;
        let body = &bytes[HEADER..];
        if body.len() != words * 8 {
            return Err(BitmapError::Truncated(bytes.len()));
        }
        if Sha256::digest(body).as_slice() != &bytes[13..45] {
            return Err(BitmapError::Checksum);
        }
        let words: Vec<u64> = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let dirty = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(DirtyBitmap {
            words,
            blocks,
            dirty,
        })
    }
}

/// Extent size of the activity log: writes are grouped in 4 MiB extents.
pub const EXTENT_BYTES: u64 = 4 << 20;

/// The activity log: the extents the primary may be writing to right now. An extent is
/// recorded durably *before* the first write to it, so after a crash of the primary
/// every extent in the log is marked dirty for every peer: the resync after a crash is
/// bounded by `capacity` extents, not the whole volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityLog {
    capacity: usize,
    /// Hot extents, least recently used first.
    hot: Vec<u64>,
}

/// What the caller must do before a write may go to the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityChange {
    /// Every extent is already hot: write.
    None,
    /// Persist the log (`ActivityLog::extents`) durably first, then write.
    Persist,
}

impl ActivityLog {
    pub fn new(capacity: usize) -> ActivityLog {
        ActivityLog {
            capacity: capacity.max(1),
            hot: Vec::new(),
        }
    }

    /// Restores the log read back after a restart.
    pub fn from_extents(capacity: usize, extents: Vec<u64>) -> ActivityLog {
        let mut log = ActivityLog::new(capacity);
        for e in extents {
            if !log.hot.contains(&e) {
                log.hot.push(e);
            }
        }
        while log.hot.len() > log.capacity {
            log.hot.remove(0);
        }
        log
    }

    /// The hot extents (what to persist).
    pub fn extents(&self) -> &[u64] {
        &self.hot
    }

    /// A write to `[offset, offset + len)` is about to start. Makes its extents hot,
    /// evicting the least recently used ones, and says whether the log must be persisted
    /// first. An evicted extent must have no write in flight; the caller guarantees that
    /// by keeping `capacity` well above the number of writes in flight.
    pub fn begin_write(&mut self, offset: u64, len: u64) -> ActivityChange {
        if len == 0 {
            return ActivityChange::None;
        }
        let first = offset / EXTENT_BYTES;
        let last = (offset + len - 1) / EXTENT_BYTES;
        let mut changed = false;
        for e in first..=last {
            if let Some(i) = self.hot.iter().position(|&h| h == e) {
                let h = self.hot.remove(i);
                self.hot.push(h);
            } else {
                self.hot.push(e);
                changed = true;
            }
        }
        while self.hot.len() > self.capacity {
            self.hot.remove(0);
        }
        if changed {
            ActivityChange::Persist
        } else {
            ActivityChange::None
        }
    }

    /// After a crash: every block of every hot extent may differ from the peers.
    pub fn mark_crash_dirty(&self, bitmap: &mut DirtyBitmap) {
        for &e in &self.hot {
            bitmap.mark(e * EXTENT_BYTES, EXTENT_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marks_every_block_a_range_touches() {
        let mut b = DirtyBitmap::new(1 << 20);
        assert_eq!(b.mark(4095, 2), 2);
        assert!(b.is_dirty(0) && b.is_dirty(1) && !b.is_dirty(2));
        assert_eq!(b.mark(0, 4096), 0, "already dirty");
        assert_eq!(b.dirty_bytes(1 << 20), 8192);
        assert_eq!(b.next_dirty_run(0, 100), Some((0, 2)));
        assert_eq!(b.next_dirty_run(2, 100), None);
        assert_eq!(b.clear_blocks(0, 1), 1);
        assert_eq!(b.next_dirty_run(0, 100), Some((1, 1)));
    }

    #[test]
    fn raw_words_round_trip_and_drop_bits_past_the_end() {
        let mut b = DirtyBitmap::new(10_000);
        b.mark(4096, 10);
        assert_eq!(DirtyBitmap::from_words(10_000, b.words().to_vec()), b);
        let all = DirtyBitmap::from_words(10_000, vec![u64::MAX, u64::MAX]);
        assert_eq!((all.dirty_blocks(), all.words().len()), (3, 1));
        assert!(DirtyBitmap::from_words(1 << 20, vec![]).is_clean());
    }

    #[test]
    fn a_short_last_block_counts_its_real_bytes() {
        let mut b = DirtyBitmap::new(10_000);
        assert_eq!(b.blocks(), 3);
        b.mark_all();
        assert_eq!(b.dirty_bytes(10_000), 10_000);
    }

    #[test]
    fn persisted_form_round_trips_and_detects_damage() {
        let mut b = DirtyBitmap::new(100 << 20);
        b.mark(12345, 999_999);
        b.mark(99 << 20, 4096);
        let bytes = b.encode();
        assert_eq!(DirtyBitmap::decode(&bytes, 100 << 20).unwrap(), b);
        let mut torn = bytes.clone();
        let last = torn.len() - 1;
        torn[last] ^= 1;
        assert_eq!(
            DirtyBitmap::decode(&torn, 100 << 20),
            Err(BitmapError::Checksum)
        );
        assert!(matches!(
            DirtyBitmap::decode(&bytes, 200 << 20),
            Err(BitmapError::SizeMismatch { .. })
        ));
        assert_eq!(
            DirtyBitmap::decode(&bytes[..20], 100 << 20),
            Err(BitmapError::BadHeader)
        );
        assert!(matches!(
            DirtyBitmap::decode(&bytes[..bytes.len() - 8], 100 << 20),
            Err(BitmapError::Truncated(_))
        ));
    }

    #[test]
    fn activity_log_persists_only_on_a_new_extent_and_bounds_a_crash() {
        let mut al = ActivityLog::new(2);
        assert_eq!(al.begin_write(0, 4096), ActivityChange::Persist);
        assert_eq!(al.begin_write(8192, 4096), ActivityChange::None);
        assert_eq!(
            al.begin_write(EXTENT_BYTES - 1, 2),
            ActivityChange::Persist,
            "spills into extent 1"
        );
        assert_eq!(al.extents(), &[0, 1]);
        assert_eq!(al.begin_write(5 * EXTENT_BYTES, 1), ActivityChange::Persist);
        assert_eq!(al.extents(), &[1, 5], "extent 0 was least recently used");
        let mut b = DirtyBitmap::new(64 * EXTENT_BYTES);
        al.mark_crash_dirty(&mut b);
        assert_eq!(b.dirty_bytes(64 * EXTENT_BYTES), 2 * EXTENT_BYTES);
        let restored = ActivityLog::from_extents(2, al.extents().to_vec());
        assert_eq!(restored, al);
    }

    proptest! {
        /// The bitmap agrees with a naive set of blocks under any marks and clears.
        #[test]
        fn agrees_with_a_naive_model(ops in proptest::collection::vec((any::<bool>(), 0u64..70_000, 0u64..20_000), 1..60)) {
            let size = 70_000u64;
            let mut b = DirtyBitmap::new(size);
            let blocks = size.div_ceil(BLOCK_BYTES);
            let mut model = vec![false; blocks as usize];
            for (mark, off, len) in ops {
                if mark {
                    b.mark(off, len);
                    let (f, e) = block_span(off, len);
                    for m in model.iter_mut().take(e.min(blocks) as usize).skip(f as usize) {
                        *m = true;
                    }
                } else {
                    let f = off / BLOCK_BYTES;
                    let e = f + len / BLOCK_BYTES;
                    b.clear_blocks(f, e);
                    for m in model.iter_mut().take(e.min(blocks) as usize).skip(f as usize) {
                        *m = false;
                    }
                }
                prop_assert_eq!(b.dirty_blocks(), model.iter().filter(|m| **m).count() as u64);
            }
            let mut runs = Vec::new();
            let mut at = 0;
            while let Some((f, n)) = b.next_dirty_run(at, 7) {
                runs.extend(f..f + n);
                at = f + n;
            }
            let want: Vec<u64> = model.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as u64).collect();
            prop_assert_eq!(runs, want);
            prop_assert_eq!(DirtyBitmap::decode(&b.encode(), size).unwrap(), b);
        }
    }
}
