//! The mirror's durable metadata behind one API, [`MetaStore`], with two backends
//! (`metadata` in `[[mirror]]`):
//!
//! - **external** ([`dir`]): files in the mirror's state directory, each replaced
//!   durably;
//! - **internal** ([`internal`], layout in [`layout`]): a reserved area at the end of
//!   the backing device; the mirror exposes only the data before it.
//!
//! Either way every write is durable (fsync/fdatasync) before it returns, and any
//! failure is returned, never dropped. Split-brain dumps are files in the state
//! directory with both backends. A running mirror holds an exclusive lock on
//! `<state dir>/lock`, so [`convert`] (which needs the mirror stopped) can refuse.

pub mod convert;
mod dir;
pub mod internal;
pub mod layout;
pub use dir::replace_file;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::mirror::bitmap::{BitmapError, DirtyBitmap};
use crate::mirror::generation::{DiskState, Generations, OwnershipEpoch, Resolution};

pub use self::dir::DirStore;
use self::internal::InternalStore;
use self::layout::LayoutError;

/// Why metadata cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("mirror metadata {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mirror metadata {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("mirror metadata {path}: {source}")]
    Bitmap { path: PathBuf, source: BitmapError },
    #[error("the metadata is for a volume of {stored} bytes, the backing store has {actual}")]
    SizeMismatch { stored: u64, actual: u64 },
    #[error("{backing} has {backing_size} bytes, too small for {data_size} bytes of data plus {area_bytes} bytes of internal metadata ({needed} in all): grow it, lower the mirror's `size`, or (for a mirror that has data and external metadata) run `tandem mirror convert-metadata NAME --to internal`")]
    TooSmall {
        backing: PathBuf,
        backing_size: u64,
        data_size: u64,
        area_bytes: u64,
        needed: u64,
    },
    #[error("the internal metadata on {backing} belongs to mirror {found:?}, not {expected:?}: this backing is another mirror's; check `backing` in the config")]
    ForeignMirror {
        backing: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the internal metadata on {backing} was written for {stored_data} bytes of data on a backing of {stored_backing} bytes; now the backing has {backing_size} bytes and the config asks for {configured}: restore the size the metadata was made for (resizing needs a conversion to external metadata and back)")]
    SizeChanged {
        backing: PathBuf,
        stored_data: u64,
        stored_backing: u64,
        backing_size: u64,
        configured: String,
    },
    #[error("the internal-metadata superblock at the end of {backing} is damaged ({source}); nothing was written. Restore the device, or recreate the copy's metadata and let it take a full resync from a peer")]
    BadSuperblock {
        backing: PathBuf,
        source: LayoutError,
    },
    #[error("the internal metadata on {backing} has {slots} peer slots, and {peer:?} needs one more: convert the metadata to external and back (`tandem mirror convert-metadata NAME --to external`, then `--to internal`) to make room for every copy")]
    TooManyPeers {
        backing: PathBuf,
        slots: u32,
        peer: String,
    },
    #[error("the last {len} bytes of {backing} (from offset {offset}) are where internal metadata goes, but they hold data (a non-zero byte at {first_nonzero}) and no Tandem superblock; nothing was written. Shrink what uses the device to end before {offset} and zero the rest, or grow the device")]
    TailInUse {
        backing: PathBuf,
        offset: u64,
        len: u64,
        first_nonzero: u64,
    },
    /// The config makes the metadata internal (the mirror's `metadata`, or `[cluster]
    /// mirror_metadata` for a mirror without one), and the copy has external metadata.
    #[error("{dir} holds the external metadata (generations, bitmaps) of mirror `{mirror}`, but the config makes its metadata internal (`metadata = \"internal\"` on the mirror, or `mirror_metadata = \"internal\"` in [cluster] for a mirror without `metadata`); nothing was written. Stop the daemon and run `tandem mirror convert-metadata {mirror} --to internal`, or set `metadata = \"external\"` on this mirror")]
    ExternalPresent { dir: PathBuf, mirror: String },
    /// The other way round: the config makes it external, the backing has internal.
    #[error("{backing} ends with the internal metadata of mirror `{mirror}`, but the config makes its metadata external (`metadata = \"external\"` on the mirror, or `[cluster] mirror_metadata` external, the default, for a mirror without `metadata`); nothing was written. Set `metadata = \"internal\"` on this mirror, or stop the daemon and run `tandem mirror convert-metadata {mirror} --to external`")]
    InternalPresent { backing: PathBuf, mirror: String },
    #[error("the metadata of this mirror is already {0}")]
    AlreadyConverted(&'static str),
    #[error("no {kind} metadata to convert ({at})")]
    NothingToConvert { kind: &'static str, at: PathBuf },
    #[error(
        "the mirror is running (its metadata {lock} is locked): stop the daemon on this node first"
    )]
    InUse { lock: PathBuf },
}

/// The persisted state of this copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyMeta {
    pub size_bytes: u64,
    pub disk: DiskState,
    pub generations: Generations,
    /// The highest ownership epoch this copy followed or was promoted at (see
    /// `core::EpochGuard`); metadata written before epochs existed loads as 0.
    #[serde(default)]
    pub epoch: OwnershipEpoch,
}

impl CopyMeta {
    /// A new copy: UpToDate, never written (generation 0).
    pub fn fresh(size_bytes: u64) -> CopyMeta {
        CopyMeta {
            size_bytes,
            disk: DiskState::UpToDate,
            generations: Generations::new(),
            epoch: OwnershipEpoch::default(),
        }
    }
}

