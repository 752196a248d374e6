//! The daemon runtime: tokio tasks that turn sockets, timers, child processes and API
//! requests into inputs for the pure cores, and carry out the actions they return.
//!
//! ```text
//!  path tasks (UDP per heartbeat path) --Received--> +-----------------------+
//!  group executors ------------------- Input ------> |  main loop            |
//!  API server ------------------------ Request ----> |  Membership (pure)    | --Command--> group executors
//!  timers (heartbeat, evaluation) ------------------> |  Placement  (pure)    | --Outgoing-> path tasks
//!                                                     +-----------------------+
//!                                                         | events        | status snapshot (watch)
//!                                                         v               v
//!                                                      EventLog        API server
//! ```

pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::api::{
    self, FailoverSummary, MirrorAction, NodeStatus, PathStatusView, Request, ResourceView, Status,
    VipView,
};
use crate::cluster::membership::{self, Membership, MembershipConfig, MembershipEvent, PeerSpec};
use crate::cluster::packet::{self, Heartbeat, LocalGroupState};
use crate::config::{Config, ResourceKind};
use crate::event::{fields, unix_ms, EventKind, EventLog, Fields, MoveReason, Timeline};
use crate::metrics::{self, Metrics};
use crate::mirror::fencing as mirrors;
use crate::mirror::node::LocalMirrors;
use crate::placement::policy::{Action, Input, Now, PeerView, Placement, PlacementConfig};
use crate::resources::agent::Agent;
use crate::resources::executor::{self, Command};
use crate::snmp;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("node `{0}` is not in the configuration")]
    UnknownNode(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Events(#[from] crate::event::EventError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Snmp(#[from] crate::snmp::SnmpError),
    #[error("mirror: {0}")]
    Mirror(#[from] crate::mirror::replica::MirrorError),
    #[error("encoding our own heartbeat failed: {0}")]
    Encode(#[from] packet::EncodeError),
}

/// How often the cores are re-evaluated between heartbeats.
const EVALUATE_EVERY: Duration = Duration::from_millis(10);
/// How long a graceful shutdown waits for queued SNMP notifications to go out.
const NOTIFY_DRAIN: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for peers to take our groups.
const SHUTDOWN_HANDOFF: Duration = Duration::from_secs(20);

struct Daemon {
    cfg: Config,
    local: String,
    key: Arc<Vec<u8>>,
    boot_id: u64,
    boot_time_ms: u64,
    seq: u64,
    started: Instant,
    membership: Membership,
    placement: Placement,
    events: EventLog,
    executors: BTreeMap<String, mpsc::Sender<Command>>,
    /// path index -> outgoing sender
    paths: Vec<mpsc::Sender<Outgoing>>,
    status: watch::Sender<Status>,
    metrics: Metrics,
    last_advert: Option<packet::NodeAdvert>,
    /// Per group: the failovers and switchovers this node carried out.
    failovers: BTreeMap<String, FailoverSummary>,
    /// The replicated volumes this node holds a copy of.
    mirrors: LocalMirrors,
    /// Per mirror: the primary generation this copy outdated itself for.
    outdated_for: mirrors::OutdatedFor,
    /// Outdates being carried out: (mirror, generation).
    outdating: std::collections::BTreeSet<(String, u64)>,
    /// Finished outdates and mirror admin replies come back here.
    mirror_done: mpsc::Sender<MirrorDone>,
}

/// A finished asynchronous mirror operation.
enum MirrorDone {
    Outdated {
        mirror: String,
        generation: u64,
        ok: bool,
    },
}

use transport::Outgoing;

impl Daemon {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: unix_ms(),
        }
    }

    fn peers(&self) -> Vec<PeerView> {
        self.membership
            .live_peers()
            .into_iter()
            .filter_map(|name| {
                self.membership.advert(&name).map(|a| PeerView {
                    name: name.clone(),
                    advert: a.clone(),
                })
            })
            .collect()
    }

    /// Sends one heartbeat to every peer on every path.
    fn send_heartbeats(&mut self) {
        let now = self.now();
        let mut advert = self.placement.advert(now);
        advert.mirrors = mirrors::registers(&self.mirror_fencing());
        for (pi, path_name) in self.cfg.heartbeat.paths.iter().enumerate() {
            for n in &self.cfg.nodes {
                if n.name == self.local {
                    continue;
                }
                let Some(addr) = n.addresses.get(path_name) else {
                    continue;
                };
                self.seq += 1;
                self.metrics.heartbeat_sent(path_name);
                let hb = Heartbeat {
                    cluster: self.cfg.cluster.name.clone(),
                    node: self.local.clone(),
                    boot_id: self.boot_id,
                    boot_time_ms: self.boot_time_ms,
                    seq: self.seq,
                    path: pi as u8,
                    sent_ms: now.mono_ms,
                    echo: self.membership.echo_for(&n.name, pi as u8, now.mono_ms),
                    advert: advert.clone(),
                };
                match packet::encode(&hb, &self.key) {
                    Ok(bytes) => {
                        let _ = self.paths[pi].try_send(Outgoing {
                            to: SocketAddr::new(*addr, self.cfg.heartbeat.port),
                            bytes,
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
                }
            }
        }
        self.last_advert = Some(advert);
    }

    fn membership_input(&mut self, input: membership::Input) {
        let now = self.now();
        let evs = self.membership.handle(now.mono_ms, input);
        for ev in evs {
            match ev {
                MembershipEvent::PathUp { peer, path } => {
                    self.emit(EventKind::PathUp, self.path_fields(&peer, path, None));
                }
                MembershipEvent::PathDown {
                    peer,
                    path,
                    silent_ms,
                } => {
                    self.emit(
                        EventKind::PathDown,
                        self.path_fields(&peer, path, Some(silent_ms)),
                    );
                }
                MembershipEvent::NodeUp { peer, boot_id } => {
                    self.emit(
                        EventKind::NodeUp,
                        fields([("peer", peer), ("boot_id", format!("{boot_id:016x}"))]),
                    );
                }
                MembershipEvent::NodeDown { peer, silent_ms } => {
                    self.emit(
                        EventKind::NodeDown,
                        fields([("peer", peer.clone()), ("silent_ms", silent_ms.to_string())]),
                    );
                    // The membership is the authority on death: a replication link to a
                    // powered-off node may not notice for a long while (no RST). Drop it
                    // now, before placement may promote our copy.
                    for m in self.mirrors.values() {
                        m.mirror.peer_dead(&peer);
                    }
                    self.placement_input(Input::NodeDown { peer, silent_ms });
                }
                MembershipEvent::NodeRestarted {
                    peer,
                    old_boot_id,
                    new_boot_id,
                } => {
                    self.emit(
                        EventKind::NodeRestarted,
                        fields([
                            ("peer", peer),
                            ("old_boot_id", format!("{old_boot_id:016x}")),
                            ("new_boot_id", format!("{new_boot_id:016x}")),
                        ]),
                    );
                }
                MembershipEvent::Rejected { peer, path, reason } => {
                    tracing::debug!(?peer, path, reason, "heartbeat rejected");
                }
            }
        }
    }

    /// Peers silent on every path for most of the dead time get a speculative
    /// floating-IP probe (see `placement::policy::Input::PeerSilent`).
    fn pre_probe_silent_peers(&mut self) {
        let now = self.now();
        let lead = self.cfg.cluster.vip_probe_timeout.as_millis() as u64
            + 3 * EVALUATE_EVERY.as_millis() as u64;
        for peer in self.membership.nearly_dead_peers(now.mono_ms, lead) {
            self.placement_input(Input::PeerSilent { peer });
        }
    }

    fn path_fields(&self, peer: &str, path: u8, silent_ms: Option<u64>) -> Fields {
        let mut f = fields([
            ("peer", peer.to_string()),
            (
                "path",
                self.cfg
                    .heartbeat
                    .paths
                    .get(path as usize)
                    .cloned()
                    .unwrap_or_else(|| path.to_string()),
            ),
        ]);
        if let Some(s) = silent_ms {
            f.insert("silent_ms".into(), s.to_string());
        }
        f
    }

    fn emit(&self, kind: EventKind, f: Fields) {
        self.events.emit(kind, f);
    }

    fn placement_input(&mut self, input: Input) {
        let now = self.now();
        let peers = self.peers();
        let actions = self.placement.handle(now, input, &peers);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            let (group, cmd) = match a {
                Action::Emit { kind, fields } => {
                    self.emit(kind, fields);
                    continue;
                }
                Action::RecordTimeline(t) => {
                    self.metrics.observe_timeline(&t);
                    count_failover(&mut self.failovers, &t);
                    self.events.record_timeline(t);
                    continue;
                }
                Action::ProbeVip { group } => (group, Command::ProbeVip),
                Action::StartGroup { group } => (group, Command::Start),
                Action::StopGroup { group } => (group, Command::Stop),
                Action::RestartResource { group, resource } => {
                    (group, Command::Restart { resource })
                }
            };
            if let Some(tx) = self.executors.get(&group) {
                if tx.try_send(cmd).is_err() {
                    tracing::error!(%group, "group executor is not accepting commands");
                }
            }
        }
        // A changed advert goes out at once: hand-offs should not wait for a heartbeat.
        let advert = self.placement.advert(self.now());
        if self.last_advert.as_ref() != Some(&advert) {
            self.send_heartbeats();
        }
    }

    fn handle_request(&mut self, req: Request) {
        let now = self.now();
        let peers = self.peers();
        match req {
            Request::Switchover { group, to, reply } => {
                let r = self
                    .placement
                    .switchover(now, &group, to.as_deref(), &peers);
                let r = r.map(|(target, actions)| {
                    self.carry_out(actions);
                    target
                });
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Request::Standby { node, on, reply } => {
                let r = self.placement.set_standby(now, &node, on, &peers);
                let r = r.map(|actions| self.carry_out(actions));
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Request::Maintenance { group, on, reply } => {
                let r = self.placement.set_maintenance(now, &group, on, &peers);
                let r = r.map(|actions| {
                    if let Some(tx) = self.executors.get(&group) {
                        let _ = tx.try_send(Command::Maintenance(on));
                    }
                    self.carry_out(actions)
                });
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Request::Mirror {
                mirror,
                action,
                peer,
                reply,
            } => {
                let Some(m) = self.mirrors.get(&mirror).map(|m| m.mirror.clone()) else {
                    let _ = reply.send(Err(format!("this node holds no mirror `{mirror}`")));
                    return;
                };
                tokio::spawn(async move {
                    let peer = peer.as_deref();
                    let r = match action {
                        MirrorAction::Pause => m.pause(peer).await,
                        MirrorAction::Resume => m.resume(peer).await,
                        MirrorAction::Verify => m.verify(peer).await,
                        MirrorAction::ResyncFull => m.resync_full(peer).await,
                        MirrorAction::Disconnect => m.disconnect(peer).await,
                        MirrorAction::Connect => m.connect(peer).await,
                    };
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                });
            }
        }
    }

    /// Each mirror's fencing view.
    fn mirror_fencing(&self) -> Vec<mirrors::LocalFencing> {
        self.mirrors
            .iter()
            .map(|(name, m)| {
                let primary = m.mirror.is_primary();
                mirrors::LocalFencing {
                    name: name.clone(),
                    primary,
                    pending: if primary {
                        m.mirror.pending_outdates()
                    } else {
                        Vec::new()
                    },
                    outdated: self.outdated_for.get(name).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// Carries out the fencing decisions (see [`mirrors`]).
    fn fence_mirrors(&mut self) {
        if self.mirrors.is_empty() {
            return;
        }
        let local = self.mirror_fencing();
        let peers = self.peers();
        for action in mirrors::decide(&self.local, &local, &peers, &self.outdating) {
            match action {
                mirrors::FenceAction::PeerOutdated { mirror, peer } => {
                    if let Some(m) = self.mirrors.get(&mirror) {
                        m.mirror.peer_outdated(&peer);
                    }
                }
                mirrors::FenceAction::OutdateSelf { mirror, generation } => {
                    let Some(m) = self.mirrors.get(&mirror).map(|m| m.mirror.clone()) else {
                        continue;
                    };
                    self.outdating.insert((mirror.clone(), generation));
                    let done = self.mirror_done.clone();
                    tokio::spawn(async move {
                        let r = m.outdate(generation).await;
                        if let Err(e) = &r {
                            tracing::error!(mirror = %mirror, error = %e, "cannot outdate this copy");
                        }
                        let _ = done
                            .send(MirrorDone::Outdated {
                                mirror,
                                generation,
                                ok: r.is_ok(),
                            })
                            .await;
                    });
                }
            }
        }
    }

    fn mirror_done(&mut self, done: MirrorDone) {
        match done {
            MirrorDone::Outdated {
                mirror,
                generation,
                ok,
            } => {
                self.outdating.remove(&(mirror.clone(), generation));
                if ok {
                    self.outdated_for.insert(mirror, generation);
                }
            }
        }
    }

    fn publish_status(&self) {
        let now = self.now();
        let peers = self.peers();
        let local_prio = self.cfg.node(&self.local).map_or(0, |n| n.priority);
        let mut nodes = vec![NodeStatus {
            name: self.local.clone(),
            priority: local_prio,
            local: true,
            alive: true,
            standby: self.placement.standby(),
            boot_id: format!("{:016x}", self.boot_id),
            last_heard_ms_ago: Some(0),
            paths_up: self.cfg.heartbeat.paths.len(),
        }];
        for ps in self.membership.peer_status() {
            let prio = self.cfg.node(&ps.name).map_or(0, |n| n.priority);
            let standby = self.placement.is_standby(&ps.name)
                || peers
                    .iter()
                    .find(|p| p.name == ps.name)
                    .is_some_and(|p| p.advert.standby);
            nodes.push(NodeStatus {
                name: ps.name.clone(),
                priority: prio,
                local: false,
                alive: ps.alive,
                standby,
                boot_id: ps.boot_id.map(|b| format!("{b:016x}")).unwrap_or_default(),
                last_heard_ms_ago: ps.last_heard_ms.map(|t| now.mono_ms.saturating_sub(t)),
                paths_up: ps.paths_up.len(),
            });
        }
        let paths = self
            .membership
            .paths()
            .into_iter()
            .map(|p| PathStatusView {
                peer: p.peer.clone(),
                path: self
                    .cfg
                    .heartbeat
                    .paths
                    .get(p.path as usize)
                    .cloned()
                    .unwrap_or_default(),
                up: p.up,
                last_heard_ms_ago: p.last_heard_ms.map(|t| now.mono_ms.saturating_sub(t)),
                rtt_ms: p.rtt_ms,
            })
            .collect();
        let counters = self.membership.counters();
        let rejected: BTreeMap<String, u64> = counters
            .rejected
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let groups = self.placement.status(now, &peers);
        let local_state = |group: &str| {
            groups
                .iter()
                .find(|g| g.name == group)
                .map_or(LocalGroupState::Stopped, |g| g.local_state)
        };
        let mut resources = Vec::new();
        let mut vips = Vec::new();
        for g in &self.cfg.groups {
            let state = local_state(&g.name);
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
                    kind: r.kind.name().into(),
                    state: local_state_name(state).into(),
                });
            }
        }
        let status = Status {
            cluster: self.cfg.cluster.name.clone(),
            node: self.local.clone(),
            time_ms: now.wall_ms,
            uptime_ms: now.mono_ms,
            last_seq: self.events.last_seq(),
            mode: if self.cfg.nodes.len() <= 2 {
                "two_node".into()
            } else {
                "priority".into()
            },
            nodes,
            paths,
            groups,
            heartbeats: api::HeartbeatCounters {
                sent: self.seq,
                accepted: counters.accepted,
                rejected,
            },
            resources,
            vips,
            failovers: self.failovers.values().cloned().collect(),
            mirrors: crate::mirror::node::statuses(&self.mirrors),
        };
        self.status.send_replace(status);
    }
}

/// Runs the daemon for `local` until SIGTERM/SIGINT.
pub async fn run(cfg: Config, local: String) -> Result<(), RuntimeError> {
    let node_cfg = cfg
        .node(&local)
        .cloned()
        .ok_or_else(|| RuntimeError::UnknownNode(local.clone()))?;
    let key = Arc::new(cfg.key_bytes()?);
    let events = EventLog::open(&local, &cfg.cluster.state_dir)?;
    let span = tracing::info_span!("node", node = %local);
    async move {
        // A crash may have left our floating IPs behind: nothing runs here yet.
        for g in &cfg.groups {
            for r in &g.resources {
                let mut agent = Agent::new(r, &LocalMirrors::new());
                if agent.vip().is_some() {
                    if let Err(e) = agent.stop(&[]).await {
                        tracing::warn!(group = %g.name, resource = %r.name, error = %e, "cannot clear a stale floating IP");
                    }
                }
            }
        }
        let membership = Membership::new(MembershipConfig {
            local: local.clone(),
            dead_time_ms: cfg.heartbeat.dead_time.as_millis() as u64,
            peers: cfg
                .nodes
                .iter()
                .filter(|n| n.name != local)
                .map(|n| PeerSpec {
                    name: n.name.clone(),
                    paths: (0..cfg.heartbeat.paths.len() as u8).collect(),
                })
                .collect(),
        });
        let placement = Placement::new(PlacementConfig::from_config(&cfg, &local));
        let metrics = Metrics::new(&cfg, &local)?;
        let mirrors = crate::mirror::node::open_all(&cfg, &local, &key, &events, &metrics).await?;
        let (mirror_done_tx, mut mirror_done_rx) = mpsc::channel(16);
        let event_observer = metrics::spawn_event_observer(metrics.clone(), events.clone());
        let (pkt_tx, mut pkt_rx) = mpsc::channel(1024);
        let cluster_name = Arc::new(cfg.cluster.name.clone());
        let paths = cfg
            .heartbeat
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                transport::spawn_path(
                    i as u8,
                    node_cfg.addresses[p],
                    cfg.heartbeat.port,
                    key.clone(),
                    cluster_name.clone(),
                    pkt_tx.clone(),
                )
            })
            .collect();
        let (res_tx, mut res_rx) = mpsc::channel(256);
        let executors = cfg
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    executor::spawn(
                        &local,
                        g,
                        cfg.cluster.vip_probe_timeout,
                        events.clone(),
                        metrics.clone(),
                        &mirrors,
                        res_tx.clone(),
                    ),
                )
            })
            .collect();
        // Only the executors hold result senders: when they have all stopped, the
        // channel closes and shutdown is complete.
        drop(res_tx);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (req_tx, mut req_rx) = mpsc::channel(64);
        let mut d = Daemon {
            key,
            boot_id: rand::random(),
            boot_time_ms: unix_ms(),
            seq: 0,
            started: Instant::now(),
            membership,
            placement,
            events: events.clone(),
            executors,
            paths,
            status: status_tx,
            metrics: metrics.clone(),
            last_advert: None,
            failovers: BTreeMap::new(),
            mirrors,
            outdated_for: mirrors::OutdatedFor::new(),
            outdating: Default::default(),
            mirror_done: mirror_done_tx,
            local: local.clone(),
            cfg,
        };
        for t in events.timelines() {
            count_failover(&mut d.failovers, &t);
        }
        // The notifier listens before the first event, so receivers get agentStart.
        let (snmp_engine, notifier) = match &d.cfg.snmp {
            Some(snmp) => {
                let engine = snmp::Engine::load(
                    snmp,
                    &d.cfg.cluster.name,
                    &local,
                    &d.cfg.cluster.state_dir,
                    d.started,
                )?;
                let notifier = snmp::notify::spawn_notifier(
                    snmp,
                    engine.id.clone(),
                    engine.boots,
                    events.clone(),
                    Box::new(snmp::mib::notification_for),
                    engine.start,
                );
                metrics.attach_snmp_notifier(notifier.statuses());
                (Some(engine), Some(notifier))
            }
            None => (None, None),
        };
        d.emit(
            EventKind::DaemonStarted,
            fields([
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("boot_id", format!("{:016x}", d.boot_id)),
            ]),
        );
        // The API starts with a real snapshot, never the empty default.
        d.publish_status();
        let snmp_agent = match (&d.cfg.snmp, &snmp_engine) {
            (Some(snmp), Some(engine)) => {
                let agent = snmp::agent::spawn(snmp, engine, status_rx.clone()).await?;
                metrics.attach_snmp_agent(agent.counters());
                Some(agent)
            }
            _ => None,
        };
        let metrics_server = match &d.cfg.metrics {
            Some(m) => Some(metrics::serve(m.listen, metrics.clone(), status_rx.clone()).await?),
            None => None,
        };
        let servers = api::serve(&d.cfg.api, status_rx, events.clone(), req_tx).await?;
        let mut hb_tick = tokio::time::interval(d.cfg.heartbeat.interval);
        let mut eval_tick = tokio::time::interval(EVALUATE_EVERY);
        eval_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| api::ApiError::Io("signal handler".into(), e))?;
        let mut shutdown_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = hb_tick.tick() => d.send_heartbeats(),
                _ = eval_tick.tick() => {
                    d.membership_input(membership::Input::Tick);
                    d.placement_input(Input::Tick);
                    d.pre_probe_silent_peers();
                    d.fence_mirrors();
                }
                Some(done) = mirror_done_rx.recv() => d.mirror_done(done),
                Some(r) = pkt_rx.recv() => match r.result {
                    Ok(hb) => d.membership_input(membership::Input::Packet { path: r.path, hb }),
                    Err(reason) => {
                        d.membership.record_decode_error(r.path, reason);
                        tracing::debug!(path = r.path, from = %r.from, reason, "heartbeat dropped");
                    }
                },
                Some(input) = res_rx.recv() => d.placement_input(input),
                Some(req) = req_rx.recv() => d.handle_request(req),
                _ = sigterm.recv(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(begin_shutdown(&mut d));
                }
                _ = tokio::signal::ctrl_c(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(begin_shutdown(&mut d));
                }
            }
            d.publish_status();
            if let Some(deadline) = shutdown_deadline {
                let now = d.now();
                let peers = d.peers();
                let busy = d.placement.status(now, &peers).iter().any(|g| {
                    matches!(
                        g.local_state,
                        LocalGroupState::Running | LocalGroupState::Starting | LocalGroupState::Stopping
                    )
                });
                if !busy || tokio::time::Instant::now() >= deadline || peers.is_empty() {
                    break;
                }
            }
        }
        d.emit(EventKind::DaemonStopping, Fields::new());
        // Dropping the command channels makes each executor stop what still runs.
        d.executors.clear();
        drop(servers);
        event_observer.abort();
        if let Some(m) = metrics_server {
            m.abort();
        }
        drop(snmp_agent);
        if let Some(n) = notifier {
            // agentShutdown and the last events reach the receivers that answer.
            n.drain(NOTIFY_DRAIN).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while res_rx.recv().await.is_some() {}
        })
        .await;
        // Every group has stopped (demoting its mirrors): persist bitmaps, mark clean.
        for m in d.mirrors.values() {
            m.mirror.shutdown().await;
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// Adds a finished timeline to its group's failover summary.
fn count_failover(summaries: &mut BTreeMap<String, FailoverSummary>, t: &Timeline) {
    if t.reason == MoveReason::Initial {
        return;
    }
    let s = summaries
        .entry(t.group.clone())
        .or_insert_with(|| FailoverSummary {
            group: t.group.clone(),
            ..FailoverSummary::default()
        });
    s.count += 1;
    s.last_reason = t.reason.name();
    s.last_duration_ms = t.completed_ms.map(|c| c.saturating_sub(t.detected_ms));
}

/// The snake_case name of a local group state (as in the status JSON).
fn local_state_name(state: LocalGroupState) -> &'static str {
    match state {
        LocalGroupState::Stopped => "stopped",
        LocalGroupState::Starting => "starting",
        LocalGroupState::Running => "running",
        LocalGroupState::Stopping => "stopping",
        LocalGroupState::Failed => "failed",
    }
}

