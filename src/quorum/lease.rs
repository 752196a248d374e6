//! Owner leases, pure: renewals, acknowledgements and the reports that gate a
//! takeover and a new owner's start.
//!
//! The rules (each voter, the witness included, runs the voter side; owners run the
//! owner side; every node reads the reports):
//!
//! - **Renewal.** The owner of group g at epoch e stamps each renewal with its monotonic
//!   send time. A voter acknowledges (g, e) only while its applied register names that
//!   owner at e, so once it applies e+1 it never acknowledges e again.
//! - **Lease.** The owner's lease ends at s + L, where s is the send time of the newest
//!   renewal acknowledged by a majority of the voters (the owner counts itself).
//!   Everything is on the owner's own clock.
//! - **Takeover.** A node may propose epoch e+1 only when a majority of the voters report
//!   no acknowledgement of e for at least the dead time.
//! - **Start.** The owner at e+1 starts only after a majority of the voters that applied
//!   e+1 report at least L × (1 + 2ρ) on their own clocks since they last acknowledged
//!   any lower epoch. Any renewal that gave the old owner its lease was acknowledged by
//!   a majority, which shares a voter with this one; that voter's acknowledgement came
//!   after the renewal was sent, and L × (1 + 2ρ) of its time is more than L of the old
//!   owner's as long as the clocks' rates differ by at most ρ. So the old lease ended
//!   before the new owner starts, whatever the network did.
//! - A voter that restarted remembers nothing: it counts its quiet time from its own
//!   start, which is after any acknowledgement it gave before.

use std::collections::BTreeMap;

use super::decision::Register;
use super::wire::{GroupEpoch, LeaseAck, LeaseReport};

/// The lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// L: how long a majority-acknowledged renewal keeps the owner's lease.
    pub lease_ms: u64,
    /// ρ, the clock-rate drift bound, in parts per million.
    pub drift_ppm: u64,
    /// A takeover needs a majority silent on the owner this long.
    pub dead_time_ms: u64,
    /// Reports older than this (on the receiver's clock) don't count for a takeover.
    pub report_fresh_ms: u64,
}

impl LeaseConfig {
    /// L × (1 + 2ρ): how long the voters wait before a new owner may start.
    pub fn start_wait_ms(&self) -> u64 {
        self.lease_ms + (self.lease_ms * 2 * self.drift_ppm).div_ceil(1_000_000)
    }
}

/// What a voter remembers of the acknowledgements it gave for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Given {
    epoch: u64,
    at_ms: u64,
    /// The last acknowledgement of a lower epoch, if any since start.
    lower_at_ms: Option<u64>,
}

/// An owner's view of its lease on one group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    epoch: u64,
    /// Per voter: the send time of the newest renewal it acknowledged.
    acked: BTreeMap<String, u64>,
    /// The end of the lease of the epoch this one replaced, for the same group: the
    /// node may still serve under it (never a lease for this epoch).
    carried_end: Option<u64>,
}

impl Held {
    /// The majority-th newest acknowledged send time, plus the lease.
    fn end(&self, majority: usize, lease_ms: u64) -> Option<u64> {
        let mut times: Vec<u64> = self.acked.values().copied().collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(majority.checked_sub(1)?).map(|t| t + lease_ms)
    }

    /// Until when the node may serve: this epoch's lease or the one it replaced.
    fn serving_end(&self, majority: usize, lease_ms: u64) -> Option<u64> {
        self.end(majority, lease_ms).max(self.carried_end)
    }
}

/// The lease state of one voter.
#[derive(Debug, Clone)]
pub struct LeaseBook {
    cfg: LeaseConfig,
    local: String,
    voters: Vec<String>,
    start_ms: u64,
    given: BTreeMap<String, Given>,
    held: BTreeMap<String, Held>,
    /// (voter, group) -> (report, when it arrived).
    reports: BTreeMap<(String, String), (LeaseReport, u64)>,
}

