//! Unit tests of the placement core.
//!
//! A small deterministic harness ([`Cluster`]) runs one [`Placement`] per node in 25 ms
//! steps: every live node sees every other live node's current advert while the link is
//! up, and a simulated executor answers each action one step later (starts fail on
//! "broken" nodes; a floating-IP probe finds the address in use if another live node
//! runs or starts the group). `tests/simulation.rs` does the same with the real
//! membership core, a lossy network and random faults.

use super::*;

const STEP: u64 = 25;

fn now(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        wall_ms: 1_700_000_000_000 + ms,
    }
}

fn group(name: &str, has_vip: bool, switchback: Switchback) -> GroupPolicy {
    GroupPolicy {
        name: name.into(),
        allowed: Vec::new(),
        exclusive: false,
        switchback,
        max_restarts: 2,
        window_ms: 10_000,
        has_vip,
        hold_on_lease_loss: false,
    }
}

fn config(local: &str, nodes: &[(&str, u32)], groups: &[GroupPolicy]) -> PlacementConfig {
    PlacementConfig {
        local: local.into(),
        nodes: nodes.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        groups: groups.to_vec(),
        startup_grace_ms: 1400,
        probe_before_takeover: true,
        probe_retry_ms: 2000,
        probe_fresh_ms: 650,
    }
}

struct Cluster {
    names: Vec<String>,
    nodes: Vec<Placement>,
    live: Vec<bool>,
    /// Heartbeats flow between live nodes.
    link: bool,
    /// Nodes cut off from every other node.
    isolated: Vec<bool>,
    /// Nodes that hear no other node, while the others hear them (a link healing one
    /// way first).
    deaf: Vec<bool>,
    /// Starts of (node, group) fail.
    broken: Vec<(usize, String)>,
    /// Executor results, delivered at the next step.
    pending: Vec<(usize, Input)>,
    /// Every action and event, with the node and time.
    log: Vec<(u64, usize, Action)>,
    t: u64,
}

impl Cluster {
    fn new(nodes: &[(&str, u32)], groups: &[GroupPolicy]) -> Cluster {
        Cluster {
            names: nodes.iter().map(|(n, _)| n.to_string()).collect(),
            nodes: nodes
                .iter()
                .map(|(n, _)| Placement::new(config(n, nodes, groups)))
                .collect(),
            live: vec![true; nodes.len()],
            link: true,
            isolated: vec![false; nodes.len()],
            deaf: vec![false; nodes.len()],
            broken: Vec::new(),
            pending: Vec::new(),
            log: Vec::new(),
            t: 0,
        }
    }

    fn idx(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("node")
    }

    fn peers(&self, i: usize) -> Vec<PeerView> {
        if !self.link || self.isolated[i] || self.deaf[i] {
            return Vec::new();
        }
        (0..self.nodes.len())
            .filter(|&j| j != i && self.live[j] && !self.isolated[j])
            .map(|j| PeerView {
                name: self.names[j].clone(),
                advert: self.nodes[j].advert(now(self.t)),
            })
            .collect()
    }

    fn input(&mut self, i: usize, input: Input) {
        let peers = self.peers(i);
        let actions = self.nodes[i].handle(now(self.t), input, &peers);
        self.carry_out(i, actions);
    }

