//! The read model: one snapshot of this node's view of the cluster, published by the
//! runtime after every input and read by the HTTP API, the metrics, the SNMP agent,
//! `tandem status` and the lab. Nothing here imports those observers; the snapshot is
//! a pure projection of the cores' state ([`project`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::packet::LocalGroupState;
use crate::config::{Config, ReplicationMode, ResourceKind};
use crate::event::MoveReason;
use crate::lease::task::LeaseStatus;
use crate::mirror::generation::DiskState;
use crate::node::NodeCore;
use crate::placement::policy::Now;
use crate::quorum::core::Role;

pub use crate::mirror::status::{
    LinkState, MirrorPeerStatus, MirrorRole, MirrorStatus, ResyncDirection, ResyncStatus,
    VerifyStatus,
};
pub use crate::placement::policy::{GroupStatus, GroupSummary};

/// How a node decides it may take over a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TakeoverMode {
    /// Two nodes: a floating-IP probe guards every takeover.
    #[default]
    TwoNode,
    /// Three or more nodes without a quorum: the most preferred live node takes over.
    Priority,
    /// Ownership through the replicated log of a majority of the voters, with leases.
    Quorum,
}

impl TakeoverMode {
    /// The mode a cluster runs in.
    pub fn for_config(cfg: &Config) -> TakeoverMode {
        if cfg.quorum_enabled() {
            TakeoverMode::Quorum
        } else {
            TakeoverMode::for_nodes(cfg.nodes.len())
        }
    }

    /// The mode a cluster of `nodes` nodes runs in without a quorum.
    pub fn for_nodes(nodes: usize) -> TakeoverMode {
        if nodes <= 2 {
            TakeoverMode::TwoNode
        } else {
            TakeoverMode::Priority
        }
    }
}

impl std::fmt::Display for TakeoverMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TakeoverMode::TwoNode => "two_node",
            TakeoverMode::Priority => "priority",
            TakeoverMode::Quorum => "quorum",
        })
    }
}

/// The kind of a resource (`kind = "..."` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    #[default]
    Ip,
    Exec,
    Process,
    Mirror,
    Filesystem,
    SharedDisk,
}

impl ResourceType {
    /// Every type, in the MIB's order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Ip,
        ResourceType::Exec,
        ResourceType::Process,
        ResourceType::Mirror,
        ResourceType::Filesystem,
        ResourceType::SharedDisk,
    ];

    /// The snake_case name (as in the JSON and the config's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Ip => "ip",
            ResourceType::Exec => "exec",
            ResourceType::Process => "process",
            ResourceType::Mirror => "mirror",
            ResourceType::Filesystem => "filesystem",
            ResourceType::SharedDisk => "shared_disk",
        }
    }

    /// The type of a configured resource.
    pub fn of(kind: &ResourceKind) -> ResourceType {
        match kind {
            ResourceKind::Ip { .. } => ResourceType::Ip,
            ResourceKind::Exec { .. } => ResourceType::Exec,
            ResourceKind::Process { .. } => ResourceType::Process,
            ResourceKind::Mirror { .. } => ResourceType::Mirror,
            ResourceKind::Filesystem { .. } => ResourceType::Filesystem,
            ResourceKind::SharedDisk { .. } => ResourceType::SharedDisk,
        }
    }
}

/// One node as seen from this node.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    pub name: String,
    pub priority: u32,
    /// This is the node answering.
    pub local: bool,
    pub alive: bool,
    pub standby: bool,
    pub boot_id: String,
    pub last_heard_ms_ago: Option<u64>,
    pub paths_up: usize,
    /// The newest heartbeat protocol version its build speaks (`None`: not heard yet);
    /// N and N + 1 interoperate (`cluster::packet::version_for`).
    #[serde(default)]
    pub protocol: Option<u8>,
    /// Its configuration digest (`config::cluster_digest`), as its heartbeats carry it
    /// (`None`: not heard yet, or an older build that sends none).
    #[serde(default)]
    pub config_digest: Option<String>,
}

/// A node's state as `tandem status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heard on a heartbeat path (or this node) and eligible to run groups.
    Online,
    /// Alive, but asked to run no group (`tandem node standby`).
    Standby,
    /// Silent on every heartbeat path for the dead time.
    Offline,
}