impl LeaseBook {
    pub fn new(cfg: LeaseConfig, local: &str, voters: &[String], start_ms: u64) -> LeaseBook {
        LeaseBook {
            cfg,
            local: local.to_string(),
            voters: voters.to_vec(),
            start_ms,
            given: BTreeMap::new(),
            held: BTreeMap::new(),
            reports: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Records an acknowledgement this voter gives.
    fn give(&mut self, now_ms: u64, group: &str, epoch: u64) {
        let g = self.given.entry(group.to_string()).or_insert(Given {
            epoch,
            at_ms: now_ms,
            lower_at_ms: None,
        });
        if epoch > g.epoch {
            g.lower_at_ms = Some(g.at_ms);
            g.epoch = epoch;
        }
        if epoch == g.epoch {
            g.at_ms = now_ms;
        }
    }

    /// Voter side: renewals from `from`; returns the acknowledgements to send back.
    pub fn on_renew(
        &mut self,
        now_ms: u64,
        from: &str,
        sent_ms: u64,
        renewals: &[GroupEpoch],
        register: &Register,
    ) -> Vec<LeaseAck> {
        let mut acks = Vec::new();
        for r in renewals {
            let current = register
                .owner(&r.group)
                .is_some_and(|o| o.owner == from && o.epoch == r.epoch);
            if !current {
                continue;
            }
            self.give(now_ms, &r.group, r.epoch);
            acks.push(LeaseAck {
                group: r.group.clone(),
                epoch: r.epoch,
                renewal_sent_ms: sent_ms,
            });
        }
        acks
    }

    /// Owner side: the renewals to send now, for every group the register gives this
    /// node. The owner acknowledges its own renewal.
    pub fn renewals(&mut self, now_ms: u64, register: &Register) -> Vec<GroupEpoch> {
        let mine: Vec<GroupEpoch> = register
            .owners
            .iter()
            .filter(|(_, o)| o.owner == self.local)
            .map(|(g, o)| GroupEpoch {
                group: g.clone(),
                epoch: o.epoch,
            })
            .collect();
        // A lease the register no longer gives this node is kept until it runs out
        // (no more renewals): the node may still be stopping the group, and whether
        // it must hurry depends on it.
        // A lease of an older epoch that the register gives this node again at a new
        // one still bounds how long the node may be serving under the old one.
        let lease_ms = self.cfg.lease_ms;
        let majority = self.majority();
        let mut carried = BTreeMap::new();
        self.held
            .retain(|g, h| match mine.iter().find(|m| &m.group == g) {
                Some(m) if m.epoch == h.epoch => true,
                Some(_) => {
                    if let Some(end) = h.serving_end(majority, lease_ms) {
                        carried.insert(g.clone(), end);
                    }
                    false
                }
                None => h
                    .serving_end(majority, lease_ms)
                    .is_some_and(|end| end > now_ms),
            });
        for m in &mine {
            self.give(now_ms, &m.group, m.epoch);
            let local = self.local.clone();
            let h = self.held.entry(m.group.clone()).or_insert(Held {
                epoch: m.epoch,
                acked: BTreeMap::new(),
                carried_end: carried.get(&m.group).copied(),
            });
            h.acked.insert(local, now_ms);
        }
        mine
    }

    /// Owner side: acknowledgements from `from`.
    pub fn on_ack(&mut self, from: &str, acks: &[LeaseAck]) {
        if !self.voters.iter().any(|v| v == from) {
            return;
        }
        for a in acks {
            if let Some(h) = self.held.get_mut(&a.group) {
                if h.epoch == a.epoch {
                    let t = h.acked.entry(from.to_string()).or_insert(0);
                    *t = (*t).max(a.renewal_sent_ms);
                }
            }
        }
    }

    /// Owner side: until when this node may still be serving `group` (its clock): the
    /// lease of the epoch it holds (the current one, or one the register has moved on
    /// from, until it runs out), or of the epoch that one replaced.
    pub fn serving_end(&self, group: &str) -> Option<u64> {
        self.held
            .get(group)?
            .serving_end(self.majority(), self.cfg.lease_ms)
    }

    /// Owner side: when the lease on `group` ends (this node's clock), if a majority
    /// acknowledged a renewal of the epoch held. Only this lease lets a node start or
    /// keep running a group; [`Self::serving_end`] also counts the replaced epoch's.
    pub fn lease_end(&self, group: &str) -> Option<u64> {
        self.held
            .get(group)?
            .end(self.majority(), self.cfg.lease_ms)
    }

    /// This voter's reports, for every group in its register.
    pub fn reports(&self, now_ms: u64, register: &Register) -> Vec<LeaseReport> {
        register
            .owners
            .iter()
            .map(|(g, o)| self.report(now_ms, g, o.epoch))
            .collect()
    }

    fn report(&self, now_ms: u64, group: &str, epoch: u64) -> LeaseReport {
        let since_start = now_ms.saturating_sub(self.start_ms);
        let given = self.given.get(group);
        let since_current = match given {
            Some(g) if g.epoch == epoch => now_ms.saturating_sub(g.at_ms),
            _ => since_start,
        };
        let quiet = match given {
            Some(g) if g.epoch < epoch => now_ms.saturating_sub(g.at_ms),
            Some(g) => g
                .lower_at_ms
                .map_or(since_start, |t| now_ms.saturating_sub(t)),
            None => since_start,
        };
        LeaseReport {
            group: group.to_string(),
            epoch,
            since_current_ms: since_current,
            quiet_ms: quiet,
        }
    }

    /// Reports from another voter.
    pub fn on_report(&mut self, now_ms: u64, from: &str, reports: &[LeaseReport]) {
        if !self.voters.iter().any(|v| v == from) || from == self.local {
            return;
        }
        for r in reports {
            self.reports
                .insert((from.to_string(), r.group.clone()), (r.clone(), now_ms));
        }
    }

    /// Every voter's latest report on `group` (this one's computed now), with its age.
    fn reports_on<'a>(
        &'a self,
        now_ms: u64,
        group: &'a str,
        register: &'a Register,
    ) -> impl Iterator<Item = (LeaseReport, u64)> + 'a {
        let own = register
            .owner(group)
            .map(|o| (self.report(now_ms, group, o.epoch), 0));
        let others = self
            .voters
            .iter()
            .filter(|v| **v != self.local)
            .filter_map(move |v| {
                self.reports
                    .get(&(v.clone(), group.to_string()))
                    .map(|(r, at)| (r.clone(), now_ms.saturating_sub(*at)))
            });
        own.into_iter().chain(others)
    }

