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
//!
//! [`Placement`] keeps what the whole node shares (configuration, standby register,
//! lost peers) apart from each group's state. A group is re-evaluated by
//! `GroupState::evaluate` in named steps (follow the register, lift an expired block,
//! resolve a split brain, report a group nobody can run, then take over, start, hand off
//! or leave it to its owner), each a method that reads the node through a `ClusterView`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::cluster::packet::{
    Assignment, GroupAdvert, LocalGroupState, NodeAdvert, StandbySetting,
};
use crate::config::{Config, Switchback};
use crate::event::{fields, EventKind, Fields, MoveKind, MoveReason, Timeline, TimelineStep};

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
    /// Nodes allowed to run it, most preferred first; empty = all, by node priority.
    pub allowed: Vec<String>,
    /// Shares no node with another exclusive group (N+1: one standby takes one failed
    /// server's group at a time).
    pub exclusive: bool,
    pub switchback: Switchback,
    pub max_restarts: u32,
    pub window_ms: u64,
    /// The group holds floating IPs that can be probed before a takeover.
    pub has_vip: bool,
    /// Quorum mode, a lost lease: hold the group fast-stopped (floating IPs dropped,
    /// mirror I/O suspended, processes frozen) and resume it if the lease comes back
    /// at the same epoch, instead of stopping it. True when the group has mirrors and
    /// every one of them has `on_no_quorum = "suspend"`.
    pub hold_on_lease_loss: bool,
}

/// A group's restart policy: `max_restarts` local restarts within `window_ms` before
/// the node gives the group up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub group: String,
    pub max_restarts: u32,
    pub window_ms: u64,
}

impl RestartPolicy {
    /// Each group's policy in `cfg`.
    pub fn all(cfg: &Config) -> Vec<RestartPolicy> {
        cfg.groups
            .iter()
            .map(|g| RestartPolicy {
                group: g.name.clone(),
                max_restarts: g.max_restarts,
                window_ms: g.restart_window.as_millis() as u64,
            })
            .collect()
    }
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
                    exclusive: g.exclusive,
                    switchback: g.switchback,
                    max_restarts: g.max_restarts,
                    window_ms: g.restart_window.as_millis() as u64,
                    has_vip: g
                        .resources
                        .iter()
                        .any(|r| matches!(r.kind, crate::config::ResourceKind::Ip { .. })),
                    hold_on_lease_loss: holds_on_lease_loss(cfg, g),
                })
                .collect(),
            startup_grace_ms: (hb.dead_time + hb.interval * 2).as_millis() as u64,
            probe_before_takeover: cfg.cluster.probe_vip_before_takeover,
            probe_retry_ms: 2000,
            probe_fresh_ms: cfg.cluster.vip_probe_timeout.as_millis() as u64 + 100,
        }
    }

    /// A node's priority (1 is the most preferred); unknown nodes come last.
    fn priority(&self, node: &str) -> u32 {
        self.nodes
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| *p)
            .unwrap_or(u32::MAX)
    }

    /// How much `policy`'s group prefers `node`, lower first: its place in the group's
    /// `nodes` list when it has one (N+1: each group its own order), else the node's
    /// priority. Unknown nodes come last.
    fn rank(&self, policy: &GroupPolicy, node: &str) -> u32 {
        if policy.allowed.is_empty() {
            return self.priority(node);
        }
        policy
            .allowed
            .iter()
            .position(|n| n == node)
            .map_or(u32::MAX, |i| i as u32)
    }

    /// Is `node` one of the configured nodes?
    fn has_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|(n, _)| n == node)
    }
}

/// Whether `group` has mirrors and all of them suspend I/O on a lost lease.
fn holds_on_lease_loss(cfg: &Config, group: &crate::config::GroupConfig) -> bool {
    let mut modes = group.resources.iter().filter_map(|r| match &r.kind {
        crate::config::ResourceKind::Mirror { mirror } => Some(
            cfg.mirrors
                .iter()
                .find(|m| &m.name == mirror)
                .map(|m| m.on_no_quorum),
        ),
        _ => None,
    });
    let mut any = false;
    let all = modes.all(|m| {
        any = true;
        m == Some(crate::config::OnNoQuorum::Suspend)
    });
    any && all
}

/// A live peer as seen by membership: its newest advert.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub name: String,
    pub advert: NodeAdvert,
}

impl PeerView {
    /// The peer's advert of one group.
    pub fn group(&self, name: &str) -> Option<&GroupAdvert> {
        self.advert.groups.iter().find(|ga| ga.name == name)
    }
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
    /// A step of a [`StopMode::LeaseLost`] stop's fast part failed: the resource may
    /// still serve. The node core stops petting the watchdog (the clean stop goes on).
    FastStopFailed {
        group: String,
        step: FastStopStep,
        resource: String,
        reason: String,
    },
    /// The fast part of a lost lease's stop ([`Action::FastStopGroup`] or a
    /// [`StopMode::LeaseLost`] stop) is over: with `ok`, nothing of the group is
    /// reachable here any more (each failed step was reported apart).
    FastStopped { group: String, ok: bool },
    /// The executor resumed a group held after a lost lease ([`Action::ResumeGroup`]).
    Resumed {
        group: String,
        ok: bool,
        error: Option<String>,
    },
}

/// The fast part of a [`StopMode::LeaseLost`] stop, in order, before the clean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FastStopStep {
    /// Drop a floating IP.
    FloatingIp,
    /// Suspend a mirror's I/O or fail it (`on_no_quorum`).
    Mirror,
    /// Freeze a `process` resource's cgroup.
    Freeze,
}

impl FastStopStep {
    /// Every step, in the order they run.
    pub const ALL: [FastStopStep; 3] = [
        FastStopStep::FloatingIp,
        FastStopStep::Mirror,
        FastStopStep::Freeze,
    ];

    /// The snake_case name (events, timelines).
    pub fn name(self) -> &'static str {
        match self {
            FastStopStep::FloatingIp => "floating_ip",
            FastStopStep::Mirror => "mirror",
            FastStopStep::Freeze => "freeze",
        }
    }
}

/// How a group is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Every resource in reverse dependency order (the service first, its floating IP
    /// and volume last).
    TopDown,
    /// The owner lease is running out: first the fast stop ([`FastStopStep`]): what
    /// lets the outside world reach this node's copy of the group (its floating IPs,
    /// then its mirrors' I/O, suspended or failed), then its processes frozen; then
    /// the clean stop: mirrors demoted, the rest in reverse dependency order. A slow
    /// service stop must not keep the address or the volume past the lease.
    LeaseLost,
    /// A held group ([`Action::FastStopGroup`] done) is stopped: only the clean part
    /// of [`StopMode::LeaseLost`], in its order (its held writes fail as the mirrors
    /// are demoted).
    AfterHold,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    ProbeVip {
        group: String,
    },
    /// Start the group here, as owner under the register's `epoch` (the mirrors it
    /// holds are promoted under it).
    StartGroup {
        group: String,
        epoch: u64,
    },
    StopGroup {
        group: String,
        mode: StopMode,
    },
    /// Only the fast part of a lost lease's stop: the group is held, to be resumed
    /// ([`Action::ResumeGroup`]) or stopped ([`StopMode::LeaseLost`]) later.
    FastStopGroup {
        group: String,
    },
    /// Undo the fast stop of a held group: its lease is back at `epoch`.
    ResumeGroup {
        group: String,
        epoch: u64,
    },
    RestartResource {
        group: String,
        resource: String,
    },
    Emit {
        kind: EventKind,
        fields: Fields,
    },
    RecordTimeline(Timeline),
    /// Quorum mode: ask the replicated log to record `owner` at `epoch` for `group`
    /// (or the group's maintenance flag). Nothing changes here until it commits.
    Propose(Proposal),
}

/// A change of a group's register that, with a quorum, only the log can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    Own {
        group: String,
        owner: String,
        epoch: u64,
        handoff: bool,
    },
    Maintenance {
        group: String,
        on: bool,
    },
    /// A node's standby flag.
    Standby {
        node: String,
        on: bool,
    },
}

