//! What a mirror reports about itself: the view that `tandem status`, the HTTP API, the
//! SNMP agent (tandemMirrorTable) and the Prometheus endpoint all read from the one
//! status snapshot.

use serde::{Deserialize, Serialize};

use crate::config::ReplicationMode;
use crate::mirror::generation::DiskState;

/// This copy's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorRole {
    Primary,
    Secondary,
}

/// Why a replication link went down (the `reason` of `mirror_disconnected` and
/// `resync_failed` events; the text of what happened goes in `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkDownCause {
    /// The cluster declared the peer's node dead (silent on every heartbeat path).
    NodeLost,
    /// Nothing came from the peer for the link timeout.
    LinkTimeout,
    /// An administrator disconnected the link (`tandem mirror disconnect`).
    Admin,
    /// This node's mirror is shutting down.
    Shutdown,
    /// The peer closed the link (its own reason is in the detail).
    PeerClosed,
    /// The peer reconnected; the new connection replaces this one.
    Replaced,
    /// The peer is a primary of an older ownership epoch than this copy followed (or
    /// this copy learned it was deposed): the link is refused.
    StaleEpoch,
    /// A protocol, I/O or apply error on the link.
    Error,
}

impl LinkDownCause {
    /// The snake_case name (the event's `reason`).
    pub fn name(self) -> &'static str {
        match self {
            LinkDownCause::NodeLost => "node_lost",
            LinkDownCause::LinkTimeout => "link_timeout",
            LinkDownCause::Admin => "admin",
            LinkDownCause::Shutdown => "shutdown",
            LinkDownCause::PeerClosed => "peer_closed",
            LinkDownCause::Replaced => "replaced",
            LinkDownCause::StaleEpoch => "stale_epoch",
            LinkDownCause::Error => "error",
        }
    }
}

/// The replication link to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connected,
    Connecting,
    /// Dropped by the administrator (`tandem mirror disconnect`).
    Disconnected,
    /// Connected, but replication is paused: changes go to the peer's bitmap.
    Paused,
    /// The copies diverged; they stay apart until an administrator resolves it.
    SplitBrain,
    /// The peer failed authentication.
    Refused,
}

impl LinkState {
    /// Every state, in the MIB's order.
    pub const ALL: [LinkState; 6] = [
        LinkState::Connected,
        LinkState::Connecting,
        LinkState::Disconnected,
        LinkState::Paused,
        LinkState::SplitBrain,
        LinkState::Refused,
    ];

    /// The state's snake_case name (as in the JSON and the metric labels).
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Connecting => "connecting",
            LinkState::Disconnected => "disconnected",
            LinkState::Paused => "paused",
            LinkState::SplitBrain => "split_brain",
            LinkState::Refused => "refused",
        }
    }
}

/// Which way a resync runs, seen from this copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncDirection {
    /// This copy sends.
    Source,
    /// This copy receives.
    Target,
}

impl std::fmt::Display for MirrorRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MirrorRole::Primary => "primary",
            MirrorRole::Secondary => "secondary",
        })
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for ResyncDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResyncDirection::Source => "source",
            ResyncDirection::Target => "target",
        })
    }
}

/// One replicated volume on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    /// The group and `mirror` resource that use this volume, if any.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    /// Primary (served read-write over NBD) or secondary (no client access).
    pub role: MirrorRole,
    /// This copy's state.
    pub disk: DiskState,
    pub size_bytes: u64,
    /// The current generation identifier, hex.
    pub generation: String,
    /// A sync primary that lost a peer holds writes until that peer is outdated or
    /// declared dead.
    #[serde(default)]
    pub io_frozen: bool,
    /// Counters since the daemon started: client bytes through the export.
    #[serde(default)]
    pub read_bytes: u64,
    #[serde(default)]
    pub written_bytes: u64,
    pub peers: Vec<MirrorPeerStatus>,
    /// On a secondary: what this copy may lack, as its primary last reported in a
    /// heartbeat (after a site disaster, the DR copy's recovery point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<crate::mirror::recovery::RecoveryPoint>,
}

/// This node's link to one peer copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorPeerStatus {
    pub node: String,
    pub mode: ReplicationMode,
    pub connection: LinkState,
    /// The peer's disk state as it last reported it.
    #[serde(default)]
    pub peer_disk: Option<DiskState>,
    /// Bytes this copy knows differ on the peer (its bitmap for the peer).
    pub out_of_sync_bytes: u64,
    /// Async: bytes written locally and not yet acknowledged by the peer.
    pub lag_bytes: u64,
    /// Async: age of the oldest write not yet acknowledged by the peer.
    pub lag_seconds: f64,
    #[serde(default)]
    pub lag_budget_seconds: Option<f64>,
    #[serde(default)]
    pub rate_limit_bytes_per_second: Option<u64>,
    /// The running resync, if any (in either direction).
    #[serde(default)]
    pub resync: Option<ResyncStatus>,
    /// The last online verify, if one ran since the daemon started.
    #[serde(default)]
    pub verify: Option<VerifyStatus>,
    /// Counters since the daemon started.
    #[serde(default)]
    pub replicated_bytes: u64,
    #[serde(default)]
    pub resynced_bytes: u64,
    #[serde(default)]
    pub resyncs_completed: u64,
    /// Compression of what this copy sent to the peer (`compress = "zstd"`), since the
    /// daemon started; absent until a compressed link carried a payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionStatus>,
    /// The replication protocol version the latest link to the peer negotiated
    /// (`mirror::wire`); absent before one was authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u16>,
}

/// Write and resync payload bytes sent on compressed links to one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionStatus {
    /// Payload bytes before compression.
    pub raw_bytes: u64,
    /// Bytes sent for them (a payload that did not shrink is sent and counted raw).
    pub wire_bytes: u64,
    /// `raw_bytes / wire_bytes`: above 1 when compression saves bandwidth.
    pub ratio: f64,
}

impl CompressionStatus {
    /// From (raw, wire) counters; `None` while nothing was counted.
    pub fn from_counts((raw_bytes, wire_bytes): (u64, u64)) -> Option<CompressionStatus> {
        (raw_bytes > 0 && wire_bytes > 0).then(|| CompressionStatus {
            raw_bytes,
            wire_bytes,
            ratio: raw_bytes as f64 / wire_bytes as f64,
        })
    }
}

/// A running resync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResyncStatus {
    pub direction: ResyncDirection,
    pub full: bool,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub bytes_per_second: f64,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    pub started_ms: u64,
}

/// An online verify, running or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyStatus {
    pub running: bool,
    pub checked_bytes: u64,
    pub total_bytes: u64,
    /// Bytes found different and marked for resync.
    pub out_of_sync_bytes: u64,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
}