    /// A takeover of `group` (epoch e → e+1) may be proposed: a majority of the voters
    /// recently reported no acknowledgement of e for the dead time.
    pub fn may_take_over(&self, now_ms: u64, group: &str, register: &Register) -> bool {
        let Some(o) = register.owner(group) else {
            return true;
        };
        let silent = self
            .reports_on(now_ms, group, register)
            .filter(|(r, age)| {
                r.epoch == o.epoch
                    && *age <= self.cfg.report_fresh_ms
                    && r.since_current_ms >= self.cfg.dead_time_ms
            })
            .count();
        silent >= self.majority()
    }

    /// The owner at `epoch` may start: a majority of the voters applied `epoch` and have
    /// acknowledged no lower epoch for L × (1 + 2ρ). (A report only ever grows once the
    /// voter applied the epoch, so an old one still counts.)
    pub fn may_start(&self, now_ms: u64, group: &str, epoch: u64, register: &Register) -> bool {
        let wait = self.cfg.start_wait_ms();
        let quiet = self
            .reports_on(now_ms, group, register)
            .filter(|(r, age)| r.epoch == epoch && r.quiet_ms + self.discounted(*age) >= wait)
            .count();
        quiet >= self.majority()
    }

    /// An age measured on this node's clock, discounted by 2ρ so that it never counts
    /// for more than the same time on the reporting voter's clock.
    fn discounted(&self, age_ms: u64) -> u64 {
        age_ms.saturating_sub((age_ms * 2 * self.cfg.drift_ppm).div_ceil(1_000_000))
    }

