//! `tandem status` in the manner of `pcs status`: a dated header (cluster, quorum, this
//! node and its version), the nodes and heartbeat paths, each group with its owner,
//! state and the reason it is blocked or failed, the resources and floating IPs, the
//! mirrors in the manner of `drbdadm status`, and the last failover in one line.

use crate::cluster::packet::LocalGroupState;
use crate::event::{MoveKind, MoveReason, Timeline};
use crate::status::{
    FenceState, GroupStatus, GroupSummary, LinkState, MirrorPeerStatus, MirrorStatus, QuorumView,
    ResyncDirection, ResyncStatus, Status, TakeoverMode,
};

use super::{human_bytes, human_ms, table, utc_seconds};
use crate::event::story::{failure_to_service_ms, started_ms};

/// The whole of `tandem status`; `timelines` are this node's (`/v1/history`).
pub fn render_status(st: &Status, timelines: &[Timeline]) -> String {
    let mut out = header(st);
    if let Some(q) = &st.quorum {
        out.extend(quorum(q));
    }
    out.extend(nodes(st));
    out.extend(groups(st));
    if !st.mirrors.is_empty() {
        out.push(String::new());
        out.push("Mirrors:".into());
        out.extend(mirror_lines(&st.mirrors, "  "));
    }
    out.push(String::new());
    out.push(last_failover(st, timelines));
    let rejected: Vec<String> = st
        .heartbeats
        .rejected
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push(format!(
        "Heartbeats: sent {}, accepted {}, rejected {}",
        st.heartbeats.sent,
        st.heartbeats.accepted,
        if rejected.is_empty() {
            "0".into()
        } else {
            rejected.join(", ")
        }
    ));
    out.join("\n") + "\n"
}

/// `tandem mirror status`: every mirror in the manner of `drbdadm status`.
pub fn render_mirrors(all: &[MirrorStatus]) -> String {
    if all.is_empty() {
        return "no mirrors\n".into();
    }
    mirror_lines(all, "").join("\n") + "\n"
}

fn header(st: &Status) -> Vec<String> {
    let mut out = vec![
        format!("Cluster name: {}", st.cluster),
        "Cluster Summary:".into(),
        format!("  * Quorum: {}", quorum_summary(st)),
        format!("  * This node: {} (tandem {})", st.node, st.version),
        format!(
            "  * Last updated: {} (up {}, event seq {})",
            utc_seconds(st.time_ms),
            human_ms(st.uptime_ms),
            st.last_seq
        ),
        format!(
            "  * {}, {}, {} configured",
            counted(st.nodes.len(), "node"),
            counted(st.groups.len(), "group"),
            counted(st.resources.len(), "resource")
        ),
    ];
    if let Some(c) = &st.console {
        out.push(format!(
            "  * Console: https://{}/ (certificate SHA-256 {})",
            c.address, c.fingerprint
        ));
    }
    if let Some(w) = &st.warning {
        out.push(format!("  * WARNING: {w}"));
    }
    out
}

/// `1 node`, `3 nodes`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The quorum in one phrase: the mode, whether this node has it, the voters.
fn quorum_summary(st: &Status) -> String {
    match (st.mode, &st.quorum) {
        (TakeoverMode::Quorum, Some(q)) => format!(
            "quorum mode, this node {} ({} of {} voters reachable, leader {}, term {})",
            if q.quorate {
                "has quorum"
            } else {
                "has NO QUORUM"
            },
            q.votes,
            q.voters.len(),
            q.leader.as_deref().unwrap_or("none"),
            q.term
        ),
        (TakeoverMode::Quorum, None) => "quorum mode, not known yet".into(),
        (TakeoverMode::TwoNode, _) => "none (two_node mode: a takeover is guarded by a \
                                        floating-IP probe; not partition-safe)"
            .into(),
        (TakeoverMode::Priority, _) => {
            "none (priority mode: the most preferred live node takes over)".into()
        }
    }
}

