//! The on-disk layout of internal metadata (metadata at the end of the backing device,
//! after DRBD's internal meta-data), as pure codecs. The area is the last
//! [`area_bytes`] of the backing; the data before it is what the mirror exposes:
//!
//! ```text
//! 0            data_size             area_offset                                     L
//! | data ....... | (unused, if any) ... | state slot 0 | state slot 1 | bitmap slot 0 |
//!                                        ... | bitmap slot P-1 | superblock (4 KiB) |
//! ```
//!
//! - The **superblock** is the last 4 KiB, so it is found without knowing the data
//!   size: magic, layout version, mirror name, data size, backing size, peer slots and
//!   every area's offset, guarded by a CRC-32. It is written once (at creation or
//!   conversion) and never rewritten in place.
//! - Two **state slots** of [`STATE_SLOT_BYTES`] hold the small state (generations, disk
//!   state, activity log, clean flag, split-brain resolutions, the peer → bitmap slot
//!   table) with a sequence number and a CRC-32. Writes alternate between them, so a torn
//!   write leaves the other, older slot valid.
//! - One **bitmap slot** per peer: 4 KiB pages of [`PAGE_WORDS`] bitmap words (one bit
//!   per [`BLOCK_BYTES`]) plus a CRC-32 over (slot, page, words). Pages are rewritten in
//!   place; a page whose CRC fails (a torn write) reads as all dirty, which costs resync
//!   traffic and never loses a change.
//!
//! Integers are little endian.

use crate::mirror::bitmap::BLOCK_BYTES;

/// The unit of every area: one page.
pub const PAGE: u64 = 4096;
/// Bytes of one state slot.
pub const STATE_SLOT_BYTES: u64 = 128 << 10;
/// Bitmap words in one page (the rest of the page: CRC-32 and 4 reserved bytes).
pub const PAGE_WORDS: usize = 511;
/// Blocks one bitmap page covers (32,704 blocks: 127.75 MiB of data).
pub const PAGE_BLOCKS: u64 = PAGE_WORDS as u64 * 64;
/// At most this many peer slots (DRBD's limit too).
pub const MAX_PEER_SLOTS: u32 = 31;
/// The longest mirror name the superblock holds.
pub const MAX_NAME: usize = 64;

const SB_MAGIC: &[u8; 8] = b"TANDMETA";
const SB_VERSION: u32 = 1;
const SLOT_MAGIC: &[u8; 8] = b"TANDSTAT";
const SLOT_HEADER: usize = 24;

/// Why a piece of the area does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no Tandem superblock (bad magic)")]
    NoMagic,
    #[error("superblock layout version {0}; this build reads version {SB_VERSION}")]
    Version(u32),
    #[error("superblock checksum mismatch (corrupt superblock)")]
    Checksum,
    #[error("superblock fields are inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("state slot: {0}")]
    Slot(&'static str),
}

/// Bytes of one peer's bitmap slot for a data size of `data_size`.
pub fn bitmap_slot_bytes(data_size: u64) -> u64 {
    data_size.div_ceil(BLOCK_BYTES).div_ceil(PAGE_BLOCKS).max(1) * PAGE
}

/// Bytes of the whole metadata area: superblock + two state slots + one bitmap slot
/// per peer slot.
pub fn area_bytes(data_size: u64, peer_slots: u32) -> u64 {
    PAGE + 2 * STATE_SLOT_BYTES + u64::from(peer_slots) * bitmap_slot_bytes(data_size)
}

/// The largest data size (a multiple of 4 KiB) that fits a backing of `backing` bytes
/// together with its metadata area; None if not even 4 KiB fits.
pub fn max_data_size(backing: u64, peer_slots: u32) -> Option<u64> {
    let mut d = backing.checked_sub(area_bytes(backing, peer_slots))? / PAGE * PAGE;
    while d + PAGE + area_bytes(d + PAGE, peer_slots) <= backing {
        d += PAGE;
    }
    (d > 0).then_some(d)
}

/// The superblock: where everything is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub mirror: String,
    pub data_size: u64,
    pub backing_size: u64,
    pub peer_slots: u32,
    pub area_offset: u64,
    pub state_offset: u64,
    pub bitmap_offset: u64,
    pub bitmap_slot_bytes: u64,
}