    /// How long ago each voter was last heard from with a report (for status).
    pub fn last_report_age(&self, now_ms: u64, voter: &str) -> Option<u64> {
        self.reports
            .iter()
            .filter(|((v, _), _)| v == voter)
            .map(|(_, (_, at))| now_ms.saturating_sub(*at))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::decision::Decision;

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            lease_ms: 1000,
            drift_ppm: 10_000,
            dead_time_ms: 600,
            report_fresh_ms: 400,
        }
    }

    fn voters() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "w".into()]
    }

    fn register(owner: &str, epoch: u64) -> Register {
        let mut r = Register::default();
        for e in 1..=epoch {
            r.apply(
                e,
                Decision::Own {
                    group: "g".into(),
                    owner: if e == epoch { owner.into() } else { "x".into() },
                    epoch: e,
                    handoff: false,
                    copies_seen: None,
                },
            );
        }
        r
    }

    #[test]
    fn the_lease_follows_the_newest_renewal_a_majority_acknowledged() {
        let reg = register("n1", 1);
        let mut owner = LeaseBook::new(cfg(), "n1", &voters(), 0);
        let mut w = LeaseBook::new(cfg(), "w", &voters(), 0);
        let r = owner.renewals(100, &reg);
        assert_eq!(owner.lease_end("g"), None, "only the owner itself so far");
        let acks = w.on_renew(105, "n1", 100, &r, &reg);
        owner.on_ack("w", &acks);
        assert_eq!(owner.lease_end("g"), Some(1100));
        // A later renewal nobody acknowledged doesn't extend it.
        owner.renewals(300, &reg);
        assert_eq!(owner.lease_end("g"), Some(1100));
        // A voter whose register names another owner or epoch does not acknowledge.
        let other = register("n2", 2);
        assert!(w.on_renew(310, "n1", 300, &r, &other).is_empty());
    }

    #[test]
    fn a_lease_the_log_moved_away_bounds_serving_until_it_runs_out() {
        let reg1 = register("n1", 1);
        let mut owner = LeaseBook::new(cfg(), "n1", &voters(), 0);
        let mut w = LeaseBook::new(cfg(), "w", &voters(), 0);
        let r = owner.renewals(100, &reg1);
        owner.on_ack("w", &w.on_renew(105, "n1", 100, &r, &reg1));
        // Switched over to n2: no more renewals, but the node may still be stopping
        // the group under the lease it has (found by tests/quorum_sim.rs seed 806).
        let reg2 = register("n2", 2);
        assert!(owner.renewals(500, &reg2).is_empty());
        assert_eq!(owner.serving_end("g"), Some(1100));
        assert_eq!(owner.lease_end("g"), Some(1100));
        // Back to n1 at epoch 3 before it stopped: no lease of epoch 3 yet, but it
        // may still be serving under epoch 1's (seed 6060).
        let reg3 = register("n1", 3);
        owner.renewals(600, &reg3);
        assert_eq!(owner.lease_end("g"), None, "epoch 3 needs its own majority");
        assert_eq!(owner.serving_end("g"), Some(1100));
        // Once it has run out, a moved-away lease is forgotten.
        owner.renewals(1000, &reg2);
        assert_eq!(owner.serving_end("g"), Some(1100));
        owner.renewals(1200, &reg2);
        assert_eq!(owner.serving_end("g"), None);
    }

    #[test]
    fn a_takeover_needs_a_fresh_silent_majority_and_a_start_waits_for_quiet() {
        let reg1 = register("n1", 1);
        let mut n2 = LeaseBook::new(cfg(), "n2", &voters(), 0);
        let mut w = LeaseBook::new(cfg(), "w", &voters(), 0);
        let r = vec![GroupEpoch {
            group: "g".into(),
            epoch: 1,
        }];
        n2.on_renew(1000, "n1", 1000, &r, &reg1);
        w.on_renew(1000, "n1", 1000, &r, &reg1);
        // 500 ms later: not silent long enough.
        n2.on_report(1500, "w", &w.reports(1500, &reg1));
        assert!(!n2.may_take_over(1500, "g", &reg1));
        // 700 ms: both silent past the dead time.
        n2.on_report(1700, "w", &w.reports(1700, &reg1));
        assert!(n2.may_take_over(1700, "g", &reg1));
        // ... but a stale report does not count.
        assert!(!n2.may_take_over(2200, "g", &reg1));

        // Epoch 2 committed to n2: the start waits L(1+2ρ) = 1020 ms after the last
        // acknowledgement of epoch 1 (at 1000) on a majority.
        let reg2 = register("n2", 2);
        n2.on_report(1800, "w", &w.reports(1800, &reg2));
        assert!(!n2.may_start(1800, "g", 2, &reg2));
        n2.on_report(2020, "w", &w.reports(2020, &reg2));
        assert!(n2.may_start(2020, "g", 2, &reg2));
    }

    #[test]
    fn a_restarted_voter_counts_quiet_time_from_its_start() {
        let reg2 = register("n2", 2);
        let w = LeaseBook::new(cfg(), "w", &voters(), 5000);
        let r = w.reports(5500, &reg2);
        assert_eq!(r[0].quiet_ms, 500);
        assert_eq!(r[0].since_current_ms, 500);
    }

    #[test]
    fn after_applying_a_new_epoch_a_voter_never_acknowledges_the_old_one() {
        let mut w = LeaseBook::new(cfg(), "w", &voters(), 0);
        let reg2 = register("n2", 2);
        let old = vec![GroupEpoch {
            group: "g".into(),
            epoch: 1,
        }];
        assert!(w.on_renew(100, "x", 100, &old, &reg2).is_empty());
        assert_eq!(cfg().start_wait_ms(), 1020);
    }
}
