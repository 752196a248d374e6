//! Unit tests of the steps of a group's evaluation ([`GroupState::evaluate`]): each step
//! runs on one [`GroupState`] against a hand-built [`ClusterView`] (nodes `a`, `b`, `c`
//! by preference; one group, `web`), and the test checks the state and actions it leaves.

use super::*;

const GROUP: &str = "web";

/// The facts a [`ClusterView`] borrows: configuration, node state, live peers, time.
struct World {
    cfg: PlacementConfig,
    node: NodeState,
    peers: Vec<PeerView>,
    mono_ms: u64,
    /// Quorum mode: what the log and the leases allow.
    gate: Option<QuorumGate>,
}

impl World {
    /// Node `local` of `a`, `b`, `c`, past the startup grace, with no live peers.
    fn new(local: &str, has_vip: bool, switchback: Switchback) -> World {
        World {
            cfg: PlacementConfig {
                local: local.into(),
                nodes: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
                groups: vec![GroupPolicy {
                    name: GROUP.into(),
                    allowed: Vec::new(),
                    exclusive: false,
                    switchback,
                    max_restarts: 2,
                    window_ms: 10_000,
                    has_vip,
                    hold_on_lease_loss: false,
                }],
                startup_grace_ms: 1400,
                probe_before_takeover: true,
                probe_retry_ms: 2000,
                probe_fresh_ms: 650,
            },
            node: NodeState {
                started_mono_ms: Some(0),
                ..NodeState::default()
            },
            peers: Vec::new(),
            mono_ms: 10_000,
            gate: None,
        }
    }

    /// Quorum mode, with the log naming `owner`.
    fn with_gate(mut self, owner: Option<(&str, u64)>) -> World {
        let mut gate = QuorumGate {
            quorate: true,
            ..QuorumGate::default()
        };
        if let Some(a) = owner.and_then(register) {
            gate.registers.insert(GROUP.into(), a);
        }
        self.gate = Some(gate);
        self
    }

    fn gate_mut(&mut self) -> &mut QuorumGate {
        self.gate.get_or_insert_with(QuorumGate::default)
    }

    fn with_peer(
        mut self,
        name: &str,
        local: LocalGroupState,
        owner: Option<(&str, u64)>,
    ) -> World {
        self.peers.push(PeerView {
            name: name.into(),
            advert: NodeAdvert {
                groups: vec![GroupAdvert {
                    name: GROUP.into(),
                    local,
                    blocked: false,
                    maintenance: false,
                    assignment: owner.and_then(register),
                }],
                ..NodeAdvert::default()
            },
        });
        self
    }

    fn policy(&self) -> &GroupPolicy {
        &self.cfg.groups[0]
    }

    fn view(&self) -> ClusterView<'_> {
        ClusterView {
            now: Now {
                mono_ms: self.mono_ms,
                wall_ms: 1_700_000_000_000 + self.mono_ms,
            },
            cfg: &self.cfg,
            node: &self.node,
            peers: &self.peers,
            gate: self.gate.as_ref(),
            exclusive: BTreeMap::new(),
        }
    }
}

fn register((owner, epoch): (&str, u64)) -> Option<Assignment> {
    Some(Assignment {
        owner: owner.into(),
        epoch,
    })
}

/// The group on this node: `local` here, the register naming `owner`.
fn group(local: LocalGroupState, owner: Option<(&str, u64)>) -> GroupState {
    GroupState {
        local,
        register: owner.and_then(register),
        ..GroupState::new()
    }
}

fn events(out: &[Action]) -> Vec<EventKind> {
    out.iter()
        .filter_map(|a| match a {
            Action::Emit { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

fn stops(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::StopGroup { group, .. } if group == GROUP))
}

fn stop_mode(out: &[Action]) -> Option<StopMode> {
    out.iter().find_map(|a| match a {
        Action::StopGroup { mode, .. } => Some(*mode),
        _ => None,
    })
}

fn starts(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::StartGroup { group, .. } if group == GROUP))
}

