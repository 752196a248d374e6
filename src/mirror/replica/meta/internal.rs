//! Internal metadata: the [`layout`](super::layout) area at the end of the backing
//! file or block device. Small state goes to the two state slots in turn (the newer
//! valid slot wins on open, so a torn write falls back to the one before); bitmaps are
//! rewritten in place, only the pages that changed. Every write is followed by
//! fdatasync before it returns.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::dir::io_err;
use super::layout::{self, LayoutError, Superblock, PAGE, PAGE_WORDS, STATE_SLOT_BYTES};
use super::{CopyMeta, Loaded, MetaError, Resolutions};
use crate::mirror::bitmap::DirtyBitmap;

/// What a state slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallState {
    pub copy: CopyMeta,
    /// The activity log's hot extents.
    pub al: Vec<u64>,
    /// Set only after a clean shutdown.
    pub clean: bool,
    /// Pending split-brain resolutions by peer.
    pub resolutions: Resolutions,
    /// Which bitmap slot each peer owns.
    pub peer_slots: BTreeMap<String, u32>,
}

struct Slots {
    state: SmallState,
    seq: u64,
}

/// The words last written to each page of one bitmap slot (None: unknown, rewrite).
struct PageCache {
    words: Vec<u64>,
    known: Vec<bool>,
}

/// Internal metadata, open.
pub struct InternalStore {
    file: File,
    backing: PathBuf,
    sb: Superblock,
    slots: Mutex<Slots>,
    pages: Mutex<BTreeMap<u32, PageCache>>,
}

impl std::fmt::Debug for InternalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalStore")
            .field("backing", &self.backing)
            .field("superblock", &self.sb)
            .finish()
    }
}

/// Opens a backing read-write and returns its size (a block device's end offset).
pub fn open_backing(path: &Path) -> Result<(File, u64, bool), MetaError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let device = meta.file_type().is_block_device();
    let size = if device {
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?
    } else {
        meta.len()
    };
    Ok((file, size, device))
}

/// The superblock at the end of `file` (None when the last page has no magic).
pub fn read_superblock(
    file: &File,
    backing: &Path,
    size: u64,
) -> Result<Option<Superblock>, MetaError> {
    if size < PAGE {
        return Ok(None);
    }
    let mut page = vec![0u8; PAGE as usize];
    file.read_exact_at(&mut page, Superblock::offset(size))
        .map_err(io_err(backing))?;
    match Superblock::decode(&page) {
        Ok(sb) => Ok(Some(sb)),
        Err(LayoutError::NoMagic) => Ok(None),
        Err(source) => Err(MetaError::BadSuperblock {
            backing: backing.to_owned(),
            source,
        }),
    }
}

