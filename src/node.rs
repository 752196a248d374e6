//! The node core: one node's decisions, sans-IO, in the manner of raft-rs's `RawNode`.
//!
//! [`NodeCore`] owns the membership core, the placement core, the mirror fencing
//! registers, the heartbeat sequence and advert, and the failover tallies. It takes
//! every input through [`NodeCore::handle`] with the time as an argument and returns
//! the [`NodeAction`]s to carry out, in order. It opens no socket, reads no clock and
//! spawns nothing: `runtime::Daemon` turns sockets, timers, child processes and API
//! requests into [`NodeInput`]s and carries out the actions, and `tests/simulation.rs`
//! drives the very same core over an in-memory network.
//!
//! ```text
//!  HeartbeatDue ---------> adverts -> Send{path, peer, hb} (one per peer and path)
//!  Packet/Malformed -----> Membership --NodeDown--> PeerDead + Placement
//!  Tick (CheckLiveness, Evaluate, ProbeSilentPeers, Fence)
//!  Resource (executor results), Control (admin requests), Leave --> Placement
//!  Mirrors/OutdateDone --> fencing registers --> PeerOutdated / OutdateSelf
//!  Placement actions --> Emit, RecordTimeline, Group{command}; a changed advert goes
//!                        out at once (Send)
//! ```

use crate::mirror::generation::OwnershipEpoch;
use std::collections::{BTreeMap, BTreeSet};

mod power_fencing;
mod quorum;
mod watchdog;

pub use power_fencing::{FenceRecord, PowerFenceResult, PowerFencing, PowerOff};
pub use watchdog::{
    HealthChange, Watchdog, WatchdogCommand, WatchdogFault, WatchdogOp, WatchdogReport,
};

use crate::cluster::membership::{
    self, Membership, MembershipConfig, MembershipEvent, PathStatus, PeerProtocol, PeerSpec,
    PeerStatus,
};
use crate::cluster::packet::{self, Heartbeat, LocalGroupState, MirrorLag, NodeAdvert};
use crate::config::Config;
use crate::event::{fields, EventKind, Fields, MoveReason, Timeline};
use crate::mirror::fencing::{self, FenceAction, LocalFencing};
use crate::mirror::recovery::{RecoveryPoint, RecoveryPoints};
pub use crate::placement::policy::StopMode;
use crate::placement::policy::{
    Action, GroupStatus, Input, Now, PeerView, Placement, PlacementConfig, PlacementError,
    RestartPolicy,
};
use crate::quorum::core::{QuorumConfig, QuorumCore, QuorumError, QuorumTiming};
use crate::quorum::outbox::Outbox;
use crate::quorum::records::{PersistBatch, Restored};
use crate::quorum::wire::{self, Dedup, QuorumPacket};

/// What a node core is built from: everything it decides with, nothing it does I/O
/// with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub cluster: String,
    /// Heartbeat path names, by path index.
    pub paths: Vec<String>,
    /// Every peer, with the path indices it has an address on (heartbeats go there).
    pub peers: Vec<(String, Vec<u8>)>,
    pub dead_time_ms: u64,
    /// A peer silent on every path this long before its dead time gets a speculative
    /// floating-IP probe ([`Input::PeerSilent`]).
    pub probe_lead_ms: u64,
    pub placement: PlacementConfig,
    /// With three or more voters: the quorum's settings (ownership through the log).
    pub quorum: Option<QuorumSettings>,
    /// Each group's mirrors: a node may claim the group only with copies the log
    /// does not record as outdated.
    pub group_mirrors: BTreeMap<String, Vec<String>>,
    /// The nodes with a `[node.fence]` section, and their fence delay (ms): quorum
    /// mode powers a previous owner off to start without waiting out its lease.
    pub fenceable: BTreeMap<String, u64>,
    /// Per mirror: the peers this node's copy replicates with synchronously. With a
    /// quorum, a node takes a group over only from an owner all of whose mirrors it
    /// copies synchronously: an async copy may lack writes the owner acknowledged.
    pub sync_peers: BTreeMap<String, BTreeSet<String>>,
    /// Per mirror: every pair of nodes whose copies replicate synchronously (each pair
    /// once, in name order). An automatic move (a takeover, a hand-off after a failed
    /// start) goes only to a node that copies the last primary synchronously.
    pub sync_links: BTreeMap<String, BTreeSet<(String, String)>>,
    /// This node's [`crate::config::cluster_digest`], carried in its heartbeats; a peer
    /// whose heartbeats carry another is reported (empty: compare nothing).
    pub config_digest: String,
}

impl NodeConfig {
    /// Whether `a` and `b` replicate `mirror` synchronously (a node with itself too).
    pub fn sync_pair(&self, mirror: &str, a: &str, b: &str) -> bool {
        let pair = if a <= b { (a, b) } else { (b, a) };
        a == b
            || self
                .sync_links
                .get(mirror)
                .is_some_and(|links| links.iter().any(|(x, y)| (x.as_str(), y.as_str()) == pair))
    }
}

/// How this node takes part in the quorum.
#[derive(Debug, Clone)]
pub struct QuorumSettings {
    pub core: QuorumConfig,
    /// Stop the groups this long before the lease ends.
    pub stop_margin_ms: u64,
    /// A voter counts as reachable while heard from within this long.
    pub reachable_ms: u64,
    /// `[quorum] watchdog`: its timeout W, in seconds (the device backs the leases).
    pub watchdog_s: Option<u64>,
}

/// How long before its lease ends a fast stop begins beyond the watchdog's timeout: the
/// watchdog is petted until W + [`watchdog::PET_SPARE_MS`] are left, so the fast stop
/// runs while it is still petted, and a node that fails or hangs in it is reset W after
/// the last pet, before the lease ends.
pub const FAST_STOP_BEFORE_PETS_END_MS: u64 = 100;

impl QuorumSettings {
    /// When a group's lease gets this close to its end, the node fast-stops it (and
    /// starts or resumes a group only with more left): W + 200 ms with a watchdog
    /// (the issue's "expiry − (W + 200 ms)"), `[quorum] stop_margin` without one, and
    /// never less than `stop_margin`.
    pub fn fast_stop_margin_ms(&self) -> u64 {
        let with_watchdog = self.watchdog_s.map_or(0, |w| {
            w * 1000 + watchdog::PET_SPARE_MS + FAST_STOP_BEFORE_PETS_END_MS
        });
        self.stop_margin_ms.max(with_watchdog)
    }
}

impl QuorumSettings {
    /// Derives the quorum settings for voter `local` (a node or the witness).
    pub fn from_config(cfg: &Config, local: &str) -> QuorumSettings {
        let timing = QuorumTiming {
            interval: cfg.heartbeat.interval,
            dead_time: cfg.heartbeat.dead_time,
            lease: cfg.quorum.lease,
            drift_ppm: cfg.quorum.drift_ppm,
        };
        QuorumSettings {
            core: QuorumConfig::derive(
                timing,
                cfg.voters(),
                cfg.witness.as_ref().map(|w| w.name.clone()),
                local,
            ),
            stop_margin_ms: cfg.quorum.stop_margin.as_millis() as u64,
            reachable_ms: cfg.heartbeat.dead_time.as_millis() as u64,
            watchdog_s: cfg.quorum.watchdog.as_ref().map(|w| w.timeout.as_secs()),
        }
    }
}

impl NodeConfig {
    /// Derives the core's settings from the configuration; `evaluate_every_ms` is the
    /// runtime's evaluation period (the probe lead allows for three of them).
    pub fn from_config(cfg: &Config, local: &str, evaluate_every_ms: u64) -> NodeConfig {
        let peers = cfg
            .nodes
            .iter()
            .filter(|n| n.name != local)
            .map(|n| {
                let paths = (0..cfg.heartbeat.paths.len())
                    .filter(|&i| n.addresses.contains_key(&cfg.heartbeat.paths[i]))
                    .map(|i| i as u8)
                    .collect();
                (n.name.clone(), paths)
            })
            .collect();
        NodeConfig {
            cluster: cfg.cluster.name.clone(),
            paths: cfg.heartbeat.paths.clone(),
            peers,
            dead_time_ms: cfg.heartbeat.dead_time.as_millis() as u64,
            probe_lead_ms: cfg.cluster.vip_probe_timeout.as_millis() as u64 + 3 * evaluate_every_ms,
            placement: PlacementConfig::from_config(cfg, local),
            quorum: cfg
                .quorum_enabled()
                .then(|| QuorumSettings::from_config(cfg, local)),
            group_mirrors: cfg
                .groups
                .iter()
                .map(|g| {
                    let mirrors = g
                        .resources
                        .iter()
                        .filter_map(|r| match &r.kind {
                            crate::config::ResourceKind::Mirror { mirror } => Some(mirror.clone()),
                            _ => None,
                        })
                        .collect();
                    (g.name.clone(), mirrors)
                })
                .collect(),
            fenceable: cfg
                .nodes
                .iter()
                .filter(|n| n.name != local)
                .filter_map(|n| {
                    let f = n.fence.as_ref()?;
                    Some((n.name.clone(), f.delay.as_millis() as u64))
                })
                .collect(),
            sync_links: cfg
                .mirrors
                .iter()
                .map(|m| {
                    let pairs = m
                        .links
                        .iter()
                        .filter(|l| l.mode == crate::config::ReplicationMode::Sync)
                        .map(|l| {
                            let [a, b] = l.between.clone();
                            if a <= b {
                                (a, b)
                            } else {
                                (b, a)
                            }
                        })
                        .collect();
                    (m.name.clone(), pairs)
                })
                .collect(),
            sync_peers: cfg
                .mirrors
                .iter()
                .map(|m| {
                    let peers = m
                        .links_of(local)
                        .filter(|(_, l)| l.mode == crate::config::ReplicationMode::Sync)
                        .map(|(p, _)| p.to_string())
                        .collect();
                    (m.name.clone(), peers)
                })
                .collect(),
            config_digest: cfg.digest.clone(),
        }
    }

