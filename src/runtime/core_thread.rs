//! The event loop's own thread. The node core, the heartbeat path sockets, the lease
//! renewals and the watchdog pets run on one thread with a current-thread tokio
//! runtime, scheduled SCHED_FIFO at `[heartbeat] realtime_priority`, in a process whose
//! memory is locked (`mlockall`). That thread never touches the disk: the consensus
//! log is written by [`super::log_writer`], and mirror, fencing and API work runs on
//! the daemon's other runtime ([`super::Daemon`]'s `io` handle). So neither a saturated
//! CPU nor an fsync stall can silence the heartbeats or let the lease lapse while the
//! node is alive.
//!
//! Neither the priority nor the lock is required: without the privilege (not root, a
//! container without CAP_SYS_NICE or CAP_IPC_LOCK) the daemon warns once and runs
//! under the normal scheduler.

use tokio::sync::oneshot;

/// How the event loop thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// SCHED_FIFO at this priority, and the process's memory locked.
    Realtime(u8),
    /// The normal scheduler; nothing locked.
    Normal,
}

impl Scheduling {
    /// From `[heartbeat] realtime_priority` (0 is normal scheduling).
    pub fn from_priority(p: u8) -> Scheduling {
        match p {
            0 => Scheduling::Normal,
            p => Scheduling::Realtime(p),
        }
    }
}

/// Why the thread could not be set up as asked (each only warned about).
#[derive(Debug, thiserror::Error)]
pub enum SchedulingError {
    #[error("locking the daemon's memory (mlockall): {0}")]
    Lock(std::io::Error),
    #[error("SCHED_FIFO priority {priority} for the event loop thread: {source}")]
    Fifo {
        priority: u8,
        source: std::io::Error,
    },
}

/// Locks the process's current and future memory, so the event loop never waits for
/// a page to come back from swap.
fn lock_memory() -> Result<(), SchedulingError> {
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if r != 0 {
        return Err(SchedulingError::Lock(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the calling thread SCHED_FIFO at `priority`.
fn set_fifo(priority: u8) -> Result<(), SchedulingError> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pthread_self() is the calling thread, and `param` is a valid
    // sched_param that lives across the call.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if r != 0 {
        return Err(SchedulingError::Fifo {
            priority,
            source: std::io::Error::from_raw_os_error(r),
        });
    }
    Ok(())
}

/// Sets up the calling thread as `how` asks; warns about what it cannot do.
fn apply(how: Scheduling) {
    let Scheduling::Realtime(priority) = how else {
        return;
    };
    for r in [lock_memory(), set_fifo(priority)] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "the event loop runs without this real-time protection");
        }
    }
}

/// Whether the calling thread is scheduled SCHED_FIFO (for tests and status).
pub fn current_is_fifo() -> bool {
    // SAFETY: sched_getscheduler(0) reads the calling thread's policy; no memory.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_FIFO }
}

/// Runs `work` (a future built on the new thread, so that its sockets and timers
/// belong to that thread's runtime) on a thread of its own named `tandem-core`,
/// scheduled as `how` says; resolves to its output.
pub async fn run<F, Fut, T>(how: Scheduling, work: F) -> std::io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (done, result) = oneshot::channel();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("tandem-core".into())
        .spawn(move || {
            let _enter = span.enter();
            apply(how);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return;
                }
            };
            let out = rt.block_on(work());
            let _ = done.send(Ok(out));
        })?;
    result
        .await
        .map_err(|_| std::io::Error::other("the event loop thread ended without a result"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_its_own_thread_with_its_own_runtime() {
        let (name, answer) = run(Scheduling::Normal, || async {
            let name = std::thread::current().name().map(str::to_string);
            // Timers work on the thread's own runtime.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            (name, 42)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("tandem-core"));
        assert_eq!(answer, 42);
    }

    #[test]
    fn priority_zero_is_normal_scheduling() {
        assert_eq!(Scheduling::from_priority(0), Scheduling::Normal);
        assert_eq!(Scheduling::from_priority(10), Scheduling::Realtime(10));
    }
}
