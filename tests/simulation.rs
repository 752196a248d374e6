//! Seeded, deterministic simulation of a whole Tandem cluster.
//!
//! Every node runs the product's own [`NodeCore`] (the membership and placement cores
//! wired exactly as the daemon runs them): the simulation only turns its clock, its
//! network and its executors into [`NodeInput`]s (`HeartbeatDue` every 200 ms,
//! `CheckLiveness`, `Evaluate`, `ProbeSilentPeers`, packets, executor results, admin
//! requests) and carries out the [`NodeAction`]s the core returns: heartbeats go
//! through the simulated network, group commands to a simulated executor per node
//! that runs one command at a time and answers with `Started`/`Stopped`/`Restarted`/
//! `VipProbe` after a random delay.
//!
//! The world around the cores is simulated: a clock advancing in 25 ms steps, two
//! heartbeat paths (per path and direction: cut, packet loss, small reordering delay),
//! a public LAN that can be partitioned separately (the floating-IP probe answers "in
//! use" iff another live node on the same LAN side holds the group), node kills,
//! restarts (new boot), pauses (SIGSTOP: packets and executor results queue up and are
//! processed on resume, the clock jumps), broken services (starts and restarts fail),
//! flapping checks, admin switchovers and standby (issued on any node). Each scenario
//! is generated from a `u64` seed: 2 or 3 nodes, 1 or 2 groups, a fault phase, then a
//! heal phase with every fault removed and every node up.
//!
//! Invariants:
//! 1. (every step) a group never runs on two nodes that have heard each other
//!    continuously for more than [`RESOLVE_MS`]: owners that meet after a partition
//!    must resolve in time. (At each start) a floating-IP group is never started while
//!    another live node on the same LAN side holds it and the heartbeats between them
//!    are cut, unless a probe found the address free within the core's
//!    `probe_fresh_ms` (a probe is a snapshot: such starts are counted, see [`Stats`]).
//! 2. (at each stop) a running group is only stopped for a reason: admin switchover,
//!    standby, exhausted restarts, split brain, automatic switchback, or registers of
//!    two sides of a partition merging as they meet.
//! 3. (end of the heal phase) every group that has an eligible node runs on exactly one
//!    node, and every node agrees on the owner.
//!
//! Placement ticks: the core is pure, so a node is evaluated at once when its view of
//! the peers changes and otherwise every [`IDLE_EVAL_MS`] (its deadlines are seen a
//! little late). The heal phase ends once the cluster has been settled for a while;
//! both keep the debug-build run of [`DEFAULT_SCENARIOS`] scenarios fast.
//!
//! - `TANDEM_SIM_SEED=<n>`: rerun one seed with a verbose trace;
//! - `TANDEM_SIM_SCENARIOS=<n>`: how many seeds the default run covers;
//! - `TANDEM_SIM_FIRST_SEED=<n>`: where the seeds start (default 0);
//! - `TANDEM_SIM_LONG=1`: 30-60 s fault phases instead of 6-18 s.

// Node and group indices address several parallel tables (names, nodes, the network's
// cut matrices), so index loops are clearer than iterators here.
#![allow(clippy::needless_range_loop)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem::cluster::packet::Heartbeat;
use tandem::config::Switchback;
use tandem::event::EventKind;
use tandem::node::{
    ControlCommand, ControlOutcome, GroupCommand, NodeAction, NodeConfig, NodeCore, NodeInput,
};
use tandem::placement::policy::{GroupPolicy, Input, Now, PlacementConfig};

/// Simulation step: the runtime's evaluation period.
const STEP: u64 = 25;
const HB_INTERVAL: u64 = 200;
const DEAD_TIME: u64 = 1000;
const PATHS: usize = 2;
const MAX_NODES: usize = 3;
const MAX_GROUPS: usize = 2;
/// The heal phase lasts at least this long (longer than any restart window, probe
/// retry or startup grace the faults can leave pending)...
const HEAL_MIN_MS: u64 = 8000;
/// ...and ends once the cluster has been settled this long.
const SETTLED_FOR_MS: u64 = 4000;
/// How often the heal phase checks whether the cluster is settled.
const SETTLE_CHECK_MS: u64 = 500;
/// An idle core (no input, unchanged peers) is evaluated this often.
const IDLE_EVAL_MS: u64 = 300;
/// Two owners that regained contact must be down to one within this time.
const RESOLVE_MS: u64 = 3000;
/// A group counts as healthy (invariant 2) once it has run this long.
const HEALTHY_AFTER_MS: u64 = DEAD_TIME;
/// A stop caused by merging the registers of two sides of a partition happens this
/// soon after they regain contact.
const RECONCILE_MS: u64 = 1000;
/// How stale a peer's advert may be while the peer is still considered alive.
const STALE_VIEW_MS: u64 = DEAD_TIME + 500;
/// Packets a paused node's sockets buffer per step before dropping.
const INBOX_CAP: usize = 64;
const WALL_BASE: u64 = 1_700_000_000_000;
const DEFAULT_SCENARIOS: u64 = 10_000;
const NAMES: [&str; MAX_NODES] = ["n1", "n2", "n3"];
const GROUPS: [&str; MAX_GROUPS] = ["g1", "g2"];

// ---------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------