    fn carry_out(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            let result = match &a {
                Action::StartGroup { group, .. } => {
                    let ok = !self.broken.contains(&(i, group.clone()));
                    Some(Input::Started {
                        group: group.clone(),
                        ok,
                        error: (!ok).then(|| "broken".to_string()),
                        cleanup_ok: true,
                        steps: Vec::new(),
                        first_check_wall_ms: None,
                    })
                }
                Action::StopGroup { group, .. } => Some(Input::Stopped {
                    group: group.clone(),
                    ok: true,
                    error: None,
                    steps: Vec::new(),
                }),
                Action::RestartResource { group, resource } => Some(Input::Restarted {
                    group: group.clone(),
                    resource: resource.clone(),
                    ok: true,
                    error: None,
                }),
                Action::ProbeVip { group } => Some(Input::VipProbe {
                    group: group.clone(),
                    in_use: (0..self.nodes.len()).any(|j| {
                        j != i
                            && self.live[j]
                            && matches!(
                                self.state(j, group),
                                LocalGroupState::Running | LocalGroupState::Starting
                            )
                    }),
                }),
                Action::FastStopGroup { group } => Some(Input::FastStopped {
                    group: group.clone(),
                    ok: true,
                }),
                Action::ResumeGroup { group, .. } => Some(Input::Resumed {
                    group: group.clone(),
                    ok: true,
                    error: None,
                }),
                Action::Emit { .. } | Action::RecordTimeline(_) | Action::Propose(_) => None,
            };
            if let Some(r) = result {
                self.pending.push((i, r));
            }
            self.log.push((self.t, i, a));
        }
    }

    /// Advances one step: results first, then a tick on every live node.
    fn step(&mut self) {
        self.t += STEP;
        for (i, input) in std::mem::take(&mut self.pending) {
            if self.live[i] {
                self.input(i, input);
            }
        }
        for i in 0..self.nodes.len() {
            if self.live[i] {
                self.input(i, Input::Tick);
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / STEP {
            self.step();
        }
    }

    fn status(&self, i: usize, group: &str) -> GroupStatus {
        self.nodes[i]
            .status(now(self.t), &self.peers(i))
            .into_iter()
            .find(|s| s.name == group)
            .expect("group")
    }

    fn state(&self, i: usize, group: &str) -> LocalGroupState {
        self.status(i, group).local_state
    }

    fn owner(&self, i: usize, group: &str) -> Option<String> {
        self.status(i, group).owner
    }

    /// The nodes where the group runs.
    fn running(&self, group: &str) -> Vec<String> {
        (0..self.nodes.len())
            .filter(|&i| self.live[i] && self.state(i, group) == LocalGroupState::Running)
            .map(|i| self.names[i].clone())
            .collect()
    }

    /// A node crashes: it is silent and its processes are gone.
    fn kill(&mut self, name: &str) {
        let i = self.idx(name);
        self.live[i] = false;
        self.pending.retain(|(j, _)| *j != i);
        for j in 0..self.nodes.len() {
            if self.live[j] {
                self.input(
                    j,
                    Input::NodeDown {
                        peer: name.to_string(),
                        silent_ms: 1000,
                    },
                );
            }
        }
    }

    /// A crashed node's daemon starts again, with nothing running.
    fn restart(&mut self, name: &str, nodes: &[(&str, u32)], groups: &[GroupPolicy]) {
        let i = self.idx(name);
        self.nodes[i] = Placement::new(config(name, nodes, groups));
        self.live[i] = true;
    }

    fn check_failed(&mut self, name: &str, group: &str) {
        let i = self.idx(name);
        self.input(
            i,
            Input::CheckFailed {
                group: group.into(),
                resource: "svc".into(),
                reason: "check failed".into(),
            },
        );
    }

    fn count(&self, node: &str, since: u64, pred: impl Fn(&Action) -> bool) -> usize {
        let i = self.idx(node);
        self.log
            .iter()
            .filter(|(t, j, a)| *t >= since && *j == i && pred(a))
            .count()
    }

    fn events(&self, node: &str, since: u64, kind: EventKind) -> usize {
        self.count(
            node,
            since,
            |a| matches!(a, Action::Emit { kind: k, .. } if *k == kind),
        )
    }

    fn starts(&self, node: &str, since: u64) -> usize {
        self.count(node, since, |a| matches!(a, Action::StartGroup { .. }))
    }

    fn stops(&self, node: &str, since: u64) -> usize {
        self.count(node, since, |a| matches!(a, Action::StopGroup { .. }))
    }

    fn restarts(&self, node: &str, since: u64) -> usize {
        self.count(node, since, |a| matches!(a, Action::RestartResource { .. }))
    }
}

const DUO: [(&str, u32); 2] = [("a", 1), ("b", 2)];

fn duo(has_vip: bool, switchback: Switchback) -> (Cluster, Vec<GroupPolicy>) {
    let groups = vec![group("web", has_vip, switchback)];
    let mut c = Cluster::new(&DUO, &groups);
    c.run_for(3000);
    assert_eq!(c.running("web"), ["a"], "initial placement");
    (c, groups)
}

#[test]
fn initial_placement_waits_for_the_grace_and_picks_the_preferred_node() {
    let groups = vec![group("web", true, Switchback::Manual)];
    let mut c = Cluster::new(&DUO, &groups);
    c.run_for(1300);
    assert_eq!(
        c.starts("a", 0) + c.starts("b", 0),
        0,
        "nothing before the grace"
    );
    c.run_for(1700);
    assert_eq!(c.running("web"), ["a"]);
    assert_eq!(c.starts("b", 0), 0);
    for i in 0..2 {
        assert_eq!(c.owner(i, "web").as_deref(), Some("a"));
    }
}

#[test]
fn restart_ladder_restarts_locally_then_gives_up_and_the_group_moves() {
    let (mut c, _) = duo(false, Switchback::Manual);
    let t0 = c.t;
    // max_restarts = 2: the first two failures in the window are restarted in place.
    for n in 1..=2 {
        c.check_failed("a", "web");
        c.run_for(100);
        assert_eq!(c.restarts("a", t0), n);
        assert_eq!(c.running("web"), ["a"]);
        assert_eq!(c.stops("a", t0), 0);
    }
    assert_eq!(c.status(0, "web").recent_failures, 2);
    // The third gives up: blocked here, stopped, and the peer takes over.
    c.check_failed("a", "web");
    assert_eq!(c.restarts("a", t0), 2, "no third restart");
    assert_eq!(c.stops("a", t0), 1);
    assert!(c.status(0, "web").blocked);
    assert_eq!(
        c.status(0, "web").reason.as_deref(),
        Some("`svc` failed 3 times within 10 s: check failed"),
        "the status says why the group is blocked here"
    );
    assert_eq!(c.events("a", t0, EventKind::FailoverStarted), 1);
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"]);
    assert_eq!(c.owner(0, "web").as_deref(), Some("b"));
    assert_eq!(c.owner(1, "web").as_deref(), Some("b"));
    // The block expires after the window; with manual switchback the group stays.
    c.run_for(10_000);
    assert!(!c.status(0, "web").blocked);
    assert_eq!(c.status(0, "web").reason, None, "no reason once unblocked");
    assert_eq!(c.running("web"), ["b"]);
}

#[test]
fn failures_older_than_the_window_expire() {
    let mut g = group("web", false, Switchback::Manual);
    g.max_restarts = 1;
    g.window_ms = 2000;
    let groups = vec![g];
    let mut c = Cluster::new(&DUO, &groups);
    c.run_for(3000);
    let t0 = c.t;
    c.check_failed("a", "web");
    c.run_for(2500);
    // The first failure is out of the window: this one is restarted too.
    c.check_failed("a", "web");
    c.run_for(100);
    assert_eq!(c.restarts("a", t0), 2);
    assert_eq!(c.stops("a", t0), 0);
    assert_eq!(c.running("web"), ["a"]);
    // Two within the window exhaust max_restarts = 1.
    c.check_failed("a", "web");
    assert_eq!(c.stops("a", t0), 1);
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"]);
}

#[test]
fn switchover_moves_the_group_and_refuses_what_it_cannot_do() {
    let (mut c, _) = duo(true, Switchback::Manual);
    let peers = c.peers(0);
    let n = now(c.t);
    assert_eq!(
        c.nodes[0].switchover(n, "nope", None, &peers).map(|r| r.0),
        Err(PlacementError::UnknownGroup("nope".into()))
    );
    assert_eq!(
        c.nodes[0]
            .switchover(n, "web", Some("zz"), &peers)
            .map(|r| r.0),
        Err(PlacementError::UnknownNode("zz".into()))
    );
    assert_eq!(
        c.nodes[0]
            .switchover(n, "web", Some("a"), &peers)
            .map(|r| r.0),
        Err(PlacementError::AlreadyThere {
            group: "web".into(),
            node: "a".into()
        })
    );
    // Issued on the peer: the register travels to the owner, which stops first.
    let peers = c.peers(1);
    let (target, actions) = c.nodes[1]
        .switchover(n, "web", None, &peers)
        .expect("switchover");
    assert_eq!(target, "b");
    c.carry_out(1, actions);
    let t0 = c.t;
    c.step();
    assert_eq!(c.stops("a", t0), 1);
    assert_eq!(c.starts("b", t0), 0, "the target waits for the stop");
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"]);
    assert_eq!(c.owner(0, "web").as_deref(), Some("b"));
    // A switchover needs a live target.
    c.kill("a");
    let peers = c.peers(1);
    assert_eq!(
        c.nodes[1]
            .switchover(now(c.t), "web", Some("a"), &peers)
            .map(|r| r.0),
        Err(PlacementError::NodeNotLive("a".into()))
    );
}

#[test]
fn switchover_is_refused_while_the_group_is_starting() {
    let groups = vec![group("web", false, Switchback::Manual)];
    let mut c = Cluster::new(&DUO, &groups);
    while c.state(0, "web") != LocalGroupState::Starting {
        // Hold the executor's answer: the group stays in Starting.
        c.t += STEP;
        c.input(0, Input::Tick);
        c.input(1, Input::Tick);
        assert!(c.t < 5000, "never started");
    }
    let peers = c.peers(1);
    assert!(matches!(
        c.nodes[1].switchover(now(c.t), "web", Some("b"), &peers),
        Err(PlacementError::Busy { .. })
    ));
}

#[test]
fn standby_moves_groups_away_and_online_does_not_bring_them_back() {
    let (mut c, _) = duo(true, Switchback::Manual);
    let peers = c.peers(0);
    let actions = c.nodes[0]
        .set_standby(now(c.t), "a", true, &peers)
        .expect("standby");
    c.carry_out(0, actions);
    c.run_for(1500);
    assert!(c.nodes[0].standby());
    assert_eq!(c.running("web"), ["b"]);
    let peers = c.peers(0);
    assert_eq!(
        c.nodes[0]
            .set_standby(now(c.t), "zz", true, &peers)
            .map(|_| ()),
        Err(PlacementError::UnknownNode("zz".into()))
    );
    let peers = c.peers(0);
    let actions = c.nodes[0]
        .set_standby(now(c.t), "a", false, &peers)
        .expect("online");
    c.carry_out(0, actions);
    c.run_for(3000);
    assert!(!c.nodes[0].standby());
    assert_eq!(c.running("web"), ["b"], "manual switchback: no move back");
}

#[test]
fn maintenance_suspends_monitoring_and_recovery() {
    let (mut c, _) = duo(false, Switchback::Manual);
    let peers = c.peers(0);
    let actions = c.nodes[0]
        .set_maintenance(now(c.t), "web", true, &peers)
        .expect("maintenance");
    c.carry_out(0, actions);
    c.run_for(500);
    assert!(c.nodes[1].in_maintenance("web"), "replicated to the peer");
    let t0 = c.t;
    // Check failures are ignored...
    for _ in 0..5 {
        c.check_failed("a", "web");
    }
    assert_eq!(c.restarts("a", t0) + c.stops("a", t0), 0);
    // ...and so is the owner's death.
    c.kill("a");
    c.run_for(3000);
    assert_eq!(c.starts("b", t0), 0);
    // Back under management, the survivor recovers the group.
    let peers = c.peers(1);
    let actions = c.nodes[1]
        .set_maintenance(now(c.t), "web", false, &peers)
        .expect("maintenance off");
    c.carry_out(1, actions);
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"]);
}

fn failover_and_return(switchback: Switchback) -> Cluster {
    let (mut c, groups) = duo(false, switchback);
    c.kill("a");
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"], "failover to the survivor");
    c.restart("a", &DUO, &groups);
    c.run_for(5000);
    c
}

#[test]
fn automatic_switchback_returns_the_group_to_the_preferred_node() {
    let c = failover_and_return(Switchback::Automatic);
    assert_eq!(c.running("web"), ["a"]);
    assert_eq!(c.owner(0, "web"), c.owner(1, "web"));
}

#[test]
fn manual_switchback_leaves_the_group_where_it_runs() {
    let c = failover_and_return(Switchback::Manual);
    assert_eq!(c.running("web"), ["b"]);
    assert_eq!(c.owner(0, "web").as_deref(), Some("b"));
    assert_eq!(c.starts("a", 3000), 0);
}

#[test]
fn split_brain_is_resolved_in_favour_of_the_preferred_node() {
    let groups = vec![group("db", false, Switchback::Manual)];
    let mut c = Cluster::new(&DUO, &groups);
    c.link = false; // both boot alone: no floating IP to probe, so both start
    c.run_for(3000);
    assert_eq!(c.running("db"), ["a", "b"]);
    let t0 = c.t;
    c.link = true;
    c.step();
    assert_eq!(c.events("b", t0, EventKind::SplitBrainResolved), 1);
    assert_eq!(c.stops("b", t0), 1);
    assert_eq!(c.stops("a", t0), 0);
    c.run_for(1000);
    assert_eq!(c.running("db"), ["a"]);
    assert_eq!(c.owner(0, "db").as_deref(), Some("a"));
    assert_eq!(c.owner(1, "db").as_deref(), Some("a"));
}

/// The lab's split brain: the owner is cut off, the other node takes over, the link
/// heals, and the loser hears the winner before the winner hears it. The loser stops
/// once and stays stopped; it used to start the group again as soon as it had stopped
/// (reason `initial`), because only the winner wrote the winner into the register, and
/// the loser's own newer register still named itself.
#[test]
fn split_brain_after_an_isolated_owner_heals_without_a_second_start() {
    let groups = vec![group("db", false, Switchback::Manual)];
    let mut c = Cluster::new(&DUO, &groups);
    c.run_for(3000);
    assert_eq!(c.running("db"), ["a"]);
    c.isolated[0] = true;
    for (node, peer) in [(0, "b"), (1, "a")] {
        c.input(
            node,
            Input::NodeDown {
                peer: peer.into(),
                silent_ms: 1000,
            },
        );
    }
    c.run_for(3000);
    assert_eq!(c.running("db"), ["a", "b"]);
    let t0 = c.t;
    c.isolated[0] = false;
    c.deaf[0] = true;
    c.run_for(1000);
    c.deaf[0] = false;
    c.run_for(3000);
    assert_eq!(c.running("db"), ["a"]);
    assert_eq!(c.stops("b", t0), 1);
    assert_eq!(c.starts("b", t0), 0, "the loser started the group again");
    assert_eq!(c.starts("a", t0), 0);
    assert_eq!(c.owner(0, "db").as_deref(), Some("a"));
    assert_eq!(c.owner(1, "db").as_deref(), Some("a"));
}

#[test]
fn floating_ip_in_use_means_split_brain_suspected_and_no_takeover() {
    let (mut c, _) = duo(true, Switchback::Manual);
    let t0 = c.t;
    // Heartbeats cut, the LAN is fine: the owner still answers for its address.
    c.link = false;
    c.input(
        1,
        Input::NodeDown {
            peer: "a".into(),
            silent_ms: 1000,
        },
    );
    c.run_for(5000);
    assert!(c.events("b", t0, EventKind::SplitBrainSuspected) >= 1);
    assert_eq!(c.starts("b", t0), 0);
    assert_eq!(c.running("web"), ["a"]);
    // The suspicion never moved the group: healing changes nothing.
    c.link = true;
    c.run_for(2000);
    assert_eq!(c.running("web"), ["a"]);
    assert_eq!(c.owner(1, "web").as_deref(), Some("a"));
}

#[test]
fn floating_ip_free_after_the_owner_died_allows_the_takeover() {
    let (mut c, _) = duo(true, Switchback::Manual);
    let t0 = c.t;
    c.kill("a");
    c.run_for(1000);
    assert!(c.count("b", t0, |a| matches!(a, Action::ProbeVip { .. })) >= 1);
    assert_eq!(c.events("b", t0, EventKind::SplitBrainSuspected), 0);
    assert_eq!(c.running("web"), ["b"]);
}

/// Regression (found by tests/simulation.rs): registers with the same epoch and owners
/// of equal priority must merge to the same owner on every node, whatever the order
/// the peers are seen in.
#[test]
fn equal_epochs_and_priorities_merge_to_one_owner_in_any_order() {
    let nodes = [("a", 1), ("b", 1), ("c", 2)];
    let groups = vec![group("web", false, Switchback::Manual)];
    let t = now(5000);
    let advert_claiming = |name: &str| {
        let mut p = Placement::new(config(name, &nodes, &groups));
        p.handle(t, Input::Tick, &[]);
        let mut advert = p.advert(t);
        advert.groups[0].assignment = Some(Assignment {
            owner: name.into(),
            epoch: 7,
        });
        PeerView {
            name: name.into(),
            advert,
        }
    };
    let (pa, pb) = (advert_claiming("a"), advert_claiming("b"));
    let owner_seen_by_c = |peers: &[PeerView]| {
        let mut c = Placement::new(config("c", &nodes, &groups));
        c.handle(t, Input::Tick, peers);
        c.status(t, peers)[0].owner.clone()
    };
    let ab = owner_seen_by_c(&[pa.clone(), pb.clone()]);
    let ba = owner_seen_by_c(&[pb, pa]);
    assert_eq!(ab, ba);
    assert_eq!(ab.as_deref(), Some("a"), "ties go by name");
}

/// Regression (found by tests/simulation.rs): the other side of a partition claims the
/// group, fails to start it and is blocked; after the partition heals, the node that
/// kept the group running must not lose it once the claimant's block expires.
#[test]
fn a_failed_claim_from_across_a_partition_does_not_take_a_healthy_group() {
    let mut g = group("web", false, Switchback::Manual);
    g.window_ms = 3000;
    let groups = vec![g];
    let mut c = Cluster::new(&DUO, &groups);
    c.run_for(3000);
    assert_eq!(c.running("web"), ["a"]);
    c.broken.push((1, "web".into()));
    c.link = false;
    c.input(
        1,
        Input::NodeDown {
            peer: "a".into(),
            silent_ms: 1000,
        },
    );
    c.run_for(500);
    assert!(c.status(1, "web").blocked, "b claimed, failed, is blocked");
    assert_eq!(
        c.status(1, "web").reason.as_deref(),
        Some("start failed: broken")
    );
    assert!(c.status(1, "web").epoch > c.status(0, "web").epoch);
    c.broken.clear();
    let t0 = c.t;
    c.link = true;
    c.run_for(6000); // well past b's block
    assert_eq!(c.stops("a", t0), 0, "the healthy group stayed");
    assert_eq!(c.starts("b", t0), 0);
    assert_eq!(c.running("web"), ["a"]);
    assert_eq!(c.owner(0, "web").as_deref(), Some("a"));
    assert_eq!(c.owner(1, "web").as_deref(), Some("a"));
}

/// Regression (found by tests/simulation.rs): a peer's advert that predates the
/// register we act on may hide that the peer is starting the group itself; the new
/// owner waits until every live peer carries its register.
#[test]
fn the_new_owner_waits_until_peers_have_seen_its_register() {
    let (mut c, _) = duo(false, Switchback::Manual);
    let t = now(c.t);
    // What b last heard from a, from before a started the group (a is not busy).
    let mut stale = c.peers(1)[0].clone();
    stale.advert.groups[0].local = LocalGroupState::Stopped;
    let old_epoch = c.status(1, "web").epoch;
    let starts = |actions: &[Action]| {
        actions
            .iter()
            .any(|a| matches!(a, Action::StartGroup { .. }))
    };
    let (_, actions) = c.nodes[1]
        .switchover(t, "web", Some("b"), std::slice::from_ref(&stale))
        .expect("switchover");
    assert!(!starts(&actions), "a has not seen the switchover yet");
    let actions = c.nodes[1].handle(t, Input::Tick, std::slice::from_ref(&stale));
    assert!(!starts(&actions));
    // Once a's advert carries the new register (and a is stopped), b starts.
    stale.advert.groups[0].assignment = Some(Assignment {
        owner: "b".into(),
        epoch: old_epoch + 1,
    });
    let actions = c.nodes[1].handle(t, Input::Tick, &[stale]);
    assert!(starts(&actions));
}

/// Regression (found by tests/simulation.rs): a claim is written first and the group
/// started only once the live peers carry it, so a peer acting on an older view (an
/// owner whose block just expired) cannot start it at the same time.
#[test]
fn a_claim_is_started_only_after_live_peers_have_seen_it() {
    let nodes = [("a", 1), ("b", 2), ("c", 3)];
    let groups = vec![group("web", false, Switchback::Manual)];
    let mut c = Cluster::new(&nodes, &groups);
    c.run_for(3000);
    assert_eq!(c.running("web"), ["a"]);
    let t0 = c.t;
    c.kill("a");
    // b claims at once, but c has not seen the claim yet.
    assert_eq!(c.owner(1, "web").as_deref(), Some("b"));
    assert_eq!(c.starts("b", t0), 0);
    c.run_for(100);
    assert_eq!(c.starts("b", t0), 1);
    c.run_for(500);
    assert_eq!(c.running("web"), ["b"]);
    assert_eq!(c.owner(2, "web").as_deref(), Some("b"));
}

/// Regression (found by tests/simulation.rs): as above with three nodes, where the
/// node that kept the group is not the most preferred one. The blocked claimant's
/// register must not hand the healthy group to the most preferred node (switchback is
/// manual).
#[test]
fn a_failed_claim_does_not_move_a_healthy_group_to_the_preferred_node() {
    let nodes = [("a", 1), ("b", 2), ("c", 3)];
    let mut g = group("web", false, Switchback::Manual);
    g.window_ms = 3000;
    let groups = vec![g];
    let mut c = Cluster::new(&nodes, &groups);
    c.run_for(3000);
    // Standby on and off: the group now runs on b, a is eligible again.
    for on in [true, false] {
        let peers = c.peers(0);
        let actions = c.nodes[0]
            .set_standby(now(c.t), "a", on, &peers)
            .expect("standby");
        c.carry_out(0, actions);
        c.run_for(1500);
    }
    assert_eq!(c.running("web"), ["b"]);
    // c is cut off, claims the group, fails to start it and is blocked.
    c.broken.push((2, "web".into()));
    c.isolated[2] = true;
    for peer in ["a", "b"] {
        c.input(
            2,
            Input::NodeDown {
                peer: peer.into(),
                silent_ms: 1000,
            },
        );
    }
    c.run_for(500);
    assert!(c.status(2, "web").blocked);
    c.broken.clear();
    let t0 = c.t;
    c.isolated[2] = false;
    c.run_for(6000);
    assert_eq!(c.stops("b", t0), 0, "the healthy group stayed on b");
    assert_eq!(c.starts("a", t0) + c.starts("c", t0), 0);
    for i in 0..3 {
        assert_eq!(c.owner(i, "web").as_deref(), Some("b"));
    }
}

/// Quorum mode: a lone [`Placement`] `a` of `a`, `b`, `c`, owning `web` by the log.
fn quorum_node() -> (Placement, QuorumGate) {
    let nodes = [("a", 1), ("b", 2), ("c", 3)];
    let mut p = Placement::new(config(
        "a",
        &nodes,
        &[group("web", false, Switchback::Manual)],
    ));
    let mut gate = QuorumGate {
        quorate: true,
        ..QuorumGate::default()
    };
    gate.registers.insert(
        "web".into(),
        Assignment {
            owner: "a".into(),
            epoch: 1,
        },
    );
    gate.may_run.insert("web".into());
    gate.leased.insert("web".into());
    p.set_gate(Some(gate.clone()));
    (p, gate)
}

/// A live peer `b` whose heartbeat claims `a` is in standby.
fn peer_claiming_standby() -> Vec<PeerView> {
    vec![PeerView {
        name: "b".into(),
        advert: NodeAdvert {
            priority: 2,
            standby_register: vec![StandbySetting {
                node: "a".into(),
                standby: true,
                epoch: 99,
            }],
            ..NodeAdvert::default()
        },
    }]
}

fn starts_web(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::StartGroup { group, .. } if group == "web"))
}

