//! systemd's service protocol (`Type=notify`, `WatchdogSec=`) through the `sd-notify`
//! crate: `READY=1` once the node core runs and the API listens, `WATCHDOG=1` from the
//! core's tick at half the watchdog interval (so a hung event loop is restarted by
//! systemd), `STOPPING=1` when the daemon starts to hand its groups off. Every call is a
//! no-op when `NOTIFY_SOCKET` is unset (not run by systemd).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The pings at half the interval systemd asked for in `WATCHDOG_USEC`, as
/// libsystemd's `sd_watchdog_enabled` reads it: none unless the interval is a positive
/// number, and `WATCHDOG_PID`, when set, names this process (`pid`).
pub fn ping_every(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if watchdog_pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Whether a ping is due at `now`, the last one having gone at `last`.
pub fn ping_due(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|l| now.duration_since(l) >= every)
}

/// The daemon's side of the protocol.
#[derive(Debug)]
pub struct Notifier {
    every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// From the environment systemd sets (`WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let var = |name| std::env::var(name).ok();
        Notifier {
            every: ping_every(
                var("WATCHDOG_USEC").as_deref(),
                var("WATCHDOG_PID").as_deref(),
                std::process::id(),
            ),
            last_ping: None,
        }
    }

    fn send(state: NotifyState) {
        if let Err(e) = sd_notify::notify(false, &[state]) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// The core runs and the API listens.
    pub fn ready(&mut self) {
        Self::send(NotifyState::Ready);
        if let Some(every) = self.every {
            tracing::info!(ping_every = ?every, "systemd watchdog");
        }
    }

    /// From the core's tick: pets systemd's watchdog when a ping is due.
    pub fn tick(&mut self, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        if ping_due(self.last_ping, now, every) {
            Self::send(NotifyState::Watchdog);
            self.last_ping = Some(now);
        }
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        Self::send(NotifyState::Stopping);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval_or_not_at_all() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(ping_every(Some("10000000"), None, 7), five);
        assert_eq!(ping_every(Some("10000000"), Some("7"), 7), five);
        assert_eq!(
            ping_every(Some("10000000"), Some("8"), 7),
            None,
            "another pid"
        );
        assert_eq!(ping_every(Some("0"), None, 7), None);
        assert_eq!(ping_every(Some("soon"), None, 7), None);
        assert_eq!(ping_every(None, None, 7), None);
    }

    #[test]
    fn a_ping_is_due_first_and_then_once_per_period() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        assert!(ping_due(None, t0, every));
        assert!(!ping_due(Some(t0), t0 + Duration::from_secs(4), every));
        assert!(ping_due(Some(t0), t0 + every, every));
    }
}
