//! The node core's quorum glue: quorum datagrams in and out, the log's decisions into
//! placement (the [`QuorumGate`]) and into mirror fencing, and the quorum events.

use std::collections::BTreeSet;

use super::watchdog::{HealthChange, WatchdogFault, WatchdogReport};
use super::{NodeAction, NodeCore};
use crate::cluster::packet::Assignment;
use crate::cluster::packet::LocalGroupState;
use crate::event::{fields, EventKind};
use crate::mirror::fencing::FenceAction;
use crate::placement::policy::{Now, Proposal, QuorumGate};
use crate::quorum::core::{QuorumAction, QuorumCore};
use crate::quorum::decision::{Applied, Decision};
use crate::quorum::outbox::{Outgoing, Refused};
use crate::quorum::wire::QuorumPacket;

impl NodeCore {
    /// Calls into the quorum core (if any) and carries out what it returns.
    pub(super) fn quorum_call(
        &mut self,
        now: Now,
        out: &mut Vec<NodeAction>,
        f: impl FnOnce(&mut QuorumCore, u64, &mut Vec<QuorumAction>),
    ) {
        let Some(q) = self.quorum.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        f(q, now.mono_ms, &mut actions);
        self.quorum_out(now, actions, out);
    }

    /// A quorum datagram arrived: drop copies from the other paths and foreign voter
    /// sets, then step the consensus.
    pub(super) fn quorum_packet(&mut self, now: Now, p: QuorumPacket, out: &mut Vec<NodeAction>) {
        if self.quorum.is_none() {
            return;
        }
        match self.outbox.admit(&mut self.dedup, &p) {
            Ok(()) => {}
            Err(Refused::ForeignVoters) => {
                tracing::warn!(from = %p.from, "quorum datagram from a node with another voter list dropped");
                return;
            }
            Err(Refused::Duplicate) => return,
        }
        let (from, sent_ms, msgs) = (p.from, p.sent_ms, p.msgs);
        self.quorum_call(now, out, |q, now, o| q.step(now, &from, sent_ms, msgs, o));
    }

    /// Turns the quorum core's actions into node actions: messages to the same voter
    /// share datagrams, but never across a log write (raft's order; see
    /// [`outbox::Outbox::coalesce`]).
    fn quorum_out(&mut self, now: Now, actions: Vec<QuorumAction>, out: &mut Vec<NodeAction>) {
        let mut committed = false;
        for o in self.outbox.coalesce(now.mono_ms, actions) {
            match o {
                Outgoing::Send { to, packet } => out.push(NodeAction::SendQuorum {
                    to,
                    packet: Box::new(packet),
                }),
                Outgoing::Persist { batch, write } => {
                    out.push(NodeAction::PersistLog { batch, write })
                }
                Outgoing::Applied(applied) => {
                    committed = true;
                    self.applied_event(applied, out);
                }
            }
        }
        if committed {
            self.peers_changed = true;
        }
    }

    fn applied_event(&mut self, applied: Applied, out: &mut Vec<NodeAction>) {
        let Applied::Changed(d) = applied else {
            return;
        };
        match d {
            Decision::Own {
                group,
                owner,
                epoch,
                ..
            } => out.push(NodeAction::Emit {
                kind: EventKind::OwnershipCommitted,
                fields: fields([
                    ("group", group),
                    ("peer", owner.clone()),
                    ("owner", owner),
                    ("epoch", epoch.to_string()),
                ]),
            }),
            // Quorum mode's standby changes when the log commits it, on every node.
            Decision::Standby { node, on } => out.push(NodeAction::Emit {
                kind: if on {
                    EventKind::NodeStandby
                } else {
                    EventKind::NodeOnline
                },
                fields: fields([("node", node)]),
            }),
            _ => {}
        }
    }

