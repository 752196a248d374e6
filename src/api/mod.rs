//! The control API: HTTP/JSON on a Unix socket (and optionally TCP with a bearer
//! token). The CLI uses it; its JSON is documented in `docs/API.md`.
//!
//! - [`server`]: the axum routes over the daemon's status snapshot and event log.
//! - [`client`]: the small HTTP client the CLI uses.

pub mod client;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use server::serve;

use crate::placement::policy::GroupStatus;
use crate::runtime::Reply;

/// Errors of the API server and client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("cannot reach the daemon at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("{0}")]
    Status(String),
    #[error("bad response: {0}")]
    Decode(String),
}

/// One node as seen from this node.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    pub name: String,
    pub priority: u32,
    /// This is the node answering.
    pub local: bool,
    pub alive: bool,
    pub standby: bool,
    pub boot_id: String,
    pub last_heard_ms_ago: Option<u64>,
    pub paths_up: usize,
}

/// One heartbeat path to one peer.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PathStatusView {
    pub peer: String,
    pub path: String,
    pub up: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub rtt_ms: Option<f64>,
}

/// Heartbeat packet counters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HeartbeatCounters {
    pub sent: u64,
    pub accepted: u64,
    /// Dropped packets by reason: bad_mac, replayed, malformed, wrong_cluster, ...
    pub rejected: BTreeMap<String, u64>,
}

/// `GET /v1/status`: a consistent snapshot of this node's view.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    pub cluster: String,
    pub node: String,
    pub time_ms: u64,
    pub uptime_ms: u64,
    pub last_seq: u64,
    /// "two_node" (VIP probe guards takeovers) or "priority".
    pub mode: String,
    pub nodes: Vec<NodeStatus>,
    pub paths: Vec<PathStatusView>,
    pub groups: Vec<GroupStatus>,
    pub heartbeats: HeartbeatCounters,
    /// Every configured resource of every group.
    #[serde(default)]
    pub resources: Vec<ResourceView>,
    /// Every floating IP (the `ip` resources).
    #[serde(default)]
    pub vips: Vec<VipView>,
    /// Failovers and switchovers this node carried out, per group.
    #[serde(default)]
    pub failovers: Vec<FailoverSummary>,
    /// Every replicated volume this node holds a copy of.
    #[serde(default)]
    pub mirrors: Vec<crate::mirror::status::MirrorStatus>,
}

/// One resource of one group, as this node runs it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ResourceView {
    pub group: String,
    pub name: String,
    /// "ip", "exec", "process", "mirror" or "filesystem".
    pub kind: String,
    /// The group's local state on this node ("stopped", "starting", "running",
    /// "stopping", "failed"): resources start and stop with their group.
    pub state: String,
}

/// One floating IP.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct VipView {
    pub group: String,
    /// The `ip` resource's name.
    pub resource: String,
    /// ADDRESS/PREFIX as configured.
    pub address: String,
    pub interface: String,
    /// This node holds the address (its group runs here).
    pub present: bool,
}

/// The failover history of one group on this node.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FailoverSummary {
    pub group: String,
    /// Completed or failed failovers and switchovers this node carried out.
    pub count: u64,
    /// Reason of the latest one ("node_lost", "resource_failed", "manual", ...).
    pub last_reason: String,
    /// Detection to completion of the latest one, when it completed.
    pub last_duration_ms: Option<u64>,
}

/// A request the API hands to the daemon's main loop.
#[derive(Debug)]
pub enum Request {
    Switchover {
        group: String,
        to: Option<String>,
        reply: Reply<String>,
    },
    Standby {
        node: String,
        on: bool,
        reply: Reply<()>,
    },
    Maintenance {
        group: String,
        on: bool,
        reply: Reply<()>,
    },
    /// An operation on a replicated volume (`tandem mirror ...`).
    Mirror {
        mirror: String,
        action: MirrorAction,
        /// One peer, or every peer.
        peer: Option<String>,
        reply: Reply<()>,
    },
}

/// What `tandem mirror` can ask of a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorAction {
    /// Stop replicating to the peer; changes go to its bitmap.
    Pause,
    /// Replicate again; the peer catches up from its bitmap.
    Resume,
    /// Online verify by checksums; differing blocks are resynced.
    Verify,
    /// Resync every used block to the peer.
    ResyncFull,
    /// Drop the replication link and stay disconnected.
    Disconnect,
    /// Connect again after a disconnect (or a split brain the admin resolved).
    Connect,
}
