//! The placement core (pure, sans-IO; time is an input).
//!
//! Ownership of each group is a replicated register `{owner, epoch, maintenance}`
//! carried in every heartbeat ([`GroupAdvert::assignment`]). Each node merges the
//! registers it hears (highest epoch wins; ties go to the more preferred owner) and
//! only ever acts for itself:
//!
//! - The owner in the register keeps the group while it is alive and eligible (not in
//!   standby, not blocked by exhausted restarts). A healthy group with a live owner is
//!   never moved, except by an administrator or by `switchback = "automatic"`.
//! - When the owner is dead or ineligible, the most preferred eligible live node claims
//!   the group. In two-node mode it first probes the group's floating IPs on the LAN
//!   (ARP probe / DAD): if an address still answers, the owner is probably alive
//!   behind a broken heartbeat network, so it raises `split_brain_suspected` and does
//!   not take over. The claim (a new epoch) is only written once the probe passes, so a
//!   suspected split brain never moves the group when the heartbeats heal.
//! - A node starts a group only once no live peer reports it starting, running,
//!   stopping or failed (a clean hand-off for switchovers).
//! - If two live nodes both run a group (a partition healed), the most preferred keeps
//!   it and the other stops it cleanly.
//!
//! The deciding function for a group is [`Placement::desired_owner`]; a quorum engine
//! for three or more voters can later replace the "who may claim" rule while the two-node
//! rules stay as the two-node mode.

use std::collections::{BTreeMap, VecDeque};

use crate::cluster::packet::{
    Assignment, GroupAdvert, LocalGroupState, NodeAdvert, StandbySetting,
};
use crate::config::{Config, Switchback};
use crate::event::{fields, EventKind, Fields, MoveReason, Timeline, TimelineStep};

/// Now, as both a monotonic clock (for decisions) and wall-clock time (for records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// Placement policy of one group.
#[derive(Debug, Clone)]
pub struct GroupPolicy {
    pub name: String,
    /// Nodes allowed to run it; empty = all.
    pub allowed: Vec<String>,
    pub switchback: Switchback,
    pub max_restarts: u32,
    pub window_ms: u64,
    /// The group holds floating IPs that can be probed before a takeover.
    pub has_vip: bool,
}

/// Static inputs of the core.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    pub local: String,
    /// (name, priority); priority 1 is the most preferred.
    pub nodes: Vec<(String, u32)>,
    pub groups: Vec<GroupPolicy>,
    /// No claims before this much time after start: peers must have had a chance to be
    /// heard.
    pub startup_grace_ms: u64,
    pub probe_before_takeover: bool,
    /// How long to wait before probing again after an address answered.
    pub probe_retry_ms: u64,
    /// How long a probe that found the floating IPs free stays good for a takeover.
    /// Lets a probe started while the owner is merely silent (not yet declared dead,
    /// see [`Input::PeerSilent`]) take the probe off the failover's critical path.
    pub probe_fresh_ms: u64,
}

impl PlacementConfig {
    /// Derives the placement settings from the configuration.
    pub fn from_config(cfg: &Config, local: &str) -> PlacementConfig {
        let hb = &cfg.heartbeat;
        PlacementConfig {
            local: local.to_string(),
            nodes: cfg
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.priority))
                .collect(),
            groups: cfg
                .groups
                .iter()
                .map(|g| GroupPolicy {
                    name: g.name.clone(),
                    allowed: g.nodes.clone(),
                    switchback: g.switchback,
                    max_restarts: g.max_restarts,
                    window_ms: g.restart_window.as_millis() as u64,
                    has_vip: g
                        .resources
                        .iter()
                        .any(|r| matches!(r.kind, crate::config::ResourceKind::Ip { .. })),
                })
                .collect(),
            startup_grace_ms: (hb.dead_time + hb.interval * 2).as_millis() as u64,
            probe_before_takeover: cfg.cluster.probe_vip_before_takeover,
            probe_retry_ms: 2000,
            probe_fresh_ms: cfg.cluster.vip_probe_timeout.as_millis() as u64 + 100,
        }
    }
}

/// A live peer as seen by membership: its newest advert.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub name: String,
    pub advert: NodeAdvert,
}

/// What happened, for the core to decide on.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed; re-evaluate every group against the peers.
    Tick,
    /// Membership declared a peer dead at this time, after `silent_ms` of silence.
    NodeDown { peer: String, silent_ms: u64 },
    /// A live peer has been silent on every path for most of the dead time. If it owns
    /// a group this node would take over, probe the floating IPs now, so the takeover
    /// does not wait for the probe once the peer is declared dead.
    PeerSilent { peer: String },
    /// The executor finished starting a group (every resource started and passed
    /// its first quickCheck), or failed and cleaned up (`cleanup_ok`).
    Started {
        group: String,
        ok: bool,
        error: Option<String>,
        cleanup_ok: bool,
        steps: Vec<TimelineStep>,
        first_check_wall_ms: Option<u64>,
    },
    /// The executor finished stopping a group.
    Stopped {
        group: String,
        ok: bool,
        error: Option<String>,
        steps: Vec<TimelineStep>,
    },
    /// A running resource failed a check (or its process exited).
    CheckFailed {
        group: String,
        resource: String,
        reason: String,
    },
    /// A local restart finished.
    Restarted {
        group: String,
        resource: String,
        ok: bool,
        error: Option<String>,
    },
    /// Nothing on this node can carry the resource any more (e.g. no usable NIC for a
    /// floating IP): skip the local restarts and fail over.
    Unrecoverable {
        group: String,
        resource: String,
        reason: String,
    },
    /// Result of the floating-IP probe requested with [`Action::ProbeVip`].
    VipProbe { group: String, in_use: bool },
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    ProbeVip { group: String },
    StartGroup { group: String },
    StopGroup { group: String },
    RestartResource { group: String, resource: String },
    Emit { kind: EventKind, fields: Fields },
    RecordTimeline(Timeline),
}

