//! Seeded, deterministic simulation of clusters that decide with a quorum.
//!
//! Every node runs the product's own [`NodeCore`] with its consensus core (raft-rs,
//! through `tandem::quorum::core::QuorumCore`), and a witness, when there is one, runs
//! the same `QuorumCore` the `tandem witness` daemon runs. The simulation turns its
//! clocks, its network and its executors into inputs and carries out the actions:
//! heartbeats and quorum datagrams go through a simulated network (per-pair cuts, loss,
//! delay), log writes go to a simulated disk that keeps exactly the batches written
//! before a crash, group commands go to a simulated executor.
//!
//! Each scenario, from a `u64` seed: 2 nodes and a witness, 3 nodes, or 5 nodes; one
//! or two groups; a fault phase (partitions of any shape, one-way cuts, packet loss,
//! kills and restarts at any point of the log, pauses past the lease, every node's
//! clock running at its own rate within ρ; administrators' switchovers and standby
//! toggles, issued on any node), then a heal phase with every fault removed and every
//! node brought back online.
//!
//! About half the scenarios give the nodes a watchdog (`[quorum] watchdog`, W from 1 s
//! to what the lease allows): the simulation carries out the core's arm, pet and
//! disarm, and resets (crashes) a node whose armed watchdog went W without a pet, on
//! real time, paused or not. In those, a node's watchdog device may also break (it
//! protects nothing and is reported to the core) and be repaired (reported at the
//! runtime's next 5-s retry).
//!
//! Invariants:
//! 1. (every step of real time) at most one node serves a group. A node serves from its
//!    executor's successful start until it is told to stop (the floating IP goes
//!    first); a paused node serves too when it has a watchdog (its kernel keeps the
//!    floating IP), and does not without one (the scenarios without a watchdog check
//!    only the cores' decisions).
//! 2. (every step) a serving node holds an unexpired lease on its own clock.
//! 3. (end of the heal phase) every group runs on exactly one node, and every node
//!    agrees with the log on its owner.
//!
//! - `TANDEM_QSIM_SEED=<n>`: rerun one seed with a verbose trace;
//! - `TANDEM_QSIM_SCENARIOS=<n>`: how many seeds the default run covers.

#![allow(clippy::needless_range_loop)]

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem::cluster::packet::Heartbeat;
use tandem::config::Switchback;
use tandem::node::{
    ControlCommand, GroupCommand, NodeAction, NodeConfig, NodeCore, NodeInput, PowerFenceResult,
    QuorumSettings, StopMode, WatchdogCommand, WatchdogFault, WatchdogOp, WatchdogReport,
};
use tandem::placement::policy::{GroupPolicy, Input, Now, PlacementConfig};
use tandem::quorum::core::{QuorumAction, QuorumConfig, QuorumCore, QuorumTiming};
use tandem::quorum::records::{PersistBatch, Restored};
use tandem::quorum::wire::QuorumPacket;

#[path = "common/seeds.rs"]
mod seeds;

const STEP: u64 = 25;
const HB: u64 = 200;
const DEAD: u64 = 1000;
const DRIFT_PPM: u64 = 10_000;
const STOP_MARGIN: u64 = 300;
const WALL_BASE: u64 = 1_700_000_000_000;
const DEFAULT_SCENARIOS: u64 = 10_000;
const WITNESS: &str = "w";

#[derive(Clone)]
enum Msg {
    Hb(Box<Heartbeat>),
    Q(Box<QuorumPacket>),
}

/// A group's executor on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exec {
    Stopped,
    Starting(u64),
    Running,
    /// Stopping until this time; a top-down stop still serves until it is done (the
    /// floating IP goes last), a lease-lost stop drops the floating IP at once.
    Stopping(u64, StopMode),
    /// A lost lease's fast stop, until this time: it still serves until then (the
    /// floating IP is not yet dropped); then held, or the clean stop until `then`.
    FastStopping(u64, Option<u64>),
    /// Fast-stopped and held after a lost lease (serves nothing).
    Held,
    /// Resuming a held group until this time (serves once resumed).
    Resuming(u64),
}

