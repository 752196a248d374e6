//! The watchdog device that backs the owner lease (`[quorum] watchdog`): carries out
//! the node core's [`WatchdogCommand`]s and decides nothing.
//!
//! Linux's watchdog API (Documentation/watchdog/watchdog-api.rst): opening the device
//! starts it, `WDIOC_SETTIMEOUT` sets its timeout in seconds, any write pets it, and
//! writing the magic character 'V' before closing stops it. A close without 'V' (a
//! crash, a kill) leaves it running, and the machine is reset when the timeout passes.
//! A device that is not a character device (the lab's stand-in reads a FIFO) gets the
//! same bytes but no ioctl.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::node::WatchdogCommand;

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

    /// Opens the device (which starts it) and sets the timeout on a real one.
    pub fn arm(&mut self, timeout_s: u64) -> Result<(), WatchdogError> {
        if self.file.is_some() {
            return Ok(());
        }
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

    fn write(&mut self, bytes: &[u8]) -> Result<(), WatchdogError> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(bytes).map_err(|source| WatchdogError::Write {
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
}
