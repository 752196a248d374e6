//! Pure console sessions: a table of random session ids with their user, role and CSRF
//! token, time as an input (milliseconds of a monotonic clock). A session ends after
//! 30 minutes without a request or 12 hours after the login, whichever comes first.
//! Ids and CSRF tokens are 256-bit random values ([`new_secret`]); a login always makes
//! a new id, so an id planted before the login (session fixation) is never adopted.

use std::collections::HashMap;

use super::principal::{Principal, Role};

/// A session ends this long after its last request.
pub const IDLE_MS: u64 = 30 * 60 * 1000;
/// A session ends this long after its login, however busy.
pub const ABSOLUTE_MS: u64 = 12 * 60 * 60 * 1000;

/// A fresh 256-bit random value, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    created_ms: u64,
    last_ms: u64,
}

/// The live sessions of one node's console.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// Starts a session for `user` under the new id `id` with the CSRF token `csrf`
    /// (both from [`new_secret`]); expired sessions are dropped on the way.
    pub fn create(&mut self, now_ms: u64, id: String, csrf: String, user: &str, role: Role) {
        self.prune(now_ms);
        self.by_id.insert(
            id,
            Session {
                user: user.to_string(),
                role,
                csrf,
                created_ms: now_ms,
                last_ms: now_ms,
            },
        );
    }

    /// The principal of a live session, which this request keeps alive; `None` for an
    /// unknown or expired id (an expired one is forgotten).
    pub fn touch(&mut self, now_ms: u64, id: &str) -> Option<Principal> {
        let s = self.by_id.get_mut(id)?;
        if expired(s, now_ms) {
            self.by_id.remove(id);
            return None;
        }
        s.last_ms = now_ms;
        Some(Principal {
            name: s.user.clone(),
            role: s.role,
            csrf: s.csrf.clone(),
        })
    }

    /// Ends a session (logout, or the old id of a new login).
    pub fn remove(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    fn prune(&mut self, now_ms: u64) {
        self.by_id.retain(|_, s| !expired(s, now_ms));
    }
}

fn expired(s: &Session, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.last_ms) >= IDLE_MS
        || now_ms.saturating_sub(s.created_ms) >= ABSOLUTE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Sessions {
        let mut t = Sessions::default();
        t.create(0, "id1".into(), "c1".into(), "ann", Role::Operator);
        t
    }

    #[test]
    fn a_session_gives_its_principal_and_csrf_token() {
        let mut t = table();
        let p = t.touch(1000, "id1").unwrap();
        assert_eq!(
            p,
            Principal {
                name: "ann".into(),
                role: Role::Operator,
                csrf: "c1".into()
            }
        );
        assert!(t.touch(1000, "other").is_none());
    }

    #[test]
    fn a_session_idle_for_30_minutes_ends_and_requests_keep_it_alive() {
        let mut t = table();
        assert!(t.touch(IDLE_MS - 1, "id1").is_some());
        assert!(t.touch(2 * IDLE_MS - 2, "id1").is_some(), "kept alive");
        assert!(t.touch(3 * IDLE_MS - 2, "id1").is_none(), "idle");
        assert_eq!(t.by_id.len(), 0, "forgotten");
    }

    #[test]
    fn a_busy_session_ends_12_hours_after_the_login() {
        let mut t = table();
        let mut now = 0;
        while now + IDLE_MS / 2 < ABSOLUTE_MS {
            now += IDLE_MS / 2;
            assert!(t.touch(now, "id1").is_some(), "at {now}");
        }
        assert!(t.touch(ABSOLUTE_MS, "id1").is_none());
    }

    #[test]
    fn logout_ends_a_session_and_expired_ones_are_pruned_at_a_login() {
        let mut t = table();
        t.create(1, "id2".into(), "c2".into(), "bob", Role::Viewer);
        t.remove("id1");
        assert!(t.touch(2, "id1").is_none());
        t.create(
            ABSOLUTE_MS + 5,
            "id3".into(),
            "c3".into(),
            "cy",
            Role::Admin,
        );
        assert_eq!(t.by_id.len(), 1, "id2 expired");
    }

    #[test]
    fn secrets_are_256_bits_and_differ() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