    /// This node's name.
    pub fn local(&self) -> &str {
        &self.placement.local
    }
}

/// Something that happened to the node: a timer, a packet, a result, a request.
#[derive(Debug, Clone)]
pub enum NodeInput {
    /// The heartbeat interval elapsed: advertise to every peer on every path.
    HeartbeatDue,
    /// The runtime's evaluation period elapsed: [`NodeInput::CheckLiveness`],
    /// [`NodeInput::Evaluate`], [`NodeInput::ProbeSilentPeers`] and fencing, in that
    /// order.
    Tick,
    /// Re-check every peer's liveness against the dead time.
    CheckLiveness,
    /// Re-evaluate placement (its deadlines: grace, blocks, probe retries).
    Evaluate,
    /// Probe the floating IPs of groups owned by peers that are nearly dead.
    ProbeSilentPeers,
    /// A decoded, authenticated heartbeat arrived on a path.
    Packet { path: u8, hb: Heartbeat },
    /// A datagram on a path could not be decoded or authenticated.
    Malformed { path: u8, reason: &'static str },
    /// A decoded, authenticated quorum datagram (possibly a copy from another path).
    Quorum(Box<QuorumPacket>),
    /// The consensus log write [`NodeAction::PersistLog`] `write` (and every one before
    /// it) is durable.
    LogWritten { write: u64 },
    /// A group executor's report (started, stopped, check failed, probe result...).
    Resource(Input),
    /// The local mirrors' fencing facts, sampled by the runtime.
    Mirrors(Vec<MirrorFacts>),
    /// An outdate this core asked for ([`NodeAction::OutdateSelf`]) finished.
    OutdateDone {
        mirror: String,
        generation: u64,
        ok: bool,
    },
    /// A power-off this core asked for ([`NodeAction::PowerOff`]) finished.
    PowerFenced {
        node: String,
        result: PowerFenceResult,
    },
    /// An administrator's request; answered by [`NodeAction::Reply`] with the same id.
    Control { id: u64, command: ControlCommand },
    /// The daemon is shutting down: hand every group to the peers.
    Leave,
    /// The daemon now runs a reloaded configuration: the digest of its cluster-wide
    /// part (heartbeats carry it, and the peers are compared against it) and each
    /// group's restart policy.
    Reloaded {
        digest: String,
        restart_policies: Vec<RestartPolicy>,
    },
    /// The runtime's word on the `[quorum] watchdog` device: it failed, or it is
    /// usable again.
    Watchdog(WatchdogReport),
}

/// What an administrator can ask of the core. `Clear`: forget the group's failures and
/// lift its block on this node (`node`, if given, must name this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    Switchover { group: String, to: Option<String> },
    Standby { node: String, on: bool },
    Maintenance { group: String, on: bool },
    Clear { group: String, node: Option<String> },
}

/// How a control command went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutcome {
    /// A switchover was started towards this node.
    SwitchingTo(String),
    /// Quorum mode: a standby change was proposed to the log; it is done once the log
    /// commits it ([`NodeCore::committed_standby`] reads `on`).
    StandbyProposed {
        node: String,
        on: bool,
    },
    Done,
}

/// One local mirror's fencing facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFacts {
    pub name: String,
    pub primary: bool,
    /// (peer, my generation) for each lost sync peer that writes wait for.
    pub pending: Vec<(String, u64)>,
    /// This copy is UpToDate, at this generation.
    pub up_to_date: bool,
    pub generation: u64,
    /// On a primary: the sync peers in sync with it now (`Mirror::in_sync_peers`).
    pub in_sync: Vec<String>,
    /// On a primary: (peer, bytes its copy may lack, age in ms of the oldest write it
    /// has not acknowledged), advertised so a DR copy knows its recovery point.
    pub lags: Vec<(String, u64, u32)>,
}

/// A command for one group's executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    ProbeVip,
    /// Start the group under this ownership epoch: the register's in quorum mode (the
    /// log makes it durable and unique per owner); always 0 in two-node mode, whose
    /// register starts over when both nodes restart, so its epochs order nothing.
    Start {
        epoch: OwnershipEpoch,
    },
    Stop(StopMode),
    /// Only the fast part of a lost lease's stop; the group is held (reports
    /// [`Input::FastStopped`]).
    FastStop,
    /// Undo the fast stop of a held group, its lease back at this epoch (reports
    /// [`Input::Resumed`]).
    Resume {
        epoch: OwnershipEpoch,
    },
    Restart {
        resource: String,
    },
    Maintenance(bool),
}

/// What the runtime must do, in order.
#[derive(Debug, Clone)]
pub enum NodeAction {
    /// Send this heartbeat to `peer` on path `path`.
    Send {
        path: u8,
        peer: String,
        hb: Box<Heartbeat>,
    },
    /// Append an event to the stream.
    Emit { kind: EventKind, fields: Fields },
    /// A failover or switchover finished: record its timeline.
    RecordTimeline(Timeline),
    /// Hand a command to a group's executor.
    Group {
        group: String,
        command: GroupCommand,
    },
    /// The membership declared a peer dead: end replication links to it at once.
    PeerDead { peer: String },
    /// A lost sync peer is outdated (or dead): the mirror may write again.
    PeerOutdated { mirror: String, peer: String },
    /// A primary asks this copy to outdate itself (persisted); report with
    /// [`NodeInput::OutdateDone`].
    OutdateSelf { mirror: String, generation: u64 },
    /// Send this quorum datagram to voter `to`, on every path it has an address on.
    SendQuorum {
        to: String,
        packet: Box<QuorumPacket>,
    },
    /// Write this to the durable consensus log, with fsync, in order after the writes
    /// before it, off the event loop; report with [`NodeInput::LogWritten`]. The quorum
    /// core holds back what must wait for it.
    PersistLog { batch: PersistBatch, write: u64 },
    /// Arm, pet or disarm the watchdog that backs the leases (`[quorum] watchdog`).
    Watchdog(WatchdogCommand),
    /// Power this node off through its BMC (after the delay); report with
    /// [`NodeInput::PowerFenced`].
    PowerOff(PowerOff),
    /// The answer to [`NodeInput::Control`].
    Reply {
        id: u64,
        result: Result<ControlOutcome, PlacementError>,
    },
}

/// The failovers and switchovers this node carried out for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverTally {
    pub count: u64,
    pub last_reason: MoveReason,
    /// Detection to completion of the latest one, when it completed.
    pub last_duration_ms: Option<u64>,
}

/// The peers whose heartbeats carry a configuration digest other than `ours`, with
/// theirs (sorted by name); nothing when `ours` is empty, and a peer that sent none
/// (an older build) is not compared.
fn config_mismatches<'a>(
    ours: &str,
    peers: impl Iterator<Item = (&'a str, Option<&'a PeerProtocol>)>,
) -> Vec<(String, String)> {
    if ours.is_empty() {
        return Vec::new();
    }
    peers
        .filter_map(|(name, p)| {
            let digest = &p?.config_digest;
            (!digest.is_empty() && digest != ours).then(|| (name.to_string(), digest.clone()))
        })
        .collect()
}