struct Node {
    name: String,
    up: bool,
    paused_until: Option<u64>,
    /// Clock rate in ppm off real time, and the offset of this boot's clock.
    skew_ppm: i64,
    clock_base: u64,
    boot_real: u64,
    core: Option<NodeCore>,
    witness: Option<QuorumCore>,
    disk: Restored,
    exec: Vec<Exec>,
    next_hb: u64,
    inbox: VecDeque<(u64, String, Msg)>,
    /// The watchdog, when armed: the real time of the last pet (or of the arm).
    wd_pet: Option<u64>,
    /// A node the watchdog reset boots again at this real time.
    reboot_at: Option<u64>,
    /// The watchdog device cannot be opened or written (a fault of the fault phase).
    wd_broken: bool,
    /// Consensus log writes under way, in order: (durable at, write, batch). A crash
    /// loses them; each one that completes is reported with `NodeInput::LogWritten`.
    writes: VecDeque<(u64, u64, PersistBatch)>,
}

impl Node {
    fn clock(&self, real: u64) -> u64 {
        let el = real - self.boot_real;
        let drift = (el as i64 * self.skew_ppm) / 1_000_000;
        self.clock_base + (el as i64 + drift) as u64
    }
}

struct Sim {
    rng: StdRng,
    verbose: bool,
    real: u64,
    names: Vec<String>,
    n_nodes: usize,
    groups: Vec<String>,
    nodes: Vec<Node>,
    /// cut[a][b]: a's datagrams to b are lost.
    cut: Vec<Vec<bool>>,
    loss_pct: u32,
    max_serving: usize,
    violations: Vec<String>,
    /// Crashes at log writes happen only in the fault phase.
    faults_on: bool,
    /// L: as short as the config allows, or as long as a 3-s watchdog needs.
    lease_ms: u64,
    /// W, when the nodes have a watchdog.
    watchdog_s: Option<u64>,
    /// The nodes have BMCs: a new owner powers its predecessor off (`[node.fence]`).
    /// Drawn from its own generator, so the scenarios without fencing stay the same.
    fencing: bool,
    fence_rng: StdRng,
    /// Power-offs under way.
    fences: Vec<PendingFence>,
    /// The scenario's disk: some fsyncs stall (ms, when they do). Drawn from its own
    /// generator.
    disk_stall_ms: Option<u64>,
    disk_rng: StdRng,
    /// The groups hold on a lost lease (`GroupPolicy::hold_on_lease_loss`).
    holds: bool,
}

/// A power-off the simulated BMC carries out: the target dies at `kill_at` (when the
/// BMC succeeds), and the requester hears of it at `report_at`, never before.
struct PendingFence {
    kill_at: u64,
    report_at: u64,
    requester: usize,
    requester_boot: u64,
    target: usize,
    ok: bool,
}