fn probes(out: &[Action]) -> bool {
    out.contains(&Action::ProbeVip {
        group: GROUP.into(),
    })
}

#[test]
fn follow_register_takes_the_highest_epoch_with_its_maintenance_flag() {
    let mut w = World::new("a", false, Switchback::Manual);
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("b", 2)));
    w.peers[0].advert.groups[0].maintenance = true;
    let mut g = group(LocalGroupState::Stopped, Some(("a", 1)));
    let mut out = Vec::new();
    g.follow_register(w.policy(), &w.view(), &mut out);
    assert_eq!(g.register, register(("b", 2)));
    assert!(g.maintenance);
    assert_eq!(events(&out), [EventKind::GroupMaintenanceOn]);
    assert!(g.claim.is_none());
}

#[test]
fn follow_register_breaks_an_epoch_tie_by_preference_then_name() {
    let w = World::new("c", false, Switchback::Manual).with_peer(
        "a",
        LocalGroupState::Stopped,
        Some(("a", 3)),
    );
    let mut g = group(LocalGroupState::Stopped, Some(("b", 3)));
    g.follow_register(w.policy(), &w.view(), &mut Vec::new());
    assert_eq!(g.register, register(("a", 3)));

    // Equal priorities: the name decides, whichever register this node had first.
    let mut w = World::new("c", false, Switchback::Manual).with_peer(
        "a",
        LocalGroupState::Stopped,
        Some(("x", 3)),
    );
    w.cfg.nodes.extend([("x".into(), 5), ("y".into(), 5)]);
    let mut g = group(LocalGroupState::Stopped, Some(("y", 3)));
    g.follow_register(w.policy(), &w.view(), &mut Vec::new());
    assert_eq!(g.register, register(("x", 3)));
}

#[test]
fn follow_register_notes_why_a_register_naming_this_node_arrived() {
    for (switchback, reason) in [
        (Switchback::Automatic, MoveReason::Switchback),
        (Switchback::Manual, MoveReason::Manual),
    ] {
        let w = World::new("a", false, switchback).with_peer(
            "b",
            LocalGroupState::Running,
            Some(("a", 2)),
        );
        let mut g = group(LocalGroupState::Stopped, Some(("b", 1)));
        g.follow_register(w.policy(), &w.view(), &mut Vec::new());
        let claim = g.claim.expect("a claim");
        assert_eq!(claim.reason, reason);
        assert_eq!(claim.from.as_deref(), Some("b"));
    }
}

#[test]
fn lift_expired_block_forgets_the_failures_once_the_window_is_over() {
    let mut g = GroupState {
        blocked_until: Some(5_000),
        failures: VecDeque::from([1_000, 2_000]),
        ..GroupState::new()
    };
    g.lift_expired_block(4_999);
    assert!(g.is_blocked(4_999));
    assert_eq!(g.failures.len(), 2);
    g.lift_expired_block(5_000);
    assert_eq!(g.blocked_until, None);
    assert!(g.failures.is_empty());
}