/// One node's decisions.
pub struct NodeCore {
    cfg: NodeConfig,
    boot_id: u64,
    boot_time_ms: u64,
    /// Heartbeat sequence number (replay protection on the receivers).
    seq: u64,
    membership: Membership,
    placement: Placement,
    /// The live peers and their adverts, rebuilt when the membership may have changed.
    peers: Vec<PeerView>,
    peers_stale: bool,
    /// The peers changed since placement last evaluated.
    peers_changed: bool,
    last_advert: Option<NodeAdvert>,
    failovers: BTreeMap<String, FailoverTally>,
    mirrors: Vec<MirrorFacts>,
    /// What each of this node's copies may lack, as its primary last reported.
    recovery: RecoveryPoints,
    /// Per mirror: the primary generation this copy outdated itself for.
    outdated_for: BTreeMap<String, u64>,
    /// Outdates being carried out: (mirror, generation).
    outdating: BTreeSet<(String, u64)>,
    quorum: Option<QuorumCore>,
    /// Quorum datagrams: the header and sequence of ours, and the copies already seen.
    outbox: Outbox,
    dedup: Dedup,
    /// (group, epoch) this node was allowed to start (the previous lease was over).
    start_cleared: BTreeSet<(String, u64)>,
    was_quorate: bool,
    /// Since when each (mirror, lost peer) has held writes (this node's clock).
    pending_since: BTreeMap<(String, String), u64>,
    /// (group, epoch) some node is known to have been cleared to run at: this node
    /// started it, or a peer advertised it running at that epoch.
    ran: BTreeSet<(String, u64)>,
    /// (group, epoch) for which this node reported that its async copy bars a takeover.
    async_noted: BTreeSet<(String, u64)>,
    /// `[quorum] watchdog`: when to arm, pet and disarm.
    watchdog: Option<Watchdog>,
    /// Groups stopping here that may still serve: a top-down stop until it is done
    /// (the floating IP goes last), a lost lease's stop or hold until its fast stop
    /// is over. The watchdog goes on backing them.
    serving_stops: BTreeSet<String>,
    /// Quorum mode: powering previous owners off to skip the lease wait.
    power_fencing: PowerFencing,
    /// The peers whose heartbeats carry another configuration digest, as last reported.
    config_differs: BTreeSet<String>,
}

impl NodeCore {
    /// A core that has heard nobody yet. `history` are the timelines recorded before
    /// this start (they seed the failover tallies).
    pub fn new(cfg: NodeConfig, boot_id: u64, boot_time_ms: u64, history: &[Timeline]) -> Self {
        let membership = Membership::new(MembershipConfig {
            local: cfg.local().to_string(),
            dead_time_ms: cfg.dead_time_ms,
            peers: cfg
                .peers
                .iter()
                .map(|(name, _)| PeerSpec {
                    name: name.clone(),
                    paths: (0..cfg.paths.len() as u8).collect(),
                })
                .collect(),
        });
        let placement = Placement::new(cfg.placement.clone());
        let voters_digest = cfg
            .quorum
            .as_ref()
            .map_or(0, |q| wire::voters_digest(&q.core.voters));
        let outbox = Outbox::new(&cfg.cluster, cfg.local(), voters_digest, boot_id);
        let watchdog = cfg
            .quorum
            .as_ref()
            .and_then(|q| q.watchdog_s)
            .map(Watchdog::new);
        let power_fencing = PowerFencing::new(cfg.fenceable.clone());
        let mut core = NodeCore {
            cfg,
            boot_id,
            boot_time_ms,
            seq: 0,
            membership,
            placement,
            peers: Vec::new(),
            peers_stale: true,
            peers_changed: true,
            last_advert: None,
            failovers: BTreeMap::new(),
            mirrors: Vec::new(),
            recovery: RecoveryPoints::default(),
            outdated_for: BTreeMap::new(),
            outdating: BTreeSet::new(),
            quorum: None,
            outbox,
            dedup: Dedup::default(),
            start_cleared: BTreeSet::new(),
            was_quorate: false,
            pending_since: BTreeMap::new(),
            ran: BTreeSet::new(),
            async_noted: BTreeSet::new(),
            watchdog,
            serving_stops: BTreeSet::new(),
            power_fencing,
            config_differs: BTreeSet::new(),
        };
        for t in history {
            core.tally(t);
        }
        core
    }

    /// Quorum mode: starts the consensus core from what the durable log restored. Until
    /// it has, this node takes and runs nothing.
    pub fn restore_log(&mut self, restored: &Restored, now_ms: u64) -> Result<(), QuorumError> {
        let Some(q) = &self.cfg.quorum else {
            return Ok(());
        };
        self.quorum = Some(QuorumCore::new(
            q.core.clone(),
            restored,
            now_ms,
            self.boot_id,
        )?);
        Ok(())
    }

    /// Takes one input; returns what to do, in order.
    pub fn handle(&mut self, now: Now, input: NodeInput) -> Vec<NodeAction> {
        let mut out = Vec::new();
        match input {
            NodeInput::HeartbeatDue => {
                self.send_heartbeats(now, &mut out);
                self.quorum_call(now, &mut out, |q, now, o| q.lease_round(now, o));
            }
            NodeInput::Quorum(packet) => self.quorum_packet(now, *packet, &mut out),
            NodeInput::LogWritten { write } => {
                self.quorum_call(now, &mut out, |q, now, o| q.persisted(now, write, o));
            }
            NodeInput::Tick => {
                self.membership_input(now, membership::Input::Tick, &mut out);
                self.quorum_call(now, &mut out, |q, now, o| q.tick(now, o));
                self.watch_quorum(now, &mut out);
                self.placement_input(now, Input::Tick, &mut out);
                self.probe_silent_peers(now, &mut out);
                self.fence(now, &mut out);
                self.power_fence_previous_owners(now, &mut out);
                self.watchdog_tick(now, &mut out);
            }
            NodeInput::CheckLiveness => {
                self.membership_input(now, membership::Input::Tick, &mut out)
            }
            NodeInput::Evaluate => self.placement_input(now, Input::Tick, &mut out),
            NodeInput::ProbeSilentPeers => self.probe_silent_peers(now, &mut out),
            NodeInput::Packet { path, hb } => self.membership_input(
                now,
                membership::Input::Packet {
                    path,
                    hb: Box::new(hb),
                },
                &mut out,
            ),
            NodeInput::Malformed { path, reason } => {
                self.membership.record_decode_error(path, reason)
            }
            NodeInput::Resource(input) => {
                match &input {
                    Input::FastStopFailed { .. } => self.fast_stop_failed(),
                    Input::FastStopped { group, ok: true } => {
                        self.serving_stops.remove(group);
                    }
                    _ => {}
                }
                self.placement_input(now, input, &mut out)
            }
            NodeInput::Mirrors(facts) => {
                self.note_pending(now, &facts);
                self.mirrors = facts;
            }
            NodeInput::OutdateDone {
                mirror,
                generation,
                ok,
            } => {
                self.outdating.remove(&(mirror.clone(), generation));
                if ok {
                    self.outdated_for.insert(mirror, generation);
                }
            }
            NodeInput::PowerFenced { node, result } => {
                self.power_fenced(now, &node, result, &mut out);
            }
            NodeInput::Control { id, command } => {
                let result = self.control(now, command, &mut out);
                out.push(NodeAction::Reply { id, result });
            }
            NodeInput::Watchdog(report) => self.watchdog_report(now, report, &mut out),
            NodeInput::Reloaded {
                digest,
                restart_policies,
            } => {
                for p in restart_policies {
                    self.placement.set_restart_policy(&p);
                }
                self.cfg.config_digest = digest;
                self.watch_config_digests(&mut out);
            }
            NodeInput::Leave => {
                self.refresh_peers();
                let gate = self.gate(now);
                self.placement.set_gate(gate);
                let actions = self.placement.leave(now, &self.peers);
                self.carry_out(now, actions, &mut out);
            }
        }
        out
    }

    fn control(
        &mut self,
        now: Now,
        command: ControlCommand,
        out: &mut Vec<NodeAction>,
    ) -> Result<ControlOutcome, PlacementError> {
        self.refresh_peers();
        let gate = self.gate(now);
        self.placement.set_gate(gate);
        let peers = &self.peers;
        match command {
            ControlCommand::Switchover { group, to } => {
                let (target, actions) =
                    self.placement
                        .switchover(now, &group, to.as_deref(), peers)?;
                self.carry_out(now, actions, out);
                Ok(ControlOutcome::SwitchingTo(target))
            }
            ControlCommand::Standby { node, on } => {
                let actions = self.placement.set_standby(now, &node, on, peers)?;
                self.carry_out(now, actions, out);
                match self.committed_standby(&node) {
                    Some(committed) if committed != on => {
                        Ok(ControlOutcome::StandbyProposed { node, on })
                    }
                    _ => Ok(ControlOutcome::Done),
                }
            }
            ControlCommand::Clear { group, node } => {
                let actions = self.placement.clear(now, &group, node.as_deref(), peers)?;
                self.carry_out(now, actions, out);
                Ok(ControlOutcome::Done)
            }
            ControlCommand::Maintenance { group, on } => {
                let actions = self.placement.set_maintenance(now, &group, on, peers)?;
                out.push(NodeAction::Group {
                    group,
                    command: GroupCommand::Maintenance(on),
                });
                self.carry_out(now, actions, out);
                Ok(ControlOutcome::Done)
            }
        }
    }

    /// Rebuilds the live peers' view if the membership may have changed it (every
    /// input that needs it does this; observers may too).
    pub fn refresh_peers(&mut self) {
        if !self.peers_stale {
            return;
        }
        self.peers_stale = false;
        let mut fresh = Vec::with_capacity(self.peers.len());
        for name in self.membership.live_peers() {
            if let Some(a) = self.membership.advert(&name) {
                fresh.push(PeerView {
                    name,
                    advert: a.clone(),
                });
            }
        }
        if fresh != self.peers {
            self.peers = fresh;
            self.peers_changed = true;
        }
    }