fn stops_web(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::StopGroup { group, .. } if group == "web"))
}

#[test]
fn with_a_quorum_a_peer_advert_claiming_standby_does_not_change_placement() {
    let (mut p, _) = quorum_node();
    let peers = peer_claiming_standby();
    let out = p.handle(now(10_000), Input::Tick, &peers);
    assert!(starts_web(&out), "the log gives `a` the group: {out:?}");
    assert!(!p.standby(), "the heartbeat's register is not merged");
    assert!(p.advert(now(10_000)).standby_register.is_empty());
    assert!(!events_of(&out).contains(&EventKind::NodeStandby));
    // The same advert in two-node mode puts `a` in standby.
    let nodes = [("a", 1), ("b", 2)];
    let mut two = Placement::new(config(
        "a",
        &nodes,
        &[group("web", false, Switchback::Manual)],
    ));
    let out = two.handle(now(10_000), Input::Tick, &peers);
    assert!(two.standby());
    assert!(events_of(&out).contains(&EventKind::NodeStandby));
}

#[test]
fn with_a_quorum_standby_is_proposed_and_takes_effect_only_once_committed() {
    let (mut p, mut gate) = quorum_node();
    let out = p.handle(now(10_000), Input::Tick, &[]);
    assert!(starts_web(&out));
    let started = Input::Started {
        group: "web".into(),
        ok: true,
        error: None,
        cleanup_ok: true,
        steps: Vec::new(),
        first_check_wall_ms: None,
    };
    p.handle(now(10_050), started, &[]);
    let out = p.set_standby(now(10_100), "a", true, &[]).expect("standby");
    assert!(out.contains(&Action::Propose(Proposal::Standby {
        node: "a".into(),
        on: true,
    })));
    assert!(
        !p.standby() && !stops_web(&out),
        "nothing changes before the commit"
    );
    gate.standby.insert("a".into());
    p.set_gate(Some(gate.clone()));
    // `b` is live and may run the group.
    let b = vec![PeerView {
        name: "b".into(),
        advert: NodeAdvert {
            priority: 2,
            ..NodeAdvert::default()
        },
    }];
    let out = p.handle(now(10_200), Input::Tick, &b);
    assert!(p.standby() && p.is_standby("a"));
    assert!(stops_web(&out), "a node in standby moves its group off");
    // Already committed: nothing to propose.
    let out = p.set_standby(now(10_300), "a", true, &[]).expect("standby");
    assert!(!out.iter().any(|a| matches!(a, Action::Propose(_))));
}