/// Voters, the leases this node holds and its latest power-offs.
fn quorum(q: &QuorumView) -> Vec<String> {
    let mut out = vec![
        String::new(),
        format!("Voters (this node is {}):", q.role.name()),
    ];
    let rows: Vec<Vec<String>> = q
        .voters
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                if v.witness { "witness" } else { "node" }.into(),
                if v.reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                }
                .into(),
            ]
        })
        .collect();
    out.extend(table("  ", &["VOTER", "KIND", "STATE"], &rows));
    for l in &q.leases {
        out.push(format!(
            "  lease of {} at epoch {}: {} left",
            l.group,
            l.epoch,
            human_ms(l.remaining_ms)
        ));
    }
    for f in &q.fencing {
        let ago = human_ms(f.age_ms);
        out.push(match f.state {
            FenceState::Running => format!("  fence {}: powering off ({ago})", f.node),
            FenceState::Off => format!(
                "  fence {}: OFF via {} in {} ({ago} ago)",
                f.node,
                f.method.as_deref().unwrap_or("-"),
                human_ms(f.elapsed_ms.unwrap_or(0))
            ),
            FenceState::Failed => format!(
                "  fence {}: FAILED ({ago} ago): {}",
                f.node,
                f.reason.as_deref().unwrap_or("-")
            ),
        });
    }
    out
}

/// The nodes, then the heartbeat paths to each peer.
fn nodes(st: &Status) -> Vec<String> {
    let mut out = vec![String::new(), "Nodes:".into()];
    let rows: Vec<Vec<String>> = st
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state().to_string(),
                n.priority.to_string(),
                n.paths_up.to_string(),
                n.protocol.map_or("-".into(), |v| format!("v{v}")),
                if n.local {
                    "this node".into()
                } else {
                    n.last_heard_ms_ago
                        .map_or("never".into(), |a| format!("{} ago", human_ms(a)))
                },
            ]
        })
        .collect();
    out.extend(table(
        "  ",
        &[
            "NODE",
            "STATE",
            "PRIORITY",
            "PATHS UP",
            "PROTOCOL",
            "LAST HEARD",
        ],
        &rows,
    ));
    if st.paths.is_empty() {
        return out;
    }
    out.push(String::new());
    out.push("Heartbeat paths:".into());
    let rows: Vec<Vec<String>> = st
        .paths
        .iter()
        .map(|p| {
            vec![
                p.peer.clone(),
                p.path.clone(),
                if p.up { "up" } else { "DOWN" }.into(),
                p.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms")),
                p.last_heard_ms_ago
                    .map_or("never".into(), |a| format!("{} ago", human_ms(a))),
            ]
        })
        .collect();
    out.extend(table(
        "  ",
        &["PEER", "PATH", "STATE", "RTT", "LAST HEARD"],
        &rows,
    ));
    out
}

/// The groups (each with its notes), their resources and their floating IPs.
fn groups(st: &Status) -> Vec<String> {
    let mut out = vec![String::new(), "Groups:".into()];
    let rows: Vec<Vec<String>> = st
        .groups
        .iter()
        .map(|g| {
            let on: Vec<String> = g
                .states
                .iter()
                .map(|(n, s)| format!("{n} {}", s.name()))
                .collect();
            vec![
                g.name.clone(),
                g.summary.name().into(),
                g.owner.clone().unwrap_or_else(|| "-".into()),
                g.epoch.to_string(),
                on.join(", "),
            ]
        })
        .collect();
    let mut lines = table(
        "  ",
        &["GROUP", "STATE", "OWNER", "EPOCH", "ON EACH NODE"],
        &rows,
    )
    .into_iter();
    out.extend(lines.next());
    for (g, line) in st.groups.iter().zip(lines) {
        out.push(line);
        out.extend(
            group_notes(g, &st.node)
                .into_iter()
                .map(|n| format!("    ! {n}")),
        );
    }
    out.extend(resources(st));
    out
}