    /// What this node advertises: its placement registers and its mirrors' fencing
    /// registers.
    fn advert(&self, now: Now) -> NodeAdvert {
        let mut advert = self.placement.advert(now);
        advert.mirrors = fencing::registers(&self.fencing_view());
        advert.lags = self
            .mirrors
            .iter()
            .filter(|m| m.primary)
            .flat_map(|m| {
                (m.lags.iter())
                    .map(|(peer, bytes, age)| MirrorLag::new(&m.name, peer, *bytes, *age))
            })
            .collect();
        advert
    }

    fn send_heartbeats(&mut self, now: Now, out: &mut Vec<NodeAction>) {
        let advert = self.advert(now);
        for (path, _) in self.cfg.paths.iter().enumerate() {
            let path = path as u8;
            for (peer, on) in &self.cfg.peers {
                if !on.contains(&path) {
                    continue;
                }
                self.seq += 1;
                let peer_max = self.membership.protocol(peer).map(|p| p.max_version);
                let hb = Heartbeat {
                    version: packet::version_for(packet::MAX_VERSION, peer_max),
                    max_version: packet::MAX_VERSION,
                    config_digest: self.cfg.config_digest.clone(),
                    cluster: self.cfg.cluster.clone(),
                    node: self.cfg.local().to_string(),
                    boot_id: self.boot_id,
                    boot_time_ms: self.boot_time_ms,
                    seq: self.seq,
                    path,
                    sent_ms: now.mono_ms,
                    echo: self.membership.echo_for(peer, path, now.mono_ms),
                    advert: advert.clone(),
                };
                out.push(NodeAction::Send {
                    path,
                    peer: peer.clone(),
                    hb: Box::new(hb),
                });
            }
        }
        self.last_advert = Some(advert);
    }

    fn membership_input(&mut self, now: Now, input: membership::Input, out: &mut Vec<NodeAction>) {
        let heard = match &input {
            membership::Input::Packet { hb, .. } => Some((hb.node.clone(), hb.advert.lags.clone())),
            membership::Input::Tick => None,
        };
        let packet = heard.is_some();
        let events = self.membership.handle(now.mono_ms, input);
        if let Some((from, lags)) = heard {
            let rejected = events
                .iter()
                .any(|e| matches!(e, MembershipEvent::Rejected { .. }));
            if !rejected {
                let me = self.cfg.local().to_string();
                self.recovery.heard(&me, &from, &lags, now.wall_ms);
            }
        }
        if packet || !events.is_empty() {
            self.peers_stale = true;
        }
        for ev in events {
            self.membership_event(now, ev, out);
        }
        if packet {
            self.watch_config_digests(out);
        }
    }

    /// The peers whose newest heartbeat carries another configuration digest than this
    /// node's, with theirs; empty without a digest of our own. Peers of an older build
    /// (version 1, no digest) are not compared.
    pub fn config_mismatches(&self) -> Vec<(String, String)> {
        let peers = self.cfg.peers.iter().map(|(name, _)| {
            let name = name.as_str();
            (name, self.membership.protocol(name))
        });
        config_mismatches(&self.cfg.config_digest, peers)
    }

    /// Reports each peer whose digest starts or stops differing from ours, once.
    fn watch_config_digests(&mut self, out: &mut Vec<NodeAction>) {
        let now: BTreeMap<String, String> = self.config_mismatches().into_iter().collect();
        for (peer, theirs) in &now {
            if self.config_differs.insert(peer.clone()) {
                out.push(NodeAction::Emit {
                    kind: EventKind::ConfigMismatch,
                    fields: fields([
                        ("peer", peer.clone()),
                        ("digest", theirs.clone()),
                        ("local_digest", self.cfg.config_digest.clone()),
                    ]),
                });
            }
        }
        let agreed: Vec<String> = self
            .config_differs
            .iter()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for peer in agreed {
            self.config_differs.remove(&peer);
            out.push(NodeAction::Emit {
                kind: EventKind::ConfigAgreed,
                fields: fields([("peer", peer), ("digest", self.cfg.config_digest.clone())]),
            });
        }
    }

    fn membership_event(&mut self, now: Now, ev: MembershipEvent, out: &mut Vec<NodeAction>) {
        let (kind, f) = match ev {
            MembershipEvent::PathUp { peer, path } => {
                (EventKind::PathUp, self.path_fields(&peer, path, None))
            }
            MembershipEvent::PathDown {
                peer,
                path,
                silent_ms,
            } => (
                EventKind::PathDown,
                self.path_fields(&peer, path, Some(silent_ms)),
            ),
            MembershipEvent::NodeUp { peer, boot_id } => (
                EventKind::NodeUp,
                fields([("peer", peer), ("boot_id", format!("{boot_id:016x}"))]),
            ),
            MembershipEvent::NodeDown { peer, silent_ms } => {
                out.push(NodeAction::Emit {
                    kind: EventKind::NodeDown,
                    fields: fields([("peer", peer.clone()), ("silent_ms", silent_ms.to_string())]),
                });
                self.report_recovery_points(&peer, out);
                // The membership is the authority on death: a replication link to a
                // powered-off node may not notice for a long while (no RST). Drop it
                // now, before placement may promote our copy.
                out.push(NodeAction::PeerDead { peer: peer.clone() });
                self.placement_input(now, Input::NodeDown { peer, silent_ms }, out);
                return;
            }
            MembershipEvent::NodeRestarted {
                peer,
                old_boot_id,
                new_boot_id,
            } => (
                EventKind::NodeRestarted,
                fields([
                    ("peer", peer),
                    ("old_boot_id", format!("{old_boot_id:016x}")),
                    ("new_boot_id", format!("{new_boot_id:016x}")),
                ]),
            ),
            MembershipEvent::Rejected { peer, path, reason } => {
                tracing::debug!(?peer, path, reason, "heartbeat rejected");
                return;
            }
        };
        out.push(NodeAction::Emit { kind, fields: f });
    }

    /// The primary `peer` died: reports what each copy of its mirrors held here may
    /// lack, as its last heartbeat said (after a site disaster, the DR copy's recovery
    /// point).
    fn report_recovery_points(&self, peer: &str, out: &mut Vec<NodeAction>) {
        for p in self.recovery.reported_by(peer) {
            out.push(NodeAction::Emit {
                kind: EventKind::RecoveryPoint,
                fields: fields([
                    ("mirror", p.mirror.clone()),
                    ("peer", peer.to_string()),
                    ("bytes", p.lag_bytes.to_string()),
                    ("duration_ms", p.lag_ms.to_string()),
                    ("reported_ms", p.reported_ms.to_string()),
                ]),
            });
        }
    }

    /// What each copy this node holds as a secondary may lack, as its primary last
    /// reported.
    pub fn recovery_points(&self) -> Vec<RecoveryPoint> {
        let primary_here =
            |mirror: &str| self.mirrors.iter().any(|m| m.name == mirror && m.primary);
        self.recovery
            .all()
            .filter(|p| !primary_here(&p.mirror))
            .cloned()
            .collect()
    }

    fn path_fields(&self, peer: &str, path: u8, silent_ms: Option<u64>) -> Fields {
        let name = self.cfg.paths.get(path as usize).cloned();
        let mut f = fields([
            ("peer", peer.to_string()),
            ("path", name.unwrap_or_else(|| path.to_string())),
        ]);
        if let Some(s) = silent_ms {
            f.insert("silent_ms".into(), s.to_string());
        }
        f
    }

    /// Peers silent on every path for most of the dead time get a speculative
    /// floating-IP probe (see `placement::policy::Input::PeerSilent`).
    fn probe_silent_peers(&mut self, now: Now, out: &mut Vec<NodeAction>) {
        let silent = self
            .membership
            .nearly_dead_peers(now.mono_ms, self.cfg.probe_lead_ms);
        for peer in silent {
            self.placement_input(now, Input::PeerSilent { peer }, out);
        }
    }

    fn placement_input(&mut self, now: Now, input: Input, out: &mut Vec<NodeAction>) {
        self.refresh_peers();
        let gate = self.gate(now);
        self.placement.set_gate(gate);
        let actions = self.placement.handle(now, input, &self.peers);
        self.peers_changed = false;
        self.carry_out(now, actions, out);
    }

