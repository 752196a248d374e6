//! The lease task: a tokio task that carries out the core's actions on a
//! [`LeaseDisk`] (each sector read or write on a blocking thread), ticks the core, and
//! reports what the holder must know: acquired, lost, released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::core::{Action, Input, LeaseCore, LeaseState, LossReason, Timing};
use super::disk::LeaseDisk;
use super::record::Sector;

/// How often the core is ticked.
const TICK: Duration = Duration::from_millis(50);

/// What the lease task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease is ours; `waited` since the acquire began.
    Acquired { waited: Duration },
    /// Stop using the disk now.
    Lost(LossReason),
    /// Released (or the acquire abandoned).
    Released,
}

/// The lease as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub state: LeaseState,
    /// The node named by the last record read, if any.
    pub holder: Option<String>,
    /// The age of our last counted renewal while we hold it.
    pub renewal_age: Option<Duration>,
}

enum Command {
    Acquire,
    Release,
}

/// The handle on a running lease task; dropping it ends the task (without a release:
/// the record then stays until the other nodes' lease timeout).
pub struct Lease {
    commands: mpsc::UnboundedSender<Command>,
    /// Acquired, lost, released, in order.
    pub events: mpsc::UnboundedReceiver<LeaseEvent>,
    /// The latest status.
    pub status: watch::Receiver<LeaseStatus>,
    /// Signalled (one stored permit) when the task reports [`LeaseEvent::Lost`], so a
    /// holder can react at once instead of at its next poll of `events`.
    pub lost: Arc<Notify>,
}

impl Lease {
    /// Starts acquiring (a new incarnation).
    pub fn acquire(&self) {
        let _ = self.commands.send(Command::Acquire);
    }

    /// Releases the lease, or abandons the acquire.
    pub fn release(&self) {
        let _ = self.commands.send(Command::Release);
    }
}

/// Starts the lease task for `node` on `disk`.
pub fn spawn(disk: LeaseDisk, node: &str, timing: Timing) -> Lease {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (event_tx, events) = mpsc::unbounded_channel();
    let (status_tx, status) = watch::channel(LeaseStatus {
        state: LeaseState::Idle,
        holder: None,
        renewal_age: None,
    });
    let lost = Arc::new(Notify::new());
    let driver = Driver {
        core: LeaseCore::new(node, timing),
        disk: Arc::new(disk),
        origin: Instant::now(),
        events: event_tx,
        status: status_tx,
        lost: Arc::clone(&lost),
    };
    tokio::spawn(driver.run(command_rx));
    Lease {
        commands,
        events,
        status,
        lost,
    }
}

