//! The lease sector's I/O: aligned 4 KiB reads and writes at the lease offset of a file
//! or block device, opened with `O_DIRECT` so that every read reaches the disk the other
//! nodes write to. Where `O_DIRECT` is refused (tmpfs, some overlay file systems) the
//! file is opened with `O_DSYNC`: writes still reach stable storage before they return,
//! and on one machine the page cache is shared by every reader anyway.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::record::SECTOR;

/// A lease sector that could not be opened, read or written.
#[derive(Debug, Error)]
pub enum DiskError {
    #[error("the lease offset {0} is not a multiple of {SECTOR}")]
    Unaligned(u64),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lease sector I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One lease sector on a file or block device.
#[derive(Debug)]
pub struct LeaseDisk {
    file: File,
    path: PathBuf,
    offset: u64,
    direct: bool,
}

/// A sector-sized buffer aligned to the sector size, as `O_DIRECT` needs.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let buf = vec![0u8; SECTOR * 2];
        let start = buf.as_ptr().align_offset(SECTOR);
        Self { buf, start }
    }

    fn sector(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + SECTOR]
    }
}

impl LeaseDisk {
    /// Opens `path` for the lease sector at `offset` (a multiple of 4 KiB).
    pub fn open(path: &Path, offset: u64) -> Result<Self, DiskError> {
        if !offset.is_multiple_of(SECTOR as u64) {
            return Err(DiskError::Unaligned(offset));
        }
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(file) => (Ok(file), true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(libc::O_DSYNC), false),
            Err(e) => (Err(e), true),
        };
        let file = file.map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            offset,
            direct,
        })
    }

    /// Whether the file is open with `O_DIRECT` (else `O_DSYNC`).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads the lease sector.
    pub fn read(&self) -> Result<Vec<u8>, DiskError> {
        let mut buf = Aligned::new();
        self.file
            .read_exact_at(buf.sector(), self.offset)
            .map_err(|e| self.io(e))?;
        Ok(buf.sector().to_vec())
    }

    /// Writes the lease sector (`bytes` is one sector).
    pub fn write(&self, bytes: &[u8]) -> Result<(), DiskError> {
        let mut buf = Aligned::new();
        buf.sector().copy_from_slice(&bytes[..SECTOR]);
        self.file
            .write_all_at(buf.sector(), self.offset)
            .map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> DiskError {
        DiskError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::record::{decode, Record, Sector};

    #[test]
    fn a_record_written_at_the_offset_reads_back_and_nothing_else_moves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xAAu8; SECTOR * 4]).unwrap();
        let disk = LeaseDisk::open(&path, SECTOR as u64).unwrap();
        let record = Record {
            node: "n1".into(),
            incarnation: 3,
            counter: 1,
        };
        disk.write(&record.encode()).unwrap();
        assert_eq!(decode(&disk.read().unwrap()), Sector::Held(record));
        let all = std::fs::read(&path).unwrap();
        assert!(all[..SECTOR].iter().all(|b| *b == 0xAA));
        assert!(all[SECTOR * 2..].iter().all(|b| *b == 0xAA));
    }

    #[test]
    fn an_unaligned_offset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; SECTOR]).unwrap();
        assert!(matches!(
            LeaseDisk::open(&path, 512),
            Err(DiskError::Unaligned(512))
        ));
    }
}
