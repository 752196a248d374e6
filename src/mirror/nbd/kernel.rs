//! The kernel's NBD client (`/dev/nbdN`) attached to an NBD export on a Unix socket.
//!
//! Tandem negotiates the export itself ([`NbdClient`]) and hands the socket, already in
//! the transmission phase, to the driver through the classic ioctl interface:
//! `NBD_SET_SOCK` first (it claims the device, or fails with EBUSY if another task set
//! it up), then the block size, the size and the export's transmission flags, then
//! `NBD_DO_IT`, which blocks for as long as the device is connected and so runs on a
//! thread of its own. Passing the flags on means the filesystem's flushes and FUA
//! writes reach the server, and through a sync mirror the peer. Detaching sends
//! `NBD_DISCONNECT`; the server closes the connection and `NBD_DO_IT` returns.
//!
//! If the process dies, the kernel tears the device down with it; the export lives in
//! the same daemon, so nothing outlives its server.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::client::{ClientError, NbdClient};

/// Errors of attaching or detaching a kernel NBD device.
#[derive(Debug, thiserror::Error)]
pub enum KernelNbdError {
    #[error("NBD export at {socket}: {source}")]
    Export {
        socket: PathBuf,
        source: ClientError,
    },
    #[error("the kernel has no nbd driver (modprobe nbd: {0})")]
    NoDriver(String),
    #[error("no free /dev/nbdN device")]
    NoFreeDevice,
    #[error("{device}: {op}: {source}")]
    Ioctl {
        device: PathBuf,
        op: &'static str,
        source: Errno,
    },
    #[error("{device}: {source}")]
    Io {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{device} did not come up within {secs} s")]
    NotReady { device: PathBuf, secs: u64 },
    #[error("the export's size ({0} bytes) is not a whole number of 4 KiB blocks")]
    Size(u64),
}

const NBD_IOCTL_TYPE: u8 = 0xab;
const NBD_SET_SOCK: u8 = 0;
const NBD_SET_BLKSIZE: u8 = 1;
const NBD_DO_IT: u8 = 3;
const NBD_CLEAR_SOCK: u8 = 4;
const NBD_SET_SIZE_BLOCKS: u8 = 7;
const NBD_DISCONNECT: u8 = 8;
const NBD_SET_FLAGS: u8 = 10;
const BLOCK: u64 = 4096;

/// How long a freshly attached device may take to show up as connected.
const READY_WITHIN: Duration = Duration::from_secs(10);

fn nbd_ioctl(
    dev: &File,
    device: &Path,
    op: &'static str,
    nr: u8,
    arg: u64,
) -> Result<(), KernelNbdError> {
    let request = nix::request_code_none!(NBD_IOCTL_TYPE, nr);
    // SAFETY: the NBD ioctls used here take an integer argument by value, never a
    // pointer, and `dev` is an open descriptor of an nbd device for the whole call.
    let rc = unsafe { nix::libc::ioctl(dev.as_raw_fd(), request as _, arg as nix::libc::c_ulong) };
    Errno::result(rc)
        .map(drop)
        .map_err(|source| KernelNbdError::Ioctl {
            device: device.to_path_buf(),
            op,
            source,
        })
}

/// The indexes of the nbd devices under `sys_block` that have no socket attached
/// (no `pid` attribute), lowest first.
pub fn free_devices(sys_block: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut free: Vec<u32> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = name.strip_prefix("nbd")?.parse::<u32>().ok()?;
            (!e.path().join("pid").exists()).then_some(index)
        })
        .collect();
    free.sort_unstable();
    free
}

fn connected(index: u32) -> bool {
    Path::new(&format!("/sys/block/nbd{index}/pid")).exists()
}