#[test]
fn resolve_split_brain_stops_the_less_preferred_runner_and_reports_once() {
    let w = World::new("b", false, Switchback::Manual).with_peer(
        "a",
        LocalGroupState::Running,
        Some(("a", 1)),
    );
    let mut g = group(LocalGroupState::Running, Some(("b", 1)));
    let active = g.active_nodes(w.policy(), &w.view());
    assert_eq!(active, ["b", "a"]);
    let mut out = Vec::new();
    g.resolve_split_brain(w.policy(), &w.view(), active.clone(), &mut out);
    assert_eq!(
        events(&out),
        [EventKind::SplitBrainResolved, EventKind::GroupStopping]
    );
    assert!(stops(&out));
    assert_eq!(g.local, LocalGroupState::Stopping);
    assert_eq!(g.register, register(("a", 2)), "the loser names the winner");
    let mut again = Vec::new();
    g.resolve_split_brain(w.policy(), &w.view(), active, &mut again);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn resolve_split_brain_lets_the_preferred_runner_keep_the_group_and_the_register() {
    let w = World::new("a", false, Switchback::Manual).with_peer(
        "b",
        LocalGroupState::Running,
        Some(("b", 4)),
    );
    let mut g = group(LocalGroupState::Running, Some(("b", 4)));
    let mut out = Vec::new();
    g.resolve_split_brain(
        w.policy(),
        &w.view(),
        vec!["a".into(), "b".into()],
        &mut out,
    );
    assert_eq!(events(&out), [EventKind::SplitBrainResolved]);
    assert_eq!(g.local, LocalGroupState::Running);
    assert_eq!(g.register, register(("a", 5)));
}

#[test]
fn report_unplaceable_reports_once_after_the_grace_and_rearms_when_placeable() {
    let mut w = World::new("a", false, Switchback::Manual);
    let mut g = group(LocalGroupState::Stopped, None);
    let mut out = Vec::new();
    w.node.started_mono_ms = Some(w.mono_ms);
    g.report_unplaceable(w.policy(), &w.view(), None, true, &mut out);
    assert!(out.is_empty(), "in the startup grace: {out:?}");
    w.node.started_mono_ms = Some(0);
    g.report_unplaceable(w.policy(), &w.view(), None, true, &mut out);
    g.report_unplaceable(w.policy(), &w.view(), None, true, &mut out);
    assert_eq!(events(&out), [EventKind::GroupFailed]);
    g.report_unplaceable(w.policy(), &w.view(), Some("b"), true, &mut out);
    assert!(g.unplaceable.is_none());
    g.report_unplaceable(w.policy(), &w.view(), None, true, &mut out);
    assert_eq!(
        events(&out),
        [EventKind::GroupFailed, EventKind::GroupFailed]
    );
}

#[test]
fn take_over_waits_for_the_startup_grace() {
    let mut w = World::new("a", false, Switchback::Manual);
    w.node.started_mono_ms = Some(w.mono_ms - 100);
    let mut g = group(LocalGroupState::Stopped, None);
    let mut out = Vec::new();
    g.take_over(w.policy(), &w.view(), None, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(g.claim.is_none());
}

#[test]
fn take_over_adopts_the_register_of_a_group_already_running_here() {
    let w = World::new("b", false, Switchback::Manual);
    let mut g = group(LocalGroupState::Running, Some(("a", 3)));
    g.claim = Some(g.takeover_move(w.policy(), &w.view(), Some("a")));
    let mut out = Vec::new();
    g.take_over(w.policy(), &w.view(), Some("a"), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(g.register, register(("b", 4)));
    assert!(g.claim.is_none());
}

#[test]
fn take_over_of_a_lost_owner_records_when_it_was_lost_and_probes_first() {
    let mut w = World::new("b", true, Switchback::Manual);
    w.node
        .lost_at
        .insert("a".into(), (1_700_000_009_000, 1_700_000_007_000));
    let mut g = group(LocalGroupState::Stopped, Some(("a", 1)));
    let mut out = Vec::new();
    g.take_over(w.policy(), &w.view(), Some("a"), &mut out);
    let claim = g.claim.as_ref().expect("a claim");
    assert_eq!(claim.reason, MoveReason::NodeLost);
    assert_eq!(claim.detected_wall_ms, 1_700_000_009_000);
    assert_eq!(claim.failed_wall_ms, Some(1_700_000_007_000));
    assert!(probes(&out) && !starts(&out), "{out:?}");
    assert_eq!(g.register, register(("a", 1)), "no claim before the probe");
}

#[test]
fn takeover_move_names_why_the_group_moves() {
    let w = World::new("b", false, Switchback::Manual);
    let g = group(LocalGroupState::Stopped, None);
    let reason = |w: &World, owner| g.takeover_move(w.policy(), &w.view(), owner).reason;
    assert_eq!(reason(&w, None), MoveReason::Initial);
    assert_eq!(reason(&w, Some("a")), MoveReason::NodeLost);
    let w = w.with_peer("a", LocalGroupState::Running, Some(("a", 1)));
    assert_eq!(reason(&w, Some("a")), MoveReason::Switchback);
    let mut standby = World { ..w };
    standby.peers[0].advert.standby = true;
    assert_eq!(reason(&standby, Some("a")), MoveReason::Manual);
    let mut blocked = World { ..standby };
    blocked.peers[0].advert.standby = false;
    blocked.peers[0].advert.groups[0].blocked = true;
    assert_eq!(reason(&blocked, Some("a")), MoveReason::ResourceFailed);
}

#[test]
fn hand_off_to_a_more_preferred_node_writes_the_register_then_stops() {
    let w = World::new("b", false, Switchback::Automatic).with_peer(
        "a",
        LocalGroupState::Stopped,
        Some(("b", 2)),
    );
    let mut g = group(LocalGroupState::Running, Some(("b", 2)));
    let mut out = Vec::new();
    g.hand_off(w.policy(), &w.view(), "a", &mut out);
    assert_eq!(g.register, register(("a", 3)));
    assert_eq!(
        events(&out),
        [EventKind::SwitchoverStarted, EventKind::GroupStopping]
    );
    assert!(stops(&out));
}

#[test]
fn hand_off_when_no_longer_eligible_only_stops() {
    let w = World::new("a", false, Switchback::Manual);
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    g.blocked_until = Some(w.mono_ms + 1);
    let mut out = Vec::new();
    g.hand_off(w.policy(), &w.view(), "b", &mut out);
    assert_eq!(g.register, register(("a", 2)));
    assert_eq!(events(&out), [EventKind::GroupStopping]);
    assert_eq!(g.local, LocalGroupState::Stopping);
}

#[test]
fn leave_to_owner_drops_our_claim_and_stops_the_group_here() {
    let w = World::new("b", true, Switchback::Manual);
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    g.probe = ProbeState::RetryAt(w.mono_ms + 500);
    g.claim = Some(PendingMove {
        reason: MoveReason::NodeLost,
        from: Some("a".into()),
        detected_wall_ms: 0,
        failed_wall_ms: None,
    });
    let mut out = Vec::new();
    g.leave_to_owner(w.policy(), Some("a"), &mut out);
    assert!(g.claim.is_none());
    assert_eq!(g.probe, ProbeState::Idle);
    assert!(stops(&out));
    let Some(Action::Emit { fields, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(fields["reason"], "the group is assigned to `a`");

    // A speculative probe's finding is kept; a restart under way is not interrupted.
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    g.probe = ProbeState::SpecInUse(1);
    g.restarting = true;
    let mut out = Vec::new();
    g.leave_to_owner(w.policy(), Some("a"), &mut out);
    assert_eq!(g.probe, ProbeState::SpecInUse(1));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn try_start_waits_while_a_peer_still_holds_the_group() {
    for state in [
        LocalGroupState::Starting,
        LocalGroupState::Running,
        LocalGroupState::Stopping,
        LocalGroupState::Failed,
    ] {
        let w = World::new("a", false, Switchback::Manual).with_peer("b", state, Some(("a", 2)));
        let mut g = group(LocalGroupState::Stopped, Some(("a", 2)));
        let mut out = Vec::new();
        g.try_start(w.policy(), &w.view(), &mut out);
        assert!(out.is_empty(), "{state:?}: {out:?}");
    }
}

#[test]
fn try_start_waits_until_every_peer_carries_our_register() {
    let w = World::new("a", false, Switchback::Manual).with_peer(
        "b",
        LocalGroupState::Stopped,
        Some(("b", 1)),
    );
    let mut g = group(LocalGroupState::Stopped, Some(("a", 2)));
    let mut out = Vec::new();
    g.try_start(w.policy(), &w.view(), &mut out);
    assert!(out.is_empty(), "{out:?}");

    let w = World::new("a", false, Switchback::Manual).with_peer(
        "b",
        LocalGroupState::Stopped,
        Some(("a", 2)),
    );
    g.try_start(w.policy(), &w.view(), &mut out);
    assert!(starts(&out), "{out:?}");
    assert_eq!(g.local, LocalGroupState::Starting);
}

#[test]
fn floating_ip_free_only_on_a_fresh_passed_probe_and_asks_for_one_otherwise() {
    let mut w = World::new("a", true, Switchback::Manual);
    let mut g = group(LocalGroupState::Stopped, None);
    let mut out = Vec::new();
    assert!(!g.floating_ip_free(w.policy(), &w.view(), &mut out));
    assert!(probes(&out));
    assert_eq!(g.probe, ProbeState::InFlight { speculative: false });

    out.clear();
    assert!(!g.floating_ip_free(w.policy(), &w.view(), &mut out));
    g.probe = ProbeState::RetryAt(w.mono_ms + 1);
    assert!(!g.floating_ip_free(w.policy(), &w.view(), &mut out));
    assert!(
        out.is_empty(),
        "in flight, or not yet time to retry: {out:?}"
    );

    g.probe = ProbeState::Passed(w.mono_ms - 650);
    assert!(g.floating_ip_free(w.policy(), &w.view(), &mut out));
    w.mono_ms += 1;
    assert!(!g.floating_ip_free(w.policy(), &w.view(), &mut out));
    assert!(probes(&out), "a stale pass is probed again");
}

#[test]
fn claim_and_start_alone_writes_the_claim_and_starts_with_a_timeline() {
    let w = World::new("b", true, Switchback::Manual);
    let mut g = group(LocalGroupState::Stopped, Some(("a", 1)));
    g.probe = ProbeState::Passed(w.mono_ms);
    g.claim = Some(g.takeover_move(w.policy(), &w.view(), Some("a")));
    let mut out = Vec::new();
    g.claim_and_start(w.policy(), &w.view(), &mut out);
    assert_eq!(g.register, register(("b", 2)));
    assert_eq!(g.probe, ProbeState::Idle);
    assert_eq!(g.local, LocalGroupState::Starting);
    assert_eq!(
        events(&out),
        [EventKind::FailoverStarted, EventKind::GroupStarting]
    );
    assert!(starts(&out));
    let t = g.timeline.as_ref().expect("a timeline");
    assert_eq!(
        (t.kind, t.reason),
        (MoveKind::Failover, MoveReason::NodeLost)
    );
    assert_eq!(t.from_node.as_deref(), Some("a"));
}

#[test]
fn claim_and_start_with_live_peers_writes_the_claim_and_starts_only_later() {
    let w =
        World::new("a", false, Switchback::Manual).with_peer("b", LocalGroupState::Stopped, None);
    let mut g = group(LocalGroupState::Stopped, None);
    let mut out = Vec::new();
    g.claim_and_start(w.policy(), &w.view(), &mut out);
    assert_eq!(g.register, register(("a", 1)));
    assert!(out.is_empty(), "{out:?}");
    g.claim_and_start(w.policy(), &w.view(), &mut out);
    assert_eq!(
        events(&out),
        [EventKind::GroupStarting],
        "a first placement"
    );
    assert!(starts(&out));
}

#[test]
fn claim_and_start_rechecks_that_the_group_is_still_ours() {
    let w = World::new("b", false, Switchback::Manual).with_peer(
        "a",
        LocalGroupState::Stopped,
        Some(("a", 1)),
    );
    let mut g = group(LocalGroupState::Stopped, Some(("a", 1)));
    let mut out = Vec::new();
    g.claim_and_start(w.policy(), &w.view(), &mut out);
    assert_eq!(g.register, register(("a", 1)));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn evaluate_in_maintenance_follows_the_register_and_does_nothing_else() {
    let w = World::new("a", false, Switchback::Manual).with_peer(
        "b",
        LocalGroupState::Running,
        Some(("b", 1)),
    );
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    g.maintenance = true;
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(out.is_empty(), "two runners, but in maintenance: {out:?}");
    assert_eq!(g.local, LocalGroupState::Running);
}

#[test]
fn a_failed_start_of_a_first_placement_is_reported_and_blocks_the_node() {
    let w = World::new("a", false, Switchback::Manual);
    let mut g = group(LocalGroupState::Stopped, None);
    let mut out = Vec::new();
    g.claim_and_start(w.policy(), &w.view(), &mut out);
    out.clear();
    let report = StartReport {
        ok: false,
        error: Some("broken".into()),
        cleanup_ok: true,
        steps: Vec::new(),
        first_check_wall_ms: None,
    };
    g.on_started(w.policy(), &w.view(), report, &mut out);
    assert_eq!(
        events(&out),
        [EventKind::GroupStartFailed, EventKind::FailoverFailed]
    );
    assert!(matches!(out.last(), Some(Action::RecordTimeline(t)) if t.outcome == "failed: broken"));
    assert_eq!(g.local, LocalGroupState::Stopped);
    assert!(g.is_blocked(w.mono_ms));
}

fn proposes_owner(out: &[Action]) -> Option<(String, u64)> {
    out.iter().find_map(|a| match a {
        Action::Propose(Proposal::Own { owner, epoch, .. }) => Some((owner.clone(), *epoch)),
        _ => None,
    })
}

#[test]
fn with_a_quorum_the_register_is_the_log_not_the_newest_heartbeat() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 3)));
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("b", 9)));
    let mut g = group(LocalGroupState::Stopped, Some(("a", 1)));
    let mut out = Vec::new();
    g.follow_register(w.policy(), &w.view(), &mut out);
    assert_eq!(g.register, register(("a", 3)));
}

#[test]
fn with_a_quorum_a_takeover_is_proposed_only_once_a_majority_is_silent_on_the_owner() {
    // The owner `b` is not a live peer: `a` should take over.
    let mut w = World::new("a", true, Switchback::Manual).with_gate(Some(("b", 4)));
    let mut g = group(LocalGroupState::Stopped, Some(("b", 4)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(proposes_owner(&out), None, "no majority silent yet");
    assert!(!starts(&out) && !probes(&out), "no probe with a quorum");
    w.gate_mut().may_take_over.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(proposes_owner(&out), Some(("a".into(), 5)));
    assert!(!starts(&out), "nothing starts before the claim commits");
    assert_eq!(
        g.register,
        register(("b", 4)),
        "the register waits for the log"
    );
}

#[test]
fn with_a_quorum_the_committed_owner_starts_only_when_it_may_run() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5)));
    let mut g = group(LocalGroupState::Stopped, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(!starts(&out), "the old owner's lease may still run");
    w.gate_mut().may_run.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(starts(&out));
}