/// Graceful shutdown: go to standby so peers take our groups, then stop.
fn begin_shutdown(d: &mut Daemon) -> tokio::time::Instant {
    tracing::info!("shutting down: handing groups to peers");
    let now = d.now();
    let peers = d.peers();
    let actions = d.placement.leave(now, &peers);
    d.carry_out(actions);
    tokio::time::Instant::now() + SHUTDOWN_HANDOFF
}

/// Used by the API to wait for a switchover: the group runs on `target` and nowhere else.
pub fn group_settled_on(status: &Status, group: &str, target: &str) -> Option<Result<(), String>> {
    let g = status.groups.iter().find(|g| g.name == group)?;
    let on_target = g.states.get(target).copied();
    let elsewhere = g
        .states
        .iter()
        .any(|(n, s)| n != target && *s != LocalGroupState::Stopped);
    match on_target {
        Some(LocalGroupState::Running) if !elsewhere => Some(Ok(())),
        Some(LocalGroupState::Failed) => Some(Err(format!("group `{group}` failed on `{target}`"))),
        _ if g.owner.as_deref().is_some_and(|o| o != target) => Some(Err(format!(
            "group `{group}` was placed on `{}` instead",
            g.owner.clone().unwrap_or_default()
        ))),
        _ => None,
    }
}