impl NodeState {
    /// The lowercase word.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Standby => "standby",
            NodeState::Offline => "offline",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl NodeStatus {
    /// Offline when silent, else standby or online.
    pub fn state(&self) -> NodeState {
        match (self.alive, self.standby) {
            (false, _) => NodeState::Offline,
            (true, true) => NodeState::Standby,
            (true, false) => NodeState::Online,
        }
    }
}

/// One heartbeat path to one peer.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PathStatusView {
    pub peer: String,
    pub path: String,
    pub up: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub rtt_ms: Option<f64>,
}

/// Heartbeat packet counters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HeartbeatCounters {
    pub sent: u64,
    pub accepted: u64,
    /// Dropped packets by reason: bad_mac, replayed, malformed, wrong_cluster, ...
    pub rejected: BTreeMap<String, u64>,
}

/// `GET /v1/status`: a consistent snapshot of this node's view.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    pub cluster: String,
    pub node: String,
    /// The answering daemon's version.
    #[serde(default)]
    pub version: String,
    pub time_ms: u64,
    pub uptime_ms: u64,
    pub last_seq: u64,
    pub mode: TakeoverMode,
    pub nodes: Vec<NodeStatus>,
    pub paths: Vec<PathStatusView>,
    pub groups: Vec<GroupStatus>,
    pub heartbeats: HeartbeatCounters,
    /// Every configured resource of every group.
    #[serde(default)]
    pub resources: Vec<ResourceView>,
    /// Every floating IP (the `ip` resources).
    #[serde(default)]
    pub vips: Vec<VipView>,
    /// Failovers and switchovers this node carried out, per group.
    #[serde(default)]
    pub failovers: Vec<FailoverSummary>,
    /// Every replicated volume this node holds a copy of.
    #[serde(default)]
    pub mirrors: Vec<MirrorStatus>,
    /// The quorum, when ownership goes through the replicated log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumView>,
    /// A configuration that is not partition-safe (two nodes without a witness), or
    /// nodes whose configuration files differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The web console on this node (`[console]`), with its certificate's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleView>,
}

/// Where this node's web console listens, and the SHA-256 fingerprint (`AA:BB:...`) of
/// the certificate it presents, to compare with what a browser shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsoleView {
    pub address: std::net::SocketAddr,
    pub fingerprint: String,
}

/// The quorum as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuorumView {
    /// This node is with a majority of the voters and follows a leader.
    pub quorate: bool,
    pub role: Role,
    pub term: u64,
    pub leader: Option<String>,
    pub commit_index: u64,
    /// Voters heard from within the dead time (this node included).
    pub votes: usize,
    pub voters: Vec<VoterView>,
    /// The groups this node owns: their epoch and the lease left.
    pub leases: Vec<LeaseView>,
    /// The latest power-off this node asked of each node (`[node.fence]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fencing: Vec<FenceView>,
}

/// What came of the latest power-off this node asked of one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FenceView {
    pub node: String,
    pub state: FenceState,
    /// The method that confirmed the power off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// From the request until the BMC reported the power off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// Why every method failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long ago it was asked.
    pub age_ms: u64,
}

/// The state of a power-off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    /// Asked; the BMC has not confirmed yet.
    Running,
    /// The BMC reports the power off.
    Off,
    /// Every method failed: the node is NOT known to be off.
    Failed,
}