/// The DR site's view after a site disaster: `web` is `b`'s, and only `b` holds a
/// complete copy; this node is quorate or not.
fn site_lost_gate(quorate: bool) -> QuorumGate {
    let mut gate = QuorumGate {
        quorate,
        ..QuorumGate::default()
    };
    let owner = Assignment {
        owner: "b".into(),
        epoch: 1,
    };
    gate.registers.insert("web".into(), owner);
    gate.complete_copies
        .insert("web".into(), ["b".to_string()].into_iter().collect());
    gate
}

/// The reason `status` gives for group `web`.
fn web_reason(p: &Placement, at: u64) -> String {
    p.status(now(at), &[])
        .into_iter()
        .find(|g| g.name == "web")
        .and_then(|g| g.reason)
        .unwrap_or_default()
}

/// A group nobody can run says why when the log is the cause: the DR site after a site
/// disaster has no quorum, and its async copy is not a complete one.
#[test]
fn with_a_quorum_an_unplaceable_group_names_the_missing_quorum_and_copy() {
    let reason = |quorate: bool| {
        let (mut p, _) = quorum_node();
        p.set_gate(Some(site_lost_gate(quorate)));
        // Past the startup grace.
        p.handle(now(60_000), Input::Tick, &[]);
        p.handle(now(62_000), Input::Tick, &[]);
        web_reason(&p, 62_000)
    };
    let site_lost = reason(false);
    assert!(
        site_lost.starts_with("this node has no quorum")
            && site_lost.contains("complete copy of the group's mirrors (only b;"),
        "{site_lost}"
    );
    let async_only = reason(true);
    assert!(
        async_only.starts_with("no live node holds a complete copy"),
        "{async_only}"
    );
}

