//! The consensus log's writer: a thread of its own that writes and fsyncs each
//! [`NodeAction::PersistLog`](crate::node::NodeAction::PersistLog) batch in order and
//! reports it durable ([`Written::Durable`]), so that a slow disk delays the log and
//! never the event loop that sends heartbeats, renews leases and pets the watchdog.
//! The quorum core holds back whatever must wait for a write (raft-rs's async ready).
//!
//! Writes queued together are written one after the other and each is reported; a
//! write that fails poisons the log ([`DurableLog`] refuses every later one), is
//! reported as [`Written::Failed`], and nothing after it is ever reported durable.

use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use crate::quorum::disk::DurableLog;
use crate::quorum::records::PersistBatch;

/// What the writer reports back to the event loop.
#[derive(Debug)]
pub enum Written {
    /// Write `write` (and every one before it) is durable.
    Durable(u64),
    /// A write failed; the log takes no more.
    Failed(String),
}

/// The event loop's end of the writer thread. Dropping it ends the thread once the
/// queued writes are done.
pub struct LogWriter {
    queue: std_mpsc::Sender<(u64, PersistBatch)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread over `log`; results come back on `done`.
    pub fn spawn(log: DurableLog, done: mpsc::UnboundedSender<Written>) -> std::io::Result<Self> {
        let (queue, jobs) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tandem-log".into())
            .spawn(move || write_loop(log, jobs, done))?;
        Ok(LogWriter {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues one write; false if the writer is gone.
    pub fn write(&self, write: u64, batch: PersistBatch) -> bool {
        self.queue.send((write, batch)).is_ok()
    }

    /// Waits until every queued write is done (at shutdown).
    pub fn finish(mut self) {
        let (queue, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.queue, queue));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    mut log: DurableLog,
    jobs: std_mpsc::Receiver<(u64, PersistBatch)>,
    done: mpsc::UnboundedSender<Written>,
) {
    let span = tracing::info_span!("log_writer");
    let _enter = span.enter();
    let mut failed = false;
    for (write, batch) in jobs {
        if failed {
            continue;
        }
        let report = match log.write(&batch) {
            Ok(()) => Written::Durable(write),
            Err(e) => {
                failed = true;
                Written::Failed(e.to_string())
            }
        };
        if done.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::records::HardStateRec;

    fn batch(term: u64) -> PersistBatch {
        PersistBatch {
            hard_state: Some(HardStateRec {
                term,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn writes_are_durable_in_order_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = DurableLog::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let w = LogWriter::spawn(log, tx).unwrap();
        for i in 1..=3 {
            assert!(w.write(i, batch(i)));
        }
        w.finish();
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(match r {
                Written::Durable(n) => n,
                Written::Failed(e) => panic!("{e}"),
            });
        }
        assert_eq!(got, vec![1, 2, 3]);
        let (_, restored) = DurableLog::open(dir.path()).unwrap();
        assert_eq!(restored.hard_state.term, 3);
    }
}