/// One fault episode; each is applied at its start and reverted at its end.
#[derive(Debug, Clone)]
enum Fault {
    /// Cut heartbeat paths (bit mask) between `side` (node mask) and the rest; `oneway`
    /// cuts only the direction from `side`. `lan` also splits the public LAN.
    Partition {
        side: u8,
        paths: u8,
        oneway: bool,
        lan: bool,
    },
    /// The public LAN alone is split.
    LanSplit { side: u8 },
    /// Packet loss (percent) on a path, both directions, every pair.
    Loss { path: usize, pct: u8 },
    /// The node dies; it is restarted at the end unless `stay_dead` (then at heal).
    Kill { node: usize, stay_dead: bool },
    /// SIGSTOP/SIGCONT.
    Pause { node: usize },
    /// Starts and restarts of the group fail on the node.
    Broken { node: usize, group: usize },
    /// Checks of the group fail at random (mean interval in ms) wherever it runs.
    Flap { group: usize, every_ms: u64 },
    /// The node is put in standby (by an admin on `issuer`: the standby register is
    /// replicated), and back online at the end unless `stay`.
    Standby {
        node: usize,
        issuer: usize,
        stay: bool,
    },
    /// An admin asks `issuer` to move `group` (to `target` or the default).
    Switchover {
        issuer: usize,
        group: usize,
        target: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct Episode {
    start: u64,
    end: u64,
    fault: Fault,
}

#[derive(Debug, Clone)]
struct Scenario {
    n: usize,
    priorities: Vec<u32>,
    groups: Vec<GroupPolicy>,
    /// Per node, when its daemon first starts.
    boot_at: Vec<u64>,
    /// The executor's floating-IP probe listens this long (`cluster.vip_probe_timeout`).
    probe_timeout: u64,
    fault_end: u64,
    heal_end: u64,
    episodes: Vec<Episode>,
}

impl Scenario {
    /// How much group `g` prefers node `j`, lower first (as the placement core ranks
    /// it): its place in the group's node list, else the node's priority; a node the
    /// list leaves out ranks last.
    fn rank(&self, g: usize, j: usize) -> u32 {
        let allowed = &self.groups[g].allowed;
        if allowed.is_empty() {
            return self.priorities[j];
        }
        allowed
            .iter()
            .position(|a| a == NAMES[j])
            .map_or(u32::MAX, |k| k as u32)
    }
}

fn gen_scenario(rng: &mut StdRng, fault_ms: (u64, u64), heal_ms: (u64, u64)) -> Scenario {
    let n = rng.gen_range(2..=MAX_NODES);
    let mut priorities: Vec<u32> = (1..=n as u32).collect();
    for i in (1..n).rev() {
        priorities.swap(i, rng.gen_range(0..=i));
    }
    if rng.gen_bool(0.1) {
        // Equal priorities: ties go by name.
        priorities[n - 1] = priorities[0];
    }
    let ng = rng.gen_range(1..=MAX_GROUPS);
    let groups = (0..ng)
        .map(|gi| GroupPolicy {
            name: GROUPS[gi].to_string(),
            allowed: if n == 3 && rng.gen_bool(0.25) {
                let skip = rng.gen_range(0..n);
                (0..n)
                    .filter(|&i| i != skip)
                    .map(|i| NAMES[i].to_string())
                    .collect()
            } else {
                Vec::new()
            },
            switchback: if rng.gen_bool(0.4) {
                Switchback::Automatic
            } else {
                Switchback::Manual
            },
            max_restarts: rng.gen_range(1..=3),
            window_ms: rng.gen_range(2..=6) * 1000,
            has_vip: rng.gen_bool(0.6),
            hold_on_lease_loss: false,
            exclusive: false,
        })
        .collect();
    let boot_at = (0..n)
        .map(|_| {
            if rng.gen_bool(0.3) {
                rng.gen_range(1..=80) * STEP
            } else {
                0
            }
        })
        .collect();
    let probe_timeout = rng.gen_range(2..=12) * STEP;
    let fault_end = rng.gen_range(fault_ms.0 / STEP..=fault_ms.1 / STEP) * STEP;
    let heal_end = fault_end + rng.gen_range(heal_ms.0 / STEP..=heal_ms.1 / STEP) * STEP;
    let count = rng.gen_range(fault_end / 4000..=fault_end / 1500 + 1);
    let mut episodes = Vec::new();
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| rng.gen_range(lo / STEP..=hi / STEP) * STEP;
    for _ in 0..count {
        let start = ms(rng, 1000, fault_end);
        let (len, fault) = match rng.gen_range(0..100) {
            0..=11 => {
                let side = rng.gen_range(1..(1u8 << n) - 1);
                let paths = rng.gen_range(1..=3);
                (
                    ms(rng, 300, 6000),
                    Fault::Partition {
                        side,
                        paths,
                        oneway: rng.gen_bool(0.15),
                        lan: false,
                    },
                )
            }
            12..=21 => {
                let side = rng.gen_range(1..(1u8 << n) - 1);
                (
                    ms(rng, 500, 8000),
                    Fault::Partition {
                        side,
                        paths: 3,
                        oneway: false,
                        lan: true,
                    },
                )
            }
            22..=25 => (
                ms(rng, 500, 6000),
                Fault::LanSplit {
                    side: rng.gen_range(1..(1u8 << n) - 1),
                },
            ),
            26..=35 => (
                ms(rng, 300, 5000),
                Fault::Loss {
                    path: rng.gen_range(0..PATHS),
                    pct: rng.gen_range(20..=95),
                },
            ),
            36..=45 => (
                ms(rng, 100, 6000),
                Fault::Kill {
                    node: rng.gen_range(0..n),
                    stay_dead: rng.gen_bool(0.15),
                },
            ),
            46..=53 => (
                ms(rng, 100, 4000),
                Fault::Pause {
                    node: rng.gen_range(0..n),
                },
            ),
            54..=63 => (
                ms(rng, 500, 10_000),
                Fault::Broken {
                    node: rng.gen_range(0..n),
                    group: rng.gen_range(0..ng),
                },
            ),
            64..=73 => (
                ms(rng, 500, 8000),
                Fault::Flap {
                    group: rng.gen_range(0..ng),
                    every_ms: rng.gen_range(200..=3000),
                },
            ),
            74..=83 => (
                ms(rng, 500, 8000),
                Fault::Standby {
                    node: rng.gen_range(0..n),
                    issuer: rng.gen_range(0..n),
                    stay: rng.gen_bool(0.1),
                },
            ),
            _ => (
                0,
                Fault::Switchover {
                    issuer: rng.gen_range(0..n),
                    group: rng.gen_range(0..ng),
                    target: if rng.gen_bool(0.5) {
                        Some(rng.gen_range(0..n))
                    } else {
                        None
                    },
                },
            ),
        };
        episodes.push(Episode {
            start,
            end: (start + len).min(fault_end),
            fault,
        });
    }
    let groups = n_plus_one(rng, n, groups);
    Scenario {
        n,
        priorities,
        groups,
        boot_at,
        probe_timeout,
        fault_end,
        heal_end,
        episodes,
    }
}

/// N+1 shapes, drawn after everything else so the other draws of a seed stay as they
/// were: a group with no node list may get its own order of every node (its first
/// node is its server, the rest its standbys), and two groups may both be exclusive.
fn n_plus_one(rng: &mut StdRng, n: usize, mut groups: Vec<GroupPolicy>) -> Vec<GroupPolicy> {
    for g in groups.iter_mut().filter(|g| g.allowed.is_empty()) {
        if rng.gen_bool(0.3) {
            let mut order: Vec<String> = NAMES[..n].iter().map(|s| s.to_string()).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.gen_range(0..=i));
            }
            g.allowed = order;
        }
    }
    if groups.len() == 2 && rng.gen_bool(0.3) {
        for g in &mut groups {
            g.exclusive = true;
        }
    }
    groups
}

// ---------------------------------------------------------------------------
// World
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Not started yet, or killed.
    Dead,
    Up,
    Paused,
}

/// What really runs on a node (the processes and addresses), whatever the cores think.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Real {
    Stopped,
    Starting,
    Running,
    Stopping,
}

impl Real {
    fn holds(self) -> bool {
        matches!(self, Real::Starting | Real::Running)
    }
}

struct Node {
    life: Life,
    /// Incremented on every kill: executor results of an older incarnation are dropped.
    generation: u64,
    started_at: u64,
    hb_phase: u64,
    /// The product's node core: every decision this node makes.
    core: NodeCore,
    /// When the core last evaluated placement on its own (`Evaluate`, results).
    last_eval: u64,
    /// Packets and executor results that arrived while paused.
    inbox: VecDeque<(u8, Heartbeat)>,
    deferred: Vec<Input>,
    exec_free_at: [u64; MAX_GROUPS],
    real: [Real; MAX_GROUPS],
    last_held: [Option<u64>; MAX_GROUPS],
    /// When the daemon last resumed from a pause.
    resumed_at: Option<u64>,
    /// When the group's current run here started.
    running_since: [u64; MAX_GROUPS],
    broken: [u32; MAX_GROUPS],
    /// When the executor last found the group's address free.
    probe_free_at: [Option<u64>; MAX_GROUPS],
    /// Time `i` last accepted a packet from each node.
    last_heard: [Option<u64>; MAX_NODES],
}