struct Driver {
    core: LeaseCore,
    disk: Arc<LeaseDisk>,
    origin: Instant,
    events: mpsc::UnboundedSender<LeaseEvent>,
    status: watch::Sender<LeaseStatus>,
    lost: Arc<Notify>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (io_tx, mut io_rx) = mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Acquire) => Input::Acquire { incarnation: rand::random() },
                    Some(Command::Release) => Input::Release,
                    None => return,
                },
                Some(done) = io_rx.recv() => done,
                _ = tick.tick() => Input::Tick,
            };
            let now = self.origin.elapsed();
            for action in self.core.handle(now, input) {
                self.act(action, &io_tx);
            }
            self.publish(now);
        }
    }

    fn act(&self, action: Action, io_tx: &mpsc::UnboundedSender<Input>) {
        let event = match action {
            Action::Read { id } => {
                return self.io(io_tx, move |disk| Input::ReadDone {
                    id,
                    bytes: disk.read().map_err(|e| tracing::warn!("{e}")).ok(),
                })
            }
            Action::Write { id, bytes } => {
                return self.io(io_tx, move |disk| Input::WriteDone {
                    id,
                    ok: disk
                        .write(&bytes)
                        .map_err(|e| tracing::warn!("{e}"))
                        .is_ok(),
                })
            }
            Action::Acquired { waited } => LeaseEvent::Acquired { waited },
            Action::StopUsing(reason) => LeaseEvent::Lost(reason),
            Action::Released => LeaseEvent::Released,
        };
        let lost = matches!(event, LeaseEvent::Lost(_));
        let _ = self.events.send(event);
        if lost {
            // After the event: the woken holder finds it on `events`.
            self.lost.notify_one();
        }
    }

    fn io(
        &self,
        io_tx: &mpsc::UnboundedSender<Input>,
        op: impl FnOnce(&LeaseDisk) -> Input + Send + 'static,
    ) {
        let disk = Arc::clone(&self.disk);
        let tx = io_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(op(&disk));
        });
    }

    fn publish(&self, now: Duration) {
        let holder = match self.core.last_seen() {
            Some(Sector::Held(record)) => Some(record.node.clone()),
            _ => None,
        };
        self.status.send_if_modified(|s| {
            let next = LeaseStatus {
                state: self.core.state(),
                holder,
                renewal_age: self.core.renewal_age(now),
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::record::SECTOR;

    fn timing() -> Timing {
        let ms = Duration::from_millis;
        Timing {
            io_timeout: ms(50),
            renew_interval: ms(50),
            lease_timeout: ms(800),
            stop_after: ms(500),
        }
    }

    fn shared() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; SECTOR * 2]).unwrap();
        (dir, path)
    }

    async fn next(lease: &mut Lease, within: Duration) -> Option<LeaseEvent> {
        tokio::time::timeout(within, lease.events.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_dead_holder_is_succeeded_only_after_the_lease_timeout() {
        let (_dir, path) = shared();
        let mut n1 = spawn(LeaseDisk::open(&path, 0).unwrap(), "n1", timing());
        n1.acquire();
        let got = next(&mut n1, Duration::from_secs(2)).await;
        assert!(matches!(got, Some(LeaseEvent::Acquired { .. })), "{got:?}");
        let mut n2 = spawn(LeaseDisk::open(&path, 0).unwrap(), "n2", timing());
        n2.acquire();
        assert_eq!(
            next(&mut n2, Duration::from_millis(1500)).await,
            None,
            "n1 renews"
        );
        assert_eq!(n2.status.borrow().holder.as_deref(), Some("n1"));
        drop(n1);
        let died = Instant::now();
        let got = next(&mut n2, Duration::from_secs(3)).await;
        assert!(matches!(got, Some(LeaseEvent::Acquired { .. })), "{got:?}");
        assert!(
            died.elapsed() >= Duration::from_millis(700),
            "{:?}",
            died.elapsed()
        );
        assert_eq!(n2.status.borrow().state, LeaseState::Held);
    }

    #[tokio::test]
    async fn a_release_hands_over_at_once_and_a_foreign_record_stops_the_holder() {
        let (_dir, path) = shared();
        let mut n1 = spawn(LeaseDisk::open(&path, 0).unwrap(), "n1", timing());
        let mut n2 = spawn(LeaseDisk::open(&path, 0).unwrap(), "n2", timing());
        n1.acquire();
        assert!(matches!(
            next(&mut n1, Duration::from_secs(2)).await,
            Some(LeaseEvent::Acquired { .. })
        ));
        n2.acquire();
        n1.release();
        assert_eq!(
            next(&mut n1, Duration::from_secs(1)).await,
            Some(LeaseEvent::Released)
        );
        let got = next(&mut n2, Duration::from_millis(700)).await;
        assert!(
            matches!(got, Some(LeaseEvent::Acquired { waited }) if waited < Duration::from_millis(700)),
            "{got:?}"
        );
        crate::lease::record::write_foreign(&path, "n3", 1, 0).await;
        let got = next(&mut n2, Duration::from_secs(1)).await;
        assert_eq!(got, Some(LeaseEvent::Lost(LossReason::Displaced)));
    }
}