    /// Emits quorum gained / lost when this node's side changes.
    pub(super) fn watch_quorum(&mut self, now: Now, out: &mut Vec<NodeAction>) {
        let (Some(q), Some(s)) = (&self.quorum, &self.cfg.quorum) else {
            return;
        };
        let quorate = q.quorate(now.mono_ms, s.reachable_ms);
        if quorate == self.was_quorate {
            return;
        }
        self.was_quorate = quorate;
        let reachable = q.reachable(now.mono_ms, s.reachable_ms);
        out.push(NodeAction::Emit {
            kind: if quorate {
                EventKind::QuorumGained
            } else {
                EventKind::QuorumLost
            },
            fields: fields([
                (
                    "reason",
                    format!(
                        "{}{} of {} voters reachable: {}",
                        match (quorate, q.leader()) {
                            (false, None) => "no leader; ",
                            _ => "",
                        },
                        reachable.len(),
                        q.config().voters.len(),
                        reachable.join(",")
                    ),
                ),
                ("votes", reachable.len().to_string()),
                ("voters", q.config().voters.len().to_string()),
                ("reachable", reachable.join(",")),
            ]),
        });
    }

    /// Hands a proposal from placement to the log.
    pub(super) fn propose(&mut self, now: Now, p: Proposal, out: &mut Vec<NodeAction>) {
        // A claim is decided on this node's register: it names the copies' version,
        // so it does not commit if an outdating committed that this node had not seen.
        let copies_seen = self.quorum.as_ref().map(|q| q.register().copies_version);
        let d = match p {
            Proposal::Own {
                group,
                owner,
                epoch,
                handoff,
            } => Decision::Own {
                group,
                owner,
                epoch,
                handoff,
                copies_seen,
            },
            Proposal::Maintenance { group, on } => Decision::Maintenance { group, on },
            Proposal::Standby { node, on } => Decision::Standby { node, on },
        };
        self.quorum_call(now, out, |q, now, o| {
            if !q.propose(now, &d, o) {
                tracing::debug!(?d, "no leader to propose to yet");
            }
        });
    }

    /// What the log and the leases allow placement now; `None` without a quorum.
    pub(super) fn gate(&mut self, now: Now) -> Option<QuorumGate> {
        let s = self.cfg.quorum.as_ref()?;
        let Some(q) = &self.quorum else {
            return Some(QuorumGate::default()); // not restored yet: nothing runs
        };
        let reg = q.register();
        let leases = q.leases();
        let local = self.cfg.local().to_string();
        let every_node_live = self.membership.live_peers().len() == self.cfg.peers.len();
        let mut gate = QuorumGate {
            maintenance: reg.maintenance.clone(),
            standby: reg.standby.clone(),
            quorate: q.quorate(now.mono_ms, s.reachable_ms),
            ..Default::default()
        };
        for (g, o) in &reg.owners {
            gate.registers.insert(
                g.clone(),
                Assignment {
                    owner: o.owner.clone(),
                    epoch: o.epoch,
                },
            );
        }
        for policy in &self.cfg.placement.groups {
            let g = &policy.name;
            let outdated_here = self.cfg.group_mirrors.get(g).is_some_and(|ms| {
                ms.iter()
                    .any(|m| reg.outdated.contains_key(&(m.clone(), local.clone())))
            });
            let lagging = lagging_copies(&self.cfg, g, reg, &mut self.async_noted);
            let take = !outdated_here
                && lagging.is_empty()
                && match reg.owner(g) {
                    // The first commit of a group needs every node: a lone node booting
                    // cold must not take what another holds the newer copy of.
                    None => every_node_live,
                    Some(_) => leases.may_take_over(now.mono_ms, g, reg),
                };
            if take {
                gate.may_take_over.insert(g.clone());
            }
            let Some(o) = reg.owner(g).filter(|o| o.owner == local) else {
                continue;
            };
            let key = (g.clone(), o.epoch);
            let cleared = self.start_cleared.contains(&key)
                || o.previous.is_none()
                || leases.may_start(now.mono_ms, g, o.epoch, reg)
                || self.handed_off(g, o.previous.as_deref(), o.epoch)
                || self.power_fencing.confirmed(g, o.epoch);
            if cleared {
                self.start_cleared.insert(key.clone());
                self.ran.insert(key);
            }
            // A group runs (starts, resumes, goes on) only with more than the fast-stop
            // margin of lease left: see `fast_stop_margin_ms`.
            let lease_ok = leases
                .lease_end(g)
                .is_some_and(|end| end > now.mono_ms + s.fast_stop_margin_ms());
            if cleared && lease_ok && !self.outdating_stuck(now, g) {
                gate.may_run.insert(g.clone());
            }
        }
        for policy in &self.cfg.placement.groups {
            let g = &policy.name;
            if leases
                .serving_end(g)
                .is_some_and(|end| end > now.mono_ms + s.stop_margin_ms)
            {
                gate.leased.insert(g.clone());
            }
        }
        for policy in &self.cfg.placement.groups {
            if let Some(c) = self.complete_copies(&policy.name, reg) {
                gate.complete_copies.insert(policy.name.clone(), c);
            }
        }
        if self.watchdog_fault().is_some() {
            // No device to reset this node: it takes and runs nothing, and a stop is
            // one without a lease.
            gate.may_take_over.clear();
            gate.may_run.clear();
            gate.leased.clear();
        }
        self.start_cleared
            .retain(|(g, e)| reg.owner(g).is_some_and(|o| o.epoch == *e));
        self.power_fencing
            .retain(|g, e| reg.owner(g).is_some_and(|o| o.epoch == e));
        note_running_peers(&mut self.ran, &self.peers, reg);
        Some(gate)
    }