fn fence_views(core: &NodeCore, now: Now) -> Vec<FenceView> {
    use crate::node::PowerFenceResult;
    core.fence_records()
        .iter()
        .map(|(node, r)| {
            let (state, method, elapsed_ms, reason) = match &r.result {
                None => (FenceState::Running, None, None, None),
                Some(PowerFenceResult::Off { method, elapsed_ms }) => (
                    FenceState::Off,
                    Some(method.clone()),
                    Some(*elapsed_ms),
                    None,
                ),
                Some(PowerFenceResult::Failed { reason }) => {
                    (FenceState::Failed, None, None, Some(reason.clone()))
                }
            };
            FenceView {
                node: node.clone(),
                state,
                method,
                elapsed_ms,
                reason,
                age_ms: now.mono_ms.saturating_sub(r.asked_ms),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VoterView {
    pub name: String,
    pub witness: bool,
    pub reachable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseView {
    pub group: String,
    pub epoch: u64,
    /// Milliseconds of lease left on this node's clock (0: none held).
    pub remaining_ms: u64,
}

/// The quorum view of a node core.
fn quorum_view(core: &NodeCore, now: Now) -> Option<QuorumView> {
    let q = core.quorum()?;
    let s = core.config().quorum.as_ref()?;
    let reachable = q.reachable(now.mono_ms, s.reachable_ms);
    let local = core.config().local();
    Some(QuorumView {
        quorate: q.quorate(now.mono_ms, s.reachable_ms),
        role: q.role(),
        term: q.term(),
        leader: q.leader().map(str::to_string),
        commit_index: q.commit_index(),
        votes: reachable.len(),
        voters: q
            .config()
            .voters
            .iter()
            .map(|v| VoterView {
                name: v.clone(),
                witness: q.config().witness.as_deref() == Some(v.as_str()),
                reachable: reachable.contains(v),
            })
            .collect(),
        leases: q
            .register()
            .owners
            .iter()
            .filter(|(_, o)| o.owner == local)
            .map(|(g, o)| LeaseView {
                group: g.clone(),
                epoch: o.epoch,
                remaining_ms: q
                    .leases()
                    .lease_end(g)
                    .map_or(0, |e| e.saturating_sub(now.mono_ms)),
            })
            .collect(),
        fencing: fence_views(core, now),
    })
}

/// One resource of one group, as this node runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceView {
    pub group: String,
    pub name: String,
    pub kind: ResourceType,
    /// The group's local state on this node: resources start and stop with their
    /// group.
    pub state: LocalGroupState,
    /// The resources of its group it depends on (started before it, stopped after).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The health checks its configuration gives it (none: its built-in monitor only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configured_checks: Vec<CheckKind>,
    /// The last result of each of its health checks on this node (none until one ran).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckView>,
    /// A `shared_disk`'s disk lease on this node, once this node has taken it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_lease: Option<DiskLeaseView>,
}

/// A disk lease as this node last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLeaseView {
    /// `held` while this node holds it; `idle` once released or lost.
    pub state: crate::lease::core::LeaseState,
    /// The node named by the last record this node read from the lease sector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// How old this node's last counted renewal is, while it holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_age_ms: Option<u64>,
}

impl DiskLeaseView {
    /// One line for the status and the console: "held by alpha, renewed 120 ms ago".
    pub fn describe(&self) -> String {
        use crate::lease::core::LeaseState;
        let holder = self.holder.as_deref().unwrap_or("nobody");
        match (self.state, self.renewal_age_ms) {
            (LeaseState::Held, Some(age)) => format!("held by {holder}, renewed {age} ms ago"),
            (LeaseState::Held, None) => format!("held by {holder}"),
            (LeaseState::Acquiring, _) => format!("acquiring (the sector names {holder})"),
            (LeaseState::Releasing, _) => "releasing".into(),
            (LeaseState::Idle, _) => format!("not held here (the sector last named {holder})"),
        }
    }
}

/// Which health check of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The frequent, cheap check.
    Quickcheck,
    /// The thorough, rarer check.
    Deepcheck,
}

impl CheckKind {
    /// As in the configuration, the metrics' `check` label and the events.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Quickcheck => "quickcheck",
            CheckKind::Deepcheck => "deepcheck",
        }
    }
}

/// The last run of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    pub kind: CheckKind,
    /// Unix ms when it finished.
    pub at_ms: u64,
    pub took_ms: u64,
    /// Why it failed (`None`: it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last result of every health check this node ran, by group, resource and kind,
/// and the disk leases its `shared_disk`s took: what the runtime adds to each
/// [`ResourceView`] when it publishes the status.
#[derive(Debug, Clone, Default)]
pub struct ResourceBook {
    checks: BTreeMap<(String, String, CheckKind), CheckView>,
    leases: BTreeMap<(String, String), watch::Receiver<LeaseStatus>>,
}

impl ResourceBook {
    /// Keeps `view` as the last result of that check.
    pub fn record(&mut self, group: &str, resource: &str, view: CheckView) {
        self.checks
            .insert((group.to_string(), resource.to_string(), view.kind), view);
    }