/// What the quorum allows, when the cluster runs with one (three or more voters). The
/// node core computes it from the committed log and the leases before each
/// evaluation; without a quorum there is none and the two-node rules apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumGate {
    /// The committed owner of each group.
    pub registers: BTreeMap<String, Assignment>,
    /// Groups in maintenance, by the log.
    pub maintenance: BTreeSet<String>,
    /// Nodes in standby, by the log (the heartbeat's standby register plays no part
    /// in quorum mode).
    pub standby: BTreeSet<String>,
    /// Groups whose owner a majority of the voters has not heard from for the dead
    /// time (or that never had one and every node was seen): a takeover may be
    /// proposed.
    pub may_take_over: BTreeSet<String>,
    /// Groups the log gives this node that it may run now: the previous owner's lease
    /// is over and this node's own lease holds.
    pub may_run: BTreeSet<String>,
    /// This node knows a leader and hears a majority of the voters: the log can take
    /// an administrator's decision now.
    pub quorate: bool,
    /// Groups on which this node holds an owner lease beyond the stop margin (of the
    /// current epoch, or of one the log has just moved on from): a stop may take the
    /// clean top-down order; without one it drops what clients reach first.
    pub leased: BTreeSet<String>,
    /// Per group with mirrors: the nodes whose copies hold every write the group's
    /// last primary acknowledged (it, and the nodes that copy all its mirrors from it
    /// synchronously and are not outdated). An automatic move goes only to them: an
    /// async copy may lack acknowledged writes, so the group rather stays down.
    pub complete_copies: BTreeMap<String, BTreeSet<String>>,
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
    #[error("blocks and failure counts are kept by each node: ask node `{0}` itself (its socket, or --api)")]
    NotLocal(String),
    #[error("group `{group}` already runs on `{node}`")]
    AlreadyThere { group: String, node: String },
    #[error("group `{0}` is in maintenance")]
    InMaintenance(String),
    #[error("no other node can take group `{0}`")]
    NoTarget(String),
    #[error("this node has no quorum (it cannot reach a majority of the voters), so it cannot change group `{0}` now")]
    NoQuorum(String),
    #[error("this node has no quorum (it cannot reach a majority of the voters), so it cannot change node `{0}` now")]
    NoQuorumForNode(String),
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
    /// Why no live node can run the group, once reported (until one can).
    unplaceable: Option<String>,
    /// Why this node last blocked the group or left it failed (shown while it is).
    problem: Option<String>,
    split_reported: bool,
    suspected_reported: bool,
    /// Held after a lost lease at this epoch (fast-stopped, `local` is Stopping):
    /// resumed if the lease comes back at it, stopped otherwise.
    held: Option<Held>,
}

/// Where a held group's fast stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastStopState {
    InFlight,
    /// Every step succeeded: nothing of the group is reachable here.
    Done,
    /// A step failed (reported apart); the group must be stopped.
    Failed,
}

/// A group this node holds fast-stopped after losing its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    epoch: u64,
    since_mono_ms: u64,
    fast_stop: FastStopState,
    /// A resume is in flight.
    resuming: bool,
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

/// What `tandem group clear` reset on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cleared {
    /// Failures that were counted in the restart window.
    failures: usize,
    /// The node was blocked from running the group.
    was_blocked: bool,
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
    /// Why this node blocked the group or left it failed, or why no node can run it,
    /// while it is so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
///
/// Split the raft-rs way (its `Raft` keeps the `ProgressTracker` apart from `RaftCore`):
/// the node-wide part ([`PlacementConfig`], `NodeState`) is read through a
/// `ClusterView` while one group's `GroupState` changes, so each per-group step takes
/// the state it changes and the facts it reads as arguments.
pub struct Placement {
    cfg: PlacementConfig,
    node: NodeState,
    groups: BTreeMap<String, Group>,
    /// Quorum mode: what the log and the leases allow (see [`QuorumGate`]).
    gate: Option<QuorumGate>,
}

/// This node's own settings and what it remembers of lost peers: read by every group,
/// changed only between group evaluations.
#[derive(Debug, Default)]
struct NodeState {
    started_mono_ms: Option<u64>,
    /// Two-node mode's replicated standby register: node -> (standby, epoch). Highest
    /// epoch wins, so `tandem node standby NODE` works from any node. Unused in quorum
    /// mode, where standby is a committed decision ([`QuorumGate::standby`]).
    standby: BTreeMap<String, (bool, u64)>,
    /// This daemon is shutting down: like standby, but not replicated, so the node
    /// comes back online when it restarts.
    leaving: bool,
    /// Quorum mode: the configured watchdog cannot back a lease now (why): like
    /// leaving, this node runs nothing, and what runs here stops as if its lease
    /// were lost.
    unprotected: Option<String>,
    /// Wall times when each peer was declared dead and when it was last heard (for
    /// timelines).
    lost_at: BTreeMap<String, (u64, u64)>,
}

impl NodeState {
    /// Is `node` in standby: by the log in quorum mode (`gate`), else by the merged
    /// heartbeat register?
    fn is_standby(&self, gate: Option<&QuorumGate>, node: &str) -> bool {
        match gate {
            Some(gate) => gate.standby.contains(node),
            None => self.standby.get(node).is_some_and(|(s, _)| *s),
        }
    }
}

/// One group: its policy (copied from the configuration) and its state on this node.
struct Group {
    policy: GroupPolicy,
    state: GroupState,
}

/// What a group's decisions read besides the group itself, at one instant: the
/// configuration, this node's state and the live peers.
struct ClusterView<'a> {
    now: Now,
    cfg: &'a PlacementConfig,
    node: &'a NodeState,
    peers: &'a [PeerView],
    gate: Option<&'a QuorumGate>,
    /// Where the exclusive groups are: node -> (how, group).
    exclusive: BTreeMap<String, Vec<(Presence, String)>>,
}

/// Why the log keeps `group` off every live node (`live`), if it does: this node has no
/// quorum (the log cannot move the group), no live node holds a complete copy of its
/// mirrors (an async copy may lack acknowledged writes), or both.
fn gate_reason<'a>(
    gate: &QuorumGate,
    group: &str,
    mut live: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let mut why = Vec::new();
    if !gate.quorate {
        why.push("this node has no quorum: the log cannot move the group".to_string());
    }
    if let Some(complete) = gate
        .complete_copies
        .get(group)
        .filter(|c| !live.any(|n| c.contains(n)))
    {
        let holders: Vec<&str> = complete.iter().map(String::as_str).collect();
        why.push(format!(
            "no live node holds a complete copy of the group's mirrors (only {}; an async \
             copy may lack acknowledged writes)",
            holders.join(", ")
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// How firmly an exclusive group holds a node; the firmer keeps the node (ties go to
/// the group whose name sorts first), so every node reads one answer from one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Presence {
    /// Starting, running or stopping there.
    Active,
    /// The register names the node, nothing runs yet.
    Registered,
    /// Neither.
    Absent,
}

/// Where each exclusive group is: active on this node (its local state) or a live peer
/// (its advert), and registered on its register's owner.
fn exclusive_presence(
    cfg: &PlacementConfig,
    groups: &BTreeMap<String, Group>,
    peers: &[PeerView],
) -> BTreeMap<String, Vec<(Presence, String)>> {
    let mut at: BTreeMap<String, Vec<(Presence, String)>> = BTreeMap::new();
    let active = |s: LocalGroupState| {
        matches!(
            s,
            LocalGroupState::Starting | LocalGroupState::Running | LocalGroupState::Stopping
        )
    };
    for (name, g) in groups.iter().filter(|(_, g)| g.policy.exclusive) {
        if active(g.state.local) {
            at.entry(cfg.local.clone())
                .or_default()
                .push((Presence::Active, name.clone()));
        }
        if let Some(r) = &g.state.register {
            at.entry(r.owner.clone())
                .or_default()
                .push((Presence::Registered, name.clone()));
        }
        // This node is taking it (a claim waiting for its probe or its start).
        if g.state.claim.is_some() {
            at.entry(cfg.local.clone())
                .or_default()
                .push((Presence::Registered, name.clone()));
        }
        for p in peers {
            if p.group(name).is_some_and(|ga| active(ga.local)) {
                at.entry(p.name.clone())
                    .or_default()
                    .push((Presence::Active, name.clone()));
            }
        }
    }
    at
}

impl ClusterView<'_> {
    /// The local node's name.
    fn local(&self) -> &str {
        &self.cfg.local
    }

    /// A live peer by name.
    fn peer(&self, name: &str) -> Option<&PeerView> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Every live node: this one first, then the peers.
    fn nodes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.local()).chain(self.peers.iter().map(|p| p.name.as_str()))
    }

    /// Is `node` in standby (by the log in quorum mode)?
    fn is_standby(&self, node: &str) -> bool {
        self.node.is_standby(self.gate, node)
    }

    /// The other exclusive group that holds `node` more firmly than `group` does.
    fn exclusive_holder(&self, group: &str, node: &str) -> Option<&str> {
        let there = self.exclusive.get(node)?;
        let mine = there
            .iter()
            .filter(|(_, g)| g == group)
            .map(|(p, _)| *p)
            .min()
            .unwrap_or(Presence::Absent);
        there
            .iter()
            .find(|(p, g)| g != group && (*p, g.as_str()) < (mine, group))
            .map(|(_, g)| g.as_str())
    }

    /// Peers must have had a chance to be heard before this node claims anything.
    fn in_grace(&self) -> bool {
        self.node
            .started_mono_ms
            .is_some_and(|s| self.now.mono_ms < s + self.cfg.startup_grace_ms)
    }
}