/// Errors of administrative requests.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("no group named `{0}`")]
    UnknownGroup(String),
    #[error("no node named `{0}`")]
    UnknownNode(String),
    #[error("node `{0}` is not reachable")]
    NodeNotLive(String),
    #[error("node `{node}` cannot run group `{group}`: {why}")]
    NotEligible {
        node: String,
        group: String,
        why: String,
    },
    #[error("group `{group}` already runs on `{node}`")]
    AlreadyThere { group: String, node: String },
    #[error("group `{0}` is in maintenance")]
    InMaintenance(String),
    #[error("no other node can take group `{0}`")]
    NoTarget(String),
    #[error("group `{group}` is busy ({state:?}) on `{node}`; try again")]
    Busy {
        group: String,
        node: String,
        state: LocalGroupState,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    Idle,
    /// Waiting for the executor; `speculative` if the owner was still alive when asked.
    InFlight {
        speculative: bool,
    },
    /// An address answered although the owner is dead; probe again at this time.
    RetryAt(u64),
    /// The addresses were free at this time.
    Passed(u64),
    /// A speculative probe found an address in use (the owner is alive, only slow).
    SpecInUse(u64),
}

#[derive(Debug, Clone)]
struct GroupState {
    local: LocalGroupState,
    register: Option<Assignment>,
    maintenance: bool,
    failures: VecDeque<u64>,
    blocked_until: Option<u64>,
    probe: ProbeState,
    restarting: bool,
    /// Why we are about to take / are taking the group.
    claim: Option<PendingMove>,
    /// The timeline being written on this node.
    timeline: Option<Timeline>,
    failed_reported: bool,
    split_reported: bool,
    suspected_reported: bool,
}

#[derive(Debug, Clone)]
struct PendingMove {
    reason: MoveReason,
    from: Option<String>,
    detected_wall_ms: u64,
    /// When the failure happened, if known (the lost owner's last heartbeat).
    failed_wall_ms: Option<u64>,
}

/// What the executor reported for a start (the fields of [`Input::Started`]).
struct StartReport {
    ok: bool,
    error: Option<String>,
    cleanup_ok: bool,
    steps: Vec<TimelineStep>,
    first_check_wall_ms: Option<u64>,
}

/// Status of one group as this node sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub owner: Option<String>,
    pub epoch: u64,
    pub maintenance: bool,
    pub local_state: LocalGroupState,
    pub blocked: bool,
    pub recent_failures: usize,
    /// The group's state on every live node (this one included).
    pub states: BTreeMap<String, LocalGroupState>,
    /// Derived from `states`.
    pub summary: GroupSummary,
}

/// A group's state across the cluster, derived from every live node's local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSummary {
    /// Runs on exactly one node.
    Running,
    Starting,
    Stopping,
    Stopped,
    Failed,
    /// Runs on more than one node.
    Split,
}

impl std::fmt::Display for GroupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl GroupSummary {
    /// Every summary, in the MIB's order.
    pub const ALL: [GroupSummary; 6] = [
        GroupSummary::Running,
        GroupSummary::Starting,
        GroupSummary::Stopping,
        GroupSummary::Stopped,
        GroupSummary::Failed,
        GroupSummary::Split,
    ];

    /// The summary's snake_case name (as in the JSON and the metric labels).
    pub fn name(self) -> &'static str {
        match self {
            GroupSummary::Running => "running",
            GroupSummary::Starting => "starting",
            GroupSummary::Stopping => "stopping",
            GroupSummary::Stopped => "stopped",
            GroupSummary::Failed => "failed",
            GroupSummary::Split => "split",
        }
    }
}

/// The placement core of one node.
pub struct Placement {
    cfg: PlacementConfig,
    started_mono_ms: Option<u64>,
    /// The replicated standby register: node -> (standby, epoch). Highest epoch wins,
    /// so `tandem node standby NODE` works from any node.
    standby: BTreeMap<String, (bool, u64)>,
    /// This daemon is shutting down: like standby, but not replicated, so the node
    /// comes back online when it restarts.
    leaving: bool,
    groups: BTreeMap<String, GroupState>,
    /// Wall times when each peer was declared dead and when it was last heard (for
    /// timelines).
    lost_at: BTreeMap<String, (u64, u64)>,
}