/// The product's own derivation of the core's settings (`QuorumConfig::derive`, as the
/// daemon and the witness use it), from the simulated heartbeat timing.
fn settings(
    names: &[String],
    witness: bool,
    local: &str,
    lease_ms: u64,
    watchdog_s: Option<u64>,
) -> QuorumSettings {
    let timing = QuorumTiming {
        interval: Duration::from_millis(HB),
        dead_time: Duration::from_millis(DEAD),
        lease: Duration::from_millis(lease_ms),
        drift_ppm: DRIFT_PPM,
    };
    QuorumSettings {
        core: QuorumConfig::derive(
            timing,
            names.to_vec(),
            witness.then(|| WITNESS.to_string()),
            local,
        ),
        stop_margin_ms: STOP_MARGIN,
        reachable_ms: DEAD,
        watchdog_s,
    }
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let (n_nodes, witness) = match rng.gen_range(0..10) {
            0..=4 => (2, true),
            5..=8 => (3, false),
            _ => (5, false),
        };
        let mut names: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
        if witness {
            names.push(WITNESS.into());
        }
        let groups: Vec<String> = (0..rng.gen_range(1..=2)).map(|g| format!("g{g}")).collect();
        let rng_pick = rng.gen_range(0..3);
        let lease_ms = [1500, 2500, 4000][rng_pick];
        // The longest W the config allows: L >= W + heartbeat interval + 200 ms.
        let max_w = (lease_ms - HB - 200) / 1000;
        let watchdog_s = rng.gen_bool(0.5).then(|| rng.gen_range(1..=max_w));
        let mut fence_rng = StdRng::seed_from_u64(seed ^ 0xfe7ce);
        let fencing = fence_rng.gen_bool(0.4);
        // Half the scenarios hold their groups on a lost lease (resumed if it comes
        // back at the same epoch); a separate RNG leaves the others unchanged.
        let holds = StdRng::seed_from_u64(seed ^ 0x401d).gen_bool(0.5);
        let mut disk_rng = StdRng::seed_from_u64(seed ^ 0xd15c);
        let disk_stall_ms = disk_rng
            .gen_bool(0.3)
            .then(|| disk_rng.gen_range(1..=12) * 250);
        let mut sim = Sim {
            rng,
            disk_stall_ms,
            disk_rng,
            holds,
            fencing,
            fence_rng,
            fences: Vec::new(),
            verbose,
            real: 0,
            n_nodes,
            groups,
            nodes: Vec::new(),
            cut: vec![vec![false; names.len()]; names.len()],
            loss_pct: 0,
            max_serving: 0,
            violations: Vec::new(),
            faults_on: false,
            lease_ms,
            watchdog_s,
            names,
        };
        for i in 0..sim.names.len() {
            let skew = sim
                .rng
                .gen_range(-(DRIFT_PPM as i64) * 9 / 20..=(DRIFT_PPM as i64) * 9 / 20);
            let node = Node {
                name: sim.names[i].clone(),
                up: false,
                paused_until: None,
                skew_ppm: skew,
                clock_base: sim.rng.gen_range(0..100_000),
                boot_real: 0,
                core: None,
                witness: None,
                disk: Restored::default(),
                exec: vec![Exec::Stopped; sim.groups.len()],
                next_hb: 0,
                inbox: VecDeque::new(),
                wd_pet: None,
                reboot_at: None,
                wd_broken: false,
                writes: VecDeque::new(),
            };
            sim.nodes.push(node);
            sim.boot(i);
        }
        sim
    }

    fn is_witness(&self, i: usize) -> bool {
        i >= self.n_nodes
    }

    fn boot(&mut self, i: usize) {
        let seed: u64 = self.rng.gen();
        let names = self.names.clone();
        let witness = names.len() > self.n_nodes;
        let real = self.real;
        let n = &mut self.nodes[i];
        n.clock_base = n.clock(real.max(n.boot_real)) + 10_000;
        n.boot_real = real;
        n.up = true;
        n.paused_until = None;
        n.inbox.clear();
        n.wd_pet = None;
        n.reboot_at = None;
        n.exec = vec![Exec::Stopped; self.groups.len()];
        let now = n.clock(real);
        n.next_hb = now + (seed % HB);
        let s = settings(&names, witness, &n.name, self.lease_ms, self.watchdog_s);
        if i >= self.n_nodes {
            n.witness = Some(QuorumCore::new(s.core, &n.disk, now, seed).expect("witness core"));
            return;
        }
        let cfg = NodeConfig {
            cluster: "qsim".into(),
            paths: vec!["hb1".into(), "hb2".into()],
            peers: names[..self.n_nodes]
                .iter()
                .filter(|p| **p != n.name)
                .map(|p| (p.clone(), vec![0, 1]))
                .collect(),
            dead_time_ms: DEAD,
            probe_lead_ms: 300,
            placement: PlacementConfig {
                local: n.name.clone(),
                nodes: (0..self.n_nodes)
                    .map(|j| (names[j].clone(), j as u32 + 1))
                    .collect(),
                groups: self
                    .groups
                    .iter()
                    .map(|g| GroupPolicy {
                        name: g.clone(),
                        allowed: Vec::new(),
                        exclusive: false,
                        switchback: Switchback::Manual,
                        max_restarts: 3,
                        window_ms: 60_000,
                        has_vip: true,
                        hold_on_lease_loss: self.holds,
                    })
                    .collect(),
                startup_grace_ms: DEAD + 2 * HB,
                probe_before_takeover: true,
                probe_retry_ms: 2000,
                probe_fresh_ms: 250,
            },
            quorum: Some(s),
            group_mirrors: Default::default(),
            // Fencing node j waits j × 100 ms (its fence delay).
            fenceable: (0..self.n_nodes)
                .filter(|&j| self.fencing && names[j] != n.name)
                .map(|j| (names[j].clone(), j as u64 * 100))
                .collect(),
            sync_peers: Default::default(),
            sync_links: Default::default(),
            // Every node carries the same configuration digest in its heartbeats.
            config_digest: "0123456789abcdef".into(),
        };
        let mut core = NodeCore::new(cfg, seed, WALL_BASE + real, &[]);
        core.restore_log(&n.disk, now).expect("restore");
        n.core = Some(core);
    }

    fn now_of(&self, i: usize) -> Now {
        Now {
            mono_ms: self.nodes[i].clock(self.real),
            wall_ms: WALL_BASE + self.real,
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn send(&mut self, from: usize, to: &str, m: Msg) {
        let Some(t) = self.idx(to) else { return };
        if self.cut[from][t] || self.rng.gen_range(0..100) < self.loss_pct {
            return;
        }
        let at = self.real + self.rng.gen_range(0..3) * STEP;
        let name = self.names[from].clone();
        self.nodes[t].inbox.push_back((at, name, m));
    }

    fn node_input(&mut self, i: usize, input: NodeInput) {
        let now = self.now_of(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let actions = core.handle(now, input);
        for a in actions {
            self.node_action(i, a);
            if !self.nodes[i].up {
                return; // crashed mid-way
            }
        }
    }

    fn node_action(&mut self, i: usize, a: NodeAction) {
        match a {
            NodeAction::Send { path: 0, peer, hb } => self.send(i, &peer, Msg::Hb(hb)),
            NodeAction::SendQuorum { to, packet } => self.send(i, &to, Msg::Q(packet)),
            NodeAction::PersistLog { batch, write } => {
                // A crash may strike at any log write: before it, nothing of it is kept.
                if self.faults_on && self.rng.gen_range(0..2000) == 0 {
                    self.crash(i, "at a log write");
                    return;
                }
                // The write is durable one step later, or after a stall; in order.
                let stall = match self.disk_stall_ms {
                    Some(ms) if self.disk_rng.gen_range(0..20) == 0 => ms,
                    _ => 0,
                };
                let after = self.nodes[i].writes.back().map_or(0, |w| w.0);
                let at = (self.real + STEP + stall).max(after);
                self.nodes[i].writes.push_back((at, write, batch));
            }
            NodeAction::Group { group, command } => {
                let g = self.groups.iter().position(|x| *x == group).unwrap_or(0);
                let d = self.rng.gen_range(2..12) * STEP;
                let fast = if self.watchdog_s.is_some() {
                    2 * STEP
                } else {
                    0
                };
                let e = &mut self.nodes[i].exec[g];
                match command {
                    GroupCommand::Start { .. } => *e = Exec::Starting(self.real + d),
                    // With a watchdog the fast stop takes two steps: a node paused in
                    // it serves on, and only the watchdog bounds it. Without one it is
                    // instant: nothing bounds a paused node anyway (the two-node and
                    // no-watchdog caveat the config docs state).
                    GroupCommand::Stop(StopMode::LeaseLost) => {
                        *e = Exec::FastStopping(self.real + fast, Some(self.real + d))
                    }
                    GroupCommand::Stop(mode) => *e = Exec::Stopping(self.real + d, mode),
                    GroupCommand::FastStop => *e = Exec::FastStopping(self.real + fast, None),
                    GroupCommand::Resume { .. } => *e = Exec::Resuming(self.real + d),
                    GroupCommand::ProbeVip => {
                        let r = Input::VipProbe {
                            group,
                            in_use: false,
                        };
                        self.node_input(i, NodeInput::Resource(r));
                    }
                    _ => {}
                }
                if fast == 0 && matches!(self.nodes[i].exec[g], Exec::FastStopping(..)) {
                    self.fast_stop_done(i, g);
                }
            }
            NodeAction::Watchdog(cmd) => {
                let (real, n) = (self.real, &mut self.nodes[i]);
                n.wd_pet = match cmd {
                    WatchdogCommand::Arm { .. } => n.wd_pet.or(Some(real)),
                    WatchdogCommand::Pet => n.wd_pet.map(|_| real),
                    WatchdogCommand::Disarm => None,
                };
            }
            NodeAction::PowerOff(ask) => {
                let Some(target) = self.idx(&ask.node) else {
                    return;
                };
                let r = &mut self.fence_rng;
                let ok = r.gen_bool(0.85);
                let kill_at = self.real + ask.delay_ms + r.gen_range(2..24) * STEP;
                let report_at = kill_at + r.gen_range(0..8) * STEP;
                self.trace(format!("{} fences {} (ok={ok})", self.names[i], ask.node));
                self.fences.push(PendingFence {
                    kill_at,
                    report_at,
                    requester: i,
                    requester_boot: self.nodes[i].boot_real,
                    target,
                    ok,
                });
            }
            NodeAction::Emit { kind, fields } if self.verbose => {
                println!("{:>6} {} {:?} {:?}", self.real, self.names[i], kind, fields);
            }
            _ => {}
        }
    }

    fn witness_actions(&mut self, i: usize, actions: Vec<QuorumAction>) {
        let mut seq = self.real * 1000;
        for a in actions {
            match a {
                QuorumAction::Send { to, msgs } => {
                    seq += 1;
                    let p = QuorumPacket {
                        version: 1,
                        max_version: 1,
                        cluster: "qsim".into(),
                        from: WITNESS.into(),
                        voters_digest: tandem::quorum::wire::voters_digest(&self.names),
                        boot_id: self.nodes[i].boot_real,
                        seq,
                        sent_ms: self.nodes[i].clock(self.real),
                        msgs,
                    };
                    self.send(i, &to, Msg::Q(Box::new(p)));
                }
                // The witness writes in line, as `tandem witness` does.
                QuorumAction::Persist { batch, write } => {
                    self.nodes[i].disk.apply(&batch);
                    let now = self.nodes[i].clock(self.real);
                    let mut more = Vec::new();
                    if let Some(w) = self.nodes[i].witness.as_mut() {
                        w.persisted(now, write, &mut more);
                    }
                    self.witness_actions(i, more);
                }
                QuorumAction::Applied(_) => {}
            }
        }
    }

    /// The log writes of node `i` that are durable by now: kept, then reported.
    fn complete_writes(&mut self, i: usize) {
        while self.nodes[i]
            .writes
            .front()
            .is_some_and(|w| w.0 <= self.real)
        {
            let Some((_, write, batch)) = self.nodes[i].writes.pop_front() else {
                break;
            };
            self.nodes[i].disk.apply(&batch);
            self.node_input(i, NodeInput::LogWritten { write });
            if !self.nodes[i].up {
                return;
            }
        }
    }

    fn crash(&mut self, i: usize, why: &str) {
        if self.verbose {
            println!("{:>6} {} CRASH {why}", self.real, self.names[i]);
        }
        let n = &mut self.nodes[i];
        n.up = false;
        n.core = None;
        n.witness = None;
        n.exec = vec![Exec::Stopped; self.groups.len()];
        n.inbox.clear();
        n.wd_pet = None;
        n.reboot_at = None;
        n.writes.clear();
    }

    /// One step of real time on node `i`.
    fn run_node(&mut self, i: usize) {
        if !self.nodes[i].up {
            if self.nodes[i].reboot_at.is_some_and(|t| self.real >= t) {
                self.trace(format!("reboot {} after its watchdog reset", self.names[i]));
                self.boot(i);
            }
            return;
        }
        if let (Some(w), Some(t)) = (self.watchdog_s, self.nodes[i].wd_pet) {
            if self.real >= t + w * 1000 {
                self.crash(i, "watchdog reset");
                self.nodes[i].reboot_at = Some(self.real + 2000);
                return;
            }
        }
        if let Some(t) = self.nodes[i].paused_until {
            if self.real < t {
                return;
            }
            self.nodes[i].paused_until = None;
            if !self.is_witness(i) {
                self.node_input(i, NodeInput::Tick);
            }
        }
        // Executors.
        for g in 0..self.groups.len() {
            let group = self.groups[g].clone();
            match self.nodes[i].exec[g] {
                Exec::Starting(t) if self.real >= t => {
                    self.nodes[i].exec[g] = Exec::Running;
                    let r = Input::Started {
                        group,
                        ok: true,
                        error: None,
                        cleanup_ok: true,
                        steps: Vec::new(),
                        first_check_wall_ms: Some(WALL_BASE + self.real),
                    };
                    self.node_input(i, NodeInput::Resource(r));
                }
                Exec::FastStopping(t, _) if self.real >= t => self.fast_stop_done(i, g),
                Exec::Resuming(t) if self.real >= t => {
                    self.nodes[i].exec[g] = Exec::Running;
                    let r = Input::Resumed {
                        group,
                        ok: true,
                        error: None,
                    };
                    self.node_input(i, NodeInput::Resource(r));
                }
                Exec::Stopping(t, _) if self.real >= t => {
                    self.nodes[i].exec[g] = Exec::Stopped;
                    let r = Input::Stopped {
                        group,
                        ok: true,
                        error: None,
                        steps: Vec::new(),
                    };
                    self.node_input(i, NodeInput::Resource(r));
                }
                _ => {}
            }
        }
        self.complete_writes(i);
        if !self.nodes[i].up {
            return;
        }
        // Datagrams due.
        while let Some((at, _, _)) = self.nodes[i].inbox.front() {
            if *at > self.real {
                break;
            }
            let Some((_, from, m)) = self.nodes[i].inbox.pop_front() else {
                break;
            };
            self.deliver(i, &from, m);
            if !self.nodes[i].up {
                return;
            }
        }
        let now = self.nodes[i].clock(self.real);
        let due = now >= self.nodes[i].next_hb;
        if due {
            self.nodes[i].next_hb = now + HB;
        }
        if self.is_witness(i) {
            let mut out = Vec::new();
            if let Some(w) = self.nodes[i].witness.as_mut() {
                w.tick(now, &mut out);
                if due {
                    w.lease_round(now, &mut out);
                }
            }
            self.witness_actions(i, out);
            return;
        }
        if due {
            self.node_input(i, NodeInput::HeartbeatDue);
        }
        self.watchdog_device(i);
        if !self.nodes[i].up {
            return;
        }
        self.node_input(i, NodeInput::Tick);
    }

    fn deliver(&mut self, i: usize, from: &str, m: Msg) {
        match m {
            Msg::Hb(hb) => {
                if !self.is_witness(i) {
                    self.node_input(i, NodeInput::Packet { path: 0, hb: *hb });
                }
            }
            Msg::Q(p) => {
                if self.is_witness(i) {
                    let now = self.nodes[i].clock(self.real);
                    let mut out = Vec::new();
                    if let Some(w) = self.nodes[i].witness.as_mut() {
                        w.step(now, from, p.sent_ms, p.msgs, &mut out);
                    }
                    self.witness_actions(i, out);
                } else {
                    self.node_input(i, NodeInput::Quorum(p));
                }
            }
        }
    }

    /// Node `i`'s fast stop of group `g` is over: held, or on to the clean stop.
    fn fast_stop_done(&mut self, i: usize, g: usize) {
        let Exec::FastStopping(_, then) = self.nodes[i].exec[g] else {
            return;
        };
        self.nodes[i].exec[g] = match then {
            Some(end) => Exec::Stopping(end, StopMode::LeaseLost),
            None => Exec::Held,
        };
        let r = Input::FastStopped {
            group: self.groups[g].clone(),
            ok: true,
        };
        self.node_input(i, NodeInput::Resource(r));
    }

    fn serving(&self, i: usize, g: usize) -> bool {
        let n = &self.nodes[i];
        n.up && (n.paused_until.is_none() || self.watchdog_s.is_some())
            && matches!(
                n.exec[g],
                Exec::Running | Exec::Stopping(_, StopMode::TopDown) | Exec::FastStopping(..)
            )
    }

    fn check_step(&mut self) {
        for g in 0..self.groups.len() {
            let serving: Vec<usize> = (0..self.n_nodes).filter(|&i| self.serving(i, g)).collect();
            self.max_serving = self.max_serving.max(serving.len());
            if serving.len() > 1 {
                self.violations.push(format!(
                    "t={} {} served by {:?}",
                    self.real,
                    self.groups[g],
                    serving.iter().map(|&i| &self.names[i]).collect::<Vec<_>>()
                ));
            }
            for &i in &serving {
                let core = self.nodes[i].core.as_ref().expect("serving node is up");
                let now = self.nodes[i].clock(self.real);
                let lease = core
                    .quorum()
                    .and_then(|q| q.leases().serving_end(&self.groups[g]));
                if lease.is_none_or(|end| end <= now) {
                    self.violations.push(format!(
                        "t={} {} serves {} without a lease ({lease:?}, now {now})",
                        self.real, self.names[i], self.groups[g]
                    ));
                }
            }
        }
    }

    /// Carries out the simulated BMCs' power-offs that are due, then reports them.
    fn run_fences(&mut self) {
        let real = self.real;
        let mut killed = Vec::new();
        for f in &mut self.fences {
            if f.ok && f.kill_at <= real {
                f.kill_at = u64::MAX;
                killed.push(f.target);
            }
        }
        for t in killed {
            if self.nodes[t].up {
                self.crash(t, "powered off by its BMC");
            }
            // An operator powers it on again later.
            self.nodes[t].reboot_at = Some(real + 4000);
        }
        // A paused requester hears its BMC's answer only once it runs again (the
        // answer waits in its socket). Delivered while it was paused, the answer let
        // its core start groups in the middle of the pause, on a lease the pause then
        // ran out (seed 1594).
        let nodes = &self.nodes;
        let (due, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.fences).into_iter().partition(|f| {
                f.report_at <= real
                    && (!f.ok || f.kill_at == u64::MAX)
                    && nodes[f.requester].paused_until.is_none_or(|t| real >= t)
            });
        self.fences = rest;
        for f in due {
            let node = self.names[f.target].clone();
            self.trace(format!("fence of {node}: ok={}", f.ok));
            if !self.nodes[f.requester].up || self.nodes[f.requester].boot_real != f.requester_boot
            {
                continue;
            }
            let result = if f.ok {
                PowerFenceResult::Off {
                    method: "redfish".into(),
                    elapsed_ms: 100,
                }
            } else {
                PowerFenceResult::Failed {
                    reason: "timeout".into(),
                }
            };
            self.node_input(f.requester, NodeInput::PowerFenced { node, result });
        }
    }

    fn step(&mut self) {
        self.real += STEP;
        self.run_fences();
        let mut order: Vec<usize> = (0..self.names.len()).collect();
        for k in (1..order.len()).rev() {
            let j = self.rng.gen_range(0..=k);
            order.swap(k, j);
        }
        for i in order {
            self.run_node(i);
        }
        self.check_step();
    }

    /// One random fault, applied now.
    fn fault(&mut self) {
        let n = self.names.len();
        let i = self.rng.gen_range(0..n);
        match self.rng.gen_range(0..12) {
            0..=2 => {
                // Isolate a random side (both directions, or one way).
                let oneway = self.rng.gen_range(0..4) == 0;
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.4)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] && !side[b] {
                            self.cut[a][b] = true;
                            if !oneway {
                                self.cut[b][a] = true;
                            }
                        }
                    }
                }
                self.trace(format!("partition {side:?} oneway={oneway}"));
            }
            3 => {
                for a in 0..n {
                    for b in 0..n {
                        self.cut[a][b] = false;
                    }
                }
                self.trace("heal links".into());
            }
            4 => {
                self.loss_pct = self.rng.gen_range(0..40);
                self.trace(format!("loss {}%", self.loss_pct));
            }
            5 => {
                if self.nodes[i].up {
                    self.crash(i, "killed");
                } else {
                    self.trace(format!("boot {}", self.names[i]));
                    self.boot(i);
                }
            }
            6 | 7 => {
                let ms = self.rng.gen_range(2..14) * 250;
                if self.nodes[i].up && self.nodes[i].paused_until.is_none() {
                    self.nodes[i].paused_until = Some(self.real + ms);
                    self.trace(format!("pause {} {ms} ms", self.names[i]));
                }
            }
            8 | 9 => {
                // An administrator's switchover, issued on any node.
                let on = self.rng.gen_range(0..self.n_nodes);
                let to = self.rng.gen_range(0..self.n_nodes);
                let g = self.rng.gen_range(0..self.groups.len());
                let command = ControlCommand::Switchover {
                    group: self.groups[g].clone(),
                    to: self.rng.gen_bool(0.5).then(|| self.names[to].clone()),
                };
                self.trace(format!("switchover {command:?} on {}", self.names[on]));
                if self.nodes[on].up && self.nodes[on].paused_until.is_none() {
                    self.node_input(on, NodeInput::Control { id: 1, command });
                }
            }
            10 => {
                // An administrator puts a node in standby or back online, on any node:
                // a decision of the log.
                let on = self.rng.gen_range(0..self.n_nodes);
                let command = ControlCommand::Standby {
                    node: self.names[self.rng.gen_range(0..self.n_nodes)].clone(),
                    on: self.rng.gen_bool(0.5),
                };
                self.trace(format!("{command:?} on {}", self.names[on]));
                if self.nodes[on].up && self.nodes[on].paused_until.is_none() {
                    self.node_input(on, NodeInput::Control { id: 1, command });
                }
            }
            11 if self.watchdog_s.is_some()
                && i < self.n_nodes
                && self.nodes[i].paused_until.is_none() =>
            {
                // The watchdog device breaks (a failed pet closes it) or is repaired.
                // Not on a paused node: a device that stops resetting a node that
                // stopped running is a double fault no software detects in time.
                let n = &mut self.nodes[i];
                n.wd_broken = !n.wd_broken;
                if n.wd_broken {
                    n.wd_pet = None;
                }
                let state = if n.wd_broken { "breaks" } else { "is repaired" };
                self.trace(format!("watchdog of {} {state}", self.names[i]));
            }
            _ => {}
        }
    }

    /// The runtime's side of a watchdog device: a broken one is reported at once (a
    /// failed pet, or the check at start), a repaired one at the next 5-s retry.
    fn watchdog_device(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let report = match (self.nodes[i].wd_broken, core.watchdog_fault().is_some()) {
            (true, false) => WatchdogReport::Failed(WatchdogFault {
                device: "wd".into(),
                op: WatchdogOp::Write,
                error: "Input/output error (os error 5)".into(),
            }),
            (false, true) if self.real.is_multiple_of(5000) => WatchdogReport::Available,
            _ => return,
        };
        self.node_input(i, NodeInput::Watchdog(report));
    }

    fn trace(&self, s: String) {
        if self.verbose {
            println!("{:>6} -- {s}", self.real);
        }
    }

    fn heal(&mut self) {
        let n = self.names.len();
        self.cut = vec![vec![false; n]; n];
        self.loss_pct = 0;
        for i in 0..n {
            self.nodes[i].paused_until = None;
            self.nodes[i].wd_broken = false;
            if !self.nodes[i].up {
                self.boot(i);
            }
        }
        self.trace("HEAL".into());
    }

    /// The heal phase brings every node the log has in standby back online (asked of
    /// every node: only a quorate one proposes it).
    fn bring_online(&mut self) {
        let standby: std::collections::BTreeSet<String> = (0..self.n_nodes)
            .filter_map(|i| self.nodes[i].core.as_ref()?.quorum())
            .flat_map(|q| q.register().standby.iter().cloned())
            .collect();
        for node in standby {
            for i in 0..self.n_nodes {
                let command = ControlCommand::Standby {
                    node: node.clone(),
                    on: false,
                };
                self.node_input(i, NodeInput::Control { id: 1, command });
            }
        }
    }

    /// Invariant 3, once the cluster settled: one runner per group, owners agreed.
    fn settled(&self) -> Result<(), String> {
        for (g, group) in self.groups.iter().enumerate() {
            let running: Vec<usize> = (0..self.n_nodes)
                .filter(|&i| self.nodes[i].exec[g] == Exec::Running)
                .collect();
            if running.len() != 1 {
                return Err(format!("{group} runs on {running:?}"));
            }
            for i in 0..self.n_nodes {
                let core = self.nodes[i].core.as_ref().ok_or("a node is down")?;
                let owner = core
                    .quorum()
                    .and_then(|q| q.register().owner(group))
                    .map(|o| o.owner.clone());
                if owner.as_deref() != Some(self.names[running[0]].as_str()) {
                    return Err(format!(
                        "{} thinks {group} is owned by {owner:?}, it runs on {}",
                        self.names[i], self.names[running[0]]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs one scenario; returns (max simultaneous servers, violations).
fn run(seed: u64, verbose: bool) -> Result<(), String> {
    let mut sim = Sim::new(seed, verbose);
    // A quiet start, so the cluster forms and places the groups.
    while sim.real < 6000 {
        sim.step();
    }
    let fault_end = sim.real + sim.rng.gen_range(6_000..16_000);
    let mut next_fault = sim.real;
    sim.faults_on = true;
    while sim.real < fault_end {
        if sim.real >= next_fault {
            sim.fault();
            next_fault = sim.real + sim.rng.gen_range(4..40) * STEP * 4;
        }
        sim.step();
    }
    sim.faults_on = false;
    sim.heal();
    let heal_end = sim.real + 30_000;
    let mut ok_since: Option<u64> = None;
    while sim.real < heal_end {
        sim.step();
        if sim.real.is_multiple_of(500) {
            sim.bring_online();
            match sim.settled() {
                Ok(()) => {
                    let since = *ok_since.get_or_insert(sim.real);
                    if sim.real - since >= 3000 {
                        break;
                    }
                }
                Err(_) => ok_since = None,
            }
        }
    }
    if let Some(v) = sim.violations.first() {
        return Err(format!("{v} ({} violations)", sim.violations.len()));
    }
    sim.settled()
        .map_err(|e| format!("after the heal phase: {e}"))
}

#[test]
fn quorum_never_two_servers_and_every_group_placed_after_heal() {
    seeds::run_seeds("TANDEM_QSIM", DEFAULT_SCENARIOS, |seed, verbose| {
        run(seed, verbose).map(|()| 0)
    });
}
