//! A synthetic cluster snapshot of any size (16 nodes, `groups` groups of three
//! resources each, one of them a VIP): the tree `tandem bench snmp` walks, and the
//! agent's tests. Built only for tests and with the `bench` feature.

use crate::cluster::packet::LocalGroupState;
use crate::status::{
    GroupStatus, GroupSummary, NodeStatus, PathStatusView, ResourceType, ResourceView, Status,
    TakeoverMode, VipView,
};

/// Nodes in the synthetic cluster (each with two heartbeat paths to every peer).
pub const NODES: usize = 16;

/// A cluster snapshot with `groups` groups of three resources (one a VIP) each.
pub fn synthetic_status(groups: usize) -> Status {
    let node_name = |i: usize| format!("node{i:02}");
    let nodes = (0..NODES)
        .map(|i| NodeStatus {
            name: node_name(i),
            priority: i as u32 + 1,
            local: i == 0,
            alive: true,
            standby: false,
            boot_id: format!("{:016x}", 0xb007 + i),
            last_heard_ms_ago: Some(40),
            paths_up: 2,
            protocol: Some(2),
            config_digest: None,
        })
        .collect();
    let paths = (1..NODES)
        .flat_map(|i| {
            ["hb1", "hb2"].map(|p| PathStatusView {
                peer: node_name(i),
                path: p.into(),
                up: true,
                last_heard_ms_ago: Some(40),
                rtt_ms: Some(0.3),
            })
        })
        .collect();
    let group_name = |g: usize| format!("group{g:04}");
    let group_status = (0..groups)
        .map(|g| GroupStatus {
            name: group_name(g),
            owner: Some(node_name(g % NODES)),
            epoch: 1 + g as u64,
            maintenance: false,
            local_state: if g % NODES == 0 {
                LocalGroupState::Running
            } else {
                LocalGroupState::Stopped
            },
            blocked: false,
            recent_failures: 0,
            reason: None,
            states: Default::default(),
            summary: GroupSummary::Running,
        })
        .collect();
    let mut resources = Vec::new();
    let mut vips = Vec::new();
    for g in 0..groups {
        for (name, kind) in [
            ("vip", ResourceType::Ip),
            ("fs", ResourceType::Exec),
            ("app", ResourceType::Process),
        ] {
            resources.push(ResourceView {
                group: group_name(g),
                name: name.into(),
                kind,
                state: LocalGroupState::Running,
                depends_on: Vec::new(),
                configured_checks: Vec::new(),
                checks: Vec::new(),
                disk_lease: None,
            });
        }
        vips.push(VipView {
            group: group_name(g),
            resource: "vip".into(),
            address: format!("10.{}.{}.10/24", g / 256, g % 256),
            interface: "eth0".into(),
            present: g % NODES == 0,
        });
    }
    Status {
        cluster: "bench".into(),
        node: node_name(0),
        uptime_ms: 3_600_000,
        last_seq: 1000,
        mode: TakeoverMode::Priority,
        nodes,
        paths,
        groups: group_status,
        resources,
        vips,
        ..Status::default()
    }
}