/// The reason of a group nobody can run follows the quorum: reported while this node
/// still had it (the DR copy right after the site loss), it names the lost quorum once
/// that is gone too.
#[test]
fn an_unplaceable_groups_reason_names_a_quorum_lost_after_it_was_reported() {
    let (mut p, _) = quorum_node();
    p.set_gate(Some(site_lost_gate(true)));
    p.handle(now(60_000), Input::Tick, &[]);
    p.handle(now(62_000), Input::Tick, &[]);
    assert!(web_reason(&p, 62_000).starts_with("no live node holds a complete copy"));
    p.set_gate(Some(site_lost_gate(false)));
    let out = p.handle(now(63_000), Input::Tick, &[]);
    let now_reason = web_reason(&p, 63_000);
    assert!(
        now_reason.starts_with("this node has no quorum"),
        "{now_reason}"
    );
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Emit {
                kind: EventKind::GroupFailed,
                ..
            }
        )),
        "reported once"
    );
}

#[test]
fn with_a_quorum_standby_is_refused_at_once_without_a_quorum() {
    let (mut p, mut gate) = quorum_node();
    gate.quorate = false;
    p.set_gate(Some(gate));
    assert_eq!(
        p.set_standby(now(10_000), "b", true, &[]).map(|_| ()),
        Err(PlacementError::NoQuorumForNode("b".into()))
    );
    assert_eq!(
        p.set_standby(now(10_000), "zz", true, &[]).map(|_| ()),
        Err(PlacementError::UnknownNode("zz".into()))
    );
}

