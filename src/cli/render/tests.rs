//! The renderers on hand-built snapshots and timelines: the header's facts, columns
//! that fit 48-character names, the reasons a group is blocked or failed, a resync's
//! progress, and a history whose total is failure to service.

use super::history::render_history;
use super::status::{render_mirrors, render_status};
use super::*;
use crate::cluster::packet::LocalGroupState;
use crate::event::{MoveKind, MoveReason, Timeline, TimelineStep};
use crate::quorum::core::Role;
use crate::status::{QuorumView, Status, TakeoverMode, VoterView};

#[test]
fn a_table_is_as_wide_as_its_widest_cell() {
    let long = "n".repeat(48);
    let lines = table(
        "  ",
        &["NODE", "STATE"],
        &[
            vec!["a".into(), "online".into()],
            vec![long.clone(), "offline".into()],
        ],
    );
    assert_eq!(lines[0], format!("  NODE{}STATE", " ".repeat(46)));
    assert_eq!(lines[1], format!("  a{}online", " ".repeat(49)));
    assert_eq!(lines[2], format!("  {long}  offline"));
}

#[test]
fn durations_and_times_read_as_people_write_them() {
    assert_eq!(human_ms(32), "32 ms");
    assert_eq!(human_ms(1030), "1.030 s");
    assert_eq!(human_ms(42_000), "42 s");
    assert_eq!(human_ms(303_000), "5 min 3 s");
    assert_eq!(human_ms(7_500_000), "2 h 5 min");
    assert_eq!(utc_seconds(1_700_000_000_123), "2023-11-14T22:13:20Z");
    assert_eq!(utc_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
}

/// A failover of `web` from alpha to beta: the owner was last heard at 10.000 s, the
/// failure detected at 10.950 s, the start decided at 10.960 s, the address up at
/// 10.985 s and the first check passed at 11.030 s: 1.030 s failure to service, while
/// detection to completion is only 80 ms.
fn failover() -> Timeline {
    let base = 1_700_000_000_000;
    Timeline {
        group: "web".into(),
        kind: MoveKind::Failover,
        reason: MoveReason::NodeLost,
        from_node: Some("alpha".into()),
        to_node: "beta".into(),
        failure_ms: Some(base + 10_000),
        detected_ms: base + 10_950,
        decided_ms: base + 10_960,
        steps: vec![TimelineStep {
            resource: "vip".into(),
            action: "start".into(),
            at_ms: base + 10_965,
            duration_ms: 20,
            ok: true,
            error: None,
        }],
        first_check_ms: Some(base + 11_030),
        completed_ms: Some(base + 11_030),
        outcome: "completed".into(),
    }
}

/// The line of `text` that contains `needle`.
fn line<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn the_header_names_the_cluster_quorum_node_version_and_the_utc_time() {
    let text = render_status(&Status::sample(), &[]);
    assert_eq!(text.lines().next(), Some("Cluster name: c1"));
    assert!(line(&text, "Quorum:").contains("two_node mode"), "{text}");
    assert_eq!(
        line(&text, "This node:"),
        "  * This node: alpha (tandem 0.1.0)"
    );
    assert_eq!(
        line(&text, "Last updated:"),
        "  * Last updated: 2023-11-14T22:13:20Z (up 12 s, event seq 42)"
    );
    assert_eq!(
        line(&text, "configured"),
        "  * 2 nodes, 2 groups, 1 resource configured"
    );
    assert!(!text.contains("Running"), "no Rust Debug names:\n{text}");
}

#[test]
fn in_quorum_mode_the_header_says_whether_this_node_has_it() {
    let mut st = Status::sample();
    st.mode = TakeoverMode::Quorum;
    let voter = |name: &str, reachable| VoterView {
        name: name.into(),
        witness: name == "w",
        reachable,
    };
    st.quorum = Some(QuorumView {
        quorate: true,
        role: Role::Follower,
        term: 7,
        leader: Some("beta".into()),
        commit_index: 12,
        votes: 2,
        voters: vec![voter("alpha", true), voter("beta", true), voter("w", false)],
        leases: vec![crate::status::LeaseView {
            group: "web".into(),
            epoch: 3,
            remaining_ms: 1200,
        }],
        fencing: vec![crate::status::FenceView {
            node: "gamma".into(),
            state: crate::status::FenceState::Off,
            method: Some("redfish".into()),
            elapsed_ms: Some(101),
            reason: None,
            age_ms: 4000,
        }],
    });
    let text = render_status(&st, &[]);
    assert_eq!(
        line(&text, "Quorum:"),
        "  * Quorum: quorum mode, this node has quorum (2 of 3 voters reachable, \
         leader beta, term 7)"
    );
    assert!(
        line(&text, "Voters").contains("this node is follower"),
        "{text}"
    );
    assert_eq!(
        line(&text, "lease of"),
        "  lease of web at epoch 3: 1.200 s left"
    );
    assert_eq!(
        line(&text, "fence gamma"),
        "  fence gamma: OFF via redfish in 101 ms (4.000 s ago)"
    );
    assert!(
        line(&text, "Voters").contains("this node is follower"),
        "{text}"
    );
    assert!(
        line(&text, "  w ").contains("witness  UNREACHABLE"),
        "{text}"
    );
}

#[test]
fn nodes_are_words_and_long_names_keep_the_columns_aligned() {
    let long_node = format!("n{}", "x".repeat(47));
    let long_group = format!("g{}", "y".repeat(47));
    let mut st = Status::sample();
    st.nodes[1].name = long_node.clone();
    st.nodes[1].alive = false;
    st.nodes[0].standby = true;
    st.groups[1].name = long_group.clone();
    let text = render_status(&st, &[]);
    let column = |l: &str, word: &str| l.find(word).unwrap();
    let head = line(&text, "NODE  ");
    let alpha = line(&text, "  alpha  ");
    let beta = line(&text, &long_node);
    assert_eq!(column(alpha, "standby"), column(head, "STATE"), "{text}");
    assert_eq!(column(beta, "offline"), column(head, "STATE"), "{text}");
    assert_eq!(column(head, "STATE"), 2 + 48 + 2);
    let head = line(&text, "ON EACH NODE");
    let db = line(&text, "  db  ");
    let web = line(&text, &long_group);
    assert_eq!(column(db, "running"), column(head, "STATE"), "{text}");
    assert_eq!(column(web, "running"), column(head, "STATE"), "{text}");
    assert!(web.ends_with("alpha running, beta stopped"), "{web}");
}

#[test]
fn a_blocked_or_failed_group_says_why_under_its_row() {
    let mut st = Status::sample();
    st.groups[0].blocked = true;
    st.groups[0].recent_failures = 3;
    st.groups[0].reason = Some("`app` failed 3 times within 600 s: exit status 1".into());
    st.groups[1]
        .states
        .insert("beta".into(), LocalGroupState::Failed);
    let text = render_status(&st, &[]);
    let lines: Vec<&str> = text.lines().collect();
    let db = lines.iter().position(|l| l.starts_with("  db ")).unwrap();
    assert_eq!(
        lines[db + 1],
        "    ! blocked on alpha: `app` failed 3 times within 600 s: exit status 1; 3 recent \
         failures, so alpha will not run it until the restart window ends"
    );
    let web = lines.iter().position(|l| l.starts_with("  web ")).unwrap();
    assert_eq!(
        lines[web + 1],
        "    ! failed on beta: a resource would not stop; it may still run there, so no \
         other node starts it while beta is up"
    );
    st.groups[1]
        .states
        .insert("alpha".into(), LocalGroupState::Failed);
    st.groups[1].reason = Some("stop failed: `app` timed out".into());
    let text = render_status(&st, &[]);
    assert!(
        line(&text, "failed on alpha").contains("alpha: stop failed: `app` timed out; it"),
        "{text}"
    );
    st.groups[1].states.clear();
    st.groups[1].summary = crate::status::GroupSummary::Failed;
    st.groups[1].reason = None;
    let text = render_status(&st, &[]);
    assert!(
        line(&text, "  web ").starts_with("  web    failed"),
        "{text}"
    );
    assert_eq!(
        line(&text, "! failed:"),
        "    ! failed: no live node is eligible to run the group"
    );
    let why = "no live node is free to run the group: `sb` runs the exclusive group `g1`";
    st.groups[1].reason = Some(why.into());
    let text = render_status(&st, &[]);
    assert_eq!(line(&text, "! failed:"), format!("    ! failed: {why}"));
}

#[test]
fn resources_vips_and_the_last_failover_are_shown() {
    let text = render_status(&Status::sample(), &[failover()]);
    assert!(
        line(&text, "  web    vip ").contains("ip    running"),
        "{text}"
    );
    assert!(
        line(&text, "10.0.0.10/24").ends_with("eth0       web    vip       present on alpha"),
        "{text}"
    );
    assert_eq!(
        line(&text, "Last failover:"),
        "Last failover: failover of web alpha -> beta (node_lost), 1.030 s failure to \
         service, at 2023-11-14T22:13:30Z (0 ms ago)"
    );
    let none = render_status(&Status::sample(), &[]);
    assert!(line(&none, "Last failover:").ends_with("none recorded on alpha"));
}

#[test]
fn a_shared_disks_lease_is_shown_under_the_resources() {
    use crate::lease::core::LeaseState;
    use crate::status::DiskLeaseView;
    let mut st = Status::sample();
    st.resources[0].disk_lease = Some(DiskLeaseView {
        state: LeaseState::Held,
        holder: Some("alpha".into()),
        renewal_age_ms: Some(120),
    });
    let text = render_status(&st, &[]);
    let r = &st.resources[0];
    assert_eq!(
        line(&text, "disk lease of"),
        format!(
            "  disk lease of {}/{}: held by alpha, renewed 120 ms ago",
            r.group, r.name
        )
    );
    st.resources[0].disk_lease = Some(DiskLeaseView {
        state: LeaseState::Idle,
        holder: Some("beta".into()),
        renewal_age_ms: None,
    });
    let text = render_status(&st, &[]);
    assert!(line(&text, "disk lease of").ends_with("not held here (the sector last named beta)"));
}

#[test]
fn mirrors_read_like_drbdadm_status_with_the_resync_progress() {
    let text = render_mirrors(&Status::sample().mirrors);
    let want = "\
vol role:primary group:web
  disk:sync_source size:1.0GiB generation:00000000000000ab
  IO FROZEN: waiting to outdate a lost peer
  beta connection:connected mode:sync protocol:v3
    replication:sync_source peer-disk:sync_target out-of-sync:3.0MiB zstd:4.00:1 (2.0 KiB sent for 8.0 KiB)
    resync:source done:25.0% (1.0 MiB of 4.0 MiB) rate:976.6 KiB/s eta:2.200 s
    verify:done checked 1.0 GiB of 1.0 GiB, 0 B out of sync
  gamma connection:split_brain mode:async
    replication:off peer-disk:unknown out-of-sync:0B lag:4.0KiB/1.2s
";
    assert_eq!(text, want);
    let status = render_status(&Status::sample(), &[]);
    assert!(
        status.contains("\nMirrors:\n  vol role:primary"),
        "{status}"
    );
}

#[test]
fn history_tells_the_whole_failover_and_totals_failure_to_service() {
    let text = render_history(&[failover()], &[]);
    let want = "\
2023-11-14T22:13:30.000Z failover of web: alpha -> beta, reason node_lost, completed
  AT                        PHASE                                ELAPSED   TOOK
  2023-11-14T22:13:30.000Z  failure (last heard from the owner)  +0 ms     -
  2023-11-14T22:13:30.950Z  detected                             +950 ms   950 ms
  2023-11-14T22:13:30.960Z  decided                              +960 ms   10 ms
  2023-11-14T22:13:30.965Z  start vip on beta                    +965 ms   20 ms
  2023-11-14T22:13:31.030Z  first passing check                  +1.030 s  45 ms
  total 1.030 s (failure to service)
";
    assert_eq!(text.trim_end(), want.trim_end());
}

#[test]
fn a_switchover_totals_from_the_request_and_a_failed_move_has_no_total() {
    let mut t = failover();
    t.kind = MoveKind::Switchover;
    t.reason = MoveReason::Manual;
    t.failure_ms = None;
    let text = render_history(&[t.clone()], &[]);
    let requested: Vec<&str> = line(&text, "requested").split_whitespace().collect();
    assert_eq!(requested[1..], ["requested", "+0", "ms", "-"], "{text}");
    assert_eq!(line(&text, "total"), "  total 80 ms (request to service)");
    t.outcome = "failed: start of `vip` failed".into();
    t.first_check_ms = None;
    t.steps[0].ok = false;
    t.steps[0].error = Some("address in use".into());
    let text = render_history(&[t], &[]);
    assert!(line(&text, "start vip on beta FAILED: address in use").contains("20 ms"));
    assert_eq!(
        line(&text, "total"),
        "  total - (no service: failed: start of `vip` failed)"
    );
}

#[test]
fn a_release_shows_the_stops_on_the_old_owner() {
    let base = 1_700_000_000_000;
    let release = Timeline {
        group: "web".into(),
        kind: MoveKind::Release,
        reason: MoveReason::Manual,
        from_node: Some("alpha".into()),
        to_node: "beta".into(),
        failure_ms: None,
        detected_ms: base,
        decided_ms: base,
        steps: vec![TimelineStep {
            resource: "vip".into(),
            action: "stop".into(),
            at_ms: base,
            duration_ms: 12,
            ok: true,
            error: None,
        }],
        first_check_ms: None,
        completed_ms: Some(base + 15),
        outcome: "stopped".into(),
    };
    let text = render_history(&[release], &[]);
    assert!(
        text.starts_with("2023-11-14T22:13:20.000Z release of web: alpha -> beta"),
        "{text}"
    );
    let stop: Vec<&str> = line(&text, "stop vip").split_whitespace().collect();
    assert_eq!(
        stop[1..],
        ["stop", "vip", "on", "alpha", "+0", "ms", "12", "ms"]
    );
    assert_eq!(
        line(&text, "total"),
        "  total 15 ms (first stop to stopped)"
    );
    assert!(!text.contains("decided"), "{text}");
}
