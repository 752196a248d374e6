//! A local block volume: a regular file or a block device opened read-write, accessed
//! with positional I/O: small reads and writes in place on the calling task's thread,
//! syncs and large transfers on tokio's blocking pool. It is the [`Export`] of a node
//! without a peer, and the local leg of the replicated mirror.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{fdatasync, lseek, Whence};
use tokio::sync::Semaphore;

use super::{Export, ExportError, Extent};

/// Why a volume cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("cannot determine the size of {path}: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Zero-fill writes go out in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// The largest read or write (without FUA) run on the calling task's thread
/// ([`Volume::in_place`]): a copy into or out of the page cache of this size takes
/// microseconds, less than the two thread hand-offs of the blocking pool.
const IN_PLACE_MAX: usize = 64 << 10;

/// System calls on one volume that may run at once. More only queue up on the file's
/// locks in the kernel and spin there.
const IO_SLOTS: usize = 16;

/// A file or block device with a fixed size. Cloning shares the open file.
#[derive(Debug, Clone)]
pub struct Volume {
    file: Arc<File>,
    size: u64,
    read_only: bool,
    io_slots: Arc<Semaphore>,
}

impl Volume {
    /// Opens `path` (read-write unless `read_only`). The size is the file's length, or
    /// for a block device the end offset the kernel reports (the same as BLKGETSIZE64).
    pub fn open(path: &Path, read_only: bool) -> Result<Volume, VolumeError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| VolumeError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| VolumeError::Size {
            path: path.to_owned(),
            source,
        })?;
        let size = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))
                .map_err(|source| VolumeError::Size {
                    path: path.to_owned(),
                    source,
                })?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(VolumeError::NotFileOrBlockDevice {
                path: path.to_owned(),
            });
        };
        Ok(Volume {
            file: Arc::new(file),
            size,
            read_only,
            io_slots: Arc::new(Semaphore::new(IO_SLOTS)),
        })
    }

    /// Runs `f`, a short system call that touches only the page cache (a read or a
    /// write without FUA), on this task's own thread: `block_in_place` first hands the
    /// worker's other tasks to another thread, so nothing waits behind it, and the
    /// request does not pay two thread hand-offs (out to the blocking pool and back)
    /// the way [`Volume::blocking`] does. On a current-thread runtime, where that is
    /// not possible, it goes to the blocking pool.
    async fn in_place<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<T, ExportError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi_thread =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !multi_thread {
            return self.blocking(f).await;
        }
        let _slot = self
            .io_slots
            .acquire()
            .await
            .map_err(|_| ExportError::Shutdown)?;
        tokio::task::block_in_place(|| f(&self.file))
    }

    /// Runs `f` on the shared file on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<T, ExportError> {
        let _slot = self
            .io_slots
            .acquire()
            .await
            .map_err(|_| ExportError::Shutdown)?;
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|_| ExportError::Shutdown)?
    }

    fn check_writable(&self) -> Result<(), ExportError> {
        if self.read_only {
            Err(ExportError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

fn errno_to_export(e: Errno) -> ExportError {
    ExportError::from(std::io::Error::from(e))
}

fn datasync(file: &File) -> Result<(), ExportError> {
    fdatasync(file.as_raw_fd()).map_err(errno_to_export)
}

/// Deallocates a range; false if the file system or device cannot.
fn punch_hole(file: &File, offset: u64, len: u32) -> Result<bool, ExportError> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file.as_raw_fd(), flags, offset as i64, i64::from(len)) {
        Ok(()) => Ok(true),
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENODEV) | Err(Errno::EINVAL) => Ok(false),
        Err(e) => Err(errno_to_export(e)),
    }
}

fn zero_range(file: &File, offset: u64, len: u32, may_trim: bool) -> Result<(), ExportError> {
    if may_trim && punch_hole(file, offset, len)? {
        return Ok(());
    }
    let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file.as_raw_fd(), flags, offset as i64, i64::from(len)) {
        Ok(()) => return Ok(()),
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENODEV) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(errno_to_export(e)),
    }
    let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Walks `[offset, offset + len)` with SEEK_DATA / SEEK_HOLE. Where the file system
/// cannot tell, everything is reported as data.
fn allocation(file: &File, size: u64, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
    let fd = file.as_raw_fd();
    let end = offset + u64::from(len);
    let mut extents = Vec::new();
    let mut pos = offset;
    let push = |extents: &mut Vec<Extent>, from: u64, to: u64, hole: bool| {
        if to > from {
            extents.push(Extent {
                length: (to - from) as u32,
                hole,
                zero: hole,
            });
        }
    };
    while pos < end {
        let data = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            // No data at or after pos: the rest of the file is a hole.
            Err(Errno::ENXIO) => size,
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => {
                push(&mut extents, pos, end, false);
                break;
            }
            Err(e) => return Err(errno_to_export(e)),
        };
        if data > pos {
            push(&mut extents, pos, data.min(end), true);
            pos = data.min(end);
            continue;
        }
        let hole = match lseek(fd, pos as i64, Whence::SeekHole) {
            Ok(h) => h as u64,
            Err(Errno::ENXIO) => size,
            Err(e) => return Err(errno_to_export(e)),
        };
        // SEEK_HOLE always finds the virtual hole at end of file, so hole > pos here;
        // guard anyway so a confused file system cannot make this loop forever.
        let next = hole.clamp(pos + 1, end);
        push(&mut extents, pos, next, false);
        pos = next;
    }
    Ok(extents)
}

