//! Pure login rate limiter: per remote address and per user name, after
//! [`MAX_FAILURES`] failed logins within [`WINDOW_MS`] the next attempt is refused
//! until the oldest of them leaves the window (the `Retry-After` of the 429 answer).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Failed logins allowed within the window.
pub const MAX_FAILURES: usize = 5;
/// The window, milliseconds.
pub const WINDOW_MS: u64 = 60_000;
/// Past this many keys, a failure first forgets the keys whose failures all left the
/// window (so many names tried once each do not grow the table without end).
const MAX_KEYS: usize = 10_000;

/// Recent failures per key (`addr ...` or `user ...`).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<String, VecDeque<u64>>,
}

fn keys(addr: IpAddr, user: &str) -> [String; 2] {
    [format!("addr {addr}"), format!("user {user}")]
}

impl LoginLimiter {
    /// `Err(seconds)` if a login from `addr` for `user` must wait that long.
    pub fn check(&mut self, now_ms: u64, addr: IpAddr, user: &str) -> Result<(), u64> {
        let mut wait_ms = 0;
        for k in keys(addr, user) {
            let Some(q) = self.failures.get_mut(&k) else {
                continue;
            };
            while q
                .front()
                .is_some_and(|t| now_ms.saturating_sub(*t) >= WINDOW_MS)
            {
                q.pop_front();
            }
            if q.len() >= MAX_FAILURES {
                let oldest = q[q.len() - MAX_FAILURES];
                wait_ms = wait_ms.max(oldest + WINDOW_MS - now_ms);
            }
            if q.is_empty() {
                self.failures.remove(&k);
            }
        }
        if wait_ms == 0 {
            Ok(())
        } else {
            Err(wait_ms.div_ceil(1000))
        }
    }

    /// Counts a failed login.
    pub fn failed(&mut self, now_ms: u64, addr: IpAddr, user: &str) {
        if self.failures.len() >= MAX_KEYS {
            self.failures.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now_ms.saturating_sub(*t) < WINDOW_MS)
            });
        }
        for k in keys(addr, user) {
            let q = self.failures.entry(k).or_default();
            q.push_back(now_ms);
            while q.len() > MAX_FAILURES {
                q.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_sixth_attempt_after_five_failures_waits_for_the_window() {
        let mut l = LoginLimiter::default();
        for i in 0..5 {
            assert_eq!(l.check(i * 1000, A, "ann"), Ok(()), "attempt {i}");
            l.failed(i * 1000, A, "ann");
        }
        assert_eq!(l.check(5000, A, "ann"), Err(55));
        assert_eq!(l.check(59_500, A, "ann"), Err(1));
        assert_eq!(l.check(60_000, A, "ann"), Ok(()), "the first failure left");
    }

    #[test]
    fn the_limit_holds_per_user_from_any_address_and_per_address_for_any_user() {
        let mut l = LoginLimiter::default();
        for i in 0..5 {
            l.failed(i, A, "ann");
        }
        assert!(l.check(10, B, "ann").is_err(), "same user, other address");
        assert!(l.check(10, A, "bob").is_err(), "same address, other user");
        assert_eq!(l.check(10, B, "bob"), Ok(()));
    }

    #[test]
    fn keys_whose_failures_left_the_window_are_forgotten_when_the_table_is_full() {
        let mut l = LoginLimiter::default();
        for i in 0..MAX_KEYS {
            l.failed(0, A, &format!("user{i}"));
        }
        assert_eq!(l.failures.len(), MAX_KEYS + 1, "one address, many users");
        l.failed(WINDOW_MS, B, "late");
        assert_eq!(l.failures.len(), 2, "only the late failure's keys are left");
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut l = LoginLimiter::default();
        for i in 0..4 {
            l.failed(i, A, "ann");
        }
        l.failed(WINDOW_MS + 10, A, "ann");
        assert_eq!(l.check(WINDOW_MS + 20, A, "ann"), Ok(()));
    }
}
