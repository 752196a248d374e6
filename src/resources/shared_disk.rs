//! The `shared_disk` agent: a disk every node sees, used by one node at a time under a
//! disk lease ([`crate::lease`]). Start takes the lease (waiting out a previous
//! holder's lease timeout, then giving up with the reason); the lease task renews it
//! in the background, and a loss wakes the group's executor, whose monitor reports it
//! at once (the group is then stopped: the holder has stopped using the disk by
//! `stop_after`, before any other node can take it). Stop releases it.

use std::path::PathBuf;
use std::time::Duration;

use super::ResourceError;
use crate::lease::core::Timing;
use crate::lease::disk::LeaseDisk;
use crate::lease::task::{self, Lease, LeaseEvent};

/// The `shared_disk` agent.
pub struct SharedDiskAgent {
    path: PathBuf,
    lease_offset: u64,
    timing: Timing,
    node: String,
    lease: Option<Lease>,
    /// How long the last start waited for the lease.
    waited: Duration,
}

/// How long a start waits for the lease: a previous holder's whole lease timeout, the
/// claim and its read-back, and slack for slow reads.
pub fn acquire_limit(t: &Timing) -> Duration {
    t.lease_timeout + t.renew_interval * 2 + t.io_timeout * 6
}

impl SharedDiskAgent {
    /// The agent for a validated `shared_disk` on `node`.
    pub fn new(path: PathBuf, lease_offset: u64, timing: Timing, node: &str) -> Self {
        Self {
            path,
            lease_offset,
            timing,
            node: node.to_string(),
            lease: None,
            waited: Duration::ZERO,
        }
    }

    /// Takes the lease; returns how long that took.
    pub async fn start(&mut self) -> Result<Duration, ResourceError> {
        if self.lease.is_some() {
            return Ok(Duration::ZERO);
        }
        let disk = LeaseDisk::open(&self.path, self.lease_offset)
            .map_err(|e| ResourceError::Check(e.to_string()))?;
        let mut lease = task::spawn(disk, &self.node, self.timing);
        lease.acquire();
        let limit = acquire_limit(&self.timing);
        match tokio::time::timeout(limit, lease.events.recv()).await {
            Ok(Some(LeaseEvent::Acquired { waited })) => {
                tracing::info!(path = %self.path.display(), waited_ms = waited.as_millis() as u64, "disk lease acquired");
                self.lease = Some(lease);
                self.waited = waited;
                Ok(waited)
            }
            Ok(other) => Err(ResourceError::Check(format!(
                "disk lease on {}: {other:?} while acquiring",
                self.path.display()
            ))),
            Err(_) => Err(ResourceError::Check(format!(
                "disk lease on {} not acquired within {limit:?}: held by {}",
                self.path.display(),
                lease
                    .status
                    .borrow()
                    .holder
                    .as_deref()
                    .unwrap_or("nobody known")
            ))),
        }
    }

    /// The disk's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The held lease's status (state, holder, renewal age), while held.
    pub fn lease_status(&self) -> Option<tokio::sync::watch::Receiver<task::LeaseStatus>> {
        self.lease.as_ref().map(|l| l.status.clone())
    }

    /// The held lease's loss signal (see [`Lease::lost`]), while held.
    pub fn lost_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.lease.as_ref().map(|l| std::sync::Arc::clone(&l.lost))
    }

    /// How long the last successful start waited for the lease.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Releases the lease (waits up to 2 × io_timeout for the zeros to be written).
    pub async fn stop(&mut self) -> Result<(), ResourceError> {
        let Some(mut lease) = self.lease.take() else {
            return Ok(());
        };
        lease.release();
        let wait = self.timing.io_timeout * 2;
        loop {
            match tokio::time::timeout(wait, lease.events.recv()).await {
                Ok(Some(LeaseEvent::Released | LeaseEvent::Lost(_))) | Ok(None) | Err(_) => {
                    return Ok(())
                }
                Ok(Some(LeaseEvent::Acquired { .. })) => {}
            }
        }
    }

    /// Why the lease was lost, if it was since the last call (the disk is another
    /// node's now: the agent reports it as unrecoverable). `Some` too when not held.
    pub fn lost(&mut self) -> Option<String> {
        let Some(lease) = self.lease.as_mut() else {
            return Some("no disk lease".into());
        };
        match lease.events.try_recv() {
            Ok(LeaseEvent::Lost(reason)) => {
                tracing::error!(path = %self.path.display(), %reason, "disk lease lost");
                self.lease = None;
                Some(format!("disk lease lost: {reason}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        let ms = Duration::from_millis;
        Timing {
            io_timeout: ms(50),
            renew_interval: ms(50),
            lease_timeout: ms(800),
            stop_after: ms(500),
        }
    }

    #[tokio::test]
    async fn a_second_node_waits_out_the_lease_and_a_stop_hands_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mut n1 = SharedDiskAgent::new(path.clone(), 0, timing(), "n1");
        let mut n2 = SharedDiskAgent::new(path.clone(), 0, timing(), "n2");
        n1.start().await.unwrap();
        let refused = n2.start().await.unwrap_err().to_string();
        assert!(refused.contains("held by n1"), "{refused}");
        assert_eq!(n1.lost(), None, "n1 renewed all along");
        n1.stop().await.unwrap();
        let waited = n2.start().await.unwrap();
        assert!(
            waited < Duration::from_millis(800),
            "released: no lease timeout ({waited:?})"
        );
        // Another node's record on the disk: n2's next renewal finds it.
        crate::lease::record::write_foreign(&path, "n3", 7, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(n2.lost(), Some(r) if r.contains("disk lease lost")));
    }
}