#[test]
fn with_a_quorum_an_owner_whose_lease_ran_out_stops_and_restarts_when_it_returns() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5)));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(stops(&out), "no lease: stop");
    assert_eq!(
        stop_mode(&out),
        Some(StopMode::LeaseLost),
        "the floating IP and the volume go first"
    );
    assert_eq!(proposes_owner(&out), None, "and claim nothing");
    g.local = LocalGroupState::Stopped;
    w.gate_mut().may_run.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(starts(&out), "the lease is back at the same epoch");
}

#[test]
fn with_a_quorum_a_node_running_a_group_the_log_gives_another_stops_it() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("b", 6)));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(stops(&out));
    assert_eq!(
        stop_mode(&out),
        Some(StopMode::LeaseLost),
        "no lease left (cut off or paused past it): the address goes first"
    );
    // A hand-off: the old owner still holds its lease and stops cleanly.
    w.gate_mut().leased.insert(GROUP.into());
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(stop_mode(&out), Some(StopMode::TopDown));
    assert_eq!(g.register, register(("b", 6)));
}

#[test]
fn with_a_quorum_an_owner_that_may_not_run_the_group_hands_it_over_once_stopped() {
    // `a` owns the group but is in standby: `b` should run it.
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 2)));
    w.gate_mut().standby.insert("a".into());
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("a", 2)));
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    w.gate_mut().may_run.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(stops(&out));
    assert_eq!(proposes_owner(&out), None, "not while it still runs");
    g.local = LocalGroupState::Stopped;
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(out.contains(&Action::Propose(Proposal::Own {
        group: GROUP.into(),
        owner: "b".into(),
        epoch: 3,
        handoff: true,
    })));
}