    /// The previous owner, live, shows it has the new register and stopped the group:
    /// a clean hand-off, no lease to wait out. Only if that owner had itself been
    /// cleared to run the previous epoch: otherwise an older owner may still hold a
    /// lease, and only the quiet majority proves it ran out. (Found by
    /// tests/quorum_sim.rs: an owner paused past its dead time kept its lease while the
    /// group was claimed and then switched over to a third node.)
    fn handed_off(&self, group: &str, previous: Option<&str>, epoch: u64) -> bool {
        let Some(prev) = previous else {
            return true;
        };
        if !self
            .ran
            .contains(&(group.to_string(), epoch.saturating_sub(1)))
        {
            return false;
        }
        if prev == self.cfg.local() {
            return true;
        }
        self.peers.iter().any(|p| {
            p.name == prev
                && p.group(group).is_some_and(|ga| {
                    ga.local == LocalGroupState::Stopped
                        && ga.assignment.as_ref().is_some_and(|a| a.epoch >= epoch)
                })
        })
    }

    /// Quorum mode's fencing: a lost sync peer is outdated only by a committed entry
    /// (proposed here), and this copy outdates itself when the log says so.
    pub(super) fn fence_through_log(
        &mut self,
        now: Now,
        decided: &mut Vec<FenceAction>,
        out: &mut Vec<NodeAction>,
    ) {
        let Some(q) = &self.quorum else {
            return;
        };
        let reg = q.register().clone();
        let me = self.cfg.local().to_string();
        let mut proposals = Vec::new();
        let mut seen: BTreeSet<(String, String)> = decided
            .iter()
            .filter_map(|a| match a {
                FenceAction::PeerOutdated { mirror, peer } => Some((mirror.clone(), peer.clone())),
                FenceAction::OutdateSelf { .. } => None,
            })
            .collect();
        for m in &self.mirrors {
            if m.primary {
                // A peer this primary has in sync holds every write it completes: up to
                // date again, by the log too (only the outdating the log holds now).
                for peer in &m.in_sync {
                    if let Some(g) = reg.outdated.get(&(m.name.clone(), peer.clone())) {
                        proposals.push(Decision::UpToDate {
                            mirror: m.name.clone(),
                            node: peer.clone(),
                            generation: *g,
                        });
                    }
                }
                for (peer, generation) in &m.pending {
                    if reg.is_outdated(&m.name, peer, *generation) {
                        if seen.insert((m.name.clone(), peer.clone())) {
                            decided.push(FenceAction::PeerOutdated {
                                mirror: m.name.clone(),
                                peer: peer.clone(),
                            });
                        }
                    } else {
                        proposals.push(Decision::Outdated {
                            mirror: m.name.clone(),
                            node: peer.clone(),
                            generation: *generation,
                        });
                    }
                }
            } else if let Some(g) = reg.outdated.get(&(m.name.clone(), me.clone())) {
                // Not up to date again on its own word, whatever its generation
                // (random, not ordered): only a primary that has it in sync clears the
                // mark. A copy cut off while the primary went on, healed after the
                // primary died, or resynced from an async copy, may lack writes the
                // primary acknowledged.
                let done = self.outdated_for.get(&m.name) == Some(g);
                if !done && !self.outdating.contains(&(m.name.clone(), *g)) {
                    decided.push(FenceAction::OutdateSelf {
                        mirror: m.name.clone(),
                        generation: *g,
                    });
                }
            }
        }
        for d in proposals {
            self.quorum_call(now, out, |q, now, o| {
                q.propose(now, &d, o);
            });
        }
    }

