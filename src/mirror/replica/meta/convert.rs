//! `tandem mirror convert-metadata`: moves a stopped mirror's metadata between its
//! state directory (external) and the end of its backing (internal), without losing
//! data or state (generations, disk state, activity log, bitmaps, resolutions, the
//! clean flag). The new metadata is written durably before the old one is removed.
//!
//! To internal: a regular file grows by the metadata area (what lies past the data must
//! be zeros); a block device keeps its size, so the area must fit after the data and
//! hold only zeros, else nothing is written and the error says what to shrink. To
//! external: a regular file is cut back to the data; on a block device the area is
//! zeroed and the data size stays (the config must then name it as `size`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::internal::{self, InternalStore, SmallState};
use super::layout::{self, Superblock};
use super::{lock_dir, CopyMeta, DirStore, MetaError};
use crate::config::MirrorConfig;
use crate::mirror::bitmap::DirtyBitmap;

/// One copy's mirror, as a conversion sees it.
#[derive(Debug, Clone)]
pub struct ConvertSpec {
    pub mirror: String,
    pub backing: PathBuf,
    /// The mirror's state directory (external metadata, dumps, the lock).
    pub dir: PathBuf,
    /// Bitmap slots of the internal area.
    pub peer_slots: u32,
    /// The peers this copy replicates to (they get a bitmap slot even when clean).
    pub peers: Vec<String>,
    /// Handle the backing as a block device (never resized) even if it is a file.
    pub as_device: bool,
}

impl ConvertSpec {
    /// The spec of `m`'s copy on `node`, with state under `state_dir`.
    pub fn from_config(m: &MirrorConfig, node: &str, state_dir: &Path) -> ConvertSpec {
        ConvertSpec {
            mirror: m.name.clone(),
            backing: m.backing.clone(),
            dir: crate::mirror::replica::state_dir_of(state_dir, &m.name),
            peer_slots: internal_peer_slots(m),
            peers: m.links_of(node).map(|(p, _)| p.to_string()).collect(),
            as_device: false,
        }
    }
}

/// The peer slots an internal area of `m` gets: one per other copy.
pub fn internal_peer_slots(m: &MirrorConfig) -> u32 {
    m.addresses.len().saturating_sub(1).max(1) as u32
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub data_size: u64,
    pub backing_size: u64,
    /// Bytes of the internal area (created or removed).
    pub area_bytes: u64,
    /// What the operator must change in the config, if anything.
    pub note: Option<String>,
}