    fn carry_out(&mut self, now: Now, actions: Vec<Action>, out: &mut Vec<NodeAction>) {
        for a in actions {
            let (group, command) = match a {
                Action::Emit { kind, fields } => {
                    out.push(NodeAction::Emit { kind, fields });
                    continue;
                }
                Action::RecordTimeline(t) => {
                    self.tally(&t);
                    out.push(NodeAction::RecordTimeline(t));
                    continue;
                }
                Action::Propose(p) => {
                    self.propose(now, p, out);
                    continue;
                }
                Action::ProbeVip { group } => (group, GroupCommand::ProbeVip),
                Action::StartGroup { group, epoch } => {
                    let epoch = if self.cfg.quorum.is_some() {
                        OwnershipEpoch(epoch)
                    } else {
                        OwnershipEpoch::default()
                    };
                    (group, GroupCommand::Start { epoch })
                }
                Action::StopGroup { group, mode } => {
                    // Backed until its fast stop is over (tests/quorum_sim.rs seeds
                    // 528 and 2960: disarmed at once, a node paused in its fast stop
                    // served past its lease).
                    if mode != StopMode::AfterHold {
                        self.serving_stops.insert(group.clone());
                    }
                    (group, GroupCommand::Stop(mode))
                }
                Action::FastStopGroup { group } => {
                    self.serving_stops.insert(group.clone());
                    (group, GroupCommand::FastStop)
                }
                Action::ResumeGroup { group, epoch } => (
                    group,
                    GroupCommand::Resume {
                        epoch: OwnershipEpoch(epoch),
                    },
                ),
                Action::RestartResource { group, resource } => {
                    (group, GroupCommand::Restart { resource })
                }
            };
            out.push(NodeAction::Group { group, command });
        }
        // A changed advert goes out at once: hand-offs should not wait for a heartbeat.
        let advert = self.advert(now);
        if (self.last_advert.as_ref()).is_none_or(|last| last.differs_beyond_lags(&advert)) {
            self.send_heartbeats(now, out);
        }
    }

    /// Adds a finished timeline to its group's tally (first placements don't count).
    fn tally(&mut self, t: &Timeline) {
        if t.reason == MoveReason::Initial {
            return;
        }
        let s = self
            .failovers
            .entry(t.group.clone())
            .or_insert(FailoverTally {
                count: 0,
                last_reason: t.reason,
                last_duration_ms: None,
            });
        s.count += 1;
        s.last_reason = t.reason;
        s.last_duration_ms = t.completed_ms.map(|c| c.saturating_sub(t.detected_ms));
    }