impl Placement {
    pub fn new(cfg: PlacementConfig) -> Placement {
        let groups = cfg
            .groups
            .iter()
            .map(|policy| {
                let group = Group {
                    policy: policy.clone(),
                    state: GroupState::new(),
                };
                (policy.name.clone(), group)
            })
            .collect();
        Placement {
            cfg,
            node: NodeState::default(),
            groups,
            gate: None,
        }
    }

    /// Quorum mode: what the log and the leases allow now (set before each input).
    pub fn set_gate(&mut self, gate: Option<QuorumGate>) {
        self.gate = gate;
    }

    /// A reloaded restart policy: the group's failures count against it from now on.
    pub fn set_restart_policy(&mut self, p: &RestartPolicy) {
        if let Some(g) = self.groups.get_mut(&p.group) {
            g.policy.max_restarts = p.max_restarts;
            g.policy.window_ms = p.window_ms;
        }
    }

    /// The configured watchdog is unavailable (`Some(why)`) or back (`None`).
    pub fn set_unprotected(&mut self, why: Option<String>) {
        self.node.unprotected = why;
    }

    /// The group's register as this node holds it.
    pub fn register(&self, group: &str) -> Option<&Assignment> {
        self.groups.get(group)?.state.register.as_ref()
    }

    /// The local node's name.
    pub fn local(&self) -> &str {
        &self.cfg.local
    }

    /// The view the groups decide against.
    fn view<'a>(&'a self, now: Now, peers: &'a [PeerView]) -> ClusterView<'a> {
        ClusterView {
            now,
            cfg: &self.cfg,
            node: &self.node,
            peers,
            gate: self.gate.as_ref(),
            exclusive: exclusive_presence(&self.cfg, &self.groups, peers),
        }
    }