/// Why a group is not simply running, in words: this node's own reason for a block or
/// a failure (`GroupStatus::reason`), what a peer's failed state means, a split brain,
/// and a group no node may run.
fn group_notes(g: &GroupStatus, local: &str) -> Vec<String> {
    let mut notes = Vec::new();
    if g.maintenance {
        notes.push("maintenance: Tandem neither starts, stops nor checks it".into());
    }
    let failed_here = g.states.get(local) == Some(&LocalGroupState::Failed);
    if g.blocked {
        let why = match (&g.reason, failed_here) {
            (Some(r), false) => format!("{r}; "),
            _ => String::new(),
        };
        notes.push(format!(
            "blocked on {local}: {why}{} recent failures, so {local} will not run it \
             until the restart window ends",
            g.recent_failures
        ));
    }
    for (node, s) in &g.states {
        if *s == LocalGroupState::Failed {
            let why = match (&g.reason, node == local) {
                (Some(r), true) => r.clone(),
                _ => "a resource would not stop".into(),
            };
            notes.push(format!(
                "failed on {node}: {why}; it may still run there, so no other node \
                 starts it while {node} is up"
            ));
        }
    }
    match g.summary {
        GroupSummary::Split => {
            let on: Vec<&str> = g
                .states
                .iter()
                .filter(|(_, s)| **s == LocalGroupState::Running)
                .map(|(n, _)| n.as_str())
                .collect();
            notes.push(format!(
                "running on more than one node ({}): split brain",
                on.join(", ")
            ));
        }
        GroupSummary::Failed if !g.states.values().any(|s| *s == LocalGroupState::Failed) => {
            let why = match (&g.reason, g.blocked) {
                (Some(r), false) => r.clone(),
                _ => "no live node is eligible to run the group".into(),
            };
            notes.push(format!("failed: {why}"));
        }
        _ => {}
    }
    notes
}

/// Every resource in its group's state here, then every floating IP.
fn resources(st: &Status) -> Vec<String> {
    let mut out = Vec::new();
    if !st.resources.is_empty() {
        out.push(String::new());
        out.push(format!("Resources (on {}):", st.node));
        let rows: Vec<Vec<String>> = st
            .resources
            .iter()
            .map(|r| {
                vec![
                    r.group.clone(),
                    r.name.clone(),
                    r.kind.name().into(),
                    r.state.name().into(),
                ]
            })
            .collect();
        out.extend(table("  ", &["GROUP", "RESOURCE", "TYPE", "STATE"], &rows));
        for r in &st.resources {
            if let Some(lease) = &r.disk_lease {
                out.push(format!(
                    "  disk lease of {}/{}: {}",
                    r.group,
                    r.name,
                    lease.describe()
                ));
            }
        }
    }
    if !st.vips.is_empty() {
        out.push(String::new());
        out.push("Floating IPs:".into());
        let rows: Vec<Vec<String>> = st
            .vips
            .iter()
            .map(|v| {
                vec![
                    v.address.clone(),
                    v.interface.clone(),
                    v.group.clone(),
                    v.resource.clone(),
                    if v.present {
                        format!("present on {}", st.node)
                    } else {
                        format!("not on {}", st.node)
                    },
                ]
            })
            .collect();
        out.extend(table(
            "  ",
            &["ADDRESS", "INTERFACE", "GROUP", "RESOURCE", "HERE"],
            &rows,
        ));
    }
    out
}

/// Each mirror as `drbdadm status` shows a resource: the role, the local disk, then
/// each peer's connection, replication and peer disk, with the resync's progress.
fn mirror_lines(all: &[MirrorStatus], indent: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in all {
        out.push(format!(
            "{indent}{} role:{}{}",
            m.name,
            m.role,
            m.group
                .as_deref()
                .map(|g| format!(" group:{g}"))
                .unwrap_or_default()
        ));
        out.push(format!(
            "{indent}  disk:{} size:{} generation:{}",
            m.disk.name(),
            human_bytes(m.size_bytes).replace(' ', ""),
            m.generation
        ));
        if m.io_frozen {
            out.push(format!(
                "{indent}  IO FROZEN: waiting to outdate a lost peer"
            ));
        }
        if let Some(r) = &m.recovery_point {
            out.push(format!(
                "{indent}  recovery point: up to {} behind {} ({:.1}s of writes), as {} last reported",
                human_bytes(r.lag_bytes).replace(' ', ""),
                r.primary,
                f64::from(r.lag_ms) / 1000.0,
                r.primary
            ));
        }
        for p in &m.peers {
            out.extend(peer_lines(p, &format!("{indent}  ")));
        }
    }
    out
}