fn events_of(out: &[Action]) -> Vec<EventKind> {
    out.iter()
        .filter_map(|a| match a {
            Action::Emit { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

#[test]
fn clear_forgets_the_failures_and_lifts_the_block_at_once() {
    let (mut c, _) = duo(false, Switchback::Manual);
    let t0 = c.t;
    for _ in 0..3 {
        c.check_failed("a", "web");
        c.run_for(100);
    }
    assert!(c.status(0, "web").blocked, "the ladder is exhausted");
    assert_eq!(c.status(0, "web").recent_failures, 3);
    c.run_for(1000);
    assert_eq!(c.running("web"), ["b"]);
    // Well within the 10 s window: a clear for another node is refused here...
    let peers = c.peers(0);
    assert_eq!(
        c.nodes[0].clear(now(c.t), "web", Some("b"), &peers).err(),
        Some(PlacementError::NotLocal("b".into()))
    );
    assert_eq!(
        c.nodes[0].clear(now(c.t), "web", Some("z"), &peers).err(),
        Some(PlacementError::UnknownNode("z".into()))
    );
    assert!(c.status(0, "web").blocked);
    // ...and one for this node resets both, with an event saying what it reset.
    let actions = c.nodes[0]
        .clear(now(c.t), "web", Some("a"), &peers)
        .expect("clear");
    let cleared = actions.iter().find_map(|a| match a {
        Action::Emit {
            kind: EventKind::GroupCleared,
            fields,
        } => Some(fields.clone()),
        _ => None,
    });
    let cleared = cleared.expect("a group_cleared event");
    assert_eq!(cleared["failures"], "3");
    assert_eq!(cleared["was_blocked"], "true");
    assert_eq!(cleared["node"], "a");
    c.carry_out(0, actions);
    let st = c.status(0, "web");
    assert!(!st.blocked);
    assert_eq!(st.recent_failures, 0);
    // Eligible again at once: the group comes back when b is put in standby.
    let peers = c.peers(1);
    let actions = c.nodes[1]
        .set_standby(now(c.t), "b", true, &peers)
        .expect("standby");
    c.carry_out(1, actions);
    c.run_for(3000);
    assert!(c.t - t0 < 10_000, "still inside the restart window");
    assert_eq!(c.running("web"), ["a"]);
}

/// A group's own order of nodes overrides the node priorities: `web` lists `b` first,
/// so it starts on `b` although `a` has priority 1, and fails over to `a`.
#[test]
fn a_group_node_list_is_its_order_of_preference() {
    let mut web = group("web", false, Switchback::Manual);
    web.allowed = vec!["b".into(), "a".into()];
    let mut c = Cluster::new(&DUO, std::slice::from_ref(&web));
    c.run_for(3000);
    assert_eq!(c.running("web"), ["b"]);
    c.kill("b");
    c.run_for(3000);
    assert_eq!(c.running("web"), ["a"]);
}

/// N+1: two servers each run their exclusive group, with one standby behind both.
/// The standby takes the first failed server's group; when the second fails too, its
/// group cannot run (the standby already runs an exclusive group) and says so. A
/// returning server gets nothing back by itself; once the operator moves the first
/// group home, the standby takes the second.
#[test]
fn n_plus_one_the_standby_takes_one_exclusive_group_at_a_time() {
    let nodes = [("s1", 1), ("s2", 1), ("sb", 2)];
    let mut groups = Vec::new();
    for (name, server) in [("g1", "s1"), ("g2", "s2")] {
        let mut g = group(name, false, Switchback::Manual);
        g.allowed = vec![server.into(), "sb".into()];
        g.exclusive = true;
        groups.push(g);
    }
    let mut c = Cluster::new(&nodes, &groups);
    c.run_for(3000);
    assert_eq!(
        (c.running("g1"), c.running("g2")),
        (vec!["s1".into()], vec!["s2".into()])
    );
    c.kill("s1");
    c.run_for(3000);
    assert_eq!(c.running("g1"), ["sb"]);
    c.kill("s2");
    c.run_for(3000);
    assert_eq!(c.running("g1"), ["sb"]);
    assert!(
        c.running("g2").is_empty(),
        "g2 shares the standby: {:?}",
        c.running("g2")
    );
    let sb = c.idx("sb");
    let why = c.status(sb, "g2").reason.unwrap_or_default();
    assert!(
        why.contains("exclusive"),
        "g2 does not say why it is down: {why:?}"
    );
    c.restart("s1", &nodes, &groups);
    c.run_for(3000);
    assert_eq!(c.running("g1"), ["sb"], "no automatic switchback");
    let peers = c.peers(sb);
    let (to, actions) = c.nodes[sb]
        .switchover(now(c.t), "g1", Some("s1"), &peers)
        .expect("switchover");
    assert_eq!(to, "s1");
    c.carry_out(sb, actions);
    c.run_for(4000);
    assert_eq!(
        (c.running("g1"), c.running("g2")),
        (vec!["s1".into()], vec!["sb".into()])
    );
}

/// A reloaded restart policy counts from the next failure: with `max_restarts = 0`
/// the first failed check gives the group up at once and the peer takes over.
#[test]
fn a_reloaded_restart_policy_counts_from_the_next_failure() {
    let (mut c, _) = duo(false, Switchback::Manual);
    let t0 = c.t;
    c.nodes[0].set_restart_policy(&RestartPolicy {
        group: "web".into(),
        max_restarts: 0,
        window_ms: 60_000,
    });
    c.check_failed("a", "web");
    c.run_for(3000);
    assert_eq!(c.restarts("a", t0), 0, "no restart allowed any more");
    assert!(c.status(0, "web").blocked);
    assert_eq!(c.running("web"), ["b"]);
}