#[test]
fn with_a_quorum_a_switchover_is_refused_while_this_node_has_no_quorum() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 2)));
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("a", 2)));
    let g = group(LocalGroupState::Running, Some(("a", 2)));
    assert_eq!(
        g.switchover_target(w.policy(), &w.view(), Some("b")),
        Ok("b".to_string())
    );
    w.gate_mut().quorate = false;
    assert_eq!(
        g.switchover_target(w.policy(), &w.view(), Some("b")),
        Err(PlacementError::NoQuorum(GROUP.into())),
        "a proposal without a leader would be dropped while the CLI said yes"
    );
}

#[test]
fn with_a_quorum_standby_is_read_from_the_log_not_the_heartbeat_register() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 2)));
    w.gate_mut().may_run.insert(GROUP.into());
    // The merged heartbeat register (two-node mode's) says `a` is in standby, at an
    // epoch far ahead: in quorum mode it counts for nothing.
    w.node.standby.insert("a".into(), (true, 99));
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("a", 2)));
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(!stops(&out), "the log does not have `a` in standby");
    assert!(g.eligible("a", w.policy(), &w.view()));
    // The log commits it: the owner moves the group off, as before.
    w.gate_mut().standby.insert("a".into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(stops(&out));
    assert!(!g.eligible("a", w.policy(), &w.view()));
    // Without a quorum (two-node mode) the heartbeat register decides.
    w.gate = None;
    assert!(!g.eligible("a", w.policy(), &w.view()));
    w.node.standby.clear();
    assert!(g.eligible("a", w.policy(), &w.view()));
}