impl Superblock {
    /// The layout for `data_size` bytes of data at the start of a backing of
    /// `backing_size` bytes (the caller checked that it fits).
    pub fn new(mirror: &str, data_size: u64, backing_size: u64, peer_slots: u32) -> Superblock {
        let area_offset = backing_size - area_bytes(data_size, peer_slots);
        Superblock {
            mirror: mirror.to_string(),
            data_size,
            backing_size,
            peer_slots,
            area_offset,
            state_offset: area_offset,
            bitmap_offset: area_offset + 2 * STATE_SLOT_BYTES,
            bitmap_slot_bytes: bitmap_slot_bytes(data_size),
        }
    }

    /// Where the superblock of a backing of `backing_size` bytes lives.
    pub fn offset(backing_size: u64) -> u64 {
        backing_size.saturating_sub(PAGE)
    }

    /// Offset of state slot `i` (0 or 1).
    pub fn state_slot(&self, i: u64) -> u64 {
        self.state_offset + (i % 2) * STATE_SLOT_BYTES
    }

    /// Offset of page `page` of bitmap slot `slot`.
    pub fn bitmap_page(&self, slot: u32, page: u64) -> u64 {
        self.bitmap_offset + u64::from(slot) * self.bitmap_slot_bytes + page * PAGE
    }