    /// The view and the groups, borrowed apart so that a group can change while the
    /// view is read.
    fn split<'a>(
        &'a mut self,
        now: Now,
        peers: &'a [PeerView],
    ) -> (ClusterView<'a>, &'a mut BTreeMap<String, Group>) {
        let view = ClusterView {
            now,
            cfg: &self.cfg,
            node: &self.node,
            peers,
            gate: self.gate.as_ref(),
            exclusive: exclusive_presence(&self.cfg, &self.groups, peers),
        };
        (view, &mut self.groups)
    }

    /// Each group's state on this node.
    pub fn local_states(&self) -> impl Iterator<Item = (&str, LocalGroupState)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.as_str(), g.state.local))
    }

    /// What this node advertises in its heartbeats.
    pub fn advert(&self, now: Now) -> NodeAdvert {
        NodeAdvert {
            priority: self.cfg.priority(&self.cfg.local),
            standby: self.standby() || self.node.leaving || self.node.unprotected.is_some(),
            standby_register: self
                .node
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
                .map(|(name, Group { state: g, .. })| GroupAdvert {
                    name: name.clone(),
                    local: g.local,
                    blocked: g.is_blocked(now.mono_ms),
                    maintenance: g.maintenance,
                    assignment: g.register.clone(),
                })
                .collect(),
            mirrors: Vec::new(),
            lags: Vec::new(),
        }
    }

    /// Is this node in standby?
    pub fn standby(&self) -> bool {
        self.is_standby(&self.cfg.local)
    }

    /// Is `node` in standby: by the committed log in quorum mode, else by the merged
    /// heartbeat register?
    pub fn is_standby(&self, node: &str) -> bool {
        self.node.is_standby(self.gate.as_ref(), node)
    }

    /// Two-node mode: merges the peers' standby registers into ours (highest epoch
    /// wins; on a tie, standby wins, the safe side). Reports our own node changing
    /// state. In quorum mode the log decides, and the node core reports each commit.
    fn merge_standby(&mut self, peers: &[PeerView], out: &mut Vec<Action>) {
        if self.gate.is_some() {
            return;
        }
        let was = self.standby();
        for p in peers {
            for s in &p.advert.standby_register {
                if !self.cfg.has_node(&s.node) {
                    continue;
                }
                let ours = self.node.standby.get(&s.node).copied();
                if ours.is_none_or(|(st, ep)| (s.epoch, s.standby) > (ep, st)) {
                    self.node
                        .standby
                        .insert(s.node.clone(), (s.standby, s.epoch));
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
        if self.node.started_mono_ms.is_none() {
            self.node.started_mono_ms = Some(now.mono_ms);
        }
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::NodeDown { peer, silent_ms } => {
                let last_heard = now.wall_ms.saturating_sub(silent_ms);
                self.node.lost_at.insert(peer, (now.wall_ms, last_heard));
            }
            Input::PeerSilent { peer } => self.pre_probe(now, &peer, peers, &mut out),
            group_input => self.on_group_input(now, group_input, peers, &mut out),
        }
        self.evaluate(now, peers, &mut out);
        out
    }

    /// Hands a result from the executor (or a probe) to its group's state.
    fn on_group_input(
        &mut self,
        now: Now,
        input: Input,
        peers: &[PeerView],
        out: &mut Vec<Action>,
    ) {
        let (view, groups) = self.split(now, peers);
        let group = match &input {
            Input::Started { group, .. }
            | Input::Stopped { group, .. }
            | Input::CheckFailed { group, .. }
            | Input::Restarted { group, .. }
            | Input::Unrecoverable { group, .. }
            | Input::VipProbe { group, .. }
            | Input::FastStopFailed { group, .. }
            | Input::FastStopped { group, .. }
            | Input::Resumed { group, .. } => groups.get_mut(group),
            Input::Tick | Input::NodeDown { .. } | Input::PeerSilent { .. } => None,
        };
        let Some(Group { policy, state: g }) = group else {
            return;
        };
        match input {
            Input::Started {
                ok,
                error,
                cleanup_ok,
                steps,
                first_check_wall_ms,
                ..
            } => {
                let report = StartReport {
                    ok,
                    error,
                    cleanup_ok,
                    steps,
                    first_check_wall_ms,
                };
                g.on_started(policy, &view, report, out);
            }
            Input::Stopped {
                ok, error, steps, ..
            } => g.on_stopped(policy, &view, ok, error, steps, out),
            Input::CheckFailed {
                resource, reason, ..
            } => g.on_check_failed(policy, &view, &resource, &reason, out),
            Input::Restarted {
                resource,
                ok,
                error,
                ..
            } => g.on_restarted(policy, &view, &resource, ok, error, out),
            Input::Unrecoverable {
                resource, reason, ..
            } => g.give_up_locally(policy, &view, &resource, &reason, out),
            Input::VipProbe { in_use, .. } => g.on_vip_probe(policy, &view, in_use, out),
            Input::FastStopFailed {
                step,
                resource,
                reason,
                ..
            } => out.push(Action::Emit {
                kind: EventKind::FastStopFailed,
                fields: fields([
                    ("group", policy.name.clone()),
                    ("step", step.name().to_string()),
                    ("resource", resource),
                    ("reason", reason),
                ]),
            }),
            Input::FastStopped { ok, .. } => {
                if let Some(h) = g.held.as_mut() {
                    h.fast_stop = if ok {
                        FastStopState::Done
                    } else {
                        FastStopState::Failed
                    };
                }
            }
            Input::Resumed { ok, error, .. } => g.on_resumed(policy, &view, ok, error, out),
            Input::Tick | Input::NodeDown { .. } | Input::PeerSilent { .. } => {}
        }
    }

    /// Re-evaluates every group.
    fn evaluate(&mut self, now: Now, peers: &[PeerView], out: &mut Vec<Action>) {
        self.merge_standby(peers, out);
        let (mut view, groups) = self.split(now, peers);
        let names: Vec<String> = groups.keys().cloned().collect();
        for name in names {
            let Some(Group { policy, state }) = groups.get_mut(&name) else {
                continue;
            };
            state.evaluate(policy, &view, out);
            // The next group sees where this one went in this same evaluation: two
            // exclusive groups never pick one node at the same moment.
            if policy.exclusive {
                view.exclusive = exclusive_presence(view.cfg, groups, peers);
            }
        }
    }

    /// A live peer is almost dead: probe the floating IPs of the groups it owns that
    /// this node would take, ahead of the takeover.
    fn pre_probe(&mut self, now: Now, peer: &str, peers: &[PeerView], out: &mut Vec<Action>) {
        if !self.cfg.probe_before_takeover {
            return;
        }
        // The cluster as it will be once the peer is declared dead.
        let without: Vec<PeerView> = peers.iter().filter(|p| p.name != peer).cloned().collect();
        let (view, groups) = self.split(now, &without);
        for Group { policy, state } in groups.values_mut() {
            state.pre_probe(policy, &view, peer, out);
        }
    }

    /// Who should own the group, given the merged register and the live nodes.
    pub fn desired_owner(&self, now: Now, group: &str, peers: &[PeerView]) -> Option<String> {
        let Group { policy, state } = self.groups.get(group)?;
        state.desired_owner(policy, &self.view(now, peers))
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
        let (view, groups) = self.split(now, peers);
        let Group { policy, state: g } = groups
            .get_mut(group)
            .ok_or_else(|| PlacementError::UnknownGroup(group.into()))?;
        let target = g.switchover_target(policy, &view, target)?;
        let owner = g.owner().map(str::to_string);
        let mut proposals = Vec::new();
        g.write_register(policy, &view, &target, &mut proposals);
        if target == view.local() {
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
        out.extend(proposals);
        self.evaluate(now, peers, &mut out);
        Ok((target, out))
    }

    /// Puts a node in standby (its groups move away, no new ones arrive) or back online.
    /// Works from any node: the setting travels in the replicated standby register
    /// (two-node mode), or is proposed to the log (quorum mode; refused without a
    /// quorum), where nothing changes until it commits.
    pub fn set_standby(
        &mut self,
        now: Now,
        node: &str,
        on: bool,
        peers: &[PeerView],
    ) -> Result<Vec<Action>, PlacementError> {
        if !self.cfg.has_node(node) {
            return Err(PlacementError::UnknownNode(node.into()));
        }
        let mut out = Vec::new();
        if let Some(gate) = &self.gate {
            if !gate.quorate {
                return Err(PlacementError::NoQuorumForNode(node.into()));
            }
            if gate.standby.contains(node) != on {
                out.push(Action::Propose(Proposal::Standby {
                    node: node.to_string(),
                    on,
                }));
            }
            self.evaluate(now, peers, &mut out);
            return Ok(out);
        }
        if self.is_standby(node) != on {
            let epoch = self.node.standby.get(node).map_or(0, |(_, e)| *e) + 1;
            self.node.standby.insert(node.to_string(), (on, epoch));
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
        self.node.leaving = true;
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
        let g = &mut self
            .groups
            .get_mut(group)
            .ok_or_else(|| PlacementError::UnknownGroup(group.into()))?
            .state;
        let mut out = Vec::new();
        if let Some(gate) = &self.gate {
            if !gate.quorate {
                return Err(PlacementError::NoQuorum(group.into()));
            }
            if g.maintenance != on {
                out.push(Action::Propose(Proposal::Maintenance {
                    group: group.to_string(),
                    on,
                }));
            }
            self.evaluate(now, peers, &mut out);
            return Ok(out);
        }
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

    /// `tandem group clear`: forgets this node's failures of the group within the
    /// restart window and lifts its block, so the node may run the group again at once
    /// (the `pcs resource cleanup` of Pacemaker). Blocks and failure counts are this
    /// node's own (advertised, never replicated, in either ownership mode), so `node`
    /// must name this node or be None. Emits `group_cleared` with what was reset.
    pub fn clear(
        &mut self,
        now: Now,
        group: &str,
        node: Option<&str>,
        peers: &[PeerView],
    ) -> Result<Vec<Action>, PlacementError> {
        if let Some(n) = node.filter(|n| *n != self.cfg.local) {
            return Err(if self.cfg.has_node(n) {
                PlacementError::NotLocal(n.into())
            } else {
                PlacementError::UnknownNode(n.into())
            });
        }
        let g = &mut self
            .groups
            .get_mut(group)
            .ok_or_else(|| PlacementError::UnknownGroup(group.into()))?
            .state;
        let cleared = g.clear(now.mono_ms);
        let mut out = vec![emit(
            EventKind::GroupCleared,
            fields([
                ("group", group.to_string()),
                ("node", self.cfg.local.clone()),
                ("failures", cleared.failures.to_string()),
                ("was_blocked", cleared.was_blocked.to_string()),
            ]),
        )];
        self.evaluate(now, peers, &mut out);
        Ok(out)
    }

    /// Is the group in maintenance (monitoring suspended)?
    pub fn in_maintenance(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.state.maintenance)
    }

    /// The status of every group as this node sees it.
    pub fn status(&self, now: Now, peers: &[PeerView]) -> Vec<GroupStatus> {
        let view = self.view(now, peers);
        self.groups
            .values()
            .map(|Group { policy, state }| state.status(policy, &view))
            .collect()
    }
}

/// What the group is and what this node knows about it: the read-only questions.
impl GroupState {
    fn new() -> GroupState {
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
            unplaceable: None,
            problem: None,
            split_reported: false,
            suspected_reported: false,
            held: None,
        }
    }

    /// The owner in the register.
    fn owner(&self) -> Option<&str> {
        self.register.as_ref().map(|r| r.owner.as_str())
    }

    /// This node exhausted its restarts for the group and may not run it yet.
    fn is_blocked(&self, now_ms: u64) -> bool {
        self.blocked_until.is_some_and(|u| now_ms < u)
    }

    /// The group's state on `node` (this node or a live peer).
    fn state_on(
        &self,
        node: &str,
        policy: &GroupPolicy,
        view: &ClusterView,
    ) -> Option<LocalGroupState> {
        if node == view.local() {
            return Some(self.local);
        }
        view.peer(node)?.group(&policy.name).map(|ga| ga.local)
    }

    /// Whether `node` (this node or a live peer) may run the group now.
    fn eligible(&self, node: &str, policy: &GroupPolicy, view: &ClusterView) -> bool {
        self.eligible_alone(node, policy, view)
            && !(policy.exclusive && view.exclusive_holder(&policy.name, node).is_some())
    }

    /// Whether `node` may run the group, other exclusive groups aside.
    fn eligible_alone(&self, node: &str, policy: &GroupPolicy, view: &ClusterView) -> bool {
        if !policy.allowed.is_empty() && !policy.allowed.iter().any(|n| n == node) {
            return false;
        }
        if node == view.local() {
            return !view.is_standby(node)
                && !view.node.leaving
                && view.node.unprotected.is_none()
                && !self.is_blocked(view.now.mono_ms)
                && self.local != LocalGroupState::Failed;
        }
        view.peer(node).is_some_and(|p| {
            !p.advert.standby
                && !view.is_standby(node)
                && p.group(&policy.name)
                    .is_none_or(|ga| !ga.blocked && ga.local != LocalGroupState::Failed)
        })
    }

    /// The most preferred eligible live node for the group, other than `except`; with
    /// a quorum, only one whose copies are complete ([`QuorumGate::complete_copies`]).
    fn best_eligible(
        &self,
        policy: &GroupPolicy,
        view: &ClusterView,
        except: Option<&str>,
    ) -> Option<String> {
        let complete = view.gate.and_then(|g| g.complete_copies.get(&policy.name));
        view.nodes()
            .filter(|n| Some(*n) != except)
            .filter(|n| complete.is_none_or(|c| c.contains(*n)))
            .filter(|n| self.eligible(n, policy, view))
            .min_by_key(|n| (view.cfg.rank(policy, n), n.to_string()))
            .map(str::to_string)
    }

    /// Who should own the group, given the merged register and the live nodes.
    fn desired_owner(&self, policy: &GroupPolicy, view: &ClusterView) -> Option<String> {
        match self.owner() {
            Some(o) if self.eligible(o, policy, view) => {
                if policy.switchback == Switchback::Automatic {
                    if let Some(best) = self.best_eligible(policy, view, None) {
                        if view.cfg.rank(policy, &best) < view.cfg.rank(policy, o)
                            && self.state_on(o, policy, view) == Some(LocalGroupState::Running)
                        {
                            return Some(best);
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
            _ => view
                .nodes()
                .filter(|_| view.gate.is_none())
                .find(|n| {
                    self.state_on(n, policy, view) == Some(LocalGroupState::Running)
                        && self.eligible(n, policy, view)
                })
                .map(str::to_string)
                .or_else(|| self.best_eligible(policy, view, None)),
        }
    }

    /// The live nodes (this one first) that run or start the group.
    fn active_nodes(&self, policy: &GroupPolicy, view: &ClusterView) -> Vec<String> {
        view.nodes()
            .filter(|n| {
                matches!(
                    self.state_on(n, policy, view),
                    Some(LocalGroupState::Running | LocalGroupState::Starting)
                )
            })
            .map(str::to_string)
            .collect()
    }

    /// Checks an administrator's switchover and picks its target (by default the most
    /// preferred eligible node other than the current owner).
    fn switchover_target(
        &self,
        policy: &GroupPolicy,
        view: &ClusterView,
        target: Option<&str>,
    ) -> Result<String, PlacementError> {
        let group = policy.name.as_str();
        if self.maintenance {
            return Err(PlacementError::InMaintenance(group.into()));
        }
        if view.gate.as_ref().is_some_and(|g| !g.quorate) {
            return Err(PlacementError::NoQuorum(group.into()));
        }
        let owner = self.owner();
        let target = match target {
            Some(t) if !view.cfg.has_node(t) => return Err(PlacementError::UnknownNode(t.into())),
            Some(t) if t != view.local() && view.peer(t).is_none() => {
                return Err(PlacementError::NodeNotLive(t.into()))
            }
            Some(t) => t.to_string(),
            None => self
                .best_eligible(policy, view, owner)
                .ok_or_else(|| PlacementError::NoTarget(group.into()))?,
        };
        if owner == Some(target.as_str()) {
            return Err(PlacementError::AlreadyThere {
                group: group.into(),
                node: target,
            });
        }
        if !self.eligible(&target, policy, view) {
            return Err(PlacementError::NotEligible {
                node: target,
                group: group.into(),
                why: "standby, blocked after failures, failed, or not in the group's nodes".into(),
            });
        }
        // Refuse while any node is mid-transition.
        for node in view.nodes() {
            if let Some(state @ (LocalGroupState::Starting | LocalGroupState::Stopping)) =
                self.state_on(node, policy, view)
            {
                return Err(PlacementError::Busy {
                    group: group.into(),
                    node: node.to_string(),
                    state,
                });
            }
        }
        Ok(target)
    }

    /// The status of the group as this node sees it.
    fn status(&self, policy: &GroupPolicy, view: &ClusterView) -> GroupStatus {
        let mut states = BTreeMap::new();
        states.insert(view.local().to_string(), self.local);
        for p in view.peers {
            if let Some(ga) = p.group(&policy.name) {
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
            || self.unplaceable.is_some()
        {
            GroupSummary::Failed
        } else {
            GroupSummary::Stopped
        };
        GroupStatus {
            name: policy.name.clone(),
            owner: self.owner().filter(|o| !o.is_empty()).map(str::to_string),
            epoch: self.register.as_ref().map_or(0, |r| r.epoch),
            maintenance: self.maintenance,
            local_state: self.local,
            blocked: self.is_blocked(view.now.mono_ms),
            recent_failures: self.failures.len(),
            reason: if self.is_blocked(view.now.mono_ms) || self.local == LocalGroupState::Failed {
                self.problem.clone()
            } else {
                self.unplaceable.clone()
            },
            states,
            summary,
        }
    }
}

/// Re-evaluating the group, step by step.
impl GroupState {
    /// Re-evaluates the group: follow the newest register, lift an expired block, then,
    /// unless the group is in maintenance, resolve a split brain, report a group no node
    /// can run, and act on who should own it: take it over, start it, hand it off, or
    /// leave it to its owner.
    fn evaluate(&mut self, policy: &GroupPolicy, view: &ClusterView, out: &mut Vec<Action>) {
        self.follow_register(policy, view, out);
        self.lift_expired_block(view.now.mono_ms);
        if self.maintenance {
            return; // monitoring and recovery are suspended
        }
        if view.gate.is_some() && self.lease_lost(policy, view, out) {
            return;
        }
        let active = self.active_nodes(policy, view);
        if active.len() >= 2 {
            self.resolve_split_brain(policy, view, active, out);
            return;
        }
        self.split_reported = false;
        let desired = self.desired_owner(policy, view);
        self.report_unplaceable(policy, view, desired.as_deref(), active.is_empty(), out);
        let local = view.local();
        let owner = self.owner().map(str::to_string);
        if desired.as_deref() == Some(local) && owner.as_deref() != Some(local) {
            self.take_over(policy, view, owner.as_deref(), out);
        } else if owner.as_deref() == Some(local) {
            match desired {
                Some(d) if d == local => self.try_start(policy, view, out),
                Some(d) => self.hand_off(policy, view, &d, out),
                None => {}
            }
        } else {
            self.leave_to_owner(policy, owner.as_deref(), out);
        }
    }

    /// Step "follow the register": adopts the newest register heard, with its
    /// maintenance flag. When it newly names this node, somebody else assigned the
    /// group to us (an admin's switchover, or the owner handing it back by automatic
    /// switchback): note why we take it.
    fn follow_register(&mut self, policy: &GroupPolicy, view: &ClusterView, out: &mut Vec<Action>) {
        let (register, maintenance) = match view.gate {
            // With a quorum the log is the register; heartbeats only carry it.
            Some(gate) => match gate.registers.get(&policy.name) {
                Some(r) => (r.clone(), gate.maintenance.contains(&policy.name)),
                None => {
                    self.register = None;
                    return;
                }
            },
            None => match self.newest_register(policy, view) {
                Some(found) => found,
                None => return,
            },
        };
        if self.maintenance != maintenance {
            out.push(emit(
                if maintenance {
                    EventKind::GroupMaintenanceOn
                } else {
                    EventKind::GroupMaintenanceOff
                },
                fields([("group", policy.name.clone())]),
            ));
        }
        let local = view.local();
        let previous_owner = self.owner().map(str::to_string);
        let became_ours = register.owner == local && previous_owner.as_deref() != Some(local);
        self.maintenance = maintenance;
        self.register = Some(register);
        if became_ours && self.claim.is_none() {
            let from = previous_owner.filter(|o| o != local);
            let switchback = policy.switchback == Switchback::Automatic
                && from
                    .as_deref()
                    .is_some_and(|f| view.cfg.rank(policy, local) < view.cfg.rank(policy, f));
            self.claim = Some(PendingMove {
                reason: if switchback {
                    MoveReason::Switchback
                } else {
                    MoveReason::Manual
                },
                from,
                detected_wall_ms: view.now.wall_ms,
                failed_wall_ms: None,
            });
        }
    }

    /// The newest register (ours or a live peer's) and the maintenance flag that comes
    /// with it: highest epoch wins, ties go to the more preferred owner.
    fn newest_register(
        &self,
        policy: &GroupPolicy,
        view: &ClusterView,
    ) -> Option<(Assignment, bool)> {
        let mut newest = self.register.clone().map(|r| (r, self.maintenance));
        for ga in view.peers.iter().filter_map(|p| p.group(&policy.name)) {
            let Some(a) = &ga.assignment else {
                continue;
            };
            let newer = match &newest {
                None => true,
                // Equal priorities are broken by name (as `best_eligible` does): with a
                // priority-only tie-break, two registers with the same epoch and equally
                // preferred owners (written on both sides of a partition) were each kept
                // by whichever node saw it first, and the nodes never agreed on the
                // owner. (Found by tests/simulation.rs.)
                Some((b, _)) => {
                    a.epoch > b.epoch
                        || (a.epoch == b.epoch
                            && (view.cfg.rank(policy, &a.owner), a.owner.as_str())
                                < (view.cfg.rank(policy, &b.owner), b.owner.as_str()))
                }
            };
            if newer {
                newest = Some((a.clone(), ga.maintenance));
            }
        }
        newest
    }

    /// Step "lease lost" (quorum mode): this node runs the group but may not any more
    /// (its lease is running out, or the log names another owner): stop it at once,
    /// or, for a group that holds on a lost lease, fast-stop it and hold it.
    fn lease_lost(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(gate) = view.gate else {
            return false;
        };
        if let Some(held) = self.held {
            self.while_held(policy, view, gate, held, out);
            return true;
        }
        if self.local != LocalGroupState::Running || self.restarting {
            return false;
        }
        if let Some(why) = &view.node.unprotected {
            // No device to reset this node if it hangs: serving on would outlast the
            // lease unguarded, so it stops as a node that lost its lease does.
            let reason = format!("the watchdog cannot back the lease: {why}");
            self.stop_as(&policy.name, &reason, StopMode::LeaseLost, out);
            return true;
        }
        let ours = self.owner() == Some(view.local());
        if ours && gate.may_run.contains(&policy.name) {
            return false;
        }
        if ours {
            let reason = "the owner lease is running out (no majority of the voters \
                          acknowledges it)";
            if policy.hold_on_lease_loss {
                self.hold(policy, view, reason, out);
            } else {
                self.stop_as(&policy.name, reason, StopMode::LeaseLost, out);
            }
            return true;
        }
        let reason = format!(
            "the log names `{}` as the owner",
            self.owner().unwrap_or_default()
        );
        // A hand-off leaves this node its lease for the clean stop; a node that lost
        // it (cut off, or paused past it) must not keep the address while stopping.
        let mode = if gate.leased.contains(&policy.name) {
            StopMode::TopDown
        } else {
            StopMode::LeaseLost
        };
        self.stop_as(&policy.name, &reason, mode, out);
        true
    }

    /// Holds the group after a lost lease: the fast stop only (floating IPs dropped,
    /// mirror I/O suspended, processes frozen); [`Self::while_held`] decides the rest.
    fn hold(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let epoch = self.register.as_ref().map_or(0, |r| r.epoch);
        self.local = LocalGroupState::Stopping;
        self.held = Some(Held {
            epoch,
            since_mono_ms: view.now.mono_ms,
            fast_stop: FastStopState::InFlight,
            resuming: false,
        });
        out.push(emit(
            EventKind::GroupSuspended,
            fields([
                ("group", policy.name.clone()),
                ("epoch", epoch.to_string()),
                ("reason", reason.to_string()),
            ]),
        ));
        out.push(Action::FastStopGroup {
            group: policy.name.clone(),
        });
    }

    /// A held group: resumed once the lease is back at the epoch it was held at (and
    /// its fast stop went through); stopped if the log moved on or the fast stop
    /// failed; otherwise it waits (its writes suspended) for either.
    fn while_held(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        gate: &QuorumGate,
        held: Held,
        out: &mut Vec<Action>,
    ) {
        if held.resuming || held.fast_stop == FastStopState::InFlight {
            return;
        }
        let same_epoch = self
            .register
            .as_ref()
            .is_some_and(|r| r.owner == view.local() && r.epoch == held.epoch);
        let reason = if held.fast_stop == FastStopState::Failed {
            "a step of the fast stop failed".to_string()
        } else if !same_epoch {
            format!(
                "the log names `{}` as the owner",
                self.owner().unwrap_or_default()
            )
        } else if gate.may_run.contains(&policy.name) {
            if let Some(h) = self.held.as_mut() {
                h.resuming = true;
            }
            // About to serve again: backed by the watchdog like a start (found by
            // tests/quorum_sim.rs seed 194: paused mid-resume with the watchdog
            // disarmed, a node woke and served past its lease).
            self.local = LocalGroupState::Starting;
            out.push(Action::ResumeGroup {
                group: policy.name.clone(),
                epoch: held.epoch,
            });
            return;
        } else {
            return;
        };
        let mode = if held.fast_stop == FastStopState::Done {
            StopMode::AfterHold
        } else {
            StopMode::LeaseLost
        };
        self.held = None;
        self.stop_as(&policy.name, &reason, mode, out);
    }

    /// The executor resumed a held group (or failed to: then it stops, top-down, as
    /// the lease is back).
    fn on_resumed(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        ok: bool,
        error: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(held) = self.held.take() else {
            return;
        };
        if ok {
            self.local = LocalGroupState::Running;
            out.push(emit(
                EventKind::GroupResumed,
                fields([
                    ("group", policy.name.clone()),
                    ("epoch", held.epoch.to_string()),
                    (
                        "held_ms",
                        view.now
                            .mono_ms
                            .saturating_sub(held.since_mono_ms)
                            .to_string(),
                    ),
                ]),
            ));
        } else {
            let reason = format!(
                "the resume after a lost lease failed: {}",
                error.unwrap_or_default()
            );
            self.stop_as(&policy.name, &reason, StopMode::TopDown, out);
        }
    }

    /// Forgets the failures in the restart window and lifts the block, now; says what
    /// there was. A `Failed` local state (a stop that failed, so a resource may still
    /// run) is not a block and stays.
    fn clear(&mut self, now_ms: u64) -> Cleared {
        let cleared = Cleared {
            failures: self.failures.len(),
            was_blocked: self.is_blocked(now_ms),
        };
        self.failures.clear();
        self.blocked_until = None;
        cleared
    }

    /// Step "lift an expired block": the restart window is over, so the failures in it
    /// are forgotten and this node may run the group again.
    fn lift_expired_block(&mut self, now_ms: u64) {
        if self.blocked_until.is_some_and(|until| now_ms >= until) {
            self.blocked_until = None;
            self.failures.clear();
        }
    }

    /// Step "resolve a split brain": several live nodes run (or start) the group. The
    /// most preferred keeps it and adopts the register; the others stop it.
    fn resolve_split_brain(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        mut active: Vec<String>,
        out: &mut Vec<Action>,
    ) {
        active.sort_by_key(|n| (view.cfg.rank(policy, n), n.clone()));
        // With a quorum the committed owner keeps it (the others were stopped by the
        // "lease lost" step; they are only seen here while stopping).
        if view.gate.is_some() {
            if let Some(o) = self.owner().filter(|o| active.iter().any(|a| a == o)) {
                let o = o.to_string();
                active.retain(|a| *a != o);
                active.insert(0, o);
            }
        }
        let winner = active[0].clone();
        if !self.split_reported {
            self.split_reported = true;
            out.push(emit(
                EventKind::SplitBrainResolved,
                fields([
                    ("group", policy.name.clone()),
                    ("winner", winner.clone()),
                    ("losers", active[1..].join(",")),
                ]),
            ));
        }
        // Without a quorum every side writes the winner into its register, the losers
        // too: a loser whose own register still named itself (it took the group over
        // while apart, in a newer epoch) started the group again the moment it had
        // stopped, when it heard the winner before the winner heard it.
        if view.gate.is_none() && self.owner() != Some(winner.as_str()) {
            self.assign(&winner);
        }
        if winner != view.local() && self.local == LocalGroupState::Running {
            let reason = format!("split brain: `{winner}` keeps the group");
            self.stop(&policy.name, &reason, out);
        }
    }

    /// Step "report a group nobody can run": once, when no live node is eligible and
    /// none runs it (after the startup grace); reported again only after some node
    /// became eligible. The reason the status shows follows what changes meanwhile
    /// (this node losing its quorum after the group went down, say).
    fn report_unplaceable(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        desired: Option<&str>,
        nobody_active: bool,
        out: &mut Vec<Action>,
    ) {
        if desired.is_none() && nobody_active && !view.in_grace() {
            if self.unplaceable.is_none() && self.local != LocalGroupState::Stopping {
                let reason = self.unplaceable_reason(policy, view);
                self.unplaceable = Some(reason.clone());
                out.push(emit(
                    EventKind::GroupFailed,
                    fields([("group", policy.name.clone()), ("reason", reason)]),
                ));
            } else if self.unplaceable.is_some() {
                self.unplaceable = Some(self.unplaceable_reason(policy, view));
            }
        } else if desired.is_some() {
            self.unplaceable = None;
        }
    }

    /// Why no live node can run the group: each live node that could but for another
    /// exclusive group is named with that group.
    fn unplaceable_reason(&self, policy: &GroupPolicy, view: &ClusterView) -> String {
        let taken: Vec<String> = view
            .nodes()
            .filter(|n| policy.exclusive && self.eligible_alone(n, policy, view))
            .filter_map(|n| {
                let g = view.exclusive_holder(&policy.name, n)?;
                Some(format!("`{n}` runs the exclusive group `{g}`"))
            })
            .collect();
        if taken.is_empty() {
            return view
                .gate
                .and_then(|g| gate_reason(g, &policy.name, view.nodes()))
                .unwrap_or_else(|| "no live node is eligible to run the group".into());
        }
        format!(
            "no live node is free to run the group: {}",
            taken.join(", ")
        )
    }

    /// Step "take over": this node should own the group but the register names `owner`
    /// (or nobody). If the group already runs here, adopt the register; otherwise note
    /// why the group moves and start it once that is safe.
    fn take_over(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        owner: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        if view.in_grace() {
            return;
        }
        // We already run the group and should: adopt the register. Otherwise a
        // register written by a claim that failed elsewhere (e.g. the other side of
        // a partition took over, its start failed and it is blocked) stays in
        // place, and once that node is eligible again it takes the healthy group
        // from us. (Found by tests/simulation.rs.)
        if self.local == LocalGroupState::Running && view.gate.is_none() {
            self.assign(view.local());
            self.claim = None;
            return;
        }
        if self.claim.is_none() {
            self.claim = Some(self.takeover_move(policy, view, owner));
        }
        self.try_start(policy, view, out);
    }

    /// Why the group moves here from `owner`, and since when.
    fn takeover_move(
        &self,
        policy: &GroupPolicy,
        view: &ClusterView,
        owner: Option<&str>,
    ) -> PendingMove {
        let reason = match owner {
            None => MoveReason::Initial,
            Some(o) if view.peer(o).is_none() => MoveReason::NodeLost,
            Some(o) if self.eligible(o, policy, view) => MoveReason::Switchback,
            Some(o) if view.peer(o).is_some_and(|p| p.advert.standby) || view.is_standby(o) => {
                MoveReason::Manual
            }
            Some(_) => MoveReason::ResourceFailed,
        };
        let lost = match (reason, owner) {
            (MoveReason::NodeLost, Some(o)) => view.node.lost_at.get(o),
            _ => None,
        };
        let (detected_wall_ms, failed_wall_ms) = match lost {
            Some(&(detected, last_heard)) => (detected, Some(last_heard)),
            None => (view.now.wall_ms, None),
        };
        PendingMove {
            reason,
            from: owner.map(str::to_string),
            detected_wall_ms,
            failed_wall_ms,
        }
    }

    /// Step "hand off": this node owns the group but `to` should run it. If that is an
    /// automatic switchback to a more preferred node, hand the group over explicitly by
    /// writing the register (as a switchover does), so the decision cannot flip back
    /// once we have stopped. If we are no longer eligible (blocked, standby), just
    /// stop: the most preferred eligible node claims it after our stop.
    fn hand_off(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        to: &str,
        out: &mut Vec<Action>,
    ) {
        let local = view.local();
        let switchback = !view.in_grace()
            && self.eligible(local, policy, view)
            && view.cfg.rank(policy, to) < view.cfg.rank(policy, local)
            && self.local == LocalGroupState::Running;
        if switchback {
            self.write_register(policy, view, to, out);
            out.push(emit(
                EventKind::SwitchoverStarted,
                fields([
                    ("group", policy.name.clone()),
                    ("from_node", local.to_string()),
                    ("to_node", to.to_string()),
                    ("reason", MoveReason::Switchback.name()),
                ]),
            ));
        }
        self.stop_if_running(&policy.name, &format!("the group moves to `{to}`"), out);
        // With a quorum, the owner that stopped hands the group over itself: its
        // proposal lets the next owner start at once instead of waiting out the lease.
        if view.gate.is_some() && !switchback && self.local == LocalGroupState::Stopped {
            self.write_register(policy, view, to, out);
        }
    }

    /// Step "leave it to its owner": the register names another node (or nobody, and
    /// another node should run it): drop any claim of ours and stop the group here.
    /// A speculative probe result is kept: the owner may be about to be declared dead.
    fn leave_to_owner(&mut self, policy: &GroupPolicy, owner: Option<&str>, out: &mut Vec<Action>) {
        self.claim = None;
        if matches!(self.probe, ProbeState::RetryAt(_)) {
            self.probe = ProbeState::Idle;
        }
        let reason = format!("the group is assigned to `{}`", owner.unwrap_or_default());
        self.stop_if_running(&policy.name, &reason, out);
    }

    /// Step "start": we are (or should be) the owner and the group is stopped here:
    /// start it once the hand-off is clean and the floating IP is free.
    fn try_start(&mut self, policy: &GroupPolicy, view: &ClusterView, out: &mut Vec<Action>) {
        if !self.eligible(view.local(), policy, view)
            || self.local != LocalGroupState::Stopped
            || !self.handoff_is_clean(policy, view)
        {
            return;
        }
        if view.cfg.probe_before_takeover
            && view.gate.is_none()
            && policy.has_vip
            && !self.floating_ip_free(policy, view, out)
        {
            return;
        }
        self.claim_and_start(policy, view, out);
    }

    /// No live peer holds the group (starting, running, stopping or failed), and every
    /// live peer has seen the register we act on.
    fn handoff_is_clean(&self, policy: &GroupPolicy, view: &ClusterView) -> bool {
        let busy_peer = view.peers.iter().any(|p| {
            p.group(&policy.name).is_some_and(|ga| {
                matches!(
                    ga.local,
                    LocalGroupState::Starting
                        | LocalGroupState::Running
                        | LocalGroupState::Stopping
                        | LocalGroupState::Failed
                )
            })
        });
        // A peer's state is only current once it has seen the register we act on: an
        // older advert may predate its own start (e.g. a switchover to us issued here
        // while the previous target was just starting the group). Wait until every live
        // peer carries our register. (Found by tests/simulation.rs.)
        let register = self.register.as_ref();
        let stale_peer = register.is_some()
            && view.peers.iter().any(|p| {
                p.group(&policy.name)
                    .is_some_and(|ga| ga.assignment.as_ref() != register)
            });
        !busy_peer && !stale_peer
    }

    /// Whether a fresh probe found the floating IPs free. If not, asks for a probe,
    /// unless one is in flight or an address answered and it is not yet time to retry.
    fn floating_ip_free(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        out: &mut Vec<Action>,
    ) -> bool {
        let now_ms = view.now.mono_ms;
        match self.probe {
            ProbeState::InFlight { .. } => false,
            ProbeState::RetryAt(t) if now_ms < t => false,
            ProbeState::Passed(t) if now_ms.saturating_sub(t) <= view.cfg.probe_fresh_ms => true,
            _ => {
                self.probe = ProbeState::InFlight { speculative: false };
                out.push(Action::ProbeVip {
                    group: policy.name.clone(),
                });
                false
            }
        }
    }

    /// Step "claim and start": writes our claim (a new epoch) and starts the group once
    /// the live peers can have seen it.
    fn claim_and_start(&mut self, policy: &GroupPolicy, view: &ClusterView, out: &mut Vec<Action>) {
        let local = view.local();
        // Re-check: the world may have changed while the probe ran.
        if !self.eligible(local, policy, view) {
            return;
        }
        let still_ours = self.desired_owner(policy, view).as_deref() == Some(local);
        if self.local != LocalGroupState::Stopped || !still_ours {
            return;
        }
        if let Some(gate) = view.gate {
            if self.owner() != Some(local) {
                if gate.may_take_over.contains(&policy.name) {
                    self.write_register(policy, view, local, out);
                }
                return;
            }
            if !gate.may_run.contains(&policy.name) {
                return;
            }
        } else if self.owner() != Some(local) {
            self.assign(local);
            // Live peers must see the claim before we start (`try_start` waits for
            // them): one of them may be starting the group right now on an older view
            // (e.g. the owner whose block just expired), and two simultaneous starts
            // would run it twice. The pending claim and a passed probe are kept.
            // (Found by tests/simulation.rs.)
            if !view.peers.is_empty() {
                return;
            }
        }
        self.probe = ProbeState::Idle;
        let claim = self.claim.take().unwrap_or(PendingMove {
            reason: MoveReason::Initial,
            from: None,
            detected_wall_ms: view.now.wall_ms,
            failed_wall_ms: None,
        });
        self.start(policy, view, claim, out);
    }

    /// Starts the group here for `claim`, opening the timeline of the move.
    fn start(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        claim: PendingMove,
        out: &mut Vec<Action>,
    ) {
        let switchover = matches!(claim.reason, MoveReason::Manual | MoveReason::Switchback);
        let t = Timeline {
            group: policy.name.clone(),
            kind: if switchover {
                MoveKind::Switchover
            } else {
                MoveKind::Failover
            },
            reason: claim.reason,
            from_node: claim.from,
            to_node: view.local().to_string(),
            failure_ms: claim.failed_wall_ms,
            detected_ms: claim.detected_wall_ms,
            decided_ms: view.now.wall_ms,
            steps: Vec::new(),
            first_check_ms: None,
            completed_ms: None,
            outcome: "in progress".into(),
        };
        if claim.reason != MoveReason::Initial {
            let kind = if switchover {
                EventKind::SwitchoverStarted
            } else {
                EventKind::FailoverStarted
            };
            out.push(emit(kind, timeline_fields(&t)));
        }
        self.timeline = Some(t);
        self.local = LocalGroupState::Starting;
        out.push(emit(
            EventKind::GroupStarting,
            fields([
                ("group", policy.name.clone()),
                ("node", view.local().to_string()),
                ("reason", claim.reason.name()),
            ]),
        ));
        out.push(Action::StartGroup {
            group: policy.name.clone(),
            epoch: self.register.as_ref().map_or(0, |r| r.epoch),
        });
    }

    /// Stops the group here if it runs (and no resource restart is under way).
    fn stop_if_running(&mut self, name: &str, reason: &str, out: &mut Vec<Action>) {
        if self.local == LocalGroupState::Running && !self.restarting {
            self.stop(name, reason, out);
        }
    }

    /// Stops the group here.
    fn stop(&mut self, name: &str, reason: &str, out: &mut Vec<Action>) {
        self.stop_as(name, reason, StopMode::TopDown, out);
    }

    fn stop_as(&mut self, name: &str, reason: &str, mode: StopMode, out: &mut Vec<Action>) {
        self.local = LocalGroupState::Stopping;
        out.push(emit(
            EventKind::GroupStopping,
            fields([("group", name.to_string()), ("reason", reason.to_string())]),
        ));
        out.push(Action::StopGroup {
            group: name.to_string(),
            mode,
        });
    }

    /// Writes a new epoch of the register, naming `owner`.
    fn assign(&mut self, owner: &str) {
        let epoch = self.register.as_ref().map_or(0, |r| r.epoch) + 1;
        self.register = Some(Assignment {
            owner: owner.to_string(),
            epoch,
        });
    }

    /// Names `owner` in a new epoch of the register: at once without a quorum, or by
    /// proposing it to the log with one (the register changes when it commits).
    fn write_register(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        owner: &str,
        out: &mut Vec<Action>,
    ) {
        if view.gate.is_none() {
            self.assign(owner);
            return;
        }
        let current = self.register.as_ref();
        out.push(Action::Propose(Proposal::Own {
            group: policy.name.clone(),
            owner: owner.to_string(),
            epoch: current.map_or(0, |r| r.epoch) + 1,
            handoff: current.is_some_and(|r| r.owner == view.local()),
        }));
    }
}

/// Results from the executor and the probes, and the recovery ladder.
impl GroupState {
    fn on_started(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        report: StartReport,
        out: &mut Vec<Action>,
    ) {
        let group = &policy.name;
        let mut timeline = self.timeline.take();
        if let Some(t) = timeline.as_mut() {
            t.steps.extend(report.steps);
            t.first_check_ms = report.first_check_wall_ms;
        }
        let failure = if report.ok {
            self.local = LocalGroupState::Running;
            out.push(emit(
                EventKind::GroupStarted,
                fields([("group", group.clone()), ("node", view.local().to_string())]),
            ));
            None
        } else {
            let why = report.error.unwrap_or_else(|| "start failed".into());
            self.problem = Some(format!("start failed: {why}"));
            self.local = if report.cleanup_ok {
                LocalGroupState::Stopped
            } else {
                LocalGroupState::Failed
            };
            self.blocked_until = Some(view.now.mono_ms + policy.window_ms);
            out.push(emit(
                EventKind::GroupStartFailed,
                fields([
                    ("group", group.clone()),
                    ("reason", why.clone()),
                    ("cleanup_ok", report.cleanup_ok.to_string()),
                ]),
            ));
            Some(why)
        };
        if let Some(t) = timeline {
            close_timeline(t, view.now.wall_ms, failure.as_deref(), out);
        }
    }

    fn on_stopped(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        ok: bool,
        error: Option<String>,
        steps: Vec<TimelineStep>,
        out: &mut Vec<Action>,
    ) {
        let group = &policy.name;
        self.restarting = false;
        if ok {
            self.local = LocalGroupState::Stopped;
            out.push(emit(
                EventKind::GroupStopped,
                fields([("group", group.clone()), ("node", view.local().to_string())]),
            ));
        } else {
            // A resource that would not stop may still be running: nobody else may
            // start the group while we are alive and say so.
            self.local = LocalGroupState::Failed;
            self.problem = Some(format!(
                "stop failed: {}",
                error.as_deref().unwrap_or("unknown error")
            ));
            out.push(emit(
                EventKind::GroupStopFailed,
                fields([
                    ("group", group.clone()),
                    ("reason", error.unwrap_or_default()),
                ]),
            ));
        }
        // The source side of a move keeps its own timeline of the stop.
        let owner = self.owner();
        if !steps.is_empty() && owner != Some(view.local()) {
            let t = release_timeline(group, view, owner, ok, steps);
            out.push(Action::RecordTimeline(t));
        }
    }

    /// A resource failed a check: restart it, or give up once the restarts within the
    /// window are used up.
    fn on_check_failed(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        resource: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        if self.local != LocalGroupState::Running || self.maintenance || self.restarting {
            return;
        }
        out.push(emit(
            EventKind::ResourceCheckFailed,
            fields([
                ("group", policy.name.clone()),
                ("resource", resource.to_string()),
                ("reason", reason.to_string()),
            ]),
        ));
        let now_ms = view.now.mono_ms;
        self.failures.push_back(now_ms);
        while self
            .failures
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= policy.window_ms)
        {
            self.failures.pop_front();
        }
        if self.failures.len() as u32 <= policy.max_restarts {
            self.restarting = true;
            out.push(Action::RestartResource {
                group: policy.name.clone(),
                resource: resource.to_string(),
            });
        } else {
            let why = format!(
                "`{resource}` failed {} times within {} s: {reason}",
                self.failures.len(),
                policy.window_ms / 1000
            );
            self.give_up_locally(policy, view, resource, &why, out);
        }
    }

    fn on_restarted(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        resource: &str,
        ok: bool,
        error: Option<String>,
        out: &mut Vec<Action>,
    ) {
        self.restarting = false;
        if ok {
            out.push(emit(
                EventKind::ResourceRestarted,
                fields([
                    ("group", policy.name.clone()),
                    ("resource", resource.to_string()),
                ]),
            ));
        } else {
            let reason = format!(
                "restart of `{resource}` failed: {}",
                error.unwrap_or_default()
            );
            self.give_up_locally(policy, view, resource, &reason, out);
        }
    }

    /// The ladder is exhausted on this node: block it for the group and stop the group,
    /// so the next eligible node takes over.
    fn give_up_locally(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        resource: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        self.blocked_until = Some(view.now.mono_ms + policy.window_ms);
        self.problem = Some(reason.to_string());
        out.push(emit(
            EventKind::FailoverStarted,
            fields([
                ("group", policy.name.clone()),
                ("from_node", view.local().to_string()),
                ("resource", resource.to_string()),
                ("reason", MoveReason::ResourceFailed.name()),
                ("detail", reason.to_string()),
            ]),
        ));
        if matches!(
            self.local,
            LocalGroupState::Running | LocalGroupState::Starting
        ) {
            self.stop(&policy.name, reason, out);
        }
    }

    /// The floating-IP probe answered.
    fn on_vip_probe(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        in_use: bool,
        out: &mut Vec<Action>,
    ) {
        let now_ms = view.now.mono_ms;
        let speculative = matches!(self.probe, ProbeState::InFlight { speculative: true });
        let handoff_from_live_peer = self
            .claim
            .as_ref()
            .and_then(|c| c.from.as_deref())
            .is_some_and(|f| view.peer(f).is_some());
        if in_use && speculative {
            self.probe = ProbeState::SpecInUse(now_ms);
        } else if in_use && handoff_from_live_peer {
            // The previous owner is alive and says it stopped: its address may still be
            // settling (or a stray announcement was heard). Not a split brain; look
            // again shortly.
            tracing::info!(group = %policy.name, "floating IP still answers during a hand-off; probing again");
            self.probe = ProbeState::RetryAt(now_ms + 250);
        } else if in_use {
            self.probe = ProbeState::RetryAt(now_ms + view.cfg.probe_retry_ms);
            if !self.suspected_reported {
                self.suspected_reported = true;
                out.push(emit(
                    EventKind::SplitBrainSuspected,
                    fields([
                        ("group", policy.name.clone()),
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
            // evaluate() starts the group next if it is still ours to take.
            self.probe = ProbeState::Passed(now_ms);
            self.suspected_reported = false;
        }
    }

    /// `peer` is almost dead (`view` leaves it out): if it owns the group and this node
    /// would take it over, probe the floating IPs now, off the failover's critical path.
    fn pre_probe(
        &mut self,
        policy: &GroupPolicy,
        view: &ClusterView,
        peer: &str,
        out: &mut Vec<Action>,
    ) {
        if self.owner() != Some(peer)
            || self.maintenance
            || self.local != LocalGroupState::Stopped
            || !policy.has_vip
            || self.best_eligible(policy, view, None).as_deref() != Some(view.local())
        {
            return;
        }
        let now_ms = view.now.mono_ms;
        let due = match self.probe {
            ProbeState::Idle => true,
            ProbeState::Passed(t) => now_ms.saturating_sub(t) > view.cfg.probe_fresh_ms / 2,
            ProbeState::SpecInUse(t) => now_ms.saturating_sub(t) >= view.cfg.probe_retry_ms,
            ProbeState::InFlight { .. } | ProbeState::RetryAt(_) => false,
        };
        if due {
            self.probe = ProbeState::InFlight { speculative: true };
            out.push(Action::ProbeVip {
                group: policy.name.clone(),
            });
        }
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

/// Closes the timeline of a start: completed, or failed with `failure`. A first
/// placement is no move: only its failure is reported as an event.
fn close_timeline(mut t: Timeline, wall_ms: u64, failure: Option<&str>, out: &mut Vec<Action>) {
    let switchover = t.kind == MoveKind::Switchover;
    t.completed_ms = Some(wall_ms);
    let kind = match (failure, switchover) {
        (None, true) => EventKind::SwitchoverCompleted,
        (None, false) => EventKind::FailoverCompleted,
        (Some(_), true) => EventKind::SwitchoverFailed,
        (Some(_), false) => EventKind::FailoverFailed,
    };
    t.outcome = match failure {
        None => "completed".into(),
        Some(why) => format!("failed: {why}"),
    };
    if failure.is_some() || t.reason != MoveReason::Initial {
        out.push(emit(kind, timeline_fields(&t)));
    }
    out.push(Action::RecordTimeline(t));
}

/// The timeline a stop leaves on the source side of a move to `to`.
fn release_timeline(
    group: &str,
    view: &ClusterView,
    to: Option<&str>,
    ok: bool,
    steps: Vec<TimelineStep>,
) -> Timeline {
    let began = steps.first().map_or(view.now.wall_ms, |s| s.at_ms);
    Timeline {
        group: group.to_string(),
        kind: MoveKind::Release,
        reason: MoveReason::Manual,
        from_node: Some(view.local().to_string()),
        to_node: to.unwrap_or_default().to_string(),
        failure_ms: None,
        detected_ms: began,
        decided_ms: began,
        steps,
        first_check_ms: None,
        completed_ms: Some(view.now.wall_ms),
        outcome: if ok { "stopped" } else { "stop failed" }.into(),
    }
}

#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod tests;
