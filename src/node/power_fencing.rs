//! Power fencing from the node core, pure: when a node that took a group over asks the
//! previous owner's BMC to switch it off, and when a confirmed power-off lets it start
//! without waiting out the previous owner's lease.
//!
//! The rule (issue: "a confirmed fence lets the majority skip the lease wait; safety
//! never depends on it"):
//!
//! - A node that the log made owner of group g at epoch e by a **takeover** (not a
//!   hand-off) whose previous owner p had been cleared to run e − 1 asks for p to be
//!   powered off, if p has a `[node.fence]` section. It waits p's fence delay first.
//! - Once p's BMC reports the power off, the owner at e may start at once: p, powered
//!   off, serves nothing, and no owner older than p can still hold a lease (p was itself
//!   cleared to run, so their leases had ended or been handed off). Without a
//!   confirmation (no BMC, a failed fence, a time-out) the lease wait goes on as
//!   before: the fence only ever shortens it.
//! - One fence per node at a time; its result answers every (group, epoch) that waits
//!   on that node.

use std::collections::{BTreeMap, BTreeSet};

/// What became of a power-off this node asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerFenceResult {
    /// The BMC reports the power off (by `method`, `elapsed_ms` after the request).
    Off { method: String, elapsed_ms: u64 },
    /// Every configured method failed; the node is NOT known to be off.
    Failed { reason: String },
}

/// The outcome of the latest power-off asked of one node, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRecord {
    /// When it was asked (this node's monotonic clock).
    pub asked_ms: u64,
    /// None while it runs.
    pub result: Option<PowerFenceResult>,
}

/// A power-off to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerOff {
    pub node: String,
    /// Wait this long first (the target's fence delay, it owned a group).
    pub delay_ms: u64,
    /// The group and epoch that asked for it (for the event).
    pub group: String,
    pub epoch: u64,
}

/// The node core's power-fencing state.
#[derive(Debug, Clone, Default)]
pub struct PowerFencing {
    /// Nodes with a `[node.fence]` section, and their fence delay.
    fenceable: BTreeMap<String, u64>,
    /// Running power-offs: node -> the (group, epoch) they answer.
    running: BTreeMap<String, BTreeSet<(String, u64)>>,
    /// (group, epoch) whose previous owner a fence was asked for (never asked twice).
    asked: BTreeSet<(String, u64)>,
    /// (group, epoch) whose previous owner's BMC confirmed the power off.
    confirmed: BTreeSet<(String, u64)>,
    /// Per node, the latest power-off this node asked for.
    last: BTreeMap<String, FenceRecord>,
}

/// A group this node owns at `epoch` and may not yet start, with its previous owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting<'a> {
    pub group: &'a str,
    pub epoch: u64,
    pub previous: &'a str,
    /// The log entry was a hand-off by the previous owner (a switchover): never fenced.
    pub handoff: bool,
    /// The previous owner was cleared to run epoch − 1 (else an older lease may still
    /// run, and fencing it would not shorten anything).
    pub previous_ran: bool,
}

impl PowerFencing {
    /// `fenceable`: node -> fence delay (ms), for the nodes with `[node.fence]`.
    pub fn new(fenceable: BTreeMap<String, u64>) -> PowerFencing {
        PowerFencing {
            fenceable,
            ..Default::default()
        }
    }