/// Reply channel of an API request.
pub type Reply<T> = oneshot::Sender<Result<T, String>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(reason: MoveReason, completed: Option<u64>) -> Timeline {
        Timeline {
            group: "web".into(),
            kind: "failover".into(),
            reason,
            from_node: Some("a".into()),
            to_node: "b".into(),
            failure_ms: None,
            detected_ms: 1_000,
            decided_ms: 1_100,
            steps: Vec::new(),
            first_check_ms: None,
            completed_ms: completed,
            outcome: String::new(),
        }
    }

    #[test]
    fn failover_summaries_skip_first_placements_and_keep_the_latest() {
        let mut s = BTreeMap::new();
        count_failover(&mut s, &timeline(MoveReason::Initial, Some(1_500)));
        assert!(s.is_empty());
        count_failover(&mut s, &timeline(MoveReason::NodeLost, Some(2_250)));
        count_failover(&mut s, &timeline(MoveReason::Manual, None));
        let web = &s["web"];
        assert_eq!(web.count, 2);
        assert_eq!(web.last_reason, "manual");
        assert_eq!(web.last_duration_ms, None);
        count_failover(&mut s, &timeline(MoveReason::ResourceFailed, Some(1_400)));
        assert_eq!(s["web"].last_duration_ms, Some(400));
    }
}
