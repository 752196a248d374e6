//! Unit tests of the metrics registry: names, pre-created label sets, phases, deltas.

use super::*;
use crate::event::{MoveKind, TimelineStep};
use crate::mirror::nbd::proto::Command;
use crate::status::MirrorStatus;

fn config() -> Config {
    let text = r#"
        [cluster]
        name = "lab"
        key = "0123456789abcdef0123"
        [heartbeat]
        paths = ["hb1", "hb2"]
        [[node]]
        name = "alpha"
        priority = 1
        addresses = { hb1 = "10.1.0.1", hb2 = "10.2.0.1" }
        [[node]]
        name = "beta"
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

/// The shared sample, without its mirror (the mirror tests add it).
fn status() -> Status {
    Status {
        mirrors: Vec::new(),
        ..Status::sample()
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
    let m = Metrics::new(&config(), "alpha").unwrap();
    let text = m.render(&status());
    for want in [
        r#"tandem_node_up{cluster="lab",node="beta"} 1"#,
        r#"tandem_node_up{cluster="lab",node="alpha"} 1"#,
        r#"tandem_path_up{cluster="lab",path="lan",peer="beta"} 1"#,
        r#"tandem_path_rtt_seconds{cluster="lab",path="lan",peer="beta"} 0.00025"#,
        r#"tandem_group_state{cluster="lab",group="web",state="running"} 1"#,
        r#"tandem_group_state{cluster="lab",group="web",state="failed"} 0"#,
        r#"tandem_group_owner{cluster="lab",group="web",node="alpha"} 1"#,
        r#"tandem_group_owner{cluster="lab",group="web",node="beta"} 0"#,
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
    let m = Metrics::new(&config(), "alpha").unwrap();
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
        kind: MoveKind::Failover,
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
fn events_count_restarts_split_brain_and_audits() {
    let m = Metrics::new(&config(), "alpha").unwrap();
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
    m.observe_event(&ev(
        EventKind::Audit,
        &[("role", "viewer"), ("outcome", "refused"), ("user", "vera")],
    ));
    let text = m.render(&status());
    assert!(has(
        &text,
        r#"tandem_audit_actions_total{cluster="lab",outcome="refused",role="viewer"} 1"#
    ));
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

/// The sample's mirror: primary `vol`, a sync peer beta resyncing from it and an
/// async peer gamma in split brain that lags.
fn mirror() -> MirrorStatus {
    Status::sample().mirrors.remove(0)
}

#[test]
fn mirrors_export_state_sets_progress_lag_and_counters() {
    let m = Metrics::new(&config(), "alpha").unwrap();
    let mut s = status();
    s.mirrors = vec![mirror()];
    let text = m.render(&s);
    for want in [
        r#"tandem_mirror_primary{cluster="lab",mirror="vol"} 1"#,
        r#"tandem_mirror_disk_state{cluster="lab",mirror="vol",state="sync_source"} 1"#,
        r#"tandem_mirror_disk_state{cluster="lab",mirror="vol",state="up_to_date"} 0"#,
        r#"tandem_mirror_io_frozen{cluster="lab",mirror="vol"} 1"#,
        r#"tandem_mirror_client_read_bytes_total{cluster="lab",mirror="vol"} 4096"#,
        r#"tandem_mirror_client_written_bytes_total{cluster="lab",mirror="vol"} 12288"#,
        r#"tandem_mirror_peer_disk_state{cluster="lab",mirror="vol",peer="beta",state="sync_target"} 1"#,
        r#"tandem_mirror_peer_disk_state{cluster="lab",mirror="vol",peer="beta",state="up_to_date"} 0"#,
        r#"tandem_mirror_peer_disk_state{cluster="lab",mirror="vol",peer="gamma",state="up_to_date"} 0"#,
        r#"tandem_mirror_connection_state{cluster="lab",mirror="vol",peer="beta",state="connected"} 1"#,
        r#"tandem_mirror_connection_state{cluster="lab",mirror="vol",peer="gamma",state="split_brain"} 1"#,
        r#"tandem_mirror_connection_state{cluster="lab",mirror="vol",peer="gamma",state="connected"} 0"#,
        r#"tandem_mirror_out_of_sync_bytes{cluster="lab",mirror="vol",peer="beta"} 3145728"#,
        r#"tandem_mirror_lag_bytes{cluster="lab",mirror="vol",peer="gamma"} 4096"#,
        r#"tandem_mirror_lag_seconds{cluster="lab",mirror="vol",peer="gamma"} 1.2345"#,
        r#"tandem_mirror_lag_budget_seconds{cluster="lab",mirror="vol",peer="gamma"} 5"#,
        r#"tandem_mirror_resync_active{cluster="lab",mirror="vol",peer="beta"} 1"#,
        r#"tandem_mirror_resync_active{cluster="lab",mirror="vol",peer="gamma"} 0"#,
        r#"tandem_mirror_resync_size_bytes{cluster="lab",mirror="vol",peer="beta"} 4194304"#,
        r#"tandem_mirror_resync_done_bytes{cluster="lab",mirror="vol",peer="beta"} 1048576"#,
        r#"tandem_mirror_resync_done_bytes{cluster="lab",mirror="vol",peer="gamma"} 0"#,
        r#"tandem_mirror_resync_rate_bytes_per_second{cluster="lab",mirror="vol",peer="beta"} 1000000"#,
        r#"tandem_mirror_resync_eta_seconds{cluster="lab",mirror="vol",peer="beta"} 2.2"#,
        r#"tandem_mirror_replicated_bytes_total{cluster="lab",mirror="vol",peer="beta"} 8192"#,
        r#"tandem_mirror_resynced_bytes_total{cluster="lab",mirror="vol",peer="beta"} 1048576"#,
        r#"tandem_mirror_resyncs_completed_total{cluster="lab",mirror="vol",peer="beta"} 1"#,
        r#"tandem_mirror_compression_input_bytes_total{cluster="lab",mirror="vol",peer="beta"} 8192"#,
        r#"tandem_mirror_compression_output_bytes_total{cluster="lab",mirror="vol",peer="beta"} 2048"#,
        r#"tandem_mirror_compression_ratio{cluster="lab",mirror="vol",peer="beta"} 4"#,
    ] {
        assert!(has(&text, want), "missing `{want}` in\n{text}");
    }
    // Optional values have no series when unknown.
    assert!(!text
        .contains(r#"tandem_mirror_lag_budget_seconds{cluster="lab",mirror="vol",peer="beta"}"#));
    assert!(!text
        .contains(r#"tandem_mirror_resync_eta_seconds{cluster="lab",mirror="vol",peer="gamma"}"#));
    assert!(!text
        .contains(r#"tandem_mirror_compression_ratio{cluster="lab",mirror="vol",peer="gamma"}"#));
}

#[test]
fn mirror_counters_grow_by_the_snapshot_delta_and_gauges_follow_it() {
    let m = Metrics::new(&config(), "alpha").unwrap();
    let mut s = status();
    s.mirrors = vec![mirror()];
    m.render(&s);
    let mirror = &mut s.mirrors[0];
    mirror.written_bytes = 20480;
    mirror.role = MirrorRole::Secondary;
    mirror.disk = DiskState::Outdated;
    mirror.peers[0].resync = None;
    mirror.peers[0].resyncs_completed = 3;
    // A counter the engine reports lower (it never should) does not go back.
    mirror.peers[0].replicated_bytes = 100;
    mirror.peers.pop();
    let text = m.render(&s);
    for want in [
        r#"tandem_mirror_client_written_bytes_total{cluster="lab",mirror="vol"} 20480"#,
        r#"tandem_mirror_resyncs_completed_total{cluster="lab",mirror="vol",peer="beta"} 3"#,
        r#"tandem_mirror_replicated_bytes_total{cluster="lab",mirror="vol",peer="beta"} 8192"#,
        r#"tandem_mirror_primary{cluster="lab",mirror="vol"} 0"#,
        r#"tandem_mirror_disk_state{cluster="lab",mirror="vol",state="outdated"} 1"#,
        r#"tandem_mirror_disk_state{cluster="lab",mirror="vol",state="sync_source"} 0"#,
        r#"tandem_mirror_resync_active{cluster="lab",mirror="vol",peer="beta"} 0"#,
    ] {
        assert!(has(&text, want), "missing `{want}` in\n{text}");
    }
    // A peer gone from the snapshot leaves no stale gauges.
    assert!(!text.contains(r#"tandem_mirror_lag_seconds{cluster="lab",mirror="vol",peer="gamma"}"#));
}

#[test]
fn nbd_requests_are_timed_and_counted_per_export_and_command() {
    let m = Metrics::new(&config(), "alpha").unwrap();
    let before = m.render(&status());
    // Created at zero for every command, so rate() sees the first request.
    for want in [
        r#"tandem_nbd_request_duration_seconds_count{cluster="lab",command="write",export="vol"} 0"#,
        r#"tandem_nbd_request_errors_total{cluster="lab",command="other",export="vol"} 0"#,
        r#"tandem_nbd_bytes_total{cluster="lab",direction="read",export="vol"} 0"#,
    ] {
        assert!(!has(&before, want), "no export yet: `{want}`");
    }
    let nbd = m.nbd("vol");
    let zero = m.render(&status());
    for want in [
        r#"tandem_nbd_request_duration_seconds_count{cluster="lab",command="write",export="vol"} 0"#,
        r#"tandem_nbd_request_errors_total{cluster="lab",command="other",export="vol"} 0"#,
        r#"tandem_nbd_bytes_total{cluster="lab",direction="read",export="vol"} 0"#,
    ] {
        assert!(has(&zero, want), "missing `{want}` in\n{zero}");
    }
    nbd.request(Command::Read, Duration::from_micros(200), true, 4096);
    nbd.request(Command::Write, Duration::from_millis(2), true, 65536);
    nbd.request(Command::Write, Duration::from_millis(1), false, 512);
    nbd.request(Command::Flush, Duration::from_millis(5), true, 0);
    nbd.refused(Command::Other(99));
    nbd.refused(Command::Write);
    let text = m.render(&status());
    for want in [
        r#"tandem_nbd_request_duration_seconds_count{cluster="lab",command="read",export="vol"} 1"#,
        r#"tandem_nbd_request_duration_seconds_count{cluster="lab",command="write",export="vol"} 2"#,
        r#"tandem_nbd_request_duration_seconds_sum{cluster="lab",command="flush",export="vol"} 0.005"#,
        r#"tandem_nbd_bytes_total{cluster="lab",direction="read",export="vol"} 4096"#,
        r#"tandem_nbd_bytes_total{cluster="lab",direction="write",export="vol"} 65536"#,
        r#"tandem_nbd_request_errors_total{cluster="lab",command="write",export="vol"} 2"#,
        r#"tandem_nbd_request_errors_total{cluster="lab",command="other",export="vol"} 1"#,
        r#"tandem_nbd_request_errors_total{cluster="lab",command="read",export="vol"} 0"#,
    ] {
        assert!(has(&text, want), "missing `{want}` in\n{text}");
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let m = Metrics::new(&config(), "alpha").unwrap();
    m.check("web", "svc", "quickcheck", Duration::from_millis(3), false);
    m.nbd("vol")
        .request(Command::Read, Duration::from_millis(1), true, 4096);
    let mut s = status();
    s.mirrors = vec![mirror()];
    let text = m.render(&s);
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