impl Export for Volume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, ExportError> {
        // A read may wait for the disk; only small ones run in place.
        let read = move |f: &File| {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        };
        if len as usize <= IN_PLACE_MAX {
            self.in_place(read).await
        } else {
            self.blocking(read).await
        }
    }

    async fn write(
        &self,
        offset: u64,
        data: impl AsRef<[u8]> + Send + 'static,
        fua: bool,
    ) -> Result<(), ExportError> {
        self.check_writable()?;
        let quick = !fua && data.as_ref().len() <= IN_PLACE_MAX;
        let write = move |f: &File| {
            f.write_all_at(data.as_ref(), offset)?;
            if fua {
                datasync(f)?;
            }
            Ok(())
        };
        if quick {
            self.in_place(write).await
        } else {
            self.blocking(write).await
        }
    }

    async fn flush(&self) -> Result<(), ExportError> {
        if self.read_only {
            return Ok(());
        }
        self.blocking(datasync).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), ExportError> {
        self.check_writable()?;
        self.blocking(move |f| punch_hole(f, offset, len).map(drop))
            .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), ExportError> {
        self.check_writable()?;
        self.blocking(move |f| {
            zero_range(f, offset, len, may_trim)?;
            if fua {
                datasync(f)?;
            }
            Ok(())
        })
        .await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        let size = self.size;
        self.blocking(move |f| allocation(f, size, offset, len))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(size: u64) -> (tempfile::TempDir, PathBuf, Volume) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.raw");
        File::create(&path).unwrap().set_len(size).unwrap();
        let v = Volume::open(&path, false).unwrap();
        (dir, path, v)
    }

    /// Small reads and writes run in place on a multi-thread runtime (and on the
    /// blocking pool on a current-thread one, as the other tests here run); both give
    /// the same bytes, and a large write still goes to the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_io_runs_in_place_on_a_multi_thread_runtime() {
        let (_d, _p, v) = volume(8 << 20);
        let writes: Vec<_> = (0..64u64)
            .map(|i| {
                let v = v.clone();
                tokio::spawn(async move { v.write(i * 4096, vec![i as u8; 4096], false).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        v.write(1 << 20, vec![0xcd; 1 << 20], false).await.unwrap();
        for i in 0..64u64 {
            assert_eq!(v.read(i * 4096, 4096).await.unwrap(), vec![i as u8; 4096]);
        }
        assert_eq!(v.read(1 << 20, 1 << 20).await.unwrap(), vec![0xcd; 1 << 20]);
    }

    #[tokio::test]
    async fn write_read_and_allocation() {
        let (_d, _p, v) = volume(8 << 20);
        assert_eq!(v.size(), 8 << 20);
        v.write(1 << 20, vec![0xab; 65536], true).await.unwrap();
        assert_eq!(v.read(1 << 20, 65536).await.unwrap(), vec![0xab; 65536]);
        let ext = v.block_status(0, 4 << 20).await.unwrap();
        let total: u64 = ext.iter().map(|e| u64::from(e.length)).sum();
        assert_eq!(total, 4 << 20);
        assert!(ext[0].hole && ext[0].zero);
        // The written range is data.
        let mut pos = 0u64;
        let mut saw_data = false;
        for e in &ext {
            if !e.hole {
                assert!(pos <= 1 << 20 && pos + u64::from(e.length) >= (1 << 20) + 65536);
                saw_data = true;
            }
            pos += u64::from(e.length);
        }
        assert!(saw_data);
    }

    #[tokio::test]
    async fn trim_and_write_zeroes_read_back_zero() {
        let (_d, _p, v) = volume(4 << 20);
        v.write(0, vec![0xcd; 2 << 20], false).await.unwrap();
        v.trim(0, 1 << 20).await.unwrap();
        v.write_zeroes(1 << 20, 4096, false, true).await.unwrap();
        v.write_zeroes(1 << 20 | 8192, 4096, true, false)
            .await
            .unwrap();
        assert_eq!(v.read(0, 1 << 20).await.unwrap(), vec![0; 1 << 20]);
        assert_eq!(v.read(1 << 20, 4096).await.unwrap(), vec![0; 4096]);
        assert_eq!(
            v.read((1 << 20) + 4096, 4096).await.unwrap(),
            vec![0xcd; 4096]
        );
        assert_eq!(v.read((1 << 20) + 8192, 4096).await.unwrap(), vec![0; 4096]);
        let ext = v.block_status(0, 1 << 20).await.unwrap();
        assert_eq!(
            ext,
            vec![Extent {
                length: 1 << 20,
                hole: true,
                zero: true
            }]
        );
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        let (_d, p, _v) = volume(1 << 20);
        let ro = Volume::open(&p, true).unwrap();
        assert!(matches!(
            ro.write(0, vec![1], false).await,
            Err(ExportError::ReadOnly)
        ));
        assert!(matches!(ro.trim(0, 1).await, Err(ExportError::ReadOnly)));
        assert_eq!(ExportError::ReadOnly.errno(), 1);
    }

    #[test]
    fn not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Volume::open(dir.path(), false),
            Err(VolumeError::NotFileOrBlockDevice { .. }) | Err(VolumeError::Open { .. })
        ));
    }

    #[test]
    fn enospc_maps_to_no_space() {
        let e = ExportError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, ExportError::NoSpace));
        assert_eq!(e.errno(), 28);
    }
}
