//! The daemon runtime: tokio tasks that turn sockets, timers, child processes and API
//! requests into [`NodeInput`]s for the pure node core, and carry out the
//! [`NodeAction`]s it returns. Nothing here decides: the decisions are in
//! [`crate::node::NodeCore`].
//!
//! ```text
//!  path tasks (UDP per heartbeat path) --Received--> +-----------------------+
//!  group executors ------------------- Input ------> |  main loop            |
//!  API server ------------------------ Request ----> |  NodeCore (pure)      | --GroupCommand--> group executors
//!  timers (heartbeat, evaluation) ------------------> |                       | --Outgoing------> path tasks
//!  mirror outdates ------------------- MirrorDone --> +-----------------------+ --outdate/peer_dead--> mirrors
//!                                                         | events        | status::project (watch)
//!                                                         v               v
//!                                                      EventLog        API, metrics, SNMP
//! ```
//!
//! [`run`] is three steps: [`start`] (build the core, open the mirrors, spawn the
//! tasks and servers), [`Daemon::serve`] (the event loop until a signal and the
//! hand-off) and [`Running::shutdown`]. `SIGHUP` re-reads the configuration file (a
//! task off the loop), and the loop takes what needs no restart ([`Daemon::reload`]).

pub mod core_thread;
pub mod log_writer;
pub mod systemd;
pub mod transport;
pub mod watchdog;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::api::{self, server::Servers};
use crate::cluster::packet;
use crate::config::{reload, Config};
use crate::control::{self, ControlError, MirrorAction, Reply, Request};
use crate::event::{fields, unix_ms, EventKind, EventLog, Fields};
use crate::fence;
use crate::metrics::{self, Metrics};
use crate::mirror::node::LocalMirrors;
use crate::mirror::plan::{self, Plan, Target};
use crate::mirror::replica::{Mirror, MirrorError};
use crate::node::{
    ControlCommand, ControlOutcome, GroupCommand, MirrorFacts, NodeAction, NodeConfig, NodeCore,
    NodeInput, PowerFenceResult, PowerOff, WatchdogReport,
};
use crate::placement::policy::Now;
use crate::quorum::disk::DurableLog;
use crate::quorum::wire;
use crate::resources::agent::Agent;
use crate::resources::executor;
use crate::snmp;
use crate::status::{self, Status};
use log_writer::{LogWriter, Written};
use transport::{Datagram, Outgoing, Received};

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
    #[error("consensus log: {0}")]
    Log(#[from] crate::quorum::disk::DiskError),
    #[error("quorum: {0}")]
    Quorum(#[from] crate::quorum::core::QuorumError),
    #[error("console: {0}")]
    Console(#[from] crate::console::ConsoleError),
}

/// How often the cores are re-evaluated between heartbeats.
const EVALUATE_EVERY: Duration = Duration::from_millis(10);
/// How long a graceful shutdown waits for queued SNMP notifications to go out.
const NOTIFY_DRAIN: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for peers to take our groups.
const SHUTDOWN_HANDOFF: Duration = Duration::from_secs(20);
/// How long a graceful shutdown waits for the executors to stop their groups.
const EXECUTORS_STOP: Duration = Duration::from_secs(30);
/// How long a standby request waits for the log to commit it (quorum mode).
const STANDBY_COMMIT: Duration = Duration::from_secs(10);

/// A control request waiting for the core's answer.
enum PendingReply {
    Switchover(Reply<String>),
    Done(Reply<()>),
}

/// Quorum mode: a standby request proposed to the log, answered once it commits.
struct StandbyWait {
    node: String,
    on: bool,
    deadline: Instant,
    reply: Reply<()>,
}

/// A finished asynchronous mirror operation.
struct MirrorDone {
    mirror: String,
    generation: u64,
    ok: bool,
}

/// The daemon's I/O around its [`NodeCore`].
struct Daemon {
    /// The configuration this daemon runs with (a reload takes what needs no restart).
    cfg: Config,
    /// [`Daemon::cfg`] for the executors and the API, which follow its changes.
    running: watch::Sender<Arc<Config>>,
    key: Arc<Vec<u8>>,
    started: Instant,
    core: NodeCore,
    events: EventLog,
    metrics: Metrics,
    executors: BTreeMap<String, mpsc::Sender<GroupCommand>>,
    /// path index -> outgoing sender
    paths: Vec<mpsc::Sender<Outgoing>>,
    status: watch::Sender<Status>,
    /// The web console's address and certificate fingerprint, for the status.
    console: Option<status::ConsoleView>,
    /// Each resource's last health check results and disk lease, for the status.
    resource_book: Arc<std::sync::Mutex<status::ResourceBook>>,
    /// The replicated volumes this node holds a copy of.
    mirrors: LocalMirrors,
    /// Finished outdates come back here.
    mirror_done: mpsc::Sender<MirrorDone>,
    /// Finished power-offs come back here.
    fenced: mpsc::Sender<(String, PowerFenceResult)>,
    replies: BTreeMap<u64, PendingReply>,
    /// Standby requests waiting for the log to commit them.
    standby_waits: Vec<StandbyWait>,
    next_request: u64,
    /// Quorum mode: the durable consensus log's writer thread. `None` after a write
    /// failed: this node then stays silent as a voter (its leases run out; the others
    /// carry on).
    log: Option<LogWriter>,
    /// The daemon's multi-threaded runtime: mirror, fencing and outdate work runs
    /// there, never on the event loop's thread.
    io: tokio::runtime::Handle,
    /// The heartbeat paths, started on the event loop's thread ([`PathPlan::spawn`]).
    path_plan: Option<PathPlan>,
    /// `[quorum] watchdog`: the device the node core arms, pets and disarms.
    watchdog: Option<watchdog::WatchdogDevice>,
    /// systemd's readiness and watchdog protocol (a no-op outside systemd).
    systemd: systemd::Notifier,
    /// Inputs that carrying out an action produced (a watchdog failure), handed to
    /// the core once the actions before them are done.
    deferred: VecDeque<NodeInput>,
}

/// The receiving ends the event loop selects over.
struct Inbox {
    packets: mpsc::Receiver<Received>,
    results: mpsc::Receiver<crate::placement::policy::Input>,
    requests: mpsc::Receiver<Request>,
    mirror_done: mpsc::Receiver<MirrorDone>,
    fenced: mpsc::Receiver<(String, PowerFenceResult)>,
    log_written: mpsc::UnboundedReceiver<Written>,
}

/// What the heartbeat path tasks are started from: this node's address on each path.
struct PathPlan {
    addresses: Vec<std::net::IpAddr>,
    port: u16,
    key: Arc<Vec<u8>>,
    cluster: Arc<String>,
    received: mpsc::Sender<Received>,
}

impl PathPlan {
    /// This node's heartbeat paths: its address on each, the port, the key.
    fn new(
        cfg: &Config,
        node: &crate::config::NodeConfig,
        key: &Arc<Vec<u8>>,
        received: mpsc::Sender<Received>,
    ) -> PathPlan {
        PathPlan {
            addresses: cfg
                .heartbeat
                .paths
                .iter()
                .map(|p| node.addresses[p])
                .collect(),
            port: cfg.heartbeat.port,
            key: Arc::clone(key),
            cluster: Arc::new(cfg.cluster.name.clone()),
            received,
        }
    }

    /// Starts one task per path on the current runtime; their outgoing senders.
    fn spawn(self) -> Vec<mpsc::Sender<Outgoing>> {
        self.addresses
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                transport::spawn_path(
                    i as u8,
                    *addr,
                    self.port,
                    self.key.clone(),
                    self.cluster.clone(),
                    self.received.clone(),
                )
            })
            .collect()
    }
}