    /// Each local mirror's fencing view.
    fn fencing_view(&self) -> Vec<LocalFencing> {
        self.mirrors
            .iter()
            .map(|m| LocalFencing {
                name: m.name.clone(),
                primary: m.primary,
                pending: m.pending.clone(),
                outdated: self.outdated_for.get(&m.name).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The fencing decisions (see `mirror::fencing`).
    fn fence(&mut self, now: Now, out: &mut Vec<NodeAction>) {
        if self.mirrors.is_empty() {
            return;
        }
        self.refresh_peers();
        let local = self.fencing_view();
        let me = self.cfg.local();
        let by_log = self.cfg.quorum.is_some();
        let mut decided = fencing::decide(me, &local, &self.peers, &self.outdating, !by_log);
        if by_log {
            self.fence_through_log(now, &mut decided, out);
        }
        for action in decided {
            match action {
                FenceAction::PeerOutdated { mirror, peer } => {
                    out.push(NodeAction::PeerOutdated { mirror, peer })
                }
                FenceAction::OutdateSelf { mirror, generation } => {
                    self.outdating.insert((mirror.clone(), generation));
                    out.push(NodeAction::OutdateSelf { mirror, generation });
                }
            }
        }
    }

    // -- read access, for the status projection and the runtime ---------------------

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// Heartbeats sent since start.
    pub fn heartbeats_sent(&self) -> u64 {
        self.seq
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The live peers and their adverts, as placement last saw them.
    pub fn peers(&self) -> &[PeerView] {
        &self.peers
    }

    /// The peers changed since placement last evaluated.
    pub fn peers_changed(&mut self) -> bool {
        self.refresh_peers();
        self.peers_changed
    }

    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.membership.peer_status()
    }

    pub fn paths(&self) -> Vec<PathStatus> {
        self.membership.paths()
    }

    /// Every group's status as this node sees it.
    pub fn groups(&self, now: Now) -> Vec<GroupStatus> {
        self.placement.status(now, &self.peers)
    }

    pub fn failovers(&self) -> &BTreeMap<String, FailoverTally> {
        &self.failovers
    }

    /// Some group is still running or changing here (shutdown waits for it).
    pub fn busy(&self, now: Now) -> bool {
        self.groups(now).iter().any(|g| {
            matches!(
                g.local_state,
                LocalGroupState::Running | LocalGroupState::Starting | LocalGroupState::Stopping
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::packet::MirrorRegister;
    use crate::config::Switchback;
    use crate::placement::policy::GroupPolicy;
    use crate::quorum::lease::LeaseConfig;

    /// n1 of n1..n3 with one group; n3 has an address on the first path only.
    fn core() -> NodeCore {
        let cfg = NodeConfig {
            cluster: "c".into(),
            paths: vec!["hb1".into(), "hb2".into()],
            peers: vec![("n2".into(), vec![0, 1]), ("n3".into(), vec![0])],
            dead_time_ms: 1000,
            probe_lead_ms: 300,
            placement: PlacementConfig {
                local: "n1".into(),
                nodes: vec![("n1".into(), 1), ("n2".into(), 2), ("n3".into(), 3)],
                groups: vec![GroupPolicy {
                    name: "web".into(),
                    allowed: Vec::new(),
                    exclusive: false,
                    switchback: Switchback::Manual,
                    max_restarts: 3,
                    window_ms: 60_000,
                    has_vip: false,
                    hold_on_lease_loss: false,
                }],
                startup_grace_ms: 1400,
                probe_before_takeover: false,
                probe_retry_ms: 2000,
                probe_fresh_ms: 600,
            },
            quorum: None,
            group_mirrors: BTreeMap::new(),
            fenceable: BTreeMap::new(),
            sync_peers: BTreeMap::new(),
            sync_links: BTreeMap::new(),
            config_digest: String::new(),
        };
        NodeCore::new(cfg, 7, 1_000, &[])
    }

    /// n1 of n1..n3 in quorum mode, with a log restored from a snapshot of `reg`.
    fn quorum_core(reg: &crate::quorum::decision::Register) -> NodeCore {
        quorum_core_with(reg, None)
    }

    /// [`quorum_core`] with `[quorum] watchdog` of `watchdog_s` seconds.
    fn quorum_core_with(
        reg: &crate::quorum::decision::Register,
        watchdog_s: Option<u64>,
    ) -> NodeCore {
        let mut c = core();
        let mut cfg = c.cfg.clone();
        let voters: Vec<String> = vec!["n1".into(), "n2".into(), "n3".into()];
        cfg.quorum = Some(QuorumSettings {
            core: QuorumConfig {
                local: "n1".into(),
                voters: voters.clone(),
                witness: None,
                tick_ms: 100,
                election_ticks: 10,
                heartbeat_ticks: 2,
                lease: LeaseConfig {
                    lease_ms: 1500,
                    drift_ppm: 10_000,
                    dead_time_ms: 1000,
                    report_fresh_ms: 500,
                },
            },
            stop_margin_ms: 300,
            reachable_ms: 1000,
            watchdog_s,
        });
        cfg.group_mirrors.insert("web".into(), vec!["data".into()]);
        // n1-n2 replicate synchronously, n3 is an async copy.
        cfg.sync_peers
            .insert("data".into(), BTreeSet::from(["n2".to_string()]));
        cfg.sync_links.insert(
            "data".into(),
            BTreeSet::from([("n1".to_string(), "n2".to_string())]),
        );
        c = NodeCore::new(cfg, 7, 1_000, &[]);
        let restored = Restored {
            snapshot: Some(crate::quorum::records::SnapshotRec {
                index: 3,
                term: 1,
                voters: vec![1, 2, 3],
                data: reg.encode(),
            }),
            ..Restored::default()
        };
        c.restore_log(&restored, 0).unwrap();
        c
    }

    /// n1 took `web` over from n2 (epoch 2), having seen n2 run it at epoch 1.
    fn taken_over_from_n2(fenceable: bool) -> NodeCore {
        use crate::cluster::packet::{Assignment, GroupAdvert};
        use crate::quorum::decision::Register;
        let mut reg = Register::default();
        for (owner, epoch) in [("n2", 1), ("n1", 2)] {
            own_web(&mut reg, owner, epoch);
        }
        let mut c = quorum_core(&reg);
        if fenceable {
            c.power_fencing = PowerFencing::new(BTreeMap::from([("n2".to_string(), 0)]));
        }
        let advert = NodeAdvert {
            priority: 2,
            groups: vec![GroupAdvert {
                name: "web".into(),
                local: LocalGroupState::Running,
                blocked: false,
                maintenance: false,
                assignment: Some(Assignment {
                    owner: "n2".into(),
                    epoch: 1,
                }),
            }],
            ..NodeAdvert::default()
        };
        c.handle(at(100), heartbeat_from("n2", 1, 100, advert));
        c
    }

    fn power_offs(actions: &[NodeAction]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                NodeAction::PowerOff(p) => Some(p.node.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_confirmed_power_off_of_the_previous_owner_clears_the_start_at_once() {
        let mut c = taken_over_from_n2(true);
        let out = c.handle(at(200), NodeInput::Tick);
        assert_eq!(power_offs(&out), ["n2"]);
        assert!(
            !c.start_cleared.contains(&("web".into(), 2)),
            "the lease wait"
        );
        // Asked once per epoch.
        assert!(power_offs(&c.handle(at(300), NodeInput::Tick)).is_empty());
        let out = c.handle(
            at(400),
            NodeInput::PowerFenced {
                node: "n2".into(),
                result: PowerFenceResult::Off {
                    method: "redfish".into(),
                    elapsed_ms: 90,
                },
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            NodeAction::Emit {
                kind: EventKind::FenceSucceeded,
                ..
            }
        )));
        assert!(
            c.start_cleared.contains(&("web".into(), 2)),
            "no lease wait"
        );
    }

    #[test]
    fn a_failed_power_off_leaves_the_lease_wait_and_nothing_fenceable_asks_nothing() {
        let mut c = taken_over_from_n2(true);
        c.handle(at(200), NodeInput::Tick);
        let out = c.handle(
            at(400),
            NodeInput::PowerFenced {
                node: "n2".into(),
                result: PowerFenceResult::Failed {
                    reason: "redfish: the BMC refused the credentials".into(),
                },
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            NodeAction::Emit {
                kind: EventKind::FenceFailed,
                ..
            }
        )));
        assert!(!c.start_cleared.contains(&("web".into(), 2)));
        let mut c = taken_over_from_n2(false);
        assert!(power_offs(&c.handle(at(200), NodeInput::Tick)).is_empty());
    }

    #[test]
    fn with_a_quorum_a_copy_the_log_outdated_may_not_take_its_group() {
        use crate::quorum::decision::{Decision, Register};
        let mut reg = Register::default();
        reg.apply(
            1,
            Decision::Own {
                group: "web".into(),
                owner: "n2".into(),
                epoch: 1,
                handoff: false,
                copies_seen: None,
            },
        );
        // n1 and n3 silent on n2 long enough: a takeover would be allowed...
        let mut c = quorum_core(&reg);
        assert!(!c.gate(at(5_000)).unwrap().may_take_over.contains("web"));
        n3_silent_on_n2(&mut c);
        let gate = c.gate(at(5_000)).unwrap();
        assert!(gate.may_take_over.contains("web"));
        // ... but not by a node whose copy of the group's mirror the log outdated.
        reg.apply(
            2,
            Decision::Outdated {
                mirror: "data".into(),
                node: "n1".into(),
                generation: 9,
            },
        );
        let mut c = quorum_core(&reg);
        n3_silent_on_n2(&mut c);
        let gate = c.gate(at(5_000)).unwrap();
        assert!(!gate.may_take_over.contains("web"));
        assert_eq!(gate.registers["web"].owner, "n2");
        // A lone cold boot takes nothing: a group with no owner yet needs every node.
        let mut c = quorum_core(&Register::default());
        assert!(!c.gate(at(5_000)).unwrap().may_take_over.contains("web"));
    }

    /// n1's copy is async to n3's: if n3, the owner, dies, n1 may lack writes n3
    /// acknowledged, so it does not take the group over (it stays down) however long
    /// the majority has been silent on n3. From n2, its sync partner, it does.
    #[test]
    fn with_a_quorum_an_async_copy_never_takes_its_group_over() {
        use crate::quorum::decision::{Decision, Register};
        for (owner, takes) in [("n3", false), ("n2", true)] {
            let mut reg = Register::default();
            let own = Decision::Own {
                group: "web".into(),
                owner: owner.into(),
                epoch: 1,
                handoff: false,
                copies_seen: None,
            };
            reg.apply(1, own);
            let mut c = quorum_core(&reg);
            let quiet = crate::quorum::wire::LeaseReport {
                group: "web".into(),
                epoch: 1,
                since_current_ms: 5_000,
                quiet_ms: 5_000,
            };
            let other = if owner == "n3" { "n2" } else { "n3" };
            let p = QuorumPacket {
                version: 1,
                max_version: 1,
                cluster: "c".into(),
                from: other.into(),
                voters_digest: c.outbox.voters_digest(),
                boot_id: 1,
                seq: 1,
                sent_ms: 5_000,
                msgs: vec![crate::quorum::wire::QuorumMsg::Report(vec![quiet])],
            };
            c.handle(at(5_000), NodeInput::Quorum(Box::new(p)));
            let gate = c.gate(at(5_000)).unwrap();
            assert_eq!(gate.may_take_over.contains("web"), takes, "owner {owner}");
        }
    }

    /// A copy the log outdated that comes back UpToDate in its own eyes (cut off while
    /// the primary went on, healed after the primary died) is not up to date again
    /// because its generation compares higher: generations are random identifiers.
    /// It outdates itself; only a primary that has it in sync clears the mark.
    #[test]
    fn with_a_quorum_an_outdated_copy_is_not_cleared_by_its_generation() {
        use crate::quorum::decision::{Decision, Register};
        let mut reg = Register::default();
        reg.apply(
            1,
            Decision::Outdated {
                mirror: "data".into(),
                node: "n1".into(),
                generation: 9,
            },
        );
        let facts = NodeInput::Mirrors(vec![MirrorFacts {
            name: "data".into(),
            primary: false,
            pending: Vec::new(),
            up_to_date: true,
            generation: 10,
            in_sync: Vec::new(),
            lags: Vec::new(),
        }]);
        let outdates = |out: &[NodeAction]| {
            out.iter()
                .filter(|a| matches!(a, NodeAction::OutdateSelf { mirror, generation: 9 } if mirror == "data"))
                .count()
        };
        let mut c = quorum_core(&reg);
        c.handle(at(10), facts);
        assert_eq!(outdates(&c.handle(at(20), NodeInput::Tick)), 1);
    }

    /// A heartbeat of `version` from a peer whose build speaks up to `max`.
    fn protocol_heartbeat(peer: &str, seq: u64, version: u8, max: u8, digest: &str) -> NodeInput {
        let NodeInput::Packet { path, mut hb } =
            heartbeat_from(peer, seq, seq * 10, NodeAdvert::default())
        else {
            unreachable!()
        };
        hb.version = version;
        hb.max_version = max;
        hb.config_digest = digest.into();
        NodeInput::Packet { path, hb }
    }

    #[test]
    fn a_peer_whose_configuration_differs_is_an_event_and_a_mismatch_in_both_modes() {
        for mut c in [core(), quorum_core(&Default::default())] {
            c.cfg.config_digest = "aaaa".into();
            let out = c.handle(at(10), protocol_heartbeat("n2", 1, 2, 2, "aaaa"));
            assert_eq!(emitted(&out, EventKind::ConfigMismatch), 0);
            let out = c.handle(at(20), protocol_heartbeat("n3", 1, 2, 2, "bbbb"));
            assert_eq!(emitted(&out, EventKind::ConfigMismatch), 1);
            assert_eq!(c.config_mismatches(), vec![("n3".into(), "bbbb".into())]);
            // Reported once, not on every heartbeat.
            let out = c.handle(at(30), protocol_heartbeat("n3", 2, 2, 2, "bbbb"));
            assert_eq!(emitted(&out, EventKind::ConfigMismatch), 0);
            // n3's file fixed (and n3 restarted): it agrees again, once.
            let out = c.handle(at(40), protocol_heartbeat("n3", 3, 2, 2, "aaaa"));
            assert_eq!(emitted(&out, EventKind::ConfigAgreed), 1);
            assert!(c.config_mismatches().is_empty());
            // An older build sends no digest: nothing to compare.
            let out = c.handle(at(50), protocol_heartbeat("n3", 4, 1, 1, ""));
            assert_eq!(emitted(&out, EventKind::ConfigMismatch), 0);
            assert!(c.config_mismatches().is_empty());
        }
        let mut c = core();
        c.handle(at(10), protocol_heartbeat("n3", 1, 2, 2, "bbbb"));
        assert!(c.config_mismatches().is_empty(), "no digest of its own");
    }

    /// A reload that brings this node to the peers' file (with nothing left for a
    /// restart) ends the mismatch at once, and the heartbeats carry the new digest.
    #[test]
    fn a_reloaded_digest_is_compared_and_advertised_from_then_on() {
        let mut c = core();
        c.cfg.config_digest = "aaaa".into();
        let out = c.handle(at(10), protocol_heartbeat("n3", 1, 2, 2, "bbbb"));
        assert_eq!(emitted(&out, EventKind::ConfigMismatch), 1);
        let reloaded = NodeInput::Reloaded {
            digest: "bbbb".into(),
            restart_policies: Vec::new(),
        };
        let out = c.handle(at(20), reloaded);
        assert_eq!(emitted(&out, EventKind::ConfigAgreed), 1);
        assert!(c.config_mismatches().is_empty());
        let sent = c.handle(at(30), NodeInput::HeartbeatDue);
        assert!(sent
            .iter()
            .any(|a| matches!(a, NodeAction::Send { hb, .. } if hb.config_digest == "bbbb")));
    }

    #[test]
    fn heartbeats_go_out_in_each_peers_version_and_carry_the_digest() {
        let mut c = core();
        c.cfg.config_digest = "aaaa".into();
        let versions = |c: &mut NodeCore, ms| -> Vec<(String, u8)> {
            c.handle(at(ms), NodeInput::HeartbeatDue)
                .iter()
                .filter_map(|a| match a {
                    NodeAction::Send { peer, hb, path: 0 } => {
                        assert_eq!(
                            (hb.max_version, hb.config_digest.as_str()),
                            (packet::MAX_VERSION, "aaaa")
                        );
                        Some((peer.clone(), hb.version))
                    }
                    _ => None,
                })
                .collect()
        };
        let max = packet::MAX_VERSION;
        // Not heard yet: this build's newest.
        assert_eq!(
            versions(&mut c, 0),
            vec![("n2".into(), max), ("n3".into(), max)]
        );
        // n2 runs an older build (version 1 only), n3 a newer one.
        c.handle(at(10), protocol_heartbeat("n2", 1, 1, 1, ""));
        c.handle(at(10), protocol_heartbeat("n3", 1, max, max + 1, "aaaa"));
        assert_eq!(
            versions(&mut c, 20),
            vec![("n2".into(), 1), ("n3".into(), max)]
        );
    }

    /// A lease report from n3: silent on n2 (the owner of `web` at epoch 1) for 5 s.
    fn n3_silent_on_n2(c: &mut NodeCore) {
        let p = QuorumPacket {
            version: 1,
            max_version: 1,
            cluster: "c".into(),
            from: "n3".into(),
            voters_digest: c.outbox.voters_digest(),
            boot_id: 1,
            seq: 1,
            sent_ms: 5_000,
            msgs: vec![crate::quorum::wire::QuorumMsg::Report(vec![
                crate::quorum::wire::LeaseReport {
                    group: "web".into(),
                    epoch: 1,
                    since_current_ms: 5_000,
                    quiet_ms: 5_000,
                },
            ])],
        };
        c.handle(at(5_000), NodeInput::Quorum(Box::new(p)));
    }

    fn emitted(out: &[NodeAction], kind: EventKind) -> usize {
        out.iter()
            .filter(|a| matches!(a, NodeAction::Emit { kind: k, .. } if *k == kind))
            .count()
    }

    fn owned_by_n2() -> crate::quorum::decision::Register {
        let mut reg = crate::quorum::decision::Register::default();
        own_web(&mut reg, "n2", 1);
        reg
    }

    /// Applies a takeover of `web` by `owner` at `epoch` (log index `epoch`) to `reg`.
    fn own_web(reg: &mut crate::quorum::decision::Register, owner: &str, epoch: u64) {
        reg.apply(
            epoch,
            crate::quorum::decision::Decision::Own {
                group: "web".into(),
                owner: owner.into(),
                epoch,
                handoff: false,
                copies_seen: None,
            },
        );
    }

    #[test]
    fn with_a_quorum_standby_is_the_logs_and_a_peer_advert_claiming_it_changes_nothing() {
        use crate::cluster::packet::StandbySetting;
        let mut reg = owned_by_n2();
        reg.apply(
            2,
            crate::quorum::decision::Decision::Standby {
                node: "n3".into(),
                on: true,
            },
        );
        let mut c = quorum_core(&reg);
        // n2 advertises a register with n1 in standby, at a high epoch.
        let advert = NodeAdvert {
            standby_register: vec![StandbySetting {
                node: "n1".into(),
                standby: true,
                epoch: 99,
            }],
            ..NodeAdvert::default()
        };
        c.handle(at(4_000), heartbeat_from("n2", 1, 4_000, advert));
        n3_silent_on_n2(&mut c);
        c.handle(at(5_000), NodeInput::Evaluate);
        assert!(!c.placement().standby(), "the advert is not merged");
        assert!(c.placement().is_standby("n3"), "the log's standby holds");
        assert_eq!(c.committed_standby("n1"), Some(false));
        assert!(c.gate(at(5_000)).unwrap().may_take_over.contains("web"));
        // This lone core knows no leader: not quorate, so the request is refused at
        // once rather than proposed into nothing.
        let command = ControlCommand::Standby {
            node: "n1".into(),
            on: true,
        };
        let out = c.handle(at(5_000), NodeInput::Control { id: 7, command });
        match out.last() {
            Some(NodeAction::Reply { id: 7, result }) => assert!(
                matches!(result, Err(PlacementError::NoQuorumForNode(n)) if n == "n1"),
                "no leader known: refused at once, {result:?}"
            ),
            other => panic!("no reply: {other:?}"),
        }
        assert!(!c.placement().standby());
    }

    #[test]
    fn an_automatic_move_goes_only_to_a_sync_copy_of_the_last_primary() {
        use crate::quorum::decision::Register;
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        // n1 served epoch 1; n2 (its sync copy) took over at epoch 2 and never ran it
        // (its start failed): n3, an async copy of n1, may lack n1's acknowledged
        // writes, so a hand-off from n2 must not pick it.
        let mut reg = Register::default();
        own_web(&mut reg, "n1", 1);
        own_web(&mut reg, "n2", 2);
        let mut c = quorum_core(&reg);
        let reg = c.quorum.as_ref().unwrap().register().clone();
        assert_eq!(c.complete_copies("web", &reg), Some(set(&["n1", "n2"])));
        // Once n2 has run epoch 2, it is the last primary (n1 copies it in sync).
        c.ran.insert(("web".into(), 2));
        assert_eq!(c.complete_copies("web", &reg), Some(set(&["n1", "n2"])));
        // A copy the log outdated is not complete.
        let mut outdated = reg.clone();
        outdated.outdated.insert(("data".into(), "n1".into()), 7);
        assert_eq!(c.complete_copies("web", &outdated), Some(set(&["n2"])));
        // Groups without mirrors are not restricted.
        c.cfg.group_mirrors.clear();
        assert_eq!(c.complete_copies("web", &reg), None);
    }

    #[test]
    fn the_fast_stop_begins_w_plus_200_ms_before_the_lease_ends_with_a_watchdog() {
        let settings = |watchdog_s| QuorumSettings {
            core: quorum_core(&Default::default())
                .cfg
                .quorum
                .clone()
                .unwrap()
                .core,
            stop_margin_ms: 300,
            reachable_ms: 1000,
            watchdog_s,
        };
        assert_eq!(settings(None).fast_stop_margin_ms(), 300);
        assert_eq!(settings(Some(1)).fast_stop_margin_ms(), 1200);
        assert_eq!(settings(Some(3)).fast_stop_margin_ms(), 3200);
        // The pets end 100 ms later: the fast stop runs while the device is petted.
        assert_eq!(
            settings(Some(1)).fast_stop_margin_ms(),
            1000 + watchdog::PET_SPARE_MS + FAST_STOP_BEFORE_PETS_END_MS
        );
    }

    #[test]
    fn an_unavailable_watchdog_lets_the_node_take_over_nothing_until_it_opens_again() {
        let mut c = quorum_core_with(&owned_by_n2(), Some(1));
        n3_silent_on_n2(&mut c);
        assert!(c.gate(at(5_000)).unwrap().may_take_over.contains("web"));
        let fault = WatchdogFault {
            device: "/dev/watchdog0".into(),
            op: WatchdogOp::Open,
            error: "No such file or directory (os error 2)".into(),
        };
        let failed = || NodeInput::Watchdog(WatchdogReport::Failed(fault.clone()));
        let out = c.handle(at(5_000), failed());
        assert_eq!(emitted(&out, EventKind::WatchdogUnavailable), 1);
        let ev = out.iter().find_map(|a| match a {
            NodeAction::Emit {
                kind: EventKind::WatchdogUnavailable,
                fields,
            } => Some(fields),
            _ => None,
        });
        let ev = ev.expect("event");
        assert_eq!(ev["device"], "/dev/watchdog0");
        assert!(ev["error"].contains("os error 2"));
        let out = c.handle(at(5_010), failed());
        assert_eq!(emitted(&out, EventKind::WatchdogUnavailable), 0, "once");
        assert_eq!(c.watchdog_fault(), Some(&fault));
        let gate = c.gate(at(5_010)).unwrap();
        assert!(gate.may_take_over.is_empty() && gate.may_run.is_empty());
        assert!(
            c.placement().advert(at(5_010)).standby,
            "peers see it ineligible"
        );
        let out = c.handle(at(5_020), NodeInput::Evaluate);
        assert!(
            !out.iter().any(|a| matches!(a, NodeAction::Group { .. })),
            "no claim, no start: {out:?}"
        );
        // The retry opened it: back to normal.
        let out = c.handle(at(5_030), NodeInput::Watchdog(WatchdogReport::Available));
        assert_eq!(emitted(&out, EventKind::WatchdogAvailable), 1);
        assert_eq!(c.watchdog_fault(), None);
        assert!(c.gate(at(5_030)).unwrap().may_take_over.contains("web"));
        assert!(!c.placement().advert(at(5_030)).standby);
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            wall_ms: 1_700_000_000_000 + ms,
        }
    }

    /// The facts of mirror `vol`, up to date at generation 1, as primary or secondary.
    fn vol_facts(primary: bool) -> MirrorFacts {
        MirrorFacts {
            name: "vol".into(),
            primary,
            pending: Vec::new(),
            up_to_date: true,
            generation: 1,
            in_sync: Vec::new(),
            lags: Vec::new(),
        }
    }

    fn heartbeat_from(peer: &str, seq: u64, ms: u64, advert: NodeAdvert) -> NodeInput {
        NodeInput::Packet {
            path: 0,
            hb: Heartbeat {
                version: 1,
                max_version: 1,
                config_digest: String::new(),
                cluster: "c".into(),
                node: peer.into(),
                boot_id: 9,
                boot_time_ms: 500,
                seq,
                path: 0,
                sent_ms: ms,
                echo: None,
                advert,
            },
        }
    }

    fn sends(actions: &[NodeAction]) -> Vec<(u8, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                NodeAction::Send { path, peer, .. } => Some((*path, peer.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn heartbeats_go_to_every_peer_on_every_path_it_has_an_address_on() {
        let mut c = core();
        let out = c.handle(at(0), NodeInput::HeartbeatDue);
        assert_eq!(
            sends(&out),
            [(0, "n2".into()), (0, "n3".into()), (1, "n2".into())]
        );
        assert_eq!(c.heartbeats_sent(), 3);
    }

    /// The runtime compared the placement advert with the last advert sent, which also
    /// carries the mirrors' fencing registers: with any mirror configured they always
    /// differed, so every 10 ms evaluation sent a full round of heartbeats.
    #[test]
    fn a_node_with_mirrors_sends_heartbeats_only_when_due_or_changed() {
        let mut c = core();
        let facts = vec![vol_facts(true)];
        c.handle(at(0), NodeInput::Mirrors(facts));
        assert_eq!(sends(&c.handle(at(0), NodeInput::HeartbeatDue)).len(), 3);
        for ms in [10, 20, 30] {
            let out = c.handle(at(ms), NodeInput::Tick);
            assert!(
                sends(&out).is_empty(),
                "tick at {ms} ms sent {:?}",
                sends(&out)
            );
        }
        // A new outdate request changes the advert: it goes out at once.
        let pending = vec![MirrorFacts {
            pending: vec![("n2".into(), 5)],
            ..vol_facts(true)
        }];
        c.handle(at(40), NodeInput::Mirrors(pending.clone()));
        let out = c.handle(at(40), NodeInput::Resource(Input::Tick));
        assert_eq!(sends(&out).len(), 3);
        // A new lag changes with every write: it waits for the next heartbeat.
        let mut lagging = pending;
        lagging[0].lags = vec![("n3".into(), 65536, 120)];
        c.handle(at(50), NodeInput::Mirrors(lagging));
        assert!(sends(&c.handle(at(50), NodeInput::Resource(Input::Tick))).is_empty());
        let out = c.handle(at(60), NodeInput::HeartbeatDue);
        let NodeAction::Send { hb, .. } = &out[0] else {
            panic!("no heartbeat: {out:?}")
        };
        assert_eq!(hb.advert.lags, [MirrorLag::new("vol", "n3", 65536, 120)]);
    }

    /// Site disaster: the primary's last heartbeat said how far behind this copy was.
    /// When the primary is declared dead, that report is the copy's recovery point: an
    /// event (and so a trap) and the status say it.
    #[test]
    fn a_dead_primarys_last_lag_report_is_the_copys_recovery_point() {
        let mut c = core();
        let facts = vec![vol_facts(false)];
        c.handle(at(0), NodeInput::Mirrors(facts));
        let report = |bytes, age_ms| NodeAdvert {
            lags: vec![
                MirrorLag::new("vol", "n3", 1, 1),
                MirrorLag::new("vol", "n1", bytes, age_ms),
            ],
            ..NodeAdvert::default()
        };
        c.handle(at(0), heartbeat_from("n2", 1, 0, report(1 << 20, 900)));
        c.handle(at(200), heartbeat_from("n2", 2, 200, report(4 << 20, 1200)));
        // A replayed (stale) heartbeat is rejected and changes nothing.
        c.handle(at(300), heartbeat_from("n2", 1, 0, report(0, 0)));
        let points = c.recovery_points();
        assert_eq!(points.len(), 1);
        assert_eq!(
            (
                points[0].primary.as_str(),
                points[0].lag_bytes,
                points[0].lag_ms
            ),
            ("n2", 4 << 20, 1200)
        );
        assert_eq!(points[0].reported_ms, at(200).wall_ms);
        let out = c.handle(at(1_700), NodeInput::CheckLiveness);
        let reported: Vec<&Fields> = out
            .iter()
            .filter_map(|a| match a {
                NodeAction::Emit {
                    kind: EventKind::RecoveryPoint,
                    fields,
                } => Some(fields),
                _ => None,
            })
            .collect();
        assert_eq!(reported.len(), 1, "{out:?}");
        assert_eq!(reported[0]["mirror"], "vol");
        assert_eq!(reported[0]["peer"], "n2");
        assert_eq!(reported[0]["bytes"], (4u64 << 20).to_string());
        assert_eq!(reported[0]["duration_ms"], "1200");
    }

    #[test]
    fn a_dead_peer_loses_its_replication_links_before_placement_acts() {
        let mut c = core();
        c.handle(at(0), heartbeat_from("n2", 1, 0, NodeAdvert::default()));
        let out = c.handle(at(1_500), NodeInput::CheckLiveness);
        let down = out.iter().position(|a| {
            matches!(
                a,
                NodeAction::Emit {
                    kind: EventKind::NodeDown,
                    ..
                }
            )
        });
        let dead = out
            .iter()
            .position(|a| matches!(a, NodeAction::PeerDead { peer } if peer == "n2"));
        assert!(down.is_some() && dead > down, "{out:?}");
        let placed = out
            .iter()
            .position(|a| matches!(a, NodeAction::Group { .. }));
        assert!(placed.is_none_or(|p| Some(p) > dead), "{out:?}");
    }

    #[test]
    fn control_requests_are_answered_with_their_id() {
        let mut c = core();
        let command = ControlCommand::Switchover {
            group: "nosuch".into(),
            to: None,
        };
        let out = c.handle(at(0), NodeInput::Control { id: 42, command });
        match out.last() {
            Some(NodeAction::Reply { id: 42, result }) => {
                assert_eq!(result, &Err(PlacementError::UnknownGroup("nosuch".into())))
            }
            other => panic!("no reply: {other:?}"),
        }
        let command = ControlCommand::Maintenance {
            group: "web".into(),
            on: true,
        };
        let out = c.handle(at(0), NodeInput::Control { id: 43, command });
        assert!(out.iter().any(|a| matches!(a,
            NodeAction::Group { group, command: GroupCommand::Maintenance(true) } if group == "web")));
        assert!(matches!(
            out.last(),
            Some(NodeAction::Reply {
                id: 43,
                result: Ok(ControlOutcome::Done)
            })
        ));
    }

    #[test]
    fn a_secondary_outdates_itself_once_and_acknowledges_in_its_advert() {
        let mut c = core();
        let facts = vec![vol_facts(false)];
        c.handle(at(0), NodeInput::Mirrors(facts));
        let request = NodeAdvert {
            mirrors: vec![MirrorRegister {
                name: "vol".into(),
                outdated: 0,
                outdate_requests: vec![("n1".into(), 77)],
            }],
            ..NodeAdvert::default()
        };
        c.handle(at(0), heartbeat_from("n2", 1, 0, request));
        let outdates = |out: &[NodeAction]| {
            out.iter()
                .filter(|a| matches!(a, NodeAction::OutdateSelf { generation: 77, .. }))
                .count()
        };
        assert_eq!(outdates(&c.handle(at(10), NodeInput::Tick)), 1);
        // In flight: not asked for again.
        assert_eq!(outdates(&c.handle(at(20), NodeInput::Tick)), 0);
        let done = NodeInput::OutdateDone {
            mirror: "vol".into(),
            generation: 77,
            ok: true,
        };
        let out = c.handle(at(30), done);
        assert!(out.is_empty());
        let out = c.handle(at(40), NodeInput::HeartbeatDue);
        let NodeAction::Send { hb, .. } = &out[0] else {
            panic!("no heartbeat: {out:?}")
        };
        assert_eq!(hb.advert.mirrors[0].outdated, 77);
        assert_eq!(outdates(&c.handle(at(50), NodeInput::Tick)), 0);
    }
}