/// One peer of a mirror: its connection (and the protocol the link negotiated), then
/// replication, peer disk, out of sync, lag, compression, and the resync and verify
/// lines.
fn peer_lines(p: &MirrorPeerStatus, indent: &str) -> Vec<String> {
    let mut head = format!(
        "{indent}{} connection:{} mode:{}",
        p.node,
        p.connection,
        p.mode.name()
    );
    if let Some(v) = p.protocol {
        head += &format!(" protocol:v{v}");
    }
    let mut out = vec![head];
    let mut line = format!(
        "{indent}  replication:{} peer-disk:{} out-of-sync:{}",
        replication(p),
        p.peer_disk.map_or("unknown", |d| d.name()),
        human_bytes(p.out_of_sync_bytes).replace(' ', "")
    );
    if p.lag_bytes > 0 || p.lag_seconds > 0.0 {
        line += &format!(
            " lag:{}/{:.1}s",
            human_bytes(p.lag_bytes).replace(' ', ""),
            p.lag_seconds
        );
    }
    if let Some(c) = &p.compression {
        line += &format!(
            " zstd:{:.2}:1 ({} sent for {})",
            c.ratio,
            human_bytes(c.wire_bytes),
            human_bytes(c.raw_bytes)
        );
    }
    out.push(line);
    if let Some(r) = &p.resync {
        out.push(format!("{indent}  {}", resync_progress(r)));
    }
    if let Some(v) = &p.verify {
        out.push(format!(
            "{indent}  verify:{} checked {} of {}, {} out of sync",
            if v.running { "running" } else { "done" },
            human_bytes(v.checked_bytes),
            human_bytes(v.total_bytes),
            human_bytes(v.out_of_sync_bytes)
        ));
    }
    out
}

/// The replication state of a link, as `drbdadm` names it (in snake_case).
fn replication(p: &MirrorPeerStatus) -> &'static str {
    match (&p.resync, p.connection) {
        (Some(r), _) => match r.direction {
            ResyncDirection::Source => "sync_source",
            ResyncDirection::Target => "sync_target",
        },
        (None, LinkState::Connected) => "established",
        (None, LinkState::Paused) => "paused",
        (None, _) => "off",
    }
}

/// `done:25.0% (1.0 MiB of 4.0 MiB) rate:976.6 KiB/s eta:2 s`.
fn resync_progress(r: &ResyncStatus) -> String {
    let pct = if r.total_bytes == 0 {
        100.0
    } else {
        r.done_bytes as f64 * 100.0 / r.total_bytes as f64
    };
    format!(
        "resync:{}{} done:{pct:.1}% ({} of {}) rate:{}/s eta:{}",
        r.direction,
        if r.full { " full" } else { "" },
        human_bytes(r.done_bytes),
        human_bytes(r.total_bytes),
        human_bytes(r.bytes_per_second as u64),
        r.eta_seconds
            .map_or("-".into(), |e| human_ms((e * 1000.0) as u64))
    )
}

/// The latest failover or switchover this node carried out, in one line.
fn last_failover(st: &Status, timelines: &[Timeline]) -> String {
    let Some(t) = timelines
        .iter()
        .filter(|t| t.kind != MoveKind::Release && t.reason != MoveReason::Initial)
        .max_by_key(|t| started_ms(t))
    else {
        return format!("Last failover: none recorded on {}", st.node);
    };
    let total = failure_to_service_ms(t).map_or_else(
        || format!("no service: {}", t.outcome),
        |ms| format!("{} failure to service", human_ms(ms)),
    );
    let at = started_ms(t);
    format!(
        "Last failover: {} of {} {} -> {} ({}), {total}, at {} ({} ago)",
        t.kind,
        t.group,
        t.from_node.as_deref().unwrap_or("-"),
        t.to_node,
        t.reason.name(),
        utc_seconds(at),
        human_ms(st.time_ms.saturating_sub(at))
    )
}