/// What `open` found.
#[derive(Debug)]
pub struct Loaded {
    pub copy: CopyMeta,
    pub al_extents: Vec<u64>,
    /// False after a crash (or on first creation: then `created` is true).
    pub clean: bool,
    pub created: bool,
}

/// Where a mirror's metadata lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaPlacement {
    /// Files in the state directory.
    External,
    /// At the end of the backing, with room for this many peers' bitmaps.
    Internal { peer_slots: u32 },
}

#[derive(Debug, Clone)]
enum Backend {
    External(DirStore),
    Internal(Arc<InternalStore>),
}

/// The metadata of one mirror; cloning shares it.
#[derive(Debug, Clone)]
pub struct MetaStore {
    /// The mirror's state directory (split-brain dumps, the lock).
    dir: PathBuf,
    backend: Backend,
    _lock: Arc<File>,
}

/// How long `open` waits for the lock of a mirror that is closing.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes `<dir>/lock` exclusively, waiting up to `wait` for a holder to let go.
pub(crate) fn lock_dir(dir: &Path, wait: Duration) -> Result<File, MetaError> {
    std::fs::create_dir_all(dir).map_err(dir::io_err(dir))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(dir::io_err(&path))?;
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(dir::io_err(&path)(e));
        }
        if start.elapsed() >= wait {
            return Err(MetaError::InUse { lock: path });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl MetaStore {
    /// Opens (creating) external metadata in `dir`; a new store starts as an UpToDate
    /// copy that was never written (generation 0).
    pub fn open(dir: &Path, size_bytes: u64) -> Result<(MetaStore, Loaded), MetaError> {
        let lock = lock_dir(dir, LOCK_WAIT)?;
        let (store, loaded) = DirStore::open(dir, size_bytes)?;
        Ok((
            MetaStore {
                dir: dir.to_owned(),
                backend: Backend::External(store),
                _lock: Arc::new(lock),
            },
            loaded,
        ))
    }

    /// Opens (creating, on a tail of zeros) internal metadata at the end of `backing`
    /// for mirror `mirror`; `size` is the configured data size (default: all that
    /// fits). The data size is `Loaded::copy.size_bytes`.
    pub fn open_internal(
        dir: &Path,
        backing: &Path,
        mirror: &str,
        peer_slots: u32,
        size: Option<u64>,
    ) -> Result<(MetaStore, Loaded), MetaError> {
        let lock = lock_dir(dir, LOCK_WAIT)?;
        let (store, loaded) = InternalStore::open(dir, backing, mirror, peer_slots, size)?;
        Ok((
            MetaStore {
                dir: dir.to_owned(),
                backend: Backend::Internal(Arc::new(store)),
                _lock: Arc::new(lock),
            },
            loaded,
        ))
    }

    /// The mirror's state directory (where split-brain dumps go).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads a peer's bitmap (a clean one if none was stored).
    pub fn load_bitmap(&self, peer: &str, size_bytes: u64) -> Result<DirtyBitmap, MetaError> {
        match &self.backend {
            Backend::External(s) => s.load_bitmap(peer, size_bytes),
            Backend::Internal(s) => s.load_bitmap(peer, size_bytes),
        }
    }

    pub fn save_copy(&self, copy: &CopyMeta) -> Result<(), MetaError> {
        match &self.backend {
            Backend::External(s) => s.save_copy(copy),
            Backend::Internal(s) => s.update(|st| st.copy = copy.clone()),
        }
    }

    pub fn save_al(&self, extents: &[u64]) -> Result<(), MetaError> {
        match &self.backend {
            Backend::External(s) => s.save_al(extents),
            Backend::Internal(s) => s.update(|st| st.al = extents.to_vec()),
        }
    }

    pub fn save_bitmap(&self, peer: &str, bitmap: &DirtyBitmap) -> Result<(), MetaError> {
        match &self.backend {
            Backend::External(s) => s.save_bitmap(peer, bitmap),
            Backend::Internal(s) => s.save_bitmap(peer, bitmap),
        }
    }

    /// The pending split-brain resolution toward `peer` (as loaded or last set).
    pub fn resolution(&self, peer: &str) -> Option<Resolution> {
        match &self.backend {
            Backend::External(s) => s.resolution(peer),
            Backend::Internal(s) => s.resolutions().get(peer).copied(),
        }
    }

    /// Sets (Some) or drops (None) the resolution toward `peer` and persists them all;
    /// on failure nothing changes.
    pub fn set_resolution(&self, peer: &str, r: Option<Resolution>) -> Result<(), MetaError> {
        match &self.backend {
            Backend::External(s) => s.set_resolution(peer, r),
            Backend::Internal(s) => s.update(|st| match r {
                Some(r) => drop(st.resolutions.insert(peer.to_string(), r)),
                None => drop(st.resolutions.remove(peer)),
            }),
        }
    }

    /// Sets or removes the clean-shutdown flag (durably).
    pub fn set_clean(&self, clean: bool) -> Result<(), MetaError> {
        match &self.backend {
            Backend::External(s) => s.set_clean(clean),
            Backend::Internal(s) => s.update(|st| st.clean = clean),
        }
    }
}

/// The pending resolutions by peer (the form both backends persist).
pub type Resolutions = BTreeMap<String, Resolution>;