    /// The power-offs to ask for, given the groups waiting to start here.
    pub fn plan(&mut self, now_ms: u64, local: &str, waiting: &[Waiting<'_>]) -> Vec<PowerOff> {
        let mut out = Vec::new();
        for w in waiting {
            let key = (w.group.to_string(), w.epoch);
            if w.handoff || !w.previous_ran || w.previous == local || self.asked.contains(&key) {
                continue;
            }
            let Some(&delay_ms) = self.fenceable.get(w.previous) else {
                continue;
            };
            self.asked.insert(key.clone());
            let running = self.running.entry(w.previous.to_string()).or_default();
            let first = running.is_empty();
            running.insert(key);
            if first {
                self.last.insert(
                    w.previous.to_string(),
                    FenceRecord {
                        asked_ms: now_ms,
                        result: None,
                    },
                );
                out.push(PowerOff {
                    node: w.previous.to_string(),
                    delay_ms,
                    group: w.group.to_string(),
                    epoch: w.epoch,
                });
            }
        }
        out
    }

    /// A power-off finished. Returns the (group, epoch) it answered.
    pub fn done(&mut self, node: &str, result: PowerFenceResult) -> Vec<(String, u64)> {
        let answered: Vec<(String, u64)> = self
            .running
            .remove(node)
            .unwrap_or_default()
            .into_iter()
            .collect();
        if matches!(result, PowerFenceResult::Off { .. }) {
            self.confirmed.extend(answered.iter().cloned());
        }
        if let Some(r) = self.last.get_mut(node) {
            r.result = Some(result);
        }
        answered
    }

    /// The previous owner of `group` before `epoch` is confirmed powered off.
    pub fn confirmed(&self, group: &str, epoch: u64) -> bool {
        self.confirmed.contains(&(group.to_string(), epoch))
    }

    /// Forgets the (group, epoch) the log has moved past.
    pub fn retain(&mut self, mut current: impl FnMut(&str, u64) -> bool) {
        self.asked.retain(|(g, e)| current(g, *e));
        self.confirmed.retain(|(g, e)| current(g, *e));
    }

    /// The latest power-off asked of each node.
    pub fn records(&self) -> &BTreeMap<String, FenceRecord> {
        &self.last
    }

    /// Nodes with a `[node.fence]` section.
    pub fn fenceable(&self) -> impl Iterator<Item = &str> {
        self.fenceable.keys().map(String::as_str)
    }
}

impl super::NodeCore {
    /// Quorum mode, on each tick: asks for the previous owner of every group this node
    /// took over, and may not start yet, to be powered off.
    pub(super) fn power_fence_previous_owners(
        &mut self,
        now: crate::placement::policy::Now,
        out: &mut Vec<super::NodeAction>,
    ) {
        let Some(q) = &self.quorum else {
            return;
        };
        let local = self.cfg.local().to_string();
        let owners: Vec<_> = q
            .register()
            .owners
            .iter()
            .filter(|(g, o)| {
                o.owner == local && !self.start_cleared.contains(&((*g).clone(), o.epoch))
            })
            .filter_map(|(g, o)| Some((g.clone(), o.epoch, o.previous.clone()?, o.handoff)))
            .collect();
        let waiting: Vec<Waiting<'_>> = owners
            .iter()
            .map(|(g, epoch, previous, handoff)| Waiting {
                group: g,
                epoch: *epoch,
                previous,
                handoff: *handoff,
                previous_ran: self.ran.contains(&(g.clone(), epoch.saturating_sub(1))),
            })
            .collect();
        for ask in self.power_fencing.plan(now.mono_ms, &local, &waiting) {
            out.push(super::NodeAction::Emit {
                kind: crate::event::EventKind::FenceStarted,
                fields: crate::event::fields([
                    ("peer", ask.node.clone()),
                    ("group", ask.group.clone()),
                    ("epoch", ask.epoch.to_string()),
                    ("delay_ms", ask.delay_ms.to_string()),
                ]),
            });
            out.push(super::NodeAction::PowerOff(ask));
        }
    }

