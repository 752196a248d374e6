//! External metadata: the mirror's metadata in its own directory: `state.json` (generations and
//! disk state), `al.json` (the activity log's hot extents), one `bitmap-<peer>` per
//! peer (`DirtyBitmap::encode`), `resolutions.json` (pending split-brain resolutions by
//! peer, `tandem mirror resolve`; absent when none) and a `clean` flag present only
//! after a clean shutdown.
//! Every file is replaced durably: write a temp file, fsync it, rename it over, fsync
//! the directory. Any failure is returned; nothing is dropped silently.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{CopyMeta, Loaded, MetaError};
use crate::mirror::bitmap::DirtyBitmap;
use crate::mirror::generation::{DiskState, Generations, OwnershipEpoch, Resolution};

/// The metadata directory of one mirror.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
    /// One file replacement at a time (they share temp names and the directory fsync).
    writing: Arc<Mutex<()>>,
    /// The pending split-brain resolutions by peer, as persisted in `resolutions.json`.
    resolutions: Arc<Mutex<BTreeMap<String, Resolution>>>,
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DirStore {
    /// Opens (creating) the directory and reads the state back; a new store starts as
    /// an UpToDate copy that was never written (generation 0).
    pub fn open(dir: &Path, size_bytes: u64) -> Result<(DirStore, Loaded), MetaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut store = DirStore {
            dir: dir.to_owned(),
            writing: Arc::new(Mutex::new(())),
            resolutions: Arc::default(),
        };
        store.resolutions = Arc::new(Mutex::new(store.load_resolutions()?));
        let state_path = dir.join("state.json");
        let loaded = match fs::read(&state_path) {
            Ok(bytes) => {
                let copy: CopyMeta =
                    serde_json::from_slice(&bytes).map_err(|e| MetaError::Corrupt {
                        path: state_path.clone(),
                        reason: e.to_string(),
                    })?;
                if copy.size_bytes != size_bytes {
                    return Err(MetaError::SizeMismatch {
                        stored: copy.size_bytes,
                        actual: size_bytes,
                    });
                }
                let al_path = dir.join("al.json");
                let al_extents = match fs::read(&al_path) {
                    Ok(b) => serde_json::from_slice(&b).map_err(|e| MetaError::Corrupt {
                        path: al_path.clone(),
                        reason: e.to_string(),
                    })?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_err(&al_path)(e)),
                };
                let clean = dir.join("clean").exists();
                Loaded {
                    copy,
                    al_extents,
                    clean,
                    created: false,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let copy = CopyMeta {
                    size_bytes,
                    disk: DiskState::UpToDate,
                    generations: Generations::new(),
                    epoch: OwnershipEpoch::default(),
                };
                store.save_copy(&copy)?;
                Loaded {
                    copy,
                    al_extents: Vec::new(),
                    clean: true,
                    created: true,
                }
            }
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        Ok((store, loaded))
    }

    fn bitmap_path(&self, peer: &str) -> PathBuf {
        self.dir.join(format!("bitmap-{peer}"))
    }

    /// Reads a peer's bitmap (a clean one if none was stored).
    pub fn load_bitmap(&self, peer: &str, size_bytes: u64) -> Result<DirtyBitmap, MetaError> {
        let path = self.bitmap_path(peer);
        match fs::read(&path) {
            Ok(b) => DirtyBitmap::decode(&b, size_bytes)
                .map_err(|source| MetaError::Bitmap { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DirtyBitmap::new(size_bytes)),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn save_copy(&self, copy: &CopyMeta) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec_pretty(copy).map_err(|e| MetaError::Corrupt {
            path: self.dir.join("state.json"),
            reason: e.to_string(),
        })?;
        self.replace("state.json", &bytes)
    }

    pub fn save_al(&self, extents: &[u64]) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(extents).map_err(|e| MetaError::Corrupt {
            path: self.dir.join("al.json"),
            reason: e.to_string(),
        })?;
        self.replace("al.json", &bytes)
    }

    pub fn save_bitmap(&self, peer: &str, bitmap: &DirtyBitmap) -> Result<(), MetaError> {
        self.replace(&format!("bitmap-{peer}"), &bitmap.encode())
    }

    /// The pending split-brain resolution toward `peer` (as loaded or last set).
    pub fn resolution(&self, peer: &str) -> Option<Resolution> {
        self.lock_resolutions().get(peer).copied()
    }

    /// Sets (Some) or drops (None) the resolution toward `peer` and persists them all;
    /// on failure nothing changes.
    pub fn set_resolution(&self, peer: &str, r: Option<Resolution>) -> Result<(), MetaError> {
        let mut all = self.lock_resolutions().clone();
        match r {
            Some(r) => all.insert(peer.to_string(), r),
            None => all.remove(peer),
        };
        self.save_resolutions(&all)?;
        *self.lock_resolutions() = all;
        Ok(())
    }

    fn lock_resolutions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Resolution>> {
        self.resolutions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pending split-brain resolutions by peer (none if the file is absent).
    fn load_resolutions(&self) -> Result<BTreeMap<String, Resolution>, MetaError> {
        let path = self.dir.join("resolutions.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| MetaError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces the pending split-brain resolutions (durably).
    fn save_resolutions(
        &self,
        resolutions: &BTreeMap<String, Resolution>,
    ) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec_pretty(resolutions).map_err(|e| MetaError::Corrupt {
            path: self.dir.join("resolutions.json"),
            reason: e.to_string(),
        })?;
        self.replace("resolutions.json", &bytes)
    }

    /// Sets or removes the clean-shutdown flag (durably).
    pub fn set_clean(&self, clean: bool) -> Result<(), MetaError> {
        let path = self.dir.join("clean");
        if clean {
            self.replace("clean", b"clean\n")
        } else {
            match fs::remove_file(&path) {
                Ok(()) => self.sync_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&path)(e)),
            }
        }
    }

    /// Every pending resolution (for a conversion).
    pub fn resolutions(&self) -> BTreeMap<String, Resolution> {
        self.lock_resolutions().clone()
    }

    /// The data size a directory's `state.json` records; None if it has none.
    pub fn stored_size(dir: &Path) -> Result<Option<u64>, MetaError> {
        let path = dir.join("state.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CopyMeta>(&bytes)
                .map(|c| Some(c.size_bytes))
                .map_err(|e| MetaError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The peers that have a bitmap file here.
    pub fn peers_with_bitmaps(&self) -> Result<Vec<String>, MetaError> {
        let mut peers = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let name = entry.map_err(io_err(&self.dir))?.file_name();
            if let Some(peer) = name.to_str().and_then(|n| n.strip_prefix("bitmap-")) {
                peers.push(peer.to_string());
            }
        }
        Ok(peers)
    }

    /// Removes every metadata file (split-brain dumps stay) once another copy of the
    /// metadata is durable.
    pub fn remove_all(&self) -> Result<(), MetaError> {
        let mut names: Vec<String> = ["state.json", "al.json", "resolutions.json", "clean"]
            .into_iter()
            .map(str::to_string)
            .collect();
        names.extend(
            self.peers_with_bitmaps()?
                .iter()
                .map(|p| format!("bitmap-{p}")),
        );
        for name in names {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), MetaError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), MetaError> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(name);
        replace_file(&self.dir, name, bytes).map_err(io_err(&path))
    }
}

/// Replaces `dir/name` durably: writes `dir/.name.tmp`, fsyncs it, renames it over and
/// fsyncs the directory. Callers writing the same name serialise themselves.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_resolutions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.resolution("b"), None);
        let theirs = Resolution::Theirs { generation: 7 };
        let mine = Resolution::Mine { peer_generation: 9 };
        store.set_resolution("b", Some(theirs)).unwrap();
        store.set_resolution("c", Some(mine)).unwrap();
        store.set_resolution("d", None).unwrap();
        let (again, _) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.resolution("b"), Some(theirs));
        assert_eq!(again.resolution("c"), Some(mine));
        again.set_resolution("b", None).unwrap();
        let (third, _) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            (third.resolution("b"), third.resolution("c")),
            (None, Some(mine))
        );
    }

    #[test]
    fn state_bitmaps_and_the_clean_flag_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert!(loaded.created && loaded.clean);
        assert_eq!(loaded.copy.disk, DiskState::UpToDate);
        let mut copy = loaded.copy.clone();
        copy.disk = DiskState::Outdated;
        copy.generations.current = 42;
        copy.epoch = OwnershipEpoch(4);
        store.save_copy(&copy).unwrap();
        store.save_al(&[3, 1]).unwrap();
        let mut bm = DirtyBitmap::new(1 << 20);
        bm.mark(8192, 100);
        store.save_bitmap("b", &bm).unwrap();
        store.set_clean(false).unwrap();
        let (store, loaded) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert!(!loaded.clean && !loaded.created);
        assert_eq!(loaded.copy, copy);
        assert_eq!(loaded.al_extents, vec![3, 1]);
        assert_eq!(store.load_bitmap("b", 1 << 20).unwrap(), bm);
        assert!(store.load_bitmap("c", 1 << 20).unwrap().is_clean());
        assert!(matches!(
            DirStore::open(dir.path(), 2 << 20),
            Err(MetaError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn metadata_from_before_epochs_loads_with_epoch_zero() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"size_bytes":1048576,"disk":"up_to_date",
            "generations":{"current":42,"bitmap":{},"history":[]}}"#;
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let (_, loaded) = DirStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(loaded.copy.epoch, OwnershipEpoch(0));
        assert_eq!(loaded.copy.generations.current, 42);
    }
}