impl Placement {
    pub fn new(cfg: PlacementConfig) -> Placement {
        let groups = cfg
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    GroupState {
                        local: LocalGroupState::Stopped,
                        register: None,
                        maintenance: false,
                        failures: VecDeque::new(),
                        blocked_until: None,
                        probe: ProbeState::Idle,
                        restarting: false,
                        claim: None,
                        timeline: None,
                        failed_reported: false,
                        split_reported: false,
                        suspected_reported: false,
                    },
                )
            })
            .collect();
        Placement {
            cfg,
            started_mono_ms: None,
            standby: BTreeMap::new(),
            leaving: false,
            groups,
            lost_at: BTreeMap::new(),
        }
    }

    /// The local node's name.
    pub fn local(&self) -> &str {
        &self.cfg.local
    }

    fn priority(&self, node: &str) -> u32 {
        self.cfg
            .nodes
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| *p)
            .unwrap_or(u32::MAX)
    }

    fn policy(&self, group: &str) -> Option<&GroupPolicy> {
        self.cfg.groups.iter().find(|g| g.name == group)
    }

    /// What this node advertises in its heartbeats.
    pub fn advert(&self, now: Now) -> NodeAdvert {
        NodeAdvert {
            priority: self.priority(&self.cfg.local),
            standby: self.is_standby(&self.cfg.local) || self.leaving,
            standby_register: self
                .standby
                .iter()
                .map(|(node, (standby, epoch))| StandbySetting {
                    node: node.clone(),
                    standby: *standby,
                    epoch: *epoch,
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|(name, g)| GroupAdvert {
                    name: name.clone(),
                    local: g.local,
                    blocked: is_blocked(g, now.mono_ms),
                    maintenance: g.maintenance,
                    assignment: g.register.clone(),
                })
                .collect(),
            mirrors: Vec::new(),
        }
    }

    /// Is this node in standby?
    pub fn standby(&self) -> bool {
        self.is_standby(&self.cfg.local)
    }

    /// Is `node` in standby, by the merged register?
    pub fn is_standby(&self, node: &str) -> bool {
        self.standby.get(node).is_some_and(|(s, _)| *s)
    }

    /// Merges the peers' standby registers into ours (highest epoch wins; on a tie,
    /// standby wins, the safe side). Reports our own node changing state.
    fn merge_standby(&mut self, peers: &[PeerView], out: &mut Vec<Action>) {
        let was = self.standby();
        for p in peers {
            for s in &p.advert.standby_register {
                if !self.cfg.nodes.iter().any(|(n, _)| *n == s.node) {
                    continue;
                }
                let ours = self.standby.get(&s.node).copied();
                if ours.is_none_or(|(st, ep)| (s.epoch, s.standby) > (ep, st)) {
                    self.standby.insert(s.node.clone(), (s.standby, s.epoch));
                }
            }
        }
        let now_standby = self.standby();
        if was != now_standby {
            out.push(emit(
                if now_standby {
                    EventKind::NodeStandby
                } else {
                    EventKind::NodeOnline
                },
                fields([("node", self.cfg.local.clone())]),
            ));
        }
    }

    /// Feeds one input; returns the actions to carry out.
    pub fn handle(&mut self, now: Now, input: Input, peers: &[PeerView]) -> Vec<Action> {
        if self.started_mono_ms.is_none() {
            self.started_mono_ms = Some(now.mono_ms);
        }
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::NodeDown { peer, silent_ms } => {
                let last_heard = now.wall_ms.saturating_sub(silent_ms);
                self.lost_at.insert(peer, (now.wall_ms, last_heard));
            }
            Input::PeerSilent { peer } => self.pre_probe(now, &peer, peers, &mut out),
            Input::Started {
                group,
                ok,
                error,
                cleanup_ok,
                steps,
                first_check_wall_ms,
            } => self.on_started(
                now,
                &group,
                StartReport {
                    ok,
                    error,
                    cleanup_ok,
                    steps,
                    first_check_wall_ms,
                },
                &mut out,
            ),
            Input::Stopped {
                group,
                ok,
                error,
                steps,
            } => self.on_stopped(now, &group, ok, error, steps, &mut out),
            Input::CheckFailed {
                group,
                resource,
                reason,
            } => self.on_check_failed(now, &group, &resource, &reason, &mut out),
            Input::Restarted {
                group,
                resource,
                ok,
                error,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.restarting = false;
                }
                if ok {
                    out.push(emit(
                        EventKind::ResourceRestarted,
                        fields([("group", group.clone()), ("resource", resource)]),
                    ));
                } else {
                    let reason = format!(
                        "restart of `{resource}` failed: {}",
                        error.unwrap_or_default()
                    );
                    self.give_up_locally(now, &group, &resource, &reason, &mut out);
                }
            }
            Input::Unrecoverable {
                group,
                resource,
                reason,
            } => self.give_up_locally(now, &group, &resource, &reason, &mut out),
            Input::VipProbe { group, in_use } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    let speculative = matches!(g.probe, ProbeState::InFlight { speculative: true });
                    let handoff_from_live_peer = g
                        .claim
                        .as_ref()
                        .and_then(|c| c.from.as_deref())
                        .is_some_and(|f| peers.iter().any(|p| p.name == f));
                    if in_use && speculative {
                        g.probe = ProbeState::SpecInUse(now.mono_ms);
                    } else if in_use && handoff_from_live_peer {
                        // The previous owner is alive and says it stopped: its address
                        // may still be settling (or a stray announcement was heard).
                        // Not a split brain; look again shortly.
                        tracing::info!(group = %group, "floating IP still answers during a hand-off; probing again");
                        g.probe = ProbeState::RetryAt(now.mono_ms + 250);
                    } else if in_use {
                        g.probe = ProbeState::RetryAt(now.mono_ms + self.cfg.probe_retry_ms);
                        if !g.suspected_reported {
                            g.suspected_reported = true;
                            out.push(emit(
                                EventKind::SplitBrainSuspected,
                                fields([
                                    ("group", group.clone()),
                                    (
                                        "reason",
                                        "the group's floating IP still answers on the LAN \
                                         although no live node runs the group; not taking over"
                                            .into(),
                                    ),
                                ]),
                            ));
                        }
                    } else {
                        // evaluate() below starts the group if it is still ours to take.
                        g.probe = ProbeState::Passed(now.mono_ms);
                        g.suspected_reported = false;
                    }
                }
            }
        }
        self.evaluate(now, peers, &mut out);
        out
    }

    fn on_started(&mut self, now: Now, group: &str, report: StartReport, out: &mut Vec<Action>) {
        let StartReport {
            ok,
            error,
            cleanup_ok,
            steps,
            first_check_wall_ms: first_check,
        } = report;
        let Some(window) = self.policy(group).map(|p| p.window_ms) else {
            return;
        };
        let local = self.cfg.local.clone();
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let mut tl = g.timeline.take();
        if let Some(t) = tl.as_mut() {
            t.steps.extend(steps);
            t.first_check_ms = first_check;
        }
        if ok {
            g.local = LocalGroupState::Running;
            out.push(emit(
                EventKind::GroupStarted,
                fields([("group", group.to_string()), ("node", local)]),
            ));
            if let Some(mut t) = tl {
                t.completed_ms = Some(now.wall_ms);
                t.outcome = "completed".into();
                let kind = if t.kind == "switchover" {
                    EventKind::SwitchoverCompleted
                } else {
                    EventKind::FailoverCompleted
                };
                if t.reason != MoveReason::Initial {
                    out.push(emit(kind, timeline_fields(&t)));
                }
                out.push(Action::RecordTimeline(t));
            }
        } else {
            let why = error.unwrap_or_else(|| "start failed".into());
            g.local = if cleanup_ok {
                LocalGroupState::Stopped
            } else {
                LocalGroupState::Failed
            };
            g.blocked_until = Some(now.mono_ms + window);
            out.push(emit(
                EventKind::GroupStartFailed,
                fields([
                    ("group", group.to_string()),
                    ("reason", why.clone()),
                    ("cleanup_ok", cleanup_ok.to_string()),
                ]),
            ));
            if let Some(mut t) = tl {
                t.completed_ms = Some(now.wall_ms);
                t.outcome = format!("failed: {why}");
                let kind = if t.kind == "switchover" {
                    EventKind::SwitchoverFailed
                } else {
                    EventKind::FailoverFailed
                };
                out.push(emit(kind, timeline_fields(&t)));
                out.push(Action::RecordTimeline(t));
            }
        }
    }

    fn on_stopped(
        &mut self,
        now: Now,
        group: &str,
        ok: bool,
        error: Option<String>,
        steps: Vec<TimelineStep>,
        out: &mut Vec<Action>,
    ) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.restarting = false;
        if ok {
            g.local = LocalGroupState::Stopped;
            out.push(emit(
                EventKind::GroupStopped,
                fields([
                    ("group", group.to_string()),
                    ("node", self.cfg.local.clone()),
                ]),
            ));
        } else {
            // A resource that would not stop may still be running: nobody else may
            // start the group while we are alive and say so.
            g.local = LocalGroupState::Failed;
            out.push(emit(
                EventKind::GroupStopFailed,
                fields([
                    ("group", group.to_string()),
                    ("reason", error.unwrap_or_default()),
                ]),
            ));
        }
        if !steps.is_empty() {
            // The source side of a move keeps its own timeline of the stop.
            let owner = g.register.as_ref().map(|r| r.owner.clone());
            if owner.as_deref() != Some(self.cfg.local.as_str()) {
                let t = Timeline {
                    group: group.to_string(),
                    kind: "release".into(),
                    reason: MoveReason::Manual,
                    from_node: Some(self.cfg.local.clone()),
                    to_node: owner.unwrap_or_default(),
                    failure_ms: None,
                    detected_ms: steps.first().map(|s| s.at_ms).unwrap_or(now.wall_ms),
                    decided_ms: steps.first().map(|s| s.at_ms).unwrap_or(now.wall_ms),
                    steps,
                    first_check_ms: None,
                    completed_ms: Some(now.wall_ms),
                    outcome: if ok {
                        "stopped".into()
                    } else {
                        "stop failed".into()
                    },
                };
                out.push(Action::RecordTimeline(t));
            }
        }
    }

    fn on_check_failed(
        &mut self,
        now: Now,
        group: &str,
        resource: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(policy) = self.policy(group).cloned() else {
            return;
        };
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if g.local != LocalGroupState::Running || g.maintenance || g.restarting {
            return;
        }
        out.push(emit(
            EventKind::ResourceCheckFailed,
            fields([
                ("group", group.to_string()),
                ("resource", resource.to_string()),
                ("reason", reason.to_string()),
            ]),
        ));
        g.failures.push_back(now.mono_ms);
        prune_failures(g, now.mono_ms, policy.window_ms);
        if g.failures.len() as u32 <= policy.max_restarts {
            g.restarting = true;
            out.push(Action::RestartResource {
                group: group.to_string(),
                resource: resource.to_string(),
            });
        } else {
            let why = format!(
                "`{resource}` failed {} times within {} s: {reason}",
                g.failures.len(),
                policy.window_ms / 1000
            );
            self.give_up_locally(now, group, resource, &why, out);
        }
    }

    /// The ladder is exhausted on this node: block it for the group and stop the group,
    /// so the next eligible node takes over.
    fn give_up_locally(
        &mut self,
        now: Now,
        group: &str,
        resource: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(window) = self.policy(group).map(|p| p.window_ms) else {
            return;
        };
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.blocked_until = Some(now.mono_ms + window);
        out.push(emit(
            EventKind::FailoverStarted,
            fields([
                ("group", group.to_string()),
                ("from_node", self.cfg.local.clone()),
                ("resource", resource.to_string()),
                ("reason", MoveReason::ResourceFailed.name()),
                ("detail", reason.to_string()),
            ]),
        ));
        if matches!(
            g.local,
            LocalGroupState::Running | LocalGroupState::Starting
        ) {
            g.local = LocalGroupState::Stopping;
            out.push(emit(
                EventKind::GroupStopping,
                fields([("group", group.to_string()), ("reason", reason.to_string())]),
            ));
            out.push(Action::StopGroup {
                group: group.to_string(),
            });
        }
    }

    /// Re-evaluates every group.
    fn evaluate(&mut self, now: Now, peers: &[PeerView], out: &mut Vec<Action>) {
        self.merge_standby(peers, out);
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            self.evaluate_group(now, &name, peers, out);
        }
    }

    /// Whether `node` may run `group` now (this node or a live peer).
    fn eligible(&self, now: Now, node: &str, group: &str, peers: &[PeerView]) -> bool {
        let Some(policy) = self.policy(group) else {
            return false;
        };
        if !policy.allowed.is_empty() && !policy.allowed.iter().any(|n| n == node) {
            return false;
        }
        if node == self.cfg.local {
            let g = &self.groups[group];
            return !self.is_standby(node)
                && !self.leaving
                && !is_blocked(g, now.mono_ms)
                && g.local != LocalGroupState::Failed;
        }
        match peers.iter().find(|p| p.name == node) {
            None => false,
            Some(p) => {
                !p.advert.standby
                    && !self.is_standby(node)
                    && p.advert
                        .groups
                        .iter()
                        .find(|ga| ga.name == group)
                        .is_none_or(|ga| !ga.blocked && ga.local != LocalGroupState::Failed)
            }
        }
    }

    /// The most preferred eligible live node for the group.
    fn best_eligible(&self, now: Now, group: &str, peers: &[PeerView]) -> Option<String> {
        std::iter::once(self.cfg.local.as_str())
            .chain(peers.iter().map(|p| p.name.as_str()))
            .filter(|n| self.eligible(now, n, group, peers))
            .min_by_key(|n| (self.priority(n), n.to_string()))
            .map(str::to_string)
    }

    /// Who should own the group, given the merged register and the live nodes.
    pub fn desired_owner(&self, now: Now, group: &str, peers: &[PeerView]) -> Option<String> {
        let g = &self.groups[group];
        let policy = self.policy(group)?;
        match g.register.as_ref().map(|r| r.owner.as_str()) {
            Some(o) if self.eligible(now, o, group, peers) => {
                if policy.switchback == Switchback::Automatic {
                    let best = self.best_eligible(now, group, peers);
                    if let Some(b) = best {
                        if self.priority(&b) < self.priority(o)
                            && self.state_of(o, group, peers) == Some(LocalGroupState::Running)
                        {
                            return Some(b);
                        }
                    }
                }
                Some(o.to_string())
            }
            // The registered owner cannot run it. If an eligible node already runs it
            // (e.g. it kept the group while the other side of a partition claimed it
            // and failed), that node keeps it and adopts the register; moving a healthy
            // group to a more preferred node is switchback's business, not this rule's.
            // (Found by tests/simulation.rs.)
            _ => std::iter::once(self.cfg.local.as_str())
                .chain(peers.iter().map(|p| p.name.as_str()))
                .find(|n| {
                    self.state_of(n, group, peers) == Some(LocalGroupState::Running)
                        && self.eligible(now, n, group, peers)
                })
                .map(str::to_string)
                .or_else(|| self.best_eligible(now, group, peers)),
        }
    }

    fn state_of(&self, node: &str, group: &str, peers: &[PeerView]) -> Option<LocalGroupState> {
        if node == self.cfg.local {
            return self.groups.get(group).map(|g| g.local);
        }
        peers
            .iter()
            .find(|p| p.name == node)?
            .advert
            .groups
            .iter()
            .find(|ga| ga.name == group)
            .map(|ga| ga.local)
    }

    fn evaluate_group(&mut self, now: Now, name: &str, peers: &[PeerView], out: &mut Vec<Action>) {
        let local = self.cfg.local.clone();
        // Merge the replicated register: highest epoch wins, ties to the preferred owner.
        let mut best: Option<(Assignment, bool)> = {
            let g = &self.groups[name];
            g.register.clone().map(|r| (r, g.maintenance))
        };
        for p in peers {
            if let Some(ga) = p.advert.groups.iter().find(|ga| ga.name == name) {
                if let Some(a) = &ga.assignment {
                    let better = match &best {
                        None => true,
                        Some((b, _)) => {
                            // Equal priorities are broken by name (as `best_eligible`
                            // does): with a priority-only tie-break, two registers with
                            // the same epoch and equally preferred owners (written on
                            // both sides of a partition) were each kept by whichever
                            // node saw it first, and the nodes never agreed on the
                            // owner. (Found by tests/simulation.rs.)
                            a.epoch > b.epoch
                                || (a.epoch == b.epoch
                                    && (self.priority(&a.owner), a.owner.as_str())
                                        < (self.priority(&b.owner), b.owner.as_str()))
                        }
                    };
                    if better {
                        best = Some((a.clone(), ga.maintenance));
                    }
                }
            }
        }
        {
            let automatic = self.policy(name).map(|p| p.switchback) == Some(Switchback::Automatic);
            let local_priority = self.priority(&local);
            let prios: BTreeMap<String, u32> = self.cfg.nodes.iter().cloned().collect();
            let priority_of = |n: &str| prios.get(n).copied().unwrap_or(u32::MAX);
            let g = self.groups.get_mut(name).expect("group exists");
            let previous_owner = g.register.as_ref().map(|r| r.owner.clone());
            if let Some((a, m)) = best {
                if g.maintenance != m {
                    out.push(emit(
                        if m {
                            EventKind::GroupMaintenanceOn
                        } else {
                            EventKind::GroupMaintenanceOff
                        },
                        fields([("group", name.to_string())]),
                    ));
                }
                let became_ours = a.owner == local && previous_owner.as_deref() != Some(&local);
                g.maintenance = m;
                g.register = Some(a);
                if became_ours && g.claim.is_none() {
                    // Somebody else assigned the group to us: an admin's switchover,
                    // or the owner handing it back to us (automatic switchback).
                    let from = previous_owner.filter(|o| o != &local);
                    let switchback = automatic
                        && from
                            .as_deref()
                            .is_some_and(|f| local_priority < priority_of(f));
                    g.claim = Some(PendingMove {
                        reason: if switchback {
                            MoveReason::Switchback
                        } else {
                            MoveReason::Manual
                        },
                        from,
                        detected_wall_ms: now.wall_ms,
                        failed_wall_ms: None,
                    });
                }
            }
            if let Some(until) = g.blocked_until {
                if now.mono_ms >= until {
                    g.blocked_until = None;
                    g.failures.clear();
                }
            }
        }
        if self.groups[name].maintenance {
            return; // monitoring and recovery are suspended
        }
        let in_grace = self
            .started_mono_ms
            .is_some_and(|s| now.mono_ms < s + self.cfg.startup_grace_ms);
        // Split brain: several live nodes run the group.
        let mut active: Vec<String> = std::iter::once(local.clone())
            .chain(peers.iter().map(|p| p.name.clone()))
            .filter(|n| {
                matches!(
                    self.state_of(n, name, peers),
                    Some(LocalGroupState::Running | LocalGroupState::Starting)
                )
            })
            .collect();
        if active.len() >= 2 {
            active.sort_by_key(|n| (self.priority(n), n.clone()));
            let winner = active[0].clone();
            let g = self.groups.get_mut(name).expect("group exists");
            if !g.split_reported {
                g.split_reported = true;
                out.push(emit(
                    EventKind::SplitBrainResolved,
                    fields([
                        ("group", name.to_string()),
                        ("winner", winner.clone()),
                        ("losers", active[1..].join(",")),
                    ]),
                ));
            }
            if winner == local {
                if g.register.as_ref().map(|r| r.owner.as_str()) != Some(local.as_str()) {
                    let epoch = g.register.as_ref().map_or(0, |r| r.epoch) + 1;
                    g.register = Some(Assignment {
                        owner: local.clone(),
                        epoch,
                    });
                }
            } else if g.local == LocalGroupState::Running {
                g.local = LocalGroupState::Stopping;
                out.push(emit(
                    EventKind::GroupStopping,
                    fields([
                        ("group", name.to_string()),
                        ("reason", format!("split brain: `{winner}` keeps the group")),
                    ]),
                ));
                out.push(Action::StopGroup {
                    group: name.to_string(),
                });
            }
            return;
        }
        self.groups
            .get_mut(name)
            .expect("group exists")
            .split_reported = false;

        let desired = self.desired_owner(now, name, peers);
        let g = &self.groups[name];
        let owner = g.register.as_ref().map(|r| r.owner.clone());
        let nobody_active = active.is_empty();
        if desired.is_none() && nobody_active && !in_grace {
            let g = self.groups.get_mut(name).expect("group exists");
            if !g.failed_reported && g.local != LocalGroupState::Stopping {
                g.failed_reported = true;
                out.push(emit(
                    EventKind::GroupFailed,
                    fields([
                        ("group", name.to_string()),
                        ("reason", "no live node is eligible to run the group".into()),
                    ]),
                ));
            }
        } else if desired.is_some() {
            self.groups
                .get_mut(name)
                .expect("group exists")
                .failed_reported = false;
        }

        if desired.as_deref() == Some(local.as_str()) && owner.as_deref() != Some(local.as_str()) {
            if in_grace {
                return;
            }
            // We already run the group and should: adopt the register. Otherwise a
            // register written by a claim that failed elsewhere (e.g. the other side of
            // a partition took over, its start failed and it is blocked) stays in
            // place, and once that node is eligible again it takes the healthy group
            // from us. (Found by tests/simulation.rs.)
            if self.groups[name].local == LocalGroupState::Running {
                let g = self.groups.get_mut(name).expect("group exists");
                let epoch = g.register.as_ref().map_or(0, |r| r.epoch) + 1;
                g.register = Some(Assignment {
                    owner: local.clone(),
                    epoch,
                });
                g.claim = None;
                return;
            }
            // Claim: the owner is gone/ineligible (or switchback). Probe first.
            let reason = match owner.as_deref() {
                None => MoveReason::Initial,
                Some(o) if !peers.iter().any(|p| p.name == o) => MoveReason::NodeLost,
                Some(o) if self.eligible(now, o, name, peers) => MoveReason::Switchback,
                Some(o) => {
                    let p = peers.iter().find(|p| p.name == o);
                    if p.is_some_and(|p| p.advert.standby) || self.is_standby(o) {
                        MoveReason::Manual
                    } else {
                        MoveReason::ResourceFailed
                    }
                }
            };
            let (detected, failed) = match (reason, owner.as_deref()) {
                (MoveReason::NodeLost, Some(o)) => match self.lost_at.get(o) {
                    Some(&(detected, last_heard)) => (detected, Some(last_heard)),
                    None => (now.wall_ms, None),
                },
                _ => (now.wall_ms, None),
            };
            let g = self.groups.get_mut(name).expect("group exists");
            if g.claim.is_none() {
                g.claim = Some(PendingMove {
                    reason,
                    from: owner.clone(),
                    detected_wall_ms: detected,
                    failed_wall_ms: failed,
                });
            }
            self.try_start(now, name, peers, out);
            return;
        }
        if owner.as_deref() == Some(local.as_str()) {
            if desired.as_deref() == Some(local.as_str()) {
                self.try_start(now, name, peers, out);
            } else if let Some(d) = desired {
                // Someone else should run it. If that is an automatic switchback to a
                // more preferred node, hand the group over explicitly by writing the
                // register (as a switchover does), so the decision cannot flip back
                // once we have stopped. If we are no longer eligible (blocked, standby),
                // just stop: the most preferred eligible node claims it after our stop.
                let switchback = !in_grace
                    && self.eligible(now, &local, name, peers)
                    && self.priority(&d) < self.priority(&local)
                    && self.groups[name].local == LocalGroupState::Running;
                if switchback {
                    let g = self.groups.get_mut(name).expect("group exists");
                    let epoch = g.register.as_ref().map_or(0, |r| r.epoch) + 1;
                    g.register = Some(Assignment {
                        owner: d.clone(),
                        epoch,
                    });
                    out.push(emit(
                        EventKind::SwitchoverStarted,
                        fields([
                            ("group", name.to_string()),
                            ("from_node", local.clone()),
                            ("to_node", d.clone()),
                            ("reason", MoveReason::Switchback.name()),
                        ]),
                    ));
                }
                self.stop_if_running(name, &format!("the group moves to `{d}`"), out);
            }
            return;
        }
        // Someone else owns it. (A speculative probe result is kept: the owner may be
        // about to be declared dead.)
        let g = self.groups.get_mut(name).expect("group exists");
        g.claim = None;
        if matches!(g.probe, ProbeState::RetryAt(_)) {
            g.probe = ProbeState::Idle;
        }
        self.stop_if_running(
            name,
            &format!("the group is assigned to `{}`", owner.unwrap_or_default()),
            out,
        );
    }

    fn stop_if_running(&mut self, name: &str, reason: &str, out: &mut Vec<Action>) {
        let g = self.groups.get_mut(name).expect("group exists");
        if g.local == LocalGroupState::Running && !g.restarting {
            g.local = LocalGroupState::Stopping;
            out.push(emit(
                EventKind::GroupStopping,
                fields([("group", name.to_string()), ("reason", reason.to_string())]),
            ));
            out.push(Action::StopGroup {
                group: name.to_string(),
            });
        }
    }

    /// We are (or should be) the owner and the group is stopped here: start it once the
    /// hand-off is clean and the floating IP is free.
    fn try_start(&mut self, now: Now, name: &str, peers: &[PeerView], out: &mut Vec<Action>) {
        let local = self.cfg.local.clone();
        if !self.eligible(now, &local, name, peers) {
            return;
        }
        let g = &self.groups[name];
        if g.local != LocalGroupState::Stopped {
            return;
        }
        let busy_peer = peers.iter().any(|p| {
            matches!(
                self.state_of(&p.name, name, peers),
                Some(
                    LocalGroupState::Starting
                        | LocalGroupState::Running
                        | LocalGroupState::Stopping
                        | LocalGroupState::Failed
                )
            )
        });
        if busy_peer {
            return;
        }
        // A peer's state is only current once it has seen the register we act on: an
        // older advert may predate its own start (e.g. a switchover to us issued here
        // while the previous target was just starting the group). Wait until every live
        // peer carries our register. (Found by tests/simulation.rs.)
        let register = self.groups[name].register.as_ref();
        let stale_peer = register.is_some()
            && peers.iter().any(|p| {
                p.advert
                    .groups
                    .iter()
                    .find(|ga| ga.name == name)
                    .is_some_and(|ga| ga.assignment.as_ref() != register)
            });
        if stale_peer {
            return;
        }
        let probe = self.cfg.probe_before_takeover && self.policy(name).is_some_and(|p| p.has_vip);
        let g = self.groups.get_mut(name).expect("group exists");
        if probe {
            match g.probe {
                ProbeState::InFlight { .. } => return,
                ProbeState::RetryAt(t) if now.mono_ms < t => return,
                ProbeState::Passed(t)
                    if now.mono_ms.saturating_sub(t) <= self.cfg.probe_fresh_ms => {}
                _ => {
                    g.probe = ProbeState::InFlight { speculative: false };
                    out.push(Action::ProbeVip {
                        group: name.to_string(),
                    });
                    return;
                }
            }
        }
        self.claim_and_start(now, name, peers, out);
    }

    /// A live peer is almost dead: probe the floating IPs of the groups it owns that
    /// this node would take, ahead of the takeover.
    fn pre_probe(&mut self, now: Now, peer: &str, peers: &[PeerView], out: &mut Vec<Action>) {
        if !self.cfg.probe_before_takeover {
            return;
        }
        let without: Vec<PeerView> = peers.iter().filter(|p| p.name != peer).cloned().collect();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = &self.groups[&name];
            let owned_by_peer = g.register.as_ref().is_some_and(|r| r.owner == peer);
            if !owned_by_peer
                || g.maintenance
                || g.local != LocalGroupState::Stopped
                || !self.policy(&name).is_some_and(|p| p.has_vip)
                || self.best_eligible(now, &name, &without).as_deref()
                    != Some(self.cfg.local.as_str())
            {
                continue;
            }
            let due = match g.probe {
                ProbeState::Idle => true,
                ProbeState::Passed(t) => {
                    now.mono_ms.saturating_sub(t) > self.cfg.probe_fresh_ms / 2
                }
                ProbeState::SpecInUse(t) => {
                    now.mono_ms.saturating_sub(t) >= self.cfg.probe_retry_ms
                }
                ProbeState::InFlight { .. } | ProbeState::RetryAt(_) => false,
            };
            if due {
                self.groups.get_mut(&name).expect("group exists").probe =
                    ProbeState::InFlight { speculative: true };
                out.push(Action::ProbeVip { group: name });
            }
        }
    }

    /// Writes our claim (a new epoch) and starts the group.
    fn claim_and_start(&mut self, now: Now, name: &str, peers: &[PeerView], out: &mut Vec<Action>) {
        let local = self.cfg.local.clone();
        // Re-check: the world may have changed while the probe ran.
        if !self.eligible(now, &local, name, peers) {
            return;
        }
        let still_ours = self.desired_owner(now, name, peers).as_deref() == Some(local.as_str());
        let g = self.groups.get_mut(name).expect("group exists");
        if g.local != LocalGroupState::Stopped || !still_ours {
            return;
        }
        if g.register.as_ref().map(|r| r.owner.as_str()) != Some(local.as_str()) {
            let epoch = g.register.as_ref().map_or(0, |r| r.epoch) + 1;
            g.register = Some(Assignment {
                owner: local.clone(),
                epoch,
            });
            // Live peers must see the claim before we start (`try_start` waits for
            // them): one of them may be starting the group right now on an older view
            // (e.g. the owner whose block just expired), and two simultaneous starts
            // would run it twice. The pending claim and a passed probe are kept.
            // (Found by tests/simulation.rs.)
            if !peers.is_empty() {
                return;
            }
        }
        g.probe = ProbeState::Idle;
        let claim = g.claim.take().unwrap_or(PendingMove {
            reason: MoveReason::Initial,
            from: None,
            detected_wall_ms: now.wall_ms,
            failed_wall_ms: None,
        });
        let kind = match claim.reason {
            MoveReason::Manual | MoveReason::Switchback => "switchover",
            _ => "failover",
        };
        let t = Timeline {
            group: name.to_string(),
            kind: kind.into(),
            reason: claim.reason,
            from_node: claim.from.clone(),
            to_node: local.clone(),
            failure_ms: claim.failed_wall_ms,
            detected_ms: claim.detected_wall_ms,
            decided_ms: now.wall_ms,
            steps: Vec::new(),
            first_check_ms: None,
            completed_ms: None,
            outcome: "in progress".into(),
        };
        if claim.reason != MoveReason::Initial {
            let kind = if kind == "switchover" {
                EventKind::SwitchoverStarted
            } else {
                EventKind::FailoverStarted
            };
            out.push(emit(kind, timeline_fields(&t)));
        }
        g.timeline = Some(t);
        g.local = LocalGroupState::Starting;
        out.push(emit(
            EventKind::GroupStarting,
            fields([
                ("group", name.to_string()),
                ("node", local),
                ("reason", claim.reason.name()),
            ]),
        ));
        out.push(Action::StartGroup {
            group: name.to_string(),
        });
    }

    /// An administrator asks to move `group` to `target` (default: the most preferred
    /// eligible node other than the current owner). Returns the target.
    pub fn switchover(
        &mut self,
        now: Now,
        group: &str,
        target: Option<&str>,
        peers: &[PeerView],
    ) -> Result<(String, Vec<Action>), PlacementError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| PlacementError::UnknownGroup(group.into()))?;
        if g.maintenance {
            return Err(PlacementError::InMaintenance(group.into()));
        }
        let owner = g.register.as_ref().map(|r| r.owner.clone());
        let target = match target {
            Some(t) => {
                if !self.cfg.nodes.iter().any(|(n, _)| n == t) {
                    return Err(PlacementError::UnknownNode(t.into()));
                }
                if t != self.cfg.local && !peers.iter().any(|p| p.name == t) {
                    return Err(PlacementError::NodeNotLive(t.into()));
                }
                t.to_string()
            }
            None => std::iter::once(self.cfg.local.as_str())
                .chain(peers.iter().map(|p| p.name.as_str()))
                .filter(|n| Some(*n) != owner.as_deref())
                .filter(|n| self.eligible(now, n, group, peers))
                .min_by_key(|n| (self.priority(n), n.to_string()))
                .map(str::to_string)
                .ok_or_else(|| PlacementError::NoTarget(group.into()))?,
        };
        if owner.as_deref() == Some(target.as_str()) {
            return Err(PlacementError::AlreadyThere {
                group: group.into(),
                node: target,
            });
        }
        if !self.eligible(now, &target, group, peers) {
            return Err(PlacementError::NotEligible {
                node: target.clone(),
                group: group.into(),
                why: "standby, blocked after failures, failed, or not in the group's nodes".into(),
            });
        }
        // Refuse while any node is mid-transition.
        for n in std::iter::once(self.cfg.local.clone()).chain(peers.iter().map(|p| p.name.clone()))
        {
            if let Some(s) = self.state_of(&n, group, peers) {
                if matches!(s, LocalGroupState::Starting | LocalGroupState::Stopping) {
                    return Err(PlacementError::Busy {
                        group: group.into(),
                        node: n,
                        state: s,
                    });
                }
            }
        }
        let g = self.groups.get_mut(group).expect("checked");
        let epoch = g.register.as_ref().map_or(0, |r| r.epoch) + 1;
        g.register = Some(Assignment {
            owner: target.clone(),
            epoch,
        });
        if target == self.cfg.local {
            g.claim = Some(PendingMove {
                reason: MoveReason::Manual,
                from: owner.clone(),
                detected_wall_ms: now.wall_ms,
                failed_wall_ms: None,
            });
        }
        let mut out = vec![emit(
            EventKind::SwitchoverStarted,
            fields([
                ("group", group.to_string()),
                ("from_node", owner.unwrap_or_default()),
                ("to_node", target.clone()),
                ("reason", MoveReason::Manual.name()),
            ]),
        )];
        self.evaluate(now, peers, &mut out);
        Ok((target, out))
    }

    /// Puts a node in standby (its groups move away, no new ones arrive) or back online.
    /// Works from any node: the setting travels in the replicated standby register.
    pub fn set_standby(
        &mut self,
        now: Now,
        node: &str,
        on: bool,
        peers: &[PeerView],
    ) -> Result<Vec<Action>, PlacementError> {
        if !self.cfg.nodes.iter().any(|(n, _)| n == node) {
            return Err(PlacementError::UnknownNode(node.into()));
        }
        let mut out = Vec::new();
        if self.is_standby(node) != on {
            let epoch = self.standby.get(node).map_or(0, |(_, e)| *e) + 1;
            self.standby.insert(node.to_string(), (on, epoch));
            out.push(emit(
                if on {
                    EventKind::NodeStandby
                } else {
                    EventKind::NodeOnline
                },
                fields([("node", node.to_string())]),
            ));
        }
        self.evaluate(now, peers, &mut out);
        Ok(out)
    }

    /// The daemon is shutting down: hand this node's groups to peers (see `leaving`).
    pub fn leave(&mut self, now: Now, peers: &[PeerView]) -> Vec<Action> {
        self.leaving = true;
        let mut out = Vec::new();
        self.evaluate(now, peers, &mut out);
        out
    }

    /// Suspends (or resumes) monitoring and recovery of a group, cluster-wide.
    pub fn set_maintenance(
        &mut self,
        now: Now,
        group: &str,
        on: bool,
        peers: &[PeerView],
    ) -> Result<Vec<Action>, PlacementError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| PlacementError::UnknownGroup(group.into()))?;
        let mut out = Vec::new();
        if g.maintenance != on {
            let (owner, epoch) = match &g.register {
                Some(r) => (r.owner.clone(), r.epoch + 1),
                None => (String::new(), 1),
            };
            g.register = Some(Assignment { owner, epoch });
            g.maintenance = on;
            out.push(emit(
                if on {
                    EventKind::GroupMaintenanceOn
                } else {
                    EventKind::GroupMaintenanceOff
                },
                fields([("group", group.to_string())]),
            ));
        }
        self.evaluate(now, peers, &mut out);
        Ok(out)
    }

    /// Is the group in maintenance (monitoring suspended)?
    pub fn in_maintenance(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.maintenance)
    }

    /// The status of every group as this node sees it.
    pub fn status(&self, now: Now, peers: &[PeerView]) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(name, g)| {
                let mut states = BTreeMap::new();
                states.insert(self.cfg.local.clone(), g.local);
                for p in peers {
                    if let Some(ga) = p.advert.groups.iter().find(|ga| &ga.name == name) {
                        states.insert(p.name.clone(), ga.local);
                    }
                }
                let running = states
                    .values()
                    .filter(|s| **s == LocalGroupState::Running)
                    .count();
                let summary = if running > 1 {
                    GroupSummary::Split
                } else if running == 1 {
                    GroupSummary::Running
                } else if states.values().any(|s| *s == LocalGroupState::Starting) {
                    GroupSummary::Starting
                } else if states.values().any(|s| *s == LocalGroupState::Stopping) {
                    GroupSummary::Stopping
                } else if states.values().any(|s| *s == LocalGroupState::Failed)
                    || g.failed_reported
                {
                    GroupSummary::Failed
                } else {
                    GroupSummary::Stopped
                };
                GroupStatus {
                    name: name.clone(),
                    owner: g
                        .register
                        .as_ref()
                        .map(|r| r.owner.clone())
                        .filter(|o| !o.is_empty()),
                    epoch: g.register.as_ref().map_or(0, |r| r.epoch),
                    maintenance: g.maintenance,
                    local_state: g.local,
                    blocked: is_blocked(g, now.mono_ms),
                    recent_failures: g.failures.len(),
                    states,
                    summary,
                }
            })
            .collect()
    }
}

fn is_blocked(g: &GroupState, now_ms: u64) -> bool {
    g.blocked_until.is_some_and(|u| now_ms < u)
}

fn prune_failures(g: &mut GroupState, now_ms: u64, window_ms: u64) {
    while g
        .failures
        .front()
        .is_some_and(|&t| now_ms.saturating_sub(t) >= window_ms)
    {
        g.failures.pop_front();
    }
}

fn emit(kind: EventKind, fields: Fields) -> Action {
    Action::Emit { kind, fields }
}

impl MoveReason {
    /// The snake_case name.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

fn timeline_fields(t: &Timeline) -> Fields {
    let mut f = fields([
        ("group", t.group.clone()),
        ("reason", t.reason.name()),
        ("from_node", t.from_node.clone().unwrap_or_default()),
        ("to_node", t.to_node.clone()),
        ("detected_ms", t.detected_ms.to_string()),
        ("decided_ms", t.decided_ms.to_string()),
    ]);
    if let Some(c) = t.completed_ms {
        f.insert(
            "duration_ms".into(),
            c.saturating_sub(t.detected_ms).to_string(),
        );
        f.insert("outcome".into(), t.outcome.clone());
    }
    f
}

#[cfg(test)]
mod tests;