    /// A power-off finished: report it, and start what it cleared at once.
    pub(super) fn power_fenced(
        &mut self,
        now: crate::placement::policy::Now,
        node: &str,
        result: PowerFenceResult,
        out: &mut Vec<super::NodeAction>,
    ) {
        let answered = self.power_fencing.done(node, result.clone());
        let groups = answered
            .iter()
            .map(|(g, e)| format!("{g}@{e}"))
            .collect::<Vec<_>>()
            .join(",");
        let (kind, f) = match result {
            PowerFenceResult::Off { method, elapsed_ms } => (
                crate::event::EventKind::FenceSucceeded,
                crate::event::fields([
                    ("peer", node.to_string()),
                    ("method", method),
                    ("duration_ms", elapsed_ms.to_string()),
                    ("groups", groups),
                ]),
            ),
            PowerFenceResult::Failed { reason } => (
                crate::event::EventKind::FenceFailed,
                crate::event::fields([
                    ("peer", node.to_string()),
                    ("reason", reason),
                    ("groups", groups),
                ]),
            ),
        };
        out.push(super::NodeAction::Emit { kind, fields: f });
        self.placement_input(now, crate::placement::policy::Input::Tick, out);
    }

    /// The latest power-off asked of each node, for status.
    pub fn fence_records(&self) -> &BTreeMap<String, FenceRecord> {
        self.power_fencing.records()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fencing() -> PowerFencing {
        PowerFencing::new(BTreeMap::from([("n1".into(), 0), ("n3".into(), 250)]))
    }

    fn waiting<'a>(group: &'a str, previous: &'a str) -> Waiting<'a> {
        Waiting {
            group,
            epoch: 4,
            previous,
            handoff: false,
            previous_ran: true,
        }
    }

    #[test]
    fn a_takeover_fences_the_previous_owner_once() {
        let mut f = fencing();
        let asks = f.plan(10, "n2", &[waiting("g1", "n1")]);
        assert_eq!(
            asks,
            [PowerOff {
                node: "n1".into(),
                delay_ms: 0,
                group: "g1".into(),
                epoch: 4
            }]
        );
        assert!(f.plan(20, "n2", &[waiting("g1", "n1")]).is_empty());
        assert!(!f.confirmed("g1", 4));
        let answered = f.done(
            "n1",
            PowerFenceResult::Off {
                method: "redfish".into(),
                elapsed_ms: 80,
            },
        );
        assert_eq!(answered, [("g1".to_string(), 4)]);
        assert!(f.confirmed("g1", 4));
        assert!(f.records()["n1"].result.is_some());
    }

    #[test]
    fn a_failed_fence_confirms_nothing() {
        let mut f = fencing();
        f.plan(10, "n2", &[waiting("g1", "n1")]);
        f.done(
            "n1",
            PowerFenceResult::Failed {
                reason: "401".into(),
            },
        );
        assert!(!f.confirmed("g1", 4));
        // Not asked again for the same epoch: the lease wait is the fallback.
        assert!(f.plan(20, "n2", &[waiting("g1", "n1")]).is_empty());
    }

    #[test]
    fn hand_offs_unfenceable_nodes_and_unproven_owners_are_not_fenced() {
        let mut f = fencing();
        let mut h = waiting("g1", "n1");
        h.handoff = true;
        assert!(f.plan(0, "n2", &[h]).is_empty());
        assert!(f.plan(0, "n2", &[waiting("g2", "n9")]).is_empty());
        let mut unproven = waiting("g3", "n1");
        unproven.previous_ran = false;
        assert!(f.plan(0, "n2", &[unproven]).is_empty());
        assert!(f.plan(0, "n1", &[waiting("g4", "n1")]).is_empty());
    }

    #[test]
    fn one_power_off_answers_every_group_of_that_node() {
        let mut f = fencing();
        let asks = f.plan(0, "n2", &[waiting("g1", "n3"), waiting("g2", "n3")]);
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].delay_ms, 250);
        f.done(
            "n3",
            PowerFenceResult::Off {
                method: "ipmi".into(),
                elapsed_ms: 900,
            },
        );
        assert!(f.confirmed("g1", 4) && f.confirmed("g2", 4));
        f.retain(|g, _| g == "g2");
        assert!(!f.confirmed("g1", 4) && f.confirmed("g2", 4));
    }
}