    /// Notes since when each lost sync peer has held writes.
    pub(super) fn note_pending(&mut self, now: Now, facts: &[super::MirrorFacts]) {
        let current: BTreeSet<(String, String)> = facts
            .iter()
            .filter(|m| m.primary)
            .flat_map(|m| m.pending.iter().map(|(p, _)| (m.name.clone(), p.clone())))
            .collect();
        self.pending_since.retain(|k, _| current.contains(k));
        for k in current {
            self.pending_since.entry(k).or_insert(now.mono_ms);
        }
    }

    /// The nodes whose copies of every mirror of `group` hold all the writes its last
    /// primary acknowledged: the committed owner if it ran the group at its epoch, else
    /// the previous owner (a new owner whose start failed never served); and every node
    /// that copies each mirror from it synchronously and is not outdated by the log.
    /// `None` for a group without mirrors or without an owner yet.
    pub(super) fn complete_copies(
        &self,
        group: &str,
        reg: &crate::quorum::decision::Register,
    ) -> Option<BTreeSet<String>> {
        let mirrors = self
            .cfg
            .group_mirrors
            .get(group)
            .filter(|m| !m.is_empty())?;
        let o = reg.owner(group)?;
        let served = self.ran.contains(&(group.to_string(), o.epoch));
        let last = match (&o.previous, served) {
            (Some(p), false) => p.as_str(),
            _ => o.owner.as_str(),
        };
        let nodes = self
            .cfg
            .placement
            .nodes
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                mirrors.iter().all(|m| {
                    self.cfg.sync_pair(m, n, last)
                        && !reg
                            .outdated
                            .keys()
                            .any(|(om, on)| om == m && on == n.as_str())
                })
            })
            .cloned()
            .collect();
        Some(nodes)
    }

    /// A group one of whose mirrors has held writes for a lost peer longer than twice
    /// the dead time, without the log outdating it: the owner gives up its lease (the
    /// held writes then fail; a majority elsewhere may hold the newer data).
    fn outdating_stuck(&self, now: Now, group: &str) -> bool {
        let Some(mirrors) = self.cfg.group_mirrors.get(group) else {
            return false;
        };
        self.pending_since.iter().any(|((m, _), since)| {
            mirrors.contains(m) && now.mono_ms.saturating_sub(*since) > 2 * self.cfg.dead_time_ms
        })
    }

    /// The watchdog's part of a tick: the groups this node runs or starts, with their
    /// leases, decide whether it is armed and petted (see [`super::watchdog`]).
    pub(super) fn watchdog_tick(&mut self, now: Now, out: &mut Vec<NodeAction>) {
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        let leases = self.quorum.as_ref().map(|q| q.leases());
        let stopping: BTreeSet<&str> = self
            .placement
            .local_states()
            .filter(|(_, s)| *s == LocalGroupState::Stopping)
            .map(|(g, _)| g)
            .collect();
        self.serving_stops.retain(|g| stopping.contains(g.as_str()));
        // A group stopping top-down still serves: backed like a running one, under
        // the lease it holds (which may be of an epoch the log has moved on from).
        // Found by tests/quorum_sim.rs seed 498: an owner paused in the middle of a
        // top-down stop, with the watchdog disarmed, served past its lease. A lost
        // lease's stop is backed until its fast stop is over: a node that hangs in it,
        // or fails a step, is reset before its lease ends.
        let owned: Vec<(String, Option<u64>)> = self
            .placement
            .local_states()
            .filter(|(g, s)| match s {
                LocalGroupState::Running | LocalGroupState::Starting => true,
                LocalGroupState::Stopping => self.serving_stops.contains(*g),
                _ => false,
            })
            .map(|(g, _)| (g.to_string(), leases.and_then(|l| l.serving_end(g))))
            .collect();
        out.extend(
            w.tick(now.mono_ms, &owned)
                .into_iter()
                .map(NodeAction::Watchdog),
        );
    }

    /// A step of a lost lease's fast stop failed: the watchdog is petted no more.
    pub(super) fn fast_stop_failed(&mut self) {
        if let Some(w) = self.watchdog.as_mut() {
            w.fast_stop_failed();
        }
    }

    /// The runtime's report on the watchdog device: while it is unavailable this node
    /// takes and starts nothing and stops what it runs (placement's `unprotected`);
    /// each change is announced once.
    pub(super) fn watchdog_report(
        &mut self,
        now: Now,
        report: WatchdogReport,
        out: &mut Vec<NodeAction>,
    ) {
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        let Some(change) = w.report(report) else {
            return;
        };
        let why = w
            .fault()
            .map(|f| format!("{} of {} failed: {}", f.op.name(), f.device, f.error));
        self.placement.set_unprotected(why.clone());
        let (kind, fields) = match change {
            HealthChange::Lost(f) => (
                EventKind::WatchdogUnavailable,
                fields([
                    ("device", f.device),
                    ("operation", f.op.name().to_string()),
                    ("error", f.error),
                    ("reason", why.unwrap_or_default()),
                ]),
            ),
            HealthChange::Regained { device } => {
                (EventKind::WatchdogAvailable, fields([("device", device)]))
            }
        };
        tracing::warn!(?kind, ?fields, "watchdog");
        out.push(NodeAction::Emit { kind, fields });
        self.placement_input(now, crate::placement::policy::Input::Tick, out);
    }

    /// Why the configured watchdog cannot back a lease now; None while it can (or
    /// without one).
    pub fn watchdog_fault(&self) -> Option<&WatchdogFault> {
        self.watchdog.as_ref().and_then(|w| w.fault())
    }

    /// Quorum mode: whether the committed log has `node` in standby; `None` without a
    /// quorum core (two-node mode, or not restored yet).
    pub fn committed_standby(&self, node: &str) -> Option<bool> {
        self.quorum
            .as_ref()
            .map(|q| q.register().standby.contains(node))
    }

    pub fn quorum(&self) -> Option<&QuorumCore> {
        self.quorum.as_ref()
    }
}
/// The mirrors of `group` whose copy on this node may lack writes the committed owner
/// acknowledged: it is not the owner and does not replicate them with the owner
/// synchronously. An async copy lags the owner, so it never takes a group over: the
/// group stays down until a copy that holds every acknowledged write returns. (Whether
/// the log outdated a sync copy is checked apart.)
/// Logged once per (group, epoch), recorded in `noted`.
fn lagging_copies(
    cfg: &super::NodeConfig,
    group: &str,
    reg: &crate::quorum::decision::Register,
    noted: &mut BTreeSet<(String, u64)>,
) -> Vec<String> {
    let Some(o) = reg.owner(group).filter(|o| o.owner != cfg.local()) else {
        return Vec::new();
    };
    let lagging: Vec<String> = cfg
        .group_mirrors
        .get(group)
        .into_iter()
        .flatten()
        .filter(|m| {
            !cfg.sync_peers
                .get(*m)
                .is_some_and(|peers| peers.contains(&o.owner))
        })
        .cloned()
        .collect();
    if !lagging.is_empty() && noted.insert((group.to_string(), o.epoch)) {
        tracing::warn!(
            group,
            owner = %o.owner,
            mirrors = ?lagging,
            "this node will not take the group over: its copy is not a synchronous copy \
             of the owner's and may lack writes the owner acknowledged"
        );
    }
    lagging
}

/// Notes the epochs live peers run groups at (they were cleared to), and forgets epochs
/// older than the previous one.
fn note_running_peers(
    ran: &mut BTreeSet<(String, u64)>,
    peers: &[crate::placement::policy::PeerView],
    reg: &crate::quorum::decision::Register,
) {
    for p in peers {
        for ga in &p.advert.groups {
            if let (LocalGroupState::Running, Some(a)) = (ga.local, &ga.assignment) {
                if a.owner == p.name {
                    ran.insert((ga.name.clone(), a.epoch));
                }
            }
        }
    }
    ran.retain(|(g, e)| reg.owner(g).is_none_or(|o| *e + 1 >= o.epoch));
}