/// Tasks and servers that live as long as the daemon.
struct Running {
    servers: Servers,
    /// The web console (`[console]`), if configured.
    console: Option<crate::console::Console>,
    /// Reloads the configuration on each SIGHUP.
    hangups: tokio::task::JoinHandle<()>,
    event_observer: tokio::task::JoinHandle<()>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    snmp_agent: Option<snmp::agent::SnmpAgent>,
    notifier: Option<snmp::notify::NotifierHandle>,
}

impl Daemon {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: unix_ms(),
        }
    }

    /// Hands one input to the core and carries out what it returns (then the inputs
    /// that carrying those out produced).
    fn input(&mut self, input: NodeInput) {
        let mut next = Some(input);
        while let Some(input) = next.take().or_else(|| self.deferred.pop_front()) {
            let now = self.now();
            let actions = self.core.handle(now, input);
            for a in actions {
                self.carry_out(a);
            }
        }
    }

    fn carry_out(&mut self, action: NodeAction) {
        match action {
            NodeAction::Send { path, peer, hb } => self.send(path, &peer, &hb),
            NodeAction::Emit { kind, fields } => {
                self.events.emit(kind, fields);
            }
            NodeAction::RecordTimeline(t) => {
                self.metrics.observe_timeline(&t);
                self.events.record_timeline(t);
            }
            NodeAction::Group { group, command } => {
                if let Some(tx) = self.executors.get(&group) {
                    if tx.try_send(command).is_err() {
                        tracing::error!(%group, "group executor is not accepting commands");
                    }
                }
            }
            NodeAction::PeerDead { peer } => {
                for m in self.mirrors.values() {
                    m.mirror.peer_dead(&peer);
                }
            }
            NodeAction::PeerOutdated { mirror, peer } => {
                if let Some(m) = self.mirrors.get(&mirror) {
                    m.mirror.peer_outdated(&peer);
                }
            }
            NodeAction::OutdateSelf { mirror, generation } => self.outdate(mirror, generation),
            NodeAction::PersistLog { batch, write } => {
                if let Some(log) = &self.log {
                    if !log.write(write, batch) {
                        self.log_failed("the log writer thread is gone");
                    }
                }
            }
            NodeAction::SendQuorum { to, packet } => self.send_quorum(&to, &packet),
            NodeAction::PowerOff(ask) => self.power_off(ask),
            NodeAction::Watchdog(cmd) => {
                if let Some(w) = &mut self.watchdog {
                    if let Err(e) = w.carry_out(cmd) {
                        tracing::error!(error = %e, ?cmd, "watchdog failed: this node runs no group until it opens again");
                        let report = WatchdogReport::Failed(e.fault());
                        self.deferred.push_back(NodeInput::Watchdog(report));
                    }
                }
            }
            NodeAction::Reply { id, result } => {
                let result = result.map_err(ControlError::from);
                match (self.replies.remove(&id), result) {
                    (Some(PendingReply::Switchover(tx)), r) => {
                        let _ = tx.send(r.map(|o| match o {
                            ControlOutcome::SwitchingTo(target) => target,
                            _ => String::new(),
                        }));
                    }
                    (
                        Some(PendingReply::Done(tx)),
                        Ok(ControlOutcome::StandbyProposed { node, on }),
                    ) => {
                        self.standby_waits.push(StandbyWait {
                            node,
                            on,
                            deadline: Instant::now() + STANDBY_COMMIT,
                            reply: tx,
                        });
                    }
                    (Some(PendingReply::Done(tx)), r) => {
                        let _ = tx.send(r.map(|_| ()));
                    }
                    (None, _) => {}
                }
            }
        }
    }

    /// A consensus log write failed: this node stops voting (sends no quorum datagram).
    fn log_failed(&mut self, why: &str) {
        tracing::error!(error = %why, "cannot write the consensus log; this node stops voting");
        self.log = None;
    }

    /// Powers a node off through its BMC, after its fence delay, in a task of its own;
    /// the result comes back as [`NodeInput::PowerFenced`].
    fn power_off(&self, ask: PowerOff) {
        let Some(cfg) = self.cfg.node(&ask.node).and_then(|n| n.fence.clone()) else {
            return;
        };
        let done = self.fenced.clone();
        let span = tracing::info_span!("power_off", node = %ask.node, group = %ask.group, epoch = ask.epoch);
        self.io.spawn(
            async move {
                tokio::time::sleep(Duration::from_millis(ask.delay_ms)).await;
                let outcome = fence::execute(&ask.node, &cfg, fence::FenceAction::Off).await;
                let result = match outcome {
                    fence::FenceOutcome::Off { method, elapsed } => PowerFenceResult::Off {
                        method: method.to_string(),
                        elapsed_ms: elapsed.as_millis() as u64,
                    },
                    other => PowerFenceResult::Failed {
                        reason: other.failure().unwrap_or_else(|| "no power-off".into()),
                    },
                };
                let _ = done.send((ask.node, result)).await;
            }
            .instrument(span),
        );
    }

    /// Encodes and sends one heartbeat to `peer` on path `path`.
    fn send(&self, path: u8, peer: &str, hb: &packet::Heartbeat) {
        let path_name = &self.cfg.heartbeat.paths[path as usize];
        let Some(addr) = self.cfg.node(peer).and_then(|n| n.addresses.get(path_name)) else {
            return;
        };
        self.metrics.heartbeat_sent(path_name);
        match packet::encode(hb, &self.key) {
            Ok(bytes) => {
                let _ = self.paths[path as usize].try_send(Outgoing {
                    to: SocketAddr::new(*addr, self.cfg.heartbeat.port),
                    bytes,
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
    }

    /// Sends a quorum datagram to voter `to` on every path it has an address on.
    fn send_quorum(&self, to: &str, p: &wire::QuorumPacket) {
        if self.log.is_none() {
            return;
        }
        let bytes = match wire::encode(p, &self.key) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a quorum datagram");
                return;
            }
        };
        let addresses = match (self.cfg.node(to), &self.cfg.witness) {
            (Some(n), _) => &n.addresses,
            (None, Some(w)) if w.name == to => &w.addresses,
            _ => return,
        };
        for (i, path) in self.cfg.heartbeat.paths.iter().enumerate() {
            if let Some(addr) = addresses.get(path) {
                let _ = self.paths[i].try_send(Outgoing {
                    to: SocketAddr::new(*addr, self.cfg.heartbeat.port),
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// Outdates this copy of `mirror` (persisted) off the loop; the result comes back
    /// as a [`MirrorDone`].
    fn outdate(&self, mirror: String, generation: u64) {
        let Some(m) = self.mirrors.get(&mirror).map(|m| m.mirror.clone()) else {
            return;
        };
        let done = self.mirror_done.clone();
        self.io.spawn(async move {
            let r = m.outdate(generation).await;
            if let Err(e) = &r {
                tracing::error!(mirror = %mirror, error = %e, "cannot outdate this copy");
            }
            let ok = r.is_ok();
            let _ = done
                .send(MirrorDone {
                    mirror,
                    generation,
                    ok,
                })
                .await;
        });
    }

    fn handle_request(&mut self, req: Request) {
        let (command, pending) =
            match req {
                Request::Switchover { group, to, reply } => (
                    ControlCommand::Switchover { group, to },
                    PendingReply::Switchover(reply),
                ),
                Request::Standby { node, on, reply } => (
                    ControlCommand::Standby { node, on },
                    PendingReply::Done(reply),
                ),
                Request::Maintenance { group, on, reply } => (
                    ControlCommand::Maintenance { group, on },
                    PendingReply::Done(reply),
                ),
                Request::Clear { group, node, reply } => (
                    ControlCommand::Clear { group, node },
                    PendingReply::Done(reply),
                ),
                Request::Mirror {
                    mirror,
                    action,
                    peer,
                    reply,
                } => return self.mirror_request(mirror, action, peer, reply),
                Request::SplitBrainDumps { mirror, reply } => {
                    return self.on_mirror(
                        mirror,
                        reply,
                        |m| async move { m.split_brain_dumps().await },
                    )
                }
                Request::SplitBrainDump {
                    mirror,
                    name,
                    reply,
                } => {
                    return self.on_mirror(mirror, reply, |m| async move {
                        m.split_brain_dump(name).await
                    })
                }
                Request::MirrorPlan {
                    mirror,
                    target,
                    reply,
                } => return self.mirror_plan(mirror, target, reply),
                Request::Reload { config, reply } => {
                    let _ = reply.send(self.reload(*config));
                    return;
                }
            };
        self.next_request += 1;
        let id = self.next_request;
        self.replies.insert(id, pending);
        self.input(NodeInput::Control { id, command });
    }

    /// Runs with `new` (parsed and validated off the loop) from now on, as far as it
    /// needs no restart: the checks reach the executors, the token the API. Refused
    /// (and nothing changes) for another cluster or a file without this node.
    fn reload(&mut self, new: Config) -> Result<reload::ReloadOutcome, ControlError> {
        reload::admit(&self.cfg, &new, self.core.config().local())
            .map_err(|e| ControlError::Conflict(control::refused_config(&e)))?;
        let plan = reload::classify(&self.cfg, &new);
        let outcome = plan.outcome(&new.digest);
        // Nothing taken live: what runs (and its digest) is what ran.
        if !plan.applied.is_empty() {
            self.input(NodeInput::Reloaded {
                digest: plan.running.digest.clone(),
                restart_policies: crate::placement::policy::RestartPolicy::all(&plan.running),
            });
        }
        self.cfg = plan.running;
        self.running.send_replace(Arc::new(self.cfg.clone()));
        tracing::info!(applied = ?outcome.applied, needs_restart = ?outcome.needs_restart, "configuration reloaded");
        self.events.emit(
            EventKind::ConfigReloaded,
            fields([
                ("applied", outcome.applied.join(", ")),
                ("needs_restart", outcome.needs_restart.join(", ")),
                ("digest", outcome.digest.clone()),
            ]),
        );
        Ok(outcome)
    }

    /// `tandem mirror ...`: the mirror carries it out, off the loop.
    fn mirror_request(
        &self,
        mirror: String,
        action: MirrorAction,
        peer: Option<String>,
        reply: Reply<()>,
    ) {
        let Some(m) = self.mirrors.get(&mirror).map(|m| m.mirror.clone()) else {
            let _ = reply.send(Err(ControlError::NotFound(format!(
                "this node holds no mirror `{mirror}`"
            ))));
            return;
        };
        self.io.spawn(async move {
            let peer = peer.as_deref();
            let r = match action {
                MirrorAction::Pause => m.pause(peer).await,
                MirrorAction::Resume => m.resume(peer).await,
                MirrorAction::Verify => m.verify(peer).await,
                MirrorAction::ResyncFull => m.resync_full(peer).await,
                MirrorAction::Disconnect => m.disconnect(peer).await,
                MirrorAction::Connect => m.connect(peer).await,
                MirrorAction::Resolve => match peer {
                    Some(keep) => m.resolve(keep).await,
                    None => Err(MirrorError::Refused(
                        "resolve needs the node whose copy to keep (--keep NODE)".into(),
                    )),
                },
            };
            let _ = reply.send(r.map_err(ControlError::from));
        });
    }

    /// A read of one mirror (its split-brain dumps), off the loop.
    fn on_mirror<T, F, Fut>(&self, mirror: String, reply: Reply<T>, f: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Mirror>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, MirrorError>> + Send + 'static,
    {
        let Some(m) = self.mirrors.get(&mirror).map(|m| m.mirror.clone()) else {
            let _ = reply.send(Err(ControlError::NotFound(format!(
                "this node holds no mirror `{mirror}`"
            ))));
            return;
        };
        self.io.spawn(async move {
            let _ = reply.send(f(m).await.map_err(ControlError::from));
        });
    }

    /// `tandem mirror plan`: sized from a copy of the history, off the loop.
    fn mirror_plan(&self, mirror: String, target: Target, reply: Reply<Plan>) {
        let Some(history) = self.mirrors.get(&mirror).map(|m| m.rates.snapshot()) else {
            let _ = reply.send(Err(ControlError::NotFound(format!(
                "this node holds no mirror `{mirror}`"
            ))));
            return;
        };
        self.io.spawn_blocking(move || {
            let _ = reply.send(Ok(plan::plan(&mirror, &history, &target)));
        });
    }

    /// The mirrors' fencing facts, sampled for the core before each evaluation.
    fn mirror_facts(&self) -> Vec<MirrorFacts> {
        self.mirrors
            .iter()
            .map(|(name, m)| {
                let primary = m.mirror.is_primary();
                let (up_to_date, generation) = m.mirror.disk_and_generation();
                MirrorFacts {
                    name: name.clone(),
                    primary,
                    up_to_date,
                    generation,
                    in_sync: m.mirror.in_sync_peers(),
                    lags: m.mirror.peer_lags(),
                    pending: if primary {
                        m.mirror.pending_outdates()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }

    /// Answers the standby requests the log has committed (or that timed out).
    fn settle_standby(&mut self) {
        if self.standby_waits.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut waiting = Vec::new();
        for w in std::mem::take(&mut self.standby_waits) {
            let committed = self.core.committed_standby(&w.node);
            match control::standby_settled(&w.node, w.on, committed, now >= w.deadline) {
                Some(r) => {
                    let _ = w.reply.send(r);
                }
                None => waiting.push(w),
            }
        }
        self.standby_waits = waiting;
    }

    /// Checks the watchdog device while nothing is armed: at start, and every
    /// [`watchdog::RETRY_EVERY`] while the core holds it unavailable. Tells the core
    /// when it fails or opens again (the core announces each change once).
    fn check_watchdog(&mut self, at_start: bool) {
        let Some(w) = &mut self.watchdog else {
            return;
        };
        if !at_start && self.core.watchdog_fault().is_none() {
            return;
        }
        let report = match w.probe() {
            Ok(()) if at_start => return,
            Ok(()) => {
                tracing::info!("the watchdog opens again");
                WatchdogReport::Available
            }
            Err(e) => {
                tracing::debug!(error = %e, "watchdog still unavailable");
                WatchdogReport::Failed(e.fault())
            }
        };
        self.input(NodeInput::Watchdog(report));
    }

    fn tick(&mut self) {
        if !self.mirrors.is_empty() {
            let facts = self.mirror_facts();
            self.input(NodeInput::Mirrors(facts));
        }
        self.input(NodeInput::Tick);
        self.systemd.tick(Instant::now());
    }

    fn publish_status(&self) {
        let mirrors = crate::mirror::node::statuses(&self.mirrors);
        let mut status = status::project(
            &self.cfg,
            &self.core,
            self.now(),
            self.events.last_seq(),
            mirrors,
        );
        status.console.clone_from(&self.console);
        self.resource_book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill(&mut status.resources);
        self.status.send_replace(status);
    }

    /// The event loop: until SIGTERM/SIGINT, then until the groups are handed off.
    async fn serve(&mut self, inbox: &mut Inbox) -> Result<(), RuntimeError> {
        let mut hb_tick = tokio::time::interval(self.cfg.heartbeat.interval);
        let mut eval_tick = tokio::time::interval(EVALUATE_EVERY);
        eval_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| api::ApiError::Io("signal handler".into(), e))?;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut wd_retry = tokio::time::interval_at(
            tokio::time::Instant::now() + watchdog::RETRY_EVERY,
            watchdog::RETRY_EVERY,
        );
        // Before any group can start: a watchdog that cannot be opened lets none.
        self.check_watchdog(true);
        // The servers listen (started before the loop) and the core runs from here.
        self.systemd.ready();
        loop {
            tokio::select! {
                _ = wd_retry.tick(), if self.watchdog.is_some() => self.check_watchdog(false),
                _ = hb_tick.tick() => self.input(NodeInput::HeartbeatDue),
                _ = eval_tick.tick() => self.tick(),
                Some((node, result)) = inbox.fenced.recv() => {
                    self.input(NodeInput::PowerFenced { node, result })
                }
                Some(w) = inbox.log_written.recv() => match w {
                    Written::Durable(write) => self.input(NodeInput::LogWritten { write }),
                    Written::Failed(e) => self.log_failed(&e),
                },
                Some(d) = inbox.mirror_done.recv() => self.input(NodeInput::OutdateDone {
                    mirror: d.mirror,
                    generation: d.generation,
                    ok: d.ok,
                }),
                Some(r) = inbox.packets.recv() => match r.result {
                    Ok(Datagram::Heartbeat(hb)) => self.input(NodeInput::Packet {
                        path: r.path,
                        hb: *hb,
                    }),
                    Ok(Datagram::Quorum(p)) => self.input(NodeInput::Quorum(p)),
                    Err(reason) => {
                        tracing::debug!(path = r.path, from = %r.from, reason, "heartbeat dropped");
                        self.input(NodeInput::Malformed { path: r.path, reason });
                    }
                },
                Some(input) = inbox.results.recv() => self.input(NodeInput::Resource(input)),
                Some(req) = inbox.requests.recv() => self.handle_request(req),
                _ = sigterm.recv(), if deadline.is_none() => deadline = Some(self.leave()),
                _ = tokio::signal::ctrl_c(), if deadline.is_none() => deadline = Some(self.leave()),
            }
            self.settle_standby();
            self.publish_status();
            if let Some(deadline) = deadline {
                let busy = self.core.busy(self.now());
                let handed_off = !busy || self.core.peers().is_empty();
                if handed_off || tokio::time::Instant::now() >= deadline {
                    return Ok(());
                }
            }
        }
    }

    /// Graceful shutdown: go to standby so peers take our groups.
    fn leave(&mut self) -> tokio::time::Instant {
        tracing::info!("shutting down: handing groups to peers");
        self.systemd.stopping();
        self.input(NodeInput::Leave);
        tokio::time::Instant::now() + SHUTDOWN_HANDOFF
    }
}

/// Runs the daemon for `local` until SIGTERM/SIGINT; `cfg` was read from `path`,
/// which a reload reads again.
pub async fn run(cfg: Config, path: PathBuf, local: String) -> Result<(), RuntimeError> {
    let span = tracing::info_span!("node", node = %local);
    async move {
        let (d, inbox, running) = start(cfg, path, &local).await?;
        let how = core_thread::Scheduling::from_priority(d.cfg.heartbeat.realtime_priority);
        let (d, inbox, served) = core_thread::run(how, move || event_loop(d, inbox))
            .await
            .map_err(|e| api::ApiError::Io("the event loop thread".into(), e))?;
        served?;
        running.shutdown(d, inbox).await;
        Ok(())
    }
    .instrument(span)
    .await
}

/// The event loop, on its own thread: starts the heartbeat paths there, then serves
/// until the daemon stops.
async fn event_loop(mut d: Daemon, mut inbox: Inbox) -> (Daemon, Inbox, Result<(), RuntimeError>) {
    if let Some(plan) = d.path_plan.take() {
        d.paths = plan.spawn();
    }
    let served = d.serve(&mut inbox).await;
    (d, inbox, served)
}

/// A crash may have left our floating IPs behind: nothing runs here yet.
async fn clear_stale_vips(cfg: &Config, local: &str) {
    for g in &cfg.groups {
        for r in &g.resources {
            let mut agent = Agent::new(r, &LocalMirrors::new(), local, &g.name);
            if agent.vip().is_some() {
                if let Err(e) = agent.stop(&[]).await {
                    tracing::warn!(group = %g.name, resource = %r.name, error = %e, "cannot clear a stale floating IP");
                }
            }
        }
    }
}

/// Builds the daemon: the core, the mirrors, the path tasks, the executors, the
/// notifier, the API, SNMP and metrics servers; emits `daemon_started` and publishes
/// the first snapshot.
async fn start(
    cfg: Config,
    path: PathBuf,
    local: &str,
) -> Result<(Daemon, Inbox, Running), RuntimeError> {
    let node_cfg = cfg
        .node(local)
        .cloned()
        .ok_or_else(|| RuntimeError::UnknownNode(local.to_string()))?;
    let key = Arc::new(cfg.key_bytes()?);
    let events = EventLog::open(local, &cfg.cluster.state_dir, cfg.cluster.event_rotation())?;
    clear_stale_vips(&cfg, local).await;
    let metrics = Metrics::new(&cfg, local)?;
    let nbd_metrics = |export: &str| metrics.nbd(export);
    let mirrors = crate::mirror::node::open_all(&cfg, local, &key, &events, &nbd_metrics).await?;
    let (pkt_tx, packets) = mpsc::channel(1024);
    let path_plan = PathPlan::new(&cfg, &node_cfg, &key, pkt_tx);
    let (running_tx, running_rx) = watch::channel(Arc::new(cfg.clone()));
    let resource_book = Arc::default();
    let (executors, results) = spawn_executors(
        &cfg,
        &running_rx,
        local,
        &events,
        &metrics,
        &mirrors,
        &resource_book,
    );
    let mut core = NodeCore::new(
        NodeConfig::from_config(&cfg, local, EVALUATE_EVERY.as_millis() as u64),
        rand::random(),
        unix_ms(),
        &events.timelines(),
    );
    let (written_tx, log_written) = mpsc::unbounded_channel();
    let log = if cfg.quorum_enabled() {
        let (log, restored) = DurableLog::open(&cfg.cluster.state_dir.join("quorum"))?;
        core.restore_log(&restored, 0)?;
        let writer = LogWriter::spawn(log, written_tx)
            .map_err(|e| api::ApiError::Io("the consensus log writer thread".into(), e))?;
        Some(writer)
    } else {
        None
    };
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (req_tx, requests) = mpsc::channel(64);
    let (mirror_done_tx, mirror_done) = mpsc::channel(16);
    let (fenced_tx, fenced) = mpsc::channel(16);
    let event_observer = metrics::spawn_event_observer(metrics.clone(), events.clone());
    let mut d = Daemon {
        running: running_tx,
        key,
        started: Instant::now(),
        core,
        events: events.clone(),
        metrics: metrics.clone(),
        executors,
        paths: Vec::new(),
        path_plan: Some(path_plan),
        io: tokio::runtime::Handle::current(),
        status: status_tx,
        console: None,
        resource_book,
        mirrors,
        mirror_done: mirror_done_tx,
        fenced: fenced_tx,
        replies: BTreeMap::new(),
        standby_waits: Vec::new(),
        next_request: 0,
        log,
        watchdog: watchdog::WatchdogDevice::configured(&cfg),
        systemd: systemd::Notifier::from_env(),
        deferred: VecDeque::new(),
        cfg,
    };
    let inbox = Inbox {
        packets,
        results,
        requests,
        mirror_done,
        fenced,
        log_written,
    };
    let file = api::server::ConfigFile {
        path,
        local: local.to_string(),
        running: running_rx,
    };
    let running = start_servers(&mut d, file, status_rx, req_tx, event_observer).await?;
    Ok((d, inbox, running))
}

/// One executor task per group, and the channel their results come back on.
fn spawn_executors(
    cfg: &Config,
    running: &watch::Receiver<Arc<Config>>,
    local: &str,
    events: &EventLog,
    metrics: &Metrics,
    mirrors: &LocalMirrors,
    resource_book: &Arc<std::sync::Mutex<status::ResourceBook>>,
) -> (
    BTreeMap<String, mpsc::Sender<GroupCommand>>,
    mpsc::Receiver<crate::placement::policy::Input>,
) {
    let (res_tx, results) = mpsc::channel(256);
    let observer: executor::Observer = {
        let metrics = metrics.clone();
        let book = Arc::clone(resource_book);
        Arc::new(move |observed| {
            let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
            match observed {
                executor::Observed::Check(done) => {
                    metrics.check(
                        done.group,
                        done.resource,
                        done.kind.name(),
                        done.took,
                        done.error.is_none(),
                    );
                    let view = status::CheckView {
                        kind: done.kind,
                        at_ms: crate::event::unix_ms(),
                        took_ms: done.took.as_millis() as u64,
                        error: done.error,
                    };
                    book.record(done.group, done.resource, view);
                }
                executor::Observed::DiskLease {
                    group,
                    resource,
                    status,
                } => book.watch_lease(group, resource, status),
            }
        })
    };
    let executors = cfg
        .groups
        .iter()
        .map(|g| {
            let tx = executor::spawn(
                local,
                g,
                running.clone(),
                events.clone(),
                observer.clone(),
                mirrors,
                res_tx.clone(),
            );
            (g.name.clone(), tx)
        })
        .collect();
    // Only the executors hold result senders: when they have all stopped, the channel
    // closes and shutdown is complete.
    drop(res_tx);
    (executors, results)
}

/// The notifier (listening before the first event, so receivers get agentStart), then
/// `daemon_started`, the first snapshot, and the API, SNMP and metrics servers.
async fn start_servers(
    d: &mut Daemon,
    file: api::server::ConfigFile,
    status_rx: watch::Receiver<Status>,
    requests: mpsc::Sender<Request>,
    event_observer: tokio::task::JoinHandle<()>,
) -> Result<Running, RuntimeError> {
    let local = file.local.as_str();
    let (snmp_engine, notifier) = match &d.cfg.snmp {
        Some(snmp) => {
            let engine = snmp::Engine::load(
                snmp,
                &d.cfg.cluster.name,
                local,
                &d.cfg.cluster.state_dir,
                d.started,
            )?;
            let mut notifier = snmp::notify::spawn_notifier(
                snmp,
                engine.id.clone(),
                engine.boots,
                d.events.clone(),
                Box::new(snmp::mib::notification_for),
                engine.start,
            );
            notifier.follow(file.running.clone());
            d.metrics.attach_snmp_notifier(notifier.statuses());
            (Some(engine), Some(notifier))
        }
        None => (None, None),
    };
    d.events.emit(
        EventKind::DaemonStarted,
        fields([
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("boot_id", format!("{:016x}", d.core.boot_id())),
        ]),
    );
    let (console_identity, console_view) = crate::console::identity(&d.cfg, local)?.unzip();
    d.console = console_view;
    // The API starts with a real snapshot, never the empty default.
    d.publish_status();
    let snmp_agent = match (&d.cfg.snmp, &snmp_engine) {
        (Some(snmp), Some(engine)) => {
            let running = Some(file.running.clone());
            let agent = snmp::agent::spawn(snmp, engine, status_rx.clone(), running).await?;
            d.metrics.attach_snmp_agent(agent.counters());
            Some(agent)
        }
        _ => None,
    };
    let metrics_server = match &d.cfg.metrics {
        Some(m) => Some(metrics::serve(m.listen, d.metrics.clone(), status_rx.clone()).await?),
        None => None,
    };
    let hangups = spawn_hangup_reloads(file.path.clone(), requests.clone())?;
    let image = crate::image::job::ImageJob::new(
        d.cfg.image.clone(),
        crate::image::job::staging_dir(&d.cfg.cluster.state_dir),
        d.events.clone(),
    );
    let api = api::server::AppState {
        status: status_rx,
        events: d.events.clone(),
        requests,
        config: file,
        image,
    };
    let console = match (&d.cfg.console, console_identity) {
        (Some(c), Some(identity)) => {
            let pages = crate::console::pages::PageState {
                status: api.status.clone(),
                events: d.events.clone(),
            };
            let routes = api::server::router(api.clone());
            let dir = &d.cfg.cluster.state_dir;
            Some(crate::console::start(c.listen, identity, dir, pages, routes).await?)
        }
        _ => None,
    };
    let servers = api::serve(api).await?;
    Ok(Running {
        hangups,
        servers,
        console,
        event_observer,
        metrics_server,
        snmp_agent,
        notifier,
    })
}

/// On each SIGHUP: re-reads the configuration file at `path` (off the loop) and asks
/// the loop to run with it; the outcome, or why the file was refused, is logged.
fn spawn_hangup_reloads(
    path: PathBuf,
    requests: mpsc::Sender<Request>,
) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|e| api::ApiError::Io("signal handler".into(), e))?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match control::reload_file(&path, &requests).await {
                Ok(o) => {
                    tracing::info!(applied = ?o.applied, needs_restart = ?o.needs_restart, digest = %o.digest, "SIGHUP: configuration reloaded")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
            }
        }
    }))
}

impl Running {
    /// Stops the executors (each stops what still runs), the servers and the
    /// notifier (after it drained), then closes the mirrors cleanly.
    async fn shutdown(self, mut d: Daemon, mut inbox: Inbox) {
        d.events.emit(EventKind::DaemonStopping, Fields::new());
        // Dropping the command channels makes each executor stop what still runs.
        d.executors.clear();
        drop(self.servers);
        drop(self.console);
        self.hangups.abort();
        self.event_observer.abort();
        if let Some(m) = self.metrics_server {
            m.abort();
        }
        drop(self.snmp_agent);
        if let Some(n) = self.notifier {
            // agentShutdown and the last events reach the receivers that answer.
            n.drain(NOTIFY_DRAIN).await;
        }
        let stopped = tokio::time::timeout(EXECUTORS_STOP, async {
            while inbox.results.recv().await.is_some() {}
        })
        .await
        .is_ok();
        // A clean stop disarms the watchdog; a group that would not stop leaves it
        // armed (and the node is reset), as a crash or a kill does.
        if let Some(w) = &mut d.watchdog {
            if !stopped {
                tracing::error!("groups did not stop: leaving the watchdog armed");
            } else if let Err(e) = w.disarm() {
                tracing::error!(error = %e, "watchdog");
            }
        }
        // The consensus log's last writes reach the disk.
        if let Some(log) = d.log.take() {
            log.finish();
        }
        // Every group has stopped (demoting its mirrors): persist bitmaps, mark clean.
        for m in d.mirrors.values() {
            m.rates.stop().await;
            m.mirror.shutdown().await;
        }
        d.events.flush();
    }
}
