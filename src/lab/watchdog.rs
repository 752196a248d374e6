//! The lab's watchdog stand-in: the lab never loads softdog, which would reset the
//! whole machine. Each Tandem node of a lab with a quorum gets a FIFO as its
//! `[quorum] watchdog` device, and `tandem lab watchdog-standin` (hidden, started
//! detached in the switch namespace, so that `lab down` ends it) reads it like a
//! watchdog driver: armed by the first byte, petted by each byte, stopped by the magic
//! 'V'. When armed and left unpetted for its timeout it resets the node: a power kill
//! of the node's namespace as `lab fail NODE kill` does, and the node's addresses
//! flushed (a reset machine holds none), logged and written as a JSON line to
//! `<node dir>/watchdog-events.jsonl`. The node stays off until `lab fail NODE
//! restart`, which, like a power cut, also stops the stand-in's countdown.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use tracing::{info, warn};

use super::{reset_node, LabError};

/// The lab's watchdog timeout (whole seconds, as Linux's).
pub const TIMEOUT_S: u64 = 1;
/// The FIFO in each node's directory.
pub const FIFO: &str = "watchdog.fifo";
/// The stand-in's resets, one JSON line each, in each node's directory.
pub const EVENTS: &str = "watchdog-events.jsonl";

/// `tandem lab watchdog-standin`.
#[derive(Debug, Clone, Args)]
pub struct StandinArgs {
    /// The node's name.
    #[arg(long)]
    pub node: String,
    /// The node's network namespace (what a reset power-kills).
    #[arg(long)]
    pub netns: String,
    /// The FIFO the node's daemon writes to.
    #[arg(long)]
    pub fifo: PathBuf,
    /// Seconds without a byte, while armed, before the reset.
    #[arg(long, default_value_t = TIMEOUT_S)]
    pub timeout: u64,
    /// Where each reset is written as a JSON line.
    #[arg(long)]
    pub events: PathBuf,
}

/// The stand-in's countdown, pure: armed since the last byte, or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Countdown {
    timeout: Duration,
    last_pet: Option<Instant>,
}

impl Countdown {
    pub fn new(timeout: Duration) -> Countdown {
        Countdown {
            timeout,
            last_pet: None,
        }
    }

    /// A byte from the daemon; returns whether the armed state changed.
    pub fn byte(&mut self, now: Instant, b: u8) -> bool {
        let was = self.last_pet.is_some();
        self.last_pet = (b != b'V').then_some(now);
        was != self.last_pet.is_some()
    }

    /// When the reset is due, if armed.
    pub fn due(&self) -> Option<Instant> {
        self.last_pet.map(|t| t + self.timeout)
    }

    /// The reset happened (or the power was cut): stopped until the next byte.
    pub fn stop(&mut self) {
        self.last_pet = None;
    }
}

/// Creates node `dir`'s FIFO (if missing) and returns its path.
pub fn create_fifo(dir: &Path) -> Result<PathBuf, LabError> {
    let fifo = dir.join(FIFO);
    if !fifo.exists() {
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| LabError::io(format!("creating {}", fifo.display()), e.into()))?;
    }
    Ok(fifo)
}

/// The machine lost power (`lab fail kill`) or is powered on again (`restart`): its
/// watchdog stops counting. Best effort: no stand-in, nothing to stop.
pub fn power_cycled(fifo: &Path) {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
    if let Ok(mut f) = f {
        let _ = f.write_all(b"V");
    }
}

/// Waits until something reads `fifo` (the stand-in opened it), up to `timeout`:
/// opening it for writing without blocking succeeds only then. Writes nothing.
pub fn wait_for_reader(fifo: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        if opened.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the stand-in until killed.
pub fn run(a: StandinArgs) -> Result<(), LabError> {
    // Read and write: the FIFO never reports end-of-file when the daemon dies, as a
    // watchdog device does not stop when its holder does.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a.fifo)
        .map_err(|e| LabError::io(format!("opening {}", a.fifo.display()), e))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    info!(node = %a.node, fifo = %a.fifo.display(), timeout_s = a.timeout, "watchdog stand-in ready");
    let mut c = Countdown::new(Duration::from_secs(a.timeout));
    loop {
        let wait = c.due().map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(bytes) => {
                for b in bytes {
                    if c.byte(Instant::now(), b) {
                        let state = if c.due().is_some() {
                            "armed"
                        } else {
                            "stopped (magic close)"
                        };
                        info!(node = %a.node, "watchdog {state}");
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if c.due().is_some_and(|d| d <= Instant::now()) {
                    let silent = c.due().map(|d| d.elapsed() + c.timeout);
                    c.stop();
                    reset(&a, silent.unwrap_or_default());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// The reset: power kill, addresses gone, logged and recorded.
fn reset(a: &StandinArgs, silent: Duration) {
    warn!(node = %a.node, silent_ms = silent.as_millis() as u64, "watchdog not petted: resetting the node (power kill)");
    let event = serde_json::json!({
        "event": "watchdog_reset",
        "silent_ms": silent.as_millis() as u64,
    });
    if let Err(e) = reset_node(&a.node, &a.netns, &a.events, event) {
        warn!(node = %a.node, error = %e, "power kill failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_the_reader_of_a_fifo_ends_when_one_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = create_fifo(dir.path()).unwrap();
        assert!(!wait_for_reader(&fifo, Duration::from_millis(30)));
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert!(wait_for_reader(&fifo, Duration::from_millis(30)));
    }

    #[test]
    fn the_countdown_arms_on_a_byte_and_stops_on_the_magic_v() {
        let t0 = Instant::now();
        let mut c = Countdown::new(Duration::from_secs(1));
        assert_eq!(c.due(), None);
        assert!(c.byte(t0, b'.'), "armed");
        assert!(!c.byte(t0 + Duration::from_millis(300), b'.'), "petted");
        assert_eq!(c.due(), Some(t0 + Duration::from_millis(1300)));
        assert!(c.byte(t0 + Duration::from_millis(400), b'V'), "stopped");
        assert_eq!(c.due(), None);
        c.byte(t0 + Duration::from_millis(500), b'.');
        c.stop();
        assert_eq!(c.due(), None);
    }
}
