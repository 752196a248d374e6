//! Unit tests of the metrics registry: names, pre-created label sets, phases, deltas.

use super::*;
use crate::api::{HeartbeatCounters, NodeStatus, PathStatusView};
use crate::cluster::packet::LocalGroupState;
use crate::event::TimelineStep;
use crate::placement::policy::GroupStatus;

fn config() -> Config {
    let text = r#"
        [cluster]
        name = "lab"
        key = "0123456789abcdef0123"
        [heartbeat]
        paths = ["hb1", "hb2"]
        [[node]]
        name = "n1"
        priority = 1
        addresses = { hb1 = "10.1.0.1", hb2 = "10.2.0.1" }
        [[node]]
        name = "n2"
        priority = 2
        addresses = { hb1 = "10.1.0.2", hb2 = "10.2.0.2" }
        [[group]]
        name = "web"
        [[group.resource]]
        name = "svc"
        kind = "exec"
        start = ["true"]
        stop = ["true"]
        quickcheck = { probe = "tcp", address = "127.0.0.1:1" }
    "#;
    toml::from_str(text).expect("test config parses")
}

fn status() -> Status {
    Status {
        cluster: "lab".into(),
        node: "n1".into(),
        last_seq: 42,
        uptime_ms: 1500,
        mode: "two_node".into(),
        nodes: vec![
            NodeStatus {
                name: "n1".into(),
                local: true,
                alive: true,
                ..Default::default()
            },
            NodeStatus {
                name: "n2".into(),
                alive: false,
                last_heard_ms_ago: Some(2500),
                ..Default::default()
            },
        ],
        paths: vec![PathStatusView {
            peer: "n2".into(),
            path: "hb1".into(),
            up: true,
            rtt_ms: Some(0.25),
            ..Default::default()
        }],
        groups: vec![GroupStatus {
            name: "web".into(),
            owner: Some("n1".into()),
            epoch: 3,
            maintenance: false,
            local_state: LocalGroupState::Running,
            blocked: false,
            recent_failures: 0,
            states: Default::default(),
            summary: "running".into(),
        }],
        heartbeats: HeartbeatCounters {
            sent: 10,
            accepted: 7,
            rejected: [("bad_mac".to_string(), 2)].into(),
        },
        ..Default::default()
    }
}

/// Whether the exposition holds `want` (`name{k="v",...} value`), labels in any order.
fn has(text: &str, want: &str) -> bool {
    fn parse(line: &str) -> Option<(String, Vec<String>, String)> {
        let (series, value) = line.rsplit_once(' ')?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<String> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        labels.sort();
        Some((name.to_string(), labels, value.to_string()))
    }
    let want = parse(want).expect("a sample line");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| parse(l).as_ref() == Some(&want))
}

#[test]
fn snapshot_series_carry_the_cluster_label_and_state() {
    let m = Metrics::new(&config(), "n1").unwrap();
    let text = m.render(&status());
    for want in [
        r#"tandem_node_up{cluster="lab",node="n2"} 0"#,
        r#"tandem_node_up{cluster="lab",node="n1"} 1"#,
        r#"tandem_path_up{cluster="lab",path="hb1",peer="n2"} 1"#,
        r#"tandem_path_rtt_seconds{cluster="lab",path="hb1",peer="n2"} 0.00025"#,
        r#"tandem_group_state{cluster="lab",group="web",state="running"} 1"#,
        r#"tandem_group_state{cluster="lab",group="web",state="failed"} 0"#,
        r#"tandem_group_owner{cluster="lab",group="web",node="n1"} 1"#,
        r#"tandem_group_owner{cluster="lab",group="web",node="n2"} 0"#,
        r#"tandem_event_sequence{cluster="lab"} 42"#,
        r#"tandem_heartbeat_packets_received_total{cluster="lab"} 7"#,
        r#"tandem_heartbeat_packets_rejected_total{cluster="lab",reason="bad_mac"} 2"#,
        r#"tandem_failovers_total{cluster="lab",group="web",outcome="completed",reason="node_lost"} 0"#,
        r#"tandem_check_failures_total{check="quickcheck",cluster="lab",group="web",resource="svc"} 0"#,
        r#"tandem_heartbeat_packets_sent_total{cluster="lab",path="hb2"} 0"#,
    ] {
        assert!(has(&text, want), "missing `{want}` in\n{text}");
    }
    assert!(text.contains("\ntandem_build_info{"));
}

#[test]
fn membership_counters_are_exported_as_deltas() {
    let m = Metrics::new(&config(), "n1").unwrap();
    let mut s = status();
    m.render(&s);
    s.heartbeats.accepted = 10;
    s.heartbeats.rejected.insert("bad_mac".into(), 5);
    let text = m.render(&s);
    assert!(has(
        &text,
        r#"tandem_heartbeat_packets_received_total{cluster="lab"} 10"#
    ));
    assert!(has(
        &text,
        r#"tandem_heartbeat_packets_rejected_total{cluster="lab",reason="bad_mac"} 5"#
    ));
}

#[test]
fn timelines_count_moves_and_time_every_phase() {
    let m = Metrics::new(&config(), "n2").unwrap();
    let step = |action: &str, at_ms, duration_ms| TimelineStep {
        resource: "svc".into(),
        action: action.into(),
        at_ms,
        duration_ms,
        ok: true,
        error: None,
    };
    m.observe_timeline(&Timeline {
        group: "web".into(),
        kind: "failover".into(),
        reason: MoveReason::NodeLost,
        from_node: Some("n1".into()),
        to_node: "n2".into(),
        failure_ms: Some(10_000),
        detected_ms: 11_000,
        decided_ms: 11_010,
        steps: vec![step("start", 11_020, 30)],
        first_check_ms: Some(11_100),
        completed_ms: Some(11_100),
        outcome: "completed".into(),
    });
    let text = m.render(&status());
    assert!(has(
        &text,
        r#"tandem_failovers_total{cluster="lab",group="web",outcome="completed",reason="node_lost"} 1"#
    ));
    for (phase, secs) in [
        ("detect", "1"),
        ("decide", "0.01"),
        ("start", "0.03"),
        ("first_healthy", "0.05"),
    ] {
        let want = format!(
            r#"tandem_failover_phase_seconds_sum{{cluster="lab",group="web",phase="{phase}"}} {secs}"#
        );
        assert!(has(&text, &want), "missing `{want}` in\n{text}");
    }
}

#[test]
fn events_count_restarts_and_split_brain() {
    let m = Metrics::new(&config(), "n1").unwrap();
    let ev = |kind, f: &[(&str, &str)]| Event {
        seq: 1,
        node: "n1".into(),
        time_ms: 0,
        kind,
        fields: f
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    m.observe_event(&ev(
        EventKind::ResourceRestarted,
        &[("group", "web"), ("resource", "svc")],
    ));
    m.observe_event(&ev(EventKind::SplitBrainSuspected, &[("group", "web")]));
    let text = m.render(&status());
    assert!(has(
        &text,
        r#"tandem_local_restarts_total{cluster="lab",group="web",resource="svc"} 1"#
    ));
    assert!(has(
        &text,
        r#"tandem_split_brain_suspected_total{cluster="lab",group="web"} 1"#
    ));
    assert!(has(
        &text,
        r#"tandem_events_total{cluster="lab",kind="resource_restarted"} 1"#
    ));
}

#[test]
fn promtool_accepts_the_exposition() {
    let m = Metrics::new(&config(), "n1").unwrap();
    m.check("web", "svc", "quickcheck", Duration::from_millis(3), false);
    let text = m.render(&status());
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/deps.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
