//! Block volumes and how clients reach them: the [`Export`] seam that both a local
//! [`volume::Volume`] and (later) the replicated mirror implement, and an NBD server
//! ([`nbd`]) that serves any `Export` to qemu, nbdkit clients and the kernel's nbd driver.
//!
//! The replication's pure cores: [`bitmap`] (the per-peer dirty-block bitmap and the
//! activity log that bounds a crash), [`generation`] (generation identifiers, disk
//! states, who resyncs from whom, split brain), [`connect`] (the plan two copies follow
//! when they connect), [`fencing`] (outdate requests over the heartbeats) and
//! [`recovery`] (what a copy may lack, as its primary last reported).

pub mod bitmap;
pub mod connect;
pub mod fencing;
pub mod generation;
pub mod nbd;
pub mod node;
pub mod plan;
pub mod rate_log;
pub mod reconcile;
pub mod recovery;
pub mod replica;
pub mod schedule;
pub mod status;
pub mod volume;
pub mod wire;

use std::future::Future;

/// What can go wrong serving an export request; each maps to the errno an NBD client sees.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The backing storage failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The backing storage is full (or over quota).
    #[error("no space left on the volume")]
    NoSpace,
    /// The request is malformed or outside the export.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// A write-type request on a read-only export.
    #[error("the export is read-only")]
    ReadOnly,
    /// The export is going away (shutdown or lost role).
    #[error("the export is shutting down")]
    Shutdown,
}

impl ExportError {
    /// The errno value NBD puts on the wire for this error.
    pub fn errno(&self) -> u32 {
        match self {
            ExportError::Io(_) => nbd::proto::EIO,
            ExportError::NoSpace => nbd::proto::ENOSPC,
            ExportError::Invalid(_) => nbd::proto::EINVAL,
            ExportError::ReadOnly => nbd::proto::EPERM,
            ExportError::Shutdown => nbd::proto::ESHUTDOWN,
        }
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ExportError::NoSpace,
            _ => ExportError::Io(e),
        }
    }
}

/// One run of a block-status answer: `length` bytes that are all holes (unallocated)
/// or not, and all read as zeroes or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub hole: bool,
    pub zero: bool,
}

/// A block device as the NBD server (or any other front end) sees it. Implementations
/// are shared by every connection, so a `flush` must make every write that completed
/// before it durable, whichever connection sent it. Callers check bounds before calling.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// True if writes, trims and write-zeroes are refused.
    fn read_only(&self) -> bool;
    /// Reads `len` bytes at `offset`.
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<u8>, ExportError>> + Send;
    /// Writes `data` at `offset`; with `fua`, the data is durable when this returns.
    /// The buffer is handed over so that it can move to an I/O thread (and back to
    /// the caller's pool when dropped).
    fn write(
        &self,
        offset: u64,
        data: impl AsRef<[u8]> + Send + 'static,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// Discards a range (advisory: the contents become unspecified).
    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// Makes a range read as zeroes; `may_trim` allows deallocating it.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// Allocation status of `[offset, offset + len)`: at least one extent, in order,
    /// covering no more than `len` bytes.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<Extent>, ExportError>> + Send;
}
