//! CPU time of one side of the replicated pair: every thread of that side's tokio
//! runtime (workers and blocking pool, registered by the runtime's thread start and stop
//! hooks) and the thread that drives it. Read with each thread's CPU clock
//! (`pthread_getcpuclockid`), so nanosecond resolution; a thread that has exited left
//! its total behind.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The CPU time of a set of threads.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    inner: Mutex<Threads>,
}

#[derive(Debug, Default)]
struct Threads {
    live: Vec<libc::pthread_t>,
    exited: Duration,
}

impl ThreadCpu {
    pub fn new() -> Arc<ThreadCpu> {
        Arc::new(ThreadCpu::default())
    }

    fn lock(&self) -> MutexGuard<'_, Threads> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the calling thread from now on.
    pub fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().live.push(me);
    }

    /// Stops counting the calling thread, keeping the CPU time it used. Called on the
    /// thread before it exits.
    pub fn leave(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut g = self.lock();
        // SAFETY: pthread_equal only compares the two handles.
        g.live
            .retain(|&t| unsafe { libc::pthread_equal(t, me) } == 0);
        g.exited += clock(libc::CLOCK_THREAD_CPUTIME_ID);
    }

    /// CPU time (user + system) used so far by the threads counted.
    pub fn total(&self) -> Duration {
        let g = self.lock();
        g.exited + g.live.iter().map(|&t| thread_clock(t)).sum::<Duration>()
    }
}

/// The CPU time of a live thread of this process; zero if its clock cannot be read.
fn thread_clock(t: libc::pthread_t) -> Duration {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `t` names a live thread: it is in `live`, and a thread leaves `live` (under
    // the lock our caller holds) before it exits.
    if unsafe { libc::pthread_getcpuclockid(t, &mut id) } != 0 {
        return Duration::ZERO;
    }
    clock(id)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_busy_thread_after_it_exits() {
        let cpu = ThreadCpu::new();
        let c = cpu.clone();
        std::thread::spawn(move || {
            c.enter();
            let start = std::time::Instant::now();
            let mut x = 0u64;
            // Until this thread has run 20 ms (a loaded machine may not give it that
            // in 50 ms of wall time), within a generous bound.
            while c.total() < Duration::from_millis(20) && start.elapsed() < Duration::from_secs(30)
            {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            assert!(c.total() >= Duration::from_millis(10));
            c.leave();
        })
        .join()
        .expect("thread");
        assert!(cpu.total() >= Duration::from_millis(10));
        assert!(cpu.lock().live.is_empty());
    }
}
