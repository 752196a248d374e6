//! What a mirror reports about itself: the view that `tandem status`, the HTTP API, the
//! SNMP agent (tandemMirrorTable) and the Prometheus endpoint all read from the one
//! status snapshot.

use serde::{Deserialize, Serialize};

use crate::config::ReplicationMode;
use crate::mirror::generation::DiskState;

/// One replicated volume on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    /// The group and `mirror` resource that use this volume, if any.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    /// "primary" (served read-write over NBD) or "secondary" (no client access).
    pub role: String,
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
}

/// This node's link to one peer copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorPeerStatus {
    pub node: String,
    pub mode: ReplicationMode,
    /// "connected", "connecting", "disconnected" (by the admin), "paused",
    /// "split_brain" (stays apart until resolved), "refused" (authentication failed).
    pub connection: String,
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
}

/// A running resync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// "source" (this copy sends) or "target".
    pub direction: String,
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