    /// Follows the disk lease a `shared_disk` has taken (replacing an earlier one's).
    pub fn watch_lease(
        &mut self,
        group: &str,
        resource: &str,
        status: watch::Receiver<LeaseStatus>,
    ) {
        self.leases
            .insert((group.to_string(), resource.to_string()), status);
    }

    /// Each resource's last check results (quickcheck first) and disk lease.
    pub fn fill(&self, resources: &mut [ResourceView]) {
        for r in resources {
            let key = (r.group.clone(), r.name.clone());
            r.checks = [CheckKind::Quickcheck, CheckKind::Deepcheck]
                .into_iter()
                .filter_map(|k| self.checks.get(&(key.0.clone(), key.1.clone(), k)).cloned())
                .collect();
            r.disk_lease = self.leases.get(&key).map(|rx| {
                let l = rx.borrow();
                DiskLeaseView {
                    state: l.state,
                    holder: l.holder.clone(),
                    renewal_age_ms: l.renewal_age.map(|a| a.as_millis() as u64),
                }
            });
        }
    }
}

/// One floating IP.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct VipView {
    pub group: String,
    /// The `ip` resource's name.
    pub resource: String,
    /// ADDRESS/PREFIX as configured.
    pub address: String,
    pub interface: String,
    /// This node holds the address (its group runs here).
    pub present: bool,
}

/// The failover history of one group on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSummary {
    pub group: String,
    /// Completed or failed failovers and switchovers this node carried out.
    pub count: u64,
    /// Reason of the latest one.
    pub last_reason: MoveReason,
    /// Detection to completion of the latest one, when it completed.
    pub last_duration_ms: Option<u64>,
}

/// Projects the cores' state into the snapshot: a pure function of the configuration,
/// the node core, the time, the event stream's last sequence number and the mirrors'
/// own status.
pub fn project(
    cfg: &Config,
    core: &NodeCore,
    now: Now,
    last_seq: u64,
    mut mirrors: Vec<MirrorStatus>,
) -> Status {
    let groups = core.groups(now);
    let points = core.recovery_points();
    for m in &mut mirrors {
        m.recovery_point = points.iter().find(|p| p.mirror == m.name).cloned();
    }
    let (resources, vips) = resource_views(cfg, &groups);
    let counters = core.membership().counters();
    Status {
        cluster: cfg.cluster.name.clone(),
        node: core.config().local().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        time_ms: now.wall_ms,
        uptime_ms: now.mono_ms,
        last_seq,
        mode: TakeoverMode::for_config(cfg),
        nodes: node_views(cfg, core, now),
        paths: path_views(core, now),
        groups,
        heartbeats: HeartbeatCounters {
            sent: core.heartbeats_sent(),
            accepted: counters.accepted,
            rejected: counters
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        },
        resources,
        vips,
        failovers: core
            .failovers()
            .iter()
            .map(|(group, t)| FailoverSummary {
                group: group.clone(),
                count: t.count,
                last_reason: t.last_reason,
                last_duration_ms: t.last_duration_ms,
            })
            .collect(),
        mirrors,
        quorum: quorum_view(core, now),
        warning: warning(cfg, core),
        console: None,
    }
}