/// External → internal.
pub fn to_internal(spec: &ConvertSpec) -> Result<Converted, MetaError> {
    let _lock = lock_dir(&spec.dir, Duration::ZERO)?;
    if internal::open_existing(&spec.backing)?.is_some() {
        return Err(MetaError::AlreadyConverted("internal"));
    }
    let size = DirStore::stored_size(&spec.dir)?.ok_or_else(|| MetaError::NothingToConvert {
        kind: "external",
        at: spec.dir.clone(),
    })?;
    let (ext, loaded) = DirStore::open(&spec.dir, size)?;
    let mut peers = spec.peers.clone();
    for p in ext.peers_with_bitmaps()? {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    let (file, backing_size, device) = internal::open_backing(&spec.backing)?;
    let device = device || spec.as_device;
    let (sb, note) = plan_internal(spec, &file, size, backing_size, device)?;
    let mut state = SmallState {
        copy: CopyMeta {
            size_bytes: sb.data_size,
            ..loaded.copy
        },
        al: loaded.al_extents,
        clean: loaded.clean,
        resolutions: ext.resolutions(),
        peer_slots: Default::default(),
    };
    let mut bitmaps = Vec::new();
    for (slot, peer) in peers.iter().enumerate() {
        if slot as u32 >= spec.peer_slots {
            return Err(MetaError::TooManyPeers {
                backing: spec.backing.clone(),
                slots: spec.peer_slots,
                peer: peer.clone(),
            });
        }
        let old = ext.load_bitmap(peer, size)?;
        bitmaps.push((
            slot as u32,
            DirtyBitmap::from_words(sb.data_size, old.words().to_vec()),
        ));
        state.peer_slots.insert(peer.clone(), slot as u32);
    }
    if !device && backing_size < sb.backing_size {
        file.set_len(sb.backing_size)
            .and_then(|()| file.sync_all())
            .map_err(|source| MetaError::Io {
                path: spec.backing.clone(),
                source,
            })?;
    }
    let refs: Vec<(u32, &DirtyBitmap)> = bitmaps.iter().map(|(s, b)| (*s, b)).collect();
    let store = InternalStore::create(file, &spec.backing, sb.clone(), state, &refs)?;
    drop(store);
    ext.remove_all()?;
    tracing::info!(mirror = %spec.mirror, data_size = sb.data_size, "metadata converted to internal");
    Ok(Converted {
        data_size: sb.data_size,
        backing_size: sb.backing_size,
        area_bytes: layout::area_bytes(sb.data_size, spec.peer_slots),
        note,
    })
}

/// Where the area goes, after checking that everything past the (new) data is zeros.
fn plan_internal(
    spec: &ConvertSpec,
    file: &std::fs::File,
    size: u64,
    backing_size: u64,
    device: bool,
) -> Result<(Superblock, Option<String>), MetaError> {
    let area = layout::area_bytes(size, spec.peer_slots);
    if !device {
        if backing_size < size {
            return Err(MetaError::SizeMismatch {
                stored: size,
                actual: backing_size,
            });
        }
        let total = backing_size.max(size + area);
        internal::check_tail_zero(file, &spec.backing, size, backing_size, total - area)?;
        let sb = internal::plan(
            &spec.backing,
            &spec.mirror,
            total,
            Some(size),
            spec.peer_slots,
        )?;
        return Ok((sb, None));
    }
    let fits = layout::max_data_size(backing_size, spec.peer_slots).unwrap_or(0);
    let data = size.min(fits);
    let sb = internal::plan(
        &spec.backing,
        &spec.mirror,
        backing_size,
        Some(data.max(layout::PAGE)),
        spec.peer_slots,
    )?;
    internal::check_tail_zero(file, &spec.backing, data, backing_size, sb.area_offset)?;
    let note = (data < size).then(|| {
        format!(
            "the volume shrinks from {size} to {data} bytes to make room for the metadata: set `size = {data}` for this mirror in the config, and convert every copy before they reconnect"
        )
    });
    Ok((sb, note))
}

/// Internal → external.
pub fn to_external(spec: &ConvertSpec) -> Result<Converted, MetaError> {
    let _lock = lock_dir(&spec.dir, Duration::ZERO)?;
    let store = internal::open_existing(&spec.backing)?.ok_or_else(|| {
        if spec.dir.join("state.json").exists() {
            MetaError::AlreadyConverted("external")
        } else {
            MetaError::NothingToConvert {
                kind: "internal",
                at: spec.backing.clone(),
            }
        }
    })?;
    let sb = store.superblock().clone();
    if sb.mirror != spec.mirror {
        return Err(MetaError::ForeignMirror {
            backing: spec.backing.clone(),
            found: sb.mirror,
            expected: spec.mirror.clone(),
        });
    }
    let state = store.state();
    let (ext, _) = DirStore::open(&spec.dir, sb.data_size)?;
    for peer in state.peer_slots.keys() {
        ext.save_bitmap(peer, &store.load_bitmap(peer, sb.data_size)?)?;
    }
    ext.save_al(&state.al)?;
    for (peer, r) in &state.resolutions {
        ext.set_resolution(peer, Some(*r))?;
    }
    ext.save_copy(&state.copy)?;
    ext.set_clean(state.clean)?;
    let (_, _, device) = internal::open_backing(&spec.backing)?;
    let device = device || spec.as_device;
    store.destroy((!device).then_some(sb.area_offset))?;
    tracing::info!(mirror = %spec.mirror, data_size = sb.data_size, "metadata converted to external");
    let note = (device && sb.data_size < sb.backing_size).then(|| {
        format!(
            "the volume stays {} bytes (the device has {}): set `size = {}` for this mirror in the config",
            sb.data_size, sb.backing_size, sb.data_size
        )
    });
    Ok(Converted {
        data_size: sb.data_size,
        backing_size: if device {
            sb.backing_size
        } else {
            sb.area_offset
        },
        area_bytes: layout::area_bytes(sb.data_size, sb.peer_slots),
        note,
    })
}