#[test]
fn with_a_quorum_a_node_whose_watchdog_is_unavailable_stops_as_without_a_lease() {
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 2)));
    w.gate_mut().may_run.insert(GROUP.into());
    w.gate_mut().leased.insert(GROUP.into());
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("a", 2)));
    w.node.unprotected = Some("open of /dev/watchdog failed".into());
    let mut g = group(LocalGroupState::Running, Some(("a", 2)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(
        stop_mode(&out),
        Some(StopMode::LeaseLost),
        "no device to reset a hung node: the address goes first"
    );
    assert!(!g.eligible("a", w.policy(), &w.view()));
    // Stopped, it starts nothing even though the log and the lease allow it.
    g.local = LocalGroupState::Stopped;
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(!starts(&out));
    w.node.unprotected = None;
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(starts(&out), "back once the device opens");
}

/// A group whose mirrors all suspend I/O on a lost lease.
fn holding(mut w: World) -> World {
    w.cfg.groups[0].hold_on_lease_loss = true;
    w
}

fn fast_stops(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::FastStopGroup { group } if group == GROUP))
}

fn resumes(out: &[Action]) -> Option<u64> {
    out.iter().find_map(|a| match a {
        Action::ResumeGroup { group, epoch } if group == GROUP => Some(*epoch),
        _ => None,
    })
}

