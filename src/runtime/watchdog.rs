//! The watchdog device that backs the owner lease (`[quorum] watchdog`): carries out
//! the node core's [`WatchdogCommand`]s and decides nothing.
//!
//! Linux's watchdog API (Documentation/watchdog/watchdog-api.rst): opening the device
//! starts it, `WDIOC_SETTIMEOUT` sets its timeout in seconds, any write pets it, and
//! writing the magic character 'V' before closing stops it. A close without 'V' (a
//! crash, a kill) leaves it running, and the machine is reset when the timeout passes.
//! A device that is not a character device (the lab's stand-in reads a FIFO) gets the
//! same bytes but no ioctl.
//!
//! A device that cannot be opened or written is reported to the node core
//! ([`WatchdogError::fault`]), which then lets this node run nothing; the runtime checks
//! it at start and retries it every [`RETRY_EVERY`] ([`WatchdogDevice::probe`]: open,
//! magic close) until it opens again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::node::{WatchdogCommand, WatchdogFault, WatchdogOp};

/// How often an unavailable device is tried again.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What went wrong with the watchdog device.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("opening the watchdog {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting the timeout of the watchdog {path} to {timeout_s} s: {source}")]
    SetTimeout {
        path: PathBuf,
        timeout_s: u64,
        source: nix::Error,
    },
    #[error("the watchdog {path} took a timeout of {got} s instead of {wanted} s")]
    Timeout {
        path: PathBuf,
        wanted: u64,
        got: i32,
    },
    #[error("writing to the watchdog {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl WatchdogError {
    /// What the node core is told: the device, what failed, and the OS error.
    pub fn fault(&self) -> WatchdogFault {
        let (path, op, error) = match self {
            WatchdogError::Open { path, source } => (path, WatchdogOp::Open, source.to_string()),
            WatchdogError::SetTimeout { path, source, .. } => {
                (path, WatchdogOp::SetTimeout, source.to_string())
            }
            WatchdogError::Timeout { path, got, .. } => (
                path,
                WatchdogOp::SetTimeout,
                format!("the driver took {got} s"),
            ),
            WatchdogError::Write { path, source } => (path, WatchdogOp::Write, source.to_string()),
        };
        WatchdogFault {
            device: path.display().to_string(),
            op,
            error,
        }
    }
}

// linux/watchdog.h: #define WDIOC_SETTIMEOUT _IOWR(WATCHDOG_IOCTL_BASE, 6, int), base 'W'.
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

/// The byte a pet writes (anything but the magic 'V').
const PET: &[u8] = b".";
/// The magic close character.
const MAGIC_CLOSE: &[u8] = b"V";

/// The watchdog device, open while armed.
#[derive(Debug)]
pub struct WatchdogDevice {
    path: PathBuf,
    file: Option<File>,
}

impl WatchdogDevice {
    pub fn new(path: &Path) -> WatchdogDevice {
        WatchdogDevice {
            path: path.to_path_buf(),
            file: None,
        }
    }

    /// The device of `[quorum] watchdog`, if configured (closed: not armed yet).
    pub fn configured(cfg: &crate::config::Config) -> Option<WatchdogDevice> {
        cfg.quorum
            .watchdog
            .as_ref()
            .map(|w| WatchdogDevice::new(&w.device))
    }

    pub fn armed(&self) -> bool {
        self.file.is_some()
    }

    /// Carries out one command of the node core.
    pub fn carry_out(&mut self, cmd: WatchdogCommand) -> Result<(), WatchdogError> {
        match cmd {
            WatchdogCommand::Arm { timeout_s } => self.arm(timeout_s),
            WatchdogCommand::Pet => self.write(PET),
            WatchdogCommand::Disarm => self.disarm(),
        }
    }

    /// Opens the device; whether it is a character device (a real watchdog).
    fn open(&self) -> Result<(File, bool), WatchdogError> {
        let open_err = |source| WatchdogError::Open {
            path: self.path.clone(),
            source,
        };
        let char_dev = std::fs::metadata(&self.path)
            .map_err(open_err)?
            .file_type()
            .is_char_device();
        let mut opts = OpenOptions::new();
        opts.write(true);
        if !char_dev {
            // A FIFO without a reader fails at once (ENXIO) rather than blocking.
            opts.custom_flags(libc::O_NONBLOCK);
        }
        let file = opts.open(&self.path).map_err(open_err)?;
        Ok((file, char_dev))
    }