#[derive(Debug, Clone, Copy)]
enum ExecKind {
    Start,
    Stop,
    Restart,
    Probe,
}

struct ExecEv {
    at: u64,
    node: usize,
    generation: u64,
    group: usize,
    kind: ExecKind,
    /// Begin (ground truth changes) or done (result goes to the core).
    done: bool,
}

struct InFlight {
    at: u64,
    to: usize,
    path: u8,
    hb: Heartbeat,
}

/// What the scenarios exercised, summed over a run.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    steps: u64,
    takeovers: u64,
    split_brains_resolved: u64,
    takeovers_refused_by_probe: u64,
    unfenced_after_fresh_probe: u64,
    partition_reconciliations: u64,
    stops_on_stale_view_after_pause: u64,
    just_started_yields: u64,
    switchovers: u64,
    switchovers_refused: u64,
    slowest_settle_ms: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.takeovers += o.takeovers;
        self.split_brains_resolved += o.split_brains_resolved;
        self.takeovers_refused_by_probe += o.takeovers_refused_by_probe;
        self.unfenced_after_fresh_probe += o.unfenced_after_fresh_probe;
        self.partition_reconciliations += o.partition_reconciliations;
        self.stops_on_stale_view_after_pause += o.stops_on_stale_view_after_pause;
        self.just_started_yields += o.just_started_yields;
        self.switchovers += o.switchovers;
        self.switchovers_refused += o.switchovers_refused;
        self.slowest_settle_ms = self.slowest_settle_ms.max(o.slowest_settle_ms);
    }
}

struct Sim {
    seed: u64,
    stats: Stats,
    verbose: bool,
    rng: StdRng,
    sc: Scenario,
    t: u64,
    nodes: Vec<Node>,
    wire: Vec<InFlight>,
    exec: Vec<ExecEv>,
    /// Applied fault state.
    cut: [[[u8; MAX_NODES]; MAX_NODES]; PATHS],
    loss: [u8; PATHS],
    lan_cut: [[u8; MAX_NODES]; MAX_NODES],
    flap_every: [Vec<u64>; MAX_GROUPS],
    /// Per pair (i < j): since when both have heard each other without a gap.
    contact_since: [[Option<u64>; MAX_NODES]; MAX_NODES],
    /// Registers written by admin switchovers: (group, owner, epoch).
    admin_writes: Vec<(usize, usize, u64)>,
    /// (time, episode index, is_end), sorted.
    schedule: Vec<(u64, usize, bool)>,
    next_sched: usize,
    trace: VecDeque<String>,
    failure: Option<String>,
    steps_run: u64,
}

fn node_index(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).expect("known node")
}

fn group_index(name: &str) -> usize {
    GROUPS.iter().position(|n| *n == name).expect("known group")
}

fn round_up(ms: u64) -> u64 {
    ms.div_ceil(STEP).max(1) * STEP
}