fn emits(out: &[Action], kind: EventKind) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::Emit { kind: k, .. } if *k == kind))
}

#[test]
fn with_a_quorum_a_holding_group_is_fast_stopped_and_resumed_when_its_lease_returns() {
    let mut w = holding(World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5))));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(fast_stops(&out), "the lease runs out: only the fast stop");
    assert!(
        !stops(&out),
        "no clean stop: the writes are held, not failed"
    );
    assert!(emits(&out, EventKind::GroupSuspended));
    assert_eq!(g.local, LocalGroupState::Stopping, "it serves nothing now");
    // The lease comes back before the fast stop reported: nothing yet.
    w.gate_mut().may_run.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(out.is_empty(), "{out:?}");
    g.held.as_mut().unwrap().fast_stop = FastStopState::Done;
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(
        resumes(&out),
        Some(5),
        "the lease is back at the same epoch"
    );
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(out.is_empty(), "one resume at a time: {out:?}");
    w.mono_ms += 700;
    let mut out = Vec::new();
    g.on_resumed(w.policy(), &w.view(), true, None, &mut out);
    assert_eq!(g.local, LocalGroupState::Running);
    assert!(emits(&out, EventKind::GroupResumed));
    assert!(g.held.is_none());
}

#[test]
fn with_a_quorum_a_held_group_stops_once_the_log_names_another_owner() {
    let mut w = holding(World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5))));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    g.evaluate(w.policy(), &w.view(), &mut Vec::new());
    g.held.as_mut().unwrap().fast_stop = FastStopState::Done;
    // Still no lease, the log unchanged: it waits, its writes held.
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // A majority elsewhere moved the group on: the held writes must fail.
    w = w.with_gate(Some(("b", 6)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(
        stop_mode(&out),
        Some(StopMode::AfterHold),
        "fast-stopped already: only the clean stop"
    );
    assert!(resumes(&out).is_none());
    assert!(g.held.is_none());
}

#[test]
fn with_a_quorum_a_held_group_whose_fast_stop_failed_is_stopped() {
    let mut w = holding(World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5))));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    g.evaluate(w.policy(), &w.view(), &mut Vec::new());
    g.held.as_mut().unwrap().fast_stop = FastStopState::Failed;
    w.gate_mut().may_run.insert(GROUP.into());
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(stop_mode(&out), Some(StopMode::LeaseLost));
    assert!(
        resumes(&out).is_none(),
        "a group that may still serve is not resumed"
    );
}