/// The offset of the first non-zero byte in `[offset, offset + len)`, if any.
pub fn first_nonzero(
    file: &File,
    backing: &Path,
    offset: u64,
    len: u64,
) -> Result<Option<u64>, MetaError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    while pos < offset + len {
        let n = (offset + len - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io_err(backing))?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

fn datasync(file: &File, backing: &Path) -> Result<(), MetaError> {
    file.sync_data().map_err(io_err(backing))
}

impl InternalStore {
    /// Opens the metadata at the end of `backing`, or creates it on a tail of zeros.
    pub fn open(
        dir: &Path,
        backing: &Path,
        mirror: &str,
        peer_slots: u32,
        size: Option<u64>,
    ) -> Result<(InternalStore, Loaded), MetaError> {
        let (file, backing_size, _) = open_backing(backing)?;
        if let Some(sb) = read_superblock(&file, backing, backing_size)? {
            check_superblock(&sb, backing, mirror, backing_size, size)?;
            let store = InternalStore::load(file, backing, sb)?;
            let loaded = {
                let s = store.lock_slots();
                Loaded {
                    copy: s.state.copy.clone(),
                    al_extents: s.state.al.clone(),
                    clean: s.state.clean,
                    created: false,
                }
            };
            return Ok((store, loaded));
        }
        if dir.join("state.json").exists() {
            return Err(MetaError::ExternalPresent {
                dir: dir.to_owned(),
                mirror: mirror.to_string(),
            });
        }
        let sb = plan(backing, mirror, backing_size, size, peer_slots)?;
        check_tail_zero(&file, backing, sb.area_offset, backing_size, sb.area_offset)?;
        let state = SmallState {
            copy: CopyMeta::fresh(sb.data_size),
            al: Vec::new(),
            clean: true,
            resolutions: Resolutions::new(),
            peer_slots: BTreeMap::new(),
        };
        tracing::info!(backing = %backing.display(), data_size = sb.data_size, area_bytes = layout::area_bytes(sb.data_size, peer_slots), "creating internal mirror metadata");
        let store = InternalStore::create(file, backing, sb, state, &[])?;
        let loaded = Loaded {
            copy: CopyMeta::fresh(store.sb.data_size),
            al_extents: Vec::new(),
            clean: true,
            created: true,
        };
        Ok((store, loaded))
    }

    /// Writes a whole new area: every bitmap slot (the given bitmaps, the rest clean)
    /// and both state slots, durably, and only then the superblock, durably.
    pub fn create(
        file: File,
        backing: &Path,
        sb: Superblock,
        state: SmallState,
        bitmaps: &[(u32, &DirtyBitmap)],
    ) -> Result<InternalStore, MetaError> {
        let store = InternalStore {
            file,
            backing: backing.to_owned(),
            sb,
            slots: Mutex::new(Slots { state, seq: 0 }),
            pages: Mutex::new(BTreeMap::new()),
        };
        for slot in 0..store.sb.peer_slots {
            let empty = DirtyBitmap::new(store.sb.data_size);
            let bm = bitmaps
                .iter()
                .find(|(s, _)| *s == slot)
                .map_or(&empty, |(_, b)| *b);
            store.write_bitmap(slot, bm)?;
        }
        {
            // Both slots, so each holds a valid state from the start.
            let mut slots = store.lock_slots();
            for _ in 0..2 {
                let state = slots.state.clone();
                store.write_slot(&mut slots, state)?;
            }
        }
        store
            .file
            .write_all_at(
                &store.sb.encode(),
                Superblock::offset(store.sb.backing_size),
            )
            .map_err(io_err(backing))?;
        datasync(&store.file, backing)?;
        Ok(store)
    }

    /// Reads the newer valid state slot.
    fn load(file: File, backing: &Path, sb: Superblock) -> Result<InternalStore, MetaError> {
        let mut best: Option<(u64, SmallState)> = None;
        let mut reasons = Vec::new();
        for i in 0..2 {
            let mut buf = vec![0u8; STATE_SLOT_BYTES as usize];
            file.read_exact_at(&mut buf, sb.state_slot(i))
                .map_err(io_err(backing))?;
            let parsed = layout::decode_slot(&buf).and_then(|(seq, payload)| {
                serde_json::from_slice::<SmallState>(payload)
                    .map(|s| (seq, s))
                    .map_err(|_| LayoutError::Slot("unreadable state"))
            });
            match parsed {
                Ok((seq, s)) if best.as_ref().is_none_or(|(b, _)| seq > *b) => {
                    best = Some((seq, s))
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(backing = %backing.display(), slot = i, error = %e, "internal metadata: state slot unreadable, using the other one");
                    reasons.push(format!("slot {i}: {e}"));
                }
            }
        }
        let (seq, state) = best.ok_or_else(|| MetaError::Corrupt {
            path: backing.to_owned(),
            reason: format!("both state slots are unreadable ({})", reasons.join("; ")),
        })?;
        Ok(InternalStore {
            file,
            backing: backing.to_owned(),
            sb,
            slots: Mutex::new(Slots { state, seq }),
            pages: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    fn lock_slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pages(&self) -> MutexGuard<'_, BTreeMap<u32, PageCache>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The small state as last written.
    pub fn state(&self) -> SmallState {
        self.lock_slots().state.clone()
    }

    pub fn resolutions(&self) -> Resolutions {
        self.lock_slots().state.resolutions.clone()
    }

    /// Changes the small state and writes it to the older slot, durably; on failure
    /// nothing changes.
    pub fn update(&self, change: impl FnOnce(&mut SmallState)) -> Result<(), MetaError> {
        let mut slots = self.lock_slots();
        let mut state = slots.state.clone();
        change(&mut state);
        self.write_slot(&mut slots, state)
    }

    fn write_slot(&self, slots: &mut Slots, state: SmallState) -> Result<(), MetaError> {
        let payload = serde_json::to_vec(&state).map_err(|e| MetaError::Corrupt {
            path: self.backing.clone(),
            reason: e.to_string(),
        })?;
        let seq = slots.seq + 1;
        let bytes = layout::encode_slot(seq, &payload).map_err(|e| MetaError::Corrupt {
            path: self.backing.clone(),
            reason: e.to_string(),
        })?;
        self.file
            .write_all_at(&bytes, self.sb.state_slot(seq))
            .map_err(io_err(&self.backing))?;
        datasync(&self.file, &self.backing)?;
        *slots = Slots { state, seq };
        Ok(())
    }

    /// The bitmap slot of `peer`, assigning (durably) a free one to a new peer.
    fn slot_of(&self, peer: &str) -> Result<u32, MetaError> {
        let mut slots = self.lock_slots();
        if let Some(&s) = slots.state.peer_slots.get(peer) {
            return Ok(s);
        }
        let used: Vec<u32> = slots.state.peer_slots.values().copied().collect();
        let free = (0..self.sb.peer_slots)
            .find(|s| !used.contains(s))
            .ok_or_else(|| MetaError::TooManyPeers {
                backing: self.backing.clone(),
                slots: self.sb.peer_slots,
                peer: peer.to_string(),
            })?;
        let mut state = slots.state.clone();
        state.peer_slots.insert(peer.to_string(), free);
        self.write_slot(&mut slots, state)?;
        tracing::info!(backing = %self.backing.display(), peer, slot = free, "internal metadata: bitmap slot assigned");
        Ok(free)
    }

    /// Reads a peer's bitmap; a page that fails its CRC (torn) reads as all dirty.
    pub fn load_bitmap(&self, peer: &str, size_bytes: u64) -> Result<DirtyBitmap, MetaError> {
        if size_bytes != self.sb.data_size {
            return Err(MetaError::SizeMismatch {
                stored: self.sb.data_size,
                actual: size_bytes,
            });
        }
        let slot = self.slot_of(peer)?;
        let pages = self.sb.bitmap_pages();
        let mut raw = vec![0u8; self.sb.bitmap_slot_bytes as usize];
        self.file
            .read_exact_at(&mut raw, self.sb.bitmap_page(slot, 0))
            .map_err(io_err(&self.backing))?;
        let mut words = Vec::with_capacity(pages as usize * PAGE_WORDS);
        let mut known = Vec::with_capacity(pages as usize);
        for (p, page) in raw.chunks_exact(PAGE as usize).enumerate() {
            match layout::decode_page(slot, p as u64, page) {
                Some(w) => {
                    words.extend_from_slice(&w);
                    known.push(true);
                }
                None => {
                    tracing::warn!(backing = %self.backing.display(), peer, page = p, "internal metadata: bitmap page unreadable (torn write?), taken as all out of sync");
                    words.extend(std::iter::repeat_n(u64::MAX, PAGE_WORDS));
                    known.push(false);
                }
            }
        }
        let bitmap = DirtyBitmap::from_words(size_bytes, words.clone());
        self.lock_pages().insert(slot, PageCache { words, known });
        Ok(bitmap)
    }

    pub fn save_bitmap(&self, peer: &str, bitmap: &DirtyBitmap) -> Result<(), MetaError> {
        let slot = self.slot_of(peer)?;
        self.write_bitmap(slot, bitmap)
    }

    /// Writes the pages of `slot` that differ from what was last written there, in runs
    /// of adjacent pages, then fdatasync.
    fn write_bitmap(&self, slot: u32, bitmap: &DirtyBitmap) -> Result<(), MetaError> {
        let pages = self.sb.bitmap_pages() as usize;
        let mut cache = self.lock_pages();
        let cached = cache.entry(slot).or_insert_with(|| PageCache {
            words: vec![0; pages * PAGE_WORDS],
            known: vec![false; pages],
        });
        let mut new = bitmap.words().to_vec();
        new.resize(pages * PAGE_WORDS, 0);
        let changed: Vec<bool> = (0..pages)
            .map(|p| {
                let r = p * PAGE_WORDS..(p + 1) * PAGE_WORDS;
                !cached.known[p] || cached.words[r.clone()] != new[r]
            })
            .collect();
        let mut p = 0;
        let mut wrote = false;
        while p < pages {
            if !changed[p] {
                p += 1;
                continue;
            }
            let start = p;
            let mut run = Vec::new();
            while p < pages && changed[p] {
                let words = &new[p * PAGE_WORDS..(p + 1) * PAGE_WORDS];
                run.extend_from_slice(&layout::encode_page(slot, p as u64, words));
                p += 1;
            }
            self.file
                .write_all_at(&run, self.sb.bitmap_page(slot, start as u64))
                .map_err(io_err(&self.backing))?;
            wrote = true;
        }
        if wrote {
            datasync(&self.file, &self.backing)?;
        }
        cached.words = new;
        cached.known = vec![true; pages];
        Ok(())
    }

    /// Removes the metadata: zeroes the superblock first (durably), then the rest of
    /// the area; a regular file is cut back to `truncate_to` instead.
    pub fn destroy(self, truncate_to: Option<u64>) -> Result<(), MetaError> {
        let at = Superblock::offset(self.sb.backing_size);
        self.file
            .write_all_at(&vec![0u8; PAGE as usize], at)
            .map_err(io_err(&self.backing))?;
        datasync(&self.file, &self.backing)?;
        match truncate_to {
            Some(len) => self.file.set_len(len).map_err(io_err(&self.backing))?,
            None => {
                let zeros = vec![0u8; 1 << 20];
                let mut pos = self.sb.area_offset;
                while pos < at {
                    let n = (at - pos).min(zeros.len() as u64) as usize;
                    self.file
                        .write_all_at(&zeros[..n], pos)
                        .map_err(io_err(&self.backing))?;
                    pos += n as u64;
                }
            }
        }
        self.file.sync_all().map_err(io_err(&self.backing))
    }
}

/// Opens existing internal metadata (for a conversion); None if the backing has none.
pub fn open_existing(backing: &Path) -> Result<Option<InternalStore>, MetaError> {
    let (file, size, _) = open_backing(backing)?;
    match read_superblock(&file, backing, size)? {
        Some(sb) => {
            if sb.backing_size != size {
                return Err(size_changed(&sb, backing, size, None));
            }
            InternalStore::load(file, backing, sb).map(Some)
        }
        None => Ok(None),
    }
}

fn size_changed(sb: &Superblock, backing: &Path, size: u64, want: Option<u64>) -> MetaError {
    MetaError::SizeChanged {
        backing: backing.to_owned(),
        stored_data: sb.data_size,
        stored_backing: sb.backing_size,
        backing_size: size,
        configured: want.map_or_else(|| "no size".to_string(), |w| format!("{w} bytes")),
    }
}

fn check_superblock(
    sb: &Superblock,
    backing: &Path,
    mirror: &str,
    backing_size: u64,
    size: Option<u64>,
) -> Result<(), MetaError> {
    if sb.mirror != mirror {
        return Err(MetaError::ForeignMirror {
            backing: backing.to_owned(),
            found: sb.mirror.clone(),
            expected: mirror.to_string(),
        });
    }
    if sb.backing_size != backing_size || size.is_some_and(|s| s != sb.data_size) {
        return Err(size_changed(sb, backing, backing_size, size));
    }
    Ok(())
}

/// The layout for a new area: `size` bytes of data (default: all that fits).
pub fn plan(
    backing: &Path,
    mirror: &str,
    backing_size: u64,
    size: Option<u64>,
    peer_slots: u32,
) -> Result<Superblock, MetaError> {
    let data_size = match size {
        Some(s) => s,
        None => layout::max_data_size(backing_size, peer_slots).unwrap_or(PAGE),
    };
    let area_bytes = layout::area_bytes(data_size, peer_slots);
    if data_size + area_bytes > backing_size {
        return Err(MetaError::TooSmall {
            backing: backing.to_owned(),
            backing_size,
            data_size,
            area_bytes,
            needed: data_size + area_bytes,
        });
    }
    Ok(Superblock::new(mirror, data_size, backing_size, peer_slots))
}

/// Refuses unless `[from, backing_size)` holds only zeros; `area_offset` is reported
/// as where the metadata would start.
pub fn check_tail_zero(
    file: &File,
    backing: &Path,
    from: u64,
    backing_size: u64,
    area_offset: u64,
) -> Result<(), MetaError> {
    match first_nonzero(file, backing, from, backing_size - from)? {
        None => Ok(()),
        Some(first_nonzero) => Err(MetaError::TailInUse {
            backing: backing.to_owned(),
            offset: area_offset.min(from),
            len: backing_size - area_offset.min(from),
            first_nonzero,
        }),
    }
}

/// Refuses external metadata for a backing that ends with internal metadata (unless
/// the directory holds the external metadata too: an interrupted conversion back).
pub fn refuse_if_internal(dir: &Path, backing: &Path, mirror: &str) -> Result<(), MetaError> {
    if dir.join("state.json").exists() {
        return Ok(());
    }
    let Ok((file, size, _)) = open_backing(backing) else {
        return Ok(());
    };
    match read_superblock(&file, backing, size) {
        Ok(Some(_)) => Err(MetaError::InternalPresent {
            backing: backing.to_owned(),
            mirror: mirror.to_string(),
        }),
        _ => Ok(()),
    }
}
