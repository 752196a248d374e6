//! The I/O around [`crate::mirror::plan`]: one mirror's write-rate history, sampled
//! from the mirror's own counter once a minute (just after each minute boundary) by a
//! tokio task, and persisted in the mirror's metadata directory as [`FILE`] (replaced
//! durably, at most every [`SAVE_EVERY`] and at shutdown), so a restart keeps the
//! history. A missing file is an empty history; an unreadable or corrupt one is
//! reported, kept aside as `write-rate.bin.corrupt`, and replaced by a new history:
//! it never stops the daemon.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::event::unix_ms;
use crate::mirror::plan::{self, Recorded, Sample, Skip, WriteHistory, MINUTE_MS};
use crate::mirror::replica::meta::replace_file;
use crate::mirror::replica::Mirror;

/// The history's file in the mirror's metadata directory.
pub const FILE: &str = "write-rate.bin";
/// Where a corrupt history is kept for inspection.
const CORRUPT: &str = "write-rate.bin.corrupt";
/// The longest a recorded minute waits to reach the disk (a crash loses at most this).
pub const SAVE_EVERY: Duration = Duration::from_secs(5 * 60);
/// How long after a minute boundary the counter is read.
const SAMPLE_OFFSET: Duration = Duration::from_secs(1);

/// Why the history cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RateLogError {
    #[error("write-rate history {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-rate history {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: plan::PlanError,
    },
}

/// One mirror's history and the task that samples it.
pub struct RateLog {
    mirror: String,
    dir: PathBuf,
    state: Mutex<LogState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct LogState {
    history: WriteHistory,
    /// Minutes recorded since the last save.
    unsaved: bool,
}

impl RateLog {
    /// Loads `dir/write-rate.bin` (see the module header for a missing or corrupt one).
    pub fn open(dir: &Path, mirror: &str) -> RateLog {
        let (history, unsaved) = match load(dir) {
            Ok(h) => (h, false),
            Err(e) => {
                tracing::error!(mirror, error = %e, "the write-rate history is lost; starting a new one");
                if let Err(e) = std::fs::rename(dir.join(FILE), dir.join(CORRUPT)) {
                    tracing::warn!(mirror, error = %e, "cannot keep the corrupt write-rate history aside");
                }
                // The next save replaces it.
                (WriteHistory::default(), true)
            }
        };
        tracing::debug!(mirror, minutes = history.len(), "write-rate history loaded");
        RateLog {
            mirror: mirror.to_string(),
            dir: dir.to_owned(),
            state: Mutex::new(LogState { history, unsaved }),
            task: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the history (to plan from without holding the lock).
    pub fn snapshot(&self) -> WriteHistory {
        self.lock().history.clone()
    }

    /// Records one sample of the counter.
    pub fn record(&self, s: Sample) -> Recorded {
        let mut st = self.lock();
        let r = st.history.record(s);
        if matches!(r, Recorded::Minute(_)) {
            st.unsaved = true;
        }
        r
    }

    /// Writes the history if minutes were recorded since the last save.
    pub fn save(&self) -> Result<(), RateLogError> {
        let bytes = {
            let mut st = self.lock();
            if !st.unsaved {
                return Ok(());
            }
            st.unsaved = false;
            plan::encode(&st.history)
        };
        replace_file(&self.dir, FILE, &bytes).map_err(|source| {
            self.lock().unsaved = true;
            RateLogError::Io {
                path: self.dir.join(FILE),
                source,
            }
        })
    }

    /// Starts sampling `mirror`'s counter once a minute.
    pub fn start(self: &Arc<Self>, mirror: Arc<Mirror>) {
        let span = tracing::info_span!("write_rate", mirror = %self.mirror);
        let task = tokio::spawn(tracing::Instrument::instrument(
            sample_loop(Arc::clone(self), mirror),
            span,
        ));
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Stops sampling and saves the history.
    pub async fn stop(self: &Arc<Self>) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        self.lock().unsaved = true;
        self.save_off_loop().await;
    }

    /// [`RateLog::save`] on a blocking thread; a failure is logged (and retried later).
    async fn save_off_loop(self: &Arc<Self>) {
        let log = Arc::clone(self);
        match tokio::task::spawn_blocking(move || log.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist the write-rate history"),
            Err(e) => tracing::error!(error = %e, "the write-rate history save did not run"),
        }
    }
}

fn load(dir: &Path) -> Result<WriteHistory, RateLogError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => plan::decode(&b).map_err(|source| RateLogError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WriteHistory::default()),
        Err(source) => Err(RateLogError::Io { path, source }),
    }
}

/// How long from `now_ms` until the next sample: just after the next minute boundary.
fn until_next_sample(now_ms: u64) -> Duration {
    let next = (now_ms / MINUTE_MS + 1) * MINUTE_MS + SAMPLE_OFFSET.as_millis() as u64;
    Duration::from_millis(next - now_ms)
}

async fn sample_loop(log: Arc<RateLog>, mirror: Arc<Mirror>) {
    let mut last_save = unix_ms();
    loop {
        tokio::time::sleep(until_next_sample(unix_ms())).await;
        let s = Sample {
            at_ms: unix_ms(),
            written: mirror.written_bytes(),
            primary: mirror.is_primary(),
        };
        match log.record(s) {
            Recorded::Skipped(Skip::Gap { minutes }) => {
                tracing::info!(minutes, "minutes not observed: left out of the history")
            }
            Recorded::Skipped(Skip::CounterReset) => {
                tracing::info!("the write counter went back: a new baseline")
            }
            Recorded::Minute(_) | Recorded::Skipped(_) => {}
        }
        if s.at_ms.saturating_sub(last_save) >= SAVE_EVERY.as_millis() as u64 {
            log.save_off_loop().await;
            last_save = s.at_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::plan::MinuteWrites;

    fn sample(minute: u64, written: u64) -> Sample {
        Sample {
            at_ms: minute * MINUTE_MS + 1000,
            written,
            primary: true,
        }
    }

    #[test]
    fn the_history_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = RateLog::open(dir.path(), "vol");
        for (i, w) in [0, 10, 30, 60].into_iter().enumerate() {
            log.record(sample(1000 + i as u64, w));
        }
        log.save().unwrap();
        let again = RateLog::open(dir.path(), "vol");
        let minutes: Vec<MinuteWrites> = again.snapshot().minutes().copied().collect();
        let bytes: Vec<u64> = minutes.iter().map(|m| m.bytes).collect();
        assert_eq!(bytes, vec![10, 20, 30]);
        assert_eq!(minutes[0].minute, 1000);
    }

    #[test]
    fn a_corrupt_history_is_kept_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a history").unwrap();
        let log = RateLog::open(dir.path(), "vol");
        assert!(log.snapshot().is_empty());
        assert!(dir.path().join(CORRUPT).exists());
        log.save().unwrap();
        assert!(RateLog::open(dir.path(), "vol").snapshot().is_empty());
        log.record(sample(5, 0));
        log.record(sample(6, 7));
        log.save().unwrap();
        let again = RateLog::open(dir.path(), "vol");
        assert_eq!(again.snapshot().len(), 1);
    }

    #[test]
    fn samples_fall_just_after_the_minute_boundary() {
        assert_eq!(until_next_sample(0), Duration::from_millis(61_000));
        assert_eq!(until_next_sample(59_500), Duration::from_millis(1_500));
        assert_eq!(until_next_sample(60_999), Duration::from_millis(60_001));
    }
}