    /// Pages of one bitmap slot.
    pub fn bitmap_pages(&self) -> u64 {
        self.bitmap_slot_bytes / PAGE
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE as usize];
        b[0..8].copy_from_slice(SB_MAGIC);
        b[8..12].copy_from_slice(&SB_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.peer_slots.to_le_bytes());
        for (i, v) in [
            self.data_size,
            self.backing_size,
            self.area_offset,
            self.state_offset,
            STATE_SLOT_BYTES,
            self.bitmap_offset,
            self.bitmap_slot_bytes,
        ]
        .iter()
        .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let name = self.mirror.as_bytes();
        let n = name.len().min(MAX_NAME);
        b[72..74].copy_from_slice(&(n as u16).to_le_bytes());
        b[74..74 + n].copy_from_slice(&name[..n]);
        let crc = crc32fast::hash(&b[..PAGE as usize - 4]);
        b[PAGE as usize - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, LayoutError> {
        if b.len() != PAGE as usize || &b[0..8] != SB_MAGIC {
            return Err(LayoutError::NoMagic);
        }
        let crc = u32::from_le_bytes(b[PAGE as usize - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..PAGE as usize - 4]) != crc {
            return Err(LayoutError::Checksum);
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != SB_VERSION {
            return Err(LayoutError::Version(version));
        }
        let u = |i: usize| u64::from_le_bytes(b[16 + 8 * i..24 + 8 * i].try_into().expect("8"));
        let n = usize::from(u16::from_le_bytes([b[72], b[73]])).min(MAX_NAME);
        let sb = Superblock {
            mirror: String::from_utf8_lossy(&b[74..74 + n]).into_owned(),
            data_size: u(0),
            backing_size: u(1),
            peer_slots: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            area_offset: u(2),
            state_offset: u(3),
            bitmap_offset: u(5),
            bitmap_slot_bytes: u(6),
        };
        if u(4) != STATE_SLOT_BYTES {
            return Err(LayoutError::Inconsistent("state slot size"));
        }
        if sb.peer_slots > MAX_PEER_SLOTS
            || sb != Superblock::new(&sb.mirror, sb.data_size, sb.backing_size, sb.peer_slots)
            || sb.data_size > sb.area_offset
        {
            return Err(LayoutError::Inconsistent("area offsets"));
        }
        Ok(sb)
    }
}

/// One state slot's bytes: header (magic, sequence number, payload length, CRC-32 over
/// sequence number, length and payload) and payload.
pub fn encode_slot(seq: u64, payload: &[u8]) -> Result<Vec<u8>, LayoutError> {
    if payload.len() > STATE_SLOT_BYTES as usize - SLOT_HEADER {
        return Err(LayoutError::Slot("the state does not fit its slot"));
    }
    let mut b = Vec::with_capacity(SLOT_HEADER + payload.len());
    b.extend_from_slice(SLOT_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[8..20]);
    h.update(payload);
    b.extend_from_slice(&h.finalize().to_le_bytes());
    b.extend_from_slice(payload);
    Ok(b)
}

/// Reads a state slot: `(seq, payload)`.
pub fn decode_slot(b: &[u8]) -> Result<(u64, &[u8]), LayoutError> {
    if b.len() < SLOT_HEADER || &b[0..8] != SLOT_MAGIC {
        return Err(LayoutError::Slot("empty or bad magic"));
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
    let payload = b
        .get(SLOT_HEADER..SLOT_HEADER + len)
        .ok_or(LayoutError::Slot("length beyond the slot"))?;
    let mut h = crc32fast::Hasher::new();
    h.update(&b[8..20]);
    h.update(payload);
    if h.finalize() != crc {
        return Err(LayoutError::Slot("checksum mismatch (torn write)"));
    }
    Ok((seq, payload))
}

fn page_crc(slot: u32, page: u64, words: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot.to_le_bytes());
    h.update(&(page as u32).to_le_bytes());
    h.update(words);
    h.finalize()
}

/// Page `page` of bitmap slot `slot` holding `words` (at most [`PAGE_WORDS`]; missing
/// words are clean).
pub fn encode_page(slot: u32, page: u64, words: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; PAGE as usize];
    for (i, w) in words.iter().take(PAGE_WORDS).enumerate() {
        b[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    let crc = page_crc(slot, page, &b[..PAGE_WORDS * 8]);
    b[PAGE_WORDS * 8..PAGE_WORDS * 8 + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The words of a bitmap page, or None if its CRC fails (torn or damaged).
pub fn decode_page(slot: u32, page: u64, b: &[u8]) -> Option<Vec<u64>> {
    let words = &b[..PAGE_WORDS * 8];
    let crc = u32::from_le_bytes(b[PAGE_WORDS * 8..PAGE_WORDS * 8 + 4].try_into().ok()?);
    (page_crc(slot, page, words) == crc).then(|| {
        words
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIB: u64 = 1 << 40;

    #[test]
    fn the_area_of_one_tib_with_two_peers_is_about_64_mib() {
        // ceil(2^28 blocks / 32704) = 8209 pages per peer.
        assert_eq!(bitmap_slot_bytes(TIB), 8209 * 4096);
        assert_eq!(area_bytes(TIB, 2), 4096 + 2 * (128 << 10) + 2 * 8209 * 4096);
        assert_eq!(area_bytes(TIB, 2), 67_514_368);
        assert_eq!(bitmap_slot_bytes(1), 4096);
    }

    #[test]
    fn max_data_size_is_the_largest_that_fits() {
        for backing in [1u64 << 30, (1 << 30) + 12345, 300 << 20, TIB + 4096 * 7] {
            let d = max_data_size(backing, 3).unwrap();
            assert!(d.is_multiple_of(PAGE) && d + area_bytes(d, 3) <= backing);
            assert!(d + PAGE + area_bytes(d + PAGE, 3) > backing);
        }
        assert_eq!(max_data_size(100 << 10, 1), None);
    }

    #[test]
    fn the_superblock_round_trips_and_refuses_damage() {
        let sb = Superblock::new("vol0", 64 << 20, (64 << 20) + area_bytes(64 << 20, 2), 2);
        assert_eq!(sb.area_offset, 64 << 20);
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert_eq!(Superblock::decode(&bad), Err(LayoutError::Checksum));
        assert_eq!(
            Superblock::decode(&vec![0; 4096]),
            Err(LayoutError::NoMagic)
        );
    }

    #[test]
    fn a_slot_round_trips_and_a_torn_one_is_refused() {
        let b = encode_slot(7, b"{\"x\":1}").unwrap();
        assert_eq!(decode_slot(&b).unwrap(), (7, &b"{\"x\":1}"[..]));
        let mut torn = b.clone();
        *torn.last_mut().unwrap() = b'!';
        assert!(decode_slot(&torn).is_err());
        assert!(encode_slot(1, &vec![0; STATE_SLOT_BYTES as usize]).is_err());
    }

    #[test]
    fn a_page_round_trips_and_knows_its_place() {
        let words: Vec<u64> = (0..PAGE_WORDS as u64).map(|i| i * 0x0101).collect();
        let p = encode_page(1, 5, &words);
        assert_eq!(decode_page(1, 5, &p), Some(words));
        assert_eq!(decode_page(1, 6, &p), None, "a page written elsewhere");
        assert_eq!(decode_page(0, 0, &vec![0; 4096]), None);
    }
}