/// Loads the nbd driver if no nbd device exists yet.
async fn ensure_driver() -> Result<(), KernelNbdError> {
    if Path::new("/sys/block/nbd0").exists() {
        return Ok(());
    }
    let out = tokio::process::Command::new("modprobe")
        .arg("nbd")
        .output()
        .await
        .map_err(|e| KernelNbdError::NoDriver(e.to_string()))?;
    if !out.status.success() || !Path::new("/sys/block/nbd0").exists() {
        return Err(KernelNbdError::NoDriver(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A kernel NBD device connected to an export.
#[derive(Debug)]
pub struct KernelNbd {
    index: u32,
    device: PathBuf,
    /// Runs `NBD_DO_IT` until the device disconnects.
    worker: Option<std::thread::JoinHandle<()>>,
}

impl KernelNbd {
    /// Negotiates the export behind `socket` and attaches it to the first free
    /// `/dev/nbdN`, loading the driver if needed. Returns once the device is connected.
    pub async fn attach(socket: &Path) -> Result<KernelNbd, KernelNbdError> {
        ensure_driver().await?;
        let export_error = |source| KernelNbdError::Export {
            socket: socket.to_path_buf(),
            source,
        };
        let client = NbdClient::connect(socket).await.map_err(export_error)?;
        let (size, flags) = (client.size(), client.transmission_flags());
        if size % BLOCK != 0 {
            return Err(KernelNbdError::Size(size));
        }
        let stream = client
            .into_socket()
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| export_error(ClientError::Io(e)))?;
        tokio::task::spawn_blocking(move || attach_blocking(stream, size, flags))
            .await
            .map_err(|e| KernelNbdError::Io {
                device: PathBuf::from("/dev/nbd"),
                source: std::io::Error::other(e),
            })?
    }

    /// The block device, `/dev/nbdN`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// True while the device still has its connection.
    pub fn is_connected(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished()) && connected(self.index)
    }

    /// Disconnects the device (the kernel sends `NBD_CMD_DISC`) and waits for it.
    pub async fn detach(mut self) -> Result<(), KernelNbdError> {
        let device = self.device.clone();
        let worker = self.worker.take();
        tokio::task::spawn_blocking(move || {
            let result = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&device)
                .map_err(|source| KernelNbdError::Io {
                    device: device.clone(),
                    source,
                })
                .and_then(|dev| {
                    nbd_ioctl(&dev, &device, "NBD_DISCONNECT", NBD_DISCONNECT, 0)
                        .or_else(ignore_not_connected)
                });
            if let Some(w) = worker {
                let _ = w.join();
            }
            result
        })
        .await
        .map_err(|e| KernelNbdError::Io {
            device: self.device.clone(),
            source: std::io::Error::other(e),
        })?
    }
}

/// Disconnecting a device whose connection is already gone is not an error.
fn ignore_not_connected(e: KernelNbdError) -> Result<(), KernelNbdError> {
    match e {
        KernelNbdError::Ioctl {
            source: Errno::EINVAL | Errno::ENOTCONN,
            ..
        } => Ok(()),
        e => Err(e),
    }
}

fn attach_blocking(
    stream: std::os::unix::net::UnixStream,
    size: u64,
    flags: u16,
) -> Result<KernelNbd, KernelNbdError> {
    let candidates = free_devices(Path::new("/sys/block"));
    for index in candidates {
        let device = PathBuf::from(format!("/dev/nbd{index}"));
        let Ok(dev) = OpenOptions::new().read(true).write(true).open(&device) else {
            continue;
        };
        let sock = stream.try_clone().map_err(|source| KernelNbdError::Io {
            device: device.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let dev_path = device.clone();
        // Setup and NBD_DO_IT on one thread: the driver ties a device being set up to
        // the task that gave it the socket.
        let worker = std::thread::Builder::new()
            .name(format!("nbd{index}"))
            .spawn(move || {
                let setup = (|| {
                    let fd = sock.as_raw_fd() as u64;
                    nbd_ioctl(&dev, &dev_path, "NBD_SET_SOCK", NBD_SET_SOCK, fd)?;
                    nbd_ioctl(&dev, &dev_path, "NBD_SET_BLKSIZE", NBD_SET_BLKSIZE, BLOCK)?;
                    let blocks = size / BLOCK;
                    nbd_ioctl(
                        &dev,
                        &dev_path,
                        "NBD_SET_SIZE_BLOCKS",
                        NBD_SET_SIZE_BLOCKS,
                        blocks,
                    )?;
                    nbd_ioctl(
                        &dev,
                        &dev_path,
                        "NBD_SET_FLAGS",
                        NBD_SET_FLAGS,
                        u64::from(flags),
                    )
                })();
                let ok = setup.is_ok();
                if !ok {
                    // Give back a device we claimed but could not configure.
                    let _ = nbd_ioctl(&dev, &dev_path, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0);
                }
                let _ = tx.send(setup);
                if ok {
                    if let Err(e) = nbd_ioctl(&dev, &dev_path, "NBD_DO_IT", NBD_DO_IT, 0) {
                        tracing::debug!(error = %e, "nbd device ended");
                    }
                    let _ = nbd_ioctl(&dev, &dev_path, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0);
                }
                drop(sock);
            })
            .map_err(|source| KernelNbdError::Io {
                device: device.clone(),
                source,
            })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(KernelNbdError::Ioctl {
                source: Errno::EBUSY,
                ..
            })) => {
                // Taken by someone else between the scan and the claim: try the next.
                let _ = worker.join();
                continue;
            }
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(e);
            }
            Err(_) => {
                let _ = worker.join();
                return Err(KernelNbdError::NotReady { device, secs: 0 });
            }
        }
        let t = Instant::now();
        while !connected(index) {
            if worker.is_finished() || t.elapsed() > READY_WITHIN {
                return Err(KernelNbdError::NotReady {
                    device,
                    secs: READY_WITHIN.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(KernelNbd {
            index,
            device,
            worker: Some(worker),
        });
    }
    Err(KernelNbdError::NoFreeDevice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_devices_are_the_nbd_entries_without_a_pid_lowest_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["nbd10", "nbd2", "nbd0", "sda", "nbdx"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("nbd0/pid"), "123\n").unwrap();
        assert_eq!(free_devices(dir.path()), vec![2, 10]);
        assert!(free_devices(&dir.path().join("missing")).is_empty());
    }
}
