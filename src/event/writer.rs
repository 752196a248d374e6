//! The event log's files, written by a thread of their own: `events.jsonl`,
//! `timelines.jsonl` and the durable sequence reservation (`seq`). [`super::EventLog::emit`]
//! only queues a line, so the daemon's event loop, which emits, never waits for the
//! disk. Lines are written in the order they were queued; dropping the writer (when
//! the last [`super::EventLog`] goes) writes what is queued before it returns. The two
//! logs are rotated by size ([`crate::rotate`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use crate::rotate::RotatingFile;

/// One job for the writer thread.
enum Job {
    Event(Vec<u8>),
    Timeline(Vec<u8>),
    /// Make sequence numbers below this durable-reserved.
    Reserve(u64),
    /// Answer once everything queued before is written.
    Flush(mpsc::Sender<()>),
}

/// The files, owned by the writer thread.
struct Files {
    events: RotatingFile,
    timelines: RotatingFile,
    seq_path: PathBuf,
    /// Sequence numbers below this are reserved durably.
    reserved: Arc<AtomicU64>,
}

/// The emitting side's handle on the writer thread.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    reserved: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the thread over the open files; `reserved` is what `seq` holds now.
    pub(super) fn spawn(
        events: RotatingFile,
        timelines: RotatingFile,
        seq_path: &Path,
        reserved: u64,
    ) -> std::io::Result<Writer> {
        let reserved = Arc::new(AtomicU64::new(reserved));
        let files = Files {
            events,
            timelines,
            seq_path: seq_path.to_path_buf(),
            reserved: reserved.clone(),
        };
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tandem-events".into())
            .spawn(move || files.run(rx))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
            reserved,
        })
    }

    fn send(&self, job: Job) {
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    pub(super) fn event(&self, line: Vec<u8>) {
        self.send(Job::Event(line));
    }

    pub(super) fn timeline(&self, line: Vec<u8>) {
        self.send(Job::Timeline(line));
    }

    /// Asks for sequence numbers below `limit` to be reserved durably.
    pub(super) fn reserve(&self, limit: u64) {
        self.send(Job::Reserve(limit));
    }

    /// Sequence numbers below this are reserved durably.
    pub(super) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Waits until everything queued so far is written.
    pub(super) fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Flush(tx));
        let _ = rx.recv();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Files {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Event(line) => {
                    if let Err(e) = self.events.write_all(&line) {
                        tracing::error!(error = %e, "cannot append to the event log");
                    }
                }
                Job::Timeline(line) => {
                    if let Err(e) = self.timelines.write_all(&line) {
                        tracing::error!(error = %e, "cannot append to the timelines");
                    }
                }
                Job::Reserve(limit) => match write_durably(&self.seq_path, &limit.to_string()) {
                    Ok(()) => self.reserved.store(limit, Ordering::Release),
                    Err(e) => tracing::error!(error = %e, "cannot reserve event sequence numbers"),
                },
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Replaces `path` with `content` durably (write, fsync, rename, fsync the directory).
pub(super) fn write_durably(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