#[test]
fn with_a_quorum_a_group_that_does_not_hold_stops_at_once_and_a_failed_resume_stops() {
    let w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 5)));
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert!(!fast_stops(&out));
    assert_eq!(
        stop_mode(&out),
        Some(StopMode::LeaseLost),
        "io_error: no hold"
    );
    let w = holding(w);
    let mut g = group(LocalGroupState::Running, Some(("a", 5)));
    g.evaluate(w.policy(), &w.view(), &mut Vec::new());
    let mut out = Vec::new();
    g.on_resumed(
        w.policy(),
        &w.view(),
        false,
        Some("thaw: EBUSY".into()),
        &mut out,
    );
    assert_eq!(stop_mode(&out), Some(StopMode::TopDown));
}

#[test]
fn with_a_quorum_a_failed_owner_hands_the_group_only_to_a_complete_copy() {
    // `a` owns the group and failed to start it; `b` is eligible but its copy is an
    // async one of the last primary's: no hand-off to it.
    let mut w = World::new("a", false, Switchback::Manual).with_gate(Some(("a", 2)));
    w.gate_mut().may_run.insert(GROUP.into());
    w = w.with_peer("b", LocalGroupState::Stopped, Some(("a", 2)));
    w.gate_mut()
        .complete_copies
        .insert(GROUP.into(), BTreeSet::from(["a".to_string()]));
    // Its failed start blocked it here (the restarts are used up).
    let mut g = group(LocalGroupState::Stopped, Some(("a", 2)));
    g.blocked_until = Some(u64::MAX);
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(proposes_owner(&out), None, "{out:?}");
    // A sync copy of the last primary: handed over.
    w.gate_mut().complete_copies.insert(
        GROUP.into(),
        BTreeSet::from(["a".to_string(), "b".to_string()]),
    );
    let mut out = Vec::new();
    g.evaluate(w.policy(), &w.view(), &mut out);
    assert_eq!(proposes_owner(&out), Some(("b".to_string(), 3)), "{out:?}");
}