/// What `tandem status` should warn about: a configuration that is not partition-safe,
/// nodes whose configuration file differs from this node's (by the digests in their
/// heartbeats), and a configured watchdog this node cannot use.
fn warning(cfg: &Config, core: &NodeCore) -> Option<String> {
    let mismatches = core.config_mismatches();
    let differ = (!mismatches.is_empty()).then(|| {
        let who: Vec<String> = mismatches
            .iter()
            .map(|(n, d)| format!("{n} has {d}"))
            .collect();
        format!(
            "the configuration differs between nodes (this node has {}, {}): make the \
             files the same; `tandem config check` prints the digest",
            cfg.digest,
            who.join(", ")
        )
    });
    let unprotected = core.watchdog_fault().map(|f| {
        format!(
            "the watchdog {} is unavailable ({} failed: {}): this node takes over and \
             starts no group until it opens again (retried every 5 s)",
            f.device,
            f.op.name(),
            f.error
        )
    });
    let all: Vec<String> = [cfg.quorum_warning(), differ, unprotected]
        .into_iter()
        .flatten()
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// This node first, then every peer as the membership sees it.
fn node_views(cfg: &Config, core: &NodeCore, now: Now) -> Vec<NodeStatus> {
    let priority = |name: &str| cfg.node(name).map_or(0, |n| n.priority);
    let local = core.config().local();
    let placement = core.placement();
    let mut nodes = vec![NodeStatus {
        name: local.to_string(),
        priority: priority(local),
        local: true,
        alive: true,
        standby: placement.standby(),
        boot_id: format!("{:016x}", core.boot_id()),
        last_heard_ms_ago: Some(0),
        paths_up: cfg.heartbeat.paths.len(),
        protocol: Some(crate::cluster::packet::MAX_VERSION),
        config_digest: Some(cfg.digest.clone()).filter(|d| !d.is_empty()),
    }];
    for ps in core.peer_status() {
        let advertised = core
            .peers()
            .iter()
            .find(|p| p.name == ps.name)
            .is_some_and(|p| p.advert.standby);
        nodes.push(NodeStatus {
            priority: priority(&ps.name),
            local: false,
            alive: ps.alive,
            standby: placement.is_standby(&ps.name) || advertised,
            boot_id: ps.boot_id.map(|b| format!("{b:016x}")).unwrap_or_default(),
            last_heard_ms_ago: ps.last_heard_ms.map(|t| now.mono_ms.saturating_sub(t)),
            paths_up: ps.paths_up.len(),
            protocol: ps.protocol.as_ref().map(|p| p.max_version),
            config_digest: ps
                .protocol
                .map(|p| p.config_digest)
                .filter(|d| !d.is_empty()),
            name: ps.name,
        });
    }
    nodes
}

fn path_views(core: &NodeCore, now: Now) -> Vec<PathStatusView> {
    let names = &core.config().paths;
    core.paths()
        .into_iter()
        .map(|p| PathStatusView {
            path: names.get(p.path as usize).cloned().unwrap_or_default(),
            up: p.up,
            last_heard_ms_ago: p.last_heard_ms.map(|t| now.mono_ms.saturating_sub(t)),
            rtt_ms: p.rtt_ms,
            peer: p.peer,
        })
        .collect()
}

/// Every configured resource and floating IP, in the state of its group here.
fn resource_views(cfg: &Config, groups: &[GroupStatus]) -> (Vec<ResourceView>, Vec<VipView>) {
    let mut resources = Vec::new();
    let mut vips = Vec::new();
    for g in &cfg.groups {
        let state = groups
            .iter()
            .find(|s| s.name == g.name)
            .map_or(LocalGroupState::Stopped, |s| s.local_state);
        for r in &g.resources {
            if let ResourceKind::Ip {
                address, interface, ..
            } = &r.kind
            {
                vips.push(VipView {
                    group: g.name.clone(),
                    resource: r.name.clone(),
                    address: address.clone(),
                    interface: interface.clone(),
                    present: state == LocalGroupState::Running,
                });
            }
            resources.push(ResourceView {
                group: g.name.clone(),
                name: r.name.clone(),
                kind: ResourceType::of(&r.kind),
                state,
                depends_on: r.depends_on.clone(),
                configured_checks: [
                    (CheckKind::Quickcheck, r.quickcheck.is_some()),
                    (CheckKind::Deepcheck, r.deepcheck.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, on)| on.then_some(k))
                .collect(),
                checks: Vec::new(),
                disk_lease: None,
            });
        }
    }
    (resources, vips)
}

impl Status {
    /// A fully populated snapshot (two nodes, a path, two groups, a floating IP, a
    /// failover, a primary mirror with a resyncing sync peer and a split-brained async
    /// peer): the one fixture the observers' tests and the golden JSON test share.
    #[doc(hidden)]
    pub fn sample() -> Status {
        let node = |name: &str, local: bool| NodeStatus {
            name: name.into(),
            priority: if local { 1 } else { 2 },
            local,
            alive: true,
            standby: false,
            boot_id: "00000000000000ab".into(),
            last_heard_ms_ago: Some(5),
            paths_up: 1,
            protocol: Some(2),
            config_digest: Some("0123456789abcdef".into()),
        };
        let group = |name: &str| GroupStatus {
            name: name.into(),
            owner: Some("alpha".into()),
            epoch: 3,
            maintenance: false,
            local_state: LocalGroupState::Running,
            blocked: false,
            recent_failures: 0,
            reason: None,
            states: [
                ("alpha".to_string(), LocalGroupState::Running),
                ("beta".to_string(), LocalGroupState::Stopped),
            ]
            .into(),
            summary: GroupSummary::Running,
        };
        Status {
            cluster: "c1".into(),
            node: "alpha".into(),
            version: "0.1.0".into(),
            time_ms: 1_700_000_000_000,
            uptime_ms: 12_340,
            last_seq: 42,
            mode: TakeoverMode::TwoNode,
            nodes: vec![node("alpha", true), node("beta", false)],
            paths: vec![PathStatusView {
                peer: "beta".into(),
                path: "lan".into(),
                up: true,
                last_heard_ms_ago: Some(7),
                rtt_ms: Some(0.25),
            }],
            groups: vec![group("db"), group("web")],
            heartbeats: HeartbeatCounters {
                sent: 10,
                accepted: 7,
                rejected: [("bad_mac".to_string(), 2)].into(),
            },
            resources: vec![ResourceView {
                group: "web".into(),
                name: "vip".into(),
                kind: ResourceType::Ip,
                state: LocalGroupState::Running,
                depends_on: Vec::new(),
                configured_checks: Vec::new(),
                checks: Vec::new(),
                disk_lease: None,
            }],
            vips: vec![VipView {
                group: "web".into(),
                resource: "vip".into(),
                address: "10.0.0.10/24".into(),
                interface: "eth0".into(),
                present: true,
            }],
            failovers: vec![FailoverSummary {
                group: "web".into(),
                count: 2,
                last_reason: MoveReason::NodeLost,
                last_duration_ms: Some(1030),
            }],
            mirrors: vec![sample_mirror()],
            quorum: None,
            warning: None,
            console: Some(ConsoleView {
                address: std::net::SocketAddr::from(([192, 0, 2, 1], 9443)),
                fingerprint: ["AB"; 32].join(":"),
            }),
        }
    }
}

/// The sample's mirror `vol`: primary, resyncing to a sync peer `beta`; an async peer
/// `gamma` in split brain that has not reported its disk.
fn sample_mirror() -> MirrorStatus {
    let beta = MirrorPeerStatus {
        node: "beta".into(),
        mode: ReplicationMode::Sync,
        connection: LinkState::Connected,
        peer_disk: Some(DiskState::SyncTarget),
        out_of_sync_bytes: 3 << 20,
        lag_bytes: 0,
        lag_seconds: 0.0,
        lag_budget_seconds: None,
        rate_limit_bytes_per_second: None,
        resync: Some(ResyncStatus {
            direction: ResyncDirection::Source,
            full: false,
            total_bytes: 4 << 20,
            done_bytes: 1 << 20,
            bytes_per_second: 1e6,
            eta_seconds: Some(2.2),
            started_ms: 0,
        }),
        verify: Some(VerifyStatus {
            running: false,
            checked_bytes: 1 << 30,
            total_bytes: 1 << 30,
            out_of_sync_bytes: 0,
            started_ms: 100,
            finished_ms: Some(900),
        }),
        replicated_bytes: 8192,
        resynced_bytes: 1 << 20,
        resyncs_completed: 1,
        compression: crate::mirror::status::CompressionStatus::from_counts((8192, 2048)),
        protocol: Some(3),
    };
    let gamma = MirrorPeerStatus {
        node: "gamma".into(),
        mode: ReplicationMode::Async,
        connection: LinkState::SplitBrain,
        peer_disk: None,
        out_of_sync_bytes: 0,
        lag_bytes: 4096,
        lag_seconds: 1.2345,
        lag_budget_seconds: Some(5.0),
        resync: None,
        verify: None,
        compression: None,
        protocol: None,
        ..beta.clone()
    };
    MirrorStatus {
        name: "vol".into(),
        group: Some("web".into()),
        resource: Some("disk".into()),
        role: MirrorRole::Primary,
        disk: DiskState::SyncSource,
        size_bytes: 1 << 30,
        generation: "00000000000000ab".into(),
        io_frozen: true,
        read_bytes: 4096,
        written_bytes: 12288,
        peers: vec![beta, gamma],
        recovery_point: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeConfig, NodeInput, WatchdogFault, WatchdogOp, WatchdogReport};

    #[test]
    fn the_check_book_fills_each_resource_with_its_last_results_quickcheck_first() {
        let view = |kind, at_ms, error: Option<&str>| CheckView {
            kind,
            at_ms,
            took_ms: 3,
            error: error.map(str::to_string),
        };
        let mut book = ResourceBook::default();
        book.record("web", "vip", view(CheckKind::Deepcheck, 5, None));
        book.record(
            "web",
            "vip",
            view(CheckKind::Quickcheck, 1, Some("refused")),
        );
        book.record("web", "vip", view(CheckKind::Quickcheck, 9, None));
        book.record("db", "vip", view(CheckKind::Quickcheck, 7, Some("timeout")));
        let mut st = Status::sample();
        book.fill(&mut st.resources);
        assert_eq!(
            st.resources[0].checks,
            [
                view(CheckKind::Quickcheck, 9, None),
                view(CheckKind::Deepcheck, 5, None)
            ]
        );
        let json = serde_json::to_value(&st.resources[0]).unwrap();
        assert_eq!(json["checks"][0]["kind"], "quickcheck");
        assert!(json["checks"][0].get("error").is_none());
    }

    /// The snapshot's JSON is the API's contract (`tandem status --json`, `/v1/status`):
    /// the read model's types may change, its bytes may not.
    #[test]
    fn status_json_matches_the_golden_file() {
        let json = serde_json::to_string_pretty(&Status::sample()).unwrap();
        let golden = include_str!("../tests/golden/status.json");
        if std::env::var_os("TANDEM_BLESS").is_some() {
            std::fs::write("tests/golden/status.json", &json).unwrap();
            return;
        }
        assert_eq!(json, golden.trim_end(), "the status JSON changed");
        let back: Status = serde_json::from_str(golden).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), json);
    }

    /// The words `tandem status` prints are the JSON's names, never Rust's `Debug`.
    #[test]
    fn state_words_are_the_json_names() {
        let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for s in [
            LocalGroupState::Stopped,
            LocalGroupState::Starting,
            LocalGroupState::Running,
            LocalGroupState::Stopping,
            LocalGroupState::Failed,
        ] {
            assert_eq!(s.name(), json(serde_json::to_value(s).unwrap()));
        }
        for r in [
            Role::Follower,
            Role::Candidate,
            Role::PreCandidate,
            Role::Leader,
        ] {
            assert_eq!(r.name(), json(serde_json::to_value(r).unwrap()));
        }
        for t in ResourceType::ALL {
            assert_eq!(t.name(), json(serde_json::to_value(t).unwrap()));
        }
        let mut n = Status::sample().nodes.remove(1);
        assert_eq!(n.state().to_string(), "online");
        n.standby = true;
        assert_eq!(n.state().to_string(), "standby");
        n.alive = false;
        assert_eq!(n.state().to_string(), "offline");
    }

    #[test]
    fn an_unavailable_watchdog_is_a_warning_naming_the_device_and_the_error() {
        let text = include_str!("../examples/tandem.toml")
            .replace(
                "# watchdog = { device = \"/dev/watchdog\", timeout = \"1s\" }",
                "watchdog = { device = \"/dev/watchdog\", timeout = \"1s\" }",
            )
            .replace(
                "# [witness]\n# name = \"w\"\n# addresses",
                "[witness]\nname = \"w\"\naddresses",
            );
        let cfg = Config::parse(&text).expect("config");
        assert!(cfg.quorum_enabled());
        let mut core = NodeCore::new(NodeConfig::from_config(&cfg, "alpha", 10), 1, 0, &[]);
        let now = Now {
            mono_ms: 0,
            wall_ms: 0,
        };
        assert_eq!(project(&cfg, &core, now, 0, Vec::new()).warning, None);
        let fault = WatchdogFault {
            device: "/dev/watchdog".into(),
            op: WatchdogOp::Open,
            error: "Device or resource busy (os error 16)".into(),
        };
        core.handle(now, NodeInput::Watchdog(WatchdogReport::Failed(fault)));
        let w = project(&cfg, &core, now, 0, Vec::new())
            .warning
            .expect("warning");
        assert!(
            w.contains("/dev/watchdog") && w.contains("os error 16"),
            "{w}"
        );
        core.handle(now, NodeInput::Watchdog(WatchdogReport::Available));
        assert_eq!(project(&cfg, &core, now, 0, Vec::new()).warning, None);
    }
}