impl Sim {
    fn new(seed: u64, verbose: bool, fault_ms: (u64, u64), heal_ms: (u64, u64)) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let sc = gen_scenario(&mut rng, fault_ms, heal_ms);
        let nodes = (0..sc.n)
            .map(|i| Self::fresh_node(&sc, &mut rng, i, 0, 0))
            .collect();
        let mut schedule = Vec::new();
        for (k, e) in sc.episodes.iter().enumerate() {
            schedule.push((e.start, k, false));
            if e.end > e.start {
                schedule.push((e.end, k, true));
            }
        }
        schedule.sort();
        let mut sim = Sim {
            seed,
            stats: Stats::default(),
            verbose,
            rng,
            sc,
            t: 0,
            nodes,
            wire: Vec::new(),
            exec: Vec::new(),
            cut: [[[0; MAX_NODES]; MAX_NODES]; PATHS],
            loss: [0; PATHS],
            lan_cut: [[0; MAX_NODES]; MAX_NODES],
            flap_every: [Vec::new(), Vec::new()],
            contact_since: [[None; MAX_NODES]; MAX_NODES],
            admin_writes: Vec::new(),
            schedule,
            next_sched: 0,
            trace: VecDeque::new(),
            failure: None,
            steps_run: 0,
        };
        for i in 0..sim.sc.n {
            sim.nodes[i].life = Life::Dead;
        }
        sim.log({
            let mut s = format!(
                "scenario: {} nodes, priorities {:?}",
                sim.sc.n, sim.sc.priorities
            );
            for g in &sim.sc.groups {
                let _ =
                    write!(
                    s,
                    "\n  group {} vip={} switchback={:?} max_restarts={} window={}ms allowed={:?} \
                     exclusive={}",
                    g.name, g.has_vip, g.switchback, g.max_restarts, g.window_ms, g.allowed,
                    g.exclusive
                );
            }
            let _ = write!(
                s,
                "\n  boots at {:?}, faults until {} ms, heal until {} ms",
                sim.sc.boot_at, sim.sc.fault_end, sim.sc.heal_end
            );
            for e in &sim.sc.episodes {
                let _ = write!(s, "\n  {:>6}..{:>6} {:?}", e.start, e.end, e.fault);
            }
            s
        });
        sim
    }

    fn fresh_node(sc: &Scenario, rng: &mut StdRng, i: usize, t: u64, generation: u64) -> Node {
        let local = NAMES[i].to_string();
        let cfg = NodeConfig {
            cluster: "sim".into(),
            paths: (0..PATHS).map(|p| format!("hb{p}")).collect(),
            peers: (0..sc.n)
                .filter(|&j| j != i)
                .map(|j| (NAMES[j].to_string(), (0..PATHS as u8).collect()))
                .collect(),
            dead_time_ms: DEAD_TIME,
            // As `NodeConfig::from_config` derives it, with the simulation's step.
            probe_lead_ms: sc.probe_timeout + 3 * STEP,
            placement: PlacementConfig {
                local,
                nodes: (0..sc.n)
                    .map(|j| (NAMES[j].to_string(), sc.priorities[j]))
                    .collect(),
                groups: sc.groups.clone(),
                // As `PlacementConfig::from_config` derives it.
                startup_grace_ms: DEAD_TIME + 2 * HB_INTERVAL,
                probe_before_takeover: true,
                probe_retry_ms: 2000,
                probe_fresh_ms: sc.probe_timeout + 100,
            },
            // The two-node rules (and three nodes without a quorum): the quorum runs
            // in tests/quorum_sim.rs.
            quorum: None,
            group_mirrors: Default::default(),
            fenceable: Default::default(),
            sync_peers: Default::default(),
            sync_links: Default::default(),
            config_digest: String::new(),
        };
        Node {
            life: Life::Up,
            generation,
            started_at: t,
            hb_phase: rng.gen_range(0..HB_INTERVAL / STEP) * STEP,
            core: NodeCore::new(cfg, rng.gen(), WALL_BASE + t, &[]),
            last_eval: t,
            inbox: VecDeque::new(),
            deferred: Vec::new(),
            exec_free_at: [0; MAX_GROUPS],
            real: [Real::Stopped; MAX_GROUPS],
            last_held: [None; MAX_GROUPS],
            running_since: [0; MAX_GROUPS],
            resumed_at: None,
            broken: [0; MAX_GROUPS],
            probe_free_at: [None; MAX_GROUPS],
            last_heard: [None; MAX_NODES],
        }
    }

    fn log(&mut self, what: String) {
        let line = format!("{:>6} {what}", self.t);
        if self.verbose {
            println!("{line}");
        }
        if self.trace.len() >= 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.log(format!("INVARIANT VIOLATED: {what}"));
            let mut s = format!(
                "seed {} at t={} ms: {what}\nlast events:\n",
                self.seed, self.t
            );
            for l in &self.trace {
                let _ = writeln!(s, "  {l}");
            }
            self.failure = Some(s);
        }
    }

    fn now_of(&self, i: usize) -> Now {
        let n = &self.nodes[i];
        Now {
            mono_ms: self.t - n.started_at,
            wall_ms: WALL_BASE + self.t,
        }
    }

    // -- driving the node core ---------------------------------------------

    /// Hands one input to node `i`'s core and carries out what it returns.
    fn input(&mut self, i: usize, input: NodeInput) {
        let now = self.now_of(i);
        let from = match &input {
            NodeInput::Packet { hb, .. } => Some(node_index(&hb.node)),
            _ => None,
        };
        if matches!(input, NodeInput::Evaluate | NodeInput::Resource(_)) {
            self.nodes[i].last_eval = self.t;
        }
        let accepted_before = self.nodes[i].core.membership().counters().accepted;
        let actions = self.nodes[i].core.handle(now, input);
        let accepted = self.nodes[i].core.membership().counters().accepted > accepted_before;
        if let (true, Some(j)) = (accepted, from) {
            self.nodes[i].last_heard[j] = Some(self.t);
        }
        self.carry_out(i, actions);
    }

    /// Carries out node `i`'s actions: heartbeats through the simulated network,
    /// group commands to its simulated executor.
    fn carry_out(&mut self, i: usize, actions: Vec<NodeAction>) {
        for a in actions {
            match a {
                NodeAction::Send { path, peer, hb } => self.transmit(i, path, &peer, *hb),
                NodeAction::Emit { kind, fields } => self.observe(i, kind, &fields),
                NodeAction::Group { group, command } => {
                    let g = group_index(&group);
                    match command {
                        GroupCommand::ProbeVip => self.submit(i, g, ExecKind::Probe),
                        GroupCommand::Start { .. } => {
                            self.check_start(i, g);
                            self.submit(i, g, ExecKind::Start);
                        }
                        GroupCommand::Stop(_) => {
                            self.check_stop(i, g);
                            self.submit(i, g, ExecKind::Stop);
                        }
                        GroupCommand::Restart { .. } => self.submit(i, g, ExecKind::Restart),
                        GroupCommand::Maintenance(_) => {}
                        GroupCommand::FastStop | GroupCommand::Resume { .. } => {
                            panic!("a hold after a lost lease without a quorum: {command:?}")
                        }
                    }
                }
                // No mirrors and no quorum here, and replies are read by the admin
                // requests.
                NodeAction::RecordTimeline(_)
                | NodeAction::SendQuorum { .. }
                | NodeAction::PersistLog { .. }
                | NodeAction::PeerDead { .. }
                | NodeAction::PeerOutdated { .. }
                | NodeAction::OutdateSelf { .. }
                | NodeAction::Watchdog(_)
                | NodeAction::PowerOff(_)
                | NodeAction::Reply { .. } => {}
            }
        }
    }

    /// Counts and logs what the core emitted.
    fn observe(&mut self, i: usize, kind: EventKind, fields: &tandem::event::Fields) {
        match kind {
            EventKind::FailoverStarted if fields.contains_key("to_node") => {
                self.stats.takeovers += 1
            }
            EventKind::SplitBrainResolved => self.stats.split_brains_resolved += 1,
            EventKind::SplitBrainSuspected => self.stats.takeovers_refused_by_probe += 1,
            _ => {}
        }
        let peer = fields.get("peer").cloned().unwrap_or_default();
        match kind {
            EventKind::NodeDown => self.log(format!(
                "{} declares {peer} down (silent {} ms)",
                NAMES[i],
                fields.get("silent_ms").cloned().unwrap_or_default()
            )),
            EventKind::NodeUp => self.log(format!("{} sees {peer} up", NAMES[i])),
            EventKind::NodeRestarted => self.log(format!("{} sees {peer} restarted", NAMES[i])),
            EventKind::GroupStopping
            | EventKind::SplitBrainResolved
            | EventKind::SplitBrainSuspected
            | EventKind::FailoverStarted
            | EventKind::SwitchoverStarted
            | EventKind::GroupFailed => self.log(format!("{} {kind:?} {fields:?}", NAMES[i])),
            _ if self.verbose => self.log(format!("{} {kind:?} {fields:?}", NAMES[i])),
            _ => {}
        }
    }

    /// One heartbeat from `i` onto the simulated network (cuts, loss, reordering).
    fn transmit(&mut self, i: usize, path: u8, peer: &str, hb: Heartbeat) {
        let j = node_index(peer);
        if self.cut[path as usize][i][j] > 0 {
            return;
        }
        let loss = self.loss[path as usize];
        if loss > 0 && self.rng.gen_range(0..100) < loss {
            return;
        }
        // Mostly next step; sometimes later, which reorders packets across paths.
        let delay = if self.rng.gen_bool(0.1) {
            2 * STEP
        } else {
            STEP
        };
        self.wire.push(InFlight {
            at: self.t + delay,
            to: j,
            path,
            hb,
        });
    }

    /// An admin request on node `i`: the core's answer, and the actions to carry out.
    fn control(
        &mut self,
        i: usize,
        command: ControlCommand,
    ) -> (Result<ControlOutcome, String>, Vec<NodeAction>) {
        let now = self.now_of(i);
        let mut actions = self.nodes[i]
            .core
            .handle(now, NodeInput::Control { id: 1, command });
        let reply = match actions.pop() {
            Some(NodeAction::Reply { result, .. }) => result.map_err(|e| e.to_string()),
            other => panic!("a control input ends with its reply, not {other:?}"),
        };
        (reply, actions)
    }

    /// Queues a command on the node's (sequential) group executor.
    fn submit(&mut self, i: usize, g: usize, kind: ExecKind) {
        let (lo, hi) = match kind {
            ExecKind::Start => (10, 300),
            ExecKind::Stop | ExecKind::Restart => (10, 200),
            // An answer comes within a millisecond; "free" takes the whole timeout.
            ExecKind::Probe => (self.sc.probe_timeout, self.sc.probe_timeout),
        };
        let dur = round_up(self.rng.gen_range(lo..=hi));
        let node = &mut self.nodes[i];
        let begin = node.exec_free_at[g].max(self.t);
        node.exec_free_at[g] = begin + dur;
        let generation = node.generation;
        self.log(format!("{} exec {kind:?} {}", NAMES[i], GROUPS[g]));
        if matches!(kind, ExecKind::Start | ExecKind::Stop) {
            if begin == self.t {
                self.exec_begin(i, g, kind);
            } else {
                self.exec.push(ExecEv {
                    at: begin,
                    node: i,
                    generation,
                    group: g,
                    kind,
                    done: false,
                });
            }
        }
        self.exec.push(ExecEv {
            at: begin + dur,
            node: i,
            generation,
            group: g,
            kind,
            done: true,
        });
    }

    fn exec_begin(&mut self, i: usize, g: usize, kind: ExecKind) {
        let node = &mut self.nodes[i];
        match kind {
            ExecKind::Start => node.real[g] = Real::Starting,
            ExecKind::Stop => node.real[g] = Real::Stopping,
            _ => {}
        }
    }

    /// A command finished: the ground truth changes now; the core hears of it now, or
    /// on resume if the daemon is paused.
    fn exec_done(&mut self, i: usize, g: usize, kind: ExecKind) {
        let group = GROUPS[g].to_string();
        let broken = self.nodes[i].broken[g] > 0;
        let input = match kind {
            ExecKind::Start => {
                self.nodes[i].real[g] = if broken { Real::Stopped } else { Real::Running };
                if !broken {
                    self.nodes[i].running_since[g] = self.t;
                    self.check_second_runner(i, g);
                }
                Input::Started {
                    group,
                    ok: !broken,
                    error: broken.then(|| "service broken".to_string()),
                    cleanup_ok: true,
                    steps: Vec::new(),
                    first_check_wall_ms: None,
                }
            }
            ExecKind::Stop => {
                self.nodes[i].real[g] = Real::Stopped;
                Input::Stopped {
                    group,
                    ok: true,
                    error: None,
                    steps: Vec::new(),
                }
            }
            ExecKind::Restart => Input::Restarted {
                group,
                resource: "svc".into(),
                ok: !broken,
                error: broken.then(|| "service broken".to_string()),
            },
            // Answered when the core gets it (see `vip_in_use`).
            ExecKind::Probe => Input::VipProbe {
                group,
                in_use: false,
            },
        };
        self.log(format!("{} exec {kind:?} {} done", NAMES[i], GROUPS[g]));
        if self.nodes[i].life == Life::Paused {
            self.nodes[i].deferred.push(input);
        } else {
            self.deliver_result(i, input);
        }
    }

    fn deliver_result(&mut self, i: usize, input: Input) {
        let input = match input {
            Input::VipProbe { group, .. } => {
                let g = group_index(&group);
                let in_use = self.vip_in_use(i, g);
                if !in_use {
                    self.nodes[i].probe_free_at[g] = Some(self.t);
                }
                self.log(format!("{} probe {group}: in_use={in_use}", NAMES[i]));
                Input::VipProbe { group, in_use }
            }
            other => other,
        };
        self.input(i, NodeInput::Resource(input));
    }

    /// Does another live node on `i`'s side of the public LAN hold the group's address?
    /// (A paused node's kernel still answers ARP.)
    fn vip_in_use(&self, i: usize, g: usize) -> bool {
        (0..self.sc.n).any(|j| {
            j != i
                && self.nodes[j].life != Life::Dead
                && self.lan_cut[i][j] == 0
                && self.nodes[j].real[g].holds()
        })
    }

    fn kill(&mut self, i: usize) {
        self.log(format!("KILL {}", NAMES[i]));
        let node = &mut self.nodes[i];
        node.life = Life::Dead;
        node.generation += 1;
        node.real = [Real::Stopped; MAX_GROUPS];
        node.inbox.clear();
        node.deferred.clear();
    }

    fn boot(&mut self, i: usize) {
        let generation = self.nodes[i].generation + 1;
        let broken = self.nodes[i].broken;
        let last_held = self.nodes[i].last_held;
        let mut node = Self::fresh_node(&self.sc, &mut self.rng, i, self.t, generation);
        node.broken = broken;
        node.last_held = last_held;
        self.nodes[i] = node;
        self.log(format!(
            "BOOT {} boot_id {:016x}",
            NAMES[i],
            self.nodes[i].core.boot_id()
        ));
    }

    fn resume(&mut self, i: usize) {
        self.log(format!("RESUME {}", NAMES[i]));
        self.nodes[i].life = Life::Up;
        self.nodes[i].resumed_at = Some(self.t);
        // The sockets' buffers first, then what the executor reported meanwhile.
        while let Some((path, hb)) = self.nodes[i].inbox.pop_front() {
            self.input(i, NodeInput::Packet { path, hb });
        }
        let deferred = std::mem::take(&mut self.nodes[i].deferred);
        for input in deferred {
            if self.nodes[i].life == Life::Up {
                self.deliver_result(i, input);
            }
        }
    }

    fn live(&self, i: usize) -> bool {
        self.nodes[i].life == Life::Up
    }

    fn for_sides(&mut self, side: u8, f: impl Fn(&mut Sim, usize, usize)) {
        for a in 0..self.sc.n {
            for b in 0..self.sc.n {
                if (side >> a) & 1 == 1 && (side >> b) & 1 == 0 {
                    f(self, a, b);
                }
            }
        }
    }

    fn apply(&mut self, k: usize, end: bool) {
        let fault = self.sc.episodes[k].fault.clone();
        self.log(format!("{} {fault:?}", if end { "END" } else { "FAULT" }));
        let d: i16 = if end { -1 } else { 1 };
        let bump = |x: &mut u8| *x = (*x as i16 + d) as u8;
        match fault {
            Fault::Partition {
                side,
                paths,
                oneway,
                lan,
            } => self.for_sides(side, |s, a, b| {
                for p in 0..PATHS {
                    if (paths >> p) & 1 == 1 {
                        bump(&mut s.cut[p][a][b]);
                        if !oneway {
                            bump(&mut s.cut[p][b][a]);
                        }
                    }
                }
                if lan {
                    bump(&mut s.lan_cut[a][b]);
                    bump(&mut s.lan_cut[b][a]);
                }
            }),
            Fault::LanSplit { side } => self.for_sides(side, |s, a, b| {
                bump(&mut s.lan_cut[a][b]);
                bump(&mut s.lan_cut[b][a]);
            }),
            Fault::Loss { path, pct } => {
                let cur = self.loss[path] as i16 + d * pct as i16;
                self.loss[path] = cur.clamp(0, 100) as u8;
            }
            Fault::Kill { node, stay_dead } => {
                if !end {
                    if self.nodes[node].life != Life::Dead {
                        self.kill(node);
                    }
                } else if !stay_dead && self.nodes[node].life == Life::Dead {
                    self.boot(node);
                }
            }
            Fault::Pause { node } => {
                if !end {
                    if self.live(node) {
                        self.log(format!("PAUSE {}", NAMES[node]));
                        self.nodes[node].life = Life::Paused;
                    }
                } else if self.nodes[node].life == Life::Paused {
                    self.resume(node);
                }
            }
            Fault::Broken { node, group } => bump_u32(&mut self.nodes[node].broken[group], d),
            Fault::Flap { group, every_ms } => {
                if end {
                    if let Some(p) = self.flap_every[group].iter().position(|&e| e == every_ms) {
                        self.flap_every[group].swap_remove(p);
                    }
                } else {
                    self.flap_every[group].push(every_ms);
                }
            }
            Fault::Standby { node, issuer, stay } => {
                if self.live(issuer) && !(end && stay) {
                    self.admin_standby(issuer, node, !end);
                }
            }
            Fault::Switchover {
                issuer,
                group,
                target,
            } => {
                if self.live(issuer) {
                    self.admin_switchover(issuer, group, target);
                }
            }
        }
    }

    fn admin_standby(&mut self, i: usize, target: usize, on: bool) {
        let node = NAMES[target].to_string();
        let (r, actions) = self.control(i, ControlCommand::Standby { node, on });
        self.log(format!(
            "ADMIN on {}: {} standby={on}",
            NAMES[i], NAMES[target]
        ));
        match r {
            Ok(_) => self.carry_out(i, actions),
            Err(e) => self.fail(format!("standby of a configured node refused: {e}")),
        }
    }

    fn admin_switchover(&mut self, i: usize, g: usize, target: Option<usize>) {
        let command = ControlCommand::Switchover {
            group: GROUPS[g].to_string(),
            to: target.map(|t| NAMES[t].to_string()),
        };
        let (r, actions) = self.control(i, command);
        match r {
            Ok(outcome) => {
                let to = match outcome {
                    ControlOutcome::SwitchingTo(to) => to,
                    other => panic!("a switchover names its target, not {other:?}"),
                };
                let epoch = self.status_of(i, g).epoch;
                self.log(format!(
                    "ADMIN on {}: switchover {} -> {to} (epoch {epoch})",
                    NAMES[i], GROUPS[g]
                ));
                self.admin_writes.push((g, node_index(&to), epoch));
                self.stats.switchovers += 1;
                self.carry_out(i, actions);
            }
            Err(e) => {
                self.stats.switchovers_refused += 1;
                self.log(format!(
                    "ADMIN on {}: switchover {} refused: {e}",
                    NAMES[i], GROUPS[g]
                ))
            }
        }
    }

    /// Group `g` as node `i`'s core sees it now.
    fn status_of(&mut self, i: usize, g: usize) -> tandem::placement::policy::GroupStatus {
        let now = self.now_of(i);
        let core = &mut self.nodes[i].core;
        core.refresh_peers();
        core.groups(now)
            .into_iter()
            .find(|s| s.name == GROUPS[g])
            .expect("group status")
    }

    /// Everything back to normal: the heal phase.
    fn heal(&mut self) {
        self.log("HEAL: every fault removed".into());
        self.cut = [[[0; MAX_NODES]; MAX_NODES]; PATHS];
        self.loss = [0; PATHS];
        self.lan_cut = [[0; MAX_NODES]; MAX_NODES];
        self.flap_every = [Vec::new(), Vec::new()];
        for i in 0..self.sc.n {
            self.nodes[i].broken = [0; MAX_GROUPS];
            match self.nodes[i].life {
                Life::Dead => self.boot(i),
                Life::Paused => self.resume(i),
                Life::Up => {}
            }
        }
    }

    // -- invariants ---------------------------------------------------------

    fn in_contact(&self, a: usize, b: usize) -> bool {
        let (x, y) = (a.min(b), a.max(b));
        self.contact_since[x][y].is_some()
    }

    /// Invariant 1b: a floating-IP group is only started after a probe found the
    /// address free, so never while another live node on the same LAN side holds it
    /// and the heartbeats between the two are cut.
    ///
    /// A probe is a snapshot: the core trusts a result for `probe_fresh_ms` (so that a
    /// probe started while the owner is merely silent can authorise the takeover). If
    /// the LAN changed within that window (a LAN partition healed, or another node
    /// started after its own probe), the start is unfenced by design; that is logged,
    /// not failed. A start without a fresh passed probe fails.
    fn check_start(&mut self, i: usize, g: usize) {
        if !self.sc.groups[g].has_vip {
            return;
        }
        let fresh = self.nodes[i].probe_free_at[g]
            .is_some_and(|p| self.t - p <= self.sc.probe_timeout + 500);
        for j in 0..self.sc.n {
            if j != i
                && self.nodes[j].life != Life::Dead
                && self.lan_cut[i][j] == 0
                && self.nodes[j].real[g].holds()
                && !self.in_contact(i, j)
            {
                if fresh {
                    self.stats.unfenced_after_fresh_probe += 1;
                    self.log(format!(
                        "{} starts {} while {} holds its address: the LAN changed after \
                         the probe (tolerated)",
                        NAMES[i], GROUPS[g], NAMES[j]
                    ));
                } else {
                    self.fail(format!(
                        "{} starts {} while {} holds its address on the same LAN, \
                         without a fresh probe",
                        NAMES[i], GROUPS[g], NAMES[j]
                    ));
                }
            }
        }
    }

    /// Invariant 2: a running group is only stopped for a reason.
    fn check_stop(&mut self, i: usize, g: usize) {
        if self.nodes[i].real[g] != Real::Running {
            return;
        }
        if self.nodes[i].core.placement().standby() {
            return; // standby
        }
        let st = self.status_of(i, g);
        if st.blocked {
            return; // restarts exhausted (or a failed restart)
        }
        let t = self.t;
        // (A node that held it until it died a moment ago counts: the view is older.)
        let other_holds = (0..self.sc.n)
            .any(|j| j != i && self.nodes[j].last_held[g].is_some_and(|h| h + STALE_VIEW_MS >= t));
        if other_holds {
            return; // split brain (or a hand-off our view has not caught up with)
        }
        let owner = st.owner.as_deref().map(node_index);
        if owner.is_some_and(|o| self.admin_writes.contains(&(g, o, st.epoch))) {
            return; // an admin moved it
        }
        // Reconciliation when two sides of a partition meet: each side may have written
        // claims the other did not see; the highest epoch wins, even if its owner is not
        // the node that runs the group now (a limit of the register design). Such a
        // stop happens as the registers merge, so only right after the node hears again
        // from a peer it had lost contact with (the register may come from any peer).
        let reconnected = (0..self.sc.n).any(|j| {
            let since = self.contact_since[i.min(j)][i.max(j)];
            j != i
                && self.nodes[i].last_heard[j].is_some_and(|h| t <= h + RECONCILE_MS)
                && since.is_none_or(|c| t <= c + RECONCILE_MS)
        });
        if owner.is_some_and(|o| o != i) && reconnected {
            self.stats.partition_reconciliations += 1;
            self.log(format!(
                "{} yields {} to a register from the other side of a partition",
                NAMES[i], GROUPS[g]
            ));
            return;
        }
        // Automatic switchback, judged by what the node knows: a more preferred node it
        // believes alive (it may have died less than the dead time ago).
        let policy = &self.sc.groups[g];
        if policy.switchback == Switchback::Automatic
            && self.nodes[i].core.peers().iter().any(|p| {
                let j = node_index(&p.name);
                self.sc.rank(g, j) < self.sc.rank(g, i)
            })
        {
            return;
        }
        if self.t < self.nodes[i].running_since[g] + HEALTHY_AFTER_MS {
            // Not settled yet: two nodes decided at the same moment on views a few
            // milliseconds apart (e.g. both saw restart blocks expire); the register
            // picks one and the other yields.
            self.stats.just_started_yields += 1;
            self.log(format!(
                "{} yields {} it has just started",
                NAMES[i], GROUPS[g]
            ));
            return;
        }
        if self.nodes[i]
            .resumed_at
            .is_some_and(|r| self.t <= r + DEAD_TIME)
        {
            // Just resumed from a pause: the socket buffers hold heartbeats sent before
            // (possibly by a peer that died since), so for up to the dead time the node
            // acts on an old picture of the cluster (counted in `Stats`).
            self.stats.stops_on_stale_view_after_pause += 1;
            self.log(format!(
                "{} stops {} on a view from before its pause",
                NAMES[i], GROUPS[g]
            ));
            return;
        }
        self.fail(format!(
            "{} stops healthy {} without a reason (register: {:?} epoch {})",
            NAMES[i], GROUPS[g], st.owner, st.epoch
        ));
    }

    /// Invariant 1a, when a start completes: a second runner may only appear between
    /// nodes that have not been in contact for long (the partition just healed, or
    /// has not been noticed yet); between nodes in steady contact it is a bug even if
    /// resolved quickly.
    fn check_second_runner(&mut self, i: usize, g: usize) {
        for j in 0..self.sc.n {
            let (a, b) = (i.min(j), i.max(j));
            if j != i
                && self.nodes[j].real[g] == Real::Running
                && self.live(i)
                && self.live(j)
                && self.contact_since[a][b].is_some_and(|c| self.t >= c + RESOLVE_MS)
            {
                self.fail(format!(
                    "{} starts {} although {} runs it and they have been in contact since {} ms",
                    NAMES[i],
                    GROUPS[g],
                    NAMES[j],
                    self.contact_since[a][b].unwrap_or_default()
                ));
            }
        }
    }

    /// Invariant 1a, checked every step.
    fn check_step(&mut self) {
        let n = self.sc.n;
        for g in 0..self.sc.groups.len() {
            for a in 0..n {
                for b in a + 1..n {
                    if self.nodes[a].real[g] == Real::Running
                        && self.nodes[b].real[g] == Real::Running
                        && self.live(a)
                        && self.live(b)
                        && self.contact_since[a][b].is_some_and(|c| self.t >= c + RESOLVE_MS)
                    {
                        self.fail(format!(
                            "{} runs on {} and {}, in contact since {} ms",
                            GROUPS[g],
                            NAMES[a],
                            NAMES[b],
                            self.contact_since[a][b].unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }

    fn update_contact(&mut self) {
        let t = self.t;
        let fresh = |h: Option<u64>| h.is_some_and(|h| h + DEAD_TIME > t + STEP);
        for a in 0..self.sc.n {
            for b in a + 1..self.sc.n {
                // Each hears the other on some path now, and has heard it recently
                // enough that its membership never declared the other dead.
                let open = |from: usize, to: usize| {
                    (0..PATHS).any(|p| self.cut[p][from][to] == 0 && self.loss[p] < 100)
                };
                let ok = self.live(a)
                    && self.live(b)
                    && open(a, b)
                    && open(b, a)
                    && fresh(self.nodes[a].last_heard[b])
                    && fresh(self.nodes[b].last_heard[a]);
                let c = &mut self.contact_since[a][b];
                if !ok {
                    *c = None;
                } else if c.is_none() {
                    *c = Some(t);
                }
            }
        }
    }

    /// Invariant 3: every group that has an eligible node runs on exactly one node,
    /// and every node agrees on the owner. A node that runs an exclusive group is not
    /// eligible for another, so two exclusive groups never share a node. `Err`
    /// describes the first problem.
    fn settled(&mut self) -> Result<(), String> {
        let n = self.sc.n;
        for g in 0..self.sc.groups.len() {
            let policy = &self.sc.groups[g];
            let taken = |j: usize| {
                policy.exclusive
                    && (0..self.sc.groups.len()).any(|h| {
                        h != g
                            && self.sc.groups[h].exclusive
                            && self.nodes[j].real[h] != Real::Stopped
                    })
            };
            let eligible = |j: usize| {
                !self.nodes[j].core.placement().standby()
                    && (policy.allowed.is_empty() || policy.allowed.iter().any(|a| a == NAMES[j]))
                    && !taken(j)
            };
            let any_eligible = (0..n).any(eligible);
            let mut running = (0..n).filter(|&j| self.nodes[j].real[g] != Real::Stopped);
            let (first, second) = (running.next(), running.next());
            if !any_eligible {
                // Every node is in standby (or, for an exclusive group, runs another
                // exclusive group): the group may stay where it is (nobody can take
                // it), but not run twice, nor beside another exclusive group.
                if second.is_some() {
                    return Err(format!("{} runs twice (no eligible node)", GROUPS[g]));
                }
                if let Some(j) = first.filter(|&j| taken(j)) {
                    return Err(format!(
                        "{} shares {} with another exclusive group",
                        GROUPS[g], NAMES[j]
                    ));
                }
                continue;
            }
            let runner = match (first, second) {
                (Some(r), None) if self.nodes[r].real[g] == Real::Running => r,
                _ => {
                    let states: Vec<Real> = (0..n).map(|j| self.nodes[j].real[g]).collect();
                    return Err(format!(
                        "{} is not running on exactly one node: {states:?}",
                        GROUPS[g]
                    ));
                }
            };
            if !eligible(runner) {
                return Err(format!(
                    "{} runs on ineligible {}",
                    GROUPS[g], NAMES[runner]
                ));
            }
            for j in 0..n {
                let owner = self.status_of(j, g).owner;
                if owner.as_deref() != Some(NAMES[runner]) {
                    return Err(format!(
                        "{} runs on {} but {} says the owner is {owner:?}",
                        GROUPS[g], NAMES[runner], NAMES[j]
                    ));
                }
            }
        }
        Ok(())
    }

    // -- the main loop ------------------------------------------------------

    fn step(&mut self) {
        let t = self.t;
        let n = self.sc.n;
        for i in 0..n {
            if self.sc.boot_at[i] == t && self.nodes[i].life == Life::Dead && t < self.sc.fault_end
            {
                self.boot(i);
            }
        }
        if t == self.sc.fault_end {
            self.heal();
        }
        while self.next_sched < self.schedule.len() && self.schedule[self.next_sched].0 <= t {
            let (at, k, end) = self.schedule[self.next_sched];
            self.next_sched += 1;
            if at < self.sc.fault_end {
                self.apply(k, end);
            }
        }

        // The network delivers.
        let mut k = 0;
        while k < self.wire.len() {
            if self.wire[k].at > t {
                k += 1;
                continue;
            }
            let pkt = self.wire.remove(k);
            match self.nodes[pkt.to].life {
                Life::Dead => {}
                Life::Paused => {
                    if self.nodes[pkt.to].inbox.len() < INBOX_CAP {
                        self.nodes[pkt.to].inbox.push_back((pkt.path, pkt.hb));
                    }
                }
                Life::Up => self.input(
                    pkt.to,
                    NodeInput::Packet {
                        path: pkt.path,
                        hb: pkt.hb,
                    },
                ),
            }
        }

        // The executors report.
        let mut k = 0;
        while k < self.exec.len() {
            if self.exec[k].at > t {
                k += 1;
                continue;
            }
            let ev = self.exec.remove(k);
            if self.nodes[ev.node].generation != ev.generation
                || self.nodes[ev.node].life == Life::Dead
            {
                continue;
            }
            if ev.done {
                self.exec_done(ev.node, ev.group, ev.kind);
            } else {
                self.exec_begin(ev.node, ev.group, ev.kind);
            }
        }

        // Flapping checks on wherever the group runs.
        for g in 0..self.sc.groups.len() {
            for f in 0..self.flap_every[g].len() {
                let every = self.flap_every[g][f];
                if !self.rng.gen_bool((STEP as f64 / every as f64).min(1.0)) {
                    continue;
                }
                for i in 0..n {
                    if self.live(i) && self.nodes[i].real[g] == Real::Running {
                        self.log(format!("{} check of {} fails", NAMES[i], GROUPS[g]));
                        self.input(
                            i,
                            NodeInput::Resource(Input::CheckFailed {
                                group: GROUPS[g].into(),
                                resource: "svc".into(),
                                reason: "check failed".into(),
                            }),
                        );
                    }
                }
            }
        }

        // Timers.
        for i in 0..n {
            if !self.live(i) {
                continue;
            }
            if (t + self.nodes[i].hb_phase).is_multiple_of(HB_INTERVAL) {
                self.input(i, NodeInput::HeartbeatDue);
            }
            // Membership ticks only change liveness once a peer has been silent for the
            // dead time; in between they only mark single paths down (which nothing
            // here reads), so they run every IDLE_EVAL_MS unless a peer is due.
            let due = (0..n).any(|j| {
                j != i
                    && self.nodes[i].last_heard[j].is_some_and(|h| t >= h + DEAD_TIME)
                    && self.nodes[i].core.membership().is_alive(NAMES[j])
            });
            if due || t.is_multiple_of(IDLE_EVAL_MS) {
                self.input(i, NodeInput::CheckLiveness);
            }
            // The core is pure: evaluating it again with the same peers only matters
            // once one of its deadlines passes (grace, blocks, probe retries), so idle
            // nodes are evaluated every IDLE_EVAL_MS and nodes whose view changed at
            // once. This keeps the debug-build simulation fast.
            if self.nodes[i].core.peers_changed() || t >= self.nodes[i].last_eval + IDLE_EVAL_MS {
                self.input(i, NodeInput::Evaluate);
            }
            self.input(i, NodeInput::ProbeSilentPeers);
        }

        for i in 0..n {
            for g in 0..self.sc.groups.len() {
                if self.nodes[i].real[g].holds() {
                    self.nodes[i].last_held[g] = Some(t);
                }
            }
        }
        self.update_contact();
        self.check_step();
        self.steps_run += 1;
    }

    /// Runs the scenario; returns what it exercised, or the failure.
    ///
    /// The heal phase ends early once the cluster has been settled (invariant 3) for
    /// [`SETTLED_FOR_MS`] and every deadline the faults can leave behind (blocks, probe
    /// retries, startup grace) has passed; otherwise at `heal_end`, where it must be
    /// settled.
    fn run(mut self) -> Result<Stats, String> {
        let mut settled_since: Option<u64> = None;
        let earliest_end = self.sc.fault_end + HEAL_MIN_MS;
        while self.t <= self.sc.heal_end && self.failure.is_none() {
            self.step();
            if self.t >= self.sc.fault_end
                && (self.t - self.sc.fault_end).is_multiple_of(SETTLE_CHECK_MS)
            {
                match self.settled() {
                    Ok(()) => {
                        let since = *settled_since.get_or_insert(self.t);
                        if self.t >= earliest_end && self.t >= since + SETTLED_FOR_MS {
                            break;
                        }
                    }
                    Err(_) => settled_since = None,
                }
            }
            self.t += STEP;
        }
        if self.failure.is_none() {
            self.log("END: checking the healed cluster".into());
            if let Err(e) = self.settled() {
                self.fail(format!("after the heal phase, {e}"));
            }
        }
        match self.failure {
            Some(f) => Err(f),
            None => {
                self.stats.steps = self.steps_run;
                self.stats.slowest_settle_ms = settled_since.map_or(0, |s| s - self.sc.fault_end);
                Ok(self.stats)
            }
        }
    }
}

fn bump_u32(x: &mut u32, d: i16) {
    *x = (*x as i64 + d as i64).max(0) as u32;
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Fault phase bounds, in ms: short by default so that CI's debug build runs
/// [`DEFAULT_SCENARIOS`] quickly; `TANDEM_SIM_LONG=1` uses 30-60 s.
const FAULT_MS: (u64, u64) = (6_000, 18_000);
const LONG_FAULT_MS: (u64, u64) = (30_000, 60_000);
/// Heal phase bounds (upper limit: it ends early once settled, see [`Sim::run`]).
const HEAL_MS: (u64, u64) = (15_000, 20_000);

fn run_seed(seed: u64, verbose: bool) -> Result<Stats, String> {
    let long = std::env::var("TANDEM_SIM_LONG").is_ok_and(|v| v == "1");
    let fault = if long { LONG_FAULT_MS } else { FAULT_MS };
    Sim::new(seed, verbose, fault, HEAL_MS).run()
}

fn fail_seed(seed: u64, trace: &str) -> ! {
    panic!(
        "{trace}\nfailing seed: {seed} \
         (rerun with TANDEM_SIM_SEED={seed} cargo test --test simulation -- --nocapture)"
    )
}

#[test]
fn seeded_cluster_simulation() {
    if let Some(seed) = env_u64("TANDEM_SIM_SEED") {
        match run_seed(seed, true) {
            Ok(stats) => println!("seed {seed}: ok: {stats:?}"),
            Err(e) => fail_seed(seed, &e),
        }
        return;
    }
    let count = env_u64("TANDEM_SIM_SCENARIOS").unwrap_or(DEFAULT_SCENARIOS);
    let first = env_u64("TANDEM_SIM_FIRST_SEED").unwrap_or(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(16);
    let next = AtomicU64::new(first);
    let total = Mutex::new(Stats::default());
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    match run_seed(seed, false) {
                        Ok(stats) => total.lock().unwrap().add(&stats),
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut f = failure.lock().unwrap();
                            if f.as_ref().is_none_or(|(s, _)| seed < *s) {
                                *f = Some((seed, e));
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some((seed, e)) = failure.into_inner().unwrap() {
        fail_seed(seed, &e);
    }
    let total = total.into_inner().unwrap();
    println!(
        "{count} scenarios ({:.0} simulated minutes) in {:.1} s on {threads} threads\n{total:#?}",
        (total.steps * STEP) as f64 / 60_000.0,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        total.takeovers > 0 && total.split_brains_resolved > 0 && total.switchovers > 0,
        "the scenarios exercise too little: {total:?}"
    );
}