    /// Checks that the device can be opened and written while nothing is armed:
    /// opens it and closes it at once with the magic 'V' (a real device runs only
    /// for that instant). Armed already: nothing to check.
    pub fn probe(&mut self) -> Result<(), WatchdogError> {
        if self.file.is_some() {
            return Ok(());
        }
        let (mut file, _) = self.open()?;
        file.write_all(MAGIC_CLOSE)
            .map_err(|source| WatchdogError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Opens the device (which starts it) and sets the timeout on a real one.
    pub fn arm(&mut self, timeout_s: u64) -> Result<(), WatchdogError> {
        if self.file.is_some() {
            return Ok(());
        }
        let (file, char_dev) = self.open()?;
        if char_dev {
            let mut t = libc::c_int::try_from(timeout_s).unwrap_or(libc::c_int::MAX);
            // SAFETY: the fd is open for as long as `file` lives, and WDIOC_SETTIMEOUT
            // reads and writes exactly one c_int, which `t` is.
            unsafe { wdioc_settimeout(file.as_raw_fd(), &mut t) }.map_err(|source| {
                WatchdogError::SetTimeout {
                    path: self.path.clone(),
                    timeout_s,
                    source,
                }
            })?;
            if u64::try_from(t).ok() != Some(timeout_s) {
                // The driver rounded it: disarm at once rather than run unprotected
                // or reset early.
                let _ = (&file).write_all(MAGIC_CLOSE);
                return Err(WatchdogError::Timeout {
                    path: self.path.clone(),
                    wanted: timeout_s,
                    got: t,
                });
            }
        }
        tracing::info!(device = %self.path.display(), timeout_s, "watchdog armed");
        self.file = Some(file);
        Ok(())
    }

    /// Writes the magic 'V' and closes: the device stops without a reset.
    pub fn disarm(&mut self) -> Result<(), WatchdogError> {
        if self.file.is_none() {
            return Ok(());
        }
        self.write(MAGIC_CLOSE)?;
        self.file = None;
        tracing::info!(device = %self.path.display(), "watchdog disarmed");
        Ok(())
    }

    /// A failed write closes the device (after a last try at the magic 'V'): it
    /// protects nothing now, and the next arm opens it afresh.
    fn write(&mut self, bytes: &[u8]) -> Result<(), WatchdogError> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let Err(source) = f.write_all(bytes) else {
            return Ok(());
        };
        let _ = f.write_all(MAGIC_CLOSE);
        self.file = None;
        Err(WatchdogError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_fifo_gets_a_byte_per_pet_and_the_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("wd");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut wd = WatchdogDevice::new(&fifo);
        assert!(
            matches!(wd.arm(1), Err(WatchdogError::Open { .. })),
            "no reader: refused, not blocked"
        );
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        wd.carry_out(WatchdogCommand::Arm { timeout_s: 1 }).unwrap();
        assert!(wd.armed());
        wd.carry_out(WatchdogCommand::Pet).unwrap();
        wd.carry_out(WatchdogCommand::Pet).unwrap();
        wd.carry_out(WatchdogCommand::Disarm).unwrap();
        assert!(!wd.armed());
        wd.carry_out(WatchdogCommand::Pet).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"..V");
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let mut wd = WatchdogDevice::new(Path::new("/nonexistent/watchdog"));
        let e = wd.arm(1).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/watchdog"), "{e}");
    }

    #[test]
    fn a_missing_device_fails_the_probe_with_its_path_and_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        let mut wd = WatchdogDevice::new(&path);
        let f = wd.probe().unwrap_err().fault();
        assert_eq!(f.device, path.display().to_string());
        assert_eq!(f.op, WatchdogOp::Open);
        assert!(f.error.contains("os error 2"), "{}", f.error);
        // It appears (a regular file stands in): the retry succeeds, and the probe
        // wrote only the magic close.
        std::fs::write(&path, b"").unwrap();
        wd.probe().unwrap();
        assert!(!wd.armed());
        assert_eq!(std::fs::read(&path).unwrap(), b"V");
    }

    #[test]
    fn a_fifo_whose_reader_went_away_fails_the_pet_and_closes_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("wd");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut wd = WatchdogDevice::new(&fifo);
        wd.probe().unwrap();
        wd.arm(1).unwrap();
        drop(reader);
        // SIGPIPE is ignored by Rust programs: the write fails with EPIPE.
        let e = wd.carry_out(WatchdogCommand::Pet).unwrap_err();
        assert_eq!(e.fault().op, WatchdogOp::Write);
        assert!(!wd.armed(), "a failed device is closed");
        assert_eq!(wd.probe().unwrap_err().fault().op, WatchdogOp::Open);
    }
}
